//! The simulation's own tests: it finds nothing on the correct job, it
//! catches a deliberately broken one, a seed replays exactly, every fault
//! point fires, and the checker fails on each kind of bad output.

use std::process::Command;

use flowstate::runtime::checkpoint::AlignmentPolicy;
use flowstate_sim::faults::FaultPoint;
use flowstate_sim::scenario::{Shape, Variant, check, key_of};
use flowstate_sim::{Ending, run_seed, summary_line};

/// Seeds run in the (debug) test build; CI runs thousands more in release
/// through `scripts/simulate.sh`.
const SEEDS: u64 = 120;

#[test]
fn the_correct_job_passes_every_seed_and_every_fault_point_fires() {
    let reports: Vec<_> = (0..SEEDS)
        .map(|seed| run_seed(seed, Variant::Correct))
        .collect();
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            r.violation
                .as_ref()
                .map(|v| format!("seed {}: {v}", r.seed))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let summary = summary_line(&reports);
    for point in FaultPoint::ALL {
        let fired: u64 = reports.iter().filter_map(|r| r.fired.get(&point)).sum();
        assert!(fired > 0, "{} never fired: {summary}", point.name());
    }
    let finished = reports
        .iter()
        .filter(|r| r.ending == Ending::Finished)
        .count();
    assert!(
        finished as u64 > SEEDS * 3 / 4,
        "most seeds must run to the end: {summary}"
    );
    let restored = reports.iter().filter(|r| r.attempts > 1).count();
    assert!(restored > 10, "seeds must restart and restore: {summary}");
    // Unaligned checkpoints happen and record in-flight records (the suite
    // cannot pass by never recording), and the in-flight limit declines.
    let unaligned: u64 = reports.iter().map(|r| r.unaligned_checkpoints).sum();
    let persisted: u64 = reports.iter().map(|r| r.persisted_bytes).sum();
    let declined: u64 = reports.iter().map(|r| r.declines).sum();
    assert!(
        unaligned > 0 && persisted > 0,
        "no unaligned checkpoint persisted in-flight records: {summary}"
    );
    assert!(declined > 0, "no snapshot was declined: {summary}");
    // Aligned-until checkpoints switch in virtual time: some seeds with a
    // timeout completed unaligned checkpoints.
    let switched = reports
        .iter()
        .filter(|r| {
            matches!(r.alignment, AlignmentPolicy::Unaligned { aligned_timeout, .. } if !aligned_timeout.is_zero())
                && r.unaligned_checkpoints > 0
        })
        .count();
    assert!(
        switched > 0,
        "no aligned-until checkpoint became unaligned: {summary}"
    );
    let passed_over: u64 = reports.iter().map(|r| r.keyed_passed_over).sum();
    assert!(
        passed_over > 0,
        "a slow consumer never held a keyed task back: {summary}"
    );
}

#[test]
fn committing_before_the_checkpoint_completes_is_caught_within_a_few_hundred_seeds() {
    let caught = (0..300).find_map(|seed| {
        let report = run_seed(seed, Variant::CommitBeforeComplete);
        report.violation.map(|v| (seed, v))
    });
    let (seed, violation) = caught.expect("the broken sink went unnoticed for 300 seeds");
    assert!(
        violation.contains("twice"),
        "seed {seed} caught it, but not as a duplicate: {violation}"
    );
}

#[test]
fn dropping_channel_state_is_caught_within_a_few_hundred_seeds() {
    let caught = (0..300).find_map(|seed| {
        let report = run_seed(seed, Variant::DropChannelState);
        report.violation.map(|v| (seed, v))
    });
    let (seed, violation) = caught.expect("losing the channel state went unnoticed for 300 seeds");
    assert!(
        ["lost", "missing", "the window holds"]
            .iter()
            .any(|s| violation.contains(s)),
        "seed {seed} caught it, but not as records lost: {violation}"
    );
}

fn trace_of(seed: u64) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_flowstate-sim"))
        .args(["--seed", &seed.to_string(), "--trace"])
        .output()
        .expect("run flowstate-sim");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "seed {seed}: {stdout}");
    let trace = stdout
        .lines()
        .find(|l| l.starts_with("TRACE "))
        .unwrap_or_else(|| panic!("no TRACE line: {stdout}"))
        .to_owned();
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("SIMULATION seeds=1 failures=0"),
        "{stdout}"
    );
    trace
}

#[test]
fn a_seed_replays_to_the_same_trace_in_another_process() {
    for seed in [3, 17] {
        assert_eq!(trace_of(seed), trace_of(seed), "seed {seed}");
    }
    assert_ne!(trace_of(3), trace_of(17));
    // In this process too, where hash maps are seeded differently again.
    assert_eq!(
        run_seed(5, Variant::Correct).trace,
        run_seed(5, Variant::Correct).trace
    );
}

fn write_output(lines: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("part-0"), lines.join("\n") + "\n").expect("write");
    // Hidden in-progress files are not output.
    std::fs::write(dir.path().join(".part-1.inprogress"), "junk\n").expect("write");
    dir
}

/// The output of a correct run of `shape`, one line per record in order.
fn correct_lines(shape: Shape) -> Vec<String> {
    let mut counts = std::collections::HashMap::new();
    (0..shape.records)
        .map(|id| {
            let key = key_of(id, shape.keys);
            let count = counts.entry(key).or_insert(0u64);
            *count += 1;
            format!("{key} {count} {id}")
        })
        .collect()
}

#[test]
fn the_checker_accepts_correct_output_and_rejects_each_kind_of_bad_output() {
    let shape = Shape {
        records: 50,
        keys: 4,
        splits: 2,
        window: None,
    };
    let lines = correct_lines(shape);
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let ok = write_output(&refs);
    check(ok.path(), shape, true).expect("correct output");

    let mut duplicated = refs.clone();
    duplicated.push(refs[10]);
    let err = check(write_output(&duplicated).path(), shape, false).unwrap_err();
    assert!(err.contains("output twice"), "{err}");

    let missing = &refs[..49];
    check(write_output(missing).path(), shape, false).expect("a prefix is safe");
    let err = check(write_output(missing).path(), shape, true).unwrap_err();
    assert!(err.contains("lost") || err.contains("missing"), "{err}");

    // A record's line lost while its count stayed in state: a gap.
    let last_of_key = |key: u64| {
        refs.iter()
            .rposition(|l| l.starts_with(&format!("{key} ")))
            .expect("key present")
    };
    let mut gap = refs.clone();
    let key = key_of(0, shape.keys);
    let first = refs
        .iter()
        .position(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or(0);
    assert_ne!(first, last_of_key(key));
    gap.remove(first);
    let err = check(write_output(&gap).path(), shape, false).unwrap_err();
    assert!(err.contains("counts up to"), "{err}");

    let wrong_key = format!("{} 1 0", (key + 1) % shape.keys);
    let err = check(write_output(&[wrong_key.as_str()]).path(), shape, false).unwrap_err();
    assert!(err.contains("has key"), "{err}");

    let err = check(write_output(&["1 2"]).path(), shape, false).unwrap_err();
    assert!(err.contains("not three numbers"), "{err}");
}
