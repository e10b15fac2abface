//! End-to-end tests of the `flowstate` binary against the contracts of the
//! brief (section 3): `flowstate run keyed-count` and `flowstate run wordcount`,
//! their RESULT lines, the committed output of the exactly-once file sink, and
//! how bad input is reported.
//!
//! Results are checked against independent reference implementations in
//! `support` (workload W and wordcount written from the brief), never against
//! the flowstate crates. No assertion depends on timing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::{
    arg, assert_keyed_count_result_shape, check_keyed_count_output, check_wordcount_output,
    committed_lines, count_words, expected_keyed_count_result, flowstate, tempdir, visible_entries,
    workload_checksum,
};

// ---------------------------------------------------------------------------
// keyed-count: the brief's reference values.

/// The test's own checker reproduces the brief's reference value, so the
/// checksums it computes for other N and K can be trusted.
#[test]
fn independent_checker_reproduces_the_brief_reference() {
    assert_eq!(
        workload_checksum(2_000_000, 1_000_000),
        (865_128, 0xf612_517c_5618_77f1)
    );
}

/// Acceptance: 5,000,000 records give `3ada6211620c6f1f` at parallelism 1, 2 and
/// 3 and any max-parallelism; 2,000,000 records with the default `--keys` and
/// default parallelism give `f612517c561877f1`. Runs one process at a time.
#[test]
fn keyed_count_reference_checksums_at_any_parallelism() {
    let cwd = tempdir();
    const FIVE_MILLION: &str = "RESULT records=5000000 keys=993194 checksum=3ada6211620c6f1f";
    let cases: &[&[&str]] = &[
        &["--parallelism", "1"],
        &["--parallelism", "2"],
        &["--parallelism", "3"],
        &["--parallelism", "2", "--max-parallelism", "7"],
        &["--parallelism", "3", "--max-parallelism", "1000"],
        &["--parallelism", "1", "--max-parallelism", "1"],
    ];
    for flags in cases {
        let mut args = vec!["run", "keyed-count", "--records", "5000000"];
        args.extend_from_slice(flags);
        let run = flowstate(cwd.path(), &args);
        run.assert_success();
        let line = run.result_line();
        assert_keyed_count_result_shape(line);
        assert_eq!(line, FIVE_MILLION, "flowstate {}", args.join(" "));
    }

    let run = flowstate(cwd.path(), &["run", "keyed-count", "--records", "2000000"]);
    run.assert_success();
    let line = run.result_line();
    assert_keyed_count_result_shape(line);
    assert_eq!(
        line,
        "RESULT records=2000000 keys=865128 checksum=f612517c561877f1"
    );
    assert!(
        visible_entries(cwd.path()).is_empty(),
        "keyed-count without --output must create no files"
    );
}

// ---------------------------------------------------------------------------
// keyed-count: output, rate, no output.

fn keyed_count_with_output(parallelism: &str, max_parallelism: &str) {
    const RECORDS: u64 = 200_000;
    const KEYS: u64 = 1_000;
    let tmp = tempdir();
    // The output directory does not exist yet: the sink creates it.
    let out = tmp.path().join("out").join("keyed-count");
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            &RECORDS.to_string(),
            "--keys",
            &KEYS.to_string(),
            "--output",
            arg(&out),
            "--parallelism",
            parallelism,
            "--max-parallelism",
            max_parallelism,
        ],
    );
    run.assert_success();
    assert_eq!(
        run.result_line(),
        expected_keyed_count_result(RECORDS, KEYS)
    );
    let lines = committed_lines(&out);
    check_keyed_count_output(&lines, RECORDS, KEYS);
}

/// `--output DIR`: committed files hold `key,count,sum` lines that pass the
/// exactly-once check against workload W; no in-progress file remains.
#[test]
fn keyed_count_output_is_exactly_once_at_parallelism_2() {
    keyed_count_with_output("2", "128");
}

#[test]
fn keyed_count_output_is_exactly_once_at_parallelism_3_max_parallelism_7() {
    keyed_count_with_output("3", "7");
}

#[test]
fn keyed_count_output_is_exactly_once_at_parallelism_1() {
    keyed_count_with_output("1", "128");
}

/// `--rate` throttles but does not change the result.
#[test]
fn keyed_count_with_rate_gives_the_right_checksum() {
    let tmp = tempdir();
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "2000",
            "--keys",
            "100",
            "--rate",
            "4000",
            "--parallelism",
            "2",
        ],
    );
    run.assert_success();
    assert_eq!(run.result_line(), expected_keyed_count_result(2_000, 100));
}

