//! Handoff between datacenters on the canonical world: the POP's edged hands a request to dc2's
//! edged over the emulated 30 ms link when PLACEMENT says so, dc2 serves it and never hands it
//! on, forged handoffs are refused, and a dead dc2 leaves the POP serving locally until probes
//! see it back.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use edgeplane_abi::{Placement, placement_kind};
use edgeplane_placement::{AppStatus, Verdict};
use edgeplane_testkit::edged::{self, WORKER_PORT};
use edgeplane_testkit::{
    canonical::{self, Canonical},
    raw_http::header,
    require_root,
};

fn at_dc(dc: u32) -> Placement {
    Placement {
        kind: placement_kind::DATACENTER,
        datacenter: dc,
        ..Default::default()
    }
}

/// The fetcher app's `[[apps]]` table, calling the backend at `url`, with `more` lines.
fn fetcher_app(url: &str, authority: &str, more: &str) -> String {
    format!(
        "[[apps]]\nname = \"fetcher\"\nhosts = [\"fetch.test\"]\ncomponent = \"{}\"\n\
         env = {{ BACKEND_URL = \"{url}\" }}\nallowed_backends = [\"{authority}\"]\n{more}",
        edgeplane_testkit::app("fetcher").display()
    )
}

/// A hello request from the client through the POP: status, placement header, time taken.
/// pop and dc2 serving guest app `app` of `apps/` on `<app>.test`.
fn world_serving(test: &str, app: &str, holdout: f64) -> Canonical {
    let component = edgeplane_testkit::app(app);
    canonical::start(test, &["pop", "dc2"], holdout, |_, _| {
        format!(
            "[[apps]]\nname = \"{app}\"\nhosts = [\"{app}.test\"]\ncomponent = \"{}\"\n",
            component.display()
        )
    })
}

/// As `world_serving`, `app` placed at dc2 by the POP's map.
fn placed_at_dc2(test: &str, app: &str, holdout: f64) -> Canonical {
    let world = world_serving(test, app, holdout);
    let dc2_id = world.plan.datacenter("dc2").unwrap().id;
    edged::place(world.pins("pop"), app, at_dc(dc2_id)).unwrap();
    world
}

fn hello(world: &Canonical) -> (u16, String, Duration) {
    let (status, headers, body, took) = world.through_pop("hello.test", "/");
    if status == 200 {
        assert_eq!(body, "hello from wasm\n");
    }
    let placement = header(&headers, "x-edge-placement")
        .unwrap_or("")
        .to_owned();
    (status, placement, took)
}

/// edgeplane_app_handoffs_total for hello with this outcome, summed over `dc`'s workers.
fn handoffs(world: &Canonical, dc: &str, outcome: &str) -> u64 {
    world.metric(
        dc,
        "edgeplane_app_handoffs_total",
        &["app=\"hello\"", &format!("outcome=\"{outcome}\"")],
    )
}

