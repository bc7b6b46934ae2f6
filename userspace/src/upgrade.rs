//! Zero-downtime upgrade: a new edged takes the running one's listening sockets over a unix
//! socket (SCM_RIGHTS), so connections queued in the kernel are never reset and no port is ever
//! unbound; it replaces the XDP program on the pinned links and `select_worker` on the sockets'
//! group, keeps the pinned maps, and says `ready`. The old edged then stops accepting, drains
//! what it has, and exits (the shape of pingora's graceful upgrade and Envoy's hot restart).
//!
//! The exchange, old <- new: `takeover\n`; old -> new: one message, a JSON [`Offer`] with the
//! descriptors (each worker's listener, then the admin listener); new -> old: `ready\n` once it
//! serves, after which the old edged hands over.

use std::{
    io::{BufRead as _, BufReader, IoSlice, IoSliceMut, Write as _},
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// What the running edged offers its successor, beside the descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub pid: u32,
    pub listen: SocketAddr,
    /// The CPU of each worker listener, in the order of the descriptors.
    pub cpus: Vec<u32>,
    /// Whether the admin listener follows the worker listeners.
    pub admin: bool,
}

/// What a new edged received from the one it takes over from.
pub struct Inherited {
    pub offer: Offer,
    pub listeners: Vec<(u32, TcpListener)>,
    pub admin: Option<TcpListener>,
    stream: UnixStream,
}

/// Most descriptors one offer carries (workers are one per CPU).
const MAX_FDS: usize = 512;
/// Longest JSON offer.
const MAX_OFFER: usize = 64 << 10;

/// Connects to the edged serving `socket` and receives its listeners.
pub fn take_over(socket: &Path) -> anyhow::Result<Inherited> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the running edged at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"takeover\n")?;
    let mut buf = vec![0u8; MAX_OFFER];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving the listeners")?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().context("the offer's descriptors were cut")? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: descriptors just received, owned by nobody else in this process.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    let offer: Offer = serde_json::from_slice(&buf[..len]).context("reading the offer")?;
    let expected = offer.cpus.len() + usize::from(offer.admin);
    if fds.len() != expected {
        bail!(
            "the offer names {expected} descriptors and carried {}",
            fds.len()
        );
    }
    let mut fds = fds.into_iter();
    let listeners = offer
        .cpus
        .iter()
        .map(|cpu| (*cpu, TcpListener::from(fds.next().expect("counted above"))))
        .collect();
    let admin = fds.next().map(TcpListener::from);
    info!(from = offer.pid, listen = %offer.listen, workers = offer.cpus.len(), "received the listeners");
    Ok(Inherited {
        offer,
        listeners,
        admin,
        stream,
    })
}

impl Inherited {
    /// Tells the old edged this one serves: it stops accepting and drains.
    pub fn ready(mut self) -> anyhow::Result<()> {
        self.stream.write_all(b"ready\n")?;
        Ok(())
    }
}

/// The running edged's side: where successors connect.
pub struct Handover {
    listener: UnixListener,
    path: PathBuf,
}

impl Handover {
    /// Listens at `path`. A live edged already there is an error (two would fight over one
    /// set of pins); a socket file nobody answers on is left from a crash and replaced.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "an edged is running with upgrade socket {}: take over from it with `edged --takeover`, or stop it",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        // Only root (edged's user) may take the listeners.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves successors on a thread of its own: each gets `offer` (None: this edged has no
    /// listeners to give, and says so); the first that says `ready` is reported on `tx` (with
    /// its pid), after which this process must hand over.
    pub fn serve(
        self,
        offer: Option<(Offer, Vec<OwnedFd>)>,
        tx: tokio::sync::mpsc::Sender<u32>,
    ) -> anyhow::Result<()> {
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                for stream in self.listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let outcome = match &offer {
                        Some((offer, fds)) => hand(stream, offer, fds),
                        None => Err(anyhow::anyhow!(
                            "this edged runs no workers: nothing to take over"
                        )),
                    };
                    match outcome {
                        Ok(pid) => {
                            let _ = tx.blocking_send(pid);
                            return;
                        }
                        Err(e) => warn!(error = %format!("{e:#}"), "a takeover did not complete; still serving"),
                    }
                }
            })?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Longest exchange a successor sends (`takeover\n`, then `ready\n`): a peer that sends more
/// is cut off, not buffered.
const MAX_REQUEST: u64 = 64;

