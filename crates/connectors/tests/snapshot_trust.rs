//! What a snapshot and an input may make the file connectors do: names and
//! paths restored from a snapshot are checked against what the connector owns
//! before anything is read or renamed, a changed input is refused, files added
//! to the input since the snapshot are read exactly once, and inputs that are
//! not regular files are refused without blocking.
//!
//! Only the public API is used, and the operator lists are built the way a
//! restore deals them (`Split`: element `i` to instance `i % p`; `Union`: all
//! to every instance).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowstate_connectors::{FileSink, TextLinesSource};
use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::checkpoint::restore::deal_operator_lists;
use flowstate_runtime::{
    Barrier, RestoredState, Sink, Source, SourcePoll, SourceReader, SubtaskInfo,
};
use flowstate_state::RedistributionMode;
use serde_json::json;

/// How long a test waits for a poll that must not block before calling it
/// blocked (a failure guard only: a passing poll returns at once).
const BLOCKED_AFTER: Duration = Duration::from_secs(60);

const UID: &str = "the-uid";

fn subtask(index: u32, parallelism: u32, lists: Option<Vec<OperatorListState>>) -> SubtaskInfo {
    let mut info = SubtaskInfo::new("Some operator", index, parallelism, 128);
    info.uid = UID.to_owned();
    info.restored = lists.map(|lists| {
        Arc::new(RestoredState {
            keyed: Default::default(),
            lists,
        })
    });
    info
}

fn list(name: &str, mode: RedistributionMode, elements: &[serde_json::Value]) -> OperatorListState {
    OperatorListState {
        name: name.to_owned(),
        mode,
        elements: elements
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect(),
    }
}

/// The lists instance `index` of `parallelism` gets from the snapshots of all
/// old instances: what the checkpoint loader does.
fn deal(
    snapshots: &[Vec<OperatorListState>],
    index: u32,
    parallelism: u32,
) -> Vec<OperatorListState> {
    deal_operator_lists(snapshots.iter().flatten(), index, parallelism)
}

