//! In-process fault injection for keyed-count (issue 3, acceptance) and for
//! windows and timers (issue 13):
//!
//! - exactly-once: for at least 100 seeds per run, a failure is injected at a
//!   random point (a random record in a random operator, during the
//!   asynchronous upload, between completion and the commit notification); the
//!   committed output must pass the brief's exactly-once check and equal the
//!   failure-free result. Two seeds in five run a timed shape instead of a
//!   count (`RunSpec::from_seed`): keyed tumbling event-time windows
//!   (`Topology::Windowed`) or session windows (`Topology::Session`) over an
//!   event-time source; their check is that every window is published
//!   exactly once with its true count and sum (sessions: and bounds),
//!   recomputed from the record definition (`support::expected_windows`).
//!   A record fault in their keyed stage lands in the window's aggregate
//!   (before) or in the firing of the record's window (after: an event-time
//!   timer firing);
//! - exactly-once with unaligned checkpoints (issue 18): the first 104 of
//!   those seeds again with `AlignmentPolicy::Unaligned` (from the start, or
//!   aligned until 1 to 5 ms) and mostly a throttled sink, so that channels
//!   hold data at the barrier; the same checks, and each block must have
//!   completed unaligned checkpoints with persisted in-flight records and a
//!   restore that read channel state;
//! - at-least-once: under the same faults nothing is lost (duplicates allowed
//!   and counted); count shapes only (a window that saw a record twice is a
//!   wrong window, not a duplicate line);
//! - without faults the output equals the failure-free result and the job's
//!   RESULT checksum equals `workload::reference_checksum`.
//!
//! Every test body takes the keyed state backend ([`Backend`]): the tests at the
//! top level run on the heap; with the `rocksdb` feature, module `rocksdb`
//! runs the same bodies on RocksDB, incremental (native SST files shared
//! between checkpoints) and full (key-group files).
//!
//! A failing seed is printed in every assertion; rerun one with
//! `FAULT_SEED=<seed> cargo test -p flowstate-jobs --test fault_injection one_seed -- --nocapture`;
//! on RocksDB, `FAULT_BACKEND=rocksdb` (incremental) or `rocksdb-full` in a
//! build with the `rocksdb` feature, e.g.
//! `FAULT_BACKEND=rocksdb FAULT_SEED=<seed> cargo test --workspace --all-features --test fault_injection one_seed -- --nocapture`.

mod support;

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use flowstate::runtime::Guarantee;
use flowstate_jobs::workload::reference_checksum;
use support::{
    Backend, Fault, RunOutcome, RunSpec, Topology, check_checkpoints, check_exactly_once,
    check_nothing_lost, check_windows_exactly_once, checksum_of, expected_values, expected_windows,
    run, run_until_fired,
};

/// Seeds of the exactly-once runs, split over several tests so that the test
/// harness runs them on parallel threads. 6 x 26 = 156 seeds: 96 count runs
/// and 60 timed ones (30 windowed, 30 sessions: every fault family five times
/// on each).
const EXACTLY_ONCE_SEEDS_PER_TEST: u64 = 26;
/// Seeds of the at-least-once runs.
const AT_LEAST_ONCE_SEEDS: u64 = 30;

/// The exactly-once seeds of test `block`.
fn seed_block(block: u64) -> Range<u64> {
    block * EXACTLY_ONCE_SEEDS_PER_TEST..(block + 1) * EXACTLY_ONCE_SEEDS_PER_TEST
}

fn describe(outcome: &RunOutcome) -> String {
    let s = &outcome.spec;
    let left = outcome.leftovers();
    let shape = match s.topology {
        Topology::Windowed => format!("Windowed({} ms)", s.timed().window_ms),
        Topology::Session => format!("Session(gap {} ms)", s.timed().gap_ms),
        other => format!("{other:?}"),
    };
    format!(
        "seed {:>4} {:?} {} p={} n={} keys={} batch={} interval={:?} retain={} {:?} {:?}: fired at {}; restarts {}, completed {}, failed {} checkpoints; restored a checkpoint: {}; left in storage: {} metadata, {} shared files, {} orphaned files, {} missing files; {:.0?}",
        s.seed,
        s.backend,
        shape,
        s.parallelism,
        s.records,
        s.keys,
        s.batch_size,
        s.interval,
        s.retain,
        s.storage,
        s.fault,
        outcome.fired_at.as_deref().unwrap_or("-"),
        outcome.report.restarts,
        outcome.report.checkpoints.len(),
        outcome.report.failed_checkpoints,
        outcome.restored_a_checkpoint,
        left.metadata.len(),
        left.shared,
        left.orphans.len(),
        left.dangling.len(),
        outcome.elapsed,
    )
}

