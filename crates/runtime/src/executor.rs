//! Executors: worker threads for real runs, a seeded single-threaded scheduler for
//! reproducible tests.
//!
//! A worker steps each of its tasks in turn; when none made progress it parks
//! until a channel wakes it (or a `wake_at` passes: a throttled source, a
//! processing-time timer). A task error or panic fails the attempt: the first
//! failure is kept and every worker stops.
//! With checkpoints on, the supervisor (`supervisor`) then restarts the job from
//! its latest completed checkpoint (restart strategy); otherwise the job fails
//! with a message naming the task and the operator. Cancel is bounded: a task
//! blocked inside a step never sees the cancel flag, so once the cancellation
//! timeout has passed `RunningJob::join` returns, naming the tasks still in a
//! step.
//!
//! Owns: one attempt ([`run_attempt`]: its plan, worker threads, and with
//! checkpoints the upload threads and the coordinator's thread), the
//! [`Cancellation`] across attempts, [`RunningJob`] and [`DeterministicExecutor`].
//! Must not touch: what happens between attempts (restore, restarts, pointers:
//! `supervisor`), the coordinator's decisions, or how snapshots are written.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowstate_checkpoint::restore::LoadedCheckpoint;
use flowstate_checkpoint::{CheckpointStats, Coordinator, ExistingCheckpoints};

use crate::channel::Signal;
use crate::config::{CheckpointingConfig, ExecutionConfig, Guarantee};
use crate::control::JobController;
use crate::control_plane::{
    CoordinatorEvent, SavepointTargets, TaskCommand, TaskEvent, TaskHandle,
};
use crate::coordinator_driver::{CoordinatorDriver, RemoteSavepoints};
use crate::error::{BuildError, JobError, TaskError, panic_message};
use crate::graph::JobGraph;
use crate::metrics::{JobMetrics, SAMPLE_INTERVAL, StepClock, Waiting};
use crate::plan::{PlanCheckpointing, PlannedTask, build_tasks};
use crate::reservation::AttemptReservations;
use crate::task::{Step, Task};
use crate::upload::upload_loop;

/// Longest a worker parks without a wakeup before it looks at its tasks again.
/// Wakeups come from channels; this only bounds the cost of a missed one.
pub const IDLE_PARK_MAX: Duration = Duration::from_millis(50);

/// Longest single wait of the supervisor's restart delay (it waits again
/// until the delay has passed or the job is cancelled).
const RESTART_WAIT_SLICE: Duration = Duration::from_secs(24 * 3600);

/// Capacity of the queue from tasks and uploaders to the coordinator.
pub const COORDINATOR_QUEUE_CAPACITY: usize = 4096;
/// Capacity of the queue of snapshots waiting for an upload thread.
pub const UPLOAD_QUEUE_CAPACITY: usize = 1024;

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub duration: Duration,
    pub records_in: u64,
    pub records_to_sinks: u64,
    /// The job's id in checkpoint storage (with checkpoints on).
    pub job_id: Option<String>,
    /// Completed checkpoints of the last attempt: the newest ones only (the
    /// coordinator keeps a bounded window); `completed_checkpoints` counts all.
    pub checkpoints: Vec<CheckpointStats>,
    /// Checkpoints completed over the job's life (all attempts).
    pub completed_checkpoints: u64,
    pub failed_checkpoints: u64,
    pub restarts: u64,
    /// The checkpoint the job started from, if any.
    pub restored_from: Option<u64>,
    /// The savepoint a stop ended the job with (stop-with-savepoint).
    pub stopped_with_savepoint: Option<String>,
}

/// What one worker thread is doing: read only to name the tasks of a job that
/// does not stop when cancelled.
struct WorkerWatch {
    /// The worker's tasks, by index.
    tasks: Vec<String>,
    /// The index of the task in a step, [`WorkerWatch::BETWEEN_STEPS`] otherwise.
    stepping: AtomicUsize,
    ended: AtomicBool,
}

impl WorkerWatch {
    const BETWEEN_STEPS: usize = usize::MAX;
}

/// Marks its worker ended when dropped, so a worker that panics counts too.
struct WorkerEnded(Arc<WorkerWatch>);

impl Drop for WorkerEnded {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::SeqCst);
    }
}

