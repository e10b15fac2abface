//! The checkpoint coordinator's state machine.
//!
//! It decides when checkpoint n starts, collects one acknowledgement per task,
//! has `_metadata` written last (create-if-absent) once all arrived, keeps the
//! last `retain` completed checkpoints and has the rest deleted, and aborts
//! checkpoints that time out or that a task declines. It does no I/O at all,
//! neither with tasks nor with storage: it takes events and returns effects
//! (send to tasks, write or delete in storage, notify observers), the
//! [`CoordinatorAction`]s a driver carries out (the runtime's, or a test's).
//! Time is given, never read.
//!
//! Savepoints go through the same state machine, with three differences: their
//! files and `_metadata` go to their own storage (the savepoint directory, all
//! paths relative to it), they are never retained, discarded or counted for
//! shared files (the user owns them), and a failed savepoint does not count
//! towards the tolerated checkpoint failures.
//!
//! Periodic checkpoints are optional ([`CoordinatorSettings::interval`]
//! `None`): such a coordinator takes savepoints on request and nothing else. It
//! never triggers a checkpoint (periodic or final) and never has anything
//! read, written or deleted in the checkpoint storage, not even to adopt what
//! earlier runs of the job left there: a job without checkpoints owns no
//! directory in it (and holds no lease on one).
//!
//! It is driven only by events, each with the time it happened ([`Now`],
//! given by the driver: the coordinator never reads a clock), and answers
//! each with the [`CoordinatorAction`]s the driver must carry out:
//!
//! | event | may answer |
//! |---|---|
//! | [`Coordinator::tick`] (periodically, and after every other event) | `Trigger`, `Abort` (timeouts), `Delete`, `TriggerSavepoint`, `FinishSources`, `SavepointDropped`, `FailJob` |
//! | [`Coordinator::on_ack`] | `WriteMetadata` (the last ack), `Abort` and `Delete` (refused files), `Delete` (a late ack's files) |
//! | [`Coordinator::on_metadata_written`] | `Complete`, then `FinishSources`, `Abort` (subsumed), `Delete` (retention), `TriggerSavepoint`, `Trigger` (the final checkpoint); or `Delete`, `Abort`, `ResumeSources`, `FailJob` (the write failed) |
//! | [`Coordinator::on_decline`] | `Delete`, `Abort`, `ResumeSources`, `FailJob`, `TriggerSavepoint`, `Trigger` (the final checkpoint again) |
//! | [`Coordinator::request_savepoint`] | `TriggerSavepoint` (at once when nothing is in flight, else later), `SavepointDropped` |
//! | [`Coordinator::on_sources_exhausted`] | `Trigger` (the final checkpoint), `FinishSources` |
//! | [`Coordinator::on_job_stopped`] | `Delete`, `SavepointDropped` |
//!
//! The first answer to any of them starts with the deletes adoption decided
//! at construction (below).
//!
//! **Storage effects.** When the last task acknowledged, the coordinator
//! checks what they wrote and answers `WriteMetadata` (the bytes of
//! `_metadata`, its path, and the storage: the checkpoint storage, or a
//! savepoint's own directory from its request). The snapshot is then
//! *persisting*: still in flight (it counts for `max_concurrent` and its
//! timeout runs), neither waiting for acks nor complete. The driver performs
//! the write (create-if-absent) and reports the outcome with
//! [`Coordinator::on_metadata_written`]: only a successful write completes
//! the snapshot (`Complete`: tasks notified, sinks commit; then retention);
//! a failed one aborts it like any failure (it counts towards the tolerated
//! failures; a savepoint's does not). Every deletion is a `Delete` (a file,
//! a prefix, or a completed checkpoint: metadata first, the rest only if
//! that went); the driver logs a failed delete and carries on. The
//! coordinator holds no storage handle: what earlier runs left is read by
//! the driver before construction ([`ExistingCheckpoints`], read with
//! [`ExistingCheckpoints::read`](crate::effects)) and given as facts; the
//! deletes adoption decides come first in the answer to the first event.
//!
//! **Deletes: the rule for checkpoints whose metadata may exist.** The files
//! of a checkpoint are deleted only if its `_metadata` certainly does not
//! exist (never written: aborted while waiting for acks; or its write was
//! reported failed), or if it exists and a newer checkpoint has completed
//! (retention; a restore takes the newer one first). A checkpoint aborted
//! while its write is outstanding (timeout, job stop, subsumed by a newer
//! completion) is held *in doubt*, its shared files still registered: the
//! write may have landed, and a restore would take it. Its files go only
//! once the outcome is known: at once if the write failed; if it succeeded,
//! once a newer checkpoint has completed (metadata first). If the outcome
//! never comes (the job stopped), nothing of it is deleted: the next run
//! adopts it as completed if its metadata is there, or deletes it as
//! incomplete if not. An aborted savepoint in doubt loses its directory once
//! the outcome is known (its requester was told it failed).
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
//! **Stop-with-checkpoint** ([`Coordinator::request_stop_with_checkpoint`],
//! a graceful shutdown) ends a running job at an ordinary checkpoint: once
//! nothing is in flight (a savepoint waiting goes first) and no periodic
//! checkpoint is triggered any more, it answers `TriggerStopWithCheckpoint`
//! (the sources record their positions, emit the barrier and then emit
//! nothing, like a stop-with-savepoint's; no end of input, no final
//! watermark). The checkpoint goes into the checkpoint storage and is
//! retained like any other, so a restore of the job's latest checkpoint
//! resumes from it. Its completion is `Complete` (tasks notified, sinks
//! commit) followed by `FinishSources`; a failed one is `ResumeSources`, its
//! `Abort`, and the stop is tried again at the next step (each failure counts
//! towards the tolerated ones). It is ignored without periodic checkpoints
//! (nothing may be written to the checkpoint storage) and once the sources are
//! exhausted (the final checkpoint ends the job anyway).
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

use crate::CheckpointId;
use crate::layout::{
    METADATA_FILE, checkpoint_dir, metadata_path, parse_metadata_path, shared_dir,
    shared_file_checkpoint,
};
use crate::metadata::{CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskSnapshot};
use crate::shared_registry::SharedRegistry;
use crate::storage::SharedStorage;

