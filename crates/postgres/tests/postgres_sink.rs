//! The PostgreSQL sink against a real server: `FLOWSTATE_TEST_PG_URL`
//! (`eval "$(scripts/postgres-server.sh)"` starts one). Without it the tests
//! that need a server print a notice and pass, unless `FLOWSTATE_REQUIRE_PG=1`
//! (scripts/test.sh sets it), which makes them fail.
//!
//! Every test uses its own table and operator uid, so they run in parallel in
//! one database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::{CoordinatorSettings, OperatorListState, open_storage};
use flowstate::runtime::restart::ExponentialDelay;
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom};
use flowstate::{
    Barrier, ExecutionConfig, FnResult, KeyedContext, KeyedProcessFunction, KeyedStateBackend,
    Sink, StreamEnvironment, SubtaskInfo, ValueStateDescriptor, ValueStateHandle,
};
use flowstate_postgres::{Mode, PostgresSink, SqlValue};
use postgres::{Client, NoTls};

/// The server's URL, or `None` (with a notice) when the tests may skip.
fn server_url(test: &str) -> Option<String> {
    match std::env::var("FLOWSTATE_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("FLOWSTATE_REQUIRE_PG").is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: FLOWSTATE_REQUIRE_PG=1 but FLOWSTATE_TEST_PG_URL is not set; \
                     start a server with eval \"$(scripts/postgres-server.sh)\""
                );
            }
            eprintln!(
                "{test}: skipped: FLOWSTATE_TEST_PG_URL is not set \
                 (eval \"$(scripts/postgres-server.sh)\" starts a server)"
            );
            None
        }
    }
}

fn client(url: &str) -> Client {
    Client::connect(url, NoTls).expect("connect to the test server")
}

/// A fresh table `name (k bigint primary key, n bigint)` (append tables have no key).
/// Prepared transactions left on it by an earlier, failed run are rolled back
/// first (they hold locks that would block the `DROP`).
fn fresh_table(db: &mut Client, name: &str, keyed: bool) {
    let leftovers: Vec<String> = db
        .query(
            "SELECT DISTINCT p.gid FROM pg_prepared_xacts p \
             JOIN pg_locks x ON x.locktype = 'transactionid' AND x.transactionid = p.transaction \
             JOIN pg_locks r ON r.virtualtransaction = x.virtualtransaction \
             WHERE p.database = current_database() AND r.locktype = 'relation' \
               AND r.relation = to_regclass($1)",
            &[&name],
        )
        .expect("list leftover prepared transactions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for gid in leftovers {
        let _ = db.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"));
    }
    let key = if keyed { " PRIMARY KEY" } else { "" };
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (k bigint{key}, n bigint)"
    ))
    .expect("create the test table");
}

