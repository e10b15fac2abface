//! The `flowstate::app` runner through a real binary built with it
//! (`src/bin/app_test.rs`): the job's own flags beside the runtime flags, the
//! result line, the configuration file (`--config`) and its precedence under
//! the command line, and clear errors for an unknown key, a bad value and a
//! failing build.

use std::path::Path;
use std::process::{Command, Output};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn app(cwd: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_flowstate-app-test"))
        .args(args)
        .current_dir(cwd)
        .env_remove("FLOWSTATE_LOG")
        .output()
        .expect("cannot start the test binary");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// No checkpoint storage, no HTTP API: nothing shared with other tests.
const QUIET: [&str; 4] = ["--checkpoint-interval", "off", "--rest", "off"];

fn with_quiet<'a>(args: &[&'a str]) -> Vec<&'a str> {
    args.iter().copied().chain(QUIET).collect()
}

#[test]
fn the_jobs_flags_and_the_runtime_flags_run_it_and_print_its_result_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = app(
        tmp.path(),
        &with_quiet(&["--records", "100", "--offset", "5", "--parallelism", "2"]),
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout, "RESULT updates=100 offset=5 parallelism=2\n",
        "{run}"
    );
    // The same log lines as `flowstate run`.
    assert!(run.stderr.contains("job app-test finished"), "{run}");
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("job.toml");
    std::fs::write(
        &file,
        "# runtime and job keys alike\n\
         parallelism = 3\n\
         offset = 7\n\
         records = 50\n\
         checkpoint-interval = \"off\"\n\
         rest = \"off\"\n\
         allow-fallback-duplicates = true\n\
         rest-allowed-host = [\"a.example\", \"b.example\"]\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let run = app(tmp.path(), &["--config", config]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout, "RESULT updates=50 offset=7 parallelism=3\n",
        "{run}"
    );
    let run = app(
        tmp.path(),
        &[
            "--parallelism",
            "1",
            &format!("--config={config}"),
            "--records",
            "20",
        ],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout, "RESULT updates=20 offset=7 parallelism=1\n",
        "{run}"
    );
}

#[test]
fn an_unknown_key_or_a_bad_value_is_an_error_naming_the_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("paralelism = 2\n", "unknown key 'paralelism'"),
        ("parallelism = \"two\"\n", "'two'"),
        ("min-pause = \"1x\"\n", "min-pause"),
        ("incremental = \"yes\"\n", "'incremental' is true or false"),
        ("mode = \"twice\"\n", "'twice'"),
        ("checkpointing = \"sometimes\"\n", "'sometimes'"),
        (
            "unaligned-max-inflight = \"2GiB\"\n",
            "between 1MiB and 1GiB",
        ),
        ("aligned-checkpoint-timeout = \"soon\"\n", "soon"),
        ("config = \"other.toml\"\n", "unknown key 'config'"),
        ("parallelism = [\n", "job.toml"),
    ];
    for (text, expected) in cases {
        let file = tmp.path().join("job.toml");
        std::fs::write(&file, text).unwrap();
        let run = app(
            tmp.path(),
            &with_quiet(&["--config", file.to_str().unwrap()]),
        );
        assert_eq!(run.code, Some(2), "{text}: {run}");
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with("app-test: error: "))
            .unwrap_or_else(|| panic!("{text}: no error line: {run}"));
        assert!(
            line.contains(file.to_str().unwrap()) && line.contains(expected),
            "{text}: {line}"
        );
        if text.contains(" = ") && !text.ends_with("[\n") {
            let key = text.split(' ').next().unwrap();
            assert!(line.contains(key), "{text}: the key is named: {line}");
        }
        assert!(run.stdout.is_empty(), "{run}");
    }
    let run = app(tmp.path(), &["--config", "missing.toml"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("missing.toml"), "{run}");
}

