//! The library side of the offline state tools (`flowstate inspect`,
//! `flowstate state dump`, `flowstate verify`): reading a checkpoint or
//! savepoint without running a job.
//!
//! Owns: the summary of a snapshot ([`summarize`]), the check of every file it
//! references ([`verify`]) and the streaming dump of one state
//! ([`dump_state`], rendered by [`json_line`] / [`csv_line`]).
//!
//! Must not touch: the runtime, the coordinator, or anything that writes. These
//! functions only read; they take a storage and the path of a `_metadata` in
//! it (see [`flowstate_checkpoint::restore::open_snapshot`] for finding both
//! from a path).
//! The dump holds at most one keyed file's bytes at a time, decodes key group by
//! key group and hands rows to its sink as it goes.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use serde::Serialize;
use thiserror::Error;

use flowstate_checkpoint::channel_file::verify_channel_file;
use flowstate_checkpoint::keyed_file::{read_verified, verify_file};
use flowstate_checkpoint::metadata::{
    ChannelStateHandle, EdgePartitioning, FileRef, KeyGroupEntry, KeyedStateHandle, SnapshotKind,
};
use flowstate_checkpoint::storage::{CheckpointStorage, StorageError};
use flowstate_checkpoint::{CheckpointError, CheckpointId, JobSection};
use flowstate_state::snapshot::{SectionState, read_section};
use flowstate_state::{RedistributionMode, StateKind};

use crate::dynamic::{DynamicError, EntryLayout, Row, Value};

/// Errors of the offline tools.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("no operator with uid '{uid}' in '{path}'; its operators are: {available}")]
    UnknownOperator {
        uid: String,
        path: String,
        available: String,
    },
    #[error("operator '{uid}' has no keyed state named '{state}'; its states are: {available}")]
    UnknownState {
        uid: String,
        state: String,
        available: String,
    },
    #[error(
        "operator '{uid}' keeps its keyed state in {backend}'s native files (an incremental checkpoint), which only {backend} can read: take a savepoint (`flowstate savepoint`) or a full checkpoint, which are in the canonical format, and dump that"
    )]
    NativeState { uid: String, backend: String },
    #[error("state '{state}' of operator '{uid}' in '{path}'")]
    Decode {
        uid: String,
        state: String,
        path: String,
        #[source]
        source: DynamicError,
    },
    #[error(
        "state '{state}' of operator '{uid}' is a {first} in one key group and a {other} in '{path}'"
    )]
    InconsistentState {
        uid: String,
        state: String,
        path: String,
        first: String,
        other: String,
    },
}

fn corrupt(path: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

pub use flowstate_checkpoint::read_metadata;

// ---------------------------------------------------------------------------
// Summary.

/// What a snapshot holds (`flowstate inspect`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    pub metadata_path: String,
    pub job_id: String,
    pub checkpoint_id: CheckpointId,
    pub kind: SnapshotKind,
    pub created_unix_ms: u64,
    pub max_parallelism: u32,
    /// Bytes of every file the snapshot references.
    pub state_bytes: u64,
    pub operators: Vec<OperatorSummary>,
    /// The job name and parameters the snapshot records; `None` (JSON
    /// `null`) for a snapshot written before they were recorded.
    pub job: Option<JobSection>,
}

impl SnapshotSummary {
    /// The summary as pretty-printed JSON (for `flowstate inspect --json`).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

/// One operator of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorSummary {
    pub uid: String,
    pub name: String,
    pub parallelism: u32,
    /// Keyed states, by name, over all instances.
    pub states: Vec<StateSummary>,
    pub subtasks: Vec<SubtaskSummary>,
}

/// One keyed state of an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateSummary {
    pub name: String,
    pub kind: StateKind,
    /// The recorded Rust type names: `V` (value, list, reducing), `(UK, UV)`
    /// (map), `(I, Acc, O)` (aggregating).
    pub types: String,
    /// The key type, empty if the snapshot does not record it.
    pub key_type: String,
}

/// One operator instance of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SubtaskSummary {
    pub subtask: u32,
    /// `[start, end)` of the key groups it owned, if it had keyed state.
    pub key_groups: Option<(u32, u32)>,
    pub keyed_file: Option<KeyedFileSummary>,
    pub native: Option<NativeSummary>,
    pub lists: Vec<ListSummary>,
    /// Its channel state (the in-flight records of an unaligned checkpoint),
    /// from the metadata; absent if it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelStateSummary>,
    /// Why the states of its keyed file could not be read (damaged file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyedFileSummary {
    pub path: String,
    pub size: u64,
    /// Entries (keys) over all states and key groups, from the metadata.
    pub entries: u64,
}

/// The channel state file of one task instance.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStateSummary {
    pub path: String,
    pub size: u64,
    pub inputs: Vec<ChannelInputSummary>,
}

/// The recorded in-flight records of one input edge.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInputSummary {
    pub edge: u32,
    pub from_uid: String,
    pub partitioning: EdgePartitioning,
    pub record_type: String,
    pub sections: usize,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
}

