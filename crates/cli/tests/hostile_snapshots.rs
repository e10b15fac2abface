//! Damaged, crafted and foreign snapshots through the `flowstate` binary
//! (issue 11, items 4, 5 and 6): what a checkpoint directory can make the
//! engine do.
//!
//! - Falling back past a damaged checkpoint is refused when the job's sinks
//!   already published its output (the replay would publish it again), and
//!   allowed knowingly with `--allow-fallback-duplicates`; a checkpoint that
//!   is merely unreadable to this build (a newer format version) is never
//!   deleted by the fallback.
//! - Metadata whose structure does not hold (a reversed key-group range, a
//!   range beyond max-parallelism, a subtask listed twice) is refused by
//!   restore, `verify` and `inspect` with a message naming it, never a panic.
//! - `_metadata` larger than the limit is refused before it is read.
//!
//! Crafted metadata is resealed with a correct checksum, as an attacker
//! would. Pass or fail never depends on timing.

mod support;

use std::path::{Path, PathBuf};

use flowstate::runtime::checkpoint::CheckpointMetadata;
use support::{
    arg, committed_lines, copy_dir, expected_keyed_count_result, run_args, strings, tempdir,
};

const RECORDS: u64 = 20_000;
const KEYS: u64 = 1_000;

fn args(ck: &Path, output: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "run",
        "keyed-count",
        "--records",
        &RECORDS.to_string(),
        "--keys",
        &KEYS.to_string(),
        "--checkpoint-interval",
        "50ms",
        "--checkpoint-dir",
        arg(ck),
        "--retain",
        "3",
        "--parallelism",
        "2",
        "--rest",
        "off",
    ]);
    if let Some(output) = output {
        args.extend(strings(&["--output", arg(output)]));
    }
    args.extend(strings(extra));
    args
}

fn expected() -> String {
    expected_keyed_count_result(RECORDS, KEYS)
}

/// The one job directory under `ck` and its completed checkpoint ids, ascending.
fn checkpoints(ck: &Path) -> (String, Vec<u64>) {
    let jobs: Vec<String> = std::fs::read_dir(ck)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        jobs.len(),
        1,
        "one job expected under {}: {jobs:?}",
        ck.display()
    );
    let job = jobs[0].clone();
    let mut ids: Vec<u64> = std::fs::read_dir(ck.join(&job))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("_metadata").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    (job, ids)
}

/// A checkpoint directory holding at least two completed checkpoints of one
/// job (a run to the end, then a `--restore latest` run), with `output` the
/// file sink's directory if given.
fn two_checkpoints(root: &Path, name: &str, output: Option<&Path>) -> (PathBuf, String, Vec<u64>) {
    let ck = root.join(name);
    for extra in [&[][..], &["--restore", "latest"][..]] {
        let run = run_args(root, &args(&ck, output, extra));
        run.assert_success();
        assert_eq!(run.result_line(), expected());
    }
    let (job, ids) = checkpoints(&ck);
    assert!(
        ids.len() >= 2,
        "two completed checkpoints expected: {ids:?}"
    );
    (ck, job, ids)
}

