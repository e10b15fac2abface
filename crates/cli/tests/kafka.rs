//! End-to-end acceptance tests of the Kafka source and the PostgreSQL sink
//! through the `flowstate` binary (issue 6): `flowstate produce` writes
//! workload W into a topic, `flowstate run kafka-count` reads it back into the
//! exactly-once file sink or a PostgreSQL table, SIGKILLed at seeded random
//! moments and restored with `--restore latest`; into a Kafka topic through
//! the at-least-once Kafka sink (once, and under SIGKILL); a savepoint taken at one
//! parallelism restored at another; and bad input (unreachable broker or
//! database, missing topic) reported as one clear error line.
//!
//! The servers come from the environment: `FLOWSTATE_TEST_KAFKA_BROKERS`
//! (e.g. `eval "$(bash scripts/kafka-server.sh)"`) and `FLOWSTATE_TEST_PG_URL`
//! (`eval "$(bash scripts/postgres-server.sh)"`). A test whose server is not
//! configured is skipped with a notice, unless `FLOWSTATE_REQUIRE_KAFKA=1` /
//! `FLOWSTATE_REQUIRE_PG=1` makes it fail. PostgreSQL is queried with the
//! `psql` client.
//!
//! Results are checked against the independent reference implementation of W
//! in `support`. Pass or fail never depends on timing: a kill may land before
//! the first checkpoint, during a restore or after the run ended; the final
//! result must be right in every case. The kill moments come from a seeded
//! generator: set `FLOWSTATE_CRASH_SEED` to replay a run's moments (the seed is
//! printed).

#![cfg(feature = "kafka")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowstate_kafka::topic_partitions;

use support::workload_values;
use support::{
    Ending, Rng, Run, arg, check_keyed_count_output, committed_lines, crash_seed,
    expected_keyed_count_result, flowstate, one_at_a_time, run_args, start, start_served, strings,
    tempdir,
};

/// Default seed of the kill moments (`FLOWSTATE_CRASH_SEED` overrides it).
const SEED: u64 = 0x5eed_0006;

/// SIGKILLs per crash test.
const KILLS: usize = 5;
/// Kill moments fall up to this long after a start: a debug build reads the
/// crash tests' 1M records in about 3 s, so most kills land mid-run, some
/// during a restore, and a few may come after the end.
const KILL_HORIZON_MS: u64 = 3500;

/// Longest a run that must fail may take to do so.
const FAIL_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Servers from the environment.

/// The value of `var`, or `None` (the test is skipped, with a notice) when it
/// is unset, unless `require` is `1` (then the test fails).
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

fn kafka_brokers(test: &str) -> Option<String> {
    server(
        "FLOWSTATE_TEST_KAFKA_BROKERS",
        "FLOWSTATE_REQUIRE_KAFKA",
        test,
    )
}

#[cfg(feature = "postgres")]
fn pg_url(test: &str) -> Option<String> {
    server("FLOWSTATE_TEST_PG_URL", "FLOWSTATE_REQUIRE_PG", test)
}

/// A name no other test (or earlier run on the same servers) uses: letters,
/// digits and `_`, usable as a topic and as a table name.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

/// `flowstate produce`: workload W (`records`, `keys`) into `topic`.
fn produce(cwd: &Path, brokers: &str, topic: &str, records: u64, keys: u64, partitions: u32) {
    let run = flowstate(
        cwd,
        &[
            "produce",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--records",
            &records.to_string(),
            "--keys",
            &keys.to_string(),
            "--partitions",
            &partitions.to_string(),
        ],
    );
    run.assert_success();
    assert_eq!(
        run.stdout,
        format!("PRODUCED records={records} topic={topic}\n"),
        "{run}"
    );
}

/// `run kafka-count --brokers B --topic T` and `extra`.
fn kafka_count(brokers: &str, topic: &str, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["run", "kafka-count", "--brokers", brokers, "--topic", topic]);
    args.extend(strings(extra));
    args
}

