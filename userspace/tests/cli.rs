//! edgectl and edged as a user runs them: real binaries, real pinned maps, real XDP.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use edgeplane::Dataplane;
use edgeplane_testkit::{
    TestPins,
    netns::Netns,
    process::{Server, spawn},
    require_root,
};

fn edgectl(pins: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("--pin-dir")
        .arg(pins)
        .args(args)
        .output()
        .expect("running edgectl")
}

/// Runs edgectl expecting success; returns stdout.
fn ok(pins: &Path, args: &[&str]) -> String {
    let out = edgectl(pins, args);
    assert!(
        out.status.success(),
        "edgectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs edgectl expecting failure; returns stderr.
fn fails(pins: &Path, args: &[&str]) -> String {
    let out = edgectl(pins, args);
    assert!(!out.status.success(), "edgectl {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn json(pins: &Path, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    serde_json::from_str(&ok(pins, &full)).expect("valid JSON")
}

/// A minimal IPv4/UDP frame to `dst:port`.
fn udp_frame(dst: [u8; 4], port: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + payload];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((20 + 8 + payload) as u16).to_be_bytes());
    f[14 + 9] = 17;
    f[14 + 12..14 + 16].copy_from_slice(&[192, 0, 2, 1]);
    f[14 + 16..14 + 20].copy_from_slice(&dst);
    f[34..36].copy_from_slice(&5555u16.to_be_bytes());
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    f
}

#[test]
fn edgectl_round_trip_over_pinned_maps() {
    if !require_root("edgectl_round_trip_over_pinned_maps") {
        return;
    }
    let missing = TestPins::new("cli-missing");
    assert!(fails(missing.dir(), &["app", "list"]).contains("is edged running?"));

    let pins = TestPins::new("cli-roundtrip");
    let dp = pins.load().unwrap();
    let p = pins.dir();
    let web_id = apps_are_added_listed_and_refused_when_wrong(p);
    the_blocklist_takes_prefixes_of_both_families(p);
    the_rate_limit_is_set_per_prefix_and_turned_off(p);
    placements_are_set_pinned_and_unpinned(p);
    stats_count_real_packets_through_classify(p, &dp);
    // Removing an app removes its VIPs and placement.
    ok(p, &["app", "rm", "web"]);
    assert!(
        json(p, &["app", "list"])
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["name"] != "web")
    );
    let maps = dp.maps().unwrap();
    assert_eq!(maps.placement(web_id as u32).unwrap().kind, 0);
    ok(p, &["app", "add", "other", "--vip", "10.1.0.1:80/tcp"]);
}

