//! Savepoints through the job's control surface ([`JobController`]), in
//! process: requests refused while one is in flight (held there
//! deterministically by a sink that blocks in its snapshot), bad requests, and
//! restoring into a changed job (an operator removed) with and without
//! `allow_non_restored_state`.
//!
//! Waiting loops poll a condition with a generous deadline; none of them
//! decides the outcome by timing.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::{CoordinatorSettings, OperatorListState, open_storage};
use flowstate::runtime::control::{ControlError, SavepointState};
use flowstate::runtime::{
    CheckpointingConfig, Guarantee, JobController, JobStatus, RestartStrategy, RestoreFrom,
};
use flowstate::{
    Barrier, ExecutionConfig, FnResult, JobError, KeyedContext, KeyedProcessFunction,
    KeyedStateBackend, Sink, SinkWriter, StreamEnvironment, SubtaskInfo, UserError,
    ValueStateDescriptor, ValueStateHandle,
};

const DEADLINE: Duration = Duration::from_secs(120);

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn config(
    parallelism: u32,
    checkpoints: &str,
    savepoint_dir: Option<String>,
    restore: RestoreFrom,
    allow_non_restored_state: bool,
) -> ExecutionConfig {
    ExecutionConfig {
        job_name: "savepoint-test".into(),
        checkpointing: Some(CheckpointingConfig {
            storage: open_storage(checkpoints).unwrap(),
            settings: CoordinatorSettings {
                // Only savepoints: no checkpoint completes on its own.
                interval: Some(Duration::from_secs(3600)),
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore,
            allow_non_restored_state,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::None,
            savepoint_dir,
        }),
        ..ExecutionConfig::with_parallelism(parallelism)
    }
}

fn running(controller: &JobController) {
    wait_for("the job to run", || {
        controller.status() == JobStatus::Running && controller.job_id().is_some()
    });
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

// ---------------------------------------------------------------------------
// A sink whose snapshot can be held: the savepoint stays in flight until the
// test lets it go.

#[derive(Clone)]
struct Gate {
    entered: SyncSender<u64>,
    release: Arc<Mutex<Receiver<()>>>,
    armed: Arc<Mutex<bool>>,
}

struct GatedSink(Gate);

struct GatedWriter(Gate);

impl Sink<u64> for GatedSink {
    fn create_writer(&self, _subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        Ok(Box::new(GatedWriter(self.0.clone())))
    }
}

impl SinkWriter<u64> for GatedWriter {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        if *self.0.armed.lock().unwrap() {
            self.0.entered.send(barrier.id).unwrap();
            self.0.release.lock().unwrap().recv().unwrap();
        }
        Ok(Vec::new())
    }
}

#[test]
fn a_savepoint_request_while_one_is_in_flight_is_refused_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let savepoints = dir.path().join("savepoints");
    let (entered_tx, entered) = sync_channel(4);
    let (release, release_rx) = sync_channel(4);
    let gate = Gate {
        entered: entered_tx,
        release: Arc::new(Mutex::new(release_rx)),
        armed: Arc::new(Mutex::new(true)),
    };
    let env = StreamEnvironment::new(config(
        1,
        dir.path().join("ck").to_str().unwrap(),
        Some(savepoints.display().to_string()),
        RestoreFrom::Nothing,
        false,
    ));
    env.from_source(
        "numbers",
        SequenceSource::new(u64::MAX / 2, 4, |i| i)
            .unwrap()
            .with_rate(10_000)
            .unwrap(),
    )
    .sink_to("gated", GatedSink(gate.clone()));
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    running(&controller);

    let first = controller.trigger_savepoint(None, false).unwrap();
    let id = entered
        .recv_timeout(DEADLINE)
        .expect("the sink's snapshot starts");
    // Held in flight: every further request is refused, the first is reported.
    for stop in [false, true] {
        match controller.trigger_savepoint(None, stop) {
            Err(ControlError::Conflict(message)) => {
                assert!(message.contains(&first), "{message}")
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(
        controller.savepoint(&first).unwrap(),
        SavepointState::InProgress {
            checkpoint_id: Some(id)
        }
    );
    assert!(matches!(
        controller.savepoint("no-such-request"),
        Err(ControlError::NotFound(_))
    ));
    assert_eq!(controller.status(), JobStatus::Running);

    *gate.armed.lock().unwrap() = false;
    release.send(()).unwrap();
    let location = completed(&controller, &first);
    assert!(
        location.starts_with(savepoints.to_str().unwrap()),
        "{location}"
    );
    assert!(std::path::Path::new(&location).join("_metadata").is_file());
    let history = controller.checkpoint_history();
    assert_eq!((history.completed, history.in_progress), (1, 0));

    // The next request is accepted again, into an explicit directory (one
    // under the savepoint directory: a request may name nothing else by default).
    let other = savepoints.join("other");
    let second = controller
        .trigger_savepoint(Some(other.to_str().unwrap()), false)
        .unwrap();
    assert!(completed(&controller, &second).starts_with(other.to_str().unwrap()));

    controller.cancel().unwrap();
    assert!(matches!(job.join(), Err(JobError::Cancelled)));
    assert_eq!(controller.status(), JobStatus::Cancelled);
    assert!(matches!(
        controller.trigger_savepoint(None, false),
        Err(ControlError::Conflict(_))
    ));
    assert!(matches!(
        controller.cancel(),
        Err(ControlError::Conflict(_))
    ));
}

#[test]
fn savepoints_need_a_target_and_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnvironment::new(config(
        1,
        dir.path().join("ck").to_str().unwrap(),
        None,
        RestoreFrom::Nothing,
        false,
    ));
    env.from_source(
        "numbers",
        SequenceSource::new(u64::MAX / 2, 2, |i| i)
            .unwrap()
            .with_rate(1_000)
            .unwrap(),
    )
    .count();
    let job = env.start().unwrap();
    running(job.controller());
    match job.controller().trigger_savepoint(None, false) {
        Err(ControlError::Invalid(message)) => {
            assert!(message.contains("no target directory"), "{message}")
        }
        other => panic!("expected an invalid request, got {other:?}"),
    }
    job.cancel();
    let _ = job.join();

    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(1));
    env.from_source(
        "numbers",
        SequenceSource::new(u64::MAX / 2, 2, |i| i)
            .unwrap()
            .with_rate(1_000)
            .unwrap(),
    )
    .count();
    let job = env.start().unwrap();
    match job.controller().trigger_savepoint(Some("/tmp/x"), false) {
        Err(ControlError::Invalid(message)) => {
            assert!(message.contains("checkpoint coordinator"), "{message}")
        }
        other => panic!("expected an invalid request, got {other:?}"),
    }
    job.cancel();
    let _ = job.join();
}

// ---------------------------------------------------------------------------
// A changed job: an operator removed.

/// Counts records per key; emits `(key, count)`.
#[derive(Clone, Default)]
struct Count {
    state: Option<ValueStateHandle<u64>>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for Count {
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

const KEYS: u64 = 97;
const RECORDS: u64 = 200_000;

/// `source -> [audit] -> count`, the audit step (keyed, stateful) only in
/// the first version of the job.
fn build(env: &StreamEnvironment, with_audit: bool) -> Arc<Mutex<Vec<(u64, u64)>>> {
    let numbers = env
        .from_source(
            "numbers",
            SequenceSource::new(RECORDS, 16, |i| i)
                .unwrap()
                .with_rate(40_000)
                .unwrap(),
        )
        .uid("numbers");
    let numbers = if with_audit {
        numbers
            .key_by(|v: &u64| v % 5)
            .process(Count::default())
            .uid("audit")
            .map(|(_, _)| 0u64)
            .filter(|_| false)
            .union(&numbers)
    } else {
        numbers
    };
    numbers
        .key_by(|v: &u64| v % KEYS)
        .process(Count::default())
        .uid("count")
        .collect()
}

#[test]
fn restoring_a_savepoint_into_a_job_without_one_of_its_operators() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let env = StreamEnvironment::new(config(
        2,
        ck.to_str().unwrap(),
        Some(dir.path().join("sp").display().to_string()),
        RestoreFrom::Nothing,
        false,
    ));
    let first_output = build(&env, true);
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    running(&controller);
    wait_for("some records", || controller.metrics().records_in() > 1000);
    let request = controller.trigger_savepoint(None, true).unwrap();
    let location = completed(&controller, &request);
    let report = job.join().expect("a stopped job ends well");
    assert_eq!(
        report.stopped_with_savepoint.as_deref(),
        Some(location.as_str())
    );
    assert_eq!(controller.status(), JobStatus::Finished);
    assert!(report.records_in < RECORDS, "the stop ended the job early");

    // Without the audit operator, its state cannot be mapped: refused, named.
    let env = StreamEnvironment::new(config(
        3,
        ck.to_str().unwrap(),
        None,
        RestoreFrom::Location(location.clone()),
        false,
    ));
    build(&env, false);
    let error = env
        .execute()
        .expect_err("the audit state has nowhere to go");
    let message = flowstate::runtime::error::error_chain(&error);
    assert!(
        message.contains("'audit'") && message.contains("allow-non-restored-state"),
        "{message}"
    );
    assert!(!message.contains("'count'"), "{message}");

    // Allowed: the audit state is dropped, the counts carry on exactly once.
    let env = StreamEnvironment::new(config(
        3,
        ck.to_str().unwrap(),
        None,
        RestoreFrom::Location(location),
        true,
    ));
    let second_output = build(&env, false);
    env.execute().expect("the restore drops the audit state");
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    let mut updates = 0;
    for (key, count) in first_output
        .lock()
        .unwrap()
        .iter()
        .chain(second_output.lock().unwrap().iter())
    {
        let previous = last.insert(*key, *count).unwrap_or(0);
        assert_eq!(*count, previous + 1, "key {key}: counts go up by one");
        updates += 1;
    }
    assert_eq!(updates, RECORDS, "every record counted exactly once");
    for key in 0..KEYS {
        let expected = (0..RECORDS).filter(|i| i % KEYS == key).count() as u64;
        assert_eq!(last.get(&key).copied().unwrap_or(0), expected, "key {key}");
    }
}

#[test]
fn two_operators_with_one_uid_are_refused() {
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(1));
    let numbers = env
        .from_collection((0..10u64).collect::<Vec<_>>())
        .uid("same");
    numbers.map(|n| n + 1).name("Add one").uid("same").count();
    let error = env.execute().expect_err("duplicate uids");
    let message = error.to_string();
    assert!(
        message.contains("both have uid 'same'") && message.contains("'Add one'"),
        "{message}"
    );
}

/// A stop whose savepoint fails resumes the suspended sources: the job runs
/// on and ends with every record counted once. The savepoint is made to fail
/// while the sink holds the snapshot: a regular file named `state` in the
/// savepoint's directory leaves the keyed files no place to go.
#[test]
fn a_failed_stop_with_savepoint_resumes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sp");
    let (entered_tx, entered) = sync_channel(4);
    let (release, release_rx) = sync_channel(4);
    let gate = Gate {
        entered: entered_tx,
        release: Arc::new(Mutex::new(release_rx)),
        armed: Arc::new(Mutex::new(true)),
    };
    let env = StreamEnvironment::new(config(
        1,
        dir.path().join("ck").to_str().unwrap(),
        Some(target.display().to_string()),
        RestoreFrom::Nothing,
        false,
    ));
    let counts = env
        .from_source(
            "numbers",
            SequenceSource::new(RECORDS, 16, |i| i)
                .unwrap()
                .with_rate(40_000)
                .unwrap(),
        )
        .key_by(|v: &u64| v % KEYS)
        .process(Count::default())
        .uid("count");
    let output = counts.collect();
    counts
        .map(|(key, _)| key)
        .sink_to("gated", GatedSink(gate.clone()));
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    running(&controller);
    wait_for("some records", || controller.metrics().records_in() > 1000);
    let request = controller.trigger_savepoint(None, true).unwrap();
    entered
        .recv_timeout(DEADLINE)
        .expect("the sink's snapshot starts");
    assert_eq!(controller.status(), JobStatus::Stopping);
    let savepoint = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("the savepoint's directory exists");
    std::fs::write(savepoint.join("state"), b"in the way").unwrap();
    *gate.armed.lock().unwrap() = false;
    release.send(()).unwrap();
    let mut outcome = None;
    wait_for("the stop to fail", || {
        match controller.savepoint(&request).unwrap() {
            SavepointState::InProgress { .. } => return false,
            other => outcome = Some(other),
        }
        true
    });
    assert!(
        matches!(outcome, Some(SavepointState::Failed(_))),
        "{outcome:?}"
    );
    assert!(
        !savepoint.exists(),
        "a failed savepoint leaves no directory behind"
    );
    // Suspended sources that were never resumed would hold the job forever.
    wait_for("the job to end", || controller.status().is_terminal());
    let report = job.join().expect("the job runs on to its end");
    assert_eq!(report.stopped_with_savepoint, None);
    assert_eq!(report.records_in, RECORDS);
    assert_eq!(controller.status(), JobStatus::Finished);
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (key, count) in output.lock().unwrap().iter() {
        let previous = last.insert(*key, *count).unwrap_or(0);
        assert_eq!(*count, previous + 1, "key {key}");
    }
    let total: u64 = last.values().sum();
    assert_eq!(total, RECORDS, "every record counted once");
}

