//! `classify` attached in native mode to a real veth in a network namespace, with real traffic.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use edgeplane::{PinnedMaps, XdpAttachMode, addr::Vip};
use edgeplane_abi::{AppStats, DropReason, RateLimitConfig, UNCLASSIFIED_APP, rate_limit_flags};
use edgeplane_bench::{
    af_packet::send_raw_frames,
    packets::{FrameSpec, L4},
};
use edgeplane_testkit::{TestPins, TwoHosts, require_root};

const ETH: usize = 14;
const UDP: usize = 8;

/// Receives datagrams until `n` arrived or nothing came for a while; returns the count.
fn drain(sock: &UdpSocket, n: usize) -> usize {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < n && sock.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

fn send_udp(from: &str, to: SocketAddr, count: usize, payload: usize) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(SocketAddr::new(from.parse()?, 0))?;
    let data = vec![7u8; payload];
    for _ in 0..count {
        sock.send_to(&data, to)?;
        // Veth queues are small; don't let the sender outrun the receiver into drops we'd miscount.
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

/// Polls `read` until `done` holds or 2 s pass; returns the last value read.
fn wait_for<T>(read: impl Fn() -> Option<T>, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let v = read().expect("reading stats");
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn xdp_mode_of(hosts: &TwoHosts) -> String {
    let out = hosts
        .server
        .command("ip")
        .args(["-d", "link", "show", TwoHosts::SERVER_IF])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn counts_exact_packets_and_bytes_per_app_in_native_mode_with_cpumap_steering() -> anyhow::Result<()>
{
    if !require_root("counts_exact_packets_and_bytes") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let pins = TestPins::new("counts");
    let dp = hosts.attach(&pins, XdpAttachMode::Native)?;
    let link = xdp_mode_of(&hosts);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "expected native XDP:\n{link}"
    );

    let maps = dp.maps()?;
    let v4: SocketAddr = format!("{}:9000", TwoHosts::SERVER_V4).parse()?;
    let v6: SocketAddr = format!("[{}]:9000", TwoHosts::SERVER_V6).parse()?;
    let id = maps.add_app(
        "counter",
        None,
        &[Vip::from_socket_udp(v4), Vip::from_socket_udp(v6)],
        0,
    )?;
    let other = maps.add_app(
        "other",
        None,
        &[format!("{}:9001/udp", TwoHosts::SERVER_V4).parse()?],
        0,
    )?;
    // Steer through CPUMAP: the packets must still arrive, now via the worker CPUs.
    maps.configure_workers(2, 0, true, 256)?;

    let (rx4, rx6) = hosts
        .server
        .run(|| -> anyhow::Result<_> { Ok((UdpSocket::bind(v4)?, UdpSocket::bind(v6)?)) })??;
    let (n4, n6, payload) = (500usize, 300usize, 100usize);
    // Receive while sending: the default socket buffer holds only ~200 datagrams.
    let receivers =
        [(rx4, n4), (rx6, n6)].map(|(sock, n)| std::thread::spawn(move || drain(&sock, n)));
    hosts.client.run(|| -> anyhow::Result<()> {
        send_udp(TwoHosts::CLIENT_V4, v4, n4, payload)?;
        send_udp(TwoHosts::CLIENT_V6, v6, n6, payload)
    })??;
    let [got4, got6] = receivers.map(|r| r.join().unwrap());
    assert_eq!(got4, n4, "IPv4 datagrams lost through XDP + CPUMAP");
    assert_eq!(got6, n6, "IPv6 datagrams lost through XDP + CPUMAP");

    let stats = maps.stats_reader()?;
    let s = stats.app(id)?;
    assert_eq!(s.packets, (n4 + n6) as u64);
    assert_eq!(
        s.bytes,
        (n4 * (ETH + 20 + UDP + payload) + n6 * (ETH + 40 + UDP + payload)) as u64
    );
    assert_eq!(s.total_drops(), 0);
    assert_eq!(
        stats.app(other)?,
        AppStats::default(),
        "traffic counted for the wrong app"
    );
    Ok(())
}

#[test]
fn blocklisted_source_dropped_other_source_passes_and_rate_limit_drops_excess() -> anyhow::Result<()>
{
    if !require_root("blocklist_and_rate_limit") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let pins = TestPins::new("guard");
    let dp = hosts.attach(&pins, XdpAttachMode::Native)?;
    let maps = dp.maps()?;
    let vip: SocketAddr = format!("{}:9100", TwoHosts::SERVER_V4).parse()?;
    let id = maps.add_app("guarded", None, &[Vip::from_socket_udp(vip)], 0)?;
    maps.block_add(format!("{}/32", TwoHosts::CLIENT2_V4).parse()?)?;

    let rx = hosts.server.run(|| UdpSocket::bind(vip))??;
    hosts.client.run(|| -> anyhow::Result<()> {
        send_udp(TwoHosts::CLIENT2_V4, vip, 100, 10)?;
        send_udp(TwoHosts::CLIENT_V4, vip, 100, 10)
    })??;
    assert_eq!(
        drain(&rx, 200),
        100,
        "only the non-blocklisted source's datagrams arrive"
    );
    let s = maps.stats_reader()?.app(id)?;
    assert_eq!(s.packets, 100);
    assert_eq!(s.drops[DropReason::Blocklisted as usize], 100);

    // 10 pps with a burst of 20: of 200 back-to-back datagrams, about 20 + 10/s pass.
    maps.set_rate_limit(RateLimitConfig {
        pps: 10,
        burst: 20,
        flags: rate_limit_flags::ENABLED,
        ..Default::default()
    })?;
    let started = Instant::now();
    hosts
        .client
        .run(|| send_udp(TwoHosts::CLIENT_V4, vip, 200, 10))??;
    let elapsed = started.elapsed().as_secs_f64();
    let received = drain(&rx, 200) as u64;
    let s2 = maps.stats_reader()?.app(id)?;
    let admitted = s2.packets - s.packets;
    let limited = s2.drops[DropReason::RateLimited as usize];
    assert_eq!(admitted + limited, 200);
    assert_eq!(received, admitted, "every admitted datagram arrives");
    let ceiling = 20 + (10.0 * (elapsed + 0.6)).ceil() as u64;
    assert!(
        (20..=ceiling).contains(&admitted),
        "admitted {admitted} of 200 in {elapsed:.2}s; want 20..={ceiling}"
    );
    Ok(())
}

#[test]
fn malformed_frames_are_dropped_and_counted_by_reason_while_other_traffic_passes()
-> anyhow::Result<()> {
    if !require_root("malformed_frames") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let pins = TestPins::new("malformed");
    let dp = hosts.attach(&pins, XdpAttachMode::Native)?;
    let maps = dp.maps()?;
    let server: IpAddr = TwoHosts::SERVER_V4.parse()?;
    let server6: IpAddr = TwoHosts::SERVER_V6.parse()?;
    let client: IpAddr = TwoHosts::CLIENT_V4.parse()?;
    let client6: IpAddr = TwoHosts::CLIENT_V6.parse()?;
    let app = maps.add_app("web", None, &[format!("{server}:8080/tcp").parse()?], 0)?;

    let cases = malformed_cases(client, server, client6, server6);

    // Each case alone, so a miscount names its case.
    const REPEAT: usize = 5;
    let stats = maps.stats_reader()?;
    for (i, (reason, frame)) in cases.iter().enumerate() {
        let before = stats.app(UNCLASSIFIED_APP)?;
        hosts
            .client
            .run(|| send_raw_frames(TwoHosts::CLIENT_IF, &vec![frame.clone(); REPEAT]))??;
        let after = wait_for(
            || stats.app(UNCLASSIFIED_APP).ok(),
            |s| s.total_drops() >= before.total_drops() + REPEAT as u64,
        );
        let mut want = before;
        want.drops[*reason as usize] += REPEAT as u64;
        assert_eq!(after, want, "case #{i} ({}) counted wrong", reason.name());
    }
    // Abusive TCP flags to the app count against the app, not slot 0.
    let xmas = FrameSpec {
        l4: L4::Tcp { flags: 0x29 },
        ..FrameSpec::tcp(client, server, 40001, 8080, 0)
    }
    .build();
    hosts
        .client
        .run(|| send_raw_frames(TwoHosts::CLIENT_IF, &vec![xmas; REPEAT]))??;

    // Meanwhile the host stays reachable: a TCP service on a non-app port and the app itself.
    let ssh_like = hosts.server.run(|| TcpListener::bind((server, 2222)))??;
    let web = hosts.server.run(|| TcpListener::bind((server, 8080)))??;
    hosts.client.run(|| -> anyhow::Result<()> {
        TcpStream::connect_timeout(&SocketAddr::new(server, 2222), Duration::from_secs(3))?;
        TcpStream::connect_timeout(&SocketAddr::new(server, 8080), Duration::from_secs(3))?;
        Ok(())
    })??;
    drop((ssh_like, web));

    let web_stats = stats.app(app)?;
    assert_eq!(
        web_stats.drops[DropReason::BadTcpFlags as usize],
        REPEAT as u64
    );
    assert!(
        web_stats.new_flows >= 1,
        "the good connection counts as a new flow"
    );
    Ok(())
}

/// One malformed frame for each reason XDP drops them, from `client` to `server`.
fn malformed_cases(
    client: IpAddr,
    server: IpAddr,
    client6: IpAddr,
    server6: IpAddr,
) -> Vec<(DropReason, Vec<u8>)> {
    let tcp4 = FrameSpec::tcp(client, server, 40000, 8080, 0x02).build();
    let udp4 = FrameSpec::udp(client, server, 40000, 53, 20).build();
    let udp6 = FrameSpec::udp(client6, server6, 40000, 53, 20).build();
    let mut vlan = FrameSpec::udp(client, server, 40000, 53, 20);
    vlan.vlan = Some(7);
    let mut cases: Vec<(DropReason, Vec<u8>)> = Vec::new();
    cases.push((DropReason::TruncatedL2, vlan.build()[..16].to_vec()));
    let mut f = udp4.clone();
    f[14] = 0x43; // IHL 3
    cases.push((DropReason::MalformedIpv4, f));
    let mut f = udp4.clone();
    f[16..18].copy_from_slice(&1500u16.to_be_bytes()); // total length beyond the frame
    cases.push((DropReason::MalformedIpv4, f));
    let mut f = udp6.clone();
    f[18..20].copy_from_slice(&900u16.to_be_bytes()); // payload length beyond the frame
    cases.push((DropReason::MalformedIpv6, f));
    let mut f = udp6.clone();
    f[20] = 60; // destination options header claiming 2 KiB
    f[54] = 17;
    f[55] = 255;
    cases.push((DropReason::MalformedIpv6, f));
    let mut f = tcp4.clone();
    f[14 + 20 + 12] = 0x20; // data offset 2 words
    cases.push((DropReason::MalformedTcp, f));
    let mut f = tcp4[..14 + 20 + 10].to_vec(); // TCP header cut at 10 bytes, IP length agreeing
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    cases.push((DropReason::MalformedTcp, f));
    let mut f = udp4.clone();
    f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&3u16.to_be_bytes()); // UDP length 3
    cases.push((DropReason::MalformedUdp, f));

    cases
}

#[test]
fn generic_mode_attaches_counts_and_detaches() -> anyhow::Result<()> {
    if !require_root("generic_mode") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let pins = TestPins::new("generic");
    let mut dp = hosts.attach(&pins, XdpAttachMode::Generic)?;
    assert!(
        xdp_mode_of(&hosts).contains("xdpgeneric"),
        "expected generic XDP:\n{}",
        xdp_mode_of(&hosts)
    );
    let maps = dp.maps()?;
    let vip: SocketAddr = format!("{}:9200", TwoHosts::SERVER_V4).parse()?;
    let id = maps.add_app("generic", None, &[Vip::from_socket_udp(vip)], 0)?;
    let rx = hosts.server.run(|| UdpSocket::bind(vip))??;
    let receiver = std::thread::spawn(move || drain(&rx, 50));
    hosts
        .client
        .run(|| send_udp(TwoHosts::CLIENT_V4, vip, 50, 32))??;
    assert_eq!(receiver.join().unwrap(), 50);
    let s = maps.stats_reader()?.app(id)?;
    assert_eq!(
        (s.packets, s.bytes),
        (50, 50 * (ETH + 20 + UDP + 32) as u64)
    );
    dp.detach_all();
    assert!(
        !xdp_mode_of(&hosts).contains("prog/xdp"),
        "still attached after detach_all"
    );
    Ok(())
}

/// Calls `send`, then waits briefly for one datagram; returns how many arrived (0 or 1).
fn drain_one(sock: &UdpSocket, send: impl Fn()) -> usize {
    send();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    usize::from(sock.recv(&mut buf).is_ok())
}

/// Sends `count` datagrams of `size` bytes from `from` to `to`: over the veth's 1500-byte MTU,
/// the kernel cuts each into IP fragments (3 for 3,000 bytes).
fn send_fragmented(from: IpAddr, to: SocketAddr, count: usize, size: usize) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(SocketAddr::new(from, 0))?;
    let data = vec![9u8; size];
    for _ in 0..count {
        sock.send_to(&data, to)?;
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

#[test]
fn fragments_to_an_app_meet_the_blocklist_and_the_rate_limit_and_are_counted() -> anyhow::Result<()>
{
    if !require_root("fragments_guarded") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let pins = TestPins::new("fragments");
    let dp = hosts.attach(&pins, XdpAttachMode::Native)?;
    let maps = dp.maps()?;
    let vip4: SocketAddr = format!("{}:9200", TwoHosts::SERVER_V4).parse()?;
    let vip6: SocketAddr = format!("[{}]:9200", TwoHosts::SERVER_V6).parse()?;
    let id = maps.add_app(
        "fragmented",
        None,
        &[Vip::from_socket_udp(vip4), Vip::from_socket_udp(vip6)],
        0,
    )?;
    maps.block_add(format!("{}/32", TwoHosts::CLIENT2_V4).parse()?)?;
    let rx4 = hosts.server.run(|| UdpSocket::bind(vip4))??;
    let rx6 = hosts.server.run(|| UdpSocket::bind(vip6))??;
    let (client, client2): (IpAddr, IpAddr) =
        (TwoHosts::CLIENT_V4.parse()?, TwoHosts::CLIENT2_V4.parse()?);
    wait_for_ipv6(&hosts, &rx6, vip6);
    let base = maps.stats_reader()?.app(id)?;
    let since_base = |now: &AppStats, reason: DropReason| {
        now.drops[reason as usize] - base.drops[reason as usize]
    };

    // A blocklisted source's fragments are dropped, every one of them, and counted.
    hosts
        .client
        .run(|| send_fragmented(client2, vip4, 20, 3000))??;
    assert_eq!(
        drain(&rx4, 20),
        0,
        "a blocklisted source's datagram was reassembled"
    );
    let s = maps.stats_reader()?.app(id)?;
    assert_eq!(since_base(&s, DropReason::Blocklisted), 60);
    // Another source's fragments pass and count for the app.
    hosts
        .client
        .run(|| send_fragmented(client, vip4, 20, 3000))??;
    assert_eq!(drain(&rx4, 20), 20);
    let s = maps.stats_reader()?.app(id)?;
    assert_eq!(s.packets - base.packets, 60);
    assert!(
        s.bytes - base.bytes > 60 * 40,
        "{} bytes counted",
        s.bytes - base.bytes
    );

    // IPv6 fragments, from a blocklisted /64.
    maps.block_add(format!("{}/64", TwoHosts::CLIENT_V6).parse()?)?;
    hosts
        .client
        .run(|| send_fragmented(TwoHosts::CLIENT_V6.parse()?, vip6, 10, 3000))??;
    assert_eq!(
        drain(&rx6, 10),
        0,
        "a blocklisted IPv6 source's datagram was reassembled"
    );
    let s6 = maps.stats_reader()?.app(id)?;
    assert_eq!(since_base(&s6, DropReason::Blocklisted), 60 + 30);

    the_rate_limit_counts_fragments(&hosts, &maps, id, (client, vip4), &rx4, &s, &base)?;
    Ok(())
}

/// IPv6 neighbours resolve (and duplicate address detection ends) before anything counts;
/// warm-up datagrams queued meanwhile arrive late and are drained, so none is counted as a
/// blocklisted source's.
fn wait_for_ipv6(hosts: &TwoHosts, rx6: &UdpSocket, vip6: SocketAddr) {
    let warmed = Instant::now();
    while drain_one(rx6, || {
        hosts
            .client
            .run(|| send_udp(TwoHosts::CLIENT_V6, vip6, 1, 10))
            .ok();
    }) == 0
    {
        assert!(
            warmed.elapsed() < Duration::from_secs(10),
            "IPv6 never worked between the hosts"
        );
    }
    drain(rx6, usize::MAX);
}

/// The rate limiter counts fragments: a burst of 10 lets 10 fragments through, so at most 3
/// whole datagrams (and a piece of a 4th) arrive of 20.
fn the_rate_limit_counts_fragments(
    hosts: &TwoHosts,
    maps: &PinnedMaps,
    id: u32,
    (client, vip4): (IpAddr, SocketAddr),
    rx4: &UdpSocket,
    before: &AppStats,
    base: &AppStats,
) -> anyhow::Result<()> {
    maps.set_rate_limit(RateLimitConfig {
        pps: 0,
        burst: 10,
        flags: rate_limit_flags::ENABLED,
        ..Default::default()
    })?;
    hosts
        .client
        .run(|| send_fragmented(client, vip4, 20, 3000))??;
    assert!(drain(rx4, 20) <= 3);
    let s2 = maps.stats_reader()?.app(id)?;
    assert_eq!(s2.packets - before.packets, 10);
    assert_eq!(
        s2.drops[DropReason::RateLimited as usize] - base.drops[DropReason::RateLimited as usize],
        50
    );
    Ok(())
}