// ---------------------------------------------------------------------------
// PostgreSQL through psql.

/// `psql URL -Atc SQL`: its output, trimmed; panics with psql's stderr if it
/// fails.
#[cfg(feature = "postgres")]
fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", url, "-Atc", sql])
        .output()
        .expect("cannot start psql (the PostgreSQL client is needed)");
    assert!(
        output.status.success(),
        "psql -c {sql:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("psql output is not UTF-8")
        .trim()
        .to_owned()
}

/// Every row `(key, count, sum)` of `table`.
#[cfg(feature = "postgres")]
fn table_rows(url: &str, table: &str) -> BTreeMap<u64, (u64, u64)> {
    let text = psql(url, &format!("select key, count, sum from {table}"));
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<u64> = line
            .split('|')
            .map(|f| {
                f.parse()
                    .unwrap_or_else(|_| panic!("bad row {line:?} in {table}"))
            })
            .collect();
        let [key, count, sum] = fields[..] else {
            panic!("bad row {line:?} in {table}");
        };
        assert!(
            rows.insert(key, (count, sum)).is_none(),
            "key {key} twice in {table}"
        );
    }
    rows
}

/// The final `(count, sum)` of every key of W. The sums fit a bigint for the
/// sizes used here.
#[cfg(feature = "postgres")]
fn final_state(records: u64, keys: u64) -> BTreeMap<u64, (u64, u64)> {
    workload_values(records, keys)
        .into_iter()
        .map(|(key, values)| (key, (values.len() as u64, values.iter().sum())))
        .collect()
}

// ---------------------------------------------------------------------------
// SIGKILL and `--restore latest`.

/// Runs `args` (without `--parallelism`/`--restore`), SIGKILLed at `kills`
/// seeded moments up to `horizon_ms` after each start and restarted with
/// `--restore latest` (parallelism 2, then 3, 2, ... in turn), then once more
/// to its end. Every run that ends by itself must print `expected`. Returns
/// the last run.
fn sigkill_until_done(
    name: &str,
    cwd: &Path,
    args: &[String],
    kills: usize,
    horizon_ms: u64,
    expected: &str,
) -> Run {
    let seed = crash_seed(SEED);
    let salt = name
        .bytes()
        .fold(0u64, |h, b| support::splitmix64(h ^ u64::from(b)));
    let mut rng = Rng::new(seed ^ salt);
    eprintln!("[{name}] seed {seed} (FLOWSTATE_CRASH_SEED), {kills} kills");
    let logs = cwd.join("logs");
    let started = Instant::now();
    let check = |run: &Run| {
        run.assert_success();
        assert_eq!(run.result_line(), expected, "{run}");
    };
    let mut killed_mid_run = 0;
    for attempt in 0..=kills {
        let parallelism = if attempt % 2 == 0 { 2 } else { 3 };
        let mut args = args.to_vec();
        args.extend(["--parallelism".into(), parallelism.to_string()]);
        if attempt > 0 {
            args.extend(strings(&["--restore", "latest"]));
        }
        let process = start(cwd, &logs, &format!("run-{attempt}"), &args);
        if attempt == kills {
            let last = process.wait();
            eprintln!(
                "[{name}] run {attempt}: p={parallelism}, ran to the end; {killed_mid_run} of \
                 {kills} kills landed mid-run; {:.1}s in all",
                started.elapsed().as_secs_f64()
            );
            check(&last);
            return last;
        }
        // Early moments (before the first checkpoint, during a restore) and
        // later ones (after some checkpoints, or after the end).
        let at = match rng.next() % 3 {
            0 => rng.between(100, 1000),
            _ => rng.between(1000, horizon_ms),
        };
        let (ending, run) = process.kill_at(Duration::from_millis(at));
        match ending {
            Ending::Killed => killed_mid_run += 1,
            Ending::ByItself => check(&run),
        }
        eprintln!(
            "[{name}] run {attempt}: p={parallelism}, {} at {at}ms",
            match ending {
                Ending::Killed => "killed",
                Ending::ByItself => "had ended by itself",
            }
        );
    }
    unreachable!("the last attempt returns")
}

