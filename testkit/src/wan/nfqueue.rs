//! The few NFQUEUE netlink messages a delayer needs: bind a queue in metadata-only copy mode,
//! read packet ids, and accept everything up to an id with one batch verdict. Written here
//! rather than taken from a crate because the delayer must `ppoll` the socket (the nfq crate
//! does not expose it) and wants batch verdicts and no payload copies.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
/// Queue GSO super-packets whole instead of segmenting them first.
const NFQA_CFG_F_GSO: u32 = 1 << 2;
const NF_ACCEPT: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;

/// One bound NFQUEUE.
pub struct NfQueue {
    fd: OwnedFd,
    num: u16,
    buf: Vec<u8>,
}

impl AsRawFd for NfQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message under construction: header, nfgenmsg, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, res_id: u16) -> Self {
        let mut b = vec![0u8; NLMSG_HDRLEN];
        b[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        b[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        // nfgenmsg: family AF_UNSPEC, version 0, resource id (the queue) big-endian.
        b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
        b.extend_from_slice(&res_id.to_be_bytes());
        Self(b)
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Self {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(align4(self.0.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

impl NfQueue {
    /// Binds queue `num` in the calling thread's network namespace, with room for `max_len`
    /// packets held at once.
    pub fn bind(num: u16, max_len: u32) -> io::Result<Self> {
        // SAFETY: plain socket creation; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; the kernel assigns the port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // SAFETY: setting an int socket option from a local. Without it a full socket buffer
        // reports ENOBUFS; the kernel keeps the packets queued either way.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_NO_ENOBUFS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        let q = Self {
            fd,
            num,
            buf: vec![0u8; 1 << 16],
        };
        let ack = libc::NLM_F_ACK as u16;
        q.request(
            Msg::new(NFQNL_MSG_CONFIG, ack, num)
                .attr(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])
                .finish(),
        )?;
        let mut params = 0u32.to_be_bytes().to_vec(); // copy range: no payload
        params.push(NFQNL_COPY_META);
        q.request(
            Msg::new(NFQNL_MSG_CONFIG, ack, num)
                .attr(NFQA_CFG_PARAMS, &params)
                .attr(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
                .attr(NFQA_CFG_FLAGS, &NFQA_CFG_F_GSO.to_be_bytes())
                .attr(NFQA_CFG_MASK, &NFQA_CFG_F_GSO.to_be_bytes())
                .finish(),
        )?;
        Ok(q)
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sending a byte buffer we own to the kernel (the default destination).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends a config message and waits for the kernel's acknowledgement.
    fn request(&self, msg: Vec<u8>) -> io::Result<()> {
        self.send(&msg)?;
        let mut buf = [0u8; 4096];
        for _ in 0..1000 {
            // SAFETY: receiving into a local buffer of the given size.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n >= NLMSG_HDRLEN + 4 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
                let errno = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
                return match errno {
                    0 => Ok(()),
                    e => Err(io::Error::from_raw_os_error(-e)),
                };
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no acknowledgement from nfnetlink_queue",
        ))
    }

    /// Appends the ids of the packets queued since the last call (none if nothing is waiting).
    pub fn read_ids(&mut self, ids: &mut Vec<u32>) -> io::Result<()> {
        loop {
            // SAFETY: receiving into our buffer of the given size.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            parse_packets(&self.buf[..n as usize], ids);
        }
    }

    /// Accepts every queued packet with an id up to and including `id`.
    pub fn accept_through(&self, id: u32) -> io::Result<()> {
        let mut hdr = NF_ACCEPT.to_be_bytes().to_vec();
        hdr.extend_from_slice(&id.to_be_bytes());
        self.send(
            &Msg::new(NFQNL_MSG_VERDICT_BATCH, 0, self.num)
                .attr(NFQA_VERDICT_HDR, &hdr)
                .finish(),
        )
    }
}

/// Packet ids from a buffer of netlink messages (NFQNL_MSG_PACKET, NFQA_PACKET_HDR).
fn parse_packets(mut buf: &[u8], ids: &mut Vec<u32>) {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            // After the header: nfgenmsg (4 bytes), then attributes.
            let mut attrs = &buf[NLMSG_HDRLEN + 4..len];
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let akind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes(attrs[4..8].try_into().expect("4 bytes")));
                    break;
                }
                attrs = &attrs[align4(alen).min(attrs.len())..];
            }
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_packet_ids_in_a_batch_of_messages() {
        let packet = |id: u32| {
            let mut hdr = id.to_be_bytes().to_vec();
            hdr.extend_from_slice(&[0x08, 0x00, 3]); // hw protocol, hook
            Msg::new(NFQNL_MSG_PACKET, 0, 7)
                .attr(9, &[1, 2, 3, 4, 5])
                .attr(NFQA_PACKET_HDR, &hdr)
                .finish()
        };
        let mut buf = packet(41);
        buf.extend(packet(42));
        let mut ids = Vec::new();
        parse_packets(&buf, &mut ids);
        assert_eq!(ids, [41, 42]);
        // A truncated tail is ignored, not misread.
        let mut ids = Vec::new();
        parse_packets(&buf[..buf.len() - 6], &mut ids);
        assert_eq!(ids, [41]);
    }
}
