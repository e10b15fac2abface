//! Finding and loading a checkpoint to restore, and dealing its state out to the
//! instances of a (possibly rescaled) job.
//!
//! Loading reads and verifies every canonical keyed file eagerly, in bounded
//! memory (a chunk at a time), and keeps only what a later read of each
//! section is checked against; a restore reads the sections again, one key
//! group at a time ([`crate::keyed_file::KeyedFileSections`]). Native files
//! (a backend's own, possibly large, files) are only checked to exist with
//! their recorded size; the backend fetches them later through a
//! [`crate::native_files::StorageFetcher`], which verifies their checksums.
//! Channel state files (unaligned checkpoints) are verified at load like
//! keyed files, and their sections read again, checked, when an instance
//! asks for them ([`LoadedCheckpoint::channel_state`]).

use std::collections::{HashMap, HashSet};

use flowstate_state::{KeyGroupRange, RedistributionMode, RestoredKeyedState};

use crate::channel_file::{ChannelSectionBytes, VerifiedChannelFile, verify_channel_file};
use crate::keyed_file::{KeyedFileSections, VerifiedKeyedFile, verify_keyed_file};
use crate::layout::{METADATA_FILE, parse_metadata_path};
use crate::metadata::{CheckpointMetadata, EdgePartitioning, OperatorListState, read_metadata};
use crate::native_files::native_restore;
use serde::{Deserialize, Serialize};

use crate::format::{RESTORE_POINTER_MAGIC, seal, unseal};
use crate::storage::{CheckpointStorage, SharedStorage, StorageError, open_storage};
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

/// A checkpoint read back and verified: its metadata, what every canonical
/// file it references was verified to hold (not its bytes), and the storage
/// its files are read from.
pub struct LoadedCheckpoint {
    pub metadata: CheckpointMetadata,
    pub metadata_path: String,
    /// The job that `--restore latest` continues from this snapshot: the one
    /// that wrote it, or the job whose restore pointer led to it.
    pub continues_job: String,
    /// Newer snapshots [`load_latest_of`] tried first and could not load,
    /// newest first (empty for [`load`]).
    pub skipped: Vec<SkippedSnapshot>,
    files: HashMap<String, std::sync::Arc<VerifiedKeyedFile>>,
    channel_files: HashMap<String, std::sync::Arc<VerifiedChannelFile>>,
    storage: SharedStorage,
}

/// The channel state one new instance takes for one input edge of its head
/// operator ([`LoadedCheckpoint::channel_state`]): verified sections, still
/// encoded, in the order to replay them (old subtask, then key group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredChannelInput {
    pub edge: u32,
    pub from_uid: String,
    pub partitioning: EdgePartitioning,
    pub record_type: String,
    pub sections: Vec<RestoredChannelSection>,
}

/// One section of a [`RestoredChannelInput`] and the old instance that
/// recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredChannelSection {
    pub old_subtask: u32,
    pub section: ChannelSectionBytes,
}

/// A snapshot that `--restore latest` tried and could not load, so that it
/// fell back to an older one.
///
/// Falling back is only safe for the job's *state*: a skipped snapshot that
/// completed may have had its sinks' output committed, which replaying from
/// the older one commits again. Whether that is acceptable is the runtime's
/// decision (it knows the job's sinks and guarantee); this says what was
/// skipped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSnapshot {
    /// The job whose snapshot it is.
    pub job: String,
    pub checkpoint_id: CheckpointId,
    /// Its metadata (or restore pointer) path in the storage.
    pub path: String,
    /// Why it could not be loaded (the error, naming the file).
    pub reason: String,
    /// Provably damaged: a size, checksum or structure that does not hold, or
    /// a file that is missing. Nothing can ever restore it, so it may be
    /// deleted. False for a format version this build does not know (a newer
    /// flowstate wrote it) and for errors reading storage (they may pass):
    /// such a snapshot must be left alone.
    pub damaged: bool,
    /// A restore pointer (a savepoint the job started from) rather than a
    /// checkpoint of the job.
    pub pointer: bool,
}

/// Whether a load error proves the snapshot can never be restored.
pub fn is_provably_damaged(error: &CheckpointError) -> bool {
    matches!(
        error,
        CheckpointError::Corrupt { .. }
            | CheckpointError::Storage(crate::storage::StorageError::NotFound { .. })
    )
}

