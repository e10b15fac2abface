//! End-to-end acceptance tests of savepoints through the `flowstate` binary
//! (issue 5): a savepoint of a running job taken with `flowstate savepoint`,
//! the job cancelled, the savepoint moved and restored at other parallelisms
//! (and state backends); stop-with-savepoint and resume, with the savepoint's
//! state dumped and compared with the committed output; a savepoint restored
//! into a changed job; the HTTP API of a real running job over a real socket;
//! and exactly-once under SIGKILL with savepoints in the mix.
//!
//! Results are checked with the independent reference implementation in
//! `support`; the HTTP API is spoken raw (HTTP/1.1 over a `TcpStream`, the
//! bodies read with `serde_json`), never through the flowstate crates. Pass or
//! fail never depends on timing: runs are throttled with `--rate` so that they
//! are still going when a test acts on them, and no assertion depends on where
//! exactly a savepoint landed. Kill moments come from a seeded generator: set
//! `FLOWSTATE_CRASH_SEED` to replay a run's moments (the seed is printed).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowstate_rest::vertex_id;
use serde_json::Value;
use support::{
    Backend, Ending, Json, Rng, Run, Served, arg, check_keyed_count_output, check_wordcount_output,
    committed_lines, copy_dir, count_words, crash_seed, expected_keyed_count_result, flowstate,
    flowstate_env, http, http_with, keyed_count_line, one_at_a_time, run_args, splitmix64,
    start_served, strings, tempdir, try_http, visible_entries, workload_values,
};

// ---------------------------------------------------------------------------
// Savepoints and cancels of served jobs.

impl Served {
    fn savepoint(&self, cwd: &Path, target: &Path) -> PathBuf {
        self.savepoint_as(cwd, arg(target), target)
    }

    /// `flowstate savepoint JOB --target <given>`, run in `cwd`: the savepoint
    /// must land right under `target`.
    fn savepoint_as(&self, cwd: &Path, given: &str, target: &Path) -> PathBuf {
        let run = flowstate(
            cwd,
            &[
                "savepoint",
                &self.job,
                "--target",
                given,
                "--rest",
                &self.addr,
            ],
        );
        run.assert_success();
        let location = completed_location(&run);
        assert_eq!(
            run.stdout.lines().count(),
            1,
            "savepoint prints one line: {run}"
        );
        assert_in_target(&location, target);
        location
    }

    /// `flowstate cancel JOB`; then the run must end with the cancel error.
    fn cancel(self, cwd: &Path) -> Run {
        let cancel = flowstate(cwd, &["cancel", &self.job, "--rest", &self.addr]);
        cancel.assert_success();
        let run = self.process.wait();
        run.assert_failure();
        let error = run.single_error_line();
        assert!(
            error.contains("job keyed-count was cancelled"),
            "unexpected error after a cancel: {run}"
        );
        run
    }
}

/// The location in the `Savepoint completed: <location>` line of a client
/// command, as a local path.
fn completed_location(run: &Run) -> PathBuf {
    let location = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Savepoint completed: "))
        .unwrap_or_else(|| panic!("no 'Savepoint completed:' line: {run}"));
    PathBuf::from(location.strip_prefix("file://").unwrap_or(location))
}

/// A savepoint location is a `savepoint-...` directory right under the
/// target, with a `_metadata`.
fn assert_in_target(location: &Path, target: &Path) {
    assert_eq!(
        location.parent(),
        Some(target),
        "the savepoint {} is not right under its target {}",
        location.display(),
        target.display()
    );
    let name = location.file_name().unwrap().to_string_lossy();
    assert!(
        name.starts_with("savepoint-"),
        "savepoint directory named {name}"
    );
    assert!(
        location.join("_metadata").is_file(),
        "no _metadata in {}",
        location.display()
    );
}

/// The keyed state files of operator `uid` in a savepoint, by subtask.
fn assert_keyed_files(savepoint: &Path, uid: &str, parallelism: u32) {
    let dir = savepoint.join("state").join(uid);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..parallelism).map(|i| format!("{i}.keyed")).collect();
    assert_eq!(names, expected, "keyed files of {uid} in the savepoint");
}

/// The lines of the visible (committed) files of `dir`, whatever else it holds.
fn visible_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for name in visible_entries(dir) {
        let text = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("committed file {name} unreadable: {e}"));
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "committed file {name} ends with a partial line"
        );
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

// ---------------------------------------------------------------------------
// keyed-count.

/// `run keyed-count --records N --keys K --parallelism P` and `extra`.
fn keyed_count(records: u64, keys: u64, parallelism: u32, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "run",
        "keyed-count",
        "--records",
        &records.to_string(),
        "--keys",
        &keys.to_string(),
        "--parallelism",
        &parallelism.to_string(),
    ]);
    args.extend(strings(extra));
    args
}

/// `(records, keys, checksum)` of a `RESULT records=N keys=K checksum=C` line.
fn parse_result(line: &str) -> (u64, u64, u64) {
    support::assert_keyed_count_result_shape(line);
    let fields: Vec<&str> = line.split(' ').collect();
    let value = |i: usize| fields[i].split_once('=').unwrap().1;
    (
        value(1).parse().unwrap(),
        value(2).parse().unwrap(),
        u64::from_str_radix(value(3), 16).unwrap(),
    )
}

/// The brief's checksum of a keyed-count state (`key -> (count, sum)`).
fn checksum_of(state: &BTreeMap<u64, (u64, u64)>) -> u64 {
    state.iter().fold(0u64, |acc, (&key, &(count, sum))| {
        acc.wrapping_add(splitmix64(splitmix64(splitmix64(key) ^ count) ^ sum))
    })
}

/// Checks the committed output of a keyed-count run that stopped part-way:
/// every key's lines carry counts 1..c exactly once, the values its updates
/// added are values of distinct records of that key in W, one line per
/// record. Returns the state it describes: `key -> (c, sum at count c)`.
fn check_partial_output(lines: &[String], records: u64, keys: u64) -> BTreeMap<u64, (u64, u64)> {
    let all = workload_values(records, keys);
    let mut by_key: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for line in lines {
        let (key, count, sum) = keyed_count_line(line, keys);
        let previous = by_key.entry(key).or_default().insert(count, sum);
        assert!(
            previous.is_none(),
            "key {key}: count {count} appears more than once"
        );
    }
    let mut state = BTreeMap::new();
    for (key, updates) in &by_key {
        let c = updates.len() as u64;
        assert_eq!(
            updates.keys().copied().collect::<Vec<_>>(),
            (1..=c).collect::<Vec<_>>(),
            "key {key}: counts are not exactly 1..{c}"
        );
        let values = all
            .get(key)
            .unwrap_or_else(|| panic!("key {key} gets no record in W"));
        let mut previous = 0u64;
        let mut added = Vec::new();
        for &sum in updates.values() {
            added.push(sum.wrapping_sub(previous));
            previous = sum;
        }
        added.sort_unstable();
        let mut unused = values.iter().peekable();
        for value in &added {
            while unused.peek().is_some_and(|&&v| v < *value) {
                unused.next();
            }
            assert_eq!(
                unused.next(),
                Some(value),
                "key {key}: an update added {value}, not the value of a (distinct) record of the key"
            );
        }
        state.insert(*key, (c, previous));
    }
    state
}