// ---------------------------------------------------------------------------
// Savepoints without periodic checkpoints (`--checkpoint-interval off`).

/// [`config`] without periodic checkpoints: the coordinator takes savepoints
/// only. Restarts are asked for, to show that such a job still never restarts.
fn config_without_checkpoints(
    parallelism: u32,
    checkpoints: &std::path::Path,
    savepoint_dir: Option<String>,
    restore: RestoreFrom,
) -> ExecutionConfig {
    let mut config = config(
        parallelism,
        checkpoints.to_str().unwrap(),
        savepoint_dir,
        restore,
        false,
    );
    let checkpointing = config.checkpointing.as_mut().unwrap();
    checkpointing.settings.interval = None;
    checkpointing.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
    config
}

/// `numbers -> count (keyed) -> "key,count" lines -> file sink` into `out`,
/// the source throttled to `rate` records per second if given.
fn build_to_files(env: &StreamEnvironment, out: &std::path::Path, rate: Option<u64>) {
    let mut source = SequenceSource::new(RECORDS, 16, |i| i).unwrap();
    if let Some(rate) = rate {
        source = source.with_rate(rate).unwrap();
    }
    env.from_source("numbers", source)
        .uid("numbers")
        .key_by(|v: &u64| v % KEYS)
        .process(Count::default())
        .uid("count")
        .map(|(key, count)| format!("{key},{count}"))
        .sink_to("files", flowstate::connectors::FileSink::new(out).unwrap());
}

