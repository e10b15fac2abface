//! Apache Flink's own command-line client drives flowstate jobs through their
//! HTTP API (issue 15): `flink list`, `flink savepoint`, `flink stop
//! --savepointPath` and `flink cancel`, each with `-m 127.0.0.1:<port>`
//! against a real `flowstate run` job. The client is `bin/flink` of the Flink
//! distribution inside the PyFlink package, installed by `scripts/test.sh`
//! into `~/.cache/flowstate-tools/flink-venv` (or named by
//! `FLOWSTATE_FLINK_CLI`); without it the test is skipped, unless
//! `FLOWSTATE_REQUIRE_FLINK_CLI=1` (CI) makes that a failure. Java's JSON
//! mapper in that client fails on any field or status it does not know, so a
//! pass proves the documents it reads are Flink's.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Served, arg, flowstate, start_served, strings, tempdir};

/// The Flink CLI, or `None` (the test is skipped) when it is not installed
/// and not required.
fn flink_cli() -> Option<PathBuf> {
    let cli = match std::env::var_os("FLOWSTATE_FLINK_CLI") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
            home.join(
                ".cache/flowstate-tools/flink-venv/lib/python3.11/site-packages/pyflink/bin/flink",
            )
        }
    };
    if cli.is_file() {
        return Some(cli);
    }
    if std::env::var("FLOWSTATE_REQUIRE_FLINK_CLI").as_deref() == Ok("1") {
        panic!(
            "FLOWSTATE_REQUIRE_FLINK_CLI=1 but there is no Flink CLI at {}: run scripts/test.sh",
            cli.display()
        );
    }
    eprintln!(
        "skipped: no Flink CLI at {} (scripts/test.sh installs it)",
        cli.display()
    );
    None
}

/// `flink ARGS`; its exit status and combined output.
fn flink(cli: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(cli)
        .args(args)
        // The client's own configuration and logs stay out of the package.
        .env("FLINK_LOG_DIR", std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The savepoint path a successful `flink savepoint`/`stop` printed.
fn savepoint_path(output: &str) -> PathBuf {
    let line = output
        .lines()
        .find_map(|l| l.split_once("Savepoint completed. Path: "))
        .unwrap_or_else(|| panic!("no savepoint path in:\n{output}"))
        .1;
    PathBuf::from(line.trim())
}

/// A keyed count that runs until stopped (a throttled, practically endless
/// source), checkpointing every second.
fn endless_job(root: &Path, name: &str) -> Served {
    let args = strings(&[
        "run",
        "keyed-count",
        "--records",
        "1000000000",
        "--keys",
        "100",
        "--rate",
        "2000",
        "--parallelism",
        "2",
        "--checkpoint-interval",
        "1s",
        "--checkpoint-dir",
        arg(&root.join("checkpoints")),
        "--savepoint-dir",
        arg(&root.join("savepoints")),
    ]);
    start_served(root, &root.join("logs"), name, &args)
}

fn is_flink_job_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn flinks_cli_lists_savepoints_stops_and_cancels_flowstate_jobs() {
    let Some(cli) = flink_cli() else {
        return;
    };
    let dir = tempdir();
    let root = dir.path();
    std::fs::create_dir_all(root.join("logs")).unwrap();
    let mut job = endless_job(root, "flink-cli-stop");
    assert!(is_flink_job_id(&job.job), "job id {}", job.job);
    job.wait_for_records(100);
    let m = job.addr.clone();

    // `flink list`: Flink's MultipleJobsDetails.
    let (ok, out) = flink(&cli, &["list", "-m", &m]);
    assert!(ok, "flink list failed:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&job.job) && l.contains("keyed-count (RUNNING)")),
        "flink list does not show the running job:\n{out}"
    );

    // `flink savepoint JID DIR`: the savepoint is there and restores.
    // Under the job's --savepoint-dir: the only targets it accepts.
    let targets = root.join("savepoints").join("by-flink");
    let (ok, out) = flink(&cli, &["savepoint", "-m", &m, &job.job, arg(&targets)]);
    assert!(ok, "flink savepoint failed:\n{out}");
    let savepoint = savepoint_path(&out);
    assert!(
        savepoint.starts_with(&targets) && savepoint.join("_metadata").is_file(),
        "no savepoint at {}:\n{out}",
        savepoint.display()
    );
    flowstate(
        root,
        &[
            "check-savepoint",
            arg(&savepoint),
            "keyed-count",
            "--records",
            "1000000000",
            "--keys",
            "100",
            "--parallelism",
            "2",
        ],
    )
    .assert_success();

    // `flink stop --savepointPath DIR JID`: the job ends with that savepoint,
    // successfully.
    let (ok, out) = flink(
        &cli,
        &["stop", "-m", &m, "--savepointPath", arg(&targets), &job.job],
    );
    assert!(ok, "flink stop failed:\n{out}");
    let last = savepoint_path(&out);
    assert!(
        last.join("_metadata").is_file() && last != savepoint,
        "{out}"
    );
    let run = job.process.wait();
    run.assert_success();
    assert!(
        run.stderr
            .contains(&format!("stopped with savepoint {}", last.display())),
        "{run}"
    );

    // `flink cancel JID` on another job: it ends, cancelled.
    let job = endless_job(root, "flink-cli-cancel");
    let (ok, out) = flink(&cli, &["cancel", "-m", &job.addr, &job.job]);
    assert!(ok, "flink cancel failed:\n{out}");
    assert!(out.contains(&format!("Cancelled job {}", job.job)), "{out}");
    let run = job.process.wait();
    run.assert_failure();
    assert!(run.stderr.contains("was cancelled"), "{run}");
}
