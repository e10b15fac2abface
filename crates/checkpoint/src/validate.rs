//! The structure of checkpoint metadata, checked before anything trusts it.
//!
//! `_metadata` is read from storage that someone else may have written: a
//! crafted, damaged or merely foreign file can carry a valid checksum and
//! still lie. Everything downstream (restore dealing key groups out, the file
//! sink renaming files, the offline tools) takes the metadata's ranges,
//! indices, names and paths as facts, so they are checked here, once, by
//! [`check_metadata`], which [`CheckpointMetadata::decode`] calls: restore,
//! `verify`, `inspect` and the coordinator all read metadata through it.
//!
//! What is checked: names and paths are plain (paths relative, inside the
//! snapshot, without `.`/`..`/empty segments; native file names a single
//! segment), every limit below holds, key-group ranges lie inside
//! `[0, max_parallelism)`, are not reversed and, per operator, are disjoint
//! and cover every key group when the operator has keyed state; subtask
//! indices are unique and below the parallelism; a keyed file's key-group
//! index is contiguous and lies inside the recorded file size; the `job`
//! section (if any) has a known version and keeps the parameter limits;
//! channel state (if any) is in a checkpoint, in its directory, with the
//! instance's key-group range and an index that tiles its file.
//!
//! Must not touch: storage. It looks at the decoded metadata only.

use std::collections::{HashMap, HashSet};

use flowstate_state::{KeyGroup, MAX_PARALLELISM_LIMIT};

use crate::CheckpointError;
use crate::metadata::{
    ChannelStateHandle, CheckpointMetadata, EdgePartitioning, FileRef, KeyedStateHandle,
    SnapshotKind,
};

/// Longest job id, uid, state name, list name or backend name, in bytes.
pub const NAME_BYTES_MAX: usize = 512;
/// Longest path of a file a snapshot references, in bytes.
pub const PATH_BYTES_MAX: usize = 4096;
/// Most operators one snapshot may describe.
pub const OPERATORS_MAX: usize = 100_000;
/// Most native files one operator instance may reference.
pub const NATIVE_FILES_MAX: usize = 1_000_000;
/// Header (magic, version) and trailer (CRC-32C) of a sealed file.
const SEAL_HEADER_BYTES: u64 = 8;
const SEAL_TRAILER_BYTES: u64 = 4;