fn channel_summary(handle: &ChannelStateHandle) -> ChannelStateSummary {
    ChannelStateSummary {
        path: handle.file.path.clone(),
        size: handle.file.size,
        inputs: handle
            .inputs
            .iter()
            .map(|input| ChannelInputSummary {
                edge: input.edge,
                from_uid: input.from_uid.clone(),
                partitioning: input.partitioning,
                record_type: input.record_type.clone(),
                sections: input.sections.len(),
                batches: input.sections.iter().map(|s| s.batches).sum(),
                records: input.sections.iter().map(|s| s.records).sum(),
                bytes: input.sections.iter().map(|s| s.length).sum(),
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NativeSummary {
    pub backend: String,
    pub files: usize,
    pub bytes: u64,
    pub shared_files: usize,
}

/// One operator list state of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct ListSummary {
    pub name: String,
    pub mode: RedistributionMode,
    pub elements: usize,
    pub bytes: u64,
}

/// Reads `len` bytes at `offset` of a stored file (the checkpoint crate's
/// reader, which a compatibility check uses too).
fn read_part(
    storage: &dyn CheckpointStorage,
    path: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, CheckpointError> {
    flowstate_checkpoint::keyed_file::read_range(storage, path, offset, len)
}

/// The section of the first key group with entries (else the first one).
fn sample_group(handle: &KeyedStateHandle) -> Option<&KeyGroupEntry> {
    handle
        .groups
        .iter()
        .find(|g| g.entries > 0)
        .or_else(|| handle.groups.first())
}

/// The states of one keyed file, from one of its key-group sections.
fn keyed_file_states(
    storage: &dyn CheckpointStorage,
    handle: &KeyedStateHandle,
) -> Result<Vec<StateSummary>, CheckpointError> {
    let Some(group) = sample_group(handle) else {
        return Ok(Vec::new());
    };
    let bytes = read_part(storage, &handle.file.path, group.offset, group.length)?;
    let states = read_section(group.key_group, &bytes)
        .map_err(|e| corrupt(&handle.file.path, e.to_string()))?;
    Ok(states
        .into_iter()
        .map(|s| StateSummary {
            name: s.name.to_owned(),
            kind: s.kind,
            types: s.types.into_owned(),
            key_type: handle.key_type.clone(),
        })
        .collect())
}

/// Summarises the snapshot whose metadata is at `metadata_path`. Reads the
/// metadata and one key-group section of each keyed file (for the state names
/// and types); does not verify checksums (see [`verify`]).
pub fn summarize(
    storage: &dyn CheckpointStorage,
    metadata_path: &str,
) -> Result<SnapshotSummary, CheckpointError> {
    let metadata = read_metadata(storage, metadata_path)?;
    let mut operators = Vec::with_capacity(metadata.operators.len());
    for operator in &metadata.operators {
        let mut states: Vec<StateSummary> = Vec::new();
        let mut add_state = |state: StateSummary| {
            if !states.contains(&state) {
                states.push(state);
            }
        };
        let mut subtasks = Vec::with_capacity(operator.subtasks.len());
        for subtask in &operator.subtasks {
            let mut problem = None;
            let mut key_groups = None;
            let keyed_file = subtask.keyed.as_ref().map(|keyed| {
                key_groups = Some((keyed.key_group_start, keyed.key_group_end));
                match keyed_file_states(storage, keyed) {
                    Ok(found) => found.into_iter().for_each(&mut add_state),
                    Err(e) => problem = Some(e.to_string()),
                }
                KeyedFileSummary {
                    path: keyed.file.path.clone(),
                    size: keyed.file.size,
                    entries: keyed.groups.iter().map(|g| g.entries).sum(),
                }
            });
            let native = subtask.native.as_ref().map(|native| {
                key_groups = Some((native.key_group_start, native.key_group_end));
                for signature in &native.states {
                    add_state(StateSummary {
                        name: signature.name.clone(),
                        kind: signature.kind,
                        types: signature.types.clone(),
                        key_type: String::new(),
                    });
                }
                NativeSummary {
                    backend: native.backend.clone(),
                    files: native.files.len(),
                    bytes: native.files.iter().map(|f| f.file.size).sum(),
                    shared_files: native.files.iter().filter(|f| f.shared).count(),
                }
            });
            let lists = subtask
                .lists
                .iter()
                .map(|list| ListSummary {
                    name: list.name.clone(),
                    mode: list.mode,
                    elements: list.elements.len(),
                    bytes: list.elements.iter().map(|e| e.len() as u64).sum(),
                })
                .collect();
            subtasks.push(SubtaskSummary {
                subtask: subtask.subtask,
                key_groups,
                keyed_file,
                native,
                lists,
                channels: subtask.channels.as_ref().map(channel_summary),
                problem,
            });
        }
        operators.push(OperatorSummary {
            uid: operator.uid.clone(),
            name: operator.name.clone(),
            parallelism: operator.parallelism,
            states,
            subtasks,
        });
    }
    Ok(SnapshotSummary {
        metadata_path: metadata_path.to_owned(),
        job_id: metadata.job_id.clone(),
        checkpoint_id: metadata.checkpoint_id,
        kind: metadata.kind,
        created_unix_ms: metadata.created_unix_ms,
        max_parallelism: metadata.max_parallelism,
        state_bytes: metadata.state_bytes(),
        operators,
        job: metadata.job.clone(),
    })
}

// ---------------------------------------------------------------------------
// Verify.

/// What a file is to the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    Metadata,
    Keyed {
        uid: String,
        subtask: u32,
    },
    Native {
        uid: String,
        subtask: u32,
        name: String,
        shared: bool,
    },
    /// The channel state file of a task instance (unaligned checkpoints).
    Channels {
        uid: String,
        subtask: u32,
    },
}

/// The check of one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    pub path: String,
    pub role: FileRole,
    /// The size the metadata records (the metadata's own size for it).
    pub size: u64,
    /// `None` if the file is sound; else what is wrong with it.
    pub problem: Option<String>,
}

/// The outcome of [`verify`]: every file the snapshot references, checked.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub files: Vec<FileCheck>,
}

impl VerifyReport {
    pub fn damaged(&self) -> impl Iterator<Item = &FileCheck> {
        self.files.iter().filter(|f| f.problem.is_some())
    }

    pub fn is_ok(&self) -> bool {
        self.damaged().next().is_none()
    }
}

/// Checks a keyed file's bytes: size, seal and checksum against the metadata,
/// then its key-group index (every section inside the file, in order, parsing
/// as a section, with the recorded entry count).
fn check_keyed(handle: &KeyedStateHandle, bytes: &[u8]) -> Result<(), CheckpointError> {
    verify_file(&handle.file, bytes)?;
    let path = handle.file.path.as_str();
    let payload_end = bytes.len().saturating_sub(4) as u64;
    let mut expected_start = 8u64;
    let mut expected_group = handle.key_group_start;
    for group in &handle.groups {
        if group.key_group != expected_group {
            return Err(corrupt(
                path,
                format!(
                    "the index lists key group {} where {expected_group} was expected",
                    group.key_group
                ),
            ));
        }
        expected_group += 1;
        let end = group.offset.checked_add(group.length);
        if group.offset != expected_start || end.is_none_or(|e| e > payload_end) {
            return Err(corrupt(
                path,
                format!(
                    "key group {} lies outside its place in the file",
                    group.key_group
                ),
            ));
        }
        expected_start = end.unwrap_or(payload_end);
        let section = &bytes[group.offset as usize..expected_start as usize];
        let states =
            read_section(group.key_group, section).map_err(|e| corrupt(path, e.to_string()))?;
        let entries: Option<u64> = states.iter().map(SectionState::entries).sum();
        if entries != Some(group.entries) {
            return Err(corrupt(
                path,
                format!(
                    "key group {} holds {} entries, the metadata records {}",
                    group.key_group,
                    entries.map_or("no readable count of".to_owned(), |e| e.to_string()),
                    group.entries
                ),
            ));
        }
    }
    if expected_group != handle.key_group_end || expected_start != payload_end {
        return Err(corrupt(
            path,
            "the key-group index does not cover the file's range".to_owned(),
        ));
    }
    Ok(())
}

/// Size and CRC-32C of a native file, streamed from local storage in 1 MiB
/// chunks (the whole object otherwise).
fn check_native(storage: &dyn CheckpointStorage, file: &FileRef) -> Result<(), CheckpointError> {
    let (size, crc) = match storage.local_path(&file.path) {
        Some(local) => {
            let stream = || -> std::io::Result<(u64, u32)> {
                let mut reader = std::fs::File::open(&local)?;
                let mut buffer = vec![0u8; 1 << 20];
                let (mut size, mut crc) = (0u64, 0u32);
                loop {
                    let n = reader.read(&mut buffer)?;
                    if n == 0 {
                        return Ok((size, crc));
                    }
                    size += n as u64;
                    crc = crc32c::crc32c_append(crc, &buffer[..n]);
                }
            };
            match stream() {
                Ok(found) => found,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(corrupt(&file.path, "missing"));
                }
                Err(e) => return Err(corrupt(&file.path, format!("cannot read: {e}"))),
            }
        }
        None => {
            let bytes = storage.get(&file.path)?;
            (bytes.len() as u64, crc32c::crc32c(&bytes))
        }
    };
    if size != file.size {
        return Err(corrupt(
            &file.path,
            format!(
                "{size} bytes, the snapshot recorded {} (truncated?)",
                file.size
            ),
        ));
    }
    if crc != file.crc32c {
        return Err(corrupt(
            &file.path,
            format!(
                "checksum {crc:08x}, the snapshot recorded {:08x} (modified?)",
                file.crc32c
            ),
        ));
    }
    Ok(())
}

