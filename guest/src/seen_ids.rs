//! Exact duplicate detection with little memory.
//!
//! The only state that grows with the input is the set of order ids already
//! seen, so it is kept compact. An id of 1 to 10 characters (all of the
//! generator's, and most real ones) is packed losslessly: all but its last
//! character into a `u64` key, its last character into one bit of a 64-bit
//! mask stored with that key. Ids that differ only in their last character
//! (`1000`..`1009`, the usual sequential ids) share one 16-byte entry, so a
//! million of them take about 4 MB, and consecutive ids hit the same cache
//! line; at worst every id has its own entry (32 MB per million). Longer
//! ids are stored as boxed bytes in a `HashSet` with std's hasher.
//!
//! The entries live in an open-addressing table with linear probing: a
//! lookup touches one cache line (hashbrown's separate control bytes make it
//! two), and the insert that follows a lookup of the same id finds it
//! cached. Its hash is a multiply-xorshift keyed with a random seed from
//! std's `RandomState`: cheap in WebAssembly (no 128-bit products) and
//! unknown to whoever crafts the ids, so they cannot force collisions.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::hash::BuildHasher;

use crate::rules::is_name_byte;

/// Ids up to this length are packed: the first 9 symbols of 6 bits in the
/// low 54 bits of the key, the length in its top 4 bits (so `a` and `aA`, `A`
/// being symbol 0, stay distinct, and no key is 0), the last symbol as a bit.
const MAX_PACKED_LEN: usize = 10;
const BITS_PER_SYMBOL: u32 = 6;
const LENGTH_SHIFT: u32 = 60;

#[derive(Debug, Default)]
pub(crate) struct SeenIds {
    packed: PackedSet,
    long: HashSet<Box<[u8]>>,
}

impl SeenIds {
    /// Whether `id` was seen, and where it would be recorded; `None` if `id`
    /// has a byte outside `[A-Za-z0-9_-]`.
    pub(crate) fn look_up(&self, id: &[u8]) -> Option<IdLookup> {
        if id.len() > MAX_PACKED_LEN || id.is_empty() {
            if !id.iter().all(|&byte| is_name_byte(byte)) {
                return None;
            }
            return Some(IdLookup::Long { seen: self.long.contains(id) });
        }
        let (key, bit) = pack(id)?;
        let slot = self.packed.find(key);
        let [stored, mask] = self.packed.slots[slot];
        Some(IdLookup::Packed { key, bit, slot, seen: stored == key && mask & bit != 0 })
    }

    /// Records `id`, given what `look_up(id)` returned with no change to the
    /// set since: that saves a second search of a large table.
    pub(crate) fn insert_looked_up(&mut self, id: &[u8], lookup: IdLookup) {
        match lookup {
            IdLookup::Packed { key, bit, slot, .. } => self.packed.insert_at(slot, key, bit),
            IdLookup::Long { .. } => {
                self.long.insert(id.into());
            }
        }
    }

    #[cfg(test)]
    fn contains(&self, id: &[u8]) -> bool {
        self.look_up(id).is_some_and(|lookup| lookup.is_seen())
    }

    #[cfg(test)]
    fn insert(&mut self, id: &[u8]) {
        let lookup = self.look_up(id).expect("a valid id");
        self.insert_looked_up(id, lookup);
    }
}

/// The result of `SeenIds::look_up`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdLookup {
    Packed { key: u64, bit: u64, slot: usize, seen: bool },
    Long { seen: bool },
}

impl IdLookup {
    pub(crate) fn is_seen(&self) -> bool {
        match *self {
            IdLookup::Packed { seen, .. } | IdLookup::Long { seen } => seen,
        }
    }
}

/// A set of packed ids: `[key, mask]` entries; key 0 marks an empty slot.
#[derive(Debug)]
struct PackedSet {
    slots: Vec<[u64; 2]>,
    /// `64 - log2(slots.len())`: the top bits of a hash pick the slot.
    shift: u32,
    /// Entries in use.
    len: usize,
    seeds: [u64; 2],
}

/// Tables start at this many slots and double when 3/4 full (linear probing
/// stays short below that).
const MIN_SLOTS: usize = 1024;

impl Default for PackedSet {
    fn default() -> Self {
        // Two random words from std's randomly keyed hasher (in WebAssembly
        // its keys come from the host's `wasi:random`).
        let random = std::collections::hash_map::RandomState::new();
        let seeds = [random.hash_one(0x5eed_u64), random.hash_one(0x5eed_u64 + 1) | 1];
        Self { slots: vec![[0; 2]; MIN_SLOTS], shift: 64 - MIN_SLOTS.trailing_zeros(), len: 0, seeds }
    }
}

