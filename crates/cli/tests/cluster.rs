//! One job across processes (`--processes N`): the job manager in the
//! command's process, N task managers as its children. The results are
//! checked independently: every committed output line of keyed-count against
//! the workload's definition (`support::check_keyed_count_output`), and the
//! task managers' partial RESULT lines summed against the reference.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// The task managers' partial results (`... part of the result: RESULT
/// name=value ...`), summed field by field (`checksum` as a wrapping sum of
/// hex): the built-in jobs' checksums are wrapping sums over keys (windows),
/// and every key is in one task manager's part.
fn summed_parts(stderr: &str) -> (String, usize) {
    let mut fields: Vec<(String, u64)> = Vec::new();
    let mut parts = 0;
    for line in stderr.lines() {
        let Some(result) = line.split("part of the result: RESULT ").nth(1) else {
            continue;
        };
        parts += 1;
        for field in result.split_whitespace() {
            let (name, value) = field.split_once('=').expect("name=value");
            let value = if name == "checksum" {
                u64::from_str_radix(value, 16).unwrap()
            } else {
                value.parse::<u64>().unwrap()
            };
            match fields.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum = sum.wrapping_add(value),
                None => fields.push((name.to_owned(), value)),
            }
        }
    }
    let text: Vec<String> = fields
        .iter()
        .map(|(name, value)| match name.as_str() {
            "checksum" => format!("{name}={value:016x}"),
            _ => format!("{name}={value}"),
        })
        .collect();
    (format!("RESULT {}", text.join(" ")), parts)
}

fn cluster_args(out: &Path, ck: &Path, records: u64, keys: u64, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "run",
        "keyed-count",
        "--records",
        &records.to_string(),
        "--keys",
        &keys.to_string(),
        "--output",
        arg(out),
        "--checkpoint-interval",
        "100ms",
        "--checkpoint-dir",
        arg(ck),
        "--parallelism",
        "3",
        "--processes",
        "3",
        "--rest",
        "off",
    ]);
    args.extend(strings(extra));
    args
}

#[test]
fn keyed_count_on_three_processes_gives_the_reference_result() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck) = (tmp.path().join("out"), tmp.path().join("ck"));
    let (records, keys) = (200_000, 5_000);
    let run = run_args(tmp.path(), &cluster_args(&out, &ck, records, keys, &[]));
    run.assert_success();
    assert!(
        run.stderr.contains("task manager 2 registered"),
        "three task managers registered: {run}"
    );
    let (summed, parts) = summed_parts(&run.stderr);
    assert_eq!(parts, 3, "one partial result per task manager: {run}");
    assert_eq!(summed, expected_keyed_count_result(records, keys), "{run}");
    // The job manager counts what its task managers reported.
    assert!(
        run.stderr
            .contains(&format!("records_in={records} records_to_sinks={records}")),
        "{run}"
    );
    let lines = committed_lines(&out);
    assert_eq!(lines.len() as u64, records, "committed output lines");
    check_keyed_count_output(&lines, records, keys);
}

/// window-count (event time, timers, window contents as keyed state) on 3
/// processes: every (key, window) once with its true count and sum.
#[test]
fn window_count_on_three_processes_gives_the_reference_result() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck) = (tmp.path().join("out"), tmp.path().join("ck"));
    let wt = support::Wt::with_records(300_000);
    let run = run_args(
        tmp.path(),
        &strings(&[
            "run",
            "window-count",
            "--records",
            "300000",
            "--output",
            arg(&out),
            "--checkpoint-interval",
            "100ms",
            "--checkpoint-dir",
            arg(&ck),
            "--parallelism",
            "3",
            "--processes",
            "3",
            "--rest",
            "off",
        ]),
    );
    run.assert_success();
    let (summed, parts) = summed_parts(&run.stderr);
    assert_eq!(parts, 3, "one partial result per task manager: {run}");
    assert_eq!(summed, wt.expected_result(), "{run}");
    support::check_window_count_output(&committed_lines(&out), &wt);
}

