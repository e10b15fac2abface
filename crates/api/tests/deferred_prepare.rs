//! A sink's deferred first commit phase (`SinkWriter::prepare_commit_deferred`)
//! as the runtime runs it: the synchronous half returns at once and the task
//! goes on processing while the deferred action runs on an upload thread; the
//! checkpoint completes (and `commit` runs) only after the action finished;
//! an action that fails declines its checkpoint, and the job goes on.
//!
//! Outcomes never depend on timing: the deferred action is held by a gate the
//! test opens, the coordinator's timeout is far longer than any wait, and
//! waiting loops poll a condition with a generous deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::layout::metadata_path;
use flowstate::runtime::checkpoint::storage::SharedStorage;
use flowstate::runtime::checkpoint::{CoordinatorSettings, open_storage};
use flowstate::runtime::control::SnapshotStatus;
use flowstate::runtime::{
    CheckpointingConfig, Guarantee, PreparedCommit, RestartStrategy, RestoreFrom,
};
use flowstate::{
    Barrier, ExecutionConfig, JobError, Sink, SinkWriter, StreamEnvironment, SubtaskInfo, UserError,
};

const DEADLINE: Duration = Duration::from_secs(120);
const JOB: &str = "deferred";

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn config(storage: SharedStorage) -> ExecutionConfig {
    ExecutionConfig {
        job_name: "deferred-prepare-test".into(),
        checkpointing: Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval: Some(Duration::from_millis(20)),
                // Never reached while the test holds an action: the
                // checkpoint waits for the action, not for a timeout.
                timeout: Duration::from_secs(600),
                tolerable_failures: u32::MAX,
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: Some(JOB.into()),
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::None,
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(1)
    }
}

fn memory_storage(name: &str) -> SharedStorage {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    open_storage(&format!("memory://deferred-{name}-{nanos}")).unwrap()
}

/// What the deferred action of the first checkpoint does.
#[derive(Clone)]
enum FirstAction {
    /// Tells the test it started, then waits until the test releases it.
    Held {
        entered: SyncSender<u64>,
        release: Arc<Mutex<Receiver<()>>>,
    },
    /// Fails.
    Fails,
}

/// Shared between the test and the sink's writer (and its actions).
#[derive(Default)]
struct Observed {
    /// Records written so far.
    written: AtomicU64,
    /// Records written when the first checkpoint's synchronous half ran.
    written_at_prepare: Mutex<Option<u64>>,
    /// The first checkpoint's action has finished (either way).
    first_done: AtomicBool,
    /// `(checkpoint committed, whether the first action had finished then)`.
    commits: Mutex<Vec<(u64, bool)>>,
}

#[derive(Clone)]
struct DeferringSink {
    first: FirstAction,
    observed: Arc<Observed>,
}

struct DeferringWriter {
    first: Option<FirstAction>,
    observed: Arc<Observed>,
}

impl Sink<u64> for DeferringSink {
    fn create_writer(&self, _subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        Ok(Box::new(DeferringWriter {
            first: Some(self.first.clone()),
            observed: Arc::clone(&self.observed),
        }))
    }

    fn commits_on_checkpoint(&self) -> bool {
        true
    }
}

impl SinkWriter<u64> for DeferringWriter {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        self.observed
            .written
            .fetch_add(batch.len() as u64, Ordering::SeqCst);
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }

    fn prepare_commit_deferred(&mut self, barrier: Barrier) -> Result<PreparedCommit, UserError> {
        let Some(first) = self.first.take() else {
            return Ok(PreparedCommit::default());
        };
        *self.observed.written_at_prepare.lock().unwrap() =
            Some(self.observed.written.load(Ordering::SeqCst));
        let observed = Arc::clone(&self.observed);
        let id = barrier.id;
        Ok(PreparedCommit {
            state: Vec::new(),
            deferred: Some(Box::new(move || {
                let result: Result<(), UserError> = match first {
                    FirstAction::Held { entered, release } => {
                        entered.send(id)?;
                        release.lock().unwrap().recv()?;
                        Ok(())
                    }
                    FirstAction::Fails => Err(format!("injected failure of {id}").into()),
                };
                observed.first_done.store(true, Ordering::SeqCst);
                result
            })),
        })
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        let done = self.observed.first_done.load(Ordering::SeqCst);
        self.observed
            .commits
            .lock()
            .unwrap()
            .push((checkpoint_id, done));
        Ok(())
    }
}

