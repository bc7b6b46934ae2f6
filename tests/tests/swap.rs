//! No request sees another's memory, even when the kernel has swapped that memory out.
//!
//! A fresh instance's memory is reset when the instance ends: pages the guest wrote are copied
//! back from the image or decommitted. A written page the kernel swapped out while the instance
//! was alive is not present, and a reset that looks only for present pages leaves it for the
//! slot's next instance, with the previous request's data in it (wasmtime before 48.0.11).
//!
//! Here edged (release, as deployed, XDP on the server's link) serves apps/ballast, which marks
//! one byte in every 64 KiB of its 16 MiB image and reports the marks it finds. While a request
//! holds its instance after marking, the test pushes edged's private memory out to a swap file
//! it turned on for the run (`process_madvise(MADV_PAGEOUT)`: this machine has cgroup v1, no
//! `memory.reclaim`). Every later request, in a fresh instance, must find no mark.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use edgeplane_testkit::{
    TwoHosts,
    config::{App, Config},
    raw_http::{get, header},
    require_feature,
};

/// Rounds of (a request paged out while it holds its instance, then `FOLLOWERS` requests).
const ROUNDS: usize = 3;
const FOLLOWERS: usize = 3;

fn server() -> SocketAddr {
    format!("{}:8080", TwoHosts::SERVER_V4).parse().unwrap()
}

/// A swap file, on for as long as this lives: switched off and removed on drop (a failing test
/// included).
struct SwapFile(PathBuf);

impl SwapFile {
    const MIB: u64 = 512;

    fn path() -> PathBuf {
        PathBuf::from("/var/tmp/edgeplane-test.swap")
    }

    /// Turns one on, or says why this machine cannot.
    fn on() -> Result<Self, String> {
        if !Path::new("/proc/swaps").exists() {
            return Err("no /proc/swaps: the kernel is built without CONFIG_SWAP".into());
        }
        let path = Self::path();
        // One left by a run that was killed.
        let _ = Command::new("swapoff").arg(&path).output();
        let _ = std::fs::remove_file(&path);
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let out = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let file = path.to_str().ok_or("utf-8 path")?;
        let swap = SwapFile(path.clone());
        run("fallocate", &["-l", &format!("{}M", Self::MIB), file])?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        run("mkswap", &[file])?;
        run("swapon", &[file])?;
        Ok(swap)
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        // swapoff reads what is in the file back into memory first.
        let _ = Command::new("swapoff").arg(&self.0).output();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// kB of `pid`'s memory in swap (VmSwap).
fn swapped_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSwap:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmSwap in /proc/<pid>/status")
}

/// Asks the kernel to page out every private writable mapping of `pid` that holds memory.
/// Returns the bytes advised.
fn page_out(pid: u32) -> anyhow::Result<u64> {
    // SAFETY: plain syscalls on a pid we started; the pidfd is owned at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    let pidfd = unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as libc::c_int)
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut ranges = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = words.next().unwrap_or("");
            current = (perms.len() == 4 && perms.as_bytes()[1] == b'w' && perms.ends_with('p'))
                .then_some((start, end));
        } else if first == "Rss:"
            && let Some(range) = current.take()
            && words.next().is_some_and(|kb| kb != "0")
        {
            ranges.push(range);
        }
    }
    // The kernel takes at most MAX_RW_COUNT (about 2 GiB) per call.
    const CHUNK: usize = 1 << 30;
    let mut advised = 0u64;
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK);
            let iov = libc::iovec {
                iov_base: at as *mut libc::c_void,
                iov_len: len,
            };
            // SAFETY: the iovec describes the other process's memory; the kernel checks it.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                    &iov as *const libc::iovec,
                    1usize,
                    libc::MADV_PAGEOUT,
                    0u32,
                )
            };
            if n > 0 {
                advised += n as u64;
            }
            at += len;
        }
    }
    Ok(advised)
}

/// A GET of `path` on ballast: status, x-dirty-seen, body.
fn ballast(hosts: &TwoHosts, port: u16, path: &str) -> anyhow::Result<(u16, Option<u64>, String)> {
    hosts.client.run(|| -> anyhow::Result<_> {
        let mut s = TwoHosts::connect_from(port, server())?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let (status, headers, body) = get(&mut s, "ballast.test", path);
        let dirty = header(&headers, "x-dirty-seen").and_then(|v| v.parse().ok());
        Ok((status, dirty, String::from_utf8_lossy(&body).into_owned()))
    })?
}

/// A request that marks the image and holds its instance while edged is paged out to swap.
fn held_while_paged_out(
    client: &TwoHosts,
    pid: u32,
    port: u16,
    round: usize,
) -> anyhow::Result<(u16, Option<u64>, String)> {
    std::thread::scope(|scope| -> anyhow::Result<_> {
        let held = scope.spawn(move || ballast(client, port, "/?hold=1500"));
        std::thread::sleep(Duration::from_millis(600));
        let paging = std::time::Instant::now();
        let advised = page_out(pid)?;
        let in_swap = swapped_kb(pid)?;
        eprintln!(
            "[swap] round {round}: {} MiB advised, {in_swap} kB in swap, in {:?}",
            advised >> 20,
            paging.elapsed()
        );
        anyhow::ensure!(
            in_swap >= 1024,
            "round {round}: paging edged out left {in_swap} kB in swap ({advised} bytes advised): \
             the test would prove nothing"
        );
        held.join()
            .map_err(|_| anyhow::anyhow!("request thread panicked"))?
    })
}

#[test]
fn a_fresh_instance_never_sees_a_swapped_out_page_of_the_last_request() -> anyhow::Result<()> {
    let mut swap = None;
    if !require_feature(
        "isolation_under_swap",
        "swap (CONFIG_SWAP and a swap file swapon accepts)",
        || SwapFile::on().map(|s| swap = Some(s)),
    ) {
        return Ok(());
    }
    let _swap = swap;
    let ballast_wasm = edgeplane_testkit::app("ballast");
    let hosts = TwoHosts::new()?;
    // One worker: every request lands in the same pool, and its slots are reused.
    let config = Config::new("swap").app(
        App::component("ballast", &ballast_wasm)
            .vip(8080)
            .hosts(&["ballast.test"]),
    );
    let started = std::time::Instant::now();
    let edged = hosts.start(&config)?;
    let pid = edged.0.pid();
    eprintln!("[swap] edged healthy after {:?}", started.elapsed());

    let mut port = 47000;
    let mut seen = Vec::new();
    for round in 0..ROUNDS {
        port += 1;
        let holder = held_while_paged_out(&hosts, pid, port, round)?;
        seen.push(("held", holder.clone()));
        // Fresh instances after it, in the slot it left.
        for _ in 0..FOLLOWERS {
            port += 1;
            seen.push(("after", ballast(&hosts, port, "/")?));
        }
    }
    for (i, (kind, (status, dirty, body))) in seen.iter().enumerate() {
        assert_eq!(*status, 200, "request {i} ({kind}): {body}");
        assert_eq!(
            *dirty,
            Some(0),
            "request {i} ({kind}) found marks an earlier request wrote (paged out to swap) \
             in its fresh instance: {seen:?}"
        );
    }
    drop(edged);
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(())
}