/// Checks the structure of `metadata`, read from `path`; the error names
/// the file and the field.
pub fn check_metadata(path: &str, metadata: &CheckpointMetadata) -> Result<(), CheckpointError> {
    let invalid = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    check_job_id(&metadata.job_id).map_err(|e| invalid(format!("job_id: {e}")))?;
    if let Some(job) = &metadata.job {
        if job.version == 0 || job.version > crate::job::JOB_SECTION_VERSION {
            return Err(CheckpointError::UnsupportedVersion {
                path: format!("{path} (job section)"),
                found: job.version,
                supported: crate::job::JOB_SECTION_VERSION,
            });
        }
        job.validate().map_err(|e| invalid(format!("job: {e}")))?;
    }
    let max_parallelism = metadata.max_parallelism;
    if max_parallelism == 0 || max_parallelism > MAX_PARALLELISM_LIMIT {
        return Err(invalid(format!(
            "max_parallelism {max_parallelism} is not between 1 and {MAX_PARALLELISM_LIMIT}"
        )));
    }
    if metadata.operators.len() > OPERATORS_MAX {
        return Err(invalid(format!(
            "{} operators, more than the limit of {OPERATORS_MAX}",
            metadata.operators.len()
        )));
    }
    let mut uids = HashSet::new();
    for operator in &metadata.operators {
        let uid = operator.uid.as_str();
        check_name(uid).map_err(|e| invalid(format!("operator uid {uid:?}: {e}")))?;
        if !uids.insert(uid) {
            return Err(invalid(format!("operator uid '{uid}' appears twice")));
        }
        let at = |what: String| invalid(format!("operator '{uid}': {what}"));
        if operator.name.len() > NAME_BYTES_MAX * 8 {
            return Err(at(format!("name longer than {} bytes", NAME_BYTES_MAX * 8)));
        }
        let parallelism = operator.parallelism;
        if parallelism == 0 || parallelism > MAX_PARALLELISM_LIMIT {
            return Err(at(format!(
                "parallelism {parallelism} is not between 1 and {MAX_PARALLELISM_LIMIT}"
            )));
        }
        let mut subtasks = HashSet::new();
        let mut ranges: Vec<(KeyGroup, KeyGroup, u32)> = Vec::new();
        let mut edges: HashMap<u32, (&str, EdgePartitioning, &str)> = HashMap::new();
        for subtask in &operator.subtasks {
            let index = subtask.subtask;
            let at = |what: String| at(format!("subtask {index}: {what}"));
            if index >= parallelism {
                return Err(at(format!(
                    "index {index} is not below the parallelism {parallelism}"
                )));
            }
            if !subtasks.insert(index) {
                return Err(invalid(format!(
                    "operator '{uid}': subtask {index} appears twice"
                )));
            }
            if subtask.keyed.is_some() && subtask.native.is_some() {
                return Err(at("has both canonical and native keyed state".into()));
            }
            let range = |start: KeyGroup, end: KeyGroup| {
                if start > end {
                    return Err(at(format!("key-group range {start}..{end} is reversed")));
                }
                if end > max_parallelism {
                    return Err(at(format!(
                        "key-group range {start}..{end} goes beyond max_parallelism {max_parallelism}"
                    )));
                }
                Ok((start, end, index))
            };
            if let Some(keyed) = &subtask.keyed {
                ranges.push(range(keyed.key_group_start, keyed.key_group_end)?);
                check_file(&metadata.kind, &metadata.job_id, &keyed.file)
                    .map_err(|e| at(format!("keyed file: {e}")))?;
                check_index(keyed).map_err(|e| at(format!("keyed file index: {e}")))?;
                if keyed.key_type.len() > NAME_BYTES_MAX * 8 {
                    return Err(at("key_type too long".into()));
                }
            }
            if let Some(native) = &subtask.native {
                ranges.push(range(native.key_group_start, native.key_group_end)?);
                if metadata.kind == SnapshotKind::Savepoint {
                    return Err(at(
                        "a savepoint holds a native (backend-specific) snapshot".into()
                    ));
                }
                check_name(&native.backend).map_err(|e| at(format!("backend: {e}")))?;
                if native.files.len() > NATIVE_FILES_MAX {
                    return Err(at(format!(
                        "{} native files, more than the limit of {NATIVE_FILES_MAX}",
                        native.files.len()
                    )));
                }
                for state in &native.states {
                    check_name(&state.name)
                        .map_err(|e| at(format!("state name {:?}: {e}", state.name)))?;
                }
                for file in &native.files {
                    check_file_name(&file.name)
                        .map_err(|e| at(format!("native file name {:?}: {e}", file.name)))?;
                    check_file(&metadata.kind, &metadata.job_id, &file.file)
                        .map_err(|e| at(format!("native file '{}': {e}", file.name)))?;
                }
            }
            if let Some(channels) = &subtask.channels {
                check_channels(metadata, parallelism, index, channels, &mut edges)
                    .map_err(|e| at(format!("channels: {e}")))?;
            }
            for list in &subtask.lists {
                check_name(&list.name)
                    .map_err(|e| at(format!("operator list state {:?}: {e}", list.name)))?;
            }
        }
        check_coverage(&mut ranges, max_parallelism).map_err(at)?;
    }
    Ok(())
}

/// The key-group range instance `index` of `parallelism` owns
/// ([`flowstate_state::KeyGroupRange::for_operator`], without its assertion:
/// the numbers come from a file).
fn owned_range(index: u32, parallelism: u32, max_parallelism: u32) -> (KeyGroup, KeyGroup) {
    let (m, p, i) = (
        u64::from(max_parallelism),
        u64::from(parallelism.max(1)),
        u64::from(index),
    );
    let start = (i * m).div_ceil(p).min(m);
    let end = ((i + 1) * m).div_ceil(p).min(m);
    (start as KeyGroup, end as KeyGroup)
}

