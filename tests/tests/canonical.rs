//! The canonical scenario by hand: `fetcher` makes 5 sequential subrequests to a backend 80 ms
//! from the POP and 5 ms from dc2, 30 ms from the POP. Served at the POP each subrequest pays
//! the long link; handed to dc2 the request pays the POP-dc2 round trip once and every
//! subrequest is short. This is the gap the placement engine exists to find.

#[path = "../../dataplane/tests/common/mod.rs"]
mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use edgeplane::topology::Topology;
use edgeplane_abi::{Placement, placement_kind};
use edgeplane_bench::{
    backend::serve_pong,
    edged::{self, DatacenterSpec, WORKER_PORT},
    world::World,
};
use edgeplane_tests::{
    TestPins, edgeplane_binary,
    http::{get, header},
    require_root,
};

const BACKEND_PORT: u16 = 9000;

#[test]
fn fetcher_placed_near_its_backend_beats_serving_it_at_the_pop() {
    if !require_root("canonical") {
        return;
    }
    let topology = Topology::canonical();
    let world = World::build(&topology).unwrap();
    let backend_ip = topology
        .hosts
        .iter()
        .find(|h| h.name == "backend")
        .and_then(|h| h.service_addr)
        .unwrap();
    let listener = world
        .ns("backend")
        .run(|| TcpListener::bind((backend_ip, BACKEND_PORT)))
        .unwrap()
        .unwrap();
    let served = serve_pong(listener);

    let scratch = std::env::temp_dir().join(format!("edgeplane-canonical-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let apps = format!(
        "[[apps]]\nname = \"fetcher\"\nhosts = [\"fetch.test\"]\ncomponent = \"{}\"\n\
         env = {{ BACKEND_URL = \"http://{backend_ip}:{BACKEND_PORT}/\" }}\n\
         allowed_backends = [\"{backend_ip}:{BACKEND_PORT}\"]\n",
        common::app("fetcher").display()
    );
    let pins = [
        TestPins::new("canonical-pop"),
        TestPins::new("canonical-dc2"),
    ];
    let servers: Vec<_> = ["pop", "dc2"]
        .into_iter()
        .zip(&pins)
        .map(|(dc, pins)| {
            DatacenterSpec {
                name: dc,
                topology: "canonical",
                pin_dir: pins.dir().to_path_buf(),
                scratch: &scratch,
                apps: &apps,
                workers: 1,
            }
            .start(&world, &edgeplane_binary("edged"))
            .unwrap()
        })
        .collect();

    let pop = SocketAddr::from((world.addr_of("client", "pop").unwrap(), WORKER_PORT));
    let fetch = || {
        world
            .ns("client")
            .run(|| {
                let mut s = TcpStream::connect_timeout(&pop, Duration::from_secs(5)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let started = Instant::now();
                let (status, headers, body) = get(&mut s, "fetch.test", "/?k=5");
                let took = started.elapsed();
                let body = String::from_utf8(body).unwrap();
                assert_eq!(status, 200, "{body}");
                assert!(
                    body.contains("\"statuses\":[200,200,200,200,200]"),
                    "{body}"
                );
                let placement = header(&headers, "x-edge-placement").unwrap().to_owned();
                (placement, took)
            })
            .unwrap()
    };

    let pop_to_backend = topology.rtt("pop", "backend").unwrap();
    let (placement, local) = fetch();
    assert_eq!(placement, "local");
    // Five subrequests, each at least one round trip over the 80 ms link.
    assert!(local >= pop_to_backend * 5, "local: {local:?}");

    edged::place(
        pins[0].dir(),
        "fetcher",
        Placement {
            kind: placement_kind::DATACENTER,
            datacenter: topology.datacenter("dc2").unwrap().id,
            ..Default::default()
        },
    )
    .unwrap();
    let (placement, remote) = fetch();
    assert_eq!(placement, "remote-dc2");
    assert!(
        remote * 3 < local,
        "at dc2 {remote:?} should be far below at the POP {local:?}"
    );
    eprintln!("fetcher k=5: served at the POP {local:?}, handed to dc2 {remote:?}");
    assert_eq!(served.load(Ordering::Relaxed), 10);
    drop(servers);
    let _ = std::fs::remove_dir_all(&scratch);
}
