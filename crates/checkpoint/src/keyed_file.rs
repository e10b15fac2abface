//! Keyed state files: one per operator instance and checkpoint, the key-group
//! sections one after another, indexed by the handle in the metadata so a
//! restore at another parallelism reads only the key groups it owns.
//!
//! Owns: writing a keyed file from a frozen snapshot ([`write_keyed_file`]),
//! and reading one back ([`verify_keyed_file`], then [`KeyedFileSections`]).
//! Both hold at most one key group's section (plus the storage's bounded
//! part buffer) in memory, so state larger than memory snapshots and
//! restores. The bytes are those of docs/savepoint-format.md, section 4.
//! Must not touch: backends (it hands sections over through
//! [`flowstate_state::SectionSource`]) or the metadata file.

use std::sync::Arc;

use flowstate_state::{
    KeyGroupRange, KeyedStateSnapshot, RestoredKeyedState, SectionFn, SectionSource, StateError,
};

use crate::CheckpointError;
use crate::format::{KEYED_MAGIC, check_streamed_seal, read_verify_chunk, unseal};
use crate::metadata::{FileRef, KeyGroupEntry, KeyedStateHandle};
use crate::storage::{CheckpointStorage, SharedStorage, StorageError};

/// Version of the keyed file format this build writes and the newest it
/// reads. Version 2 records declared type names in its sections; version 1
/// (`std::any::type_name` strings) is still read: its sections go through
/// [`flowstate_state::snapshot::section_from_v1`].
pub const KEYED_FILE_VERSION: u32 = 2;
const HEADER_BYTES: u64 = 8;
const TRAILER_BYTES: u64 = 4;
/// Bytes read at a time while verifying a file.
const VERIFY_CHUNK_BYTES: u64 = 4 << 20;

/// Serialises `snapshot` and writes it to `path`: the asynchronous part of a
/// keyed snapshot. Streams: one key group's section is built, checked and
/// handed to storage ([`CheckpointStorage::put_streaming`]) before the next,
/// so memory holds one section, not the file. The file is published whole
/// at the end, or not at all if anything fails.
pub fn write_keyed_file(
    storage: &dyn CheckpointStorage,
    path: &str,
    snapshot: &KeyedStateSnapshot,
) -> Result<KeyedStateHandle, CheckpointError> {
    let mut writer = storage.put_streaming(path)?;
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    header.extend_from_slice(&KEYED_MAGIC);
    header.extend_from_slice(&KEYED_FILE_VERSION.to_le_bytes());
    let mut crc = crc32c::crc32c(&header);
    writer.write(&header)?;
    let mut offset = HEADER_BYTES;
    let mut groups = Vec::with_capacity(snapshot.range.len());
    let mut section = Vec::new();
    // Each group written once: the snapshot frees what it held of a group as
    // soon as it is written (and a heap table over budget waits for this).
    let sections = snapshot.writer();
    for key_group in snapshot.range.iter() {
        section.clear();
        let entries = sections.take_key_group(key_group, &mut section)?;
        // Pair assertion: every section is one a reader accepts.
        flowstate_state::snapshot::read_section(key_group, &section)?;
        crc = crc32c::crc32c_append(crc, &section);
        writer.write(&section)?;
        groups.push(KeyGroupEntry {
            key_group,
            offset,
            length: section.len() as u64,
            entries,
        });
        offset += section.len() as u64;
        if section.capacity() > (64 << 20) && section.capacity() > 4 * section.len() {
            // One huge key group does not pin its buffer for the rest.
            section = Vec::new();
        }
    }
    writer.write(&crc.to_le_bytes())?;
    writer.finish()?;
    Ok(KeyedStateHandle {
        file: FileRef {
            path: path.to_owned(),
            size: offset + TRAILER_BYTES,
            crc32c: crc,
        },
        key_group_start: snapshot.range.start,
        key_group_end: snapshot.range.end,
        groups,
        key_type: snapshot.key_type.clone(),
    })
}

