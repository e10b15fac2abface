//! Issue 14 through the binary: job parameters refuse a restore with other
//! parameters (unless `--allow-parameter-change`), and `flowstate
//! check-savepoint PATH JOB [ARGS]` says whether a snapshot would restore,
//! with exit status 0 (yes), 1 (no) or 2 (cannot tell).

mod support;

use std::path::{Path, PathBuf};

use support::{arg, flowstate, tempdir};

/// The only `<job>/chk-<n>` directory under `root`.
fn only_checkpoint(root: &Path) -> PathBuf {
    let mut found = Vec::new();
    for job in std::fs::read_dir(root).unwrap() {
        for entry in std::fs::read_dir(job.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("chk-") && path.join("_metadata").exists() {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

/// Runs `job args` to its end with checkpoints into `dir/D`; returns the
/// final checkpoint.
fn final_checkpoint(dir: &Path, job: &str, args: &[&str]) -> PathBuf {
    let checkpoints = dir.join("D");
    let mut all = vec!["run", job];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--parallelism",
        "2",
        "--checkpoint-interval",
        "1h",
        "--checkpoint-dir",
        arg(&checkpoints),
        "--rest",
        "off",
    ]);
    flowstate(dir, &all).assert_success();
    only_checkpoint(&checkpoints)
}

const KEYED: [&str; 4] = ["--records", "3000", "--keys", "40"];

fn check(dir: &Path, snapshot: &Path, json: bool, job: &str, args: &[&str]) -> support::Run {
    let mut all = vec!["check-savepoint"];
    if json {
        all.push("--json");
    }
    all.push(arg(snapshot));
    all.push(job);
    all.extend_from_slice(args);
    flowstate(dir, &all)
}

#[test]
fn a_restore_with_other_parameters_is_refused_unless_allowed() {
    let dir = tempdir();
    let checkpoint = final_checkpoint(dir.path(), "keyed-count", &KEYED);
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "keyed-count",
            "--records",
            "2000",
            "--keys",
            "40",
            "--checkpoint-interval",
            "off",
            "--rest",
            "off",
            "--restore",
            arg(&checkpoint),
        ];
        args.extend_from_slice(extra);
        flowstate(dir.path(), &args)
    };
    let refused = restore(&[]);
    refused.assert_failure();
    assert!(
        refused
            .stderr
            .contains("records: 3000 in the snapshot, 2000 now"),
        "{refused}"
    );
    restore(&["--allow-parameter-change"]).assert_success();
}

#[test]
fn the_same_keyed_count_restores_everything() {
    let dir = tempdir();
    let checkpoint = final_checkpoint(dir.path(), "keyed-count", &KEYED);
    let run = check(dir.path(), &checkpoint, false, "keyed-count", &KEYED);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("the restore would succeed"), "{run}");
    assert!(run.stdout.contains("count-sum"), "{run}");
    assert!(
        run.stdout
            .contains("job parameters: the same (keyed-count)"),
        "{run}"
    );
    // The rate and the output directory may change.
    let mut changeable = KEYED.to_vec();
    changeable.extend_from_slice(&["--rate", "5", "--output", "elsewhere"]);
    let run = check(dir.path(), &checkpoint, false, "keyed-count", &changeable);
    assert_eq!(run.code, Some(0), "{run}");
    // Building the job creates the output directory (`FileSink::new`), but
    // no writer is created: nothing is written into it.
    let elsewhere = dir.path().join("elsewhere");
    if elsewhere.exists() {
        let files = std::fs::read_dir(&elsewhere).unwrap().count();
        assert_eq!(files, 0, "the sink wrote");
    }
}

#[test]
fn a_changed_parameter_is_named_and_fails_the_check() {
    let dir = tempdir();
    let checkpoint = final_checkpoint(dir.path(), "keyed-count", &KEYED);
    let changed = ["--records", "2000", "--keys", "40"];
    let run = check(dir.path(), &checkpoint, false, "keyed-count", &changed);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stdout
            .contains("records: 3000 in the snapshot, 2000 now"),
        "{run}"
    );
    assert!(run.stdout.contains("the restore would fail"), "{run}");

    let run = check(dir.path(), &checkpoint, true, "keyed-count", &changed);
    assert_eq!(run.code, Some(1), "{run}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["restorable"], false);
    assert_eq!(report["parameters"]["differences"][0]["name"], "records");
    assert_eq!(report["parameters"]["differences"][0]["recorded"], "3000");
    assert_eq!(report["parameters"]["differences"][0]["current"], "2000");

    let mut allowed = changed.to_vec();
    allowed.push("--allow-parameter-change");
    let run = check(dir.path(), &checkpoint, false, "keyed-count", &allowed);
    assert_eq!(run.code, Some(0), "{run}");

    // Another job: other operators (dropped, new) and another job name.
    let run = check(
        dir.path(),
        &checkpoint,
        true,
        "window-count",
        &["--records", "3000"],
    );
    assert_eq!(run.code, Some(1), "{run}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let outcome = |uid: &str| {
        report["operators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["uid"] == uid)
            .map(|o| o["outcome"].as_str().unwrap().to_owned())
    };
    assert_eq!(outcome("count-and-sum").as_deref(), Some("dropped"));
    assert_eq!(outcome("window-count-sum").as_deref(), Some("new"));
    assert_eq!(report["parameters"]["differences"][0]["change"], "job_name");
}

#[test]
fn the_same_window_count_restores_every_state() {
    let dir = tempdir();
    let args = ["--records", "20000", "--keys", "50", "--window", "1s"];
    let checkpoint = final_checkpoint(dir.path(), "window-count", &args);
    let run = check(dir.path(), &checkpoint, true, "window-count", &args);
    assert_eq!(run.code, Some(0), "{run}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["restorable"], true);
    let mut states = 0;
    for operator in report["operators"].as_array().unwrap() {
        for state in operator["states"].as_array().unwrap() {
            assert_eq!(state["outcome"], "restored", "{operator}");
            states += 1;
        }
    }
    assert!(states >= 2, "{report}");
    // Another window size is named.
    let run = check(
        dir.path(),
        &checkpoint,
        false,
        "window-count",
        &["--records", "20000", "--keys", "50", "--window", "2s"],
    );
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stdout
            .contains("window: 1000ms in the snapshot, 2000ms now"),
        "{run}"
    );
}

#[test]
fn an_unreadable_snapshot_exits_2() {
    let dir = tempdir();
    let run = check(
        dir.path(),
        &dir.path().join("nothing"),
        false,
        "keyed-count",
        &KEYED,
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr.contains("cannot check") && run.stderr.contains("cannot read the snapshot"),
        "{run}"
    );
}
