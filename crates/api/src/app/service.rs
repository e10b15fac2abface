//! The HTTP API's view of the jobs this process runs: adapts the runtime's
//! [`JobController`] to `flowstate_rest::JobService` (for `flowstate run`
//! and every [`App`](super::App)). Owns the mapping of
//! runtime types to the API's JSON shapes and of control errors to HTTP
//! error kinds, and the `run` flags that say who may use the API and which
//! savepoint targets it may name ([`RestArgs`]); nothing else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;

use flowstate_rest::{
    AlignmentSummary, BackPressure, CheckpointConfig, CheckpointCounts, CheckpointDurationSummary,
    CheckpointStatistics, CheckpointSummary, CheckpointingStatistics, EXECUTION_STATES,
    ExceptionHistory, ExceptionInfo, Externalization, IoMetrics, JobDetails, JobExceptions,
    JobOverview, JobService, JobState, LatestCheckpoints, Plan, PlanInput, PlanNode, RestError,
    RestoredCheckpoint, SavepointStatus, SavepointTrigger, ServeOptions, ServiceError,
    StatsSummary, SubtaskAlignment, SubtaskBackPressure, SubtaskCheckpoint,
    SubtaskCheckpointDuration, TaskCheckpointDetails, TaskCheckpointStatistics,
    TaskCheckpointSummary, VertexDetails, checkpoint_status, task_counts, vertex_id,
};
use flowstate_runtime::SnapshotKind;
use flowstate_runtime::checkpoint::AlignmentPolicy;
use flowstate_runtime::checkpoint::coordinator::TaskStats;
use flowstate_runtime::control::{
    CheckpointConfigView, CheckpointRecord, ControlError, JobController, JobDescription, JobStatus,
    SavepointState, SavepointTargetPolicy, SnapshotStatus,
};
use flowstate_runtime::graph::VertexInfo;
use flowstate_runtime::metrics::{JobMetrics, TaskMetricsSnapshot};

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

/// The API's status of a job: Flink's. A job stopping with a savepoint is
/// `RUNNING` (as in Flink, whose statuses have no "stopping").
fn state_of(status: JobStatus) -> JobState {
    match status {
        JobStatus::Created => JobState::Created,
        JobStatus::Running | JobStatus::Stopping => JobState::Running,
        JobStatus::Restarting => JobState::Restarting,
        JobStatus::Finished => JobState::Finished,
        JobStatus::Failed => JobState::Failed,
        JobStatus::Cancelled => JobState::Canceled,
    }
}

/// The state of every task of a job in `state` (Flink's `ExecutionState`).
fn task_state(state: JobState) -> &'static str {
    match state {
        JobState::Created | JobState::Initializing => "CREATED",
        JobState::Restarting => "SCHEDULED",
        JobState::Finished => "FINISHED",
        JobState::Failed => "FAILED",
        JobState::Canceled => "CANCELED",
        JobState::Cancelling => "CANCELING",
        _ => "RUNNING",
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

/// Whole milliseconds (rounded down; the API's durations are integers).
fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whole microseconds.
fn us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn signed(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The vertex metrics of vertex `index` of a job described by `d`, from what
/// the runtime measures. **The one place runtime metrics become vertex
/// metrics.** Records in and out are the vertex's operator instances' own
/// (summed over subtasks); busy, idle and backpressured time (ms, summed over
/// subtasks) are those of the tasks that run the vertex (a chain's operators
/// share their task's time, as in Flink, where a vertex is a chain). Bytes
/// stay 0 with `*-complete` false: flowstate's local channels carry records,
/// not bytes.
fn vertex_metrics(d: &JobDescription, index: usize, metrics: &JobMetrics) -> IoMetrics {
    let mut io = IoMetrics::default();
    let Some(vertex) = d.vertices.get(index) else {
        return io;
    };
    for operator in metrics.operators().iter().filter(|o| o.uid == vertex.uid) {
        io.read_records += operator.records_in;
        io.write_records += operator.records_out;
    }
    io.read_records_complete = true;
    io.write_records_complete = true;
    for task in vertex_task_metrics(vertex, metrics) {
        io.accumulated_busy_time += ms(task.busy);
        io.accumulated_idle_time += ms(task.idle);
        io.accumulated_backpressured_time += ms(task.backpressured);
    }
    io
}

/// The metrics of the tasks that run `vertex` (it heads their chain or is
/// chained into it).
fn vertex_task_metrics(vertex: &VertexInfo, metrics: &JobMetrics) -> Vec<TaskMetricsSnapshot> {
    metrics
        .tasks()
        .into_iter()
        .filter(|t| {
            t.uid == vertex.uid
                || parse_task_name(&t.task)
                    .is_some_and(|(chain, _)| chain.split(" -> ").any(|op| op == vertex.name))
        })
        .collect()
}

/// Flink's backpressure level of a ratio of time backpressured: up to 10% is
/// `ok`, up to 50% `low`, above `high`.
fn backpressure_level(ratio: f64) -> &'static str {
    if ratio <= 0.10 {
        "ok"
    } else if ratio <= 0.50 {
        "low"
    } else {
        "high"
    }
}

/// `(chain, subtask index)` of a task name `<chain> (<i>/<p>)`, the chain
/// being `head -> next -> ...` (operator names).
fn parse_task_name(name: &str) -> Option<(&str, u32)> {
    let (chain, rest) = name.rsplit_once(" (")?;
    let (index, _) = rest.strip_suffix(')')?.split_once('/')?;
    // Task names count subtasks from 1.
    let index: u32 = index.parse().ok()?;
    Some((chain, index.saturating_sub(1)))
}

/// The tasks of checkpoint `record` that ran vertex `vertex`: `(subtask, its
/// stats, whether the vertex heads the task's chain)`. A chain's state and
/// figures are its task's: they are counted at the head vertex only, so that
/// a checkpoint's size is not counted once per chained operator.
fn vertex_tasks<'a>(
    record: &'a CheckpointRecord,
    vertex: &VertexInfo,
) -> Vec<(u32, &'a TaskStats, bool)> {
    record
        .tasks
        .iter()
        .filter_map(|(name, stats)| {
            let (chain, subtask) = parse_task_name(name)?;
            let mut operators = chain.split(" -> ");
            let head = operators.next() == Some(vertex.name.as_str());
            let member = head || chain.split(" -> ").any(|op| op == vertex.name);
            member.then_some((subtask, stats, head))
        })
        .collect()
}

