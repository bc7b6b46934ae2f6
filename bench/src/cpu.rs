//! What one CPU spent during a run, from /proc/stat: the server's cost per request when the
//! server has that CPU to itself. On this 2-core machine a load generator on the other CPU
//! saturates before a fast server does, so requests per second alone would measure the load
//! generator; requests per CPU-second of the server's core measure the server.

use anyhow::Context as _;

/// One CPU's cumulative time, in clock ticks (USER_HZ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq: work done on this CPU, the kernel's loopback
    /// TCP for the packets the server sends included.
    pub busy: u64,
    /// user + nice: the servers' own code (the rest of `busy` is the kernel's).
    pub user: u64,
    /// Every column: busy, idle, iowait and time stolen by the hypervisor.
    pub total: u64,
}

impl CpuTimes {
    pub fn read(cpu: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&stat, cpu).with_context(|| format!("no cpu{cpu} line in /proc/stat"))
    }

    /// Every CPU's times together (/proc/stat's `cpu` line).
    pub fn read_all() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse_line(&stat, "cpu").context("no cpu line in /proc/stat")
    }

    fn parse(stat: &str, cpu: u32) -> Option<Self> {
        Self::parse_line(stat, &format!("cpu{cpu}"))
    }

    fn parse_line(stat: &str, label: &str) -> Option<Self> {
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        Some(Self {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            user: at(0) + at(1),
            total: (0..8).map(at).sum(),
        })
    }

    /// How busy the CPU was between `self` and `later`, and for how many CPU-seconds.
    pub fn until(self, later: CpuTimes) -> CpuUse {
        let ticks_per_sec = clock_ticks_per_sec();
        let busy = later.busy.saturating_sub(self.busy);
        let user = later.user.saturating_sub(self.user);
        let total = later.total.saturating_sub(self.total).max(1);
        CpuUse {
            busy_fraction: busy as f64 / total as f64,
            busy_seconds: busy as f64 / ticks_per_sec,
            user_seconds: user as f64 / ticks_per_sec,
        }
    }
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct CpuUse {
    pub busy_fraction: f64,
    pub busy_seconds: f64,
    /// The part of `busy_seconds` spent in user space.
    pub user_seconds: f64,
}

impl CpuUse {
    /// A request's CPU time, `1 / requests_per_cpu_second`, split in microseconds into
    /// (user space, kernel) by this reading's shares.
    pub fn per_request_us(&self, requests_per_cpu_second: f64) -> (f64, f64) {
        let per_request = 1e6 / requests_per_cpu_second;
        let user_share = self.user_seconds / self.busy_seconds;
        (per_request * user_share, per_request * (1.0 - user_share))
    }
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Pins the calling thread to `cpu` (a load generator on its own core, apart from the server).
pub fn pin_current_thread(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10 0 20 300 0 0 5 0 0 0\n\
        cpu0 100 2 30 400 4 6 8 10 7 0\n\
        cpu1 1 1 1 1 1 1 1 1 0 0\n\
        intr 1 2 3\n";

    #[test]
    fn reads_one_cpus_line() {
        let t = CpuTimes::parse(STAT, 0).unwrap();
        assert_eq!(t.busy, 100 + 2 + 30 + 6 + 8);
        assert_eq!(t.user, 100 + 2);
        assert_eq!(t.total, 100 + 2 + 30 + 400 + 4 + 6 + 8 + 10);
        assert_eq!(CpuTimes::parse(STAT, 1).unwrap().busy, 5);
        assert!(CpuTimes::parse(STAT, 2).is_none());
    }

    #[test]
    fn busy_fraction_between_two_readings() {
        let a = CpuTimes {
            busy: 100,
            user: 40,
            total: 1000,
        };
        let b = CpuTimes {
            busy: 175,
            user: 70,
            total: 1100,
        };
        let used = a.until(b);
        assert!((used.busy_fraction - 0.75).abs() < 1e-9);
        assert!((used.user_seconds / used.busy_seconds - 0.4).abs() < 1e-9);
        // 100,000 requests per CPU-second: 10 us each, 40% of it in user space.
        let (user_us, kernel_us) = used.per_request_us(100_000.0);
        assert!((user_us - 4.0).abs() < 1e-9 && (kernel_us - 6.0).abs() < 1e-9);
    }

    #[test]
    fn this_machine_has_a_cpu0_that_advances() {
        let a = CpuTimes::read(0).unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        let b = CpuTimes::read(0).unwrap();
        assert!(b.total >= a.total && b.busy >= a.busy);
    }
}