/// The reason to report for a failed check of `path`.
fn problem_of(path: &str, error: CheckpointError) -> String {
    match error {
        CheckpointError::Corrupt { path: p, reason } if p == path => reason,
        CheckpointError::Storage(StorageError::NotFound { .. }) => "missing".to_owned(),
        other => other.to_string(),
    }
}

/// Checks every file the snapshot references: the metadata (an error if it
/// is damaged: nothing else can be checked then), every keyed file (size,
/// seal, checksum, key-group index, each section's structure), every channel
/// state file (size, seal, checksum, index, every framed batch; in bounded
/// memory) and every
/// native file (size and CRC-32C; a shared file once). Keyed files are read
/// one at a time.
pub fn verify(
    storage: &dyn CheckpointStorage,
    metadata_path: &str,
) -> Result<VerifyReport, CheckpointError> {
    let metadata = read_metadata(storage, metadata_path)?;
    let mut files = vec![FileCheck {
        path: metadata_path.to_owned(),
        role: FileRole::Metadata,
        size: storage.size(metadata_path)?.unwrap_or(0),
        problem: None,
    }];
    let mut seen = HashSet::new();
    for operator in &metadata.operators {
        for subtask in &operator.subtasks {
            if let Some(handle) = &subtask.keyed {
                let path = handle.file.path.as_str();
                let problem = read_verified(storage, &handle.file)
                    .and_then(|bytes| check_keyed(handle, &bytes))
                    .err()
                    .map(|e| problem_of(path, e));
                files.push(FileCheck {
                    path: path.to_owned(),
                    role: FileRole::Keyed {
                        uid: operator.uid.clone(),
                        subtask: subtask.subtask,
                    },
                    size: handle.file.size,
                    problem,
                });
            }
            if let Some(handle) = &subtask.channels {
                let path = handle.file.path.as_str();
                let problem = verify_channel_file(storage, handle)
                    .err()
                    .map(|e| problem_of(path, e));
                files.push(FileCheck {
                    path: path.to_owned(),
                    role: FileRole::Channels {
                        uid: operator.uid.clone(),
                        subtask: subtask.subtask,
                    },
                    size: handle.file.size,
                    problem,
                });
            }
            for native in subtask.native.iter().flat_map(|n| &n.files) {
                if !seen.insert(native.file.path.clone()) {
                    continue;
                }
                let problem = check_native(storage, &native.file)
                    .err()
                    .map(|e| problem_of(&native.file.path, e));
                files.push(FileCheck {
                    path: native.file.path.clone(),
                    role: FileRole::Native {
                        uid: operator.uid.clone(),
                        subtask: subtask.subtask,
                        name: native.name.clone(),
                        shared: native.shared,
                    },
                    size: native.file.size,
                    problem,
                });
            }
        }
    }
    Ok(VerifyReport { files })
}

