//! The workers' streaming request decoder against the whole-request one: the same client bytes,
//! cut into reads where the fuzzer says, give the same requests, and each streamed body (with
//! its trailers) is byte for byte the body decoded whole. Never a panic either way.
#![no_main]

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use edgeplane_dataplane::http::{
    Decoded, HttpLimits, Request, RequestDecoder, request_body::RequestBody,
};
use http_body::Body as _;
use libfuzzer_sys::fuzz_target;

/// Takes what the reader holds now: its data, and its trailers once it ended.
fn drain(body: &mut RequestBody, into: &mut Vec<u8>, trailers: &mut Vec<(String, Vec<u8>)>) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => into.extend_from_slice(&data),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        for (k, v) in &t {
                            trailers.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
                        }
                    }
                }
            },
            Poll::Ready(None) => return true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => return false,
        }
    }
}

/// The requests a streaming decoder hands on, each with its body read from its stream.
fn streamed(input: &[u8], cuts: &[usize], limits: &HttpLimits) -> Vec<Request> {
    let mut decoder = RequestDecoder::streaming();
    let mut buffered = Vec::new();
    let mut done = Vec::new();
    let mut open: Option<(Request, RequestBody)> = None;
    let mut offered = 0;
    let finish = |open: &mut Option<(Request, RequestBody)>, done: &mut Vec<Request>| {
        if let Some((mut req, mut body)) = open.take() {
            let mut trailers = Vec::new();
            if drain(&mut body, &mut req.body, &mut trailers) {
                req.trailers = trailers;
                done.push(req);
            }
        }
    };
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(offered, input.len());
        buffered.extend_from_slice(&input[offered..cut]);
        offered = cut;
        loop {
            let decoded = match decoder.decode(&buffered, limits) {
                Ok(d) => d,
                Err(_) => return done,
            };
            let used = match decoded {
                Decoded::Complete(req, used) => {
                    done.push(req);
                    used
                }
                Decoded::Streaming { request, body, used, .. } => {
                    open = Some((request, body));
                    used
                }
                Decoded::BodyEnd { used } => {
                    buffered.drain(..used);
                    finish(&mut open, &mut done);
                    continue;
                }
                Decoded::Partial { used, .. } | Decoded::Blocked { used } => {
                    assert!(used <= buffered.len());
                    buffered.drain(..used);
                    if let Some((req, body)) = open.as_mut() {
                        drain(body, &mut req.body, &mut Vec::new());
                    }
                    break;
                }
            };
            assert!(used <= buffered.len());
            buffered.drain(..used);
            if let Some((req, body)) = open.as_mut() {
                drain(body, &mut req.body, &mut Vec::new());
            }
            if buffered.is_empty() {
                break;
            }
        }
    }
    done
}

/// Fields in a stable order by name.
fn by_name(fields: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut sorted = fields.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
}

/// The requests a whole-request decoder gives for all of `input` at once.
fn whole(input: &[u8], limits: &HttpLimits) -> Vec<Request> {
    let mut decoder = RequestDecoder::default();
    let mut rest = input;
    let mut done = Vec::new();
    while let Ok(Decoded::Complete(req, used)) = decoder.decode(rest, limits) {
        done.push(req);
        rest = &rest[used..];
    }
    done
}

fuzz_target!(|data: &[u8]| {
    let limits = HttpLimits {
        max_body_bytes: 4096,
        max_header_bytes: 2048,
        max_headers: 16,
        ..Default::default()
    };
    let (cut_bytes, input) = data.split_at(data.len().min(4));
    let mut cuts: Vec<usize> = cut_bytes.iter().map(|b| *b as usize * 3).collect();
    cuts.sort_unstable();
    let whole = whole(input, &limits);
    let streamed = streamed(input, &cuts, &limits);
    // Every request the streaming decoder finished is the one decoded whole, body and trailers
    // included (it may finish fewer: one still streaming when the input ends).
    assert!(streamed.len() <= whole.len(), "{} > {}", streamed.len(), whole.len());
    for (s, w) in streamed.iter().zip(&whole) {
        assert_eq!((&s.method, &s.target, &s.headers), (&w.method, &w.target, &w.headers));
        assert_eq!(s.body, w.body);
        // Fields of different names have no order between them (RFC 9110, 5.3), and the stream
        // hands trailers on as a header map, grouped by name; values of one name keep theirs.
        assert_eq!(by_name(&s.trailers), by_name(&w.trailers));
    }
});
