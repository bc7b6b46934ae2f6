//! What the placement engine says about each app, typed end to end: the engine writes it, the
//! admin endpoint serves it as JSON, edgectl and the tests read it back into the same type.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

pub use crate::decide::Verdict;

/// One app's status: the engine's verdict, and whether requests went on to the region since the
/// last tick (a worker was saturated, or the app's code was cold here and the app rare).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    #[serde(flatten)]
    pub verdict: Verdict,
    #[serde(default)]
    pub region_saturated: bool,
    #[serde(default)]
    pub region_cold: bool,
}

impl AppStatus {
    pub fn new(verdict: Verdict) -> Self {
        Self {
            verdict,
            region_saturated: false,
            region_cold: false,
        }
    }

    /// The datacenter the app is placed at, if the engine (or a pin) placed it elsewhere.
    pub fn placed_at(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::Placed(dc) => Some(dc),
            _ => None,
        }
    }
}

impl fmt::Display for AppStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.verdict)?;
        if self.region_saturated {
            f.write_str(" +region:saturated")?;
        }
        if self.region_cold {
            f.write_str(" +region:cold")?;
        }
        Ok(())
    }
}

/// Per app, as `/placement` serves it.
pub type StatusTable = BTreeMap<String, AppStatus>;

/// The live table, shared by the engine and the admin endpoint.
pub type PlacementStatus = Arc<Mutex<StatusTable>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_readers_get_is_the_type_the_engine_wrote() {
        let table: StatusTable = [
            (
                "a".to_owned(),
                AppStatus::new(Verdict::Placed("dc2".into())),
            ),
            (
                "b".to_owned(),
                AppStatus {
                    verdict: Verdict::LocalPeerDown("dc2".into()),
                    region_saturated: true,
                    region_cold: false,
                },
            ),
            ("c".to_owned(), AppStatus::new(Verdict::InsufficientTraffic)),
        ]
        .into();
        let json = serde_json::to_value(&table).unwrap();
        assert_eq!(json["a"]["verdict"], "placed");
        assert_eq!(json["a"]["datacenter"], "dc2");
        assert_eq!(json["c"]["verdict"], "insufficient-traffic");
        let back: StatusTable = serde_json::from_value(json).unwrap();
        assert_eq!(back, table);
        assert_eq!(back["a"].placed_at(), Some("dc2"));
        assert_eq!(back["b"].to_string(), "local:dc2-down +region:saturated");
    }
}
