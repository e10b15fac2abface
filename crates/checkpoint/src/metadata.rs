//! Checkpoint metadata: the one file that says what a checkpoint holds. It is
//! written last (atomically, create-if-absent); a checkpoint without it does not
//! exist.
//!
//! The key type of a keyed file ([`KeyedStateHandle::key_type`]) was added the
//! same way: optional, defaulting to empty (unknown).
//!
//! Version 2 changed the meaning of the type names (`key_type`, the `types` of
//! native states) from `std::any::type_name` strings to declared names; the
//! JSON structure is the same. Version 1 is still read ([`METADATA_VERSION`]).
//!
//! Version 3 adds channel state ([`ChannelStateHandle`], the in-flight records
//! of an unaligned checkpoint, docs/savepoint-format.md section 10). Metadata
//! without it is still written as version 2, byte for byte; a file sealed
//! below 3 that carries `channels` is refused.
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
///
/// Version 2 records declared type names ([`flowstate_state::StateType`]) in
/// `key_type` and in the `types` of native states; version 1 recorded
/// `std::any::type_name` strings. Both read: a version-1 file's names are
/// turned into legacy names ([`flowstate_state::state_type::legacy`]) as it
/// is decoded, so that everything after the decoder sees version-2 spelling.
///
/// Version 3 adds channel state ([`SubtaskSnapshot::channels`], the in-flight
/// records of an unaligned checkpoint). It is written only when some instance
/// has channel state; everything else is written as version 2, byte for byte
/// ([`METADATA_VERSION_WITHOUT_CHANNELS`]). A version-2 reader would ignore
/// the member and restore without those records; the version makes it refuse.
pub const METADATA_VERSION: u32 = 3;

/// The version of metadata without channel state (every savepoint and every
/// aligned checkpoint).
pub const METADATA_VERSION_WITHOUT_CHANNELS: u32 = 2;

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
    /// The declared name of the key type ([`flowstate_state::StateType`]),
    /// for offline tools that decode keys without the job's types (a legacy
    /// name when read from version-1 metadata). Empty (and omitted) in
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
    /// The in-flight records of an unaligned checkpoint that the instance's
    /// task took out of its input channels after its snapshot and before the
    /// barrier (on the task's head operator; checkpoints only). Version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelStateHandle>,
}

/// How the records of an input edge were distributed over its consumers,
/// which decides how channel state is dealt out on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgePartitioning {
    /// By key group: sections are per key group and go to the instance
    /// owning it.
    Hash,
    /// Round robin: one section per edge, old instance `c` goes to new
    /// instance `c % q`.
    Rebalance,
}

/// Where one section of a channel state file lies: the records of one key
/// group (hash edge) or of the whole edge (rebalance) as framed batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSection {
    /// Hash edges: the key group of every record in the section; absent for
    /// rebalance edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_group: Option<KeyGroup>,
    pub offset: u64,
    pub length: u64,
    /// Framed batches in the section (at least 1).
    pub batches: u64,
    /// Records in all its batches (at least `batches`).
    pub records: u64,
}

/// The channel state of one input edge of a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInputState {
    /// The edge's index among the head node's inputs (`ChannelId::edge`).
    pub edge: u32,
    /// The producing node's uid.
    pub from_uid: String,
    pub partitioning: EdgePartitioning,
    /// `std::any::type_name` of the record type.
    pub record_type: String,
    pub sections: Vec<ChannelSection>,
}

/// The channel state file of one task instance and its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStateHandle {
    pub file: FileRef,
    /// The instance's key-group range `[start, end)` when it recorded.
    pub key_group_start: KeyGroup,
    pub key_group_end: KeyGroup,
    pub inputs: Vec<ChannelInputState>,
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
    /// The job that wrote the snapshot: its name and parameters. Absent
    /// (and omitted) in snapshots written before it was recorded: no
    /// parameters recorded, nothing to compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::job::JobSection>,
}