/// The published lines of a file sink's directory as `key -> counts`, each
/// key's counts in the order found; in-progress (hidden) files are skipped.
fn published_counts(out: &std::path::Path) -> BTreeMap<u64, Vec<u64>> {
    let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (key, count) = line.split_once(',').unwrap();
            counts
                .entry(key.parse().unwrap())
                .or_default()
                .push(count.parse().unwrap());
        }
    }
    counts
}

/// Panics unless every key of `counts` holds exactly the counts `1..=c` once
/// each; returns how many lines there are in all.
fn assert_each_count_once(counts: &BTreeMap<u64, Vec<u64>>) -> u64 {
    let mut lines = 0;
    for (key, found) in counts {
        let mut sorted = found.clone();
        sorted.sort_unstable();
        let c = sorted.len() as u64;
        assert_eq!(
            sorted,
            (1..=c).collect::<Vec<_>>(),
            "key {key}: counts are not exactly 1..{c} once each"
        );
        lines += c;
    }
    lines
}

fn is_empty_dir(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

/// A job without periodic checkpoints takes an intermediate savepoint (which
/// publishes nothing) and a stop-with-savepoint (which publishes everything
/// before its barrier, once); the stop's savepoint, restored at another
/// parallelism by a job that again takes no checkpoints, finishes the input
/// with every record counted and published exactly once. Neither run writes
/// anything into the checkpoint storage: no job directory, no lease, no
/// restore pointer.
#[test]
fn without_periodic_checkpoints_savepoints_stop_and_restore_work() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, sp, out) = (
        dir.path().join("ck"),
        dir.path().join("sp"),
        dir.path().join("out"),
    );
    let env = StreamEnvironment::new(config_without_checkpoints(
        2,
        &ck,
        Some(sp.display().to_string()),
        RestoreFrom::Nothing,
    ));
    build_to_files(&env, &out, Some(20_000));
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    running(&controller);
    wait_for("some records", || controller.metrics().records_in() > 1000);

    let request = controller.trigger_savepoint(None, false).unwrap();
    let intermediate = completed(&controller, &request);
    assert!(
        std::path::Path::new(&intermediate)
            .join("_metadata")
            .is_file()
    );
    assert!(
        published_counts(&out).is_empty(),
        "an intermediate savepoint published output"
    );
    let history = controller.checkpoint_history();
    assert_eq!((history.completed, history.failed), (1, 0));
    assert!(
        history
            .entries
            .iter()
            .all(|e| e.kind == flowstate::runtime::checkpoint::SnapshotKind::Savepoint),
        "only savepoints are taken: {:?}",
        history.entries
    );

    let request = controller.trigger_savepoint(None, true).unwrap();
    let stopped = completed(&controller, &request);
    let report = job.join().expect("a stopped job ends well");
    assert_eq!(
        report.stopped_with_savepoint.as_deref(),
        Some(stopped.as_str())
    );
    assert_eq!(report.restarts, 0);
    assert!(
        report
            .checkpoints
            .iter()
            .all(|c| c.kind == flowstate::runtime::checkpoint::SnapshotKind::Savepoint)
    );
    assert_eq!(controller.status(), JobStatus::Finished);
    let first = published_counts(&out);
    let published = assert_each_count_once(&first);
    assert!(
        published > 0,
        "the stop published the output before its barrier"
    );
    assert!(is_empty_dir(&ck), "the checkpoint storage was written to");

    // Restored at parallelism 3, again without checkpoints, into the same
    // output directory.
    let env = StreamEnvironment::new(config_without_checkpoints(
        3,
        &ck,
        None,
        RestoreFrom::Location(stopped),
    ));
    build_to_files(&env, &out, None);
    let report = env.execute().expect("the restored job runs to its end");
    assert_eq!(report.restarts, 0);
    assert!(report.checkpoints.is_empty(), "{:?}", report.checkpoints);
    let all = published_counts(&out);
    assert_eq!(assert_each_count_once(&all), RECORDS, "every record once");
    for key in 0..KEYS {
        let expected = (0..RECORDS).filter(|i| i % KEYS == key).count();
        assert_eq!(all.get(&key).map_or(0, Vec::len), expected, "key {key}");
    }
    assert!(is_empty_dir(&ck), "the checkpoint storage was written to");
}