fn keyed_file(ck: &Path, job: &str, id: u64) -> (String, PathBuf) {
    let dir = ck.join(job).join(format!("chk-{id}"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".keyed"))
        .collect();
    names.sort();
    let name = names.first().expect("a keyed file").clone();
    (format!("{job}/chk-{id}/{name}"), dir.join(name))
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// Item 4: with exactly-once file output, `--restore latest` past a damaged
/// newest checkpoint is refused (naming the file and the flag), leaves the
/// output and the checkpoints as they were, and goes ahead with
/// `--allow-fallback-duplicates`. Old code restored the older checkpoint and
/// replayed into the output what the newer one had published.
#[test]
fn falling_back_past_published_output_is_refused_unless_allowed() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let (ck, job, ids) = two_checkpoints(tmp.path(), "ck", Some(&out));
    let newest = *ids.last().unwrap();
    let (shown, path) = keyed_file(&ck, &job, newest);
    flip_byte(&path);
    let before = committed_lines(&out);

    let run = run_args(tmp.path(), &args(&ck, Some(&out), &["--restore", "latest"]));
    run.assert_failure();
    let message = run.single_error_line();
    for needle in [
        shown.as_str(),
        "--allow-fallback-duplicates",
        "publish again",
    ] {
        assert!(
            message.contains(needle),
            "the error lacks {needle:?}: {run}"
        );
    }
    assert_eq!(
        committed_lines(&out),
        before,
        "the refused run changed the output"
    );
    assert!(
        path.exists(),
        "the refused run deleted the damaged checkpoint"
    );
    assert_eq!(
        checkpoints(&ck).1,
        ids,
        "the refused run changed the checkpoints"
    );

    let run = run_args(
        tmp.path(),
        &args(
            &ck,
            Some(&out),
            &["--restore", "latest", "--allow-fallback-duplicates"],
        ),
    );
    run.assert_success();
    assert_eq!(run.result_line(), expected());
    assert!(run.stderr.contains("published again"), "{run}");
}

/// Item 4: a checkpoint this build cannot read because a newer flowstate
/// wrote it is skipped but never deleted (old code deleted every skipped
/// checkpoint, so a downgrade destroyed the newest state). Without a
/// committing sink the fallback itself goes ahead.
#[test]
fn a_checkpoint_of_a_newer_version_is_skipped_but_kept() {
    let tmp = tempdir();
    let (ck, job, ids) = two_checkpoints(tmp.path(), "ck", None);
    let newest = *ids.last().unwrap();
    let metadata = ck.join(&job).join(format!("chk-{newest}/_metadata"));
    let bytes = std::fs::read(&metadata).unwrap();
    let resealed = reseal(&bytes[8..bytes.len() - 4], 99);
    std::fs::write(&metadata, &resealed).unwrap();

    let run = run_args(tmp.path(), &args(&ck, None, &["--restore", "latest"]));
    run.assert_success();
    assert_eq!(run.result_line(), expected());
    assert!(run.stderr.contains("version 99"), "{run}");
    assert_eq!(
        std::fs::read(&metadata).unwrap(),
        resealed,
        "the checkpoint of a newer version was deleted or changed"
    );
    let (_, path) = keyed_file(&ck, &job, newest);
    assert!(path.exists(), "a file of the newer checkpoint was deleted");
}

