//! The coordinator's driver: it turns what tasks, upload threads and the job
//! controller send ([`CoordinatorEvent`]s) into the [`Coordinator`]'s events,
//! each with the time it is given, and carries out the actions the coordinator
//! answers (commands to tasks, reports to the [`JobController`], metrics, the
//! savepoint directories in flight, failing the job).
//!
//! It decides nothing: when to checkpoint, the savepoint queue, the final
//! checkpoint of a bounded job and the end of the sources' output are all the
//! coordinator's (see its module docs). [`CoordinatorDriver`] reads no clock
//! and waits on no queue, so a single-threaded simulator can drive it with
//! invented times ([`CoordinatorDriver::on_event`], [`CoordinatorDriver::tick`],
//! [`CoordinatorDriver::next_wakeup`], [`CoordinatorDriver::stop`]);
//! [`CoordinatorDriver::run`] is the thread that does so with `Now::system()`.
//!
//! Storage: it carries out the coordinator's storage effects (`WriteMetadata`,
//! `Delete`, see `flowstate_checkpoint::effects`) in the checkpoint storage or
//! a savepoint's directory, synchronously, and reports the outcome of a
//! metadata write back to the coordinator at once (with the time of the event
//! that led to it); what is written or deleted, and when, is the
//! coordinator's decision. A failed delete is logged, never fatal.
//!
//! Must not touch: tasks other than through their [`TaskHandle`]s, the task
//! files of snapshots (upload threads write them) or the job's status.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use flowstate_checkpoint::storage::SharedStorage;
use flowstate_checkpoint::{
    CheckpointStats, Coordinator, CoordinatorAction, Now, SavepointRequest, SnapshotKind, effects,
};

use crate::control::JobController;
use crate::control_plane::{
    CoordinatorEvent, SavepointTargets, TaskCommand, TaskEvent, TaskHandle,
};
use crate::message::{Barrier, BarrierAlignment};
use crate::metrics::JobMetrics;

/// Longest the coordinator's thread waits for an event before it ticks: a
/// driver must be ticked at least this often (timeouts are noticed on ticks).
pub(crate) const COORDINATOR_TICK_MAX: Duration = Duration::from_millis(50);

/// Whether the driver goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// The job is over ([`CoordinatorEvent::Stop`]): call
    /// [`CoordinatorDriver::stop`].
    Stop,
}

/// The coordinator of one attempt and everything its actions reach.
pub(crate) struct CoordinatorDriver {
    coordinator: Coordinator,
    /// The job's checkpoint storage, where the coordinator's storage effects
    /// go (a savepoint's directory travels in the effect itself).
    storage: SharedStorage,
    tasks: Vec<TaskHandle>,
    metrics: Arc<JobMetrics>,
    controller: Arc<JobController>,
    /// Where the uploaders find a savepoint's directory: filled from
    /// `TriggerSavepoint`, emptied when the savepoint completed or failed.
    savepoint_targets: SavepointTargets,
    /// Called when the job must fail (too many failed checkpoints).
    fail: Box<dyn Fn(String) + Send>,
    /// Sources whose readers reported `Exhausted`, by task index.
    exhausted: HashSet<usize>,
    /// How many of the tasks are sources.
    sources: usize,
    /// Tasks in other processes: tells their uploaders where savepoint `id`
    /// goes (its location), before its barrier is triggered.
    remote_savepoints: Option<RemoteSavepoints>,
    /// A checkpoint of this attempt completed (the first is logged: every
    /// task runs again after a restart; the failover benchmark reads it).
    completed_one: bool,
}

/// Announces savepoint `id`'s location to the processes that run tasks.
pub(crate) type RemoteSavepoints = Box<dyn Fn(u64, &str) + Send>;

impl CoordinatorDriver {
    pub(crate) fn new(
        coordinator: Coordinator,
        storage: SharedStorage,
        tasks: Vec<TaskHandle>,
        metrics: Arc<JobMetrics>,
        controller: Arc<JobController>,
        savepoint_targets: SavepointTargets,
        fail: Box<dyn Fn(String) + Send>,
    ) -> Self {
        let sources = tasks.iter().filter(|t| t.is_source).count();
        Self {
            coordinator,
            storage,
            tasks,
            metrics,
            controller,
            savepoint_targets,
            fail,
            exhausted: HashSet::new(),
            sources,
            remote_savepoints: None,
            completed_one: false,
        }
    }

    /// The tasks run in other processes: `announce` tells them where each
    /// savepoint goes.
    pub(crate) fn with_remote_savepoints(mut self, announce: RemoteSavepoints) -> Self {
        self.remote_savepoints = Some(announce);
        self
    }

