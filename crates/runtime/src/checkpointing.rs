//! The checkpoint control plane inside the runtime: commands to tasks, events to
//! the coordinator, the upload threads that do the asynchronous part of
//! snapshots, and the coordinator's thread.
//!
//! Architecture invariant: the coordinator reaches tasks only through
//! [`TaskCommand`] messages (and a wakeup of the task's worker); tasks reach the
//! coordinator only through [`CoordinatorEvent`]s. Neither holds the other.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use flowstate_checkpoint::coordinator::TaskAck;
use flowstate_checkpoint::keyed_file::write_keyed_file;
use flowstate_checkpoint::layout::{keyed_state_path, savepoint_keyed_path};
use flowstate_checkpoint::native_files::upload_native;
use flowstate_checkpoint::storage::SharedStorage;
use flowstate_checkpoint::{
    CheckpointStats, Coordinator, CoordinatorAction, SnapshotKind, SubtaskSnapshot,
};

use flowstate_state::BackendSnapshot;

use crate::channel::Signal;
use crate::control::{JobController, SavepointOrder};
use crate::message::Barrier;
use crate::metrics::JobMetrics;
use crate::pipeline::OperatorPart;

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
    'jobs: for job in jobs {
        let id = job.barrier.id;
        let decline = |reason: String| {
            let _ = events.send(CoordinatorEvent::Decline {
                id,
                task: job.task,
                reason,
            });
        };
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

/// The coordinator's thread: triggers, collects, completes, notifies.
pub(crate) struct CoordinatorLoop {
    pub coordinator: Coordinator,
    pub events: Receiver<CoordinatorEvent>,
    pub tasks: Vec<TaskHandle>,
    pub metrics: Arc<JobMetrics>,
    pub controller: Arc<JobController>,
    pub savepoint_targets: SavepointTargets,
    /// Called when the job must fail (too many failed checkpoints).
    pub fail: Box<dyn Fn(String) + Send>,
}

/// The loop's own bookkeeping between events.
#[derive(Default)]
struct LoopState {
    /// The checkpoint taken after every source was exhausted; once it
    /// completes the sources end their output and no checkpoint is needed
    /// any more. (Never without periodic checkpoints: the sources end their
    /// output as soon as no savepoint is in flight.)
    final_checkpoint: Option<u64>,
    /// No snapshot is taken any more (the final checkpoint or a
    /// stop-with-savepoint completed, or the sources of a job without
    /// checkpoints were told to end their output).
    final_done: bool,
    /// A savepoint waiting for the snapshot in flight to finish.
    queued: Option<SavepointOrder>,
    /// Savepoints in flight: id -> (request id, stop).
    savepoints: HashMap<u64, (String, bool)>,
}

/// How long the coordinator waits for events before it looks at the clock.
const COORDINATOR_TICK_MAX: Duration = Duration::from_millis(50);