/// One attempt's failure flag and worker wakeups.
pub(crate) struct Shared {
    cancelled: AtomicBool,
    failure: Mutex<Option<JobError>>,
    signals: Vec<Arc<Signal>>,
    /// One per worker thread, once they are started.
    watches: Mutex<Vec<Arc<WorkerWatch>>>,
}

impl Shared {
    fn new(signals: Vec<Arc<Signal>>) -> Self {
        Self {
            cancelled: AtomicBool::new(false),
            failure: Mutex::new(None),
            signals,
            watches: Mutex::new(Vec::new()),
        }
    }

    /// The tasks of workers that have not ended: the one in a step, or the
    /// worker itself between steps.
    fn still_running(&self) -> Vec<String> {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let mut running = Vec::new();
        for (index, watch) in watches.iter().enumerate() {
            if watch.ended.load(Ordering::SeqCst) {
                continue;
            }
            let stepping = watch.stepping.load(Ordering::Relaxed);
            running.push(match watch.tasks.get(stepping) {
                Some(task) => format!("task '{task}'"),
                None => format!("worker {index}"),
            });
        }
        running
    }

    pub(crate) fn fail(&self, error: JobError) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some(error);
        }
        drop(failure);
        self.cancelled.store(true, Ordering::SeqCst);
        for signal in &self.signals {
            signal.wake();
        }
    }

    /// The attempt's failure, taken, if it failed or was cancelled.
    pub(crate) fn failure_or_cancel(&self) -> Option<JobError> {
        if !self.cancelled.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.take_failure().unwrap_or(JobError::Cancelled))
    }

    fn take_failure(&self) -> Option<JobError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The cancellation of a job, across its attempts: the switch that
/// `RunningJob::cancel`, the controller's cancel and a lost lease turn, the
/// attempt it stops, and what `RunningJob::join` waits on.
#[derive(Default)]
pub(crate) struct Cancellation {
    cancelled: AtomicBool,
    current: Mutex<Option<Arc<Shared>>>,
    /// When cancel was first asked for, and whether the supervisor has ended:
    /// what `RunningJob::join` waits on (`changed`).
    ending: Mutex<Ending>,
    changed: Condvar,
}

#[derive(Default)]
struct Ending {
    cancel_requested: Option<Instant>,
    supervisor_ended: bool,
}

impl Cancellation {
    /// Sleeps `delay` (a restart's), or less if the job is cancelled
    /// meanwhile: `cancel` notifies `changed` once it recorded the request.
    /// True when cancelled.
    pub(crate) fn sleep_unless_cancelled(&self, delay: Duration) -> bool {
        // A delay too long to add to `now` is as good as forever.
        let deadline = Instant::now().checked_add(delay);
        let mut ending = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if ending.cancel_requested.is_some() || self.cancelled.load(Ordering::SeqCst) {
                return true;
            }
            // Waits in slices of at most a day: some platforms' timed waits
            // cannot take any `Duration`, and the loop looks again anyway.
            let left = match deadline {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => RESTART_WAIT_SLICE,
            }
            .min(RESTART_WAIT_SLICE);
            if left.is_zero() {
                return false;
            }
            ending = self
                .changed
                .wait_timeout(ending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the job was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The supervisor ended, however it ended: `join` may return.
    pub(crate) fn supervisor_ended(&self) {
        let mut ending = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        ending.supervisor_ended = true;
        drop(ending);
        self.changed.notify_all();
    }

    /// The failure flag of a new attempt (what `cancel` fails from now on),
    /// waking `signals` when it is set.
    pub(crate) fn begin_attempt(&self, signals: Vec<Arc<Signal>>) -> Arc<Shared> {
        let shared = Arc::new(Shared::new(signals));
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&shared));
        shared
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let mut ending = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        ending.cancel_requested.get_or_insert_with(Instant::now);
        drop(ending);
        self.changed.notify_all();
        if let Some(shared) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            shared.fail(JobError::Cancelled);
        }
    }
}

/// A job running on worker threads.
pub struct RunningJob {
    metrics: Arc<JobMetrics>,
    control: Arc<Cancellation>,
    controller: Arc<JobController>,
    supervisor: JoinHandle<Result<JobReport, JobError>>,
    cancellation_timeout: Duration,
}

