//! Executors: worker threads for real runs, a seeded single-threaded scheduler for
//! reproducible tests.
//!
//! A worker steps each of its tasks in turn; when none made progress it parks
//! until a channel wakes it (or a source's `wake_at` passes). A task error or
//! panic fails the attempt: the first failure is kept and every worker stops.
//! With checkpoints on, a supervisor then restarts the job from its latest
//! completed checkpoint (restart strategy); otherwise the job fails with a
//! message naming the task and the operator. Cancel is bounded: a task blocked
//! inside a step never sees the cancel flag, so once the cancellation timeout
//! has passed `RunningJob::join` returns, naming the tasks still in a step.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowstate_checkpoint::coordinator::unix_ms_now;
use flowstate_checkpoint::restore::{
    LoadedCheckpoint, RestorePointer, load, load_latest_of, open_snapshot, write_restore_pointer,
};
use flowstate_checkpoint::{CheckpointStats, Coordinator};

use crate::channel::Signal;
use crate::checkpointing::{CoordinatorEvent, CoordinatorLoop, SavepointTargets, upload_loop};
use crate::config::{CheckpointingConfig, ExecutionConfig, Guarantee, RestoreFrom};
use crate::control::{JobController, JobDescription, JobStatus};
use crate::error::{JobError, TaskError, error_chain, panic_message};
use crate::graph::JobGraph;
use crate::lease::{HeldLease, newer_than_restored};
use crate::metrics::JobMetrics;
use crate::plan::{PlanCheckpointing, PlannedTask, build_tasks};
use crate::restart::{Decision, RestartPolicy, restartable};
use crate::task::{Step, Task};

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
struct Shared {
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

    fn fail(&self, error: JobError) {
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

    fn take_failure(&self) -> Option<JobError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Cancellation across attempts.
#[derive(Default)]
struct JobControl {
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

impl JobControl {
    /// Sleeps `delay` (a restart's), or less if the job is cancelled
    /// meanwhile: `cancel` notifies `changed` once it recorded the request.
    /// True when cancelled.
    fn sleep_unless_cancelled(&self, delay: Duration) -> bool {
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

    fn cancel(&self) {
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
    control: Arc<JobControl>,
    controller: Arc<JobController>,
    supervisor: JoinHandle<Result<JobReport, JobError>>,
    cancellation_timeout: Duration,
}

fn step_guarded(task: &mut dyn Task) -> Result<Step, JobError> {
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
                }
                Err(error) => {
                    shared.fail(error);
                    return;
                }
            }
        }
        if !progressed {
            let park = match wake_at {
                Some(at) => at
                    .saturating_duration_since(Instant::now())
                    .min(IDLE_PARK_MAX),
                None => IDLE_PARK_MAX,
            };
            std::thread::park_timeout(park);
        }
    }
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, JobError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(JobError::Spawn)
}

/// What one attempt needs to know about checkpoints.
struct AttemptCheckpointing<'a> {
    config: &'a CheckpointingConfig,
    job_id: &'a str,
    restored: Option<Arc<LoadedCheckpoint>>,
    /// A restart of the job restores from its own checkpoints: every
    /// operator was there when they were taken.
    allow_non_restored_state: bool,
}

struct AttemptOutcome {
    result: Result<(), JobError>,
    checkpoints: Vec<CheckpointStats>,
}

