//! Attempts whose tasks run in other processes: the job manager's side (the
//! checkpoint coordinator over remote task handles, and a [`Cluster`] that
//! deploys the attempt on task managers and reports what they say) and a
//! task manager's side ([`run_task_manager_part`]: this process's subtasks of
//! an attempt, its tasks' events sent up, commands delivered down).
//!
//! Every process builds the same plan: tasks are named by their number in it
//! (`plan::task_list`), channels by their ids; a task manager builds only the
//! subtasks its [`crate::NetworkPlacement`] puts in its process. The
//! coordinator is the same state machine as in one process, given remote
//! [`TaskHandle`]s; it learns nothing new.
//!
//! Owns: the [`Cluster`] trait (what the job manager needs of the processes
//! and the control connections, implemented by `flowstate-cluster`),
//! [`RestoreRef`], the job manager's attempt ([`run_cluster_attempt`]) and a
//! task manager's part ([`run_task_manager_part`]). Must not touch: sockets,
//! processes, the control protocol's bytes (the cluster crate's), or restart
//! decisions (the supervisor's).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_checkpoint::restore::{LoadedCheckpoint, load, open_snapshot};

use crate::config::ExecutionConfig;
use crate::control::JobController;
use crate::control_plane::{
    CoordinatorEvent, SavepointTargets, TaskCommand, TaskEvent, TaskHandle,
};
use crate::error::JobError;
use crate::executor::{
    AttemptCheckpointing, AttemptOutcome, Cancellation, CoordinatorParts, CoordinatorSite,
    PartControl, TaskEventSink, run_attempt_tasks, spawn_coordinator,
};
use crate::graph::JobGraph;
use crate::metrics::JobMetrics;
use crate::plan::task_list;

/// Longest the job manager waits for the task managers' parts to end once
/// it cancelled an attempt, before it goes on (a task manager that does not
/// answer is lost, and a lost one restarts anyway).
const CANCEL_WAIT_MAX: Duration = Duration::from_secs(30);

/// How often the job manager's attempt loop looks at cancellation when the
/// cluster is silent.
const EVENT_WAIT: Duration = Duration::from_millis(50);

/// The snapshot a task manager restores, in terms it can open itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RestoreRef {
    /// A checkpoint in the job's checkpoint storage (which every process is
    /// configured with): its metadata's path there.
    JobStorage { metadata_path: String },
    /// A snapshot somewhere else (a savepoint to start from): its location,
    /// as `flowstate_checkpoint::restore::open_snapshot` takes it.
    Location { location: String },
}

impl RestoreRef {
    /// Loads and verifies the snapshot (`storage`: the job's checkpoint storage).
    pub fn load(
        &self,
        storage: &flowstate_checkpoint::storage::SharedStorage,
    ) -> Result<LoadedCheckpoint, JobError> {
        match self {
            RestoreRef::JobStorage { metadata_path } => {
                load(storage, metadata_path).map_err(JobError::Restore)
            }
            RestoreRef::Location { location } => {
                let opened = open_snapshot(location).map_err(JobError::Restore)?;
                load(&opened.storage, &opened.metadata_path).map_err(JobError::Restore)
            }
        }
    }
}

/// One attempt as the job manager asks the cluster to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptDeployment {
    pub attempt: u32,
    pub job_id: String,
    pub restore: Option<RestoreRef>,
}

/// What happened in the cluster.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    /// A task of `attempt` acknowledged or declined a checkpoint, or a
    /// source's input ended.
    Task { attempt: u32, event: TaskEvent },
    /// Process `process`'s part of `attempt` ended (`failure`: why it failed).
    PartEnded {
        attempt: u32,
        process: u32,
        failure: Option<String>,
    },
    /// The control connection of process `process` was lost (the process
    /// died, hangs, or the network failed).
    Lost { process: u32, cause: String },
    /// Process `process`'s part of `attempt` has counted this many records
    /// read by its sources and handed to its sinks (since the part started).
    Progress {
        attempt: u32,
        process: u32,
        records_in: u64,
        records_to_sinks: u64,
    },
}

/// The processes that run a job's tasks, as the job manager uses them.
/// Every method must return promptly except `deploy`, which may wait for
/// task managers to register (bounded by its own timeout).
pub trait Cluster: Send + Sync {
    /// Runs `deployment` on the task managers; returns the processes that
    /// run a part of it (each ends with exactly one `PartEnded` or `Lost`).
    fn deploy(&self, deployment: &AttemptDeployment) -> Result<Vec<u32>, String>;
    /// Sends `command` to task `task` (its number in the plan) of `attempt`.
    fn command(&self, attempt: u32, task: usize, command: TaskCommand);
    /// Tells every part of `attempt` that savepoint `id` goes to `location`
    /// (sent before its barrier's trigger, in order with it).
    fn savepoint_target(&self, attempt: u32, id: u64, location: &str);
    /// Cancels every part of `attempt`.
    fn cancel(&self, attempt: u32);
    /// The next event, waiting at most `timeout`.
    fn next_event(&self, timeout: Duration) -> Option<ClusterEvent>;
}

