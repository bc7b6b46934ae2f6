//! The engine's decision for one app, as pure functions over what the engine gathered: no map,
//! clock or probe in here, so every rule (pins, cool-down, a peer down, the measured revert,
//! the margin, local-first's minimum saving) is a table of cases below. The engine gathers
//! [`Facts`] (cheap: maps and counters), asks [`first_look`] whether that settles it, and only
//! then probes for estimates and asks [`choose`].

use std::fmt;

use edgeplane_abi::{Placement, placement_flags, placement_kind};

/// What the engine concluded for an app this tick. `/placement` serves it as JSON
/// (`{"verdict": "placed", "datacenter": "dc2"}`), and edgectl and the tests read it back into
/// this type: no reader parses the text `Display` gives for people.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "verdict", content = "datacenter", rename_all = "kebab-case")]
pub enum Verdict {
    /// Not judged yet (edged just started, or the app was just added).
    Analyzing,
    /// Pinned by hand: left alone.
    Pinned,
    /// Back here, cooling down after a placement elsewhere did not pay.
    Reverted,
    /// Back here because the datacenter it was placed at is down.
    LocalPeerDown(String),
    /// Too few requests to judge.
    InsufficientTraffic,
    /// Placed at this datacenter.
    Placed(String),
    Local,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Analyzing => f.write_str("analyzing"),
            Self::Pinned => f.write_str("pinned"),
            Self::Reverted => f.write_str("reverted"),
            Self::LocalPeerDown(dc) => write!(f, "local:{dc}-down"),
            Self::InsufficientTraffic => f.write_str("insufficient-traffic"),
            Self::Placed(dc) => write!(f, "placed:{dc}"),
            Self::Local => f.write_str("local"),
        }
    }
}

/// What to write and say for an app.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The PLACEMENT entry (None: leave the map as it is).
    pub placement: Option<Placement>,
    pub verdict: Verdict,
    /// Start the app's cool-down: it may not be placed elsewhere again for a while.
    pub cool_down: bool,
}

/// What the engine knows of an app before probing anything.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    pub current: Placement,
    /// Still cooling down from a revert.
    pub cooling_down: bool,
    /// The name of the datacenter it is placed at, when that datacenter is marked down.
    pub placed_at_down_peer: Option<String>,
    /// Placed by a backend hint (`host` / `hostname`): probes decide, not traffic.
    pub hinted: bool,
    /// Moving averages of handed-off requests and of the holdout served here (0: none yet).
    pub remote_us: f64,
    pub holdout_us: f64,
    pub requests: u64,
    pub min_requests: u64,
}

/// What [`first_look`] leaves to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    Decided(Decision),
    /// Probe the backend from here and from each peer (a hinted app).
    PlaceNearBackend,
    /// Estimate the request time here and at each peer.
    Estimate,
}

/// The engine's placement for "here" (an engine-made entry).
pub fn here() -> Placement {
    Placement {
        flags: placement_flags::SMART,
        ..Default::default()
    }
}

/// An engine-made entry at datacenter `dc`.
pub fn at(dc: u32) -> Placement {
    Placement {
        kind: placement_kind::DATACENTER,
        datacenter: dc,
        flags: placement_flags::SMART,
        ..Default::default()
    }
}

/// What the facts alone settle, in order: a pin, a cool-down, a peer down, a hint, a
/// placement slower than its holdout, too little traffic.
pub fn first_look(f: &Facts) -> Next {
    let decided = |placement, verdict, cool_down| {
        Next::Decided(Decision {
            placement,
            verdict,
            cool_down,
        })
    };
    if f.current.flags & placement_flags::PINNED != 0 {
        return decided(None, Verdict::Pinned, false);
    }
    if f.cooling_down {
        return decided(Some(here()), Verdict::Reverted, false);
    }
    if let Some(dc) = &f.placed_at_down_peer {
        // Back here at once, no cool-down: placed again when a probe sees it back and it
        // still wins.
        return decided(Some(here()), Verdict::LocalPeerDown(dc.clone()), false);
    }
    if f.hinted {
        return Next::PlaceNearBackend;
    }
    let placed = f.current.kind != placement_kind::LOCAL;
    // Measured, not estimated: handed-off requests slower than the holdout kept here.
    if placed && f.remote_us > 0.0 && f.holdout_us > 0.0 && f.remote_us > f.holdout_us {
        return decided(Some(here()), Verdict::Reverted, true);
    }
    if f.requests < f.min_requests {
        return decided(None, Verdict::InsufficientTraffic, false);
    }
    Next::Estimate
}