// ---------------------------------------------------------------------------
// Dump.

/// Where [`dump_state`] sends what it decodes.
pub trait DumpSink {
    type Error: From<InspectError>;
    /// Called once, before the first row, with the state's layout (its
    /// columns, types, kind).
    fn begin(&mut self, layout: &EntryLayout) -> Result<(), Self::Error>;
    /// Called per row, in subtask, key-group and file order.
    fn row(&mut self, row: &Row<'_>) -> Result<(), Self::Error>;
}

/// What a dump read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    pub files: u64,
    pub key_groups: u64,
    /// Keys (entries) of the state.
    pub entries: u64,
    pub rows: u64,
}

/// Available names for an error message.
fn listing<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("'{n}'")).collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

/// Streams state `state` of operator `uid` to `sink`: subtask by subtask, one
/// keyed file at a time (verified before use), key group by key group.
/// Native snapshots cannot be dumped ([`InspectError::NativeState`]).
pub fn dump_state<S: DumpSink>(
    storage: &dyn CheckpointStorage,
    metadata_path: &str,
    uid: &str,
    state: &str,
    sink: &mut S,
) -> Result<DumpStats, S::Error> {
    let metadata = read_metadata(storage, metadata_path).map_err(InspectError::from)?;
    let Some(operator) = metadata.operator(uid) else {
        return Err(InspectError::UnknownOperator {
            uid: uid.to_owned(),
            path: metadata_path.to_owned(),
            available: listing(metadata.operators.iter().map(|o| o.uid.as_str())),
        }
        .into());
    };
    if let Some(native) = operator.subtasks.iter().find_map(|s| s.native.as_ref()) {
        return Err(InspectError::NativeState {
            uid: uid.to_owned(),
            backend: native.backend.clone(),
        }
        .into());
    }
    let mut subtasks: Vec<_> = operator.subtasks.iter().collect();
    subtasks.sort_by_key(|s| s.subtask);
    let mut stats = DumpStats::default();
    let mut layout: Option<(EntryLayout, String)> = None;
    // States seen, for the message if the wanted one is not among them.
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for handle in subtasks.iter().filter_map(|s| s.keyed.as_ref()) {
        let path = handle.file.path.as_str();
        let bytes = read_verified(storage, &handle.file).map_err(InspectError::from)?;
        stats.files += 1;
        for group in &handle.groups {
            let start = usize::try_from(group.offset).ok();
            let end = start.and_then(|s| s.checked_add(usize::try_from(group.length).ok()?));
            let section = match (start, end) {
                (Some(start), Some(end)) if end <= bytes.len().saturating_sub(4) => {
                    &bytes[start..end]
                }
                _ => {
                    return Err(InspectError::from(corrupt(
                        path,
                        format!("key group {} lies outside the file", group.key_group),
                    ))
                    .into());
                }
            };
            let states = read_section(group.key_group, section)
                .map_err(|e| InspectError::from(corrupt(path, e.to_string())))?;
            let Some(found) = states.iter().find(|s| s.name == state) else {
                for s in &states {
                    seen.insert(s.name.to_owned(), ());
                }
                continue;
            };
            let signature = format!("{} state of {}", found.kind, found.types);
            let decode_error = |source| InspectError::Decode {
                uid: uid.to_owned(),
                state: state.to_owned(),
                path: path.to_owned(),
                source,
            };
            match &layout {
                Some((_, first)) if *first != signature => {
                    return Err(InspectError::InconsistentState {
                        uid: uid.to_owned(),
                        state: state.to_owned(),
                        path: path.to_owned(),
                        first: first.clone(),
                        other: signature,
                    }
                    .into());
                }
                Some(_) => {}
                None => {
                    let new = EntryLayout::new(found.kind, &handle.key_type, &found.types)
                        .map_err(decode_error)?;
                    sink.begin(&new)?;
                    layout = Some((new, signature));
                }
            }
            let Some((current, _)) = &layout else {
                continue;
            };
            stats.key_groups += 1;
            let mut rows = 0u64;
            stats.entries += current
                .for_each_row(found.payload, |row| {
                    rows += 1;
                    sink.row(&row).map_err(RowError::Sink)
                })
                .map_err(|e| match e {
                    RowError::Sink(e) => e,
                    RowError::Decode(d) => S::Error::from(decode_error(d)),
                })?;
            stats.rows += rows;
        }
    }
    if layout.is_none() {
        return Err(InspectError::UnknownState {
            uid: uid.to_owned(),
            state: state.to_owned(),
            available: listing(seen.keys().map(String::as_str)),
        }
        .into());
    }
    Ok(stats)
}

