//! The baseline of `bench/keyed-count.sh`: workload W in a single-threaded loop
//! over an `FxHashMap`, no framework, no fault tolerance.
//!
//! Usage: keyed-count-loop RECORDS [KEYS]
//! Prints `RESULT mode=loop records=N secs=S rate=R checksum=C keys=K`.

use std::time::Instant;

use flowstate_jobs::workload::{Checksum, DEFAULT_KEYS, record};
use rustc_hash::FxHashMap;

fn main() {
    let mut args = std::env::args().skip(1);
    let parse = |s: Option<String>, default: u64| s.and_then(|s| s.parse().ok()).unwrap_or(default);
    let records = parse(args.next(), 50_000_000);
    let keys = parse(args.next(), DEFAULT_KEYS);
    let started = Instant::now();
    let mut state: FxHashMap<u64, (u64, u64)> = FxHashMap::default();
    for i in 0..records {
        let (key, value) = record(i, keys);
        let entry = state.entry(key).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = entry.1.wrapping_add(value);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut checksum = Checksum::default();
    for (key, (count, sum)) in &state {
        checksum.add(*key, *count, *sum);
    }
    println!(
        "RESULT mode=loop records={records} secs={secs:.4} rate={:.0} checksum={:016x} keys={}",
        records as f64 / secs,
        checksum.value,
        checksum.keys
    );
}
