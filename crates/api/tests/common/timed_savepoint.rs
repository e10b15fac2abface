//! A savepoint of a job with open session windows and pending event-time and
//! processing-time timers, restored at another parallelism on another
//! backend, ends with the output of an uninterrupted run.
//!
//! Shared by `crates/api/tests/savepoints.rs` (heap and the serialising
//! backend over the in-memory store) and `crates/jobs/tests/savepoint_timers.rs`
//! (RocksDB, with the jobs crate's `rocksdb` feature), which include this file
//! with `#[path]`.
//!
//! The job, from one event-time source (uid `timed-source`):
//!
//! - `sessions`: keyed session windows (gap [`GAP_MS`]) emitting
//!   `(key, start, end, count, sum)`;
//! - `reminders`: a keyed function registering, per record, an event-time
//!   timer at the end of the record's [`BUCKET_MS`] bucket, and per key, once
//!   (a flag in keyed state), a processing-time timer at
//!   [`PROCESSING_TIMER_MS`] on the job's [`ManualClock`]; a timer emits
//!   `(key, domain, time)`.
//!
//! The first run throttles its source, is stopped with a savepoint after a
//! quarter of the input while its clock stands at 1 000 ms (every key's
//! processing-time timer pending), and is restored with the clock at
//! 2 000 ms (they are due) at another parallelism on another backend. What the
//! two runs emitted together must equal, as a multiset, what one run emits
//! with the clock at 2 000 ms from the start; and the sessions must equal the
//! sessions computed from the records here.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::{CoordinatorSettings, open_storage};
use flowstate::runtime::control::SavepointState;
use flowstate::runtime::{
    CheckpointingConfig, Guarantee, JobController, JobStatus, RestartStrategy, RestoreFrom,
    WatermarkStrategy,
};
use flowstate::state::{ManualClock, StateBackendConfig};
use flowstate::{
    EventTimeSessionWindows, ExecutionConfig, FnResult, KeyedContext, KeyedProcessFunction,
    KeyedStateBackend, StreamEnvironment, TimeDomain, ValueStateDescriptor, ValueStateHandle,
    WindowAggregateFunction,
};

/// `(key, timestamp, value)`.
pub type Rec = (u64, i64, u64);
/// A session: `(key, start, end, count, sum)`.
pub type Session = (u64, i64, i64, u64, u64);
/// A timer that fired: `(key, 'E' or 'P', time)`.
pub type Fired = (u64, char, i64);

pub const RECORDS: u64 = 20_000;
pub const SPLITS: u32 = 4;
/// Odd, while timestamps are even: no two records of a key are exactly a gap
/// apart (whether touching windows merge would depend on the watermark's timing).
pub const GAP_MS: i64 = 1_001;
/// Keys 1..=8 are silent in every third round of this length (longer than
/// the gap: their sessions end there); key 0 is never silent, so it has one
/// session from the first record to the last, open at any stop.
pub const ROUND_MS: i64 = 2_000;
/// Event-time timers fire at the ends of buckets of this length.
pub const BUCKET_MS: i64 = 5_000;
/// Every key's one processing-time timer.
pub const PROCESSING_TIMER_MS: i64 = 1_500;
/// The clock while the first run is stopped: the processing timers are pending.
pub const CLOCK_BEFORE_MS: i64 = 1_000;
/// The clock of the restored run and of the uninterrupted one: they are due.
pub const CLOCK_AFTER_MS: i64 = 2_000;
/// Records are out of order within a split by less than this.
pub const OUT_OF_ORDERNESS_MS: i64 = 30;

const DEADLINE: Duration = Duration::from_secs(120);

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Record `i`. The splits are `RECORDS / SPLITS` consecutive indices each;
/// every split covers the same event time (10 ms per position, plus an even
/// jitter below [`OUT_OF_ORDERNESS_MS`]), so the watermark moves through the
/// whole span as the splits are read in turn.
pub fn record(i: u64) -> Rec {
    let per_split = RECORDS / u64::from(SPLITS);
    let position = (i % per_split) as i64;
    let ts = position * 10 + 4 * (mix(i ^ 0xA5) % 7) as i64;
    let key = if i.is_multiple_of(10) {
        0
    } else {
        let key = 1 + mix(i) % 8;
        let round = ts / ROUND_MS;
        if (round + key as i64) % 3 == 0 {
            0
        } else {
            key
        }
    };
    (key, ts, i)
}

