//! End-to-end tests of the offline state tools through the `flowstate` binary
//! (issue 5): `inspect`, `state dump` and `verify` over real checkpoints of
//! `keyed-count` and `wordcount`.
//!
//! The dumped state is checked against the independent reference
//! implementations in `support` (workload W, the word count), never against the
//! flowstate crates: "the dump equals the job's final state".

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{Run, arg, count_words, flowstate, tempdir, workload_values};

const RECORDS: u64 = 20_000;
const KEYS: u64 = 1_000;

/// The only `<job>/chk-<n>` directory under `root`.
fn only_checkpoint(root: &Path) -> PathBuf {
    let mut found = Vec::new();
    for job in std::fs::read_dir(root).unwrap() {
        let job = job.unwrap().path();
        for entry in std::fs::read_dir(&job).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("chk-") && path.join("_metadata").exists() {
                found.push(path);
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected one retained checkpoint: {found:?}"
    );
    found.pop().unwrap()
}

/// Runs keyed-count (workload W) to its end with checkpoints; returns the
/// final checkpoint's directory.
fn keyed_count_checkpoint(dir: &Path) -> PathBuf {
    let checkpoints = dir.join("D");
    flowstate(
        dir,
        &[
            "run",
            "keyed-count",
            "--records",
            &RECORDS.to_string(),
            "--keys",
            &KEYS.to_string(),
            "--parallelism",
            "2",
            "--checkpoint-interval",
            "50ms",
            "--checkpoint-dir",
            arg(&checkpoints),
            "--retain",
            "1",
        ],
    )
    .assert_success();
    only_checkpoint(&checkpoints)
}

fn inspect_json(dir: &Path, checkpoint: &Path) -> serde_json::Value {
    let run = flowstate(dir, &["inspect", "--json", arg(checkpoint)]);
    run.assert_success();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("inspect --json: {e}: {run}"))
}

