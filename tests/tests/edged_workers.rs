//! edged as deployed: XDP native on the server's link, pinned workers with select_worker, and a
//! real wasm component answering real HTTP from another namespace.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use edgeplane_testkit::{
    TwoHosts,
    config::{App, Config},
    expected_worker,
    raw_http::{get, header},
    require_root,
};

const WORKERS: u32 = 2;

#[test]
fn edged_serves_a_component_through_xdp_and_select_worker_and_drains_on_sigterm()
-> anyhow::Result<()> {
    if !require_root("edged_serves_a_component") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let config = Config::new("edged-workers")
        .workers(WORKERS)
        .debug_headers();
    let access_log = config.dir.join("access.log");
    let config = config
        .set(
            "access_log",
            &format!(
                "enabled = true\npath = {:?}",
                access_log.display().to_string()
            ),
        )
        .app(App::guest("hello").vip(8080))
        .app(App::static_body("static", "static hi\n").hosts(&["static.test"]));
    let mut edged = hosts.start(&config)?;
    let scrape = |path: &str| hosts.admin(config.admin_addr(), path);
    flows_land_on_their_workers_and_hosts_route(&hosts)?;
    metrics_count_every_request(&scrape("/metrics").expect("metrics"));
    the_access_log_has_a_line_per_request(&access_log);
    every_worker_holds_hello_in_its_code_cache(&scrape("/cache").expect("cache"))?;
    sigterm_drains_and_detaches(&hosts, &mut edged)?;
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(())
}

/// 30 connections from distinct ports each served by the worker the flow hash picks (both
/// workers serve), then keep-alive, a static route and an unknown host on one connection: 80
/// requests for hello in all.
fn flows_land_on_their_workers_and_hosts_route(hosts: &TwoHosts) -> anyhow::Result<()> {
    let server: SocketAddr = format!("{}:8080", TwoHosts::SERVER_V4).parse()?;
    let mut per_worker = [0usize; WORKERS as usize];
    hosts.client.run(|| -> anyhow::Result<()> {
        for port in 45000..45030u16 {
            let client = SocketAddr::new(TwoHosts::CLIENT_V4.parse()?, port);
            let mut s = TwoHosts::connect_from(port, server)?;
            let (status, headers, body) = get(&mut s, "hello.test", "/");
            assert_eq!((status, body.as_slice()), (200, &b"hello from wasm\n"[..]));
            assert_eq!(header(&headers, "x-edge-placement"), Some("local"));
            let worker: u32 = header(&headers, "x-edge-worker").unwrap().parse()?;
            assert_eq!(
                worker,
                expected_worker(client, server, WORKERS),
                "client port {port} served by the wrong worker"
            );
            per_worker[worker as usize] += 1;
        }
        // Keep-alive on one connection, and an unknown host.
        let mut s = TcpStream::connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        for _ in 0..50 {
            assert_eq!(get(&mut s, "hello.test", "/").0, 200);
        }
        let (status, headers, body) = get(&mut s, "static.test", "/any");
        assert_eq!((status, body.as_slice()), (200, &b"static hi\n"[..]));
        assert_eq!(header(&headers, "x-edge-placement"), Some("local"));
        assert_eq!(get(&mut s, "nobody.test", "/").0, 404);
        Ok(())
    })??;
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "both workers should serve: {per_worker:?}"
    );

    Ok(())
}

/// `/metrics` (as a standard parser reads it): 80 requests for hello, XDP saw their packets,
/// each family declared once, the latency a histogram of 80 served here.
fn metrics_count_every_request((status, metrics): &(u16, String)) {
    let (status, metrics) = (*status, metrics.as_str());
    assert_eq!(status, 200);
    let requests: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("edgeplane_app_requests_total{app=\"hello\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(requests, 80, "{metrics}");
    let xdp_packets: u64 = metrics
        .lines()
        .find(|l| l.starts_with("edgeplane_xdp_packets_total{app=\"hello\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        xdp_packets >= 80,
        "XDP counted {xdp_packets} packets for hello"
    );
    // A standard parser reads every family, each declared once, and the latency of hello's
    // 80 requests is a histogram of 80, all of them served here.
    let families = edgeplane_testkit::openmetrics::parse(metrics);
    let families = families.as_array().expect("a list of families");
    let mut names: Vec<&str> = families.iter().filter_map(|f| f["name"].as_str()).collect();
    let declared = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), declared, "a family declared twice: {names:?}");
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name} in {metrics}"))
    };
    assert_eq!(family("edgeplane_xdp_packets")["type"], "counter");
    let latency = family("edgeplane_request_duration_seconds");
    assert_eq!(latency["type"], "histogram");
    let sample = |name: &str, le: Option<&str>| {
        latency["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["name"] == name
                    && s["labels"]["app"] == "hello"
                    && s["labels"]["target"] == "local"
                    && le.is_none_or(|le| s["labels"]["le"] == le)
            })
            .and_then(|s| s["value"].as_f64())
            .unwrap_or_else(|| panic!("no {name} for hello/local: {latency}"))
    };
    assert_eq!(
        sample("edgeplane_request_duration_seconds_count", None),
        80.0
    );
    assert_eq!(
        sample("edgeplane_request_duration_seconds_bucket", Some("+Inf")),
        80.0
    );
    assert!(sample("edgeplane_request_duration_seconds_sum", None) > 0.0);
}

/// The access log has a JSON line for each of hello's requests, saying where it ran.
fn the_access_log_has_a_line_per_request(access: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(access).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .filter(|v: &serde_json::Value| v["app"] == "hello")
            .collect();
        if lines.len() >= 80 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 80, "access log lines for hello");
    for l in &lines {
        assert_eq!(
            (l["target"].as_str(), l["status"].as_u64()),
            (Some("local"), Some(200))
        );
        assert_eq!(l["bytes"], 16, "{l}");
        assert!(l["duration_us"].as_u64().is_some() && l["ts_ms"].as_u64().is_some());
    }
    let _ = std::fs::remove_file(access);
}

/// Every worker preloaded hello, so each reports it resident in its code cache.
fn every_worker_holds_hello_in_its_code_cache(
    (status, residency): &(u16, String),
) -> anyhow::Result<()> {
    assert_eq!(*status, 200);
    let residency: serde_json::Value = serde_json::from_str(residency)?;
    let workers = residency.as_array().expect("one entry per worker");
    assert_eq!(workers.len(), WORKERS as usize, "{residency}");
    for w in workers {
        let apps: Vec<&str> = w["apps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(apps, ["hello"], "{residency}");
        assert!(w["bytes"].as_u64().unwrap() > 0, "{residency}");
    }

    Ok(())
}

/// SIGTERM: drain, detach, exit 0.
fn sigterm_drains_and_detaches(
    hosts: &TwoHosts,
    edged: &mut edgeplane_testkit::Edged,
) -> anyhow::Result<()> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(edged.0.pid() as i32, libc::SIGTERM) };
    let status = edged.0.wait()?;
    assert!(status.success(), "edged exited with {status}");
    let link = hosts
        .server
        .command("ip")
        .args(["-d", "link", "show", TwoHosts::SERVER_IF])
        .output()?;
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "XDP still attached after SIGTERM"
    );
    Ok(())
}