/// The fault of `outcome` actually happened and had the effect it must have.
fn assert_fault_took_effect(outcome: &RunOutcome) {
    let spec = &outcome.spec;
    let seed = spec.seed;
    assert!(
        outcome.fired,
        "seed {seed}: the injected fault never fired\n{}",
        describe(outcome)
    );
    assert_eq!(
        outcome.report.restarts,
        spec.fault.expected_restarts(),
        "seed {seed}: one injected fault must cause exactly {} restart(s)\n{}",
        spec.fault.expected_restarts(),
        describe(outcome)
    );
    if let Fault::UploadError { .. } = spec.fault {
        assert!(
            outcome.report.failed_checkpoints >= 1,
            "seed {seed}: a failed upload must abort its checkpoint\n{}",
            describe(outcome)
        );
    }
}

/// No in-progress file remains in the output directory (also after a restart
/// that had no checkpoint to restore). Returns false: kept as a bool so that
/// callers can count runs with leftovers, which must be none.
fn assert_no_in_progress_files(outcome: &RunOutcome) -> bool {
    assert!(
        outcome.hidden.is_empty(),
        "seed {}: in-progress files remain in the output directory: {:?}\n{}",
        outcome.spec.seed,
        outcome.hidden,
        describe(outcome)
    );
    false
}

/// The completed checkpoints left behind are sound ([`check_checkpoints`]).
fn assert_checkpoints_sound(outcome: &RunOutcome) {
    check_checkpoints(outcome).unwrap_or_else(|e| panic!("{e}\n{}", describe(outcome)));
}

/// One exactly-once run: the fault fired, the committed output is exactly
/// once and equals the failure-free result.
fn exactly_once_seed(seed: u64, backend: Backend) -> RunOutcome {
    exactly_once_run(RunSpec::from_seed(seed, Guarantee::ExactlyOnce).on(backend))
}

/// [`exactly_once_seed`] of `spec`.
fn exactly_once_run(spec: RunSpec) -> RunOutcome {
    let seed = spec.seed;
    let outcome = run_until_fired(&spec);
    let spec = &outcome.spec;
    assert_fault_took_effect(&outcome);
    if spec.topology.is_timed() {
        check_timed_output(&outcome);
        return outcome;
    }
    let expected = expected_values(spec.records, spec.keys);
    let state = check_exactly_once(seed, &outcome.lines, &expected, spec.records)
        .unwrap_or_else(|e| panic!("{e}\n{}", describe(&outcome)));
    let failure_free: HashMap<u64, (u64, u64)> = expected
        .iter()
        .map(|(k, v)| (*k, (v.len() as u64, v.iter().sum())))
        .collect();
    assert_eq!(
        state,
        failure_free,
        "seed {seed}: the final state differs from the failure-free result\n{}",
        describe(&outcome)
    );
    assert_no_in_progress_files(&outcome);
    assert_checkpoints_sound(&outcome);
    outcome
}

/// The timed shapes' exactly-once check: every window once, with its true
/// count and sum (sessions: and bounds), and the checkpoints sound.
fn check_timed_output(outcome: &RunOutcome) -> usize {
    let spec = &outcome.spec;
    let w = spec.timed();
    let expected = expected_windows(&w);
    let windows = check_windows_exactly_once(spec.seed, &outcome.lines, &expected, w.session)
        .unwrap_or_else(|e| panic!("{e}\n{}", describe(outcome)));
    assert_no_in_progress_files(outcome);
    assert_checkpoints_sound(outcome);
    windows
}

fn exactly_once_seeds(seeds: Range<u64>, backend: Backend) {
    let started = Instant::now();
    let count = seeds.end - seeds.start;
    for seed in seeds {
        let outcome = exactly_once_seed(seed, backend);
        println!("ok {}", describe(&outcome));
    }
    println!(
        "exactly-once on {backend:?}: {count} seeds passed in {:.1?}",
        started.elapsed()
    );
}

#[test]
fn exactly_once_under_injected_faults_seeds_0_to_25() {
    exactly_once_seeds(seed_block(0), Backend::Heap);
}