#[test]
fn the_pop_hands_requests_to_dc2_which_serves_them_and_refuses_forgeries() {
    if !require_root("handoff") {
        return;
    }
    let mut world = world_serving("handoff", "hello", 0.01);
    let dc2_id = world.plan.datacenter("dc2").unwrap().id;
    let pop_id = world.plan.datacenter("pop").unwrap().id;
    let pop_dc2_rtt = world.plan.rtt("pop", "dc2").unwrap();

    // No placement: served at the POP.
    let (status, placement, _) = hello(&world);
    assert_eq!((status, placement.as_str()), (200, "local"));

    // Placed at dc2: handed off, so it pays at least the POP-dc2 round trip.
    edged::place(world.pins("pop"), "hello", at_dc(dc2_id)).unwrap();
    for _ in 0..3 {
        let (status, placement, took) = hello(&world);
        assert_eq!((status, placement.as_str()), (200, "remote-dc2"));
        assert!(
            took >= pop_dc2_rtt,
            "a handoff over a {pop_dc2_rtt:?} link took {took:?}"
        );
    }

    // dc2 placing hello back at the POP does not bounce a handed-off request.
    edged::place(world.pins("dc2"), "hello", at_dc(pop_id)).unwrap();
    let (status, placement, _) = hello(&world);
    assert_eq!((status, placement.as_str()), (200, "remote-dc2"));

    let dc2_addr = SocketAddr::from((world.world.addr_of("pop", "dc2").unwrap(), WORKER_PORT));
    a_forged_handoff_is_refused(&world, dc2_addr);
    a_replayed_handoff_is_refused(&world, dc2_addr, pop_id);
    // dc2 counted what it served for the POP and what it refused.
    assert_eq!(handoffs(&world, "dc2", "received"), 5);
    assert_eq!(handoffs(&world, "dc2", "rejected"), 2);
    assert_eq!(handoffs(&world, "pop", "sent"), 4);

    // dc2 goes away: the POP serves locally instead of failing, and once three handoffs in a
    // row have failed (the default `peer_down_after`: one lost packet does not move traffic)
    // it does not try dc2 at all until probes see it back.
    world.servers.pop();
    for _ in 0..5 {
        let (status, placement, _) = hello(&world);
        assert_eq!(
            (status, placement.as_str()),
            (200, "local-fallback-from-dc2")
        );
    }
    // The engine's probes count against dc2 too, so one of the three may be a probe's.
    let (failed, skipped) = (
        handoffs(&world, "pop", "failed"),
        handoffs(&world, "pop", "skipped"),
    );
    assert!(
        (1..=3).contains(&failed) && skipped >= 2 && failed + skipped == 5,
        "failed {failed}, skipped {skipped}"
    );
}

/// A request with handoff headers that do not verify is refused by dc2.
fn a_forged_handoff_is_refused(world: &canonical::Canonical, dc2_addr: SocketAddr) {
    let forged = send_to_dc2(
        world,
        dc2_addr,
        b"GET / HTTP/1.1\r\nHost: hello.test\r\nx-edge-hop: 1\r\nx-edge-from: 1\r\n\
          x-edge-client: 10.0.0.1:1\r\nx-edge-time: 0\r\nx-edge-auth: 00\r\n\r\n",
    );
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    assert!(forged.contains("handoff rejected"), "{forged}");
}

/// A genuine handoff captured on the wire and sent again is refused: the second copy is a
/// replay, whichever worker it reaches.
fn a_replayed_handoff_is_refused(world: &canonical::Canonical, dc2_addr: SocketAddr, pop_id: u32) {
    // Signed as the POP signs, with the key this world drew for pop and dc2.
    let captured = signed_by_pop(world.world.keys.secret("pop", "dc2").unwrap(), pop_id);
    let wire = wire_of(&captured);
    let first = send_to_dc2(world, dc2_addr, &wire);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let replayed = send_to_dc2(world, dc2_addr, &wire);
    assert!(replayed.starts_with("HTTP/1.1 403"), "{replayed}");
    assert!(replayed.contains("replay"), "{replayed}");
}

/// `GET /` for hello.test signed now as the POP signs, with the key `secret` (hex) as key 1.
fn signed_by_pop(secret: &str, pop_id: u32) -> edgeplane_dataplane::http::Request {
    let mut req = edgeplane_testkit::request("GET / HTTP/1.1\r\nHost: hello.test\r\n\r\n");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = edgeplane_dataplane::handoff::SecretKey {
        id: 1,
        secret: hex::decode(secret).unwrap(),
    };
    edgeplane_dataplane::handoff::auth::sign(&key, &mut req, pop_id, "192.0.2.1:1000", 1, now);
    req
}

