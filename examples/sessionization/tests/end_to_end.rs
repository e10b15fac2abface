//! End-to-end test of the `sessionization` binary against real servers:
//! `sessionization-produce` writes clicks into a fresh topic, the job reads
//! them into a fresh PostgreSQL table, SIGKILLed once a checkpoint completed
//! and resumed with `--restore latest` at another parallelism; the table must
//! hold every session exactly once, as an independent single-threaded
//! sessionizer computes them from the generator.
//!
//! The servers come from the environment, as for the connectors' own tests:
//! `FLOWSTATE_TEST_KAFKA_BROKERS` (`eval "$(bash scripts/kafka-server.sh)"`)
//! and `FLOWSTATE_TEST_PG_URL` (`eval "$(bash scripts/postgres-server.sh)"`).
//! Without them the test prints a notice and passes, unless
//! `FLOWSTATE_REQUIRE_KAFKA=1` / `FLOWSTATE_REQUIRE_PG=1` makes it fail.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_sessionization");
const PRODUCE: &str = env!("CARGO_BIN_EXE_sessionization-produce");

/// The value of `var`, or `None` (skip, with a notice) unless `require` is 1.
fn server(var: &str, require: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value.trim().to_owned()),
        _ => {
            if std::env::var(require).as_deref() == Ok("1") {
                panic!("{var} is not set but {require}=1: cannot run {test}");
            }
            eprintln!("[{test}] SKIPPED: {var} is not set (set {require}=1 to fail instead)");
            None
        }
    }
}

/// A name no other run uses (a topic and a table name).
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------
// The independent checker: the README's generator and session rule, anew.

const T0_MS: i64 = 1_700_000_000_000;
const GAP_MS: i64 = 30 * 60 * 1000;

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `(user, start, last click, clicks)` of every session of `clicks` clicks by
/// 320 users at 20 clicks/s in turns of 6000 clicks.
fn expected_sessions(clicks: u64) -> Vec<(u64, i64, i64, u64)> {
    let mut by_user: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for i in 0..clicks {
        let user = 32 * ((i / 6000) % 10) + mix(i) % 32;
        by_user
            .entry(user)
            .or_default()
            .push(T0_MS + (i * 1000 / 20) as i64);
    }
    let mut sessions = Vec::new();
    for (user, mut times) in by_user {
        times.sort_unstable();
        let mut current: Option<(i64, i64, u64)> = None;
        for t in times {
            current = match current {
                // Within the gap of the last click (touching merges too).
                Some((start, last, n)) if t <= last + GAP_MS => Some((start, t, n + 1)),
                Some((start, last, n)) => {
                    sessions.push((user, start, last, n));
                    Some((t, t, 1))
                }
                None => Some((t, t, 1)),
            };
        }
        if let Some((start, last, n)) = current {
            sessions.push((user, start, last, n));
        }
    }
    sessions.sort_unstable();
    sessions
}

fn expected_result(clicks: u64, sessions: &[(u64, i64, i64, u64)]) -> String {
    let checksum = sessions.iter().fold(0u64, |sum, (u, s, l, n)| {
        let line = format!("{u},{s},{l},{n}");
        let fnv = line.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        });
        sum.wrapping_add(mix(fnv))
    });
    format!(
        "RESULT clicks={clicks} sessions={} checksum={checksum:016x}",
        sessions.len()
    )
}

// ---------------------------------------------------------------------------

fn run(bin: &str, args: &[String]) -> Output {
    let output = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    assert!(
        output.status.success(),
        "{bin} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn has_completed_checkpoint(ck: &Path) -> bool {
    let Ok(jobs) = std::fs::read_dir(ck) else {
        return false;
    };
    jobs.flatten().any(|job| {
        std::fs::read_dir(job.path()).is_ok_and(|chks| {
            chks.flatten()
                .any(|chk| chk.path().join("_metadata").is_file())
        })
    })
}

#[test]
fn kafka_to_postgres_sessions_are_exactly_once_across_a_kill() {
    const NAME: &str = "sessionization";
    const CLICKS: u64 = 60_000;
    let brokers = server(
        "FLOWSTATE_TEST_KAFKA_BROKERS",
        "FLOWSTATE_REQUIRE_KAFKA",
        NAME,
    );
    let url = server("FLOWSTATE_TEST_PG_URL", "FLOWSTATE_REQUIRE_PG", NAME);
    let (Some(brokers), Some(url)) = (brokers, url) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ck");
    let (topic, table) = (unique("clicks"), unique("sessions"));
    let produced = run(
        PRODUCE,
        &[
            "--brokers".into(),
            brokers.clone(),
            "--topic".into(),
            topic.clone(),
            "--clicks".into(),
            CLICKS.to_string(),
            "--partitions".into(),
            "4".into(),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&produced.stdout).trim(),
        format!("PRODUCED clicks={CLICKS} topic={topic}")
    );
    let common: Vec<String> = [
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--records",
        &CLICKS.to_string(),
        "--database",
        &url,
        "--table",
        &table,
        "--checkpoint-interval",
        "200ms",
        "--checkpoint-dir",
        &ck.display().to_string(),
        "--rest",
        "off",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();

    // Killed once a checkpoint completed (or checked if it ended first).
    let mut first = common.clone();
    first.extend(["--parallelism".into(), "2".into()]);
    let mut child = Command::new(BIN)
        .args(&first)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if child.try_wait().unwrap().is_some() {
            eprintln!("[{NAME}] the first run ended before it could be killed");
            break;
        }
        if has_completed_checkpoint(&ck) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            eprintln!("[{NAME}] killed after a completed checkpoint");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed in 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = common.clone();
    second.extend([
        "--parallelism".into(),
        "3".into(),
        "--restore".into(),
        "latest".into(),
    ]);
    let output = run(BIN, &second);

    let expected = expected_sessions(CLICKS);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some(expected_result(CLICKS, &expected).as_str())
    );
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut rows: Vec<(u64, i64, i64, u64)> = client
        .query(
            &format!("SELECT user_id, session_start, last_click, clicks FROM {table}"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3) as u64,
            )
        })
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, expected, "sessions in {table} vs the checker");
    let prepared: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0, "prepared transactions left behind");
}
