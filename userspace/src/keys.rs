//! The handoff keys file (`[datacenter] keys = "..."`): the secrets this datacenter shares with
//! each peer, one set per pair of datacenters, so a datacenter can speak for itself only. None
//! is compiled into edged. A key is refused when it is short, when anyone can read the file, or
//! when it is publicly known (a key that was ever in this repository, or a trivial one).
//!
//! ```toml
//! [[keys]]
//! peer = "dc2"
//! id = 1
//! secret = "<64 hex digits or more>"
//! ```
//!
//! Rotation, without a failed handoff (each step a reload at both ends): add the new key with a
//! higher id and `accept_only = true`; drop `accept_only` (each end now signs with it, and the
//! other accepts it already); remove the old key.

use std::{collections::HashMap, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, bail, ensure};
use edgeplane_dataplane::handoff::{KeyRing, PeerKeys, SecretKey, keys::MAX_KEYS_PER_PEER};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::topology::Topology;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    peer: String,
    id: u32,
    secret: String,
    /// Accepted from the peer, not yet used to sign (the first step of a rotation).
    #[serde(default)]
    accept_only: bool,
}

/// Shortest secret accepted: an HMAC-SHA256 key of full strength.
pub const MIN_SECRET_BYTES: usize = 32;

/// SHA-256 of secrets that are public: the keys this repository's test worlds and benchmarks
/// used before worlds drew their own, and the examples in its documentation.
const PUBLIC_SECRETS_SHA256: [&str; 4] = [
    // The canonical world's former shared key ("edgepane-canonical-testbed-key-1").
    "6d01a5be0b6098afec8f5216f3a9c667da72f5bd43b22d752e1c2ee6915e7a3d",
    // handoff-bench's former key.
    "2603e03eabcf3cf7562a7ae67c1527b376446671bf62ad1dda53b8ba26ee52b5",
    // The fleet_control fuzz target's seed (fuzz/corpus/fleet_control/keys.toml).
    "e27c13b6eaeb26e57310bb945467c71f0767a2fef4cca6ff9a1d95c2aef72e60",
    "fbab9909e2f25b3bcfbc2a72d771ef757a994b0baa3707c0423d4dd724e7a67c",
];

/// Why `secret` must not be used, if it must not.
fn publicly_known(secret: &[u8]) -> Option<&'static str> {
    let digest = hex::encode(Sha256::digest(secret));
    if PUBLIC_SECRETS_SHA256.contains(&digest.as_str()) {
        return Some("it is publicly known (it was in edgeplane's repository)");
    }
    let distinct: std::collections::BTreeSet<u8> = secret.iter().copied().collect();
    if distinct.len() < 8 {
        return Some("it has fewer than 8 distinct bytes: not a random secret");
    }
    None
}

/// Reads `path` into the ring of datacenter `me` of `topology`.
pub fn load(path: &Path, topology: &Topology, me: &str) -> anyhow::Result<KeyRing> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        meta.permissions().mode() & 0o077 == 0,
        "{}: handoff keys readable by others (mode {:o}); chmod 600 it",
        path.display(),
        meta.permissions().mode() & 0o777
    );
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, topology, me).with_context(|| format!("in {}", path.display()))
}

