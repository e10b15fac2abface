//! The checkpoint control plane's messages and its two ends: what the
//! coordinator tells tasks ([`TaskCommand`]), what tasks, upload threads and the
//! job controller tell the coordinator ([`CoordinatorEvent`], among them a
//! [`SavepointOrder`]), a task's end ([`TaskControlPlane`]) and the
//! coordinator's end of it ([`TaskHandle`]), and what a task hands to an upload
//! thread ([`UploadJob`], made of [`OperatorPart`]s).
//!
//! Owns: these types, the bounded command inboxes and the map of savepoint
//! directories in flight ([`SavepointTargets`]). Must not touch: what the
//! coordinator decides, how snapshots are written (`upload`), how tasks run
//! (`task`) or the job's control surface (`control`); all of them sit above
//! this module and talk to each other only through it.
//!
//! Architecture invariant: the coordinator reaches tasks only through
//! [`TaskCommand`] messages (and a wakeup of the task's worker); tasks reach the
//! coordinator only through [`CoordinatorEvent`]s. Neither holds the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use flowstate_checkpoint::coordinator::TaskAck;
use flowstate_checkpoint::storage::SharedStorage;

use crate::channel::Signal;
use crate::connector::DeferredPrepare;
use crate::message::Barrier;
use crate::metrics::TaskMetrics;
use crate::operator::StateSnapshot;

/// Commands a task may find in its inbox at every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TaskCommand {
    /// Sources only: record the position and emit this barrier.
    Trigger(Barrier),
    /// Sources only (stop-with-savepoint, stop-with-checkpoint): like
    /// `Trigger`, then emit nothing more until `Finish` (the snapshot
    /// completed: end the output) or `Resume` (it failed: carry on). The
    /// source makes the barrier's kind `StopWithSavepoint` or
    /// `StopWithCheckpoint`.
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

/// What tasks, upload threads and the job controller tell the coordinator.
pub(crate) enum CoordinatorEvent {
    /// A task's (or its upload thread's): the same whether the task runs in
    /// this process or in a task manager.
    Task(TaskEvent),
    /// Someone asked for a savepoint (through the job controller).
    Savepoint(SavepointOrder),
    /// Someone asked to stop the job at a checkpoint (through the job
    /// controller).
    StopWithCheckpoint,
    /// The job is over; stop.
    Stop,
}

/// Where [`CoordinatorEvent`]s are sent: the coordinator's queue.
pub(crate) type CoordinatorSender = Sender<CoordinatorEvent>;

/// A savepoint for the coordinator to take, ordered by the job controller.
pub(crate) struct SavepointOrder {
    pub request_id: String,
    /// The savepoint's own (new, empty) directory.
    pub storage: SharedStorage,
    /// Stop-with-savepoint: sources end after it.
    pub stop: bool,
    /// Where it is, as `--restore` names it (what the job's restore pointer
    /// records after a stop).
    pub location: String,
}

/// The directories of the savepoints in flight, by id: the coordinator's
/// driver adds one when it triggers a savepoint, upload threads write its
/// files there, and it is removed when the savepoint completed or failed.
#[derive(Clone, Default)]
pub(crate) struct SavepointTargets(Arc<Mutex<HashMap<u64, SharedStorage>>>);

impl SavepointTargets {
    pub(crate) fn insert(&self, id: u64, storage: SharedStorage) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, storage);
    }

    pub(crate) fn get(&self, id: u64) -> Option<SharedStorage> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    pub(crate) fn remove(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Capacity of every task's command inbox.
pub const COMMAND_QUEUE_CAPACITY: usize = 64;

/// A task's end of the control plane: its command inbox, and the queues to
/// the coordinator and to the upload threads.
pub struct TaskControlPlane {
    pub(crate) task: usize,
    /// Exactly-once: align barriers.
    pub(crate) aligned: bool,
    commands: Receiver<TaskCommand>,
    events: CoordinatorSender,
    uploads: Sender<UploadJob>,
    /// The task's metrics: its upload records the checkpoint's figures.
    metrics: Option<Arc<TaskMetrics>>,
}

/// The coordinator's end of one task's control plane.
pub(crate) struct TaskHandle {
    pub name: String,
    pub is_source: bool,
    pub route: CommandRoute,
}

/// How a command reaches a task.
pub(crate) enum CommandRoute {
    /// The task runs in this process: its inbox, and its worker's signal.
    Local {
        commands: Sender<TaskCommand>,
        signal: Arc<Signal>,
    },
    /// The task runs in another process: the control connection to it
    /// (it must not block).
    Remote(RemoteCommands),
}

/// Sends a command to a task in another process.
pub type RemoteCommands = Arc<dyn Fn(TaskCommand) + Send + Sync>;

impl TaskHandle {
    /// The handle of a task that runs in another process.
    pub(crate) fn remote(name: String, is_source: bool, send: RemoteCommands) -> Self {
        Self {
            name,
            is_source,
            route: CommandRoute::Remote(send),
        }
    }

    /// Puts `command` into the task's inbox and wakes its worker.
    pub(crate) fn send(&self, command: TaskCommand) {
        match &self.route {
            CommandRoute::Local { commands, signal } => match commands.try_send(command) {
                Ok(()) => signal.wake(),
                // A finished task no longer listens; a full inbox means the task is
                // stuck and the checkpoint will time out.
                Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!("a task's command inbox is full; dropped {command:?}")
                }
            },
            CommandRoute::Remote(send) => send(command),
        }
    }
}