/// `--sink-rate` slows the sink (the job runs under backpressure, with
/// checkpoints every 100 ms) but changes neither the result nor the
/// exactly-once output; it takes at least as long as the rate says.
#[test]
fn keyed_count_with_a_slow_sink_gives_the_right_output() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let started = std::time::Instant::now();
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "20000",
            "--keys",
            "100",
            "--sink-rate",
            "40000",
            "--parallelism",
            "2",
            "--output",
            arg(&out),
            "--checkpoint-interval",
            "100ms",
            "--checkpoint-dir",
            arg(&tmp.path().join("ck")),
        ],
    );
    let took = started.elapsed();
    run.assert_success();
    assert_eq!(run.result_line(), expected_keyed_count_result(20_000, 100));
    check_keyed_count_output(&committed_lines(&out), 20_000, 100);
    // 10,000 records per instance at 20,000/s, less one batch each that
    // goes at once: a lower bound, whatever the machine's speed.
    assert!(
        took >= std::time::Duration::from_millis(400),
        "the sink was not slowed: {took:?}"
    );
    let run = flowstate(
        tmp.path(),
        &["run", "keyed-count", "--records", "10", "--sink-rate", "0"],
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--sink-rate"), "{run}");
}

/// Without `--output` no file is created and RESULT is still printed.
#[test]
fn keyed_count_without_output_creates_no_files() {
    let tmp = tempdir();
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "50000",
            "--keys",
            "5000",
            "--parallelism",
            "2",
        ],
    );
    run.assert_success();
    let line = run.result_line();
    assert_keyed_count_result_shape(line);
    assert_eq!(line, expected_keyed_count_result(50_000, 5_000));
    let entries: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "files were created: {entries:?}");
}

/// Zero records: an empty final state, checksum 0.
#[test]
fn keyed_count_with_zero_records() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "0",
            "--output",
            arg(&out),
        ],
    );
    run.assert_success();
    assert_eq!(
        run.result_line(),
        "RESULT records=0 keys=0 checksum=0000000000000000"
    );
    assert!(committed_lines(&out).is_empty());
}

// ---------------------------------------------------------------------------
// wordcount.

/// Text files with mixed case, punctuation, digits, non-ASCII letters, empty
/// lines, CRLF line endings, a file without a final newline and an empty file.
fn wordcount_files() -> Vec<(&'static str, String)> {
    let mut many = String::new();
    for i in 0..300 {
        many.push_str(&format!(
            "Word{} word{} WORD{}, alpha; Beta -- gamma.{}\n",
            i % 7,
            i % 11,
            i % 13,
            if i % 5 == 0 { "\n" } else { "" }
        ));
    }
    vec![
        (
            "a.txt",
            "Hello, World! hello WORLD.\nThe quick-brown fox; the QUICK fox?\n\n\n\
             Straße STRASSE straße Ärger ärger ÄRGER\n"
                .to_owned(),
        ),
        (
            "b.txt",
            "Hello\r\nnumbers: 42 42 007 x2 2x 3.14 1,000\r\n\r\nCafé café CAFÉ naïve\r\n\
             end-of-line\r\n"
                .to_owned(),
        ),
        (
            "c.txt",
            "Ελληνικά ΕΛΛΗΝΙΚΆ 日本語 テキスト, данные Данные ДАННЫЕ x² ½\n\
             tabs\tand   spaces\u{a0}nbsp\nno trailing newline"
                .to_owned(),
        ),
        ("d.txt", String::new()),
        ("e.txt", many),
    ]
}

fn write_files(dir: &Path, files: &[(&str, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn expected_result(expected: &BTreeMap<String, u64>) -> String {
    format!(
        "RESULT words={} distinct={}",
        expected.values().sum::<u64>(),
        expected.len()
    )
}

/// A directory as `--input` at parallelism 2: the final count per word and the
/// running counts 1..c match an independent count; RESULT words=N distinct=D.
#[test]
fn wordcount_directory_counts_every_word_exactly_once() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    let files = wordcount_files();
    write_files(&input, &files);
    let expected = count_words(files.iter().map(|(_, t)| t.as_str()));
    // The checker itself sees what the brief asks for.
    assert_eq!(expected.get("straße"), Some(&2));
    assert_eq!(expected.get("strasse"), Some(&1));
    assert_eq!(expected.get("hello"), Some(&3));
    assert_eq!(expected.get("данные"), Some(&3));
    assert_eq!(expected.get("42"), Some(&2));

    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--output",
            arg(&out),
            "--parallelism",
            "2",
        ],
    );
    run.assert_success();
    assert_eq!(run.result_line(), expected_result(&expected));
    check_wordcount_output(&committed_lines(&out), &expected);
}

