//! One owner per job directory, through the `flowstate` binary (issue 11,
//! item 7): a second run of the same job on the same `--checkpoint-dir` is
//! refused while the first runs, and a run killed with SIGKILL is taken over
//! at once by its restart (its owner is a dead process of this machine).
//!
//! Results are checked with the independent reference implementation in
//! `support`. The lease's paths and log lines are read as text: the checker
//! shares no code with what it checks.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{
    arg, check_keyed_count_output, committed_lines, expected_keyed_count_result, one_at_a_time,
    run_args, start, strings, tempdir,
};

/// Longest wait for a run's first checkpoint.
const FIRST_CHECKPOINT_WAIT: Duration = Duration::from_secs(120);

/// The first completed checkpoint under `ck`: `(job dir, chk dir)`.
fn completed_checkpoint(ck: &Path) -> Option<(PathBuf, PathBuf)> {
    for job in std::fs::read_dir(ck).ok()?.flatten() {
        for chk in std::fs::read_dir(job.path()).ok()?.flatten() {
            let name = chk.file_name().to_string_lossy().into_owned();
            if name.starts_with("chk-") && chk.path().join("_metadata").is_file() {
                return Some((job.path(), chk.path()));
            }
        }
    }
    None
}

fn wait_for_checkpoint(ck: &Path, running: &mut support::Process) -> PathBuf {
    let deadline = Instant::now() + FIRST_CHECKPOINT_WAIT;
    loop {
        if let Some((job, _)) = completed_checkpoint(ck) {
            return job;
        }
        if let Some(run) = running.ended() {
            panic!("the first run ended before its first checkpoint: {run}");
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint within {FIRST_CHECKPOINT_WAIT:?}: {}",
            running.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lease files of a job directory (names only).
fn lease_files(job: &Path) -> Vec<String> {
    match std::fs::read_dir(job.join("_lease")) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
        Err(_) => Vec::new(),
    }
}

fn keyed_count_args(records: u64, keys: u64, rate: u64, out: &Path, ck: &Path) -> Vec<String> {
    strings(&[
        "run",
        "keyed-count",
        "--records",
        &records.to_string(),
        "--keys",
        &keys.to_string(),
        "--rate",
        &rate.to_string(),
        "--output",
        arg(out),
        "--checkpoint-interval",
        "200ms",
        "--checkpoint-dir",
        arg(ck),
        "--parallelism",
        "2",
        "--rest",
        "off",
    ])
}

/// Two runs of one job at once: the second (`--restore latest`, so the same
/// job id) is refused with one error naming the lease and its owner, and
/// writes nothing; the first ends with the right result and exactly-once
/// output.
#[test]
fn a_second_run_of_the_same_job_is_refused_while_the_first_runs() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    // About 20 s at the throttled rate: the second run is refused within a
    // second or two of its start, long before the first can end.
    let (records, keys) = (300_000u64, 50_000u64);
    let args = keyed_count_args(records, keys, 15_000, &out, &ck);
    let mut first = start(tmp.path(), &logs, "first", &args);
    let job = wait_for_checkpoint(&ck, &mut first);
    let job_id = job.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        lease_files(&job),
        vec!["00000000000000000001"],
        "the running job holds generation 1 of its lease"
    );
    let outputs_before: Vec<String> = support::visible_entries(&out);

    let mut second_args = args.clone();
    second_args.extend(strings(&["--restore", "latest"]));
    let second = run_args(tmp.path(), &second_args);
    second.assert_failure();
    let error = second.single_error_line();
    for part in [
        format!("job {job_id} is already running"),
        format!("{job_id}/_lease/00000000000000000001"),
        " pid ".to_owned(),
        "last renewed".to_owned(),
        "--take-over-lease".to_owned(),
    ] {
        assert!(error.contains(&part), "{part:?} missing: {error}");
    }
    assert!(
        first.ended().is_none(),
        "the first run must still run when the second is refused (make it longer): {}",
        first.stderr_so_far()
    );
    // The refused run wrote nothing: no restore pointer, no lease of its
    // own, no published output.
    assert!(!job.join("_restored_from").exists());
    assert_eq!(lease_files(&job), vec!["00000000000000000001"]);
    let outputs_now = support::visible_entries(&out);
    assert!(
        outputs_before.iter().all(|f| outputs_now.contains(f)),
        "published files vanished: {outputs_before:?} -> {outputs_now:?}"
    );

    let first = first.wait();
    first.assert_success();
    assert_eq!(
        first.result_line(),
        expected_keyed_count_result(records, keys)
    );
    check_keyed_count_output(&committed_lines(&out), records, keys);
    // Released at the end: the directory is free again.
    assert!(lease_files(&job).is_empty(), "{:?}", lease_files(&job));
}

/// A run killed with SIGKILL leaves its lease behind; the restart with
/// `--restore latest` right after takes it over at once (its owner is a
/// process of this machine that no longer exists), continues the job and
/// ends with exactly-once output.
#[test]
fn a_killed_run_is_taken_over_at_once_by_its_restart() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    let (records, keys) = (200_000u64, 20_000u64);
    let args = keyed_count_args(records, keys, 50_000, &out, &ck);
    let mut first = start(tmp.path(), &logs, "killed", &args);
    let job = wait_for_checkpoint(&ck, &mut first);
    let (ending, run) = first.kill();
    assert_eq!(ending, support::Ending::Killed, "{run}");
    assert_eq!(
        lease_files(&job),
        vec!["00000000000000000001"],
        "the killed run's lease stays behind"
    );

    let mut restart = args.clone();
    restart.extend(strings(&["--restore", "latest"]));
    let second = run_args(tmp.path(), &restart);
    second.assert_success();
    assert_eq!(
        second.result_line(),
        expected_keyed_count_result(records, keys)
    );
    assert!(
        second.stderr.contains("took over the lease of job")
            && second.stderr.contains("no longer exists on this machine"),
        "the restart must take the dead run's lease over at once: {second}"
    );
    check_keyed_count_output(&committed_lines(&out), records, keys);
    assert!(lease_files(&job).is_empty(), "{:?}", lease_files(&job));
}

/// `--take-over-lease` means nothing for a new job id.
#[test]
fn take_over_lease_needs_restore_latest() {
    let tmp = tempdir();
    let run = support::flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "10",
            "--checkpoint-dir",
            arg(&tmp.path().join("ck")),
            "--take-over-lease",
        ],
    );
    run.assert_failure();
    assert!(
        run.single_error_line()
            .contains("--take-over-lease only applies with --restore latest"),
        "{run}"
    );
}
