//! The checkpoint lifecycle as operators, sources and sinks see it, in
//! process: an aborted checkpoint reaches `SinkWriter::abort` (and every other
//! task's hooks), sources hear `notify_checkpoint_complete(n)` only once
//! checkpoint n exists in storage, and the snapshot hooks know a savepoint's
//! barrier (and a stop-with-savepoint's) from a checkpoint's.
//!
//! Outcomes never depend on timing: a checkpoint is held in flight by a sink
//! that blocks in `prepare_commit` until the test lets it go, so it is aborted
//! by the coordinator's timeout whatever the speed of the machine; waiting
//! loops poll a condition with a generous deadline.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::layout::metadata_path;
use flowstate::runtime::checkpoint::storage::SharedStorage;
use flowstate::runtime::checkpoint::{CoordinatorSettings, OperatorListState, open_storage};
use flowstate::runtime::control::SavepointState;
use flowstate::runtime::{
    CheckpointingConfig, Guarantee, JobController, JobStatus, RestartStrategy, RestoreFrom,
};
use flowstate::{
    Barrier, BarrierKind, ExecutionConfig, JobError, Sink, SinkWriter, Source, SourcePoll,
    SourceReader, StreamEnvironment, SubtaskInfo, UserError,
};

const DEADLINE: Duration = Duration::from_secs(120);

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn config(
    parallelism: u32,
    storage: SharedStorage,
    settings: CoordinatorSettings,
    savepoint_dir: Option<String>,
) -> ExecutionConfig {
    ExecutionConfig {
        job_name: "lifecycle-test".into(),
        checkpointing: Some(CheckpointingConfig {
            storage,
            settings,
            guarantee: Guarantee::ExactlyOnce,
            job_id: Some("lifecycle".into()),
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::None,
            savepoint_dir,
        }),
        ..ExecutionConfig::with_parallelism(parallelism)
    }
}

fn memory_storage(name: &str) -> SharedStorage {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    open_storage(&format!("memory://lifecycle-{name}-{nanos}")).unwrap()
}

/// What a hook saw, in the order the hooks ran (per instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Snapshot(u64, BarrierKind),
    Complete(u64),
    Aborted(u64),
}

type Log = Arc<Mutex<Vec<(u32, Seen)>>>;

fn seen(log: &Log, instance: u32) -> Vec<Seen> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(i, _)| *i == instance)
        .map(|(_, s)| *s)
        .collect()
}

// ---------------------------------------------------------------------------
// A sink that records its hooks; instance 0 can be held in its first
// `prepare_commit` until the test lets it go.

#[derive(Clone)]
struct Hold {
    entered: SyncSender<u64>,
    release: Arc<Mutex<Receiver<()>>>,
}

#[derive(Clone)]
struct RecordingSink {
    log: Log,
    hold: Option<Hold>,
}

struct RecordingWriter {
    index: u32,
    log: Log,
    hold: Option<Hold>,
}

impl Sink<u64> for RecordingSink {
    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        Ok(Box::new(RecordingWriter {
            index: subtask.index,
            log: Arc::clone(&self.log),
            hold: self.hold.clone().filter(|_| subtask.index == 0),
        }))
    }
}

impl RecordingWriter {
    fn record(&self, seen: Seen) {
        self.log.lock().unwrap().push((self.index, seen));
    }
}

impl SinkWriter<u64> for RecordingWriter {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        self.record(Seen::Snapshot(barrier.id, barrier.kind));
        // Held once: the checkpoint cannot complete until it is released.
        if let Some(hold) = self.hold.take() {
            hold.entered.send(barrier.id)?;
            hold.release.lock().unwrap().recv()?;
        }
        Ok(Vec::new())
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.record(Seen::Complete(checkpoint_id));
        Ok(())
    }

    fn abort(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.record(Seen::Aborted(checkpoint_id));
        Ok(())
    }
}