/// A keyed state file read once and found whole: its size, checksum, format
/// version and index hold. Remembers each section's CRC-32C so that reading
/// a section again ([`VerifiedKeyedFile::read_section`]) checks it before
/// anyone uses it: a file changed since, or a read gone wrong, is an error,
/// never restored.
#[derive(Debug, Clone)]
pub struct VerifiedKeyedFile {
    pub handle: KeyedStateHandle,
    /// The file's format version (1 or 2).
    pub version: u32,
    /// CRC-32C of each section, in the order of `handle.groups`.
    section_crcs: Vec<u32>,
}

/// Checks a keyed file's index against its recorded size: sections in
/// key-group order covering the range, the first at byte 8, each where the
/// previous ended, the last 4 bytes before the end. Nothing in the index is
/// used as a size before this.
fn check_index(handle: &KeyedStateHandle) -> Result<(), String> {
    let range = handle.key_group_end.checked_sub(handle.key_group_start);
    if range != Some(handle.groups.len() as u32) {
        return Err(format!(
            "the index lists {} key groups for the range {}..{}",
            handle.groups.len(),
            handle.key_group_start,
            handle.key_group_end
        ));
    }
    let mut at = HEADER_BYTES;
    for (index, entry) in handle.groups.iter().enumerate() {
        if entry.key_group != handle.key_group_start + index as u32 {
            return Err(format!(
                "the index lists key group {} where {} belongs",
                entry.key_group,
                handle.key_group_start + index as u32
            ));
        }
        if entry.offset != at {
            return Err(format!(
                "key group {} starts at byte {}, the previous one ended at {at}",
                entry.key_group, entry.offset
            ));
        }
        at = at
            .checked_add(entry.length)
            .filter(|&end| end <= handle.file.size.saturating_sub(TRAILER_BYTES))
            .ok_or_else(|| format!("key group {} lies outside the file", entry.key_group))?;
    }
    if at != handle.file.size.saturating_sub(TRAILER_BYTES) {
        return Err(format!(
            "the sections end at byte {at}, the file's trailer starts at {}",
            handle.file.size.saturating_sub(TRAILER_BYTES)
        ));
    }
    Ok(())
}

/// Reads the keyed file `handle` names once, in chunks (bounded memory), and
/// verifies it as [`verify_file`] does a whole file — size in storage,
/// length, magic, checksum, version, the recorded checksum — and its index
/// ([`check_index`]). Returns what a later read of its sections checks
/// against.
pub fn verify_keyed_file(
    storage: &dyn CheckpointStorage,
    handle: &KeyedStateHandle,
) -> Result<VerifiedKeyedFile, CheckpointError> {
    let file = &handle.file;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: file.path.clone(),
        reason,
    };
    check_stored_size(storage, file)?;
    let size = file.size;
    if size < HEADER_BYTES + TRAILER_BYTES {
        return Err(corrupt(format!(
            "only {size} bytes, shorter than any valid file (truncated?)"
        )));
    }
    let index = check_index(handle);
    // Section boundaries, when the index holds.
    let bounds: Vec<(u64, u64)> = match &index {
        Ok(()) => handle
            .groups
            .iter()
            .map(|g| (g.offset, g.offset + g.length))
            .collect(),
        Err(_) => Vec::new(),
    };
    let body_end = size - TRAILER_BYTES;
    let mut whole = 0u32;
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    let mut trailer = Vec::with_capacity(TRAILER_BYTES as usize);
    let mut section_crcs = vec![0u32; bounds.len()];
    let mut section = 0usize;
    let mut at = 0u64;
    while at < size {
        let len = VERIFY_CHUNK_BYTES.min(size - at);
        let chunk = read_verify_chunk(storage, &file.path, at, len, size, corrupt)?;
        let chunk_end = at + len;
        // The body's checksum.
        let body = &chunk[..(body_end.min(chunk_end).saturating_sub(at)) as usize];
        whole = crc32c::crc32c_append(whole, body);
        if at < HEADER_BYTES {
            let n = (HEADER_BYTES - at).min(len) as usize;
            header.extend_from_slice(&chunk[..n]);
        }
        if chunk_end > body_end {
            let from = body_end.saturating_sub(at) as usize;
            trailer.extend_from_slice(&chunk[from..]);
        }
        // Each section's checksum: the sections tile [8, body_end).
        let mut pos = at.max(HEADER_BYTES);
        while section < bounds.len() && pos < chunk_end.min(body_end) {
            let (start, end) = bounds[section];
            let piece_end = end.min(chunk_end);
            let slice = &chunk[(pos - at) as usize..(piece_end - at) as usize];
            section_crcs[section] = crc32c::crc32c_append(section_crcs[section], slice);
            debug_assert!(pos >= start);
            pos = piece_end;
            if piece_end == end {
                section += 1;
            }
        }
        at = chunk_end;
    }
    let version = check_streamed_seal(
        KEYED_MAGIC,
        KEYED_FILE_VERSION,
        file,
        &header,
        &trailer,
        whole,
    )?;
    index.map_err(corrupt)?;
    Ok(VerifiedKeyedFile {
        handle: handle.clone(),
        version,
        section_crcs,
    })
}

