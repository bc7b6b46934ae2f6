//! The workers' request parser, fed a client's bytes cut into reads where the fuzzer says:
//! never a panic, and the same requests whatever the cuts (the decoder keeps state across reads).
#![no_main]

use edgeplane_dataplane::http::{Decoded, HttpError, HttpLimits, Request, RequestDecoder};
use libfuzzer_sys::fuzz_target;

/// Decodes `input` offered in the given cuts; the requests, then the error that ended it if any.
fn decode_all(input: &[u8], cuts: &[usize], limits: &HttpLimits) -> (Vec<Request>, Option<HttpError>) {
    let mut decoder = RequestDecoder::default();
    let mut buffered: Vec<u8> = Vec::new();
    let mut requests = Vec::new();
    let mut offered = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(offered, input.len());
        buffered.extend_from_slice(&input[offered..cut]);
        offered = cut;
        loop {
            match decoder.decode(&buffered, limits) {
                Ok(Decoded::Complete(req, used)) => {
                    assert!(used <= buffered.len());
                    buffered.drain(..used);
                    requests.push(req);
                    if buffered.is_empty() {
                        break;
                    }
                }
                Ok(Decoded::Partial { used, .. }) => {
                    assert!(used <= buffered.len());
                    buffered.drain(..used);
                    break;
                }
                Err(e) => return (requests, Some(e)),
                Ok(other) => panic!("a decoder that does not stream gave {other:?}"),
            }
        }
    }
    (requests, None)
}

fuzz_target!(|data: &[u8]| {
    let limits = HttpLimits {
        max_body_bytes: 4096,
        max_header_bytes: 2048,
        max_headers: 16,
        ..Default::default()
    };
    // The first bytes choose the cuts; the rest is what the client sent.
    let (cut_bytes, input) = data.split_at(data.len().min(4));
    let mut cuts: Vec<usize> = cut_bytes.iter().map(|b| *b as usize * 3).collect();
    cuts.sort_unstable();
    let whole = decode_all(input, &[], &limits);
    let cut = decode_all(input, &cuts, &limits);
    for req in &whole.0 {
        let _ = (req.host(), req.path());
        assert!(req.body.len() <= limits.max_body_bytes);
    }
    // Requests that completed in one read complete the same way in several; an error may come
    // earlier when cut (a head over the limit is seen before its end), never a different request.
    let common = whole.0.len().min(cut.0.len());
    assert_eq!(whole.0[..common], cut.0[..common]);
    if whole.1.is_none() && cut.1.is_none() {
        assert_eq!(whole.0.len(), cut.0.len());
    }
});
