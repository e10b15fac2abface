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
//! it (see [`crate::restore::open_snapshot`] for finding both from a path).
//! The dump holds at most one keyed file's bytes at a time, decodes key group by
//! key group and hands rows to its sink as it goes.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;
use thiserror::Error;

use flowstate_state::dynamic::{DynamicError, EntryLayout, Row, Value};
use flowstate_state::snapshot::{SectionState, read_section};
use flowstate_state::{RedistributionMode, StateKind};

use crate::keyed_file::verify_file;
use crate::metadata::{CheckpointMetadata, FileRef, KeyGroupEntry, KeyedStateHandle, SnapshotKind};
use crate::storage::{CheckpointStorage, StorageError};
use crate::{CheckpointError, CheckpointId};

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

/// Reads and decodes the metadata at `metadata_path`.
pub fn read_metadata(
    storage: &dyn CheckpointStorage,
    metadata_path: &str,
) -> Result<CheckpointMetadata, CheckpointError> {
    let bytes = storage.get(metadata_path)?;
    CheckpointMetadata::decode(metadata_path, &bytes)
}

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

/// Reads `len` bytes at `offset` of a stored file: a seek on local storage,
/// the whole object otherwise.
fn read_part(
    storage: &dyn CheckpointStorage,
    path: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, CheckpointError> {
    let outside = || corrupt(path, format!("bytes {offset}..+{len} lie outside the file"));
    let len_usize = usize::try_from(len).map_err(|_| outside())?;
    if let Some(local) = storage.local_path(path) {
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = std::fs::File::open(&local)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut buffer = Vec::new();
            file.take(len).read_to_end(&mut buffer)?;
            Ok(buffer)
        };
        return match read() {
            Ok(buffer) if buffer.len() == len_usize => Ok(buffer),
            Ok(_) => Err(outside()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(corrupt(path, "missing")),
            Err(e) => Err(corrupt(path, format!("cannot read: {e}"))),
        };
    }
    let bytes = storage.get(path)?;
    let start = usize::try_from(offset).map_err(|_| outside())?;
    let end = start.checked_add(len_usize).ok_or_else(outside)?;
    bytes.get(start..end).map(<[u8]>::to_vec).ok_or_else(outside)
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
    })
}

// ---------------------------------------------------------------------------
// Verify.

/// What a file is to the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    Metadata,
    Keyed { uid: String, subtask: u32 },
    Native { uid: String, subtask: u32, name: String, shared: bool },
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
                format!("key group {} lies outside its place in the file", group.key_group),
            ));
        }
        expected_start = end.unwrap_or(payload_end);
        let section = &bytes[group.offset as usize..expected_start as usize];
        let states = read_section(group.key_group, section).map_err(|e| corrupt(path, e.to_string()))?;
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
            format!("{size} bytes, the snapshot recorded {} (truncated?)", file.size),
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
/// seal, checksum, key-group index, each section's structure) and every
/// native file (size and CRC-32C; a shared file once). Keyed files are read
/// one at a time.
pub fn verify(
    storage: &dyn CheckpointStorage,
    metadata_path: &str,
) -> Result<VerifyReport, CheckpointError> {
    let metadata_bytes = storage.get(metadata_path)?;
    let metadata = CheckpointMetadata::decode(metadata_path, &metadata_bytes)?;
    let mut files = vec![FileCheck {
        path: metadata_path.to_owned(),
        role: FileRole::Metadata,
        size: metadata_bytes.len() as u64,
        problem: None,
    }];
    drop(metadata_bytes);
    let mut seen = HashSet::new();
    for operator in &metadata.operators {
        for subtask in &operator.subtasks {
            if let Some(handle) = &subtask.keyed {
                let path = handle.file.path.as_str();
                let problem = storage
                    .get(path)
                    .map_err(CheckpointError::from)
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
        let bytes = storage
            .get(path)
            .map_err(|e| InspectError::from(CheckpointError::from(e)))?;
        verify_file(&handle.file, &bytes).map_err(InspectError::from)?;
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
                    sink.row(&row)
                        .map_err(RowError::Sink)
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
