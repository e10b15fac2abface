//! Stop-with-checkpoint (`JobController::stop_with_checkpoint`, a graceful
//! shutdown): the sources stop after the barrier of an ordinary checkpoint in
//! the checkpoint storage, sinks commit it, and the job finishes with nothing
//! processed after that barrier.
//!
//! Nothing here depends on timing: the tests wait (with generous deadlines)
//! for what they need to have happened, and assert only on what was recorded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate_runtime::checkpoint::restore::completed_checkpoints;
use flowstate_runtime::checkpoint::{
    CoordinatorSettings, OperatorListState, SharedStorage, open_storage,
};
use flowstate_runtime::control::ControlError;
use flowstate_runtime::{
    Barrier, BarrierKind, CheckpointingConfig, ExecutionConfig, Guarantee, JobGraph, Partitioning,
    RestoreFrom, Sink, SinkWriter, Source, SourcePoll, SourceReader, SubtaskInfo, UserError,
    start_job,
};
use flowstate_state::RedistributionMode;

/// What the test's source and sink saw.
#[derive(Default)]
struct Log {
    /// The source's position at each barrier, by barrier id.
    positions: Vec<(u64, u64)>,
    /// Records the sink received.
    written: u64,
    /// (barrier id, kind, records the sink had received by then).
    prepared: Vec<(u64, BarrierKind, u64)>,
    committed: Vec<u64>,
    finished: bool,
}

type Shared = Arc<Mutex<Log>>;

/// An endless counter, throttled to a batch per poll.
struct Counter(Shared);

struct CounterReader {
    next: u64,
    log: Shared,
}

impl Source<u64> for Counter {
    fn create_reader(&self, _: &SubtaskInfo) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(CounterReader {
            next: 0,
            log: Arc::clone(&self.0),
        }))
    }
}

impl SourceReader<u64> for CounterReader {
    fn poll(&mut self, out: &mut Vec<u64>, _: usize, _: Instant) -> Result<SourcePoll, UserError> {
        for _ in 0..16 {
            out.push(self.next);
            self.next += 1;
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        self.log
            .lock()
            .map_err(|_| "poisoned")?
            .positions
            .push((barrier.id, self.next));
        Ok(vec![OperatorListState {
            name: "position".into(),
            mode: RedistributionMode::Split,
            elements: vec![self.next.to_le_bytes().to_vec()],
        }])
    }
}

struct Recorder(Shared);

impl Sink<u64> for Recorder {
    fn create_writer(&self, _: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        Ok(Box::new(Recorder(Arc::clone(&self.0))))
    }
}

impl SinkWriter<u64> for Recorder {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        self.0.lock().map_err(|_| "poisoned")?.written += batch.len() as u64;
        batch.clear();
        Ok(())
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        let mut log = self.0.lock().map_err(|_| "poisoned")?;
        let written = log.written;
        log.prepared.push((barrier.id, barrier.kind, written));
        Ok(Vec::new())
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.0
            .lock()
            .map_err(|_| "poisoned")?
            .committed
            .push(checkpoint_id);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        self.0.lock().map_err(|_| "poisoned")?.finished = true;
        Ok(())
    }
}

fn config(storage: SharedStorage, interval: Option<Duration>) -> ExecutionConfig {
    let mut config = ExecutionConfig::with_parallelism(1);
    config.checkpointing = Some(CheckpointingConfig {
        storage,
        settings: CoordinatorSettings {
            interval,
            ..CoordinatorSettings::default()
        },
        guarantee: Guarantee::ExactlyOnce,
        job_id: None,
        restore: RestoreFrom::Nothing,
        allow_non_restored_state: false,
        allow_fallback_duplicates: false,
        restart: Default::default(),
        savepoint_dir: None,
    });
    config
}

fn graph(log: &Shared) -> JobGraph {
    let mut graph = JobGraph::new();
    let source = graph.add_source("Source: Counter", Arc::new(Counter(Arc::clone(log))));
    graph.add_sink(
        "Sink: Recorder",
        (source, Partitioning::rebalance()),
        Arc::new(Recorder(Arc::clone(log))),
    );
    graph
}

/// Polls `done` until it holds, failing after a generous deadline.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_job_stopped_at_a_checkpoint_ends_with_nothing_after_its_barrier_and_the_checkpoint_stored() {
    let storage = open_storage(&format!("memory://stop-chk-{:x}", fastrand::u64(..))).unwrap();
    let log = Shared::default();
    let job = start_job(
        graph(&log),
        &config(Arc::clone(&storage), Some(Duration::from_millis(20))),
    )
    .unwrap();
    let controller = Arc::clone(job.controller());
    // A periodic checkpoint first, and records flowing.
    wait_for("a completed checkpoint", || {
        controller.checkpoint_history().completed >= 1
    });
    controller.stop_with_checkpoint().unwrap();
    assert!(controller.stopping_with_checkpoint());
    // Asking twice changes nothing.
    controller.stop_with_checkpoint().unwrap();
    let report = job.join().expect("the stopped job finishes");
    assert!(report.stopped_with_savepoint.is_none());

    let log = log.lock().unwrap();
    let &(stop, _, written_at_stop) = log
        .prepared
        .iter()
        .find(|(_, kind, _)| *kind == BarrierKind::StopWithCheckpoint)
        .expect("the sink saw the stop's barrier");
    assert_eq!(
        log.prepared.iter().filter(|p| p.1.is_stop()).count(),
        1,
        "{:?}",
        log.prepared
    );
    assert!(log.prepared.iter().all(|p| p.0 <= stop), "nothing after it");
    // Nothing was read or written after the stop's barrier, and the sink
    // committed it before it finished.
    let position = log
        .positions
        .iter()
        .find(|(id, _)| *id == stop)
        .map(|(_, p)| *p);
    assert_eq!(position, Some(log.written));
    assert_eq!(written_at_stop, log.written);
    assert_eq!(log.committed.last(), Some(&stop));
    assert!(log.finished);
    // An ordinary checkpoint, the job's latest, in the checkpoint storage:
    // what `--restore latest` takes.
    let newest = completed_checkpoints(storage.as_ref())
        .unwrap()
        .into_iter()
        .map(|(_, id, _)| id)
        .max();
    assert_eq!(newest, Some(stop));
}

#[test]
fn stop_with_checkpoint_is_refused_without_periodic_checkpoints() {
    let storage = open_storage(&format!("memory://stop-off-{:x}", fastrand::u64(..))).unwrap();
    let log = Shared::default();
    let job = start_job(graph(&log), &config(storage, None)).unwrap();
    let refused = job.controller().stop_with_checkpoint();
    assert!(
        matches!(&refused, Err(ControlError::Invalid(m)) if m.contains("periodic checkpoints")),
        "{refused:?}"
    );
    assert!(!job.controller().stopping_with_checkpoint());
    job.cancel();
    let _ = job.join();
}
