//! Loads edgeplane's kernel programs, pins their maps, attaches XDP to interfaces and
//! `select_worker` to listening sockets, and detaches on drop.

use std::{
    ffi::CString,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SkReuseport, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use edgeplane_abi::program_names;
use tracing::{info, warn};

use crate::maps::PinnedMaps;

/// The eBPF object built by build.rs from ebpf/programs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edgeplane"));

/// Baseline programs (`bare_pass`, `bare_drop`, `bare_tx`) for benchmarks and packet generation.
pub static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// In the driver: fastest, what production wants.
    #[default]
    Native,
    /// In the generic stack path: works on any interface, slower.
    Generic,
}

impl XdpAttachMode {
    fn aya_mode(self) -> XdpMode {
        match self {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Generic => XdpMode::Skb,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Maps are pinned here; existing pins are reused, so counters and config survive restarts.
    pub pin_dir: PathBuf,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(crate::DEFAULT_PIN_DIR),
        }
    }
}

/// The loaded programs. Dropping it detaches XDP from every interface it was attached to,
/// unless `leave_attached` handed the links to the next process.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attached: Vec<(String, Attachment)>,
}

/// How `classify` is attached to one interface.
enum Attachment {
    /// A BPF link pinned at the path: it outlives this process, and the next edged replaces
    /// the program on it atomically (`BPF_LINK_UPDATE`), so no packet sees no program.
    Pinned(FdLink, PathBuf),
    /// A link the kernel could not make a BPF link of (netlink): detached with the program.
    Managed(XdpLinkId),
}

