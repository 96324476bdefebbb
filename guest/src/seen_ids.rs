//! Exact duplicate detection with little memory.
//!
//! The only state that grows with the input is the set of order ids already
//! seen, so it is kept compact: an id of up to 10 characters (all of the
//! generator's, and most real ones) is packed losslessly into one `u64`, so a
//! million ids take a `HashSet<u64>` of ~20 MB instead of a million small
//! heap strings. Longer ids are stored as boxed bytes. Both sets use std's
//! randomly seeded hasher, so crafted ids cannot force collisions.

#![forbid(unsafe_code)]

use std::collections::HashSet;

use crate::rules::is_name_byte;

/// Ids up to this length are packed: 10 symbols of 6 bits in the low 60
/// bits, and the length in the top 4 bits, so `a` and `aA` (`A` is symbol 0)
/// stay distinct.
const MAX_PACKED_LEN: usize = 10;
const BITS_PER_SYMBOL: u32 = 6;
const LENGTH_SHIFT: u32 = 60;

#[derive(Debug, Default)]
pub(crate) struct SeenIds {
    packed: HashSet<u64>,
    long: HashSet<Box<[u8]>>,
}

impl SeenIds {
    pub(crate) fn contains(&self, id: &[u8]) -> bool {
        match pack(id) {
            Some(key) => self.packed.contains(&key),
            None => self.long.contains(id),
        }
    }

    pub(crate) fn insert(&mut self, id: &[u8]) {
        match pack(id) {
            Some(key) => {
                self.packed.insert(key);
            }
            None => {
                self.long.insert(id.into());
            }
        }
    }
}

/// The 6-bit symbol of a byte of `[A-Za-z0-9_-]`.
fn symbol(byte: u8) -> Option<u64> {
    let value = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'_' => 62,
        b'-' => 63,
        _ => return None,
    };
    Some(u64::from(value))
}

/// `None` for ids too long to pack, or (defensively: callers pass valid ids)
/// with a byte outside the alphabet; those take the exact slow path.
fn pack(id: &[u8]) -> Option<u64> {
    if id.len() > MAX_PACKED_LEN {
        return None;
    }
    debug_assert!(id.iter().all(|&byte| is_name_byte(byte)));
    let mut key = (id.len() as u64) << LENGTH_SHIFT;
    for (position, &byte) in id.iter().enumerate() {
        key |= symbol(byte)? << (BITS_PER_SYMBOL * position as u32);
    }
    Some(key)
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
        let ids: [&[u8]; 7] = [b"a", b"aA", b"Aa", b"A", b"AA", b"AAAAAAAAAA", b"----------"];
        let keys: HashSet<u64> = ids.iter().filter_map(|id| pack(id)).collect();
        assert_eq!(keys.len(), ids.len());
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
        assert_eq!(seen.packed.len(), 1);
        assert_eq!(seen.long.len(), 1);
    }
}