/// The uid of the (only) operator holding keyed state `state`.
fn uid_of_state(summary: &serde_json::Value, state: &str) -> String {
    let uids: Vec<&str> = summary["operators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            o["states"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == state)
        })
        .map(|o| o["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids.len(), 1, "operators with state {state}: {uids:?}");
    uids[0].to_owned()
}

/// W's final state: key -> (count, sum), computed independently.
fn expected_counts() -> BTreeMap<u64, (u64, u64)> {
    workload_values(RECORDS, KEYS)
        .into_iter()
        .map(|(key, values)| {
            let sum = values.iter().fold(0u64, |a, &v| a.wrapping_add(v));
            (key, (values.len() as u64, sum))
        })
        .collect()
}

fn dump(dir: &Path, checkpoint: &Path, uid: &str, state: &str, format: &str) -> Run {
    let run = flowstate(
        dir,
        &[
            "state",
            "dump",
            arg(checkpoint),
            "--operator",
            uid,
            "--state",
            state,
            "--format",
            format,
        ],
    );
    run.assert_success();
    run
}

#[test]
fn inspect_shows_operators_key_groups_and_states() {
    let dir = tempdir();
    let checkpoint = keyed_count_checkpoint(dir.path());
    let summary = inspect_json(dir.path(), &checkpoint);
    assert_eq!(summary["kind"], "checkpoint");
    assert_eq!(summary["max_parallelism"], 128);
    let chk = checkpoint
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        summary["checkpoint_id"].as_u64().unwrap().to_string(),
        chk.trim_start_matches("chk-")
    );
    let uid = uid_of_state(&summary, "count-sum");
    let operator = summary["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["uid"] == uid.as_str())
        .unwrap();
    assert_eq!(operator["parallelism"], 2);
    let state = &operator["states"][0];
    assert_eq!(state["kind"], "Value");
    assert_eq!(state["types"], "tuple<u64,u64>");
    assert_eq!(state["key_type"], "u64");
    let ranges: Vec<(u64, u64)> = operator["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key_groups"][0].as_u64().unwrap(),
                s["key_groups"][1].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranges, [(0, 64), (64, 128)]);
    let entries: u64 = operator["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["keyed_file"]["entries"].as_u64().unwrap())
        .sum();
    assert_eq!(entries, expected_counts().len() as u64);

    // The readable report says the same.
    let run = flowstate(dir.path(), &["inspect", arg(&checkpoint)]);
    run.assert_success();
    for needle in [
        format!("operator {uid} "),
        "count-sum".to_owned(),
        "tuple<u64,u64>".to_owned(),
        "key groups [0, 64)".to_owned(),
        "key groups [64, 128)".to_owned(),
        "128 key groups".to_owned(),
    ] {
        assert!(run.stdout.contains(&needle), "no {needle:?} in: {run}");
    }
    // The same through the metadata file's path.
    let run = flowstate(dir.path(), &["inspect", arg(&checkpoint.join("_metadata"))]);
    run.assert_success();
    assert!(run.stdout.contains("count-sum"), "{run}");
}

#[test]
fn inspect_shows_the_job_name_and_parameters() {
    let dir = tempdir();
    let checkpoint = keyed_count_checkpoint(dir.path());
    let summary = inspect_json(dir.path(), &checkpoint);
    assert_eq!(summary["job"]["name"], "keyed-count");
    let parameters: Vec<(String, String)> = summary["job"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        parameters[..2],
        [
            ("records".to_owned(), RECORDS.to_string()),
            ("keys".to_owned(), KEYS.to_string())
        ]
    );
    let run = flowstate(dir.path(), &["inspect", arg(&checkpoint)]);
    run.assert_success();
    for needle in [
        "  job:              keyed-count\n".to_owned(),
        format!("    records              {RECORDS}\n"),
        format!("    keys                 {KEYS}\n"),
    ] {
        assert!(run.stdout.contains(&needle), "no {needle:?} in: {run}");
    }
}

#[test]
fn inspect_says_when_no_parameters_are_recorded() {
    let dir = tempdir();
    let savepoint = dir.path().join("v1-savepoint");
    support::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-savepoint-keyed-count"),
        &savepoint,
    );
    let summary = inspect_json(dir.path(), &savepoint);
    assert!(summary["job"].is_null(), "{summary}");
    let run = flowstate(dir.path(), &["inspect", arg(&savepoint)]);
    run.assert_success();
    assert!(
        run.stdout
            .contains("job:              not recorded (no parameters recorded"),
        "{run}"
    );
}

#[test]
fn csv_dump_equals_the_final_state_of_workload_w() {
    let dir = tempdir();
    let checkpoint = keyed_count_checkpoint(dir.path());
    let uid = uid_of_state(&inspect_json(dir.path(), &checkpoint), "count-sum");
    let run = dump(dir.path(), &checkpoint, &uid, "count-sum", "csv");
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some("key,value.0,value.1"), "{run}");
    let mut dumped = BTreeMap::new();
    for line in lines {
        let fields: Vec<u64> = line
            .split(',')
            .map(|f| f.parse().unwrap_or_else(|_| panic!("bad row {line:?}")))
            .collect();
        assert_eq!(fields.len(), 3, "bad row {line:?}");
        let previous = dumped.insert(fields[0], (fields[1], fields[2]));
        assert!(previous.is_none(), "key {} dumped twice", fields[0]);
    }
    assert_eq!(dumped, expected_counts());
}