/// Runs attempt `attempt` of a job whose tasks run on `cluster`: the
/// coordinator here, the tasks there. Ends when every part ended (the job
/// finished), or at the first failure, after cancelling the other parts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_cluster_attempt(
    graph: &JobGraph,
    config: &ExecutionConfig,
    metrics: &Arc<JobMetrics>,
    control: &Cancellation,
    controller: &Arc<JobController>,
    checkpointing: Option<AttemptCheckpointing<'_>>,
    attempt: u32,
    cluster: &Arc<dyn Cluster>,
) -> AttemptOutcome {
    let fail = |e: JobError| AttemptOutcome {
        result: Err(e),
        checkpoints: Vec::new(),
    };
    let shared = control.begin_attempt(Vec::new());
    if control.is_cancelled() {
        return fail(JobError::Cancelled);
    }
    let tasks = task_list(graph, config);
    let (events_tx, events_rx) =
        crossbeam_channel::bounded(crate::executor::COORDINATOR_QUEUE_CAPACITY);
    let mut coordinator_thread = None;
    if let Some(c) = &checkpointing {
        let handles: Vec<TaskHandle> = tasks
            .iter()
            .enumerate()
            .map(|(number, task)| {
                let cluster = Arc::clone(cluster);
                TaskHandle::remote(
                    task.name.clone(),
                    task.is_source,
                    Arc::new(move |command| cluster.command(attempt, number, command)),
                )
            })
            .collect();
        let announcing = Arc::clone(cluster);
        let parts = CoordinatorParts {
            handles,
            metrics,
            controller,
            savepoint_targets: SavepointTargets::default(),
            shared: &shared,
            remote_savepoints: Some(Box::new(move |id, location| {
                announcing.savepoint_target(attempt, id, location)
            })),
        };
        match spawn_coordinator(c, config, parts, events_rx) {
            Ok(handle) => coordinator_thread = Some(handle),
            Err(e) => return fail(e),
        }
    }
    controller.on_attempt_started(
        tasks.iter().map(|t| t.name.clone()).collect(),
        checkpointing.as_ref().map(|_| events_tx.clone()),
    );
    let restore = checkpointing
        .as_ref()
        .and_then(|c| c.restored.as_ref().map(|r| restore_ref(c, r)));
    let deployment = AttemptDeployment {
        attempt,
        job_id: checkpointing
            .as_ref()
            .map_or_else(|| "local".to_owned(), |c| c.job_id.to_owned()),
        restore,
    };
    let result = match cluster.deploy(&deployment) {
        Ok(parts) => follow_attempt(attempt, &parts, cluster, &shared, &events_tx, metrics),
        Err(cause) => Err(JobError::Deploy(cause)),
    };
    let _ = events_tx.send(crate::control_plane::CoordinatorEvent::Stop);
    let checkpoints = coordinator_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    AttemptOutcome {
        result,
        checkpoints,
    }
}

/// How the job manager names the snapshot an attempt restores to its task
/// managers: a checkpoint of the job's storage by its path there; anything
/// else (a savepoint the job started from, named by `--restore` or found
/// through the job's restore pointer) by its storage's URL (a storage's
/// description is its URL: `file:///dir`, `s3://bucket/prefix`) and path.
fn restore_ref(c: &AttemptCheckpointing<'_>, restored: &LoadedCheckpoint) -> RestoreRef {
    if Arc::ptr_eq(restored.storage(), &c.config.storage) {
        return RestoreRef::JobStorage {
            metadata_path: restored.metadata_path.clone(),
        };
    }
    RestoreRef::Location {
        location: format!(
            "{}/{}",
            restored.storage().describe().trim_end_matches('/'),
            restored.metadata_path
        ),
    }
}

