//! Key groups: the unit in which keyed state is partitioned and redistributed.
//!
//! `key_group = stable_hash(key) % max_parallelism`. Parallel instance `i` of `p`
//! owns the contiguous range `[ceil(i * m / p), ceil((i + 1) * m / p))` of the `m`
//! key groups, and key group `g` belongs to instance `g * p / m`; the two formulas
//! agree (see the tests), so routing and ownership can never disagree.
//!
//! Architecture invariant: [`stable_hash`] is part of the snapshot format. Changing
//! it moves keys to other key groups and makes every existing snapshot unreadable.

use std::fmt;
use std::hash::{Hash, Hasher};

/// The index of a key group, `0 <= g < max_parallelism`.
pub type KeyGroup = u32;

/// Default number of key groups (the upper bound on parallelism).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// Largest accepted `max_parallelism` (as in Flink: 2^15).
pub const MAX_PARALLELISM_LIMIT: u32 = 32_768;

/// A deterministic 64-bit hasher. Its output for a given sequence of writes never
/// changes between runs, processes, machines or versions of flowstate.
#[derive(Debug, Clone, Copy, Default)]
pub struct StableHasher {
    state: u64,
}

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl StableHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(MIX);
    }
}

impl Hasher for StableHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // murmur3's fmix64: spreads every input bit over the output.
        let mut z = self.state;
        z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        z ^ (z >> 33)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }
}

/// The stable hash of a key.
#[inline]
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = StableHasher::default();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The key group of a hash.
#[inline]
pub fn key_group_for_hash(hash: u64, max_parallelism: u32) -> KeyGroup {
    debug_assert!(max_parallelism > 0);
    // The same value as `%`; a mask instead of a 64-bit division (the default
    // max parallelism, 128, is a power of two): this runs two or three times
    // per record.
    if max_parallelism.is_power_of_two() {
        (hash & u64::from(max_parallelism - 1)) as KeyGroup
    } else {
        (hash % u64::from(max_parallelism)) as KeyGroup
    }
}

/// The key group of a key.
#[inline]
pub fn key_group_of<K: Hash + ?Sized>(key: &K, max_parallelism: u32) -> KeyGroup {
    key_group_for_hash(stable_hash(key), max_parallelism)
}

/// The parallel instance that owns key group `key_group`.
#[inline]
pub fn operator_index_for_key_group(
    key_group: KeyGroup,
    parallelism: u32,
    max_parallelism: u32,
) -> u32 {
    debug_assert!(key_group < max_parallelism && parallelism <= max_parallelism);
    let scaled = u64::from(key_group) * u64::from(parallelism);
    // The same value as the division, by a shift where it can be (see above).
    if max_parallelism.is_power_of_two() {
        (scaled >> max_parallelism.trailing_zeros()) as u32
    } else {
        (scaled / u64::from(max_parallelism)) as u32
    }
}

/// A contiguous, half-open range of key groups `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    pub start: KeyGroup,
    pub end: KeyGroup,
}

impl KeyGroupRange {
    pub fn new(start: KeyGroup, end: KeyGroup) -> Self {
        assert!(start <= end, "key group range start {start} > end {end}");
        Self { start, end }
    }

    /// The range owned by instance `index` of `parallelism`.
    pub fn for_operator(index: u32, parallelism: u32, max_parallelism: u32) -> Self {
        assert!(
            parallelism > 0 && parallelism <= max_parallelism && index < parallelism,
            "instance {index} of parallelism {parallelism} with max parallelism {max_parallelism}"
        );
        let m = u64::from(max_parallelism);
        let p = u64::from(parallelism);
        let i = u64::from(index);
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m).div_ceil(p);
        Self::new(start as KeyGroup, end as KeyGroup)
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    #[inline]
    pub fn contains(&self, key_group: KeyGroup) -> bool {
        key_group >= self.start && key_group < self.end
    }

    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> {
        self.start..self.end
    }

    /// The key groups both ranges hold.
    pub fn intersect(&self, other: &KeyGroupRange) -> KeyGroupRange {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end).max(start);
        KeyGroupRange { start, end }
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_key_groups_and_agree_with_routing() {
        for max_parallelism in [1u32, 2, 3, 7, 128, 1000] {
            for parallelism in 1..=max_parallelism.min(17) {
                let mut next = 0;
                for index in 0..parallelism {
                    let range = KeyGroupRange::for_operator(index, parallelism, max_parallelism);
                    assert_eq!(range.start, next, "ranges must be contiguous");
                    for g in range.iter() {
                        assert_eq!(
                            operator_index_for_key_group(g, parallelism, max_parallelism),
                            index,
                            "key group {g}, p={parallelism}, m={max_parallelism}"
                        );
                    }
                    next = range.end;
                }
                assert_eq!(next, max_parallelism, "ranges must cover every key group");
            }
        }
    }

    #[test]
    fn stable_hash_is_frozen() {
        // These values are part of the snapshot format: if this test fails, the
        // hash changed and every existing snapshot would restore keys into the
        // wrong key groups.
        assert_eq!(stable_hash(&0u64), 0);
        assert_eq!(stable_hash(&1u64), 0x9ca066f1a4ab2eea);
        assert_eq!(stable_hash("flowstate"), 0x39b2036780cff28c);
    }

    #[test]
    fn the_power_of_two_shortcuts_give_the_divisions_values() {
        for max_parallelism in [1u32, 2, 3, 7, 64, 96, 128, 1000, 1 << 15] {
            for i in 0..10_000u64 {
                let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 61);
                assert_eq!(
                    u64::from(key_group_for_hash(hash, max_parallelism)),
                    hash % u64::from(max_parallelism)
                );
            }
            for parallelism in 1..=max_parallelism.min(40) {
                for key_group in 0..max_parallelism {
                    let by_division = (u64::from(key_group) * u64::from(parallelism))
                        / u64::from(max_parallelism);
                    assert_eq!(
                        u64::from(operator_index_for_key_group(
                            key_group,
                            parallelism,
                            max_parallelism
                        )),
                        by_division
                    );
                }
            }
        }
    }

    #[test]
    fn key_groups_spread_keys() {
        let m = 128;
        let mut counts = vec![0u32; m as usize];
        for k in 0..128_000u64 {
            counts[key_group_of(&k, m) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "uneven spread: {min}..{max}");
    }
}
