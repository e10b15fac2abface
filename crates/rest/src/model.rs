//! The JSON documents of the HTTP API and the [`JobService`] trait the API serves.
//!
//! Owns the wire format, which is Apache Flink's (2.x) REST API: Flink's field
//! names (`start-time`, `checkpointed_size`, `isStoppable`: Flink mixes
//! spellings, and so must we), Flink's upper-case statuses, integers for
//! every duration and timestamp (ms) and size (bytes). Tools written for
//! Flink's REST API, Flink's own Java client included (whose JSON mapper
//! fails on unknown fields and on missing constructor properties), read
//! these documents; a field must not be renamed, dropped or added to the
//! documents that client reads ([`MultipleJobs`], [`TriggerResponse`],
//! [`SavepointStatus`], [`ErrorBody`]) without checking against Flink.
//! flowstate's own additions are few and say so (`*_us` extras).
//! It knows nothing of HTTP (that is `server` and `client`) and nothing of the
//! runtime: whoever runs jobs implements [`JobService`] and fills these
//! documents in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the HTTP API serves: implemented by the process that runs jobs.
///
/// **API Boundary.** Calls are made from the server's runtime (on its blocking pool) and
/// must return quickly: take a lock or send on a channel, never wait for a checkpoint.
pub trait JobService: Send + Sync + 'static {
    /// Every job, for `GET /jobs`, `/jobs/overview` and `/overview`.
    fn jobs(&self) -> Vec<JobOverview>;
    /// `GET /jobs/{id}`.
    fn details(&self, job: &str) -> Result<JobDetails, ServiceError>;
    /// `GET /jobs/{id}/checkpoints`.
    fn checkpoints(&self, job: &str) -> Result<CheckpointingStatistics, ServiceError>;
    /// Starts a savepoint (with `stop`: stop-with-savepoint, the job ends once it
    /// completed); returns the request id.
    fn trigger_savepoint(
        &self,
        job: &str,
        request: SavepointTrigger,
    ) -> Result<String, ServiceError>;
    fn savepoint_status(
        &self,
        job: &str,
        request_id: &str,
    ) -> Result<SavepointStatus, ServiceError>;
    fn cancel(&self, job: &str) -> Result<(), ServiceError>;

    /// `GET /overview`: by default one task manager whose slots are the
    /// running jobs' tasks.
    fn overview(&self) -> ClusterOverview {
        ClusterOverview::of(&self.jobs())
    }

    /// `GET /jobs/{id}/checkpoints/details/{checkpoint}`: by default the
    /// history's entry (without per-vertex figures).
    fn checkpoint(&self, job: &str, checkpoint: u64) -> Result<CheckpointStatistics, ServiceError> {
        self.checkpoints(job)?
            .history
            .into_iter()
            .find(|c| c.id == checkpoint)
            .ok_or(ServiceError::UnknownCheckpoint)
    }

    /// `GET /jobs/{id}/checkpoints/details/{checkpoint}/subtasks/{vertex}`.
    fn checkpoint_subtasks(
        &self,
        job: &str,
        checkpoint: u64,
        vertex: &str,
    ) -> Result<TaskCheckpointDetails, ServiceError> {
        let _ = (job, checkpoint, vertex);
        Err(ServiceError::UnknownCheckpoint)
    }

    /// `GET /jobs/{id}/checkpoints/config`.
    fn checkpoint_config(&self, job: &str) -> Result<CheckpointConfig, ServiceError> {
        let _ = job;
        Err(ServiceError::Unavailable(
            "no checkpoint configuration is known".into(),
        ))
    }

    /// `GET /jobs/{id}/exceptions`: by default none.
    fn exceptions(&self, job: &str) -> Result<JobExceptions, ServiceError> {
        self.details(job)?;
        Ok(JobExceptions::default())
    }

    /// `GET /jobs/{id}/vertices/{vertex}/backpressure`: by default "not sampled".
    fn backpressure(&self, job: &str, vertex: &str) -> Result<BackPressure, ServiceError> {
        let _ = vertex;
        self.details(job)?;
        Ok(BackPressure::not_sampled())
    }

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
    /// 404: no such checkpoint in the job's history.
    #[error("checkpoint not known")]
    UnknownCheckpoint,
    /// 404: no such vertex in the job.
    #[error("vertex not known")]
    UnknownVertex,
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