pub(crate) fn step_guarded(task: &mut dyn Task) -> Result<Step, JobError> {
    match catch_unwind(AssertUnwindSafe(|| task.step())) {
        Ok(Ok(step)) => Ok(step),
        Ok(Err(source)) => Err(JobError::TaskFailed {
            task: task.name().to_owned(),
            source,
        }),
        Err(payload) => Err(JobError::TaskFailed {
            task: task.name().to_owned(),
            source: TaskError::Panic {
                operator: task.name().to_owned(),
                message: panic_message(payload.as_ref()),
            },
        }),
    }
}

fn worker_loop(
    mut tasks: Vec<Box<dyn Task>>,
    signal: Arc<Signal>,
    shared: Arc<Shared>,
    watch: Arc<WorkerWatch>,
) {
    let _ended = WorkerEnded(Arc::clone(&watch));
    signal.bind_current();
    let mut finished = vec![false; tasks.len()];
    let mut remaining = tasks.len();
    // Time accounting: one clock reading per step, the end of a step being
    // the start of the next (see `StepClock`).
    let mut now = Instant::now();
    let mut clocks: Vec<Option<StepClock>> = tasks
        .iter()
        .map(|t| t.metrics().map(|m| StepClock::new(Arc::clone(m), now)))
        .collect();
    let mut next_sample = now + SAMPLE_INTERVAL;
    while remaining > 0 && !shared.cancelled.load(Ordering::Relaxed) {
        let mut progressed = false;
        let mut wake_at: Option<Instant> = None;
        for (i, task) in tasks.iter_mut().enumerate() {
            if finished[i] {
                continue;
            }
            // Once per step, not per record: a plain store.
            watch.stepping.store(i, Ordering::Relaxed);
            let step = step_guarded(task.as_mut());
            watch
                .stepping
                .store(WorkerWatch::BETWEEN_STEPS, Ordering::Relaxed);
            let started = now;
            now = Instant::now();
            let waiting = match step {
                Ok(Step::Idle { .. }) => Some(task.waiting().unwrap_or(Waiting::Input)),
                Ok(Step::Progress) => task.waiting(),
                _ => None,
            };
            if let Some(clock) = &mut clocks[i] {
                clock.account(started, now, waiting);
            }
            match step {
                Ok(Step::Progress) => progressed = true,
                Ok(Step::Idle { wake_at: Some(at) }) => {
                    wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                }
                Ok(Step::Idle { wake_at: None }) => {}
                Ok(Step::Finished) => {
                    finished[i] = true;
                    remaining -= 1;
                    progressed = true;
                    // Its last gauges, and its time up to its end.
                    task.sample_metrics();
                    if let Some(clock) = &mut clocks[i] {
                        clock.sample(now);
                    }
                    clocks[i] = None;
                }
                Err(error) => {
                    shared.fail(error);
                    return;
                }
            }
        }
        if now >= next_sample {
            // About once a second: gauges that cost a look, and rates.
            for (i, task) in tasks.iter_mut().enumerate() {
                if let Some(clock) = &mut clocks[i] {
                    task.sample_metrics();
                    clock.sample(now);
                }
            }
            now = Instant::now();
            next_sample = now + SAMPLE_INTERVAL;
        }
        if !progressed {
            let park = match wake_at {
                Some(at) => at
                    .saturating_duration_since(Instant::now())
                    .min(IDLE_PARK_MAX),
                None => IDLE_PARK_MAX,
            };
            std::thread::park_timeout(park);
            // The park counts as what each task waits for, not as a step.
            now = Instant::now();
        }
    }
    for (task, clock) in tasks.iter_mut().zip(&mut clocks) {
        if let Some(clock) = clock {
            task.sample_metrics();
            clock.sample(Instant::now());
        }
    }
}

pub(crate) fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, JobError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(JobError::Spawn)
}

/// What an attempt's coordinator is given besides the checkpointing
/// configuration.
pub(crate) struct CoordinatorParts<'a> {
    /// Every task of the attempt, by task number.
    pub handles: Vec<TaskHandle>,
    pub metrics: &'a Arc<JobMetrics>,
    pub controller: &'a Arc<JobController>,
    pub savepoint_targets: SavepointTargets,
    /// The attempt, failed when checkpoints fail too often.
    pub shared: &'a Arc<Shared>,
    /// Tasks in other processes: how they learn where a savepoint goes.
    pub remote_savepoints: Option<RemoteSavepoints>,
}

