//! Native files: a backend's own files (RocksDB's SST files, say) uploaded as
//! they are for a checkpoint, and fetched back, verified, for a restore.
//!
//! Owns: where each file goes ([`upload_native`]: shareable files to
//! `<job>/shared/`, the others beside the checkpoint, see [`crate::layout`]),
//! the size and checksum recorded for it, and the check of both when a file is
//! fetched ([`StorageFetcher`]). It does not decide when a shared file is
//! deleted: that is the coordinator's shared-file registry.
//!
//! A file the backend lists as already stored ([`NativeFile::stored`]) is
//! referenced, not uploaded again. A shareable file this upload wrote is
//! recorded in the snapshot's [`flowstate_state::UploadReceipt`] only once the
//! whole snapshot is uploaded, so the backend never learns of a file of a
//! snapshot that failed halfway.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use flowstate_state::{
    FileFetcher, KeyGroupRange, NativeFile, NativeRestore, NativeSnapshot, StateError, StoredFile,
};

use crate::layout::{native_private_path, shared_dir, shared_file_path};
use crate::metadata::{FileRef, NativeFileRef, NativeStateHandle};
use crate::storage::{CheckpointStorage, SharedStorage, StorageError};
use crate::{CheckpointError, CheckpointId};

/// Where one snapshot's files go.
struct Target<'a> {
    storage: &'a dyn CheckpointStorage,
    job_id: &'a str,
    uid: &'a str,
    subtask: u32,
    checkpoint_id: CheckpointId,
}

/// Uploads the files of `snapshot` (instance `subtask` of operator `uid`) that
/// no earlier checkpoint stored, and returns the handle for the metadata and
/// the bytes actually uploaded (reused files do not count).
///
/// Shareable files are written create-if-absent: a shared path is written
/// once, and on local storage that write is fsynced, because every later
/// checkpoint that references the file depends on it (there is no older copy
/// to fall back to). On failure, the shared files this call already wrote are
/// deleted (best effort; the coordinator collects what is left when the job
/// next starts).
pub fn upload_native(
    storage: &dyn CheckpointStorage,
    job_id: &str,
    uid: &str,
    subtask: u32,
    snapshot: &NativeSnapshot,
) -> Result<(NativeStateHandle, u64), CheckpointError> {
    let target = Target {
        storage,
        job_id,
        uid,
        subtask,
        checkpoint_id: snapshot.checkpoint_id,
    };
    // A deferred snapshot makes its local files now, on this thread.
    let local = snapshot.resolved_files().map_err(CheckpointError::State)?;
    let mut files = Vec::with_capacity(local.len());
    let mut uploaded_bytes = 0;
    for file in local.iter() {
        let result = match &file.stored {
            Some(stored) => reference(&target, file, stored),
            None => upload(&target, file),
        };
        match result {
            Ok(reference) => {
                if reference.uploaded_by == target.checkpoint_id {
                    uploaded_bytes += reference.file.size;
                }
                files.push(reference);
            }
            Err(e) => {
                remove_new_shared(storage, target.checkpoint_id, &files);
                return Err(e);
            }
        }
    }
    for file in files.iter().filter(|f| f.shared) {
        if file.uploaded_by == target.checkpoint_id {
            snapshot.receipt.record(&file.name, stored_file(&file.file));
        }
    }
    let handle = NativeStateHandle {
        backend: snapshot.backend.clone(),
        key_group_start: snapshot.range.start,
        key_group_end: snapshot.range.end,
        states: snapshot.states.clone(),
        files,
    };
    Ok((handle, uploaded_bytes))
}

/// A file an earlier checkpoint of this job stored.
fn reference(
    target: &Target<'_>,
    file: &NativeFile,
    stored: &StoredFile,
) -> Result<NativeFileRef, CheckpointError> {
    // Pair assertions on the backend's claim that this is the stored file:
    // same size, and stored by this job (only this job's registry keeps it).
    if stored.size != file.size {
        return Err(CheckpointError::Invalid(format!(
            "{}: the backend reuses '{}' ({} bytes) for a local file of {} bytes",
            file.local.display(),
            stored.path,
            stored.size,
            file.size
        )));
    }
    if !stored.path.starts_with(&shared_dir(target.job_id)) {
        return Err(CheckpointError::Invalid(format!(
            "{}: the backend reuses '{}', which is not a shared file of job {}",
            file.local.display(),
            stored.path,
            target.job_id
        )));
    }
    Ok(NativeFileRef {
        name: file.name.clone(),
        file: FileRef {
            path: stored.path.clone(),
            size: stored.size,
            crc32c: stored.crc32c,
        },
        shared: true,
        uploaded_by: 0,
    })
}

/// Reads a local file whole and writes it to its storage path.
fn upload(target: &Target<'_>, file: &NativeFile) -> Result<NativeFileRef, CheckpointError> {
    let local_error = |reason: String| CheckpointError::LocalFile {
        path: file.local.clone(),
        reason,
    };
    let bytes = std::fs::read(&file.local).map_err(|e| local_error(format!("cannot read: {e}")))?;
    // Pair assertion: the snapshot listed the file at this size; a file that
    // changes under the upload is not the file the snapshot means.
    if bytes.len() as u64 != file.size {
        return Err(local_error(format!(
            "{} bytes, the snapshot listed {} (changed during the upload)",
            bytes.len(),
            file.size
        )));
    }
    let crc32c = crc32c::crc32c(&bytes);
    let size = file.size;
    let path = if file.shareable {
        let path = shared_file_path(
            target.job_id,
            target.uid,
            target.subtask,
            target.checkpoint_id,
            &file.name,
        );
        target.storage.put_if_absent(&path, bytes)?;
        path
    } else {
        let path = native_private_path(
            target.job_id,
            target.checkpoint_id,
            target.uid,
            target.subtask,
            &file.name,
        );
        target.storage.put(&path, bytes)?;
        path
    };
    Ok(NativeFileRef {
        name: file.name.clone(),
        file: FileRef { path, size, crc32c },
        shared: file.shareable,
        uploaded_by: target.checkpoint_id,
    })
}