/// A job's status, Flink's `JobStatus` (`"RUNNING"`, `"CANCELED"`).
///
/// flowstate's own "stopping" (a stop-with-savepoint in progress) is
/// `RUNNING`, as in Flink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Initializing,
    Created,
    Running,
    Failing,
    Failed,
    Cancelling,
    Canceled,
    Finished,
    Restarting,
    Suspended,
    Reconciling,
}

impl JobState {
    /// The JSON spelling, e.g. `RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Initializing => "INITIALIZING",
            JobState::Created => "CREATED",
            JobState::Running => "RUNNING",
            JobState::Failing => "FAILING",
            JobState::Failed => "FAILED",
            JobState::Cancelling => "CANCELLING",
            JobState::Canceled => "CANCELED",
            JobState::Finished => "FINISHED",
            JobState::Restarting => "RESTARTING",
            JobState::Suspended => "SUSPENDED",
            JobState::Reconciling => "RECONCILING",
        }
    }

    /// Whether the job has ended for good (Flink's "globally terminal").
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Canceled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a task (Flink's `ExecutionState`), lower-case as a key of
/// `tasks` maps, upper-case as a vertex's `status`.
pub const EXECUTION_STATES: [&str; 10] = [
    "CREATED",
    "SCHEDULED",
    "DEPLOYING",
    "RUNNING",
    "FINISHED",
    "CANCELING",
    "CANCELED",
    "FAILED",
    "RECONCILING",
    "INITIALIZING",
];

/// How many tasks are in each state: `{"running": 2, "finished": 0, ...}`
/// with every [`EXECUTION_STATES`] key lower-case (and, in a job overview,
/// `total`).
pub type TaskCounts = BTreeMap<String, u32>;

/// Task counts with `n` tasks in `state` (upper-case, one of
/// [`EXECUTION_STATES`]) and none in the others; with `total` when asked.
pub fn task_counts(state: &str, n: u32, with_total: bool) -> TaskCounts {
    let mut counts: TaskCounts = EXECUTION_STATES
        .iter()
        .map(|s| (s.to_ascii_lowercase(), 0))
        .collect();
    if let Some(count) = counts.get_mut(&state.to_ascii_lowercase()) {
        *count = n;
    }
    if with_total {
        counts.insert("total".into(), n);
    }
    counts
}

/// One line of `GET /jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobIdWithStatus {
    pub id: String,
    pub status: JobState,
}

/// `GET /jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobIdsWithStatus {
    pub jobs: Vec<JobIdWithStatus>,
}

/// One job of `GET /jobs/overview` (Flink's `JobDetails`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOverview {
    pub jid: String,
    pub name: String,
    /// `STREAMING`.
    #[serde(rename = "jobType")]
    pub job_type: String,
    /// `Default` (Flink's scheduler names; flowstate has one).
    #[serde(rename = "schedulerType")]
    pub scheduler_type: String,
    #[serde(rename = "start-time")]
    pub start_time: i64,
    /// -1 while the job runs.
    #[serde(rename = "end-time")]
    pub end_time: i64,
    pub duration: i64,
    #[serde(rename = "last-modification")]
    pub last_modification: i64,
    pub state: JobState,
    /// [`TaskCounts`] with `total`.
    pub tasks: TaskCounts,
    /// Operators not yet deployed (Flink's adaptive batch scheduler): 0.
    #[serde(rename = "pending-operators")]
    pub pending_operators: u32,
}

/// `GET /jobs/overview` (Flink's `MultipleJobsDetails`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultipleJobs {
    pub jobs: Vec<JobOverview>,
}

/// `GET /overview` (Flink's `ClusterOverviewWithVersion`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterOverview {
    pub taskmanagers: u32,
    #[serde(rename = "slots-total")]
    pub slots_total: u32,
    #[serde(rename = "slots-available")]
    pub slots_available: u32,
    #[serde(rename = "taskmanagers-blocked")]
    pub taskmanagers_blocked: u32,
    #[serde(rename = "slots-free-and-blocked")]
    pub slots_free_and_blocked: u32,
    #[serde(rename = "jobs-running")]
    pub jobs_running: u32,
    #[serde(rename = "jobs-finished")]
    pub jobs_finished: u32,
    #[serde(rename = "jobs-cancelled")]
    pub jobs_cancelled: u32,
    #[serde(rename = "jobs-failed")]
    pub jobs_failed: u32,
    #[serde(rename = "flink-version")]
    pub flink_version: String,
    #[serde(rename = "flink-commit")]
    pub flink_commit: String,
}

