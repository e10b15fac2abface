//! The control surface of a running job, for whatever drives it from outside
//! (the HTTP API, tests): its status and graph, the history of its
//! checkpoints, savepoints on request, stop-with-savepoint,
//! stop-with-checkpoint and cancel.
//!
//! Owns: the job's status, a bounded checkpoint history and the state of
//! savepoint requests. It reaches the running job only by a message to the
//! current attempt's coordinator ([`CoordinatorEvent::Savepoint`] with a
//! [`SavepointOrder`], through the `control_plane`) and by the cancel switch;
//! the coordinator's driver reports back through the `on_*` methods. Which
//! targets a request may name is decided by `savepoint_target`
//! ([`SavepointTargetPolicy`], re-exported here).
//! Must not touch: tasks, channels, the coordinator or its driver, upload
//! threads, or storage of snapshots (beyond opening a savepoint's directory).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use flowstate_checkpoint::coordinator::{TaskStats, unix_ms_now};
use flowstate_checkpoint::layout::savepoint_dir_name;
use flowstate_checkpoint::storage::open_storage;
use flowstate_checkpoint::{CheckpointId, CheckpointStats, SnapshotKind};

use crate::control_plane::{CoordinatorEvent, CoordinatorSender, SavepointOrder};
use crate::graph::VertexInfo;
use crate::metrics::JobMetrics;
pub use crate::savepoint_target::{SavepointTargetError, SavepointTargetPolicy};

/// Entries the checkpoint history keeps (the newest; counts cover all).
pub const HISTORY_ENTRIES_MAX: usize = 128;
/// Savepoint requests whose outcome is remembered.
pub const SAVEPOINT_REQUESTS_MAX: usize = 64;
/// Failures (restarts and the final one) the controller remembers (the newest).
pub const FAILURES_MAX: usize = 64;

/// A new random id: 32 lower-case hex digits (128 bits from the operating
/// system's random source), the shape of Flink's job and trigger ids. Should
/// the operating system refuse, the bits come from `fastrand` (seeded from
/// the process's own entropy): still unique in practice, and an id is not a
/// secret.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bytes) {
        tracing::warn!("the system random source failed ({e}); ids come from fastrand");
        bytes = fastrand::u128(..).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the shape [`random_id`] gives: 32 lower-case hex digits.
pub fn is_hex_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Created,
    Running,
    /// An attempt failed; the next one starts from the latest checkpoint.
    Restarting,
    /// A stop-with-savepoint is in progress.
    Stopping,
    Finished,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }
}

/// Why a control request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed or cannot apply to this job's configuration.
    #[error("{0}")]
    Invalid(String),
    /// The savepoint target a request named is malformed or not allowed
    /// ([`SavepointTargetPolicy`]).
    #[error(transparent)]
    Target(#[from] SavepointTargetError),
    /// The job is not in a state that allows it (e.g. a savepoint in flight).
    #[error("{0}")]
    Conflict(String),
    /// No such savepoint request.
    #[error("{0}")]
    NotFound(String),
}

/// Status of one checkpoint or savepoint in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotStatus {
    InProgress,
    Completed,
    Failed(String),
}

/// One entry of the checkpoint history.
#[derive(Debug, Clone)]
pub struct CheckpointRecord {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub status: SnapshotStatus,
    pub trigger_unix_ms: u64,
    /// Set once it completed or failed.
    pub duration: Option<Duration>,
    pub bytes: u64,
    pub full_bytes: u64,
    pub alignment_max: Duration,
    pub sync_pause_max: Duration,
    /// Some task took its snapshot unaligned (set once it completed).
    pub unaligned: bool,
    /// Bytes of in-flight records the tasks persisted as channel state
    /// (also counted in `bytes`).
    pub persisted_bytes: u64,
    /// `(task name, its part)`, for completed ones.
    pub tasks: Vec<(String, TaskStats)>,
    /// Where a completed one is: a savepoint's directory, a checkpoint's
    /// directory in the checkpoint storage (`<storage URL>/<job>/chk-<id>/`).
    pub location: Option<String>,
}

