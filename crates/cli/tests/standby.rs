//! A standby job manager elected through etcd (`--ha-etcd`,
//! docs/high-availability.md): job manager A leads a keyed-count job of two
//! task managers started separately, B stands by; A is SIGKILLed after a
//! checkpoint completed; B wins the election once A's etcd lease expired,
//! resumes A's job (same job id) from its latest checkpoint, the task
//! managers find B in etcd and register again with their process indices,
//! and the job finishes. Its committed output is checked independently
//! (`support::check_keyed_count_output`): exactly-once and complete.
//!
//! The etcd server comes from `eval "$(scripts/etcd-server.sh)"`
//! (`FLOWSTATE_TEST_ETCD_URL`); without one the test prints a notice and
//! passes, unless `FLOWSTATE_REQUIRE_ETCD=1` (as `scripts/test.sh` sets).

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The server's URL, or `None` (with a notice) when the test may skip.
fn etcd_url(test: &str) -> Option<String> {
    match std::env::var("FLOWSTATE_TEST_ETCD_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("FLOWSTATE_REQUIRE_ETCD").is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: FLOWSTATE_REQUIRE_ETCD=1 but FLOWSTATE_TEST_ETCD_URL is not set; \
                     start a server with eval \"$(scripts/etcd-server.sh)\""
                );
            }
            eprintln!(
                "{test}: skipped: FLOWSTATE_TEST_ETCD_URL is not set \
                 (eval \"$(scripts/etcd-server.sh)\" starts a server)"
            );
            None
        }
    }
}

/// The process indices a task manager registered with, in order.
fn registrations(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(" registered with "))
        .filter_map(|l| after(l, "task manager ", char::is_whitespace))
        .collect()
}

#[test]
fn sigkill_of_the_leading_job_manager_lets_the_standby_finish_the_job_exactly_once() {
    let Some(url) = etcd_url("sigkill_of_the_leading_job_manager") else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (out, ck, logs) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    let (records, keys) = (400_000u64, 10_000u64);
    let ha_id = format!(
        "standby-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    // Every process runs the same program with the same job flags.
    let job = strings(&[
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
        arg(&ck),
        "--parallelism",
        "2",
        "--rate",
        "40000",
        "--rest",
        "off",
        "--ha-etcd",
        &url,
        "--ha-id",
        &ha_id,
    ]);
    // Flink's shape: `jobmanager JOB ...` and `taskmanager JOB ...` (`run`
    // with a role that must be given).
    let role = |role: &str| {
        let mut args = job.clone();
        args[0] = role.to_owned();
        args
    };
    let job_manager = [
        role("jobmanager"),
        strings(&["--task-managers", "2", "--cluster-listen", "127.0.0.1:0"]),
    ]
    .concat();
    let task_manager = role("taskmanager");
    let a = start(tmp.path(), &logs, "jm-a", &job_manager);
    wait_for(&a, "elected", |s| s.contains("elected leader of job"));
    let b = start(tmp.path(), &logs, "jm-b", &job_manager);
    wait_for(&b, "standing by", |s| {
        s.contains("standby: the job manager at")
    });
    let tms: Vec<Process> = (0..2)
        .map(|i| start(tmp.path(), &logs, &format!("tm-{i}"), &task_manager))
        .collect();
    wait_for(&a, "deployed", |s| s.contains("deployed on task managers"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while newest_checkpoint(&ck).is_none() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed: {}",
            a.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ending, a_run) = a.kill();
    assert_eq!(ending, Ending::Killed, "A ended before the kill: {a_run}");
    let job_id = after(&a_run.stderr, "job_id=", char::is_whitespace)
        .expect("A logged its job id")
        .trim_matches('"')
        .to_owned();

    let b_run = b.wait();
    b_run.assert_success();
    assert!(
        b_run.stderr.contains(&format!("taking over job {job_id}")),
        "B resumed A's job {job_id}: {b_run}"
    );
    assert!(
        b_run.stderr.contains("read and verified"),
        "B restored from a checkpoint: {b_run}"
    );
    for tm in tms {
        let run = tm.wait();
        run.assert_success();
        let indices = registrations(&run.stderr);
        assert_eq!(
            indices.len(),
            2,
            "registered with A, then with B: {indices:?} {run}"
        );
        assert_eq!(indices[0], indices[1], "the same process index: {run}");
    }
    let lines = committed_lines(&out);
    assert_eq!(
        lines.len() as u64,
        records,
        "committed output lines: {b_run}"
    );
    check_keyed_count_output(&lines, records, keys);
}

/// Waits until `process`'s stderr satisfies `done` (generous deadline).
fn wait_for(process: &Process, what: &str, done: impl Fn(&str) -> bool) -> String {
    wait_for_stderr(process, what, Duration::from_secs(120), |stderr| {
        done(stderr).then(|| stderr.to_owned())
    })
}
