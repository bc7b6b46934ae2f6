//! The emulated WAN link: every packet on it, handshakes included, pays the configured delay,
//! so a TCP connect across it takes one configured RTT.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    time::Duration,
};

use edgeplane_testkit::{
    netns::{LinkEnd, Netns, veth_pair},
    wan::{WanDelay, median_connect_time},
};

fn median_connect(from: &Netns, to: SocketAddr, n: usize) -> Duration {
    median_connect_time(from, to, n).unwrap()
}

#[test]
fn tcp_connect_across_a_delayed_link_takes_the_configured_rtt() {
    if !edgeplane::root_gate::require_root("tcp_connect_across_a_delayed_link") {
        return;
    }
    let a = Netns::new("wan-a").unwrap();
    let b = Netns::new("wan-b").unwrap();
    veth_pair(
        &LinkEnd {
            ns: &a,
            iface: "wa",
            addrs: &["10.77.0.1/24"],
        },
        &LinkEnd {
            ns: &b,
            iface: "wb",
            addrs: &["10.77.0.2/24"],
        },
    )
    .unwrap();
    let server: SocketAddr = "10.77.0.2:7000".parse().unwrap();
    let listener = b.run(|| TcpListener::bind(server)).unwrap().unwrap();
    let acceptor = listener.try_clone().unwrap();
    let accept = std::thread::spawn(move || {
        for conn in acceptor.incoming() {
            if conn.is_err() {
                break;
            }
        }
    });

    let bare = median_connect(&a, server, 20);
    assert!(bare < Duration::from_millis(5), "bare link: {bare:?}");

    for rtt_ms in [30u64, 80] {
        let one_way = Duration::from_millis(rtt_ms / 2);
        let delay_a = WanDelay::start(&a, "wa", 1, one_way).unwrap();
        let delay_b = WanDelay::start(&b, "wb", 2, one_way).unwrap();
        let measured = median_connect(&a, server, 15);
        let rtt = Duration::from_millis(rtt_ms);
        let error = measured.as_secs_f64() / rtt.as_secs_f64() - 1.0;
        eprintln!("configured RTT {rtt:?}: median TCP connect {measured:?}");
        assert!(
            error.abs() <= 0.10,
            "configured RTT {rtt:?}, measured {measured:?} ({:+.1}%)",
            error * 100.0
        );
        // Both directions carried the handshakes: SYN and ACK one way, SYN-ACK the other.
        assert!(delay_a.delayed() >= 30 && delay_b.delayed() >= 15);
        drop((delay_a, delay_b));
    }

    // Removing the delay leaves a working, fast link again.
    let after = median_connect(&a, server, 20);
    assert!(after < Duration::from_millis(5), "after removal: {after:?}");
    // SAFETY: shutting down our own listening socket ends the accept loop.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    accept.join().unwrap();
}
