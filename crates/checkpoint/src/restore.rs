//! Finding and loading a checkpoint to restore, and dealing its state out to the
//! instances of a (possibly rescaled) job.
//!
//! Loading reads and verifies every canonical keyed file eagerly. Native files
//! (a backend's own, possibly large, files) are only checked to exist with
//! their recorded size; the backend fetches them later through a
//! [`crate::native_files::StorageFetcher`], which verifies their checksums.

use std::collections::{HashMap, HashSet};

use flowstate_state::{KeyGroupRange, RedistributionMode, RestoredKeyedState};

use crate::keyed_file::{sections, verify_file};
use crate::layout::{METADATA_FILE, parse_metadata_path};
use crate::metadata::{CheckpointMetadata, OperatorListState};
use crate::native_files::native_restore;
use crate::storage::{CheckpointStorage, SharedStorage, open_storage};
use crate::{CheckpointError, CheckpointId};

/// A snapshot found by its location: the storage its metadata's paths are
/// relative to, and the metadata's path in it.
#[derive(Clone)]
pub struct OpenedSnapshot {
    pub storage: SharedStorage,
    pub metadata_path: String,
}

/// Opens the checkpoint or savepoint at `location` (a local path, `file://`,
/// `s3://` or `memory://` URL; optionally ending in `/_metadata`).
///
/// A checkpoint's paths are relative to its checkpoint storage root, two levels
/// above it (`<root>/<job>/chk-<n>`): a location whose last segment is
/// `chk-<n>` opens that root. Anything else is a savepoint directory, whose
/// paths are relative to itself, so it can be moved or copied anywhere.
pub fn open_snapshot(location: &str) -> Result<OpenedSnapshot, CheckpointError> {
    let trimmed = location.trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix(METADATA_FILE)
        .map_or(trimmed, |t| t.trim_end_matches('/'));
    let mut segments = trimmed.rsplitn(3, '/');
    let last = segments.next().unwrap_or("");
    let is_checkpoint = last
        .strip_prefix("chk-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if is_checkpoint && let Some(job) = segments.next() {
        // `file:///x` splits into root `file://`: an empty path means `/`.
        let root = match segments.next().unwrap_or(".") {
            "" => "/".to_owned(),
            r if r.ends_with(':') || r.ends_with("//") => format!("{r}/"),
            r => r.to_owned(),
        };
        if !job.is_empty() {
            return Ok(OpenedSnapshot {
                storage: open_storage(&root)?,
                metadata_path: format!("{job}/{last}/{METADATA_FILE}"),
            });
        }
    }
    Ok(OpenedSnapshot {
        storage: open_storage(trimmed)?,
        metadata_path: METADATA_FILE.to_owned(),
    })
}

/// A checkpoint read back and verified: its metadata, the bytes of every
/// canonical file it references, and the storage its native files are
/// fetched from.
pub struct LoadedCheckpoint {
    pub metadata: CheckpointMetadata,
    pub metadata_path: String,
    files: HashMap<String, Vec<u8>>,
    storage: SharedStorage,
}

/// Completed checkpoints under the storage root, newest first:
/// `(job id, checkpoint id, metadata path)`. "Newest" is by the time recorded
/// in the metadata (checkpoint ids restart with every new job); a metadata file
/// that cannot be read sorts last, so that restore falls back past it.
pub fn completed_checkpoints(
    storage: &dyn CheckpointStorage,
) -> Result<Vec<(String, CheckpointId, String)>, CheckpointError> {
    let mut found: Vec<(u64, String, CheckpointId, String)> = Vec::new();
    for path in storage.list("")? {
        let Some((job, id)) = parse_metadata_path(&path) else {
            continue;
        };
        let created = storage
            .get(&path)
            .ok()
            .and_then(|bytes| CheckpointMetadata::decode(&path, &bytes).ok())
            .map_or(0, |m| m.created_unix_ms);
        found.push((created, job, id, path));
    }
    // Jobs by their newest checkpoint's time; within a job by id, which only
    // grows (a wall clock may step back, ids do not).
    let mut job_newest: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for (created, job, _, _) in &found {
        let newest = job_newest.entry(job.clone()).or_insert(0);
        *newest = (*newest).max(*created);
    }
    found.sort_by(|a, b| {
        let (ja, jb) = (job_newest[&a.1], job_newest[&b.1]);
        jb.cmp(&ja)
            .then_with(|| b.1.cmp(&a.1))
            .then_with(|| b.2.cmp(&a.2))
    });
    Ok(found
        .into_iter()
        .map(|(_, job, id, path)| (job, id, path))
        .collect())
}

