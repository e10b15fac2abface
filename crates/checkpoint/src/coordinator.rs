//! The checkpoint coordinator's state machine.
//!
//! It decides when checkpoint n starts, collects one acknowledgement per task,
//! writes `_metadata` last (create-if-absent) once all arrived, keeps the last
//! `retain` completed checkpoints and deletes the rest, and aborts checkpoints
//! that time out or that a task declines. It does no I/O with tasks: the runtime
//! feeds it events and carries out the [`CoordinatorAction`]s it returns.
//!
//! Savepoints go through the same state machine, with three differences: their
//! files and `_metadata` go to their own storage (the savepoint directory, all
//! paths relative to it), they are never retained, discarded or counted for
//! shared files (the user owns them), and a failed savepoint does not count
//! towards the tolerated checkpoint failures.
//!
//! Periodic checkpoints are optional ([`CoordinatorSettings::interval`]
//! `None`): such a coordinator takes savepoints on request and nothing else. It
//! never triggers a checkpoint (periodic or final) and never reads, writes or
//! deletes anything in the checkpoint storage, not even to adopt what earlier
//! runs of the job left there: a job without checkpoints owns no directory in
//! it (and holds no lease on one).
//!
//! It is driven only by events, each with the time it happened ([`Now`],
//! given by the driver: the coordinator never reads a clock), and answers
//! each with the [`CoordinatorAction`]s the driver must carry out:
//!
//! | event | may answer |
//! |---|---|
//! | [`Coordinator::tick`] (periodically, and after every other event) | `Trigger`, `Abort` (timeouts), `TriggerSavepoint`, `FinishSources`, `SavepointDropped`, `FailJob` |
//! | [`Coordinator::on_ack`] | `Complete`, `Abort`, `FinishSources`, `TriggerSavepoint`, `Trigger` (the final checkpoint) |
//! | [`Coordinator::on_decline`] | `Abort`, `ResumeSources`, `FailJob`, `TriggerSavepoint`, `Trigger` (the final checkpoint again) |
//! | [`Coordinator::request_savepoint`] | `TriggerSavepoint` (at once when nothing is in flight, else later), `SavepointDropped` |
//! | [`Coordinator::on_sources_exhausted`] | `Trigger` (the final checkpoint), `FinishSources` |
//! | [`Coordinator::on_job_stopped`] | `SavepointDropped` |
//!
//! **The end of a bounded job** is decided here. Once the driver reports
//! every source exhausted, periodic checkpoints stop; as soon as nothing is in
//! flight (a savepoint in flight or queued goes first) the coordinator
//! triggers one more checkpoint, the *final* one, and triggers it again if it
//! fails (each failure counts towards the tolerated ones, as any other). When
//! it — or any later checkpoint — completes, `Complete` (tasks notified, sinks
//! commit) is followed by `FinishSources`: the sources end their output. A
//! stop-with-savepoint ends the job the same way: `Complete` with the tasks
//! notified, then `FinishSources`; if it fails, `ResumeSources`. Without
//! periodic checkpoints there is no final checkpoint: `FinishSources` comes
//! as soon as the sources are exhausted and no savepoint is in flight or
//! queued. After `FinishSources` nothing more is triggered and savepoint
//! requests are dropped.
//!
//! **Savepoint requests** are held here too: at most one waits
//! ([`SAVEPOINTS_QUEUED_MAX`]) until nothing is in flight; the request, its
//! target directory and whether it stops the job travel in
//! `TriggerSavepoint` to the driver (which hands the target to the uploaders)
//! and come back, as the request id, in the `Complete` or `Abort` of it.
//!
//! **History is bounded**: the figures of the last
//! [`COMPLETED_STATS_MAX`] completed snapshots, and counters of all.
//!
//! It also owns the lifetime of shared native files (`<job>/shared/`, written
//! by incremental checkpoints and referenced by later ones): it counts their
//! references across the retained checkpoints and deletes a file only when no
//! retained checkpoint references it. The rules and the invariant are in the
//! `shared_registry` module.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::layout::{
    checkpoint_dir, metadata_path, parse_metadata_path, shared_dir, shared_file_checkpoint,
};
use crate::metadata::{
    CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskSnapshot, read_metadata,
};
use crate::shared_registry::SharedRegistry;
use crate::storage::{SharedStorage, StorageError};
use crate::{CheckpointError, CheckpointId};

/// Defaults of the checkpoint settings.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_RETAIN: usize = 1;
pub const DEFAULT_TOLERABLE_FAILURES: u32 = 3;

/// How checkpoints are taken.
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    /// Time between the start of consecutive checkpoints; `None`: no
    /// checkpoints at all, only savepoints on request (see the module docs).
    pub interval: Option<Duration>,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time between the end of one checkpoint and the start of the next.
    pub min_pause: Duration,
    /// Checkpoints in flight at once.
    pub max_concurrent: usize,
    /// Consecutive failed checkpoints after which the job fails.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept.
    pub retain: usize,
}

impl CoordinatorSettings {
    /// Whether checkpoints are taken (periodically, and the final one of a
    /// bounded job); without, only savepoints are.
    pub fn periodic(&self) -> bool {
        self.interval.is_some()
    }
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        Self {
            interval: Some(DEFAULT_INTERVAL),
            timeout: DEFAULT_TIMEOUT,
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: DEFAULT_TOLERABLE_FAILURES,
            retain: DEFAULT_RETAIN,
        }
    }
}

/// The time of an event, given by the driver: the coordinator never reads a
/// clock, so a test (or a simulation) drives it with invented times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: intervals, pauses and timeouts are measured with it.
    pub instant: Instant,
    /// Wall-clock time (ms since the Unix epoch), only for what is recorded
    /// (`created_unix_ms` of the metadata, `trigger_unix_ms` of the figures).
    pub unix_ms: u64,
}