#[test]
fn exactly_once_under_injected_faults_seeds_26_to_51() {
    exactly_once_seeds(seed_block(1), Backend::Heap);
}

#[test]
fn exactly_once_under_injected_faults_seeds_52_to_77() {
    exactly_once_seeds(seed_block(2), Backend::Heap);
}

#[test]
fn exactly_once_under_injected_faults_seeds_78_to_103() {
    exactly_once_seeds(seed_block(3), Backend::Heap);
}

#[test]
fn exactly_once_under_injected_faults_seeds_104_to_129() {
    exactly_once_seeds(seed_block(4), Backend::Heap);
}

#[test]
fn exactly_once_under_injected_faults_seeds_130_to_155() {
    exactly_once_seeds(seed_block(5), Backend::Heap);
}

/// Seeds of the unaligned exactly-once runs: the first 4 x 26 seeds of the
/// aligned runs, with unaligned checkpoints (from the start for seeds 0..29
/// and 60..89, aligned until 1..5 ms for the others) and mostly a throttled
/// sink ([`RunSpec::from_seed_unaligned`]): every fault family on every
/// shape (`Union`: a task that stays aligned inside an unaligned job,
/// `Connect`: two recording gates) in both modes.
fn unaligned_seed_block(block: u64) -> Range<u64> {
    seed_block(block)
}

/// What the unaligned runs of a block recorded.
#[derive(Debug, Default)]
struct UnalignedFigures {
    /// Completed checkpoints the runs' reports list (the last attempt's).
    completed: usize,
    /// Those that were unaligned and persisted in-flight records.
    unaligned_with_bytes: usize,
    persisted_bytes: u64,
    /// Channel state files written / read back by a restore.
    channel_files_written: u64,
    channel_files_read: u64,
}

/// Every seed of `seeds` with unaligned checkpoints passes the exactly-once
/// checks, and the block recorded channel state: some completed checkpoints
/// were unaligned with persisted bytes, files holding them were written and
/// a restore read one back, so the block cannot pass by never recording (or
/// never replaying).
fn exactly_once_unaligned_seeds(seeds: Range<u64>, backend: Backend) -> UnalignedFigures {
    let started = Instant::now();
    let count = seeds.end - seeds.start;
    let mut figures = UnalignedFigures::default();
    for seed in seeds.clone() {
        let outcome = exactly_once_run(RunSpec::from_seed_unaligned(seed).on(backend));
        let unaligned: Vec<_> = outcome
            .report
            .checkpoints
            .iter()
            .filter(|c| c.unaligned && c.persisted_bytes > 0)
            .collect();
        figures.completed += outcome.report.checkpoints.len();
        figures.unaligned_with_bytes += unaligned.len();
        figures.persisted_bytes += unaligned.iter().map(|c| c.persisted_bytes).sum::<u64>();
        figures.channel_files_written += outcome.channel_files_written;
        figures.channel_files_read += outcome.channel_files_read;
        println!(
            "ok {:?} sink rate {:?}: {} of {} listed checkpoints unaligned with in-flight bytes, {} channel files written ({} bytes), {} read; {}",
            outcome.spec.alignment,
            outcome.spec.sink_rate,
            unaligned.len(),
            outcome.report.checkpoints.len(),
            outcome.channel_files_written,
            outcome.channel_bytes_written,
            outcome.channel_files_read,
            describe(&outcome)
        );
    }
    println!(
        "exactly-once unaligned on {backend:?}: {count} seeds passed in {:.1?}: {figures:?}",
        started.elapsed()
    );
    assert!(
        figures.unaligned_with_bytes > 0 && figures.persisted_bytes > 0,
        "seeds {seeds:?}: no completed checkpoint was unaligned with persisted in-flight records: {figures:?}"
    );
    assert!(
        figures.channel_files_written > 0,
        "seeds {seeds:?}: no channel state file was written: {figures:?}"
    );
    assert!(
        figures.channel_files_read > 0,
        "seeds {seeds:?}: no restore read channel state: {figures:?}"
    );
    figures
}

#[test]
fn exactly_once_unaligned_seeds_0_to_25() {
    exactly_once_unaligned_seeds(unaligned_seed_block(0), Backend::Heap);
}

#[test]
fn exactly_once_unaligned_seeds_26_to_51() {
    exactly_once_unaligned_seeds(unaligned_seed_block(1), Backend::Heap);
}

