//! Checkpoint metadata: the one file that says what a checkpoint holds. It is
//! written last (atomically, create-if-absent); a checkpoint without it does not
//! exist.
//!
//! The key type of a keyed file ([`KeyedStateHandle::key_type`]) was added the
//! same way: optional, defaulting to empty (unknown).
//!
//! Native state ([`NativeStateHandle`]) was added to version 1 without a version
//! bump: the field is optional and omitted when absent, so older metadata reads
//! as before and metadata without native state is written byte for byte as
//! before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use flowstate_state::descriptor::StateSignature;
use flowstate_state::{KeyGroup, RedistributionMode};

use crate::format::{METADATA_MAGIC, seal, unseal};
use crate::{CheckpointError, CheckpointId};

/// Version of the metadata format this build writes and the newest it reads.
pub const METADATA_VERSION: u32 = 1;

/// Largest `_metadata` file a reader accepts, checked before it is read. The
/// metadata holds an index entry per key group and instance and the operator
/// list states inline (source positions, pending sink files): megabytes for
/// large jobs, never this much.
pub const METADATA_BYTES_MAX: u64 = 64 << 20;

/// Reads, verifies and decodes the metadata at `path`: its size first (at most
/// [`METADATA_BYTES_MAX`]), then seal, version, JSON and structure
/// ([`crate::validate::check_metadata`]).
pub fn read_metadata(
    storage: &dyn crate::storage::CheckpointStorage,
    path: &str,
) -> Result<CheckpointMetadata, CheckpointError> {
    let too_large = |size: u64| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: format!("{size} bytes, more than the limit of {METADATA_BYTES_MAX} for metadata"),
    };
    match storage.size(path)? {
        None => {
            return Err(crate::storage::StorageError::NotFound {
                storage: storage.describe(),
                path: path.to_owned(),
            }
            .into());
        }
        Some(size) if size > METADATA_BYTES_MAX => return Err(too_large(size)),
        Some(_) => {}
    }
    let bytes = storage.get(path)?;
    // It may have been replaced between the two calls.
    if bytes.len() as u64 > METADATA_BYTES_MAX {
        return Err(too_large(bytes.len() as u64));
    }
    CheckpointMetadata::decode(path, &bytes)
}

/// What kind of snapshot a metadata file describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
}

/// A file written for a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path relative to the storage root.
    pub path: String,
    pub size: u64,
    pub crc32c: u32,
}

/// Where one key group's section lies in a keyed state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupEntry {
    pub key_group: KeyGroup,
    pub offset: u64,
    pub length: u64,
    pub entries: u64,
}

/// Keyed state of one operator instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedStateHandle {
    pub file: FileRef,
    pub key_group_start: KeyGroup,
    pub key_group_end: KeyGroup,
    pub groups: Vec<KeyGroupEntry>,
    /// The Rust type name of the keys (`std::any::type_name`), for offline
    /// tools that decode keys without the job's types. Empty (and omitted) in
    /// metadata written before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_type: String,
}

/// One operator list state of one instance (small; kept inline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorListState {
    pub name: String,
    pub mode: RedistributionMode,
    pub elements: Vec<Vec<u8>>,
}

/// One file of a native snapshot, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeFileRef {
    /// The file's name in the backend's directory (`000012.sst`, `CURRENT`).
    pub name: String,
    pub file: FileRef,
    /// Under `<job>/shared/`, possibly referenced by other checkpoints too;
    /// otherwise under this checkpoint's directory and deleted with it.
    pub shared: bool,
    /// The checkpoint whose upload wrote the file, or 0 if this checkpoint only
    /// references a file an earlier checkpoint wrote.
    #[serde(default)]
    pub uploaded_by: CheckpointId,
}

/// Keyed state of one operator instance in the backend's own files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeStateHandle {
    /// The backend that wrote the files (`rocksdb`); only it can read them.
    pub backend: String,
    pub key_group_start: KeyGroup,
    pub key_group_end: KeyGroup,
    pub states: Vec<StateSignature>,
    pub files: Vec<NativeFileRef>,
}

/// Everything one operator instance snapshotted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskSnapshot {
    pub subtask: u32,
    pub keyed: Option<KeyedStateHandle>,
    /// Keyed state as native files (instead of `keyed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeStateHandle>,
    pub lists: Vec<OperatorListState>,
}

/// Every instance of one operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    pub uid: String,
    pub name: String,
    pub parallelism: u32,
    pub subtasks: Vec<SubtaskSnapshot>,
}

/// The content of `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    pub job_id: String,
    pub checkpoint_id: CheckpointId,
    pub kind: SnapshotKind,
    pub created_unix_ms: u64,
    pub max_parallelism: u32,
    pub operators: Vec<OperatorSnapshot>,
}

impl CheckpointMetadata {
    /// Sealed bytes of the metadata (JSON payload).
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| CheckpointError::Invalid(e.to_string()))?;
        Ok(seal(METADATA_MAGIC, METADATA_VERSION, &json))
    }

    /// Reads metadata, refusing damaged files, unknown versions and a
    /// structure that does not hold together
    /// ([`crate::validate::check_metadata`]).
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() as u64 > METADATA_BYTES_MAX {
            return Err(CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "{} bytes, more than the limit of {METADATA_BYTES_MAX} for metadata",
                    bytes.len()
                ),
            });
        }
        let (_, json) = unseal(METADATA_MAGIC, METADATA_VERSION, path, bytes)?;
        let metadata: Self =
            serde_json::from_slice(json).map_err(|e| CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        crate::validate::check_metadata(path, &metadata)?;
        Ok(metadata)
    }

    /// Total bytes of the files this checkpoint references: its full size,
    /// including shared files earlier checkpoints uploaded (each file once,
    /// however many instances reference it).
    pub fn state_bytes(&self) -> u64 {
        let subtasks = self.operators.iter().flat_map(|o| &o.subtasks);
        let keyed: u64 = subtasks
            .clone()
            .filter_map(|s| s.keyed.as_ref())
            .map(|k| k.file.size)
            .sum();
        let mut private = 0;
        let mut shared = BTreeMap::new();
        for native in subtasks.filter_map(|s| s.native.as_ref()) {
            for file in &native.files {
                if file.shared {
                    shared.insert(file.file.path.as_str(), file.file.size);
                } else {
                    private += file.file.size;
                }
            }
        }
        keyed + private + shared.values().sum::<u64>()
    }

    /// Every native file this checkpoint references, of every instance.
    pub fn native_files(&self) -> impl Iterator<Item = &NativeFileRef> {
        self.operators
            .iter()
            .flat_map(|o| &o.subtasks)
            .filter_map(|s| s.native.as_ref())
            .flat_map(|n| &n.files)
    }

    /// Paths of the shared files this checkpoint references (a path appears
    /// once per referencing instance).
    pub fn shared_paths(&self) -> impl Iterator<Item = &str> {
        self.native_files()
            .filter(|f| f.shared)
            .map(|f| f.file.path.as_str())
    }

    pub fn operator(&self, uid: &str) -> Option<&OperatorSnapshot> {
        self.operators.iter().find(|o| o.uid == uid)
    }
}