/// Starts the attempt's checkpoint coordinator (restored as `c` says) on a
/// thread of its own, reading `events`; it returns the checkpoints' figures.
/// One place for a job in one process and a job manager's attempt.
pub(crate) fn spawn_coordinator(
    c: &AttemptCheckpointing<'_>,
    config: &ExecutionConfig,
    parts: CoordinatorParts<'_>,
    events: crossbeam_channel::Receiver<CoordinatorEvent>,
) -> Result<JoinHandle<Vec<CheckpointStats>>, JobError> {
    let coordinator = attempt_coordinator(
        c.config,
        c.job_id,
        c.restored.as_deref(),
        parts.handles.len(),
        config,
        flowstate_checkpoint::Now::system(),
    );
    let failing = Arc::clone(parts.shared);
    let mut driver = CoordinatorDriver::new(
        coordinator,
        Arc::clone(&c.config.storage),
        parts.handles,
        Arc::clone(parts.metrics),
        Arc::clone(parts.controller),
        parts.savepoint_targets,
        Box::new(move |reason| failing.fail(JobError::Checkpointing(reason))),
    );
    if let Some(announce) = parts.remote_savepoints {
        driver = driver.with_remote_savepoints(announce);
    }
    spawn("flowstate-coordinator".into(), move || {
        flowstate_checkpoint::background::mark_current_thread();
        driver.run(events)
    })
}

/// What one attempt needs to know about checkpoints.
pub(crate) struct AttemptCheckpointing<'a> {
    pub config: &'a CheckpointingConfig,
    pub job_id: &'a str,
    pub restored: Option<Arc<LoadedCheckpoint>>,
    /// A restart of the job restores from its own checkpoints: every
    /// operator was there when they were taken.
    pub allow_non_restored_state: bool,
    /// At-most-once: the sources resume from the job's newest read-ahead
    /// reservations (see [`crate::reservation`]).
    pub resume_reservations: bool,
}

/// How one attempt ended.
pub(crate) struct AttemptOutcome {
    pub result: Result<(), JobError>,
    pub checkpoints: Vec<CheckpointStats>,
}

/// The coordinator of one attempt: it continues the restored checkpoint's
/// ids and adopts what earlier runs left in the job's directory (read here:
/// the coordinator reads nothing). Shared by real and simulated attempts.
pub(crate) fn attempt_coordinator(
    c: &CheckpointingConfig,
    job_id: &str,
    restored: Option<&LoadedCheckpoint>,
    tasks: usize,
    config: &ExecutionConfig,
    now: flowstate_checkpoint::Now,
) -> Coordinator {
    // Newer checkpoints of this job the restore proved damaged are deleted;
    // ones it skipped for another reason are left alone.
    let damaged: std::collections::BTreeSet<u64> = restored
        .iter()
        .flat_map(|r| &r.skipped)
        .filter(|s| s.damaged && !s.pointer && s.job == job_id)
        .map(|s| s.checkpoint_id)
        .collect();
    // A job without checkpoints owns no directory to read.
    let restored_id = restored.map(|r| r.id());
    let existing = if c.settings.periodic() {
        ExistingCheckpoints::read(c.storage.as_ref(), job_id, restored_id)
    } else {
        ExistingCheckpoints::default()
    };
    Coordinator::after_restore(
        job_id,
        c.settings.clone(),
        tasks,
        config.parallelism,
        config.max_parallelism,
        restored_id,
        existing,
        &damaged,
        now,
    )
    .with_job(flowstate_checkpoint::JobSection::new(
        &config.job_name,
        config.job_parameters.clone(),
    ))
}

/// Runs the job once: workers, and with checkpoints the coordinator and the
/// upload threads.
pub(crate) fn run_attempt(
    graph: &JobGraph,
    config: &ExecutionConfig,
    metrics: &Arc<JobMetrics>,
    control: &Cancellation,
    controller: &Arc<JobController>,
    checkpointing: Option<AttemptCheckpointing<'_>>,
    attempt: u32,
) -> AttemptOutcome {
    let outcome = run_attempt_tasks(
        graph,
        config,
        metrics,
        control,
        controller,
        checkpointing,
        attempt,
        CoordinatorSite::Here,
    );
    // Channels through a transport: its first failure explains the closed
    // channel a task failed on, and the attempt's channels go with it.
    match &config.network {
        Some(network) => {
            let failure = network.transport.failure(attempt);
            network.transport.end_attempt(attempt);
            let result = match (outcome.result, failure) {
                (Err(JobError::Cancelled), _) => Err(JobError::Cancelled),
                (_, Some(failure)) => Err(JobError::Network(failure)),
                (result, None) => result,
            };
            AttemptOutcome {
                result,
                checkpoints: outcome.checkpoints,
            }
        }
        None => outcome,
    }
}