/// Deletes the shared files of a failed upload that it wrote itself.
fn remove_new_shared(storage: &dyn CheckpointStorage, id: CheckpointId, files: &[NativeFileRef]) {
    for file in files.iter().filter(|f| f.shared && f.uploaded_by == id) {
        if let Err(e) = storage.delete(&file.file.path) {
            tracing::warn!(
                checkpoint = id,
                "cannot remove '{}' of a failed upload: {e}",
                file.file.path
            );
        }
    }
}

fn stored_file(file: &FileRef) -> StoredFile {
    StoredFile {
        path: file.path.clone(),
        size: file.size,
        crc32c: file.crc32c,
    }
}

/// The restore description of one earlier instance's native state.
/// `reusable`: the restoring job is the one that wrote the checkpoint, so its
/// retained checkpoints keep the shared files and later checkpoints may
/// reference them (see [`crate::restore::LoadedCheckpoint::keyed_state`]).
pub fn native_restore(
    storage: SharedStorage,
    handle: &NativeStateHandle,
    reusable: bool,
) -> NativeRestore {
    NativeRestore {
        backend: handle.backend.clone(),
        range: KeyGroupRange::new(handle.key_group_start, handle.key_group_end),
        states: handle.states.clone(),
        files: handle
            .files
            .iter()
            .map(|f| (f.name.clone(), stored_file(&f.file)))
            .collect(),
        reusable,
        fetcher: Arc::new(StorageFetcher::new(storage)),
    }
}

/// What the errors of a fetch call the backend.
const FETCH: &str = "native";

/// Copies stored files to local disk, checking size and crc32c first.
pub struct StorageFetcher {
    storage: SharedStorage,
}

impl StorageFetcher {
    pub fn new(storage: SharedStorage) -> Self {
        Self { storage }
    }
}

impl std::fmt::Debug for StorageFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageFetcher")
            .field("storage", &self.storage.describe())
            .finish()
    }
}

impl FileFetcher for StorageFetcher {
    fn fetch(&self, file: &StoredFile, to: &Path, immutable: bool) -> Result<(), StateError> {
        if immutable && let Some(local) = self.storage.local_path(&file.path) {
            // Fast restore from a local directory: verify in place, then link —
            // the file is read once and never copied.
            verify_local(file, &local)?;
            if link(&local, to).is_ok() {
                return Ok(());
            }
        }
        let bytes = self.storage.get(&file.path).map_err(|e| match e {
            StorageError::NotFound { .. } => {
                StateError::CorruptSnapshot(format!("{e}, but the checkpoint references it"))
            }
            other => StateError::Backend {
                backend: FETCH,
                action: format!("fetch '{}'", file.path),
                reason: other.to_string(),
            },
        })?;
        verify(file, &bytes)?;
        write_synced(to, &bytes).map_err(|e| StateError::Backend {
            backend: FETCH,
            action: format!("write '{}' to {}", file.path, to.display()),
            reason: e.to_string(),
        })
    }
}

/// Hard-links `from` to `to` (creating `to`'s directory).
fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::hard_link(from, to)
}

/// Checks a stored file in a local directory against its recorded size and
/// checksum, streaming it (a limit on memory).
fn verify_local(file: &StoredFile, local: &Path) -> Result<(), StateError> {
    const CHUNK_BYTES: usize = 1 << 20;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => StateError::CorruptSnapshot(format!(
            "'{}' does not exist, but the checkpoint references it",
            file.path
        )),
        _ => StateError::Backend {
            backend: FETCH,
            action: format!("read '{}'", file.path),
            reason: e.to_string(),
        },
    };
    let mut input = std::fs::File::open(local).map_err(io)?;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let (mut size, mut crc) = (0u64, 0u32);
    loop {
        let n = std::io::Read::read(&mut input, &mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
    }
    check(file, size, crc)
}

fn check(file: &StoredFile, size: u64, crc32c: u32) -> Result<(), StateError> {
    if size != file.size {
        return Err(StateError::CorruptSnapshot(format!(
            "'{}' has {size} bytes, the checkpoint recorded {} (truncated?)",
            file.path, file.size
        )));
    }
    if crc32c != file.crc32c {
        return Err(StateError::CorruptSnapshot(format!(
            "'{}' has checksum {crc32c:08x}, the checkpoint recorded {:08x} (modified?)",
            file.path, file.crc32c
        )));
    }
    Ok(())
}

/// Checks fetched bytes against the size and checksum the checkpoint recorded.
fn verify(file: &StoredFile, bytes: &[u8]) -> Result<(), StateError> {
    check(file, bytes.len() as u64, crc32c::crc32c(bytes))
}

/// Writes `bytes` to `to` (creating its directory) and fsyncs it: the backend
/// opens the files as its database, which must not lose them to a crash.
fn write_synced(to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::File::create(to)?;
    out.write_all(bytes)?;
    out.sync_all()
}