/// One takeover: the request, the offer, and the successor's `ready` (its pid as the peer's).
fn hand(stream: UnixStream, offer: &Offer, fds: &[OwnedFd]) -> anyhow::Result<u32> {
    // Setting up (loading programs, compiling from the cache) takes a while; a successor that
    // dies meanwhile closes the socket and is seen at once.
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the successor's credentials")?;
    anyhow::ensure!(
        peer.uid() == 0 || peer.uid() == nix::unistd::getuid().as_raw(),
        "a takeover from uid {} refused",
        peer.uid()
    );
    let mut reader = BufReader::new(std::io::Read::take(stream.try_clone()?, MAX_REQUEST));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    anyhow::ensure!(line == "takeover\n", "unexpected request {line:?}");
    let json = serde_json::to_vec(offer)?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&json)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .context("sending the listeners")?;
    line.clear();
    reader.read_line(&mut line)?;
    anyhow::ensure!(
        line == "ready\n",
        "the successor (pid {}) went away before it served",
        peer.pid()
    );
    info!(successor = peer.pid(), "the successor serves; handing over");
    Ok(peer.pid() as u32)
}

/// A descriptor duplicated for sending (the original stays with its owner).
pub fn dup(fd: BorrowedFd<'_>) -> anyhow::Result<OwnedFd> {
    fd.try_clone_to_owned().context("duplicating a listener")
}

/// The binary and arguments edged was started with, recorded at start: after an operator
/// installs a new binary at the same path, `/proc/self/exe` names the deleted old one.
static INVOCATION: std::sync::OnceLock<(PathBuf, Vec<std::ffi::OsString>)> =
    std::sync::OnceLock::new();

/// Records how this edged was started (call first thing in `main`).
pub fn record_invocation() {
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.components().count() > 1)
        .and_then(|p| std::fs::canonicalize(p).ok())
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("edged"));
    let args = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--takeover")
        .collect();
    let _ = INVOCATION.set((exe, args));
}

/// What an upgrade did, for `edgectl upgrade`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upgraded {
    pub old_pid: u32,
    pub new_pid: u32,
}

/// A new edged started by this one to take over.
pub struct Successor {
    child: std::process::Child,
}

impl Successor {
    /// Starts the binary at this edged's path with its arguments and `--takeover`.
    pub fn spawn() -> anyhow::Result<Self> {
        let (exe, args) = INVOCATION
            .get()
            .context("edged's invocation was not recorded")?;
        let child = std::process::Command::new(exe)
            .args(args)
            .arg("--takeover")
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        info!(exe = %exe.display(), pid = child.id(), "started the new edged");
        Ok(Self { child })
    }

    /// Why the successor failed, once it has exited without taking over.
    pub fn failed(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the new edged (pid {}) exited ({status}) before it took over",
                self.child.id()
            )),
            Ok(None) => None,
            Err(e) => Some(format!("waiting for the new edged: {e}")),
        }
    }
}

/// Tells systemd (Type=notify, NotifyAccess=all) that this process is the service's main
/// process and ready: at start, and when it took over from the old one.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("MAINPID={}\nREADY=1\n", std::process::id());
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)?;
            }
            None => {
                socket.send_to(message.as_bytes(), &path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        warn!(error = %e, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that sends endless bytes (or a wrong request) is refused after a bounded read,
    /// and the handover goes on serving: the next, well-formed successor gets the listeners.
    #[test]
    fn a_bad_takeover_is_refused_after_a_bounded_read_and_a_good_one_gets_the_listeners() {
        let path =
            std::env::temp_dir().join(format!("edgeplane-upgrade-{}.sock", std::process::id()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        let offer = Offer {
            pid: std::process::id(),
            listen,
            cpus: vec![0],
            admin: false,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        Handover::bind(&path)
            .unwrap()
            .serve(Some((offer, vec![OwnedFd::from(listener)])), tx)
            .unwrap();

        // 4 MiB without a newline, then a request that is not one.
        let mut junk = UnixStream::connect(&path).unwrap();
        let flood = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..64 {
                if junk.write_all(&chunk).is_err() {
                    return true; // cut off
                }
            }
            false
        });
        assert!(flood.join().unwrap(), "the handover read 4 MiB of junk");
        let mut wrong = UnixStream::connect(&path).unwrap();
        wrong.write_all("tãkeover ✓\n".as_bytes()).unwrap();

        // A successor that speaks the protocol still gets the worker listener.
        let inherited = take_over(&path).unwrap();
        assert_eq!(inherited.listeners.len(), 1);
        assert_eq!(inherited.listeners[0].1.local_addr().unwrap(), listen);
        assert!(inherited.admin.is_none());
        inherited.ready().unwrap();
        assert_eq!(rx.blocking_recv(), Some(std::process::id()));
        let _ = std::fs::remove_file(&path);
    }
}
