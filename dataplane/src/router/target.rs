//! Choosing where one request runs, from the app's placement and what this worker sees of its
//! peers: a pure decision over typed inputs; the counters it consults (holdout turn,
//! popularity) are asked lazily, only when the decision reaches them.

use edgeplane_abi::{Placement, placement_flags, placement_kind};

use super::region::RegionReason;

/// Where one request runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Local,
    /// Placed elsewhere by the engine, but kept here as part of the holdout.
    Holdout,
    Peer(u32),
    /// Not placed elsewhere, but sent on to the region (saturated here, or cold and rare).
    Region(u32, RegionReason),
    /// Placed at a peer that failed a handoff moments ago: served here without trying it.
    PeerDown(u32),
}

/// What the choice needs to know besides the placement.
pub struct View<'a> {
    /// This datacenter's id.
    pub self_id: u32,
    /// The region's id, when this datacenter has one.
    pub region: Option<u32>,
    /// Whether a datacenter is one of this one's peers.
    pub is_peer: &'a dyn Fn(u32) -> bool,
    /// Whether a peer is marked down.
    pub is_down: &'a dyn Fn(u32) -> bool,
    /// Whether this request is the holdout's turn (asked only for a smart placement elsewhere).
    pub holdout_turn: &'a mut dyn FnMut() -> bool,
    /// Whether the app is cold here and rarely asked for (asked only when a region is
    /// reachable and the request would stay here).
    pub cold_and_rare: &'a mut dyn FnMut() -> bool,
}

/// Where a request for an app placed at `p` runs.
pub fn choose(p: Placement, view: View<'_>) -> Target {
    let dc = match p.kind {
        placement_kind::DATACENTER => Some(p.datacenter),
        placement_kind::REGION => view.region,
        _ => None,
    };
    match dc {
        Some(dc) if dc != view.self_id && (view.is_peer)(dc) => {
            if p.flags & placement_flags::SMART != 0 && (view.holdout_turn)() {
                Target::Holdout
            } else if (view.is_down)(dc) {
                Target::PeerDown(dc)
            } else {
                Target::Peer(dc)
            }
        }
        // Served here, unless the region (reachable: not this datacenter, not down) should
        // serve an app that is cold here.
        _ => match view.region {
            Some(region)
                if region != view.self_id && !(view.is_down)(region) && (view.cold_and_rare)() =>
            {
                Target::Region(region, RegionReason::Cold)
            }
            _ => Target::Local,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        placement: Placement,
        region: Option<u32>,
        down: bool,
        holdout_turn: bool,
        cold: bool,
    }

    fn placed(kind: u32, datacenter: u32, flags: u32) -> Placement {
        Placement {
            kind,
            datacenter,
            flags,
            ..Default::default()
        }
    }

    fn run(c: Case) -> (Target, u32, u32) {
        let (mut holdout_asked, mut cold_asked) = (0, 0);
        let target = choose(
            c.placement,
            View {
                self_id: 1,
                region: c.region,
                is_peer: &|dc| dc == 2 || dc == 3,
                is_down: &|_| c.down,
                holdout_turn: &mut || {
                    holdout_asked += 1;
                    c.holdout_turn
                },
                cold_and_rare: &mut || {
                    cold_asked += 1;
                    c.cold
                },
            },
        );
        (target, holdout_asked, cold_asked)
    }

    fn case(placement: Placement) -> Case {
        Case {
            placement,
            region: None,
            down: false,
            holdout_turn: false,
            cold: false,
        }
    }

    #[test]
    fn a_placement_at_a_peer_goes_there_unless_down_or_held_out() {
        let at_2 = placed(placement_kind::DATACENTER, 2, 0);
        assert_eq!(run(case(at_2)).0, Target::Peer(2));
        assert_eq!(
            run(Case {
                down: true,
                ..case(at_2)
            })
            .0,
            Target::PeerDown(2)
        );
        // A pinned (not smart) placement has no holdout, and is not asked about one.
        assert_eq!(
            run(Case {
                holdout_turn: true,
                ..case(at_2)
            }),
            (Target::Peer(2), 0, 0)
        );
        let smart = placed(placement_kind::DATACENTER, 2, placement_flags::SMART);
        assert_eq!(
            run(Case {
                holdout_turn: true,
                ..case(smart)
            })
            .0,
            Target::Holdout
        );
        assert_eq!(run(case(smart)), (Target::Peer(2), 1, 0));
    }

    #[test]
    fn a_placement_here_or_at_a_stranger_stays_here_unless_cold_with_a_region() {
        for p in [
            Placement::default(),
            placed(placement_kind::DATACENTER, 1, 0),
            placed(placement_kind::DATACENTER, 9, 0),
        ] {
            assert_eq!(run(case(p)), (Target::Local, 0, 0), "{p:?}");
            assert_eq!(
                run(Case {
                    region: Some(3),
                    cold: true,
                    ..case(p)
                })
                .0,
                Target::Region(3, RegionReason::Cold)
            );
            assert_eq!(
                run(Case {
                    region: Some(3),
                    ..case(p)
                }),
                (Target::Local, 0, 1)
            );
        }
    }

    #[test]
    fn a_region_placement_goes_to_the_region_or_stays() {
        let region = placed(placement_kind::REGION, 0, 0);
        assert_eq!(
            run(Case {
                region: Some(3),
                ..case(region)
            })
            .0,
            Target::Peer(3)
        );
        assert_eq!(
            run(Case {
                region: Some(3),
                down: true,
                ..case(region)
            })
            .0,
            Target::PeerDown(3),
            "served here, said to be a fallback"
        );
        assert_eq!(run(case(region)).0, Target::Local, "no region");
        // A region that is down takes no cold apps.
        let here = Placement::default();
        assert_eq!(
            run(Case {
                region: Some(3),
                down: true,
                cold: true,
                ..case(here)
            }),
            (Target::Local, 0, 0)
        );
    }
}
