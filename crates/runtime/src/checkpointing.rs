//! The checkpoint control plane inside the runtime: commands to tasks, events to
//! the coordinator, the upload threads that do the asynchronous part of
//! snapshots, and the coordinator's thread.
//!
//! Architecture invariant: the coordinator reaches tasks only through
//! [`TaskCommand`] messages (and a wakeup of the task's worker); tasks reach the
//! coordinator only through [`CoordinatorEvent`]s. Neither holds the other.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use flowstate_checkpoint::coordinator::TaskAck;
use flowstate_checkpoint::keyed_file::write_keyed_file;
use flowstate_checkpoint::layout::{keyed_state_path, savepoint_keyed_path};
use flowstate_checkpoint::native_files::upload_native;
use flowstate_checkpoint::storage::SharedStorage;
use flowstate_checkpoint::{
    CheckpointStats, Coordinator, CoordinatorAction, Now, SavepointRequest, SnapshotKind,
    SubtaskSnapshot,
};

use flowstate_state::BackendSnapshot;

use crate::channel::Signal;
use crate::control::{JobController, SavepointOrder};
use crate::message::Barrier;
use crate::metrics::JobMetrics;
use crate::pipeline::{OperatorPart, guarded};

/// Commands a task may find in its inbox at every step.
#[derive(Debug, Clone, Copy)]
pub enum TaskCommand {
    /// Sources only: record the position and emit this barrier.
    Trigger(Barrier),
    /// Sources only (stop-with-savepoint): like `Trigger`, then emit nothing
    /// more until `Finish` (the savepoint completed: end the output) or
    /// `Resume` (it failed: carry on).
    TriggerAndSuspend(Barrier),
    /// Sources only: a suspending savepoint failed; read on.
    Resume,
    /// Checkpoint n is complete (sinks commit).
    Complete(u64),
    /// Checkpoint n was aborted.
    Abort(u64),
    /// Sources only: the final checkpoint is complete; end the output.
    Finish,
}

/// What tasks and upload threads tell the coordinator.
pub(crate) enum CoordinatorEvent {
    Ack(TaskAck),
    Decline {
        id: u64,
        task: usize,
        reason: String,
    },
    /// A source's reader has no more records.
    Exhausted {
        task: usize,
    },
    /// Someone asked for a savepoint (through the [`JobController`]).
    Savepoint(SavepointOrder),
    /// The job is over; stop.
    Stop,
}

/// The directories of the savepoints in flight, by id: the coordinator loop
/// adds one when it triggers a savepoint, upload threads write its files
/// there, and it is removed when the savepoint completed or failed.
#[derive(Clone, Default)]
pub(crate) struct SavepointTargets(Arc<Mutex<HashMap<u64, SharedStorage>>>);

impl SavepointTargets {
    fn insert(&self, id: u64, storage: SharedStorage) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, storage);
    }

    fn get(&self, id: u64) -> Option<SharedStorage> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn remove(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Capacity of every task's command inbox.
pub const COMMAND_QUEUE_CAPACITY: usize = 64;

/// A task's end of the control plane.
pub struct TaskControl {
    pub(crate) task: usize,
    /// Exactly-once: align barriers.
    pub(crate) aligned: bool,
    commands: Receiver<TaskCommand>,
    events: Sender<CoordinatorEvent>,
    uploads: Sender<UploadJob>,
}

/// The coordinator's end of one task's control plane.
pub(crate) struct TaskHandle {
    pub name: String,
    pub commands: Sender<TaskCommand>,
    pub signal: Arc<Signal>,
    pub is_source: bool,
}

impl TaskHandle {
    fn send(&self, command: TaskCommand) {
        match self.commands.try_send(command) {
            Ok(()) => self.signal.wake(),
            // A finished task no longer listens; a full inbox means the task is
            // stuck and the checkpoint will time out.
            Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("a task's command inbox is full; dropped {command:?}")
            }
        }
    }
}

impl TaskControl {
    pub(crate) fn pair(
        name: String,
        task: usize,
        aligned: bool,
        signal: Arc<Signal>,
        is_source: bool,
        events: Sender<CoordinatorEvent>,
        uploads: Sender<UploadJob>,
    ) -> (TaskControl, TaskHandle) {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE_CAPACITY);
        (
            TaskControl {
                task,
                aligned,
                commands: rx,
                events,
                uploads,
            },
            TaskHandle {
                name,
                commands: tx,
                signal,
                is_source,
            },
        )
    }

    #[inline]
    pub(crate) fn next_command(&self) -> Option<TaskCommand> {
        self.commands.try_recv().ok()
    }

    /// Hands the synchronous part's result to an upload thread.
    pub(crate) fn submit(
        &self,
        barrier: Barrier,
        parts: Vec<OperatorPart>,
        sync_pause: Duration,
        alignment: Duration,
    ) {
        let job = UploadJob {
            barrier,
            task: self.task,
            parts,
            sync_pause,
            alignment,
        };
        if let Err(e) = self.uploads.try_send(job) {
            let reason = match e {
                TrySendError::Full(_) => "the snapshot upload queue is full",
                TrySendError::Disconnected(_) => "the snapshot uploaders have stopped",
            };
            let _ = self.events.try_send(CoordinatorEvent::Decline {
                id: barrier.id,
                task: self.task,
                reason: reason.into(),
            });
        }
    }

    /// Tells the coordinator this source is exhausted; false if it must be retried.
    pub(crate) fn report_exhausted(&self) -> bool {
        self.events
            .try_send(CoordinatorEvent::Exhausted { task: self.task })
            .is_ok()
    }
}