fn status_of(record: &CheckpointRecord) -> &'static str {
    match record.status {
        SnapshotStatus::InProgress => checkpoint_status::IN_PROGRESS,
        SnapshotStatus::Completed => checkpoint_status::COMPLETED,
        SnapshotStatus::Failed(_) => checkpoint_status::FAILED,
    }
}

/// Flink's `checkpoint_type`: `UNALIGNED_CHECKPOINT` when some task took
/// its snapshot unaligned (savepoints never are).
fn checkpoint_type(record: &CheckpointRecord) -> &'static str {
    if record.kind == SnapshotKind::Savepoint {
        "SAVEPOINT"
    } else if record.unaligned {
        "UNALIGNED_CHECKPOINT"
    } else {
        "CHECKPOINT"
    }
}

fn end_to_end(record: &CheckpointRecord, now_ms: u64) -> u64 {
    match record.duration {
        Some(duration) => ms(duration),
        None => now_ms.saturating_sub(record.trigger_unix_ms),
    }
}

/// One checkpoint as the API shows it; `tasks` per vertex only when
/// `vertices` are given (the details route), `{}` in the history.
fn checkpoint_statistics(
    record: &CheckpointRecord,
    parallelism: u32,
    task_count: usize,
    discarded: bool,
    vertices: Option<&[VertexInfo]>,
) -> CheckpointStatistics {
    let now_ms = flowstate_runtime::checkpoint::coordinator::unix_ms_now();
    let duration = end_to_end(record, now_ms);
    let end_ms = record.trigger_unix_ms.saturating_add(duration);
    let savepoint = record.kind == SnapshotKind::Savepoint;
    let (class, failure) = match &record.status {
        SnapshotStatus::InProgress => (".PendingCheckpointStatistics", None),
        SnapshotStatus::Completed => (".CompletedCheckpointStatistics", None),
        SnapshotStatus::Failed(reason) => (".FailedCheckpointStatistics", Some(reason.clone())),
    };
    let completed = record.status == SnapshotStatus::Completed;
    // Acknowledgements are known per completed checkpoint (the history keeps
    // no count while one is in flight).
    let acknowledged = if completed { record.tasks.len() } else { 0 };
    let tasks = vertices
        .map(|vertices| {
            vertices
                .iter()
                .filter_map(|v| {
                    let acks = vertex_tasks(record, v);
                    if acks.is_empty() && completed {
                        return None;
                    }
                    let heads = || acks.iter().filter(|a| a.2).map(|a| a.1);
                    let bytes: u64 = heads().map(|t| t.bytes).sum();
                    let persisted: u64 = heads().map(|t| t.persisted_bytes).sum();
                    Some((
                        vertex_id(&v.uid),
                        TaskCheckpointStatistics {
                            id: record.id,
                            status: status_of(record).into(),
                            latest_ack_timestamp: signed(end_ms),
                            checkpointed_size: bytes,
                            // The runtime reports full sizes job-wide only.
                            state_size: bytes,
                            end_to_end_duration: duration,
                            alignment_buffered: 0,
                            processed_data: 0,
                            persisted_data: persisted,
                            num_subtasks: parallelism,
                            num_acknowledged_subtasks: acks.len() as u32,
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    CheckpointStatistics {
        class_name: class.into(),
        id: record.id,
        status: status_of(record).into(),
        is_savepoint: savepoint,
        savepoint_format: savepoint.then(|| "CANONICAL".to_owned()),
        trigger_timestamp: signed(record.trigger_unix_ms),
        latest_ack_timestamp: signed(if completed {
            end_ms
        } else {
            record.trigger_unix_ms
        }),
        checkpointed_size: record.bytes,
        state_size: record.full_bytes,
        end_to_end_duration: duration,
        // flowstate aligns by pausing inputs: nothing is buffered; an
        // unaligned checkpoint persists the in-flight records its barriers
        // overtook.
        alignment_buffered: 0,
        processed_data: 0,
        persisted_data: record.persisted_bytes,
        num_subtasks: if completed {
            record.tasks.len()
        } else {
            task_count
        } as u32,
        num_acknowledged_subtasks: acknowledged as u32,
        checkpoint_type: checkpoint_type(record).into(),
        tasks,
        external_path: completed.then(|| record.location.clone().unwrap_or_default()),
        discarded: completed.then_some(discarded),
        failure_timestamp: failure.as_ref().map(|_| signed(end_ms)),
        failure_message: failure,
    }
}

/// Subtask `index` of a vertex in one checkpoint: `ack` is its task's part
/// and whether the vertex heads the task's chain (`None`: not acknowledged);
/// `end_ms` and `duration` are the checkpoint's.
fn subtask_checkpoint(
    index: u32,
    ack: Option<(&TaskStats, bool)>,
    end_ms: u64,
    duration: u64,
) -> SubtaskCheckpoint {
    let Some((stats, head)) = ack else {
        return SubtaskCheckpoint {
            index,
            status: "pending_or_failed".into(),
            ack_timestamp: None,
            end_to_end_duration: None,
            state_size: None,
            checkpointed_size: None,
            checkpoint: None,
            alignment: None,
            start_delay: None,
            unaligned_checkpoint: None,
            aborted: None,
            sync_duration_us: None,
            alignment_duration_us: None,
        };
    };
    // A task's bytes, channel state included, are counted at the head of its
    // chain only (see `vertex_tasks`).
    let (bytes, persisted) = if head {
        (stats.bytes, stats.persisted_bytes)
    } else {
        (0, 0)
    };
    // Per-task acknowledgement times are not recorded: a task's figures are
    // the checkpoint's completion.
    SubtaskCheckpoint {
        index,
        status: "completed".into(),
        ack_timestamp: Some(signed(end_ms)),
        end_to_end_duration: Some(duration),
        state_size: Some(bytes),
        checkpointed_size: Some(bytes),
        checkpoint: Some(SubtaskCheckpointDuration {
            sync: ms(stats.sync_pause),
            asynchronous: duration.saturating_sub(ms(stats.sync_pause)),
        }),
        alignment: Some(SubtaskAlignment {
            buffered: 0,
            processed: 0,
            persisted,
            duration: ms(stats.alignment),
        }),
        start_delay: Some(0),
        // The task's own: with an aligned timeout, one task of a checkpoint
        // may switch to unaligned while another completed aligned.
        unaligned_checkpoint: Some(stats.unaligned),
        aborted: Some(false),
        sync_duration_us: Some(us(stats.sync_pause)),
        alignment_duration_us: Some(us(stats.alignment)),
    }
}

/// `GET /jobs/{id}/checkpoints/config` of a job with checkpointing `c` and
/// state backend `state_backend`.
fn checkpoint_config_of(state_backend: &str, c: &CheckpointConfigView) -> CheckpointConfig {
    let settings = &c.settings;
    // At-least-once is not Flink's unaligned checkpoints (there it is a mode
    // too); only the policy makes checkpoints unaligned.
    let (unaligned, aligned_timeout) = match settings.alignment {
        AlignmentPolicy::Aligned => (false, Duration::ZERO),
        AlignmentPolicy::Unaligned {
            aligned_timeout, ..
        } => (true, aligned_timeout),
    };
    CheckpointConfig {
        mode: if c.exactly_once {
            "exactly_once"
        } else {
            "at_least_once"
        }
        .into(),
        // Flink's "no periodic checkpoints".
        interval: settings.interval.map_or(i64::MAX as u64, ms),
        timeout: ms(settings.timeout),
        min_pause: ms(settings.min_pause),
        max_concurrent: settings.max_concurrent as u64,
        // Completed checkpoints stay in the storage (the newest
        // `retain`), also when the job is cancelled.
        externalization: Externalization {
            enabled: true,
            delete_on_cancellation: false,
        },
        state_backend: state_backend.to_owned(),
        checkpoint_storage: c.storage.clone(),
        unaligned_checkpoints: unaligned,
        tolerable_failed_checkpoints: u64::from(settings.tolerable_failures),
        aligned_checkpoint_timeout: ms(aligned_timeout),
        checkpoints_after_tasks_finish: false,
        state_changelog_enabled: false,
        changelog_periodic_materialization_interval: 0,
        changelog_storage: String::new(),
    }
}

impl LocalJobs {
    /// Checkpoint records of `job`, newest first, each with whether the
    /// retention has deleted it since (checkpoints beyond the newest `retain`
    /// completed ones; savepoints are never deleted by the job).
    fn records(
        &self,
        j: &JobController,
    ) -> (flowstate_runtime::control::CheckpointHistory, Vec<bool>) {
        let history = j.checkpoint_history();
        let retain = j
            .description()
            .checkpoint_config
            .as_ref()
            .map_or(usize::MAX, |c| c.settings.retain.max(1));
        let mut kept = 0;
        let discarded = history
            .entries
            .iter()
            .rev()
            .map(|r| {
                if r.kind == SnapshotKind::Checkpoint && r.status == SnapshotStatus::Completed {
                    kept += 1;
                    kept > retain
                } else {
                    false
                }
            })
            .collect();
        (history, discarded)
    }

    fn overview_of(&self, j: &JobController) -> Option<JobOverview> {
        let d = j.description();
        let state = state_of(j.status());
        let start = j.start_unix_ms();
        let end = j.end_unix_ms();
        let now = flowstate_runtime::checkpoint::coordinator::unix_ms_now();
        let tasks = d.vertices.len() as u32 * d.parallelism;
        Some(JobOverview {
            jid: j.job_id()?.to_owned(),
            name: d.name.clone(),
            job_type: "STREAMING".into(),
            scheduler_type: "Default".into(),
            start_time: signed(start),
            end_time: end.map_or(-1, signed),
            duration: signed(end.unwrap_or(now).saturating_sub(start)),
            last_modification: signed(end.unwrap_or(start)),
            state,
            tasks: task_counts(task_state(state), tasks, true),
            pending_operators: 0,
        })
    }
}

impl JobService for LocalJobs {
    fn jobs(&self) -> Vec<JobOverview> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().filter_map(|j| self.overview_of(j)).collect()
    }

    fn details(&self, job: &str) -> Result<JobDetails, ServiceError> {
        let j = self.find(job)?;
        let d = j.description();
        let overview = self.overview_of(&j).ok_or(ServiceError::UnknownJob)?;
        let now = flowstate_runtime::checkpoint::coordinator::unix_ms_now();
        let status = task_state(overview.state);
        let mut timestamps: BTreeMap<String, i64> = [
            "INITIALIZING",
            "CREATED",
            "RUNNING",
            "FAILING",
            "FAILED",
            "CANCELLING",
            "CANCELED",
            "FINISHED",
            "RESTARTING",
            "SUSPENDED",
            "RECONCILING",
        ]
        .into_iter()
        .map(|s| (s.to_owned(), 0))
        .collect();
        for s in ["INITIALIZING", "CREATED", "RUNNING"] {
            timestamps.insert(s.into(), overview.start_time);
        }
        if overview.end_time >= 0 {
            timestamps.insert(overview.state.as_str().into(), overview.end_time);
        }
        let vertices: Vec<VertexDetails> = d
            .vertices
            .iter()
            .enumerate()
            .map(|(index, v)| VertexDetails {
                id: vertex_id(&v.uid),
                name: v.name.clone(),
                max_parallelism: i64::from(d.max_parallelism),
                parallelism: d.parallelism,
                status: status.into(),
                start_time: overview.start_time,
                end_time: overview.end_time,
                duration: overview.duration,
                tasks: task_counts(status, d.parallelism, false),
                metrics: vertex_metrics(d, index, j.metrics()),
            })
            .collect();
        let mut status_counts: BTreeMap<String, u32> = EXECUTION_STATES
            .iter()
            .map(|s| ((*s).to_owned(), 0))
            .collect();
        status_counts.insert(status.into(), vertices.len() as u32);
        let plan = Plan {
            jid: overview.jid.clone(),
            name: d.name.clone(),
            kind: "STREAMING".into(),
            nodes: d
                .vertices
                .iter()
                .map(|v| PlanNode {
                    id: vertex_id(&v.uid),
                    parallelism: d.parallelism,
                    operator: String::new(),
                    operator_strategy: String::new(),
                    description: v.name.clone(),
                    inputs: v
                        .inputs
                        .iter()
                        .enumerate()
                        .map(|(num, (from, ship))| PlanInput {
                            num: num as u32,
                            id: vertex_id(from),
                            ship_strategy: (*ship).to_owned(),
                            exchange: "pipelined_bounded".into(),
                        })
                        .collect(),
                    optimizer_properties: Default::default(),
                })
                .collect(),
        };
        Ok(JobDetails {
            jid: overview.jid,
            name: overview.name,
            is_stoppable: d.checkpointing && !overview.state.is_terminal(),
            state: overview.state,
            job_type: "STREAMING".into(),
            scheduler_type: "Default".into(),
            start_time: overview.start_time,
            end_time: overview.end_time,
            duration: overview.duration,
            max_parallelism: i64::from(d.max_parallelism),
            now: signed(now),
            timestamps,
            vertices,
            status_counts,
            plan,
            pending_operators: 0,
        })
    }

    fn backpressure(&self, job: &str, vertex: &str) -> Result<BackPressure, ServiceError> {
        let j = self.find(job)?;
        let description = j.description();
        let Some(vertex) = description
            .vertices
            .iter()
            .find(|v| vertex_id(&v.uid) == vertex)
        else {
            return Err(ServiceError::UnknownVertex);
        };
        let tasks = vertex_task_metrics(vertex, j.metrics());
        if tasks.is_empty() {
            // Not running (yet): Flink's answer for "nothing sampled".
            return Ok(BackPressure::not_sampled());
        }
        let subtasks: Vec<SubtaskBackPressure> = tasks
            .iter()
            .map(|t| {
                let ratio = (t.backpressured_ms_per_second / 1000.0).clamp(0.0, 1.0);
                let level = backpressure_level(ratio).to_owned();
                SubtaskBackPressure {
                    subtask: t.subtask,
                    attempt_number: 0,
                    backpressure_level_deprecated: level.clone(),
                    backpressure_level: level,
                    ratio,
                    idle_ratio: (t.idle_ms_per_second / 1000.0).clamp(0.0, 1.0),
                    busy_ratio: (t.busy_ms_per_second / 1000.0).clamp(0.0, 1.0),
                }
            })
            .collect();
        let worst = subtasks.iter().map(|s| s.ratio).fold(0.0, f64::max);
        let level = backpressure_level(worst).to_owned();
        Ok(BackPressure {
            status: "ok".into(),
            backpressure_level_deprecated: Some(level.clone()),
            backpressure_level: Some(level),
            end_timestamp: Some(signed(
                flowstate_runtime::checkpoint::coordinator::unix_ms_now(),
            )),
            subtasks: Some(subtasks),
        })
    }

    fn checkpoints(&self, job: &str) -> Result<CheckpointingStatistics, ServiceError> {
        let j = self.find(job)?;
        let (history, discarded) = self.records(&j);
        let parallelism = j.description().parallelism;
        let task_count = j.task_names().len();
        let newest_first: Vec<CheckpointStatistics> = history
            .entries
            .iter()
            .rev()
            .zip(&discarded)
            .map(|(r, &gone)| checkpoint_statistics(r, parallelism, task_count, gone, None))
            .collect();
        let latest = |kind: SnapshotKind, status: &str| {
            newest_first
                .iter()
                .find(|c| c.is_savepoint == (kind == SnapshotKind::Savepoint) && c.status == status)
                .cloned()
        };
        let completed: Vec<&CheckpointStatistics> = newest_first
            .iter()
            .filter(|c| c.status == checkpoint_status::COMPLETED)
            .collect();
        let zeros = || StatsSummary::of(completed.iter().map(|_| 0));
        let restored = j.restore().map(|r| RestoredCheckpoint {
            id: r.checkpoint_id,
            restore_timestamp: signed(r.unix_ms),
            is_savepoint: r.kind == SnapshotKind::Savepoint,
            external_path: r.location,
        });
        Ok(CheckpointingStatistics {
            counts: CheckpointCounts {
                restored: u64::from(restored.is_some()),
                total: history.completed + history.failed + history.in_progress,
                in_progress: history.in_progress,
                completed: history.completed,
                failed: history.failed,
            },
            summary: CheckpointSummary {
                checkpointed_size: StatsSummary::of(completed.iter().map(|c| c.checkpointed_size)),
                state_size: StatsSummary::of(completed.iter().map(|c| c.state_size)),
                end_to_end_duration: StatsSummary::of(
                    completed.iter().map(|c| c.end_to_end_duration),
                ),
                alignment_buffered: zeros(),
                processed_data: zeros(),
                persisted_data: StatsSummary::of(completed.iter().map(|c| c.persisted_data)),
            },
            latest: LatestCheckpoints {
                completed: latest(SnapshotKind::Checkpoint, checkpoint_status::COMPLETED),
                savepoint: latest(SnapshotKind::Savepoint, checkpoint_status::COMPLETED),
                failed: newest_first
                    .iter()
                    .find(|c| c.status == checkpoint_status::FAILED)
                    .cloned(),
                restored,
            },
            history: newest_first,
        })
    }

    fn checkpoint(&self, job: &str, checkpoint: u64) -> Result<CheckpointStatistics, ServiceError> {
        let j = self.find(job)?;
        let (history, discarded) = self.records(&j);
        let d = j.description();
        history
            .entries
            .iter()
            .rev()
            .zip(&discarded)
            .find(|(r, _)| r.id == checkpoint)
            .map(|(r, &gone)| {
                checkpoint_statistics(
                    r,
                    d.parallelism,
                    j.task_names().len(),
                    gone,
                    Some(&d.vertices),
                )
            })
            .ok_or(ServiceError::UnknownCheckpoint)
    }

    fn checkpoint_subtasks(
        &self,
        job: &str,
        checkpoint: u64,
        vertex: &str,
    ) -> Result<TaskCheckpointDetails, ServiceError> {
        let j = self.find(job)?;
        let d = j.description();
        let v = d
            .vertices
            .iter()
            .find(|v| vertex_id(&v.uid) == vertex)
            .ok_or(ServiceError::UnknownVertex)?;
        let history = j.checkpoint_history();
        let record = history
            .entries
            .iter()
            .find(|r| r.id == checkpoint)
            .ok_or(ServiceError::UnknownCheckpoint)?;
        let now_ms = flowstate_runtime::checkpoint::coordinator::unix_ms_now();
        let duration = end_to_end(record, now_ms);
        let end_ms = record.trigger_unix_ms.saturating_add(duration);
        let acks = vertex_tasks(record, v);
        let subtasks: Vec<SubtaskCheckpoint> = (0..d.parallelism)
            .map(|index| {
                let ack = acks
                    .iter()
                    .find(|a| a.0 == index)
                    .map(|&(_, stats, head)| (stats, head));
                subtask_checkpoint(index, ack, end_ms, duration)
            })
            .collect();
        let done: Vec<&SubtaskCheckpoint> = subtasks
            .iter()
            .filter(|s| s.status == "completed")
            .collect();
        let summary_of = |f: &dyn Fn(&SubtaskCheckpoint) -> Option<u64>| {
            StatsSummary::of(done.iter().filter_map(|s| f(s)))
        };
        let bytes = summary_of(&|s| s.checkpointed_size);
        Ok(TaskCheckpointDetails {
            task: TaskCheckpointStatistics {
                id: record.id,
                status: status_of(record).into(),
                latest_ack_timestamp: signed(end_ms),
                checkpointed_size: done.iter().filter_map(|s| s.checkpointed_size).sum(),
                state_size: done.iter().filter_map(|s| s.state_size).sum(),
                end_to_end_duration: duration,
                alignment_buffered: 0,
                processed_data: 0,
                persisted_data: done
                    .iter()
                    .filter_map(|s| s.alignment.as_ref().map(|a| a.persisted))
                    .sum(),
                num_subtasks: d.parallelism,
                num_acknowledged_subtasks: done.len() as u32,
            },
            summary: TaskCheckpointSummary {
                checkpointed_size: bytes.clone(),
                state_size: bytes,
                end_to_end_duration: summary_of(&|s| s.end_to_end_duration),
                checkpoint_duration: CheckpointDurationSummary {
                    sync: summary_of(&|s| s.checkpoint.as_ref().map(|c| c.sync)),
                    asynchronous: summary_of(&|s| s.checkpoint.as_ref().map(|c| c.asynchronous)),
                },
                alignment: AlignmentSummary {
                    buffered: summary_of(&|s| s.alignment.as_ref().map(|a| a.buffered)),
                    processed: summary_of(&|s| s.alignment.as_ref().map(|a| a.processed)),
                    persisted: summary_of(&|s| s.alignment.as_ref().map(|a| a.persisted)),
                    duration: summary_of(&|s| s.alignment.as_ref().map(|a| a.duration)),
                },
                start_delay: summary_of(&|s| s.start_delay),
            },
            subtasks,
        })
    }

    fn checkpoint_config(&self, job: &str) -> Result<CheckpointConfig, ServiceError> {
        let j = self.find(job)?;
        let d = j.description();
        let Some(c) = &d.checkpoint_config else {
            return Err(ServiceError::Conflict(
                "the job runs without checkpointing".into(),
            ));
        };
        Ok(checkpoint_config_of(&d.state_backend, c))
    }

    fn exceptions(&self, job: &str) -> Result<JobExceptions, ServiceError> {
        let j = self.find(job)?;
        let failures = j.failures();
        let seen = j.metrics().restarts() + u64::from(j.status() == JobStatus::Failed);
        let entries: Vec<ExceptionInfo> = failures
            .iter()
            .rev()
            .map(|f| ExceptionInfo {
                exception_name: if f.restarted {
                    "flowstate.JobFailure (restarted)"
                } else {
                    "flowstate.JobFailure"
                }
                .into(),
                stacktrace: f.message.clone(),
                timestamp: signed(f.unix_ms),
                task_name: None,
                endpoint: None,
                task_manager_id: None,
                failure_labels: BTreeMap::new(),
                concurrent_exceptions: Vec::new(),
            })
            .collect();
        Ok(JobExceptions {
            exception_history: ExceptionHistory {
                truncated: seen > entries.len() as u64,
                entries,
            },
        })
    }

    fn trigger_savepoint(
        &self,
        job: &str,
        request: SavepointTrigger,
    ) -> Result<String, ServiceError> {
        self.find(job)?
            .trigger_savepoint_as(
                request.target_directory.as_deref(),
                request.stop,
                request.request_id.as_deref(),
            )
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
            SavepointState::InProgress { .. } => SavepointStatus::InProgress,
            SavepointState::Completed { location, .. } => SavepointStatus::Completed { location },
            SavepointState::Failed(reason) => SavepointStatus::Failed { reason },
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

#[cfg(test)]
mod tests {
    use flowstate_runtime::checkpoint::CoordinatorSettings;

    use super::*;

    /// `Source: numbers` → `count` chained with `Sink: out`, parallelism 2.
    fn vertices() -> Vec<VertexInfo> {
        let vertex = |uid: &str, name: &str| VertexInfo {
            uid: uid.into(),
            name: name.into(),
            inputs: Vec::new(),
        };
        vec![
            vertex("numbers", "Source: numbers"),
            vertex("count", "count"),
            vertex("out", "Sink: out"),
        ]
    }

    fn task(task: usize, unaligned: bool, persisted_bytes: u64) -> TaskStats {
        TaskStats {
            task,
            sync_pause: Duration::from_micros(300),
            alignment: Duration::from_millis(2),
            bytes: 1000 + persisted_bytes,
            unaligned,
            persisted_bytes,
        }
    }

    /// A completed checkpoint in which the `count` tasks persisted `persisted`
    /// bytes of in-flight records each, unaligned if any is non-zero.
    fn record(kind: SnapshotKind, persisted: [u64; 2]) -> CheckpointRecord {
        let tasks = vec![
            ("Source: numbers (1/2)".to_owned(), task(0, false, 0)),
            ("Source: numbers (2/2)".to_owned(), task(1, false, 0)),
            (
                "count -> Sink: out (1/2)".to_owned(),
                task(2, persisted[0] > 0, persisted[0]),
            ),
            (
                "count -> Sink: out (2/2)".to_owned(),
                task(3, persisted[1] > 0, persisted[1]),
            ),
        ];
        CheckpointRecord {
            id: 5,
            kind,
            status: SnapshotStatus::Completed,
            trigger_unix_ms: 1_700_000_000_000,
            duration: Some(Duration::from_millis(40)),
            bytes: tasks.iter().map(|t| t.1.bytes).sum(),
            full_bytes: tasks.iter().map(|t| t.1.bytes).sum(),
            alignment_max: Duration::from_millis(2),
            sync_pause_max: Duration::from_micros(300),
            unaligned: tasks.iter().any(|t| t.1.unaligned),
            persisted_bytes: tasks.iter().map(|t| t.1.persisted_bytes).sum(),
            tasks,
            location: Some("memory://ck/job/chk-5".into()),
        }
    }

    fn statistics(record: &CheckpointRecord) -> CheckpointStatistics {
        checkpoint_statistics(record, 2, 4, false, Some(&vertices()))
    }

    #[test]
    fn an_unaligned_checkpoint_is_reported_as_such_with_its_persisted_bytes() {
        let record = record(SnapshotKind::Checkpoint, [3000, 0]);
        let stats = statistics(&record);
        assert_eq!(stats.checkpoint_type, "UNALIGNED_CHECKPOINT");
        assert_eq!(stats.persisted_data, 3000);
        assert_eq!(stats.checkpointed_size, 7000);
        let persisted = |uid: &str| stats.tasks[&vertex_id(uid)].persisted_data;
        // Counted at the head of the chain, like the task's bytes.
        assert_eq!(
            (persisted("numbers"), persisted("count"), persisted("out")),
            (0, 3000, 0)
        );
        // The history shows the same type and bytes (no per-vertex figures).
        let history = checkpoint_statistics(&record, 2, 4, false, None);
        assert_eq!(
            (history.checkpoint_type.as_str(), history.persisted_data),
            ("UNALIGNED_CHECKPOINT", 3000)
        );
    }

    #[test]
    fn aligned_checkpoints_and_savepoints_keep_their_types() {
        let aligned = statistics(&record(SnapshotKind::Checkpoint, [0, 0]));
        assert_eq!(
            (aligned.checkpoint_type.as_str(), aligned.persisted_data),
            ("CHECKPOINT", 0)
        );
        let savepoint = statistics(&record(SnapshotKind::Savepoint, [0, 0]));
        assert_eq!(savepoint.checkpoint_type, "SAVEPOINT");
    }

    /// Each subtask says whether its own task went unaligned; the persisted
    /// bytes are the head vertex's, as its size is.
    #[test]
    fn a_subtask_reports_its_own_task_flag_and_persisted_bytes() {
        let unaligned = task(2, true, 3000);
        let aligned = task(3, false, 0);
        let head = subtask_checkpoint(0, Some((&unaligned, true)), 0, 40);
        assert_eq!(head.unaligned_checkpoint, Some(true));
        assert_eq!(head.alignment.as_ref().map(|a| a.persisted), Some(3000));
        assert_eq!(head.checkpointed_size, Some(4000));
        let chained = subtask_checkpoint(0, Some((&unaligned, false)), 0, 40);
        assert_eq!(chained.unaligned_checkpoint, Some(true));
        assert_eq!(chained.alignment.as_ref().map(|a| a.persisted), Some(0));
        let other = subtask_checkpoint(1, Some((&aligned, true)), 0, 40);
        assert_eq!(other.unaligned_checkpoint, Some(false));
        assert_eq!(other.alignment.as_ref().map(|a| a.persisted), Some(0));
        let pending = subtask_checkpoint(1, None, 0, 40);
        assert_eq!(
            (pending.status.as_str(), pending.unaligned_checkpoint),
            ("pending_or_failed", None)
        );
    }

    #[test]
    fn the_config_route_reports_the_alignment_policy() {
        let view = |alignment, exactly_once| CheckpointConfigView {
            settings: CoordinatorSettings {
                alignment,
                ..CoordinatorSettings::default()
            },
            exactly_once,
            storage: "memory://ck".into(),
        };
        let unaligned = checkpoint_config_of(
            "heap",
            &view(
                AlignmentPolicy::Unaligned {
                    aligned_timeout: Duration::from_millis(1500),
                    inflight_bytes_max: 1 << 20,
                },
                true,
            ),
        );
        assert!(unaligned.unaligned_checkpoints);
        assert_eq!(unaligned.aligned_checkpoint_timeout, 1500);
        assert_eq!(unaligned.mode, "exactly_once");
        let aligned = checkpoint_config_of("heap", &view(AlignmentPolicy::Aligned, true));
        assert!(!aligned.unaligned_checkpoints);
        assert_eq!(aligned.aligned_checkpoint_timeout, 0);
        // At-least-once does not align, and is still not unaligned.
        let at_least_once = checkpoint_config_of("heap", &view(AlignmentPolicy::Aligned, false));
        assert_eq!(at_least_once.mode, "at_least_once");
        assert!(!at_least_once.unaligned_checkpoints);
    }
}