#[test]
fn a_timed_out_checkpoint_reaches_every_sink_s_abort_and_is_never_committed() {
    let (entered_tx, entered) = sync_channel(1);
    let (release, release_rx) = sync_channel(1);
    let log: Log = Arc::default();
    let sink = RecordingSink {
        log: Arc::clone(&log),
        hold: Some(Hold {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
        }),
    };
    let settings = CoordinatorSettings {
        interval: Some(Duration::from_millis(20)),
        // Instance 0 is held in its snapshot: the coordinator gives the
        // checkpoint up after this long, however fast the machine is.
        timeout: Duration::from_millis(200),
        tolerable_failures: u32::MAX,
        ..CoordinatorSettings::default()
    };
    // Two instances on two worker threads: instance 1 runs while 0 is held.
    let env = StreamEnvironment::new(config(2, memory_storage("abort"), settings, None));
    env.from_source(
        "numbers",
        SequenceSource::new(u64::MAX / 2, 4, |i| i)
            .unwrap()
            .with_rate(10_000)
            .unwrap(),
    )
    .sink_to("recording", sink);
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());

    let held = entered
        .recv_timeout(DEADLINE)
        .expect("instance 0 starts its snapshot");
    wait_for("instance 1 to hear of the abort", || {
        seen(&log, 1).contains(&Seen::Aborted(held))
    });
    release.send(()).unwrap();
    // The held instance hears of it as soon as it steps again.
    wait_for("instance 0 to hear of the abort", || {
        seen(&log, 0).contains(&Seen::Aborted(held))
    });
    // And a later checkpoint completes: the job went on.
    wait_for("a later checkpoint to commit", || {
        [0, 1].iter().all(|&i| {
            seen(&log, i)
                .iter()
                .any(|s| matches!(s, Seen::Complete(n) if *n > held))
        })
    });
    controller.cancel().unwrap();
    assert!(matches!(job.join(), Err(JobError::Cancelled)));

    for instance in [0, 1] {
        let events = seen(&log, instance);
        // It prepared the checkpoint, then heard it aborted, never committed.
        let prepared = events
            .iter()
            .position(|s| *s == Seen::Snapshot(held, BarrierKind::Checkpoint))
            .unwrap_or_else(|| panic!("instance {instance} prepared {held}: {events:?}"));
        let aborted = events
            .iter()
            .position(|s| *s == Seen::Aborted(held))
            .unwrap();
        assert!(prepared < aborted, "{events:?}");
        assert!(!events.contains(&Seen::Complete(held)), "{events:?}");
        // An abort is heard once per checkpoint.
        assert_eq!(
            events.iter().filter(|s| **s == Seen::Aborted(held)).count(),
            1,
            "{events:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// A source that records its hooks and checks, when told a checkpoint is
// complete, that the checkpoint's `_metadata` is in storage (the moment a
// checkpoint exists).

#[derive(Clone)]
struct RecordingSource {
    log: Log,
    /// Checks completions against storage (checkpoints of job "lifecycle").
    storage: Option<SharedStorage>,
    /// Records per instance; `None`: endless.
    records: Option<u64>,
    /// Completions heard for a checkpoint whose metadata was not there.
    early: Arc<Mutex<Vec<u64>>>,
}

struct RecordingReader {
    index: u32,
    source: RecordingSource,
    next: u64,
}

impl Source<u64> for RecordingSource {
    fn create_reader(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(RecordingReader {
            index: subtask.index,
            source: self.clone(),
            next: 0,
        }))
    }
}

impl RecordingReader {
    fn record(&self, seen: Seen) {
        self.source.log.lock().unwrap().push((self.index, seen));
    }
}

impl SourceReader<u64> for RecordingReader {
    fn poll(
        &mut self,
        out: &mut Vec<u64>,
        max: usize,
        now: Instant,
    ) -> Result<SourcePoll, UserError> {
        if self.source.records.is_some_and(|n| self.next >= n) {
            return Ok(SourcePoll::Finished);
        }
        let end = match self.source.records {
            Some(n) => n.min(self.next + max.min(16) as u64),
            None => self.next + max.min(16) as u64,
        };
        out.extend(self.next..end);
        self.next = end;
        // Slow enough for several checkpoints to pass while it runs.
        Ok(SourcePoll::Pending {
            wake_at: Some(now + Duration::from_millis(1)),
        })
    }

    fn snapshot(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        self.record(Seen::Snapshot(barrier.id, barrier.kind));
        Ok(Vec::new())
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        if let Some(storage) = &self.source.storage
            && storage
                .size(&metadata_path("lifecycle", checkpoint_id))?
                .is_none()
        {
            self.source.early.lock().unwrap().push(checkpoint_id);
        }
        self.record(Seen::Complete(checkpoint_id));
        Ok(())
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.record(Seen::Aborted(checkpoint_id));
        Ok(())
    }
}

#[test]
fn sources_hear_of_a_checkpoint_only_after_it_completed() {
    let storage = memory_storage("complete");
    let log: Log = Arc::default();
    let source = RecordingSource {
        log: Arc::clone(&log),
        storage: Some(Arc::clone(&storage)),
        records: Some(2_000),
        early: Arc::default(),
    };
    let settings = CoordinatorSettings {
        interval: Some(Duration::from_millis(10)),
        // Every completed checkpoint stays, so a late look still finds it.
        retain: 100_000,
        ..CoordinatorSettings::default()
    };
    let env = StreamEnvironment::new(config(2, Arc::clone(&storage), settings, None));
    env.from_source("recording", source.clone()).sink_to(
        "discard",
        RecordingSink {
            log: Arc::default(),
            hold: None,
        },
    );
    let report = env.execute().unwrap();
    let completed: Vec<u64> = report.checkpoints.iter().map(|c| c.id).collect();
    assert!(!completed.is_empty());
    assert_eq!(*source.early.lock().unwrap(), Vec::<u64>::new());

    for instance in [0, 1] {
        let events = seen(&log, instance);
        let notified: Vec<u64> = events
            .iter()
            .filter_map(|s| match s {
                Seen::Complete(n) => Some(*n),
                _ => None,
            })
            .collect();
        // The final checkpoint (taken after every source is exhausted) is
        // always heard: the sources end only after it.
        assert_eq!(notified.last(), completed.last(), "{events:?}");
        for n in &notified {
            assert!(completed.contains(n), "{n} never completed: {completed:?}");
            // Snapshotted before it was heard complete.
            let snapshot = events
                .iter()
                .position(|s| *s == Seen::Snapshot(*n, BarrierKind::Checkpoint))
                .unwrap_or_else(|| panic!("{n} not snapshotted: {events:?}"));
            let heard = events
                .iter()
                .position(|s| *s == Seen::Complete(*n))
                .unwrap();
            assert!(snapshot < heard, "{events:?}");
        }
        assert!(notified.windows(2).all(|w| w[0] < w[1]), "{notified:?}");
    }
}

// ---------------------------------------------------------------------------
// Savepoints: the kind travels with the barrier.

fn completed_savepoint(controller: &JobController, request: &str) -> u64 {
    let mut outcome = None;
    wait_for("the savepoint", || {
        match controller.savepoint(request).unwrap() {
            SavepointState::InProgress { .. } => return false,
            other => outcome = Some(other),
        }
        true
    });
    match outcome {
        Some(SavepointState::Completed { checkpoint_id, .. }) => checkpoint_id,
        other => panic!("savepoint {request} did not complete: {other:?}"),
    }
}

#[test]
fn snapshot_hooks_see_a_savepoint_s_kind_and_only_a_stop_with_savepoint_is_notified() {
    let dir = tempfile::tempdir().unwrap();
    let savepoints = dir.path().join("savepoints");
    let log: Log = Arc::default();
    let sink_log: Log = Arc::default();
    let source = RecordingSource {
        log: Arc::clone(&log),
        storage: None,
        records: None,
        early: Arc::default(),
    };
    let settings = CoordinatorSettings {
        // Only savepoints: no checkpoint starts on its own.
        interval: Some(Duration::from_secs(3600)),
        ..CoordinatorSettings::default()
    };
    let env = StreamEnvironment::new(config(
        1,
        memory_storage("kinds"),
        settings,
        Some(savepoints.display().to_string()),
    ));
    env.from_source("recording", source).sink_to(
        "recording",
        RecordingSink {
            log: Arc::clone(&sink_log),
            hold: None,
        },
    );
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    wait_for("the job to run", || {
        controller.status() == JobStatus::Running && controller.job_id().is_some()
    });

    let request = controller.trigger_savepoint(None, false).unwrap();
    let intermediate = completed_savepoint(&controller, &request);
    let request = controller.trigger_savepoint(None, true).unwrap();
    let report = job.join().unwrap();
    assert!(report.stopped_with_savepoint.is_some());
    let stop = completed_savepoint(&controller, &request);
    assert!(stop > intermediate);

    let snapshots = vec![
        Seen::Snapshot(intermediate, BarrierKind::Savepoint),
        Seen::Snapshot(stop, BarrierKind::StopWithSavepoint),
    ];
    // The source: both barriers with their kinds; only the stop is notified
    // (an intermediate savepoint has no side effects).
    let events = seen(&log, 0);
    assert_eq!(
        events,
        [snapshots.clone(), vec![Seen::Complete(stop)]].concat()
    );
    // The sink's `prepare_commit` sees the same, and commits at the stop.
    let events = seen(&sink_log, 0);
    assert_eq!(events, [snapshots, vec![Seen::Complete(stop)]].concat());
}
