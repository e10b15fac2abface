//! The sealed file format: every checkpoint file is
//! `magic (4 bytes) | version (u32 LE) | payload | crc32c of everything before (u32 LE)`.
//!
//! Pair assertion: a writer unseals what it just sealed before handing it to
//! storage; a reader refuses anything whose magic, version, length or checksum is
//! off, naming the file.

use crate::CheckpointError;

/// Magic of a checkpoint or savepoint `_metadata` file.
pub const METADATA_MAGIC: [u8; 4] = *b"FSMD";
/// Magic of a keyed state file.
pub const KEYED_MAGIC: [u8; 4] = *b"FSKS";
/// Magic of a channel state file (the in-flight records of an unaligned
/// checkpoint, [`crate::channel_file`]).
pub const CHANNEL_STATE_MAGIC: [u8; 4] = *b"FSCS";
/// Magic of a job's restore pointer (`<job>/_restored_from`).
pub const RESTORE_POINTER_MAGIC: [u8; 4] = *b"FSRP";

const HEADER_BYTES: usize = 8;
const TRAILER_BYTES: usize = 4;

/// Wraps `payload` with magic, version and checksum.
pub fn seal(magic: [u8; 4], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() + TRAILER_BYTES);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Starts a sealed file in place: the payload is appended to the returned
/// buffer, then [`finish_sealed`] adds the checksum. Same bytes as [`seal`].
pub fn begin_sealed(magic: [u8; 4], version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + TRAILER_BYTES);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out
}

/// Appends the checksum of everything in `buffer` (see [`begin_sealed`]).
pub fn finish_sealed(buffer: &mut Vec<u8>) {
    let crc = crc32c::crc32c(buffer);
    buffer.extend_from_slice(&crc.to_le_bytes());
}

/// Checks magic, version (at most `max_version`) and checksum; returns the
/// version and the payload.
pub fn unseal<'a>(
    magic: [u8; 4],
    max_version: u32,
    path: &str,
    bytes: &'a [u8],
) -> Result<(u32, &'a [u8]), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(corrupt(format!(
            "only {} bytes, shorter than any valid file (truncated?)",
            bytes.len()
        )));
    }
    if bytes[..4] != magic {
        return Err(corrupt(format!(
            "wrong magic {:02x?}, expected {:?}",
            &bytes[..4],
            String::from_utf8_lossy(&magic)
        )));
    }
    let body = &bytes[..bytes.len() - TRAILER_BYTES];
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&bytes[bytes.len() - TRAILER_BYTES..]);
    let stored = u32::from_le_bytes(stored);
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x}): truncated or modified"
        )));
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version == 0 || version > max_version {
        return Err(CheckpointError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: max_version,
        });
    }
    Ok((version, &body[HEADER_BYTES..]))
}

/// Reads `len` bytes at `at` of a streamed file of `size` bytes (recorded)
/// while verifying it: a missing object and a read past its end are damage
/// (`corrupt` names the file), any other storage error is the storage's.
pub fn read_verify_chunk(
    storage: &dyn crate::storage::CheckpointStorage,
    path: &str,
    at: u64,
    len: u64,
    size: u64,
    corrupt: impl Fn(String) -> CheckpointError,
) -> Result<Vec<u8>, CheckpointError> {
    use crate::storage::StorageError;
    storage.get_range(path, at, len).map_err(|e| match e {
        StorageError::NotFound { .. } => corrupt("missing".into()),
        StorageError::Io { ref reason, .. } if reason.contains("outside the object") => corrupt(
            format!("shorter than the {size} bytes recorded (truncated?)"),
        ),
        other => CheckpointError::Storage(other),
    })
}

/// The seal of a file read in pieces (keyed and channel state files, which
/// are streamed): `header` and `trailer` as read, `whole` the CRC-32C of
/// every byte before the trailer. Checks the magic, the checksum against the
/// trailer and against the one the checkpoint recorded (`file.crc32c`), and
/// the version (at most `max_version`); returns the version.
pub fn check_streamed_seal(
    magic: [u8; 4],
    max_version: u32,
    file: &crate::metadata::FileRef,
    header: &[u8],
    trailer: &[u8],
    whole: u32,
) -> Result<u32, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: file.path.clone(),
        reason,
    };
    let (Ok(header), Ok(trailer)) = (
        <[u8; HEADER_BYTES]>::try_from(header),
        <[u8; TRAILER_BYTES]>::try_from(trailer),
    ) else {
        return Err(corrupt("header or trailer missing (truncated?)".into()));
    };
    if header[..4] != magic {
        return Err(corrupt(format!(
            "wrong magic {:02x?}, expected {:?}",
            &header[..4],
            String::from_utf8_lossy(&magic)
        )));
    }
    let stored = u32::from_le_bytes(trailer);
    if stored != whole {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {whole:08x}): truncated or modified"
        )));
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if version == 0 || version > max_version {
        return Err(CheckpointError::UnsupportedVersion {
            path: file.path.clone(),
            found: version,
            supported: max_version,
        });
    }
    if stored != file.crc32c {
        return Err(corrupt(format!(
            "file.crc32c: checksum {stored:08x}, the checkpoint recorded {:08x}",
            file.crc32c
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_byte_and_every_truncation_is_detected() {
        let sealed = seal(KEYED_MAGIC, 1, b"some state bytes");
        assert_eq!(
            unseal(KEYED_MAGIC, 1, "f", &sealed).unwrap(),
            (1, &b"some state bytes"[..])
        );
        for i in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 0x40;
            assert!(
                unseal(KEYED_MAGIC, 1, "f", &damaged).is_err(),
                "flip at {i} not detected"
            );
        }
        for len in 0..sealed.len() {
            assert!(
                unseal(KEYED_MAGIC, 1, "f", &sealed[..len]).is_err(),
                "truncation to {len} not detected"
            );
        }
    }

    #[test]
    fn newer_versions_are_refused_with_a_clear_error() {
        let sealed = seal(METADATA_MAGIC, 7, b"{}");
        let err = unseal(METADATA_MAGIC, 1, "chk-3/_metadata", &sealed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "'chk-3/_metadata' has format version 7; this flowstate reads versions up to 1"
        );
    }
}
