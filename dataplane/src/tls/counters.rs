//! What `/metrics` says of the workers' TLS: handshakes, resumptions, and failures by reason.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a handshake (or a connection mid-TLS) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Bytes that are not TLS, or a message out of place.
    Malformed,
    /// No version, cipher suite, group or signature scheme in common.
    Incompatible,
    /// No certificate for the name asked for, and no default.
    NoCertificate,
    /// The peer's certificate was refused (expired, unknown issuer, wrong name) or missing.
    PeerCertificate,
    /// The peer sent a fatal alert (it refused ours, usually).
    Alert,
    /// The handshake did not finish within the handshake timeout.
    Timeout,
    /// The client closed the connection before its handshake was over.
    Closed,
    Other,
}

impl Failure {
    pub const ALL: [Failure; 8] = [
        Failure::Malformed,
        Failure::Incompatible,
        Failure::NoCertificate,
        Failure::PeerCertificate,
        Failure::Alert,
        Failure::Timeout,
        Failure::Closed,
        Failure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::Incompatible => "incompatible",
            Failure::NoCertificate => "no_certificate",
            Failure::PeerCertificate => "peer_certificate",
            Failure::Alert => "alert",
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Other => "other",
        }
    }

    pub fn of(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_)
            | E::PeerSentOversizedRecord
            | E::DecryptError => Failure::Malformed,
            E::PeerIncompatible(_) | E::NoApplicationProtocol => Failure::Incompatible,
            E::General(text) if text.contains("no server certificate") => Failure::NoCertificate,
            E::InvalidCertificate(_) | E::NoCertificatesPresented => Failure::PeerCertificate,
            E::AlertReceived(_) => Failure::Alert,
            _ => Failure::Other,
        }
    }
}

/// Counters shared by a worker and the admin endpoint (kept across a restart of the worker).
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Handshakes completed, resumed ones included.
    pub handshakes: AtomicU64,
    /// Of those, sessions resumed (a ticket or a cached session id).
    pub resumed: AtomicU64,
    failures: [AtomicU64; Failure::ALL.len()],
}

impl TlsCounters {
    pub fn failed(&self, why: Failure) {
        self.failures[why as usize].fetch_add(1, Relaxed);
    }

    pub fn failures(&self, why: Failure) -> u64 {
        self.failures[why as usize].load(Relaxed)
    }

    pub fn completed(&self, resumed: bool) {
        self.handshakes.fetch_add(1, Relaxed);
        if resumed {
            self.resumed.fetch_add(1, Relaxed);
        }
    }
}