/// A single file as `--input`.
#[test]
fn wordcount_single_file() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    let files = wordcount_files();
    write_files(&input, &files);
    let (_, text) = &files[1];
    let expected = count_words([text.as_str()]);
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "wordcount",
            "--input",
            arg(&input.join("b.txt")),
            "--output",
            arg(&out),
            "--parallelism",
            "2",
        ],
    );
    run.assert_success();
    assert_eq!(run.result_line(), expected_result(&expected));
    check_wordcount_output(&committed_lines(&out), &expected);
}

/// Without `--output`, wordcount still prints its RESULT line and writes nothing.
#[test]
fn wordcount_without_output() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let files = wordcount_files();
    write_files(&input, &files);
    let expected = count_words(files.iter().map(|(_, t)| t.as_str()));
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--parallelism",
            "3",
        ],
    );
    run.assert_success();
    assert_eq!(run.result_line(), expected_result(&expected));
    assert_eq!(visible_entries(tmp.path()), ["in"]);
}

/// An empty directory is valid input with no words.
#[test]
fn wordcount_empty_directory() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--parallelism",
            "1",
        ],
    );
    run.assert_success();
    assert_eq!(run.result_line(), "RESULT words=0 distinct=0");
}

// ---------------------------------------------------------------------------
// Bad input.

#[test]
fn missing_input_path_is_one_clear_error() {
    let tmp = tempdir();
    let missing = tmp.path().join("no-such-dir").join("input.txt");
    let run = flowstate(tmp.path(), &["run", "wordcount", "--input", arg(&missing)]);
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains(arg(&missing)),
        "the error does not name the path: {run}"
    );
}

fn non_utf8_input(tmp: &Path) -> std::path::PathBuf {
    let input = tmp.join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a-good.txt"), "all good\nhere\n").unwrap();
    std::fs::write(
        input.join("b-bad.txt"),
        b"fine\r\nalso fine\r\nbro\xffken line\r\nafter\r\n",
    )
    .unwrap();
    input
}

/// A non-UTF-8 line fails the job; stderr names the file and the line number;
/// nothing is committed to the output.
#[test]
fn non_utf8_line_names_file_and_line() {
    let tmp = tempdir();
    let input = non_utf8_input(tmp.path());
    let out = tmp.path().join("out");
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--output",
            arg(&out),
            "--parallelism",
            "2",
        ],
    );
    run.assert_failure();
    let line = run.single_error_line();
    let bad = input.join("b-bad.txt");
    assert!(
        line.contains(arg(&bad)),
        "the error does not name {bad:?}: {run}"
    );
    assert!(
        line.contains("line 3"),
        "the error does not name line 3: {run}"
    );
    assert!(
        visible_entries(&out).is_empty(),
        "a failed job committed output: {:?}",
        visible_entries(&out)
    );
}

/// "One clear message": the cause is stated once, not repeated.
#[test]
fn non_utf8_error_is_not_repeated() {
    let tmp = tempdir();
    let input = non_utf8_input(tmp.path());
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "wordcount",
            "--input",
            arg(&input),
            "--parallelism",
            "1",
        ],
    );
    run.assert_failure();
    let line = run.single_error_line();
    assert_eq!(
        line.matches("not valid UTF-8").count(),
        1,
        "the cause is repeated: {line}"
    );
}

/// An `--output` that is an existing regular file is rejected with one message
/// naming it.
#[test]
fn output_path_that_is_a_file_is_an_error() {
    let tmp = tempdir();
    let file = tmp.path().join("taken");
    std::fs::write(&file, "not a directory").unwrap();
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "10",
            "--output",
            arg(&file),
        ],
    );
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains(arg(&file)),
        "the error does not name the path: {run}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}

#[test]
fn output_path_error_is_not_repeated() {
    let tmp = tempdir();
    let file = tmp.path().join("taken");
    std::fs::write(&file, "not a directory").unwrap();
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "10",
            "--output",
            arg(&file),
        ],
    );
    run.assert_failure();
    let line = run.single_error_line();
    assert_eq!(
        line.matches("(os error").count(),
        1,
        "the io error is repeated: {line}"
    );
}

/// Invalid runtime or job settings: non-zero exit, one `flowstate: error:` line
/// that names the offending setting.
#[test]
fn invalid_settings_are_rejected_with_a_message() {
    let tmp = tempdir();
    let cases: &[(&[&str], &str)] = &[
        (&["--parallelism", "0"], "parallelism"),
        (
            &["--parallelism", "200", "--max-parallelism", "128"],
            "max parallelism",
        ),
        (&["--keys", "0"], "--keys"),
        (&["--rate", "0"], "--rate"),
    ];
    for (flags, mentions) in cases {
        let mut args = vec!["run", "keyed-count", "--records", "10"];
        args.extend_from_slice(flags);
        let run = flowstate(tmp.path(), &args);
        run.assert_failure();
        let line = run.single_error_line();
        assert!(
            line.contains(mentions),
            "flowstate {}: the error does not mention {mentions:?}: {run}",
            args.join(" ")
        );
    }
    assert!(visible_entries(tmp.path()).is_empty());
}

