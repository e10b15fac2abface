//! End-to-end tests of the `fraud-detection` binary: a normal run; a run
//! SIGKILLed after a checkpoint completed and then resumed with `--restore
//! latest` at another parallelism; a run stopped by SIGTERM (at a final
//! checkpoint) and resumed with the command it printed.
//!
//! The expected alerts come from an independent checker: the generator and
//! both rules written again here as a plain single-threaded loop over all
//! transactions (sorted per card), sharing no code with the job. Pass or fail
//! never depends on timing: the kill and the signal wait for a completed
//! checkpoint (polling the directories), and a run that ends before them must
//! be right all the same.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fraud-detection");

// ---------------------------------------------------------------------------
// The independent checker: the README's definitions, implemented anew.

const T0_MS: i64 = 1_700_000_000_000;
const SMALL_BELOW: u64 = 100;
const LARGE_ABOVE: u64 = 50_000;
const WITHIN_MS: i64 = 60_000;
const WINDOW_MS: i64 = 60_000;
const MAX_PER_WINDOW: u64 = 20;

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Copy)]
struct Txn {
    id: u64,
    amount: u64,
    ts: i64,
}

/// The workload: `cards` cards, `eps` transactions per second of event
/// time, up to `disorder_ms` of disorder.
struct Workload {
    transactions: u64,
    cards: u64,
    eps: u64,
    disorder_ms: u64,
}

impl Workload {
    /// Card and transaction `i`.
    fn txn(&self, i: u64) -> (u64, Txn) {
        let ts = T0_MS + (i as i128 * 1000 / self.eps as i128) as i64
            - (mix(i ^ 0xD1B5_4A32_D192_ED03) % (self.disorder_ms + 1)) as i64;
        let u = mix(i ^ 0x5DEE_CE66_D1CE_4E5B);
        let bucket = u % 1000;
        let amount = if bucket < 20 {
            1 + (u >> 10) % 99
        } else if bucket >= 990 {
            50_001 + (u >> 10) % 450_000
        } else {
            100 + (u >> 10) % 20_000
        };
        (mix(i) % self.cards, Txn { id: i, amount, ts })
    }

    /// Every alert line the job must write, each once.
    fn expected_alerts(&self) -> Vec<String> {
        let mut by_card: BTreeMap<u64, Vec<Txn>> = BTreeMap::new();
        for i in 0..self.transactions {
            let (card, txn) = self.txn(i);
            by_card.entry(card).or_default().push(txn);
        }
        let mut alerts = Vec::new();
        for (card, mut txns) in by_card {
            txns.sort_by_key(|t| (t.ts, t.id));
            // A small transaction directly followed by a large one within a minute.
            for pair in txns.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if a.amount < SMALL_BELOW && b.amount > LARGE_ABOVE && b.ts - a.ts <= WITHIN_MS {
                    alerts.push(format!(
                        "small-then-large,{card},{},{},{},{},{}",
                        a.id, a.amount, b.id, b.amount, b.ts
                    ));
                }
            }
            // More than MAX_PER_WINDOW in a one-minute tumbling window.
            let mut windows: BTreeMap<i64, u64> = BTreeMap::new();
            for t in &txns {
                *windows
                    .entry(t.ts - t.ts.rem_euclid(WINDOW_MS))
                    .or_default() += 1;
            }
            for (start, n) in windows {
                if n > MAX_PER_WINDOW {
                    alerts.push(format!("high-frequency,{card},{start},{n}"));
                }
            }
        }
        alerts.sort();
        alerts
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--transactions".into(),
            self.transactions.to_string(),
            "--cards".into(),
            self.cards.to_string(),
            "--events-per-second".into(),
            self.eps.to_string(),
            "--out-of-orderness".into(),
            format!("{}ms", self.disorder_ms),
            // No HTTP API: nothing shared with other tests on this machine.
            "--rest".into(),
            "off".into(),
        ]
    }
}

/// The RESULT line for `alerts`: wrapping sum of splitmix64(FNV-1a 64(line)).
fn expected_result(transactions: u64, alerts: &[String]) -> String {
    let checksum = alerts.iter().fold(0u64, |sum, line| {
        let fnv = line.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        });
        sum.wrapping_add(mix(fnv))
    });
    format!(
        "RESULT transactions={transactions} alerts={} checksum={checksum:016x}",
        alerts.len()
    )
}

