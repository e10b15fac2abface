//! The HTTP API's view of the jobs this process runs: adapts the runtime's
//! [`JobController`] to `flowstate_rest::JobService` (for `flowstate run`
//! and every [`App`](super::App)). Owns the mapping of
//! runtime types to the API's JSON shapes and of control errors to HTTP
//! error kinds, and the `run` flags that say who may use the API and which
//! savepoint targets it may name ([`RestArgs`]); nothing else.

use std::sync::{Arc, Mutex};

use clap::Args;

use flowstate_rest::{
    CheckpointCounts, CheckpointEntry, CheckpointHistory, JobDetails, JobService, JobState,
    JobSummary, RestError, SavepointStatus, ServeOptions, ServiceError, TaskCheckpointEntry,
    Vertex, VertexInput,
};
use flowstate_runtime::SnapshotKind;
use flowstate_runtime::control::{
    CheckpointRecord, ControlError, JobController, JobStatus, SavepointState,
    SavepointTargetPolicy, SnapshotStatus,
};

use super::AppError;

type Result<T, E = AppError> = std::result::Result<T, E>;

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(AppError::Usage(format!($($arg)*)))
    };
}

/// The environment variable that holds the API's bearer token when
/// `--rest-token` is not given (for the job and for the client commands).
pub const TOKEN_ENV: &str = "FLOWSTATE_REST_TOKEN";

/// `--rest-token`, else a non-empty [`TOKEN_ENV`].
pub fn token_from(flag: Option<&str>) -> Option<String> {
    match flag {
        Some(token) => Some(token.to_owned()),
        None => std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
    }
}

/// Who may use a job's HTTP API, and which savepoint targets requests may name.
/// (No `Debug`: it holds the token.)
#[derive(Args, Clone)]
pub struct RestArgs {
    /// Bearer token every API request must carry [env: FLOWSTATE_REST_TOKEN]
    /// (prefer the environment: a flag shows in the process list). Required
    /// with a --rest address that is not loopback.
    #[arg(long, value_name = "TOKEN")]
    pub rest_token: Option<String>,
    /// Serve a --rest address that is not loopback without a token: anyone
    /// who can reach it can stop the job and write savepoints.
    #[arg(long)]
    pub rest_insecure: bool,
    /// A Host name the API answers to besides its own address (`host` or
    /// `host:port`, e.g. behind a reverse proxy); repeatable.
    #[arg(long, value_name = "HOST")]
    pub rest_allowed_host: Vec<String>,
    /// A directory (path or URL) under which savepoint requests may write,
    /// besides --savepoint-dir; repeatable.
    #[arg(long, value_name = "DIR")]
    pub savepoint_root: Vec<String>,
    /// Let savepoint requests name any absolute directory or URL (not only
    /// --savepoint-dir and --savepoint-root).
    #[arg(long)]
    pub allow_any_savepoint_target: bool,
}

impl RestArgs {
    /// The savepoint targets requests may name.
    pub fn savepoint_policy(&self) -> Result<SavepointTargetPolicy> {
        if self.allow_any_savepoint_target {
            if !self.savepoint_root.is_empty() {
                bail!("--savepoint-root has no effect with --allow-any-savepoint-target");
            }
            return Ok(SavepointTargetPolicy::any());
        }
        SavepointTargetPolicy::with_roots(&self.savepoint_root)
            .map_err(|e| AppError::Other(Box::new(e)))
    }

    /// The server's options.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            token: token_from(self.rest_token.as_deref()),
            allowed_hosts: self.rest_allowed_host.clone(),
            allow_unprotected_remote: self.rest_insecure,
            ..ServeOptions::default()
        }
    }

    /// Refuses, before the job starts, to serve `rest` in a way the options
    /// do not allow; warns loudly when it is served unprotected beyond
    /// loopback.
    pub fn check(&self, rest: &str) -> Result<()> {
        if rest == "off" {
            return Ok(());
        }
        if self.rest_token.as_deref() == Some("") {
            bail!("--rest-token is empty");
        }
        let strict = ServeOptions {
            allow_unprotected_remote: false,
            ..self.serve_options()
        };
        match flowstate_rest::check_exposure(rest, &strict) {
            Ok(()) => Ok(()),
            Err(RestError::Unprotected { .. }) if self.rest_insecure => {
                tracing::warn!(
                    "SECURITY: the HTTP API on {rest} has no token (--rest-insecure): anyone \
                     who can reach it can stop or cancel the job and write savepoints"
                );
                Ok(())
            }
            Err(RestError::Unprotected { .. }) => bail!(
                "--rest {rest} is not a loopback address: give the HTTP API a token with \
                 --rest-token or {TOKEN_ENV} (or pass --rest-insecure to serve it to anyone \
                 who can reach it)"
            ),
            Err(RestError::InvalidOption(reason)) => bail!("{reason}"),
            // Unresolvable or unbindable: reported when it is bound.
            Err(_) => Ok(()),
        }
    }
}

/// The jobs of this process (one per `flowstate run`).
#[derive(Default)]
pub struct LocalJobs {
    jobs: Mutex<Vec<Arc<JobController>>>,
}

impl LocalJobs {
    pub fn add(&self, job: Arc<JobController>) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
    }

    /// The job `id`; an unknown one names no job (`GET /jobs` lists them to
    /// whoever may see them).
    fn find(&self, id: &str) -> Result<Arc<JobController>, ServiceError> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter()
            .find(|j| j.job_id() == Some(id))
            .cloned()
            .ok_or(ServiceError::UnknownJob)
    }
}

