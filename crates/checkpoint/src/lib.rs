//! Checkpoints: where snapshots go, what they look like, and who decides when
//! one is complete.
//!
//! Owns: the [`storage::CheckpointStorage`] trait and its implementations; the
//! on-storage layout ([`layout`]); the sealed file format with checksums
//! ([`format`](mod@format)); checkpoint metadata ([`metadata`]); keyed state files indexed by
//! key group ([`keyed_file`]); channel state files, the in-flight records of
//! an unaligned checkpoint ([`channel_file`]); the JSON codec of operator list state
//! ([`list_state`]); a backend's native files, uploaded and fetched
//! back ([`native_files`]); the coordinator's state machine ([`coordinator`]),
//! including when files shared between checkpoints are deleted, and how a
//! driver carries out its storage effects ([`effects`]); finding and
//! validating a checkpoint to restore ([`restore`]); the structural checks
//! of metadata read from storage ([`validate`]); one owner per job directory,
//! the lease a running job holds on it ([`lease`]); at-most-once read-ahead
//! reservations of source positions ([`reservation`]); the job name and
//! parameters a snapshot records and their comparison on restore ([`job`]);
//! whether a snapshot would restore into a job ([`compatibility`]). Reading a snapshot offline
//! for people (summary, verify, dump) is the `flowstate-tools` crate's.
//!
//! Must not touch: tasks, threads or channels. The runtime drives the coordinator
//! with messages (trigger times, acknowledgements, declines, outcomes of metadata
//! writes) and carries out what it answers (inject barrier n, write `_metadata`,
//! delete, notify completion); this crate never calls into the runtime.

pub mod background;
pub mod channel_file;
pub mod compatibility;
pub mod coordinator;
pub mod effects;
pub mod format;
pub mod job;
pub mod keyed_file;
pub mod layout;
pub mod lease;
pub mod list_state;
pub mod metadata;
pub mod native_files;
pub mod reservation;
pub mod restore;
mod shared_registry;
pub mod storage;
pub mod validate;

pub use compatibility::{
    CheckOptions, CompatibilityReport, DeclaredKeyedState, DeclaredOperator, JobUnderCheck,
    OperatorRole, Outcome,
};
pub use coordinator::{
    AlignmentPolicy, BarrierAlignment, CheckpointStats, Coordinator, CoordinatorAction,
    CoordinatorSettings, DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX, Deletion, ExistingCheckpoints, Now,
    SavepointRequest, StopPointer, Store, TaskAck, TaskStats,
};
pub use job::{
    JobParameter, JobParameters, JobSection, ParameterDifference, ParameterError,
    ParameterMismatch, compare_job,
};
pub use lease::{Lease, LeaseError, LeaseOwner, LeaseSettings};
pub use list_state::{ListStateError, decode_list, encode_list};
pub use metadata::{
    ChannelInputState, ChannelSection, ChannelStateHandle, CheckpointMetadata, EdgePartitioning,
    FileRef, KeyGroupEntry, KeyedStateHandle, METADATA_BYTES_MAX, NativeFileRef, NativeStateHandle,
    OperatorListState, OperatorSnapshot, SnapshotKind, SubtaskSnapshot, read_metadata,
};
pub use native_files::{StorageFetcher, native_restore, upload_native};
pub use storage::{
    CheckpointStorage, Location, ObjectStoreStorage, SharedStorage, StorageError, open_storage,
};

use thiserror::Error;

/// Checkpoint ids start at 1 and only grow within a job.
pub type CheckpointId = u64;

/// Errors of writing, reading and validating checkpoints.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("'{path}' is damaged: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("'{path}' has format version {found}; this flowstate reads versions up to {supported}")]
    UnsupportedVersion {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("no completed checkpoint under '{0}'")]
    NothingToRestore(String),
    #[error(transparent)]
    State(#[from] flowstate_state::StateError),
    /// A local file to upload could not be read, or is not what the snapshot
    /// listed.
    #[error("local file {}: {reason}", path.display())]
    LocalFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}