/// Passes the parts' events to the coordinator until every part ended, or
/// one failed (then cancels the others and waits for them, boundedly).
fn follow_attempt(
    attempt: u32,
    parts: &[u32],
    cluster: &Arc<dyn Cluster>,
    shared: &Arc<crate::executor::Shared>,
    events: &crossbeam_channel::Sender<crate::control_plane::CoordinatorEvent>,
    metrics: &JobMetrics,
) -> Result<(), JobError> {
    let mut running: HashSet<u32> = parts.iter().copied().collect();
    // The parts' counts so far: their reports are totals, the job's metrics
    // grow by the difference.
    let mut counted: std::collections::HashMap<u32, (u64, u64)> = Default::default();
    let mut failure: Option<JobError> = None;
    let mut cancelled_at: Option<Instant> = None;
    while !running.is_empty() {
        if failure.is_none()
            && let Some(local) = shared.failure_or_cancel()
        {
            failure = Some(local);
        }
        if failure.is_some() && cancelled_at.is_none() {
            cluster.cancel(attempt);
            cancelled_at = Some(Instant::now());
        }
        if cancelled_at.is_some_and(|at| at.elapsed() > CANCEL_WAIT_MAX) {
            tracing::warn!(
                "task managers {running:?} did not end attempt {attempt} within {CANCEL_WAIT_MAX:?}"
            );
            break;
        }
        match cluster.next_event(EVENT_WAIT) {
            // Blocks while the coordinator's queue is full: the control
            // connections wait (bounded) rather than drop an acknowledgement.
            Some(ClusterEvent::Task { attempt: a, event }) if a == attempt && failure.is_none() => {
                let _ = events.send(CoordinatorEvent::Task(event));
            }
            Some(ClusterEvent::PartEnded {
                attempt: a,
                process,
                failure: part_failure,
            }) if a == attempt => {
                running.remove(&process);
                if let Some(cause) = part_failure
                    && failure.is_none()
                {
                    failure = Some(JobError::TaskManager { process, cause });
                }
            }
            Some(ClusterEvent::Progress {
                attempt: a,
                process,
                records_in,
                records_to_sinks,
            }) if a == attempt => {
                let last = counted.entry(process).or_default();
                metrics.add_records_in(records_in.saturating_sub(last.0) as usize);
                metrics.add_records_to_sinks(records_to_sinks.saturating_sub(last.1) as usize);
                *last = (last.0.max(records_in), last.1.max(records_to_sinks));
            }
            Some(ClusterEvent::Lost { process, cause }) if running.contains(&process) => {
                running.remove(&process);
                if failure.is_none() {
                    failure = Some(JobError::TaskManagerLost { process, cause });
                }
            }
            _ => {}
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A task manager's part of attempt `deployment.attempt`: builds and runs the
/// subtasks `config.network` puts in this process, sends their events up
/// through `uplink`, and gives `started` the part's control once they are
/// built (the job manager's commands and cancellation go through it).
/// Returns when every local task ended.
pub fn run_task_manager_part(
    graph: &JobGraph,
    config: &ExecutionConfig,
    deployment: &AttemptDeployment,
    uplink: TaskEventSink,
    started: &(dyn Fn(PartControl) + Sync),
) -> Result<(), JobError> {
    if config.network.is_none() {
        return Err(JobError::Build(crate::error::BuildError::Config(
            "a task manager's part needs the processes of the subtasks (a network placement)"
                .into(),
        )));
    }
    let restored = match (&deployment.restore, &config.checkpointing) {
        (Some(restore), Some(c)) => Some(Arc::new(restore.load(&c.storage)?)),
        (Some(_), None) => {
            return Err(JobError::Build(crate::error::BuildError::Config(
                "a snapshot to restore, but checkpointing is off in this process".into(),
            )));
        }
        (None, _) => None,
    };
    let metrics = Arc::new(JobMetrics::default());
    let control = Cancellation::default();
    let controller = Arc::new(JobController::new(
        crate::control::JobDescription::of(graph, config),
        Arc::clone(&metrics),
        Box::new(|| {}),
    ));
    let checkpointing = config.checkpointing.as_ref().map(|c| AttemptCheckpointing {
        config: c,
        job_id: &deployment.job_id,
        restored: restored.clone(),
        // The job manager checked the snapshot against the job.
        allow_non_restored_state: true,
        resume_reservations: false,
    });
    let outcome = run_attempt_tasks(
        graph,
        config,
        &metrics,
        &control,
        &controller,
        checkpointing,
        deployment.attempt,
        CoordinatorSite::Elsewhere { uplink, started },
    );
    if let Some(network) = &config.network {
        let failure = network.transport.failure(deployment.attempt);
        network.transport.end_attempt(deployment.attempt);
        if let (Err(e), Some(failure)) = (&outcome.result, failure)
            && !matches!(e, JobError::Cancelled)
        {
            return Err(JobError::Network(failure));
        }
    }
    outcome.result
}
