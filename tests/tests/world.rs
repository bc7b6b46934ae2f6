//! The multi-datacenter world of the canonical topology: every node a namespace, every link
//! delayed in userspace, and TCP between any two linked nodes taking the link's RTT.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    time::Duration,
};

use edgeplane_testkit::plan::Plan;
use edgeplane_testkit::require_root;
use edgeplane_testkit::{wan::median_connect_time, world::World};

#[test]
fn the_canonical_world_gives_each_link_its_rtt() {
    if !require_root("the_canonical_world_gives_each_link_its_rtt") {
        return;
    }
    let topology = Plan::canonical();
    let world = World::build(&topology).unwrap();
    let service = topology
        .hosts
        .iter()
        .find(|h| h.name == "backend")
        .and_then(|h| h.service_addr)
        .unwrap();
    // dc2's own address, as the topology edged reads names it: every peer reaches it over
    // its own link to dc2.
    let dc2_own = match world.plan.fleet(8080).datacenter("dc2").unwrap().handoff[0].ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("{other}"),
    };
    // (from, to, address from uses): each link, and the backend's service address, which
    // every datacenter reaches over its own link to the backend.
    let paths = [
        ("pop", "dc2", world.addr_of("pop", "dc2").unwrap()),
        ("pop", "dc2", dc2_own),
        ("region", "dc2", dc2_own),
        ("pop", "region", world.addr_of("pop", "region").unwrap()),
        ("pop", "backend", service),
        ("dc2", "backend", service),
        ("region", "backend", service),
    ];
    for (i, (from, to, ip)) in paths.into_iter().enumerate() {
        let port = 7100 + i as u16;
        let listener = world
            .ns(to)
            .run(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .unwrap();
        let acceptor = listener.try_clone().unwrap();
        let accept =
            std::thread::spawn(move || for _ in acceptor.incoming().map_while(Result::ok) {});
        let addr = SocketAddr::from((ip, port));
        let configured = topology.rtt(from, to).unwrap();
        let measured = median_connect_time(world.ns(from), addr, 7).unwrap();
        eprintln!("{from} -> {to} ({addr}): configured {configured:?}, measured {measured:?}");
        // Within 10% either way, or up to 1 ms long: a handshake wakes the delay threads and
        // both ends several times, which a busy 2-core VM stretches by a fixed few hundred
        // microseconds (30.5 / 40.5 / 80.5 / 5.5 ms here on 2026-11-23), too much for 10% of
        // the 5 ms link.
        let slack = configured.mul_f64(0.10);
        assert!(
            measured >= configured - slack
                && measured <= configured + slack.max(Duration::from_millis(1)),
            "{from} -> {to}: configured {configured:?}, measured {measured:?}"
        );
        // SAFETY: shutting down our own listening socket ends the accept loop.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        accept.join().unwrap();
    }
    // Nodes without a link have no path: the client only reaches its POP.
    let stray = SocketAddr::from((world.addr_of("pop", "dc2").unwrap(), 7100));
    let unreachable = world
        .ns("client")
        .run(|| std::net::TcpStream::connect_timeout(&stray, Duration::from_millis(300)))
        .unwrap();
    assert!(unreachable.is_err());
}
