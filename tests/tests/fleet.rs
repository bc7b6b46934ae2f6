//! The fleet on NATS JetStream: the canonical world with a nats-server, and the POP's and dc2's
//! edged taking their apps from it. An app deployed with `edgectl deploy` serves at both, an
//! update under load fails no request, a fleet-wide pin holds at both, a removal is a 404 at both;
//! with NATS gone both serve their snapshot (a restarted edged too), and a change made while a
//! datacenter could not reach NATS is applied when it can again.

use std::{
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use edgeplane_abi::{placement_flags, placement_kind};
use edgeplane_bench::loadgen::{self, Arrival, LoadSpec};
use edgeplane_testkit::edged::WORKER_PORT;
use edgeplane_testkit::{
    canonical::{Canonical, Tuning},
    edgeplane_binary,
    raw_http::header,
    require_root,
};

fn start(name: &str) -> Canonical {
    Canonical::start_fleet(
        name,
        &["pop", "dc2"],
        0.0,
        &edgeplane_binary("edged"),
        |_| Tuning::default(),
    )
    .unwrap()
}

/// `edgectl --nats <the world's> args...` from the POP's namespace (with the operator's
/// certificate when the world's NATS takes mutual TLS): success and output.
fn edgectl(world: &Canonical, args: &[&str]) -> (bool, String) {
    let nats = world.nats.as_ref().unwrap();
    let url = nats.url();
    let mut cmd = world
        .world
        .ns("pop")
        .command(edgeplane_binary("edgectl").to_str().unwrap());
    if let Some(tls) = &nats.tls {
        cmd.envs(tls.edgectl_env());
    }
    let out = cmd.arg("--nats").arg(&url).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn deploy(world: &Canonical, table: &Path) {
    let (ok, out) = edgectl(world, &["deploy", table.to_str().unwrap()]);
    assert!(ok, "deploy failed: {out}");
}

/// Writes hello's table with `component` under `dir`; its path.
fn hello_table(dir: &Path, file: &str, component: &Path) -> std::path::PathBuf {
    let path = dir.join(file);
    std::fs::write(
        &path,
        format!(
            "name = \"hello\"\nhosts = [\"hello.test\"]\ncomponent = \"{}\"\n",
            component.display()
        ),
    )
    .unwrap();
    path
}

/// Status, headers, body.
type Answer = (u16, Vec<(String, String)>, String);

/// A GET of hello.test at datacenter `dc`'s workers, from its own namespace: status, headers,
/// body (None: no connection).
fn at(world: &Canonical, dc: &str) -> Option<Answer> {
    let ip = world
        .plan
        .fleet(WORKER_PORT)
        .datacenter(dc)
        .unwrap()
        .handoff[0];
    world
        .world
        .ns(dc)
        .run(|| {
            let mut s = TcpStream::connect_timeout(&ip, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (status, headers, body) =
                edgeplane_testkit::raw_http::get(&mut s, "hello.test", "/");
            Some((status, headers, String::from_utf8_lossy(&body).into_owned()))
        })
        .unwrap()
}

/// Waits until `check` holds of hello at both datacenters; how long that took.
fn everywhere(world: &Canonical, what: &str, check: impl Fn(&Answer) -> bool) -> Duration {
    let started = Instant::now();
    for dc in ["pop", "dc2"] {
        loop {
            let got = at(world, dc);
            if got.as_ref().is_some_and(&check) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{dc}: not {what} after {:?}: {got:?}",
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    started.elapsed()
}

fn is_hello(r: &Answer) -> bool {
    r.0 == 200 && r.2 == "hello from wasm\n"
}

fn is_echo(r: &Answer) -> bool {
    r.0 == 200 && header(&r.1, "x-echo-method") == Some("GET")
}

#[test]
fn deployed_through_nats_an_app_serves_everywhere_updates_under_load_pins_and_goes() {
    if !require_root("fleet-deploy") {
        return;
    }
    let world = start("fleet");
    let dir = tempdir("fleet-deploy");
    let v1 = hello_table(&dir, "hello.toml", &edgeplane_testkit::app("hello"));
    let v2 = hello_table(&dir, "hello-v2.toml", &edgeplane_testkit::app("echo"));

    deploy(&world, &v1);
    let took = everywhere(&world, "serving hello", is_hello);
    eprintln!(
        "deployed: hello answered at both datacenters {took:?} after edgectl deploy returned"
    );

    an_update_under_load_fails_no_request(&world, &v2);
    a_bad_table_is_refused_and_every_datacenter_serves_the_revision(&world, &dir);
    a_fleet_pin_holds_everywhere_until_unpinned(&world);
    the_guard_goes_fleet_wide(&world);
    let (ok, out) = edgectl(&world, &["app", "rm", "hello"]);
    assert!(ok, "{out}");
    let took = everywhere(&world, "gone", |r| r.0 == 404);
    eprintln!("removed: 404 at both {took:?} after edgectl app rm returned");
    let _ = std::fs::remove_dir_all(dir);
}

/// Update under open-loop load through the POP: no request fails.
fn an_update_under_load_fails_no_request(world: &Canonical, v2: &Path) {
    let spec = LoadSpec {
        addr: world.pop_addr(),
        host: "hello.test".into(),
        path: "/".into(),
        connections: 16,
        duration: Duration::from_secs(6),
        arrival: Arrival::Open { rate: 400.0 },
    };
    let load = std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            world
                .world
                .ns("client")
                .run(|| loadgen::run("fleet", &spec))
        });
        std::thread::sleep(Duration::from_secs(2));
        deploy(world, v2);
        let took = everywhere(world, "serving the new version", is_echo);
        eprintln!("updated: the new version answered at both {took:?} after deploy returned");
        running.join().unwrap().unwrap().unwrap()
    });
    assert!(load.completed > 1000, "{load:?}");
    assert_eq!((load.errors, load.resets), (0, 0), "{load:?}");
}

/// A table edged would refuse is refused before it is published, saying why; every datacenter
/// says it serves the fleet's revision.
fn a_bad_table_is_refused_and_every_datacenter_serves_the_revision(world: &Canonical, dir: &Path) {
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"bad\"\nvips = [\"not-an-address\"]\ncomponent = \"{}\"\n",
            edgeplane_testkit::app("hello").display()
        ),
    )
    .unwrap();
    let (ok, out) = edgectl(world, &["deploy", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("vips[0]"), "{out}");

    // Every datacenter says it serves the fleet's revision.
    let (ok, out) = edgectl(world, &["--json", "fleet", "status"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    for dc in ["pop", "dc2"] {
        let beat = &status["datacenters"][dc];
        assert_eq!(beat["revision"], status["revision"], "{status}");
        assert!(beat["error"].is_null(), "{status}");
    }
}

/// A pin set fleet-wide holds at every datacenter: the POP hands hello to dc2, dc2 serves it
/// itself, and each map entry is pinned (the engine leaves it); unpinned, it is local again.
fn a_fleet_pin_holds_everywhere_until_unpinned(world: &Canonical) {
    let (ok, out) = edgectl(world, &["placement", "pin", "hello", "dc2"]);
    assert!(ok, "{out}");
    let dc2_id = world.plan.datacenter("dc2").unwrap().id;
    let pinned = |dc: &str| {
        let maps = edgeplane::PinnedMaps::open(world.pins(dc)).unwrap();
        maps.placement(maps.app_id("hello").unwrap()).unwrap()
    };
    let started = Instant::now();
    // Each datacenter applies the pin on its own: wait for both.
    while ["pop", "dc2"]
        .iter()
        .any(|dc| pinned(dc).flags & placement_flags::PINNED == 0)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pin not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (pop, dc2) = (pinned("pop"), pinned("dc2"));
    assert_eq!(
        (pop.kind, pop.datacenter),
        (placement_kind::DATACENTER, dc2_id)
    );
    assert_eq!(dc2.kind, placement_kind::LOCAL);
    assert_ne!(dc2.flags & placement_flags::PINNED, 0);
    let (_, headers, _, _) = world.through_pop("hello.test", "/");
    assert_eq!(header(&headers, "x-edge-placement"), Some("remote-dc2"));
    let (ok, out) = edgectl(world, &["placement", "unpin", "hello"]);
    assert!(ok, "{out}");
    let started = Instant::now();
    while pinned("pop").flags & placement_flags::PINNED != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "unpin not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, headers, _, _) = world.through_pop("hello.test", "/");
    assert_eq!(header(&headers, "x-edge-placement"), Some("local"));
}

/// The blocklist and the rate limit, fleet-wide: in both datacenters' maps.
fn the_guard_goes_fleet_wide(world: &Canonical) {
    let (ok, out) = edgectl(world, &["block", "add", "203.0.113.0/24"]);
    assert!(ok, "{out}");
    let (ok, out) = edgectl(
        world,
        &["ratelimit", "set", "--pps", "5000", "--burst", "200"],
    );
    assert!(ok, "{out}");
    let guarded = |dc: &str| {
        let maps = edgeplane::PinnedMaps::open(world.pins(dc)).unwrap();
        let blocked = maps.block_list().unwrap().len() == 1;
        let rl = maps.rate_limit().unwrap();
        blocked && rl.pps == 5000 && rl.burst == 200
    };
    let started = Instant::now();
    while !(guarded("pop") && guarded("dc2")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "guard not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, out) = edgectl(world, &["block", "rm", "203.0.113.0/24"]);
    assert!(ok, "{out}");
    let started = Instant::now();
    for dc in ["pop", "dc2"] {
        let maps = edgeplane::PinnedMaps::open(world.pins(dc)).unwrap();
        while !maps.block_list().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "unblock not applied at {dc}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn without_nats_every_edged_serves_its_snapshot_and_catches_up_after() {
    if !require_root("fleet-snapshot") {
        return;
    }
    let mut world = start("fleetsnap");
    let dir = tempdir("fleet-snapshot");
    deploy(
        &world,
        &hello_table(&dir, "hello.toml", &edgeplane_testkit::app("hello")),
    );
    everywhere(&world, "serving hello", is_hello);

    // NATS dies: both keep serving; dc2's edged restarted meanwhile serves from its snapshot.
    world.nats.as_mut().unwrap().kill();
    everywhere(&world, "serving hello without NATS", is_hello);
    world.servers.retain(|s| !s.name.contains("dc2"));
    world.restart("dc2").unwrap();
    everywhere(&world, "serving hello from the snapshot", is_hello);

    // NATS is back, but dc2 cannot reach it: a change made now reaches the POP only...
    let nats_ns = world.world.ns("nats");
    world.nats.as_mut().unwrap().restart(nats_ns).unwrap();
    let link = |up: &str| {
        world
            .world
            .ns("dc2")
            .ip(&["link", "set", "to-nats", up])
            .unwrap()
    };
    link("down");
    deploy(
        &world,
        &hello_table(&dir, "hello-v2.toml", &edgeplane_testkit::app("echo")),
    );
    let started = Instant::now();
    while !at(&world, "pop").as_ref().is_some_and(is_echo) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the POP did not update"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        at(&world, "dc2").as_ref().is_some_and(is_hello),
        "dc2 serves what it had"
    );
    // ... and dc2 applies it once it can reach NATS again (the link's route to NATS's
    // address went with the link: put back).
    link("up");
    let nats_ip = world.nats.as_ref().unwrap().addr.ip().to_string();
    let via = world.plan.addr_of("dc2", "nats").unwrap().to_string();
    world
        .world
        .ns("dc2")
        .ip(&["route", "replace", &format!("{nats_ip}/32"), "via", &via])
        .unwrap();
    let took = everywhere(&world, "serving the change made meanwhile", is_echo);
    eprintln!("dc2 caught up {took:?} after its link to NATS came back");
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeplane-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_pop_places_fetcher_at_dc2_from_dc2s_streamed_measurements_without_asking_dc2() {
    if !require_root("fleet-measurements") {
        return;
    }
    let world = start("fleetmeas");
    let dir = tempdir("fleet-measurements");
    let (url, authority) = Canonical::backend_urls().unwrap();
    let table = dir.join("fetcher.toml");
    std::fs::write(
        &table,
        format!(
            "name = \"fetcher\"\nhosts = [\"fetch.test\"]\ncomponent = \"{}\"\n\
             env = {{ BACKEND_URL = \"{url}\" }}\nallowed_backends = [\"{authority}\"]\n\
             placement = {{ mode = \"smart\" }}\n",
            edgeplane_testkit::app("fetcher").display()
        ),
    )
    .unwrap();
    deploy(&world, &table);

    dc2s_figure_reaches_the_pop(&world, &authority);
    traffic_places_fetcher_at_dc2(&world);
    // A hostname hint is placed from dc2's HTTP probe of that backend, from the stream too.
    let hinted = dir.join("hinted.toml");
    std::fs::write(
        &hinted,
        format!(
            "name = \"hinted\"\nhosts = [\"hinted.test\"]\ncomponent = \"{}\"\n\
             placement = {{ hostname = \"{authority}\" }}\n",
            edgeplane_testkit::app("hello").display()
        ),
    )
    .unwrap();
    deploy(&world, &hinted);
    world
        .wait_status(
            "hinted",
            "placed at dc2",
            |s| s.placed_at() == Some("dc2"),
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(
        world.metric("pop", "edgeplane_placement_peer_probes_total", &[]),
        0,
        "the POP asked dc2 for a probe"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// dc2 measures the backend the fleet's apps call, and its figure reaches the POP through the
/// stream.
fn dc2s_figure_reaches_the_pop(world: &Canonical, authority: &str) {
    let started = Instant::now();
    let dc2_backend_us = loop {
        let view: serde_json::Value =
            serde_json::from_str(&world.admin("pop", "/measurements")).unwrap();
        if let Some(us) = view["dc2"]["backends_us"][authority].as_u64() {
            break us;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no measurements from dc2 at the POP: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let backend_rtt = world.plan.rtt("dc2", "backend").unwrap();
    eprintln!("dc2 -> backend: {dc2_backend_us} us measured at dc2 (link {backend_rtt:?})");
    assert!(
        Duration::from_micros(dc2_backend_us) >= backend_rtt.mul_f64(0.9),
        "{dc2_backend_us} us"
    );
}

/// Traffic through the POP: the engine places fetcher at dc2 with dc2's figure.
fn traffic_places_fetcher_at_dc2(world: &Canonical) {
    let started = Instant::now();
    let mut requests = 0;
    loop {
        let (status, headers, body, _) = world.through_pop("fetch.test", "/?k=5");
        assert_eq!(status, 200, "{body}");
        requests += 1;
        if header(&headers, "x-edge-placement") == Some("remote-dc2") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fetcher not placed at dc2 after {requests} requests"
        );
    }
    eprintln!(
        "placed at dc2 after {requests} requests, {:?} of traffic, from streamed measurements",
        started.elapsed()
    );
}

#[test]
fn over_mutual_tls_the_fleet_deploys_and_streams_measurements_and_refuses_strangers() {
    if !require_root("fleet-tls") {
        return;
    }
    let world = Canonical::start_fleet_tls(
        "fleettls",
        &["pop", "dc2"],
        0.0,
        &edgeplane_binary("edged"),
        |_| Tuning::default(),
    )
    .unwrap();
    let dir = tempdir("fleet-tls");
    deploy(
        &world,
        &hello_table(&dir, "hello.toml", &edgeplane_testkit::app("hello")),
    );
    // Answering, not only listed at /apps: workers take a new generation at their next tick.
    everywhere(&world, "serving hello over the TLS control plane", is_hello);
    let (status, _, body, _) = world.through_pop("hello.test", "/");
    assert_eq!((status, body.as_str()), (200, "hello from wasm\n"));
    // dc2's measurements reach the POP through the stream, over the same TLS.
    let started = Instant::now();
    loop {
        let view: serde_json::Value =
            serde_json::from_str(&world.admin("pop", "/measurements")).unwrap();
        if view["dc2"]["at_ms"].as_u64().is_some_and(|at| at > 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no measurements from dc2 at the POP: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without a certificate, or with another CA's, NATS lets no one in.
    let nats = world.nats.as_ref().unwrap();
    let url = nats.url();
    let plain = world
        .world
        .ns("pop")
        .command(edgeplane_binary("edgectl").to_str().unwrap())
        .args(["--nats", &url, "fleet", "status"])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "edgectl without a certificate got in"
    );
    let stranger = edgeplane_testkit::tls::TestCa::new(&dir.join("stranger")).unwrap();
    let forged = stranger.issue("operator", &["operator"], 30).unwrap();
    let tls = nats.tls.as_ref().unwrap();
    let refused = world
        .world
        .ns("pop")
        .command(edgeplane_binary("edgectl").to_str().unwrap())
        .env("EDGEPLANE_NATS_CA", &tls.ca)
        .env("EDGEPLANE_NATS_CERT", &forged.cert)
        .env("EDGEPLANE_NATS_KEY", &forged.key)
        .args(["--nats", &url, "fleet", "status"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a certificate from another CA got in"
    );
    let (ok, status) = edgectl(&world, &["fleet", "status"]);
    assert!(ok && status.contains("dc2"), "{status}");
    let _ = std::fs::remove_dir_all(dir);
}
