//! Workload WT (event time): record `i` is `(splitmix64(i) % keys, i)` with
//! an event time that advances at a fixed rate with bounded disorder; the
//! job counts and sums per key in 10 s tumbling event-time windows; the
//! checksum is the wrapping sum over window results of
//! `mix4(key, window_start, count, sum)`. The definitions here are the
//! reference that the job, its tests and the benchmarks check against
//! (`../shared/BRIEF.md` §3, "window-count").

use crate::workload::splitmix64;

/// Event time of record 0 before disorder (ms since the Unix epoch).
pub const T0_MS: i64 = 1_700_000_000_000;
/// Default number of distinct keys.
pub const DEFAULT_KEYS: u64 = 100_000;
/// Default events per second of event time.
pub const DEFAULT_EVENTS_PER_SECOND: u64 = 100_000;
/// Default bound on disorder (ms).
pub const DEFAULT_OUT_OF_ORDERNESS_MS: u64 = 2_000;
/// Default window size (ms).
pub const DEFAULT_WINDOW_MS: u64 = 10_000;

/// The shape of WT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowWorkload {
    pub records: u64,
    pub keys: u64,
    pub events_per_second: u64,
    pub out_of_orderness_ms: u64,
    pub window_ms: u64,
}

impl Default for WindowWorkload {
    fn default() -> Self {
        Self {
            records: 5_000_000,
            keys: DEFAULT_KEYS,
            events_per_second: DEFAULT_EVENTS_PER_SECOND,
            out_of_orderness_ms: DEFAULT_OUT_OF_ORDERNESS_MS,
            window_ms: DEFAULT_WINDOW_MS,
        }
    }
}

/// One record of WT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimedRecord {
    pub key: u64,
    pub value: u64,
    /// Event time, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

impl WindowWorkload {
    /// Record `i`: `ts(i) = T0 + floor(i * 1000 / R) - (splitmix64(i ^
    /// 0xD1B54A32D192ED03) % (D + 1))`.
    #[inline]
    pub fn record(&self, i: u64) -> TimedRecord {
        let rate = self.events_per_second.max(1);
        let advance = (u128::from(i) * 1000 / u128::from(rate)) as i64;
        let disorder =
            (splitmix64(i ^ 0xD1B5_4A32_D192_ED03) % (self.out_of_orderness_ms + 1)) as i64;
        TimedRecord {
            key: splitmix64(i) % self.keys.max(1),
            value: i,
            timestamp_ms: T0_MS + advance - disorder,
        }
    }

    /// The start of the tumbling window holding `timestamp_ms` (aligned to
    /// the epoch).
    #[inline]
    pub fn window_start(&self, timestamp_ms: i64) -> i64 {
        let size = self.window_ms.max(1) as i64;
        timestamp_ms - timestamp_ms.rem_euclid(size)
    }
}

/// One window result's contribution to the checksum.
#[inline]
pub fn mix4(key: u64, window_start_ms: i64, count: u64, sum: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(splitmix64(key) ^ window_start_ms as u64) ^ count) ^ sum)
}

/// An order-independent checksum over window results.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WindowChecksum {
    pub value: u64,
    pub windows: u64,
    pub records: u64,
}

impl WindowChecksum {
    #[inline]
    pub fn add(&mut self, key: u64, window_start_ms: i64, count: u64, sum: u64) {
        self.value = self
            .value
            .wrapping_add(mix4(key, window_start_ms, count, sum));
        self.windows += 1;
        self.records += count;
    }

    pub fn merge(&mut self, other: &WindowChecksum) {
        self.value = self.value.wrapping_add(other.value);
        self.windows += other.windows;
        self.records += other.records;
    }

    pub fn remove(&mut self, other: &WindowChecksum) {
        self.value = self.value.wrapping_sub(other.value);
        self.windows -= other.windows;
        self.records -= other.records;
    }

    /// The job's last line.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT records={} windows={} checksum={:016x}",
            self.records, self.windows, self.value
        )
    }
}

impl crate::totals::Share for WindowChecksum {
    fn merge(&mut self, share: &Self) {
        WindowChecksum::merge(self, share);
    }
    fn remove(&mut self, share: &Self) {
        WindowChecksum::remove(self, share);
    }
}

/// Every `(key, window_start) -> (count, sum)` of WT, by a plain loop.
pub fn reference_windows(
    workload: &WindowWorkload,
) -> rustc_hash::FxHashMap<(u64, i64), (u64, u64)> {
    let mut windows: rustc_hash::FxHashMap<(u64, i64), (u64, u64)> = Default::default();
    for i in 0..workload.records {
        let r = workload.record(i);
        let entry = windows
            .entry((r.key, workload.window_start(r.timestamp_ms)))
            .or_insert((0, 0));
        entry.0 += 1;
        entry.1 = entry.1.wrapping_add(r.value);
    }
    windows
}

/// The checksum of WT computed by a plain loop (the reference).
pub fn reference_checksum(workload: &WindowWorkload) -> WindowChecksum {
    let mut checksum = WindowChecksum::default();
    for ((key, start), (count, sum)) in reference_windows(workload) {
        checksum.add(key, start, count, sum);
    }
    checksum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_results_match_the_brief() {
        for (records, windows, checksum) in [
            (1_000_000, 163_176, "7365e7d30e9d5c8e"),
            (2_000_000, 263_170, "09756dccb3cbc89b"),
        ] {
            let c = reference_checksum(&WindowWorkload {
                records,
                ..WindowWorkload::default()
            });
            assert_eq!(
                (c.windows, format!("{:016x}", c.value), c.records),
                (windows, checksum.to_owned(), records),
                "N = {records}"
            );
        }
    }

    #[test]
    fn disorder_stays_within_the_bound() {
        let w = WindowWorkload::default();
        let mut max_seen = i64::MIN;
        for i in 0..200_000 {
            let ts = w.record(i).timestamp_ms;
            // Never later than the bound behind anything seen before.
            assert!(
                ts >= max_seen.saturating_sub(w.out_of_orderness_ms as i64),
                "record {i}"
            );
            max_seen = max_seen.max(ts);
        }
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let w = WindowWorkload::default();
        assert_eq!(w.window_start(1_700_000_009_999), 1_700_000_000_000);
        assert_eq!(w.window_start(1_700_000_010_000), 1_700_000_010_000);
        assert_eq!(w.window_start(-1), -10_000);
    }
}