impl CheckpointMetadata {
    /// Sealed bytes of the metadata (JSON payload).
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| CheckpointError::Invalid(e.to_string()))?;
        let version = if self.has_channel_state() {
            METADATA_VERSION
        } else {
            METADATA_VERSION_WITHOUT_CHANNELS
        };
        Ok(seal(METADATA_MAGIC, version, &json))
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
        let (version, json) = unseal(METADATA_MAGIC, METADATA_VERSION, path, bytes)?;
        let mut metadata: Self =
            serde_json::from_slice(json).map_err(|e| CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if version < METADATA_VERSION && metadata.has_channel_state() {
            let (uid, subtask) = metadata
                .operators
                .iter()
                .flat_map(|o| o.subtasks.iter().map(move |s| (o, s)))
                .find(|(_, s)| s.channels.is_some())
                .map_or((String::new(), 0), |(o, s)| (o.uid.clone(), s.subtask));
            return Err(CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "operator '{uid}': subtask {subtask}: channels: channel state in version-{version} \
                     metadata (only version {METADATA_VERSION} records it)"
                ),
            });
        }
        crate::validate::check_metadata(path, &metadata)?;
        if version == 1 {
            metadata.upgrade_v1_type_names();
        }
        Ok(metadata)
    }

    /// The reader of version 1: its type names are `std::any::type_name`
    /// strings, which become legacy names (they match only a declaration with
    /// that Rust type name, as version 1 checked).
    fn upgrade_v1_type_names(&mut self) {
        use flowstate_state::state_type::legacy;
        for subtask in self.operators.iter_mut().flat_map(|o| &mut o.subtasks) {
            if let Some(keyed) = &mut subtask.keyed
                && !keyed.key_type.is_empty()
            {
                keyed.key_type = legacy(&keyed.key_type);
            }
            if let Some(native) = &mut subtask.native {
                for state in &mut native.states {
                    state.types = legacy(&state.types);
                }
            }
        }
    }

    /// Whether any instance recorded channel state (the metadata is then
    /// written as version 3).
    pub fn has_channel_state(&self) -> bool {
        self.operators
            .iter()
            .flat_map(|o| &o.subtasks)
            .any(|s| s.channels.is_some())
    }

    /// The full size of this checkpoint's state: the files it references,
    /// including shared files earlier checkpoints uploaded (each file once,
    /// however many instances reference it), plus the operator list state it
    /// holds inline (counted as the upload threads count it in a task's
    /// acknowledged bytes, so that a checkpoint's full size is never smaller
    /// than what it wrote).
    pub fn state_bytes(&self) -> u64 {
        let subtasks = self.operators.iter().flat_map(|o| &o.subtasks);
        let lists: u64 = subtasks
            .clone()
            .flat_map(|s| &s.lists)
            .flat_map(|l| &l.elements)
            .map(|e| e.len() as u64)
            .sum();
        let keyed: u64 = subtasks
            .clone()
            .filter_map(|s| s.keyed.as_ref())
            .map(|k| k.file.size)
            .sum();
        let channels: u64 = subtasks
            .clone()
            .filter_map(|s| s.channels.as_ref())
            .map(|c| c.file.size)
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
        keyed + channels + lists + private + shared.values().sum::<u64>()
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

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_state::StateKind;

    fn signature(name: &str, types: &str) -> StateSignature {
        StateSignature {
            name: name.into(),
            kind: StateKind::Value,
            types: types.into(),
            rust_types: "",
        }
    }

    /// A savepoint of one keyed instance (key type `String`) and one
    /// checkpointed RocksDB instance with a `(u64, u64)` value state.
    fn metadata(key_type: &str, native_types: &str) -> CheckpointMetadata {
        CheckpointMetadata {
            job_id: "job-1".into(),
            checkpoint_id: 7,
            kind: SnapshotKind::Checkpoint,
            created_unix_ms: 1,
            max_parallelism: 2,
            operators: vec![OperatorSnapshot {
                uid: "count".into(),
                name: "Count".into(),
                parallelism: 2,
                subtasks: vec![
                    SubtaskSnapshot {
                        subtask: 0,
                        keyed: Some(KeyedStateHandle {
                            file: FileRef {
                                path: "job-1/chk-7/count-0.keyed".into(),
                                size: 20,
                                crc32c: 9,
                            },
                            key_group_start: 0,
                            key_group_end: 1,
                            groups: vec![KeyGroupEntry {
                                key_group: 0,
                                offset: 8,
                                length: 8,
                                entries: 0,
                            }],
                            key_type: key_type.into(),
                        }),
                        native: None,
                        lists: Vec::new(),
                        channels: None,
                    },
                    SubtaskSnapshot {
                        subtask: 1,
                        keyed: None,
                        native: Some(NativeStateHandle {
                            backend: "rocksdb".into(),
                            key_group_start: 1,
                            key_group_end: 2,
                            states: vec![signature("s", native_types)],
                            files: Vec::new(),
                        }),
                        lists: Vec::new(),
                        channels: None,
                    },
                ],
            }],
            job: None,
        }
    }

    /// The JSON payload of [`metadata`] (pretty-printed, as written).
    fn json(key_type: &str, native_types: &str) -> String {
        format!(
            r#"{{
  "job_id": "job-1",
  "checkpoint_id": 7,
  "kind": "checkpoint",
  "created_unix_ms": 1,
  "max_parallelism": 2,
  "operators": [
    {{
      "uid": "count",
      "name": "Count",
      "parallelism": 2,
      "subtasks": [
        {{
          "subtask": 0,
          "keyed": {{
            "file": {{
              "path": "job-1/chk-7/count-0.keyed",
              "size": 20,
              "crc32c": 9
            }},
            "key_group_start": 0,
            "key_group_end": 1,
            "groups": [
              {{
                "key_group": 0,
                "offset": 8,
                "length": 8,
                "entries": 0
              }}
            ],
            "key_type": "{key_type}"
          }},
          "lists": []
        }},
        {{
          "subtask": 1,
          "keyed": null,
          "native": {{
            "backend": "rocksdb",
            "key_group_start": 1,
            "key_group_end": 2,
            "states": [
              {{
                "name": "s",
                "kind": "Value",
                "types": "{native_types}"
              }}
            ],
            "files": []
          }},
          "lists": []
        }}
      ]
    }}
  ]
}}"#
        )
    }

    #[test]
    fn version_2_records_declared_names() {
        let encoded = metadata("string", "tuple<u64,u64>").encode().unwrap();
        // `FSMD`, version 2, the JSON, its CRC-32C.
        assert_eq!(&encoded[..8], b"FSMD\x02\x00\x00\x00");
        let payload = json("string", "tuple<u64,u64>");
        assert_eq!(
            std::str::from_utf8(&encoded[8..encoded.len() - 4]).unwrap(),
            payload
        );
        let crc = crc32c::crc32c(&encoded[..encoded.len() - 4]);
        assert_eq!(encoded[encoded.len() - 4..], crc.to_le_bytes());
        assert_eq!(
            CheckpointMetadata::decode("m", &encoded).unwrap(),
            metadata("string", "tuple<u64,u64>")
        );
    }

    #[test]
    fn version_1_names_read_as_legacy_names() {
        let v1 = seal(
            METADATA_MAGIC,
            1,
            json("alloc::string::String", "(u64, u64)").as_bytes(),
        );
        let decoded = CheckpointMetadata::decode("m", &v1).unwrap();
        assert_eq!(
            decoded,
            metadata("~rust:alloc::string::String", "~rust:(u64, u64)")
        );
        // Encoded again, it is version 2 and keeps the legacy names.
        let again = CheckpointMetadata::decode("m", &decoded.encode().unwrap()).unwrap();
        assert_eq!(again, decoded);
        // An unknown key type stays unknown.
        let v1 = seal(
            METADATA_MAGIC,
            1,
            json("x", "u64")
                .replace(",\n            \"key_type\": \"x\"", "")
                .as_bytes(),
        );
        let decoded = CheckpointMetadata::decode("m", &v1).unwrap();
        let keyed = decoded.operators[0].subtasks[0].keyed.as_ref().unwrap();
        assert_eq!(keyed.key_type, "");
        // Version 4 is not read.
        let v4 = seal(METADATA_MAGIC, 4, json("u64", "u64").as_bytes());
        assert!(matches!(
            CheckpointMetadata::decode("m", &v4),
            Err(CheckpointError::UnsupportedVersion {
                found: 4,
                supported: 3,
                ..
            })
        ));
    }

    #[test]
    fn the_job_section_follows_the_operators_and_is_read_back() {
        let mut with_job = metadata("u64", "u64");
        with_job.job = Some(crate::job::JobSection::new(
            "keyed-count",
            crate::job::JobParameters::new()
                .with("records", 2000)
                .and_then(|p| p.with_changeable("rate", 10))
                .unwrap(),
        ));
        let encoded = with_job.encode().unwrap();
        let payload = std::str::from_utf8(&encoded[8..encoded.len() - 4]).unwrap();
        let expected = json("u64", "u64");
        let expected = format!(
            "{},\n  \"job\": {{\n    \"version\": 1,\n    \"name\": \"keyed-count\",\n    \"parameters\": [\n      {{\n        \"name\": \"records\",\n        \"value\": \"2000\"\n      }},\n      {{\n        \"name\": \"rate\",\n        \"value\": \"10\",\n        \"changeable\": true\n      }}\n    ]\n  }}\n}}",
            expected.strip_suffix("\n}").unwrap()
        );
        assert_eq!(payload, expected);
        assert_eq!(CheckpointMetadata::decode("m", &encoded).unwrap(), with_job);
        // Without the section (every snapshot written before it): no job.
        let without = CheckpointMetadata::decode("m", &metadata("u64", "u64").encode().unwrap());
        assert_eq!(without.unwrap().job, None);
    }

    #[test]
    fn an_unknown_or_damaged_job_section_is_refused() {
        let base = json("u64", "u64");
        let base = base.strip_suffix("\n}").unwrap();
        let with = |section: &str| {
            seal(
                METADATA_MAGIC,
                2,
                format!("{base},\n  \"job\": {section}\n}}").as_bytes(),
            )
        };
        let newer = with(r#"{"version": 2, "name": "j", "parameters": []}"#);
        let err = CheckpointMetadata::decode("m", &newer).unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::UnsupportedVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
        let duplicate = with(
            r#"{"version": 1, "name": "j", "parameters": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}"#,
        );
        let err = CheckpointMetadata::decode("m", &duplicate).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Corrupt { reason, .. } if reason.contains("'a' is given twice")),
            "{err}"
        );
        let bad_value =
            with(r#"{"version": 1, "name": "j", "parameters": [{"name": "a", "value": 1}]}"#);
        assert!(matches!(
            CheckpointMetadata::decode("m", &bad_value),
            Err(CheckpointError::Corrupt { .. })
        ));
    }
}
