//! Network namespaces and veth links for tests, benchmarks and the demo. Everything created here
//! is removed on drop, so a failing test leaves no namespace behind.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with the given arguments; fails with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The index of an interface in the calling thread's namespace.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface {name}");
    }
    Ok(idx)
}

pub use edgeplane::root_gate::is_root;

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>` with loopback up.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets it opens stay in the
    /// namespace after the thread ends; BPF pins are unaffected (bpffs is not per-netns).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a valid netns fd; this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "setns into {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }

    /// Runs a command inside the namespace (nsenter keeps /sys and its bpffs mount visible).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        cmd
    }

    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// One side of a link: interface name and address with prefix length (`10.99.0.1/24`).
pub struct LinkEnd<'a> {
    pub ns: &'a Netns,
    pub iface: &'a str,
    pub addrs: &'a [&'a str],
}

/// Creates a veth pair between two namespaces, addresses both ends and brings them up.
pub fn veth_pair(a: &LinkEnd<'_>, b: &LinkEnd<'_>) -> anyhow::Result<()> {
    ip(&[
        "link",
        "add",
        a.iface,
        "netns",
        a.ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        b.iface,
        "netns",
        b.ns.name(),
    ])?;
    for end in [a, b] {
        for addr in end.addrs {
            let family = if addr.contains(':') { "-6" } else { "-4" };
            // nodad: an address in DAD is unusable for a second or so, and tests start at once.
            let mut args = vec![family, "addr", "add", addr, "dev", end.iface];
            if family == "-6" {
                args.push("nodad");
            }
            end.ns.ip(&args)?;
        }
        end.ns.ip(&["link", "set", end.iface, "up"])?;
        // Veth offloads TX checksums: a locally sent packet carries only a partial checksum plus
        // skb metadata saying so. XDP_REDIRECT through CPUMAP rebuilds the skb without that
        // metadata, and the receiver then drops the packet as corrupt (UdpInCsumErrors). A real
        // NIC hands XDP complete checksums, so make the veths do the same.
        let out = end
            .ns
            .command("ethtool")
            .args(["-K", end.iface, "tx", "off"])
            .output()?;
        if !out.status.success() {
            bail!(
                "ethtool -K {} tx off: {}",
                end.iface,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}
