//! Checkpoint metadata: the one file that says what a checkpoint holds. It is
//! written last (atomically, create-if-absent); a checkpoint without it does not
//! exist.

use serde::{Deserialize, Serialize};

use flowstate_state::{KeyGroup, RedistributionMode};

use crate::format::{METADATA_MAGIC, seal, unseal};
use crate::{CheckpointError, CheckpointId};

/// Version of the metadata format this build writes and the newest it reads.
pub const METADATA_VERSION: u32 = 1;

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
}

/// One operator list state of one instance (small; kept inline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorListState {
    pub name: String,
    pub mode: RedistributionMode,
    pub elements: Vec<Vec<u8>>,
}

/// Everything one operator instance snapshotted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskSnapshot {
    pub subtask: u32,
    pub keyed: Option<KeyedStateHandle>,
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

    /// Reads metadata, refusing damaged files and unknown versions.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Self, CheckpointError> {
        let (_, json) = unseal(METADATA_MAGIC, METADATA_VERSION, path, bytes)?;
        serde_json::from_slice(json).map_err(|e| CheckpointError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Total bytes of the files this checkpoint references.
    pub fn state_bytes(&self) -> u64 {
        self.operators
            .iter()
            .flat_map(|o| &o.subtasks)
            .filter_map(|s| s.keyed.as_ref())
            .map(|k| k.file.size)
            .sum()
    }

    pub fn operator(&self, uid: &str) -> Option<&OperatorSnapshot> {
        self.operators.iter().find(|o| o.uid == uid)
    }
}