/// The lines of the published part files in `dir` (in-progress files are
/// hidden: `.part-*`).
fn published_lines(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            lines.extend(text.lines().map(str::to_owned));
        }
    }
    lines
}

/// Every expected alert exactly once in `dir`, and nothing else.
fn assert_exactly_once(dir: &Path, expected: &[String]) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in published_lines(dir) {
        *counts.entry(line).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "alerts published more than once: {duplicated:?}"
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|l| !counts.contains_key(*l))
        .collect();
    assert!(missing.is_empty(), "alerts missing: {missing:?}");
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|l| expected.binary_search(l).is_err())
        .collect();
    assert!(unexpected.is_empty(), "unexpected alerts: {unexpected:?}");
}

// ---------------------------------------------------------------------------
// Running the binary.

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn run(args: &[String]) -> Output {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("start fraud-detection");
    assert!(
        output.status.success(),
        "fraud-detection {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn result_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .unwrap_or_else(|| {
            panic!(
                "no output; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_owned()
}

/// Whether some `<ck>/<job id>/chk-<n>/_metadata` exists (a completed checkpoint).
fn has_completed_checkpoint(ck: &Path) -> bool {
    let Ok(jobs) = std::fs::read_dir(ck) else {
        return false;
    };
    jobs.flatten().any(|job| {
        std::fs::read_dir(job.path()).is_ok_and(|chks| {
            chks.flatten().any(|chk| {
                chk.file_name().to_string_lossy().starts_with("chk-")
                    && chk.path().join("_metadata").is_file()
            })
        })
    })
}

fn workload(transactions: u64) -> Workload {
    Workload {
        transactions,
        cards: 500,
        eps: 100,
        disorder_ms: 5_000,
    }
}

#[test]
fn a_normal_run_writes_every_expected_alert_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("out"));
    let w = workload(60_000);
    let expected = w.expected_alerts();
    assert!(
        expected.iter().any(|a| a.starts_with("small-then-large"))
            && expected.iter().any(|a| a.starts_with("high-frequency")),
        "the workload should raise alerts of both rules: {expected:?}"
    );
    let mut cmd = w.args();
    cmd.extend(args(&[
        "--parallelism",
        "2",
        "--checkpoint-interval",
        "300ms",
    ]));
    cmd.extend([
        "--checkpoint-dir".into(),
        path(&ck),
        "--output".into(),
        path(&out),
    ]);
    let output = run(&cmd);
    assert_eq!(
        result_line(&output),
        expected_result(w.transactions, &expected)
    );
    assert_exactly_once(&out, &expected);
}

/// The same summary without output files and at another parallelism: the
/// RESULT line does not depend on either.
#[test]
fn the_result_line_is_the_same_at_any_parallelism() {
    let w = workload(30_000);
    let expected = expected_result(w.transactions, &w.expected_alerts());
    for parallelism in ["1", "3"] {
        let mut cmd = w.args();
        cmd.extend(args(&[
            "--parallelism",
            parallelism,
            "--checkpoint-interval",
            "off",
        ]));
        assert_eq!(
            result_line(&run(&cmd)),
            expected,
            "parallelism {parallelism}"
        );
    }
}

#[test]
fn killed_after_a_checkpoint_and_restored_at_another_parallelism_is_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("out"));
    let w = workload(200_000);
    let expected = w.expected_alerts();
    let mut common = w.args();
    common.extend(args(&["--checkpoint-interval", "200ms"]));
    common.extend([
        "--checkpoint-dir".into(),
        path(&ck),
        "--output".into(),
        path(&out),
    ]);

    // First run: throttled (about 10 s) so that it is still running when
    // checkpoints have completed and published part of the output; killed
    // (SIGKILL) then.
    let mut first = common.clone();
    first.extend(args(&["--parallelism", "2", "--rate", "20000"]));
    let mut child = Command::new(BIN)
        .args(&first)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fraud-detection");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut ended_by_itself = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            ended_by_itself = true;
            break;
        }
        // Mid-run: a checkpoint completed and published a quarter of the alerts.
        if has_completed_checkpoint(&ck) && published_lines(&out).len() >= expected.len() / 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed in 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if ended_by_itself {
        eprintln!("the first run ended before it could be killed; checking its output");
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
    } else {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let published = published_lines(&out).len();
        eprintln!(
            "killed after a completed checkpoint, {published} of {} alerts published",
            expected.len()
        );
    }

    // Resume from the latest checkpoint at parallelism 3.
    let mut second = common.clone();
    second.extend(args(&["--parallelism", "3", "--restore", "latest"]));
    let output = run(&second);
    assert_eq!(
        result_line(&output),
        expected_result(w.transactions, &expected)
    );
    assert_exactly_once(&out, &expected);
    if !ended_by_itself {
        assert_restored(&output);
    }
}