/// A request as its sender writes it on the wire, Content-Length framed.
fn wire_of(req: &edgeplane_dataplane::http::Request) -> Vec<u8> {
    let mut wire = format!("{} {} HTTP/1.1\r\n", req.method, req.target).into_bytes();
    for (name, value) in &req.headers {
        if edgeplane_dataplane::http::is_hop_by_hop(name) {
            continue;
        }
        wire.extend_from_slice(name.as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(format!("content-length: {}\r\n\r\n", req.body.len()).as_bytes());
    wire.extend_from_slice(&req.body);
    wire
}

/// `wire` sent to dc2's workers from the POP's namespace on a connection of its own: the
/// answer's first bytes.
fn send_to_dc2(world: &canonical::Canonical, dc2_addr: SocketAddr, wire: &[u8]) -> String {
    world
        .world
        .ns("pop")
        .run(|| {
            let mut s = TcpStream::connect_timeout(&dc2_addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(wire).unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .unwrap()
}

/// Runs `request` from four client threads, back to back, for 1.5 s, then kills dc2's edged
/// (SIGKILL: connections reset, requests lost mid-flight) and goes on for 2.5 s; returns every
/// answer.
fn while_dc2_dies<T: Send>(world: &Canonical, request: impl Fn() -> T + Sync) -> Vec<T> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        seen.push(request());
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let killed_at = Instant::now();
        world
            .servers
            .iter()
            .find(|s| s.name.contains("dc2"))
            .unwrap()
            .kill();
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, Ordering::Relaxed);
        eprintln!(
            "dc2 killed; clients stopped {:?} later",
            killed_at.elapsed()
        );
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    })
}

#[test]
fn dc2_killed_under_load_fails_no_idempotent_request() {
    if !require_root("handoff-kill") {
        return;
    }
    let world = canonical::start("handoff-kill", &["pop", "dc2"], 0.0, |url, authority| {
        fetcher_app(url, authority, "")
    });
    let dc2_id = world.plan.datacenter("dc2").unwrap().id;
    edged::place(world.pins("pop"), "fetcher", at_dc(dc2_id)).unwrap();

    let answers = while_dc2_dies(&world, || {
        let (status, headers, body, _) = world.through_pop("fetch.test", "/?k=1");
        let placement = header(&headers, "x-edge-placement")
            .unwrap_or("")
            .to_owned();
        (status, placement, body)
    });
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status != 200)
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let remote = answers.iter().filter(|(_, p, _)| p == "remote-dc2").count();
    let fallback = answers
        .iter()
        .filter(|(_, p, _)| p == "local-fallback-from-dc2")
        .count();
    eprintln!(
        "{} GETs: {remote} served by dc2, {fallback} at the POP after dc2 died",
        answers.len()
    );
    assert!(remote > 0 && fallback > 0, "{answers:?}");
    assert_eq!(remote + fallback, answers.len(), "{answers:?}");
}

