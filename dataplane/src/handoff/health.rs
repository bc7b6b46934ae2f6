//! What a datacenter knows of its peers' health and distance, shared by its workers and its
//! placement engine's measurements. A failed handoff or probe counts against a peer, and
//! `down_after` failures in a row mark it down (requests for it are then served here at once
//! instead of each waiting on a dead peer); while down, only probes reach it, and `up_after`
//! answers in a row bring it back. One lost packet does not move traffic, and a peer that answers
//! one probe in three does not flap. Workers also time every handoff (the RTT on its connection).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// How many failures in a row mark a peer down, and answers in a row bring it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    pub down_after: u32,
    pub up_after: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            down_after: 3,
            up_after: 2,
        }
    }
}

#[derive(Debug, Default)]
struct PeerState {
    down: AtomicBool,
    /// Failures since the last answer.
    failures: AtomicU32,
    /// Answers since the last failure (counted while down).
    answers: AtomicU32,
    /// Moving average of the RTT measured on handoff connections (us; 0: none yet).
    handoff_rtt_us: AtomicU64,
    /// When the last handoff RTT sample came (ms since the epoch).
    handoff_rtt_at_ms: AtomicU64,
    /// The placement engine's last probe (TCP connect time, us; 0: none yet).
    probe_rtt_us: AtomicU64,
}

#[derive(Debug, Default)]
pub struct PeerHealth {
    peers: HashMap<u32, PeerState>,
    policy: HealthPolicy,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PeerHealth {
    pub fn new(ids: impl IntoIterator<Item = u32>) -> Self {
        Self::with_policy(ids, HealthPolicy::default())
    }

    pub fn with_policy(ids: impl IntoIterator<Item = u32>, policy: HealthPolicy) -> Self {
        Self {
            peers: ids
                .into_iter()
                .map(|id| (id, PeerState::default()))
                .collect(),
            policy,
        }
    }

    pub fn policy(&self) -> HealthPolicy {
        self.policy
    }

    pub fn is_down(&self, id: u32) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|p| p.down.load(Ordering::Relaxed))
    }

    /// A handoff or probe to `id` failed; true when this failure marks it down.
    pub fn failed(&self, id: u32) -> bool {
        let Some(p) = self.peers.get(&id) else {
            return false;
        };
        p.answers.store(0, Ordering::Relaxed);
        let failures = p.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        failures >= self.policy.down_after.max(1) && !p.down.swap(true, Ordering::Relaxed)
    }

    /// `id` answered a handoff or probe; true when this answer brings it back up.
    pub fn answered(&self, id: u32) -> bool {
        let Some(p) = self.peers.get(&id) else {
            return false;
        };
        // The handoff path calls this per request: write only when something changes.
        if p.failures.load(Ordering::Relaxed) != 0 {
            p.failures.store(0, Ordering::Relaxed);
        }
        if !p.down.load(Ordering::Relaxed) {
            return false;
        }
        let answers = p.answers.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if answers >= self.policy.up_after.max(1) && p.down.swap(false, Ordering::Relaxed) {
            p.answers.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// One RTT to `id` measured on a handoff connection: the exchange's time less the time the
    /// peer says it spent serving the request.
    pub fn record_handoff_rtt(&self, id: u32, rtt: Duration) {
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        let sample = rtt.as_micros().max(1) as u64;
        // Racing workers may lose a sample to each other; an average needs none of them exact.
        let old = p.handoff_rtt_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample * 3) / 10
        };
        p.handoff_rtt_us.store(new, Ordering::Relaxed);
        p.handoff_rtt_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A probe reached `id` in `rtt`; true when this answer brings it back up.
    pub fn probe_answered(&self, id: u32, rtt: Duration) -> bool {
        if let Some(p) = self.peers.get(&id) {
            p.probe_rtt_us.store(
                u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1),
                Ordering::Relaxed,
            );
        }
        self.answered(id)
    }

    /// The RTT to `id`: measured on handoff connections when one came within `max_age`, else
    /// the last probe's.
    pub fn rtt(&self, id: u32, max_age: Duration) -> Option<Duration> {
        self.handoff_rtt(id, max_age).or_else(|| {
            let us = self.peers.get(&id)?.probe_rtt_us.load(Ordering::Relaxed);
            (us > 0).then(|| Duration::from_micros(us))
        })
    }

    /// The RTT to `id` measured on handoff connections, if a sample came within `max_age`.
    pub fn handoff_rtt(&self, id: u32, max_age: Duration) -> Option<Duration> {
        let p = self.peers.get(&id)?;
        let (us, at) = (
            p.handoff_rtt_us.load(Ordering::Relaxed),
            p.handoff_rtt_at_ms.load(Ordering::Relaxed),
        );
        (us > 0 && now_ms().saturating_sub(at) <= max_age.as_millis() as u64)
            .then(|| Duration::from_micros(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_n_failures_in_a_row_and_up_after_m_answers_in_a_row() {
        let h = PeerHealth::with_policy(
            [2, 3],
            HealthPolicy {
                down_after: 3,
                up_after: 2,
            },
        );
        assert!(!h.is_down(2));
        assert!(!h.failed(2) && !h.failed(2), "two failures are not enough");
        assert!(!h.answered(2), "an answer while up changes nothing");
        assert!(!h.failed(2) && !h.failed(2), "the streak started again");
        assert!(h.failed(2), "the third in a row marks it down");
        assert!(!h.failed(2), "already down");
        assert!(h.is_down(2) && !h.is_down(3));
        assert!(!h.probe_answered(2, Duration::from_millis(1)));
        assert!(!h.failed(2), "a failure between answers starts them again");
        assert!(!h.probe_answered(2, Duration::from_millis(1)));
        assert!(h.is_down(2));
        assert!(
            h.probe_answered(2, Duration::from_millis(1)),
            "two in a row"
        );
        assert!(!h.is_down(2));
        assert!(!h.failed(9), "not a peer");
        assert!(!h.answered(9));
    }

    #[test]
    fn rtt_from_handoffs_while_fresh_else_the_last_probe() {
        let h = PeerHealth::new([3]);
        assert_eq!(h.rtt(3, Duration::from_secs(10)), None);
        h.probe_answered(3, Duration::from_micros(31_000));
        assert_eq!(
            h.rtt(3, Duration::from_secs(10)),
            Some(Duration::from_micros(31_000))
        );
        assert_eq!(h.handoff_rtt(3, Duration::from_secs(10)), None);
        h.record_handoff_rtt(3, Duration::from_micros(30_000));
        h.record_handoff_rtt(3, Duration::from_micros(40_000));
        assert_eq!(
            h.rtt(3, Duration::from_secs(10)),
            Some(Duration::from_micros(33_000)),
            "handoff connections' RTT first"
        );
    }
}
