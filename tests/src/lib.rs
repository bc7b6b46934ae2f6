//! edgeplane's end-to-end tests (`tests/`), on the test kit (`edgeplane-testkit`); what is theirs
//! alone is the reference model the differential test holds XDP's classifier against.

pub mod reference;
