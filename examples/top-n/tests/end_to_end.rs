//! End-to-end tests of the `top-n` binary: a normal run, and a run SIGKILLed
//! after a checkpoint completed and resumed with `--restore latest` at another
//! parallelism (which deals the user-written source's split positions out
//! anew).
//!
//! The expected rankings come from an independent checker: the generator and
//! the sliding-window top 3 written again here as a plain loop. Pass or fail
//! never depends on timing: the kill waits for a completed checkpoint and
//! published output (polling the directories), and a run that ends before it
//! is killed must be right all the same.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_top-n");

// ---------------------------------------------------------------------------
// The independent checker.

const T0_MS: i64 = 1_700_000_000_000;
const WINDOW_MS: i64 = 60_000;
const SLIDE_MS: i64 = 10_000;
const TOP: usize = 3;

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Workload {
    views: u64,
    pages: u64,
    eps: u64,
}

impl Workload {
    /// Every ranked line the job must write: `window_start,rank,page,views`.
    fn expected_lines(&self) -> Vec<String> {
        let mut counts: BTreeMap<i64, BTreeMap<u64, u64>> = BTreeMap::new();
        for i in 0..self.views {
            let page = (mix(i) % self.pages).min(mix(i ^ 0x5851_F42D_4C95_7F2D) % self.pages);
            let ts = T0_MS + (i as i128 * 1000 / self.eps as i128) as i64;
            // Every window [start, start + WINDOW) holding ts.
            let mut start = ts - ts.rem_euclid(SLIDE_MS);
            while start > ts - WINDOW_MS {
                *counts.entry(start).or_default().entry(page).or_default() += 1;
                start -= SLIDE_MS;
            }
        }
        let mut lines = Vec::new();
        for (start, pages) in counts {
            let mut ranked: Vec<(u64, u64)> = pages.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for (rank, (page, views)) in ranked.into_iter().take(TOP).enumerate() {
                lines.push(format!("{start},{},{page},{views}", rank + 1));
            }
        }
        lines.sort();
        lines
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--views".into(),
            self.views.to_string(),
            "--pages".into(),
            self.pages.to_string(),
            "--events-per-second".into(),
            self.eps.to_string(),
            // No HTTP API: nothing shared with other tests on this machine.
            "--rest".into(),
            "off".into(),
        ]
    }
}

/// `RESULT windows=W lines=L checksum=...` for `lines`.
fn expected_result(lines: &[String]) -> String {
    let checksum = lines.iter().fold(0u64, |sum, line| {
        let fnv = line.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        });
        sum.wrapping_add(mix(fnv))
    });
    let windows: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l.split(',').next().unwrap()).collect();
    format!(
        "RESULT windows={} lines={} checksum={checksum:016x}",
        windows.len(),
        lines.len()
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

/// Every expected line exactly once in `dir`, and nothing else.
fn assert_exactly_once(dir: &Path, expected: &[String]) {
    let mut published = published_lines(dir);
    published.sort();
    assert_eq!(
        published.len(),
        expected.len(),
        "lines published vs expected"
    );
    assert_eq!(published, expected);
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
    let output = Command::new(BIN).args(args).output().expect("start top-n");
    assert!(
        output.status.success(),
        "top-n {args:?} failed: {}",
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

fn workload(views: u64) -> Workload {
    Workload {
        views,
        pages: 40,
        eps: 500,
    }
}

#[test]
fn a_normal_run_ranks_every_window() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("out"));
    let w = workload(100_000);
    let expected = w.expected_lines();
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
    assert_eq!(result_line(&output), expected_result(&expected));
    assert_exactly_once(&out, &expected);
}

#[test]
fn killed_after_a_checkpoint_and_restored_at_another_parallelism_is_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("out"));
    let w = workload(200_000);
    let expected = w.expected_lines();
    let mut common = w.args();
    common.extend(args(&["--checkpoint-interval", "200ms"]));
    common.extend([
        "--checkpoint-dir".into(),
        path(&ck),
        "--output".into(),
        path(&out),
    ]);

    // First run: throttled (about 10 s); SIGKILLed once checkpoints have
    // published a quarter of the rankings.
    let mut first = common.clone();
    first.extend(args(&["--parallelism", "2", "--rate", "20000"]));
    let mut child = Command::new(BIN)
        .args(&first)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start top-n");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut ended_by_itself = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            ended_by_itself = true;
            break;
        }
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
        assert!(child.wait_with_output().unwrap().status.success());
    } else {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!(
            "killed after a completed checkpoint, {} of {} lines published",
            published_lines(&out).len(),
            expected.len()
        );
    }

    let mut second = common.clone();
    second.extend(args(&["--parallelism", "3", "--restore", "latest"]));
    let output = run(&second);
    assert_eq!(result_line(&output), expected_result(&expected));
    assert_exactly_once(&out, &expected);
}