/// The channel state of instance `index` (docs/savepoint-format.md,
/// section 10): only in checkpoints, in the checkpoint's own directory, with
/// the instance's key-group range, plain names, an index that tiles the
/// file ([`crate::channel_file`]), and every edge the same (producer,
/// partitioning, record type) in every instance of the operator (`edges`).
fn check_channels<'a>(
    metadata: &CheckpointMetadata,
    parallelism: u32,
    index: u32,
    channels: &'a ChannelStateHandle,
    edges: &mut HashMap<u32, (&'a str, EdgePartitioning, &'a str)>,
) -> Result<(), String> {
    if metadata.kind == SnapshotKind::Savepoint {
        return Err("a savepoint holds channel state (savepoints are always aligned)".into());
    }
    check_file(&metadata.kind, &metadata.job_id, &channels.file)
        .map_err(|e| format!("file: {e}"))?;
    let dir = crate::layout::checkpoint_dir(&metadata.job_id, metadata.checkpoint_id);
    if !channels.file.path.starts_with(&dir) {
        return Err(format!(
            "file: '{}' lies outside the checkpoint's directory '{dir}'",
            channels.file.path
        ));
    }
    let expected = owned_range(index, parallelism, metadata.max_parallelism);
    let found = (channels.key_group_start, channels.key_group_end);
    if found != expected {
        return Err(format!(
            "key_group_start..key_group_end {}..{} is not the range {}..{} of subtask {index} of \
             {parallelism}",
            found.0, found.1, expected.0, expected.1
        ));
    }
    for input in &channels.inputs {
        let edge = input.edge;
        check_name(&input.from_uid)
            .map_err(|e| format!("inputs (edge {edge}): from_uid {:?}: {e}", input.from_uid))?;
        if input.record_type.is_empty()
            || input.record_type.len() > NAME_BYTES_MAX * 8
            || input.record_type.chars().any(char::is_control)
        {
            return Err(format!(
                "inputs (edge {edge}): record_type of {} bytes (1 to {}, no control characters)",
                input.record_type.len(),
                NAME_BYTES_MAX * 8
            ));
        }
        let this = (
            input.from_uid.as_str(),
            input.partitioning,
            input.record_type.as_str(),
        );
        match edges.get(&edge) {
            Some(seen) if *seen != this => {
                return Err(format!(
                    "inputs (edge {edge}): from_uid, partitioning or record_type differ from \
                     another subtask's ({:?} / {:?} / {:?})",
                    seen.0, seen.1, seen.2
                ));
            }
            Some(_) => {}
            None => {
                edges.insert(edge, this);
            }
        }
    }
    crate::channel_file::check_index(channels)
}

/// Key-group ranges of one operator: disjoint, and together every key group
/// (an operator with keyed state has it in every instance).
fn check_coverage(
    ranges: &mut [(KeyGroup, KeyGroup, u32)],
    max_parallelism: u32,
) -> Result<(), String> {
    if ranges.is_empty() {
        return Ok(());
    }
    ranges.sort_unstable();
    let mut next = 0;
    for &(start, end, subtask) in ranges.iter() {
        if start < next {
            return Err(format!(
                "the key groups of subtask {subtask} ({start}..{end}) overlap another subtask's"
            ));
        }
        if start > next {
            return Err(format!(
                "no subtask holds key groups {next}..{start}: state would be lost"
            ));
        }
        next = end;
    }
    if next != max_parallelism {
        return Err(format!(
            "no subtask holds key groups {next}..{max_parallelism}: state would be lost"
        ));
    }
    Ok(())
}

