//! Live reconfiguration of a running edged under load: a component replaced, an app added,
//! another removed, a blocklist entry added, by `edgectl reload`, while the project's load
//! generator keeps many keep-alive connections busy. No request fails; the new version answers
//! as soon as the reload returns; a bad config is refused with its file, line and field, and
//! the running one keeps serving.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use edgeplane::{PinnedMaps, addr::Vip};
use edgeplane_bench::loadgen::{self, Arrival, LoadSpec};
use edgeplane_testkit::{
    TwoHosts,
    config::{App, Config},
    edgeplane_binary,
    raw_http::{get, header},
    require_root,
};

const ADMIN: &str = "127.0.0.1:9911";
/// The second test's edged (tests of one binary run at once, each in its own namespaces).
const ADMIN_2: &str = "127.0.0.1:9913";

/// An app on `host`, reached at the server's address on `vip_port` when given.
fn app(name: &str, host: &str, vip_port: Option<u16>, component: &Path) -> App {
    let app = App::component(name, component).hosts(&[host]);
    match vip_port {
        Some(port) => app.vip(port),
        None => app,
    }
}

/// edged in the server namespace with two workers, listening on every address.
fn config(name: &str, admin: &str, apps: impl IntoIterator<Item = App>) -> Config {
    let mut config = Config::new(name)
        .workers(2)
        .admin(admin)
        .set("server", r#"listen = "0.0.0.0:8080""#);
    config.set_apps(apps);
    config
}

/// `edgectl <args>` against the edged in the server namespace: (success, stdout + stderr).
fn edgectl(hosts: &TwoHosts, args: &[&str]) -> (bool, String) {
    edgectl_at(hosts, ADMIN, args)
}

fn edgectl_at(hosts: &TwoHosts, admin: &str, args: &[&str]) -> (bool, String) {
    let out = hosts
        .server
        .command(edgeplane_binary("edgectl").to_str().unwrap())
        .args(["--admin", admin])
        .args(args)
        .output()
        .expect("running edgectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Status, headers and body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One GET from the client namespace on a new connection from `source`.
fn fetch(hosts: &TwoHosts, source: &str, host: &str) -> anyhow::Result<Answer> {
    let server: SocketAddr = format!("{}:8080", TwoHosts::SERVER_V4).parse()?;
    let source = source.to_owned();
    let host = host.to_owned();
    hosts.client.run(move || -> anyhow::Result<_> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(source.parse()?, 0).into())?;
        sock.connect_timeout(&server.into(), Duration::from_secs(1))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(get(&mut s, &host, "/"))
    })?
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn reload_under_load_swaps_adds_removes_and_blocks_without_a_failed_request() -> anyhow::Result<()>
{
    if !require_root("reload_under_load") {
        return Ok(());
    }
    // hello.test is served by hello (v1), then by echo (v2, which says x-echo-method).
    let (hello, echo, wstd) = (
        edgeplane_testkit::app("hello"),
        edgeplane_testkit::app("echo"),
        edgeplane_testkit::app("hello-wstd"),
    );
    let hosts = TwoHosts::new()?;
    let mut config = config(
        "live-reload",
        ADMIN,
        [
            app("hello", "hello.test", Some(8080), &hello),
            app("gone", "gone.test", Some(8081), &hello),
        ],
    );
    let _edged = hosts.start(&config)?;
    let (status, headers, _) = fetch(&hosts, TwoHosts::CLIENT2_V4, "hello.test")?;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-echo-method"), None, "v1 is hello");
    assert_eq!(fetch(&hosts, TwoHosts::CLIENT_V4, "gone.test")?.0, 200);

    // Open-loop load from the client's first address for the whole test.
    let spec = LoadSpec {
        addr: format!("{}:8080", TwoHosts::SERVER_V4).parse()?,
        host: "hello.test".into(),
        path: "/".into(),
        connections: 32,
        duration: Duration::from_secs(8),
        arrival: Arrival::Open { rate: 800.0 },
    };
    let load = std::thread::scope(|scope| -> anyhow::Result<loadgen::LoadReport> {
        let running = scope.spawn(|| hosts.client.run(|| loadgen::run("reload", &spec)));
        std::thread::sleep(Duration::from_secs(2));
        let maps = a_reload_swaps_adds_removes_and_blocks(&hosts, &mut config, &echo, &wstd)?;
        every_worker_serves_the_new_version(&hosts, &echo)?;
        a_bad_config_is_refused_whole(&hosts, &mut config, &hello, &maps)?;
        running
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??
    })?;
    eprintln!(
        "reload under load: {} requests, {} failed, p99 {:.2} ms, max {:.2} ms",
        load.completed, load.errors, load.p99_ms, load.max_ms
    );
    assert_eq!(load.errors, 0, "requests failed across the reloads");
    assert!(
        load.completed > 3000,
        "{} requests completed",
        load.completed
    );
    Ok(())
}

/// A request running when its app's component is replaced finishes on the version it started
/// with (its instance is not cut short), while the next request gets the new version.
#[test]
fn a_request_running_across_a_component_swap_finishes_on_its_version() -> anyhow::Result<()> {
    if !require_root("a_request_running_across_a_component_swap") {
        return Ok(());
    }
    let (stream, echo) = (
        edgeplane_testkit::app("stream"),
        edgeplane_testkit::app("echo"),
    );
    let hosts = TwoHosts::new()?;
    let mut config = config(
        "live-inflight",
        ADMIN_2,
        [app("slow", "slow.test", None, &stream)],
    );
    let _edged = hosts.start(&config)?;
    let server: SocketAddr = format!("{}:8080", TwoHosts::SERVER_V4).parse()?;
    let received = std::thread::scope(|scope| -> anyhow::Result<edgeplane_testkit::Received> {
        // Ten lines 200 ms apart: two seconds of a v1 instance at work.
        let running = scope.spawn(|| {
            hosts
                .client
                .run(|| -> anyhow::Result<edgeplane_testkit::Received> {
                    let mut s = TcpStream::connect(server)?;
                    s.set_read_timeout(Some(Duration::from_secs(20)))?;
                    std::io::Write::write_all(
                        &mut s,
                        b"GET /?lines=10&ms=200 HTTP/1.1\r\nHost: slow.test\r\n\r\n",
                    )?;
                    Ok(edgeplane_testkit::read_response(&mut s, false))
                })
        });
        std::thread::sleep(Duration::from_millis(700));
        config.set_apps([app("slow", "slow.test", None, &echo)]);
        config.write()?;
        let (ok, out) = edgectl_at(&hosts, ADMIN_2, &["reload"]);
        assert!(ok && out.contains("changed: slow"), "{out}");
        // New requests get v2 at once, while the v1 request still streams.
        let (status, headers, _) = fetch(&hosts, TwoHosts::CLIENT_V4, "slow.test")?;
        assert_eq!(
            (status, header(&headers, "x-echo-method")),
            (200, Some("GET"))
        );
        running
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))??
    })?;
    assert_eq!(received.status, 200);
    assert!(received.complete, "the v1 stream was cut: {received:?}");
    let body: Vec<u8> = received
        .pieces
        .iter()
        .flat_map(|(_, p)| p.clone())
        .collect();
    let expected: String = (0..10).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&body), expected);
    Ok(())
}