/// Runs the job once: workers, and with checkpoints the coordinator and the
/// upload threads.
fn run_attempt(
    graph: &JobGraph,
    config: &ExecutionConfig,
    metrics: &Arc<JobMetrics>,
    control: &JobControl,
    controller: &Arc<JobController>,
    checkpointing: Option<AttemptCheckpointing<'_>>,
) -> AttemptOutcome {
    let fail = |e: JobError| AttemptOutcome {
        result: Err(e),
        checkpoints: Vec::new(),
    };
    let signals: Vec<Arc<Signal>> = (0..config.workers).map(|_| Signal::new()).collect();
    let shared = Arc::new(Shared::new(signals.clone()));
    *control.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&shared));
    if control.cancelled.load(Ordering::SeqCst) {
        return fail(JobError::Cancelled);
    }

    let (events_tx, events_rx) = crossbeam_channel::bounded(COORDINATOR_QUEUE_CAPACITY);
    let (uploads_tx, uploads_rx) = crossbeam_channel::bounded(UPLOAD_QUEUE_CAPACITY);
    let plan_checkpointing = checkpointing.as_ref().map(|c| PlanCheckpointing {
        aligned: c.config.guarantee == Guarantee::ExactlyOnce,
        events: events_tx.clone(),
        uploads: uploads_tx.clone(),
        restored: c.restored.clone(),
        job_id: c.job_id.to_owned(),
        allow_non_restored_state: c.allow_non_restored_state,
    });
    let planning = Instant::now();
    let planned = build_tasks(
        graph,
        config,
        &signals,
        metrics,
        plan_checkpointing.as_ref(),
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
    let (planned, handles) = match planned {
        Ok(planned) => planned,
        Err(e) => return fail(e.into()),
    };

    let mut uploaders = Vec::new();
    let mut coordinator_thread = None;
    let task_names: Vec<String> = handles.iter().map(|h| h.name.clone()).collect();
    if let Some(c) = &checkpointing {
        let savepoint_targets = SavepointTargets::default();
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
        // Newer checkpoints of this job the restore proved damaged are
        // deleted; ones it skipped for another reason are left alone.
        let damaged: std::collections::BTreeSet<u64> = c
            .restored
            .iter()
            .flat_map(|r| &r.skipped)
            .filter(|s| s.damaged && !s.pointer && s.job == c.job_id)
            .map(|s| s.checkpoint_id)
            .collect();
        let coordinator = Coordinator::after_restore(
            Arc::clone(&c.config.storage),
            c.job_id,
            c.config.settings.clone(),
            handles.len(),
            config.parallelism,
            config.max_parallelism,
            c.restored.as_ref().map(|r| r.id()),
            &damaged,
            flowstate_checkpoint::Now::system(),
        );
        let failing = Arc::clone(&shared);
        let looped = CoordinatorLoop {
            coordinator,
            events: events_rx,
            tasks: handles,
            metrics: Arc::clone(metrics),
            controller: Arc::clone(controller),
            savepoint_targets,
            fail: Box::new(move |reason| failing.fail(JobError::Checkpointing(reason))),
        };
        match spawn("flowstate-coordinator".into(), move || looped.run()) {
            Ok(handle) => coordinator_thread = Some(handle),
            Err(e) => return fail(e),
        }
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

fn generated_job_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("job-{millis:x}-{:x}", std::process::id())
}

/// Runs attempts until one succeeds or the restart strategy gives up.
fn supervise(
    graph: JobGraph,
    config: ExecutionConfig,
    metrics: Arc<JobMetrics>,
    control: Arc<JobControl>,
    controller: Arc<JobController>,
) -> Result<JobReport, JobError> {
    let mut lease = None;
    let result = supervise_attempts(&graph, &config, &metrics, &control, &controller, &mut lease);
    // A job that lost its lease ends with that, whatever its attempt ended
    // with (cancelled by the loss, or finished after it); the lease is
    // released before the job's end is reported.
    let result = match lease.as_ref().and_then(HeldLease::lost) {
        Some(lost) => Err(lost),
        None => result,
    };
    // Still holding the lease: a stop-with-savepoint committed output beyond
    // the job's newest checkpoint, so the savepoint is now what `--restore
    // latest` must resume from.
    if let (Ok(report), Some(_), Some(c)) = (&result, &lease, &config.checkpointing)
        && let (Some(job_id), Some(location)) = (
            report.job_id.as_deref(),
            controller.stopped_with_savepoint(),
        )
    {
        record_stop_pointer(c, job_id, &location);
    }
    drop(lease);
    let (status, failure) = match &result {
        Ok(_) => (JobStatus::Finished, None),
        Err(JobError::Cancelled) => (JobStatus::Cancelled, None),
        Err(e) => (JobStatus::Failed, Some(e.to_string())),
    };
    controller.on_attempt_ended(status, failure);
    result.map(|mut report| {
        report.stopped_with_savepoint = controller.stopped_with_savepoint();
        report
    })
}

/// A job that starts from a snapshot that is not one of its own checkpoints
/// records where it came from, so that `--restore latest` resumes from that
/// snapshot until the job's first checkpoint exists (see
/// [`flowstate_checkpoint::restore::RestorePointer`]). A failure to write it
/// only narrows what `--restore latest` can find: logged, not fatal.
fn record_restore_pointer(c: &CheckpointingConfig, job_id: &str, restored: &LoadedCheckpoint) {
    let (storage_path, location) = match &c.restore {
        RestoreFrom::Nothing | RestoreFrom::Latest => return,
        RestoreFrom::Path(_) => (Some(restored.metadata_path.clone()), None),
        RestoreFrom::Location(location) => {
            let location = if !flowstate_checkpoint::Location::parse(location).is_plain_path() {
                location.clone()
            } else {
                std::path::absolute(location)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| location.clone())
            };
            (None, Some(location))
        }
    };
    let pointer = RestorePointer {
        storage_path,
        location,
        checkpoint_id: restored.id(),
        created_unix_ms: unix_ms_now(),
    };
    if let Err(e) = write_restore_pointer(c.storage.as_ref(), job_id, &pointer) {
        tracing::warn!(
            "cannot record where job {job_id} was restored from ({e}); until its first \
             checkpoint, --restore latest will not find that snapshot"
        );
    }
}