/// `--max-parallelism 0` without `--parallelism` must blame max parallelism, the
/// setting the user gave, not a "parallelism 0" the user never asked for.
#[test]
fn max_parallelism_zero_names_max_parallelism() {
    let tmp = tempdir();
    let run = flowstate(
        tmp.path(),
        &[
            "run",
            "keyed-count",
            "--records",
            "10",
            "--max-parallelism",
            "0",
        ],
    );
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains("max parallelism") || line.contains("--max-parallelism"),
        "the error does not name max parallelism: {line}"
    );
}

/// Unknown jobs and flags (including runtime flags of the brief that are not
/// implemented yet) are rejected, not ignored.
#[test]
fn unknown_job_and_unknown_flags_are_rejected() {
    let tmp = tempdir();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "no-such-job"], "no-such-job"),
        (
            &[
                "run",
                "keyed-count",
                "--records",
                "10",
                "--savepoint-target",
                "x",
            ],
            "--savepoint-target",
        ),
        (
            &["run", "keyed-count", "--records", "10", "--no-such-flag"],
            "--no-such-flag",
        ),
        (
            &["run", "wordcount", "--input", ".", "--keys", "10"],
            "--keys",
        ),
    ];
    for (args, mentions) in cases {
        let run = flowstate(tmp.path(), args);
        run.assert_failure();
        assert!(
            run.stderr.contains("error") && run.stderr.contains(mentions),
            "flowstate {}: stderr does not report {mentions:?}: {run}",
            args.join(" ")
        );
    }
    assert!(visible_entries(tmp.path()).is_empty());
}

// ---------------------------------------------------------------------------
// The checkers themselves can fail.

/// Correct `key,count,sum` lines for W, as a sequential run would write them.
fn correct_keyed_lines(records: u64, keys: u64) -> Vec<String> {
    let mut state: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    (0..records)
        .map(|i| {
            let key = support::splitmix64(i) % keys;
            let entry = state.entry(key).or_default();
            entry.0 += 1;
            entry.1 += i;
            format!("{key},{},{}", entry.0, entry.1)
        })
        .collect()
}

fn rejects(check: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(check).is_err()
}

#[test]
fn keyed_count_checker_rejects_broken_output() {
    let good = correct_keyed_lines(500, 20);
    check_keyed_count_output(&good, 500, 20);
    let mut reversed = good.clone();
    reversed.reverse();
    check_keyed_count_output(&reversed, 500, 20);

    let mut missing = good.clone();
    missing.remove(250);
    assert!(rejects(move || check_keyed_count_output(&missing, 500, 20)));
    let mut repeated = good.clone();
    repeated[250] = good[249].clone();
    assert!(rejects(move || check_keyed_count_output(
        &repeated, 500, 20
    )));
    let mut wrong_final = good.clone();
    let last = wrong_final.pop().unwrap();
    let (head, sum) = last.rsplit_once(',').unwrap();
    wrong_final.push(format!("{head},{}", sum.parse::<u64>().unwrap() + 1));
    assert!(rejects(move || check_keyed_count_output(
        &wrong_final,
        500,
        20
    )));
    // Two updates of one key that add each other's values: counts and the final
    // sum are still right, but the intermediate sum is not one of the key's.
    let key = support::splitmix64(0) % 20;
    let first = good
        .iter()
        .position(|l| l.starts_with(&format!("{key},1,")))
        .unwrap();
    let mut swapped = good.clone();
    swapped[first] = format!("{key},1,1");
    assert!(rejects(move || check_keyed_count_output(&swapped, 500, 20)));
}

#[test]
fn wordcount_checker_rejects_broken_output() {
    let expected = count_words(["a b a", "B c"]);
    let good: Vec<String> = ["a,1", "b,1", "a,2", "b,2", "c,1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    check_wordcount_output(&good, &expected);
    for broken in [
        &["a,1", "b,1", "a,2", "b,2"][..],
        &["a,1", "b,1", "a,2", "b,2", "c,1", "c,1"],
        &["a,1", "b,1", "a,1", "b,2", "c,1"],
        &["a,1", "B,1", "a,2", "b,2", "c,1"],
        &["a,1", "b,1", "a,2", "b,2", "c,1", "a,3"],
    ] {
        let lines: Vec<String> = broken.iter().map(|s| s.to_string()).collect();
        let expected = expected.clone();
        assert!(
            rejects(move || check_wordcount_output(&lines, &expected)),
            "accepted {broken:?}"
        );
    }
}