    /// Hands one event to the coordinator, ticks it, and carries out what
    /// both answered. [`Flow::Stop`] for [`CoordinatorEvent::Stop`] (nothing
    /// is done then).
    pub(crate) fn on_event(&mut self, event: CoordinatorEvent, now: Now) -> Flow {
        let mut actions = match event {
            CoordinatorEvent::Task(TaskEvent::Ack(ack)) => self.coordinator.on_ack(ack, now),
            CoordinatorEvent::Task(TaskEvent::Decline { id, task, reason }) => self
                .coordinator
                .on_decline(id, format!("task {task} declined: {reason}"), now),
            // Counted here, where the tasks are known; what follows is
            // the coordinator's decision.
            CoordinatorEvent::Task(TaskEvent::Exhausted { task }) => {
                if self.exhausted.insert(task) && self.exhausted.len() == self.sources {
                    self.coordinator.on_sources_exhausted(now)
                } else {
                    Vec::new()
                }
            }
            CoordinatorEvent::Savepoint(order) => self.coordinator.request_savepoint(
                SavepointRequest {
                    request: order.request_id,
                    target: order.storage,
                    stop: order.stop,
                    location: Some(order.location),
                },
                now,
            ),
            CoordinatorEvent::StopWithCheckpoint => {
                self.coordinator.request_stop_with_checkpoint(now)
            }
            CoordinatorEvent::Stop => return Flow::Stop,
        };
        actions.extend(self.coordinator.tick(now));
        for action in actions {
            self.dispatch(action, now);
        }
        Flow::Continue
    }

    /// Lets the coordinator look at the time (triggers, timeouts) and carries
    /// out what it answers.
    pub(crate) fn tick(&mut self, now: Now) {
        for action in self.coordinator.tick(now) {
            self.dispatch(action, now);
        }
    }

    /// When the coordinator next wants to trigger a checkpoint, if it does;
    /// a driver ticks at that time and, besides, at least every
    /// [`COORDINATOR_TICK_MAX`].
    pub(crate) fn next_wakeup(&self, now: Now) -> Option<Instant> {
        self.coordinator.next_trigger_at(now)
    }

    /// The job stopped (finished or failed): nothing in flight can complete.
    /// Returns the completed checkpoints the coordinator remembers.
    pub(crate) fn stop(mut self, now: Now) -> Vec<CheckpointStats> {
        for action in self.coordinator.on_job_stopped(now) {
            self.dispatch(action, now);
        }
        self.coordinator.completed().to_vec()
    }

    /// The coordinator's thread: waits for events (at most until the next
    /// wakeup), hands them over with `Now::system()`, and ticks after every
    /// event and timeout, until `Stop` or until every sender is gone.
    pub(crate) fn run(mut self, events: Receiver<CoordinatorEvent>) -> Vec<CheckpointStats> {
        loop {
            let now = Now::system();
            let wait = self
                .next_wakeup(now)
                .map_or(COORDINATOR_TICK_MAX, |at| {
                    at.saturating_duration_since(now.instant)
                })
                .min(COORDINATOR_TICK_MAX);
            let event = events.recv_timeout(wait);
            let now = Now::system();
            match event {
                Ok(event) => {
                    if self.on_event(event, now) == Flow::Stop {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.tick(now),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.stop(Now::system())
    }

    /// Carries out one action; `now` is the time of the event that led to it
    /// (the outcome of a metadata write is reported with it).
    fn dispatch(&mut self, action: CoordinatorAction, now: Now) {
        match action {
            CoordinatorAction::Trigger {
                id,
                kind,
                alignment,
            } => {
                self.controller.on_triggered(id, kind, None);
                let barrier = Barrier {
                    id,
                    kind: kind.into(),
                    alignment,
                };
                self.send_to_sources(TaskCommand::Trigger(barrier));
            }
            CoordinatorAction::TriggerStopWithCheckpoint { id } => {
                self.controller
                    .on_triggered(id, SnapshotKind::Checkpoint, None);
                let barrier = Barrier {
                    id,
                    kind: SnapshotKind::Checkpoint.into(),
                    alignment: BarrierAlignment::Aligned,
                };
                self.send_to_sources(TaskCommand::TriggerAndSuspend(barrier));
            }
            CoordinatorAction::TriggerSavepoint { id, savepoint } => {
                // Ahead of the barrier, on the same control connections.
                if let (Some(announce), Some(location)) =
                    (&self.remote_savepoints, &savepoint.location)
                {
                    announce(id, location);
                }
                self.savepoint_targets.insert(id, savepoint.target);
                self.controller
                    .on_triggered(id, SnapshotKind::Savepoint, Some(&savepoint.request));
                let barrier = Barrier {
                    id,
                    kind: SnapshotKind::Savepoint.into(),
                    alignment: BarrierAlignment::Aligned,
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
                    if !self.completed_one {
                        self.completed_one = true;
                        tracing::info!(
                            checkpoint = id,
                            "checkpoint {id} completed, the first of this attempt: every task runs"
                        );
                    }
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
            CoordinatorAction::WriteMetadata {
                id,
                store,
                path,
                bytes,
                then_restore_pointer,
            } => {
                let result = effects::write_metadata(
                    store.resolve(&self.storage).as_ref(),
                    &path,
                    bytes,
                    then_restore_pointer
                        .as_ref()
                        .map(|stop| (self.storage.as_ref(), stop)),
                );
                for next in self.coordinator.on_metadata_written(id, result, now) {
                    self.dispatch(next, now);
                }
            }
            CoordinatorAction::Delete { id, store, what } => {
                effects::delete(store.resolve(&self.storage).as_ref(), id, &what)
            }
        }
    }

    fn send_to_sources(&self, command: TaskCommand) {
        for task in self.tasks.iter().filter(|t| t.is_source) {
            task.send(command);
        }
    }
}