/// A job stopped with a savepoint published its sinks' output up to that
/// savepoint, beyond its newest checkpoint: resuming the job from that
/// checkpoint would publish the difference again. So the job's restore pointer
/// now names the savepoint, and being newer than every checkpoint of the job,
/// `--restore latest` takes it first. A failure to write it is logged (the
/// savepoint itself is complete; the user can restore it by its path).
fn record_stop_pointer(c: &CheckpointingConfig, job_id: &str, location: &str) {
    let checkpoint_id = match open_snapshot(location).and_then(|opened| {
        flowstate_checkpoint::read_metadata(opened.storage.as_ref(), &opened.metadata_path)
    }) {
        Ok(metadata) => metadata.checkpoint_id,
        Err(e) => {
            tracing::warn!(
                "cannot read the stop's savepoint {location} back ({e}); --restore latest \
                 will not resume from it: restore it by its path"
            );
            return;
        }
    };
    let pointer = RestorePointer {
        storage_path: None,
        location: Some(location.to_owned()),
        checkpoint_id,
        created_unix_ms: unix_ms_now(),
    };
    match write_restore_pointer(c.storage.as_ref(), job_id, &pointer) {
        Ok(()) => tracing::info!(
            "job {job_id} stopped with savepoint {location}: --restore latest resumes from it"
        ),
        Err(e) => tracing::warn!(
            "cannot record the stop's savepoint of job {job_id} ({e}); --restore latest \
             would resume from an older checkpoint and publish output again: restore \
             {location} by its path"
        ),
    }
}

/// `--restore latest` (or a restart) fell back past newer snapshots that
/// could not be loaded. Exactly-once output forbids it when the job has sinks
/// that publish on checkpoint completion: what the skipped snapshots
/// published would be published again. Unless the user accepted that, the
/// job fails naming the damaged snapshot.
fn check_fallback(
    c: &CheckpointingConfig,
    graph: &JobGraph,
    loaded: &LoadedCheckpoint,
) -> Result<(), JobError> {
    let Some(newest) = loaded.skipped.first() else {
        return Ok(());
    };
    let sinks = graph.committing_sinks();
    if sinks.is_empty() {
        return Ok(());
    }
    let refuse = c.guarantee == Guarantee::ExactlyOnce && !c.allow_fallback_duplicates;
    if refuse {
        return Err(JobError::FallbackRefused {
            newest: newest.path.clone(),
            reason: newest.reason.clone(),
            fallback: loaded.metadata_path.clone(),
            sinks: sinks.join(", "),
        });
    }
    tracing::warn!(
        "restoring {} although {} newer snapshot(s) could not be loaded (newest: {}): \
         output that sink(s) {} published after it will be published again",
        loaded.metadata_path,
        loaded.skipped.len(),
        newest.path,
        sinks.join(", ")
    );
    Ok(())
}

/// Loads what `restore` names.
fn load_restore(
    c: &CheckpointingConfig,
    graph: &JobGraph,
) -> Result<Option<(Arc<LoadedCheckpoint>, String)>, JobError> {
    Ok(match &c.restore {
        RestoreFrom::Nothing => None,
        RestoreFrom::Latest => match load_latest_of(&c.storage, None)? {
            Some(l) => {
                check_fallback(c, graph, &l)?;
                let shown = format!("{} in {}", l.metadata_path, c.storage.describe());
                Some((Arc::new(l), shown))
            }
            None => None,
        },
        RestoreFrom::Path(path) => {
            let loaded = load(&c.storage, path)?;
            let shown = format!("{} in {}", loaded.metadata_path, c.storage.describe());
            Some((Arc::new(loaded), shown))
        }
        RestoreFrom::Location(location) => {
            let opened = open_snapshot(location)?;
            let loaded = load(&opened.storage, &opened.metadata_path)?;
            Some((Arc::new(loaded), location.clone()))
        }
    })
}

