//! Raw AF_PACKET sockets bound to one interface: frames go out exactly as built, past the
//! qdisc. The flood generator (`flood`) and the malformed-frame tests send through them.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};

use edgeplane_testkit::netns::ifindex;

/// Frames per `sendmmsg` (the kernel's UIO_MAXIOV bounds it).
const BATCH: usize = 1024;

/// A raw AF_PACKET socket bound to `iface` (of the calling thread's namespace) for sending
/// only (protocol 0: it receives nothing), past the qdisc.
pub fn packet_socket(iface: &str) -> anyhow::Result<OwnedFd> {
    let index = ifindex(iface)?;
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid; family and index set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = i32::try_from(index).context("ifindex")?;
    // SAFETY: binding our socket to a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "binding AF_PACKET to {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(socket)
}

/// Sends `count` frames from `frames` in turn, from `*next` on, `BATCH` per sendmmsg.
pub fn send_packets(
    socket: &OwnedFd,
    frames: &[u8],
    frame_len: usize,
    next: &mut usize,
    count: usize,
) -> anyhow::Result<()> {
    let in_turn = frames.len() / frame_len.max(1);
    anyhow::ensure!(in_turn > 0, "no frame to send");
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    // SAFETY: zeroed mmsghdr is valid; each gets its iovec below.
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut left = count;
    while left > 0 {
        let batch = left.min(BATCH);
        iovecs.clear();
        for i in 0..batch {
            let at = ((*next + i) % in_turn) * frame_len;
            iovecs.push(libc::iovec {
                iov_base: frames[at..].as_ptr() as *mut libc::c_void,
                iov_len: frame_len,
            });
        }
        for (header, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < batch {
            // SAFETY: `headers[sent..batch]` point at iovecs into `frames`, alive for the call.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers[sent..].as_mut_ptr(),
                    (batch - sent) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    // The device's queue is full: the receiver is the bottleneck. Try again.
                    std::thread::yield_now();
                    continue;
                }
                bail!("sendmmsg on AF_PACKET: {e}");
            }
            sent += n as usize;
        }
        *next = (*next + batch) % in_turn;
        left -= batch;
    }
    Ok(())
}

/// Sends raw frames out of `iface` (in the calling thread's namespace) with an AF_PACKET socket:
/// malformed frames go out exactly as given.
pub fn send_raw_frames(iface: &str, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let socket = packet_socket(iface)?;
    for f in frames {
        // SAFETY: sending from a live buffer on our own socket.
        let rc = unsafe { libc::send(socket.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        anyhow::ensure!(
            usize::try_from(rc).ok() == Some(f.len()),
            "send on {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
