//! SK_REUSEPORT `select_worker` with real TCP connections in a network namespace: each connection
//! lands on the listener the rules choose (flow hash -> worker), and on the least loaded worker
//! when the chosen one is over its threshold.

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use edgeplane::{PinnedMaps, XdpAttachMode};
use edgeplane_abi::{WorkerConfig, WorkerLoad};
use edgeplane_dataplane::listener::reuseport_listener;
use edgeplane_testkit::{TestPins, TwoHosts, require_root};

const WORKERS: u32 = 2;
const PORT: u16 = 8080;

fn expected_worker(client: SocketAddr, server: SocketAddr) -> u32 {
    edgeplane_testkit::expected_worker(client, server, WORKERS)
}

/// Connects from each of `ports` (client side) and returns, per client port, the index of the
/// listener that accepted it.
fn connect_and_see_who_accepts(
    hosts: &TwoHosts,
    listeners: &[TcpListener],
    server: SocketAddr,
    ports: &[u16],
) -> anyhow::Result<HashMap<u16, usize>> {
    let streams = hosts.client.run(|| -> anyhow::Result<Vec<TcpStream>> {
        ports
            .iter()
            .map(|p| {
                let sock =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                sock.set_reuse_address(true)?;
                sock.bind(&SocketAddr::new(TwoHosts::CLIENT_V4.parse()?, *p).into())?;
                sock.connect_timeout(&server.into(), Duration::from_secs(3))?;
                Ok(sock.into())
            })
            .collect()
    })??;
    let mut landed = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while landed.len() < ports.len() && Instant::now() < deadline {
        for (i, l) in listeners.iter().enumerate() {
            match l.accept() {
                Ok((_, peer)) => {
                    landed.insert(peer.port(), i);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(streams);
    Ok(landed)
}

fn set_loads(maps: &PinnedMaps, loads: &[u64]) -> anyhow::Result<()> {
    for (w, l) in loads.iter().enumerate() {
        maps.set_worker_load(
            w as u32,
            WorkerLoad {
                in_flight: *l,
                served: 0,
            },
        )?;
    }
    Ok(())
}

#[test]
fn connections_land_on_the_worker_the_rules_choose_with_load_fallback() -> anyhow::Result<()> {
    if !require_root("select_worker") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let pins = TestPins::new("reuseport");
    // XDP steering on as in production: the SYN is processed on the worker's CPU.
    let dp = hosts.attach(&pins, XdpAttachMode::Native)?;
    let maps = dp.maps()?;
    let server = SocketAddr::new(TwoHosts::SERVER_V4.parse()?, PORT);
    maps.add_app(
        "web",
        None,
        &[edgeplane::addr::Vip::from_socket_tcp(server)],
        0,
    )?;
    maps.configure_workers(WORKERS, 0, true, 256)?;

    let listeners = hosts.server.run(|| -> anyhow::Result<Vec<TcpListener>> {
        (0..WORKERS)
            .map(|_| reuseport_listener(server, 128))
            .collect()
    })??;
    for (i, l) in listeners.iter().enumerate() {
        l.set_nonblocking(true)?;
        maps.set_worker_socket(i as u32, l)?;
    }
    dp.attach_select_worker(&listeners[0])?;

    // 1. By the hash.
    flows_land_by_the_hash(&hosts, &listeners, server)?;

    // 2. Worker 0 over the threshold: everything goes to worker 1, the least loaded.
    maps.set_worker_config(WorkerConfig {
        load_threshold: 10,
        ..maps.worker_config()?
    })?;
    set_loads(&maps, &[50, 3])?;
    let ports: Vec<u16> = (42000..42020).collect();
    let landed = connect_and_see_who_accepts(&hosts, &listeners, server, &ports)?;
    assert_eq!(landed.len(), ports.len());
    let mut moved = 0;
    for p in &ports {
        let client = SocketAddr::new(TwoHosts::CLIENT_V4.parse()?, *p);
        moved += (expected_worker(client, server) == 0) as usize;
        assert_eq!(
            landed[p], 1,
            "port {p}: worker 0 is overloaded, everything goes to worker 1"
        );
    }
    assert!(
        moved > 0,
        "no flow hashed to worker 0, so the fallback was not exercised"
    );

    // 3. Both over the threshold: the least loaded of the two (worker 0 now) takes everything.
    set_loads(&maps, &[20, 90])?;
    let ports: Vec<u16> = (43000..43020).collect();
    let landed = connect_and_see_who_accepts(&hosts, &listeners, server, &ports)?;
    assert_eq!(landed.len(), ports.len());
    assert!(
        ports.iter().all(|p| landed[p] == 0),
        "least loaded worker 0 should take all: {landed:?}"
    );
    Ok(())
}

/// Below the load threshold every flow lands on the worker its hash picks, and the hash uses
/// both workers.
fn flows_land_by_the_hash(
    hosts: &TwoHosts,
    listeners: &[TcpListener],
    server: SocketAddr,
) -> anyhow::Result<()> {
    let ports: Vec<u16> = (41000..41040).collect();
    let landed = connect_and_see_who_accepts(hosts, listeners, server, &ports)?;
    assert_eq!(
        landed.len(),
        ports.len(),
        "some connections were never accepted"
    );
    let mut per_worker = [0usize; WORKERS as usize];
    for p in &ports {
        let client = SocketAddr::new(TwoHosts::CLIENT_V4.parse()?, *p);
        let want = expected_worker(client, server) as usize;
        assert_eq!(
            landed[p], want,
            "client port {p} landed on worker {} not {want}",
            landed[p]
        );
        per_worker[want] += 1;
    }
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "the hash should use both workers: {per_worker:?}"
    );

    Ok(())
}