fn state_of(status: JobStatus) -> JobState {
    match status {
        JobStatus::Created => JobState::Created,
        JobStatus::Running => JobState::Running,
        JobStatus::Restarting => JobState::Restarting,
        JobStatus::Stopping => JobState::Stopping,
        JobStatus::Finished => JobState::Finished,
        JobStatus::Failed => JobState::Failed,
        JobStatus::Cancelled => JobState::Cancelled,
    }
}

fn service_error(error: ControlError) -> ServiceError {
    match error {
        ControlError::Invalid(m) => ServiceError::BadRequest(m),
        ControlError::Target(e) if e.is_forbidden() => ServiceError::Forbidden(e.to_string()),
        ControlError::Target(e) => ServiceError::BadRequest(e.to_string()),
        ControlError::Conflict(m) => ServiceError::Conflict(m),
        ControlError::NotFound(_) => ServiceError::UnknownSavepointRequest,
    }
}

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn entry(record: &CheckpointRecord) -> CheckpointEntry {
    let (status, failure) = match &record.status {
        SnapshotStatus::InProgress => ("in_progress", None),
        SnapshotStatus::Completed => ("completed", None),
        SnapshotStatus::Failed(reason) => ("failed", Some(reason.clone())),
    };
    CheckpointEntry {
        id: record.id,
        kind: match record.kind {
            SnapshotKind::Checkpoint => "checkpoint",
            SnapshotKind::Savepoint => "savepoint",
        }
        .to_owned(),
        status: status.to_owned(),
        trigger_time_ms: record.trigger_unix_ms,
        duration_ms: record.duration.map(|d| d.as_millis() as u64),
        size_bytes: record.bytes,
        full_size_bytes: record.full_bytes,
        alignment_ms_max: ms(record.alignment_max),
        sync_pause_ms_max: ms(record.sync_pause_max),
        failure,
        tasks: record
            .tasks
            .iter()
            .map(|(name, t)| TaskCheckpointEntry {
                task: name.clone(),
                sync_pause_us: t.sync_pause.as_micros() as u64,
                alignment_us: t.alignment.as_micros() as u64,
                size_bytes: t.bytes,
            })
            .collect(),
    }
}

impl JobService for LocalJobs {
    fn list(&self) -> Vec<JobSummary> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter()
            .filter_map(|j| {
                Some(JobSummary {
                    id: j.job_id()?.to_owned(),
                    name: j.description().name.clone(),
                    state: state_of(j.status()),
                })
            })
            .collect()
    }

    fn details(&self, job: &str) -> Result<JobDetails, ServiceError> {
        let j = self.find(job)?;
        let d = j.description();
        let now_ms = flowstate_runtime::checkpoint::coordinator::unix_ms_now();
        Ok(JobDetails {
            id: job.to_owned(),
            name: d.name.clone(),
            state: state_of(j.status()),
            start_time_ms: j.start_unix_ms(),
            duration_ms: now_ms.saturating_sub(j.start_unix_ms()),
            parallelism: d.parallelism,
            max_parallelism: d.max_parallelism,
            restored_from: j.restored_from(),
            records_in: j.metrics().records_in(),
            records_to_sinks: j.metrics().records_to_sinks(),
            restarts: j.metrics().restarts(),
            vertices: d
                .vertices
                .iter()
                .map(|v| Vertex {
                    uid: v.uid.clone(),
                    name: v.name.clone(),
                    parallelism: d.parallelism,
                    inputs: v
                        .inputs
                        .iter()
                        .map(|(from, ship)| VertexInput {
                            from_uid: from.clone(),
                            ship_strategy: (*ship).to_owned(),
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    fn checkpoints(&self, job: &str) -> Result<CheckpointHistory, ServiceError> {
        let history = self.find(job)?.checkpoint_history();
        let history_entries: Vec<CheckpointEntry> = history.entries.iter().map(entry).collect();
        let latest_completed = history
            .entries
            .iter()
            .rev()
            .find(|r| r.status == SnapshotStatus::Completed && r.kind == SnapshotKind::Checkpoint)
            .map(entry);
        Ok(CheckpointHistory {
            counts: CheckpointCounts {
                in_progress: history.in_progress,
                completed: history.completed,
                failed: history.failed,
            },
            latest_completed,
            history: history_entries,
        })
    }

    fn trigger_savepoint(
        &self,
        job: &str,
        target_directory: Option<String>,
        stop: bool,
    ) -> Result<String, ServiceError> {
        self.find(job)?
            .trigger_savepoint(target_directory.as_deref(), stop)
            .map_err(service_error)
    }

    fn savepoint_status(
        &self,
        job: &str,
        request_id: &str,
    ) -> Result<SavepointStatus, ServiceError> {
        let state = self
            .find(job)?
            .savepoint(request_id)
            .map_err(service_error)?;
        Ok(match state {
            SavepointState::InProgress { checkpoint_id } => SavepointStatus {
                status: "in_progress".into(),
                location: None,
                checkpoint_id,
                failure: None,
            },
            SavepointState::Completed {
                location,
                checkpoint_id,
            } => SavepointStatus {
                status: "completed".into(),
                location: Some(location),
                checkpoint_id: Some(checkpoint_id),
                failure: None,
            },
            SavepointState::Failed(reason) => SavepointStatus {
                status: "failed".into(),
                location: None,
                checkpoint_id: None,
                failure: Some(reason),
            },
        })
    }

    fn cancel(&self, job: &str) -> Result<(), ServiceError> {
        self.find(job)?.cancel().map_err(service_error)
    }

    fn prometheus_text(&self) -> String {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        super::prometheus::render(&jobs)
    }
}
