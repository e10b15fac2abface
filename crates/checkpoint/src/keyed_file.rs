//! Keyed state files: one per operator instance and checkpoint, the key-group
//! sections one after another, indexed by the handle in the metadata so a
//! restore at another parallelism reads only the key groups it owns.

use flowstate_state::{KeyGroupRange, KeyedStateSnapshot, RestoredKeyedState};

use crate::CheckpointError;
use crate::format::{KEYED_MAGIC, begin_sealed, finish_sealed, unseal};
use crate::metadata::{FileRef, KeyGroupEntry, KeyedStateHandle};
use crate::storage::CheckpointStorage;

/// Version of the keyed file format this build writes and the newest it
/// reads. Version 2 records declared type names in its sections; version 1
/// (`std::any::type_name` strings) is still read: its sections go through
/// [`flowstate_state::snapshot::section_from_v1`].
pub const KEYED_FILE_VERSION: u32 = 2;
const HEADER_BYTES: u64 = 8;

/// Serialises `snapshot` and writes it to `path`: the asynchronous part of a
/// keyed snapshot.
pub fn write_keyed_file(
    storage: &dyn CheckpointStorage,
    path: &str,
    snapshot: &KeyedStateSnapshot,
) -> Result<KeyedStateHandle, CheckpointError> {
    // The file is built in one buffer (header, sections, trailer): no copy of
    // the state between serialising it and handing it to storage.
    let mut sealed = begin_sealed(KEYED_MAGIC, KEYED_FILE_VERSION);
    let mut groups = Vec::with_capacity(snapshot.range.len());
    for (index, key_group) in snapshot.range.iter().enumerate() {
        let start = sealed.len();
        let entries = snapshot.write_key_group(key_group, &mut sealed)?;
        groups.push(KeyGroupEntry {
            key_group,
            offset: start as u64,
            length: (sealed.len() - start) as u64,
            entries,
        });
        if index == 0 {
            // Key groups are about equally large: size the buffer once.
            sealed.reserve((sealed.len() - HEADER_BYTES as usize) * snapshot.range.len() * 9 / 8);
        }
    }
    finish_sealed(&mut sealed);
    // Pair assertion: what goes to storage is exactly what a reader will accept.
    unseal(KEYED_MAGIC, KEYED_FILE_VERSION, path, &sealed)?;
    let crc32c = u32::from_le_bytes(sealed[sealed.len() - 4..].try_into().unwrap_or([0; 4]));
    let size = sealed.len() as u64;
    storage.put(path, sealed)?;
    Ok(KeyedStateHandle {
        file: FileRef {
            path: path.to_owned(),
            size,
            crc32c,
        },
        key_group_start: snapshot.range.start,
        key_group_end: snapshot.range.end,
        groups,
        key_type: snapshot.key_type.clone(),
    })
}

/// Reads a keyed state file, verifying size and checksum, and returns the
/// sections of the key groups in `wanted`.
pub fn read_keyed_file(
    storage: &dyn CheckpointStorage,
    handle: &KeyedStateHandle,
    wanted: KeyGroupRange,
) -> Result<RestoredKeyedState, CheckpointError> {
    let bytes = read_verified(storage, &handle.file)?;
    sections(handle, &bytes, wanted)
}

/// Reads the file `file` refers to, after checking that storage holds it
/// with the recorded size (so a file replaced by a larger one is never read
/// whole), then verifies it ([`verify_file`]).
pub fn read_verified(
    storage: &dyn CheckpointStorage,
    file: &FileRef,
) -> Result<Vec<u8>, CheckpointError> {
    match storage.size(&file.path)? {
        Some(size) if size == file.size => {}
        found => {
            return Err(CheckpointError::Corrupt {
                path: file.path.clone(),
                reason: match found {
                    None => "missing".to_owned(),
                    Some(size) => format!(
                        "{size} bytes, the checkpoint recorded {} (truncated?)",
                        file.size
                    ),
                },
            });
        }
    }
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
}
