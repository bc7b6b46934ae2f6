//! HTTP/1.1 for the workers: request parsing with limits (httparse does the tokenizing), body
//! framing (Content-Length, chunked), streamed bodies both ways, and response serialization.
//! Everything else that speaks HTTP (handoffs, subrequests, probes, the admin endpoint, edgectl)
//! does it through hyper (`crate::client`).

mod chunked;
mod decoder;
mod hop;
mod request;
pub mod request_body;
mod response;
pub mod stream;

use std::time::Duration;

pub use chunked::{ChunkedDecoder, decode_chunked};
pub use decoder::{Decoded, ParseOutcome, RequestDecoder, parse_request};
pub use hop::is_hop_by_hop;
pub use request::Request;
pub use response::{Response, ResponseMode, Written, write_response};

/// What a worker accepts from a client before answering with an error.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Request line plus headers.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// A keep-alive connection with no request in progress is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request's head (request line and headers) must be whole within this long of its first
    /// byte, or it gets 408 (nginx's `client_header_timeout`).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// While a request body's reader waits for bytes (the guest asked for more, or the worker
    /// reads and drops a body nobody wants), the client must send some within this long, or the
    /// request fails with 408 (nginx's `client_body_timeout`). The clock runs only while the
    /// server is the one waiting: time spent queueing, compiling or in the guest never counts.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Bytes per second a client must average over the time the server waits on its body,
    /// past a first `body_timeout` of grace (Apache's `MinRate`): a client that sends a byte
    /// whenever the gap is about to run out is still closed. 0 turns it off.
    pub body_min_rate: u64,
    /// A bound on the whole receipt of a request, from its first byte until its body is whole
    /// (408 past it). None by default: it also counts time the guest takes to read the body,
    /// so a slow guest would be blamed on its client.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// A connection whose client accepts none of the bytes sent to it for this long is closed
    /// (nginx's `send_timeout`: between two writes the client accepts, not the whole response).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Connections one worker keeps open; past it, new ones are closed at once (and counted).
    pub max_connections: usize,
    /// An HTTPS connection must finish its TLS handshake within this long of its accept.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            body_min_rate: 512,
            request_timeout: None,
            send_timeout: Duration::from_secs(30),
            max_connections: 16384,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A request the worker refuses, with the status it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request timeout")]
    Timeout,
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error("request headers larger than the limit")]
    HeadersTooLarge,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("expectation not supported (only 100-continue is)")]
    ExpectationFailed,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::Timeout => 408,
            HttpError::BodyTooLarge => 413,
            HttpError::HeadersTooLarge => 431,
            HttpError::NotImplemented(_) => 501,
            HttpError::VersionNotSupported => 505,
            HttpError::ExpectationFailed => 417,
        }
    }

    /// The response sent before closing the connection.
    pub fn response(self) -> Response {
        Response::text(self.status(), format!("{self}\n"))
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "",
    }
}