/// `magic | version | payload | crc32c`, as flowstate seals `_metadata`.
fn reseal(payload: &[u8], version: u32) -> Vec<u8> {
    let mut out = b"FSMD".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// CRC-32C (Castagnoli), bitwise: an independent implementation of the
/// checksum the format specifies.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Item 5: metadata with a valid seal but a structure that does not hold.
/// Old code panicked on a reversed range, silently dropped the keys beyond
/// max-parallelism, and lost half the state of a duplicated subtask while
/// `verify` said all was sound.
#[test]
fn crafted_metadata_structure_is_refused_everywhere() {
    let tmp = tempdir();
    let (original_ck, job, ids) = two_checkpoints(tmp.path(), "ck", None);
    let newest = *ids.last().unwrap();
    let original = std::fs::read(
        original_ck
            .join(&job)
            .join(format!("chk-{newest}/_metadata")),
    )
    .unwrap();
    let decoded = CheckpointMetadata::decode("m", &original).unwrap();
    let keyed_operator = decoded
        .operators
        .iter()
        .position(|o| o.subtasks.iter().any(|s| s.keyed.is_some()))
        .expect("a keyed operator");

    type Craft = fn(&mut CheckpointMetadata, usize);
    let crafts: [(&str, Craft, &str); 4] = [
        (
            "reversed range",
            |m, o| {
                let keyed = m.operators[o].subtasks[0].keyed.as_mut().unwrap();
                std::mem::swap(&mut keyed.key_group_start, &mut keyed.key_group_end);
            },
            "reversed",
        ),
        (
            "beyond max parallelism",
            |m, o| {
                let last = m.operators[o].subtasks.len() - 1;
                m.operators[o].subtasks[last]
                    .keyed
                    .as_mut()
                    .unwrap()
                    .key_group_end += 100;
            },
            "beyond max_parallelism",
        ),
        (
            "duplicated subtask",
            |m, o| {
                let first = m.operators[o].subtasks[0].clone();
                m.operators[o].subtasks[1] = first;
            },
            "appears twice",
        ),
        (
            "path outside the job",
            |m, o| {
                m.operators[o].subtasks[0].keyed.as_mut().unwrap().file.path =
                    "../../etc/passwd".into();
            },
            "'..'",
        ),
    ];
    for (what, craft, needle) in crafts {
        let mut crafted = decoded.clone();
        craft(&mut crafted, keyed_operator);
        // A fresh copy: the fallback below deletes the damaged checkpoint.
        let ck = tmp.path().join(format!("ck-{}", what.replace(' ', "-")));
        copy_dir(&original_ck, &ck);
        let metadata_path = ck.join(&job).join(format!("chk-{newest}/_metadata"));
        std::fs::write(&metadata_path, crafted.encode().unwrap()).unwrap();
        let location = ck.join(&job).join(format!("chk-{newest}"));

        let restore = run_args(tmp.path(), &args(&ck, None, &["--restore", arg(&location)]));
        restore.assert_failure();
        let message = restore.single_error_line();
        assert!(
            message.contains(needle) && message.contains("_metadata"),
            "{what}: restore's error lacks {needle:?} or the file: {restore}"
        );
        for tool in ["verify", "inspect"] {
            let run = run_args(tmp.path(), &strings(&[tool, arg(&location)]));
            run.assert_failure();
            assert!(
                run.single_error_line().contains(needle),
                "{what}: {tool} does not say {needle:?}: {run}"
            );
        }
        // `--restore latest` falls back to the older, intact checkpoint.
        let latest = run_args(tmp.path(), &args(&ck, None, &["--restore", "latest"]));
        latest.assert_success();
        assert_eq!(latest.result_line(), expected(), "{what}");
        assert!(
            !metadata_path.exists(),
            "{what}: the checkpoint proved damaged is still there"
        );
    }
}

/// Item 6: a huge `_metadata` is refused from its size, before it is read
/// (old code read 2 GB into memory). The file is sparse: it costs no disk.
#[test]
fn an_oversized_metadata_is_refused_before_it_is_read() {
    let tmp = tempdir();
    let dir = tmp.path().join("savepoint-huge");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::File::create(dir.join("_metadata")).unwrap();
    file.set_len(2 << 30).unwrap();
    for tool in ["inspect", "verify"] {
        let run = run_args(tmp.path(), &strings(&[tool, arg(&dir)]));
        run.assert_failure();
        assert!(
            run.single_error_line().contains("more than the limit"),
            "{tool}: {run}"
        );
    }
    let ck = tmp.path().join("ck");
    let run = run_args(tmp.path(), &args(&ck, None, &["--restore", arg(&dir)]));
    run.assert_failure();
    assert!(
        run.single_error_line().contains("more than the limit"),
        "{run}"
    );
}

/// keyed-count of 200,000 records whose sink is throttled to a fifth of the
/// source's rate, with unaligned checkpoints.
fn unaligned_args(ck: &Path, output: &Path, extra: &[&str]) -> Vec<String> {
    let mut all = vec![
        "--checkpointing",
        "unaligned",
        "--sink-rate",
        "20000",
        "--rate",
        "100000",
    ];
    all.extend_from_slice(extra);
    let mut run_args = args(ck, Some(output), &all);
    // More records than the others: the run must outlast a few checkpoints.
    let records = run_args.iter().position(|a| a == "--records").unwrap() + 1;
    run_args[records] = "200000".into();
    run_args
}

/// A checkpoint directory whose newest completed checkpoint holds in-flight
/// records of an unaligned checkpoint (`.channels` files): keyed-count with a
/// throttled sink and unaligned checkpoints, SIGKILLed once such a
/// checkpoint completed. Returns the directory, the job and that checkpoint.
fn unaligned_checkpoint(root: &Path, output: &Path) -> (PathBuf, String, u64) {
    let ck = root.join("ck-unaligned");
    let run_args = unaligned_args(&ck, output, &[]);
    let process = support::start(root, &root.join("logs"), "unaligned", &run_args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // The checkpoint directory appears before its job's directory does: ask
    // only for what `--restore latest` would take.
    while !support::newest_has_channel_state(&ck) {
        assert!(
            std::time::Instant::now() < deadline,
            "no unaligned checkpoint with channel state in 120 s: {}",
            process.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    process.signal(9);
    let _ = process.wait();
    let (job, ids) = checkpoints(&ck);
    let id = *ids
        .iter()
        .rev()
        .find(|&&id| {
            std::fs::read_dir(ck.join(&job).join(format!("chk-{id}")))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".channels"))
        })
        .expect("the checkpoint with channel state is retained");
    (ck, job, id)
}

/// Issue 18: channel state is checked like keyed state before anything of
/// it is replayed. A flipped byte in a `.channels` file, a truncated one,
/// and metadata naming an input edge the job does not have are refused by
/// `--restore`, naming the file or the edge, never a panic; the intact
/// checkpoint restores and finishes with the reference result.
#[test]
fn damaged_or_crafted_channel_state_is_refused() {
    let tmp = tempdir();
    let output = tmp.path().join("out");
    let (original_ck, job, id) = unaligned_checkpoint(tmp.path(), &output);
    let dir = |ck: &Path| ck.join(&job).join(format!("chk-{id}"));
    let channels_file = |ck: &Path| {
        std::fs::read_dir(dir(ck))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".channels"))
            .expect("a channel state file")
    };
    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Damage<'_>, &str)> = vec![
        (
            "flipped byte",
            Box::new(|ck: &Path| flip_byte(&channels_file(ck))),
            ".channels",
        ),
        (
            "truncated",
            Box::new(|ck: &Path| {
                let path = channels_file(ck);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 9]).unwrap();
            }),
            ".channels",
        ),
        (
            "an edge the job does not have",
            Box::new(|ck: &Path| {
                let path = dir(ck).join("_metadata");
                let mut m =
                    CheckpointMetadata::decode("m", &std::fs::read(&path).unwrap()).unwrap();
                for operator in &mut m.operators {
                    for subtask in &mut operator.subtasks {
                        if let Some(channels) = &mut subtask.channels {
                            for input in &mut channels.inputs {
                                input.edge = 7;
                            }
                        }
                    }
                }
                std::fs::write(&path, m.encode().unwrap()).unwrap();
            }),
            "input edge 7",
        ),
    ];
    for (what, damage, needle) in cases {
        let ck = tmp.path().join(format!("ck-{}", what.replace(' ', "-")));
        copy_dir(&original_ck, &ck);
        damage(&ck);
        let restore = run_args(
            tmp.path(),
            &unaligned_args(&ck, &output, &["--restore", arg(&dir(&ck))]),
        );
        restore.assert_failure();
        let message = restore.single_error_line();
        assert!(
            message.contains(needle),
            "{what}: restore's error lacks {needle:?}: {restore}"
        );
    }
    // The intact one replays its in-flight records and finishes exactly.
    let restore = run_args(
        tmp.path(),
        &unaligned_args(
            &original_ck,
            &output,
            &["--restore", arg(&dir(&original_ck))],
        ),
    );
    restore.assert_success();
    assert_eq!(
        restore.result_line(),
        expected_keyed_count_result(200_000, KEYS)
    );
}
