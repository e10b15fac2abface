//! Keyed state files: one per operator instance and checkpoint, the key-group
//! sections one after another, indexed by the handle in the metadata so a
//! restore at another parallelism reads only the key groups it owns.

use flowstate_state::{KeyGroupRange, KeyedStateSnapshot, RestoredKeyedState};

use crate::CheckpointError;
use crate::format::{KEYED_MAGIC, begin_sealed, finish_sealed, unseal};
use crate::metadata::{FileRef, KeyGroupEntry, KeyedStateHandle};
use crate::storage::CheckpointStorage;

/// Version of the keyed file format.
pub const KEYED_FILE_VERSION: u32 = 1;
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
                groups.push((entry.key_group, bytes[start..end].to_vec()));
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