/// What a task tells the coordinator, in the form that crosses processes
/// (a task manager's tasks to the job manager's coordinator).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum TaskEvent {
    Ack(TaskAck),
    Decline {
        id: u64,
        task: usize,
        reason: String,
    },
    Exhausted {
        task: usize,
    },
}

impl TaskEvent {
    /// The task the event is about (its index in the plan).
    pub fn task(&self) -> usize {
        match self {
            TaskEvent::Ack(ack) => ack.task,
            TaskEvent::Decline { task, .. } | TaskEvent::Exhausted { task } => *task,
        }
    }
}

impl TaskControlPlane {
    pub(crate) fn pair(
        name: String,
        task: usize,
        aligned: bool,
        signal: Arc<Signal>,
        is_source: bool,
        events: CoordinatorSender,
        uploads: Sender<UploadJob>,
    ) -> (TaskControlPlane, TaskHandle) {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE_CAPACITY);
        (
            TaskControlPlane {
                task,
                aligned,
                commands: rx,
                events,
                uploads,
                metrics: None,
            },
            TaskHandle {
                name,
                is_source,
                route: CommandRoute::Local {
                    commands: tx,
                    signal,
                },
            },
        )
    }

    /// The task's metrics, into which its uploads record each snapshot.
    pub(crate) fn with_metrics(mut self, metrics: Arc<TaskMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
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
        self.submit_job(Submission {
            barrier,
            parts,
            sync_pause,
            alignment,
            unaligned: false,
            channels: None,
            decline: None,
        });
    }

    /// Hands a snapshot to an upload thread: also one taken unaligned (with
    /// its channel state), and one the task declines (`decline`), whose
    /// sinks' deferred work must still run.
    pub(crate) fn submit_job(&self, submission: Submission) {
        let id = submission.barrier.id;
        let job = UploadJob {
            barrier: submission.barrier,
            task: self.task,
            parts: submission.parts,
            sync_pause: submission.sync_pause,
            alignment: submission.alignment,
            unaligned: submission.unaligned,
            channels: submission.channels,
            decline: submission.decline,
            metrics: self.metrics.clone(),
            submitted: std::time::Instant::now(),
        };
        if let Err(e) = self.uploads.try_send(job) {
            let reason = match e {
                TrySendError::Full(_) => "the snapshot upload queue is full",
                TrySendError::Disconnected(_) => "the snapshot uploaders have stopped",
            };
            let _ = self
                .events
                .try_send(CoordinatorEvent::Task(TaskEvent::Decline {
                    id,
                    task: self.task,
                    reason: reason.into(),
                }));
        }
    }

    /// Tells the coordinator this source is exhausted; false if it must be retried.
    pub(crate) fn report_exhausted(&self) -> bool {
        self.events
            .try_send(CoordinatorEvent::Task(TaskEvent::Exhausted {
                task: self.task,
            }))
            .is_ok()
    }
}

/// One operator instance's part of a task's checkpoint.
pub struct OperatorPart {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub subtask: u32,
    pub snapshot: StateSnapshot,
    /// A sink's deferred first-phase work, run by the upload thread before
    /// the acknowledgement (see [`crate::connector::DeferredPrepare`]).
    pub deferred: Option<DeferredPrepare>,
}

/// What a task hands over for one snapshot.
pub(crate) struct Submission {
    pub barrier: Barrier,
    pub parts: Vec<OperatorPart>,
    pub sync_pause: Duration,
    pub alignment: Duration,
    pub unaligned: bool,
    pub channels: Option<ChannelStatePart>,
    pub decline: Option<String>,
}

/// The in-flight records a task recorded for an unaligned checkpoint,
/// indexed under its head operator.
pub(crate) struct ChannelStatePart {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub subtask: u32,
    pub contents: flowstate_checkpoint::channel_file::ChannelStateContents,
}

/// The asynchronous part of one task's snapshot: what the task hands to an
/// upload thread.
pub(crate) struct UploadJob {
    pub barrier: Barrier,
    pub task: usize,
    pub parts: Vec<OperatorPart>,
    pub sync_pause: Duration,
    pub alignment: Duration,
    /// The task took the snapshot unaligned.
    pub unaligned: bool,
    /// Channel state to write with the snapshot.
    pub channels: Option<ChannelStatePart>,
    /// The task declines the snapshot (after its sinks' deferred work ran).
    pub decline: Option<String>,
    /// The task's metrics (the upload thread records the figures of an
    /// acknowledged snapshot there).
    pub metrics: Option<Arc<TaskMetrics>>,
    /// When the task handed it over (the end of its synchronous part).
    pub submitted: std::time::Instant,
}