impl VerifiedKeyedFile {
    /// The section of `handle.groups[index]`, read from storage and checked
    /// against the checksum the verification saw; a version-1 section comes
    /// back in the version-2 layout (legacy type names).
    pub fn read_section(
        &self,
        storage: &dyn CheckpointStorage,
        index: usize,
    ) -> Result<Vec<u8>, CheckpointError> {
        let path = &self.handle.file.path;
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (Some(entry), Some(&expected)) =
            (self.handle.groups.get(index), self.section_crcs.get(index))
        else {
            return Err(corrupt(format!("no section {index} in the index")));
        };
        let bytes = storage
            .get_range(path, entry.offset, entry.length)
            .map_err(|e| match e {
                StorageError::NotFound { .. } => corrupt("missing".into()),
                other => CheckpointError::Storage(other),
            })?;
        let crc = crc32c::crc32c(&bytes);
        if crc != expected {
            return Err(corrupt(format!(
                "key group {}: checksum {crc:08x}, {expected:08x} when the file was verified (changed since?)",
                entry.key_group
            )));
        }
        if self.version == 1 {
            Ok(flowstate_state::snapshot::section_from_v1(
                entry.key_group,
                &bytes,
            )?)
        } else {
            Ok(bytes)
        }
    }
}

/// The sections of the key groups in `wanted` of a verified keyed file,
/// read one at a time when a backend restores: a
/// [`flowstate_state::SectionSource`].
pub struct KeyedFileSections {
    storage: SharedStorage,
    file: Arc<VerifiedKeyedFile>,
    wanted: KeyGroupRange,
}

impl KeyedFileSections {
    pub fn new(
        storage: SharedStorage,
        file: Arc<VerifiedKeyedFile>,
        wanted: KeyGroupRange,
    ) -> Self {
        Self {
            storage,
            file,
            wanted,
        }
    }
}

impl std::fmt::Debug for KeyedFileSections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedFileSections")
            .field("file", &self.file.handle.file.path)
            .field("wanted", &self.wanted)
            .finish()
    }
}

/// A checkpoint error met while restoring, as the backend reports it.
fn state_error(path: &str, error: CheckpointError) -> StateError {
    match error {
        CheckpointError::Corrupt { .. } | CheckpointError::UnsupportedVersion { .. } => {
            StateError::CorruptSnapshot(error.to_string())
        }
        other => StateError::Backend {
            backend: "checkpoint storage",
            action: format!("read '{path}'"),
            reason: other.to_string(),
        },
    }
}

impl SectionSource for KeyedFileSections {
    fn describe(&self) -> String {
        self.file.handle.file.path.clone()
    }