/// Scenario of tests 1 and 2: a throttled keyed-count run at parallelism 2
/// on `first` (no periodic checkpoint: `--checkpoint-interval 1h`), a
/// savepoint with `flowstate savepoint` once half the records are in, then
/// `flowstate cancel`. The savepoint must not have committed any output. The
/// savepoint is then moved (and renamed), and for each of `restores`, a copy
/// of the output directory (in-progress files included) is resumed from it:
/// the RESULT line and the exactly-once check of the copy must be right.
fn savepoint_cancel_and_restore(
    name: &str,
    records: u64,
    rate: u64,
    first: Backend,
    restores: &[(u32, Backend)],
) {
    const KEYS: u64 = 1_000_000;
    let _turn = one_at_a_time();
    let started = Instant::now();
    let tmp = tempdir();
    let root = tmp.path();
    let (out, logs, target) = (root.join("out"), root.join("logs"), root.join("savepoints"));
    let expected = expected_keyed_count_result(records, KEYS);

    let mut args = keyed_count(
        records,
        KEYS,
        2,
        &[
            "--checkpoint-interval",
            "1h",
            "--checkpoint-dir",
            arg(&root.join("ck")),
            "--output",
            arg(&out),
            "--rate",
            &rate.to_string(),
            // Requests may name only this directory (or one under it).
            "--savepoint-dir",
            arg(&target),
        ],
    );
    args.extend(first.args(&root.join("state")));
    // The job runs in a directory of its own; `flowstate savepoint` is given a
    // target relative to its own working directory, and must resolve it there.
    let job_cwd = root.join("job-cwd");
    std::fs::create_dir_all(&job_cwd).unwrap();
    let mut job = start_served(&job_cwd, &logs, "run-1", &args);
    let records_in = job.wait_for_records(records / 2);
    let savepoint = job.savepoint_as(root, "savepoints", &target);
    assert_keyed_files(&savepoint, "count-and-sum", 2);
    let run = job.cancel(root);
    eprintln!(
        "[{name}] savepoint after {records_in} records in, cancelled after {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        run.error_lines()[0]
    );
    assert!(
        visible_entries(&out).is_empty(),
        "an intermediate savepoint (or the cancel) committed output: {:?}",
        visible_entries(&out)
    );

    // Relocate the savepoint: every restore below reads it from elsewhere, under
    // another name, with its original target gone.
    let elsewhere = root.join("elsewhere").join("deeper");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let moved = elsewhere.join("moved-savepoint");
    std::fs::rename(&savepoint, &moved).unwrap();
    std::fs::remove_dir(&target).unwrap();

    for (i, &(parallelism, backend)) in restores.iter().enumerate() {
        let label = format!("p{parallelism}-{backend:?}");
        let copy = root.join(format!("out-{label}"));
        copy_dir(&out, &copy);
        // Alternately an absolute path and one relative to the working directory.
        let (cwd, restore) = if i % 2 == 0 {
            (root.to_path_buf(), arg(&moved).to_owned())
        } else {
            (elsewhere.clone(), "moved-savepoint".to_owned())
        };
        let mut args = keyed_count(
            records,
            KEYS,
            parallelism,
            &[
                "--checkpoint-dir",
                arg(&root.join(format!("ck-{label}"))),
                "--output",
                arg(&copy),
                "--restore",
                &restore,
                "--rest",
                "off",
            ],
        );
        args.extend(backend.args(&root.join(format!("state-{label}"))));
        let run_started = Instant::now();
        let run = run_args(&cwd, &args);
        let run_secs = run_started.elapsed().as_secs_f64();
        run.assert_success();
        assert_eq!(run.result_line(), expected, "restore at {label}: {run}");
        check_keyed_count_output(&committed_lines(&copy), records, KEYS);
        eprintln!(
            "[{name}] restored at {label} from {restore} in {run_secs:.1}s: right; {:.1}s in all",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Test 1: a savepoint of a running job (heap, p2) taken with `flowstate
/// savepoint`, the job cancelled; the savepoint, moved elsewhere, resumes the
/// job at parallelism 1, 3 and 4 (and on RocksDB, full and incremental, at
/// p2): every resumed run gets W's result and exactly-once output. The
/// savepoint committed nothing by itself.
#[test]
fn a_moved_savepoint_resumes_a_cancelled_job_at_other_parallelisms() {
    let expected = expected_keyed_count_result(5_000_000, 1_000_000);
    assert!(
        expected.ends_with("checksum=3ada6211620c6f1f"),
        "reference: {expected}"
    );
    #[allow(unused_mut)]
    let mut restores = vec![(1, Backend::Heap), (3, Backend::Heap), (4, Backend::Heap)];
    #[cfg(feature = "rocksdb")]
    restores.extend([(2, Backend::RocksDb), (2, Backend::RocksDbIncremental)]);
    savepoint_cancel_and_restore("heap-p2", 5_000_000, 400_000, Backend::Heap, &restores);
}

/// Test 2: the reverse switch: a savepoint of a RocksDB job with incremental
/// checkpoints resumes on the heap backend at parallelism 3.
#[cfg(feature = "rocksdb")]
#[test]
fn a_rocksdb_savepoint_resumes_on_the_heap_backend() {
    savepoint_cancel_and_restore(
        "rocksdb-incremental-p2",
        2_000_000,
        300_000,
        Backend::RocksDbIncremental,
        &[(3, Backend::Heap)],
    );
}

/// The rows of `flowstate state dump ... --format csv` of keyed-count's
/// `count-sum` state: `key -> (count, sum)`.
fn parse_dump(run: &Run) -> BTreeMap<u64, (u64, u64)> {
    let mut lines = run.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("key,"),
        "expected a CSV header line first: {run}"
    );
    let mut state = BTreeMap::new();
    for line in lines {
        let fields: Vec<u64> = line
            .split(',')
            .map(|f| {
                f.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad dump line {line:?}"))
            })
            .collect();
        let [key, count, sum] = fields[..] else {
            panic!("bad dump line {line:?} (expected key,count,sum)");
        };
        let previous = state.insert(key, (count, sum));
        assert!(previous.is_none(), "key {key} dumped twice");
    }
    state
}

/// Test 3: stop-with-savepoint, then resume. `flowstate stop JOB --savepoint
/// DIR` ends the run (exit 0, RESULT of what it processed) with its output
/// committed up to the savepoint; the savepoint's `count-sum` state, dumped
/// with `flowstate state dump`, is exactly what that output says (key by key,
/// and the run's checksum); resuming from the savepoint into the same output
/// directory finishes W with exactly-once output across both runs.
#[test]
fn stop_with_savepoint_then_resume_is_exactly_once_and_the_dump_matches() {
    const RECORDS: u64 = 2_000_000;
    const KEYS: u64 = 1_000_000;
    let _turn = one_at_a_time();
    let started = Instant::now();
    let tmp = tempdir();
    let root = tmp.path();
    let (out, logs, target, ck) = (
        root.join("out"),
        root.join("logs"),
        root.join("savepoints"),
        root.join("ck"),
    );
    let common = [
        "--checkpoint-interval",
        "300ms",
        "--checkpoint-dir",
        arg(&ck),
        "--output",
        arg(&out),
    ];
    let mut first = keyed_count(RECORDS, KEYS, 2, &common);
    first.extend(strings(&[
        "--rate",
        "300000",
        "--savepoint-dir",
        arg(&target),
    ]));
    let mut job = start_served(root, &logs, "run-1", &first);
    let records_in = job.wait_for_records(RECORDS / 4);

    let stop = flowstate(
        root,
        &[
            "stop",
            &job.job,
            "--savepoint",
            arg(&target),
            "--rest",
            &job.addr,
        ],
    );
    stop.assert_success();
    let savepoint = completed_location(&stop);
    assert_in_target(&savepoint, &target);
    assert_eq!(
        stop.stdout,
        format!(
            "Savepoint completed: {}\nJob {} stopped.\n",
            savepoint.display(),
            job.job
        ),
        "{stop}"
    );
    let run1 = job.process.wait();
    run1.assert_success();
    let (records1, keys1, checksum1) = parse_result(run1.result_line());
    eprintln!(
        "[stop] {records_in} records in at the stop request; run 1 ended after {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        run1.result_line()
    );
    assert!(
        (records_in..RECORDS).contains(&records1),
        "the stopped run processed {records1} records; {records_in} were in before the stop, \
         and the throttled run cannot have finished"
    );
    assert_keyed_files(&savepoint, "count-and-sum", 2);

    // What run 1 committed: one line per processed record, exactly once, and it
    // describes the run's final state.
    let lines1 = visible_lines(&out);
    assert_eq!(
        lines1.len() as u64,
        records1,
        "stop-with-savepoint commits every update before the savepoint"
    );
    let committed_state = check_partial_output(&lines1, RECORDS, KEYS);
    assert_eq!(committed_state.len() as u64, keys1, "keys of run 1");
    assert_eq!(
        checksum_of(&committed_state),
        checksum1,
        "checksum of run 1"
    );

    // The savepoint holds exactly that state.
    let dump = flowstate(
        root,
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
    dump.assert_success();
    let dumped = parse_dump(&dump);
    for (key, value) in &dumped {
        assert_eq!(
            committed_state.get(key),
            Some(value),
            "key {key}: (count, sum) in the savepoint vs the last committed output line"
        );
    }
    for key in committed_state.keys() {
        assert!(
            dumped.contains_key(key),
            "key {key} has committed output but is not in the savepoint"
        );
    }
    assert_eq!(
        checksum_of(&dumped),
        checksum1,
        "checksum of the dumped state"
    );

    // Resume into the same output directory.
    // (Throttled too, so that its API can be asked where it restored from.)
    let mut second = keyed_count(RECORDS, KEYS, 2, &common);
    second.extend(strings(&["--restore", arg(&savepoint), "--rate", "300000"]));
    let mut job2 = start_served(root, &logs, "run-2", &second);
    job2.wait_for_records(1);
    let checkpoints = http(
        &job2.addr,
        "GET",
        &format!("/jobs/{}/checkpoints", job2.job),
        None,
    );
    let restored_from = checkpoints.json()["latest"]["restored"]["external_path"].clone();
    let savepoint_name = savepoint.file_name().unwrap().to_string_lossy();
    assert!(
        matches!(&restored_from, Value::String(from) if from.contains(savepoint_name.as_ref())),
        "restored_from should name the savepoint {savepoint_name}: {restored_from:?}"
    );
    let run2 = job2.process.wait();
    run2.assert_success();
    assert_eq!(
        run2.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run2}"
    );
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
    eprintln!(
        "[stop] resumed: right; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A stop-with-savepoint commits output beyond the job's newest checkpoint.
/// `--restore latest` afterwards must resume from the stop's savepoint, not
/// from that checkpoint: before the fix it took the checkpoint and published
/// the records between it and the stop a second time.
#[test]
fn restore_latest_after_a_stop_resumes_from_the_stop_s_savepoint() {
    const RECORDS: u64 = 400_000;
    const KEYS: u64 = 20_000;
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let (out, logs, target, ck) = (
        root.join("out"),
        root.join("logs"),
        root.join("savepoints"),
        root.join("ck"),
    );
    // Checkpoints far apart: the stop lands well after the newest one.
    let common = [
        "--checkpoint-interval",
        "1s",
        "--checkpoint-dir",
        arg(&ck),
        "--output",
        arg(&out),
    ];
    let mut first = keyed_count(RECORDS, KEYS, 2, &common);
    first.extend(strings(&[
        "--rate",
        "100000",
        "--savepoint-dir",
        arg(&target),
    ]));
    let mut job = start_served(root, &logs, "run-1", &first);
    job.wait_for_records(RECORDS / 4);
    let stop = flowstate(
        root,
        &[
            "stop",
            &job.job,
            "--savepoint",
            arg(&target),
            "--rest",
            &job.addr,
        ],
    );
    stop.assert_success();
    let savepoint = completed_location(&stop);
    let run1 = job.process.wait();
    run1.assert_success();

    let mut second = keyed_count(RECORDS, KEYS, 2, &common);
    second.extend(strings(&["--restore", "latest", "--rest", "off"]));
    let run2 = run_args(root, &second);
    run2.assert_success();
    assert_eq!(
        run2.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run2}"
    );
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
    let name = savepoint
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        run2.stderr.contains(&name),
        "--restore latest did not say it resumed from the stop's savepoint {name}: {run2}"
    );
}

// ---------------------------------------------------------------------------
// A changed job.

/// Writes `files` text files of `lines` lines each (seeded words) into `dir`.
fn write_text(dir: &Path, files: usize, lines: usize) {
    std::fs::create_dir_all(dir).unwrap();
    const WORDS: [&str; 12] = [
        "stream",
        "State",
        "barrier",
        "KEY",
        "group",
        "savepoint",
        "flow",
        "sink",
        "source",
        "operator",
        "Checkpoint",
        "résumé",
    ];
    for f in 0..files {
        let mut text = String::with_capacity(lines * 48);
        for l in 0..lines {
            let r = splitmix64(((f * lines + l) as u64) ^ 0xface);
            for w in 0..(3 + r % 6) {
                let word = splitmix64(r ^ w);
                if word.is_multiple_of(5) {
                    text.push_str(&format!("w{}", word % 5000));
                } else {
                    text.push_str(WORDS[(word % WORDS.len() as u64) as usize]);
                }
                text.push_str(if w % 3 == 2 { ", " } else { " " });
            }
            text.push('\n');
        }
        std::fs::write(dir.join(format!("part-{f}.txt")), text).unwrap();
    }
}

/// Test 4: a savepoint of `wordcount` (taken with stop-with-savepoint) does
/// not fit `keyed-count`: the restore fails with one error line naming every
/// stateful operator of the savepoint the new job lacks; with
/// `--allow-non-restored-state` it runs (from scratch) and gets W's result
/// with exactly-once output. The same savepoint resumes `wordcount` itself
/// into the same output directory, exactly once.
#[test]
fn a_savepoint_of_another_job_needs_allow_non_restored_state() {
    const RECORDS: u64 = 200_000;
    const KEYS: u64 = 10_000;
    let _turn = one_at_a_time();
    let started = Instant::now();
    let tmp = tempdir();
    let root = tmp.path();
    let logs = root.join("logs");

    // wordcount has no --rate: make its input large enough that the stop lands
    // while it runs, and make it larger if the job was done first.
    let mut lines_per_file = 50_000;
    let (input, wc_out, savepoint) = loop {
        let attempt = format!("wc-{lines_per_file}");
        let input = root.join(format!("{attempt}-input"));
        let wc_out = root.join(format!("{attempt}-out"));
        let target = root.join(format!("{attempt}-savepoints"));
        write_text(&input, 4, lines_per_file);
        let args = strings(&[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--output",
            arg(&wc_out),
            "--parallelism",
            "2",
            "--checkpoint-interval",
            "1h",
            "--checkpoint-dir",
            arg(&root.join(format!("{attempt}-ck"))),
            "--savepoint-root",
            arg(&target),
        ]);
        let mut job = start_served(root, &logs, &attempt, &args);
        // Savepoints are taken of RUNNING jobs (a CREATED one answers 409).
        let running = loop {
            if job.process.ended().is_some() {
                break false;
            }
            let answer = try_http(&job.addr, "GET", &format!("/jobs/{}", job.job), None);
            if let Ok(answer) = answer
                && answer.status == 200
                && answer.json().field("state").str() == "RUNNING"
            {
                break true;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stop = flowstate(
            root,
            &[
                "stop",
                &job.job,
                "--savepoint",
                arg(&target),
                "--rest",
                &job.addr,
            ],
        );
        let run = job.process.wait();
        run.assert_success();
        if stop.success() {
            let savepoint = completed_location(&stop);
            assert_in_target(&savepoint, &target);
            eprintln!(
                "[changed] wordcount with {} lines stopped: {}",
                4 * lines_per_file,
                run.result_line()
            );
            break (input, wc_out, savepoint);
        }
        // The stop must have failed only because the job had already finished.
        assert!(
            !running || !stop.stderr.contains("is created"),
            "the stop of a RUNNING job failed: {stop}"
        );
        assert!(
            lines_per_file < 800_000,
            "wordcount on {} lines always finished before a stop: {stop}",
            4 * lines_per_file
        );
        eprintln!(
            "[changed] wordcount with {} lines ended before the stop ({}); again with more",
            4 * lines_per_file,
            stop.error_lines().join(" ")
        );
        lines_per_file *= 2;
    };

    // Into keyed-count: refused, naming all three operators on one line.
    let out = root.join("kc-out");
    let refused = run_args(
        root,
        &keyed_count(
            RECORDS,
            KEYS,
            2,
            &[
                "--checkpoint-dir",
                arg(&root.join("kc-ck")),
                "--output",
                arg(&out),
                "--restore",
                arg(&savepoint),
                "--rest",
                "off",
            ],
        ),
    );
    refused.assert_failure();
    let error = refused.single_error_line();
    // `split-words` (a flat_map) has no state, so the savepoint holds nothing
    // of it and the restore need not name it (Flink skips stateless operators
    // missing from the new job the same way); the stateful ones must be named.
    for uid in ["text-lines", "count-words"] {
        assert!(
            error.contains(uid),
            "the error does not name {uid}: {refused}"
        );
    }
    assert!(
        visible_entries(&out).is_empty(),
        "a refused restore committed output"
    );

    let out = root.join("kc-out-allowed");
    let allowed = run_args(
        root,
        &keyed_count(
            RECORDS,
            KEYS,
            2,
            &[
                "--checkpoint-dir",
                arg(&root.join("kc-ck-allowed")),
                "--output",
                arg(&out),
                "--restore",
                arg(&savepoint),
                "--allow-non-restored-state",
                // The savepoint records another job (wordcount, its input):
                // restoring it into keyed-count is a parameter change too.
                "--allow-parameter-change",
                "--rest",
                "off",
            ],
        ),
    );
    allowed.assert_success();
    assert_eq!(
        allowed.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{allowed}"
    );
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);

    // The same savepoint resumes wordcount itself, exactly once.
    let resumed = run_args(
        root,
        &strings(&[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--output",
            arg(&wc_out),
            "--parallelism",
            "3",
            "--checkpoint-dir",
            arg(&root.join("wc-resume-ck")),
            "--restore",
            arg(&savepoint),
            "--rest",
            "off",
        ]),
    );
    resumed.assert_success();
    let mut texts = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&input)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        texts.push(std::fs::read_to_string(path).unwrap());
    }
    let expected = count_words(texts.iter().map(String::as_str));
    let total: u64 = expected.values().sum();
    assert_eq!(
        resumed.result_line(),
        format!("RESULT words={total} distinct={}", expected.len()),
        "{resumed}"
    );
    check_wordcount_output(&committed_lines(&wc_out), &expected);
    eprintln!("[changed] done in {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// The HTTP API of a real job.

/// Test 5: the HTTP API of a running keyed-count job, over a real socket:
/// errors are JSON with the right status and leave the job running; the job's
/// details show its vertices; `flowstate list` shows it RUNNING; a savepoint
/// requested over HTTP completes and shows in the checkpoint history with its
/// per-task entries; left alone, the job finishes with W's result.
#[test]
fn the_http_api_of_a_running_job() {
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 100_000;
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    // Savepoint requests may name only this directory or one under it (and
    // there is no --savepoint-dir: a request must name one).
    let allowed = root.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let args = keyed_count(
        RECORDS,
        KEYS,
        2,
        &[
            "--checkpoint-interval",
            "1h",
            "--checkpoint-dir",
            arg(&root.join("ck")),
            "--rate",
            "100000",
            "--savepoint-root",
            arg(&allowed),
        ],
    );
    let mut job = start_served(root, &root.join("logs"), "run", &args);
    let (addr, id) = (job.addr.clone(), job.job.clone());
    job.wait_for_records(1);

    // GET /jobs and the CLI's list.
    let jobs = http(&addr, "GET", "/jobs", None);
    jobs.expect_status(200);
    let jobs = jobs.json();
    let listed = jobs.field("jobs").array();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].field("id").str(), id);
    assert_eq!(listed[0].field("status").str(), "RUNNING");
    let overview = http(&addr, "GET", "/v1/jobs/overview", None).json();
    let listed = overview.field("jobs").array();
    assert_eq!(listed[0].field("jid").str(), id);
    assert_eq!(listed[0].field("name").str(), "keyed-count");
    assert_eq!(listed[0].field("state").str(), "RUNNING");
    let list = flowstate(root, &["list", "--rest", &addr]);
    list.assert_success();
    let row = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("job {id} not listed: {list}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [id.as_str(), "RUNNING", "keyed-count"],
        "{list}"
    );

    // GET /jobs/{id}.
    let details = job.details();
    assert_eq!(details.field("jid").str(), id);
    assert_eq!(details.field("state").str(), "RUNNING");
    let vertices = details.field("vertices").array();
    let ids: Vec<&str> = vertices.iter().map(|v| v.field("id").str()).collect();
    for uid in ["w-generator", "count-and-sum"] {
        assert!(
            ids.contains(&vertex_id(uid).as_str()),
            "no vertex {uid}: {details:?}"
        );
    }
    for vertex in vertices {
        assert_eq!(vertex.field("parallelism").u64(), 2, "{vertex:?}");
    }
    let counter = details
        .field("plan")
        .field("nodes")
        .array()
        .iter()
        .find(|v| v.field("id").str() == vertex_id("count-and-sum"))
        .unwrap();
    let inputs = counter.field("inputs").array();
    assert_eq!(inputs.len(), 1, "{counter:?}");
    assert_eq!(inputs[0].field("id").str(), vertex_id("w-generator"));

    // Errors.
    for (method, path, body) in [
        ("GET", "/jobs/no-such-job".to_owned(), None),
        ("GET", "/jobs/no-such-job/checkpoints".to_owned(), None),
        (
            "POST",
            "/jobs/no-such-job/savepoints".to_owned(),
            Some(r#"{"target_directory": "/tmp/x"}"#),
        ),
        ("POST", "/jobs/no-such-job/stop".to_owned(), Some("{}")),
        ("POST", "/jobs/no-such-job/cancel".to_owned(), None),
        (
            "GET",
            format!("/jobs/{id}/savepoints/no-such-request"),
            None,
        ),
        ("GET", "/no/such/route".to_owned(), None),
    ] {
        let answer = http(&addr, method, &path, body);
        let message = answer.expect_error(404);
        eprintln!("[api] {method} {path}: 404 {message}");
    }
    let target = allowed.join("savepoints");
    for (path, body, what) in [
        (
            format!("/jobs/{id}/savepoints"),
            r#"{"target_directory": "#,
            "malformed JSON",
        ),
        (format!("/jobs/{id}/savepoints"), "[1, 2", "malformed JSON"),
        (
            format!("/jobs/{id}/savepoints"),
            r#"{"target_directory": 7}"#,
            "a target that is not a string",
        ),
        (
            format!("/jobs/{id}/savepoints"),
            r#"{"no_such_field": "x"}"#,
            "an unknown field",
        ),
        (
            format!("/jobs/{id}/savepoints"),
            "{}",
            "no target and no --savepoint-dir",
        ),
        (
            format!("/jobs/{id}/stop"),
            "{}",
            "stop with no target and no --savepoint-dir",
        ),
        (
            format!("/jobs/{id}/stop"),
            r#"{"target_directory": "#,
            "stop with malformed JSON",
        ),
    ] {
        let answer = http(&addr, "POST", &path, Some(body));
        let message = answer.expect_error(400);
        eprintln!("[api] POST {path} with {what}: 400 {message}");
    }
    // A target that cannot be created (under a regular file).
    let file = allowed.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let impossible = file.join("savepoints");
    let answer = http(
        &addr,
        "POST",
        &format!("/jobs/{id}/savepoints"),
        Some(&format!(
            r#"{{"target_directory": "{}"}}"#,
            arg(&impossible)
        )),
    );
    if answer.status == 202 {
        // Refused later: the request must end failed, with a reason.
        let request = answer.json().field("request-id").str().to_owned();
        loop {
            let status = http(
                &addr,
                "GET",
                &format!("/jobs/{id}/savepoints/{request}"),
                None,
            );
            status.expect_status(200);
            let status = status.json();
            match status["status"]["id"].as_str() {
                Some("IN_PROGRESS") => std::thread::sleep(Duration::from_millis(20)),
                Some("COMPLETED") => {
                    let cause = &status["operation"]["failure-cause"]["stack-trace"];
                    assert!(cause.as_str().is_some_and(|c| !c.is_empty()), "{status:?}");
                    break;
                }
                other => panic!("a savepoint under a regular file is {other:?}: {status:?}"),
            }
        }
    } else {
        let message = answer.expect_error(400);
        eprintln!("[api] savepoint under a regular file: 400 {message}");
    }
    let failed = flowstate(
        root,
        &[
            "savepoint",
            &id,
            "--target",
            arg(&impossible),
            "--rest",
            &addr,
        ],
    );
    failed.assert_failure();
    assert!(
        failed.single_error_line().contains(arg(&impossible)),
        "the error does not name the target: {failed}"
    );
    let wrong_method = http(&addr, "DELETE", &format!("/jobs/{id}"), None);
    wrong_method.expect_error(405);
    refused_savepoint_targets(root, &allowed, &addr, &id);
    // The 404 of an unknown job names no job, not even the running one.
    let unknown = http(&addr, "GET", "/jobs/no-such-job", None);
    assert_eq!(unknown.expect_error(404), "job not known");
    assert!(!unknown.body.contains(&id), "{}", unknown.body);
    // The client commands report an unknown job as one clear error line.
    let unknown = flowstate(
        root,
        &[
            "savepoint",
            "no-such-job",
            "--target",
            arg(&target),
            "--rest",
            &addr,
        ],
    );
    unknown.assert_failure();
    assert!(
        unknown.single_error_line().contains("no-such-job"),
        "{unknown}"
    );
    assert!(
        !target.exists(),
        "a refused savepoint wrote {}",
        target.display()
    );

    // None of that touched the job.
    let details = job.details();
    assert_eq!(details.field("state").str(), "RUNNING", "{details:?}");
    assert!(job.process.ended().is_none(), "the job ended");

    // A savepoint over HTTP, polled to completion.
    let trigger = http(
        &addr,
        "POST",
        &format!("/jobs/{id}/savepoints"),
        Some(&format!(r#"{{"target_directory": "{}"}}"#, arg(&target))),
    );
    trigger.expect_status(202);
    let request = trigger.json().field("request-id").str().to_owned();
    let status = loop {
        let answer = http(
            &addr,
            "GET",
            &format!("/v1/jobs/{id}/savepoints/{request}"),
            None,
        );
        answer.expect_status(200);
        let status = answer.json();
        match status["status"]["id"].as_str() {
            Some("IN_PROGRESS") => std::thread::sleep(Duration::from_millis(20)),
            Some("COMPLETED") => break status,
            other => panic!("savepoint {other:?}: {status:?}"),
        }
    };
    let operation = status.field("operation");
    assert_eq!(operation["failure-cause"], Value::Null, "{status:?}");
    let location = operation.field("location").str().to_owned();
    assert_in_target(
        Path::new(location.strip_prefix("file://").unwrap_or(&location)),
        &target,
    );

    let history = http(&addr, "GET", &format!("/jobs/{id}/checkpoints"), None);
    history.expect_status(200);
    let history = history.json();
    let entries = history.field("history").array();
    // Most recent first.
    let ids: Vec<u64> = entries.iter().map(|e| e.field("id").u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "history order {ids:?}");
    let entry = entries
        .iter()
        .find(|e| e["external_path"].as_str() == Some(location.as_str()))
        .unwrap_or_else(|| panic!("savepoint {location} not in the history: {history:?}"));
    assert_eq!(entry["is_savepoint"], true, "{entry:?}");
    assert_eq!(
        entry.field("checkpoint_type").str(),
        "SAVEPOINT",
        "{entry:?}"
    );
    assert_eq!(entry.field("status").str(), "COMPLETED", "{entry:?}");
    let size = entry.field("checkpointed_size").u64();
    assert!(size > 0, "{entry:?}");
    assert!(entry.field("state_size").u64() >= size, "{entry:?}");
    assert_eq!(
        history["latest"]["savepoint"]["id"], entry["id"],
        "{history:?}"
    );
    let savepoint_id = entry.field("id").u64();
    // Per vertex: the source and the count (its chain's head) acknowledged by
    // both instances; per subtask, the sub-millisecond pause in µs.
    let details = http(
        &addr,
        "GET",
        &format!("/jobs/{id}/checkpoints/details/{savepoint_id}"),
        None,
    )
    .json();
    for uid in ["w-generator", "count-and-sum"] {
        let task = &details["tasks"][vertex_id(uid)];
        assert_eq!(task["num_acknowledged_subtasks"], 2, "{uid}: {details:?}");
    }
    let subtasks = http(
        &addr,
        "GET",
        &format!(
            "/jobs/{id}/checkpoints/details/{savepoint_id}/subtasks/{}",
            vertex_id("count-and-sum")
        ),
        None,
    )
    .json();
    let subtasks = subtasks.field("subtasks").array();
    assert_eq!(subtasks.len(), 2, "{subtasks:?}");
    for subtask in subtasks {
        assert_eq!(subtask.field("status").str(), "completed", "{subtask:?}");
        assert!(subtask["sync_duration_us"].is_u64(), "{subtask:?}");
        assert!(subtask["checkpoint"]["sync"].is_u64(), "{subtask:?}");
    }
    assert!(
        history.field("counts").field("completed").u64() >= 1,
        "{history:?}"
    );
    let config = http(
        &addr,
        "GET",
        &format!("/jobs/{id}/checkpoints/config"),
        None,
    )
    .json();
    assert_eq!(config.field("mode").str(), "exactly_once", "{config:?}");

    // Left alone, the job finishes right.
    assert_eq!(job.details().field("state").str(), "RUNNING");
    let run = job.process.wait();
    run.assert_success();
    assert_eq!(
        run.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run}"
    );
}

/// Savepoint targets a request may not name, over HTTP and through `flowstate
/// savepoint`: outside the allowed directory (403), relative or with `..`
/// (400), another scheme (403), or through a symbolic link out of it (403).
/// Nothing is created for any of them.
fn refused_savepoint_targets(root: &Path, allowed: &Path, addr: &str, id: &str) {
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
    let etc = format!("/etc/flowstate-refused-{}", std::process::id());
    let cases = [
        (etc.clone(), 403),
        (format!("file://{etc}"), 403),
        (arg(&outside.join("sp")).to_owned(), 403),
        (format!("{}-sibling/sp", arg(allowed)), 403),
        ("s3://bucket/sp".to_owned(), 403),
        ("http://169.254.169.254/latest".to_owned(), 403),
        ("relative/sp".to_owned(), 400),
        (format!("{}/../outside/sp", arg(allowed)), 400),
        (format!("{}/./sp", arg(allowed)), 400),
        (format!("{}//sp", arg(allowed)), 400),
        (arg(&allowed.join("link").join("sp")).to_owned(), 403),
    ];
    for (target, status) in &cases {
        for route in ["savepoints", "stop"] {
            let body = serde_json::json!({ "target_directory": target }).to_string();
            let answer = http(addr, "POST", &format!("/jobs/{id}/{route}"), Some(&body));
            let message = answer.expect_error(*status);
            assert!(message.contains("savepoint target"), "{target}: {message}");
        }
    }
    // The CLI says so on one line (relative targets it makes absolute itself).
    for target in [etc.as_str(), arg(&outside.join("sp")), "s3://bucket/sp"] {
        let run = flowstate(root, &["savepoint", id, "--target", target, "--rest", addr]);
        run.assert_failure();
        let line = run.single_error_line();
        assert!(line.contains("HTTP 403") && line.contains(target), "{line}");
    }
    assert!(
        !Path::new(&etc).exists(),
        "a refused savepoint created {etc}"
    );
    assert!(
        visible_entries(&outside).is_empty(),
        "a refused savepoint wrote into {}: {:?}",
        outside.display(),
        visible_entries(&outside)
    );
    assert!(!root.join("relative").exists() && !Path::new("relative").exists());
    let mut entries = visible_entries(allowed);
    entries.sort();
    assert_eq!(
        entries,
        ["a-file", "link"],
        "a refused savepoint wrote into the allowed directory"
    );
}

/// A job on an address beyond loopback needs a token: without one it does not
/// start (one clear error line naming the way out); with `--rest-insecure` it
/// runs, with a loud warning.
#[test]
fn a_non_loopback_api_without_a_token_refuses_to_start() {
    let tmp = tempdir();
    let root = tmp.path();
    let ck = root.join("ck");
    let mut args = keyed_count(1000, 100, 1, &["--checkpoint-dir", arg(&ck)]);
    args.extend(strings(&["--rest", "0.0.0.0:0"]));
    let run = run_args(root, &args);
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains("0.0.0.0:0")
            && line.contains("--rest-token")
            && line.contains("FLOWSTATE_REST_TOKEN")
            && line.contains("--rest-insecure"),
        "{run}"
    );
    assert!(!ck.exists(), "the refused job started: {}", ck.display());

    // An empty token is no token.
    let mut empty = args.clone();
    empty.extend(strings(&["--rest-token", ""]));
    run_args(root, &empty).assert_failure();

    let mut insecure = args.clone();
    insecure.push("--rest-insecure".into());
    let run = run_args(root, &insecure);
    run.assert_success();
    assert!(
        run.stderr.contains("SECURITY") && run.stderr.contains("no token"),
        "{run}"
    );

    let mut protected = args;
    protected.extend(strings(&["--rest-token", "t0ken"]));
    let run = run_args(root, &protected);
    run.assert_success();
    assert!(!run.stderr.contains("SECURITY"), "{run}");
}

/// A job served with a token: the client commands work with `--rest-token` (or
/// the environment) and are refused without it; so is raw HTTP.
#[test]
fn the_client_commands_work_against_a_job_with_a_token() {
    const TOKEN: &str = "job-t0ken";
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let mut args = keyed_count(
        100_000_000,
        1000,
        1,
        &[
            "--checkpoint-interval",
            "1h",
            "--checkpoint-dir",
            arg(&root.join("ck")),
        ],
    );
    args.extend(strings(&["--rate", "10000", "--rest-token", TOKEN]));
    let job = start_served(root, &root.join("logs"), "run", &args);
    let (addr, id) = (job.addr.clone(), job.job.clone());

    let list = flowstate(root, &["list", "--rest", &addr, "--rest-token", TOKEN]);
    list.assert_success();
    assert!(
        list.stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id.as_str())),
        "job {id} not listed: {list}"
    );
    let list = flowstate_env(
        root,
        &["list", "--rest", &addr],
        &[("FLOWSTATE_REST_TOKEN", TOKEN)],
    );
    list.assert_success();
    assert!(list.stdout.contains(&id), "{list}");

    let refused = flowstate(root, &["list", "--rest", &addr]);
    refused.assert_failure();
    assert!(
        refused.single_error_line().contains("HTTP 401"),
        "{refused}"
    );
    let refused = flowstate(
        root,
        &["cancel", &id, "--rest", &addr, "--rest-token", "nope"],
    );
    refused.assert_failure();
    assert!(
        refused.single_error_line().contains("HTTP 401"),
        "{refused}"
    );
    http(&addr, "GET", "/jobs", None).expect_error(401);
    http(&addr, "POST", &format!("/jobs/{id}/cancel"), None).expect_error(401);
    let authorized = format!("Authorization: Bearer {TOKEN}\r\n");
    let details = http_with(&addr, "GET", &format!("/jobs/{id}"), &authorized, None);
    details.expect_status(200);

    let cancel = flowstate(
        root,
        &["cancel", &id, "--rest", &addr, "--rest-token", TOKEN],
    );
    cancel.assert_success();
    let run = job.process.wait();
    run.assert_failure();
    assert!(run.single_error_line().contains("was cancelled"), "{run}");
}

