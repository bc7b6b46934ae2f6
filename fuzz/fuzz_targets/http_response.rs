//! The response parser a handoff reads a peer's answer with (and the load generator, edgectl and
//! the placement engine): no panic, and what it says it took is within what it was given.
#![no_main]

use edgeplane_dataplane::http::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    if let Ok(Some(parsed)) = parse_response(input, flags & 1 == 1, 4096) {
        assert!(parsed.consumed <= input.len());
        assert!(parsed.response.body.len() <= 4096);
    }
});
