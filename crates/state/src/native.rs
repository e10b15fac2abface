//! Native snapshots: a backend's own files (RocksDB's SST files, say) handed to
//! checkpoint storage as they are, instead of the canonical key-group format.
//!
//! This module only describes files; it never reads or writes checkpoint
//! storage. The synchronous part of a snapshot produces a [`NativeSnapshot`]
//! (local files, some of them already stored by an earlier checkpoint, or a
//! [`PrepareFiles`] that makes them in the asynchronous part); the checkpoint
//! side uploads what is new and fills the snapshot's [`UploadReceipt`]. A restore gets a [`NativeRestore`]: stored files plus a
//! [`FileFetcher`] that copies one of them, verified, to a local path.
//!
//! Architecture invariant: a file listed as reusable ([`NativeFile::stored`]) is
//! byte for byte the local file of the same name; backends only reuse files that
//! are immutable once written.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::descriptor::StateSignature;
use crate::error::StateError;
use crate::key_group::KeyGroupRange;

/// A file in checkpoint storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Path relative to the storage root.
    pub path: String,
    pub size: u64,
    pub crc32c: u32,
}

/// One file of a native snapshot.
#[derive(Debug, Clone)]
pub struct NativeFile {
    /// The file's name in the backend's directory (`000042.sst`, `CURRENT`).
    pub name: String,
    /// Where the file is on local disk (inside the snapshot's directory).
    pub local: PathBuf,
    pub size: u64,
    /// Set when an earlier completed checkpoint stored this very file: it is
    /// referenced, not uploaded again.
    pub stored: Option<StoredFile>,
    /// Immutable, so later checkpoints may share it (it goes to `shared/`).
    pub shareable: bool,
}

/// Where the uploader put the new shareable files of one snapshot: the backend
/// reads it when the checkpoint completes, to reuse them in later checkpoints.
#[derive(Debug, Default)]
pub struct UploadReceipt {
    files: Mutex<Vec<(String, StoredFile)>>,
}

impl UploadReceipt {
    pub fn record(&self, name: &str, stored: StoredFile) {
        if let Ok(mut files) = self.files.lock() {
            files.push((name.to_owned(), stored));
        }
    }

    pub fn take(&self) -> Vec<(String, StoredFile)> {
        self.files
            .lock()
            .map(|mut files| std::mem::take(&mut *files))
            .unwrap_or_default()
    }
}

/// The synchronous part's result for a backend that snapshots natively.
pub struct NativeSnapshot {
    /// The backend's name as recorded in checkpoint metadata (`rocksdb`).
    pub backend: String,
    pub range: KeyGroupRange,
    pub checkpoint_id: u64,
    /// Every state the files hold.
    pub states: Vec<StateSignature>,
    /// The files, if the synchronous part listed them; see [`Self::prepare`].
    pub files: Vec<NativeFile>,
    /// Set by a backend whose synchronous part only froze its state: the
    /// asynchronous part (the uploader, [`NativeSnapshot::resolved_files`])
    /// makes and lists the files, and `files` is empty.
    pub prepare: Option<Box<dyn PrepareFiles>>,
    pub receipt: Arc<UploadReceipt>,
    /// Keeps the local snapshot directory alive until the upload is done; dropping
    /// it removes the directory.
    pub guard: Box<dyn Any + Send + Sync>,
}

/// The deferred part of a native snapshot: makes the local files of the
/// state frozen by the synchronous part. Called at most once, on the
/// uploader's thread; dropping it uncalled tells the backend the snapshot was
/// abandoned.
pub trait PrepareFiles: Send + Sync {
    fn files(&self) -> Result<Vec<NativeFile>, StateError>;
}

impl NativeSnapshot {
    /// The snapshot's files: those the synchronous part listed, or the ones
    /// its deferred part makes now (an error fails the checkpoint).
    pub fn resolved_files(&self) -> Result<std::borrow::Cow<'_, [NativeFile]>, StateError> {
        match &self.prepare {
            Some(prepare) => Ok(std::borrow::Cow::Owned(prepare.files()?)),
            None => Ok(std::borrow::Cow::Borrowed(&self.files)),
        }
    }
}

impl std::fmt::Debug for NativeSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeSnapshot")
            .field("backend", &self.backend)
            .field("range", &self.range)
            .field("checkpoint_id", &self.checkpoint_id)
            .field("files", &self.files.len())
            .field("deferred", &self.prepare.is_some())
            .finish()
    }
}

/// Copies a stored file to local disk, verifying its size and checksum.
pub trait FileFetcher: Send + Sync {
    /// `immutable`: the backend never writes to the file (RocksDB's SST files),
    /// so a fetcher over a local directory may hard-link it instead of copying.
    fn fetch(&self, file: &StoredFile, to: &Path, immutable: bool) -> Result<(), StateError>;
}

/// Native state of one earlier instance, to restore.
#[derive(Clone)]
pub struct NativeRestore {
    pub backend: String,
    /// The key groups the earlier instance owned.
    pub range: KeyGroupRange,
    pub states: Vec<StateSignature>,
    /// `(name in the backend's directory, stored file)`.
    pub files: Vec<(String, StoredFile)>,
    /// Shared files that this job's own retained checkpoints reference, so later
    /// checkpoints may reference them too (false for another job's checkpoint).
    pub reusable: bool,
    pub fetcher: Arc<dyn FileFetcher>,
}

impl std::fmt::Debug for NativeRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRestore")
            .field("backend", &self.backend)
            .field("range", &self.range)
            .field("files", &self.files.len())
            .field("reusable", &self.reusable)
            .finish()
    }
}