/// A row callback's error: the sink's own, or the decoder's.
enum RowError<E> {
    Sink(E),
    Decode(DynamicError),
}

impl<E> From<DynamicError> for RowError<E> {
    fn from(e: DynamicError) -> Self {
        RowError::Decode(e)
    }
}

// ---------------------------------------------------------------------------
// Rendering rows.

/// A row as one JSON object (no newline): `{"key":..,"value":..}`, with
/// `"index"` (list state, the element's position) or `"user_key"` (map
/// state) between them. Values render as `serde_json` renders the Rust
/// values (tuples as arrays, `None` as null).
pub fn json_line(row: &Row<'_>, out: &mut String) -> Result<(), serde_json::Error> {
    out.push_str("{\"key\":");
    out.push_str(&serde_json::to_string(row.key)?);
    if let Some(index) = row.index {
        out.push_str(&format!(",\"index\":{index}"));
    }
    if let Some(user_key) = &row.user_key {
        out.push_str(",\"user_key\":");
        out.push_str(&serde_json::to_string(user_key)?);
    }
    out.push_str(",\"value\":");
    out.push_str(&serde_json::to_string(&row.value)?);
    out.push('}');
    Ok(())
}

/// One CSV cell, quoted if needed (RFC 4180).
fn push_cell(text: &str, out: &mut String) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

/// A CSV header line (no newline) for `layout` (see [`EntryLayout::columns`]).
pub fn csv_header(layout: &EntryLayout, out: &mut String) {
    for (i, column) in layout.columns().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_cell(column, out);
    }
}