/// The acceptance test: W from a 4-partition topic into a PostgreSQL
/// table through the two-phase-commit sink, SIGKILLed at seeded moments and
/// restored (at parallelism 2 and 3 in turn) until a run finishes: the table
/// holds every key's true final (count, sum), the RESULT line is right, and no
/// prepared transaction is left behind.
#[cfg(feature = "postgres")]
#[test]
fn kafka_to_postgres_under_sigkill_is_exactly_once() {
    const NAME: &str = "kafka-to-postgres";
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 20_000;
    let (Some(brokers), Some(url)) = (kafka_brokers(NAME), pg_url(NAME)) else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let (topic, table) = (unique("kafka_pg"), unique("kafka_counts"));
    produce(root, &brokers, &topic, RECORDS, KEYS, 4);
    let ck = root.join("ck");
    let args = kafka_count(
        &brokers,
        &topic,
        &[
            "--records",
            &RECORDS.to_string(),
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            arg(&ck),
            "--output-table",
            &table,
            "--database",
            &url,
            "--rest",
            "off",
        ],
    );
    let expected = expected_keyed_count_result(RECORDS, KEYS);
    sigkill_until_done(NAME, root, &args, KILLS, KILL_HORIZON_MS, &expected);

    let rows = table_rows(&url, &table);
    let truth = final_state(RECORDS, KEYS);
    assert_eq!(rows.len(), truth.len(), "rows in {table} vs keys of W");
    for (key, want) in &truth {
        assert_eq!(
            rows.get(key),
            Some(want),
            "key {key}: (count, sum) in {table} vs workload W"
        );
    }
    let prepared = psql(&url, "select count(*) from pg_prepared_xacts");
    assert_eq!(
        prepared,
        "0",
        "prepared transactions left behind: {}",
        psql(&url, "select gid, database from pg_prepared_xacts")
    );
}

/// The same into the exactly-once file sink: every key's counts 1..c once
/// each, one committed line per record.
#[test]
fn kafka_to_files_under_sigkill_is_exactly_once() {
    const NAME: &str = "kafka-to-files";
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 20_000;
    let Some(brokers) = kafka_brokers(NAME) else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let topic = unique("kafka_files");
    produce(root, &brokers, &topic, RECORDS, KEYS, 4);
    let (ck, out) = (root.join("ck"), root.join("out"));
    let args = kafka_count(
        &brokers,
        &topic,
        &[
            "--records",
            &RECORDS.to_string(),
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            arg(&ck),
            "--output",
            arg(&out),
            "--rest",
            "off",
        ],
    );
    let expected = expected_keyed_count_result(RECORDS, KEYS);
    sigkill_until_done(NAME, root, &args, KILLS, KILL_HORIZON_MS, &expected);
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
}

// ---------------------------------------------------------------------------
// Into a Kafka topic (`--output-topic`, the at-least-once Kafka sink).

/// The records of `topic` as `(partition, offset, key, line)`, read back with
/// `read_committed` once the job ended: at least `min_records`, then until
/// the topic is quiet for two seconds.
fn topic_lines(brokers: &str, topic: &str, min_records: u64) -> Vec<(i32, i64, String, String)> {
    let text = |what: &str, bytes: Option<Vec<u8>>| {
        String::from_utf8(bytes.unwrap_or_else(|| panic!("a record without {what} in {topic}")))
            .unwrap_or_else(|_| panic!("a record's {what} in {topic} is not UTF-8"))
    };
    flowstate_kafka::read_topic(brokers, topic, min_records, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("cannot read back {topic}: {e}"))
        .into_iter()
        .map(|r| {
            (
                r.partition,
                r.offset,
                text("key", r.key),
                text("payload", r.payload),
            )
        })
        .collect()
}

