//! In-process fault injection for keyed-count (issue 3, acceptance):
//!
//! - exactly-once: for at least 100 seeds per run, a failure is injected at a
//!   random point (a random record in a random operator, during the
//!   asynchronous upload, between completion and the commit notification); the
//!   committed output must pass the brief's exactly-once check and equal the
//!   failure-free result;
//! - at-least-once: under the same faults nothing is lost (duplicates allowed
//!   and counted);
//! - without faults the output equals the failure-free result and the job's
//!   RESULT checksum equals `workload::reference_checksum`.
//!
//! A failing seed is printed in every assertion; rerun one with
//! `FAULT_SEED=<seed> cargo test -p flowstate-jobs --test fault_injection one_seed -- --nocapture`.

mod support;

use std::collections::HashMap;
use std::time::Instant;

use flowstate::runtime::Guarantee;
use flowstate_jobs::workload::reference_checksum;
use support::{
    Fault, RunOutcome, RunSpec, Topology, check_exactly_once, check_nothing_lost, checksum_of,
    expected_values, run, run_until_fired, storage_leftovers,
};

/// Seeds of the exactly-once runs, split over several tests so that the test
/// harness runs them on parallel threads. 4 x 26 = 104 seeds.
const EXACTLY_ONCE_SEEDS_PER_TEST: u64 = 26;
/// Seeds of the at-least-once runs.
const AT_LEAST_ONCE_SEEDS: u64 = 30;

fn describe(outcome: &RunOutcome) -> String {
    let s = &outcome.spec;
    let (metadata, orphans) = storage_leftovers(&outcome.storage_objects);
    format!(
        "seed {:>4} {:?} p={} n={} keys={} batch={} interval={:?} retain={} {:?} {:?}: fired at {}; restarts {}, completed {}, failed {} checkpoints; restored a checkpoint: {}; left in storage: {} metadata, {} orphaned files; {:.0?}",
        s.seed,
        s.topology,
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
        metadata.len(),
        orphans.len(),
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

/// One exactly-once run: the fault fired, the committed output is exactly
/// once and equals the failure-free result.
fn exactly_once_seed(seed: u64) -> RunOutcome {
    let spec = RunSpec::from_seed(seed, Guarantee::ExactlyOnce);
    let outcome = run_until_fired(&spec);
    let spec = &outcome.spec;
    assert_fault_took_effect(&outcome);
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
    outcome
}

fn exactly_once_seeds(block: u64) {
    let started = Instant::now();
    let seeds = block * EXACTLY_ONCE_SEEDS_PER_TEST..(block + 1) * EXACTLY_ONCE_SEEDS_PER_TEST;
    let count = seeds.end - seeds.start;
    for seed in seeds {
        let outcome = exactly_once_seed(seed);
        println!("ok {}", describe(&outcome));
    }
    println!(
        "exactly-once: {count} seeds passed in {:.1?}",
        started.elapsed()
    );
}

#[test]
fn exactly_once_under_injected_faults_seeds_0_to_25() {
    exactly_once_seeds(0);
}

#[test]
fn exactly_once_under_injected_faults_seeds_26_to_51() {
    exactly_once_seeds(1);
}

#[test]
fn exactly_once_under_injected_faults_seeds_52_to_77() {
    exactly_once_seeds(2);
}

#[test]
fn exactly_once_under_injected_faults_seeds_78_to_103() {
    exactly_once_seeds(3);
}

/// Reruns the seed in `FAULT_SEED` (exactly-once; `FAULT_GUARANTEE=alo` for
/// at-least-once), printing what happened.
#[test]
fn one_seed() {
    let Some(seed) = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    if std::env::var("FAULT_GUARANTEE").is_ok_and(|g| g == "alo") {
        let (outcome, _) = at_least_once_seed(seed);
        println!("ok {}", describe(&outcome));
    } else {
        let outcome = exactly_once_seed(seed);
        println!("ok {}", describe(&outcome));
    }
}

fn at_least_once_spec(seed: u64) -> RunSpec {
    let mut spec = RunSpec::from_seed(seed, Guarantee::AtLeastOnce);
    // Two thirds of the runs have a multi-input task, where alignment matters.
    spec.topology = [Topology::Union, Topology::Connect, Topology::Single][(seed / 6 % 3) as usize];
    spec
}

fn at_least_once_seed(seed: u64) -> (RunOutcome, support::AtLeastOnceStats) {
    let spec = at_least_once_spec(seed);
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
    (outcome, stats)
}

#[test]
fn at_least_once_loses_nothing_under_injected_faults() {
    let started = Instant::now();
    let mut extra = 0;
    for seed in 1_000..1_000 + AT_LEAST_ONCE_SEEDS {
        let (outcome, stats) = at_least_once_seed(seed);
        extra += stats.extra_lines;
        println!("ok {}", describe(&outcome));
    }
    println!(
        "at-least-once: {AT_LEAST_ONCE_SEEDS} seeds passed in {:.1?}; {extra} duplicate lines in all",
        started.elapsed()
    );
}

#[test]
fn without_faults_the_output_and_the_result_match_the_reference() {
    for (seed, topology) in [
        (9_000, Topology::Single),
        (9_001, Topology::Union),
        (9_002, Topology::Connect),
    ] {
        let mut spec = RunSpec::from_seed(seed, Guarantee::ExactlyOnce);
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

/// The file sink removes the in-progress files of a failed attempt when the
/// restarted attempt has no checkpoint to restore (the failure came before the
/// first checkpoint completed). Deterministic: with a 10 s interval no periodic
/// checkpoint starts before the failure at record 10,000.
#[test]
fn restart_before_the_first_checkpoint_leaves_no_in_progress_files() {
    let mut spec = RunSpec::from_seed(7_000, Guarantee::ExactlyOnce);
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
}

/// Keeping the last `retain` completed checkpoints holds across restarts: the
/// checkpoints the failed attempt retained are deleted once newer ones replace
/// them. Here retain = 2, the failure comes right after checkpoint 2 completed,
/// and the restarted attempt completes at least its final checkpoint.
#[test]
fn retention_holds_across_a_restart() {
    let mut spec = RunSpec::from_seed(7_001, Guarantee::ExactlyOnce);
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
    let (metadata, _) = storage_leftovers(&outcome.storage_objects);
    assert!(
        metadata.len() <= spec.retain,
        "{} completed checkpoints remain with retain {}: {metadata:?}\n{}",
        metadata.len(),
        spec.retain,
        describe(&outcome)
    );
}

/// An aborted checkpoint leaves no files behind, even those its other tasks
/// finish writing after the abort. Here checkpoint 1's first task file fails
/// and the other two (parallelism 3) are written 100 ms later.
#[test]
fn an_aborted_checkpoint_leaves_no_files() {
    let mut spec = RunSpec::from_seed(7_002, Guarantee::ExactlyOnce);
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
    let (_, orphans) = storage_leftovers(&outcome.storage_objects);
    assert!(
        orphans.is_empty(),
        "files of aborted checkpoints remain: {orphans:?}\n{}",
        describe(&outcome)
    );
}

/// The job's RESULT checksum counts every key once even when the job fails
/// after a keyed instance already folded its final state into it. Here the only
/// checkpoint is the final one (10 s interval); the failure it arms fires when
/// the sink finishes, after `CountAndSum::finish` ran in the same task.
#[test]
fn the_result_checksum_survives_a_failure_after_finish() {
    let mut spec = RunSpec::from_seed(7_003, Guarantee::ExactlyOnce);
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
