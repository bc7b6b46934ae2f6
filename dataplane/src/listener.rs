//! Per-worker listening sockets sharing one SO_REUSEPORT group.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

/// A listener on `addr` with SO_REUSEPORT, so every worker can bind its own on the same address and
/// the group's BPF program (`select_worker`) chooses among them.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> anyhow::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("creating listening socket")?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket
        .listen(backlog)
        .with_context(|| format!("listening on {addr}"))?;
    Ok(socket.into())
}
