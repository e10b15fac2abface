//! One attempt of a checkpointed job, driven step by step from outside: the
//! runtime's half of whole-job deterministic simulation (the other half, the
//! seeded scheduler, the faults and the checker, is `crates/sim`).
//!
//! A [`SimulatedAttempt`] holds what a real attempt spreads over threads:
//! the tasks (as the planner builds them, on one worker), the queue of
//! snapshots waiting for an upload thread, the coordinator's queue of
//! events, and the coordinator with its driver. Nothing here runs unless
//! the caller says which [`Actor`] moves next, and nothing reads a clock
//! that decides anything: the coordinator is given the caller's virtual
//! [`Now`]. The code run is the production code: `upload_snapshot` is what
//! the upload threads run, `CoordinatorDriver` is what the coordinator's
//! thread runs, the tasks are the real tasks.
//!
//! Must not touch: scheduling policy or faults (the caller's), real time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Receiver;
use flowstate_checkpoint::Now;
use flowstate_checkpoint::restore::{LoadedCheckpoint, load_latest_of};
use flowstate_checkpoint::storage::SharedStorage;

use crate::channel::Signal;
use crate::config::{ExecutionConfig, Guarantee};
use crate::control::{JobController, JobDescription};
use crate::control_plane::{CoordinatorEvent, SavepointTargets, TaskEvent, UploadJob};
use crate::coordinator_driver::{CoordinatorDriver, Flow};
use crate::error::JobError;
use crate::executor::{
    COORDINATOR_QUEUE_CAPACITY, UPLOAD_QUEUE_CAPACITY, attempt_coordinator, step_guarded,
};
use crate::graph::JobGraph;
use crate::metrics::JobMetrics;
use crate::plan::{PlanCheckpointing, build_tasks};
use crate::supervisor::check_fallback;
use crate::task::{Step, Task};

/// Where a restarted attempt restores from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// The first attempt: nothing.
    Fresh,
    /// A restart in the same process: the job's latest checkpoint, as the
    /// supervisor loads it.
    AfterFailure,
    /// A new process after a crash: `--restore latest`.
    AfterCrash,
}

/// Loads what an attempt restores from, as the supervisor (or
/// `--restore latest`) would, refusing a fallback past damaged snapshots
/// that would publish output twice.
pub fn load_for_restart(
    config: &ExecutionConfig,
    graph: &JobGraph,
    job_id: &str,
    restart: Restart,
) -> Result<Option<Arc<LoadedCheckpoint>>, JobError> {
    let Some(c) = &config.checkpointing else {
        return Ok(None);
    };
    let loaded = match restart {
        Restart::Fresh => return Ok(None),
        Restart::AfterFailure => load_latest_of(&c.storage, Some(job_id))?,
        Restart::AfterCrash => load_latest_of(&c.storage, None)?,
    };
    if let Some(loaded) = &loaded {
        check_fallback(c, graph, loaded)?;
    }
    Ok(loaded.map(Arc::new))
}

/// What may move next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// Step task `i` (one bounded step, as a worker would).
    Task(usize),
    /// Run the `i`-th snapshot upload that is ready.
    Upload(usize),
    /// Hand the `i`-th queued event to the coordinator.
    Event(usize),
}

/// What a queued event is, for a caller that may lose or delay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Ack { id: u64 },
    Decline { id: u64 },
    Exhausted,
    Savepoint,
    Stop,
}

struct HeldUpload {
    job: UploadJob,
    /// Not run before this time (a hung upload).
    ready_at: Option<Instant>,
}

/// One attempt of a job with checkpoints, run by the caller's hand.
pub struct SimulatedAttempt {
    signal: Arc<Signal>,
    tasks: Vec<Box<dyn Task>>,
    finished: Vec<bool>,
    /// Tasks that reported idle since the last wake: not worth a step.
    idle: Vec<bool>,
    uploads_rx: Receiver<UploadJob>,
    uploads: Vec<HeldUpload>,
    events_rx: Receiver<CoordinatorEvent>,
    events: VecDeque<CoordinatorEvent>,
    driver: Option<CoordinatorDriver>,
    storage: SharedStorage,
    job_id: String,
    savepoint_targets: SavepointTargets,
    metrics: Arc<JobMetrics>,
    controller: Arc<JobController>,
    failure: Arc<Mutex<Option<String>>>,
}