#[test]
fn exactly_once_unaligned_seeds_52_to_77() {
    exactly_once_unaligned_seeds(unaligned_seed_block(2), Backend::Heap);
}

#[test]
fn exactly_once_unaligned_seeds_78_to_103() {
    exactly_once_unaligned_seeds(unaligned_seed_block(3), Backend::Heap);
}

/// Reruns the seed in `FAULT_SEED` (exactly-once; `FAULT_GUARANTEE=alo` for
/// at-least-once, `FAULT_ALIGNMENT=unaligned` for the unaligned runs) on the
/// backend in `FAULT_BACKEND` (`heap`, the default; `rocksdb`: incremental;
/// `rocksdb-full`), printing what happened.
#[test]
fn one_seed() {
    let Some(seed) = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let backend = Backend::from_env();
    if std::env::var("FAULT_GUARANTEE").is_ok_and(|g| g == "alo") {
        let (outcome, _) = at_least_once_seed(seed, backend);
        println!("ok {}", describe(&outcome));
    } else if std::env::var("FAULT_ALIGNMENT").is_ok_and(|a| a == "unaligned") {
        let outcome = exactly_once_run(RunSpec::from_seed_unaligned(seed).on(backend));
        println!(
            "ok {:?} sink rate {:?}: {}",
            outcome.spec.alignment,
            outcome.spec.sink_rate,
            describe(&outcome)
        );
    } else {
        let outcome = exactly_once_seed(seed, backend);
        println!("ok {}", describe(&outcome));
    }
}

fn at_least_once_spec(seed: u64) -> RunSpec {
    let mut spec = RunSpec::from_seed(seed, Guarantee::AtLeastOnce);
    // Two thirds of the runs have a multi-input task, where alignment matters.
    spec.topology = [Topology::Union, Topology::Connect, Topology::Single][(seed / 6 % 3) as usize];
    spec
}

fn at_least_once_seed(seed: u64, backend: Backend) -> (RunOutcome, support::AtLeastOnceStats) {
    let spec = at_least_once_spec(seed).on(backend);
    let outcome = run_until_fired(&spec);
    assert_fault_took_effect(&outcome);
    let spec = &outcome.spec;
    let expected = expected_values(spec.records, spec.keys);
    let stats = check_nothing_lost(seed, &outcome.lines, &expected, spec.records)
        .unwrap_or_else(|e| panic!("{e}\n{}", describe(&outcome)));
    println!(
        "  seed {seed}: {} extra lines, {} repeated lines, {} keys counted past their records",
        stats.extra_lines, stats.repeated_lines, stats.keys_over_counted
    );
    assert_no_in_progress_files(&outcome);
    assert_checkpoints_sound(&outcome);
    (outcome, stats)
}

fn at_least_once_seeds(seeds: Range<u64>, backend: Backend) {
    let started = Instant::now();
    let count = seeds.end - seeds.start;
    let mut extra = 0;
    for seed in seeds {
        let (outcome, stats) = at_least_once_seed(seed, backend);
        extra += stats.extra_lines;
        println!("ok {}", describe(&outcome));
    }
    println!(
        "at-least-once on {backend:?}: {count} seeds passed in {:.1?}; {extra} duplicate lines in all",
        started.elapsed()
    );
}

#[test]
fn at_least_once_loses_nothing_under_injected_faults() {
    at_least_once_seeds(1_000..1_000 + AT_LEAST_ONCE_SEEDS, Backend::Heap);
}

#[test]
fn without_faults_the_output_and_the_result_match_the_reference() {
    without_faults(Backend::Heap);
}

