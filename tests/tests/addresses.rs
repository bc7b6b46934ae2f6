//! Datacenters at addresses that follow no plan: two datacenters reachable only at IPv6 ULAs
//! this test picks (one datacenter with two hosts' addresses), listening on IPv6 only, hand
//! requests to each other in both directions, signed with the keys this world drew. edged reads
//! the addresses from its topology file; nothing in it derives one.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use edgeplane_abi::{Placement, placement_kind};
use edgeplane_testkit::{
    edged::{DatacenterSpec, WORKER_PORT, place, start_in},
    edgeplane_binary,
    plan::Plan,
    process::Server,
    world::World,
};
use edgeplane_testkit::{raw_http::header, require_root};

const PLAN: &str = r#"
[[datacenters]]
name = "ams"
id = 11
addresses = ["fd7e:a:5::11", "fd7e:a:5::12"]

[[datacenters]]
name = "fra"
id = 42
addresses = ["fdc3:9::42"]

[[hosts]]
name = "client"

[[links]]
between = ["client", "ams"]
rtt = "0ms"

[[links]]
between = ["ams", "fra"]
rtt = "2ms"
"#;

fn at(dc: u32) -> Placement {
    Placement {
        kind: placement_kind::DATACENTER,
        datacenter: dc,
        ..Default::default()
    }
}

/// A hello request to `addr` from `from`'s namespace: status, x-edge-placement, body.
fn hello(world: &World, from: &str, addr: SocketAddr) -> (u16, String, String) {
    world
        .ns(from)
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (status, headers, body) =
                edgeplane_testkit::raw_http::get(&mut s, "hello.test", "/");
            (
                status,
                header(&headers, "x-edge-placement")
                    .unwrap_or("")
                    .to_owned(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        })
        .unwrap()
}

#[test]
fn datacenters_at_ipv6_addresses_of_the_tests_choosing_hand_off_both_ways() {
    if !require_root("addresses") {
        return;
    }
    let plan = Plan::parse(PLAN).unwrap();
    let world = World::build(&plan).unwrap();
    let scratch = std::env::temp_dir().join(format!("edgeplane-addresses-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let apps = format!(
        "[[apps]]\nname = \"hello\"\nhosts = [\"hello.test\"]\ncomponent = \"{}\"\n",
        edgeplane_testkit::app("hello").display()
    );
    let own = |dc: &str| -> Vec<IpAddr> { plan.datacenter_addrs(plan.datacenter(dc).unwrap()) };
    let mut servers: Vec<Server> = Vec::new();
    let mut pins: Vec<PathBuf> = Vec::new();
    for dc in ["ams", "fra"] {
        let spec = DatacenterSpec::plain(dc, "addresses", &scratch, &apps);
        std::fs::write(spec.topology_path(), world.fleet_toml(WORKER_PORT)).unwrap();
        world.keys.write(dc, &spec.keys_path()).unwrap();
        // IPv6 only: an IPv4 address anywhere on the path would fail the handoff.
        let config = scratch.join(format!("{dc}.toml"));
        let text = spec
            .config()
            .replace("0.0.0.0:8080", &format!("[::]:{WORKER_PORT}"));
        std::fs::write(&config, text).unwrap();
        let first = SocketAddr::new(own(dc)[0], WORKER_PORT);
        servers
            .push(start_in(world.ns(dc), dc, &config, &edgeplane_binary("edged"), first).unwrap());
        pins.push(spec.pin_dir.clone());
    }
    let topology = std::fs::read_to_string(scratch.join("topology.toml")).unwrap();
    assert!(
        topology.contains("[fd7e:a:5::12]:8080") && !topology.contains("10."),
        "edged knows its peers only at the test's addresses:\n{topology}"
    );

    // The client reaches ams over their link; ams hands hello to fra at fra's ULA.
    place(&pins[0], "hello", at(42)).unwrap();
    let ams = SocketAddr::new(
        IpAddr::V6(plan.addr_of_v6("client", "ams").unwrap()),
        WORKER_PORT,
    );
    let (status, placement, body) = hello(&world, "client", ams);
    assert_eq!(
        (status, placement.as_str(), body.as_str()),
        (200, "remote-fra", "hello from wasm\n")
    );

    // And back: fra hands hello to ams, whose two addresses take the handoffs in turn.
    place(&pins[1], "hello", at(11)).unwrap();
    let fra = SocketAddr::new(own("fra")[0], WORKER_PORT);
    for _ in 0..4 {
        let (status, placement, body) = hello(&world, "fra", fra);
        assert_eq!(
            (status, placement.as_str(), body.as_str()),
            (200, "remote-ams", "hello from wasm\n")
        );
    }
    // Both of ams's addresses served handoffs: each has a connection from fra.
    let ams_conns = world
        .ns("ams")
        .command("ss")
        .args(["-Htn", "state", "established", "sport", "= :8080"])
        .output()
        .unwrap();
    let ams_conns = String::from_utf8_lossy(&ams_conns.stdout).into_owned();
    for addr in own("ams") {
        assert!(
            ams_conns.contains(&format!("[{addr}]:8080")),
            "no handoff connection to {addr}:\n{ams_conns}"
        );
    }

    drop(servers);
    for p in pins {
        let _ = std::fs::remove_dir_all(p);
    }
    let _ = std::fs::remove_dir_all(scratch);
}
