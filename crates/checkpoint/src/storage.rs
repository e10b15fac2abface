//! Checkpoint storage: a flat namespace of immutable objects addressed by
//! '/'-separated paths relative to the storage root.
//!
//! The trait is blocking: it is called from snapshot upload threads and from the
//! coordinator, never from a task's data path.
//!
//! [`open_storage`] turns a `--checkpoint-dir` value into a storage; every kind is
//! an [`ObjectStoreStorage`] over an [`object_store`] backend:
//!
//! | value | backend |
//! | --- | --- |
//! | `/abs/dir`, `rel/dir`, `file:///abs/dir` | a local directory (created if missing) |
//! | `memory://`, `memory://NAME` | memory of this process, shared by name |
//! | `s3://bucket`, `s3://bucket/prefix` | any S3-compatible server, configured from `AWS_*` |

pub mod no_follow;
mod object;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub use object::ObjectStoreStorage;

/// A storage operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("'{path}' does not exist in {storage}")]
    NotFound { storage: String, path: String },
    #[error("'{path}' already exists in {storage}")]
    AlreadyExists { storage: String, path: String },
    #[error("{storage}: {operation} '{path}' failed: {reason}")]
    Io {
        storage: String,
        operation: &'static str,
        path: String,
        reason: String,
    },
    /// The path leads through a symbolic link or to something that is not a
    /// regular file: never followed or read (see [`no_follow`]).
    #[error("{storage}: '{path}' refused: {reason}")]
    Refused {
        storage: String,
        path: String,
        reason: String,
    },
    #[error("invalid checkpoint storage '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
}

/// Where checkpoint files and metadata are written.
pub trait CheckpointStorage: Send + Sync {
    /// A short description for messages, e.g. `file:///tmp/chk` or `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// Writes a whole object (replacing any object of that path).
    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError>;
    /// Writes a whole object only if none exists at `path`, atomically: readers see
    /// either nothing or all of it. Used for `_metadata`, which publishes a
    /// checkpoint.
    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError>;
    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError>;
    /// The size of the object at `path`, `None` if there is none. The default
    /// reads the whole object; implementations ask the store for its metadata.
    fn size(&self, path: &str) -> Result<Option<u64>, StorageError> {
        match self.get(path) {
            Ok(bytes) => Ok(Some(bytes.len() as u64)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Where the object at `path` lies on this machine's file system, if the
    /// storage is a local directory (restore then links instead of copying).
    fn local_path(&self, _path: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// Paths of all objects under `prefix` (recursively), in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Deletes one object; deleting a missing object is not an error.
    fn delete(&self, path: &str) -> Result<(), StorageError>;
    /// Deletes every object under `prefix`.
    fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        for path in self.list(prefix)? {
            self.delete(&path)?;
        }
        Ok(())
    }
}

/// Shared handle to a storage.
pub type SharedStorage = Arc<dyn CheckpointStorage>;

/// What [`open_storage`] accepts, for error messages.
const ACCEPTED: &str = "expected a directory path, file:///absolute/path, memory://, memory://NAME, s3://bucket or s3://bucket/prefix";

/// Opens the checkpoint storage named by `url` (the `--checkpoint-dir` value):
///
/// - a plain path (relative paths are resolved against the current directory) or
///   `file:///absolute/path`: a local directory, created if it does not exist. See
///   [`ObjectStoreStorage::local`] for what survives a crash.
/// - `memory://` or `memory://NAME`: memory of this process. Every storage opened
///   with the same NAME (`memory://` is the empty name) within one process sees the
///   same objects, so a job restarted inside the process finds its checkpoints.
///   **Memory storage dies with the process**: nothing survives a crash or exit.
/// - `s3://bucket` or `s3://bucket/prefix`: an S3-compatible object store, every
///   path placed under `prefix`. Configured from the usual AWS environment:
///   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
///   `AWS_REGION` / `AWS_DEFAULT_REGION` (default `us-east-1`), and the endpoint
///   from `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` (default: AWS). Requests are
///   path-style (`http://endpoint/bucket/key`) and plain HTTP is allowed, so local
///   S3-compatible servers work. See [`ObjectStoreStorage::s3`].
///
/// Anything else (another scheme, an empty value, `file://` with a relative path)
/// is a [`StorageError::InvalidUrl`] naming the value and what is accepted.
pub fn open_storage(url: &str) -> Result<SharedStorage, StorageError> {
    let invalid = |reason: String| StorageError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    if url.trim().is_empty() {
        return Err(invalid(format!("it is empty; {ACCEPTED}")));
    }
    if let Some(name) = url.strip_prefix("memory://") {
        let name = name.trim_end_matches('/');
        if name.contains('/') {
            return Err(invalid(format!(
                "a memory storage has a name, not a path; {ACCEPTED}"
            )));
        }
        return Ok(Arc::new(ObjectStoreStorage::memory(name)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("the bucket name is missing; {ACCEPTED}")));
        }
        return ObjectStoreStorage::s3(bucket, prefix)
            .map(|s| Arc::new(s) as SharedStorage)
            .map_err(|e| match e {
                StorageError::InvalidUrl { reason, .. } => invalid(reason),
                other => other,
            });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "a file:// URL needs an absolute path (file:///dir/of/checkpoints); {ACCEPTED}"
            )));
        }
        return open_local(url, FsPath::new(path));
    }
    if let Some(scheme) = url_scheme(url) {
        return Err(invalid(format!(
            "unsupported scheme '{scheme}://'; {ACCEPTED}"
        )));
    }
    open_local(url, FsPath::new(url))
}

fn open_local(url: &str, path: &FsPath) -> Result<SharedStorage, StorageError> {
    let absolute: PathBuf = std::path::absolute(path).map_err(|e| StorageError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("cannot resolve the path: {e}"),
    })?;
    Ok(Arc::new(ObjectStoreStorage::local(&absolute)?))
}

/// The scheme of a `scheme://...` value, if it looks like one.
fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_and_malformed_urls() {
        for url in [
            "",
            "  ",
            "gs://bucket/x",
            "http://host/x",
            "s3a://bucket",
            "s3://",
            "s3:///prefix",
            "file://relative/dir",
            "memory://a/b",
        ] {
            match open_storage(url) {
                Err(StorageError::InvalidUrl { url: named, reason }) => {
                    assert_eq!(named, url);
                    assert!(reason.contains("s3://bucket/prefix"), "{reason}");
                }
                Err(e) => panic!("{url:?}: unexpected error {e}"),
                Ok(s) => panic!("{url:?}: accepted as {}", s.describe()),
            }
        }
    }

    #[test]
    fn scheme_detection() {
        assert_eq!(url_scheme("s3://b"), Some("s3"));
        assert_eq!(url_scheme("git+ssh://x"), Some("git+ssh"));
        assert_eq!(url_scheme("/tmp/a://b"), None);
        assert_eq!(url_scheme("dir/x"), None);
    }
}