fn without_faults(backend: Backend) {
    for (seed, topology) in [
        (9_000, Topology::Single),
        (9_001, Topology::Union),
        (9_002, Topology::Connect),
    ] {
        let mut spec = RunSpec::from_seed(seed, Guarantee::ExactlyOnce).on(backend);
        spec.topology = topology;
        spec.parallelism = 2;
        spec.fault = Fault::None;
        let outcome = run(&spec);
        assert!(!outcome.fired, "seed {seed}");
        assert_eq!(outcome.report.restarts, 0, "seed {seed}");
        assert!(
            !outcome.report.checkpoints.is_empty(),
            "seed {seed}: at least the final checkpoint completes"
        );
        let expected = expected_values(spec.records, spec.keys);
        let state = check_exactly_once(seed, &outcome.lines, &expected, spec.records)
            .unwrap_or_else(|e| panic!("{e}\n{}", describe(&outcome)));
        assert_no_in_progress_files(&outcome);
        assert_checkpoints_sound(&outcome);
        let reference = reference_checksum(spec.records, spec.keys);
        assert_eq!(
            checksum_of(&state),
            reference.value,
            "seed {seed}: checksum of the output's final state"
        );
        assert_eq!(
            outcome.totals, reference,
            "seed {seed}: the job's RESULT checksum"
        );
        println!("ok {}", describe(&outcome));
    }
    for (seed, topology) in [(9_003, Topology::Windowed), (9_004, Topology::Session)] {
        let mut spec = RunSpec::from_seed(seed, Guarantee::ExactlyOnce)
            .with_topology(topology)
            .on(backend);
        spec.parallelism = 2;
        spec.fault = Fault::None;
        let outcome = run(&spec);
        assert!(!outcome.fired, "seed {seed}");
        assert_eq!(outcome.report.restarts, 0, "seed {seed}");
        let windows = check_timed_output(&outcome);
        println!("ok {}: {windows} windows", describe(&outcome));
    }
}

/// The checkers themselves catch a lost, a repeated and a wrong line.
#[test]
fn the_checkers_reject_damaged_output() {
    let (records, keys) = (2_000, 50);
    let expected = expected_values(records, keys);
    let mut running: HashMap<u64, (u64, u64)> = HashMap::new();
    let lines: Vec<String> = (0..records)
        .map(|i| {
            let (key, value) = support::w_record(i, keys);
            let entry = running.entry(key).or_default();
            entry.0 += 1;
            entry.1 += value;
            format!("{key},{},{}", entry.0, entry.1)
        })
        .collect();
    check_exactly_once(1, &lines, &expected, records).expect("intact output passes");
    check_nothing_lost(1, &lines, &expected, records).expect("intact output passes");

    let mut lost = lines.clone();
    lost.remove(777);
    assert!(check_exactly_once(1, &lost, &expected, records).is_err());
    assert!(check_nothing_lost(1, &lost, &expected, records).is_err());

    let mut repeated = lines.clone();
    repeated.push(lines[1_234].clone());
    assert!(check_exactly_once(1, &repeated, &expected, records).is_err());
    check_nothing_lost(1, &repeated, &expected, records).expect("a duplicate is allowed");

    // The same counts, but one record counted twice and another not at all.
    let mut swapped = lines.clone();
    let (key, _) = support::w_record(1_999, keys);
    let last = swapped.len() - 1;
    let (count, sum) = running[&key];
    swapped[last] = format!("{key},{count},{}", sum + 1);
    assert!(check_exactly_once(1, &swapped, &expected, records).is_err());
    assert!(check_nothing_lost(1, &swapped, &expected, records).is_err());
}

