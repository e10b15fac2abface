//! What an input and a snapshot may make `flowstate run wordcount` do, through
//! the binary: an input that is not a regular file is refused at once with one
//! error (it used to block a worker thread for good); a checkpoint whose file
//! positions or pending sink files name something the job does not own is
//! refused, naming the state, the field and the value, and nothing is read or
//! renamed; a checkpoint of another input is refused naming both; a file added
//! to the input after the checkpoint is counted once after the restore.
//!
//! Crafted checkpoints are real ones with their `_metadata` rewritten and
//! resealed (`FSMD | u32 version | JSON | crc32c`, CRC-32C written out here:
//! the checker shares no code with what it checks).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{
    Run, arg, check_wordcount_output, committed_lines, copy_dir, count_words, start, strings,
    tempdir,
};

/// Longest a run that must end by itself may take before the test calls it
/// hung (a failure guard only: these runs end in about a second).
const HUNG_AFTER: Duration = Duration::from_secs(120);

/// Runs `flowstate ARGS` in `cwd`; kills it and fails if it does not end
/// within [`HUNG_AFTER`].
fn run_bounded(cwd: &Path, name: &str, args: &[String]) -> Run {
    let mut process = start(cwd, &cwd.join("logs"), name, args);
    loop {
        if let Some(run) = process.ended() {
            return run;
        }
        if process.started.elapsed() > HUNG_AFTER {
            let (_, run) = process.kill();
            panic!("flowstate {args:?} did not end within {HUNG_AFTER:?}: {run}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_as_input_is_refused_at_once_with_one_error() {
    let tmp = tempdir();
    let fifo = tmp.path().join("input.fifo");
    mkfifo(&fifo);
    let run = run_bounded(
        tmp.path(),
        "fifo",
        &strings(&[
            "run",
            "wordcount",
            "--input",
            arg(&fifo),
            "--checkpoint-dir",
            arg(&tmp.path().join("ck")),
            "--rest",
            "off",
        ]),
    );
    run.assert_failure();
    let error = run.single_error_line();
    assert!(
        error.contains(&format!("'{}' is a FIFO", fifo.display())),
        "{run}"
    );
}

// ---------------------------------------------------------------------------
// Crafted checkpoints.

fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The JSON payload of a sealed `_metadata`, checked.
fn unseal(bytes: &[u8]) -> Value {
    assert_eq!(&bytes[..4], b"FSMD", "not a metadata file");
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    assert_eq!(
        crc32c(body).to_le_bytes(),
        trailer,
        "the CRC-32C written out here disagrees with flowstate's"
    );
    serde_json::from_slice(&body[8..]).unwrap()
}

/// `payload` sealed with the header of `original`.
fn reseal(original: &[u8], payload: &Value) -> Vec<u8> {
    let mut out = original[..8].to_vec();
    out.extend(serde_json::to_vec(payload).unwrap());
    let crc = crc32c(&out);
    out.extend(crc.to_le_bytes());
    out
}

/// The one `_metadata` under `root`.
fn metadata_file(root: &Path) -> PathBuf {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name() == "_metadata" {
                found.push(entry.path());
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected one retained checkpoint: {found:?}"
    );
    found.remove(0)
}

/// Rewrites the first element of list `state` in the metadata at `path` with
/// `edit`; returns the uid of the operator that holds it.
fn craft(path: &Path, state: &str, edit: impl Fn(&mut Value)) -> String {
    let original = std::fs::read(path).unwrap();
    let mut metadata = unseal(&original);
    for operator in metadata["operators"].as_array_mut().unwrap() {
        let uid = operator["uid"].as_str().unwrap().to_owned();
        for subtask in operator["subtasks"].as_array_mut().unwrap() {
            for list in subtask["lists"].as_array_mut().unwrap() {
                if list["name"] != state {
                    continue;
                }
                let Some(element) = list["elements"].as_array_mut().unwrap().first_mut() else {
                    continue;
                };
                let bytes: Vec<u8> = element
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8)
                    .collect();
                let mut value: Value = serde_json::from_slice(&bytes).unwrap();
                edit(&mut value);
                *element = Value::from(serde_json::to_vec(&value).unwrap());
                std::fs::write(path, reseal(&original, &metadata)).unwrap();
                return uid;
            }
        }
    }
    panic!("no element of '{state}' in {}", path.display());
}

/// Appends `element` to list `state` of the first subtask that has it in the
/// metadata at `path`; returns the uid of the operator that holds it.
fn craft_append(path: &Path, state: &str, element: &Value) -> String {
    let original = std::fs::read(path).unwrap();
    let mut metadata = unseal(&original);
    for operator in metadata["operators"].as_array_mut().unwrap() {
        let uid = operator["uid"].as_str().unwrap().to_owned();
        for subtask in operator["subtasks"].as_array_mut().unwrap() {
            for list in subtask["lists"].as_array_mut().unwrap() {
                if list["name"] == state {
                    let bytes = serde_json::to_vec(element).unwrap();
                    list["elements"]
                        .as_array_mut()
                        .unwrap()
                        .push(Value::from(bytes));
                    std::fs::write(path, reseal(&original, &metadata)).unwrap();
                    return uid;
                }
            }
        }
    }
    panic!("no list '{state}' in {}", path.display());
}

/// Every file under `root` with its contents.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

fn wordcount(input: &Path, output: &Path, checkpoints: &Path, more: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "run",
        "wordcount",
        "--input",
        arg(input),
        "--output",
        arg(output),
        "--parallelism",
        "2",
        "--checkpoint-interval",
        "1h",
        "--checkpoint-dir",
        arg(checkpoints),
        "--rest",
        "off",
    ]);
    args.extend(strings(more));
    args
}