// ---------------------------------------------------------------------------
// SIGKILL with savepoints in the mix.

/// Asks for a savepoint over HTTP without waiting: in turn with no body, with
/// `{}` (both: the job's `--savepoint-dir`) and naming `target`.
/// `Some(request id)` if accepted; `None` if the job cannot take one now (not
/// running yet, or one in flight: 409/503) or the process is gone.
fn try_savepoint(served: &Served, target: &Path, turn: usize) -> Option<String> {
    let named = format!(r#"{{"target_directory": "{}"}}"#, arg(target));
    let body = match turn % 3 {
        0 => None,
        1 => Some("{}"),
        _ => Some(named.as_str()),
    };
    let answer = try_http(
        &served.addr,
        "POST",
        &format!("/jobs/{}/savepoints", served.job),
        body,
    )
    .ok()?;
    match answer.status {
        202 => Some(answer.json().field("request-id").str().to_owned()),
        409 | 503 => {
            answer.expect_error(answer.status);
            None
        }
        _ => panic!(
            "savepoint request: unexpected answer {} {}",
            answer.status, answer.body
        ),
    }
}

/// Test 6: exactly-once under SIGKILL with intermediate savepoints taken while
/// the job runs (so savepoints and checkpoints interleave, and kills land
/// during savepoints too); each restart restores the latest checkpoint. No
/// savepoint may commit output that a checkpoint restore then replays.
#[test]
fn sigkill_with_savepoints_in_the_mix_is_exactly_once() {
    const RECORDS: u64 = 2_000_000;
    const KEYS: u64 = 1_000_000;
    const KILLS: usize = 3;
    let _turn = one_at_a_time();
    let started = Instant::now();
    let tmp = tempdir();
    let root = tmp.path();
    let (out, ck, logs, target) = (
        root.join("out"),
        root.join("ck"),
        root.join("logs"),
        root.join("savepoints"),
    );
    let seed = crash_seed(0x5eed_0005);
    let mut rng = Rng::new(seed);
    eprintln!("[mix] seed {seed} (FLOWSTATE_CRASH_SEED), {KILLS} kills");
    let expected = expected_keyed_count_result(RECORDS, KEYS);
    let mut completed_savepoints = Vec::new();
    let mut requests = 0;
    let mut final_run = None;
    for attempt in 0..=KILLS {
        let parallelism = if attempt % 2 == 0 { 2 } else { 3 };
        let mut args = keyed_count(
            RECORDS,
            KEYS,
            parallelism,
            &[
                "--checkpoint-interval",
                "200ms",
                "--checkpoint-dir",
                arg(&ck),
                "--output",
                arg(&out),
                "--rate",
                "300000",
                "--savepoint-dir",
                arg(&target),
            ],
        );
        if attempt > 0 {
            args.extend(strings(&["--restore", "latest"]));
        }
        let mut job = start_served(root, &logs, &format!("run-{attempt}"), &args);
        if attempt == 0 {
            // At least one savepoint surely completes: the first run cannot
            // have ended yet (throttled).
            job.wait_for_records(1);
            completed_savepoints.push(job.savepoint(root, &target));
        }
        let served_at = Instant::now();
        // Savepoints at random moments, and (but for the last run) a kill.
        let mut moments: Vec<u64> = (0..rng.between(1, 4))
            .map(|_| rng.between(0, 2500))
            .collect();
        moments.sort_unstable();
        let kill_at = rng.between(200, 3500);
        let mut pending: Vec<String> = Vec::new();
        let mut ended = None;
        let mut next = 0;
        loop {
            let now = served_at.elapsed().as_millis() as u64;
            if let Some(run) = job.process.ended() {
                ended = Some(run);
                break;
            }
            if attempt < KILLS && now >= kill_at {
                break;
            }
            if next < moments.len() && now >= moments[next] {
                next += 1;
                requests += 1;
                pending.extend(try_savepoint(&job, &target, requests));
            }
            // Follow the savepoints requested.
            pending.retain(|request| {
                let Ok(answer) = try_http(
                    &job.addr,
                    "GET",
                    &format!("/jobs/{}/savepoints/{request}", job.job),
                    None,
                ) else {
                    return false; // the process is going away
                };
                answer.expect_status(200);
                let status = answer.json();
                match (
                    status["status"]["id"].as_str(),
                    status["operation"]["location"].as_str(),
                ) {
                    (Some("COMPLETED"), Some(location)) => {
                        completed_savepoints.push(PathBuf::from(
                            location.strip_prefix("file://").unwrap_or(location),
                        ));
                        false
                    }
                    // Completed with a failure cause.
                    (Some("COMPLETED"), None) => false,
                    _ => true,
                }
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        let ended_by_itself = ended.is_some();
        let run = match ended {
            Some(run) => run,
            None if attempt == KILLS => unreachable!(),
            None => {
                let (ending, run) = job.process.kill();
                if ending == Ending::ByItself {
                    // It ended just before the signal.
                    run.assert_success();
                }
                run
            }
        };
        eprintln!(
            "[mix] run {attempt}: p={parallelism}, {} savepoint requests, {} ({:.1}s in all)",
            next,
            if ended_by_itself {
                "ended by itself".to_owned()
            } else {
                format!("killed at {kill_at}ms")
            },
            started.elapsed().as_secs_f64()
        );
        if run.success() {
            assert_eq!(run.result_line(), expected, "{run}");
        }
        if attempt == KILLS {
            final_run = Some(run);
        }
    }
    let last = final_run.unwrap();
    last.assert_success();
    assert_eq!(last.result_line(), expected, "{last}");
    // Every savepoint reported complete is there, whole.
    for savepoint in &completed_savepoints {
        assert_in_target(savepoint, &target);
    }
    eprintln!(
        "[mix] {} savepoints completed; {:.1}s",
        completed_savepoints.len(),
        started.elapsed().as_secs_f64()
    );
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
}

/// A checkpoint is restorable by its path from anywhere too (its directory
/// copied away from its checkpoint storage), into a job at another
/// parallelism with another checkpoint directory.
#[test]
fn a_copied_checkpoint_restores_by_its_path_at_another_parallelism() {
    let tmp = tempdir();
    let (records, keys) = (300_000, 50_000);
    let first = run_args(
        tmp.path(),
        &keyed_count(
            records,
            keys,
            2,
            &[
                "--checkpoint-interval",
                "100ms",
                "--checkpoint-dir",
                "ck",
                "--rest",
                "off",
            ],
        ),
    );
    first.assert_success();
    let expected = expected_keyed_count_result(records, keys);
    assert_eq!(first.result_line(), expected);
    let jobs: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("ck"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let checkpoint = std::fs::read_dir(&jobs[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("_metadata").is_file())
        .expect("the final checkpoint is retained");
    let moved_root = tmp.path().join("elsewhere");
    copy_dir(&tmp.path().join("ck"), &moved_root);
    std::fs::remove_dir_all(tmp.path().join("ck")).unwrap();
    let moved = moved_root
        .join(jobs[0].file_name().unwrap())
        .join(checkpoint.file_name().unwrap());
    let second = run_args(
        tmp.path(),
        &keyed_count(
            records,
            keys,
            3,
            &[
                "--checkpoint-dir",
                "ck2",
                "--rest",
                "off",
                "--restore",
                arg(&moved),
            ],
        ),
    );
    second.assert_success();
    assert_eq!(second.result_line(), expected, "{second}");
    assert!(second.stderr.contains("read and verified"), "{second}");
}

/// Stop with a savepoint, resume from it, SIGKILL the resumed run before its
/// first checkpoint, then `--restore latest`: the resumed job's restore
/// pointer leads back to the savepoint, not to the older checkpoints of the
/// stopped run (whose replay would repeat output the stop committed).
#[test]
fn restore_latest_after_a_resumed_run_died_before_its_first_checkpoint() {
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 100_000;
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let (out, logs, target, ck) = (
        root.join("out"),
        root.join("logs"),
        root.join("savepoints"),
        root.join("ck"),
    );
    let common = ["--checkpoint-dir", arg(&ck), "--output", arg(&out)];
    let mut first = keyed_count(RECORDS, KEYS, 2, &common);
    first.extend(strings(&[
        "--checkpoint-interval",
        "100ms",
        "--rate",
        "200000",
        "--savepoint-dir",
        arg(&target),
    ]));
    let mut job = start_served(root, &logs, "run-1", &first);
    job.wait_for_records(RECORDS / 4);
    let stop = flowstate(
        root,
        &[
            "stop",
            &job.job,
            "--savepoint",
            arg(&target),
            "--rest",
            &job.addr,
        ],
    );
    stop.assert_success();
    let savepoint = completed_location(&stop);
    job.process.wait().assert_success();

    // No checkpoint in the resumed run before it dies.
    let mut second = keyed_count(RECORDS, KEYS, 3, &common);
    second.extend(strings(&[
        "--checkpoint-interval",
        "1h",
        "--rate",
        "100000",
        "--restore",
        arg(&savepoint),
    ]));
    let mut job2 = start_served(root, &logs, "run-2", &second);
    job2.wait_for_records(1);
    let (ending, killed) = job2.process.kill();
    assert_ne!(ending, Ending::ByItself, "run 2 was killed: {killed}");

    let mut third = keyed_count(RECORDS, KEYS, 2, &common);
    third.extend(strings(&[
        "--checkpoint-interval",
        "200ms",
        "--restore",
        "latest",
        "--rest",
        "off",
    ]));
    let run3 = run_args(root, &third);
    run3.assert_success();
    // The independent check first: output exactly once across the three runs.
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
    assert_eq!(
        run3.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run3}"
    );
    let savepoint_name = savepoint.file_name().unwrap().to_string_lossy();
    assert!(
        run3.stderr.contains(savepoint_name.as_ref()),
        "run 3 should resume from the savepoint {savepoint_name}: {run3}"
    );
}

// ---------------------------------------------------------------------------
// Savepoints without periodic checkpoints.

/// `--checkpoint-interval off` means no checkpoints, not no savepoints: a
/// served keyed-count run (p2) takes a savepoint with `flowstate savepoint`
/// into its `--savepoint-dir` (publishing nothing), then is stopped with
/// `flowstate stop --savepoint` (publishing, once, what came before the
/// barrier). Each savepoint, restored with `--checkpoint-interval off` at
/// another parallelism (the intermediate one into a copy of the output
/// directory as it was when it was taken), finishes with W's RESULT line and
/// exactly-once output. No run creates its checkpoint directory.
#[test]
fn without_periodic_checkpoints_savepoints_stop_and_restore() {
    const RECORDS: u64 = 2_000_000;
    const KEYS: u64 = 1_000_000;
    let _turn = one_at_a_time();
    let started = Instant::now();
    let tmp = tempdir();
    let root = tmp.path();
    let (out, logs, target, ck) = (
        root.join("out"),
        root.join("logs"),
        root.join("savepoints"),
        root.join("ck"),
    );
    let expected = expected_keyed_count_result(RECORDS, KEYS);
    let first = keyed_count(
        RECORDS,
        KEYS,
        2,
        &[
            "--checkpoint-interval",
            "off",
            "--checkpoint-dir",
            arg(&ck),
            "--output",
            arg(&out),
            "--rate",
            "300000",
            "--savepoint-dir",
            arg(&target),
        ],
    );
    let mut job = start_served(root, &logs, "run-1", &first);
    let records_in = job.wait_for_records(RECORDS / 4);

    // No --target: the job's --savepoint-dir.
    let savepoint = flowstate(root, &["savepoint", &job.job, "--rest", &job.addr]);
    savepoint.assert_success();
    let intermediate = completed_location(&savepoint);
    assert_in_target(&intermediate, &target);
    assert_keyed_files(&intermediate, "count-and-sum", 2);
    assert!(
        visible_entries(&out).is_empty(),
        "an intermediate savepoint published output: {:?}",
        visible_entries(&out)
    );
    // The output directory as the intermediate savepoint left it (with what
    // was written after it, which a restore from it deletes).
    let copy = root.join("out-intermediate");
    copy_dir(&out, &copy);

    let stop = flowstate(
        root,
        &[
            "stop",
            &job.job,
            "--savepoint",
            arg(&target),
            "--rest",
            &job.addr,
        ],
    );
    stop.assert_success();
    let stopped = completed_location(&stop);
    assert_in_target(&stopped, &target);
    let run1 = job.process.wait();
    run1.assert_success();
    let (records1, keys1, checksum1) = parse_result(run1.result_line());
    assert!(
        (records_in..RECORDS).contains(&records1),
        "the stopped run processed {records1} records; {records_in} were in before the stop, \
         and the throttled run cannot have finished"
    );
    let lines1 = visible_lines(&out);
    assert_eq!(
        lines1.len() as u64,
        records1,
        "stop-with-savepoint publishes every update before its barrier, once"
    );
    let committed = check_partial_output(&lines1, RECORDS, KEYS);
    assert_eq!(committed.len() as u64, keys1, "keys of run 1");
    assert_eq!(checksum_of(&committed), checksum1, "checksum of run 1");
    assert!(
        !ck.exists(),
        "a run without checkpoints created its checkpoint directory"
    );
    eprintln!(
        "[off] savepoint and stop after {records_in} records in; run 1: {} ({:.1}s)",
        run1.result_line(),
        started.elapsed().as_secs_f64()
    );

    for (savepoint, dir, parallelism) in [(&stopped, &out, 3u32), (&intermediate, &copy, 1)] {
        let ck_restore = root.join(format!("ck-p{parallelism}"));
        let args = keyed_count(
            RECORDS,
            KEYS,
            parallelism,
            &[
                "--checkpoint-interval",
                "off",
                "--checkpoint-dir",
                arg(&ck_restore),
                "--output",
                arg(dir),
                "--restore",
                arg(savepoint),
                "--rest",
                "off",
            ],
        );
        let run = run_args(root, &args);
        run.assert_success();
        assert_eq!(
            run.result_line(),
            expected,
            "restore at p{parallelism}: {run}"
        );
        check_keyed_count_output(&committed_lines(dir), RECORDS, KEYS);
        assert!(
            !ck_restore.exists(),
            "a restored run without checkpoints created its checkpoint directory"
        );
        eprintln!(
            "[off] {} restored at p{parallelism}: right ({:.1}s)",
            savepoint.display(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// `--restore latest` resumes from the latest checkpoint, which a run with
/// `--checkpoint-interval off` never has: refused, saying what to do instead.
#[test]
fn restore_latest_without_periodic_checkpoints_is_refused() {
    let tmp = tempdir();
    let root = tmp.path();
    let ck = root.join("ck");
    let args = keyed_count(
        1_000,
        10,
        1,
        &[
            "--checkpoint-interval",
            "off",
            "--checkpoint-dir",
            arg(&ck),
            "--restore",
            "latest",
            "--rest",
            "off",
        ],
    );
    let run = run_args(root, &args);
    run.assert_failure();
    let error = run.single_error_line();
    assert!(
        error.contains("--restore latest") && error.contains("--restore DIR"),
        "{run}"
    );
    assert!(
        !ck.exists(),
        "the refused run created its checkpoint directory"
    );
}

/// The bug: an at-least-once job was reported as running Flink's unaligned
/// checkpoints (`unaligned_checkpoints: true`, and per subtask), which
/// persist in-flight data; flowstate's at-least-once does not align and
/// persists nothing in flight. The mode says at-least-once; nothing is
/// unaligned.
#[test]
fn an_at_least_once_job_is_reported_as_such_and_not_as_unaligned() {
    let tmp = tempdir();
    let root = tmp.path();
    let args = strings(&[
        "run",
        "keyed-count",
        "--records",
        "100000000",
        "--rate",
        "20000",
        "--mode",
        "at-least-once",
        "--checkpoint-interval",
        "100ms",
        "--checkpoint-dir",
        arg(&root.join("ck")),
    ]);
    let mut job = start_served(root, &root.join("logs"), "run", &args);
    let (addr, id) = (job.addr.clone(), job.job.clone());
    let config = http(
        &addr,
        "GET",
        &format!("/jobs/{id}/checkpoints/config"),
        None,
    )
    .json();
    assert_eq!(config.field("mode").str(), "at_least_once", "{config:?}");
    assert_eq!(config["unaligned_checkpoints"], false, "{config:?}");
    // A completed checkpoint's subtasks.
    job.wait_for_records(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (checkpoint, vertex) = loop {
        let history = http(&addr, "GET", &format!("/jobs/{id}/checkpoints"), None).json();
        let vertex = job.details()["vertices"][0]["id"]
            .as_str()
            .map(str::to_owned);
        if let (Some(checkpoint), Some(vertex)) =
            (history["latest"]["completed"]["id"].as_u64(), vertex)
        {
            break (checkpoint, vertex);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint: {history:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let subtasks = http(
        &addr,
        "GET",
        &format!("/jobs/{id}/checkpoints/details/{checkpoint}/subtasks/{vertex}"),
        None,
    )
    .json();
    let subtasks = subtasks.field("subtasks").array();
    assert!(!subtasks.is_empty());
    for subtask in subtasks {
        assert_eq!(subtask["unaligned_checkpoint"], false, "{subtask:?}");
    }
    job.process.kill();
}

/// Issue 18: savepoints stay aligned in a job whose checkpoints are
/// unaligned. keyed-count under backpressure (a throttled sink) with
/// unaligned checkpoints every 200 ms; once one of them holds in-flight
/// records, `flowstate savepoint`: the savepoint holds no channel state (no
/// `.channels` file, no `channels` in its `_metadata`), so it is canonical
/// and portable; the job is cancelled and the savepoint resumes it at
/// parallelism 3, unthrottled, with the reference result and exactly-once
/// output.
#[test]
fn a_savepoint_of_a_job_with_unaligned_checkpoints_is_aligned() {
    const RECORDS: u64 = 200_000;
    const KEYS: u64 = 10_000;
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let (out, logs, target, ck) = (
        root.join("out"),
        root.join("logs"),
        root.join("savepoints"),
        root.join("ck"),
    );
    let args = keyed_count(
        RECORDS,
        KEYS,
        2,
        &[
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            arg(&ck),
            "--output",
            arg(&out),
            "--rate",
            "100000",
            "--sink-rate",
            "20000",
            "--checkpointing",
            "unaligned",
            "--savepoint-dir",
            arg(&target),
        ],
    );
    let job = start_served(root, &logs, "run-1", &args);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !support::newest_has_channel_state(&ck) {
        assert!(
            Instant::now() < deadline,
            "no unaligned checkpoint with channel state in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let savepoint = job.savepoint(root, &target);
    let files: Vec<String> = walk(&savepoint);
    assert!(
        !files.iter().any(|f| f.ends_with(".channels")),
        "channel state in a savepoint: {files:?}"
    );
    let metadata = flowstate::runtime::checkpoint::CheckpointMetadata::decode(
        "_metadata",
        &std::fs::read(savepoint.join("_metadata")).unwrap(),
    )
    .unwrap();
    assert!(
        metadata
            .operators
            .iter()
            .all(|o| o.subtasks.iter().all(|s| s.channels.is_none())),
        "channels in a savepoint's metadata"
    );
    job.cancel(root);

    let args = keyed_count(
        RECORDS,
        KEYS,
        3,
        &[
            "--checkpoint-dir",
            arg(&root.join("ck-resumed")),
            "--output",
            arg(&out),
            "--restore",
            arg(&savepoint),
            "--rest",
            "off",
        ],
    );
    let run = run_args(root, &args);
    run.assert_success();
    assert_eq!(
        run.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run}"
    );
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
}

/// Every file under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.extend(walk(&path).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            files.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    files
}