/// The timed workload is what the timed shapes need (no record late within
/// its split, sessions cut by the designed silences, several windows per key)
/// and the window checker catches a lost, a repeated and a wrong window.
#[test]
fn the_window_checker_rejects_damaged_output() {
    use support::{JITTER_MS, WindowLine};
    for topology in [Topology::Windowed, Topology::Session] {
        let spec = RunSpec::from_seed(18, Guarantee::ExactlyOnce).with_topology(topology);
        let w = spec.timed();
        // Within a split (the source's index ranges), no record is at or
        // below the watermark of those before it (max - JITTER_MS - 1).
        let bound = |s: u64| (u128::from(w.records) * u128::from(s) / u128::from(w.splits)) as u64;
        for split in 0..w.splits {
            let mut max = i64::MIN;
            for i in bound(split)..bound(split + 1) {
                let ts = w.timestamp(i);
                assert!(
                    ts > max.saturating_sub(JITTER_MS + 1),
                    "record {i} would be late"
                );
                max = max.max(ts);
            }
        }
        let expected = expected_windows(&w);
        let keys: std::collections::BTreeSet<u64> = expected.keys().map(|(k, _)| *k).collect();
        assert!(
            expected.len() >= 3 * keys.len(),
            "{topology:?}: {} windows over {} keys",
            expected.len(),
            keys.len()
        );
        let session = topology == Topology::Session;
        if session {
            // Every session ends in a round of its key's silence, or at the end.
            let last_ts = (0..w.records).map(|i| w.timestamp(i)).max().unwrap();
            let mut ended_by_silence = 0;
            for ((key, _), window) in &expected {
                let round = window.end / w.round_ms;
                if !w.active(*key, round) || window.end > last_ts {
                    ended_by_silence += 1;
                }
            }
            assert!(
                ended_by_silence * 10 >= expected.len() * 9,
                "{ended_by_silence} of {} sessions end in a silence",
                expected.len()
            );
        }
        let lines: Vec<String> = expected
            .iter()
            .map(|(&(key, start), t)| {
                WindowLine {
                    key,
                    start,
                    end: t.end,
                    count: t.count,
                    sum: t.sum,
                    session,
                }
                .to_string()
            })
            .collect();
        check_windows_exactly_once(1, &lines, &expected, session).expect("intact output passes");
        let mut lost = lines.clone();
        lost.remove(lines.len() / 2);
        assert!(check_windows_exactly_once(1, &lost, &expected, session).is_err());
        let mut repeated = lines.clone();
        repeated.push(lines[lines.len() / 3].clone());
        assert!(check_windows_exactly_once(1, &repeated, &expected, session).is_err());
        // One record counted in the wrong window: counts and sums move.
        let mut moved = lines.clone();
        let bump = |line: &str, by: i64| {
            let mut parts: Vec<i64> = line.split(',').map(|p| p.parse().unwrap()).collect();
            let n = parts.len();
            parts[n - 2] += by;
            parts[n - 1] += by * 7;
            parts
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        moved[0] = bump(&lines[0], 1);
        moved[1] = bump(&lines[1], -1);
        assert!(check_windows_exactly_once(1, &moved, &expected, session).is_err());
        if session {
            // A session cut short.
            let mut short = lines.clone();
            let mut parts: Vec<i64> = lines[2].split(',').map(|p| p.parse().unwrap()).collect();
            parts[2] -= 2;
            short[2] = parts
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            assert!(check_windows_exactly_once(1, &short, &expected, session).is_err());
        }
    }
}

/// The upload faults see every task state file, and nothing else, as the
/// checkpoint layout names them; the files of one instance's native snapshot
/// are one upload.
#[test]
fn upload_faults_recognise_task_state_files() {
    use flowstate::runtime::checkpoint::layout::{
        channel_state_path, keyed_state_path, metadata_path, native_private_path, shared_file_path,
    };
    use support::StateWrite;
    let job = "job-1f-2a";
    let keyed = StateWrite::of(&keyed_state_path(job, 7, "Count and sum", 2)).expect("keyed");
    assert_eq!(
        (keyed.checkpoint, keyed.private, keyed.whole),
        (7, true, true)
    );
    let shared = StateWrite::of(&shared_file_path(job, "count-and-sum", 2, 7, "000012.sst"))
        .expect("a shared file");
    assert_eq!(
        (shared.checkpoint, shared.private, shared.whole),
        (7, false, false)
    );
    let private = StateWrite::of(&native_private_path(job, 7, "count-and-sum", 2, "CURRENT"))
        .expect("a private native file");
    assert_eq!(
        (private.checkpoint, private.private, private.whole),
        (7, true, false)
    );
    assert_eq!(
        shared.upload, private.upload,
        "one instance's native upload"
    );
    assert_ne!(keyed.upload, private.upload);
    let other = StateWrite::of(&native_private_path(job, 7, "count-and-sum", 1, "CURRENT"))
        .expect("a private native file");
    assert_ne!(other.upload, private.upload, "another instance");
    // An unaligned checkpoint's channel state file: an upload of its own,
    // written whole, so that upload errors and stalls land on it too.
    let channels =
        StateWrite::of(&channel_state_path(job, 7, "Count and sum", 2)).expect("channel state");
    assert_eq!(
        (channels.checkpoint, channels.private, channels.whole),
        (7, true, true)
    );
    assert_ne!(
        channels.upload, keyed.upload,
        "the keyed file is another upload"
    );
    let next = StateWrite::of(&channel_state_path(job, 8, "Count and sum", 2)).expect("channels");
    assert_ne!(channels.upload, next.upload, "another checkpoint");
    assert!(StateWrite::of(&metadata_path(job, 7)).is_none());
}

/// The file sink removes the in-progress files of a failed attempt when the
/// restarted attempt has no checkpoint to restore (the failure came before the
/// first checkpoint completed). Deterministic: with a 10 s interval no periodic
/// checkpoint starts before the failure at record 10,000.
#[test]
fn restart_before_the_first_checkpoint_leaves_no_in_progress_files() {
    restart_before_the_first_checkpoint(Backend::Heap);
}

fn restart_before_the_first_checkpoint(backend: Backend) {
    let mut spec = RunSpec::from_seed(7_000, Guarantee::ExactlyOnce).on(backend);
    spec.topology = Topology::Single;
    spec.parallelism = 2;
    spec.records = 30_000;
    spec.interval = std::time::Duration::from_secs(10);
    spec.fault = Fault::Record {
        stage: support::Stage::Process,
        index: 10_000,
        after: false,
        panic: true,
    };
    let outcome = run(&spec);
    assert_fault_took_effect(&outcome);
    assert!(
        !outcome.restored_a_checkpoint,
        "no checkpoint before the fault\n{}",
        describe(&outcome)
    );
    let expected = expected_values(spec.records, spec.keys);
    check_exactly_once(spec.seed, &outcome.lines, &expected, spec.records)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        outcome.hidden.is_empty(),
        "in-progress files of the failed attempt remain: {:?}",
        outcome.hidden
    );
    assert_checkpoints_sound(&outcome);
}

