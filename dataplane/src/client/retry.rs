//! The one place that says whether a request may be sent again after a failure.

/// Methods a client may repeat without changing the outcome (RFC 9110, 9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

/// Whether a request that failed may go again on another connection. One of which no byte was
/// written (hyper handed it back) always may: nobody saw it. One that may have been written
/// only if its method is idempotent and its body can be sent again (it is held whole): the
/// other side may have acted on it, and a POST must never run twice.
pub fn may_retry(method: &str, maybe_written: bool, body_replayable: bool) -> bool {
    !maybe_written || (is_idempotent(method) && body_replayable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsent_or_idempotent_replayable_requests_go_again() {
        for method in ["GET", "POST", "PATCH", "PUT"] {
            assert!(
                may_retry(method, false, false),
                "{method}: nothing was written"
            );
        }
        assert!(may_retry("GET", true, true));
        assert!(may_retry("PUT", true, true));
        assert!(!may_retry("POST", true, true), "a POST may have run");
        assert!(!may_retry("PATCH", true, true));
        assert!(
            !may_retry("GET", true, false),
            "a streamed body cannot be sent again"
        );
    }
}
