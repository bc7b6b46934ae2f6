//! The keys a datacenter signs and checks handoffs with: one set per peer, shared only by that
//! pair of datacenters, each key named by an id the handoff carries (`x-edge-key`). During a
//! rotation a peer has two keys: both are accepted, and the one marked for signing signs. A
//! reload replaces the whole ring at once (`LiveKeys::replace`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// One secret and the id handoffs name it by.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    pub id: u32,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The keys shared with one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerKeys {
    /// What this datacenter signs with (None: it only accepts, the first step of a rotation).
    pub sign: Option<SecretKey>,
    /// Every key accepted from the peer (the signing one among them); at most two.
    pub accept: Vec<SecretKey>,
}

/// Every peer's keys, by peer id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    peers: HashMap<u32, PeerKeys>,
}

/// Keys accepted from one peer at once: the current one and the next, during a rotation.
pub const MAX_KEYS_PER_PEER: usize = 2;

impl KeyRing {
    pub fn new(peers: HashMap<u32, PeerKeys>) -> Self {
        Self { peers }
    }

    /// The key to sign what goes to `peer` with.
    pub fn signing(&self, peer: u32) -> Option<&SecretKey> {
        self.peers.get(&peer)?.sign.as_ref()
    }

    /// The secret of key `id` from `peer`, when it is accepted.
    pub fn accepted(&self, peer: u32, id: u32) -> Option<&[u8]> {
        self.peers
            .get(&peer)?
            .accept
            .iter()
            .find(|k| k.id == id)
            .map(|k| k.secret.as_slice())
    }

    /// (peer, key ids accepted, signing key id) for display; never the secrets.
    pub fn summary(&self) -> Vec<(u32, Vec<u32>, Option<u32>)> {
        let mut out: Vec<_> = self
            .peers
            .iter()
            .map(|(peer, keys)| {
                (
                    *peer,
                    keys.accept.iter().map(|k| k.id).collect(),
                    keys.sign.as_ref().map(|k| k.id),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// The ring the workers and the placement engine use; a reload swaps it.
#[derive(Debug, Default)]
pub struct LiveKeys(Mutex<Arc<KeyRing>>);

impl LiveKeys {
    pub fn new(ring: KeyRing) -> Self {
        Self(Mutex::new(Arc::new(ring)))
    }

    pub fn current(&self) -> Arc<KeyRing> {
        crate::lock(&self.0).clone()
    }

    pub fn replace(&self, ring: KeyRing) {
        *crate::lock(&self.0) = Arc::new(ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn during_a_rotation_both_keys_are_accepted_and_the_marked_one_signs() {
        let old = SecretKey {
            id: 1,
            secret: b"old".to_vec(),
        };
        let new = SecretKey {
            id: 2,
            secret: b"new".to_vec(),
        };
        let ring = KeyRing::new(HashMap::from([(
            7,
            PeerKeys {
                sign: Some(new.clone()),
                accept: vec![old, new],
            },
        )]));
        assert_eq!(ring.signing(7).map(|k| k.id), Some(2));
        assert_eq!(ring.accepted(7, 1), Some(&b"old"[..]));
        assert_eq!(ring.accepted(7, 2), Some(&b"new"[..]));
        assert_eq!(ring.accepted(7, 3), None);
        assert_eq!(ring.accepted(8, 1), None, "not a peer");
        let shown = format!("{ring:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("111, 108, 100"),
            "secrets stay out of logs: {shown}"
        );
        let live = LiveKeys::new(ring);
        live.replace(KeyRing::default());
        assert_eq!(live.current().signing(7), None);
    }
}