impl Now {
    pub fn new(instant: Instant, unix_ms: u64) -> Self {
        Self { instant, unix_ms }
    }

    /// The real time, for drivers (the coordinator itself never calls this).
    pub fn system() -> Self {
        Self::new(Instant::now(), unix_ms_now())
    }
}

impl std::ops::Add<Duration> for Now {
    type Output = Now;

    /// Both clocks moved on by `by`.
    fn add(self, by: Duration) -> Now {
        Now {
            instant: self.instant + by,
            unix_ms: self
                .unix_ms
                .saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// A savepoint someone asked for.
#[derive(Clone)]
pub struct SavepointRequest {
    /// The requester's name for it, handed back in every action about it.
    pub request: String,
    /// Its own, empty directory: its files and `_metadata` go there, paths
    /// relative to it.
    pub target: SharedStorage,
    /// Stop-with-savepoint: the sources emit nothing after its barrier, and
    /// the job ends once it completed.
    pub stop: bool,
}

impl std::fmt::Debug for SavepointRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavepointRequest")
            .field("request", &self.request)
            .field("target", &self.target.describe())
            .field("stop", &self.stop)
            .finish()
    }
}

/// Two requests are the same when they name the same storage object (a
/// storage has no equality of its own).
impl PartialEq for SavepointRequest {
    fn eq(&self, other: &Self) -> bool {
        self.request == other.request
            && self.stop == other.stop
            && Arc::ptr_eq(&self.target, &other.target)
    }
}

impl Eq for SavepointRequest {}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorAction {
    /// Have every source record its position and inject barrier `id` (a
    /// checkpoint: periodic, or the final one of a bounded job).
    Trigger {
        id: CheckpointId,
        kind: SnapshotKind,
    },
    /// Have every source record its position and inject the barrier of
    /// savepoint `id`, whose files go to `savepoint.target` (the driver
    /// hands it to the uploaders); with `savepoint.stop` the sources then
    /// emit nothing more until `FinishSources` or `ResumeSources`.
    TriggerSavepoint {
        id: CheckpointId,
        savepoint: SavepointRequest,
    },
    /// Snapshot `id` is complete, with these figures. With `notify_tasks`
    /// (every checkpoint, and a stop-with-savepoint) every task hears of it
    /// and sinks commit; an intermediate savepoint has no side effects.
    /// `request`: the savepoint request it answers, if any.
    Complete {
        id: CheckpointId,
        stats: CheckpointStats,
        notify_tasks: bool,
        request: Option<String>,
    },
    /// Snapshot `id` failed: tasks drop what they hold for it. `request`: the
    /// savepoint request it answers, if any.
    Abort {
        id: CheckpointId,
        reason: String,
        request: Option<String>,
    },
    /// The sources end their output (the final checkpoint or a
    /// stop-with-savepoint completed, or no checkpoints are taken); nothing
    /// is triggered any more.
    FinishSources,
    /// A stop-with-savepoint failed: the suspended sources read on.
    ResumeSources,
    /// A savepoint request that will never be taken.
    SavepointDropped { request: String, reason: String },
    /// Too many consecutive failures: fail the job.
    FailJob { reason: String },
}

/// One task's acknowledgement: what its operators wrote for checkpoint `id`.
#[derive(Debug, Clone)]
pub struct TaskAck {
    pub id: CheckpointId,
    pub task: usize,
    /// `(operator uid, operator name, snapshot of this instance)`.
    pub operators: Vec<(String, String, SubtaskSnapshot)>,
    pub bytes: u64,
    /// Synchronous part of the task's snapshot.
    pub sync_pause: Duration,
    /// Time from the first to the last barrier at an aligning input.
    pub alignment: Duration,
}

/// One task's part of a completed checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    pub task: usize,
    pub sync_pause: Duration,
    pub alignment: Duration,
    pub bytes: u64,
}

/// Figures of a completed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointStats {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    /// Wall-clock time of the trigger (ms since the Unix epoch).
    pub trigger_unix_ms: u64,
    pub duration: Duration,
    /// Bytes the tasks wrote for this checkpoint (for an incremental one, only
    /// the new files).
    pub bytes: u64,
    /// Size of every file the checkpoint references, including shared files
    /// earlier checkpoints wrote ([`CheckpointMetadata::state_bytes`]).
    pub full_bytes: u64,
    pub sync_pause_max: Duration,
    pub alignment_max: Duration,
    /// Every task's part, by task index.
    pub tasks: Vec<TaskStats>,
}

struct Pending {
    kind: SnapshotKind,
    started: Instant,
    trigger_unix_ms: u64,
    acks: HashMap<usize, TaskAck>,
    /// A savepoint's request (its own storage, whether it stops the job);
    /// `None` for checkpoints.
    savepoint: Option<SavepointRequest>,
}

/// Where the job is on its way to the end of bounded input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Sources are reading; checkpoints are periodic.
    Running,
    /// Every source is exhausted: no periodic checkpoints; the final one is
    /// in flight (`Some`) or still to be triggered.
    Exhausted {
        final_checkpoint: Option<CheckpointId>,
    },
    /// The sources were told to end their output: nothing is triggered any
    /// more.
    Finished,
}

/// Figures of completed snapshots kept for [`Coordinator::completed`]: a job
/// runs for months, one checkpoint every few seconds; older ones are
/// counted only ([`Coordinator::completed_count`]).
pub const COMPLETED_STATS_MAX: usize = 256;

/// Savepoint requests waiting for the snapshot in flight to finish: the
/// `JobController` refuses a request while another is in progress, so one
/// is all that can legitimately wait.
pub const SAVEPOINTS_QUEUED_MAX: usize = 1;