/// Where the coordinator of an attempt runs.
pub(crate) enum CoordinatorSite<'a> {
    /// In this process: a driver thread over every task's handle.
    Here,
    /// In the job manager (this is a task manager's part of the attempt):
    /// the tasks' events go up through `uplink`, and `started` is given the
    /// part's control once its tasks are built.
    Elsewhere {
        uplink: TaskEventSink,
        started: &'a (dyn Fn(PartControl) + Sync),
    },
}

/// Where a task manager sends its tasks' events (the control connection to
/// the job manager; it must not block).
pub type TaskEventSink = Arc<dyn Fn(TaskEvent) + Send + Sync>;

/// A task manager's hold on its running part of an attempt: the commands the
/// job manager sends its tasks, and cancellation.
#[derive(Clone)]
pub struct PartControl {
    handles: Arc<HashMap<usize, TaskHandle>>,
    shared: Arc<Shared>,
    /// Where this part's uploaders find savepoints' directories.
    savepoint_targets: SavepointTargets,
    metrics: Arc<JobMetrics>,
}

impl PartControl {
    /// Delivers `command` to task `task` (its number in the plan); false if
    /// no task of that number runs here.
    pub fn command(&self, task: usize, command: TaskCommand) -> bool {
        match self.handles.get(&task) {
            Some(handle) => {
                handle.send(command);
                true
            }
            None => false,
        }
    }

    /// `(records read by the part's sources, records handed to its sinks)`
    /// since it started.
    pub fn records(&self) -> (u64, u64) {
        (self.metrics.records_in(), self.metrics.records_to_sinks())
    }

    /// Savepoint `id`'s files go to `storage` (the job manager said so ahead
    /// of its barrier).
    pub fn savepoint_target(&self, id: u64, storage: flowstate_checkpoint::storage::SharedStorage) {
        self.savepoint_targets.insert(id, storage);
    }

