//! HTTPS on the workers, as deployed: XDP on the server's link, pinned workers, real TLS
//! clients (rustls and curl) from another namespace. SNI picks the app's certificate, other
//! names get the default, sessions resume, hostile or slow handshakes cost only their own
//! connection, and a certificate replaced by a reload under load fails no request. Between
//! datacenters, handoffs cross mutual TLS, and strangers, expired certificates and plain TCP
//! are refused.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use edgeplane_abi::{Placement, placement_kind};
use edgeplane_dataplane::tls::peer::PeerTls;
use edgeplane_testkit::{
    TwoHosts,
    canonical::{self, Tuning},
    config::{App, Config},
    edged::{WORKER_PORT, place},
    edgeplane_binary,
    raw_http::{get, header, try_request},
    require_root,
    tls::{Https, Issued, TestCa},
};

const ADMIN: &str = "127.0.0.1:9941";
const ADMIN_RELOAD: &str = "127.0.0.1:9942";

fn server() -> SocketAddr {
    format!("{}:8443", TwoHosts::SERVER_V4).parse().unwrap()
}

/// edged over TLS on 8443 (handshakes time out after 1 s): the default certificate, shop's own
/// on shop.example.test, and hello from a component.
fn tls_config(config: Config, admin: &str, default: &Issued, shop: &Issued) -> Config {
    config
        .workers(2)
        .admin(admin)
        .set("server", r#"listen = "0.0.0.0:8443""#)
        .set("http", r#"handshake_timeout = "1s""#)
        .set(
            "tls",
            &format!(
                "cert = {:?}\nkey = {:?}",
                path(&default.cert),
                path(&default.key)
            ),
        )
        .app(shop_app(&shop.cert, &shop.key))
        .app(hello_app())
}

fn shop_app(cert: &Path, key: &Path) -> App {
    App::static_body("shop", "shop\n")
        .vip(8443)
        .hosts(&["shop.example.test"])
        .set(&format!(
            "tls = {{ cert = {:?}, key = {:?} }}",
            path(cert),
            path(key)
        ))
}

fn hello_app() -> App {
    App::component("hello", &edgeplane_testkit::app("hello")).hosts(&["hello.example.test"])
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn tcp() -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&server(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

#[test]
fn sni_picks_each_apps_certificate_sessions_resume_and_bad_handshakes_cost_only_themselves()
-> anyhow::Result<()> {
    if !require_root("tls_workers") {
        return Ok(());
    }
    let config = Config::new("tls-workers");
    let ca = TestCa::new(&config.dir.join("ca"))?;
    let default = ca.issue("default", &["*.example.test"], 20)?;
    let shop = ca.issue("shop", &["shop.example.test"], 90)?;
    let hosts = TwoHosts::new()?;
    let config = tls_config(config, ADMIN, &default, &shop);
    let admin = config.admin_addr();
    let _edged = hosts.start(&config)?;
    let client = ca.client();

    sni_picks_the_certificate_and_sessions_resume(&hosts, &client, &default, &shop)?;
    curl_verifies_by_name(&hosts, &ca)?;
    bad_handshakes_cost_only_their_connections(&hosts, &client, admin)?;
    edgectl_shows_each_certificate_and_warns(&hosts, admin);
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(())
}

/// SNI picks the app's own certificate, or the default for a name none covers; the client's
/// ticket resumes the next session; plain HTTP works on the same port.
fn sni_picks_the_certificate_and_sessions_resume(
    hosts: &TwoHosts,
    client: &std::sync::Arc<edgeplane_dataplane::tls::rustls::ClientConfig>,
    default: &Issued,
    shop: &Issued,
) -> anyhow::Result<()> {
    hosts.client.run(|| -> anyhow::Result<()> {
        let mut s = Https::connect(tcp()?, client, "shop.example.test")?;
        assert_eq!(s.presented(), shop.der, "shop's certificate");
        assert_eq!(s.alpn().as_deref(), Some(&b"http/1.1"[..]));
        assert!(!s.resumed(), "a first connection is a full handshake");
        for _ in 0..3 {
            let (status, _, body) = get(&mut s, "shop.example.test", "/");
            assert_eq!((status, body.as_slice()), (200, &b"shop\n"[..]));
        }
        // A name no app's certificate covers gets the default, and a component answers.
        let mut s = Https::connect(tcp()?, client, "hello.example.test")?;
        assert_eq!(s.presented(), default.der, "the default certificate");
        let (status, _, body) = get(&mut s, "hello.example.test", "/");
        assert_eq!((status, body.as_slice()), (200, &b"hello from wasm\n"[..]));
        // The client kept its ticket: the next connection resumes.
        let mut s = Https::connect(tcp()?, client, "shop.example.test")?;
        assert!(s.resumed(), "the session resumed");
        assert_eq!(get(&mut s, "shop.example.test", "/").0, 200);
        // Plain HTTP still works on the same port.
        let mut plain = tcp()?;
        assert_eq!(get(&mut plain, "shop.example.test", "/").0, 200);
        Ok(())
    })??;

    Ok(())
}

/// curl (OpenSSL), verifying against the CA, by name: over TLS 1.3, and held to TLS 1.2; a name
/// the certificate does not cover is refused.
fn curl_verifies_by_name(hosts: &TwoHosts, ca: &TestCa) -> anyhow::Result<()> {
    let resolve = format!("shop.example.test:8443:{}", TwoHosts::SERVER_V4);
    for version in [["--tlsv1.3"].as_slice(), &["--tlsv1.2", "--tls-max", "1.2"]] {
        let out = hosts
            .client
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-w",
                "%{ssl_verify_result}",
                "--cacert",
            ])
            .arg(ca.pem_path())
            .args(version)
            .args(["--resolve", &resolve, "https://shop.example.test:8443/"])
            .output()?;
        assert!(
            out.status.success(),
            "curl {version:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"shop\n0", "{version:?}");
    }
    // curl with a name whose certificate does not match what it asked for refuses.
    let resolve = format!("other.test:8443:{}", TwoHosts::SERVER_V4);
    let out = hosts
        .client
        .command("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca.pem_path())
        .args(["--resolve", &resolve, "https://other.test:8443/"])
        .output()?;
    assert!(
        !out.status.success(),
        "a name the default does not cover is refused by curl"
    );

    Ok(())
}

/// Hostile and slow handshakes: each costs its own connection, the worker serves on, and they
/// are counted.
fn bad_handshakes_cost_only_their_connections(
    hosts: &TwoHosts,
    client: &std::sync::Arc<edgeplane_dataplane::tls::rustls::ClientConfig>,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let malformed_before = hosts.metric(
        admin,
        "edgeplane_tls_failures",
        Some(("reason", "malformed")),
    );
    let timeouts_before =
        hosts.metric(admin, "edgeplane_tls_failures", Some(("reason", "timeout")));
    hosts.client.run(|| -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        // Half a ClientHello, then silence: held open until the handshake timeout, meanwhile
        // others are served.
        let mut slow: Vec<TcpStream> = Vec::new();
        for _ in 0..8 {
            let mut s = tcp()?;
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])?;
            slow.push(s);
        }
        // An endless ClientHello: a 16 MiB handshake message, record after record, past what
        // a worker holds for one.
        let mut endless = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        endless.resize(5 + 0x4000, 0x41);
        let endless = endless.repeat(6);
        for garbage in [
            &b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xde\xad\xbe\xef"[..],
            &b"\x16\x03\x01\xff\xff"[..],
            &b"\x16\x16\x16\x16\x16\x16\x16\x16\x16\x16"[..],
            &endless,
        ] {
            let mut s = tcp()?;
            // The worker may close before all of it is written.
            let _ = s.write_all(garbage);
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back);
            assert!(
                back.is_empty() || back[0] == 0x15,
                "an alert or nothing: {back:?}"
            );
        }
        let started = Instant::now();
        for _ in 0..20 {
            let mut s = Https::connect(tcp()?, client, "shop.example.test")?;
            assert_eq!(get(&mut s, "shop.example.test", "/").0, 200);
        }
        eprintln!(
            "20 handshakes beside 8 stalled ones: {:?}",
            started.elapsed()
        );
        // The stalled ones are closed by the server after the handshake timeout (1 s).
        for mut s in slow {
            let mut buf = [0u8; 64];
            let closed_at = Instant::now();
            let n = s.read(&mut buf).unwrap_or(0);
            assert!(n == 0 || buf[0] == 0x15, "closed, not answered");
            assert!(closed_at.elapsed() < Duration::from_secs(4));
        }
        Ok(())
    })??;
    assert!(
        hosts.metric(
            admin,
            "edgeplane_tls_failures",
            Some(("reason", "malformed"))
        ) >= malformed_before + 3,
        "malformed handshakes are counted"
    );
    assert!(
        hosts.metric(admin, "edgeplane_tls_failures", Some(("reason", "timeout")))
            >= timeouts_before + 8,
        "timed-out handshakes are counted"
    );
    Ok(())
}