/// The checkpoint the run restored, from its `checkpoints` log line
/// (`restored_from=0`: none).
fn restored_from(stderr: &str) -> Option<u64> {
    let at = stderr.rfind("restored_from=")? + "restored_from=".len();
    let digits: String = stderr[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn assert_restored(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        restored_from(&stderr).is_some_and(|id| id > 0),
        "the run did not restore a checkpoint: {stderr}"
    );
}

/// The arguments of the command the run printed to resume it
/// (`fraud-detection: resume with: <program> <args...> --restore latest`).
fn resume_args(stderr: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("fraud-detection: resume with: "))
        .unwrap_or_else(|| panic!("no resume command: {stderr}"));
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    assert!(
        line.ends_with(" --restore latest")
            && words.iter().filter(|w| *w == "--restore").count() == 1,
        "the resume command should end with one `--restore latest`: {line}"
    );
    assert_eq!(words[0], BIN, "{line}");
    words[1..].to_vec()
}

#[test]
fn sigterm_stops_at_a_checkpoint_exits_0_and_the_printed_resume_command_is_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("out"));
    let (stdout_file, stderr_file) = (tmp.path().join("stdout"), tmp.path().join("stderr"));
    let w = workload(200_000);
    let expected = w.expected_alerts();
    let mut first = w.args();
    first.extend(args(&[
        "--checkpoint-interval",
        "200ms",
        "--parallelism",
        "2",
        // At least 10 s: still running when a checkpoint completed.
        "--rate",
        "20000",
    ]));
    first.extend([
        "--checkpoint-dir".into(),
        path(&ck),
        "--output".into(),
        path(&out),
    ]);
    let mut child = Command::new(BIN)
        .args(&first)
        .stdout(std::fs::File::create(&stdout_file).unwrap())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .expect("start fraud-detection");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut ended_by_itself = false;
    // Mid-run: a checkpoint completed (the signal handlers are in place
    // before the first one) and published a quarter of the alerts.
    while !(has_completed_checkpoint(&ck) && published_lines(&out).len() >= expected.len() / 4) {
        if child.try_wait().unwrap().is_some() {
            ended_by_itself = true;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed in 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if !ended_by_itself {
        let pid = child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success(), "kill -TERM {pid}");
    }
    let status = child.wait().unwrap();
    let stdout = std::fs::read_to_string(&stdout_file).unwrap();
    let stderr = std::fs::read_to_string(&stderr_file).unwrap();
    assert!(
        status.success(),
        "the first run: {status}\n{stdout}\n{stderr}"
    );
    if !stderr.contains("SIGTERM: stopping the job at a final checkpoint") {
        // It ended before the signal came (a signal after the job's end is
        // ignored): its own output must be whole.
        eprintln!("the first run ended before SIGTERM; checking its output");
        assert_eq!(
            stdout.lines().last(),
            Some(expected_result(w.transactions, &expected).as_str()),
            "{stderr}"
        );
        assert_exactly_once(&out, &expected);
        return;
    }
    eprintln!(
        "stopped by SIGTERM, {} of {} alerts published; the first run printed {:?}",
        published_lines(&out).len(),
        expected.len(),
        stdout.lines().last()
    );
    assert!(
        stderr.contains("stopped on SIGTERM at a checkpoint"),
        "{stderr}"
    );

    // The printed command resumes it from the final checkpoint, to the end.
    let output = run(&resume_args(&stderr));
    assert_eq!(
        result_line(&output),
        expected_result(w.transactions, &expected)
    );
    assert_exactly_once(&out, &expected);
    assert_restored(&output);
}