#[test]
fn json_dump_parses_and_equals_the_final_state() {
    let dir = tempdir();
    let checkpoint = keyed_count_checkpoint(dir.path());
    let uid = uid_of_state(&inspect_json(dir.path(), &checkpoint), "count-sum");
    let run = dump(dir.path(), &checkpoint, &uid, "count-sum", "json");
    let mut dumped = BTreeMap::new();
    for line in run.stdout.lines() {
        let row: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let key = row["key"].as_u64().unwrap();
        let value = row["value"].as_array().unwrap();
        assert_eq!(value.len(), 2, "{line}");
        dumped.insert(
            key,
            (value[0].as_u64().unwrap(), value[1].as_u64().unwrap()),
        );
    }
    assert_eq!(dumped, expected_counts());

    // --output writes the same to a file, and nothing to stdout.
    let out = dir.path().join("dump.jsonl");
    let run = flowstate(
        dir.path(),
        &[
            "state",
            "dump",
            arg(&checkpoint),
            "--operator",
            &uid,
            "--state",
            "count-sum",
            "--output",
            arg(&out),
        ],
    );
    run.assert_success();
    assert!(run.stdout.is_empty(), "{run}");
    let written = std::fs::read_to_string(&out).unwrap();
    let mut from_file: Vec<&str> = written.lines().collect();
    let stdout = dump(dir.path(), &checkpoint, &uid, "count-sum", "json").stdout;
    let mut from_stdout: Vec<&str> = stdout.lines().collect();
    from_file.sort_unstable();
    from_stdout.sort_unstable();
    assert_eq!(from_file, from_stdout);
}

#[test]
fn wordcount_dump_equals_the_word_counts() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let texts = [
        "Hello, World! hello WORLD.\nThe quick-brown fox; the \"QUICK\" fox?\n",
        "Straße STRASSE straße Ärger, ärger ÄRGER 42 42 x2\n",
    ];
    for (i, text) in texts.iter().enumerate() {
        std::fs::write(input.join(format!("{i}.txt")), text).unwrap();
    }
    let checkpoints = dir.path().join("D");
    flowstate(
        dir.path(),
        &[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--parallelism",
            "2",
            "--checkpoint-interval",
            "50ms",
            "--checkpoint-dir",
            arg(&checkpoints),
        ],
    )
    .assert_success();
    let checkpoint = only_checkpoint(&checkpoints);
    let summary = inspect_json(dir.path(), &checkpoint);
    let uid = uid_of_state(&summary, "count");
    let expected = count_words(texts);

    let run = dump(dir.path(), &checkpoint, &uid, "count", "json");
    let mut dumped = BTreeMap::new();
    for line in run.stdout.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let word = row["key"].as_str().unwrap().to_owned();
        assert!(
            dumped
                .insert(word, row["value"].as_u64().unwrap())
                .is_none()
        );
    }
    assert_eq!(dumped, expected);

    let run = dump(dir.path(), &checkpoint, &uid, "count", "csv");
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some("key,value"));
    let dumped: BTreeMap<String, u64> = lines
        .map(|l| {
            let (word, count) = l.rsplit_once(',').unwrap();
            (word.to_owned(), count.parse().unwrap())
        })
        .collect();
    assert_eq!(dumped, expected);
}

#[test]
fn unknown_operator_and_state_list_the_available_ones() {
    let dir = tempdir();
    let checkpoint = keyed_count_checkpoint(dir.path());
    let uid = uid_of_state(&inspect_json(dir.path(), &checkpoint), "count-sum");
    let base = ["state", "dump", arg(&checkpoint)];

    let run = flowstate(
        dir.path(),
        &[
            &base[..],
            &["--operator", "no-such-op", "--state", "count-sum"],
        ]
        .concat(),
    );
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains("no operator with uid 'no-such-op'") && line.contains(&format!("'{uid}'")),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");

    let run = flowstate(
        dir.path(),
        &[&base[..], &["--operator", &uid, "--state", "nope"]].concat(),
    );
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains(&format!("operator '{uid}' has no keyed state named 'nope'"))
            && line.contains("'count-sum'"),
        "{run}"
    );

    let missing = dir.path().join("missing");
    // A `file://` URL names a local path too: refused the same way, not created.
    let missing_url = format!("file://{}", missing.display());
    for args in [
        vec!["inspect", arg(&missing)],
        vec!["verify", arg(&missing)],
        vec!["inspect", missing_url.as_str()],
        vec!["verify", missing_url.as_str()],
    ] {
        let run = flowstate(dir.path(), &args);
        run.assert_failure();
        assert!(run.single_error_line().contains("missing"), "{run}");
    }
    assert!(!missing.exists(), "a tool created {}", missing.display());
}