/// The asynchronous part of one task's snapshot.
pub(crate) struct UploadJob {
    barrier: Barrier,
    task: usize,
    parts: Vec<OperatorPart>,
    sync_pause: Duration,
    alignment: Duration,
}

/// Serialises and writes snapshots, then acknowledges them.
pub(crate) fn upload_loop(
    jobs: Receiver<UploadJob>,
    storage: SharedStorage,
    job_id: String,
    events: Sender<CoordinatorEvent>,
    savepoints: SavepointTargets,
) {
    'jobs: for mut job in jobs {
        let id = job.barrier.id;
        let decline = |reason: String| {
            let _ = events.send(CoordinatorEvent::Decline {
                id,
                task: job.task,
                reason,
            });
        };
        // Sinks' deferred first-phase I/O (fsync, flush, PREPARE) first, and
        // always, even for a snapshot declined below: what it makes durable
        // is recorded as pending by this snapshot and by every later one. The
        // acknowledgement, and so the completion and `commit`, come only
        // after it succeeded; a failure declines the snapshot.
        let mut failed = None;
        for part in &mut job.parts {
            if let Some(action) = part.deferred.take() {
                let result = guarded(&part.name, action);
                if let (Err(e), None) = (result, &failed) {
                    failed = Some(format!(
                        "preparing the commit (instance {}): {e}",
                        part.subtask
                    ));
                }
            }
        }
        if let Some(reason) = failed {
            decline(reason);
            continue 'jobs;
        }
        // A savepoint's files go to its own directory, named relative to it.
        let savepoint = match job.barrier.kind.snapshot_kind() {
            SnapshotKind::Checkpoint => None,
            SnapshotKind::Savepoint => match savepoints.get(id) {
                Some(target) => Some(target),
                None => {
                    decline("the savepoint was aborted".into());
                    continue 'jobs;
                }
            },
        };
        let mut operators = Vec::with_capacity(job.parts.len());
        let mut bytes = 0;
        for part in job.parts {
            let (mut keyed, mut native) = (None, None);
            let written = match &part.snapshot.keyed {
                Some(BackendSnapshot::KeyGroups(snapshot)) => {
                    let (target, path) = match &savepoint {
                        Some(target) => (target, savepoint_keyed_path(&part.uid, part.subtask)),
                        None => (
                            &storage,
                            keyed_state_path(&job_id, id, &part.uid, part.subtask),
                        ),
                    };
                    write_keyed_file(target.as_ref(), &path, snapshot).map(|handle| {
                        bytes += handle.file.size;
                        keyed = Some(handle);
                    })
                }
                Some(BackendSnapshot::Native(_)) if savepoint.is_some() => {
                    decline(format!(
                        "'{}' ({}) snapshotted a savepoint in its backend's native format; \
                         savepoints must be canonical",
                        part.name, part.subtask
                    ));
                    continue 'jobs;
                }
                Some(BackendSnapshot::Native(snapshot)) => {
                    upload_native(storage.as_ref(), &job_id, &part.uid, part.subtask, snapshot).map(
                        |(handle, uploaded)| {
                            bytes += uploaded;
                            native = Some(handle);
                        },
                    )
                }
                None => Ok(()),
            };
            if let Err(e) = written {
                decline(format!(
                    "writing state of '{}' ({}): {e}",
                    part.name, part.subtask
                ));
                continue 'jobs;
            }
            let lists = part.snapshot.lists;
            if keyed.is_none() && native.is_none() && lists.is_empty() {
                // A sink that only had deferred work: no state to record.
                continue;
            }
            bytes += lists
                .iter()
                .flat_map(|l| &l.elements)
                .map(|e| e.len() as u64)
                .sum::<u64>();
            operators.push((
                part.uid.to_string(),
                part.name.to_string(),
                SubtaskSnapshot {
                    subtask: part.subtask,
                    keyed,
                    native,
                    lists,
                },
            ));
        }
        let ack = TaskAck {
            id,
            task: job.task,
            operators,
            bytes,
            sync_pause: job.sync_pause,
            alignment: job.alignment,
        };
        if events.send(CoordinatorEvent::Ack(ack)).is_err() {
            break;
        }
    }
}

