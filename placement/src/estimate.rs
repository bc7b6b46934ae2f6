//! The latency goal's estimates, as arithmetic over what was measured: the time a request of an
//! app takes here (its subrequests' measured latency) and at a peer (the handoff RTT plus, per
//! destination, subrequests per request x round trips per subrequest x the peer's RTT to it).

/// One destination as this datacenter sees it, per request of the app.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    /// `ip:port`.
    pub name: String,
    /// Subrequests to it per request served here.
    pub per_request: f64,
    /// Their mean latency from here (us).
    pub latency_us: f64,
}

/// One destination's observations, summed over the workers: `count` subrequests whose cost
/// per request of the app was `per_request_us` (us) each.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub destination: String,
    pub count: u64,
    pub per_request_us: f64,
}

/// Merges each worker's observations into one [`Destination`] per name, weighting each
/// worker's latency by its count; `served_here`: requests of the app served here (at least 1).
pub fn destinations(
    observed: impl IntoIterator<Item = Observed>,
    served_here: f64,
) -> Vec<Destination> {
    let mut merged: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
    for o in observed.into_iter().filter(|o| o.count > 0) {
        let e = merged.entry(o.destination).or_default();
        e.0 = e.0.saturating_add(o.count);
        e.1 += o.per_request_us * o.count as f64;
    }
    let served_here = served_here.max(1.0);
    merged
        .into_iter()
        .map(|(name, (count, weighted))| Destination {
            name,
            per_request: count as f64 / served_here,
            latency_us: weighted / count as f64,
        })
        .collect()
}

/// The request time here (us): each destination's subrequests per request x their latency.
pub fn here_us(dests: &[Destination]) -> f64 {
    dests.iter().map(|d| d.per_request * d.latency_us).sum()
}

/// How many of this datacenter's RTTs one subrequest to a destination spans (~2 for a fresh
/// connection per subrequest): its measured latency over the probed RTT, at least 1.
pub fn round_trips(latency_us: f64, here_rtt_us: f64) -> f64 {
    (latency_us / here_rtt_us.max(1.0)).max(1.0)
}

/// The request time at a peer (us): the handoff RTT to it, plus per destination its
/// subrequests per request x `round_trips[i]` x the peer's RTT to it (`peer_rtt_us[i]`).
pub fn at_peer_us(
    handoff_rtt_us: f64,
    dests: &[Destination],
    round_trips: &[f64],
    peer_rtt_us: &[f64],
) -> f64 {
    handoff_rtt_us
        + dests
            .iter()
            .zip(round_trips)
            .zip(peer_rtt_us)
            .map(|((d, trips), rtt)| d.per_request * trips * rtt)
            .sum::<f64>()
}

/// What the up peers answered this tick: the fastest estimate, and who did not answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Estimates {
    best: Option<(u32, String, f64)>,
    /// (id, name) of the peers that did not answer (or are marked down).
    pub unanswered: Vec<(u32, String)>,
}

impl Estimates {
    /// A peer's estimate (us), or None when it did not answer.
    pub fn add(&mut self, id: u32, name: &str, estimate: Option<f64>) {
        match estimate {
            Some(us) if self.best.as_ref().is_none_or(|b| us < b.2) => {
                self.best = Some((id, name.to_owned(), us));
            }
            Some(_) => {}
            None => self.unanswered.push((id, name.to_owned())),
        }
    }

    /// (id, name, us) of the fastest peer.
    pub fn best(&self) -> Option<(u32, &str, f64)> {
        self.best
            .as_ref()
            .map(|(dc, name, us)| (*dc, name.as_str(), *us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(destination: &str, count: u64, per_request_us: f64) -> Observed {
        Observed {
            destination: destination.to_owned(),
            count,
            per_request_us,
        }
    }

    #[test]
    fn workers_observations_merge_weighted_by_count() {
        let dests = destinations(
            [
                observed("10.0.0.1:80", 3, 1000.0),
                observed("10.0.0.1:80", 1, 2000.0),
                observed("10.0.0.2:80", 0, 9999.0),
            ],
            2.0,
        );
        assert_eq!(
            dests,
            vec![Destination {
                name: "10.0.0.1:80".into(),
                per_request: 2.0,
                latency_us: 1250.0,
            }]
        );
        assert_eq!(here_us(&dests), 2500.0);
    }

    #[test]
    fn a_peer_pays_the_handoff_and_its_own_round_trips() {
        let dests = [Destination {
            name: "b:80".into(),
            per_request: 2.0,
            latency_us: 4000.0,
        }];
        // 4 ms over a 2 ms RTT here: two round trips a subrequest; 0.5 ms from the peer.
        let trips = [round_trips(4000.0, 2000.0)];
        assert_eq!(trips, [2.0]);
        assert_eq!(at_peer_us(10_000.0, &dests, &trips, &[500.0]), 12_000.0);
        // Faster than one RTT still spans one.
        assert_eq!(round_trips(100.0, 2000.0), 1.0);
        assert_eq!(round_trips(100.0, 0.0), 100.0);
    }

    #[test]
    fn the_fastest_answer_wins_and_silence_is_kept() {
        let mut e = Estimates::default();
        e.add(2, "dc2", Some(900.0));
        e.add(3, "dc3", None);
        e.add(4, "dc4", Some(700.0));
        e.add(5, "dc5", Some(700.0));
        assert_eq!(e.best(), Some((4, "dc4", 700.0)));
        assert_eq!(e.unanswered, vec![(3, "dc3".to_owned())]);
    }
}
