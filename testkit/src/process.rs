//! Processes a test or benchmark starts (edged, nginx, nats-server, `wasmtime serve`): each
//! logged to a file whose end a failed start quotes, stopped (SIGTERM, then SIGKILL) and reaped
//! on drop.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A server process killed on drop. Its output goes to a log file (see `spawn`), whose end a
/// failed start-up quotes.
pub struct Server {
    child: Child,
    /// How it exited, once reaped: its pid is no longer ours to signal.
    exit: Option<std::process::ExitStatus>,
    pub name: String,
    log: PathBuf,
    /// The log is ours to remove (not kept in `$EDGEPLANE_LOG_DIR`).
    log_is_temporary: bool,
}

impl Server {
    /// The last `lines` lines the server wrote, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n  ");
        if tail.is_empty() {
            format!("{} wrote nothing to {}", self.name, self.log.display())
        } else {
            format!(
                "the end of {}'s log ({}):\n  {tail}",
                self.name,
                self.log.display()
            )
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Whether the process has exited (and how), reaping it if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Sends `signal` unless the process was reaped (its pid may be another's by now).
    pub fn signal(&self, signal: i32) {
        if self.exit.is_none() {
            // SAFETY: signalling our own child, not yet reaped, so its pid is still ours.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Kills the process at once (SIGKILL: no draining, connections reset); dropping the
    /// Server reaps it.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM lets it drain, then it is reaped.
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.exit.is_none() && Instant::now() < deadline {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.log_is_temporary && !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Starts a server process. Its output goes to `$EDGEPLANE_LOG_DIR/<name>.log` when that is
/// set (kept), else to a log file in the temporary directory, removed with the Server unless a
/// test is failing (a panic keeps it for whoever reads the failure).
pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Server> {
    let file: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let (log, log_is_temporary) = match std::env::var_os("EDGEPLANE_LOG_DIR") {
        Some(dir) => (Path::new(&dir).join(format!("{file}.log")), false),
        None => {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let log = std::env::temp_dir()
                .join(format!("edgeplane-{file}-{}-{n}.log", std::process::id()));
            (log, true)
        }
    };
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Server {
        child,
        exit: None,
        name: name.into(),
        log,
        log_is_temporary,
    })
}

/// Waits until something accepts connections on `addr`. A server that exits first, or is not
/// listening by `timeout`, fails with the end of its log (what it was doing: an edged says which
/// component it is compiling, and since when).
pub fn wait_listening(
    server: &mut Server,
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_until(server, timeout, &format!("listen on {addr}"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Waits until `ready` holds, polling every 100 ms; fails as `wait_listening` does.
pub fn wait_until(
    server: &mut Server,
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !ready() {
        if let Some(status) = server.exited() {
            bail!(
                "{} exited during start-up ({status}); {}",
                server.name,
                server.log_tail(20)
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "{} did not {what} within {timeout:?}; {}",
                server.name,
                server.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