    /// Cancels the part (another part of the attempt failed, or the job ends).
    pub fn cancel(&self) {
        self.shared.fail(JobError::Cancelled);
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_attempt_tasks(
    graph: &JobGraph,
    config: &ExecutionConfig,
    metrics: &Arc<JobMetrics>,
    control: &Cancellation,
    controller: &Arc<JobController>,
    checkpointing: Option<AttemptCheckpointing<'_>>,
    attempt: u32,
    site: CoordinatorSite<'_>,
) -> AttemptOutcome {
    let remote_coordinator = matches!(site, CoordinatorSite::Elsewhere { .. });
    let fail = |e: JobError| AttemptOutcome {
        result: Err(e),
        checkpoints: Vec::new(),
    };
    let signals: Vec<Arc<Signal>> = (0..config.workers).map(|_| Signal::new()).collect();
    let shared = control.begin_attempt(signals.clone());
    if control.is_cancelled() {
        return fail(JobError::Cancelled);
    }

    // At-most-once: this attempt's read-ahead reservations, and the positions
    // it resumes from. Another mode deletes what an at-most-once run left.
    // (The job manager owns reservations: a task manager's part has none.)
    let reservations = match checkpointing
        .as_ref()
        .filter(|c| c.config.settings.periodic() && !remote_coordinator)
    {
        Some(c) if c.config.guarantee == Guarantee::AtMostOnce => {
            match AttemptReservations::prepare(
                Arc::clone(&c.config.storage),
                c.job_id,
                config.parallelism,
                c.restored.as_ref().map(|r| r.id()),
                c.resume_reservations,
            ) {
                Ok(r) => Some(r),
                Err(e) => return fail(e),
            }
        }
        Some(c) => match crate::reservation::clear(&c.config.storage, c.job_id) {
            Ok(()) => None,
            Err(e) => return fail(e),
        },
        None => None,
    };
    // Stops the reservation writer however the attempt ends.
    let _writer = reservations.as_ref().map(|r| r.stop_guard());
    let (events_tx, events_rx) = crossbeam_channel::bounded(COORDINATOR_QUEUE_CAPACITY);
    let (uploads_tx, uploads_rx) = crossbeam_channel::bounded(UPLOAD_QUEUE_CAPACITY);
    let plan_checkpointing = checkpointing.as_ref().map(|c| PlanCheckpointing {
        aligned: c.config.guarantee == Guarantee::ExactlyOnce,
        alignment: c.config.settings.alignment,
        events: events_tx.clone(),
        uploads: uploads_tx.clone(),
        restored: c.restored.clone(),
        job_id: c.job_id.to_owned(),
        allow_non_restored_state: c.allow_non_restored_state,
        reservations: reservations.clone(),
    });
    let planning = Instant::now();
    let planned = build_tasks(
        graph,
        config,
        &signals,
        metrics,
        plan_checkpointing.as_ref(),
        attempt,
    );
    if let Some(r) = checkpointing.as_ref().and_then(|c| c.restored.as_ref()) {
        tracing::info!(
            checkpoint = r.id(),
            ms = planning.elapsed().as_secs_f64() * 1e3,
            "state of checkpoint {} loaded into the operators",
            r.id()
        );
    }
    drop(plan_checkpointing);
    drop(uploads_tx);
    let (planned, numbered_handles) = match planned {
        Ok(planned) => planned,
        Err(e) => return fail(e.into()),
    };
    // Every source instance's initial position is durable, and the epoch
    // marked, before any task runs.
    if let Some(r) = &reservations
        && let Err(e) = r.begin()
    {
        return fail(e);
    }

    let mut uploaders = Vec::new();
    let mut coordinator_thread = None;
    let mut task_names: Vec<String> = Vec::new();
    let mut handles = Vec::new();
    for (number, handle) in numbered_handles {
        task_names.push(handle.name.clone());
        handles.push((number, handle));
    }
    let savepoint_targets = SavepointTargets::default();
    if let Some(c) = &checkpointing {
        for index in 0..config.workers.max(1) {
            let (jobs, storage, job_id, events, targets) = (
                uploads_rx.clone(),
                Arc::clone(&c.config.storage),
                c.job_id.to_owned(),
                events_tx.clone(),
                savepoint_targets.clone(),
            );
            match spawn(format!("flowstate-upload-{index}"), move || {
                upload_loop(jobs, storage, job_id, events, targets)
            }) {
                Ok(handle) => uploaders.push(handle),
                Err(e) => return fail(e),
            }
        }
        match &site {
            CoordinatorSite::Here => {
                // Every task is built here: numbers are positions.
                debug_assert!(handles.iter().enumerate().all(|(i, (n, _))| i == *n));
                let handles: Vec<TaskHandle> = handles.drain(..).map(|(_, h)| h).collect();
                let site = CoordinatorParts {
                    handles,
                    metrics,
                    controller,
                    savepoint_targets: savepoint_targets.clone(),
                    shared: &shared,
                    remote_savepoints: None,
                };
                match spawn_coordinator(c, config, site, events_rx) {
                    Ok(handle) => coordinator_thread = Some(handle),
                    Err(e) => return fail(e),
                }
            }
            CoordinatorSite::Elsewhere { uplink, .. } => {
                // The tasks' and uploaders' events go up to the job
                // manager's coordinator, in order; `Stop` ends the forwarder.
                let uplink = Arc::clone(uplink);
                match spawn("flowstate-uplink".into(), move || {
                    while let Ok(event) = events_rx.recv() {
                        if matches!(event, CoordinatorEvent::Stop) {
                            break;
                        }
                        if let CoordinatorEvent::Task(event) = event {
                            uplink(event);
                        }
                    }
                    Vec::new()
                }) {
                    Ok(handle) => coordinator_thread = Some(handle),
                    Err(e) => return fail(e),
                }
            }
        }
    }
    if let CoordinatorSite::Elsewhere { started, .. } = &site {
        started(PartControl {
            handles: Arc::new(handles.drain(..).collect()),
            shared: Arc::clone(&shared),
            savepoint_targets,
            metrics: Arc::clone(metrics),
        });
    }
    drop(uploads_rx);
    controller.on_attempt_started(
        task_names,
        checkpointing.as_ref().map(|_| events_tx.clone()),
    );

    let mut per_worker: Vec<Vec<Box<dyn Task>>> = (0..config.workers).map(|_| Vec::new()).collect();
    for PlannedTask { worker, task } in planned {
        per_worker[worker].push(task);
    }
    let watches: Vec<Arc<WorkerWatch>> = per_worker
        .iter()
        .map(|tasks| {
            Arc::new(WorkerWatch {
                tasks: tasks.iter().map(|t| t.name().to_owned()).collect(),
                stepping: AtomicUsize::new(WorkerWatch::BETWEEN_STEPS),
                ended: AtomicBool::new(false),
            })
        })
        .collect();
    *shared.watches.lock().unwrap_or_else(|e| e.into_inner()) = watches.clone();
    let mut workers = Vec::with_capacity(config.workers);
    for ((index, tasks), watch) in per_worker.into_iter().enumerate().zip(watches) {
        let (signal, worker_shared) = (Arc::clone(&signals[index]), Arc::clone(&shared));
        match spawn(format!("flowstate-worker-{index}"), move || {
            worker_loop(tasks, signal, worker_shared, watch)
        }) {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                shared.fail(e);
                break;
            }
        }
    }
    for worker in workers {
        if let Err(payload) = worker.join() {
            shared.fail(JobError::TaskFailed {
                task: "worker".into(),
                source: TaskError::Panic {
                    operator: "worker".into(),
                    message: panic_message(payload.as_ref()),
                },
            });
        }
    }
    // Tasks are gone, so are the upload queue's senders: uploaders finish what
    // they hold, then the coordinator stops (aborting what is still in flight).
    for uploader in uploaders {
        let _ = uploader.join();
    }
    let _ = events_tx.send(CoordinatorEvent::Stop);
    let checkpoints = coordinator_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    AttemptOutcome {
        result: shared.take_failure().map_or(Ok(()), Err),
        checkpoints,
    }
}

impl RunningJob {
    /// A job whose supervisor thread is `supervisor`.
    pub(crate) fn new(
        metrics: Arc<JobMetrics>,
        control: Arc<Cancellation>,
        controller: Arc<JobController>,
        supervisor: JoinHandle<Result<JobReport, JobError>>,
        cancellation_timeout: Duration,
    ) -> Self {
        Self {
            metrics,
            control,
            controller,
            supervisor,
            cancellation_timeout,
        }
    }

    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    /// Asks every worker to stop; `join` then returns [`JobError::Cancelled`].
    pub fn cancel(&self) {
        self.control.cancel();
    }