/// Savepoints aborted recently, remembered so that a late acknowledgement's
/// files can still be removed from their directory (a limit on everything).
const ABORTED_SAVEPOINTS_MAX: usize = 16;

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
/// For drivers and the rest of the runtime; the coordinator never calls it.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The coordinator of one job.
pub struct Coordinator {
    storage: SharedStorage,
    job_id: String,
    settings: CoordinatorSettings,
    tasks: usize,
    max_parallelism: u32,
    parallelism: u32,
    next_id: CheckpointId,
    pending: BTreeMap<CheckpointId, Pending>,
    retained: VecDeque<CheckpointId>,
    last_trigger: Option<Instant>,
    last_finished: Option<Instant>,
    consecutive_failures: u32,
    /// Figures of the last completed snapshots, oldest first; at most
    /// [`COMPLETED_STATS_MAX`] of them are shown (up to twice as many are
    /// held, so that trimming is amortised).
    completed: Vec<CheckpointStats>,
    completed_count: u64,
    failed: u64,
    /// References to shared files of the retained checkpoints.
    shared: SharedRegistry,
    aborted_savepoints: VecDeque<(CheckpointId, SharedStorage)>,
    /// Savepoint requests waiting for nothing to be in flight.
    queued_savepoints: VecDeque<SavepointRequest>,
    ending: Ending,
}