impl CoordinatorLoop {
    pub fn run(mut self) -> Vec<CheckpointStats> {
        let sources = self.tasks.iter().filter(|t| t.is_source).count();
        let mut exhausted: HashSet<usize> = HashSet::new();
        let mut state = LoopState::default();
        loop {
            let now = Instant::now();
            let wait = self
                .coordinator
                .next_trigger_at(now)
                .map_or(COORDINATOR_TICK_MAX, |at| at.saturating_duration_since(now))
                .min(COORDINATOR_TICK_MAX);
            let mut actions = Vec::new();
            match self.events.recv_timeout(wait) {
                Ok(CoordinatorEvent::Ack(ack)) => {
                    actions = self.coordinator.on_ack(ack, Instant::now())
                }
                Ok(CoordinatorEvent::Decline { id, task, reason }) => {
                    actions = self.coordinator.on_decline(
                        id,
                        format!("task {task} declined: {reason}"),
                        Instant::now(),
                    );
                }
                Ok(CoordinatorEvent::Exhausted { task }) => {
                    exhausted.insert(task);
                }
                Ok(CoordinatorEvent::Savepoint(order)) => {
                    if state.final_done || state.queued.is_some() {
                        self.controller.on_request_dropped(
                            &order.request_id,
                            "the job is finishing; no more snapshots are taken",
                        );
                    } else {
                        state.queued = Some(order);
                    }
                }
                Ok(CoordinatorEvent::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if !state.final_done {
                // A requested savepoint goes first, as soon as nothing is in flight.
                if self.coordinator.in_flight() == 0
                    && let Some(order) = state.queued.take()
                {
                    match self
                        .coordinator
                        .trigger_savepoint(Arc::clone(&order.storage), now)
                    {
                        Some(action) => {
                            if let CoordinatorAction::Trigger { id, .. } = action {
                                self.savepoint_targets
                                    .insert(id, Arc::clone(&order.storage));
                                state.savepoints.insert(id, (order.request_id, order.stop));
                            }
                            actions.push(action);
                        }
                        None => state.queued = Some(order),
                    }
                }
                if sources > 0 && exhausted.len() == sources {
                    // Every source is exhausted: take the final checkpoint as soon as
                    // nothing is in flight (again, if an earlier final one failed).
                    actions.extend(self.coordinator.tick_timeouts(now));
                    if !self.coordinator.is_periodic() {
                        // No checkpoints, so no final one: once no savepoint
                        // is in flight the sources end their output, and sinks
                        // publish at `finish`, as in a job without a coordinator.
                        if self.coordinator.in_flight() == 0 {
                            state.final_done = true;
                            for task in self.tasks.iter().filter(|t| t.is_source) {
                                task.send(TaskCommand::Finish);
                            }
                        }
                    } else if state.final_checkpoint.is_none()
                        && self.coordinator.in_flight() == 0
                        && let Some(action) =
                            self.coordinator.trigger_now(SnapshotKind::Checkpoint, now)
                    {
                        if let CoordinatorAction::Trigger { id, .. } = action {
                            state.final_checkpoint = Some(id);
                        }
                        actions.push(action);
                    }
                } else {
                    actions.extend(self.coordinator.tick(now));
                }
            } else {
                actions.extend(self.coordinator.tick_timeouts(now));
            }
            for action in actions {
                if let CoordinatorAction::Abort { id, .. } = action
                    && state.final_checkpoint == Some(id)
                {
                    state.final_checkpoint = None; // take the final checkpoint again
                }
                self.dispatch(&action, &mut state);
            }
        }
        // The job stopped (finished or failed): nothing in flight can complete.
        self.coordinator
            .abort_all("the job stopped", Instant::now());
        if let Some(order) = state.queued.take() {
            self.controller.on_request_dropped(
                &order.request_id,
                "the job stopped before the savepoint was taken",
            );
        }
        self.coordinator.completed().to_vec()
    }

    fn dispatch(&mut self, action: &CoordinatorAction, state: &mut LoopState) {
        match action {
            CoordinatorAction::Trigger { id, kind } => {
                let barrier = Barrier {
                    id: *id,
                    kind: (*kind).into(),
                };
                let savepoint = state.savepoints.get(id);
                self.controller
                    .on_triggered(*id, *kind, savepoint.map(|(r, _)| r.as_str()));
                let command = match savepoint {
                    Some((_, true)) => TaskCommand::TriggerAndSuspend(barrier),
                    _ => TaskCommand::Trigger(barrier),
                };
                for task in self.tasks.iter().filter(|t| t.is_source) {
                    task.send(command);
                }
            }
            CoordinatorAction::Complete { id } => {
                let savepoint = state.savepoints.remove(id);
                if let Some(stats) = self.coordinator.completed().last() {
                    if savepoint.is_none() {
                        self.metrics.record_checkpoint(stats);
                    }
                    self.controller
                        .on_completed(stats, savepoint.as_ref().map(|(r, _)| r.as_str()));
                }
                match savepoint {
                    // An intermediate savepoint has no side effects: sinks
                    // commit its data with the next checkpoint (a recovery
                    // goes back to a checkpoint, never to a savepoint).
                    Some((_, false)) => self.savepoint_targets.remove(*id),
                    // Stop-with-savepoint: commit, then end the sources, which
                    // emitted nothing after the barrier.
                    Some((_, true)) => {
                        self.savepoint_targets.remove(*id);
                        for task in &self.tasks {
                            task.send(TaskCommand::Complete(*id));
                        }
                        state.final_done = true;
                        for task in self.tasks.iter().filter(|t| t.is_source) {
                            task.send(TaskCommand::Finish);
                        }
                    }
                    None => {
                        for task in &self.tasks {
                            task.send(TaskCommand::Complete(*id));
                        }
                        if state.final_checkpoint.is_some_and(|f| *id >= f) {
                            state.final_done = true;
                            for task in self.tasks.iter().filter(|t| t.is_source) {
                                task.send(TaskCommand::Finish);
                            }
                        }
                    }
                }
            }
            CoordinatorAction::Abort { id, reason } => {
                let savepoint = state.savepoints.remove(id);
                self.controller
                    .on_failed(*id, reason, savepoint.as_ref().map(|(r, _)| r.as_str()));
                match savepoint {
                    Some((_, stop)) => {
                        self.savepoint_targets.remove(*id);
                        if stop {
                            for task in self.tasks.iter().filter(|t| t.is_source) {
                                task.send(TaskCommand::Resume);
                            }
                        }
                    }
                    None => self.metrics.record_failed_checkpoint(),
                }
                for task in &self.tasks {
                    task.send(TaskCommand::Abort(*id));
                }
            }
            CoordinatorAction::FailJob { reason } => (self.fail)(reason.clone()),
        }
    }
}