/// Defaults of the checkpoint settings.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_RETAIN: usize = 1;
pub const DEFAULT_TOLERABLE_FAILURES: u32 = 3;

/// How the barriers of one checkpoint meet at a task with several input
/// channels (issue 18, docs/unaligned-checkpoints-design.md). Decided by the
/// coordinator per trigger and carried by the barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum BarrierAlignment {
    /// The task waits for the barrier on every channel before its snapshot:
    /// nothing in flight belongs to the checkpoint.
    #[default]
    Aligned,
    /// The barrier overtakes the records in flight, which are stored with
    /// the snapshot as channel state.
    Unaligned,
    /// Aligned until `deadline_unix_ms` (wall clock), unaligned from then on
    /// (Flink's aligned-checkpoint timeout).
    AlignedUntil { deadline_unix_ms: u64 },
}

/// Which checkpoints may be unaligned. Savepoints, stops and the final
/// checkpoint of a bounded job are always aligned: canonical, and nothing in
/// flight that a resume would replay after the sinks published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlignmentPolicy {
    #[default]
    Aligned,
    /// Periodic checkpoints start aligned and become unaligned once
    /// `aligned_timeout` has passed since their trigger (zero: unaligned
    /// from the start). A task whose recorded in-flight data of one
    /// checkpoint exceeds `inflight_bytes_max` declines it.
    Unaligned {
        aligned_timeout: Duration,
        inflight_bytes_max: u64,
    },
}

/// Encoded in-flight data a task records for one unaligned checkpoint at
/// most, unless configured otherwise (128 MiB).
pub const DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX: u64 = 128 << 20;

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
    /// Which checkpoints may be unaligned.
    pub alignment: AlignmentPolicy,
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
            alignment: AlignmentPolicy::Aligned,
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
    /// Where the savepoint is, as `--restore` names it. A stop-with-savepoint
    /// of a job with periodic checkpoints records it as the job's restore
    /// pointer in the same step as its `_metadata`, before any sink commits:
    /// the stop publishes output beyond the job's newest checkpoint, so from
    /// then on `--restore latest` must resume from the savepoint.
    pub location: Option<String>,
}

impl std::fmt::Debug for SavepointRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavepointRequest")
            .field("request", &self.request)
            .field("target", &self.target.describe())
            .field("stop", &self.stop)
            .field("location", &self.location)
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

/// The restore pointer a stop-with-savepoint leaves for its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopPointer {
    pub job_id: String,
    pub pointer: crate::restore::RestorePointer,
}

/// Which storage a storage effect goes to.
#[derive(Clone)]
pub enum Store {
    /// The job's checkpoint storage, which the driver holds (paths relative
    /// to its root).
    Checkpoints,
    /// A savepoint's own directory, from its request (paths relative to it).
    Savepoint(SharedStorage),
}

impl Store {
    /// The storage this names, `checkpoints` being the job's checkpoint
    /// storage.
    pub fn resolve<'a>(&'a self, checkpoints: &'a SharedStorage) -> &'a SharedStorage {
        match self {
            Store::Checkpoints => checkpoints,
            Store::Savepoint(target) => target,
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Checkpoints => f.write_str("Checkpoints"),
            Store::Savepoint(target) => f
                .debug_tuple("Savepoint")
                .field(&target.describe())
                .finish(),
        }
    }
}