    fn for_each_section(&self, f: &mut SectionFn<'_>) -> Result<(), StateError> {
        let path = &self.file.handle.file.path;
        for (index, entry) in self.file.handle.groups.iter().enumerate() {
            if !self.wanted.contains(entry.key_group) {
                continue;
            }
            let section = self
                .file
                .read_section(self.storage.as_ref(), index)
                .map_err(|e| state_error(path, e))?;
            f(entry.key_group, &section)?;
        }
        Ok(())
    }
}

/// Reads a keyed state file, verifying size, checksum and index, and returns
/// the sections of the key groups in `wanted`, in memory (tests and tools; a
/// restore streams them through [`KeyedFileSections`]).
pub fn read_keyed_file(
    storage: &dyn CheckpointStorage,
    handle: &KeyedStateHandle,
    wanted: KeyGroupRange,
) -> Result<RestoredKeyedState, CheckpointError> {
    let verified = verify_keyed_file(storage, handle)?;
    let mut groups = Vec::new();
    for (index, entry) in handle.groups.iter().enumerate() {
        if wanted.contains(entry.key_group) {
            groups.push((entry.key_group, verified.read_section(storage, index)?));
        }
    }
    Ok(RestoredKeyedState::from_groups(groups))
}

/// Checks that storage holds `file` with its recorded size (so a file
/// replaced by a larger one is never read whole).
pub(crate) fn check_stored_size(
    storage: &dyn CheckpointStorage,
    file: &FileRef,
) -> Result<(), CheckpointError> {
    match storage.size(&file.path)? {
        Some(size) if size == file.size => Ok(()),
        found => Err(CheckpointError::Corrupt {
            path: file.path.clone(),
            reason: match found {
                None => "missing".to_owned(),
                Some(size) => format!(
                    "{size} bytes, the checkpoint recorded {} (truncated?)",
                    file.size
                ),
            },
        }),
    }
}

/// Reads the file `file` refers to, after checking that storage holds it
/// with the recorded size (so a file replaced by a larger one is never read
/// whole), then verifies it ([`verify_file`]).
pub fn read_verified(
    storage: &dyn CheckpointStorage,
    file: &FileRef,
) -> Result<Vec<u8>, CheckpointError> {
    check_stored_size(storage, file)?;
    let bytes = storage.get(&file.path)?;
    verify_file(file, &bytes)?;
    Ok(bytes)
}

/// Checks a file's bytes against its reference (size, checksum, format).
pub fn verify_file(file: &FileRef, bytes: &[u8]) -> Result<(), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: file.path.clone(),
        reason,
    };
    if bytes.len() as u64 != file.size {
        return Err(corrupt(format!(
            "{} bytes, the checkpoint recorded {} (truncated?)",
            bytes.len(),
            file.size
        )));
    }
    unseal(KEYED_MAGIC, KEYED_FILE_VERSION, &file.path, bytes)?;
    let stored = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap_or([0; 4]));
    if stored != file.crc32c {
        return Err(corrupt(format!(
            "checksum {stored:08x}, the checkpoint recorded {:08x}",
            file.crc32c
        )));
    }
    Ok(())
}

/// The sections of `wanted` key groups from verified file bytes.
pub fn sections(
    handle: &KeyedStateHandle,
    bytes: &[u8],
    wanted: KeyGroupRange,
) -> Result<RestoredKeyedState, CheckpointError> {
    // Verified before (`verify_file`): the seal's version field.
    let version = bytes.get(4..8).map_or(KEYED_FILE_VERSION, |v| {
        u32::from_le_bytes([v[0], v[1], v[2], v[3]])
    });
    let mut groups = Vec::new();
    for entry in handle
        .groups
        .iter()
        .filter(|e| wanted.contains(e.key_group))
    {
        let start = usize::try_from(entry.offset).ok();
        let end = start.and_then(|s| s.checked_add(usize::try_from(entry.length).ok()?));
        match (start, end) {
            (Some(start), Some(end)) if end <= bytes.len().saturating_sub(4) => {
                let section = &bytes[start..end];
                let section = if version == 1 {
                    flowstate_state::snapshot::section_from_v1(entry.key_group, section)?
                } else {
                    section.to_vec()
                };
                groups.push((entry.key_group, section));
            }
            _ => {
                return Err(CheckpointError::Corrupt {
                    path: handle.file.path.clone(),
                    reason: format!("key group {} lies outside the file", entry.key_group),
                });
            }
        }
    }
    Ok(RestoredKeyedState {
        groups,
        native: Vec::new(),
        streams: Vec::new(),
    })
}

