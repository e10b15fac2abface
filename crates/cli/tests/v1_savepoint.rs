//! A committed version-1 savepoint still restores (issue 12, item 7).
//!
//! `tests/fixtures/v1-savepoint-keyed-count/` is a savepoint written by
//! flowstate when bincode 2 still defined the entry encoding (format version
//! 1): `flowstate run keyed-count --records 2000 --keys 50 --parallelism 2
//! --max-parallelism 8 --rate 400 --checkpoint-interval 1h --savepoint-dir ...
//! --rest 127.0.0.1:0`, then `flowstate savepoint` about 2.5 s in (1003 records
//! in) and `flowstate cancel`. `v1-savepoint-keyed-count.dump.csv` is
//! `flowstate state dump --format csv` of its `count-sum` state as that build
//! printed it (sorted by key). Neither file may be regenerated: they are the
//! bytes older releases wrote, and these tests prove that today's reader (the
//! format owned by `flowstate_state::codec`) reads them unchanged.

mod support;

use std::path::{Path, PathBuf};

use support::{arg, copy_dir, expected_keyed_count_result, flowstate, tempdir};

/// The job the fixture was taken from.
const RECORDS: u64 = 2000;
const KEYS: u64 = 50;
/// Records the job had counted when the savepoint was taken.
const RECORDS_IN_SAVEPOINT: u64 = 1003;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A copy of the fixture savepoint under `dir` (a restore must not be able to
/// touch the committed files).
fn savepoint_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("v1-savepoint");
    copy_dir(&fixtures().join("v1-savepoint-keyed-count"), &copy);
    copy
}

#[test]
fn v1_savepoint_dumps_as_it_did_when_written() {
    let dir = tempdir();
    let savepoint = savepoint_copy(dir.path());
    let run = flowstate(
        dir.path(),
        &[
            "state",
            "dump",
            arg(&savepoint),
            "--operator",
            "count-and-sum",
            "--state",
            "count-sum",
            "--format",
            "csv",
        ],
    );
    run.assert_success();
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"key,value.0,value.1"), "{run}");
    let rows = lines.split_off(1);
    let mut rows: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|line| {
            let fields: Vec<u64> = line
                .split(',')
                .map(|f| f.parse().unwrap_or_else(|_| panic!("bad row {line:?}")))
                .collect();
            assert_eq!(fields.len(), 3, "bad row {line:?}");
            (fields[0], fields[1], fields[2])
        })
        .collect();
    rows.sort_unstable();
    assert_eq!(rows.len() as u64, KEYS, "{run}");
    let counted: u64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(counted, RECORDS_IN_SAVEPOINT);

    let expected = std::fs::read_to_string(fixtures().join("v1-savepoint-keyed-count.dump.csv"))
        .expect("the committed dump");
    let mut expected: Vec<&str> = expected
        .lines()
        .filter(|l| !l.starts_with("key,"))
        .collect();
    expected.sort_by_key(|l| l.split(',').next().and_then(|k| k.parse::<u64>().ok()));
    let dumped: Vec<String> = rows
        .iter()
        .map(|(k, c, s)| format!("{k},{c},{s}"))
        .collect();
    assert_eq!(dumped, expected);
}

#[test]
fn v1_savepoint_restores_and_finishes_with_the_exact_result() {
    let dir = tempdir();
    let savepoint = savepoint_copy(dir.path());
    // At the parallelism it was taken at, and rescaled down and up.
    for parallelism in [2, 1, 3] {
        let checkpoints = dir.path().join(format!("ck-{parallelism}"));
        let run = flowstate(
            dir.path(),
            &[
                "run",
                "keyed-count",
                "--records",
                &RECORDS.to_string(),
                "--keys",
                &KEYS.to_string(),
                "--parallelism",
                &parallelism.to_string(),
                "--max-parallelism",
                "8",
                "--checkpoint-interval",
                "1h",
                "--checkpoint-dir",
                arg(&checkpoints),
                "--restore",
                arg(&savepoint),
                "--rest",
                "off",
            ],
        );
        run.assert_success();
        assert_eq!(
            run.stdout.lines().last(),
            Some(expected_keyed_count_result(RECORDS, KEYS).as_str()),
            "parallelism {parallelism}: {run}"
        );
    }
}