/// Where a job that started from a snapshot outside its own checkpoints (a
/// savepoint, another job's checkpoint) came from: `<job>/_restored_from` in
/// the checkpoint storage. Until the job's first checkpoint completes, this is
/// the job's newest consistent state, and `--restore latest` resumes from it;
/// without it, a crash before that first checkpoint would resume from an older
/// checkpoint of another job and replay output the snapshot had committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePointer {
    /// A checkpoint in this same storage, by its path in it...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_path: Option<String>,
    /// ...or a snapshot anywhere, opened with [`open_snapshot`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub checkpoint_id: CheckpointId,
    pub created_unix_ms: u64,
}

/// Name of a job's restore pointer, beside its `chk-<n>` directories.
pub const RESTORE_POINTER_FILE: &str = "_restored_from";
const RESTORE_POINTER_VERSION: u32 = 1;

/// Writes `<job_id>/_restored_from` (sealed JSON, replacing an older one).
pub fn write_restore_pointer(
    storage: &dyn CheckpointStorage,
    job_id: &str,
    pointer: &RestorePointer,
) -> Result<(), CheckpointError> {
    let path = format!("{job_id}/{RESTORE_POINTER_FILE}");
    let json = serde_json::to_vec(pointer).map_err(|e| CheckpointError::Invalid(e.to_string()))?;
    let sealed = seal(RESTORE_POINTER_MAGIC, RESTORE_POINTER_VERSION, &json);
    // Pair assertion: it reads back as written.
    if read_restore_pointer(&path, &sealed)? != *pointer {
        return Err(CheckpointError::Invalid(
            "restore pointer does not read back identically".into(),
        ));
    }
    storage.put(&path, sealed)?;
    Ok(())
}