/// This build's version, answered where Flink answers its own.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl ClusterOverview {
    /// The process as one task manager whose slots are the tasks of its jobs
    /// that have not ended (all busy: a flowstate process runs what it was
    /// started with).
    pub fn of(jobs: &[JobOverview]) -> Self {
        let count = |state: JobState| jobs.iter().filter(|j| j.state == state).count() as u32;
        let slots = jobs
            .iter()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.tasks.get("total").copied().unwrap_or(0))
            .sum();
        ClusterOverview {
            taskmanagers: 1,
            slots_total: slots,
            slots_available: 0,
            taskmanagers_blocked: 0,
            slots_free_and_blocked: 0,
            jobs_running: jobs.iter().filter(|j| !j.state.is_terminal()).count() as u32,
            jobs_finished: count(JobState::Finished),
            jobs_cancelled: count(JobState::Canceled),
            jobs_failed: count(JobState::Failed),
            flink_version: VERSION.into(),
            flink_commit: VERSION.into(),
        }
    }
}

/// `GET /config` (Flink's `DashboardConfiguration`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DashboardConfig {
    #[serde(rename = "refresh-interval")]
    pub refresh_interval: u64,
    #[serde(rename = "timezone-name")]
    pub timezone_name: String,
    #[serde(rename = "timezone-offset")]
    pub timezone_offset: i64,
    #[serde(rename = "flink-version")]
    pub flink_version: String,
    #[serde(rename = "flink-revision")]
    pub flink_revision: String,
    pub features: DashboardFeatures,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DashboardFeatures {
    #[serde(rename = "web-submit")]
    pub web_submit: bool,
    #[serde(rename = "web-cancel")]
    pub web_cancel: bool,
    #[serde(rename = "web-rescale")]
    pub web_rescale: bool,
    #[serde(rename = "web-history")]
    pub web_history: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            refresh_interval: 3000,
            timezone_name: "UTC".into(),
            timezone_offset: 0,
            flink_version: VERSION.into(),
            flink_revision: VERSION.into(),
            features: DashboardFeatures {
                web_submit: false,
                web_cancel: true,
                web_rescale: false,
                web_history: false,
            },
        }
    }
}

/// `GET /jobs/{id}` (Flink's `JobDetailsInfo`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetails {
    pub jid: String,
    pub name: String,
    #[serde(rename = "isStoppable")]
    pub is_stoppable: bool,
    pub state: JobState,
    /// `STREAMING`.
    #[serde(rename = "job-type")]
    pub job_type: String,
    /// `Default`.
    #[serde(rename = "schedulerType")]
    pub scheduler_type: String,
    #[serde(rename = "start-time")]
    pub start_time: i64,
    /// -1 while the job runs.
    #[serde(rename = "end-time")]
    pub end_time: i64,
    pub duration: i64,
    #[serde(rename = "maxParallelism")]
    pub max_parallelism: i64,
    pub now: i64,
    /// When the job entered each status it has been in (`{"RUNNING": ms}`).
    pub timestamps: BTreeMap<String, i64>,
    pub vertices: Vec<VertexDetails>,
    /// Vertices per [`EXECUTION_STATES`] (upper-case keys).
    #[serde(rename = "status-counts")]
    pub status_counts: BTreeMap<String, u32>,
    pub plan: Plan,
    /// Operators not yet deployed: 0.
    #[serde(rename = "pending-operators")]
    pub pending_operators: u32,
}

/// One vertex (operator) of [`JobDetails`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VertexDetails {
    /// 32 hex digits, stable per operator uid ([`vertex_id`]).
    pub id: String,
    pub name: String,
    #[serde(rename = "maxParallelism")]
    pub max_parallelism: i64,
    pub parallelism: u32,
    /// One of [`EXECUTION_STATES`].
    pub status: String,
    #[serde(rename = "start-time")]
    pub start_time: i64,
    #[serde(rename = "end-time")]
    pub end_time: i64,
    pub duration: i64,
    /// [`TaskCounts`] without `total`.
    pub tasks: TaskCounts,
    pub metrics: IoMetrics,
}