fn start(sink: DeferringSink, storage: SharedStorage) -> flowstate::RunningJob {
    let env = StreamEnvironment::new(config(storage));
    env.from_source(
        "numbers",
        SequenceSource::new(u64::MAX / 2, 1, |i| i)
            .unwrap()
            .with_rate(20_000)
            .unwrap(),
    )
    .sink_to("deferring", sink);
    env.start().unwrap()
}

#[test]
fn a_held_deferred_action_neither_stops_the_task_nor_lets_the_checkpoint_complete() {
    let (entered_tx, entered) = sync_channel(1);
    let (release, release_rx) = sync_channel(1);
    let observed = Arc::new(Observed::default());
    let storage = memory_storage("held");
    let sink = DeferringSink {
        first: FirstAction::Held {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
        },
        observed: Arc::clone(&observed),
    };
    let job = start(sink, Arc::clone(&storage));
    let controller = Arc::clone(job.controller());

    let held = entered
        .recv_timeout(DEADLINE)
        .expect("the first checkpoint's deferred action starts");
    // The synchronous half returned at once: the same task keeps writing
    // records after the barrier while the action is held.
    let at_prepare = observed.written_at_prepare.lock().unwrap().unwrap();
    wait_for("records written while the action is held", || {
        observed.written.load(Ordering::SeqCst) > at_prepare + 1_000
    });
    // And the checkpoint is not complete: no metadata, no commit.
    assert_eq!(
        storage.size(&metadata_path(JOB, held)).unwrap(),
        None,
        "checkpoint {held} completed while its sink's action was held"
    );
    assert!(observed.commits.lock().unwrap().is_empty());
    assert_eq!(controller.checkpoint_history().completed, 0);

    release.send(()).unwrap();
    wait_for("the held checkpoint to be committed", || {
        observed
            .commits
            .lock()
            .unwrap()
            .iter()
            .any(|(n, _)| *n >= held)
    });
    controller.cancel().unwrap();
    assert!(matches!(job.join(), Err(JobError::Cancelled)));

    let commits = observed.commits.lock().unwrap().clone();
    assert!(
        commits.iter().all(|(_, action_done)| *action_done),
        "a commit ran before the deferred action finished: {commits:?}"
    );
    // It completed once released (its files may be gone by now: retention).
    let history = controller.checkpoint_history();
    let record = history.entries.iter().find(|e| e.id == held).unwrap();
    assert_eq!(record.status, SnapshotStatus::Completed);
}

#[test]
fn a_failed_deferred_action_declines_its_checkpoint_and_the_job_goes_on() {
    let observed = Arc::new(Observed::default());
    let sink = DeferringSink {
        first: FirstAction::Fails,
        observed: Arc::clone(&observed),
    };
    let job = start(sink, memory_storage("fails"));
    let controller = Arc::clone(job.controller());
    wait_for("a later checkpoint to be committed", || {
        !observed.commits.lock().unwrap().is_empty()
    });
    controller.cancel().unwrap();
    assert!(matches!(job.join(), Err(JobError::Cancelled)));

    let history = controller.checkpoint_history();
    let first = history
        .entries
        .iter()
        .find(|e| e.id == 1)
        .expect("checkpoint 1 in the history");
    match &first.status {
        SnapshotStatus::Failed(reason) => assert!(
            reason.contains("injected failure of 1"),
            "unexpected reason: {reason}"
        ),
        other => panic!("checkpoint 1 should have failed: {other:?}"),
    }
    let commits = observed.commits.lock().unwrap().clone();
    assert!(commits.iter().all(|(n, _)| *n > 1), "{commits:?}");
}