/// Keeping the last `retain` completed checkpoints holds across restarts: the
/// checkpoints the failed attempt retained are deleted once newer ones replace
/// them. Here retain = 2, the failure comes right after checkpoint 2 completed,
/// and the restarted attempt completes at least its final checkpoint. Every
/// file left in storage belongs to a retained checkpoint (on incremental
/// RocksDB: the shared files only discarded checkpoints referenced are gone),
/// and every file a retained checkpoint references is there.
#[test]
fn retention_holds_across_a_restart() {
    retention_holds_across_a_restart_on(Backend::Heap);
}

fn retention_holds_across_a_restart_on(backend: Backend) {
    let mut spec = RunSpec::from_seed(7_001, Guarantee::ExactlyOnce).on(backend);
    spec.topology = Topology::Single;
    spec.parallelism = 1;
    spec.records = 60_000;
    spec.batch_size = 16;
    spec.interval = std::time::Duration::from_millis(5);
    spec.retain = 2;
    spec.fault = Fault::AfterCompletion {
        checkpoint: 2,
        then: support::Hook::Process,
    };
    let outcome = run(&spec);
    assert_fault_took_effect(&outcome);
    let expected = expected_values(spec.records, spec.keys);
    check_exactly_once(spec.seed, &outcome.lines, &expected, spec.records)
        .unwrap_or_else(|e| panic!("{e}"));
    let left = outcome.leftovers();
    assert!(
        left.metadata.len() <= spec.retain,
        "{} completed checkpoints remain with retain {}: {:?}\n{}",
        left.metadata.len(),
        spec.retain,
        left.metadata,
        describe(&outcome)
    );
    assert!(
        left.orphans.is_empty(),
        "files no retained checkpoint references remain: {:?}\n{}",
        left.orphans,
        describe(&outcome)
    );
    assert_checkpoints_sound(&outcome);
    println!("ok {}", describe(&outcome));
}

/// An aborted checkpoint leaves no files behind, even those its other tasks
/// finish writing after the abort. Here checkpoint 1's first task upload fails
/// and the other two (parallelism 3) are written 100 ms later. On incremental
/// RocksDB, the shared files the aborted checkpoint's uploads wrote (before the
/// failure, and after the abort) go too: no file remains that no retained
/// checkpoint references.
#[test]
fn an_aborted_checkpoint_leaves_no_files() {
    an_aborted_checkpoint_leaves_no_files_on(Backend::Heap);
}

fn an_aborted_checkpoint_leaves_no_files_on(backend: Backend) {
    let mut spec = RunSpec::from_seed(7_002, Guarantee::ExactlyOnce).on(backend);
    spec.topology = Topology::Single;
    spec.parallelism = 3;
    spec.records = 30_000;
    spec.fault = Fault::UploadError { put: 1 };
    spec.slow_uploads = Some((1, std::time::Duration::from_millis(100)));
    let outcome = run(&spec);
    assert_fault_took_effect(&outcome);
    let expected = expected_values(spec.records, spec.keys);
    check_exactly_once(spec.seed, &outcome.lines, &expected, spec.records)
        .unwrap_or_else(|e| panic!("{e}"));
    let left = outcome.leftovers();
    assert!(
        left.orphans.is_empty(),
        "files of aborted checkpoints remain: {:?}\n{}",
        left.orphans,
        describe(&outcome)
    );
    assert_checkpoints_sound(&outcome);
    println!("ok {}", describe(&outcome));
}

