//! edged's configuration: any text an operator (or a bad deploy) hands it is parsed and
//! validated or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = edgeplane::config::EdgedConfig::parse(text);
    }
});