/// Apps with their VIPs and flags, read back; a taken VIP, a bad name or VIP, an unknown app
/// refused with the reason. Returns web's id.
fn apps_are_added_listed_and_refused_when_wrong(p: &Path) -> u64 {
    let added = json(
        p,
        &[
            "app",
            "add",
            "web",
            "--vip",
            "10.1.0.1:80/tcp",
            "--vip",
            "[2001:db8::5]:443/tcp",
        ],
    );
    let web_id = added["id"].as_u64().unwrap();
    ok(
        p,
        &[
            "app",
            "add",
            "dns",
            "--vip",
            "10.1.0.1:53/udp",
            "--no-steer",
            "--no-rate-limit",
        ],
    );
    let apps = json(p, &["app", "list"]);
    let web = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "web")
        .unwrap();
    assert_eq!(
        web["vips"],
        serde_json::json!(["10.1.0.1:80/tcp", "[2001:db8::5]:443/tcp"])
    );
    let dns = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "dns")
        .unwrap();
    assert_eq!(
        (dns["no_steer"].as_bool(), dns["no_rate_limit"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(ok(p, &["app", "list"]).contains("10.1.0.1:53/udp"));
    assert!(
        fails(p, &["app", "add", "other", "--vip", "10.1.0.1:80/tcp"])
            .contains("already belongs to app \"web\"")
    );
    assert!(
        fails(p, &["app", "add", "bad name!", "--vip", "10.1.0.9:80/tcp"])
            .contains("must be 1..=32 bytes")
    );
    assert!(fails(p, &["app", "add", "x", "--vip", "10.1.0.9"]).contains("bad VIP"));
    assert!(fails(p, &["app", "rm", "nope"]).contains("unknown app \"nope\""));

    web_id
}

fn the_blocklist_takes_prefixes_of_both_families(p: &Path) {
    ok(p, &["block", "add", "203.0.113.0/24"]);
    ok(p, &["block", "add", "2001:db8:bad::/48"]);
    let blocked = json(p, &["block", "list"]);
    let cidrs: Vec<&str> = blocked
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs, ["2001:db8:bad::/48", "203.0.113.0/24"]);
    assert!(fails(p, &["block", "add", "10.0.0.0/33"]).contains("bad CIDR"));
    ok(p, &["block", "rm", "203.0.113.0/24"]);
    assert!(fails(p, &["block", "rm", "203.0.113.0/24"]).contains("not in the blocklist"));
}

fn the_rate_limit_is_set_per_prefix_and_turned_off(p: &Path) {
    ok(p, &["ratelimit", "set", "--pps", "100", "--burst", "50"]);
    assert_eq!(
        json(p, &["ratelimit", "show"]),
        serde_json::json!({"enabled": true, "pps": 100, "burst": 50, "v4_prefix": 32, "v6_prefix": 64})
    );
    // Sources share a bucket per prefix: a host rotating through its IPv6 /56 is one source.
    ok(
        p,
        &[
            "ratelimit",
            "set",
            "--pps",
            "100",
            "--burst",
            "50",
            "--v6-prefix",
            "56",
        ],
    );
    assert_eq!(json(p, &["ratelimit", "show"])["v6_prefix"], 56);
    assert!(
        fails(
            p,
            &[
                "ratelimit",
                "set",
                "--pps",
                "1",
                "--burst",
                "1",
                "--v4-prefix",
                "33"
            ]
        )
        .contains("33")
    );
    assert!(
        fails(p, &["ratelimit", "set", "--pps", "100", "--burst", "0"]).contains("burst must be")
    );
    ok(p, &["ratelimit", "set", "--off"]);
    assert_eq!(json(p, &["ratelimit", "show"])["enabled"], false);
}

fn placements_are_set_pinned_and_unpinned(p: &Path) {
    assert_eq!(json(p, &["placement", "get", "web"])["kind"], "local");
    ok(p, &["placement", "set", "web", "dc=2", "--pin"]);
    let got = json(p, &["placement", "get", "web"]);
    assert_eq!(
        (
            got["kind"].as_str(),
            got["datacenter"].as_u64(),
            got["pinned"].as_bool()
        ),
        (Some("datacenter"), Some(2), Some(true))
    );
    ok(p, &["placement", "pin", "web", "dc=3"]);
    let got = json(p, &["placement", "get", "web"]);
    assert_eq!(
        (got["datacenter"].as_u64(), got["pinned"].as_bool()),
        (Some(3), Some(true))
    );
    ok(p, &["placement", "unpin", "web"]);
    let got = json(p, &["placement", "get", "web"]);
    assert_eq!(
        (got["datacenter"].as_u64(), got["pinned"].as_bool()),
        (Some(3), Some(false)),
        "unpinning keeps the placement until the engine decides"
    );
    ok(p, &["placement", "set", "dns", "region"]);
    assert!(ok(p, &["placement", "list"]).contains("region"));
    assert!(
        fails(p, &["placement", "set", "web", "mars"])
            .contains("expected local, region or dc=<id>")
    );
    assert!(fails(p, &["placement", "get", "nope"]).contains("unknown app"));
}

/// Stats: real packets driven through the loaded classify with BPF_PROG_TEST_RUN.
fn stats_count_real_packets_through_classify(p: &Path, dp: &Dataplane) {
    let frame = udp_frame([10, 1, 0, 1], 53, 30);
    let mut malformed = frame.clone();
    malformed[14] = 0x44; // IHL 4
    for f in [&frame, &frame, &frame, &malformed] {
        dp.classify()
            .test_run(TestRunOptions {
                data_in: Some(f),
                ..Default::default()
            })
            .unwrap();
    }
    let stats = json(p, &["stats", "--interval", "0"]);
    let row = |name: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["app"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("dns")["packets"], 3);
    assert_eq!(row("dns")["bytes"], 3 * frame.len());
    assert_eq!(row("(unclassified)")["drops"]["malformed-ipv4"], 1);
    assert_eq!(row("web")["packets"], 0);
    let table = ok(p, &["stats", "--interval", "0.1"]);
    assert!(
        table.contains("dns") && table.contains("malformed-ipv4=1"),
        "{table}"
    );
}

/// A namespace with one veth pair (eth0, eth1), for edged to attach to.
fn veth_namespace() -> Netns {
    let ns = Netns::new("ep-edged").unwrap();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .unwrap();
    for iface in ["eth0", "eth1"] {
        ns.ip(&["link", "set", iface, "up"]).unwrap();
    }
    ns
}

fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    let out = ns
        .command("ip")
        .args(["-d", "link", "show", iface])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// This build's edged in `ns` (its log kept on failure).
fn start_edged(ns: &Netns, pins: &Path, config: &Path) -> Server {
    spawn(
        "edged (cli test)",
        ns.command(env!("CARGO_BIN_EXE_edged"))
            .arg("--config")
            .arg(config)
            .arg("--pin-dir")
            .arg(pins),
    )
    .expect("starting edged")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, and edged exits 0.
fn stop(mut edged: Server) {
    edged.signal(libc::SIGTERM);
    let status = edged.wait().unwrap();
    assert!(
        status.success(),
        "edged exited with {status}; {}",
        edged.log_tail(20)
    );
}

#[test]
fn edged_attaches_applies_config_reuses_pins_and_detaches_on_sigterm() {
    if !require_root("edged_attaches_applies_config_reuses_pins_and_detaches_on_sigterm") {
        return;
    }
    let ns = veth_namespace();
    let pins = TestPins::new("cli-edged");
    let config = std::env::temp_dir().join(format!("edged-test-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        r#"
        blocklist = ["198.51.100.0/24"]
        [xdp]
        interfaces = ["eth1"]
        mode = "native"
        [rate_limit]
        enabled = true
        pps = 5000
        burst = 10000
        [[apps]]
        name = "hello"
        vips = ["10.9.0.1:80/tcp"]
        "#,
    )
    .unwrap();

    let edged = start_edged(&ns, pins.dir(), &config);
    wait_until("XDP attached", || xdp_attached(&ns, "eth1"));
    wait_until("app configured", || {
        edgectl(pins.dir(), &["app", "list"]).status.success()
    });
    assert!(ok(pins.dir(), &["app", "list"]).contains("10.9.0.1:80/tcp"));
    assert!(ok(pins.dir(), &["block", "list"]).contains("198.51.100.0/24"));
    assert_eq!(json(pins.dir(), &["ratelimit", "show"])["pps"], 5000);
    // A change made at runtime by edgectl...
    ok(
        pins.dir(),
        &["app", "add", "late", "--vip", "10.9.0.2:80/tcp"],
    );
    stop(edged);
    assert!(
        !xdp_attached(&ns, "eth1"),
        "XDP must be detached after SIGTERM"
    );

    // ...survives a restart: the maps are pinned and reused, not recreated.
    let edged = start_edged(&ns, pins.dir(), &config);
    wait_until("XDP re-attached", || xdp_attached(&ns, "eth1"));
    assert!(
        ok(pins.dir(), &["app", "list"]).contains("late"),
        "runtime state lost across restart"
    );
    stop(edged);
    assert!(!xdp_attached(&ns, "eth1"));
    let _ = std::fs::remove_file(&config);
}

/// The systemd unit README tells operators to install: systemd's own checker accepts it with
/// this build's edged as its ExecStart, edged accepts its arguments, and it reloads with SIGHUP
/// and lets the upgraded process become the main one.
#[test]
fn the_systemd_unit_verifies_and_runs_this_edged() {
    let unit = include_str!("../systemd/edged.service");
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    let edged = env!("CARGO_BIN_EXE_edged");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    // edged takes the unit's arguments (--help stops before the config is read).
    let help = Command::new(edged)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing: install systemd to check the unit");
    };
    assert!(analyze.status.success());
    let dir = std::env::temp_dir().join(format!("edgeplane-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edged.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/edged", edged)).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze: {said}"
    );
}