/// A finished wordcount run over three files, its checkpoint (the final one)
/// copied to `<tmp>/<name>` per variant: returns the checkpoint directory of
/// the copy.
struct Finished {
    tmp: tempfile::TempDir,
    input: PathBuf,
    output: PathBuf,
    /// `_metadata` relative to the checkpoint root.
    metadata: PathBuf,
}

impl Finished {
    fn new() -> Self {
        let tmp = tempdir();
        let input = tmp.path().join("in");
        std::fs::create_dir(&input).unwrap();
        for (name, text) in [
            ("a.txt", "one two three\ntwo three\n"),
            ("b.txt", "three four\n"),
            ("c.txt", "five\nfive five\n"),
        ] {
            std::fs::write(input.join(name), text).unwrap();
        }
        let output = tmp.path().join("out");
        let checkpoints = tmp.path().join("ck");
        let run = run_bounded(
            tmp.path(),
            "first",
            &wordcount(&input, &output, &checkpoints, &[]),
        );
        run.assert_success();
        let metadata = metadata_file(&checkpoints)
            .strip_prefix(&checkpoints)
            .unwrap()
            .to_path_buf();
        Self {
            tmp,
            input,
            output,
            metadata,
        }
    }

    /// A copy of the checkpoint storage; returns the path of its `_metadata`.
    fn copy(&self, name: &str) -> PathBuf {
        let root = self.tmp.path().join(name);
        copy_dir(&self.tmp.path().join("ck"), &root);
        root.join(&self.metadata)
    }

    /// Restores the checkpoint whose `_metadata` is `metadata` into a run
    /// reading `input`, with checkpoints in a directory of its own.
    fn restore(&self, name: &str, metadata: &Path, input: &Path) -> Run {
        let checkpoint = metadata.parent().unwrap();
        let own = self.tmp.path().join(format!("{name}-ck"));
        run_bounded(
            self.tmp.path(),
            name,
            &wordcount(input, &self.output, &own, &["--restore", arg(checkpoint)]),
        )
    }
}