/// The sessions of the records, computed here: each key's timestamps sorted,
/// cut where neighbours are more than the gap apart.
pub fn expected_sessions() -> Vec<Session> {
    let mut by_key: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
    for i in 0..RECORDS {
        let (key, ts, value) = record(i);
        by_key.entry(key).or_default().push((ts, value));
    }
    let mut sessions = Vec::new();
    for (key, mut records) in by_key {
        records.sort_unstable();
        let mut open: Option<(i64, i64, u64, u64)> = None;
        for (ts, value) in records {
            match &mut open {
                Some((_, last, count, sum)) if ts - *last <= GAP_MS => {
                    *last = ts;
                    *count += 1;
                    *sum += value;
                }
                _ => {
                    if let Some((start, last, count, sum)) = open.take() {
                        sessions.push((key, start, last + GAP_MS, count, sum));
                    }
                    open = Some((ts, ts, 1, value));
                }
            }
        }
        if let Some((start, last, count, sum)) = open {
            sessions.push((key, start, last + GAP_MS, count, sum));
        }
    }
    sessions.sort_unstable();
    sessions
}

#[derive(Clone, Copy)]
struct CountSum;

impl WindowAggregateFunction<Rec, (u64, u64), (u64, u64)> for CountSum {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: Rec) {
        acc.0 += 1;
        acc.1 += input.2;
    }
    fn merge(&self, acc: &mut (u64, u64), other: (u64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

/// See the module's documentation.
#[derive(Clone, Default)]
struct Reminders {
    registered: Option<ValueStateHandle<bool>>,
}

impl KeyedProcessFunction<u64, Rec, Fired> for Reminders {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.registered = Some(state.value_state(&ValueStateDescriptor::new("registered"))?);
        Ok(())
    }

    fn process(
        &mut self,
        record: Rec,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Vec<Fired>,
    ) -> FnResult {
        ctx.register_event_time_timer((record.1 / BUCKET_MS + 1) * BUCKET_MS)?;
        let handle = self.registered.clone().ok_or("state used before open")?;
        if ctx.value(&handle).get()?.is_none() {
            ctx.value(&handle).set(true)?;
            ctx.register_processing_time_timer(PROCESSING_TIMER_MS)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Fired>,
    ) -> FnResult {
        let tag = match domain {
            TimeDomain::EventTime => 'E',
            TimeDomain::ProcessingTime => 'P',
        };
        out.push((*ctx.key(), tag, timestamp));
        Ok(())
    }
}

/// What a run emitted.
pub struct Outputs {
    pub sessions: Arc<Mutex<Vec<Session>>>,
    pub fired: Arc<Mutex<Vec<Fired>>>,
}

impl Outputs {
    fn take(&self) -> (Vec<Session>, Vec<Fired>) {
        let sessions = self.sessions.lock().unwrap().clone();
        let fired = self.fired.lock().unwrap().clone();
        (sessions, fired)
    }
}

fn build(env: &StreamEnvironment, rate: Option<u64>) -> Outputs {
    let mut source = SequenceSource::new(RECORDS, SPLITS, record)
        .unwrap()
        .with_event_time(WatermarkStrategy::bounded_out_of_orderness(
            OUT_OF_ORDERNESS_MS,
            |r: &Rec| r.1,
        ));
    if let Some(rate) = rate {
        source = source.with_rate(rate).unwrap();
    }
    let records = env.from_source("Source: timed", source).uid("timed-source");
    let keyed = records.key_by(|r: &Rec| r.0);
    let sessions = keyed
        .window_by(
            EventTimeSessionWindows::with_gap(Duration::from_millis(GAP_MS as u64)),
            |r: &Rec| r.1,
        )
        .aggregate_with(CountSum, |key, window, (count, sum)| {
            (*key, window.start, window.end, count, sum)
        })
        .uid("sessions")
        .collect();
    let fired = keyed
        .process(Reminders::default())
        .name("Reminders")
        .uid("reminders")
        .collect();
    Outputs { sessions, fired }
}

fn base_config(parallelism: u32, backend: StateBackendConfig, clock: i64) -> ExecutionConfig {
    let mut config = ExecutionConfig::with_parallelism(parallelism);
    config.batch_size = 64;
    config.state_backend = backend;
    config.clock = ManualClock::new(clock);
    config
}

fn checkpointed(
    mut config: ExecutionConfig,
    checkpoints: &std::path::Path,
    savepoints: &std::path::Path,
    restore: RestoreFrom,
) -> ExecutionConfig {
    config.job_name = "timed-savepoint".into();
    config.checkpointing = Some(CheckpointingConfig {
        storage: open_storage(checkpoints.to_str().unwrap()).unwrap(),
        settings: CoordinatorSettings {
            // Only the savepoint (and the restored run's final checkpoint).
            interval: Some(Duration::from_secs(3600)),
            ..CoordinatorSettings::default()
        },
        guarantee: Guarantee::ExactlyOnce,
        job_id: None,
        restore,
        allow_non_restored_state: false,
        allow_fallback_duplicates: false,
        restart: RestartStrategy::None,
        savepoint_dir: Some(savepoints.display().to_string()),
    });
    config
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn completed(controller: &JobController, request: &str) -> String {
    let mut outcome = None;
    wait_for("the savepoint", || {
        match controller.savepoint(request).unwrap() {
            SavepointState::InProgress { .. } => return false,
            other => outcome = Some(other),
        }
        true
    });
    match outcome {
        Some(SavepointState::Completed { location, .. }) => location,
        other => panic!("savepoint {request} did not complete: {other:?}"),
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort_unstable();
    v
}

/// Runs the job uninterrupted (parallelism 2, heap, the clock at
/// [`CLOCK_AFTER_MS`]); checks its sessions against [`expected_sessions`].
pub fn uninterrupted() -> (Vec<Session>, Vec<Fired>) {
    let env = StreamEnvironment::new(base_config(2, StateBackendConfig::Heap, CLOCK_AFTER_MS));
    let outputs = build(&env, None);
    env.execute().expect("the uninterrupted run succeeds");
    let (sessions, fired) = outputs.take();
    let (sessions, fired) = (sorted(sessions), sorted(fired));
    assert_eq!(
        sessions,
        expected_sessions(),
        "the uninterrupted run's sessions"
    );
    let keys = 9;
    assert_eq!(
        fired.iter().filter(|f| f.1 == 'P').count(),
        keys,
        "one processing-time timer per key: {fired:?}"
    );
    (sessions, fired)
}

/// Stops a run on `first` (backend, parallelism) with a savepoint a quarter
/// into the input, restores it on `second`, and checks that the two runs
/// emitted together exactly what [`uninterrupted`] emits.
pub fn stop_and_restore(first: (StateBackendConfig, u32), second: (StateBackendConfig, u32)) {
    let (want_sessions, want_fired) = uninterrupted();
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, savepoints) = (dir.path().join("ck"), dir.path().join("sp"));

    let env = StreamEnvironment::new(checkpointed(
        base_config(first.1, first.0, CLOCK_BEFORE_MS),
        &checkpoints,
        &savepoints,
        RestoreFrom::Nothing,
    ));
    let before = build(&env, Some(5_000));
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    wait_for("the job to run", || {
        controller.status() == JobStatus::Running && controller.job_id().is_some()
    });
    wait_for("a quarter of the input", || {
        controller.metrics().records_in() >= RECORDS / 4
    });
    let request = controller.trigger_savepoint(None, true).unwrap();
    let location = completed(&controller, &request);
    let report = job.join().expect("a stopped job ends well");
    assert_eq!(
        report.stopped_with_savepoint.as_deref(),
        Some(location.as_str())
    );
    assert!(
        report.records_in < RECORDS,
        "the stop came after the whole input ({} records)",
        report.records_in
    );
    let (sessions_before, fired_before) = before.take();

    let env = StreamEnvironment::new(checkpointed(
        base_config(second.1, second.0, CLOCK_AFTER_MS),
        &checkpoints,
        &savepoints,
        RestoreFrom::Location(location),
    ));
    let after = build(&env, None);
    env.execute().expect("the restored run succeeds");
    let (sessions_after, fired_after) = after.take();

    // Timers fired before the stop, and the open state went across it.
    assert!(
        fired_before.iter().any(|f| f.1 == 'E'),
        "no event-time timer fired before the stop ({} records in)",
        report.records_in
    );
    assert!(
        fired_before.iter().all(|f| f.1 != 'P'),
        "a processing-time timer fired before its time: {fired_before:?}"
    );
    let restored_processing: Vec<&Fired> = fired_after.iter().filter(|f| f.1 == 'P').collect();
    assert_eq!(
        restored_processing.len(),
        9,
        "every key's pending processing-time timer fires once after the restore: {restored_processing:?}"
    );
    let long = want_sessions
        .iter()
        .find(|s| s.0 == 0)
        .expect("key 0's session");
    assert!(
        sessions_after.contains(long),
        "key 0's session, open at the stop, ends after the restore with all its records"
    );
    let mut sessions = sessions_before.clone();
    sessions.extend(sessions_after);
    let mut fired = fired_before;
    fired.extend(fired_after);
    assert_eq!(
        sorted(sessions),
        want_sessions,
        "sessions of the stopped and the restored run together"
    );
    assert_eq!(
        sorted(fired),
        want_fired,
        "timers of the stopped and the restored run together"
    );
}