/// The checkpoint history of a job, newest last.
#[derive(Debug, Clone, Default)]
pub struct CheckpointHistory {
    pub completed: u64,
    pub failed: u64,
    pub in_progress: u64,
    pub entries: Vec<CheckpointRecord>,
}

/// The snapshot a job started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRecord {
    /// As shown to people: the snapshot's path (and storage).
    pub location: String,
    pub checkpoint_id: CheckpointId,
    pub kind: SnapshotKind,
    /// When it was loaded (ms since the Unix epoch).
    pub unix_ms: u64,
}

/// One failure of the job: an attempt that failed (and was restarted, or
/// was the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    /// When the runtime saw it (ms since the Unix epoch).
    pub unix_ms: u64,
    /// The error with its causes (`a: b: c`).
    pub message: String,
    /// The job was restarted after it (else it ended the job).
    pub restarted: bool,
}

/// What became of a savepoint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointState {
    InProgress {
        checkpoint_id: Option<CheckpointId>,
    },
    Completed {
        location: String,
        checkpoint_id: CheckpointId,
    },
    Failed(String),
}

/// Static facts about the job, known when it starts.
#[derive(Debug, Clone, Default)]
pub struct JobDescription {
    pub name: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub vertices: Vec<VertexInfo>,
    /// The job has a checkpoint coordinator (periodic checkpoints or not), so
    /// it can take savepoints.
    pub checkpointing: bool,
    /// The job takes periodic checkpoints into its checkpoint storage, so it
    /// can stop at one ([`JobController::stop_with_checkpoint`]).
    pub periodic_checkpoints: bool,
    pub savepoint_dir: Option<String>,
    /// Which targets a savepoint request may name.
    pub savepoint_policy: SavepointTargetPolicy,
    /// How the job checkpoints, for people and tools; `None` without a
    /// checkpoint coordinator.
    pub checkpoint_config: Option<CheckpointConfigView>,
    /// The state backend's name (`heap`, `rocksdb`).
    pub state_backend: String,
}

/// A job's checkpointing configuration as shown to people and tools.
#[derive(Debug, Clone)]
pub struct CheckpointConfigView {
    pub settings: flowstate_checkpoint::CoordinatorSettings,
    /// Exactly-once (barriers aligned) or at-least-once (barriers tracked,
    /// inputs never paused). Neither is Flink's unaligned checkpoint.
    pub exactly_once: bool,
    /// The checkpoint storage, as it describes itself.
    pub storage: String,
}

struct SavepointRequest {
    location: String,
    stop: bool,
    state: SavepointState,
}

#[derive(Default)]
struct ControlState {
    status: Option<JobStatus>,
    failure: Option<String>,
    restored_from: Option<RestoreRecord>,
    /// Failures, oldest first; at most [`FAILURES_MAX`].
    failures: VecDeque<FailureRecord>,
    /// When the job reached a terminal status.
    ended_unix_ms: Option<u64>,
    history: VecDeque<CheckpointRecord>,
    completed: u64,
    failed: u64,
    /// Names of the current attempt's tasks, by task index.
    task_names: Vec<String>,
    requests: HashMap<String, SavepointRequest>,
    request_order: VecDeque<String>,
    /// The current attempt's coordinator queue.
    coordinator: Option<CoordinatorSender>,
    /// Location of the savepoint a stop ended the job with.
    stopped_with: Option<String>,
    /// Someone asked about that stop's savepoint after it completed.
    stop_reported: bool,
    /// A stop-with-checkpoint was asked for: every attempt's coordinator is
    /// told (a restart in between does not forget it).
    stop_with_checkpoint: bool,
}

/// A running job's control surface; shared (`Arc`) by the runtime and
/// whoever drives the job.
pub struct JobController {
    description: JobDescription,
    job_id: OnceLock<String>,
    start_unix_ms: u64,
    metrics: Arc<JobMetrics>,
    cancel: Box<dyn Fn() + Send + Sync>,
    state: Mutex<ControlState>,
}