/// A vertex's I/O figures (Flink's `IOMetricsInfo`); a `*-complete` flag is
/// false when its figure is not (yet) measured for this vertex.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoMetrics {
    #[serde(rename = "read-bytes")]
    pub read_bytes: u64,
    #[serde(rename = "read-bytes-complete")]
    pub read_bytes_complete: bool,
    #[serde(rename = "write-bytes")]
    pub write_bytes: u64,
    #[serde(rename = "write-bytes-complete")]
    pub write_bytes_complete: bool,
    #[serde(rename = "read-records")]
    pub read_records: u64,
    #[serde(rename = "read-records-complete")]
    pub read_records_complete: bool,
    #[serde(rename = "write-records")]
    pub write_records: u64,
    #[serde(rename = "write-records-complete")]
    pub write_records_complete: bool,
    /// ms.
    #[serde(rename = "accumulated-backpressured-time")]
    pub accumulated_backpressured_time: u64,
    /// ms.
    #[serde(rename = "accumulated-idle-time")]
    pub accumulated_idle_time: u64,
    /// ms.
    #[serde(rename = "accumulated-busy-time")]
    pub accumulated_busy_time: u64,
}

/// The job graph (Flink's `JobPlanInfo.Plan`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub jid: String,
    pub name: String,
    /// `STREAMING`.
    #[serde(rename = "type")]
    pub kind: String,
    pub nodes: Vec<PlanNode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    /// The vertex id ([`vertex_id`]).
    pub id: String,
    pub parallelism: u32,
    pub operator: String,
    pub operator_strategy: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<PlanInput>,
    pub optimizer_properties: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    pub num: u32,
    /// The producing vertex's id.
    pub id: String,
    /// e.g. `FORWARD`, `HASH`, `REBALANCE`.
    pub ship_strategy: String,
    /// `pipelined_bounded`.
    pub exchange: String,
}

/// The id of the vertex of operator `uid`: 32 hex digits (the shape of
/// Flink's vertex ids), the same for the same uid in every run and process,
/// so that tools may remember it. (Two independent 64-bit FNV-1a hashes.)
pub fn vertex_id(uid: &str) -> String {
    let fnv = |seed: u64| {
        uid.bytes().fold(seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    )
}

/// `GET /jobs/{id}/vertices/{vertex}/backpressure` (Flink's
/// `JobVertexBackPressureInfo`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackPressure {
    /// `ok`, or `deprecated` when there are no figures (yet).
    pub status: String,
    /// `ok`, `low` or `high` (Flink's older spelling of the key).
    #[serde(
        rename = "backpressure-level",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backpressure_level_deprecated: Option<String>,
    #[serde(
        rename = "backpressureLevel",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backpressure_level: Option<String>,
    #[serde(
        rename = "end-timestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub end_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtasks: Option<Vec<SubtaskBackPressure>>,
}

