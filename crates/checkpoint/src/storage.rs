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
//!
//! [`Location`] is the one place that decides whether such a value (or a
//! `--restore` value, or a savepoint target) is a URL or a path on this
//! machine; every other crate asks it rather than looking for `://` itself.

mod local_writer;
pub mod no_follow;
mod object;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub use object::{ObjectStoreStorage, STREAM_PART_BYTES};

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
    /// Starts writing the object at `path` piece by piece
    /// ([`ObjectWriter::write`]), so that an object larger than memory can
    /// be written in bounded memory. Like [`put`](Self::put) it replaces any
    /// object of that path, and readers see the whole object or none: nothing
    /// is published before [`ObjectWriter::finish`]; a writer dropped or
    /// aborted before publishes nothing.
    ///
    /// The default collects the pieces and `put`s them at the end (bounded
    /// by nothing): storages that can stream override it.
    fn put_streaming<'a>(&'a self, path: &str) -> Result<Box<dyn ObjectWriter + 'a>, StorageError> {
        Ok(Box::new(BufferedWriter {
            storage: self,
            path: path.to_owned(),
            bytes: Vec::new(),
        }))
    }
    /// `len` bytes of the object at `path` from byte `offset`. A range that
    /// does not lie within the object is an error ([`StorageError::Io`]
    /// naming the range), never a shorter answer. The default reads the
    /// whole object; implementations read only the range.
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let bytes = self.get(path)?;
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= bytes.len());
        match range {
            Some(range) => Ok(bytes[range].to_vec()),
            None => Err(range_outside(
                &self.describe(),
                path,
                offset,
                len,
                bytes.len() as u64,
            )),
        }
    }
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

/// An object being written piece by piece ([`CheckpointStorage::put_streaming`]).
pub trait ObjectWriter: Send {
    /// Appends `bytes` to the object.
    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError>;
    /// Publishes the object: from now on readers see all of it.
    fn finish(self: Box<Self>) -> Result<(), StorageError>;
    /// Abandons the object: nothing is published, what was staged is removed
    /// (best effort). Dropping an unfinished writer does the same.
    fn abort(self: Box<Self>);
}

/// The error of a range outside an object of `size` bytes.
pub(crate) fn range_outside(
    storage: &str,
    path: &str,
    offset: u64,
    len: u64,
    size: u64,
) -> StorageError {
    StorageError::Io {
        storage: storage.to_owned(),
        operation: "get_range",
        path: path.to_owned(),
        reason: format!("bytes {offset}..+{len} lie outside the object of {size} bytes"),
    }
}

/// [`CheckpointStorage::put_streaming`]'s default: the pieces collected,
/// then one `put`.
struct BufferedWriter<'a, S: ?Sized> {
    storage: &'a S,
    path: String,
    bytes: Vec<u8>,
}

impl<S: CheckpointStorage + ?Sized> ObjectWriter for BufferedWriter<'_, S> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), StorageError> {
        self.storage.put(&self.path, self.bytes)
    }

    fn abort(self: Box<Self>) {}
}