impl SimulatedAttempt {
    /// Plans the job (restoring `restored`) and creates its coordinator, as
    /// a real attempt does, without starting anything.
    pub fn start(
        graph: &JobGraph,
        config: &ExecutionConfig,
        job_id: &str,
        restored: Option<Arc<LoadedCheckpoint>>,
        now: Now,
    ) -> Result<Self, JobError> {
        let c = config.checkpointing.as_ref().ok_or_else(|| {
            JobError::Checkpointing("a simulated attempt needs checkpointing".into())
        })?;
        let config = ExecutionConfig {
            workers: 1,
            ..config.clone()
        };
        let metrics = Arc::new(JobMetrics::default());
        let signal = Signal::new();
        let (events_tx, events_rx) = crossbeam_channel::bounded(COORDINATOR_QUEUE_CAPACITY);
        let (uploads_tx, uploads_rx) = crossbeam_channel::bounded(UPLOAD_QUEUE_CAPACITY);
        let allow_non_restored_state = c.allow_non_restored_state || restored.is_some();
        let plan = PlanCheckpointing {
            aligned: c.guarantee == Guarantee::ExactlyOnce,
            alignment: c.settings.alignment,
            events: events_tx.clone(),
            uploads: uploads_tx,
            restored: restored.clone(),
            job_id: job_id.to_owned(),
            allow_non_restored_state,
            // No read-ahead in simulations: at-most-once runs as at-least-once.
            reservations: None,
        };
        let (planned, handles) = build_tasks(
            graph,
            &config,
            &[Arc::clone(&signal)],
            &metrics,
            Some(&plan),
            0,
        )?;
        let handles: Vec<_> = handles.into_iter().map(|(_, handle)| handle).collect();
        drop(plan);
        let coordinator =
            attempt_coordinator(c, job_id, restored.as_deref(), handles.len(), &config, now);
        let controller = Arc::new(JobController::new(
            JobDescription {
                name: config.job_name.clone(),
                parallelism: config.parallelism,
                max_parallelism: config.max_parallelism,
                vertices: graph.describe(),
                checkpointing: true,
                periodic_checkpoints: c.settings.periodic(),
                savepoint_dir: c.savepoint_dir.clone(),
                savepoint_policy: config.savepoint_policy.clone(),
                checkpoint_config: Some(crate::control::CheckpointConfigView {
                    settings: c.settings.clone(),
                    exactly_once: c.guarantee == crate::config::Guarantee::ExactlyOnce,
                    storage: c.storage.describe(),
                }),
                state_backend: config.state_backend.kind().to_string(),
            },
            Arc::clone(&metrics),
            Box::new(|| {}),
        ));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let failing = Arc::clone(&failure);
        let savepoint_targets = SavepointTargets::default();
        let driver = CoordinatorDriver::new(
            coordinator,
            Arc::clone(&c.storage),
            handles,
            Arc::clone(&metrics),
            Arc::clone(&controller),
            savepoint_targets.clone(),
            Box::new(move |reason| {
                failing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(reason);
            }),
        );
        let tasks: Vec<Box<dyn Task>> = planned.into_iter().map(|p| p.task).collect();
        // Savepoint requests reach the coordinator's queue as in a real
        // attempt: through the job controller.
        controller.on_attempt_started(
            tasks.iter().map(|t| t.name().to_owned()).collect(),
            Some(events_tx),
        );
        Ok(Self {
            signal,
            finished: vec![false; tasks.len()],
            idle: vec![false; tasks.len()],
            tasks,
            uploads_rx,
            uploads: Vec::new(),
            events_rx,
            events: VecDeque::new(),
            driver: Some(driver),
            storage: Arc::clone(&c.storage),
            job_id: job_id.to_owned(),
            savepoint_targets,
            metrics,
            controller,
            failure,
        })
    }

    /// The attempt's job controller: what the HTTP API would call (e.g.
    /// `trigger_savepoint`, `stopped_with_savepoint`).
    pub fn controller(&self) -> &Arc<JobController> {
        &self.controller
    }

    /// Takes what tasks and uploads sent into the attempt's own queues.
    fn collect(&mut self) {
        while let Ok(job) = self.uploads_rx.try_recv() {
            self.uploads.push(HeldUpload {
                job,
                ready_at: None,
            });
        }
        while let Ok(event) = self.events_rx.try_recv() {
            self.events.push_back(event);
        }
        if self.signal.take_woken() {
            self.idle.iter_mut().for_each(|i| *i = false);
        }
    }

    /// Everything that can move at `now`, in a fixed order.
    pub fn actors(&mut self, now: Now) -> Vec<Actor> {
        self.collect();
        let mut actors = Vec::new();
        for (i, (&finished, &idle)) in self.finished.iter().zip(&self.idle).enumerate() {
            if !finished && !idle {
                actors.push(Actor::Task(i));
            }
        }
        for (i, upload) in self.uploads.iter().enumerate() {
            if upload.ready_at.is_none_or(|at| at <= now.instant) {
                actors.push(Actor::Upload(i));
            }
        }
        actors.extend((0..self.events.len()).map(Actor::Event));
        actors
    }