impl BackPressure {
    /// Flink's answer when nothing was sampled.
    pub fn not_sampled() -> Self {
        BackPressure {
            status: "deprecated".into(),
            backpressure_level_deprecated: None,
            backpressure_level: None,
            end_timestamp: None,
            subtasks: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskBackPressure {
    pub subtask: u32,
    #[serde(rename = "attempt-number")]
    pub attempt_number: u32,
    #[serde(rename = "backpressure-level")]
    pub backpressure_level_deprecated: String,
    #[serde(rename = "backpressureLevel")]
    pub backpressure_level: String,
    pub ratio: f64,
    #[serde(rename = "idleRatio")]
    pub idle_ratio: f64,
    #[serde(rename = "busyRatio")]
    pub busy_ratio: f64,
}

/// `GET /jobs/{id}/checkpoints` (Flink's `CheckpointingStatistics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointingStatistics {
    pub counts: CheckpointCounts,
    pub summary: CheckpointSummary,
    pub latest: LatestCheckpoints,
    /// Most recent first.
    pub history: Vec<CheckpointStatistics>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointCounts {
    pub restored: u64,
    pub total: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Distribution of one figure over the completed checkpoints kept (Flink's
/// `StatsSummaryDto`); integers, zero when there are none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSummary {
    pub min: u64,
    pub max: u64,
    pub avg: u64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
}

impl StatsSummary {
    /// The summary of `values` (nearest-rank percentiles).
    pub fn of(values: impl IntoIterator<Item = u64>) -> Self {
        let mut values: Vec<u64> = values.into_iter().collect();
        if values.is_empty() {
            return StatsSummary::default();
        }
        values.sort_unstable();
        let n = values.len();
        let quantile = |q: f64| {
            let rank = (q * n as f64).ceil() as usize;
            values[rank.clamp(1, n) - 1] as f64
        };
        StatsSummary {
            min: values[0],
            max: values[n - 1],
            avg: values.iter().sum::<u64>() / n as u64,
            p50: quantile(0.5),
            p90: quantile(0.9),
            p95: quantile(0.95),
            p99: quantile(0.99),
            p999: quantile(0.999),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub checkpointed_size: StatsSummary,
    pub state_size: StatsSummary,
    pub end_to_end_duration: StatsSummary,
    pub alignment_buffered: StatsSummary,
    pub processed_data: StatsSummary,
    pub persisted_data: StatsSummary,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatestCheckpoints {
    pub completed: Option<CheckpointStatistics>,
    pub savepoint: Option<CheckpointStatistics>,
    pub failed: Option<CheckpointStatistics>,
    pub restored: Option<RestoredCheckpoint>,
}

/// The snapshot the job started from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoredCheckpoint {
    pub id: u64,
    pub restore_timestamp: i64,
    pub is_savepoint: bool,
    pub external_path: String,
}

/// `status` of a [`CheckpointStatistics`].
pub mod checkpoint_status {
    pub const IN_PROGRESS: &str = "IN_PROGRESS";
    pub const COMPLETED: &str = "COMPLETED";
    pub const FAILED: &str = "FAILED";
}

/// One checkpoint or savepoint (Flink's `CheckpointStatistics`, whose
/// `className` says which of its three kinds it is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStatistics {
    /// `.CompletedCheckpointStatistics`, `.FailedCheckpointStatistics` or
    /// `.PendingCheckpointStatistics`.
    #[serde(rename = "className")]
    pub class_name: String,
    pub id: u64,
    /// [`checkpoint_status`]: `IN_PROGRESS`, `COMPLETED` or `FAILED`.
    pub status: String,
    pub is_savepoint: bool,
    /// `CANONICAL` for savepoints; `null` for checkpoints.
    #[serde(rename = "savepointFormat")]
    pub savepoint_format: Option<String>,
    pub trigger_timestamp: i64,
    pub latest_ack_timestamp: i64,
    /// Bytes this snapshot wrote (an incremental one: only its new files).
    pub checkpointed_size: u64,
    /// The full size of its state (never smaller than `checkpointed_size`).
    pub state_size: u64,
    /// ms.
    pub end_to_end_duration: u64,
    pub alignment_buffered: u64,
    pub processed_data: u64,
    pub persisted_data: u64,
    pub num_subtasks: u32,
    pub num_acknowledged_subtasks: u32,
    /// `CHECKPOINT`, `UNALIGNED_CHECKPOINT` (some task's barrier overtook
    /// in-flight records, which `persisted_data` counts) or `SAVEPOINT`.
    pub checkpoint_type: String,
    /// Per vertex id (filled by the details route; `{}` in the history).
    pub tasks: BTreeMap<String, TaskCheckpointStatistics>,
    /// Completed ones: where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_path: Option<String>,
    /// Completed ones: whether it was deleted since (retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<bool>,
    /// Failed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
}

/// One vertex's part of a checkpoint (Flink's `TaskCheckpointStatistics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskCheckpointStatistics {
    pub id: u64,
    pub status: String,
    pub latest_ack_timestamp: i64,
    pub checkpointed_size: u64,
    pub state_size: u64,
    pub end_to_end_duration: u64,
    pub alignment_buffered: u64,
    pub processed_data: u64,
    pub persisted_data: u64,
    pub num_subtasks: u32,
    pub num_acknowledged_subtasks: u32,
}

/// `GET /jobs/{id}/checkpoints/details/{checkpoint}/subtasks/{vertex}`
/// (Flink's `TaskCheckpointStatisticsWithSubtaskDetails`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskCheckpointDetails {
    #[serde(flatten)]
    pub task: TaskCheckpointStatistics,
    pub summary: TaskCheckpointSummary,
    pub subtasks: Vec<SubtaskCheckpoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCheckpointSummary {
    pub checkpointed_size: StatsSummary,
    pub state_size: StatsSummary,
    pub end_to_end_duration: StatsSummary,
    pub checkpoint_duration: CheckpointDurationSummary,
    pub alignment: AlignmentSummary,
    pub start_delay: StatsSummary,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointDurationSummary {
    pub sync: StatsSummary,
    #[serde(rename = "async")]
    pub asynchronous: StatsSummary,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlignmentSummary {
    pub buffered: StatsSummary,
    pub processed: StatsSummary,
    pub persisted: StatsSummary,
    pub duration: StatsSummary,
}

/// One subtask's part of a checkpoint (Flink's completed
/// `SubtaskCheckpointStatistics`, `status` `completed`; a subtask that did not
/// acknowledge is `pending_or_failed` with only `index` and `status`), plus
/// flowstate's `sync_duration_us` and `alignment_duration_us`: the pause is
/// usually well under a millisecond, which `checkpoint.sync` (ms) shows as 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskCheckpoint {
    pub index: u32,
    /// `completed` or `pending_or_failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointed_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<SubtaskCheckpointDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<SubtaskAlignment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_delay: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unaligned_checkpoint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<bool>,
    /// flowstate: the synchronous pause in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_duration_us: Option<u64>,
    /// flowstate: the barrier alignment in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment_duration_us: Option<u64>,
}

/// ms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskCheckpointDuration {
    pub sync: u64,
    #[serde(rename = "async")]
    pub asynchronous: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskAlignment {
    pub buffered: u64,
    pub processed: u64,
    pub persisted: u64,
    /// ms.
    pub duration: u64,
}

/// `GET /jobs/{id}/checkpoints/config` (Flink's `CheckpointConfigInfo`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// `exactly_once` or `at_least_once`.
    pub mode: String,
    /// ms; `0x7fffffffffffffff` (Flink's "never") without periodic checkpoints.
    pub interval: u64,
    pub timeout: u64,
    pub min_pause: u64,
    pub max_concurrent: u64,
    pub externalization: Externalization,
    pub state_backend: String,
    pub checkpoint_storage: String,
    pub unaligned_checkpoints: bool,
    pub tolerable_failed_checkpoints: u64,
    pub aligned_checkpoint_timeout: u64,
    pub checkpoints_after_tasks_finish: bool,
    pub state_changelog_enabled: bool,
    pub changelog_periodic_materialization_interval: u64,
    pub changelog_storage: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Externalization {
    pub enabled: bool,
    pub delete_on_cancellation: bool,
}

/// `GET /jobs/{id}/exceptions` (Flink's `JobExceptionsInfoWithHistory`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobExceptions {
    #[serde(rename = "exceptionHistory")]
    pub exception_history: ExceptionHistory,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExceptionHistory {
    /// Most recent first.
    pub entries: Vec<ExceptionInfo>,
    pub truncated: bool,
}

/// One failure: a restart's cause, or what ended the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    #[serde(rename = "exceptionName")]
    pub exception_name: String,
    pub stacktrace: String,
    pub timestamp: i64,
    #[serde(rename = "taskName")]
    pub task_name: Option<String>,
    pub endpoint: Option<String>,
    #[serde(rename = "taskManagerId")]
    pub task_manager_id: Option<String>,
    #[serde(rename = "failureLabels")]
    pub failure_labels: BTreeMap<String, String>,
    #[serde(rename = "concurrentExceptions")]
    pub concurrent_exceptions: Vec<ExceptionInfo>,
}

/// What a savepoint or stop request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavepointTrigger {
    /// Directory under which the savepoint is written; `None`: the job's default.
    pub target_directory: Option<String>,
    /// Stop the job with this savepoint.
    pub stop: bool,
    /// The client's own request id (`triggerId`), if it chose one.
    pub request_id: Option<String>,
}

/// Body of `POST /jobs/{id}/savepoints` (Flink's
/// `SavepointTriggerRequestBody`); every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    /// (flowstate's older `target_directory` is accepted too.)
    #[serde(
        rename = "target-directory",
        alias = "target_directory",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub target_directory: Option<String>,
    /// `true`: stop the job with the savepoint (as `POST /jobs/{id}/stop`).
    #[serde(rename = "cancel-job", default)]
    pub cancel_job: bool,
    /// `CANONICAL` (the only format flowstate's savepoints have) or `DEFAULT`.
    #[serde(
        rename = "formatType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub format_type: Option<String>,
    #[serde(rename = "triggerId", default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
}

/// Body of `POST /jobs/{id}/stop` (Flink's `StopWithSavepointRequestBody`);
/// every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// (flowstate's older `target_directory` is accepted too.)
    #[serde(
        rename = "targetDirectory",
        alias = "target_directory",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub target_directory: Option<String>,
    /// Flink's "emit MAX_WATERMARK before the savepoint". A flowstate stop
    /// always ends its sources' input after the savepoint's barrier, so
    /// event-time timers fire either way; accepted for compatibility.
    #[serde(default)]
    pub drain: bool,
    #[serde(
        rename = "formatType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub format_type: Option<String>,
    #[serde(rename = "triggerId", default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
}

/// `202` answer to a savepoint or stop request (Flink's `TriggerResponse`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerResponse {
    #[serde(rename = "request-id")]
    pub request_id: String,
}