/// `dir` joined with `name`; a relative local directory is made absolute
/// against this process's working directory.
fn join_location(dir: &str, name: &str) -> String {
    use flowstate_checkpoint::Location;
    let location = Location::parse(dir);
    if let Location::Url {
        scheme: "memory", ..
    } = location
    {
        // A memory storage has a name, not a path.
        return format!("{}-{name}", dir.trim_end_matches('/'));
    }
    let dir = if !location.is_plain_path() || dir.starts_with('/') {
        dir.to_owned()
    } else {
        std::path::absolute(dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| dir.to_owned())
    };
    format!("{}/{name}", dir.trim_end_matches('/'))
}

impl JobController {
    pub(crate) fn new(
        description: JobDescription,
        metrics: Arc<JobMetrics>,
        cancel: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            description,
            job_id: OnceLock::new(),
            start_unix_ms: unix_ms_now(),
            metrics,
            cancel,
            state: Mutex::new(ControlState {
                status: Some(JobStatus::Created),
                ..ControlState::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job's id (its directory in checkpoint storage); `None` until the
    /// job has started (and always without checkpoints).
    pub fn job_id(&self) -> Option<&str> {
        self.job_id.get().map(String::as_str)
    }

    pub fn description(&self) -> &JobDescription {
        &self.description
    }

    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    pub fn start_unix_ms(&self) -> u64 {
        self.start_unix_ms
    }

    pub fn status(&self) -> JobStatus {
        self.lock().status.unwrap_or(JobStatus::Created)
    }

    /// Why the job failed, once it did.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// The snapshot the job started from.
    pub fn restored_from(&self) -> Option<String> {
        self.lock()
            .restored_from
            .as_ref()
            .map(|r| r.location.clone())
    }

    /// The snapshot the job started from, with its id and kind.
    pub fn restore(&self) -> Option<RestoreRecord> {
        self.lock().restored_from.clone()
    }

    /// The job's failures so far (restarts and the final one), oldest first;
    /// the newest [`FAILURES_MAX`].
    pub fn failures(&self) -> Vec<FailureRecord> {
        self.lock().failures.iter().cloned().collect()
    }

    /// When the job ended (ms since the Unix epoch), once it has.
    pub fn end_unix_ms(&self) -> Option<u64> {
        self.lock().ended_unix_ms
    }

    /// The savepoint a stop ended the job with.
    pub fn stopped_with_savepoint(&self) -> Option<String> {
        self.lock().stopped_with.clone()
    }

    /// The current attempt's task names (`<chain> (<i>/<p>)`), by task index.
    pub fn task_names(&self) -> Vec<String> {
        self.lock().task_names.clone()
    }

    pub fn checkpoint_history(&self) -> CheckpointHistory {
        let state = self.lock();
        let in_progress = state
            .history
            .iter()
            .filter(|r| r.status == SnapshotStatus::InProgress)
            .count() as u64;
        CheckpointHistory {
            completed: state.completed,
            failed: state.failed,
            in_progress,
            entries: state.history.iter().cloned().collect(),
        }
    }

    /// Stops every task now, without a savepoint.
    pub fn cancel(&self) -> Result<(), ControlError> {
        let status = self.status();
        if status.is_terminal() {
            return Err(ControlError::Conflict(format!(
                "the job is already {}",
                status_word(status)
            )));
        }
        (self.cancel)();
        Ok(())
    }

    /// Starts a savepoint into a new directory under `target` (or the job's
    /// default savepoint directory); with `stop`, the job ends once it
    /// completed (stop-with-savepoint). Returns the request id to ask
    /// [`Self::savepoint`] about. A named `target` must be allowed by the job's
    /// [`SavepointTargetPolicy`] (else [`ControlError::Target`], and nothing is
    /// created).
    pub fn trigger_savepoint(
        &self,
        target: Option<&str>,
        stop: bool,
    ) -> Result<String, ControlError> {
        self.trigger_savepoint_as(target, stop, None)
    }

    /// [`Self::trigger_savepoint`] under the request id `request_id` when one
    /// is given (a client's own trigger id, 32 lower-case hex digits): asking
    /// again with the id of a request already made starts nothing and
    /// answers that id (a retried request is not a second savepoint).
    pub fn trigger_savepoint_as(
        &self,
        target: Option<&str>,
        stop: bool,
        request_id: Option<&str>,
    ) -> Result<String, ControlError> {
        if let Some(id) = request_id {
            if !is_hex_id(id) {
                return Err(ControlError::Invalid(format!(
                    "the trigger id '{}' is not 32 lower-case hex digits",
                    id.chars().take(64).collect::<String>()
                )));
            }
            if self.lock().requests.contains_key(id) {
                return Ok(id.to_owned());
            }
        }
        if !self.description.checkpointing {
            return Err(ControlError::Invalid(
                "savepoints need the checkpoint coordinator, and this job runs without \
                 checkpointing configuration"
                    .into(),
            ));
        }
        let savepoint_dir = self.description.savepoint_dir.as_deref();
        let target = match target {
            // What a request names is checked; the job's own default is configuration.
            Some(named) => Some(
                self.description
                    .savepoint_policy
                    .check(named, savepoint_dir)?,
            ),
            None => savepoint_dir.map(str::to_owned),
        };
        let target = target.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            ControlError::Invalid(
                "no target directory: name one (`--target DIR`, `target_directory`) \
                     or start the job with --savepoint-dir"
                    .into(),
            )
        })?;
        let mut state = self.lock();
        match state.status.unwrap_or(JobStatus::Created) {
            JobStatus::Running => {}
            other => {
                return Err(ControlError::Conflict(format!(
                    "the job is {}; savepoints are taken of running jobs",
                    status_word(other)
                )));
            }
        }
        if let Some((id, _)) = state
            .requests
            .iter()
            .find(|(_, r)| matches!(r.state, SavepointState::InProgress { .. }))
        {
            return Err(ControlError::Conflict(format!(
                "savepoint request {id} is still in progress; wait for it to finish"
            )));
        }
        let job_id = self.job_id().unwrap_or("job");
        let location = join_location(&target, &savepoint_dir_name(job_id, fastrand::u64(..)));
        let storage = open_storage(&location)
            .map_err(|e| ControlError::Invalid(format!("savepoint target {target}: {e}")))?;
        let Some(coordinator) = state.coordinator.clone() else {
            return Err(ControlError::Conflict(
                "the job is between attempts; try again".into(),
            ));
        };
        let request_id = request_id.map_or_else(random_id, str::to_owned);
        let order = SavepointOrder {
            request_id: request_id.clone(),
            storage,
            stop,
            location: location.clone(),
        };
        if coordinator
            .try_send(CoordinatorEvent::Savepoint(order))
            .is_err()
        {
            return Err(ControlError::Conflict(
                "the checkpoint coordinator is busy or gone; try again".into(),
            ));
        }
        if state.request_order.len() >= SAVEPOINT_REQUESTS_MAX
            && let Some(oldest) = state.request_order.pop_front()
        {
            state.requests.remove(&oldest);
        }
        state.request_order.push_back(request_id.clone());
        state.requests.insert(
            request_id.clone(),
            SavepointRequest {
                location,
                stop,
                state: SavepointState::InProgress {
                    checkpoint_id: None,
                },
            },
        );
        if stop {
            state.status = Some(JobStatus::Stopping);
        }
        Ok(request_id)
    }

    /// What became of savepoint request `request_id`.
    /// Stops the job at a checkpoint (a graceful shutdown): the sources stop
    /// emitting after the barrier of an ordinary checkpoint written to the
    /// checkpoint storage (no end of input, no final watermark, as for a
    /// stop-with-savepoint), sinks commit on its completion, and the job
    /// then finishes; a restore of the job's latest checkpoint resumes from
    /// it. The coordinator takes it as soon as nothing else is in flight,
    /// tries again if it fails, and a restart before it completed asks the
    /// next attempt's coordinator again.
    ///
    /// Refused at once when it cannot work: no coordinator or no periodic
    /// checkpoints (`Invalid`, for ever), the job already terminal or
    /// stopping with a savepoint, or not running yet (`Conflict`: try
    /// again). Asking again while it stops changes nothing.
    pub fn stop_with_checkpoint(&self) -> Result<(), ControlError> {
        if !self.description.checkpointing || !self.description.periodic_checkpoints {
            return Err(ControlError::Invalid(
                "stop-with-checkpoint needs periodic checkpoints, and this job takes none".into(),
            ));
        }
        let mut state = self.lock();
        if state.stop_with_checkpoint {
            return Ok(());
        }
        match state.status.unwrap_or(JobStatus::Created) {
            JobStatus::Running | JobStatus::Restarting => {}
            other => {
                return Err(ControlError::Conflict(format!(
                    "the job is {}; only a running job stops at a checkpoint",
                    status_word(other)
                )));
            }
        }
        if let Some(coordinator) = &state.coordinator {
            coordinator
                .try_send(CoordinatorEvent::StopWithCheckpoint)
                .map_err(|_| {
                    ControlError::Conflict(
                        "the checkpoint coordinator is busy or gone; try again".into(),
                    )
                })?;
        }
        // Between attempts (restarting) the next attempt is told when it starts.
        state.stop_with_checkpoint = true;
        state.status = Some(JobStatus::Stopping);
        Ok(())
    }

    /// Whether a stop-with-checkpoint was asked for.
    pub fn stopping_with_checkpoint(&self) -> bool {
        self.lock().stop_with_checkpoint
    }

    pub fn savepoint(&self, request_id: &str) -> Result<SavepointState, ControlError> {
        let mut state = self.lock();
        let request = state.requests.get(request_id).ok_or_else(|| {
            ControlError::NotFound(format!("no savepoint request '{request_id}'"))
        })?;
        let (answer, stop) = (request.state.clone(), request.stop);
        if stop && matches!(answer, SavepointState::Completed { .. }) {
            state.stop_reported = true;
        }
        Ok(answer)
    }

    /// Whether the outcome of the savepoint a stop ended the job with was
    /// asked for (so a process may exit without leaving its client unanswered).
    pub fn stop_reported(&self) -> bool {
        self.lock().stop_reported
    }

    // --- reports from the runtime ------------------------------------------

    pub(crate) fn set_job_id(&self, job_id: &str) {
        let _ = self.job_id.set(job_id.to_owned());
    }

    pub(crate) fn set_restored_from(
        &self,
        location: String,
        checkpoint_id: CheckpointId,
        kind: SnapshotKind,
    ) {
        self.lock().restored_from = Some(RestoreRecord {
            location,
            checkpoint_id,
            kind,
            unix_ms: unix_ms_now(),
        });
    }

    /// A new attempt runs, with these tasks and this coordinator queue.
    pub(crate) fn on_attempt_started(
        &self,
        task_names: Vec<String>,
        coordinator: Option<CoordinatorSender>,
    ) {
        let mut state = self.lock();
        state.task_names = task_names;
        if state.stop_with_checkpoint
            && let Some(coordinator) = &coordinator
            && coordinator
                .try_send(CoordinatorEvent::StopWithCheckpoint)
                .is_err()
        {
            tracing::warn!("could not ask the new attempt to stop at a checkpoint");
        }
        state.coordinator = coordinator;
        if state.status != Some(JobStatus::Stopping) {
            state.status = Some(JobStatus::Running);
        }
    }

    /// The attempt ended; `next` is what the job is now.
    pub(crate) fn on_attempt_ended(&self, next: JobStatus, failure: Option<String>) {
        let mut state = self.lock();
        state.coordinator = None;
        for request in state.requests.values_mut() {
            if matches!(request.state, SavepointState::InProgress { .. }) {
                request.state = SavepointState::Failed(
                    "the job stopped running before the savepoint completed".into(),
                );
            }
        }
        for record in &mut state.history {
            if record.status == SnapshotStatus::InProgress {
                record.status = SnapshotStatus::Failed("the job stopped running".into());
            }
        }
        state.status = Some(next);
        if next.is_terminal() {
            state.ended_unix_ms = Some(unix_ms_now());
        }
        if let Some(message) = &failure {
            if state.failures.len() >= FAILURES_MAX {
                state.failures.pop_front();
            }
            state.failures.push_back(FailureRecord {
                unix_ms: unix_ms_now(),
                message: message.clone(),
                restarted: next == JobStatus::Restarting,
            });
        }
        if failure.is_some() {
            state.failure = failure;
        }
    }

    /// The coordinator started snapshot `id` (for savepoint request
    /// `request`, if any).
    pub(crate) fn on_triggered(&self, id: CheckpointId, kind: SnapshotKind, request: Option<&str>) {
        let mut state = self.lock();
        if let Some(r) = request.and_then(|r| state.requests.get_mut(r)) {
            r.state = SavepointState::InProgress {
                checkpoint_id: Some(id),
            };
        }
        if state.history.len() >= HISTORY_ENTRIES_MAX {
            state.history.pop_front();
        }
        state.history.push_back(CheckpointRecord {
            id,
            kind,
            status: SnapshotStatus::InProgress,
            trigger_unix_ms: unix_ms_now(),
            duration: None,
            bytes: 0,
            full_bytes: 0,
            alignment_max: Duration::ZERO,
            sync_pause_max: Duration::ZERO,
            unaligned: false,
            persisted_bytes: 0,
            tasks: Vec::new(),
            location: None,
        });
    }

    pub(crate) fn on_completed(&self, stats: &CheckpointStats, request: Option<&str>) {
        let checkpoint_location = match (&self.description.checkpoint_config, self.job_id()) {
            (Some(config), Some(job)) if stats.kind == SnapshotKind::Checkpoint => Some(format!(
                "{}/{}",
                config.storage.trim_end_matches('/'),
                flowstate_checkpoint::layout::checkpoint_dir(job, stats.id)
            )),
            _ => None,
        };
        let mut state = self.lock();
        let savepoint_location = request
            .and_then(|r| state.requests.get(r))
            .map(|r| r.location.clone());
        state.completed += 1;
        let tasks = stats
            .tasks
            .iter()
            .map(|t| {
                let name = state
                    .task_names
                    .get(t.task)
                    .cloned()
                    .unwrap_or_else(|| format!("task {}", t.task));
                (name, *t)
            })
            .collect();
        if let Some(record) = state.history.iter_mut().rev().find(|r| r.id == stats.id) {
            record.status = SnapshotStatus::Completed;
            record.trigger_unix_ms = stats.trigger_unix_ms;
            record.duration = Some(stats.duration);
            record.bytes = stats.bytes;
            record.full_bytes = stats.full_bytes;
            record.alignment_max = stats.alignment_max;
            record.sync_pause_max = stats.sync_pause_max;
            record.unaligned = stats.unaligned;
            record.persisted_bytes = stats.persisted_bytes;
            record.tasks = tasks;
            record.location = savepoint_location.or(checkpoint_location);
        }
        if let Some(request) = request.and_then(|r| state.requests.get_mut(r)) {
            request.state = SavepointState::Completed {
                location: request.location.clone(),
                checkpoint_id: stats.id,
            };
            if request.stop {
                let location = request.location.clone();
                state.stopped_with = Some(location);
            }
        }
    }

    pub(crate) fn on_failed(&self, id: CheckpointId, reason: &str, request: Option<&str>) {
        let mut state = self.lock();
        state.failed += 1;
        if let Some(record) = state.history.iter_mut().rev().find(|r| r.id == id) {
            record.status = SnapshotStatus::Failed(reason.to_owned());
            record.duration = Some(Duration::from_millis(
                unix_ms_now().saturating_sub(record.trigger_unix_ms),
            ));
        }
        if let Some(request) = request {
            state.fail_request(request, reason);
        }
    }

    /// A savepoint request that never started (the job ended first).
    pub(crate) fn on_request_dropped(&self, request: &str, reason: &str) {
        self.lock().fail_request(request, reason);
    }
}

impl ControlState {
    /// Savepoint request `request` failed: a stop's sources resume, and the
    /// directories it created are removed if empty (the coordinator deleted
    /// its files).
    fn fail_request(&mut self, request: &str, reason: &str) {
        let Some(r) = self.requests.get_mut(request) else {
            return;
        };
        r.state = SavepointState::Failed(reason.to_owned());
        remove_empty_dirs(std::path::Path::new(&r.location));
        if r.stop && self.status == Some(JobStatus::Stopping) {
            self.status = Some(JobStatus::Running);
        }
    }
}

/// Removes `dir` and the directories below it if they hold no file (a local
/// savepoint directory whose files were deleted); leaves anything else alone.
fn remove_empty_dirs(dir: &std::path::Path) {
    let location = dir.as_os_str().to_string_lossy();
    if !flowstate_checkpoint::Location::parse(&location).is_plain_path() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&entry.path());
        }
    }
    // Fails, as it should, if a file is left.
    let _ = std::fs::remove_dir(dir);
}