fn rows(db: &mut Client, table: &str) -> Vec<(i64, i64)> {
    db.query(&format!("SELECT k, n FROM {table} ORDER BY k, n"), &[])
        .expect("read the table")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Prepared transactions of operator `uid` (any job).
fn prepared(db: &mut Client, uid: &str) -> Vec<String> {
    db.query(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'flowstate:%' AND split_part(gid, ':', 3) = $1 ORDER BY gid",
        &[&uid],
    )
    .expect("list prepared transactions")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn sink(url: &str, table: &str, mode: Mode) -> PostgresSink<(u64, u64)> {
    PostgresSink::new(url, table, &["k", "n"], mode, |&(k, n): &(u64, u64)| {
        vec![SqlValue::from(k), SqlValue::from(n)]
    })
    .expect("valid sink settings")
}

fn upsert() -> Mode {
    Mode::Upsert {
        key_columns: vec!["k".into()],
    }
}

fn subtask(
    job: &str,
    uid: &str,
    index: u32,
    parallelism: u32,
    restored: Option<Vec<OperatorListState>>,
) -> SubtaskInfo {
    let mut info = SubtaskInfo::new(uid, index, parallelism, 128);
    info.job_id = job.to_owned();
    info.restored = restored.map(|lists| {
        Arc::new(flowstate::runtime::RestoredState {
            keyed: Default::default(),
            lists,
        })
    });
    info
}

/// Union state as restored: every instance's elements.
fn union(states: &[Vec<OperatorListState>]) -> Vec<OperatorListState> {
    let mut merged = states[0].clone();
    for more in &states[1..] {
        merged[0].elements.extend(more[0].elements.iter().cloned());
    }
    merged
}

#[test]
fn upsert_round_trip_keeps_the_latest_row_per_key_and_publishes_on_commit() {
    let Some(url) = server_url("upsert_round_trip") else {
        return;
    };
    let mut db = client(&url);
    fresh_table(&mut db, "pg_upsert_rt", true);
    let sink = sink(&url, "pg_upsert_rt", upsert());
    let mut writer = sink
        .create_writer(&subtask("job-u", "upsert-rt", 0, 1, None))
        .unwrap();
    writer
        .write_batch(&mut vec![(1, 1), (2, 1), (1, 2), (3, 1)])
        .unwrap();
    writer.write_batch(&mut vec![(1, 3), (2, 2)]).unwrap();
    let state = writer.prepare_commit(Barrier::checkpoint(1)).unwrap();
    assert_eq!(state[0].elements.len(), 1);
    assert_eq!(
        rows(&mut db, "pg_upsert_rt"),
        [],
        "nothing visible before the commit"
    );
    assert_eq!(
        prepared(&mut db, "upsert-rt"),
        ["flowstate:job-u:upsert-rt:0:1"]
    );
    writer.commit(1).unwrap();
    assert_eq!(rows(&mut db, "pg_upsert_rt"), [(1, 3), (2, 2), (3, 1)]);

    // A later checkpoint overwrites; a checkpoint without rows prepares nothing.
    writer.write_batch(&mut vec![(3, 2), (4, 1)]).unwrap();
    writer.prepare_commit(Barrier::checkpoint(2)).unwrap();
    let empty = writer.prepare_commit(Barrier::checkpoint(3)).unwrap();
    assert_eq!(empty[0].elements.len(), 1, "checkpoint 2 still pending");
    writer.commit(3).unwrap();
    assert_eq!(
        rows(&mut db, "pg_upsert_rt"),
        [(1, 3), (2, 2), (3, 2), (4, 1)]
    );
    assert_eq!(prepared(&mut db, "upsert-rt"), Vec::<String>::new());

    // Without checkpoints, finish commits.
    writer.write_batch(&mut vec![(5, 1)]).unwrap();
    writer.finish().unwrap();
    assert_eq!(rows(&mut db, "pg_upsert_rt").len(), 5);
}

#[test]
fn an_aborted_checkpoint_s_transaction_is_kept_and_committed_with_the_next_one() {
    let Some(url) = server_url("aborted_checkpoint") else {
        return;
    };
    let mut db = client(&url);
    fresh_table(&mut db, "pg_aborted", false);
    let sink = sink(&url, "pg_aborted", Mode::Append);
    let mut writer = sink
        .create_writer(&subtask("job-x", "aborted", 0, 1, None))
        .unwrap();
    writer.write_batch(&mut vec![(1, 1), (2, 1)]).unwrap();
    writer.prepare_commit(Barrier::checkpoint(1)).unwrap();
    // Checkpoint 1 fails elsewhere. The job does not rewind: these rows'
    // records are never read again, so the transaction must survive.
    writer.abort(1).unwrap();
    assert_eq!(
        prepared(&mut db, "aborted"),
        ["flowstate:job-x:aborted:0:1"]
    );
    assert_eq!(rows(&mut db, "pg_aborted"), []);
    writer.write_batch(&mut vec![(3, 1)]).unwrap();
    let state = writer.prepare_commit(Barrier::checkpoint(2)).unwrap();
    assert_eq!(state[0].elements.len(), 2, "checkpoint 2 names both");
    writer.commit(2).unwrap();
    assert_eq!(rows(&mut db, "pg_aborted"), [(1, 1), (2, 1), (3, 1)]);
    assert_eq!(prepared(&mut db, "aborted"), Vec::<String>::new());
}

#[test]
fn append_round_trip_writes_every_record_and_flushes_early_into_the_open_transaction() {
    let Some(url) = server_url("append_round_trip") else {
        return;
    };
    let mut db = client(&url);
    fresh_table(&mut db, "pg_append_rt", false);
    let sink = sink(&url, "pg_append_rt", Mode::Append).with_buffer_rows(3);
    let mut writer = sink
        .create_writer(&subtask("job-a", "append-rt", 0, 1, None))
        .unwrap();
    let mut batch: Vec<(u64, u64)> = (0..10).map(|i| (i % 2, i)).collect();
    writer.write_batch(&mut batch).unwrap();
    assert_eq!(
        rows(&mut db, "pg_append_rt"),
        [],
        "early rows stay in the open transaction"
    );
    writer.prepare_commit(Barrier::checkpoint(1)).unwrap();
    // Rows after the barrier go into a new transaction while 1 is prepared.
    writer
        .write_batch(&mut vec![(7, 7), (7, 8), (7, 9), (7, 10)])
        .unwrap();
    writer.commit(1).unwrap();
    assert_eq!(rows(&mut db, "pg_append_rt").len(), 10);
    writer.finish().unwrap();
    assert_eq!(rows(&mut db, "pg_append_rt").len(), 14);
    assert_eq!(prepared(&mut db, "append-rt"), Vec::<String>::new());
}

#[test]
fn a_restored_writer_commits_the_restored_transactions_and_rolls_back_later_ones() {
    let Some(url) = server_url("restore") else {
        return;
    };
    let mut db = client(&url);
    // Append mode: strict two-phase commit (upsert mode commits a transaction
    // still prepared from an unnotified checkpoint before it writes the next
    // one, see `PostgresSink`).
    fresh_table(&mut db, "pg_restore", false);
    let sink = sink(&url, "pg_restore", Mode::Append);
    let mut w0 = sink
        .create_writer(&subtask("job-r", "restore", 0, 2, None))
        .unwrap();
    let mut w1 = sink
        .create_writer(&subtask("job-r", "restore", 1, 2, None))
        .unwrap();
    w0.write_batch(&mut vec![(0, 1), (2, 1)]).unwrap();
    w1.write_batch(&mut vec![(1, 1)]).unwrap();
    let checkpoint_1 = union(&[
        w0.prepare_commit(Barrier::checkpoint(1)).unwrap(),
        w1.prepare_commit(Barrier::checkpoint(1)).unwrap(),
    ]);
    // Checkpoint 1 completes, but the process dies before the notification.
    // Checkpoint 2 is prepared and never completes.
    w0.write_batch(&mut vec![(0, 2)]).unwrap();
    w1.write_batch(&mut vec![(1, 2), (3, 1)]).unwrap();
    w0.prepare_commit(Barrier::checkpoint(2)).unwrap();
    w1.prepare_commit(Barrier::checkpoint(2)).unwrap();
    // Rows after the last barrier, in an open transaction, die with the process.
    w0.write_batch(&mut vec![(4, 1)]).unwrap();
    drop((w0, w1));
    assert_eq!(prepared(&mut db, "restore").len(), 4);
    assert_eq!(rows(&mut db, "pg_restore"), []);

    // Restored at another parallelism: instance 0 resolves everything.
    let writers: Vec<_> = (0..3)
        .map(|i| {
            sink.create_writer(&subtask(
                "job-r",
                "restore",
                i,
                3,
                Some(checkpoint_1.clone()),
            ))
            .unwrap()
        })
        .collect();
    assert_eq!(rows(&mut db, "pg_restore"), [(0, 1), (1, 1), (2, 1)]);
    assert_eq!(prepared(&mut db, "restore"), Vec::<String>::new());
    drop(writers);

    // Restoring the same checkpoint again (a second crash) is a no-op.
    let again = sink
        .create_writer(&subtask("job-r", "restore", 0, 1, Some(checkpoint_1)))
        .unwrap();
    drop(again);
    assert_eq!(rows(&mut db, "pg_restore"), [(0, 1), (1, 1), (2, 1)]);
}

#[test]
fn a_savepoint_restored_into_a_new_job_resolves_the_old_jobs_transactions() {
    let Some(url) = server_url("savepoint") else {
        return;
    };
    let mut db = client(&url);
    fresh_table(&mut db, "pg_savepoint", true);
    let sink = sink(&url, "pg_savepoint", upsert());
    let mut old = sink
        .create_writer(&subtask("old-job", "savepoint", 0, 1, None))
        .unwrap();
    old.write_batch(&mut vec![(1, 1)]).unwrap();
    let savepoint = old.prepare_commit(Barrier::checkpoint(5)).unwrap();
    old.write_batch(&mut vec![(1, 2), (2, 1)]).unwrap();
    old.prepare_commit(Barrier::checkpoint(6)).unwrap();
    drop(old);
    // Another job's transaction on another table with the same uid is left alone.
    fresh_table(&mut db, "pg_savepoint_other", true);
    let other_sink = sink_other(&url);
    let mut other = other_sink
        .create_writer(&subtask("other-job", "savepoint", 0, 1, None))
        .unwrap();
    other.write_batch(&mut vec![(9, 9)]).unwrap();
    other.prepare_commit(Barrier::checkpoint(1)).unwrap();

    let new = sink
        .create_writer(&subtask("new-job", "savepoint", 0, 1, Some(savepoint)))
        .unwrap();
    drop(new);
    assert_eq!(rows(&mut db, "pg_savepoint"), [(1, 1)]);
    assert_eq!(
        prepared(&mut db, "savepoint"),
        ["flowstate:other-job:savepoint:0:1"]
    );
    other.commit(1).unwrap();
    assert_eq!(rows(&mut db, "pg_savepoint_other"), [(9, 9)]);
}

fn sink_other(url: &str) -> PostgresSink<(u64, u64)> {
    sink(url, "pg_savepoint_other", upsert())
}

#[test]
fn commit_is_idempotent() {
    let Some(url) = server_url("idempotent_commit") else {
        return;
    };
    let mut db = client(&url);
    fresh_table(&mut db, "pg_idempotent", false);
    let sink = sink(&url, "pg_idempotent", Mode::Append);
    let mut writer = sink
        .create_writer(&subtask("job-i", "idempotent", 0, 1, None))
        .unwrap();
    writer.write_batch(&mut vec![(1, 1), (2, 2)]).unwrap();
    let state = writer.prepare_commit(Barrier::checkpoint(1)).unwrap();
    writer.commit(1).unwrap();
    writer.commit(1).unwrap();
    writer.commit(2).unwrap();
    // A restore of the checkpoint whose transaction was committed already.
    let restored = sink
        .create_writer(&subtask("job-i", "idempotent", 0, 1, Some(state)))
        .unwrap();
    drop(restored);
    assert_eq!(rows(&mut db, "pg_idempotent"), [(1, 1), (2, 2)]);
    assert_eq!(prepared(&mut db, "idempotent"), Vec::<String>::new());
}

#[test]
fn an_unreachable_server_is_an_error_naming_it() {
    // A port nobody listens on: bound, read, released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = format!("postgres://nobody:secret@127.0.0.1:{port}/db?connect_timeout=5");
    let sink = sink(&url, "t", Mode::Append);
    let err = match sink.create_writer(&subtask("j", "unreachable", 0, 1, None)) {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("secret"), "the password leaked: {err}");
    assert!(sink.check().is_err());
}

#[test]
fn a_missing_table_a_missing_column_or_no_unique_key_is_a_clear_error() {
    let Some(url) = server_url("bad_table") else {
        return;
    };
    let mut db = client(&url);
    let err = sink(&url, "pg_no_such_table", Mode::Append)
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("table 'pg_no_such_table' does not exist") && err.contains("127.0.0.1"),
        "{err}"
    );

    db.batch_execute(
        "DROP TABLE IF EXISTS pg_bad_cols; CREATE TABLE pg_bad_cols (k bigint, m bigint)",
    )
    .unwrap();
    let err = sink(&url, "pg_bad_cols", Mode::Append)
        .check()
        .unwrap_err()
        .to_string();
    assert!(err.contains("'pg_bad_cols' has no column [\"n\"]"), "{err}");

    fresh_table(&mut db, "pg_no_key", false);
    let err = sink(&url, "pg_no_key", upsert())
        .check()
        .unwrap_err()
        .to_string();
    assert!(err.contains("no unique index or constraint"), "{err}");

    let err = PostgresSink::<u64>::new(
        &url,
        "t",
        &["k"],
        Mode::Upsert {
            key_columns: vec!["id".into()],
        },
        |v: &u64| vec![(*v).into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("key column 'id'"), "{err}");
}

// ---------------------------------------------------------------------------
// A job: a keyed count into the table, with a task failure injected.

const KEYS: u64 = 37;
const RECORDS: u64 = 30_000;

/// Counts records per key; emits `(key, count)`; fails once at record `fail_at`.
#[derive(Clone)]
struct CountFailingOnce {
    state: Option<ValueStateHandle<u64>>,
    fail_at: u64,
    failed: Arc<AtomicBool>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for CountFailingOnce {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    fn process(
        &mut self,
        value: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, u64)>,
    ) -> FnResult {
        if value == self.fail_at && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(format!("injected failure at record {value}").into());
        }
        let handle = self.state.as_ref().ok_or("not open")?;
        let count = ctx.value(handle).modify(
            || 0,
            |c| {
                *c += 1;
                *c
            },
        )?;
        out.push((value % KEYS, count));
        Ok(())
    }
}

#[test]
fn a_keyed_count_job_with_a_failure_ends_with_the_true_counts_and_nothing_prepared() {
    let Some(url) = server_url("job") else {
        return;
    };
    let mut db = client(&url);
    fresh_table(&mut db, "pg_job_counts", true);
    let dir = tempfile::tempdir().unwrap();
    // A seeded failure point in the second half of the input, after some
    // checkpoints completed.
    let seed = std::env::var("PG_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(7);
    let fail_at = RECORDS / 2 + (seed.wrapping_mul(2_654_435_761) % (RECORDS / 3));
    let failed = Arc::new(AtomicBool::new(false));
    let config = ExecutionConfig {
        job_name: "pg-job".into(),
        batch_size: 256,
        checkpointing: Some(CheckpointingConfig {
            storage: open_storage(dir.path().to_str().unwrap()).unwrap(),
            settings: CoordinatorSettings {
                interval: Some(Duration::from_millis(50)),
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::ExponentialDelay(ExponentialDelay {
                max_attempts: 3,
                initial_delay: Duration::from_millis(20),
                ..ExponentialDelay::default()
            }),
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(2)
    };
    let env = StreamEnvironment::new(config);
    env.from_source(
        "numbers",
        SequenceSource::new(RECORDS, 4, |i| i)
            .unwrap()
            .with_rate(20_000)
            .unwrap(),
    )
    .uid("numbers")
    .key_by(|v: &u64| v % KEYS)
    .process(CountFailingOnce {
        state: None,
        fail_at,
        failed: Arc::clone(&failed),
    })
    .uid("count")
    .sink_to("pg-job-counts", sink(&url, "pg_job_counts", upsert()));
    let report = env.execute().expect("the job recovers and completes");
    assert!(failed.load(Ordering::SeqCst), "the failure was injected");
    assert_eq!(report.restarts, 1, "seed {seed}: one restart");

    let expected: Vec<(i64, i64)> = (0..KEYS)
        .map(|k| {
            let count = (0..RECORDS).filter(|i| i % KEYS == k).count();
            (k as i64, count as i64)
        })
        .collect();
    assert_eq!(rows(&mut db, "pg_job_counts"), expected, "seed {seed}");
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'flowstate:%pg-job-counts%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "seed {seed}: prepared transactions left behind");
}