pub fn parse(text: &str, topology: &Topology, me: &str) -> anyhow::Result<KeyRing> {
    let file: KeysFile = toml::from_str(text)?;
    let mut by_peer: HashMap<u32, (String, Vec<(SecretKey, bool)>)> = HashMap::new();
    for (i, entry) in file.keys.into_iter().enumerate() {
        let at = format!("keys[{i}]");
        ensure!(
            entry.peer != me,
            "{at}: a key for {me}, this datacenter itself"
        );
        let Some(peer) = topology.datacenter(&entry.peer) else {
            bail!("{at}: no datacenter {:?} in the topology", entry.peer);
        };
        let secret =
            hex::decode(entry.secret.trim()).with_context(|| format!("{at}.secret: not hex"))?;
        ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "{at}.secret: {} bytes; at least {MIN_SECRET_BYTES}",
            secret.len()
        );
        if let Some(why) = publicly_known(&secret) {
            bail!("{at}.secret: refused: {why}");
        }
        let (_, keys) = by_peer
            .entry(peer.id)
            .or_insert_with(|| (entry.peer.clone(), Vec::new()));
        ensure!(
            keys.iter().all(|(k, _)| k.id != entry.id),
            "{at}: a second key {} for {}",
            entry.id,
            entry.peer
        );
        ensure!(
            keys.len() < MAX_KEYS_PER_PEER,
            "{at}: at most {MAX_KEYS_PER_PEER} keys per peer (the current one and the next)"
        );
        keys.push((
            SecretKey {
                id: entry.id,
                secret,
            },
            entry.accept_only,
        ));
    }
    let mut ring = HashMap::new();
    for (id, (name, keys)) in by_peer {
        let sign = keys
            .iter()
            .filter(|(_, accept_only)| !accept_only)
            .map(|(k, _)| k)
            .max_by_key(|k| k.id)
            .cloned();
        ensure!(
            sign.is_some(),
            "peer {name}: every key is accept_only; one must sign"
        );
        ring.insert(
            id,
            PeerKeys {
                sign,
                accept: keys.into_iter().map(|(k, _)| k).collect(),
            },
        );
    }
    Ok(KeyRing::new(ring))
}

/// A fresh random secret, as a keys file writes it.
pub fn random_secret_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::parse(
            "[[datacenters]]\nname = \"a\"\nid = 1\nhandoff = [\"192.0.2.1:80\"]\n\
             [[datacenters]]\nname = \"b\"\nid = 2\nhandoff = [\"192.0.2.2:80\"]\n",
        )
        .unwrap()
    }

    fn entry(id: u32, secret: &str, extra: &str) -> String {
        format!("[[keys]]\npeer = \"b\"\nid = {id}\nsecret = \"{secret}\"\n{extra}\n")
    }

    #[test]
    fn a_rotation_accepts_both_keys_and_signs_with_the_newer_once_both_ends_have_it() {
        let (old, new) = (random_secret_hex(), random_secret_hex());
        let step1 = entry(1, &old, "") + &entry(2, &new, "accept_only = true");
        let ring = parse(&step1, &topology(), "a").unwrap();
        assert_eq!(ring.signing(2).map(|k| k.id), Some(1));
        assert!(ring.accepted(2, 1).is_some() && ring.accepted(2, 2).is_some());
        let step2 = entry(1, &old, "") + &entry(2, &new, "");
        assert_eq!(
            parse(&step2, &topology(), "a")
                .unwrap()
                .signing(2)
                .map(|k| k.id),
            Some(2)
        );
    }

    #[test]
    fn weak_public_or_misplaced_keys_are_refused() {
        let t = topology();
        let err = |text: &str| format!("{:#}", parse(text, &t, "a").unwrap_err());
        assert!(err(&entry(1, "00ff", "")).contains("at least 32"));
        assert!(err(&entry(1, &"00".repeat(32), "")).contains("not a random secret"));
        let canonical = "6564676570616e652d63616e6f6e6963616c2d746573746265642d6b65792d31";
        assert!(err(&entry(1, canonical, "")).contains("publicly known"));
        assert!(err(&entry(1, "zz", "")).contains("not hex"));
        let s = random_secret_hex();
        assert!(err(&entry(1, &s, "").replace("\"b\"", "\"a\"")).contains("itself"));
        assert!(err(&entry(1, &s, "").replace("\"b\"", "\"c\"")).contains("no datacenter"));
        assert!(err(&(entry(1, &s, "") + &entry(1, &s, ""))).contains("a second key 1"));
        let three = entry(1, &s, "") + &entry(2, &s, "") + &entry(3, &s, "");
        assert!(err(&three).contains("at most 2"));
        assert!(err(&entry(1, &s, "accept_only = true")).contains("one must sign"));
    }

    #[test]
    fn a_keys_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("edgeplane-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, entry(1, &random_secret_hex(), "")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", load(&path, &topology(), "a").unwrap_err());
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path, &topology(), "a").unwrap().signing(2).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