/// `(key, count, sum)` of a `key,count,sum` line.
fn update(line: &str) -> (u64, u64, u64) {
    let fields: Vec<u64> = line
        .split(',')
        .map(|f| f.parse().unwrap_or_else(|_| panic!("bad line {line:?}")))
        .collect();
    let [key, count, sum] = fields[..] else {
        panic!("bad line {line:?}");
    };
    (key, count, sum)
}

/// Checks what holds of the topic however often the job was restored: every
/// record's key is its line's key; all of a key's records are in one
/// partition; every count 1..c of every key of W is there (nothing lost);
/// and each key's last record (by offset) holds its final `(count, sum)`.
/// Returns the number of records beyond one per update of W (duplicates).
fn check_counts_topic(records: &[(i32, i64, String, String)], total: u64, keys: u64) -> u64 {
    let truth = workload_values(total, keys);
    /// A key's partition, the counts seen, and `(offset, count, sum)` of its
    /// last record.
    type Seen = (i32, BTreeSet<u64>, (i64, u64, u64));
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    for (partition, offset, key_text, line) in records {
        let (key, count, sum) = update(line);
        assert_eq!(key_text, &key.to_string(), "record key vs line {line:?}");
        let entry = seen
            .entry(key)
            .or_insert_with(|| (*partition, BTreeSet::new(), (-1, 0, 0)));
        assert_eq!(
            entry.0, *partition,
            "key {key} in partitions {} and {partition}",
            entry.0
        );
        entry.1.insert(count);
        if *offset > entry.2.0 {
            entry.2 = (*offset, count, sum);
        }
    }
    assert_eq!(seen.len(), truth.len(), "distinct keys vs workload W");
    for (key, values) in &truth {
        let (_, counts, (_, last_count, last_sum)) = &seen[key];
        let c = values.len() as u64;
        assert!(
            counts.iter().copied().eq(1..=c),
            "key {key}: counts seen are not 1..{c}"
        );
        let sum = values.iter().fold(0u64, |a, &v| a.wrapping_add(v));
        assert_eq!(
            (*last_count, *last_sum),
            (c, sum),
            "key {key}: its last record is not its final (count, sum)"
        );
    }
    records.len() as u64 - total
}

/// W into a Kafka topic in one run at parallelism 2 with checkpoints: one
/// record per update, exactly the file sink's lines (no restore, so no
/// duplicate), each key's in one partition, its last one final.
#[test]
fn kafka_to_kafka_writes_every_update_once_without_failures() {
    const NAME: &str = "kafka-to-kafka";
    const RECORDS: u64 = 200_000;
    const KEYS: u64 = 20_000;
    let Some(brokers) = kafka_brokers(NAME) else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let (topic, output) = (unique("kafka_in"), unique("kafka_counts"));
    produce(root, &brokers, &topic, RECORDS, KEYS, 4);
    let run = run_args(
        root,
        &kafka_count(
            &brokers,
            &topic,
            &[
                "--records",
                &RECORDS.to_string(),
                "--checkpoint-interval",
                "200ms",
                "--checkpoint-dir",
                arg(&root.join("ck")),
                "--output-topic",
                &output,
                "--parallelism",
                "2",
                "--rest",
                "off",
            ],
        ),
    );
    run.assert_success();
    assert_eq!(
        run.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run}"
    );
    let records = topic_lines(&brokers, &output, RECORDS);
    let lines: Vec<String> = records.iter().map(|r| r.3.clone()).collect();
    check_keyed_count_output(&lines, RECORDS, KEYS);
    assert_eq!(check_counts_topic(&records, RECORDS, KEYS), 0);
    assert_eq!(
        topic_partitions(brokers.as_str(), &output).unwrap().len(),
        4,
        "the output topic gets the input topic's partition count"
    );
}

