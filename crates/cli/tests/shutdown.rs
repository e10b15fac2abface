//! Graceful shutdown of `flowstate run`: SIGTERM and SIGINT stop the job (at
//! a final checkpoint by default, or with a savepoint), the process exits 0
//! and prints the command that resumes it, and the resumed run's committed
//! output passes the independent exactly-once check. A second signal exits
//! at once, and `--restore latest` is still exactly-once after it.
//!
//! No test relies on timing: signals are sent only after the job reported a
//! completed checkpoint through its HTTP API (or announced the first signal
//! on stderr), and every wait polls with a generous deadline.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{
    API_DEADLINE, Json, Process, Run, Served, arg, check_keyed_count_output, committed_lines,
    expected_keyed_count_result, http, one_at_a_time, start, start_served, strings, tempdir,
};

const RECORDS: u64 = 200_000;
const KEYS: u64 = 5_000;
/// Slow enough that the job is still running when it is signalled (the
/// signal comes right after its first completed checkpoint).
const RATE: &str = "20000";

fn job_args(out: &Path, ck: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "run",
        "keyed-count",
        "--records",
        &RECORDS.to_string(),
        "--keys",
        &KEYS.to_string(),
        "--rate",
        RATE,
        "--output",
        arg(out),
        "--checkpoint-interval",
        "200ms",
        "--checkpoint-dir",
        arg(ck),
    ]);
    args.extend(strings(extra));
    args
}

/// Waits until the served job has completed a checkpoint.
fn wait_for_a_checkpoint(served: &mut Served) {
    let deadline = Instant::now() + API_DEADLINE;
    loop {
        if let Some(run) = served.process.ended() {
            panic!("the job ended before its first checkpoint: {run}");
        }
        let answer = http(
            &served.addr,
            "GET",
            &format!("/jobs/{}/checkpoints", served.job),
            None,
        );
        answer.expect_status(200);
        if answer.json().field("counts").field("completed").u64() >= 1 {
            return;
        }
        assert!(Instant::now() < deadline, "no completed checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until stderr holds `text`.
fn wait_for_stderr(process: &mut Process, text: &str) {
    let deadline = Instant::now() + API_DEADLINE;
    while !process.stderr_so_far().contains(text) {
        if let Some(run) = process.ended() {
            panic!("the run ended before saying '{text}': {run}");
        }
        assert!(Instant::now() < deadline, "no '{text}' on stderr");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The arguments of the resume command a stopped run printed (without the
/// program), checked to end in `--restore <expected>`.
fn resume_args(run: &Run, restore_prefix: &str) -> Vec<String> {
    let line = run
        .stderr
        .lines()
        .find_map(|l| l.split("resume with: ").nth(1))
        .unwrap_or_else(|| panic!("no resume command: {run}"));
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let n = words.len();
    assert!(n >= 3 && words[n - 2] == "--restore", "{line}");
    assert!(words[n - 1].starts_with(restore_prefix), "{line}");
    assert!(
        words.iter().filter(|w| *w == "--restore").count() == 1,
        "{line}"
    );
    words[1..].to_vec()
}

/// Runs the resume command to the end and checks the result and the
/// committed output against the independent checker.
fn resume_is_exactly_once(cwd: &Path, logs: &Path, args: &[String], out: &Path) {
    let resumed = start(cwd, logs, "resumed", args).wait();
    resumed.assert_success();
    assert_eq!(
        resumed.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{resumed}"
    );
    check_keyed_count_output(&committed_lines(out), RECORDS, KEYS);
}

#[test]
fn sigterm_stops_at_a_checkpoint_exits_0_and_the_resumed_run_is_exactly_once() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    let mut served = start_served(tmp.path(), &logs, "first", &job_args(&out, &ck, &[]));
    wait_for_a_checkpoint(&mut served);
    served.process.signal(libc::SIGTERM);
    let stopped = served.process.wait();
    stopped.assert_success();
    assert!(
        stopped
            .stderr
            .contains("SIGTERM: stopping the job at a final checkpoint"),
        "{stopped}"
    );
    assert!(stopped.error_lines().is_empty(), "{stopped}");
    // It stopped early: not every record was read.
    assert!(
        !stopped.stdout.contains(&format!("records={RECORDS} ")),
        "the job ran to its end before the signal: {stopped}"
    );
    let args = resume_args(&stopped, "latest");
    resume_is_exactly_once(tmp.path(), &logs, &args, &out);
}

#[test]
fn a_second_sigint_exits_at_once_and_restore_latest_is_still_exactly_once() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    let args = job_args(&out, &ck, &["--rest", "off"]);
    // The hold keeps the run stopping after the first signal, so the second
    // certainly finds it still running.
    let mut first = support::start_env(
        tmp.path(),
        &logs,
        "first",
        &args,
        &[("FLOWSTATE_TEST_HOLD_STOP", "1")],
    );
    // A completed checkpoint: its output is committed.
    let deadline = Instant::now() + API_DEADLINE;
    while !out.is_dir() || support::visible_entries(&out).is_empty() {
        if let Some(run) = first.ended() {
            panic!("the run ended before committing output: {run}");
        }
        assert!(Instant::now() < deadline, "nothing committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.signal(libc::SIGINT);
    wait_for_stderr(&mut first, "SIGINT: stopping the job");
    first.signal(libc::SIGINT);
    let run = first.wait();
    assert_eq!(run.code, Some(130), "{run}");
    assert!(
        run.stderr.contains("SIGINT again: exiting at once"),
        "{run}"
    );
    assert!(!run.stdout.contains("RESULT"), "{run}");
    let mut resume = args;
    resume.extend(strings(&["--restore", "latest"]));
    resume_is_exactly_once(tmp.path(), &logs, &resume, &out);
}

#[test]
fn on_signal_savepoint_leaves_a_savepoint_that_restores() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, sp, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("sp"),
        tmp.path().join("logs"),
    );
    let args = job_args(
        &out,
        &ck,
        &["--on-signal", "savepoint", "--savepoint-dir", arg(&sp)],
    );
    let mut served = start_served(tmp.path(), &logs, "first", &args);
    wait_for_a_checkpoint(&mut served);
    served.process.signal(libc::SIGTERM);
    let stopped = served.process.wait();
    stopped.assert_success();
    assert!(
        stopped
            .stderr
            .contains("SIGTERM: stopping the job with a savepoint"),
        "{stopped}"
    );
    let resume = resume_args(&stopped, &sp.display().to_string());
    let savepoint = Path::new(&resume[resume.len() - 1]);
    assert!(savepoint.join("_metadata").is_file(), "{stopped}");
    resume_is_exactly_once(tmp.path(), &logs, &resume, &out);
}

/// Without checkpoints or a savepoint directory a signal cancels the job,
/// saying so, and the process still exits 0.
#[test]
fn without_checkpoints_a_signal_cancels_saying_so() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, logs) = (tmp.path().join("out"), tmp.path().join("logs"));
    let args = strings(&[
        "run",
        "keyed-count",
        "--records",
        "100000000",
        "--rate",
        RATE,
        "--output",
        arg(&out),
        "--checkpoint-interval",
        "off",
    ]);
    let mut served = start_served(tmp.path(), &logs, "first", &args);
    served.wait_for_records(1);
    served.process.signal(libc::SIGTERM);
    let run = served.process.wait();
    run.assert_success();
    assert!(
        run.stderr
            .contains("takes no checkpoints (--checkpoint-interval off)")
            && run.stderr.contains("cancelling it"),
        "{run}"
    );
    assert!(!run.stderr.contains("resume with"), "{run}");
}