fn drain(reader: &mut dyn SourceReader<String>, out: &mut Vec<String>) -> Result<(), String> {
    loop {
        match reader.poll(out, 3, Instant::now()) {
            Ok(SourcePoll::Finished) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Every file under `root` with its contents: what a refused restore must
/// leave exactly as it was.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

// ---------------------------------------------------------------------------
// The file sink.

#[test]
fn crafted_pending_file_names_are_refused_and_nothing_is_renamed() {
    let probe = tempfile::tempdir().unwrap();
    let victim_abs = probe.path().join("victim.txt");
    let cases: Vec<(String, String, &str, String)> = vec![
        // (hidden, visible, field named, offending value)
        (
            "../victim.txt".into(),
            "part-stolen".into(),
            "hidden",
            "../victim.txt".into(),
        ),
        (
            victim_abs.display().to_string(),
            "part-stolen".into(),
            "hidden",
            victim_abs.display().to_string(),
        ),
        ("a/b".into(), "part-stolen".into(), "hidden", "a/b".into()),
        (
            "notes.txt".into(),
            "part-stolen".into(),
            "hidden",
            "notes.txt".into(),
        ),
        (
            ".part-../../victim.inprogress".into(),
            "part-stolen".into(),
            "hidden",
            ".part-../../victim.inprogress".into(),
        ),
        (
            ".part-x-1.inprogress".into(),
            "../escaped".into(),
            "visible",
            "../escaped".into(),
        ),
        (
            ".part-x-1.inprogress".into(),
            "part-other-2".into(),
            "visible",
            "part-other-2".into(),
        ),
    ];
    for (hidden, visible, field, value) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(out.join("a")).unwrap();
        std::fs::write(tmp.path().join("victim.txt"), "outside").unwrap();
        std::fs::write(out.join("a/b"), "nested").unwrap();
        std::fs::write(out.join("notes.txt"), "not a part file").unwrap();
        std::fs::write(out.join(".part-x-1.inprogress"), "in progress").unwrap();
        std::fs::write(out.join(".part-ok-1.inprogress"), "fine").unwrap();
        // The crafted element's absolute path points into this case's directory.
        let hidden = hidden.replace(
            &probe.path().display().to_string(),
            &tmp.path().display().to_string(),
        );
        let value = value.replace(
            &probe.path().display().to_string(),
            &tmp.path().display().to_string(),
        );
        let before = tree(tmp.path());
        let sink = FileSink::new(&out).unwrap();
        let pending = list(
            "pending-files",
            RedistributionMode::Union,
            &[
                json!({"hidden": ".part-ok-1.inprogress", "visible": "part-ok-1", "checkpoint": 1}),
                json!({"hidden": hidden, "visible": visible, "checkpoint": 1}),
            ],
        );
        let result = Sink::<String>::create_writer(&sink, &subtask(0, 1, Some(vec![pending])));
        let error = match result {
            Ok(_) => panic!("pending file {hidden:?} -> {visible:?} was accepted"),
            Err(e) => e.to_string(),
        };
        for part in [UID, "pending-files", field, &format!("{value:?}")] {
            assert!(
                error.contains(part),
                "{hidden:?} -> {visible:?}: the error does not name {part}: {error}"
            );
        }
        assert_eq!(
            tree(tmp.path()),
            before,
            "{hidden:?} -> {visible:?}: a refused restore changed files"
        );
    }
}

#[test]
fn the_sinks_own_pending_files_still_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let sink = FileSink::new(&out).unwrap();
    let mut writer = Sink::<u32>::create_writer(&sink, &subtask(0, 1, None)).unwrap();
    writer.write_batch(&mut vec![1, 2, 3]).unwrap();
    let state = writer.prepare_commit(Barrier::checkpoint(1)).unwrap();
    drop(writer);
    // A crash before the commit: the restore publishes what checkpoint 1 recorded.
    let again = FileSink::new(&out).unwrap();
    Sink::<u32>::create_writer(&again, &subtask(0, 1, Some(state))).unwrap();
    let visible: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(visible.len(), 1, "{visible:?}");
    assert!(visible[0].starts_with("part-"), "{visible:?}");
    assert_eq!(
        std::fs::read_to_string(out.join(&visible[0])).unwrap(),
        "1\n2\n3\n"
    );
}

// ---------------------------------------------------------------------------
// The text source: positions and the input.

/// Reads `source` at `parallelism` from `restored` (per old instance) to the
/// end; returns the lines and each new instance's snapshot.
fn run(
    source: &TextLinesSource,
    parallelism: u32,
    restored: Option<&[Vec<OperatorListState>]>,
) -> Result<(Vec<String>, Vec<Vec<OperatorListState>>), String> {
    let mut out = Vec::new();
    let mut snapshots = Vec::new();
    for index in 0..parallelism {
        let lists = restored.map(|r| deal(r, index, parallelism));
        let mut reader = source
            .create_reader(&subtask(index, parallelism, lists))
            .map_err(|e| e.to_string())?;
        drain(reader.as_mut(), &mut out)?;
        snapshots.push(
            reader
                .snapshot(Barrier::checkpoint(1))
                .map_err(|e| e.to_string())?,
        );
    }
    Ok((out, snapshots))
}

/// Snapshots of a run of `source` at `parallelism` that read `first` lines of
/// each instance's input, and those lines.
fn partial(
    source: &TextLinesSource,
    parallelism: u32,
    first: usize,
) -> (Vec<String>, Vec<Vec<OperatorListState>>) {
    let mut out = Vec::new();
    let mut snapshots = Vec::new();
    for index in 0..parallelism {
        let mut reader = source
            .create_reader(&subtask(index, parallelism, None))
            .unwrap();
        let mut taken = Vec::new();
        while taken.len() < first {
            if reader.poll(&mut taken, 1, Instant::now()).unwrap() == SourcePoll::Finished {
                break;
            }
        }
        out.extend(taken);
        snapshots.push(reader.snapshot(Barrier::checkpoint(1)).unwrap());
    }
    (out, snapshots)
}

/// The position elements of `snapshots`, with `edit` applied to each.
fn edited(
    snapshots: &[Vec<OperatorListState>],
    edit: impl Fn(&mut serde_json::Value),
) -> Vec<Vec<OperatorListState>> {
    snapshots
        .iter()
        .map(|lists| {
            lists
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    if l.name == "file-positions" {
                        for e in &mut l.elements {
                            let mut value: serde_json::Value = serde_json::from_slice(e).unwrap();
                            edit(&mut value);
                            *e = serde_json::to_vec(&value).unwrap();
                        }
                    }
                    l
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_restore_at_another_parallelism_reads_every_line_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        let l = lines(name, 20);
        write_lines(&tmp.path().join(format!("{name}.txt")), &l);
        all.extend(l);
    }
    for (before, after) in [(2, 3), (3, 1), (1, 2)] {
        let source = TextLinesSource::new(tmp.path()).unwrap();
        let (mut seen, snapshots) = partial(&source, before, 7);
        let (rest, _) = run(&source, after, Some(&snapshots)).unwrap();
        seen.extend(rest);
        assert_eq!(sorted(seen), sorted(all.clone()), "{before} -> {after}");
    }
}

#[test]
fn positions_outside_the_input_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::create_dir(&input).unwrap();
    write_lines(&input.join("a.txt"), &lines("a", 5));
    let secret = tmp.path().join("secret.txt");
    write_lines(&secret, &["the secret".to_owned()]);
    let source = TextLinesSource::new(&input).unwrap();
    let (_, snapshots) = partial(&source, 1, 2);
    let crafted = [
        secret.display().to_string(),
        input.join("../secret.txt").display().to_string(),
        input.join(".hidden").display().to_string(),
        "secret.txt".to_owned(),
        "/".to_owned(),
    ];
    for value in crafted {
        // As this version writes it, and as earlier versions did (Split, no input).
        let current = edited(&snapshots, |p| p["path"] = json!(value));
        let legacy: Vec<Vec<OperatorListState>> = current
            .iter()
            .map(|lists| {
                lists
                    .iter()
                    .filter(|l| l.name == "file-positions")
                    .map(|l| OperatorListState {
                        mode: RedistributionMode::Split,
                        ..l.clone()
                    })
                    .collect()
            })
            .collect();
        for (form, restored) in [("current", current), ("legacy", legacy)] {
            let error = match run(&source, 1, Some(&restored)) {
                Ok((out, _)) => panic!("{form} position {value:?} was accepted; read {out:?}"),
                Err(e) => e,
            };
            for part in [UID, "file-positions", "path", &format!("{value:?}")] {
                assert!(
                    error.contains(part),
                    "{form} {value:?}: the error does not name {part}: {error}"
                );
            }
        }
    }
}

#[test]
fn a_changed_input_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    for dir in [&first, &second] {
        std::fs::create_dir(dir).unwrap();
        write_lines(&dir.join("a.txt"), &lines("a", 5));
    }
    let (_, snapshots) = partial(&TextLinesSource::new(&first).unwrap(), 1, 2);
    let error = run(&TextLinesSource::new(&second).unwrap(), 1, Some(&snapshots))
        .expect_err("a snapshot of another input was accepted");
    for part in [
        UID,
        &first.canonicalize().unwrap().display().to_string(),
        &second.canonicalize().unwrap().display().to_string(),
    ] {
        assert!(
            error.contains(part),
            "the error does not name {part}: {error}"
        );
    }
}