/// A row as one CSV record (no newline), in the columns of [`csv_header`]:
/// tuples flattened, scalars as text (`None` and `()` empty), other values
/// (sequences, maps, `Some` of a tuple) as JSON text.
pub fn csv_line(row: &Row<'_>, out: &mut String) -> Result<(), serde_json::Error> {
    let mut leaves: Vec<&Value> = Vec::new();
    row.key.flatten(&mut leaves);
    let index = row.index.map(Value::U64);
    if let Some(index) = &index {
        leaves.push(index);
    }
    if let Some(user_key) = &row.user_key {
        user_key.flatten(&mut leaves);
    }
    row.value.flatten(&mut leaves);
    for (i, leaf) in leaves.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match leaf.scalar_text() {
            Some(text) => push_cell(&text, out),
            None => push_cell(&serde_json::to_string(leaf)?, out),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_checkpoint::keyed_file::write_keyed_file;
    use flowstate_checkpoint::metadata::{
        CheckpointMetadata, NativeFileRef, NativeStateHandle, OperatorListState, OperatorSnapshot,
        SubtaskSnapshot,
    };
    use flowstate_checkpoint::storage::{SharedStorage, open_storage};
    use flowstate_state::descriptor::StateSignature;
    use flowstate_state::{
        BackendSnapshot, KeyGroupRange, KeyScope, KeyedStateBackend, ListStateDescriptor,
        MapStateDescriptor, SnapshotRequest, ValueStateDescriptor, heap_backend, key_group_of,
    };

    const M: u32 = 8;
    const KEYS: u64 = 200;

    /// Two instances of operator `counter` with a value, a list and a map
    /// state, written as keyed files to `storage`; returns the metadata path.
    fn write_snapshot(storage: &dyn CheckpointStorage) -> String {
        let mut subtasks = Vec::new();
        for (index, (start, end)) in [(0, 4), (4, M)].into_iter().enumerate() {
            let range = KeyGroupRange::new(start, end);
            let mut backend: Box<dyn KeyedStateBackend<u64>> = heap_backend(range, M);
            let value = backend
                .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
                .unwrap();
            let list = backend
                .list_state(&ListStateDescriptor::<String>::new("names"))
                .unwrap();
            let map = backend
                .map_state(&MapStateDescriptor::<String, Option<i32>>::new("tags"))
                .unwrap();
            for key in (0..KEYS).filter(|k| range.contains(key_group_of(k, M))) {
                let mut scope = KeyScope::new(backend.as_mut(), &key, key_group_of(&key, M));
                scope.value(&value).set((key % 7, key * 10)).unwrap();
                if key % 3 == 0 {
                    scope.list(&list).add(format!("n,{key}")).unwrap();
                    scope.list(&list).add("\"q\"".into()).unwrap();
                }
                if key % 5 == 0 {
                    scope.map(&map).put(format!("t{key}"), None).unwrap();
                }
            }
            let request = SnapshotRequest {
                checkpoint_id: 3,
                canonical: true,
            };
            let BackendSnapshot::KeyGroups(snapshot) = backend.snapshot(request).unwrap() else {
                panic!("heap snapshots are canonical")
            };
            let path = format!("job/chk-3/counter-{index}.keyed");
            let handle = write_keyed_file(storage, &path, &snapshot).unwrap();
            subtasks.push(SubtaskSnapshot {
                subtask: index as u32,
                keyed: Some(handle),
                native: None,
                lists: vec![OperatorListState {
                    name: "positions".into(),
                    mode: RedistributionMode::Split,
                    elements: vec![b"abc".to_vec(), b"de".to_vec()],
                }],
                channels: None,
            });
        }
        let metadata = CheckpointMetadata {
            job_id: "job".into(),
            checkpoint_id: 3,
            kind: SnapshotKind::Checkpoint,
            created_unix_ms: 1_700_000_000_000,
            max_parallelism: M,
            operators: vec![
                OperatorSnapshot {
                    uid: "source".into(),
                    name: "Source".into(),
                    parallelism: 2,
                    subtasks: Vec::new(),
                },
                OperatorSnapshot {
                    uid: "counter".into(),
                    name: "Counter".into(),
                    parallelism: 2,
                    subtasks,
                },
            ],
            job: None,
        };
        let path = "job/chk-3/_metadata".to_owned();
        storage.put(&path, metadata.encode().unwrap()).unwrap();
        path
    }

    fn memory(name: &str) -> SharedStorage {
        open_storage(&format!("memory://inspect-{name}")).unwrap()
    }

    /// Collects rows as JSON and CSV lines.
    #[derive(Default)]
    struct Lines {
        header: Option<String>,
        json: Vec<String>,
        csv: Vec<String>,
    }

    impl DumpSink for Lines {
        type Error = InspectError;
        fn begin(&mut self, layout: &EntryLayout) -> Result<(), InspectError> {
            let mut header = String::new();
            csv_header(layout, &mut header);
            self.header = Some(header);
            Ok(())
        }
        fn row(&mut self, row: &Row<'_>) -> Result<(), InspectError> {
            let mut line = String::new();
            json_line(row, &mut line).unwrap();
            self.json.push(line);
            let mut line = String::new();
            csv_line(row, &mut line).unwrap();
            self.csv.push(line);
            Ok(())
        }
    }

    fn dump(storage: &dyn CheckpointStorage, path: &str, state: &str) -> (Lines, DumpStats) {
        let mut lines = Lines::default();
        let stats = dump_state(storage, path, "counter", state, &mut lines).unwrap();
        (lines, stats)
    }

    fn sorted(mut lines: Vec<String>) -> Vec<String> {
        lines.sort();
        lines
    }

    #[test]
    fn dump_renders_every_state_kind() {
        let storage = memory("dump");
        let path = write_snapshot(storage.as_ref());

        let (lines, stats) = dump(storage.as_ref(), &path, "count-sum");
        assert_eq!(lines.header.as_deref(), Some("key,value.0,value.1"));
        let expected_json: Vec<String> = (0..KEYS)
            .map(|k| format!("{{\"key\":{k},\"value\":[{},{}]}}", k % 7, k * 10))
            .collect();
        let expected_csv: Vec<String> = (0..KEYS)
            .map(|k| format!("{k},{},{}", k % 7, k * 10))
            .collect();
        assert_eq!(sorted(lines.json), sorted(expected_json));
        assert_eq!(sorted(lines.csv), sorted(expected_csv));
        assert_eq!(
            stats,
            DumpStats {
                files: 2,
                key_groups: u64::from(M),
                entries: KEYS,
                rows: KEYS
            }
        );

        let (lines, _) = dump(storage.as_ref(), &path, "names");
        assert_eq!(lines.header.as_deref(), Some("key,index,value"));
        let mut expected_json = Vec::new();
        let mut expected_csv = Vec::new();
        for k in (0..KEYS).filter(|k| k % 3 == 0) {
            expected_json.push(format!("{{\"key\":{k},\"index\":0,\"value\":\"n,{k}\"}}"));
            expected_json.push(format!(
                "{{\"key\":{k},\"index\":1,\"value\":\"\\\"q\\\"\"}}"
            ));
            expected_csv.push(format!("{k},0,\"n,{k}\""));
            expected_csv.push(format!("{k},1,\"\"\"q\"\"\""));
        }
        assert_eq!(sorted(lines.json), sorted(expected_json));
        assert_eq!(sorted(lines.csv), sorted(expected_csv));

        let (lines, _) = dump(storage.as_ref(), &path, "tags");
        assert_eq!(lines.header.as_deref(), Some("key,user_key,value"));
        let expected_json: Vec<String> = (0..KEYS)
            .filter(|k| k % 5 == 0)
            .map(|k| format!("{{\"key\":{k},\"user_key\":\"t{k}\",\"value\":null}}"))
            .collect();
        let expected_csv: Vec<String> = (0..KEYS)
            .filter(|k| k % 5 == 0)
            .map(|k| format!("{k},t{k},"))
            .collect();
        assert_eq!(sorted(lines.json), sorted(expected_json));
        assert_eq!(sorted(lines.csv), sorted(expected_csv));
    }

    #[test]
    fn unknown_operators_and_states_list_the_available_ones() {
        let storage = memory("unknown");
        let path = write_snapshot(storage.as_ref());
        let mut lines = Lines::default();
        let err = dump_state(storage.as_ref(), &path, "nope", "x", &mut lines).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no operator with uid 'nope' in 'job/chk-3/_metadata'; its operators are: 'source', 'counter'"
        );
        let err = dump_state(storage.as_ref(), &path, "counter", "x", &mut lines).unwrap_err();
        assert_eq!(
            err.to_string(),
            "operator 'counter' has no keyed state named 'x'; its states are: 'count-sum', 'names', 'tags'"
        );
        let err = dump_state(storage.as_ref(), &path, "source", "x", &mut lines).unwrap_err();
        assert!(err.to_string().ends_with("its states are: (none)"), "{err}");
        assert!(lines.header.is_none() && lines.json.is_empty());
    }

    #[test]
    fn summary_lists_operators_ranges_states_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_storage(dir.path().to_str().unwrap()).unwrap();
        let path = write_snapshot(storage.as_ref());
        let summary = summarize(storage.as_ref(), &path).unwrap();
        assert_eq!(summary.checkpoint_id, 3);
        assert_eq!(summary.max_parallelism, M);
        let counter = &summary.operators[1];
        assert_eq!(counter.uid, "counter");
        let states: Vec<(&str, StateKind, &str, &str)> = counter
            .states
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.kind,
                    s.types.as_str(),
                    s.key_type.as_str(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("count-sum", StateKind::Value, "tuple<u64,u64>", "u64"),
                ("names", StateKind::List, "string", "u64"),
                ("tags", StateKind::Map, "tuple<string,option<i32>>", "u64"),
            ]
        );
        let ranges: Vec<_> = counter.subtasks.iter().map(|s| s.key_groups).collect();
        assert_eq!(ranges, [Some((0, 4)), Some((4, M))]);
        let entries: u64 = counter
            .subtasks
            .iter()
            .map(|s| s.keyed_file.as_ref().unwrap().entries)
            .sum();
        // Value entries for every key, list entries for every third, map for every fifth.
        assert_eq!(entries, KEYS + KEYS.div_ceil(3) + KEYS.div_ceil(5));
        assert_eq!(counter.subtasks[0].lists[0].elements, 2);
        assert_eq!(counter.subtasks[0].lists[0].bytes, 5);
        assert!(counter.subtasks.iter().all(|s| s.problem.is_none()));
    }

    #[test]
    fn verify_names_every_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_storage(dir.path().to_str().unwrap()).unwrap();
        let path = write_snapshot(storage.as_ref());
        let report = verify(storage.as_ref(), &path).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.files.len(), 3);

        // Flip a byte in the middle of one file, truncate the other.
        let first = dir.path().join("job/chk-3/counter-0.keyed");
        let mut bytes = std::fs::read(&first).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&first, bytes).unwrap();
        let second = dir.path().join("job/chk-3/counter-1.keyed");
        let bytes = std::fs::read(&second).unwrap();
        std::fs::write(&second, &bytes[..bytes.len() - 10]).unwrap();
        let report = verify(storage.as_ref(), &path).unwrap();
        let damaged: Vec<(&str, &str)> = report
            .damaged()
            .map(|f| (f.path.as_str(), f.problem.as_deref().unwrap()))
            .collect();
        assert_eq!(damaged.len(), 2, "{damaged:?}");
        assert_eq!(damaged[0].0, "job/chk-3/counter-0.keyed");
        assert!(damaged[0].1.contains("checksum"), "{damaged:?}");
        assert_eq!(damaged[1].0, "job/chk-3/counter-1.keyed");
        assert!(damaged[1].1.contains("truncated"), "{damaged:?}");

        // A dump refuses the damaged file, naming it.
        let mut lines = Lines::default();
        let err = dump_state(storage.as_ref(), &path, "counter", "names", &mut lines).unwrap_err();
        assert!(err.to_string().contains("counter-0.keyed"), "{err}");

        // A missing file.
        std::fs::remove_file(&second).unwrap();
        let report = verify(storage.as_ref(), &path).unwrap();
        assert_eq!(
            report.damaged().nth(1).unwrap().problem.as_deref(),
            Some("missing")
        );
    }

    #[test]
    fn channel_state_is_summarized_and_verified() {
        use flowstate_checkpoint::channel_file::{
            ChannelStateContents, InputContents, SectionContents, frame_batch,
            write_channel_state_file,
        };
        let storage = memory("channels");
        let path = write_snapshot(storage.as_ref());
        let mut metadata = read_metadata(storage.as_ref(), &path).unwrap();
        // Instance 1 of `counter` (key groups 4..M) recorded two batches of
        // key group 5 from `source`.
        let mut framed = Vec::new();
        for records in [&[(7u64, 100u64)][..], &[(7, 101), (7, 102)]] {
            let mut payload = vec![0];
            payload.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for record in records {
                flowstate_state::codec::encode_into(record, &mut payload).unwrap();
            }
            frame_batch(&payload, &mut framed).unwrap();
        }
        let contents = ChannelStateContents {
            key_group_start: 4,
            key_group_end: M,
            inputs: vec![InputContents {
                edge: 0,
                from_uid: "source".into(),
                partitioning: EdgePartitioning::Hash,
                record_type: "(u64, u64)".into(),
                sections: vec![SectionContents {
                    key_group: Some(5),
                    framed,
                }],
            }],
        };
        let channels = "job/chk-3/counter-1.channels";
        let handle = write_channel_state_file(storage.as_ref(), channels, &contents).unwrap();
        metadata.operators[1].subtasks[1].channels = Some(handle);
        storage.put(&path, metadata.encode().unwrap()).unwrap();

        let summary = summarize(storage.as_ref(), &path).unwrap();
        let counter = &summary.operators[1];
        assert!(counter.subtasks[0].channels.is_none());
        let summarized = counter.subtasks[1].channels.as_ref().unwrap();
        assert_eq!(summarized.path, channels);
        assert_eq!(summarized.inputs.len(), 1);
        let input = &summarized.inputs[0];
        assert_eq!(
            (input.sections, input.batches, input.records, input.bytes),
            (1, 2, 3, 2 * 9 + 3 * 16)
        );
        let json = summary.to_json().unwrap();
        assert!(json.contains("\"partitioning\": \"hash\""), "{json}");

        let report = verify(storage.as_ref(), &path).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.files.len(), 4);
        assert!(report.files.iter().any(|f| f.path == channels
            && f.role
                == FileRole::Channels {
                    uid: "counter".into(),
                    subtask: 1
                }));
        // A damaged channel file is reported, naming what is wrong.
        let mut bytes = storage.get(channels).unwrap();
        bytes[13] ^= 1;
        storage.put(channels, bytes).unwrap();
        let report = verify(storage.as_ref(), &path).unwrap();
        let damaged: Vec<_> = report.damaged().collect();
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert_eq!(damaged[0].path, channels);
        assert!(
            damaged[0].problem.as_deref().unwrap().contains("checksum"),
            "{damaged:?}"
        );
    }

    #[test]
    fn a_valid_seal_with_a_lying_index_is_damaged() {
        let storage = memory("index");
        let path = write_snapshot(storage.as_ref());
        let mut metadata = read_metadata(storage.as_ref(), &path).unwrap();
        let keyed = metadata.operators[1].subtasks[0].keyed.as_mut().unwrap();
        keyed.groups[1].entries += 1;
        storage.put(&path, metadata.encode().unwrap()).unwrap();
        let report = verify(storage.as_ref(), &path).unwrap();
        let damaged: Vec<_> = report.damaged().collect();
        assert_eq!(damaged.len(), 1);
        assert!(
            damaged[0].problem.as_deref().unwrap().contains("entries"),
            "{damaged:?}"
        );
    }

    #[test]
    fn metadata_without_key_type_reads_and_dump_says_the_key_type_is_unknown() {
        let storage = memory("old");
        let path = write_snapshot(storage.as_ref());
        let bytes = storage.get(&path).unwrap();
        let (_, json) = flowstate_checkpoint::format::unseal(
            flowstate_checkpoint::format::METADATA_MAGIC,
            flowstate_checkpoint::metadata::METADATA_VERSION,
            &path,
            &bytes,
        )
        .unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(json).unwrap();
        let mut removed = 0;
        for subtask in json["operators"][1]["subtasks"].as_array_mut().unwrap() {
            removed += subtask["keyed"]
                .as_object_mut()
                .unwrap()
                .remove("key_type")
                .is_some() as usize;
        }
        assert_eq!(removed, 2, "the key type is written");
        let old = flowstate_checkpoint::format::seal(
            flowstate_checkpoint::format::METADATA_MAGIC,
            1,
            &serde_json::to_vec(&json).unwrap(),
        );
        storage.put(&path, old).unwrap();
        let summary = summarize(storage.as_ref(), &path).unwrap();
        assert_eq!(summary.operators[1].states[0].key_type, "");
        let mut lines = Lines::default();
        let err =
            dump_state(storage.as_ref(), &path, "counter", "count-sum", &mut lines).unwrap_err();
        assert_eq!(
            format!("{}: {}", err, std::error::Error::source(&err).unwrap()),
            "state 'count-sum' of operator 'counter' in 'job/chk-3/counter-0.keyed': the snapshot does not record the key type (it was written by an older flowstate): keys cannot be decoded"
        );
    }

    #[test]
    fn native_snapshots_are_verified_but_not_dumped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_storage(dir.path().to_str().unwrap()).unwrap();
        let content = vec![7u8; 3 << 20];
        let file = FileRef {
            path: "job/shared/op-0/1-000001.sst".into(),
            size: content.len() as u64,
            crc32c: crc32c::crc32c(&content),
        };
        storage.put(&file.path, content).unwrap();
        let native = NativeStateHandle {
            backend: "rocksdb".into(),
            key_group_start: 0,
            key_group_end: M,
            states: vec![StateSignature {
                name: "count".into(),
                kind: StateKind::Value,
                types: "u64".into(),
                rust_types: "",
            }],
            files: vec![NativeFileRef {
                name: "000001.sst".into(),
                file: file.clone(),
                shared: true,
                uploaded_by: 1,
            }],
        };
        let metadata = CheckpointMetadata {
            job_id: "job".into(),
            checkpoint_id: 1,
            kind: SnapshotKind::Checkpoint,
            created_unix_ms: 1,
            max_parallelism: M,
            operators: vec![OperatorSnapshot {
                uid: "op".into(),
                name: "Op".into(),
                parallelism: 1,
                subtasks: vec![SubtaskSnapshot {
                    subtask: 0,
                    keyed: None,
                    native: Some(native),
                    lists: Vec::new(),
                    channels: None,
                }],
            }],
            job: None,
        };
        let path = "job/chk-1/_metadata";
        storage.put(path, metadata.encode().unwrap()).unwrap();
        assert!(verify(storage.as_ref(), path).unwrap().is_ok());
        let summary = summarize(storage.as_ref(), path).unwrap();
        assert_eq!(summary.operators[0].states[0].name, "count");
        assert_eq!(
            summary.operators[0].subtasks[0]
                .native
                .as_ref()
                .unwrap()
                .bytes,
            3 << 20
        );

        let mut lines = Lines::default();
        let err = dump_state(storage.as_ref(), path, "op", "count", &mut lines).unwrap_err();
        assert!(matches!(err, InspectError::NativeState { .. }), "{err}");
        assert!(err.to_string().contains("savepoint"), "{err}");

        let local = dir.path().join(&file.path);
        let mut bytes = std::fs::read(&local).unwrap();
        bytes[2 << 20] ^= 1;
        std::fs::write(&local, bytes).unwrap();
        let report = verify(storage.as_ref(), path).unwrap();
        let damaged: Vec<_> = report.damaged().collect();
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].path, file.path);
        assert!(damaged[0].problem.as_deref().unwrap().contains("checksum"));
    }
}