/// The same storage object (a storage has no equality of its own).
impl PartialEq for Store {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Store::Checkpoints, Store::Checkpoints) => true,
            (Store::Savepoint(a), Store::Savepoint(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Store {}

/// What a `Delete` removes. What and when is the coordinator's decision; the
/// driver deletes exactly this and logs a failure: a failed delete is never
/// fatal (it leaves files behind, never a checkpoint that looks complete
/// without its files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// One file (a shared file no retained checkpoint references).
    File(String),
    /// Every file under a prefix: the directory of a checkpoint whose
    /// `_metadata` does not exist, or a failed savepoint's whole directory
    /// (`""`).
    Prefix(String),
    /// A checkpoint whose `_metadata` exists: `metadata` first; only once
    /// that is gone, everything under `dir`, then the `shared` files (which
    /// no retained checkpoint references any more). If the metadata cannot
    /// be deleted, the checkpoint still looks complete, so nothing it
    /// references may go: the rest is skipped (the next start adopts it
    /// again).
    Checkpoint {
        metadata: String,
        dir: String,
        shared: Vec<String>,
    },
}

/// Per checkpoint id, the shared files its `_metadata` references, or why it
/// could not be read.
pub type References = BTreeMap<CheckpointId, Result<Vec<String>, String>>;

/// What earlier runs of the job left in the checkpoint storage: the facts
/// adoption needs, read by the driver before the coordinator is built
/// (`ExistingCheckpoints::read` in [`crate::effects`]); the coordinator
/// reads nothing itself. `Default`: nothing (an empty directory).
#[derive(Debug, Clone)]
pub struct ExistingCheckpoints {
    /// Every path under `<job id>/`, or why listing failed (then nothing
    /// shared is deleted in this run).
    pub listing: Result<Vec<String>, String>,
    /// The shared files referenced by each checkpoint of the job that has a
    /// `_metadata` (and by the restored one, if it is the job's). A
    /// checkpoint missing here has no `_metadata` under the job.
    pub references: References,
}

impl Default for ExistingCheckpoints {
    fn default() -> Self {
        Self {
            listing: Ok(Vec::new()),
            references: BTreeMap::new(),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorAction {
    /// Have every source record its position and inject barrier `id` (a
    /// checkpoint: periodic, or the final one of a bounded job).
    Trigger {
        id: CheckpointId,
        kind: SnapshotKind,
        /// How its barriers align (the policy's, for a periodic checkpoint).
        alignment: BarrierAlignment,
    },
    /// Have every source record its position and inject the barrier of
    /// savepoint `id`, whose files go to `savepoint.target` (the driver
    /// hands it to the uploaders); with `savepoint.stop` the sources then
    /// emit nothing more until `FinishSources` or `ResumeSources`.
    TriggerSavepoint {
        id: CheckpointId,
        savepoint: SavepointRequest,
    },
    /// Have every source record its position, inject the barrier of
    /// checkpoint `id` — an ordinary checkpoint, into the checkpoint storage
    /// — and then emit nothing more until `FinishSources` (it completed) or
    /// `ResumeSources` (it failed): a stop-with-checkpoint.
    TriggerStopWithCheckpoint { id: CheckpointId },
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
    /// A stop-with-savepoint or stop-with-checkpoint failed: the suspended
    /// sources read on.
    ResumeSources,
    /// A savepoint request that will never be taken.
    SavepointDropped { request: String, reason: String },
    /// Too many consecutive failures: fail the job.
    FailJob { reason: String },
    /// Write `bytes` at `path` of `store`, create-if-absent (never over an
    /// existing file): the `_metadata` of snapshot `id`, which makes it
    /// exist. The driver reports the outcome with
    /// [`Coordinator::on_metadata_written`]; until then the snapshot is in
    /// flight, neither waiting for acknowledgements nor complete.
    ///
    /// `then_restore_pointer` (a stop-with-savepoint of a job with periodic
    /// checkpoints): once the metadata is written, write this restore
    /// pointer for the job in the checkpoint storage; the outcome reported is
    /// that of both writes, so the stop completes (and sinks commit) only if
    /// `--restore latest` will resume from the savepoint.
    WriteMetadata {
        id: CheckpointId,
        store: Store,
        path: String,
        bytes: Vec<u8>,
        then_restore_pointer: Option<StopPointer>,
    },
    /// Delete `what` in `store` (`id`: the checkpoint or savepoint it
    /// belongs to; `None` for a shared file no checkpoint references). A
    /// failure is logged, never fatal.
    Delete {
        id: Option<CheckpointId>,
        store: Store,
        what: Deletion,
    },
}

impl CoordinatorAction {
    /// `WriteMetadata` and `Delete`: what the driver carries out in storage.
    pub fn is_storage_effect(&self) -> bool {
        matches!(
            self,
            CoordinatorAction::WriteMetadata { .. } | CoordinatorAction::Delete { .. }
        )
    }
}

/// One task's acknowledgement: what its operators wrote for checkpoint `id`.
/// Serde: it travels from a task manager to the job manager.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskAck {
    pub id: CheckpointId,
    pub task: usize,
    /// `(operator uid, operator name, snapshot of this instance)`.
    pub operators: Vec<(String, String, SubtaskSnapshot)>,
    pub bytes: u64,
    /// Synchronous part of the task's snapshot.
    pub sync_pause: Duration,
    /// Time from the first to the last barrier at an aligning input
    /// (unaligned: from the first sighting of the barrier to the end of the
    /// recording).
    pub alignment: Duration,
    /// The task took its snapshot unaligned (its in-flight records are
    /// channel state).
    #[serde(default)]
    pub unaligned: bool,
    /// Bytes of channel state the task wrote (also counted in `bytes`).
    #[serde(default)]
    pub persisted_bytes: u64,
}

/// One task's part of a completed checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    pub task: usize,
    pub sync_pause: Duration,
    pub alignment: Duration,
    pub bytes: u64,
    pub unaligned: bool,
    /// Bytes of in-flight records persisted as channel state.
    pub persisted_bytes: u64,
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
    /// Some task took its snapshot unaligned.
    pub unaligned: bool,
    /// Bytes of in-flight records persisted as channel state, over all tasks.
    pub persisted_bytes: u64,
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
    /// A checkpoint after which the sources stop (stop-with-checkpoint).
    stop: bool,
}

/// A snapshot every task acknowledged whose `_metadata` write is outstanding.
struct Persisting {
    pending: Pending,
    /// Its figures (the duration is set when it completes).
    stats: CheckpointStats,
}

/// An aborted snapshot whose `_metadata` write had been issued (it was
/// aborted while persisting): the metadata may exist, and a restore would
/// take it.
struct InDoubt {
    pending: Pending,
    /// The write is known to have succeeded: a restorable checkpoint.
    written: bool,
    /// A newer checkpoint completed after it was aborted.
    superseded: bool,
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
    job_id: String,
    settings: CoordinatorSettings,
    tasks: usize,
    max_parallelism: u32,
    parallelism: u32,
    next_id: CheckpointId,
    /// Snapshots waiting for acknowledgements.
    pending: BTreeMap<CheckpointId, Pending>,
    /// Snapshots every task acknowledged whose `_metadata` write is
    /// outstanding: in flight, neither waiting for acks nor complete.
    persisting: BTreeMap<CheckpointId, Persisting>,
    /// Aborted snapshots whose `_metadata` write had been issued: it may
    /// exist (see "Deletes" in the module docs).
    in_doubt: BTreeMap<CheckpointId, InDoubt>,
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
    /// References to shared files of the retained checkpoints (and of the
    /// ones whose metadata is being written or may exist).
    shared: SharedRegistry,
    aborted_savepoints: VecDeque<(CheckpointId, SharedStorage)>,
    /// Savepoint requests waiting for nothing to be in flight.
    queued_savepoints: VecDeque<SavepointRequest>,
    /// A stop-with-checkpoint was asked for and has not completed yet.
    stop_requested: bool,
    ending: Ending,
    /// What adoption decided to delete, answered with the first event.
    startup: Vec<CoordinatorAction>,
    /// The job name and parameters every snapshot records ([`Self::with_job`]).
    job: Option<crate::job::JobSection>,
}

impl Coordinator {
    /// `tasks` acknowledgements complete a checkpoint. Ids continue after
    /// `last_id` (the restored checkpoint's, or 0), which stays retained until
    /// newer ones replace it.
    ///
    /// Construction adopts what earlier runs of the job left in storage, as
    /// the driver read it ([`ExistingCheckpoints::read`]); what adoption
    /// decides to delete (incomplete checkpoints, retention, shared files no
    /// retained checkpoint references) comes first in the answer to the
    /// first event. Those deletes must therefore run while no upload of an
    /// earlier run of this job is still writing (the runtime joins its
    /// uploaders between attempts). Without periodic checkpoints it adopts
    /// nothing and deletes nothing: the driver need not read anything.
    /// `now` is when it starts: the first checkpoint is due an interval later.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: &str,
        settings: CoordinatorSettings,
        tasks: usize,
        parallelism: u32,
        max_parallelism: u32,
        restored: Option<CheckpointId>,
        existing: ExistingCheckpoints,
        now: Now,
    ) -> Self {
        Self::after_restore(
            job_id,
            settings,
            tasks,
            parallelism,
            max_parallelism,
            restored,
            existing,
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
        job_id: &str,
        settings: CoordinatorSettings,
        tasks: usize,
        parallelism: u32,
        max_parallelism: u32,
        restored: Option<CheckpointId>,
        existing: ExistingCheckpoints,
        damaged: &BTreeSet<CheckpointId>,
        now: Now,
    ) -> Self {
        let mut coordinator = Self {
            job_id: job_id.to_owned(),
            settings,
            tasks,
            max_parallelism,
            parallelism,
            next_id: restored.unwrap_or(0) + 1,
            pending: BTreeMap::new(),
            persisting: BTreeMap::new(),
            in_doubt: BTreeMap::new(),
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
            stop_requested: false,
            ending: Ending::Running,
            startup: Vec::new(),
            job: None,
        };
        // A coordinator that takes no checkpoints has nothing to adopt, and
        // its job holds no lease on the directory: it must not delete there.
        if coordinator.settings.periodic() {
            coordinator.startup = coordinator.adopt_existing(existing, damaged);
        }
        coordinator
    }

    /// A job that continues (after a restart or a crash) takes over what its
    /// earlier runs left in storage: completed checkpoints join the retained
    /// ones (and retention applies to them), directories of checkpoints that
    /// never completed are deleted, the shared files of the retained
    /// checkpoints are registered and every other shared file is deleted, and
    /// ids continue after the highest seen. Returns the deletes.
    fn adopt_existing(
        &mut self,
        existing: ExistingCheckpoints,
        damaged: &BTreeSet<CheckpointId>,
    ) -> Vec<CoordinatorAction> {
        let ExistingCheckpoints {
            listing,
            references,
        } = existing;
        let paths = match listing {
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
                self.register_retained(&references);
                return Vec::new();
            }
        };
        let mut actions = Vec::new();
        let (seen, completed) = self.scan_checkpoints(&paths);
        for id in seen.difference(&completed) {
            actions.push(delete_in_checkpoints(
                Some(*id),
                Deletion::Prefix(checkpoint_dir(&self.job_id, *id)),
            ));
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
        let kept = self.adopt_completed(completed, damaged, &mut actions);
        self.register_retained(&references);
        self.register_kept(&kept, &references);
        actions.extend(self.enforce_retention());
        actions.extend(self.collect_orphans(&paths));
        actions
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
        actions: &mut Vec<CoordinatorAction>,
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
                actions.push(delete_in_checkpoints(
                    Some(id),
                    Deletion::Prefix(checkpoint_dir(&self.job_id, id)),
                ));
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
    fn register_kept(&mut self, kept: &[CheckpointId], references: &References) {
        for &id in kept {
            match references.get(&id) {
                Some(Ok(paths)) => self.shared.register(id, paths.iter().map(String::as_str)),
                Some(Err(_)) | None => self.shared.mark_unknown(id),
            }
        }
    }

    /// Registers the shared files of every retained checkpoint, from its
    /// metadata. A checkpoint without metadata under this job (one of another
    /// job this job was restored from) references none of this job's files.
    fn register_retained(&mut self, references: &References) {
        for id in self.retained.clone() {
            match references.get(&id) {
                Some(Ok(paths)) => self.shared.register(id, paths.iter().map(String::as_str)),
                None => {}
                Some(Err(e)) => {
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
    fn collect_orphans(&self, paths: &[String]) -> Vec<CoordinatorAction> {
        if !self.shared.is_complete() {
            tracing::warn!(
                job = self.job_id,
                "not collecting unreferenced shared files: {}",
                self.shared.incompleteness()
            );
            return Vec::new();
        }
        self.shared_files(paths)
            .filter(|path| !self.shared.is_registered(path))
            .map(|path| {
                tracing::info!(
                    job = self.job_id,
                    "deleting unreferenced shared file {path}"
                );
                delete_in_checkpoints(None, Deletion::File(path.to_owned()))
            })
            .collect()
    }

    /// The shared files among `paths`.
    fn shared_files<'a>(&self, paths: &'a [String]) -> impl Iterator<Item = &'a str> {
        let dir = shared_dir(&self.job_id);
        paths
            .iter()
            .filter(move |p| p.starts_with(&dir))
            .map(String::as_str)
    }

    /// Every answer to an event starts with what adoption decided to delete,
    /// the first time.
    fn answer(&mut self, actions: Vec<CoordinatorAction>) -> Vec<CoordinatorAction> {
        if self.startup.is_empty() {
            return actions;
        }
        let mut all = std::mem::take(&mut self.startup);
        all.extend(actions);
        all
    }

    /// Every snapshot this coordinator completes records `job` (its name
    /// and parameters) in its metadata; without it, none is recorded.
    pub fn with_job(mut self, job: crate::job::JobSection) -> Self {
        self.job = Some(job);
        self
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

    /// Snapshots in flight: waiting for acknowledgements, or for their
    /// `_metadata` write.
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.persisting.len()
    }

    /// Snapshots whose `_metadata` write is outstanding.
    pub fn persisting(&self) -> usize {
        self.persisting.len()
    }

    /// Aborted checkpoints whose `_metadata` may exist, oldest first: their
    /// files stay until the rule of "Deletes" (module docs) lets them go.
    pub fn in_doubt(&self) -> Vec<CheckpointId> {
        self.in_doubt.keys().copied().collect()
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
        if self.ending != Ending::Running
            || self.stop_requested
            || self.in_flight() >= self.settings.max_concurrent
        {
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
        self.start(kind, None, false, now)
    }

    /// Someone asked to stop the job at a checkpoint (a graceful shutdown):
    /// periodic checkpoints stop, and as soon as nothing is in flight (and no
    /// savepoint waits) the stop-with-checkpoint is triggered
    /// (`TriggerStopWithCheckpoint`); see the module docs. Ignored without
    /// periodic checkpoints and once the sources are exhausted or finished;
    /// asking again changes nothing.
    pub fn request_stop_with_checkpoint(&mut self, now: Now) -> Vec<CoordinatorAction> {
        if self.settings.periodic() && self.ending == Ending::Running {
            self.stop_requested = true;
        }
        let actions = self.advance(now);
        self.answer(actions)
    }

    /// Whether a stop-with-checkpoint was asked for and has not completed.
    pub fn is_stopping(&self) -> bool {
        self.stop_requested
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
            return self.answer(vec![CoordinatorAction::SavepointDropped {
                request: savepoint.request,
                reason: reason.into(),
            }]);
        }
        self.queued_savepoints.push_back(savepoint);
        let actions = self.advance(now);
        self.answer(actions)
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
        let actions = self.advance(now);
        self.answer(actions)
    }

    /// The job stopped (finished or failed; its tasks are gone): whatever is
    /// in flight is aborted without notifying anyone (the answer holds only
    /// the deletes of its files, and of no file whose `_metadata` may
    /// exist), and the requests still waiting are answered as dropped.
    pub fn on_job_stopped(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let mut actions = self.abort_everything("the job stopped", now);
        actions.extend(self.drop_queued("the job stopped before the savepoint was taken"));
        self.answer(actions)
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
        if self.in_flight() == 0
            && let Some(savepoint) = self.queued_savepoints.pop_front()
        {
            match self.start(SnapshotKind::Savepoint, Some(savepoint.clone()), false, now) {
                Some(action) => actions.push(action),
                // Only with `max_concurrent` 0: it waits (for ever).
                None => self.queued_savepoints.push_front(savepoint),
            }
        }
        if self.stop_requested
            && self.ending == Ending::Running
            && self.in_flight() == 0
            && self.queued_savepoints.is_empty()
            && let Some(action) = self.start(SnapshotKind::Checkpoint, None, true, now)
        {
            actions.push(action);
        }
        let Ending::Exhausted { final_checkpoint } = self.ending else {
            return actions;
        };
        if self.in_flight() > 0 || !self.queued_savepoints.is_empty() {
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

    /// How a checkpoint triggered at `now` aligns: by the policy, except the
    /// final checkpoint of a bounded job (aligned: after it the sinks'
    /// `finish` publishes what a resume from it would replay).
    fn alignment_of_checkpoint(&self, now: Now) -> BarrierAlignment {
        if matches!(self.ending, Ending::Exhausted { .. }) {
            return BarrierAlignment::Aligned;
        }
        match self.settings.alignment {
            AlignmentPolicy::Aligned => BarrierAlignment::Aligned,
            AlignmentPolicy::Unaligned {
                aligned_timeout, ..
            } if aligned_timeout.is_zero() => BarrierAlignment::Unaligned,
            AlignmentPolicy::Unaligned {
                aligned_timeout, ..
            } => BarrierAlignment::AlignedUntil {
                deadline_unix_ms: now
                    .unix_ms
                    .saturating_add(u64::try_from(aligned_timeout.as_millis()).unwrap_or(u64::MAX)),
            },
        }
    }

    fn start(
        &mut self,
        kind: SnapshotKind,
        savepoint: Option<SavepointRequest>,
        stop: bool,
        now: Now,
    ) -> Option<CoordinatorAction> {
        if self.in_flight() >= self.settings.max_concurrent {
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
            None if stop => CoordinatorAction::TriggerStopWithCheckpoint { id },
            None => CoordinatorAction::Trigger {
                id,
                kind,
                alignment: self.alignment_of_checkpoint(now),
            },
        };
        self.pending.insert(
            id,
            Pending {
                kind,
                started: now.instant,
                trigger_unix_ms: now.unix_ms,
                acks: HashMap::new(),
                savepoint,
                stop,
            },
        );
        Some(action)
    }

    /// Whether snapshot `id` is a savepoint still in flight.
    pub fn is_pending_savepoint(&self, id: CheckpointId) -> bool {
        let pending = self.pending.get(&id);
        let persisting = self.persisting.get(&id).map(|p| &p.pending);
        pending
            .or(persisting)
            .is_some_and(|p| p.savepoint.is_some())
    }

    /// Periodic work, and the next step after any other event: abort
    /// timed-out snapshots, start a waiting savepoint, a due periodic
    /// checkpoint, or the final one.
    pub fn tick(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let mut actions = self.expire(now);
        actions.extend(self.advance(now));
        if self.ending == Ending::Running
            && self
                .next_trigger_at(now)
                .is_some_and(|at| at <= now.instant)
        {
            actions.extend(self.trigger_now(SnapshotKind::Checkpoint, now));
        }
        self.answer(actions)
    }

    /// Aborts snapshots that ran out of time (waiting for acknowledgements,
    /// or for their `_metadata` write).
    pub fn tick_timeouts(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.expire(now);
        self.answer(actions)
    }

    fn expire(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let timeout = self.settings.timeout;
        let expired = |started: Instant| now.instant.duration_since(started) >= timeout;
        let mut ids: Vec<(CheckpointId, bool)> = self
            .pending
            .iter()
            .filter(|(_, p)| expired(p.started))
            .map(|(id, _)| (*id, false))
            .chain(
                self.persisting
                    .iter()
                    .filter(|(_, p)| expired(p.pending.started))
                    .map(|(id, _)| (*id, true)),
            )
            .collect();
        ids.sort_unstable();
        let mut actions = Vec::new();
        for (id, persisting) in ids {
            let reason = if persisting {
                format!("not complete after {timeout:?} (its metadata write is outstanding)")
            } else {
                format!("not complete after {timeout:?}")
            };
            actions.extend(self.abort(id, reason, now));
        }
        actions
    }

    /// A task acknowledged. When it was the last, the snapshot's `_metadata`
    /// is to be written (`WriteMetadata`); it completes only when the driver
    /// reports the write ([`Coordinator::on_metadata_written`]).
    pub fn on_ack(&mut self, ack: TaskAck, now: Now) -> Vec<CoordinatorAction> {
        let mut actions = self.collect_ack(ack, now);
        actions.extend(self.advance(now));
        self.answer(actions)
    }

    fn collect_ack(&mut self, ack: TaskAck, now: Now) -> Vec<CoordinatorAction> {
        let Some(pending) = self.pending.get_mut(&ack.id) else {
            return self.discard_late_ack(&ack);
        };
        let id = ack.id;
        pending.acks.insert(ack.task, ack);
        if pending.acks.len() < self.tasks {
            return Vec::new();
        }
        let Some(pending) = self.pending.remove(&id) else {
            return Vec::new();
        };
        self.persist(id, pending, now)
    }

    /// Every task acknowledged snapshot `id`: check what they wrote and have
    /// its `_metadata` written, last and create-if-absent: a checkpoint's in
    /// the checkpoint storage, a savepoint's into its own directory.
    fn persist(&mut self, id: CheckpointId, pending: Pending, now: Now) -> Vec<CoordinatorAction> {
        let (metadata, stats) = self.assemble(id, &pending, now);
        let (store, path, checked) = match &pending.savepoint {
            Some(savepoint) => (
                Store::Savepoint(Arc::clone(&savepoint.target)),
                METADATA_FILE.to_owned(),
                check_self_contained(&metadata),
            ),
            None => (
                Store::Checkpoints,
                metadata_path(&self.job_id, id),
                self.check_native_files(&metadata),
            ),
        };
        let bytes = match checked.and_then(|()| encode_checked(&metadata)) {
            Ok(bytes) => bytes,
            Err(reason) => {
                self.pending.insert(id, pending);
                return self.abort(id, reason, now);
            }
        };
        if pending.savepoint.is_none() {
            // Registered from the moment its metadata may exist: retention of
            // another checkpoint must not delete a file this one references
            // (and a file it shares with one retention discards must not
            // reach zero references).
            self.shared.register(id, metadata.shared_paths());
        }
        let then_restore_pointer = pending
            .savepoint
            .as_ref()
            .filter(|s| s.stop && self.settings.periodic())
            .and_then(|s| s.location.clone())
            .map(|location| StopPointer {
                job_id: self.job_id.clone(),
                pointer: crate::restore::RestorePointer {
                    storage_path: None,
                    location: Some(location),
                    checkpoint_id: id,
                    created_unix_ms: now.unix_ms,
                },
            });
        self.persisting.insert(id, Persisting { pending, stats });
        vec![CoordinatorAction::WriteMetadata {
            id,
            store,
            path,
            bytes,
            then_restore_pointer,
        }]
    }

    /// The driver carried out the `WriteMetadata` of snapshot `id`. On
    /// success the snapshot is complete (`Complete`, then what follows:
    /// subsumed older snapshots aborted, retention, the end of the sources,
    /// a waiting savepoint, the final checkpoint); on failure it is aborted
    /// like any failed snapshot, and its files go. For a snapshot aborted
    /// while its write was outstanding (timeout, job stop, subsumed), the
    /// outcome decides what happens to its files (module docs, "Deletes").
    pub fn on_metadata_written(
        &mut self,
        id: CheckpointId,
        result: Result<(), String>,
        now: Now,
    ) -> Vec<CoordinatorAction> {
        let mut actions = if let Some(persisting) = self.persisting.remove(&id) {
            match result {
                Ok(()) => self.complete(id, persisting, now),
                Err(e) => self.abort_snapshot(
                    id,
                    persisting.pending,
                    format!("writing metadata: {e}"),
                    now,
                    false,
                    true,
                ),
            }
        } else {
            self.resolve_doubt(id, result.is_ok())
        };
        actions.extend(self.advance(now));
        self.answer(actions)
    }

    /// Snapshot `id`'s `_metadata` is written: from now on it exists.
    fn complete(
        &mut self,
        id: CheckpointId,
        persisting: Persisting,
        now: Now,
    ) -> Vec<CoordinatorAction> {
        let Persisting { pending, mut stats } = persisting;
        let stop = pending.stop;
        stats.duration = now.instant.duration_since(pending.started);
        self.record_completed(stats.clone());
        self.last_finished = Some(now.instant);
        if let Some(savepoint) = pending.savepoint {
            // Nothing is retained or registered: the savepoint belongs to
            // the user from now on. An intermediate savepoint has no side
            // effects: sinks commit its data with the next checkpoint (a
            // recovery goes back to a checkpoint, never to a savepoint). A
            // stop-with-savepoint commits, then ends the sources, which
            // emitted nothing after its barrier.
            let mut actions = vec![CoordinatorAction::Complete {
                id,
                stats,
                notify_tasks: savepoint.stop,
                request: Some(savepoint.request),
            }];
            if savepoint.stop {
                actions.extend(self.finish_sources());
            }
            return actions;
        }
        self.consecutive_failures = 0;
        // Its shared files were registered when its write was issued.
        self.retained.push_back(id);
        let mut actions = vec![CoordinatorAction::Complete {
            id,
            stats,
            notify_tasks: true,
            request: None,
        }];
        // The final checkpoint, or a later one, ends the sources' output: it
        // holds everything they read. So does a stop-with-checkpoint: the
        // sources emitted nothing after its barrier.
        let last_of_input = matches!(
            self.ending,
            Ending::Exhausted { final_checkpoint: Some(last) } if id >= last
        );
        if stop || last_of_input {
            self.stop_requested = false;
            actions.extend(self.finish_sources());
        }
        // Older snapshots in flight can no longer matter.
        let older: Vec<CheckpointId> = self
            .pending
            .range(..id)
            .map(|(id, _)| *id)
            .chain(self.persisting.range(..id).map(|(id, _)| *id))
            .collect();
        for old in older {
            actions.extend(self.abort_counted(
                old,
                format!("subsumed by checkpoint {id}"),
                now,
                false,
            ));
        }
        actions.extend(self.supersede_doubts(id));
        actions.extend(self.enforce_retention());
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
    /// abort removed the directory; remove them too. Never the files of a
    /// snapshot whose metadata is being written or may exist.
    fn discard_late_ack(&self, ack: &TaskAck) -> Vec<CoordinatorAction> {
        if let Some((_, target)) = self.aborted_savepoints.iter().find(|(id, _)| *id == ack.id) {
            return vec![CoordinatorAction::Delete {
                id: Some(ack.id),
                store: Store::Savepoint(Arc::clone(target)),
                what: Deletion::Prefix(String::new()),
            }];
        }
        if self.retained.contains(&ack.id)
            || self.persisting.contains_key(&ack.id)
            || self.in_doubt.contains_key(&ack.id)
        {
            return Vec::new();
        }
        let mut actions = vec![delete_in_checkpoints(
            Some(ack.id),
            Deletion::Prefix(checkpoint_dir(&self.job_id, ack.id)),
        )];
        actions.extend(self.discard_shared(ack.id, std::iter::once(ack)));
        actions
    }

    /// Deletes the shared files of acknowledgements of checkpoint `id`, which
    /// did not complete, that no retained checkpoint references. While the
    /// registry is incomplete, only files `id` wrote itself: no completed
    /// checkpoint can reference those (a backend reuses files of completed
    /// checkpoints only), but an unregistered older one might be referenced
    /// by a checkpoint whose references are unknown.
    fn discard_shared<'a>(
        &self,
        id: CheckpointId,
        acks: impl Iterator<Item = &'a TaskAck>,
    ) -> Vec<CoordinatorAction> {
        let complete = self.shared.is_complete();
        let mut deleted = BTreeSet::new();
        for file in acks
            .flat_map(|a| &a.operators)
            .filter_map(|(_, _, subtask)| subtask.native.as_ref())
            .flat_map(|n| &n.files)
            .filter(|f| f.shared && (complete || f.uploaded_by == id))
        {
            let path = file.file.path.as_str();
            if !self.shared.is_registered(path) {
                deleted.insert(path);
            }
        }
        deleted
            .into_iter()
            .map(|path| delete_in_checkpoints(Some(id), Deletion::File(path.to_owned())))
            .collect()
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
            return self.answer(Vec::new());
        }
        let mut actions = self.abort(id, reason, now);
        actions.extend(self.advance(now));
        self.answer(actions)
    }

    /// Aborts snapshot `id` wherever it is in flight: waiting for
    /// acknowledgements (its files go), or for its `_metadata` write (its
    /// files stay: the metadata may exist).
    fn abort(&mut self, id: CheckpointId, reason: String, now: Now) -> Vec<CoordinatorAction> {
        self.abort_counted(id, reason, now, true)
    }

    /// Like [`Coordinator::abort`]; `counted`: whether it counts towards the
    /// tolerated consecutive failures. A checkpoint subsumed by a newer
    /// completed one is not a failure of checkpointing (as in Flink): with
    /// `max_concurrent > 1` and no tolerated failure, counting it failed
    /// healthy jobs whenever acknowledgements arrived out of order (found
    /// by the whole-job simulation).
    fn abort_counted(
        &mut self,
        id: CheckpointId,
        reason: String,
        now: Now,
        counted: bool,
    ) -> Vec<CoordinatorAction> {
        let consecutive = self.consecutive_failures;
        let actions = if let Some(pending) = self.pending.remove(&id) {
            self.abort_snapshot(id, pending, reason, now, false, counted)
        } else if let Some(persisting) = self.persisting.remove(&id) {
            self.abort_snapshot(id, persisting.pending, reason, now, true, counted)
        } else {
            Vec::new()
        };
        if !counted {
            debug_assert_eq!(self.consecutive_failures, consecutive);
        }
        actions
    }

    /// Snapshot `id` failed: the bookkeeping, `Abort` (and what a failed
    /// final checkpoint or stop-with-savepoint entails), and its files:
    /// deleted, unless its metadata `may_exist`, in which case it is held in
    /// doubt until the outcome of the write is known.
    fn abort_snapshot(
        &mut self,
        id: CheckpointId,
        pending: Pending,
        reason: String,
        now: Now,
        may_exist: bool,
        counted: bool,
    ) -> Vec<CoordinatorAction> {
        let mut actions = Vec::new();
        let stop = pending.stop;
        if let Some(savepoint) = pending.savepoint.clone() {
            // The user's savepoint failed; periodic checkpoints are unaffected,
            // so it does not count towards the tolerated failures.
            tracing::warn!(savepoint = id, "savepoint failed: {reason}");
            self.failed += 1;
            self.last_finished = Some(now.instant);
            if may_exist {
                // Its directory goes once the outcome of the write is known.
                self.in_doubt.insert(
                    id,
                    InDoubt {
                        pending,
                        written: false,
                        superseded: false,
                    },
                );
            } else {
                actions.push(CoordinatorAction::Delete {
                    id: Some(id),
                    store: Store::Savepoint(Arc::clone(&savepoint.target)),
                    what: Deletion::Prefix(String::new()),
                });
                if self.aborted_savepoints.len() >= ABORTED_SAVEPOINTS_MAX {
                    self.aborted_savepoints.pop_front();
                }
                self.aborted_savepoints
                    .push_back((id, Arc::clone(&savepoint.target)));
            }
            // The suspended sources read on; they hear it before the abort
            // itself, as every task does.
            if savepoint.stop {
                actions.push(CoordinatorAction::ResumeSources);
            }
            actions.push(CoordinatorAction::Abort {
                id,
                reason,
                request: Some(savepoint.request),
            });
            return actions;
        }
        tracing::warn!(checkpoint = id, "checkpoint aborted: {reason}");
        self.failed += 1;
        if counted {
            self.consecutive_failures += 1;
        }
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
        if may_exist {
            tracing::warn!(
                checkpoint = id,
                "its metadata write is outstanding: its files stay until the write failed \
                 or a newer checkpoint completed"
            );
            self.in_doubt.insert(
                id,
                InDoubt {
                    pending,
                    written: false,
                    superseded: false,
                },
            );
        } else {
            actions.extend(self.discard_failed(id, &pending));
        }
        // A failed stop-with-checkpoint: the suspended sources read on (they
        // hear it before the abort itself, as for a stop-with-savepoint), and
        // the stop, still asked for, is tried again at the next step.
        if stop {
            actions.push(CoordinatorAction::ResumeSources);
        }
        actions.push(CoordinatorAction::Abort {
            id,
            reason: reason.clone(),
            request: None,
        });
        if counted && self.consecutive_failures > self.settings.tolerable_failures {
            actions.push(CoordinatorAction::FailJob {
                reason: format!(
                    "{} consecutive checkpoints failed (tolerated: {}); last: checkpoint {id}: {reason}",
                    self.consecutive_failures, self.settings.tolerable_failures
                ),
            });
        }
        actions
    }

    /// Deletes the files of checkpoint `id`, whose `_metadata` certainly
    /// does not exist (never written, or its write failed): its directory,
    /// and its shared files no retained checkpoint references.
    fn discard_failed(&mut self, id: CheckpointId, pending: &Pending) -> Vec<CoordinatorAction> {
        // Registered if its write was issued.
        self.shared.release(id);
        let mut actions = vec![delete_in_checkpoints(
            Some(id),
            Deletion::Prefix(checkpoint_dir(&self.job_id, id)),
        )];
        actions.extend(self.discard_shared(id, pending.acks.values()));
        actions
    }

    /// The outcome of the `_metadata` write of snapshot `id`, aborted while
    /// the write was outstanding.
    fn resolve_doubt(&mut self, id: CheckpointId, written: bool) -> Vec<CoordinatorAction> {
        let Some(mut doubt) = self.in_doubt.remove(&id) else {
            return Vec::new();
        };
        if let Some(savepoint) = &doubt.pending.savepoint {
            // The requester was told it failed: its directory goes, whether
            // or not the metadata got there.
            return vec![CoordinatorAction::Delete {
                id: Some(id),
                store: Store::Savepoint(Arc::clone(&savepoint.target)),
                what: Deletion::Prefix(String::new()),
            }];
        }
        if !written {
            return self.discard_failed(id, &doubt.pending);
        }
        if doubt.superseded {
            return self.discard_completed(id);
        }
        tracing::warn!(
            checkpoint = id,
            "the metadata of an aborted checkpoint was written after all: it is a \
             restorable checkpoint and stays until a newer one completed"
        );
        doubt.written = true;
        self.in_doubt.insert(id, doubt);
        Vec::new()
    }

    /// Checkpoint `id` completed: aborted checkpoints older than it whose
    /// metadata may exist no longer matter to a restore (it takes `id`
    /// first); their files go as soon as the outcome of the write is known.
    fn supersede_doubts(&mut self, id: CheckpointId) -> Vec<CoordinatorAction> {
        let older: Vec<CheckpointId> = self
            .in_doubt
            .range(..id)
            .filter(|(_, d)| d.pending.savepoint.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut actions = Vec::new();
        for old in older {
            let Some(doubt) = self.in_doubt.get_mut(&old) else {
                continue;
            };
            if doubt.written {
                self.in_doubt.remove(&old);
                actions.extend(self.discard_completed(old));
            } else {
                doubt.superseded = true;
            }
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
                unaligned: ack.unaligned,
                persisted_bytes: ack.persisted_bytes,
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
            job: self.job.clone(),
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
            unaligned: tasks.iter().any(|t| t.unaligned),
            persisted_bytes: tasks.iter().map(|t| t.persisted_bytes).sum(),
            tasks,
        };
        (metadata, stats)
    }

    /// The job stops: abort whatever is in flight, without notifying anyone.
    /// The answer holds only storage effects: the deletes of the files of
    /// snapshots that were waiting for acknowledgements (those whose
    /// metadata write was outstanding keep theirs).
    pub fn abort_all(&mut self, reason: &str, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.abort_everything(reason, now);
        self.answer(actions)
    }

    fn abort_everything(&mut self, reason: &str, now: Now) -> Vec<CoordinatorAction> {
        let ids: Vec<CheckpointId> = self
            .pending
            .keys()
            .chain(self.persisting.keys())
            .copied()
            .collect();
        let mut actions = Vec::new();
        for id in ids {
            actions.extend(
                self.abort(id, reason.to_owned(), now)
                    .into_iter()
                    .filter(CoordinatorAction::is_storage_effect),
            );
        }
        actions
    }

    fn enforce_retention(&mut self) -> Vec<CoordinatorAction> {
        let retain = self.settings.retain.max(1);
        let mut actions = Vec::new();
        while self.retained.len() > retain {
            let Some(old) = self.retained.pop_front() else {
                break;
            };
            actions.extend(self.discard_completed(old));
        }
        actions
    }

    /// Deletes checkpoint `old`, whose `_metadata` exists (retention, or an
    /// aborted one whose metadata was written after all and that a newer
    /// checkpoint superseded): metadata first, then its directory and the
    /// shared files no retained checkpoint references any more.
    fn discard_completed(&mut self, old: CheckpointId) -> Vec<CoordinatorAction> {
        let unreferenced = self.shared.release(old);
        let shared = if !unreferenced.is_empty() && !self.shared.is_complete() {
            tracing::warn!(
                checkpoint = old,
                "keeping {} shared files it alone referenced: {}",
                unreferenced.len(),
                self.shared.incompleteness()
            );
            Vec::new()
        } else {
            unreferenced
        };
        vec![delete_in_checkpoints(
            Some(old),
            Deletion::Checkpoint {
                metadata: metadata_path(&self.job_id, old),
                dir: checkpoint_dir(&self.job_id, old),
                shared,
            },
        )]
    }
}

/// A delete in the job's checkpoint storage.
fn delete_in_checkpoints(id: Option<CheckpointId>, what: Deletion) -> CoordinatorAction {
    CoordinatorAction::Delete {
        id,
        store: Store::Checkpoints,
        what,
    }
}

/// The encoded `metadata`, after checking that it reads back identically
/// (pair assertion).
fn encode_checked(metadata: &CheckpointMetadata) -> Result<Vec<u8>, String> {
    let encoded = metadata.encode().map_err(|e| e.to_string())?;
    match CheckpointMetadata::decode("(new metadata)", &encoded) {
        Ok(decoded) if decoded == *metadata => Ok(encoded),
        _ => Err("metadata does not read back identically".into()),
    }
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