/// Reads `len` bytes at `offset` of a stored file: a seek on local storage,
/// the whole object otherwise. Checks nothing but the range (the caller
/// parses what it reads with bounds checks, or verifies the whole file).
pub fn read_range(
    storage: &dyn CheckpointStorage,
    path: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, CheckpointError> {
    use std::io::{Read, Seek, SeekFrom};
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let outside = || corrupt(format!("bytes {offset}..+{len} lie outside the file"));
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(corrupt("missing".into())),
            Err(e) => Err(corrupt(format!("cannot read: {e}"))),
        };
    }
    let bytes = storage.get(path)?;
    let start = usize::try_from(offset).map_err(|_| outside())?;
    let end = start.checked_add(len_usize).ok_or_else(outside)?;
    bytes
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or_else(outside)
}

/// The states a keyed file holds (name, kind, recorded types), read from one
/// of its key-group sections (every section lists the same states): the
/// first with entries, else the first. A version-1 file's type names come
/// back as legacy names. Does not verify the file's checksum (a restore and
/// `verify` do); the section is parsed with every length checked.
pub fn recorded_states(
    storage: &dyn CheckpointStorage,
    handle: &KeyedStateHandle,
) -> Result<Vec<flowstate_state::descriptor::StateSignature>, CheckpointError> {
    let path = &handle.file.path;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.clone(),
        reason,
    };
    let Some(group) = handle
        .groups
        .iter()
        .find(|g| g.entries > 0)
        .or_else(|| handle.groups.first())
    else {
        return Ok(Vec::new());
    };
    let header = read_range(storage, path, 0, HEADER_BYTES)?;
    if header[..4] != KEYED_MAGIC {
        return Err(corrupt("not a keyed state file (wrong magic)".into()));
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if version == 0 || version > KEYED_FILE_VERSION {
        return Err(CheckpointError::UnsupportedVersion {
            path: path.clone(),
            found: version,
            supported: KEYED_FILE_VERSION,
        });
    }
    let bytes = read_range(storage, path, group.offset, group.length)?;
    let states = flowstate_state::snapshot::read_section(group.key_group, &bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(states
        .into_iter()
        .map(|s| flowstate_state::descriptor::StateSignature {
            name: s.name.to_owned(),
            kind: s.kind,
            types: if version == 1 {
                flowstate_state::state_type::legacy(&s.types)
            } else {
                s.types.into_owned()
            },
            rust_types: "",
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::seal;
    use flowstate_state::SectionSource;
    use flowstate_state::snapshot::read_section;
    use flowstate_state::{
        BackendSnapshot, KeyScope, KeyedStateBackend, SnapshotRequest, ValueStateDescriptor,
        heap_backend,
    };

    /// The section of docs/savepoint-format.md, section 6: `count-sum`,
    /// key 17 -> (3, 51), with the type names `types`.
    fn section(types: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&9u16.to_le_bytes());
        out.extend_from_slice(b"count-sum");
        out.push(0);
        out.extend_from_slice(&(types.len() as u16).to_le_bytes());
        out.extend_from_slice(types.as_bytes());
        out.extend_from_slice(&32u64.to_le_bytes());
        for word in [1u64, 17, 3, 51] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    #[test]
    fn version_2_files_record_declared_names() {
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, 1), 1);
        let state = backend
            .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
            .unwrap();
        KeyScope::new(backend.as_mut(), &17, 0)
            .value(&state)
            .set((3, 51))
            .unwrap();
        let BackendSnapshot::KeyGroups(snapshot) = backend
            .snapshot(SnapshotRequest {
                checkpoint_id: 1,
                canonical: true,
            })
            .unwrap()
        else {
            panic!("heap snapshots are canonical")
        };
        let storage = crate::storage::open_storage(&format!(
            "memory://keyed-file-golden-{}",
            std::process::id()
        ))
        .unwrap();
        let handle = write_keyed_file(storage.as_ref(), "job/chk-1/op-0.keyed", &snapshot).unwrap();
        assert_eq!(handle.key_type, "u64");
        let bytes = storage.get("job/chk-1/op-0.keyed").unwrap();
        let mut expected = b"FSKS\x02\x00\x00\x00".to_vec();
        expected.extend_from_slice(&section("tuple<u64,u64>"));
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(handle.groups[0].offset, 8);
        assert_eq!(handle.groups[0].length, expected.len() as u64 - 12);
        // Read back as it is.
        let restored =
            read_keyed_file(storage.as_ref(), &handle, KeyGroupRange::new(0, 1)).unwrap();
        assert_eq!(restored.groups, [(0, section("tuple<u64,u64>"))]);
    }

    #[test]
    fn version_1_files_read_with_legacy_names() {
        let storage =
            crate::storage::open_storage(&format!("memory://keyed-file-v1-{}", std::process::id()))
                .unwrap();
        let v1 = seal(KEYED_MAGIC, 1, &section("(u64, u64)"));
        let handle = KeyedStateHandle {
            file: FileRef {
                path: "job/chk-1/op-0.keyed".into(),
                size: v1.len() as u64,
                crc32c: u32::from_le_bytes(v1[v1.len() - 4..].try_into().unwrap()),
            },
            key_group_start: 0,
            key_group_end: 1,
            groups: vec![KeyGroupEntry {
                key_group: 0,
                offset: 8,
                length: v1.len() as u64 - 12,
                entries: 1,
            }],
            key_type: "~rust:u64".into(),
        };
        storage.put(&handle.file.path, v1).unwrap();
        let restored =
            read_keyed_file(storage.as_ref(), &handle, KeyGroupRange::new(0, 1)).unwrap();
        assert_eq!(restored.groups, [(0, section("~rust:(u64, u64)"))]);
        let states = read_section(0, &restored.groups[0].1).unwrap();
        assert_eq!(states[0].types, "~rust:(u64, u64)");
        // Which restores into the declaration with that Rust type name.
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, 1), 1);
        backend.restore(restored).unwrap();
        let state = backend
            .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
            .unwrap();
        assert_eq!(
            KeyScope::new(backend.as_mut(), &17, 0)
                .value(&state)
                .get()
                .unwrap(),
            Some(&(3, 51))
        );
    }

    /// A heap backend over `m` key groups holding `keys` value entries.
    fn filled(m: u32, keys: u64) -> KeyedStateSnapshot {
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, m), m);
        let state = backend
            .value_state(&ValueStateDescriptor::<(u64, String)>::new("v"))
            .unwrap();
        for key in 0..keys {
            let g = flowstate_state::key_group_of(&key, m);
            KeyScope::new(backend.as_mut(), &key, g)
                .value(&state)
                .set((key, "x".repeat(key as usize % 50)))
                .unwrap();
        }
        match backend
            .snapshot(SnapshotRequest {
                checkpoint_id: 1,
                canonical: true,
            })
            .unwrap()
        {
            BackendSnapshot::KeyGroups(snapshot) => snapshot,
            BackendSnapshot::Native(_) => panic!("heap snapshots are canonical"),
        }
    }

    fn storage(name: &str) -> crate::storage::SharedStorage {
        crate::storage::open_storage(&format!(
            "memory://keyed-file-{name}-{}",
            std::process::id()
        ))
        .unwrap()
    }

    #[test]
    fn the_streamed_file_is_the_file_built_in_one_buffer() {
        // Larger than a storage part, so the multipart path writes it.
        let snapshot = filled(16, 400_000);
        let storage = storage("same-bytes");
        // Built first: the streaming writer takes each group once.
        let mut whole = crate::format::begin_sealed(KEYED_MAGIC, KEYED_FILE_VERSION);
        let mut spans = Vec::new();
        for g in snapshot.range.iter() {
            let start = whole.len() as u64;
            snapshot.write_key_group(g, &mut whole).unwrap();
            spans.push((start, whole.len() as u64 - start));
        }
        crate::format::finish_sealed(&mut whole);
        let handle = write_keyed_file(storage.as_ref(), "f.keyed", &snapshot).unwrap();
        assert!(handle.file.size > 2 * crate::storage::STREAM_PART_BYTES as u64);
        for g in snapshot.range.iter() {
            let entry = &handle.groups[g as usize];
            assert_eq!((entry.offset, entry.length), spans[g as usize]);
        }
        assert!(storage.get("f.keyed").unwrap() == whole, "other bytes");
        assert_eq!(handle.file.size, whole.len() as u64);
        // And reads back section by section.
        let restored = read_keyed_file(storage.as_ref(), &handle, snapshot.range).unwrap();
        for (g, section) in &restored.groups {
            let entry = &handle.groups[*g as usize];
            assert_eq!(
                section[..],
                whole[entry.offset as usize..(entry.offset + entry.length) as usize]
            );
        }
    }

    #[test]
    fn every_damage_is_found_before_a_section_is_handed_over() {
        let snapshot = filled(4, 40);
        let storage = storage("damage");
        let handle = write_keyed_file(storage.as_ref(), "f.keyed", &snapshot).unwrap();
        let good = storage.get("f.keyed").unwrap();
        // Every flipped byte and every truncation.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            storage.put("f.keyed", bad).unwrap();
            assert!(
                verify_keyed_file(storage.as_ref(), &handle).is_err(),
                "flip at {i}"
            );
        }
        for len in [0, 3, 11, good.len() / 2, good.len() - 1] {
            storage.put("f.keyed", good[..len].to_vec()).unwrap();
            let err = verify_keyed_file(storage.as_ref(), &handle).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Corrupt { .. }),
                "{len}: {err}"
            );
        }
        // An index that does not tile the file is refused, naming it.
        storage.put("f.keyed", good.clone()).unwrap();
        let mut shifted = handle.clone();
        shifted.groups[1].offset += 1;
        let err = verify_keyed_file(storage.as_ref(), &shifted).unwrap_err();
        assert!(
            err.to_string().contains("key group 1 starts at byte"),
            "{err}"
        );
        let mut long = handle.clone();
        long.groups[3].length = u64::MAX - 3;
        let err = verify_keyed_file(storage.as_ref(), &long).unwrap_err();
        assert!(err.to_string().contains("outside the file"), "{err}");

        // Changed after it was verified (same size, trailer adjusted): the
        // section read later is refused before anyone sees it.
        let verified = Arc::new(verify_keyed_file(storage.as_ref(), &handle).unwrap());
        let mut changed = good.clone();
        let at = handle.groups[2].offset as usize + 20;
        changed[at] ^= 1;
        let body = changed.len() - 4;
        let crc = crc32c::crc32c(&changed[..body]);
        changed[body..].copy_from_slice(&crc.to_le_bytes());
        storage.put("f.keyed", changed).unwrap();
        let sections =
            KeyedFileSections::new(Arc::clone(&storage), verified, KeyGroupRange::new(0, 4));
        let mut handed = Vec::new();
        let err = sections
            .for_each_section(&mut |g, _| {
                handed.push(g);
                Ok(())
            })
            .unwrap_err();
        assert_eq!(handed, [0, 1], "a damaged section was handed over");
        assert!(
            matches!(&err, StateError::CorruptSnapshot(m) if m.contains("key group 2")),
            "{err}"
        );
    }
}
