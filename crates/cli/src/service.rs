//! The HTTP API's view of the jobs this process runs: adapts the runtime's
//! [`JobController`] to `flowstate_rest::JobService`. Owns the mapping of
//! runtime types to the API's JSON shapes and of control errors to HTTP
//! error kinds; nothing else.

use std::sync::{Arc, Mutex};

use flowstate::runtime::SnapshotKind;
use flowstate::runtime::control::{
    CheckpointRecord, ControlError, JobController, JobStatus, SavepointState, SnapshotStatus,
};
use flowstate_rest::{
    CheckpointCounts, CheckpointEntry, CheckpointHistory, JobDetails, JobService, JobState,
    JobSummary, SavepointStatus, ServiceError, TaskCheckpointEntry, Vertex, VertexInput,
};

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

    fn find(&self, id: &str) -> Result<Arc<JobController>, ServiceError> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter()
            .find(|j| j.job_id() == Some(id))
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = jobs.iter().filter_map(|j| j.job_id()).collect();
                ServiceError::NotFound(format!(
                    "no job '{id}' (running here: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })
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
        ControlError::Conflict(m) => ServiceError::Conflict(m),
        ControlError::NotFound(m) => ServiceError::NotFound(m),
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
        let now_ms = flowstate::runtime::checkpoint::coordinator::unix_ms_now();
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
}