#[test]
fn a_post_is_never_run_twice_while_dc2_is_killed_and_restarted() {
    if !require_root("handoff-post") {
        return;
    }
    // Each run of the fetcher (k=1) calls the backend once: the backend counts the runs, at
    // dc2 or at the POP, whichever ran it.
    let mut world = canonical::start("handoff-post", &["pop", "dc2"], 0.0, |url, authority| {
        fetcher_app(url, authority, "")
    });
    let dc2_id = world.plan.datacenter("dc2").unwrap().id;
    edged::place(world.pins("pop"), "fetcher", at_dc(dc2_id)).unwrap();
    let runs_before = world.backend_served.load(Ordering::Relaxed);
    let post = |world: &Canonical| {
        let (status, headers, _, _) =
            world.through_pop_with("POST", "fetch.test", "/?k=1", b"order=1");
        let placement = header(&headers, "x-edge-placement")
            .unwrap_or("")
            .to_owned();
        (status, placement)
    };
    let answers = while_dc2_dies(&world, || post(&world));
    // dc2 back: POSTs go there again once a probe has seen it.
    world.restart("dc2").unwrap();
    let back = Instant::now();
    let mut after = Vec::new();
    while back.elapsed() < Duration::from_secs(15) {
        let answer = post(&world);
        let remote = answer.1 == "remote-dc2";
        after.push(answer);
        if remote && after.len() > 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let all: Vec<_> = answers.iter().chain(&after).collect();
    let runs = world.backend_served.load(Ordering::Relaxed) - runs_before;
    let ok = all.iter().filter(|(status, _)| *status == 200).count() as u64;
    let not_retried = all.iter().filter(|(status, _)| *status == 502).count() as u64;
    eprintln!(
        "{} POSTs: {ok} answered 200, {not_retried} 502 (not retried), {runs} runs of the app",
        all.len()
    );
    assert!(
        all.iter().all(|(status, _)| matches!(status, 200 | 502)),
        "{all:?}"
    );
    // Every 200 ran exactly once; a 502 ran at most once (dc2 may have run it before dying);
    // nothing ran twice.
    assert!(runs >= ok, "{runs} runs for {ok} answered POSTs");
    assert!(
        runs <= ok + not_retried,
        "{runs} runs of the app for {} POSTs: a POST ran twice",
        all.len()
    );
    assert!(
        after.last().is_some_and(|(_, p)| p == "remote-dc2"),
        "POSTs never went back to dc2: {after:?}"
    );
}

#[test]
fn a_dead_peer_is_marked_down_and_its_apps_return_when_probes_see_it_back() {
    if !require_root("peer-back") {
        return;
    }
    // A hostname hint: the engine places the app by HTTP probes of the backend, from the POP
    // and from dc2, without traffic.
    let mut world = canonical::start("peer-back", &["pop", "dc2"], 0.0, |url, authority| {
        fetcher_app(
            url,
            authority,
            &format!("placement = {{ hostname = \"{authority}\" }}\n"),
        )
    });
    let at_dc2 = |s: &AppStatus| s.placed_at() == Some("dc2");
    let fetch = |world: &Canonical| {
        let (status, headers, body, _) = world.through_pop("fetch.test", "/?k=1");
        assert_eq!(status, 200, "{body}");
        header(&headers, "x-edge-placement")
            .unwrap_or("")
            .to_owned()
    };
    world
        .wait_status("fetcher", "placed at dc2", at_dc2, Duration::from_secs(15))
        .unwrap();
    assert!(
        world.backend_served.load(Ordering::Relaxed) > 0,
        "the HTTP probes reached the backend"
    );
    assert_eq!(fetch(&world), "remote-dc2");

    world
        .servers
        .iter()
        .find(|s| s.name.contains("dc2"))
        .unwrap()
        .kill();
    let killed = Instant::now();
    // Marked down by the engine's next probe (1 s tick, 1 s connect timeout) and the app
    // comes back here without a cooldown.
    let status = world
        .wait_status(
            "fetcher",
            "back here, its peer down",
            |s| matches!(s.verdict, Verdict::LocalPeerDown(_)),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(status.verdict, Verdict::LocalPeerDown("dc2".into()));
    eprintln!("dc2 marked down {:?} after it died", killed.elapsed());
    assert!(fetch(&world).starts_with("local"));

    world.restart("dc2").unwrap();
    let restarted = Instant::now();
    world
        .wait_status("fetcher", "placed at dc2", at_dc2, Duration::from_secs(15))
        .unwrap();
    eprintln!(
        "placed at dc2 again {:?} after it came back",
        restarted.elapsed()
    );
    assert_eq!(fetch(&world), "remote-dc2");
}

#[test]
fn a_response_streamed_at_dc2_streams_through_the_pop() {
    if !require_root("handoff-stream") {
        return;
    }
    let world = placed_at_dc2("handoff-stream", "stream", 0.01);
    let pop = world.pop_addr();
    let r = world
        .world
        .ns("client")
        .run(|| {
            let mut s = TcpStream::connect_timeout(&pop, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /?lines=4&ms=150 HTTP/1.1\r\nHost: stream.test\r\n\r\n")
                .unwrap();
            edgeplane_testkit::read_response(&mut s, false)
        })
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-edge-placement"), Some("remote-dc2"));
    assert!(r.complete, "{r:?}");
    assert_eq!(r.body(), b"line 0\nline 1\nline 2\nline 3\n");
    // dc2 writes a line every 150 ms: relayed as it comes, the first reaches the client about
    // 450 ms before the last; buffered at the POP, they would arrive together.
    let (first, last) = (r.pieces[0].0, r.pieces.last().unwrap().0);
    assert!(
        last.duration_since(first) >= Duration::from_millis(300),
        "lines arrived {:?} apart through the POP: buffered, not streamed",
        last.duration_since(first)
    );
}

/// `dc`'s keys file with key 1 (`old`) and, when given, key 2 (`new`, `accept_only` or not) for
/// `peer`.
fn keys_file(peer: &str, old: Option<&str>, new: Option<(&str, bool)>) -> String {
    let mut out = String::new();
    if let Some(old) = old {
        out.push_str(&format!(
            "[[keys]]\npeer = \"{peer}\"\nid = 1\nsecret = \"{old}\"\n\n"
        ));
    }
    if let Some((new, accept_only)) = new {
        out.push_str(&format!(
            "[[keys]]\npeer = \"{peer}\"\nid = 2\nsecret = \"{new}\"\naccept_only = {accept_only}\n"
        ));
    }
    out
}

#[test]
fn handoff_keys_rotate_by_reload_without_a_failed_handoff_and_the_old_key_then_fails() {
    if !require_root("key-rotation") {
        return;
    }
    let world = placed_at_dc2("keyrot", "hello", 0.0);
    let old = world.world.keys.secret("pop", "dc2").unwrap().to_owned();
    let new = edgeplane::keys::random_secret_hex();
    let write = |dc: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        let path = world.keys_path(dc);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let reload = |dc: &str| {
        let (status, body) = world.reload(dc);
        assert_eq!(status, 200, "{dc}: {body}");
    };
    let handed_off = || {
        for _ in 0..3 {
            let (status, placement, _) = hello(&world);
            assert_eq!((status, placement.as_str()), (200, "remote-dc2"));
        }
    };
    handed_off();
    // 1. Both ends accept the new key; the old one still signs.
    for (dc, peer) in [("pop", "dc2"), ("dc2", "pop")] {
        write(dc, &keys_file(peer, Some(&old), Some((&new, true))));
        reload(dc);
    }
    handed_off();
    // 2. The POP signs with the new key first: dc2 accepts it already.
    write("pop", &keys_file("dc2", Some(&old), Some((&new, false))));
    reload("pop");
    handed_off();
    write("dc2", &keys_file("pop", Some(&old), Some((&new, false))));
    reload("dc2");
    // 3. The old key goes.
    for (dc, peer) in [("pop", "dc2"), ("dc2", "pop")] {
        write(dc, &keys_file(peer, None, Some((&new, false))));
        reload(dc);
    }
    handed_off();
    assert_eq!(handoffs(&world, "pop", "failed"), 0);
    assert_eq!(handoffs(&world, "dc2", "rejected"), 0);

    // A handoff signed with the retired key is refused now, naming the key.
    let pop_id = world.plan.datacenter("pop").unwrap().id;
    let dc2_addr = SocketAddr::from((world.world.addr_of("pop", "dc2").unwrap(), WORKER_PORT));
    let answer = send_to_dc2(&world, dc2_addr, &wire_of(&signed_by_pop(&old, pop_id)));
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("names key 1"), "{answer}");

    // A keys file with a publicly known key is refused whole; handoffs go on with the new key.
    let public = "6564676570616e652d63616e6f6e6963616c2d746573746265642d6b65792d31";
    write("pop", &keys_file("dc2", Some(public), Some((&new, false))));
    let (status, body) = world.reload("pop");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("publicly known"), "{body}");
    handed_off();
}
