//! How the kernel schedules a worker thread: its CPU, and how long it may wait for it.

use std::time::Duration;

use tracing::warn;

/// Pins the calling thread to `cpu`.
pub(super) fn pin_to_cpu(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin worker");
        }
    }
}

/// `struct sched_attr` (include/uapi/linux/sched/types.h); the libc crate has no binding.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// The slice the calling thread asks the fair scheduler for (kernel 6.12+; the kernel takes
/// 0.1-100 ms).
///
/// Why: a worker wakes when a request arrives and sleeps again within tens of microseconds. With
/// EEVDF, a waking task whose slice is shorter than the running task's may preempt it, so a worker
/// sharing its CPU with a busier process (a load generator, a batch job, the host's own daemons)
/// answers at once instead of after that process's slice (1.4 ms on this 2-core VM by default).
/// Its share of the CPU is unchanged: a short slice reorders who runs first, not how much.
pub(super) fn request_slice(slice: Duration) -> std::io::Result<Duration> {
    let attr = SchedAttr {
        size: size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        runtime: slice.as_nanos() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid sched_attr of the size it declares, read by the kernel only.
    let ret = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    current_slice()
}

/// The calling thread's slice as the scheduler reports it (`se.slice` in /proc/thread-self/sched).
pub(super) fn current_slice() -> std::io::Result<Duration> {
    let sched = std::fs::read_to_string("/proc/thread-self/sched")?;
    sched
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "se.slice").then(|| value.trim().parse::<u64>().ok())?
        })
        .map(Duration::from_nanos)
        .ok_or_else(|| std::io::Error::other("no se.slice in /proc/thread-self/sched"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_slice_is_what_the_scheduler_then_reports() {
        // On a thread of its own: the slice stays with the thread that asked.
        std::thread::spawn(|| {
            let before = current_slice().expect("se.slice readable");
            match request_slice(Duration::from_micros(200)) {
                Ok(now) => {
                    assert_eq!(now, Duration::from_micros(200));
                    assert_ne!(before, now, "the default slice is not 200 us");
                }
                // Kernels before 6.12 refuse a slice for SCHED_OTHER: say so, do not fail.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    eprintln!("SKIPPED: this kernel takes no custom slice ({e})")
                }
                Err(e) => panic!("sched_setattr: {e}"),
            }
        })
        .join()
        .unwrap();
    }
}