/// What became of a savepoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavepointStatus {
    InProgress,
    Completed { location: String },
    Failed { reason: String },
}

/// `GET /jobs/{id}/savepoints/{request_id}` on the wire (Flink's
/// `AsynchronousOperationResult<SavepointInfo>`): `{"status": {"id":
/// "IN_PROGRESS"}, "operation": null}`, `{"status": {"id": "COMPLETED"},
/// "operation": {"location": "..."}}`, or a failed one `{"status": {"id":
/// "COMPLETED"}, "operation": {"failure-cause": {"class", "stack-trace",
/// "serialized-throwable": null}}}`. (Flink's Java client cannot read a
/// failure: it wants a Java-serialised exception in `serialized-throwable`.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavepointStatusBody {
    pub status: QueueStatus,
    pub operation: Option<SavepointInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// `IN_PROGRESS` or `COMPLETED`.
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavepointInfo {
    #[serde(default)]
    pub location: Option<String>,
    #[serde(rename = "failure-cause", default)]
    pub failure_cause: Option<FailureCause>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureCause {
    pub class: String,
    #[serde(rename = "stack-trace")]
    pub stack_trace: String,
    #[serde(rename = "serialized-throwable")]
    pub serialized_throwable: Option<String>,
}

/// The exception class a flowstate failure is reported as.
pub const FAILURE_CLASS: &str = "org.apache.flink.util.FlinkException";

impl From<&SavepointStatus> for SavepointStatusBody {
    fn from(status: &SavepointStatus) -> Self {
        let (id, operation) = match status {
            SavepointStatus::InProgress => ("IN_PROGRESS", None),
            SavepointStatus::Completed { location } => (
                "COMPLETED",
                Some(SavepointInfo {
                    location: Some(location.clone()),
                    failure_cause: None,
                }),
            ),
            SavepointStatus::Failed { reason } => (
                "COMPLETED",
                Some(SavepointInfo {
                    location: None,
                    failure_cause: Some(FailureCause {
                        class: FAILURE_CLASS.into(),
                        stack_trace: format!("{FAILURE_CLASS}: {reason}"),
                        serialized_throwable: None,
                    }),
                }),
            ),
        };
        SavepointStatusBody {
            status: QueueStatus { id: id.into() },
            operation,
        }
    }
}

impl SavepointStatusBody {
    /// Back to a [`SavepointStatus`]; `None` if it is neither shape.
    pub fn status(&self) -> Option<SavepointStatus> {
        match (self.status.id.as_str(), &self.operation) {
            ("IN_PROGRESS", _) => Some(SavepointStatus::InProgress),
            (
                "COMPLETED",
                Some(SavepointInfo {
                    failure_cause: Some(cause),
                    ..
                }),
            ) => Some(SavepointStatus::Failed {
                reason: cause
                    .stack_trace
                    .strip_prefix(&format!("{}: ", cause.class))
                    .unwrap_or(&cause.stack_trace)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            }),
            (
                "COMPLETED",
                Some(SavepointInfo {
                    location: Some(location),
                    ..
                }),
            ) => Some(SavepointStatus::Completed {
                location: location.clone(),
            }),
            _ => None,
        }
    }
}

/// Every error answer (Flink's `ErrorResponseBody`): `{"errors": ["..."]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<String>,
}
