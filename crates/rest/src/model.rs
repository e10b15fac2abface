//! The JSON documents of the HTTP API and the [`JobService`] trait the API serves.
//!
//! Owns the wire format: field names (snake_case, units last) and enum spellings are
//! part of the API and must not change silently. It knows nothing of HTTP (that is
//! `server` and `client`) and nothing of the runtime: whoever runs jobs implements
//! [`JobService`] and fills these documents in.

use serde::{Deserialize, Serialize};

/// What the HTTP API serves: implemented by the process that runs jobs.
///
/// **API Boundary.** Calls are made from the server's runtime (on its blocking pool) and
/// must return quickly: take a lock or send on a channel, never wait for a checkpoint.
pub trait JobService: Send + Sync + 'static {
    fn list(&self) -> Vec<JobSummary>;
    fn details(&self, job: &str) -> Result<JobDetails, ServiceError>;
    fn checkpoints(&self, job: &str) -> Result<CheckpointHistory, ServiceError>;
    /// Starts a savepoint (stop = stop-with-savepoint: drain, final savepoint, exit); returns a request id.
    fn trigger_savepoint(
        &self,
        job: &str,
        target_directory: Option<String>,
        stop: bool,
    ) -> Result<String, ServiceError>;
    fn savepoint_status(
        &self,
        job: &str,
        request_id: &str,
    ) -> Result<SavepointStatus, ServiceError>;
    fn cancel(&self, job: &str) -> Result<(), ServiceError>;
    /// `GET /metrics`: the metrics of every job, in the Prometheus text
    /// exposition format 0.0.4 (the server sends it as it is). Default:
    /// none.
    fn prometheus_text(&self) -> String {
        String::new()
    }
}

/// Why a [`JobService`] call failed; each variant maps to one HTTP status.
///
/// The 404s carry no text: an answer must not tell a client which jobs or
/// requests exist (nor echo ids back).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// 404: no such job.
    #[error("job not known")]
    UnknownJob,
    /// 404: no such savepoint request of the job.
    #[error("savepoint request not known")]
    UnknownSavepointRequest,
    /// 409: the job's state forbids it now (e.g. a savepoint already in flight).
    #[error("{0}")]
    Conflict(String),
    /// 400: the request itself is wrong (e.g. an unusable target directory).
    #[error("{0}")]
    BadRequest(String),
    /// 403: well-formed but not allowed (e.g. a savepoint target outside the
    /// allowed directories).
    #[error("{0}")]
    Forbidden(String),
    /// 503: cannot be served now (e.g. the job is restarting or shutting down).
    #[error("{0}")]
    Unavailable(String),
}

/// A job's life cycle, serialised like Flink's (`"RUNNING"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Created,
    Running,
    Restarting,
    Stopping,
    Finished,
    Failed,
    Cancelled,
}

impl JobState {
    /// The JSON spelling, e.g. `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "CREATED",
            JobState::Running => "RUNNING",
            JobState::Restarting => "RESTARTING",
            JobState::Stopping => "STOPPING",
            JobState::Finished => "FINISHED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    /// Whether the job has ended for good (it will not run again in this process).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `GET /jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub name: String,
    pub state: JobState,
}

/// The body of `GET /jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// `GET /jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetails {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub start_time_ms: u64,
    pub duration_ms: u64,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// The checkpoint or savepoint the job was restored from, if any.
    pub restored_from: Option<String>,
    pub records_in: u64,
    pub records_to_sinks: u64,
    pub restarts: u64,
    pub vertices: Vec<Vertex>,
}

/// One operator (or chain head) of the job graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vertex {
    pub uid: String,
    pub name: String,
    pub parallelism: u32,
    pub inputs: Vec<VertexInput>,
}

/// An edge into a [`Vertex`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VertexInput {
    pub from_uid: String,
    /// e.g. `FORWARD`, `HASH`, `REBALANCE`.
    pub ship_strategy: String,
}

/// `GET /jobs/{id}/checkpoints`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHistory {
    pub counts: CheckpointCounts,
    pub latest_completed: Option<CheckpointEntry>,
    /// Most recent first.
    pub history: Vec<CheckpointEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointCounts {
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

/// One checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointEntry {
    pub id: u64,
    /// `"checkpoint"` or `"savepoint"`.
    pub kind: String,
    /// `"in_progress"`, `"completed"` or `"failed"`.
    pub status: String,
    pub trigger_time_ms: u64,
    /// `None` while in progress.
    pub duration_ms: Option<u64>,
    pub size_bytes: u64,
    pub full_size_bytes: u64,
    pub alignment_ms_max: f64,
    pub sync_pause_ms_max: f64,
    pub failure: Option<String>,
    pub tasks: Vec<TaskCheckpointEntry>,
}

/// One task's part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskCheckpointEntry {
    pub task: String,
    pub sync_pause_us: u64,
    pub alignment_us: u64,
    pub size_bytes: u64,
}

/// `GET /jobs/{id}/savepoints/{request_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavepointStatus {
    /// `"in_progress"`, `"completed"` or `"failed"`.
    pub status: String,
    /// Where the savepoint is, once completed.
    pub location: Option<String>,
    pub checkpoint_id: Option<u64>,
    pub failure: Option<String>,
}

impl SavepointStatus {
    pub const IN_PROGRESS: &'static str = "in_progress";
    pub const COMPLETED: &'static str = "completed";
    pub const FAILED: &'static str = "failed";
}

/// Body of `POST /jobs/{id}/savepoints` and `POST /jobs/{id}/stop` (both optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    /// Directory under which the savepoint is written; `None`: the job's default.
    /// (`target-directory` is Flink's spelling, accepted too.)
    #[serde(default, alias = "target-directory")]
    pub target_directory: Option<String>,
}

/// `202` answer to a savepoint or stop request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerResponse {
    pub request_id: String,
}

/// Every error answer: `{"error": "...", "status": 404}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub status: u16,
}