#[test]
fn a_task_manager_that_built_another_plan_is_refused() {
    // A task manager started by hand with other job flags than its job
    // manager's: refused at registration, naming both fingerprints.
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let logs = tmp.path().join("logs");
    let jm = start(
        tmp.path(),
        &logs,
        "jm",
        &strings(&[
            "run",
            "keyed-count",
            "--records",
            "1000",
            "--parallelism",
            "1",
            "--task-managers",
            "1",
            "--cluster-listen",
            "127.0.0.1:0",
            "--checkpoint-interval",
            "off",
            "--rest",
            "off",
        ]),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = loop {
        let stderr = jm.stderr_so_far();
        if let Some(a) = after(&stderr, "task managers on ", char::is_whitespace) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the job manager never listened: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let tm = run_args(
        tmp.path(),
        &strings(&[
            "run",
            "keyed-count",
            "--records",
            "2000",
            "--parallelism",
            "1",
            "--jobmanager",
            &address,
            "--checkpoint-interval",
            "off",
        ]),
    );
    tm.assert_failure();
    assert!(
        tm.single_error_line().contains("built plan"),
        "names the plans: {tm}"
    );
    drop(jm);
}

/// The test: `--processes 3`, one worker SIGKILLed mid-run and then
/// another; the job recovers each time from its latest checkpoint and its
/// committed output is exactly-once.
#[test]
fn sigkill_of_one_worker_and_then_another_recovers_exactly_once() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    let (records, keys) = (600_000, 20_000);
    let jm = start(
        tmp.path(),
        &logs,
        "jm",
        &cluster_args(&out, &ck, records, keys, &["--rate", "100000"]),
    );
    // The pid of task manager `index`'s current process (the last started).
    let pid_of = |stderr: &str, index: u32| -> Option<i32> {
        let marker = format!("started task manager {index} (pid ");
        let (at, _) = stderr.match_indices(&marker).last()?;
        after(&stderr[at..], &marker, |c| c == ')')?.parse().ok()
    };
    let deployments = |stderr: &str| stderr.matches("deployed on task managers").count();
    let wait_for = |what: &str, done: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let stderr = jm.stderr_so_far();
            if done(&stderr) {
                return stderr;
            }
            assert!(Instant::now() < deadline, "never {what}: {stderr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for victim in [1u32, 2] {
        let stderr = wait_for("deployed", &|s| deployments(s) > 0);
        let attempts = deployments(&stderr);
        // A checkpoint of this attempt completed: the kill has something
        // to recover from.
        let before = newest_checkpoint(&ck).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(120);
        while newest_checkpoint(&ck).unwrap_or(0) <= before {
            assert!(
                Instant::now() < deadline,
                "no checkpoint completed: {}",
                jm.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = pid_of(&jm.stderr_so_far(), victim).expect("the victim's pid is logged");
        // SAFETY: kill(2) has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        wait_for("a redeployment", &|s| deployments(s) > attempts);
    }
    let run = jm.wait();
    run.assert_success();
    assert!(
        run.stderr.matches("job failed (").count() >= 2,
        "two attempts failed and restarted: {run}"
    );
    let lines = committed_lines(&out);
    assert_eq!(lines.len() as u64, records, "committed output lines: {run}");
    check_keyed_count_output(&lines, records, keys);
}

/// Unaligned checkpoints across processes (issue 18, step 7: notices of
/// unaligned barriers cross as announce frames, ahead of the data and
/// without credit): keyed-count on two task managers, every hash edge
/// crossing between them, its sink throttled so that the channels are full;
/// once a checkpoint holding in-flight records (`.channels`) completed,
/// task manager 1 is SIGKILLed; the job restores it and ends, and its
/// committed output is exactly-once by the independent check. The job's
/// final report says its checkpoints were unaligned and persisted in-flight
/// bytes.
#[test]
fn unaligned_checkpoints_across_processes_survive_sigkill_exactly_once() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    let (records, keys) = (400_000u64, 10_000u64);
    let args = strings(&[
        "run",
        "keyed-count",
        "--records",
        &records.to_string(),
        "--keys",
        &keys.to_string(),
        "--output",
        arg(&out),
        "--checkpoint-interval",
        "200ms",
        "--checkpoint-dir",
        arg(&ck),
        "--parallelism",
        "2",
        "--processes",
        "2",
        "--rest",
        "off",
        "--rate",
        "200000",
        "--sink-rate",
        "40000",
        "--checkpointing",
        "unaligned",
    ]);
    let jm = start(tmp.path(), &logs, "jm", &args);
    let deployments = |stderr: &str| stderr.matches("deployed on task managers").count();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "never {what}: {}",
                jm.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("deployed", &|| deployments(&jm.stderr_so_far()) > 0);
    // An unaligned checkpoint with in-flight records completed: the kill
    // lands while they complete, and the restore replays channel state.
    wait_for("a checkpoint with channel state", &|| {
        newest_has_channel_state(&ck)
    });
    let stderr = jm.stderr_so_far();
    let marker = "started task manager 1 (pid ";
    let (at, _) = stderr
        .match_indices(marker)
        .last()
        .expect("task manager 1's pid is logged");
    let pid: i32 = after(&stderr[at..], marker, |c| c == ')')
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_for("a redeployment", &|| deployments(&jm.stderr_so_far()) > 1);
    let run = jm.wait();
    run.assert_success();
    assert!(
        run.stderr.contains("job failed ("),
        "the attempt with the killed task manager failed and restarted: {run}"
    );
    let lines = committed_lines(&out);
    assert_eq!(lines.len() as u64, records, "committed output lines: {run}");
    check_keyed_count_output(&lines, records, keys);
    // The final report: unaligned checkpoints that persisted in-flight bytes.
    let report = run
        .stderr
        .lines()
        .rfind(|l| l.contains(" checkpoints job_id="))
        .unwrap_or_else(|| panic!("no checkpoint report: {run}"));
    let report = format!("{report}\n");
    let field = |name: &str| -> u64 {
        after(&report, &format!(" {name}="), |c: char| !c.is_ascii_digit())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    assert!(field("unaligned") > 0, "{report}");
    assert!(field("in_flight_persisted_bytes") > 0, "{report}");
}

/// The checkpoint storage of a test: the local S3 server's
/// (`FLOWSTATE_TEST_S3_URL`, under a prefix of the test's own) when there is
/// one, else a directory (a failure if `FLOWSTATE_REQUIRE_S3=1`).
fn checkpoint_storage(tmp: &Path, test: &str) -> String {
    match std::env::var("FLOWSTATE_TEST_S3_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            format!("{}/{test}-{stamp}", url.trim_end_matches('/'))
        }
        _ => {
            assert!(
                std::env::var("FLOWSTATE_REQUIRE_S3").map_or(true, |v| v != "1"),
                "FLOWSTATE_REQUIRE_S3=1 but FLOWSTATE_TEST_S3_URL is not set"
            );
            eprintln!("!!! {test}: FLOWSTATE_TEST_S3_URL is not set: checkpoints in a directory");
            tmp.join("ck").display().to_string()
        }
    }
}

/// A savepoint of a job on 2 task managers (SIGTERM with `--on-signal
/// savepoint`) restored on 3, at parallelism 3 (key groups redistributed),
/// with checkpoints on the local S3 server: the output of both runs
/// together is exactly-once and complete.
#[test]
fn a_savepoint_on_two_processes_restores_on_three() {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, sp, logs) = (
        tmp.path().join("out"),
        tmp.path().join("sp"),
        tmp.path().join("logs"),
    );
    let ck = checkpoint_storage(tmp.path(), "cluster-savepoint");
    let (records, keys) = (400_000u64, 10_000u64);
    let args = |processes: &str, extra: &[&str]| {
        let mut args = strings(&[
            "run",
            "keyed-count",
            "--records",
            &records.to_string(),
            "--keys",
            &keys.to_string(),
            "--output",
            arg(&out),
            "--checkpoint-interval",
            "100ms",
            "--checkpoint-dir",
            &ck,
            "--parallelism",
            processes,
            "--processes",
            processes,
            "--rest",
            "off",
        ]);
        args.extend(strings(extra));
        args
    };
    let first = start(
        tmp.path(),
        &logs,
        "first",
        &args(
            "2",
            &[
                "--rate",
                "100000",
                "--on-signal",
                "savepoint",
                "--savepoint-dir",
                arg(&sp),
            ],
        ),
    );
    // Running, with a checkpoint done: then the stop.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !first.stderr_so_far().contains("deployed on task managers")
        || !first.stderr_so_far().contains("part of attempt") && committed(&out) == 0
    {
        assert!(
            Instant::now() < deadline,
            "never ran: {}",
            first.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.signal(libc::SIGTERM);
    let stopped = first.wait();
    stopped.assert_success();
    let location = stopped
        .stderr
        .lines()
        .find_map(|l| l.split("with savepoint ").nth(1))
        .unwrap_or_else(|| panic!("no savepoint: {stopped}"))
        .trim()
        .to_owned();
    assert!(
        Path::new(&location).join("_metadata").is_file(),
        "{stopped}"
    );
    let before = committed(&out);
    assert!(
        (before as u64) < records,
        "the first run stopped before the end ({before} lines): {stopped}"
    );
    let resumed = run_args(tmp.path(), &args("3", &["--restore", &location]));
    resumed.assert_success();
    assert!(
        resumed.stderr.contains("task manager 2 registered"),
        "{resumed}"
    );
    let lines = committed_lines(&out);
    assert_eq!(lines.len() as u64, records, "committed output lines");
    check_keyed_count_output(&lines, records, keys);
}

/// Committed output lines so far (files not starting with a dot).
fn committed(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().count())
        .sum()
}

/// `jobmanager JOB` and `taskmanager JOB` (Flink's shape) insist on their
/// role's flag, naming it, with the usage exit code; run nothing otherwise.
#[test]
fn jobmanager_and_taskmanager_name_the_flag_their_role_needs() {
    let tmp = tempdir();
    let run = flowstate(
        tmp.path(),
        &["jobmanager", "keyed-count", "--records", "10"],
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--task-managers N"), "{run}");
    let run = flowstate(
        tmp.path(),
        &["taskmanager", "keyed-count", "--records", "10"],
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--jobmanager HOST:PORT"), "{run}");
    assert!(
        flowstate(tmp.path(), &["jobmanager", "--help"])
            .stdout
            .contains("keyed-count")
    );
}