#[test]
fn a_file_added_after_a_checkpoint_is_read_once_after_the_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (lines("a", 10), lines("b", 10), lines("c", 10));
    write_lines(&tmp.path().join("a.txt"), &a);
    write_lines(&tmp.path().join("b.txt"), &b);
    for (before, after) in [(1, 1), (2, 3), (3, 2)] {
        std::fs::remove_file(tmp.path().join("c.txt")).ok();
        // The job read everything and took its final checkpoint.
        let source = TextLinesSource::new(tmp.path()).unwrap();
        let (read, snapshots) = run(&source, before, None).unwrap();
        assert_eq!(sorted(read), sorted([a.clone(), b.clone()].concat()));
        write_lines(&tmp.path().join("c.txt"), &c);
        let source = TextLinesSource::new(tmp.path()).unwrap();
        let (read, snapshots) = run(&source, after, Some(&snapshots)).unwrap();
        assert_eq!(sorted(read), c, "{before} -> {after}");
        // And a restore from that run's snapshots reads nothing again.
        let (read, _) = run(&source, before, Some(&snapshots)).unwrap();
        assert!(read.is_empty(), "{before} -> {after}: read again: {read:?}");
    }
}

#[test]
fn a_file_shorter_than_its_position_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.txt");
    write_lines(&path, &lines("a", 10));
    let source = TextLinesSource::new(tmp.path()).unwrap();
    let (_, midway) = partial(&source, 1, 6);
    let (_, finished) = run(&source, 1, None).unwrap();
    write_lines(&path, &lines("a", 2));
    for (when, snapshots) in [("midway", midway), ("finished", finished)] {
        let error = run(&source, 1, Some(&snapshots))
            .err()
            .unwrap_or_else(|| panic!("{when}: a truncated file was accepted"));
        assert!(
            error.contains(&path.canonicalize().unwrap().display().to_string())
                && error.contains("shorter"),
            "{when}: {error}"
        );
    }
}