/// hello's component replaced, `new` added, `gone` removed and a source blocked by one reload:
/// the new version answers as soon as it returns, and the maps follow.
fn a_reload_swaps_adds_removes_and_blocks(
    hosts: &TwoHosts,
    config: &mut Config,
    echo: &Path,
    wstd: &Path,
) -> anyhow::Result<PinnedMaps> {
    config.set_apps([
        app("hello", "hello.test", Some(8080), echo),
        app("new", "new.test", None, wstd),
    ]);
    config.set_blocklist(&["10.77.0.3/32"]);
    config.write()?;
    let (ok, out) = edgectl(hosts, &["reload"]);
    assert!(ok, "reload failed: {out}");
    assert!(out.contains("changed: hello"), "{out}");
    assert!(out.contains("added: new"), "{out}");
    assert!(out.contains("removed: gone"), "{out}");

    // The reload returned once every worker serves it: the new version answers now.
    let (status, headers, _) = fetch(hosts, TwoHosts::CLIENT_V4, "hello.test")?;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "x-echo-method"),
        Some("GET"),
        "hello still answers with v1 after the reload"
    );
    assert_eq!(fetch(hosts, TwoHosts::CLIENT_V4, "new.test")?.0, 200);
    assert_eq!(fetch(hosts, TwoHosts::CLIENT_V4, "gone.test")?.0, 404);
    // The blocked address gets no connection at all (XDP drops its SYN).
    assert!(
        fetch(hosts, TwoHosts::CLIENT2_V4, "hello.test").is_err(),
        "a blocklisted source was served"
    );
    // The maps follow the config: gone's VIP is gone, the blocklist has the prefix.
    let maps = PinnedMaps::open(config.pins.dir())?;
    let vips: Vec<String> = maps.list_apps()?.into_iter().flat_map(|a| a.vips).collect();
    let gone_vip: Vip = format!("{}:8081/tcp", TwoHosts::SERVER_V4).parse()?;
    assert!(!vips.contains(&gone_vip.to_string()), "{vips:?}");
    assert!(maps.app_id("gone").is_err());
    assert_eq!(maps.block_list()?.len(), 1);
    Ok(maps)
}