/// The same SIGKILLed at seeded moments and restored (parallelism 2 and 3 in
/// turn) until a run finishes. The Kafka sink is at-least-once (idempotent
/// producer, no transactions), so the topic may hold updates twice; what
/// must hold is that none is lost and each key's last record is its final
/// `(count, sum)`.
#[test]
fn kafka_to_kafka_under_sigkill_is_at_least_once() {
    const NAME: &str = "kafka-to-kafka-sigkill";
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 20_000;
    let Some(brokers) = kafka_brokers(NAME) else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let (topic, output) = (unique("kafka_in"), unique("kafka_counts"));
    produce(root, &brokers, &topic, RECORDS, KEYS, 4);
    let args = kafka_count(
        &brokers,
        &topic,
        &[
            "--records",
            &RECORDS.to_string(),
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            arg(&root.join("ck")),
            "--output-topic",
            &output,
            "--rest",
            "off",
        ],
    );
    let expected = expected_keyed_count_result(RECORDS, KEYS);
    sigkill_until_done(NAME, root, &args, KILLS, KILL_HORIZON_MS, &expected);
    let records = topic_lines(&brokers, &output, RECORDS);
    let duplicates = check_counts_topic(&records, RECORDS, KEYS);
    eprintln!(
        "[{NAME}] {} records, {duplicates} written again after restores",
        records.len()
    );
}

// ---------------------------------------------------------------------------
// A savepoint, restored at another parallelism.