/// Without periodic checkpoints there is no latest checkpoint to resume:
/// refused before the job starts. And a failure is not restarted (there is no
/// checkpoint to go back to), however many restarts are allowed.
#[test]
fn without_periodic_checkpoints_latest_is_refused_and_failures_do_not_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let env = StreamEnvironment::new(config_without_checkpoints(
        1,
        &ck,
        None,
        RestoreFrom::Latest,
    ));
    build(&env, false);
    let error = env.execute().expect_err("latest needs checkpoints");
    let message = error.to_string();
    assert!(
        message.contains("latest checkpoint needs periodic checkpoints"),
        "{message}"
    );

    let env = StreamEnvironment::new(config_without_checkpoints(
        1,
        &ck,
        None,
        RestoreFrom::Nothing,
    ));
    env.from_source("numbers", SequenceSource::new(RECORDS, 4, |i| i).unwrap())
        .map(|v: u64| {
            assert!(v != RECORDS / 2, "boom at {v}");
            v
        })
        .count();
    let job = env.start().unwrap();
    let metrics = Arc::clone(job.metrics());
    let error = job.join().expect_err("the failure ends the job");
    assert!(matches!(error, JobError::TaskFailed { .. }), "{error}");
    assert_eq!(metrics.restarts(), 0, "no restart without checkpoints");
    assert!(is_empty_dir(&ck), "the checkpoint storage was written to");
}

// ---------------------------------------------------------------------------
// Timers and open session windows across a savepoint, rescaled, on the other
// backend (the scenario is shared with the jobs crate's RocksDB test).

#[path = "common/timed_savepoint.rs"]
mod timed_savepoint;

fn memory_store() -> flowstate::state::StateBackendConfig {
    flowstate::state::StateBackendConfig::Store(Arc::new(
        flowstate::state::memory_store::MemoryStoreFactory,
    ))
}

/// Heap at parallelism 2, stopped with a savepoint while sessions are open
/// and timers pending; restored at parallelism 3 on the serialising backend.
#[test]
fn timers_and_open_sessions_restore_from_heap_at_2_to_a_store_at_3() {
    timed_savepoint::stop_and_restore(
        (flowstate::state::StateBackendConfig::Heap, 2),
        (memory_store(), 3),
    );
}

/// The other way: the serialising backend at 3, restored on the heap at 1.
#[test]
fn timers_and_open_sessions_restore_from_a_store_at_3_to_heap_at_1() {
    timed_savepoint::stop_and_restore(
        (memory_store(), 3),
        (flowstate::state::StateBackendConfig::Heap, 1),
    );
}