/// The coordinator's thread: a thin driver. It turns what tasks, upload
/// threads and the [`JobController`] send into the [`Coordinator`]'s events,
/// each with the time it read, and carries out the actions the coordinator
/// answers. It decides nothing: when to checkpoint, the savepoint queue, the
/// final checkpoint of a bounded job and the end of the sources' output are
/// all the coordinator's (see its module docs).
pub(crate) struct CoordinatorLoop {
    pub coordinator: Coordinator,
    pub events: Receiver<CoordinatorEvent>,
    pub tasks: Vec<TaskHandle>,
    pub metrics: Arc<JobMetrics>,
    pub controller: Arc<JobController>,
    /// Where the uploaders find a savepoint's directory: filled from
    /// `TriggerSavepoint`, emptied when the savepoint completed or failed.
    pub savepoint_targets: SavepointTargets,
    /// Called when the job must fail (too many failed checkpoints).
    pub fail: Box<dyn Fn(String) + Send>,
}

/// How long the coordinator waits for events before it looks at the clock.
const COORDINATOR_TICK_MAX: Duration = Duration::from_millis(50);

impl CoordinatorLoop {
    pub fn run(mut self) -> Vec<CheckpointStats> {
        let sources = self.tasks.iter().filter(|t| t.is_source).count();
        let mut exhausted: HashSet<usize> = HashSet::new();
        loop {
            let now = Now::system();
            let wait = self
                .coordinator
                .next_trigger_at(now)
                .map_or(COORDINATOR_TICK_MAX, |at| {
                    at.saturating_duration_since(now.instant)
                })
                .min(COORDINATOR_TICK_MAX);
            let event = self.events.recv_timeout(wait);
            let now = Now::system();
            let mut actions = match event {
                Ok(CoordinatorEvent::Ack(ack)) => self.coordinator.on_ack(ack, now),
                Ok(CoordinatorEvent::Decline { id, task, reason }) => {
                    self.coordinator
                        .on_decline(id, format!("task {task} declined: {reason}"), now)
                }
                // Counted here, where the tasks are known; what follows is
                // the coordinator's decision.
                Ok(CoordinatorEvent::Exhausted { task }) => {
                    if exhausted.insert(task) && exhausted.len() == sources {
                        self.coordinator.on_sources_exhausted(now)
                    } else {
                        Vec::new()
                    }
                }
                Ok(CoordinatorEvent::Savepoint(order)) => self.coordinator.request_savepoint(
                    SavepointRequest {
                        request: order.request_id,
                        target: order.storage,
                        stop: order.stop,
                    },
                    now,
                ),
                Ok(CoordinatorEvent::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => Vec::new(),
            };
            actions.extend(self.coordinator.tick(now));
            for action in actions {
                self.dispatch(action);
            }
        }
        // The job stopped (finished or failed): nothing in flight can complete.
        for action in self.coordinator.on_job_stopped(Now::system()) {
            self.dispatch(action);
        }
        self.coordinator.completed().to_vec()
    }

    fn dispatch(&self, action: CoordinatorAction) {
        match action {
            CoordinatorAction::Trigger { id, kind } => {
                self.controller.on_triggered(id, kind, None);
                let barrier = Barrier {
                    id,
                    kind: kind.into(),
                };
                self.send_to_sources(TaskCommand::Trigger(barrier));
            }
            CoordinatorAction::TriggerSavepoint { id, savepoint } => {
                self.savepoint_targets.insert(id, savepoint.target);
                self.controller
                    .on_triggered(id, SnapshotKind::Savepoint, Some(&savepoint.request));
                let barrier = Barrier {
                    id,
                    kind: SnapshotKind::Savepoint.into(),
                };
                self.send_to_sources(if savepoint.stop {
                    TaskCommand::TriggerAndSuspend(barrier)
                } else {
                    TaskCommand::Trigger(barrier)
                });
            }
            CoordinatorAction::Complete {
                id,
                stats,
                notify_tasks,
                request,
            } => {
                if request.is_some() {
                    self.savepoint_targets.remove(id);
                } else {
                    self.metrics.record_checkpoint(&stats);
                }
                self.controller.on_completed(&stats, request.as_deref());
                if notify_tasks {
                    for task in &self.tasks {
                        task.send(TaskCommand::Complete(id));
                    }
                }
            }
            CoordinatorAction::Abort {
                id,
                reason,
                request,
            } => {
                self.controller.on_failed(id, &reason, request.as_deref());
                if request.is_some() {
                    self.savepoint_targets.remove(id);
                } else {
                    self.metrics.record_failed_checkpoint();
                }
                for task in &self.tasks {
                    task.send(TaskCommand::Abort(id));
                }
            }
            CoordinatorAction::FinishSources => self.send_to_sources(TaskCommand::Finish),
            CoordinatorAction::ResumeSources => self.send_to_sources(TaskCommand::Resume),
            CoordinatorAction::SavepointDropped { request, reason } => {
                self.controller.on_request_dropped(&request, &reason)
            }
            CoordinatorAction::FailJob { reason } => (self.fail)(reason),
        }
    }

    fn send_to_sources(&self, command: TaskCommand) {
        for task in self.tasks.iter().filter(|t| t.is_source) {
            task.send(command);
        }
    }
}