    pub fn task_name(&self, task: usize) -> &str {
        self.tasks.get(task).map_or("", |t| t.name())
    }

    /// One step of task `task`; an error is the task's failure (the caller
    /// ends the attempt).
    pub fn step_task(&mut self, task: usize) -> Result<(), JobError> {
        let Some(t) = self.tasks.get_mut(task) else {
            return Ok(());
        };
        let step = step_guarded(t.as_mut())?;
        if self.signal.take_woken() {
            self.idle.iter_mut().for_each(|i| *i = false);
        }
        match step {
            Step::Progress => self.idle.iter_mut().for_each(|i| *i = false),
            Step::Finished => {
                self.finished[task] = true;
                self.idle.iter_mut().for_each(|i| *i = false);
            }
            // A source waiting for time is stepped again next time round.
            Step::Idle { wake_at: Some(_) } => {}
            Step::Idle { wake_at: None } => self.idle[task] = true,
        }
        Ok(())
    }

    /// Runs upload `index` (as an upload thread would) and queues its answer.
    pub fn run_upload(&mut self, index: usize) {
        if index >= self.uploads.len() {
            return;
        }
        let held = self.uploads.remove(index);
        let event = crate::upload::upload_snapshot(
            held.job,
            &self.storage,
            &self.job_id,
            &self.savepoint_targets,
        );
        self.events.push_back(CoordinatorEvent::Task(event));
    }

    /// Upload `index` hangs: it runs no earlier than `until`.
    pub fn hold_upload(&mut self, index: usize, until: Instant) {
        if let Some(upload) = self.uploads.get_mut(index) {
            upload.ready_at = Some(until);
        }
    }

    pub fn event_kind(&self, index: usize) -> EventKind {
        match self.events.get(index) {
            Some(CoordinatorEvent::Task(TaskEvent::Ack(ack))) => EventKind::Ack { id: ack.id },
            Some(CoordinatorEvent::Task(TaskEvent::Decline { id, .. })) => {
                EventKind::Decline { id: *id }
            }
            Some(CoordinatorEvent::Task(TaskEvent::Exhausted { .. })) => EventKind::Exhausted,
            Some(CoordinatorEvent::Savepoint(_) | CoordinatorEvent::StopWithCheckpoint) => {
                EventKind::Savepoint
            }
            Some(CoordinatorEvent::Stop) | None => EventKind::Stop,
        }
    }

    /// Hands event `index` to the coordinator at `now`.
    pub fn deliver_event(&mut self, index: usize, now: Now) {
        let Some(event) = self.events.remove(index) else {
            return;
        };
        if let Some(driver) = self.driver.as_mut()
            && driver.on_event(event, now) == Flow::Stop
        {
            self.finish_coordinator(now);
        }
    }

    /// Event `index` is lost on its way.
    pub fn lose_event(&mut self, index: usize) {
        self.events.remove(index);
    }

    /// Lets the coordinator look at the time.
    pub fn tick(&mut self, now: Now) {
        if let Some(driver) = self.driver.as_mut() {
            driver.tick(now);
        }
    }

    /// When the coordinator next wants to be ticked, or a held upload
    /// becomes ready.
    pub fn next_wakeup(&self, now: Now) -> Option<Instant> {
        let coordinator = self.driver.as_ref().and_then(|d| d.next_wakeup(now));
        let upload = self.uploads.iter().filter_map(|u| u.ready_at).min();
        match (coordinator, upload) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every task finished.
    pub fn finished(&self) -> bool {
        self.finished.iter().all(|&f| f)
    }

    /// Why the coordinator failed the job (too many failed checkpoints).
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checkpoints completed in this attempt.
    pub fn completed_checkpoints(&self) -> u64 {
        self.metrics.checkpoints().completed
    }

    fn finish_coordinator(&mut self, now: Now) {
        if let Some(driver) = self.driver.take() {
            driver.stop(now);
        }
    }

    /// Ends the attempt in order, as a failed or finished attempt ends:
    /// tasks are dropped (their destructors run), the coordinator aborts
    /// what is in flight. Returns the checkpoints it completed.
    pub fn stop(mut self, now: Now) -> u64 {
        let completed = self.completed_checkpoints();
        self.tasks.clear();
        self.uploads.clear();
        self.finish_coordinator(now);
        completed
    }

    /// The process dies: nothing more runs and no destructor does either
    /// (in-progress files stay as a killed process leaves them).
    pub fn crash(self) {
        std::mem::forget(self);
    }
}
