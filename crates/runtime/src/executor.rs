//! Executors: worker threads for real runs, a seeded single-threaded scheduler for
//! reproducible tests.
//!
//! A worker steps each of its tasks in turn; when none made progress it parks
//! until a channel wakes it (or a source's `wake_at` passes). A task error or
//! panic fails the job: the first failure is kept, every worker stops, and the
//! job's result names the task and the operator.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::channel::Signal;
use crate::config::ExecutionConfig;
use crate::error::{JobError, TaskError, panic_message};
use crate::graph::JobGraph;
use crate::metrics::JobMetrics;
use crate::plan::{PlannedTask, build_tasks};
use crate::task::{Step, Task};

/// Longest a worker parks without a wakeup before it looks at its tasks again.
/// Wakeups come from channels; this only bounds the cost of a missed one.
pub const IDLE_PARK_MAX: Duration = Duration::from_millis(50);

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub duration: Duration,
    pub records_in: u64,
    pub records_to_sinks: u64,
}

struct Shared {
    cancelled: AtomicBool,
    failure: Mutex<Option<JobError>>,
    signals: Vec<Arc<Signal>>,
}

impl Shared {
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
}

/// A job running on worker threads.
pub struct RunningJob {
    metrics: Arc<JobMetrics>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    started: Instant,
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

fn worker_loop(mut tasks: Vec<Box<dyn Task>>, signal: Arc<Signal>, shared: Arc<Shared>) {
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
            match step_guarded(task.as_mut()) {
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

/// Plans `graph` and starts it on `config.workers` threads.
pub fn start_job(graph: JobGraph, config: &ExecutionConfig) -> Result<RunningJob, JobError> {
    let metrics = Arc::new(JobMetrics::default());
    let signals: Vec<Arc<Signal>> = (0..config.workers).map(|_| Signal::new()).collect();
    let planned = build_tasks(&graph, config, &signals, &metrics)?;
    drop(graph);
    let mut per_worker: Vec<Vec<Box<dyn Task>>> = (0..config.workers).map(|_| Vec::new()).collect();
    for PlannedTask { worker, task } in planned {
        per_worker[worker].push(task);
    }
    let shared = Arc::new(Shared {
        cancelled: AtomicBool::new(false),
        failure: Mutex::new(None),
        signals: signals.clone(),
    });
    let started = Instant::now();
    let mut workers = Vec::with_capacity(config.workers);
    for (index, tasks) in per_worker.into_iter().enumerate() {
        let signal = Arc::clone(&signals[index]);
        let shared_for_worker = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("flowstate-worker-{index}"))
            .spawn(move || worker_loop(tasks, signal, shared_for_worker));
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                shared.fail(JobError::Spawn(e));
                break;
            }
        }
    }
    Ok(RunningJob {
        metrics,
        shared,
        workers,
        started,
    })
}

impl RunningJob {
    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    /// Asks every worker to stop; `join` then returns [`JobError::Cancelled`].
    pub fn cancel(&self) {
        self.shared.fail(JobError::Cancelled);
    }

    /// True when every worker has stopped.
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Waits for the job to end.
    pub fn join(self) -> Result<JobReport, JobError> {
        for worker in self.workers {
            if let Err(payload) = worker.join() {
                self.shared.fail(JobError::TaskFailed {
                    task: "worker".into(),
                    source: TaskError::Panic {
                        operator: "worker".into(),
                        message: panic_message(payload.as_ref()),
                    },
                });
            }
        }
        let failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match failure {
            Some(error) => Err(error),
            None => Ok(JobReport {
                duration: self.started.elapsed(),
                records_in: self.metrics.records_in(),
                records_to_sinks: self.metrics.records_to_sinks(),
            }),
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
pub struct DeterministicExecutor {
    tasks: Vec<Box<dyn Task>>,
    finished: Vec<bool>,
    rng: fastrand::Rng,
    metrics: Arc<JobMetrics>,
    started: Instant,
}

impl DeterministicExecutor {
    pub fn new(graph: JobGraph, config: &ExecutionConfig, seed: u64) -> Result<Self, JobError> {
        let metrics = Arc::new(JobMetrics::default());
        let signals = vec![Signal::new(); 1];
        let config = ExecutionConfig {
            workers: 1,
            ..config.clone()
        };
        let tasks: Vec<Box<dyn Task>> = build_tasks(&graph, &config, &signals, &metrics)?
            .into_iter()
            .map(|p| p.task)
            .collect();
        Ok(Self {
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
            match step_guarded(self.tasks[i].as_mut())? {
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
            }),
            RunState::Quiescent => Err(JobError::Stalled),
        }
    }
}