fn read_restore_pointer(path: &str, bytes: &[u8]) -> Result<RestorePointer, CheckpointError> {
    let (_, json) = unseal(RESTORE_POINTER_MAGIC, RESTORE_POINTER_VERSION, path, bytes)?;
    serde_json::from_slice(json).map_err(|e| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// What `--restore latest` may resume from, in order of preference.
enum Candidate {
    Checkpoint {
        id: CheckpointId,
        path: String,
    },
    Pointer {
        job: String,
        path: String,
        pointer: RestorePointer,
    },
    /// A restore pointer that is there but cannot be decoded: it may name
    /// the newest snapshot of its job, so it comes first and, skipped as
    /// damaged, makes what follows a fallback (refused where that would
    /// publish output twice).
    UnreadablePointer {
        path: String,
        reason: String,
    },
}

/// Completed checkpoints under the storage root, newest first:
/// `(job id, checkpoint id, metadata path)`. "Newest" is by the time recorded
/// in the metadata (checkpoint ids restart with every new job); a metadata file
/// that cannot be read sorts last, so that restore falls back past it.
pub fn completed_checkpoints(
    storage: &dyn CheckpointStorage,
) -> Result<Vec<(String, CheckpointId, String)>, CheckpointError> {
    let paths = storage.list("")?;
    Ok(ordered_checkpoints(storage, &paths)?
        .into_iter()
        .map(|(_, job, id, path)| (job, id, path))
        .collect())
}

/// [`completed_checkpoints`] with each one's creation time.
fn ordered_checkpoints(
    storage: &dyn CheckpointStorage,
    paths: &[String],
) -> Result<Vec<(u64, String, CheckpointId, String)>, CheckpointError> {
    let mut found: Vec<(u64, String, CheckpointId, String)> = Vec::new();
    for path in paths {
        let Some((job, id)) = parse_metadata_path(path) else {
            continue;
        };
        let created = read_metadata(storage, path)
            .ok()
            .map_or(0, |m| m.created_unix_ms);
        found.push((created, job, id, path.clone()));
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
    Ok(found)
}

/// Everything `--restore latest` may resume from, newest first: jobs by their
/// newest checkpoint or restore pointer; within a job its checkpoints by id,
/// and its restore pointer after them (written when the job started from a
/// snapshot) or before them (written when it stopped with a savepoint, newer
/// than every checkpoint of the job).
fn restore_candidates(
    storage: &dyn CheckpointStorage,
    job_id: Option<&str>,
) -> Result<Vec<(String, Candidate)>, CheckpointError> {
    let paths = storage.list("")?;
    let checkpoints = ordered_checkpoints(storage, &paths)?;
    let mut pointers: HashMap<String, (String, RestorePointer)> = HashMap::new();
    let mut unreadable: HashMap<String, (String, String)> = HashMap::new();
    for path in &paths {
        let Some(job) = path
            .strip_suffix(RESTORE_POINTER_FILE)
            .and_then(|p| p.strip_suffix('/'))
            .filter(|job| !job.is_empty() && !job.contains('/'))
        else {
            continue;
        };
        match storage
            .get(path)
            .map_err(CheckpointError::from)
            .and_then(|bytes| read_restore_pointer(path, &bytes))
        {
            Ok(pointer) => {
                pointers.insert(job.to_owned(), (path.clone(), pointer));
            }
            // Never passed over: a pointer that could not be read may name
            // the job's newest snapshot (a stop's savepoint, whose output
            // the sinks published), and restoring an older checkpoint
            // instead would publish that output again (found by the
            // whole-job simulation). A read that failed fails the restore
            // (a restart tries again); a pointer that reads but does not
            // decode is a damaged candidate, first of its job.
            Err(e @ CheckpointError::Storage(_)) => return Err(e),
            Err(e) => {
                tracing::warn!("restore pointer {path} is damaged: {e}");
                unreadable.insert(job.to_owned(), (path.clone(), e.to_string()));
            }
        }
    }
    let mut newest: HashMap<String, u64> = HashMap::new();
    for (created, job, _, _) in &checkpoints {
        let n = newest.entry(job.clone()).or_insert(0);
        *n = (*n).max(*created);
    }
    for (job, (_, pointer)) in &pointers {
        let n = newest.entry(job.clone()).or_insert(0);
        *n = (*n).max(pointer.created_unix_ms);
    }
    for job in unreadable.keys() {
        newest.entry(job.clone()).or_insert(0);
    }
    let mut jobs: Vec<(&String, &u64)> = newest.iter().collect();
    jobs.sort_by(|a, b| b.1.cmp(a.1).then_with(|| b.0.cmp(a.0)));
    let mut out = Vec::new();
    for (job, _) in jobs {
        if job_id.is_some_and(|wanted| wanted != job) {
            continue;
        }
        let own: Vec<_> = checkpoints.iter().filter(|c| &c.1 == job).collect();
        if let Some((path, reason)) = unreadable.get(job) {
            out.push((
                job.clone(),
                Candidate::UnreadablePointer {
                    path: path.clone(),
                    reason: reason.clone(),
                },
            ));
        }
        let pointer = pointers.get(job).map(|(path, pointer)| {
            (
                job.clone(),
                Candidate::Pointer {
                    job: job.clone(),
                    path: path.clone(),
                    pointer: pointer.clone(),
                },
            )
        });
        // A pointer is written when a job starts from a snapshot (older than
        // any checkpoint of the job) and when it stops with a savepoint (newer
        // than all of them). A stop's savepoint takes its id from the same
        // sequence as the job's checkpoints, after all of them: an id above
        // every checkpoint's puts the pointer first whatever the clocks say
        // (a wall clock that stepped back between the last checkpoint and
        // the stop made `latest` resume from that checkpoint and publish the
        // stop's output twice; found by the whole-job simulation, whose
        // clock is virtual). Otherwise it goes where its time puts it (a job
        // restarted from an older checkpoint of its own).
        // A checkpoint whose metadata cannot be read (time 0) may be newer:
        // the pointer then stays behind it, so that skipping it counts as a
        // fallback.
        let pointer_is_newest = pointers.get(job).is_some_and(|(_, p)| {
            let newest_by_id = own.iter().all(|(_, _, id, _)| p.checkpoint_id > *id);
            let newest_by_time = own
                .iter()
                .all(|(created, _, _, _)| *created != 0 && p.created_unix_ms > *created);
            newest_by_id || newest_by_time
        });
        let mut pointer = pointer;
        if pointer_is_newest && let Some(p) = pointer.take() {
            out.push(p);
        }
        for (_, _, id, path) in own {
            out.push((
                job.clone(),
                Candidate::Checkpoint {
                    id: *id,
                    path: path.clone(),
                },
            ));
        }
        if let Some(p) = pointer {
            out.push(p);
        }
    }
    Ok(out)
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
    let metadata = read_metadata(storage.as_ref(), &metadata_path)?;
    let mut files = HashMap::new();
    let mut channel_files = HashMap::new();
    for operator in &metadata.operators {
        for subtask in &operator.subtasks {
            if let Some(keyed) = &subtask.keyed {
                let verified = verify_keyed_file(storage.as_ref(), keyed)?;
                files.insert(keyed.file.path.clone(), std::sync::Arc::new(verified));
            }
            if let Some(channels) = &subtask.channels {
                let verified = verify_channel_file(storage.as_ref(), channels)?;
                channel_files.insert(channels.file.path.clone(), std::sync::Arc::new(verified));
            }
        }
    }
    check_native_files(storage.as_ref(), &metadata)?;
    Ok(LoadedCheckpoint {
        continues_job: metadata.job_id.clone(),
        metadata,
        metadata_path,
        skipped: Vec::new(),
        files,
        channel_files,
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

/// How often [`load_latest_of`] lists the candidates again when the one it
/// was loading vanished meanwhile.
const RELIST_MAX: usize = 3;

/// [`load_latest_of`] restricted to the checkpoints of job `job_id` (all jobs if `None`).
///
/// A candidate whose `_metadata` no longer exists when it is read was
/// deleted after it was listed: a live run of the job completed a newer
/// checkpoint and dropped it (`retain`). That says nothing about the job's
/// state, so the candidates are listed again (at most [`RELIST_MAX`] times)
/// rather than falling back past it or failing with a missing file.
pub fn load_latest_of(
    storage: &SharedStorage,
    job_id: Option<&str>,
) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
    let mut round = 0;
    loop {
        match load_latest_once(storage, job_id) {
            Err(CheckpointError::Storage(StorageError::NotFound { path, .. }))
                if round < RELIST_MAX && path.ends_with(METADATA_FILE) =>
            {
                tracing::info!("{path} was deleted while it was being read: listing again");
                round += 1;
            }
            other => return other,
        }
    }
}

fn load_latest_once(
    storage: &SharedStorage,
    job_id: Option<&str>,
) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
    let candidates = restore_candidates(storage.as_ref(), job_id)?;
    let mut first_error = None;
    let mut skipped = Vec::new();
    for (job, candidate) in &candidates {
        let (loaded, shown, id) = match candidate {
            Candidate::Checkpoint { id, path } => (load(storage, path), path.clone(), *id),
            Candidate::Pointer { job, path, pointer } => {
                let loaded = match (&pointer.storage_path, &pointer.location) {
                    (Some(in_storage), _) => load(storage, in_storage),
                    (None, Some(location)) => open_snapshot(location)
                        .and_then(|opened| load(&opened.storage, &opened.metadata_path)),
                    (None, None) => Err(CheckpointError::Corrupt {
                        path: path.clone(),
                        reason: "names no snapshot".into(),
                    }),
                };
                let loaded = loaded.map(|mut l| {
                    tracing::info!(
                        "job {job} has no checkpoint yet: resuming from the snapshot it \
                         started from, {}",
                        pointer
                            .location
                            .as_deref()
                            .or(pointer.storage_path.as_deref())
                            .unwrap_or("?")
                    );
                    l.continues_job = job.clone();
                    l
                });
                (loaded, path.clone(), pointer.checkpoint_id)
            }
            Candidate::UnreadablePointer { path, reason } => (
                Err(CheckpointError::Corrupt {
                    path: path.clone(),
                    reason: reason.clone(),
                }),
                path.clone(),
                0,
            ),
        };
        match loaded {
            Ok(mut loaded) => {
                loaded.skipped = skipped;
                return Ok(Some(loaded));
            }
            // A read that failed says nothing about the snapshot: it may
            // be fine, and falling back past it would replay (or, with
            // committing sinks, be refused and stop the job). The load
            // fails instead and is tried again (a restart; the user's next
            // run). Found by the whole-job simulation.
            Err(e @ CheckpointError::Storage(StorageError::Io { .. })) => return Err(e),
            // Listed, then gone: deleted by a live run (see `load_latest_of`).
            Err(CheckpointError::Storage(StorageError::NotFound { storage, path }))
                if matches!(candidate, Candidate::Checkpoint { .. })
                    && path.ends_with(METADATA_FILE) =>
            {
                return Err(CheckpointError::Storage(StorageError::NotFound {
                    storage,
                    path,
                }));
            }
            Err(e) => {
                tracing::warn!(
                    checkpoint = id,
                    "cannot restore {shown}: {e}; trying an older checkpoint"
                );
                skipped.push(SkippedSnapshot {
                    job: job.clone(),
                    checkpoint_id: id,
                    path: shown,
                    reason: e.to_string(),
                    damaged: is_provably_damaged(&e),
                    pointer: matches!(
                        candidate,
                        Candidate::Pointer { .. } | Candidate::UnreadablePointer { .. }
                    ),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// The operator list states instance `index` of `parallelism` gets from the
/// lists of every old instance (in subtask order): lists of one name are
/// concatenated; split lists are then dealt round-robin (element `i` to
/// instance `i % parallelism`), union lists go whole to every instance.
pub fn deal_operator_lists<'a>(
    lists: impl IntoIterator<Item = &'a OperatorListState>,
    index: u32,
    parallelism: u32,
) -> Vec<OperatorListState> {
    let mut merged: Vec<OperatorListState> = Vec::new();
    for list in lists {
        match merged.iter_mut().find(|l| l.name == list.name) {
            Some(existing) => existing.elements.extend(list.elements.iter().cloned()),
            None => merged.push(list.clone()),
        }
    }
    for list in &mut merged {
        if list.mode == RedistributionMode::Split {
            list.elements = list
                .elements
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % parallelism.max(1) == index)
                .map(|(_, e)| e.clone())
                .collect();
        }
    }
    merged
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
                let verified =
                    self.files
                        .get(&handle.file.path)
                        .ok_or_else(|| CheckpointError::Corrupt {
                            path: handle.file.path.clone(),
                            reason: "not loaded".into(),
                        })?;
                restored
                    .streams
                    .push(std::sync::Arc::new(KeyedFileSections::new(
                        SharedStorage::clone(&self.storage),
                        std::sync::Arc::clone(verified),
                        range,
                    )));
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

    /// The channel state (in-flight records of an unaligned checkpoint) that
    /// new instance `index` of `parallelism`, owning the key groups `range`,
    /// takes for input `edge` of head operator `uid`; `None` if no old
    /// instance recorded any for that edge.
    ///
    /// - hash edge: the sections whose key group lies in `range`, from every
    ///   old instance (each key group's records go to the instance owning it,
    ///   whatever the old parallelism);
    /// - rebalance edge: the whole section of old instance `c` goes to new
    ///   instance `c % parallelism` (each old channel's order kept).
    ///
    /// Sections come in old subtask order, then key group order. Each is
    /// read again and checked against the checksum seen when the checkpoint
    /// was loaded; its batches stay encoded (decoding needs the record type).
    pub fn channel_state(
        &self,
        uid: &str,
        edge: u32,
        index: u32,
        parallelism: u32,
        range: KeyGroupRange,
    ) -> Result<Option<RestoredChannelInput>, CheckpointError> {
        let Some(operator) = self.metadata.operator(uid) else {
            return Ok(None);
        };
        let mut subtasks: Vec<_> = operator
            .subtasks
            .iter()
            .filter_map(|s| s.channels.as_ref().map(|c| (s.subtask, c)))
            .collect();
        subtasks.sort_by_key(|(subtask, _)| *subtask);
        let mut restored: Option<RestoredChannelInput> = None;
        for (old_subtask, handle) in subtasks {
            let Some((input_index, input)) = handle
                .inputs
                .iter()
                .enumerate()
                .find(|(_, i)| i.edge == edge)
            else {
                continue;
            };
            let verified = self.channel_files.get(&handle.file.path).ok_or_else(|| {
                CheckpointError::Corrupt {
                    path: handle.file.path.clone(),
                    reason: "not loaded".into(),
                }
            })?;
            let restored = restored.get_or_insert_with(|| RestoredChannelInput {
                edge,
                from_uid: input.from_uid.clone(),
                partitioning: input.partitioning,
                record_type: input.record_type.clone(),
                sections: Vec::new(),
            });
            for (section_index, section) in input.sections.iter().enumerate() {
                let wanted = match input.partitioning {
                    EdgePartitioning::Hash => section.key_group.is_some_and(|g| range.contains(g)),
                    EdgePartitioning::Rebalance => old_subtask % parallelism.max(1) == index,
                };
                if wanted {
                    restored.sections.push(RestoredChannelSection {
                        old_subtask,
                        section: verified.read_section(
                            self.storage.as_ref(),
                            input_index,
                            section_index,
                        )?,
                    });
                }
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
        deal_operator_lists(
            operator.subtasks.iter().flat_map(|s| &s.lists),
            index,
            parallelism,
        )
    }

    /// Whether the checkpoint holds state of operator `uid`.
    /// The storage its files are read from.
    pub fn storage(&self) -> &SharedStorage {
        &self.storage
    }

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