/// `records=N` of a RESULT line.
fn result_records(line: &str) -> u64 {
    line.split(' ')
        .find_map(|f| f.strip_prefix("records="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no records= in {line:?}"))
}

/// A savepoint of a job reading 4 partitions at parallelism 2 (taken with
/// `flowstate stop --savepoint`, which commits the output up to it), restored
/// at parallelism 3 into the same output directory: the partitions' positions
/// are dealt out anew, and the output is exactly once over both runs.
///
/// The first run reads without `--records` (on forever), so it is surely still
/// going when the stop comes, whatever the machine's speed; the resumed run
/// reads up to the N records produced and ends.
#[test]
fn a_savepoint_at_p2_over_4_partitions_restores_at_p3() {
    const NAME: &str = "savepoint-p2-to-p3";
    const RECORDS: u64 = 400_000;
    const KEYS: u64 = 20_000;
    let Some(brokers) = kafka_brokers(NAME) else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let topic = unique("kafka_savepoint");
    produce(root, &brokers, &topic, RECORDS, KEYS, 4);
    let (out, ck, logs, target) = (
        root.join("out"),
        root.join("ck"),
        root.join("logs"),
        root.join("savepoints"),
    );
    let common = [
        "--checkpoint-interval",
        "300ms",
        "--checkpoint-dir",
        arg(&ck),
        "--output",
        arg(&out),
    ];
    let mut first = kafka_count(&brokers, &topic, &common);
    // `stop --savepoint` may name only the job's --savepoint-dir (or under it).
    first.extend(strings(&[
        "--parallelism",
        "2",
        "--savepoint-dir",
        arg(&target),
    ]));
    let mut job = start_served(root, &logs, "run-1", &first);
    let records_in = job.wait_for_records(1);
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
    let savepoint: PathBuf = stop
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Savepoint completed: "))
        .map(|l| PathBuf::from(l.strip_prefix("file://").unwrap_or(l)))
        .unwrap_or_else(|| panic!("no 'Savepoint completed:' line: {stop}"));
    assert!(
        savepoint.join("_metadata").is_file(),
        "no _metadata in {}: {stop}",
        savepoint.display()
    );
    let run1 = job.process.wait();
    run1.assert_success();
    let records1 = result_records(run1.result_line());
    eprintln!(
        "[{NAME}] {records_in} records in at the stop request; run 1: {}",
        run1.result_line()
    );
    assert!(
        records1 >= records_in && records1 <= RECORDS,
        "run 1 processed {records1} records ({records_in} were in before the stop, {RECORDS} exist)"
    );
    let committed1 = committed_lines(&out).len() as u64;
    assert_eq!(
        committed1, records1,
        "stop-with-savepoint commits every update before the savepoint"
    );

    let mut second = kafka_count(
        &brokers,
        &topic,
        &["--records", &RECORDS.to_string(), "--parallelism", "3"],
    );
    second.extend(strings(&common));
    second.extend(strings(&["--restore", arg(&savepoint), "--rest", "off"]));
    let run2 = run_args(root, &second);
    run2.assert_success();
    assert_eq!(
        run2.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run2}"
    );
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
}

// ---------------------------------------------------------------------------
// Bad input: one clear error line, in bounded time.

/// Runs `args` to its end (at most [`FAIL_DEADLINE`]); it must fail with
/// exactly one `flowstate: error:` line, which is returned.
fn must_fail(cwd: &Path, name: &str, args: &[String]) -> String {
    let mut process = start(cwd, &cwd.join("logs"), name, args);
    let run = loop {
        if let Some(run) = process.ended() {
            break run;
        }
        if process.started.elapsed() > FAIL_DEADLINE {
            let (_, run) = process.kill();
            panic!("[{name}] still running after {FAIL_DEADLINE:?}, killed: {run}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "[{name}] failed after {:.1}s: {}",
        process.started.elapsed().as_secs_f64(),
        run.error_lines().join(" / ")
    );
    run.assert_failure();
    run.single_error_line().to_owned()
}

/// A broker address nothing listens on: the run fails in bounded time, and
/// its error names the address.
#[test]
fn an_unreachable_broker_is_one_clear_error() {
    let tmp = tempdir();
    let brokers = format!("127.0.0.1:{}", closed_port());
    let out = tmp.path().join("out");
    let error = must_fail(
        tmp.path(),
        "unreachable-broker",
        &kafka_count(
            &brokers,
            "some_topic",
            &["--records", "100", "--output", arg(&out), "--rest", "off"],
        ),
    );
    assert!(
        error.contains(&brokers),
        "the error does not name the broker {brokers}: {error}"
    );
}

/// A topic that does not exist: the error names it.
#[test]
fn a_missing_topic_is_one_clear_error() {
    // Talks to the broker, which another test pauses while holding the turn.
    let _turn = one_at_a_time();
    const NAME: &str = "missing-topic";
    let Some(brokers) = kafka_brokers(NAME) else {
        return;
    };
    let tmp = tempdir();
    let topic = unique("no_such_topic");
    let out = tmp.path().join("out");
    let error = must_fail(
        tmp.path(),
        NAME,
        &kafka_count(
            &brokers,
            &topic,
            &["--records", "100", "--output", arg(&out), "--rest", "off"],
        ),
    );
    assert!(
        error.contains(&topic),
        "the error does not name the topic {topic}: {error}"
    );
}

/// A database address nothing listens on: the error names host:port, and
/// the run fails in bounded time.
#[cfg(feature = "postgres")]
#[test]
fn an_unreachable_database_is_one_clear_error() {
    const NAME: &str = "unreachable-database";
    let Some(brokers) = kafka_brokers(NAME) else {
        return;
    };
    let tmp = tempdir();
    let topic = unique("kafka_nodb");
    produce(tmp.path(), &brokers, &topic, 1000, 100, 2);
    let host_port = format!("127.0.0.1:{}", closed_port());
    let url = format!("postgres://x:y@{host_port}/db");
    let error = must_fail(
        tmp.path(),
        NAME,
        &kafka_count(
            &brokers,
            &topic,
            &[
                "--records",
                "1000",
                "--output-table",
                "counts",
                "--database",
                &url,
                "--rest",
                "off",
            ],
        ),
    );
    assert!(
        error.contains(&host_port),
        "the error does not name the database's host:port {host_port}: {error}"
    );
    assert!(
        !error.contains("x:y@"),
        "the error shows the database password: {error}"
    );
}

// ---------------------------------------------------------------------------
// Transient faults: the server goes away for a while and comes back.

/// Path of a script of the repository.
#[cfg(feature = "postgres")]
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// Waits until `done`, failing after `deadline`.
fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PostgreSQL restarts mid-run (its clients are disconnected, nothing listens
/// for two seconds): the sink's failure fails the task, the job restarts from
/// its latest checkpoint until the server answers again, the prepared
/// transactions that survived the restart are resolved, and the table ends
/// equal to the true counts with nothing left prepared.
#[cfg(feature = "postgres")]
#[test]
fn a_postgres_outage_mid_run_is_recovered_from() {
    const NAME: &str = "postgres-outage";
    const RECORDS: u64 = 2_000_000;
    const KEYS: u64 = 20_000;
    let (Some(brokers), Some(url)) = (kafka_brokers(NAME), pg_url(NAME)) else {
        return;
    };
    let Some(dir) = server("PG_SERVER_DIR", "FLOWSTATE_REQUIRE_PG", NAME) else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let (topic, table) = (unique("pg_outage"), unique("outage_counts"));
    produce(root, &brokers, &topic, RECORDS, KEYS, 4);
    let args = kafka_count(
        &brokers,
        &topic,
        &[
            "--records",
            &RECORDS.to_string(),
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            arg(&root.join("ck")),
            "--output-table",
            &table,
            "--database",
            &url,
            "--restart-attempts",
            "30",
            "--restart-delay",
            "300ms",
            "--rest",
            "off",
        ],
    );
    let job = start(root, &root.join("logs"), "run", &args);
    wait_until("committed rows", Duration::from_secs(120), || {
        psql(&url, &format!("select to_regclass('{table}') is not null")) == "t"
            && psql(&url, &format!("select count(*) from {table}")) != "0"
    });
    let restart = Command::new("bash")
        .arg(script("postgres-server.sh"))
        .args(["restart", &dir, "2"])
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "restarting PostgreSQL failed: {}",
        String::from_utf8_lossy(&restart.stderr)
    );
    let run = job.wait();
    run.assert_success();
    assert_eq!(
        run.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run}"
    );
    assert!(
        run.stderr.contains("restart 1 of"),
        "the outage should have failed and restarted the job (it ended before the outage? \
         raise RECORDS): {run}"
    );
    let rows = table_rows(&url, &table);
    assert_eq!(
        rows,
        final_state(RECORDS, KEYS),
        "table {table} vs workload W"
    );
    assert_eq!(psql(&url, "select count(*) from pg_prepared_xacts"), "0");
}

/// The broker stops answering for three seconds mid-run (SIGSTOP, then
/// SIGCONT): the source waits and reads on; the output is exactly once.
#[test]
fn a_broker_pause_mid_run_is_ridden_out() {
    const NAME: &str = "broker-pause";
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 20_000;
    let Some(brokers) = kafka_brokers(NAME) else {
        return;
    };
    let Some(pid) = server("KAFKA_SERVER_PID", "FLOWSTATE_REQUIRE_KAFKA", NAME) else {
        return;
    };
    let _turn = one_at_a_time();
    let tmp = tempdir();
    let root = tmp.path();
    let topic = unique("pause");
    produce(root, &brokers, &topic, RECORDS, KEYS, 4);
    let out = root.join("out");
    let args = kafka_count(
        &brokers,
        &topic,
        &[
            "--records",
            &RECORDS.to_string(),
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            arg(&root.join("ck")),
            "--output",
            arg(&out),
            "--rest",
            "off",
        ],
    );
    let job = start(root, &root.join("logs"), "run", &args);
    wait_until("committed output", Duration::from_secs(120), || {
        std::fs::read_dir(&out).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("part-"))
        })
    });
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(3));
    signal("-CONT");
    let run = job.wait();
    run.assert_success();
    assert_eq!(
        run.result_line(),
        expected_keyed_count_result(RECORDS, KEYS),
        "{run}"
    );
    check_keyed_count_output(&committed_lines(&out), RECORDS, KEYS);
}