    /// The job's control surface (status, history, savepoints, stop, cancel).
    pub fn controller(&self) -> &Arc<JobController> {
        &self.controller
    }

    /// True when the job has ended.
    pub fn is_finished(&self) -> bool {
        self.supervisor.is_finished()
    }

    /// Waits for the job to end. Once it was cancelled, waits at most the
    /// cancellation timeout ([`ExecutionConfig::cancellation_timeout`]) more:
    /// a task blocked where it cannot see the cancel flag then makes this
    /// return [`JobError::CancelTimeout`] naming it, and its thread is left
    /// behind (the end of the process ends it).
    pub fn join(self) -> Result<JobReport, JobError> {
        let mut ending = self
            .control
            .ending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while !ending.supervisor_ended {
            ending = match ending.cancel_requested {
                None => self
                    .control
                    .changed
                    .wait(ending)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    let left =
                        (at + self.cancellation_timeout).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        drop(ending);
                        return Err(self.cancel_timed_out());
                    }
                    self.control
                        .changed
                        .wait_timeout(ending, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        drop(ending);
        match self.supervisor.join() {
            Ok(result) => result,
            Err(payload) => Err(JobError::TaskFailed {
                task: "supervisor".into(),
                source: TaskError::Panic {
                    operator: "supervisor".into(),
                    message: panic_message(payload.as_ref()),
                },
            }),
        }
    }

    /// The error of a job that did not stop within the cancellation timeout.
    fn cancel_timed_out(&self) -> JobError {
        let current = self
            .control
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut running = current.map(|s| s.still_running()).unwrap_or_default();
        if running.is_empty() {
            // Every worker ended: the supervisor waits for checkpoint storage
            // (an upload, the coordinator) or between restarts.
            running.push("the job's supervisor".to_owned());
        }
        JobError::CancelTimeout {
            timeout: self.cancellation_timeout,
            running,
        }
    }
}

/// Where a deterministic run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Every task finished.
    Finished,
    /// No runnable task can make progress (e.g. every path leads to a paused task).
    Quiescent,
}

/// Runs every task of a job on the calling thread, choosing the next task to step
/// with a seeded random generator: the same seed gives the same interleaving.
/// (Checkpoints need the coordinator's and uploaders' threads: not here.)
pub struct DeterministicExecutor {
    signal: Arc<Signal>,
    tasks: Vec<Box<dyn Task>>,
    finished: Vec<bool>,
    rng: fastrand::Rng,
    metrics: Arc<JobMetrics>,
    started: Instant,
}

impl DeterministicExecutor {
    pub fn new(graph: JobGraph, config: &ExecutionConfig, seed: u64) -> Result<Self, JobError> {
        let metrics = Arc::new(JobMetrics::default());
        let signal = Signal::new();
        let config = ExecutionConfig {
            workers: 1,
            checkpointing: None,
            // Batches cut by real time would make the run depend on the
            // machine's speed; a clock moved by the caller keeps the timeout.
            buffer_timeout_ms: config
                .buffer_timeout_ms
                .filter(|_| !config.clock.is_wall_clock()),
            ..config.clone()
        };
        if config.network.is_some() {
            return Err(BuildError::Config(
                "the deterministic executor runs every subtask in one process, without a transport"
                    .into(),
            )
            .into());
        }
        let (planned, _) = build_tasks(&graph, &config, &[Arc::clone(&signal)], &metrics, None, 0)?;
        let tasks: Vec<Box<dyn Task>> = planned.into_iter().map(|p| p.task).collect();
        Ok(Self {
            signal,
            finished: vec![false; tasks.len()],
            tasks,
            rng: fastrand::Rng::with_seed(seed),
            metrics,
            started: Instant::now(),
        })
    }

    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name().to_owned()).collect()
    }

