//! Workload W: record `i` is `(splitmix64(i) % keys, i)`; the job keeps
//! `(count, sum)` per key; the checksum is the wrapping sum over keys with
//! `count > 0` of `mix3(key, count, sum)`.

/// Default number of distinct keys.
pub const DEFAULT_KEYS: u64 = 1_000_000;

/// The stateless splitmix64 finaliser.
#[inline(always)]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Record `i` of W with `keys` distinct keys: `(key, value)`.
#[inline(always)]
pub fn record(i: u64, keys: u64) -> (u64, u64) {
    (splitmix64(i) % keys, i)
}

/// W's records for a key count known only at run time: the same values as
/// [`record`], with `% keys` as a multiplication (a 64-bit division per
/// record was a visible part of the generator's cost; a baseline that knows
/// its key count at compile time never divides).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    keys: strength_reduce::StrengthReducedU64,
}

impl Workload {
    /// `None` for no keys.
    pub fn new(keys: u64) -> Option<Self> {
        (keys > 0).then(|| Self {
            keys: strength_reduce::StrengthReducedU64::new(keys),
        })
    }

    /// Record `i`: `(key, value)`, as [`record`] gives it.
    #[inline(always)]
    pub fn record(&self, i: u64) -> (u64, u64) {
        (splitmix64(i) % self.keys, i)
    }
}

/// One key's contribution to the checksum.
#[inline(always)]
pub fn mix3(key: u64, count: u64, sum: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(key) ^ count) ^ sum)
}

/// An order-independent checksum over final per-key state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub value: u64,
    pub keys: u64,
    pub records: u64,
}

impl Checksum {
    #[inline]
    pub fn add(&mut self, key: u64, count: u64, sum: u64) {
        if count > 0 {
            self.value = self.value.wrapping_add(mix3(key, count, sum));
            self.keys += 1;
            self.records += count;
        }
    }

    /// Takes back what `merge(other)` added.
    pub fn remove(&mut self, other: &Checksum) {
        self.value = self.value.wrapping_sub(other.value);
        self.keys -= other.keys;
        self.records -= other.records;
    }

    pub fn merge(&mut self, other: &Checksum) {
        self.value = self.value.wrapping_add(other.value);
        self.keys += other.keys;
        self.records += other.records;
    }
}

impl crate::totals::Share for Checksum {
    fn merge(&mut self, share: &Self) {
        Checksum::merge(self, share);
    }
    fn remove(&mut self, share: &Self) {
        Checksum::remove(self, share);
    }
}

/// The checksum of W computed by a plain loop (the reference).
pub fn reference_checksum(records: u64, keys: u64) -> Checksum {
    let mut state: rustc_hash::FxHashMap<u64, (u64, u64)> = Default::default();
    for i in 0..records {
        let (key, value) = record(i, keys);
        let entry = state.entry(key).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = entry.1.wrapping_add(value);
    }
    let mut checksum = Checksum::default();
    for (key, (count, sum)) in state {
        checksum.add(key, count, sum);
    }
    checksum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_checksums_match_the_brief() {
        let c = reference_checksum(2_000_000, DEFAULT_KEYS);
        assert_eq!(format!("{:016x}", c.value), "f612517c561877f1");
        assert_eq!(c.keys, 865_128);
    }

    #[test]
    fn the_workload_gives_records_values() {
        assert!(Workload::new(0).is_none());
        for keys in [
            1,
            2,
            3,
            7,
            1000,
            DEFAULT_KEYS,
            10_000_000,
            (1 << 40) + 7,
            u64::MAX,
        ] {
            let workload = Workload::new(keys).expect("keys > 0");
            for i in (0..20_000u64).chain([u64::MAX - 1, u64::MAX]) {
                assert_eq!(
                    workload.record(i),
                    record(i, keys),
                    "record {i} of {keys} keys"
                );
            }
        }
    }
}