impl PackedSet {
    fn hash(&self, key: u64) -> u64 {
        let mixed = (key ^ self.seeds[0]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Only the top bits are used, and those of a product depend on every
        // bit of its factors.
        (mixed ^ (mixed >> 29)).wrapping_mul(self.seeds[1])
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut slot = (self.hash(key) >> self.shift) as usize;
        loop {
            let stored = self.slots[slot][0];
            if stored == key || stored == 0 {
                return slot;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Adds `bit` to the entry of `key` at `slot`, as found by `find`.
    fn insert_at(&mut self, slot: usize, key: u64, bit: u64) {
        let entry = &mut self.slots[slot];
        debug_assert!(entry[0] == key || entry[0] == 0, "the table changed since the look-up");
        if entry[0] == key {
            entry[1] |= bit;
            return;
        }
        *entry = [key, bit];
        self.len += 1;
        if self.len * 4 > self.slots.len() * 3 {
            self.double();
        }
    }

    fn double(&mut self) {
        let doubled = vec![[0; 2]; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.shift -= 1;
        for entry in old.into_iter().filter(|entry| entry[0] != 0) {
            let slot = self.find(entry[0]);
            self.slots[slot] = entry;
        }
    }
}

/// The 6-bit symbol of a byte of `[A-Za-z0-9_-]`.
fn symbol(byte: u8) -> Option<u64> {
    match SYMBOLS[usize::from(byte)] {
        NOT_A_SYMBOL => None,
        value => Some(u64::from(value)),
    }
}

const NOT_A_SYMBOL: u8 = u8::MAX;

/// `symbol` as a table: one load per byte of an id.
static SYMBOLS: [u8; 256] = {
    let mut table = [NOT_A_SYMBOL; 256];
    let mut byte = 0;
    while byte < 256 {
        let value = byte as u8;
        table[byte] = match value {
            b'A'..=b'Z' => value - b'A',
            b'a'..=b'z' => value - b'a' + 26,
            b'0'..=b'9' => value - b'0' + 52,
            b'_' => 62,
            b'-' => 63,
            _ => NOT_A_SYMBOL,
        };
        byte += 1;
    }
    table
};

/// The key and mask bit of an id of 1 to `MAX_PACKED_LEN` bytes; `None` if
/// it has a byte outside the alphabet (or another length).
fn pack(id: &[u8]) -> Option<(u64, u64)> {
    let (&last, init) = id.split_last()?;
    if id.len() > MAX_PACKED_LEN {
        return None;
    }
    let mut key = (id.len() as u64) << LENGTH_SHIFT;
    for (position, &byte) in init.iter().enumerate() {
        key |= symbol(byte)? << (BITS_PER_SYMBOL * position as u32);
    }
    Some((key, 1 << symbol(last)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_lossless_for_short_ids() {
        let alphabet: Vec<u8> = (b'A'..=b'Z').chain(b'a'..=b'z').chain(b'0'..=b'9').chain([b'_', b'-']).collect();
        let symbols: HashSet<u64> = alphabet.iter().filter_map(|&byte| symbol(byte)).collect();
        assert_eq!(symbols.len(), 64);
        assert!(symbols.iter().all(|&value| value < 64));

        // Trailing and leading zero symbols (`A`) must not collide.
        let ids: [&[u8]; 9] = [b"a", b"aA", b"Aa", b"A", b"AA", b"AAAAAAAAAA", b"----------", b"AAAAAAAAA-", b"-"];
        let packed: HashSet<(u64, u64)> = ids.iter().filter_map(|id| pack(id)).collect();
        assert_eq!(packed.len(), ids.len());
        assert!(packed.iter().all(|&(key, bit)| key != 0 && bit.count_ones() == 1));
        assert_eq!(pack(b""), None);
        assert_eq!(pack(b"AAAAAAAAAAA"), None);
        assert_eq!(pack(b"a.b"), None);
    }

    #[test]
    fn ids_outside_the_alphabet_are_not_looked_up() {
        let seen = SeenIds::default();
        for bad in [&b"a b"[..], b"x.", b"\xc3\xa9", b"an-order-id-longer-than-ten!", b"1\n"] {
            assert!(seen.look_up(bad).is_none(), "{bad:?}");
        }
        for good in [&b"a"[..], b"A-z_09", b"an-order-id-longer-than-ten", &[b'x'; 64]] {
            assert!(seen.look_up(good).is_some_and(|lookup| !lookup.is_seen()), "{good:?}");
        }
    }

    #[test]
    fn the_packed_table_grows_and_keeps_every_id() {
        let mut seen = SeenIds::default();
        let ids: Vec<String> = (0..50_000).map(|n| format!("{n}")).collect();
        for id in &ids {
            assert!(!seen.contains(id.as_bytes()), "{id}");
            seen.insert(id.as_bytes());
            seen.insert(id.as_bytes());
            assert!(seen.contains(id.as_bytes()), "{id}");
        }
        // Ids differing only in their last digit share an entry.
        // 1 + 9 + 90 + 900 + 4000 entries for 1-, 2-, 3-, 4- and 5-digit ids.
        assert_eq!(seen.packed.len, 5_000);
        assert!(seen.packed.slots.len() > MIN_SLOTS);
        assert!(ids.iter().all(|id| seen.contains(id.as_bytes())));
        assert!(!seen.contains(b"50000") && !seen.contains(b"x") && !seen.contains(b"1x"));
        // The empty id is never valid, but is remembered exactly anyway.
        assert!(!seen.contains(b""));
        seen.insert(b"");
        assert!(seen.contains(b""));
    }

    #[test]
    fn short_and_long_ids_are_remembered_exactly() {
        let mut seen = SeenIds::default();
        let long_id = b"an-order-id-longer-than-ten".as_slice();
        assert!(!seen.contains(b"1001"));
        seen.insert(b"1001");
        seen.insert(long_id);
        assert!(seen.contains(b"1001"));
        assert!(seen.contains(long_id));
        assert!(!seen.contains(b"100"));
        assert!(!seen.contains(b"10010"));
        assert!(!seen.contains(&long_id[..long_id.len() - 1]));
        assert_eq!(seen.packed.len, 1);
        assert_eq!(seen.long.len(), 1);
    }
}
