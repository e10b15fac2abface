//! `flowstate run nexmark` and `flowstate nexmark generate` end to end: a
//! query SIGKILLed at seeded random moments and restarted with `--restore
//! latest` (at another parallelism) ends with the RESULT line and the
//! committed rows of an uninterrupted run; the same query over the files
//! `nexmark generate` wrote gives the same RESULT as over generated events;
//! a bad event line fails the run with its file and line.
//!
//! Pass or fail never depends on timing: a kill may land before the first
//! checkpoint, during a restore or after the run ended by itself; the final
//! result must be the same in every case. `FLOWSTATE_CRASH_SEED` replays a
//! run's kill moments (the seed is printed).

mod support;

use std::path::Path;
use std::time::Duration;

use support::{
    Ending, Rng, arg, committed_lines, crash_seed, flowstate, one_at_a_time, start, strings,
    tempdir,
};

const EVENTS: &str = "20000";
const RATE: &str = "1000";
/// Kills per query.
const KILLS: usize = 4;
const SEED: u64 = 0x5eed_0016;

fn query_args(query: &str, out: &Path) -> Vec<String> {
    strings(&[
        "run",
        "nexmark",
        "--query",
        query,
        "--events",
        EVENTS,
        "--rate",
        RATE,
        "--output",
        arg(out),
    ])
}