/// What a storage location names, by its form alone: a path on this machine,
/// a `file://` URL (also a path on this machine), or a URL of another scheme.
/// Nothing is opened or checked on disk.
///
/// A value is a URL only if it starts with a scheme (a letter, then letters,
/// digits, `+`, `-` or `.`) and `://`: `/tmp/a://b` and `1x://y` are paths,
/// as [`open_storage`] treats them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location<'a> {
    /// A plain path, as given (relative or absolute).
    Path(&'a str),
    /// A `file://` URL: the path after `file://` and an optional `localhost`
    /// host (RFC 8089), as given; an absolute path unless the URL is malformed.
    FileUrl(&'a str),
    /// Another scheme (`s3`, `memory`, or one this build does not know):
    /// `rest` is everything after `scheme://`.
    Url { scheme: &'a str, rest: &'a str },
}

impl<'a> Location<'a> {
    pub fn parse(value: &'a str) -> Location<'a> {
        if let Some(rest) = value.strip_prefix("file://") {
            return Location::FileUrl(rest.strip_prefix("localhost").unwrap_or(rest));
        }
        match url_scheme(value) {
            Some(scheme) => Location::Url {
                scheme,
                rest: &value[scheme.len() + "://".len()..],
            },
            None => Location::Path(value),
        }
    }

    /// The path on this machine: a plain path or a `file://` URL's path;
    /// `None` for any other URL.
    pub fn local_path(self) -> Option<&'a str> {
        match self {
            Location::Path(path) | Location::FileUrl(path) => Some(path),
            Location::Url { .. } => None,
        }
    }

    /// A URL (of any scheme but `file`): not a path on this machine.
    pub fn is_url(self) -> bool {
        matches!(self, Location::Url { .. })
    }

    /// A plain path (not written as a URL): the form that a process may make
    /// absolute against its working directory before handing it on.
    pub fn is_plain_path(self) -> bool {
        matches!(self, Location::Path(_))
    }
}

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
    match Location::parse(url) {
        Location::Url {
            scheme: "memory",
            rest: name,
        } => {
            let name = name.trim_end_matches('/');
            if name.contains('/') {
                return Err(invalid(format!(
                    "a memory storage has a name, not a path; {ACCEPTED}"
                )));
            }
            Ok(Arc::new(ObjectStoreStorage::memory(name)))
        }
        Location::Url { scheme: "s3", rest } => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid(format!("the bucket name is missing; {ACCEPTED}")));
            }
            ObjectStoreStorage::s3(bucket, prefix)
                .map(|s| Arc::new(s) as SharedStorage)
                .map_err(|e| match e {
                    StorageError::InvalidUrl { reason, .. } => invalid(reason),
                    other => other,
                })
        }
        Location::Url { scheme, .. } => Err(invalid(format!(
            "unsupported scheme '{scheme}://'; {ACCEPTED}"
        ))),
        Location::FileUrl(path) if !path.starts_with('/') => Err(invalid(format!(
            "a file:// URL needs an absolute path (file:///dir/of/checkpoints); {ACCEPTED}"
        ))),
        Location::FileUrl(path) | Location::Path(path) => open_local(url, FsPath::new(path)),
    }
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
    fn locations_are_paths_file_urls_or_urls() {
        for (value, expected) in [
            ("/abs/dir", Location::Path("/abs/dir")),
            ("rel/dir", Location::Path("rel/dir")),
            ("", Location::Path("")),
            // Not a scheme: a path that happens to hold `://`.
            ("/tmp/a://b", Location::Path("/tmp/a://b")),
            ("1x://y", Location::Path("1x://y")),
            ("file:///abs/dir", Location::FileUrl("/abs/dir")),
            ("file://localhost/abs", Location::FileUrl("/abs")),
            ("file://rel", Location::FileUrl("rel")),
            (
                "s3://bucket/prefix",
                Location::Url {
                    scheme: "s3",
                    rest: "bucket/prefix",
                },
            ),
            (
                "memory://",
                Location::Url {
                    scheme: "memory",
                    rest: "",
                },
            ),
            (
                "gs://b",
                Location::Url {
                    scheme: "gs",
                    rest: "b",
                },
            ),
        ] {
            let location = Location::parse(value);
            assert_eq!(location, expected, "{value:?}");
            assert_eq!(location.is_url(), matches!(expected, Location::Url { .. }));
            assert_eq!(
                location.is_plain_path(),
                matches!(expected, Location::Path(_))
            );
            assert_eq!(location.local_path().is_none(), location.is_url());
        }
    }

    #[test]
    fn a_path_holding_a_scheme_separator_opens_as_a_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let odd = format!("{}/a://b", dir.path().display());
        let storage = open_storage(&odd).unwrap();
        assert!(storage.local_path("x").is_some(), "{}", storage.describe());
    }

    #[test]
    fn scheme_detection() {
        assert_eq!(url_scheme("s3://b"), Some("s3"));
        assert_eq!(url_scheme("git+ssh://x"), Some("git+ssh"));
        assert_eq!(url_scheme("/tmp/a://b"), None);
        assert_eq!(url_scheme("dir/x"), None);
    }
}
