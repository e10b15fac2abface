//! Streamed writes into a local checkpoint directory
//! ([`super::CheckpointStorage::put_streaming`] of a `file://` storage).
//!
//! The bytes go straight from the caller's piece into a staging file beside
//! the object (through a small write buffer), renamed over the object by
//! `finish`. The generic multipart path instead fills an 8 MiB part buffer,
//! freshly allocated for every part, and hands it to the storage runtime's
//! thread: for a checkpoint of tens of MB a second, the kernel then spent more
//! time zeroing those buffers' new pages than writing the file.
//!
//! Owns: the staging file's name, its life (removed when the writer is dropped
//! unfinished) and the rename that publishes the object. Must not touch:
//! anything but the one object it writes. Durability as `put`'s: not fsynced
//! (survives a killed process; a checkpoint is published by its fsynced
//! metadata, and a restore checks every file it reads).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ObjectWriter, StorageError};

/// Bytes buffered before a write to the file: small pieces (headers) are
/// gathered, a piece at least this large goes to the file directly.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// Tells staging files of one process apart.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) struct LocalFileWriter {
    /// `None` once finished.
    file: Option<BufWriter<File>>,
    staging: PathBuf,
    target: PathBuf,
    description: String,
    path: String,
}

impl LocalFileWriter {
    /// Starts writing `relative` below `root`. The caller has checked the
    /// path (no link on the way); the parents are created here and the
    /// staging file is created new (`O_EXCL`: never an existing file or link).
    pub(super) fn create(
        root: &Path,
        relative: &str,
        description: &str,
    ) -> Result<Self, StorageError> {
        let target = root.join(relative);
        let io = |e: std::io::Error| StorageError::Io {
            storage: description.to_owned(),
            operation: "put",
            path: relative.to_owned(),
            reason: e.to_string(),
        };
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(io(std::io::Error::other("not a file path")));
        };
        std::fs::create_dir_all(parent).map_err(io)?;
        let mut staging_name = name.to_os_string();
        staging_name.push(format!(
            ".partial-{}-{}",
            std::process::id(),
            STAGING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let staging = parent.join(staging_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
            .map_err(io)?;
        Ok(Self {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            staging,
            target,
            description: description.to_owned(),
            path: relative.to_owned(),
        })
    }

    fn io(&self, e: std::io::Error) -> StorageError {
        StorageError::Io {
            storage: self.description.clone(),
            operation: "put",
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

impl ObjectWriter for LocalFileWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        match self.file.as_mut() {
            Some(file) => file.write_all(bytes).map_err(|e| self.io(e)),
            None => Err(self.io(std::io::Error::other("written after finish"))),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let Some(file) = self.file.take() else {
            return Err(self.io(std::io::Error::other("finished twice")));
        };
        // `into_inner` flushes; then the rename replaces whatever is at the
        // target (a link itself, never its target).
        let published = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| {
                drop(file);
                std::fs::rename(&self.staging, &self.target)
            });
        published.map_err(|e| {
            let _ = std::fs::remove_file(&self.staging);
            self.io(e)
        })
    }

    fn abort(self: Box<Self>) {
        // Dropping removes the staging file.
    }
}

impl Drop for LocalFileWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Unfinished: nothing is published; best effort.
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}
