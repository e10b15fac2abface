//! The supervisor: one thread per job that runs its attempts and restarts them.
//!
//! Owns: what happens before and between attempts — loading the snapshot a job
//! starts from ([`load_restore`], with the exactly-once fallback check
//! [`check_fallback`]), the job id, the lease on the job's directory, the
//! restore pointer of a job started from a snapshot
//! ([`record_restore_pointer`]; a stop's pointer is the coordinator's, written
//! with the savepoint's metadata), the restart loop that asks the `RestartPolicy`
//! whether and when to run the next attempt, and reporting the job's end to
//! its [`JobController`]. [`start_job`] starts it. Must not touch: what runs
//! inside an attempt (workers, the coordinator, upload threads: that is
//! `executor`), nor decide restarts itself (that is `restart`).

use std::sync::Arc;
use std::time::Instant;

use flowstate_checkpoint::coordinator::unix_ms_now;
use flowstate_checkpoint::restore::{
    LoadedCheckpoint, RestorePointer, load, load_latest_of, open_snapshot, write_restore_pointer,
};

use crate::config::{CheckpointingConfig, ExecutionConfig, Guarantee, RestoreFrom};
use crate::control::{JobController, JobDescription, JobStatus};
use crate::distributed::{Cluster, run_cluster_attempt};
use crate::error::{JobError, error_chain};
use crate::executor::{
    AttemptCheckpointing, Cancellation, JobReport, RunningJob, run_attempt, spawn,
};
use crate::graph::JobGraph;
use crate::lease::{HeldLease, newer_than_restored};
use crate::metrics::JobMetrics;
use crate::restart::{Decision, RestartPolicy, restartable};

/// A new job's id: 32 random hex digits (like Flink's JobID), so that jobs
/// started at the same moment (in containers, all with pid 1) never share
/// a directory in the checkpoint storage.
pub(crate) fn generated_job_id() -> String {
    crate::control::random_id()
}

/// Runs attempts until one succeeds or the restart strategy gives up.
fn supervise(
    graph: JobGraph,
    config: ExecutionConfig,
    metrics: Arc<JobMetrics>,
    control: Arc<Cancellation>,
    controller: Arc<JobController>,
    cluster: Option<Arc<dyn Cluster>>,
) -> Result<JobReport, JobError> {
    let mut lease = None;
    let result = supervise_attempts(
        &graph,
        &config,
        &metrics,
        &control,
        &controller,
        &mut lease,
        cluster.as_ref(),
    );
    // A job that lost its lease ends with that, whatever its attempt ended
    // with (cancelled by the loss, or finished after it); the lease is
    // released before the job's end is reported.
    let result = match lease.as_ref().and_then(HeldLease::lost) {
        Some(lost) => Err(lost),
        None => result,
    };
    // A stop-with-savepoint's restore pointer (so that `--restore latest`
    // resumes from it) was written by the coordinator with the savepoint's
    // metadata, before any sink committed (`StopPointer`).
    drop(lease);
    let (status, failure) = match &result {
        Ok(_) => (JobStatus::Finished, None),
        Err(JobError::Cancelled) => (JobStatus::Cancelled, None),
        // With its causes, as a restart's failure is recorded.
        Err(e) => (JobStatus::Failed, Some(error_chain(e))),
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

/// `--restore latest` (or a restart) fell back past newer snapshots that
/// could not be loaded. Exactly-once output forbids it when the job has sinks
/// that publish on checkpoint completion: what the skipped snapshots
/// published would be published again. Unless the user accepted that, the
/// job fails naming the damaged snapshot.
pub(crate) fn check_fallback(
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
        // With a job id (a job resumed by an elected job manager): that
        // job's newest, never another job's in the same storage.
        RestoreFrom::Latest => match load_latest_of(&c.storage, c.job_id.as_deref())? {
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
    control: &Arc<Cancellation>,
    controller: &Arc<JobController>,
    lease: &mut Option<HeldLease>,
    cluster: Option<&Arc<dyn Cluster>>,
) -> Result<JobReport, JobError> {
    let started = Instant::now();
    let checkpointing = config.checkpointing.clone();
    let mut restored: Option<Arc<LoadedCheckpoint>> = None;
    let mut job_id = None;
    if let Some(c) = &checkpointing {
        let loading = Instant::now();
        restored = match load_restore(c, graph)? {
            Some((loaded, shown)) => {
                controller.set_restored_from(shown, loaded.id(), loaded.metadata.kind);
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
                    controller.set_restored_from(
                        format!("{} in {}", l.metadata_path, c.storage.describe()),
                        l.id(),
                        l.metadata.kind,
                    );
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
                // At-most-once: the sources resume from the job's newest
                // reservations when the attempt continues the job's own
                // state; a fresh start or a named snapshot starts anew.
                resume_reservations: c.restore == RestoreFrom::Latest || restarts > 0,
            });
        if let Some(policy) = policy.as_mut() {
            policy.on_running(Instant::now());
        }
        let attempt_number = u32::try_from(restarts).unwrap_or(u32::MAX);
        let outcome = match cluster {
            Some(cluster) => run_cluster_attempt(
                graph,
                config,
                metrics,
                control,
                controller,
                attempt,
                attempt_number,
                cluster,
            ),
            None => run_attempt(
                graph,
                config,
                metrics,
                control,
                controller,
                attempt,
                attempt_number,
            ),
        };
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
                    if control.is_cancelled() {
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
    start(graph, config, None)
}

/// Starts `graph` with its tasks on `cluster` (this process is the job
/// manager: the coordinator, the HTTP API's view of the job and the restart
/// loop run here, the tasks in the cluster's task managers).
pub fn start_job_on_cluster(
    graph: JobGraph,
    config: &ExecutionConfig,
    cluster: Arc<dyn Cluster>,
) -> Result<RunningJob, JobError> {
    if config
        .checkpointing
        .as_ref()
        .is_some_and(|c| c.guarantee == Guarantee::AtMostOnce && c.settings.periodic())
    {
        return Err(JobError::Build(crate::error::BuildError::Config(
            "at-most-once is not supported across processes (its read-ahead reservations \
             are written by the job's single process); use at-least-once or exactly-once"
                .into(),
        )));
    }
    start(graph, config, Some(cluster))
}

fn start(
    graph: JobGraph,
    config: &ExecutionConfig,
    cluster: Option<Arc<dyn Cluster>>,
) -> Result<RunningJob, JobError> {
    config.validate()?;
    let metrics = Arc::new(JobMetrics::default());
    let control = Arc::new(Cancellation::default());
    let description = JobDescription::of(&graph, config);
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
        struct Ended(Arc<Cancellation>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.supervisor_ended();
            }
        }
        let _ended = Ended(Arc::clone(&supervisor_control));
        supervise(
            graph,
            config,
            supervisor_metrics,
            supervisor_control,
            supervisor_controller,
            cluster,
        )
    })?;
    Ok(RunningJob::new(
        metrics,
        control,
        controller,
        supervisor,
        cancellation_timeout,
    ))
}