/// A keyed file's index: one entry per key group of its range, in order,
/// sections back to back from the header to the trailer of the recorded size.
fn check_index(handle: &KeyedStateHandle) -> Result<(), String> {
    let size = handle.file.size;
    if size < SEAL_HEADER_BYTES + SEAL_TRAILER_BYTES {
        return Err(format!("a recorded size of {size} bytes is too small"));
    }
    let span = handle.key_group_end.saturating_sub(handle.key_group_start);
    if handle.groups.len() != span as usize {
        return Err(format!(
            "{} entries for a range of {span} key groups",
            handle.groups.len()
        ));
    }
    let mut offset = SEAL_HEADER_BYTES;
    for (i, group) in handle.groups.iter().enumerate() {
        let expected = handle.key_group_start + i as KeyGroup;
        if group.key_group != expected {
            return Err(format!(
                "lists key group {} where {expected} was expected",
                group.key_group
            ));
        }
        if group.offset != offset {
            return Err(format!(
                "key group {} starts at {}, not at {offset}",
                group.key_group, group.offset
            ));
        }
        offset = group
            .offset
            .checked_add(group.length)
            .ok_or_else(|| format!("key group {} has a length that overflows", group.key_group))?;
    }
    if offset != size - SEAL_TRAILER_BYTES {
        return Err(format!(
            "the sections end at byte {offset}, the file's payload at {}",
            size - SEAL_TRAILER_BYTES
        ));
    }
    Ok(())
}

/// A file reference: a plain relative path inside the snapshot (a
/// checkpoint's files lie in its job's directory; a savepoint's anywhere
/// below its own directory, which relative paths cannot leave).
fn check_file(kind: &SnapshotKind, job_id: &str, file: &FileRef) -> Result<(), String> {
    check_relative_path(&file.path)?;
    if *kind == SnapshotKind::Checkpoint {
        let inside = file
            .path
            .strip_prefix(job_id)
            .is_some_and(|rest| rest.starts_with('/'));
        if !inside {
            return Err(format!(
                "'{}' lies outside the directory of job '{job_id}'",
                file.path
            ));
        }
    }
    Ok(())
}

/// A path relative to a snapshot's root that cannot leave it.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > PATH_BYTES_MAX {
        return Err(format!(
            "path of {} bytes (1 to {PATH_BYTES_MAX})",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return Err(format!("'{path}' is absolute"));
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!("'{path}' has an empty, '.' or '..' segment"));
        }
        if segment.chars().any(|c| c.is_control() || c == '\\') {
            return Err(format!(
                "'{}' has a control character or backslash",
                path.escape_debug()
            ));
        }
    }
    Ok(())
}

/// A single path segment of safe characters (`[A-Za-z0-9._-]`, not `.`/`..`).
fn check_file_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        Ok(())
    } else {
        Err("not a plain file name ([A-Za-z0-9._-], not '.' or '..')".into())
    }
}

/// A job id names a directory: the same rule as a file name.
fn check_job_id(id: &str) -> Result<(), String> {
    check_file_name(id).map_err(|_| {
        format!(
            "{:?} is not a plain name ([A-Za-z0-9._-], not '.' or '..')",
            id
        )
    })
}

/// A uid, state or list name: non-empty, bounded, no control characters.
/// (Such names are escaped wherever they become part of a path.)
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("{} bytes (1 to {NAME_BYTES_MAX})", name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err("has a control character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        for good in ["a", "job/chk-1/x.keyed", "state/op~2f/0.keyed"] {
            assert!(check_relative_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "./a",
            "a/",
            "a\\b",
            "a\nb",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coverage() {
        assert!(check_coverage(&mut [(0, 64, 0), (64, 128, 1)], 128).is_ok());
        assert!(check_coverage(&mut [(64, 128, 1), (0, 64, 0)], 128).is_ok());
        assert!(check_coverage(&mut [], 128).is_ok());
        let overlap = check_coverage(&mut [(0, 64, 0), (0, 64, 1)], 128).unwrap_err();
        assert!(overlap.contains("overlap"), "{overlap}");
        let gap = check_coverage(&mut [(0, 60, 0), (64, 128, 1)], 128).unwrap_err();
        assert!(gap.contains("60..64"), "{gap}");
        let short = check_coverage(&mut [(0, 64, 0)], 128).unwrap_err();
        assert!(short.contains("64..128"), "{short}");
    }
}
