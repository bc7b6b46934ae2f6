//! What a datacenter knows of its peers' health and distance, shared by its workers and its
//! placement engine. Workers mark a peer down when a handoff to it fails (requests for it are
//! then served here at once instead of each waiting on a dead peer) and time every handoff; the
//! engine probes every peer each tick, marks it down when the probe fails, and is the only one
//! that marks a down peer up again: a peer is back when a probe sees it back.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

#[derive(Debug, Default)]
struct PeerState {
    down: AtomicBool,
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PeerHealth {
    pub fn new(ids: impl IntoIterator<Item = u32>) -> Self {
        Self {
            peers: ids
                .into_iter()
                .map(|id| (id, PeerState::default()))
                .collect(),
        }
    }

    pub fn is_down(&self, id: u32) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|p| p.down.load(Ordering::Relaxed))
    }

    /// Marks `id` down; true when it was up.
    pub fn mark_down(&self, id: u32) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|p| !p.down.swap(true, Ordering::Relaxed))
    }

    /// Marks `id` up; true when it was down.
    pub fn mark_up(&self, id: u32) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|p| p.down.swap(false, Ordering::Relaxed))
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

    /// A probe reached `id` in `rtt`: it is up.  True when it was down.
    pub fn probe_answered(&self, id: u32, rtt: Duration) -> bool {
        if let Some(p) = self.peers.get(&id) {
            p.probe_rtt_us
                .store(rtt.as_micros().max(1) as u64, Ordering::Relaxed);
        }
        self.mark_up(id)
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
    fn down_until_marked_up_and_rtt_averaged_while_fresh() {
        let h = PeerHealth::new([2, 3]);
        assert!(!h.is_down(2));
        assert!(h.mark_down(2));
        assert!(!h.mark_down(2), "already down");
        assert!(h.is_down(2) && !h.is_down(3));
        assert!(h.mark_up(2));
        assert!(!h.is_down(2));
        assert!(!h.mark_down(9), "not a peer");

        assert_eq!(h.rtt(3, Duration::from_secs(10)), None);
        assert!(h.mark_down(3));
        assert!(
            h.probe_answered(3, Duration::from_micros(31_000)),
            "a probe brings it back"
        );
        assert!(!h.is_down(3));
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