fn supervise_attempts(
    graph: &JobGraph,
    config: &ExecutionConfig,
    metrics: &Arc<JobMetrics>,
    control: &Arc<JobControl>,
    controller: &Arc<JobController>,
    lease: &mut Option<HeldLease>,
) -> Result<JobReport, JobError> {
    let started = Instant::now();
    let checkpointing = config.checkpointing.clone();
    let mut restored: Option<Arc<LoadedCheckpoint>> = None;
    let mut job_id = None;
    if let Some(c) = &checkpointing {
        let loading = Instant::now();
        restored = match load_restore(c, graph)? {
            Some((loaded, shown)) => {
                controller.set_restored_from(shown);
                Some(loaded)
            }
            None => None,
        };
        if let Some(r) = &restored {
            tracing::info!(
                checkpoint = r.id(),
                bytes = r.metadata.state_bytes(),
                ms = loading.elapsed().as_secs_f64() * 1e3,
                "read and verified {}",
                r.metadata_path
            );
        }
        job_id = Some(match (&c.job_id, &restored, &c.restore) {
            (Some(id), _, _) => id.clone(),
            // Resuming after a crash continues the same job: its checkpoints, ids
            // and retention carry on.
            (None, Some(r), RestoreFrom::Latest) => r.continues_job.clone(),
            _ => generated_job_id(),
        });
        if let Some(id) = &job_id {
            controller.set_job_id(id);
            tracing::info!(job_id = id.as_str(), "job {} starting", config.job_name);
        }
        // A job without checkpoints writes nothing to its directory in the
        // checkpoint storage (its savepoints go to their own): it holds no
        // lease there and leaves no restore pointer.
        if let Some(id) = job_id.as_ref().filter(|_| c.settings.periodic()) {
            // One run per job: held before anything writes to the job's
            // directory (the restore pointer; a coordinator adopting and
            // deleting checkpoints), across restarts, until `supervise`
            // releases it. Losing it cancels the job.
            let cancelling = Arc::clone(control);
            *lease = Some(HeldLease::acquire(
                &c.storage,
                id,
                &config.lease,
                Box::new(move || cancelling.cancel()),
            )?);
            if c.restore == RestoreFrom::Latest
                && let Some(r) = &restored
                && let Some(newer) = newer_than_restored(&c.storage, id, r)?
            {
                tracing::info!(
                    "checkpoint {newer} of job {id} completed while this run was starting: \
                     reading the job's latest checkpoint again"
                );
                if let Some(l) = load_latest_of(&c.storage, Some(id))? {
                    check_fallback(c, graph, &l)?;
                    tracing::info!(checkpoint = l.id(), "read and verified {}", l.metadata_path);
                    controller.set_restored_from(format!(
                        "{} in {}",
                        l.metadata_path,
                        c.storage.describe()
                    ));
                    restored = Some(Arc::new(l));
                }
            }
            if let Some(r) = &restored {
                record_restore_pointer(c, id, r);
            }
        }
    }
    if job_id.is_none() {
        // Without checkpoints the id names the job only for its controller.
        let id = generated_job_id();
        controller.set_job_id(&id);
        tracing::info!(job_id = id.as_str(), "job {} starting", config.job_name);
    }
    let mut allow_non_restored_state = checkpointing
        .as_ref()
        .is_some_and(|c| c.allow_non_restored_state);
    let restored_from = restored.as_ref().map(|r| r.id());
    let mut restarts = 0u64;
    // Every restart decision (whether, and after how long) is the policy's;
    // this loop only tells it when attempts start and fail, and sleeps.
    let mut policy = checkpointing
        .as_ref()
        .map(|c| RestartPolicy::new(c.restart.clone(), fastrand::u64(..)));
    loop {
        let attempt = checkpointing
            .as_ref()
            .zip(job_id.as_deref())
            .map(|(c, id)| AttemptCheckpointing {
                config: c,
                job_id: id,
                restored: restored.clone(),
                allow_non_restored_state,
            });
        if let Some(policy) = policy.as_mut() {
            policy.on_running(Instant::now());
        }
        let outcome = run_attempt(graph, config, metrics, control, controller, attempt);
        let failed_checkpoints = metrics.checkpoints().failed;
        let completed_checkpoints = metrics.checkpoints().completed;
        match outcome.result {
            Ok(()) => {
                return Ok(JobReport {
                    duration: started.elapsed(),
                    records_in: metrics.records_in(),
                    records_to_sinks: metrics.records_to_sinks(),
                    job_id,
                    checkpoints: outcome.checkpoints,
                    completed_checkpoints,
                    failed_checkpoints,
                    restarts,
                    restored_from,
                    stopped_with_savepoint: None,
                });
            }
            Err(error) => {
                // A failed attempt, or a failed load of the checkpoint to
                // restart from, goes through the restart strategy.
                let mut error = error;
                loop {
                    // Without checkpoints there is nothing to restart from:
                    // a replay from the start would publish twice what the
                    // sinks published at `finish` or at a stop's savepoint.
                    let Some((c, policy)) = checkpointing
                        .as_ref()
                        .filter(|c| c.settings.periodic() && restartable(&error, restarts > 0))
                        .zip(policy.as_mut())
                    else {
                        return Err(error);
                    };
                    if control.cancelled.load(Ordering::SeqCst) {
                        return Err(JobError::Cancelled);
                    }
                    let cause = error_chain(&error);
                    let delay = match policy.on_failure(Instant::now()) {
                        Decision::RestartAfter(delay) => delay,
                        Decision::GiveUp(reason) => {
                            tracing::warn!(
                                "job failed ({cause}); not restarted ({} restart strategy: {reason})",
                                c.restart.name()
                            );
                            return Err(error);
                        }
                    };
                    restarts += 1;
                    metrics.record_restart();
                    controller.on_attempt_ended(JobStatus::Restarting, Some(cause.clone()));
                    tracing::warn!(
                        "job failed ({cause}); {} in {delay:?}",
                        policy.describe_restart()
                    );
                    if control.sleep_unless_cancelled(delay) {
                        return Err(JobError::Cancelled);
                    }
                    match load_latest_of(&c.storage, job_id.as_deref()) {
                        Ok(own) => {
                            if let Some(own) = &own {
                                check_fallback(c, graph, own)?;
                            }
                            // The job's own checkpoints hold only operators it has.
                            allow_non_restored_state |= own.is_some();
                            restored = own.map(Arc::new).or(restored);
                            break;
                        }
                        Err(e) => error = JobError::Restore(e),
                    }
                }
            }
        }
    }
}