/// The job's RESULT checksum counts every key once even when the job fails
/// after a keyed instance already folded its final state into it. Here the only
/// checkpoint is the final one (10 s interval); the failure it arms fires when
/// the sink finishes, after `CountAndSum::finish` ran in the same task.
#[test]
fn the_result_checksum_survives_a_failure_after_finish() {
    the_result_checksum_survives_a_failure_after_finish_on(Backend::Heap);
}

fn the_result_checksum_survives_a_failure_after_finish_on(backend: Backend) {
    let mut spec = RunSpec::from_seed(7_003, Guarantee::ExactlyOnce).on(backend);
    spec.topology = Topology::Single;
    spec.parallelism = 1;
    spec.records = 20_000;
    spec.interval = std::time::Duration::from_secs(10);
    spec.fault = Fault::AfterCompletion {
        checkpoint: 1,
        then: support::Hook::Map,
    };
    let outcome = run(&spec);
    assert_fault_took_effect(&outcome);
    assert!(
        outcome
            .fired_at
            .as_deref()
            .is_some_and(|at| at.contains("sink finish")),
        "{}",
        describe(&outcome)
    );
    let expected = expected_values(spec.records, spec.keys);
    check_exactly_once(spec.seed, &outcome.lines, &expected, spec.records)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.totals,
        reference_checksum(spec.records, spec.keys),
        "the RESULT checksum after a restart\n{}",
        describe(&outcome)
    );
}

/// The same tests on RocksDB: incremental (native SST files, shared between
/// checkpoints and reference counted by the coordinator) and full (key-group
/// files from a RocksDB checkpoint). Fewer seeds than on the heap: every run
/// opens databases and every checkpoint flushes them.
#[cfg(feature = "rocksdb")]
mod rocksdb {
    use super::*;

    const INCREMENTAL: Backend = Backend::RocksDb { incremental: true };
    const FULL: Backend = Backend::RocksDb { incremental: false };

    /// Seeds 0..52 (every fault family and count topology, as on the heap;
    /// windows on 18..24 and 48..52, sessions on 24..30).
    #[test]
    fn incremental_exactly_once_seeds_0_to_25() {
        exactly_once_seeds(seed_block(0), INCREMENTAL);
    }

    #[test]
    fn incremental_exactly_once_seeds_26_to_51() {
        exactly_once_seeds(seed_block(1), INCREMENTAL);
    }

    /// 13 seeds: every fault family at least twice (windows on 52 and 53,
    /// sessions on 54..60).
    #[test]
    fn full_exactly_once_seeds_52_to_64() {
        exactly_once_seeds(52..65, FULL);
    }

    #[test]
    fn incremental_at_least_once_seeds_1000_to_1009() {
        at_least_once_seeds(1_000..1_010, INCREMENTAL);
    }

    #[test]
    fn incremental_without_faults_the_output_and_the_result_match_the_reference() {
        without_faults(INCREMENTAL);
    }

    #[test]
    fn full_without_faults_the_output_and_the_result_match_the_reference() {
        without_faults(FULL);
    }

    #[test]
    fn incremental_restart_before_the_first_checkpoint_leaves_no_in_progress_files() {
        restart_before_the_first_checkpoint(INCREMENTAL);
    }

    #[test]
    fn incremental_retention_holds_across_a_restart() {
        retention_holds_across_a_restart_on(INCREMENTAL);
    }

    #[test]
    fn full_retention_holds_across_a_restart() {
        retention_holds_across_a_restart_on(FULL);
    }

    #[test]
    fn incremental_an_aborted_checkpoint_leaves_no_files() {
        an_aborted_checkpoint_leaves_no_files_on(INCREMENTAL);
    }

    #[test]
    fn full_an_aborted_checkpoint_leaves_no_files() {
        an_aborted_checkpoint_leaves_no_files_on(FULL);
    }

    #[test]
    fn incremental_the_result_checksum_survives_a_failure_after_finish() {
        the_result_checksum_survives_a_failure_after_finish_on(INCREMENTAL);
    }
}