impl Coordinator {
    /// `tasks` acknowledgements complete a checkpoint. Ids continue after
    /// `last_id` (the restored checkpoint's, or 0), which stays retained until
    /// newer ones replace it.
    ///
    /// Construction adopts what earlier runs of the job left in storage,
    /// including deleting shared files no retained checkpoint references; it
    /// must therefore happen while no upload of an earlier run of this job is
    /// still writing (the runtime joins its uploaders between attempts).
    /// Without periodic checkpoints it adopts nothing and touches no storage.
    /// `now` is when it starts: the first checkpoint is due an interval later.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        storage: SharedStorage,
        job_id: &str,
        settings: CoordinatorSettings,
        tasks: usize,
        parallelism: u32,
        max_parallelism: u32,
        restored: Option<CheckpointId>,
        now: Now,
    ) -> Self {
        Self::after_restore(
            storage,
            job_id,
            settings,
            tasks,
            parallelism,
            max_parallelism,
            restored,
            &BTreeSet::new(),
            now,
        )
    }

    /// [`Coordinator::new`] for a job whose restore skipped newer checkpoints
    /// of its own: those in `damaged` were proved damaged and are deleted;
    /// any other completed checkpoint newer than the restored one (a format
    /// version this build does not know, a read error) is left in place,
    /// neither retained nor deleted, and the shared files it references are
    /// kept.
    #[allow(clippy::too_many_arguments)]
    pub fn after_restore(
        storage: SharedStorage,
        job_id: &str,
        settings: CoordinatorSettings,
        tasks: usize,
        parallelism: u32,
        max_parallelism: u32,
        restored: Option<CheckpointId>,
        damaged: &BTreeSet<CheckpointId>,
        now: Now,
    ) -> Self {
        let mut coordinator = Self {
            storage,
            job_id: job_id.to_owned(),
            settings,
            tasks,
            max_parallelism,
            parallelism,
            next_id: restored.unwrap_or(0) + 1,
            pending: BTreeMap::new(),
            retained: restored.into_iter().collect(),
            last_trigger: Some(now.instant),
            last_finished: None,
            consecutive_failures: 0,
            completed: Vec::new(),
            completed_count: 0,
            failed: 0,
            shared: SharedRegistry::default(),
            aborted_savepoints: VecDeque::new(),
            queued_savepoints: VecDeque::new(),
            ending: Ending::Running,
        };
        // A coordinator that takes no checkpoints has nothing to adopt, and
        // its job holds no lease on the directory: it must not delete there.
        if coordinator.settings.periodic() {
            coordinator.adopt_existing(damaged);
        }
        coordinator
    }

    /// A job that continues (after a restart or a crash) takes over what its
    /// earlier runs left in storage: completed checkpoints join the retained
    /// ones (and retention applies to them), directories of checkpoints that
    /// never completed are deleted, the shared files of the retained
    /// checkpoints are registered and every other shared file is deleted, and
    /// ids continue after the highest seen.
    fn adopt_existing(&mut self, damaged: &BTreeSet<CheckpointId>) {
        let prefix = format!("{}/", self.job_id);
        let paths = match self.storage.list(&prefix) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!(
                    "cannot list earlier checkpoints of job {}: {e}",
                    self.job_id
                );
                // The restored checkpoint still needs its shared files
                // registered; what else exists is unknown, so nothing shared
                // is deleted in this run.
                self.shared.mark_blind();
                self.register_retained();
                return;
            }
        };
        let (seen, completed) = self.scan_checkpoints(&paths);
        for id in seen.difference(&completed) {
            if let Err(e) = self
                .storage
                .delete_prefix(&checkpoint_dir(&self.job_id, *id))
            {
                tracing::warn!(
                    checkpoint = id,
                    "cannot remove an incomplete checkpoint: {e}"
                );
            }
        }
        // Shared file names carry the id of the checkpoint that wrote them: a
        // new checkpoint must never get the id (and so the paths) of one
        // whose shared files are still there.
        let highest_shared = self
            .shared_files(&paths)
            .filter_map(shared_file_checkpoint)
            .max();
        if let Some(highest) = seen.iter().next_back().copied().max(highest_shared) {
            self.next_id = self.next_id.max(highest + 1);
        }
        let kept = self.adopt_completed(completed, damaged);
        self.register_retained();
        self.register_kept(&kept);
        self.enforce_retention();
        self.collect_orphans(&paths);
    }

    /// `(every checkpoint id with a directory, the ids of completed ones)`.
    fn scan_checkpoints(
        &self,
        paths: &[String],
    ) -> (BTreeSet<CheckpointId>, BTreeSet<CheckpointId>) {
        let prefix = format!("{}/", self.job_id);
        let mut completed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for path in paths {
            let Some(chk) = path
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            let Some(id) = chk
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<CheckpointId>().ok())
            else {
                continue;
            };
            seen.insert(id);
            // Exactly `<job>/chk-<n>/_metadata`: a native file of that name
            // one level deeper is not a checkpoint's metadata.
            if parse_metadata_path(path).is_some_and(|(job, n)| job == self.job_id && n == id) {
                completed.insert(id);
            }
        }
        (seen, completed)
    }

    /// Makes the completed checkpoints found in storage retained ones, and
    /// returns those newer than the restored one that are left alone.
    ///
    /// Completed checkpoints newer than the restored one are ones the restore
    /// skipped. Those proved damaged (`damaged`) can never be restored and
    /// are deleted. The others (written by a newer flowstate, or unreadable
    /// for a reason that may pass) must not be destroyed, nor take a
    /// retention place from a good one: they are kept as they are.
    fn adopt_completed(
        &mut self,
        completed: BTreeSet<CheckpointId>,
        damaged: &BTreeSet<CheckpointId>,
    ) -> Vec<CheckpointId> {
        let restored = self.retained.back().copied();
        let mut retained: Vec<CheckpointId> = Vec::new();
        let mut kept = Vec::new();
        for id in completed {
            if restored.is_none_or(|r| id <= r) {
                retained.push(id);
            } else if damaged.contains(&id) {
                tracing::warn!(
                    checkpoint = id,
                    "deleting a checkpoint the restore found damaged"
                );
                if let Err(e) = self
                    .storage
                    .delete_prefix(&checkpoint_dir(&self.job_id, id))
                {
                    tracing::warn!(checkpoint = id, "cannot delete it: {e}");
                }
            } else {
                tracing::warn!(
                    checkpoint = id,
                    "leaving in place a checkpoint the restore skipped (it may be \
                     readable by another flowstate, or later); delete it by hand when \
                     it is no longer needed"
                );
                kept.push(id);
            }
        }
        for id in self.retained.drain(..) {
            if !retained.contains(&id) {
                retained.push(id);
            }
        }
        retained.sort_unstable();
        self.retained = retained.into();
        kept
    }

    /// The shared files of checkpoints left in place are never deleted by
    /// this run: they are registered as referenced (unknown if unreadable,
    /// which stops all deletion of shared files).
    fn register_kept(&mut self, kept: &[CheckpointId]) {
        for &id in kept {
            let path = metadata_path(&self.job_id, id);
            match read_metadata(self.storage.as_ref(), &path) {
                Ok(metadata) => self.shared.register(id, metadata.shared_paths()),
                Err(_) => self.shared.mark_unknown(id),
            }
        }
    }

    /// Registers the shared files of every retained checkpoint, from its
    /// metadata. A checkpoint without metadata under this job (one of another
    /// job this job was restored from) references none of this job's files.
    fn register_retained(&mut self) {
        for id in self.retained.clone() {
            let path = metadata_path(&self.job_id, id);
            let read = read_metadata(self.storage.as_ref(), &path);
            match read {
                Ok(metadata) => self.shared.register(id, metadata.shared_paths()),
                Err(CheckpointError::Storage(StorageError::NotFound { .. })) => {}
                Err(e) => {
                    tracing::warn!(
                        checkpoint = id,
                        "cannot read which shared files a retained checkpoint references \
                         ({e}); no shared file is deleted while it is retained"
                    );
                    self.shared.mark_unknown(id);
                }
            }
        }
    }

    /// Deletes every shared file of the job that no retained checkpoint
    /// references: what crashed runs and aborted checkpoints left behind.
    /// Runs before the first trigger, so no checkpoint of this run is
    /// uploading shared files yet.
    fn collect_orphans(&self, paths: &[String]) {
        if !self.shared.is_complete() {
            tracing::warn!(
                job = self.job_id,
                "not collecting unreferenced shared files: {}",
                self.shared.incompleteness()
            );
            return;
        }
        for path in self.shared_files(paths) {
            if !self.shared.is_registered(path) {
                tracing::info!(
                    job = self.job_id,
                    "deleting unreferenced shared file {path}"
                );
                self.delete_logged(None, path);
            }
        }
    }

    /// The shared files among `paths`.
    fn shared_files<'a>(&self, paths: &'a [String]) -> impl Iterator<Item = &'a str> {
        let dir = shared_dir(&self.job_id);
        paths
            .iter()
            .filter(move |p| p.starts_with(&dir))
            .map(String::as_str)
    }

    fn delete_logged(&self, checkpoint: Option<CheckpointId>, path: &str) {
        if let Err(e) = self.storage.delete(path) {
            tracing::warn!(checkpoint, "cannot delete shared file {path}: {e}");
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Figures of the last completed snapshots (at most
    /// [`COMPLETED_STATS_MAX`]), oldest first.
    pub fn completed(&self) -> &[CheckpointStats] {
        let shown = self.completed.len().min(COMPLETED_STATS_MAX);
        &self.completed[self.completed.len() - shown..]
    }

    /// Snapshots completed over the coordinator's life.
    pub fn completed_count(&self) -> u64 {
        self.completed_count
    }

    /// Whether the sources were told to end their output (`FinishSources`).
    pub fn sources_finished(&self) -> bool {
        self.ending == Ending::Finished
    }

    /// Records the figures of a completed snapshot, forgetting the oldest
    /// beyond the window.
    fn record_completed(&mut self, stats: CheckpointStats) {
        if self.completed.len() >= 2 * COMPLETED_STATS_MAX {
            self.completed
                .drain(..self.completed.len() - COMPLETED_STATS_MAX);
        }
        self.completed.push(stats);
        self.completed_count += 1;
    }

    pub fn failed_count(&self) -> u64 {
        self.failed
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether checkpoints are taken at all ([`CoordinatorSettings::periodic`]).
    pub fn is_periodic(&self) -> bool {
        self.settings.periodic()
    }

    /// When the next periodic checkpoint is due (`None` if one must finish
    /// first, if there are no periodic checkpoints, or once every source is
    /// exhausted).
    pub fn next_trigger_at(&self, now: Now) -> Option<Instant> {
        let now = now.instant;
        let interval = self.settings.interval?;
        if self.ending != Ending::Running || self.pending.len() >= self.settings.max_concurrent {
            return None;
        }
        let by_interval = self
            .last_trigger
            // An interval too long to add is one that never comes.
            .map_or(Some(now), |t| t.checked_add(interval))?;
        let by_pause = self
            .last_finished
            .map_or(now, |t| t + self.settings.min_pause);
        Some(by_interval.max(by_pause))
    }

    /// Starts checkpoint n now, regardless of the interval (the final checkpoint
    /// of a bounded job), into the checkpoint storage. `None` while too many
    /// are in flight, and always without periodic checkpoints (nothing may be
    /// written to the checkpoint storage then).
    pub fn trigger_now(&mut self, kind: SnapshotKind, now: Now) -> Option<CoordinatorAction> {
        if !self.settings.periodic() {
            return None;
        }
        self.start(kind, None, now)
    }

    /// Someone asked for a savepoint: it starts as soon as nothing is in
    /// flight (at once if nothing is), after any request already waiting.
    /// Dropped (`SavepointDropped`) once the sources finished, or when
    /// [`SAVEPOINTS_QUEUED_MAX`] requests already wait.
    pub fn request_savepoint(
        &mut self,
        savepoint: SavepointRequest,
        now: Now,
    ) -> Vec<CoordinatorAction> {
        let refused = if self.ending == Ending::Finished {
            Some("the job is finishing; no more snapshots are taken")
        } else if self.queued_savepoints.len() >= SAVEPOINTS_QUEUED_MAX {
            Some("another savepoint is waiting to be taken")
        } else {
            None
        };
        if let Some(reason) = refused {
            return vec![CoordinatorAction::SavepointDropped {
                request: savepoint.request,
                reason: reason.into(),
            }];
        }
        self.queued_savepoints.push_back(savepoint);
        self.advance(now)
    }

    /// Every source of the job has read all its input (the driver counts
    /// them). Periodic checkpoints stop; the final checkpoint follows as soon
    /// as nothing is in flight, or, without checkpoints, the sources finish.
    pub fn on_sources_exhausted(&mut self, now: Now) -> Vec<CoordinatorAction> {
        if self.ending == Ending::Running {
            self.ending = Ending::Exhausted {
                final_checkpoint: None,
            };
        }
        self.advance(now)
    }

    /// The job stopped (finished or failed; its tasks are gone): whatever is
    /// in flight is aborted without notifying anyone (its files are
    /// removed), and the requests still waiting are answered as dropped.
    pub fn on_job_stopped(&mut self, now: Now) -> Vec<CoordinatorAction> {
        self.abort_all("the job stopped", now);
        self.drop_queued("the job stopped before the savepoint was taken")
    }

    fn drop_queued(&mut self, reason: &str) -> Vec<CoordinatorAction> {
        self.queued_savepoints
            .drain(..)
            .map(|s| CoordinatorAction::SavepointDropped {
                request: s.request,
                reason: reason.to_owned(),
            })
            .collect()
    }

    /// The next step of the savepoint queue and of the end of bounded input,
    /// after any event: a waiting savepoint starts as soon as nothing is in
    /// flight; then, once the sources are exhausted, the final checkpoint
    /// (or, without checkpoints, the end of the sources' output).
    fn advance(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let mut actions = Vec::new();
        if self.ending == Ending::Finished {
            return actions;
        }
        if self.pending.is_empty()
            && let Some(savepoint) = self.queued_savepoints.pop_front()
        {
            match self.start(SnapshotKind::Savepoint, Some(savepoint.clone()), now) {
                Some(action) => actions.push(action),
                // Only with `max_concurrent` 0: it waits (for ever).
                None => self.queued_savepoints.push_front(savepoint),
            }
        }
        let Ending::Exhausted { final_checkpoint } = self.ending else {
            return actions;
        };
        if !self.pending.is_empty() || !self.queued_savepoints.is_empty() {
            return actions;
        }
        if !self.settings.periodic() {
            // No checkpoints, so no final one: the sources end their output,
            // and sinks publish at `finish`, as in a job without a
            // coordinator.
            self.ending = Ending::Finished;
            actions.push(CoordinatorAction::FinishSources);
        } else if final_checkpoint.is_none()
            && let Some(action) = self.trigger_now(SnapshotKind::Checkpoint, now)
        {
            if let CoordinatorAction::Trigger { id, .. } = action {
                self.ending = Ending::Exhausted {
                    final_checkpoint: Some(id),
                };
            }
            actions.push(action);
        }
        actions
    }

    fn start(
        &mut self,
        kind: SnapshotKind,
        savepoint: Option<SavepointRequest>,
        now: Now,
    ) -> Option<CoordinatorAction> {
        if self.pending.len() >= self.settings.max_concurrent {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Some(now.instant);
        let action = match &savepoint {
            Some(savepoint) => CoordinatorAction::TriggerSavepoint {
                id,
                savepoint: savepoint.clone(),
            },
            None => CoordinatorAction::Trigger { id, kind },
        };
        self.pending.insert(
            id,
            Pending {
                kind,
                started: now.instant,
                trigger_unix_ms: now.unix_ms,
                acks: HashMap::new(),
                savepoint,
            },
        );
        Some(action)
    }

    /// Whether snapshot `id` is a savepoint still in flight.
    pub fn is_pending_savepoint(&self, id: CheckpointId) -> bool {
        self.pending.get(&id).is_some_and(|p| p.savepoint.is_some())
    }

    /// Periodic work, and the next step after any other event: abort
    /// timed-out snapshots, start a waiting savepoint, a due periodic
    /// checkpoint, or the final one.
    pub fn tick(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let mut actions = self.tick_timeouts(now);
        actions.extend(self.advance(now));
        if self.ending == Ending::Running
            && self
                .next_trigger_at(now)
                .is_some_and(|at| at <= now.instant)
        {
            actions.extend(self.trigger_now(SnapshotKind::Checkpoint, now));
        }
        actions
    }

    /// Aborts checkpoints that ran out of time.
    pub fn tick_timeouts(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let mut actions = Vec::new();
        let expired: Vec<CheckpointId> = self
            .pending
            .iter()
            .filter(|(_, p)| now.instant.duration_since(p.started) >= self.settings.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            actions.extend(self.abort(
                id,
                format!("not complete after {:?}", self.settings.timeout),
                now,
            ));
        }
        actions
    }

    /// A task acknowledged; completes the checkpoint when it was the last
    /// (and then takes the next step: a waiting savepoint, the final
    /// checkpoint, or the end of the sources' output).
    pub fn on_ack(&mut self, ack: TaskAck, now: Now) -> Vec<CoordinatorAction> {
        let mut actions = self.collect_ack(ack, now);
        actions.extend(self.advance(now));
        actions
    }

    fn collect_ack(&mut self, ack: TaskAck, now: Now) -> Vec<CoordinatorAction> {
        let Some(pending) = self.pending.get_mut(&ack.id) else {
            self.discard_late_ack(&ack);
            return Vec::new();
        };
        let id = ack.id;
        pending.acks.insert(ack.task, ack);
        if pending.acks.len() < self.tasks {
            return Vec::new();
        }
        let Some(pending) = self.pending.remove(&id) else {
            return Vec::new();
        };
        if pending.savepoint.is_some() {
            return self.complete_savepoint(id, pending, now);
        }
        let (metadata, mut stats) = self.assemble(id, &pending, now);
        let published = self
            .check_native_files(&metadata)
            .and_then(|()| self.publish(&metadata));
        if let Err(reason) = published {
            self.pending.insert(id, pending);
            return self.abort(id, reason, now);
        }
        stats.duration = now.instant.duration_since(pending.started);
        self.record_completed(stats.clone());
        self.consecutive_failures = 0;
        self.last_finished = Some(now.instant);
        // Registered before retention runs: a file this checkpoint shares with
        // one retention discards now must not reach zero references.
        self.shared.register(id, metadata.shared_paths());
        self.retained.push_back(id);
        let mut actions = vec![CoordinatorAction::Complete {
            id,
            stats,
            notify_tasks: true,
            request: None,
        }];
        // The final checkpoint, or a later one, ends the sources' output: it
        // holds everything they read.
        if let Ending::Exhausted {
            final_checkpoint: Some(last),
        } = self.ending
            && id >= last
        {
            actions.extend(self.finish_sources());
        }
        // Older pending checkpoints can no longer matter.
        let older: Vec<CheckpointId> = self.pending.range(..id).map(|(id, _)| *id).collect();
        for old in older {
            actions.extend(self.abort(old, format!("subsumed by checkpoint {id}"), now));
        }
        self.enforce_retention();
        actions
    }

    /// All acknowledgements of savepoint `id` arrived: write its `_metadata`
    /// into its directory. Nothing is retained or registered: the savepoint
    /// belongs to the user from now on.
    fn complete_savepoint(
        &mut self,
        id: CheckpointId,
        pending: Pending,
        now: Now,
    ) -> Vec<CoordinatorAction> {
        let Some(savepoint) = pending.savepoint.clone() else {
            return Vec::new();
        };
        let (metadata, mut stats) = self.assemble(id, &pending, now);
        let published = check_self_contained(&metadata).and_then(|()| {
            publish_to(
                savepoint.target.as_ref(),
                crate::layout::METADATA_FILE,
                &metadata,
            )
        });
        if let Err(reason) = published {
            self.pending.insert(id, pending);
            return self.abort(id, reason, now);
        }
        stats.duration = now.instant.duration_since(pending.started);
        self.record_completed(stats.clone());
        self.last_finished = Some(now.instant);
        // An intermediate savepoint has no side effects: sinks commit its
        // data with the next checkpoint (a recovery goes back to a
        // checkpoint, never to a savepoint). A stop-with-savepoint commits,
        // then ends the sources, which emitted nothing after its barrier.
        let mut actions = vec![CoordinatorAction::Complete {
            id,
            stats,
            notify_tasks: savepoint.stop,
            request: Some(savepoint.request),
        }];
        if savepoint.stop {
            actions.extend(self.finish_sources());
        }
        actions
    }

    /// The sources end their output; nothing is triggered any more.
    fn finish_sources(&mut self) -> Vec<CoordinatorAction> {
        self.ending = Ending::Finished;
        let mut actions = vec![CoordinatorAction::FinishSources];
        actions.extend(self.drop_queued("the job is finishing; no more snapshots are taken"));
        actions
    }

    /// A late ack of an aborted checkpoint: its task wrote files after the
    /// abort removed the directory; remove them too.
    fn discard_late_ack(&self, ack: &TaskAck) {
        if let Some((_, target)) = self.aborted_savepoints.iter().find(|(id, _)| *id == ack.id) {
            if let Err(e) = target.delete_prefix("") {
                tracing::warn!(
                    savepoint = ack.id,
                    "cannot remove files of an aborted savepoint: {e}"
                );
            }
            return;
        }
        if self.retained.contains(&ack.id) {
            return;
        }
        if let Err(e) = self
            .storage
            .delete_prefix(&checkpoint_dir(&self.job_id, ack.id))
        {
            tracing::warn!(
                checkpoint = ack.id,
                "cannot remove files of an aborted checkpoint: {e}"
            );
        }
        self.discard_shared(ack.id, std::iter::once(ack));
    }

    /// Deletes the shared files of acknowledgements of checkpoint `id`, which
    /// did not complete, that no retained checkpoint references. While the
    /// registry is incomplete, only files `id` wrote itself: no completed
    /// checkpoint can reference those (a backend reuses files of completed
    /// checkpoints only), but an unregistered older one might be referenced
    /// by a checkpoint whose references are unknown.
    fn discard_shared<'a>(&self, id: CheckpointId, acks: impl Iterator<Item = &'a TaskAck>) {
        let complete = self.shared.is_complete();
        let mut deleted = BTreeSet::new();
        for file in acks
            .flat_map(|a| &a.operators)
            .filter_map(|(_, _, subtask)| subtask.native.as_ref())
            .flat_map(|n| &n.files)
            .filter(|f| f.shared && (complete || f.uploaded_by == id))
        {
            let path = file.file.path.as_str();
            if !self.shared.is_registered(path) && deleted.insert(path) {
                self.delete_logged(Some(id), path);
            }
        }
    }

    /// Refuses native files that would not survive until this checkpoint is
    /// discarded: a reused shared file that retention already deleted (a task
    /// reused it before it heard of the newer checkpoint that replaced its
    /// last reference; the next checkpoint uploads it again), or a private
    /// file outside this checkpoint's directory.
    fn check_native_files(&self, metadata: &CheckpointMetadata) -> Result<(), String> {
        let id = metadata.checkpoint_id;
        let own_dir = checkpoint_dir(&self.job_id, id);
        for file in metadata.native_files() {
            let path = &file.file.path;
            if file.shared && file.uploaded_by != id && !self.shared.is_registered(path) {
                return Err(format!(
                    "a task referenced shared file '{path}', which no retained checkpoint \
                     references any more (retention deleted it); the next checkpoint uploads it again"
                ));
            }
            if !file.shared && !path.starts_with(&own_dir) {
                return Err(format!(
                    "private native file '{path}' lies outside the checkpoint's directory {own_dir}"
                ));
            }
        }
        Ok(())
    }

    /// A task could not take its part of checkpoint `id` (then the next
    /// step: a waiting savepoint, or the final checkpoint again).
    pub fn on_decline(
        &mut self,
        id: CheckpointId,
        reason: String,
        now: Now,
    ) -> Vec<CoordinatorAction> {
        if !self.pending.contains_key(&id) {
            return Vec::new();
        }
        let mut actions = self.abort(id, reason, now);
        actions.extend(self.advance(now));
        actions
    }

    fn abort(&mut self, id: CheckpointId, reason: String, now: Now) -> Vec<CoordinatorAction> {
        let Some(pending) = self.pending.remove(&id) else {
            return Vec::new();
        };
        if let Some(savepoint) = pending.savepoint {
            // The user's savepoint failed; periodic checkpoints are unaffected,
            // so it does not count towards the tolerated failures.
            tracing::warn!(savepoint = id, "savepoint failed: {reason}");
            self.failed += 1;
            self.last_finished = Some(now.instant);
            if let Err(e) = savepoint.target.delete_prefix("") {
                tracing::warn!(savepoint = id, "could not remove its files: {e}");
            }
            if self.aborted_savepoints.len() >= ABORTED_SAVEPOINTS_MAX {
                self.aborted_savepoints.pop_front();
            }
            self.aborted_savepoints
                .push_back((id, Arc::clone(&savepoint.target)));
            let abort = CoordinatorAction::Abort {
                id,
                reason,
                request: Some(savepoint.request),
            };
            // The suspended sources read on; they hear it before the abort
            // itself, as every task does.
            return if savepoint.stop {
                vec![CoordinatorAction::ResumeSources, abort]
            } else {
                vec![abort]
            };
        }
        tracing::warn!(checkpoint = id, "checkpoint aborted: {reason}");
        self.failed += 1;
        self.consecutive_failures += 1;
        self.last_finished = Some(now.instant);
        // A failed final checkpoint is taken again at the next step.
        if self.ending
            == (Ending::Exhausted {
                final_checkpoint: Some(id),
            })
        {
            self.ending = Ending::Exhausted {
                final_checkpoint: None,
            };
        }
        if let Err(e) = self
            .storage
            .delete_prefix(&checkpoint_dir(&self.job_id, id))
        {
            tracing::warn!(
                checkpoint = id,
                "could not remove files of aborted checkpoint: {e}"
            );
        }
        self.discard_shared(id, pending.acks.values());
        let mut actions = vec![CoordinatorAction::Abort {
            id,
            reason: reason.clone(),
            request: None,
        }];
        if self.consecutive_failures > self.settings.tolerable_failures {
            actions.push(CoordinatorAction::FailJob {
                reason: format!(
                    "{} consecutive checkpoints failed (tolerated: {}); last: checkpoint {id}: {reason}",
                    self.consecutive_failures, self.settings.tolerable_failures
                ),
            });
        }
        actions
    }

    /// The metadata of checkpoint `id` from its acknowledgements, and its
    /// figures (duration still to be set).
    fn assemble(
        &self,
        id: CheckpointId,
        pending: &Pending,
        now: Now,
    ) -> (CheckpointMetadata, CheckpointStats) {
        let mut operators: Vec<OperatorSnapshot> = Vec::new();
        let (mut bytes, mut sync_pause_max, mut alignment_max) =
            (0, Duration::ZERO, Duration::ZERO);
        let mut acks: Vec<&TaskAck> = pending.acks.values().collect();
        acks.sort_by_key(|a| a.task);
        let mut tasks = Vec::with_capacity(acks.len());
        for ack in acks {
            tasks.push(TaskStats {
                task: ack.task,
                sync_pause: ack.sync_pause,
                alignment: ack.alignment,
                bytes: ack.bytes,
            });
            bytes += ack.bytes;
            sync_pause_max = sync_pause_max.max(ack.sync_pause);
            alignment_max = alignment_max.max(ack.alignment);
            for (uid, name, subtask) in &ack.operators {
                let index = match operators.iter().position(|o| &o.uid == uid) {
                    Some(i) => i,
                    None => {
                        operators.push(OperatorSnapshot {
                            uid: uid.clone(),
                            name: name.clone(),
                            parallelism: self.parallelism,
                            subtasks: Vec::new(),
                        });
                        operators.len() - 1
                    }
                };
                operators[index].subtasks.push(subtask.clone());
            }
        }
        for operator in &mut operators {
            operator.subtasks.sort_by_key(|s| s.subtask);
        }
        let metadata = CheckpointMetadata {
            job_id: self.job_id.clone(),
            checkpoint_id: id,
            kind: pending.kind,
            created_unix_ms: now.unix_ms,
            max_parallelism: self.max_parallelism,
            operators,
        };
        let stats = CheckpointStats {
            id,
            kind: pending.kind,
            trigger_unix_ms: pending.trigger_unix_ms,
            duration: Duration::ZERO,
            bytes,
            full_bytes: metadata.state_bytes(),
            sync_pause_max,
            alignment_max,
            tasks,
        };
        (metadata, stats)
    }

    /// Writes `_metadata`: from now on the checkpoint exists.
    fn publish(&self, metadata: &CheckpointMetadata) -> Result<(), String> {
        publish_to(
            self.storage.as_ref(),
            &metadata_path(&self.job_id, metadata.checkpoint_id),
            metadata,
        )
    }

    /// The job stops: abort whatever is in flight (its files are removed).
    pub fn abort_all(&mut self, reason: &str, now: Now) {
        let ids: Vec<CheckpointId> = self.pending.keys().copied().collect();
        for id in ids {
            self.abort(id, reason.to_owned(), now);
        }
    }

    fn enforce_retention(&mut self) {
        let retain = self.settings.retain.max(1);
        while self.retained.len() > retain {
            let Some(old) = self.retained.pop_front() else {
                break;
            };
            self.discard(old);
        }
    }

    /// Deletes retained checkpoint `old`, then the shared files no retained
    /// checkpoint references any more.
    fn discard(&mut self, old: CheckpointId) {
        let unreferenced = self.shared.release(old);
        // Metadata first: a half-deleted checkpoint must never look complete.
        if let Err(e) = self.storage.delete(&metadata_path(&self.job_id, old)) {
            // It still looks complete, so its files stay; the next start
            // adopts it again.
            tracing::warn!(checkpoint = old, "could not delete old checkpoint: {e}");
            return;
        }
        if let Err(e) = self
            .storage
            .delete_prefix(&checkpoint_dir(&self.job_id, old))
        {
            tracing::warn!(checkpoint = old, "could not delete old checkpoint: {e}");
        }
        if unreferenced.is_empty() {
            return;
        }
        if !self.shared.is_complete() {
            tracing::warn!(
                checkpoint = old,
                "keeping {} shared files it alone referenced: {}",
                unreferenced.len(),
                self.shared.incompleteness()
            );
            return;
        }
        for path in &unreferenced {
            self.delete_logged(Some(old), path);
        }
    }
}

/// Writes `metadata` at `path` of `storage`, create-if-absent, after checking
/// that it reads back identically (pair assertion).
fn publish_to(
    storage: &dyn crate::storage::CheckpointStorage,
    path: &str,
    metadata: &CheckpointMetadata,
) -> Result<(), String> {
    let encoded = metadata.encode().map_err(|e| e.to_string())?;
    match CheckpointMetadata::decode("(new metadata)", &encoded) {
        Ok(decoded) if decoded == *metadata => {}
        _ => return Err("metadata does not read back identically".into()),
    }
    storage
        .put_if_absent(path, encoded)
        .map_err(|e| format!("writing metadata: {e}"))
}

/// A savepoint holds only canonical files inside its own directory: no native
/// (backend-specific) files, no path that leaves the directory.
fn check_self_contained(metadata: &CheckpointMetadata) -> Result<(), String> {
    if let Some(file) = metadata.native_files().next() {
        return Err(format!(
            "a savepoint must be in the canonical format, but a task wrote native file '{}'",
            file.file.path
        ));
    }
    for operator in &metadata.operators {
        for keyed in operator.subtasks.iter().filter_map(|s| s.keyed.as_ref()) {
            let path = &keyed.file.path;
            if path.starts_with('/') || path.split('/').any(|segment| segment == "..") {
                return Err(format!(
                    "savepoint file '{path}' lies outside the savepoint directory"
                ));
            }
        }
    }
    Ok(())
}