/// The unaligned checkpoint keys are flags like any other: the checks of
/// flag combinations see them (exit 2, one error line naming the flags).
#[test]
fn unaligned_checkpoint_keys_are_checked_with_the_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "checkpointing = \"unaligned\"\nmode = \"at-least-once\"\n",
            "--checkpointing unaligned needs --mode exactly-once, not at-least-once",
        ),
        (
            "aligned-checkpoint-timeout = \"1s\"\n",
            "--aligned-checkpoint-timeout only applies with --checkpointing unaligned",
        ),
    ];
    for (text, expected) in cases {
        let file = tmp.path().join("job.toml");
        std::fs::write(&file, text).unwrap();
        let run = app(
            tmp.path(),
            &with_quiet(&["--config", file.to_str().unwrap()]),
        );
        assert_eq!(run.code, Some(2), "{text}: {run}");
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with("app-test: error: ") && l.contains(expected)),
            "{text}: {run}"
        );
    }
}

#[test]
fn a_failing_build_exits_1_with_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = app(tmp.path(), &with_quiet(&["--fail-build", "no cards today"]));
    assert_eq!(run.code, Some(1), "{run}");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("error:"))
        .collect();
    assert_eq!(errors, ["app-test: error: no cards today"], "{run}");
}

/// The one completed checkpoint under `dir` (`<job id>/chk-<n>`).
fn only_checkpoint(dir: &Path) -> std::path::PathBuf {
    let mut found = Vec::new();
    for job in std::fs::read_dir(dir).unwrap() {
        let job = job.unwrap().path();
        if !job.is_dir() {
            continue;
        }
        for chk in std::fs::read_dir(&job).unwrap() {
            let chk = chk.unwrap().path();
            if chk.join("_metadata").is_file() {
                found.push(chk);
            }
        }
    }
    assert_eq!(found.len(), 1, "one completed checkpoint: {found:?}");
    found.remove(0)
}

/// A user's program records its own flags as the job's parameters in every
/// snapshot without writing a line for it; a restore with other values
/// fails naming each one (unless --allow-parameter-change), and
/// `--check-savepoint` compares a snapshot with the job the flags build,
/// running nothing: exit 0 when a restore would succeed, 1 (naming the
/// difference, as a table or JSON) when not, 2 when it cannot be read.
#[test]
fn the_jobs_flags_are_its_recorded_parameters_and_check_savepoint_compares_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoints");
    let dir_arg = dir.to_str().unwrap();
    let base = ["--checkpoint-dir", dir_arg, "--rest", "off"];
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(base.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |extra: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        app(tmp.path(), &args)
    };
    let first = run(&[
        "--records",
        "100",
        "--offset",
        "5",
        "--checkpoint-interval",
        "1s",
    ]);
    assert_eq!(first.code, Some(0), "{first}");
    let chk = only_checkpoint(&dir);
    let chk_arg = chk.to_str().unwrap();

    let changed = run(&["--records", "100", "--offset", "6", "--restore", "latest"]);
    assert_eq!(changed.code, Some(1), "{changed}");
    assert!(
        changed.stderr.contains("offset: 5 in the snapshot, 6 now"),
        "{changed}"
    );

    let same = run(&[
        "--records",
        "100",
        "--offset",
        "5",
        "--check-savepoint",
        chk_arg,
    ]);
    assert_eq!(same.code, Some(0), "{same}");
    assert!(same.stdout.contains("restored"), "{same}");

    let differs = run(&[
        "--records",
        "100",
        "--offset",
        "6",
        "--check-savepoint",
        chk_arg,
    ]);
    assert_eq!(differs.code, Some(1), "{differs}");
    assert!(differs.stdout.contains("offset"), "{differs}");
    assert!(differs.stderr.contains("would not restore"), "{differs}");

    let json = run(&[
        "--records",
        "100",
        "--offset",
        "6",
        "--check-savepoint",
        chk_arg,
        "--check-json",
    ]);
    assert_eq!(json.code, Some(1), "{json}");
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON report");
    assert_eq!(
        report["restorable"],
        serde_json::Value::Bool(false),
        "{json}"
    );

    let allowed = run(&[
        "--records",
        "100",
        "--offset",
        "6",
        "--check-savepoint",
        chk_arg,
        "--allow-parameter-change",
    ]);
    assert_eq!(allowed.code, Some(0), "{allowed}");

    let missing = tmp.path().join("nothing");
    let unreadable = run(&["--check-savepoint", missing.to_str().unwrap()]);
    assert_eq!(unreadable.code, Some(2), "{unreadable}");
}