/// Loads and verifies one checkpoint (`path` is its directory or its `_metadata`).
pub fn load(storage: &SharedStorage, path: &str) -> Result<LoadedCheckpoint, CheckpointError> {
    let metadata_path = if path.ends_with(METADATA_FILE) {
        path.to_owned()
    } else if path.trim_matches('/').is_empty() {
        METADATA_FILE.to_owned()
    } else {
        format!("{}/{METADATA_FILE}", path.trim_end_matches('/'))
    };
    let bytes = storage.get(&metadata_path)?;
    let metadata = CheckpointMetadata::decode(&metadata_path, &bytes)?;
    let mut files = HashMap::new();
    for operator in &metadata.operators {
        for subtask in &operator.subtasks {
            if let Some(keyed) = &subtask.keyed {
                let bytes = storage.get(&keyed.file.path)?;
                verify_file(&keyed.file, &bytes)?;
                files.insert(keyed.file.path.clone(), bytes);
            }
        }
    }
    check_native_files(storage.as_ref(), &metadata)?;
    Ok(LoadedCheckpoint {
        metadata,
        metadata_path,
        files,
        storage: SharedStorage::clone(storage),
    })
}

/// Every native file the checkpoint references exists with its recorded size
/// (a shared file referenced by several instances is asked for once).
fn check_native_files(
    storage: &dyn CheckpointStorage,
    metadata: &CheckpointMetadata,
) -> Result<(), CheckpointError> {
    let mut checked = HashSet::new();
    for file in metadata.native_files() {
        let file = &file.file;
        if !checked.insert(file.path.as_str()) {
            continue;
        }
        let found = storage.size(&file.path)?;
        if found != Some(file.size) {
            let reason = match found {
                None => "missing".to_owned(),
                Some(size) => format!("{size} bytes, the checkpoint recorded {}", file.size),
            };
            return Err(CheckpointError::Corrupt {
                path: file.path.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// Loads the newest completed checkpoint that verifies, falling back to older
/// retained ones when a newer one is damaged. `Ok(None)` if there is none at all;
/// an error naming the damage if every one is damaged.
pub fn load_latest(storage: &SharedStorage) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
    load_latest_of(storage, None)
}

/// [`load_latest`] restricted to the checkpoints of job `job_id` (all jobs if `None`).
pub fn load_latest_of(
    storage: &SharedStorage,
    job_id: Option<&str>,
) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
    let mut candidates = completed_checkpoints(storage.as_ref())?;
    if let Some(job_id) = job_id {
        candidates.retain(|(job, _, _)| job == job_id);
    }
    let mut first_error = None;
    for (_, id, path) in &candidates {
        match load(storage, path) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(e) => {
                tracing::warn!(
                    checkpoint = id,
                    "cannot restore {path}: {e}; trying an older checkpoint"
                );
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

impl LoadedCheckpoint {
    pub fn id(&self) -> CheckpointId {
        self.metadata.checkpoint_id
    }

    /// Keyed state of operator `uid` for the instance owning `range`, gathered
    /// from every old instance whose key groups overlap it: canonical sections
    /// of the key groups in `range`, and the native state of old instances
    /// whose ranges overlap it (whole; the backend takes what it owns).
    ///
    /// `restoring_job` is the id of the job that restores. Native files are
    /// reusable by its later checkpoints only if it is the job that wrote this
    /// checkpoint: then its coordinator retains this checkpoint and counts the
    /// references to the shared files. Another job must upload its own copies.
    pub fn keyed_state(
        &self,
        uid: &str,
        range: KeyGroupRange,
        restoring_job: &str,
    ) -> Result<RestoredKeyedState, CheckpointError> {
        let mut restored = RestoredKeyedState::default();
        let Some(operator) = self.metadata.operator(uid) else {
            return Ok(restored);
        };
        let reusable = restoring_job == self.metadata.job_id;
        for subtask in &operator.subtasks {
            let overlaps =
                |start, end| !KeyGroupRange::new(start, end).intersect(&range).is_empty();
            if let Some(handle) = subtask
                .keyed
                .as_ref()
                .filter(|h| overlaps(h.key_group_start, h.key_group_end))
            {
                let bytes =
                    self.files
                        .get(&handle.file.path)
                        .ok_or_else(|| CheckpointError::Corrupt {
                            path: handle.file.path.clone(),
                            reason: "not loaded".into(),
                        })?;
                restored
                    .groups
                    .extend(sections(handle, bytes, range)?.groups);
            }
            if let Some(handle) = subtask
                .native
                .as_ref()
                .filter(|h| overlaps(h.key_group_start, h.key_group_end))
            {
                let storage = SharedStorage::clone(&self.storage);
                restored
                    .native
                    .push(native_restore(storage, handle, reusable));
            }
        }
        Ok(restored)
    }

    /// Operator list states of `uid` for instance `index` of `parallelism`:
    /// split lists are dealt round-robin over the new instances, union lists go
    /// whole to every instance.
    pub fn operator_lists(
        &self,
        uid: &str,
        index: u32,
        parallelism: u32,
    ) -> Vec<OperatorListState> {
        let Some(operator) = self.metadata.operator(uid) else {
            return Vec::new();
        };
        let mut merged: Vec<OperatorListState> = Vec::new();
        for subtask in &operator.subtasks {
            for list in &subtask.lists {
                match merged.iter_mut().find(|l| l.name == list.name) {
                    Some(existing) => existing.elements.extend(list.elements.iter().cloned()),
                    None => merged.push(list.clone()),
                }
            }
        }
        for list in &mut merged {
            if list.mode == RedistributionMode::Split {
                list.elements = list
                    .elements
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i as u32 % parallelism == index)
                    .map(|(_, e)| e.clone())
                    .collect();
            }
        }
        merged
    }

    /// Whether the checkpoint holds state of operator `uid`.
    pub fn has_operator(&self, uid: &str) -> bool {
        self.metadata.operator(uid).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(described storage root, metadata path)` of `open_snapshot(location)`.
    fn opened(location: &str) -> (String, String) {
        let opened = open_snapshot(location).unwrap();
        (opened.storage.describe(), opened.metadata_path)
    }

    #[test]
    fn a_checkpoint_opens_its_storage_root_and_anything_else_is_a_savepoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        for form in [
            format!("{root}/job-1/chk-12"),
            format!("{root}/job-1/chk-12/"),
            format!("{root}/job-1/chk-12/_metadata"),
            format!("file://{root}/job-1/chk-12"),
        ] {
            let (storage, metadata) = opened(&form);
            assert_eq!(metadata, "job-1/chk-12/_metadata", "{form}");
            assert!(storage.contains(&root), "{form}: {storage}");
            assert!(!storage.contains("job-1"), "{form}: {storage}");
        }
        for form in [
            format!("{root}/sp/savepoint-abc-0123"),
            format!("{root}/sp/savepoint-abc-0123/_metadata"),
            format!("{root}/job-1/chk-x"),
            format!("{root}/chk-"),
        ] {
            let (storage, metadata) = opened(&form);
            assert_eq!(metadata, METADATA_FILE, "{form}");
            let shown = form.trim_end_matches("/_metadata");
            assert!(storage.contains(shown), "{form}: {storage}");
        }
    }
}
