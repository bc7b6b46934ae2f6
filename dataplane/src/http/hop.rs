//! Headers that belong to one hop of a request's way (RFC 9110, 7.6.1).

/// Headers that describe one hop's connection or framing; each sender writes its own. `expect`
/// among them: a request handed on goes with its body whole, so nothing waits for
/// `100 Continue`.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "expect",
];

/// Whether a (lower-case) header belongs to one hop and is not forwarded.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}
