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