    /// Steps random runnable tasks (those not finished and not `paused`) until all
    /// finished or none can progress. A task waiting for an instant (a throttled
    /// source, a processing-time timer on the system clock) is slept for once
    /// nothing else can move; one waiting on a `ManualClock` makes the run
    /// quiescent: move the clock and run again.
    pub fn run_until_quiescent(
        &mut self,
        paused: &dyn Fn(&str) -> bool,
    ) -> Result<RunState, JobError> {
        let runnable: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| !paused(self.tasks[i].name()))
            .collect();
        let mut idle = vec![false; self.tasks.len()];
        // When each idle task wants to be stepped again at the latest (a
        // throttled source, a processing-time timer on the system clock).
        let mut wake_at: Vec<Option<Instant>> = vec![None; self.tasks.len()];
        loop {
            let candidates: Vec<usize> = runnable
                .iter()
                .copied()
                .filter(|&i| !self.finished[i])
                .collect();
            if self.finished.iter().all(|&f| f) {
                return Ok(RunState::Finished);
            }
            if candidates.is_empty() {
                return Ok(RunState::Quiescent);
            }
            if candidates.iter().all(|&i| idle[i]) {
                // Time is all that is left to wait for, if anything.
                let Some(at) = candidates.iter().filter_map(|&i| wake_at[i]).min() else {
                    return Ok(RunState::Quiescent);
                };
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                idle.iter_mut().for_each(|f| *f = false);
                continue;
            }
            let i = candidates[self.rng.usize(..candidates.len())];
            let step = step_guarded(self.tasks[i].as_mut())?;
            // A step that sent or took a message may have made others runnable
            // even if it reports itself idle: they must be looked at again.
            let woke_others = self.signal.take_woken();
            if woke_others {
                idle.iter_mut().for_each(|f| *f = false);
            }
            match step {
                Step::Progress => idle.iter_mut().for_each(|f| *f = false),
                Step::Finished => {
                    self.finished[i] = true;
                    idle.iter_mut().for_each(|f| *f = false);
                }
                Step::Idle { wake_at: at } => {
                    // Waiting for time (`at`) or for a message: the others
                    // run first; it sleeps only when nothing else can move.
                    idle[i] = true;
                    wake_at[i] = at;
                }
            }
        }
    }

    /// Runs the job to the end.
    pub fn run(&mut self) -> Result<JobReport, JobError> {
        match self.run_until_quiescent(&|_| false)? {
            RunState::Finished => Ok(JobReport {
                duration: self.started.elapsed(),
                records_in: self.metrics.records_in(),
                records_to_sinks: self.metrics.records_to_sinks(),
                job_id: None,
                checkpoints: Vec::new(),
                completed_checkpoints: 0,
                failed_checkpoints: 0,
                restarts: 0,
                restored_from: None,
                stopped_with_savepoint: None,
            }),
            RunState::Quiescent => Err(JobError::Stalled),
        }
    }
}
