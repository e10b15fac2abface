//! Checkpoint storage: a flat namespace of immutable objects addressed by
//! '/'-separated paths relative to the storage root.
//!
//! The trait is blocking: it is called from snapshot upload threads and from the
//! coordinator, never from a task's data path.

use std::sync::Arc;

use thiserror::Error;

/// A storage operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("'{path}' does not exist in {storage}")]
    NotFound { storage: String, path: String },
    #[error("'{path}' already exists in {storage}")]
    AlreadyExists { storage: String, path: String },
    #[error("{storage}: {operation} '{path}' failed: {reason}")]
    Io { storage: String, operation: &'static str, path: String, reason: String },
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