/// The keyed files of a checkpoint directory.
fn keyed_files(checkpoint: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(checkpoint)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "keyed"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    files
}

#[test]
fn verify_passes_then_names_a_flipped_and_a_truncated_file() {
    let dir = tempdir();
    let checkpoint = keyed_count_checkpoint(dir.path());
    let run = flowstate(dir.path(), &["verify", arg(&checkpoint)]);
    run.assert_success();
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        3,
        "{run}"
    );
    assert!(run.stdout.contains("3 files verified: all sound"), "{run}");

    let files = keyed_files(&checkpoint);
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let original = std::fs::read(&files[1]).unwrap();

    // One flipped byte in the middle of a keyed file.
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x10;
    std::fs::write(&files[1], &flipped).unwrap();
    let run = flowstate(dir.path(), &["verify", arg(&checkpoint)]);
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains(&name(&files[1])) && line.contains("checksum"),
        "{run}"
    );
    assert!(!line.contains(&name(&files[0])), "{run}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("DAMAGED") && l.contains(&name(&files[1]))),
        "{run}"
    );
    // A dump refuses it too, naming it.
    let uid = uid_of_state(&inspect_json(dir.path(), &checkpoint), "count-sum");
    let run = flowstate(
        dir.path(),
        &[
            "state",
            "dump",
            arg(&checkpoint),
            "--operator",
            &uid,
            "--state",
            "count-sum",
        ],
    );
    run.assert_failure();
    assert!(run.single_error_line().contains(&name(&files[1])), "{run}");

    // Truncated instead.
    std::fs::write(&files[1], &original[..original.len() - 100]).unwrap();
    let run = flowstate(dir.path(), &["verify", arg(&checkpoint)]);
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains(&name(&files[1])) && line.contains("truncated"),
        "{run}"
    );

    // Both files damaged: both named.
    std::fs::write(&files[1], &original).unwrap();
    let other = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &other[..10]).unwrap();
    std::fs::write(&files[1], &flipped).unwrap();
    let run = flowstate(dir.path(), &["verify", arg(&checkpoint)]);
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains(&name(&files[0]))
            && line.contains(&name(&files[1]))
            && line.contains("2 of 3"),
        "{run}"
    );

    // Damaged metadata: one clear error naming it.
    std::fs::write(&files[0], &other).unwrap();
    std::fs::write(&files[1], &original).unwrap();
    flowstate(dir.path(), &["verify", arg(&checkpoint)]).assert_success();
    let metadata = checkpoint.join("_metadata");
    let mut bytes = std::fs::read(&metadata).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&metadata, bytes).unwrap();
    let run = flowstate(dir.path(), &["verify", arg(&checkpoint)]);
    run.assert_failure();
    assert!(run.single_error_line().contains("_metadata"), "{run}");
}

#[test]
fn a_closed_stdout_ends_a_dump_quietly() {
    let dir = tempdir();
    let checkpoint = keyed_count_checkpoint(dir.path());
    let uid = uid_of_state(&inspect_json(dir.path(), &checkpoint), "count-sum");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .args([
            "state",
            "dump",
            arg(&checkpoint),
            "--operator",
            &uid,
            "--state",
            "count-sum",
        ])
        .current_dir(dir.path())
        .env_remove("FLOWSTATE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the pipe before anything is written (like `| head -0`): every
    // write fails with EPIPE.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("error"),
        "{:?}: {stderr}",
        output.status
    );
}
