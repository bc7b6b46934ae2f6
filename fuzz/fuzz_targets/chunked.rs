//! The chunked decoder: no panic, bounded output, and the same body however the input is cut.
#![no_main]

use edgeplane_dataplane::http::{ChunkedDecoder, decode_chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    const MAX: usize = 1 << 16;
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = decode_chunked(input, MAX);
    let mut decoder = ChunkedDecoder::new(MAX);
    let mut body = Vec::new();
    let mut taken = 0;
    let mut failed = None;
    for piece in input.chunks(usize::from(step).max(1)) {
        match decoder.feed(piece, &mut body) {
            Ok(n) => {
                assert!(n <= piece.len());
                taken += n;
                if decoder.is_done() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert!(body.len() <= MAX);
    match whole {
        Ok(Some((b, used))) => {
            assert!(decoder.is_done() && failed.is_none());
            assert_eq!((b, used), (body, taken));
        }
        Ok(None) => assert!(!decoder.is_done() && failed.is_none()),
        Err(e) => assert_eq!(failed, Some(e)),
    }
});
