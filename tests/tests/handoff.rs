//! Handoff between datacenters on the canonical world: the POP's edged hands a request to dc2's
//! edged over the emulated 30 ms link when PLACEMENT says so, dc2 serves it and never hands it
//! on, forged handoffs are refused, and a dead dc2 leaves the POP serving locally.

#[path = "../../dataplane/tests/common/mod.rs"]
mod common;

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use edgeplane::topology::Topology;
use edgeplane_abi::{Placement, placement_kind};
use edgeplane_bench::{
    edged::{self, DatacenterSpec, WORKER_PORT},
    http::Server,
    world::World,
};
use edgeplane_tests::{
    TestPins, edgeplane_binary,
    http::{get, header},
    require_root,
};

fn start_edged(world: &World, dc: &'static str, pins: &TestPins, scratch: &Path) -> Server {
    let apps = format!(
        "[[apps]]\nname = \"hello\"\nhosts = [\"hello.test\"]\ncomponent = \"{}\"\n",
        common::app("hello").display()
    );
    DatacenterSpec {
        name: dc,
        topology: "canonical",
        pin_dir: pins.dir().to_path_buf(),
        scratch,
        apps: &apps,
        workers: 1,
    }
    .start(world, &edgeplane_binary("edged"))
    .unwrap()
}

fn place(pins: &TestPins, placement: Placement) {
    edged::place(pins.dir(), "hello", placement).unwrap();
}

fn at_dc(dc: u32) -> Placement {
    Placement {
        kind: placement_kind::DATACENTER,
        datacenter: dc,
        ..Default::default()
    }
}

/// edgeplane_app_handoffs_total for hello with this outcome, summed over `dc`'s workers.
fn handoffs(world: &World, dc: &str, outcome: &str) -> u64 {
    let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let metrics = world
        .ns(dc)
        .run(|| {
            let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            String::from_utf8(get(&mut s, "admin", "/metrics").2).unwrap()
        })
        .unwrap();
    let label = format!("outcome=\"{outcome}\"}}");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("edgeplane_app_handoffs_total{app=\"hello\"") && l.contains(&label)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A hello request from the client through the POP: status, placement header, time taken.
fn through_pop(world: &World) -> (u16, String, Duration) {
    let pop = SocketAddr::from((world.addr_of("client", "pop").unwrap(), WORKER_PORT));
    world
        .ns("client")
        .run(|| {
            let mut s = TcpStream::connect_timeout(&pop, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let started = Instant::now();
            let (status, headers, body) = get(&mut s, "hello.test", "/");
            let took = started.elapsed();
            if status == 200 {
                assert_eq!(body, b"hello from wasm\n");
            }
            let placement = header(&headers, "x-edge-placement")
                .unwrap_or("")
                .to_owned();
            (status, placement, took)
        })
        .unwrap()
}

#[test]
fn the_pop_hands_requests_to_dc2_which_serves_them_and_refuses_forgeries() {
    if !require_root("handoff") {
        return;
    }
    let topology = Topology::canonical();
    let world = World::build(&topology).unwrap();
    let scratch = std::env::temp_dir().join(format!("edgeplane-handoff-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let (pop_pins, dc2_pins) = (TestPins::new("handoff-pop"), TestPins::new("handoff-dc2"));
    let _pop = start_edged(&world, "pop", &pop_pins, &scratch);
    let dc2 = start_edged(&world, "dc2", &dc2_pins, &scratch);
    let dc2_id = topology.datacenter("dc2").unwrap().id;
    let pop_id = topology.datacenter("pop").unwrap().id;
    let pop_dc2_rtt = topology.rtt("pop", "dc2").unwrap();

    // No placement: served at the POP.
    let (status, placement, _) = through_pop(&world);
    assert_eq!((status, placement.as_str()), (200, "local"));

    // Placed at dc2: handed off, so it pays at least the POP-dc2 round trip.
    place(&pop_pins, at_dc(dc2_id));
    for _ in 0..3 {
        let (status, placement, took) = through_pop(&world);
        assert_eq!((status, placement.as_str()), (200, "remote-dc2"));
        assert!(
            took >= pop_dc2_rtt,
            "a handoff over a {pop_dc2_rtt:?} link took {took:?}"
        );
    }

    // dc2 placing hello back at the POP does not bounce a handed-off request.
    place(&dc2_pins, at_dc(pop_id));
    let (status, placement, _) = through_pop(&world);
    assert_eq!((status, placement.as_str()), (200, "remote-dc2"));

    // A request with handoff headers that do not verify is refused by dc2.
    let dc2_addr = SocketAddr::from((world.addr_of("pop", "dc2").unwrap(), WORKER_PORT));
    let forged = world
        .ns("pop")
        .run(|| {
            let mut s = TcpStream::connect_timeout(&dc2_addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            use std::io::Write as _;
            s.write_all(
                b"GET / HTTP/1.1\r\nHost: hello.test\r\nx-edge-hop: 1\r\nx-edge-from: 1\r\n\
                  x-edge-client: 10.0.0.1:1\r\nx-edge-time: 0\r\nx-edge-auth: 00\r\n\r\n",
            )
            .unwrap();
            let mut buf = [0u8; 512];
            use std::io::Read as _;
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .unwrap();
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    assert!(forged.contains("handoff rejected"), "{forged}");

    // dc2 counted what it served for the POP and what it refused.
    assert_eq!(handoffs(&world, "dc2", "received"), 4);
    assert_eq!(handoffs(&world, "dc2", "rejected"), 1);
    assert_eq!(handoffs(&world, "pop", "sent"), 4);

    // dc2 goes away: the POP serves locally instead of failing.
    drop(dc2);
    let (status, placement, _) = through_pop(&world);
    assert_eq!(
        (status, placement.as_str()),
        (200, "local-fallback-from-dc2")
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