/// edgectl shows each certificate and warns of the one inside its window; the handshakes and
/// the expiry are in /metrics.
fn edgectl_shows_each_certificate_and_warns(hosts: &TwoHosts, admin: SocketAddr) {
    let edgectl = |args: &[&str]| {
        let out = hosts
            .server
            .command(edgeplane_binary("edgectl").to_str().unwrap())
            .args(["--admin", ADMIN, "certs"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, table, warnings) = edgectl(&[]);
    assert!(ok, "{table}{warnings}");
    assert!(
        table.contains("app shop") && table.contains("CN=shop.example.test"),
        "{table}"
    );
    assert!(
        table.contains("default") && table.contains("edgeplane test CA"),
        "{table}"
    );
    assert!(
        warnings.contains("default's certificate") && warnings.contains("expires in 1"),
        "a certificate 20 days from its end is warned of: {warnings}"
    );
    assert!(!warnings.contains("app shop"), "{warnings}");
    assert!(!edgectl(&["--check"]).0, "--check fails with a warning");
    let (ok, _, warnings) = edgectl(&["--check", "--warn-days", "10"]);
    assert!(ok && warnings.is_empty(), "{warnings}");
    let expiry = hosts.metric(
        admin,
        "edgeplane_tls_certificate_expiry_timestamp_seconds",
        None,
    );
    assert!(expiry > 0, "the expiry metric");
    let handshakes = hosts.metric(admin, "edgeplane_tls_handshakes", None);
    let resumed = hosts.metric(admin, "edgeplane_tls_resumed", None);
    assert!(handshakes >= 24, "{handshakes} handshakes");
    assert!(resumed >= 20, "{resumed} resumed");
}

#[test]
fn a_certificate_replaced_by_a_reload_under_load_fails_no_request() -> anyhow::Result<()> {
    if !require_root("tls_reload") {
        return Ok(());
    }
    let config = Config::new("tls-reload");
    let ca = TestCa::new(&config.dir.join("ca"))?;
    let default = ca.issue("default", &["*.example.test"], 30)?;
    let shop = ca.issue("shop", &["shop.example.test"], 30)?;
    let hosts = TwoHosts::new()?;
    let mut config = tls_config(config, ADMIN_RELOAD, &default, &shop);
    let _edged = hosts.start(&config)?;
    let client = ca.client();

    let renewed = requests_across_a_renewal(&hosts, &ca, &client)?;
    hosts.client.run(|| -> anyhow::Result<()> {
        let s = Https::connect(tcp()?, &ca.client(), "shop.example.test")?;
        assert_eq!(
            s.presented(),
            renewed.der,
            "the renewed certificate after the reload"
        );
        assert_ne!(renewed.der, shop.der);
        Ok(())
    })??;

    a_mismatched_key_is_refused(&hosts, &ca, &mut config, &renewed)?;
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(())
}

/// New connections (full and resumed handshakes) and a keep-alive one, all the while shop's
/// certificate is renewed (new files in place, then a reload): none fails. The renewed one.
fn requests_across_a_renewal(
    hosts: &TwoHosts,
    ca: &TestCa,
    client: &std::sync::Arc<edgeplane_dataplane::tls::rustls::ClientConfig>,
) -> anyhow::Result<Issued> {
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let renewed = std::thread::scope(|scope| -> anyhow::Result<Issued> {
        // New connections (full and resumed handshakes) and a keep-alive one, all the while.
        for keep_alive in [false, false, true] {
            let (stop, ok, failed) = (&stop, &ok, &failed);
            scope.spawn(move || {
                hosts
                    .client
                    .run(|| {
                        let mut kept: Option<Https> = None;
                        while !stop.load(Relaxed) {
                            let conn = match kept.take() {
                                Some(c) => Ok(c),
                                None => tcp()
                                    .and_then(|t| Https::connect(t, client, "shop.example.test")),
                            };
                            let result = conn.and_then(|mut c| {
                                let (status, _, _) =
                                    try_request(&mut c, "GET", "shop.example.test", "/", b"")?;
                                anyhow::ensure!(status == 200, "status {status}");
                                Ok(c)
                            });
                            match result {
                                Ok(c) => {
                                    ok.fetch_add(1, Relaxed);
                                    if keep_alive {
                                        kept = Some(c);
                                    }
                                }
                                Err(e) => {
                                    eprintln!("failed: {e:#}");
                                    failed.fetch_add(1, Relaxed);
                                }
                            }
                        }
                    })
                    .unwrap();
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        // The renewal: new files in place, then a reload.
        let renewed = ca.issue("shop", &["shop.example.test"], 90)?;
        let out = hosts
            .server
            .command(edgeplane_binary("edgectl").to_str().unwrap())
            .args(["--admin", ADMIN_RELOAD, "reload"])
            .output()?;
        assert!(
            out.status.success(),
            "reload: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Relaxed);
        Ok(renewed)
    })?;
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    eprintln!("{ok} requests over TLS across the certificate reload, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 50, "{ok} requests");
    Ok(renewed)
}

/// A reload naming a key that is not the certificate's is refused; the old one serves on.
fn a_mismatched_key_is_refused(
    hosts: &TwoHosts,
    ca: &TestCa,
    config: &mut Config,
    renewed: &Issued,
) -> anyhow::Result<()> {
    let wrong = ca.issue("wrong", &["shop.example.test"], 30)?;
    config.set_apps([shop_app(&renewed.cert, &wrong.key), hello_app()]);
    config.write()?;
    let out = hosts
        .server
        .command(edgeplane_binary("edgectl").to_str().unwrap())
        .args(["--admin", ADMIN_RELOAD, "reload"])
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a mismatched key was accepted: {said}"
    );
    assert!(said.contains("shop"), "the refusal names the app: {said}");
    hosts.client.run(|| -> anyhow::Result<()> {
        let mut s = Https::connect(tcp()?, &ca.client(), "shop.example.test")?;
        assert_eq!(s.presented(), renewed.der);
        assert_eq!(get(&mut s, "shop.example.test", "/").0, 200);
        Ok(())
    })??;
    Ok(())
}

#[test]
fn handoffs_cross_mutual_tls_in_the_canonical_world_and_strangers_or_plain_tcp_are_refused()
-> anyhow::Result<()> {
    if !require_root("tls_peers") {
        return Ok(());
    }
    let dir = edgeplane_testkit::tempdir("tls-peers");
    let fleet = TestCa::new(&dir.join("fleet"))?;
    let lines: Vec<(String, String)> = ["pop", "dc2"]
        .iter()
        .map(|dc| Ok((dc.to_string(), fleet.datacenter_tls(dc, 30)?)))
        .collect::<anyhow::Result<_>>()?;
    let hello = edgeplane_testkit::app("hello");
    let world = canonical::start_tuned(
        "tls-peers",
        &["pop", "dc2"],
        0.0,
        |_, _| {
            format!(
                "[[apps]]\nname = \"hello\"\nhosts = [\"hello.test\"]\ncomponent = \"{}\"\n",
                hello.display()
            )
        },
        |dc| Tuning {
            datacenter: lines
                .iter()
                .find(|(name, _)| name == dc)
                .map(|(_, line)| line.clone())
                .unwrap_or_default(),
            ..Default::default()
        },
    );
    let dc2_id = world.plan.datacenter("dc2").unwrap().id;
    place(
        world.pins("pop"),
        "hello",
        Placement {
            kind: placement_kind::DATACENTER,
            datacenter: dc2_id,
            ..Default::default()
        },
    )?;
    five_handoffs_ride_pooled_mutual_tls(&world);
    let dc2 = SocketAddr::from((world.world.addr_of("pop", "dc2").unwrap(), WORKER_PORT));
    plain_tcp_strangers_and_expired_peers_are_refused(&world, dc2, &fleet, &dir)?;
    hostile_client_hellos_are_closed_and_counted(&world, dc2)?;
    let (status, headers, _, _) = world.through_pop("hello.test", "/");
    assert_eq!(
        (status, header(&headers, "x-edge-placement")),
        (200, Some("remote-dc2"))
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Five requests placed at dc2 ride one pooled mutual-TLS connection (or a few): dc2 counts the
/// handshakes, both sides the handoffs.
fn five_handoffs_ride_pooled_mutual_tls(world: &canonical::Canonical) {
    for _ in 0..5 {
        let (status, headers, body, _) = world.through_pop("hello.test", "/");
        assert_eq!((status, body.as_str()), (200, "hello from wasm\n"));
        assert_eq!(header(&headers, "x-edge-placement"), Some("remote-dc2"));
    }
    let handshakes = world.metric("dc2", "edgeplane_tls_handshakes_total", &[]);
    assert!(
        (1..=5).contains(&handshakes),
        "{handshakes} handshakes at dc2"
    );
    assert_eq!(
        world.metric("pop", "edgeplane_app_handoffs_total", &["outcome=\"sent\""]),
        5
    );
    assert_eq!(
        world.metric(
            "dc2",
            "edgeplane_app_handoffs_total",
            &["outcome=\"received\""]
        ),
        5
    );
}

/// A handoff over plain TCP is refused, signed or not; a certificate from another CA, or an
/// expired one from the fleet's, gets no handshake (and each is counted); a peer's own is let
/// in, and an unsigned request on it is served as any request.
fn plain_tcp_strangers_and_expired_peers_are_refused(
    world: &canonical::Canonical,
    dc2: SocketAddr,
    fleet: &TestCa,
    dir: &Path,
) -> anyhow::Result<()> {
    let peer_failures = || {
        world.metric(
            "dc2",
            "edgeplane_tls_failures_total",
            &["reason=\"peer_certificate\""],
        )
    };
    let before = peer_failures();
    world.world.ns("pop").run(|| -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        // A handoff over plain TCP is refused, signed or not: it would cross the WAN in clear.
        let mut s = TcpStream::connect_timeout(&dc2, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: hello.test\r\nx-edge-hop: 1\r\nx-edge-from: 1\r\n\
              x-edge-client: 10.0.0.1:1\r\nx-edge-time: 0\r\nx-edge-auth: 00\r\n\r\n",
        )?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("mutual TLS"), "{answer}");

        // A certificate from another CA, or an expired one from the fleet's, gets no handshake.
        let stranger_ca = TestCa::new(&dir.join("stranger"))?;
        let expired = fleet.issue("pop-expired", &["pop"], -1)?;
        let stranger = stranger_ca.issue("pop-stranger", &["pop"], 30)?;
        for (what, cert) in [("another CA's", &stranger), ("an expired", &expired)] {
            let tls = PeerTls::new(
                "pop",
                &std::fs::read(&cert.cert)?,
                &std::fs::read(&cert.key)?,
                &std::fs::read(fleet.pem_path())?,
            )?;
            let tcp = TcpStream::connect_timeout(&dc2, Duration::from_secs(5))?;
            tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
            let refused = Https::connect(tcp, &tls.client, "dc2").and_then(|mut c| {
                // TLS 1.3: the server's verdict on the client's certificate comes after the
                // client's last flight, so the first read says it.
                try_request(&mut c, "GET", "hello.test", "/", b"")
            });
            assert!(
                refused.is_err(),
                "{what} certificate was let in: {refused:?}"
            );
        }
        // dc2's own certificate checks out against the fleet's CA under its name.
        let pop_tls = PeerTls::new(
            "pop",
            &std::fs::read(fleet.issue("pop-again", &["pop"], 30)?.cert)?,
            &std::fs::read(dir.join("fleet").join("pop-again.key"))?,
            &std::fs::read(fleet.pem_path())?,
        )?;
        let tcp = TcpStream::connect_timeout(&dc2, Duration::from_secs(5))?;
        let mut c = Https::connect(tcp, &pop_tls.client, "dc2")?;
        // Without a handoff's signature, the connection is a peer's yet the request is not
        // a handoff: it is served as any request.
        let (status, _, _) = try_request(&mut c, "GET", "hello.test", "/", b"")?;
        assert_eq!(status, 200);
        Ok(())
    })??;
    assert!(
        peer_failures() >= before + 2,
        "refused peer certificates are counted"
    );

    Ok(())
}

/// The ClientHello reader that tells peers apart, on a worker that takes them: an endless
/// ClientHello (a 16 MiB handshake message, record after record) and bytes that only look like
/// records are closed and counted.
fn hostile_client_hellos_are_closed_and_counted(
    world: &canonical::Canonical,
    dc2: SocketAddr,
) -> anyhow::Result<()> {
    let malformed = || {
        world.metric(
            "dc2",
            "edgeplane_tls_failures_total",
            &["reason=\"malformed\""],
        )
    };
    let malformed_before = malformed();
    world.world.ns("pop").run(|| -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        let mut endless = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        endless.resize(5 + 0x4000, 0x41);
        for hostile in [endless.repeat(6), vec![0x16; 70_000]] {
            let mut s = TcpStream::connect_timeout(&dc2, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let started = Instant::now();
            // The worker may close before all of it is written.
            let _ = s.write_all(&hostile);
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "held open, not closed"
            );
            assert!(back.is_empty() || back[0] == 0x15, "an alert or nothing");
        }
        Ok(())
    })??;
    assert!(
        malformed() >= malformed_before + 2,
        "counted as malformed: {} then {}",
        malformed_before,
        malformed()
    );
    Ok(())
}