#[test]
fn a_legacy_snapshot_resumes_its_unfinished_files_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (lines("a", 5), lines("b", 5));
    let (pa, pb) = (tmp.path().join("a.txt"), tmp.path().join("b.txt"));
    write_lines(&pa, &a);
    write_lines(&pb, &b);
    // Earlier versions: finished files dropped (a.txt), Split, no input recorded.
    let offset = b[0].len() + 1;
    let legacy = vec![vec![list(
        "file-positions",
        RedistributionMode::Split,
        &[json!({"path": pb, "offset": offset, "line": 1})],
    )]];
    let source = TextLinesSource::new(tmp.path()).unwrap();
    let (read, _) = run(&source, 2, Some(&legacy)).unwrap();
    assert_eq!(read, b[1..].to_vec());
}

// ---------------------------------------------------------------------------
// Inputs that are not regular files.

#[test]
fn a_fifo_input_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let error = match TextLinesSource::new(&fifo) {
        Ok(_) => panic!("a FIFO input was accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        error,
        format!(
            "input path '{}' is a FIFO, not a regular file or a directory",
            fifo.display()
        )
    );
}

#[test]
fn special_files_in_an_input_directory_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    write_lines(&tmp.path().join("a.txt"), &lines("a", 3));
    mkfifo(&tmp.path().join("b.fifo"));
    let outside = tempfile::tempdir().unwrap();
    write_lines(&outside.path().join("secret.txt"), &["secret".to_owned()]);
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), tmp.path().join("c.txt"))
        .unwrap();
    let source = TextLinesSource::new(tmp.path()).unwrap();
    assert_eq!(source.files().len(), 1, "{:?}", source.files());
    let (read, _) = run(&source, 1, None).unwrap();
    assert_eq!(read, lines("a", 3));
}

/// Polls `reader` to its end on another thread; `None` if it blocked.
fn drain_unless_blocked(
    mut reader: Box<dyn SourceReader<String>>,
) -> Option<Result<Vec<String>, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let result = drain(reader.as_mut(), &mut out).map(|()| out);
        let _ = tx.send(result);
    });
    rx.recv_timeout(BLOCKED_AFTER).ok()
}

#[test]
fn a_file_swapped_for_a_fifo_fails_the_read_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.txt");
    write_lines(&path, &lines("a", 3));
    for input in [path.clone(), tmp.path().to_path_buf()] {
        let source = TextLinesSource::new(&input).unwrap();
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let reader = source.create_reader(&subtask(0, 1, None)).unwrap();
        let result = drain_unless_blocked(reader).expect("the read blocked on a FIFO");
        let error = result.expect_err("a FIFO was read");
        assert!(
            error.contains("FIFO") && error.contains(&path.display().to_string()),
            "{error}"
        );
        std::fs::remove_file(&path).unwrap();
        write_lines(&path, &lines("a", 3));
    }
}
