//! The blocklist: BLOCKLIST, the LPM trie of blocked source prefixes (the truth), and BLOCK_V4,
//! the same summarised for IPv4 sources, two bits per /24, so `classify` answers
//! "is this IPv4 source blocked?" with one array read instead of a trie walk (a flood from
//! 65,536 sources otherwise pays the walk on every packet). BLOCKLIST stays the truth: the
//! summary is rebuilt from it after every change and when edged starts, and a /24 holding
//! longer prefixes is marked for the trie to decide.

use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
    sync::atomic::Ordering,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{
    MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use edgeplane_abi::{BLOCK_V4_WORDS, BlockEntry, block_v4_bits, block_v4_slot, map_names};
use edgeplane_dataplane::shared_map::SharedMapping;

use crate::{
    addr::Cidr,
    maps::{MapsError, PinnedMaps, map_err},
};

impl PinnedMaps {
    fn blocklist(&self) -> Result<LpmTrie<MapData, [u8; 16], BlockEntry>, MapsError> {
        LpmTrie::try_from(self.map(map_names::BLOCKLIST)?)
            .map_err(map_err("open", map_names::BLOCKLIST))
    }

    pub fn block_add(&self, cidr: Cidr) -> Result<(), MapsError> {
        let (len, bytes) = cidr.lpm_key();
        let added_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.blocklist()?
            .insert(&Key::new(len, bytes), BlockEntry { added_at }, 0)
            .map_err(map_err("insert", map_names::BLOCKLIST))?;
        self.sync_block_v4()?;
        self.bump_generation()
    }

    /// Rebuilds BLOCK_V4 (the IPv4 summary XDP reads) from BLOCKLIST: after every change, and
    /// when edged starts on pins an older edged left.
    pub fn sync_block_v4(&self) -> Result<(), MapsError> {
        let mut entries = Vec::new();
        for entry in self.blocklist()?.iter() {
            let (key, _) = entry.map_err(map_err("iterate", map_names::BLOCKLIST))?;
            entries.push((key.prefix_len(), key.data()));
        }
        let words = summarise(entries);
        let data = MapData::from_pin(self.dir().join(map_names::BLOCK_V4))
            .map_err(map_err("open", map_names::BLOCK_V4))?;
        store(data.fd().as_fd(), &words).map_err(|source| MapsError::Mmap {
            map: map_names::BLOCK_V4,
            source,
        })?;
        Ok(())
    }

    pub fn block_remove(&self, cidr: Cidr) -> Result<(), MapsError> {
        let (len, bytes) = cidr.lpm_key();
        self.blocklist()?
            .remove(&Key::new(len, bytes))
            .map_err(|e| match e {
                MapError::KeyNotFound | MapError::SyscallError(_) => MapsError::NotBlocked(cidr),
                other => MapsError::Map {
                    op: "remove",
                    map: map_names::BLOCKLIST,
                    source: other,
                },
            })?;
        self.sync_block_v4()?;
        self.bump_generation()
    }

    /// Every blocked prefix with the Unix time it was added.
    pub fn block_list(&self) -> Result<Vec<(Cidr, u64)>, MapsError> {
        let mut out = Vec::new();
        for entry in self.blocklist()?.iter() {
            let (key, value) = entry.map_err(map_err("iterate", map_names::BLOCKLIST))?;
            out.push((
                Cidr::from_lpm_key(key.prefix_len(), key.data()),
                value.added_at,
            ));
        }
        out.sort_by_key(|(c, _)| c.to_string());
        Ok(out)
    }
}

/// The v4-mapped prefix ::ffff:0:0/96 that IPv4 addresses live under in 16-byte keys.
const V4_MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// BLOCK_V4's words for a blocklist of (prefix length over 128 bits, 16-byte network) entries.
pub fn summarise(entries: impl IntoIterator<Item = (u32, [u8; 16])>) -> Vec<u64> {
    let mut words = vec![0u64; BLOCK_V4_WORDS as usize];
    let mut mark = |slash24: u32, bit: u64| {
        let (word, shift) = block_v4_slot(slash24 << 8);
        words[word as usize] |= bit << shift;
    };
    for (len, net) in entries {
        if len < 96 {
            // An IPv6 prefix that spans all of ::ffff:0:0/96 blocks every IPv4 source.
            let full = (len / 8) as usize;
            let rest = len % 8;
            let covers = net[..full] == V4_MAPPED[..full]
                && (rest == 0 || (net[full] ^ V4_MAPPED[full]) & (0xffu8 << (8 - rest)) == 0);
            if covers {
                (0..1u32 << 24).for_each(|i| mark(i, block_v4_bits::COVERED));
            }
            continue;
        }
        if net[..12] != V4_MAPPED {
            continue;
        }
        let bits = len.min(128) - 96;
        let addr = u32::from_be_bytes([net[12], net[13], net[14], net[15]]);
        if bits <= 24 {
            let first = (addr >> 8) & !((1u32 << (24 - bits)) - 1);
            (first..first + (1u32 << (24 - bits))).for_each(|i| mark(i, block_v4_bits::COVERED));
        } else {
            mark(addr >> 8, block_v4_bits::PARTIAL);
        }
    }
    words
}

/// Stores `words` (BLOCK_V4_WORDS of them) into BLOCK_V4 (given by its map fd), touching only
/// the words that change.
pub fn store(fd: BorrowedFd<'_>, words: &[u64]) -> io::Result<()> {
    let map = SharedMapping::new(fd, BLOCK_V4_WORDS as usize)?;
    for (slot, w) in map.words().iter().zip(words) {
        if slot.load(Ordering::Relaxed) != *w {
            slot.store(*w, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(len: u32, a: [u8; 4]) -> (u32, [u8; 16]) {
        let mut net = [0u8; 16];
        net[..12].copy_from_slice(&V4_MAPPED);
        net[12..].copy_from_slice(&a);
        (96 + len, net)
    }

    fn bits(words: &[u64], a: [u8; 4]) -> u64 {
        let (word, shift) = block_v4_slot(u32::from_be_bytes(a));
        (words[word as usize] >> shift) & 3
    }

    #[test]
    fn prefixes_cover_their_slash24s_and_longer_ones_defer_to_the_trie() {
        let words = summarise([
            v4(16, [203, 0, 0, 0]),
            v4(28, [198, 51, 100, 64]),
            v4(32, [192, 0, 2, 7]),
            v4(23, [10, 1, 2, 0]),
        ]);
        assert_eq!(bits(&words, [203, 0, 113, 9]), block_v4_bits::COVERED);
        assert_eq!(bits(&words, [203, 0, 255, 255]), block_v4_bits::COVERED);
        assert_eq!(bits(&words, [203, 1, 0, 0]), 0);
        assert_eq!(bits(&words, [198, 51, 100, 1]), block_v4_bits::PARTIAL);
        assert_eq!(bits(&words, [192, 0, 2, 8]), block_v4_bits::PARTIAL);
        // A /23 given with host bits set covers its two /24s.
        assert_eq!(bits(&words, [10, 1, 2, 1]), block_v4_bits::COVERED);
        assert_eq!(bits(&words, [10, 1, 3, 1]), block_v4_bits::COVERED);
        assert_eq!(bits(&words, [10, 1, 4, 1]), 0);
        // IPv6 prefixes leave IPv4 alone, unless they span the v4-mapped range.
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert!(summarise([(48, v6)]).iter().all(|w| *w == 0));
        let all = summarise([(0, [0u8; 16])]);
        assert_eq!(bits(&all, [1, 2, 3, 4]), block_v4_bits::COVERED);
    }
}