/// Versions: hello serves echo's bytes, on every worker.
fn every_worker_serves_the_new_version(hosts: &TwoHosts, echo: &Path) -> anyhow::Result<()> {
    let (ok, out) = edgectl(hosts, &["--json", "app", "versions"]);
    assert!(ok, "{out}");
    let versions: serde_json::Value = serde_json::from_str(&out)?;
    let hello_version = versions["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "hello"))
        .map(|v| v["digest"].as_str().unwrap_or_default().to_owned());
    assert_eq!(hello_version, Some(sha256_hex(echo)));
    assert_eq!(versions["workers"], serde_json::json!([2, 2]), "{out}");
    Ok(())
}

/// A bad config (a VIP that is not one, on line `bad_line`) is refused whole, naming its file,
/// line and field; the reloaded configuration stays.
fn a_bad_config_is_refused_whole(
    hosts: &TwoHosts,
    config: &mut Config,
    hello: &Path,
    maps: &PinnedMaps,
) -> anyhow::Result<()> {
    config.set_apps([
        app("hello", "hello.test", Some(8080), hello),
        App::named("broken").set(
            r#"hosts = ["broken.test"]
vips = ["10.0.0.1/tcp"]"#,
        ),
    ]);
    config.set_blocklist(&[]);
    let bad_text = config.render();
    let bad_line = bad_text
        .lines()
        .position(|l| l.contains("10.0.0.1/tcp"))
        .unwrap()
        + 1;
    let path = config.write()?;
    let (ok, out) = edgectl(hosts, &["reload"]);
    assert!(!ok, "a bad config was accepted: {out}");
    let place = format!("{}:{bad_line}: apps[1].vips[0]", path.display());
    assert!(
        out.contains(&place),
        "the error does not say {place:?}: {out}"
    );
    // Still the reloaded configuration: v2, no blocklist change, broken unknown.
    let (status, headers, _) = fetch(hosts, TwoHosts::CLIENT_V4, "hello.test")?;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-echo-method"), Some("GET"));
    assert_eq!(fetch(hosts, TwoHosts::CLIENT_V4, "broken.test")?.0, 404);
    assert_eq!(maps.block_list()?.len(), 1);
    Ok(())
}