/// An app placed at a peer that did not answer this tick's estimate stays there, unwritten,
/// until the peer's health marks it down (then `first_look` brings it back): one lost probe
/// does not move an app, as it does not move handoffs. `unanswered`: (id, name) of the peers.
pub fn hold_while_unanswered(current: Placement, unanswered: &[(u32, String)]) -> Option<Decision> {
    if current.kind != placement_kind::DATACENTER {
        return None;
    }
    let (_, name) = unanswered
        .iter()
        .find(|(id, _)| *id == current.datacenter)?;
    Some(Decision {
        placement: None,
        verdict: Verdict::Placed(name.clone()),
        cool_down: false,
    })
}

/// The best of the estimates: a peer that beats `here_us` by `margin` (and by `min_saving_us`)
/// gets the app; otherwise it is here, and an app that was placed elsewhere comes back as a
/// revert when `revert` (the traffic-driven goals; a hint just follows its probes).
pub fn choose(
    current: Placement,
    here_us: f64,
    best: Option<(u32, &str, f64)>,
    margin: f64,
    min_saving_us: f64,
    revert: bool,
) -> Decision {
    let placed = current.kind != placement_kind::LOCAL;
    match best {
        Some((dc, name, us)) if us < here_us * (1.0 - margin) && here_us - us >= min_saving_us => {
            Decision {
                placement: Some(at(dc)),
                verdict: Verdict::Placed(name.to_owned()),
                cool_down: false,
            }
        }
        _ if placed && revert => Decision {
            placement: Some(here()),
            verdict: Verdict::Reverted,
            cool_down: true,
        },
        _ => Decision {
            placement: Some(here()),
            verdict: Verdict::Local,
            cool_down: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_holds_while_its_peer_misses_estimates_short_of_being_down() {
        let dc2 = vec![(2, "dc2".to_owned())];
        assert_eq!(
            hold_while_unanswered(at(2), &dc2),
            Some(Decision {
                placement: None,
                verdict: Verdict::Placed("dc2".into()),
                cool_down: false,
            })
        );
        assert_eq!(hold_while_unanswered(at(3), &dc2), None, "another peer");
        assert_eq!(hold_while_unanswered(here(), &dc2), None, "not placed");
        assert_eq!(hold_while_unanswered(at(2), &[]), None, "it answered");
    }

    fn facts() -> Facts {
        Facts {
            current: here(),
            cooling_down: false,
            placed_at_down_peer: None,
            hinted: false,
            remote_us: 0.0,
            holdout_us: 0.0,
            requests: 10,
            min_requests: 3,
        }
    }

    fn verdict(next: Next) -> Option<Verdict> {
        match next {
            Next::Decided(d) => Some(d.verdict),
            _ => None,
        }
    }

    #[test]
    fn the_facts_settle_pins_cool_downs_down_peers_slow_placements_and_thin_traffic() {
        let pinned = Placement {
            flags: placement_flags::PINNED,
            ..at(2)
        };
        let cases: Vec<(&str, Facts, Next)> = vec![
            (
                "a pin wins over everything, the map untouched",
                Facts {
                    current: pinned,
                    cooling_down: true,
                    placed_at_down_peer: Some("dc2".into()),
                    ..facts()
                },
                Next::Decided(Decision {
                    placement: None,
                    verdict: Verdict::Pinned,
                    cool_down: false,
                }),
            ),
            (
                "cooling down: here",
                Facts {
                    current: at(2),
                    cooling_down: true,
                    ..facts()
                },
                Next::Decided(Decision {
                    placement: Some(here()),
                    verdict: Verdict::Reverted,
                    cool_down: false,
                }),
            ),
            (
                "its datacenter down: here at once, no cool-down",
                Facts {
                    current: at(2),
                    placed_at_down_peer: Some("dc2".into()),
                    ..facts()
                },
                Next::Decided(Decision {
                    placement: Some(here()),
                    verdict: Verdict::LocalPeerDown("dc2".into()),
                    cool_down: false,
                }),
            ),
            (
                "a hint goes to its probes, traffic or not",
                Facts {
                    hinted: true,
                    requests: 0,
                    ..facts()
                },
                Next::PlaceNearBackend,
            ),
            (
                "placed and slower than its holdout: reverted, cooling down",
                Facts {
                    current: at(2),
                    remote_us: 900.0,
                    holdout_us: 800.0,
                    ..facts()
                },
                Next::Decided(Decision {
                    placement: Some(here()),
                    verdict: Verdict::Reverted,
                    cool_down: true,
                }),
            ),
            (
                "placed and faster than its holdout: estimated again",
                Facts {
                    current: at(2),
                    remote_us: 700.0,
                    holdout_us: 800.0,
                    ..facts()
                },
                Next::Estimate,
            ),
            (
                "no holdout measured yet: no revert on one side's figure",
                Facts {
                    current: at(2),
                    remote_us: 900.0,
                    ..facts()
                },
                Next::Estimate,
            ),
            (
                "too few requests",
                Facts {
                    requests: 2,
                    ..facts()
                },
                Next::Decided(Decision {
                    placement: None,
                    verdict: Verdict::InsufficientTraffic,
                    cool_down: false,
                }),
            ),
            ("enough traffic: estimate", facts(), Next::Estimate),
        ];
        for (case, f, want) in cases {
            assert_eq!(first_look(&f), want, "{case}");
        }
        assert_eq!(verdict(first_look(&facts())), None);
    }

    #[test]
    fn a_peer_must_beat_here_by_the_margin_and_the_minimum_saving() {
        let local = here();
        // (case, current, here_us, best, min_saving_us, revert, verdict, cool_down)
        let cases = [
            (
                "25% faster beats a 20% margin",
                local,
                1000.0,
                Some(750.0),
                0.0,
                true,
                Verdict::Placed("dc2".into()),
                false,
            ),
            (
                "15% faster does not",
                local,
                1000.0,
                Some(850.0),
                0.0,
                true,
                Verdict::Local,
                false,
            ),
            (
                "no peer estimate",
                local,
                1000.0,
                None,
                0.0,
                true,
                Verdict::Local,
                false,
            ),
            (
                "local-first: 250 us saved is under its 300",
                local,
                1000.0,
                Some(750.0),
                300.0,
                true,
                Verdict::Local,
                false,
            ),
            (
                "local-first: 400 us saved is enough",
                local,
                1000.0,
                Some(600.0),
                300.0,
                true,
                Verdict::Placed("dc2".into()),
                false,
            ),
            (
                "placed, no longer winning: reverted",
                at(2),
                1000.0,
                Some(900.0),
                0.0,
                true,
                Verdict::Reverted,
                true,
            ),
            (
                "placed by a hint, no longer winning: just here",
                at(2),
                1000.0,
                Some(900.0),
                0.0,
                false,
                Verdict::Local,
                false,
            ),
        ];
        for (case, current, here_us, best, min_saving, revert, want, cool_down) in cases {
            let d = choose(
                current,
                here_us,
                best.map(|us| (2, "dc2", us)),
                0.2,
                min_saving,
                revert,
            );
            assert_eq!(
                (d.verdict, d.cool_down),
                (want.clone(), cool_down),
                "{case}"
            );
            let expected = match want {
                Verdict::Placed(_) => at(2),
                _ => here(),
            };
            assert_eq!(d.placement, Some(expected), "{case}");
        }
    }

    #[test]
    fn verdicts_read_as_the_status_strings_readers_know() {
        assert_eq!(Verdict::Placed("dc2".into()).to_string(), "placed:dc2");
        assert_eq!(
            Verdict::LocalPeerDown("dc2".into()).to_string(),
            "local:dc2-down"
        );
        assert_eq!(
            Verdict::InsufficientTraffic.to_string(),
            "insufficient-traffic"
        );
    }
}