impl Dataplane {
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Self> {
        ensure_bpffs(&opts.pin_dir)?;
        std::fs::create_dir_all(&opts.pin_dir)
            .with_context(|| format!("creating pin directory {}", opts.pin_dir.display()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .load(EBPF_OBJECT)
            .with_context(|| {
                format!(
                    "loading the eBPF object (maps pinned under {}; remove stale pins if the map \
                     layout changed)",
                    opts.pin_dir.display()
                )
            })?;
        let classify: &mut Xdp = ebpf
            .program_mut(program_names::CLASSIFY)
            .context("classify program missing from the object")?
            .try_into()?;
        classify.load().context("verifier rejected classify")?;
        let select: &mut SkReuseport = ebpf
            .program_mut(program_names::SELECT_WORKER)
            .context("select_worker program missing from the object")?
            .try_into()?;
        select.load().context("verifier rejected select_worker")?;
        let dp = Self {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            attached: Vec::new(),
        };
        // A fresh generation: nothing cached by an earlier load may match.
        dp.maps()?.bump_generation()?;
        info!(pin_dir = %opts.pin_dir.display(), "eBPF programs loaded");
        Ok(dp)
    }

    pub fn maps(&self) -> anyhow::Result<PinnedMaps> {
        Ok(PinnedMaps::open(&self.pin_dir)?)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The XDP program, for BPF_PROG_TEST_RUN (tests and benchmarks).
    pub fn classify(&self) -> &Xdp {
        self.ebpf
            .program(program_names::CLASSIFY)
            .and_then(|p| p.try_into().ok())
            .expect("classify is loaded by Dataplane::load")
    }

    /// Where the link of `classify` on `iface` is pinned.
    fn link_pin(&self, iface: &str) -> PathBuf {
        self.pin_dir.join(format!("link_xdp_{iface}"))
    }

    /// Attaches `classify` to an interface in the calling thread's network namespace. When an
    /// earlier edged left its link pinned (an upgrade), the program on that link is replaced
    /// atomically instead.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpAttachMode) -> anyhow::Result<()> {
        let pin = self.link_pin(iface);
        let classify: &mut Xdp = self
            .ebpf
            .program_mut(program_names::CLASSIFY)
            .context("classify program missing")?
            .try_into()?;
        if pin.exists() {
            let replaced = PinnedLink::from_pin(&pin)
                .map_err(anyhow::Error::from)
                .and_then(|p| Ok(XdpLink::try_from(FdLink::from(p))?))
                .and_then(|link| Ok(classify.attach_to_link(link)?))
                .and_then(|id| Ok(FdLink::try_from(classify.take_link(id)?)?));
            match replaced {
                Ok(link) => {
                    info!(iface, "XDP classify replaced on the pinned link");
                    self.attached
                        .push((iface.to_owned(), Attachment::Pinned(link, pin)));
                    return Ok(());
                }
                Err(e) => {
                    warn!(iface, error = %format!("{e:#}"), "a stale pinned XDP link; attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = classify
            .attach(iface, mode.aya_mode())
            .with_context(|| format!("attaching classify to {iface} in {mode:?} mode"))?;
        let pinned = classify
            .take_link(id)
            .map_err(anyhow::Error::from)
            .and_then(|link| Ok(FdLink::try_from(link)?))
            .and_then(|link| Ok(link.pin(&pin)?))
            .map(FdLink::from);
        let attachment = match pinned {
            Ok(link) => Attachment::Pinned(link, pin),
            Err(e) => {
                // Netlink-attached (no BPF link): still attached, but an upgrade re-attaches.
                warn!(iface, error = %format!("{e:#}"), "XDP link not pinned");
                let classify: &mut Xdp = self
                    .ebpf
                    .program_mut(program_names::CLASSIFY)
                    .context("classify program missing")?
                    .try_into()?;
                Attachment::Managed(
                    classify
                        .attach(iface, mode.aya_mode())
                        .with_context(|| format!("attaching classify to {iface}"))?,
                )
            }
        };
        info!(iface, ?mode, "XDP classify attached");
        self.attached.push((iface.to_owned(), attachment));
        Ok(())
    }

    /// Leaves XDP attached through the pinned links when this process exits: the next edged
    /// has replaced the program on them.
    pub fn leave_attached(&mut self) {
        for (iface, attachment) in self.attached.drain(..) {
            if let Attachment::Pinned(..) = attachment {
                info!(iface, "XDP link left to the next edged");
            }
        }
    }

    pub fn attached_interfaces(&self) -> impl Iterator<Item = &str> {
        self.attached.iter().map(|(i, _)| i.as_str())
    }

    /// Attaches `select_worker` to a listening socket's SO_REUSEPORT group (once per group).
    pub fn attach_select_worker(&self, socket: impl AsFd) -> anyhow::Result<()> {
        attach_reuseport_program(socket.as_fd(), self.select_worker_fd()?.as_fd())
    }

    /// The select_worker program's fd, for attaching it to listeners made later (a restarted
    /// worker's).
    pub fn select_worker_fd(&self) -> anyhow::Result<std::os::fd::OwnedFd> {
        let select: &SkReuseport = self
            .ebpf
            .program(program_names::SELECT_WORKER)
            .context("select_worker program missing")?
            .try_into()?;
        let fd = select.fd().context("select_worker is not loaded")?;
        std::os::fd::AsFd::as_fd(fd)
            .try_clone_to_owned()
            .context("duplicating select_worker's fd")
    }

    pub fn detach_all(&mut self) {
        for (iface, attachment) in self.attached.drain(..) {
            match attachment {
                Attachment::Pinned(link, pin) => {
                    // The link goes when its pin and its last fd do.
                    if let Err(e) = std::fs::remove_file(&pin) {
                        warn!(iface, error = %e, "removing the XDP link pin failed");
                    }
                    drop(link);
                    info!(iface, "XDP classify detached");
                }
                Attachment::Managed(id) => {
                    let Some(Ok(classify)) = self
                        .ebpf
                        .program_mut(program_names::CLASSIFY)
                        .map(<&mut Xdp>::try_from)
                    else {
                        return;
                    };
                    match classify.detach(id) {
                        Ok(()) => info!(iface, "XDP classify detached"),
                        Err(e) => warn!(iface, error = %e, "detaching XDP failed"),
                    }
                }
            }
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Makes sure `dir` lies on a bpffs, mounting /sys/fs/bpf when nothing is mounted there.
fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    let probe = if dir.starts_with(mount_point) {
        mount_point
    } else {
        dir.parent().unwrap_or(dir)
    };
    if fs_magic(probe)? == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    if probe != mount_point {
        bail!("{} is not on a bpf filesystem", dir.display());
    }
    let src = CString::new("bpf")?;
    let target = CString::new("/sys/fs/bpf")?;
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "/sys/fs/bpf is not a bpf filesystem and mounting one failed: {} (try `mount -t bpf bpf /sys/fs/bpf`)",
            std::io::Error::last_os_error()
        );
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn fs_magic(path: &Path) -> anyhow::Result<Option<i64>> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(None);
    }
    Ok(Some(st.f_type as i64))
}

/// SO_ATTACH_REUSEPORT_EBPF: `program` picks the listener for each new connection of the
/// SO_REUSEPORT group `socket` is in. Any member can attach it for the group; edged attaches it
/// on each new member, so it stays in place even when every earlier member is gone (a restarted
/// worker's new listener).
pub fn attach_reuseport_program(
    socket: std::os::fd::BorrowedFd<'_>,
    program: std::os::fd::BorrowedFd<'_>,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd: libc::c_int = program.as_raw_fd();
    // SAFETY: setting an int option on a socket the caller holds, from a local of the right
    // size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_EBPF,
            (&fd as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(
        rc == 0,
        "attaching select_worker to the reuseport group: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