/// Lower-case word for a status, for messages.
pub fn status_word(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Created => "created",
        JobStatus::Running => "running",
        JobStatus::Restarting => "restarting",
        JobStatus::Stopping => "stopping",
        JobStatus::Finished => "finished",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

impl JobDescription {
    /// What the HTTP API shows of `graph` run with `config`, before it runs.
    pub(crate) fn of(
        graph: &crate::graph::JobGraph,
        config: &crate::config::ExecutionConfig,
    ) -> Self {
        JobDescription {
            name: config.job_name.clone(),
            parallelism: config.parallelism,
            max_parallelism: config.max_parallelism,
            vertices: graph.describe(),
            checkpointing: config.checkpointing.is_some(),
            periodic_checkpoints: config
                .checkpointing
                .as_ref()
                .is_some_and(|c| c.settings.periodic()),
            savepoint_dir: config
                .checkpointing
                .as_ref()
                .and_then(|c| c.savepoint_dir.clone()),
            savepoint_policy: config.savepoint_policy.clone(),
            checkpoint_config: config.checkpointing.as_ref().map(|c| CheckpointConfigView {
                settings: c.settings.clone(),
                exactly_once: c.guarantee == crate::config::Guarantee::ExactlyOnce,
                storage: c.storage.describe(),
            }),
            state_backend: config.state_backend.kind().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(task: usize, unaligned: bool, persisted_bytes: u64) -> TaskStats {
        TaskStats {
            task,
            sync_pause: Duration::from_micros(40),
            alignment: Duration::from_millis(3),
            bytes: 1000 + persisted_bytes,
            unaligned,
            persisted_bytes,
        }
    }

    /// The history keeps what `CheckpointStats` says of channel state: the
    /// checkpoint's flag and bytes, and each task's own.
    #[test]
    fn a_completed_record_carries_its_alignment_and_persisted_bytes() {
        let controller = JobController::new(
            JobDescription::default(),
            Arc::new(JobMetrics::default()),
            Box::new(|| {}),
        );
        controller.on_attempt_started(vec!["count (1/2)".into(), "count (2/2)".into()], None);
        controller.on_triggered(7, SnapshotKind::Checkpoint, None);
        let pending = controller.checkpoint_history().entries;
        assert_eq!(
            (pending[0].unaligned, pending[0].persisted_bytes),
            (false, 0)
        );
        let tasks = vec![task(0, true, 4096), task(1, false, 0)];
        controller.on_completed(
            &CheckpointStats {
                id: 7,
                kind: SnapshotKind::Checkpoint,
                trigger_unix_ms: unix_ms_now(),
                duration: Duration::from_millis(12),
                bytes: 6096,
                full_bytes: 6096,
                sync_pause_max: Duration::from_micros(40),
                alignment_max: Duration::from_millis(3),
                unaligned: true,
                persisted_bytes: 4096,
                tasks: tasks.clone(),
            },
            None,
        );
        let history = controller.checkpoint_history();
        let record = &history.entries[0];
        assert_eq!(record.status, SnapshotStatus::Completed);
        assert_eq!((record.unaligned, record.persisted_bytes), (true, 4096));
        assert_eq!(
            record.tasks,
            vec![
                ("count (1/2)".to_owned(), tasks[0]),
                ("count (2/2)".to_owned(), tasks[1])
            ]
        );
    }
}