#[test]
fn crafted_file_positions_are_refused_naming_the_state_the_field_and_the_value() {
    let finished = Finished::new();
    let secret = finished.tmp.path().join("secret.txt");
    std::fs::write(&secret, "secret words\n").unwrap();
    let before = tree(&finished.output);
    for (name, value) in [
        ("absolute", secret.display().to_string()),
        (
            "dotdot",
            finished.input.join("../secret.txt").display().to_string(),
        ),
    ] {
        let metadata = finished.copy(name);
        // A position of its own, as a crafted checkpoint would add it.
        let position = serde_json::json!({"path": value, "offset": 0, "line": 0});
        let uid = craft_append(&metadata, "file-positions", &position);
        let run = finished.restore(name, &metadata, &finished.input);
        run.assert_failure();
        let error = run.single_error_line();
        for part in [
            uid.as_str(),
            "file-positions",
            "path",
            &format!("{value:?}"),
        ] {
            assert!(
                error.contains(part),
                "{name}: the error does not name {part}: {run}"
            );
        }
        assert_eq!(tree(&finished.output), before, "{name}: the output changed");
    }
}

#[test]
fn crafted_pending_files_are_refused_and_nothing_is_renamed() {
    let finished = Finished::new();
    let victim = finished.tmp.path().join("victim.txt");
    std::fs::write(&victim, "not yours\n").unwrap();
    let cases: [(&str, &str, Option<String>, Option<&str>); 4] = [
        ("dotdot", "hidden", Some("../victim.txt".to_owned()), None),
        (
            "absolute",
            "hidden",
            Some(victim.display().to_string()),
            None,
        ),
        ("nested", "hidden", Some("a/b".to_owned()), None),
        ("escape", "visible", None, Some("../escaped")),
    ];
    for (name, field, hidden, visible) in cases {
        let metadata = finished.copy(name);
        let before = tree(finished.tmp.path());
        let uid = craft(&metadata, "pending-files", |p| {
            if let Some(hidden) = &hidden {
                p["hidden"] = Value::from(hidden.clone());
            }
            if let Some(visible) = visible {
                p["visible"] = Value::from(visible);
            }
        });
        let offending = match (&hidden, visible) {
            (Some(hidden), _) => hidden.clone(),
            (None, visible) => visible.unwrap_or_default().to_owned(),
        };
        let run = finished.restore(name, &metadata, &finished.input);
        run.assert_failure();
        let error = run.single_error_line();
        for part in [
            uid.as_str(),
            "pending-files",
            field,
            &format!("{offending:?}"),
        ] {
            assert!(
                error.contains(part),
                "{name}: the error does not name {part}: {run}"
            );
        }
        let after = tree(finished.tmp.path());
        for (path, bytes) in &before {
            if path.starts_with(finished.tmp.path().join("logs"))
                || path.starts_with(metadata.parent().unwrap())
            {
                continue;
            }
            assert_eq!(
                after.get(path),
                Some(bytes),
                "{name}: {} changed",
                path.display()
            );
        }
        assert!(
            !finished.tmp.path().join("escaped").exists(),
            "{name}: a file was renamed out of the output"
        );
    }
}

#[test]
fn a_checkpoint_of_another_input_is_refused_naming_both() {
    let finished = Finished::new();
    let other = finished.tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a.txt"), "other words\n").unwrap();
    let metadata = finished.copy("changed");
    let run = finished.restore("changed", &metadata, &other);
    run.assert_failure();
    let error = run.single_error_line();
    for path in [&finished.input, &other] {
        let shown = path.canonicalize().unwrap().display().to_string();
        assert!(
            error.contains(&shown),
            "the error does not name {shown}: {run}"
        );
    }
}

#[test]
fn a_file_added_after_the_checkpoint_is_counted_once_after_the_restore() {
    let finished = Finished::new();
    std::fs::write(finished.input.join("d.txt"), "two five six\nsix\n").unwrap();
    let metadata = finished.copy("added");
    let run = finished.restore("added", &metadata, &finished.input);
    run.assert_success();
    let mut texts = Vec::new();
    for name in ["a.txt", "b.txt", "c.txt", "d.txt"] {
        texts.push(std::fs::read_to_string(finished.input.join(name)).unwrap());
    }
    let expected = count_words(texts.iter().map(String::as_str));
    assert_eq!(
        run.result_line(),
        format!(
            "RESULT words={} distinct={}",
            expected.values().sum::<u64>(),
            expected.len()
        ),
        "{run}"
    );
    check_wordcount_output(&committed_lines(&finished.output), &expected);
}
