//! What the fleet's control plane and a datacenter's files hand edged: an app table from the
//! apps bucket (and the configuration composed with it), a topology, a handoff keys file. Each is
//! parsed and checked or refused with an error, never a panic; a topology that parses comes back
//! the same through the text the control plane stores.
#![no_main]

use std::{path::Path, sync::OnceLock};

use edgeplane::{config::EdgedConfig, fleet, keys, topology::Topology};
use libfuzzer_sys::fuzz_target;

fn two_datacenters() -> &'static Topology {
    static T: OnceLock<Topology> = OnceLock::new();
    T.get_or_init(|| {
        Topology::parse(
            "[[datacenters]]\nname = \"a\"\nid = 1\nhandoff = [\"192.0.2.1:80\"]\n\
             [[datacenters]]\nname = \"b\"\nid = 2\nhandoff = [\"[2001:db8::2]:80\"]\n",
        )
        .expect("a valid topology")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((name, table)) = fleet::parse_app(text) {
        let state = fleet::FleetState {
            apps: [(name, table)].into(),
            ..Default::default()
        };
        if let Ok(composed) = fleet::compose("", &state, Path::new("/fleet-topology.toml")) {
            let _ = EdgedConfig::parse(&composed);
        }
    }
    if let Ok(t) = Topology::parse(text) {
        let again = Topology::parse(&t.to_toml()).expect("a topology's own text parses");
        assert_eq!(again, t);
    }
    let _ = keys::parse(text, two_datacenters(), "a");
});
