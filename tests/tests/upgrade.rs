//! Zero-downtime upgrade: under open-loop load from the project's load generator, edged is
//! upgraded twice in a row (`edgectl upgrade`: the binary at edged's path takes the listening
//! sockets over SCM_RIGHTS, replaces XDP on its pinned link, and the old process drains and
//! exits). No request fails and no connection is reset; XDP's counters go on from where they
//! were; after both old processes are gone, connections are still steered by `select_worker`
//! to the worker the flow hash names, so the reuseport array holds the new process's sockets.

use std::{net::SocketAddr, time::Duration};

use edgeplane::PinnedMaps;
use edgeplane_bench::loadgen::{self, Arrival, LoadSpec};
use edgeplane_testkit::{
    TwoHosts,
    config::{App, Config},
    edgeplane_binary, expected_worker,
    raw_http::{get, header},
    require_root,
};

const ADMIN: &str = "127.0.0.1:9912";
const WORKERS: u32 = 2;

/// Whether `pid` still runs (a zombie waiting for its parent has exited).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn admin_pid(hosts: &TwoHosts) -> anyhow::Result<u32> {
    let (status, body) = hosts
        .admin(ADMIN.parse()?, "/process")
        .ok_or_else(|| anyhow::anyhow!("admin endpoint silent"))?;
    anyhow::ensure!(status == 200, "/process answered {status}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["pid"].as_u64().unwrap_or_default() as u32)
}

/// `edgectl upgrade`, or `edged upgrade` (the same request): (old pid, new pid).
fn upgrade(hosts: &TwoHosts, with_edged: bool) -> anyhow::Result<(u32, u32)> {
    let out = if with_edged {
        hosts
            .server
            .command(edgeplane_binary("edged").to_str().unwrap())
            .args(["upgrade", "--admin", ADMIN])
            .output()?
    } else {
        hosts
            .server
            .command(edgeplane_binary("edgectl").to_str().unwrap())
            .args(["--admin", ADMIN, "--json", "upgrade"])
            .output()?
    };
    anyhow::ensure!(
        out.status.success(),
        "upgrade failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["old_pid"].as_u64().unwrap_or_default() as u32,
        v["new_pid"].as_u64().unwrap_or_default() as u32,
    ))
}

/// Every edged this test started, killed on the way out whatever happened: a successor is
/// no child of the test, and one left running would hold the test's output open.
struct Started(Vec<u32>);

impl Drop for Started {
    fn drop(&mut self) {
        for pid in &self.0 {
            if running(*pid) {
                // SAFETY: signalling a process this test started.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn wait_gone(pid: u32) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while running(pid) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "pid {pid} never exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn two_upgrades_under_load_fail_no_request_and_keep_counters_and_steering() -> anyhow::Result<()> {
    if !require_root("two_upgrades_under_load") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let config = Config::new("upgrade")
        .workers(WORKERS)
        .admin(ADMIN)
        .debug_headers()
        .app(App::guest("hello").vip(8080));
    let pins = &config.pins;
    let first = hosts.start(&config)?;
    let maps = PinnedMaps::open(pins.dir())?;
    let hello_id = maps.app_id("hello")?;
    let packets = || {
        maps.stats_reader()
            .and_then(|r| r.app(hello_id))
            .map(|s| s.packets)
    };

    let server: SocketAddr = format!("{}:8080", TwoHosts::SERVER_V4).parse()?;
    let spec = LoadSpec {
        addr: server,
        host: "hello.test".into(),
        path: "/".into(),
        connections: 32,
        duration: Duration::from_secs(10),
        arrival: Arrival::Open { rate: 800.0 },
    };
    let mut started = Started(vec![first.0.pid()]);
    let mut pids = vec![admin_pid(&hosts)?];
    assert_eq!(pids[0], first.0.pid());
    let (load, counted) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let load = scope.spawn(|| hosts.client.run(|| loadgen::run("upgrade", &spec)));
        std::thread::sleep(Duration::from_secs(2));
        let mut counted = vec![packets()?];
        for round in 0..2 {
            // The first by edgectl, the second by `edged upgrade`.
            one_upgrade(&hosts, round, &mut started, &mut pids)?;
            counted.push(packets()?);
            std::thread::sleep(Duration::from_secs(2));
        }
        let report = load
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))???;
        Ok((report, counted))
    })?;
    eprintln!(
        "two upgrades under load: {} requests, {} failed, {} reset, p99 {:.2} ms, max {:.2} ms; pids {pids:?}; XDP packets {counted:?}",
        load.completed, load.errors, load.resets, load.p99_ms, load.max_ms
    );
    assert_eq!(load.errors, 0, "requests failed across the upgrades");
    assert_eq!(load.resets, 0, "connections reset across the upgrades");
    assert!(load.completed > 6000, "{} requests", load.completed);
    // XDP's per-app counters went on through both program replacements.
    assert!(
        counted.windows(2).all(|w| w[1] > w[0]),
        "XDP counters did not continue: {counted:?}"
    );
    assert!(packets()? > *counted.last().unwrap());

    // Only the last edged is left, and select_worker still picks each flow's worker.
    assert!(!running(pids[0]) && !running(pids[1]) && running(pids[2]));
    flows_land_on_their_workers(&hosts, server)?;
    the_last_edged_stops_as_any_does(pids[2], pins.dir())?;
    drop(first);
    Ok(())
}

/// select_worker picks each flow's worker, as the flow hash says.
fn flows_land_on_their_workers(hosts: &TwoHosts, server: SocketAddr) -> anyhow::Result<()> {
    hosts.client.run(|| -> anyhow::Result<()> {
        for port in 46000..46020u16 {
            let client = SocketAddr::new(TwoHosts::CLIENT_V4.parse()?, port);
            let mut s = TwoHosts::connect_from(port, server)?;
            let (status, headers, _) = get(&mut s, "hello.test", "/");
            assert_eq!(status, 200);
            let worker: u32 = header(&headers, "x-edge-worker").unwrap_or("").parse()?;
            assert_eq!(
                worker,
                expected_worker(client, server, WORKERS),
                "port {port}"
            );
        }
        Ok(())
    })??;

    Ok(())
}

/// The last edged stops as any does: XDP detached, its link pin removed.
fn the_last_edged_stops_as_any_does(pid: u32, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    // SAFETY: signalling a process this test started (through its predecessors).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_gone(pid)?;
    let link_pins: Vec<_> = std::fs::read_dir(pin_dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_xdp"))
        .collect();
    assert!(link_pins.is_empty(), "a link pin survived the stop");
    Ok(())
}

/// One upgrade: the successor takes over from the last edged, which goes, and the admin
/// endpoint moves with it; every pid is kept to be killed on the way out whatever happens.
fn one_upgrade(
    hosts: &TwoHosts,
    round: usize,
    started: &mut Started,
    pids: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let (old, new) = upgrade(hosts, round == 1).inspect_err(|_| {
        // A successor that took over but whose answer was lost is still found here.
        if let Ok(pid) = admin_pid(hosts) {
            started.0.push(pid);
        }
    })?;
    started.0.push(new);
    assert_eq!(old, *pids.last().unwrap(), "round {round}");
    assert_ne!(new, old);
    wait_gone(old)?;
    assert_eq!(admin_pid(hosts)?, new, "the admin endpoint moved too");
    pids.push(new);
    Ok(())
}