/// Plans `graph` and starts it on `config.workers` threads.
pub fn start_job(graph: JobGraph, config: &ExecutionConfig) -> Result<RunningJob, JobError> {
    config.validate()?;
    let metrics = Arc::new(JobMetrics::default());
    let control = Arc::new(JobControl::default());
    let description = JobDescription {
        name: config.job_name.clone(),
        parallelism: config.parallelism,
        max_parallelism: config.max_parallelism,
        vertices: graph.describe(),
        checkpointing: config.checkpointing.is_some(),
        savepoint_dir: config
            .checkpointing
            .as_ref()
            .and_then(|c| c.savepoint_dir.clone()),
        savepoint_policy: config.savepoint_policy.clone(),
    };
    let cancelling = Arc::clone(&control);
    let controller = Arc::new(JobController::new(
        description,
        Arc::clone(&metrics),
        Box::new(move || cancelling.cancel()),
    ));
    let (config, supervisor_metrics, supervisor_control, supervisor_controller) = (
        config.clone(),
        Arc::clone(&metrics),
        Arc::clone(&control),
        Arc::clone(&controller),
    );
    let cancellation_timeout = config.cancellation_timeout;
    let supervisor = spawn("flowstate-supervisor".into(), move || {
        /// Tells `join` the supervisor ended, however it ended.
        struct Ended(Arc<JobControl>);
        impl Drop for Ended {
            fn drop(&mut self) {
                let mut ending = self.0.ending.lock().unwrap_or_else(|e| e.into_inner());
                ending.supervisor_ended = true;
                drop(ending);
                self.0.changed.notify_all();
            }
        }
        let _ended = Ended(Arc::clone(&supervisor_control));
        supervise(
            graph,
            config,
            supervisor_metrics,
            supervisor_control,
            supervisor_controller,
        )
    })?;
    Ok(RunningJob {
        metrics,
        control,
        controller,
        supervisor,
        cancellation_timeout,
    })
}

impl RunningJob {
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
            ..config.clone()
        };
        let (planned, _) = build_tasks(&graph, &config, &[Arc::clone(&signal)], &metrics, None)?;
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
    /// finished or none can progress.
    pub fn run_until_quiescent(
        &mut self,
        paused: &dyn Fn(&str) -> bool,
    ) -> Result<RunState, JobError> {
        let runnable: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| !paused(self.tasks[i].name()))
            .collect();
        let mut idle = vec![false; self.tasks.len()];
        loop {
            let candidates: Vec<usize> = runnable
                .iter()
                .copied()
                .filter(|&i| !self.finished[i])
                .collect();
            if self.finished.iter().all(|&f| f) {
                return Ok(RunState::Finished);
            }
            if candidates.is_empty() || candidates.iter().all(|&i| idle[i]) {
                return Ok(RunState::Quiescent);
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
                Step::Idle { wake_at } => {
                    if let Some(at) = wake_at {
                        // A throttled source: time is the only thing it waits for.
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        idle.iter_mut().for_each(|f| *f = false);
                    } else {
                        idle[i] = true;
                    }
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
