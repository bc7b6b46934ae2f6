//! The deadlines a client alone controls: its request's head, the gaps in its body, the pace of
//! that body, and (when the operator sets one) the whole request. Time the server spends
//! (queueing, compiling, the guest's own work) never counts: the body's clocks run only while
//! its reader waits for the client's bytes.

use std::time::{Duration, Instant};

use crate::http::{HttpLimits, request_body::Pace};

/// What the worker knows of one open connection's client, for `client_late`.
#[derive(Clone, Copy, Debug)]
pub struct ClientState {
    /// The worker does not read from it (its unread responses, or a full body reader, hold it
    /// back): no deadline runs.
    pub paused: bool,
    /// The first byte of the request being received.
    pub request_started: Option<Instant>,
    /// Its head is still arriving.
    pub in_head: bool,
    /// Its body streams to a reader: how it keeps up.
    pub body: Option<Pace>,
}

/// Which deadline of its own a client missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Late {
    /// `header_timeout`: its request's head is not whole.
    Head,
    /// `body_timeout`: the body's reader waited that long for bytes that did not come.
    Body,
    /// `body_min_rate`: over the time the server waited, the body came too slowly.
    BodyRate,
    /// `request_timeout` (when the operator sets one): head and body not whole.
    Request,
}

impl Late {
    /// What a guest reading the body sees.
    pub fn why(self) -> &'static str {
        match self {
            Late::Head => "the client did not finish its request head in time",
            Late::Body => "the client sent none of the rest of its body for the body timeout",
            Late::BodyRate => "the client sent its body slower than the minimum rate",
            Late::Request => "the client did not finish its request within the request timeout",
        }
    }
}

/// Whether the client is past a deadline at `now`.
pub fn client_late(limits: &HttpLimits, client: &ClientState, now: Instant) -> Option<Late> {
    if client.paused {
        return None;
    }
    let past = |since: Instant, limit: Duration| now.saturating_duration_since(since) > limit;
    if let Some(started) = client.request_started {
        if client.in_head && past(started, limits.header_timeout) {
            return Some(Late::Head);
        }
        if limits
            .request_timeout
            .is_some_and(|limit| past(started, limit))
        {
            return Some(Late::Request);
        }
    }
    let pace = client.body?;
    let waiting_since = pace.waiting_since?;
    if past(waiting_since, limits.body_timeout) {
        return Some(Late::Body);
    }
    if limits.body_min_rate == 0 {
        return None;
    }
    // A first body_timeout of grace, then a second for each body_min_rate bytes sent.
    // A client's byte count divided by the rate: try_ keeps a count near u64::MAX from panicking.
    let earned = Duration::try_from_secs_f64(pace.received as f64 / limits.body_min_rate as f64)
        .unwrap_or(Duration::MAX);
    (pace.waited(now) > limits.body_timeout.saturating_add(earned)).then_some(Late::BodyRate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits() -> HttpLimits {
        HttpLimits {
            header_timeout: 10 * S,
            body_timeout: 30 * S,
            body_min_rate: 512,
            request_timeout: None,
            ..Default::default()
        }
    }

    fn head(started: Instant) -> ClientState {
        ClientState {
            paused: false,
            request_started: Some(started),
            in_head: true,
            body: None,
        }
    }

    fn body(started: Instant, pace: Pace) -> ClientState {
        ClientState {
            in_head: false,
            body: Some(pace),
            ..head(started)
        }
    }

    #[test]
    fn a_head_must_be_whole_within_the_header_timeout_unless_the_worker_stopped_reading() {
        let t0 = Instant::now();
        assert_eq!(client_late(&limits(), &head(t0), t0 + 9 * S), None);
        assert_eq!(
            client_late(&limits(), &head(t0), t0 + 11 * S),
            Some(Late::Head)
        );
        let paused = ClientState {
            paused: true,
            ..head(t0)
        };
        assert_eq!(client_late(&limits(), &paused, t0 + 60 * S), None);
    }

    #[test]
    fn no_clock_runs_while_the_server_works_on_a_body() {
        let t0 = Instant::now();
        // Ten minutes in: the guest is compiling, or busy with what it has; it never waited.
        let busy = Pace {
            waiting_since: None,
            waited_before: 2 * S,
            received: 10,
        };
        assert_eq!(client_late(&limits(), &body(t0, busy), t0 + 600 * S), None);
    }

    #[test]
    fn a_gap_in_the_body_longer_than_the_body_timeout_is_late() {
        let t0 = Instant::now();
        let waiting = |since| Pace {
            waiting_since: Some(since),
            waited_before: Duration::ZERO,
            received: 1 << 20,
        };
        let now = t0 + 100 * S;
        assert_eq!(
            client_late(&limits(), &body(t0, waiting(now - 29 * S)), now),
            None
        );
        assert_eq!(
            client_late(&limits(), &body(t0, waiting(now - 31 * S)), now),
            Some(Late::Body)
        );
    }

    #[test]
    fn a_steady_upload_is_never_late_and_a_byte_at_a_time_is() {
        let t0 = Instant::now();
        let limits = limits();
        // A minute of 1 KiB a second, the server waiting on the client all along.
        let steady = |secs: u32, bytes_per_sec: u64| Pace {
            waiting_since: Some(t0 + secs * S - S / 2),
            waited_before: secs * S - S / 2,
            received: u64::from(secs) * bytes_per_sec,
        };
        for secs in [1, 30, 60, 600] {
            assert_eq!(
                client_late(&limits, &body(t0, steady(secs, 1024)), t0 + secs * S),
                None,
                "{secs} s in"
            );
        }
        // A byte every half second: each gap is short, the pace is not.
        assert_eq!(
            client_late(&limits, &body(t0, steady(20, 2)), t0 + 20 * S),
            None,
            "within the grace"
        );
        assert_eq!(
            client_late(&limits, &body(t0, steady(40, 2)), t0 + 40 * S),
            Some(Late::BodyRate)
        );
        let huge = Pace {
            received: u64::MAX,
            ..steady(40, 2)
        };
        assert_eq!(
            client_late(
                &HttpLimits {
                    body_min_rate: 1,
                    ..limits.clone()
                },
                &body(t0, huge),
                t0 + 40 * S
            ),
            None,
            "a count near u64::MAX earns time, never a panic"
        );
        let no_rate = HttpLimits {
            body_min_rate: 0,
            ..limits
        };
        assert_eq!(
            client_late(&no_rate, &body(t0, steady(40, 2)), t0 + 40 * S),
            None
        );
    }

    #[test]
    fn an_operators_request_timeout_bounds_head_and_body_together() {
        let t0 = Instant::now();
        let limits = HttpLimits {
            request_timeout: Some(20 * S),
            ..limits()
        };
        let busy = Pace::default();
        assert_eq!(client_late(&limits, &body(t0, busy), t0 + 19 * S), None);
        assert_eq!(
            client_late(&limits, &body(t0, busy), t0 + 21 * S),
            Some(Late::Request)
        );
    }
}