/// The checkpoint a run restored, as its log names it (for the report only).
fn restored_from(stderr: &str) -> String {
    stderr
        .find("/_metadata")
        .and_then(|at| stderr[..at].rfind("chk-").map(|start| &stderr[start..at]))
        .unwrap_or("nothing")
        .to_owned()
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

fn sigkill_and_restore(query: &str) {
    sigkill_and_restore_reading(query, None);
}

/// `query` over generated events, or over the files of `generate` (the same
/// events) when `from_files`.
fn sigkill_and_restore_reading(query: &str, from_files: Option<&str>) {
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let (reference_out, out, ck, logs) = (
        tmp.path().join("reference"),
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("logs"),
    );
    let events = tmp.path().join("events");
    let query_args = |query: &str, out: &Path| {
        let mut args = query_args(query, out);
        if from_files.is_some() {
            args.extend(strings(&["--input", arg(&events)]));
        }
        args
    };
    if from_files.is_some() {
        flowstate(
            tmp.path(),
            &[
                "nexmark",
                "generate",
                "--events",
                EVENTS,
                "--rate",
                RATE,
                "--output",
                arg(&events),
            ],
        )
        .assert_success();
    }
    let mut args = query_args(query, &reference_out);
    args.extend(strings(&["--parallelism", "2"]));
    let reference = start(tmp.path(), &logs, "reference", &args).wait();
    reference.assert_success();
    let expected = reference.result_line().to_owned();
    let expected_rows = sorted(committed_lines(&reference_out));
    assert!(!expected_rows.is_empty(), "{expected}");

    let seed = crash_seed(SEED);
    let mut rng = Rng::new(seed ^ query.len() as u64 ^ u64::from(query.as_bytes()[1]));
    eprintln!("[{query}] seed {seed} (FLOWSTATE_CRASH_SEED), {KILLS} kills");
    let mut killed = 0;
    for attempt in 0..=KILLS {
        let mut args = query_args(query, &out);
        args.extend(strings(&[
            "--throttle",
            "4000",
            "--checkpoint-interval",
            "150ms",
            "--checkpoint-dir",
            arg(&ck),
            "--parallelism",
            if attempt % 2 == 0 { "2" } else { "3" },
        ]));
        if attempt > 0 {
            args.extend(strings(&["--restore", "latest"]));
        }
        let process = start(tmp.path(), &logs, &format!("run-{attempt}"), &args);
        if attempt == KILLS {
            let last = process.wait();
            last.assert_success();
            assert_eq!(last.result_line(), expected, "{last}");
            break;
        }
        let at = Duration::from_millis(rng.between(200, 2_500));
        let (ending, run) = process.kill_at(at);
        match ending {
            Ending::Killed => killed += 1,
            Ending::ByItself => {
                run.assert_success();
                assert_eq!(run.result_line(), expected, "{run}");
            }
        }
        eprintln!(
            "[{query}] run {attempt}: {ending:?} at {at:?}, restored {}",
            restored_from(&run.stderr)
        );
    }
    eprintln!("[{query}] {killed} of {KILLS} kills landed mid-run");
    assert_eq!(
        sorted(committed_lines(&out)),
        expected_rows,
        "committed rows after the crashes"
    );
}

/// Sliding windows into a keyed stage with event-time timers.
#[test]
fn q5_sigkill_and_restore_latest_gives_the_uninterrupted_result() {
    sigkill_and_restore("q5");
}

/// A join with timers and a per-category average emitted at the end.
#[test]
fn q4_sigkill_and_restore_latest_gives_the_uninterrupted_result() {
    sigkill_and_restore("q4");
}

/// q7 over the event files: the JSON-lines source's per-file positions and
/// watermarks across kills and rescaling, and q7's window-end timers.
#[test]
fn q7_from_files_sigkill_and_restore_latest_gives_the_uninterrupted_result() {
    sigkill_and_restore_reading("q7", Some("files"));
}

/// Session windows (merging windows, their timers).
#[test]
fn q11_sigkill_and_restore_latest_gives_the_uninterrupted_result() {
    sigkill_and_restore("q11");
}

#[test]
fn generated_files_give_the_same_result_as_generated_events() {
    let tmp = tempdir();
    let events = tmp.path().join("events");
    let wrote = flowstate(
        tmp.path(),
        &[
            "nexmark",
            "generate",
            "--events",
            EVENTS,
            "--rate",
            RATE,
            "--output",
            arg(&events),
        ],
    );
    wrote.assert_success();
    assert!(
        wrote
            .stdout
            .contains("400 people, 1200 auctions, 18400 bids"),
        "{wrote}"
    );
    // Generating again into the same folder would mix two sets of part files.
    let again = flowstate(
        tmp.path(),
        &[
            "nexmark",
            "generate",
            "--events",
            "10",
            "--output",
            arg(&events),
        ],
    );
    again.assert_failure();
    assert!(again.stderr.contains("is not empty"), "{again}");
    for query in ["q3", "q8", "q11"] {
        let generated = flowstate(
            tmp.path(),
            &[
                "run", "nexmark", "--query", query, "--events", EVENTS, "--rate", RATE,
            ],
        );
        let from_files = flowstate(
            tmp.path(),
            &[
                "run",
                "nexmark",
                "--query",
                query,
                "--input",
                arg(&events),
                "--parallelism",
                "3",
            ],
        );
        assert_eq!(
            from_files.assert_success().result_line(),
            generated.assert_success().result_line()
        );
    }
}

#[test]
fn a_bad_event_line_fails_the_run_naming_file_and_line() {
    let tmp = tempdir();
    let events = tmp.path().join("events");
    flowstate(
        tmp.path(),
        &[
            "nexmark",
            "generate",
            "--events",
            "500",
            "--output",
            arg(&events),
        ],
    )
    .assert_success();
    let bid = events.join("bid/part-00000.json");
    let mut text = std::fs::read_to_string(&bid).unwrap();
    text.push_str("{\"auction\": \"not a number\"}\n");
    std::fs::write(&bid, text).unwrap();
    let run = flowstate(
        tmp.path(),
        &["run", "nexmark", "--query", "q0", "--input", arg(&events)],
    );
    run.assert_failure();
    assert!(
        run.stderr
            .contains("part-00000.json' line 461: invalid type"),
        "{run}"
    );
}

#[test]
fn an_unknown_query_is_a_usage_error() {
    let tmp = tempdir();
    let run = flowstate(tmp.path(), &["run", "nexmark", "--query", "q99"]);
    run.assert_failure();
    assert!(run.stderr.contains("unknown query 'q99'"), "{run}");
}
