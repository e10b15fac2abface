//! [`CheckpointStorage`] over an [`object_store::ObjectStore`]: local directories,
//! process memory and S3-compatible servers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use super::no_follow::{self, Expect, Refusal};
use super::{CheckpointStorage, ObjectWriter, StorageError, range_outside};

/// Size of the parts of a streamed object ([`CheckpointStorage::put_streaming`]):
/// what a writer holds at most besides its caller's piece. S3 wants at least
/// 5 MiB per part but the last.
pub const STREAM_PART_BYTES: usize = 8 << 20;

/// A [`CheckpointStorage`] over any [`ObjectStore`], with every path placed
/// under a fixed prefix.
///
/// The trait is blocking and this type is called from several threads at once:
/// each call is spawned onto one process-wide tokio runtime (two worker threads,
/// named `flowstate-storage`) and the calling thread waits for it. Calls never
/// need a runtime of the caller's, and a caller that happens to run inside
/// another tokio runtime does not panic (it only blocks that thread).
///
/// Paths are '/'-separated and relative; empty segments, `.` and `..` are
/// refused. A `prefix` given to [`list`](CheckpointStorage::list) and
/// [`delete_prefix`](CheckpointStorage::delete_prefix) is a directory: `a/b`
/// and `a/b/` both cover `a/b/...`, never `a/bc`.
pub struct ObjectStoreStorage {
    store: Arc<dyn ObjectStore>,
    /// Store used by `put_if_absent` (differs from `store` only to fsync local metadata).
    publish_store: Arc<dyn ObjectStore>,
    /// Prefix inside the store, without leading or trailing '/'; empty for the root.
    prefix: String,
    description: String,
    /// The directory of a local store.
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ObjectStoreStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreStorage")
            .field("storage", &self.description)
            .finish()
    }
}

impl ObjectStoreStorage {
    /// A storage over `store`, every path placed under `prefix` (may be empty).
    /// `description` names it in messages. `put_if_absent` relies on the store
    /// supporting `PutMode::Create` atomically.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        description: impl Into<String>,
    ) -> Result<Self, StorageError> {
        let description = description.into();
        let prefix = prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            Path::parse(&prefix).map_err(|e| StorageError::InvalidUrl {
                url: description.clone(),
                reason: format!("invalid prefix '{prefix}': {e}"),
            })?;
        }
        Ok(Self {
            publish_store: store.clone(),
            store,
            prefix,
            description,
            local_root: None,
        })
    }

    /// A local directory (created if missing), described as `file://<dir>`.
    ///
    /// Every write goes to a staging file that is then renamed (`put`) or
    /// hard-linked (`put_if_absent`, which fails if the target exists) into
    /// place, so readers see whole files only and a killed process leaves no
    /// half-written object (at most an ignored `name#N` staging file).
    ///
    /// Durability: `object_store` does not fsync by default. Task files written
    /// with `put` are not fsynced: they survive a killed process but not
    /// necessarily a power loss or kernel crash. The metadata written with
    /// `put_if_absent` — the write that publishes a checkpoint — is fsynced
    /// together with its directory before it returns. After a power loss the
    /// newest published checkpoint can therefore reference a task file that did
    /// not reach the disk; restore verifies every file's checksum and falls
    /// back to an older retained checkpoint in that case.
    ///
    /// Deleting the last object of a directory removes the emptied directories.
    ///
    /// Symbolic links are never followed below `dir` (see
    /// [`super::no_follow`]): a listing reports a link as an object, deleting
    /// it removes the link and never its target, and reading, sizing or
    /// writing through a link, or reading anything but a regular file, is
    /// [`StorageError::Refused`]. (`dir` itself may be a link.)
    pub fn local(dir: &std::path::Path) -> Result<Self, StorageError> {
        let description = format!("file://{}", dir.display());
        let invalid = |reason: String| StorageError::InvalidUrl {
            url: description.clone(),
            reason,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid(format!("cannot create directory {}: {e}", dir.display())))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| {
                invalid(format!(
                    "cannot open directory {}: {}",
                    dir.display(),
                    error_chain(&e)
                ))
            })?
            .with_automatic_cleanup(true);
        let publish = fs.clone().with_fsync(true);
        let local_root = std::fs::canonicalize(dir)
            .map_err(|e| invalid(format!("cannot resolve {}: {e}", dir.display())))?;
        let mut storage = Self::new(Arc::new(fs), "", description)?;
        storage.publish_store = Arc::new(publish);
        storage.local_root = Some(local_root);
        Ok(storage)
    }

    /// Memory of this process, shared by every storage of the same `name`
    /// (`""` for `memory://`), described as `memory://<name>`. Its objects live
    /// as long as the process: they are gone after a crash or an exit.
    pub fn memory(name: &str) -> Self {
        static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
        let store = STORES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(InMemory::new()))
            .clone();
        Self::new(store, "", format!("memory://{name}")).expect("an empty prefix is valid")
    }

    /// An S3 bucket on AWS or any S3-compatible server, every path placed under
    /// `prefix`, described as `s3://bucket/prefix`.
    ///
    /// Configuration comes from the environment ([`AmazonS3Builder::from_env`]:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...);
    /// the endpoint from `AWS_ENDPOINT_URL`, else `AWS_ENDPOINT` (default: AWS);
    /// the region from `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    /// Requests are path-style and plain `http://` endpoints are allowed, which
    /// local S3-compatible servers need. Failed requests are retried for at most
    /// 30 seconds.
    ///
    /// `put_if_absent` is a conditional PUT with `If-None-Match: *`; an existing
    /// object makes the server answer 412, reported as
    /// [`StorageError::AlreadyExists`]. Every PUT is all-or-nothing for readers.
    /// How far the create-if-absent is *exclusive* depends on the server:
    ///
    /// - AWS S3 (conditional writes, since August 2024) evaluates the condition
    ///   atomically: of simultaneous writers exactly one succeeds, the others get
    ///   412. Other S3-compatible servers vary.
    /// - s3s-fs 0.14.1, the server CI runs, checks that the object exists and
    ///   then writes it (temporary file + rename), not atomically: a PUT onto an
    ///   existing object is refused, but two writers racing for the same new
    ///   object can both succeed and the last rename wins. Readers still see one
    ///   complete object.
    ///
    /// This is safe for checkpoints either way: `_metadata` of a job is written
    /// by its coordinator only, once per checkpoint id, so there is no second
    /// writer to race with; what completion needs is that the metadata appears
    /// whole or not at all, which every server here provides. (A HEAD-then-PUT
    /// fallback would have the same race window, so none is used.)
    pub fn s3(bucket: &str, prefix: &str) -> Result<Self, StorageError> {
        let prefix = prefix.trim_matches('/');
        let description = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            });
        let endpoint = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT"));
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder.build().map_err(|e| StorageError::InvalidUrl {
            url: description.clone(),
            reason: format!(
                "cannot configure S3 from the AWS_* environment: {}",
                error_chain(&e)
            ),
        })?;
        let shown = match &endpoint {
            Some(endpoint) => format!("{description} (endpoint {endpoint})"),
            None => description,
        };
        Self::new(Arc::new(store), prefix, shown)
    }

    /// The store path of a caller's relative `path`.
    fn location(&self, operation: &'static str, path: &str) -> Result<Path, StorageError> {
        let relative = path.trim_matches('/');
        let full = match (self.prefix.is_empty(), relative.is_empty()) {
            (true, _) => relative.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{relative}", self.prefix),
        };
        Path::parse(&full).map_err(|e| self.io(operation, path, format!("invalid path: {e}")))
    }

    /// The caller's relative path of a store location under the prefix.
    fn relative(&self, location: &Path) -> Option<String> {
        let raw: &str = location.as_ref();
        if self.prefix.is_empty() {
            return Some(raw.to_owned());
        }
        raw.strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')
            .map(str::to_owned)
    }

    /// For a local directory: checks `path` without following links.
    fn check_local(
        &self,
        operation: &'static str,
        path: &str,
        expect: Expect,
    ) -> Result<(), StorageError> {
        match &self.local_root {
            Some(root) => no_follow::check(root, path, expect)
                .map_err(|refusal| self.refused(operation, path, refusal)),
            None => Ok(()),
        }
    }

    fn refused(&self, operation: &'static str, path: &str, refusal: Refusal) -> StorageError {
        match refusal {
            Refusal::Io(e) => self.io(operation, path, e.to_string()),
            other => StorageError::Refused {
                storage: self.description.clone(),
                path: path.to_owned(),
                reason: other.to_string(),
            },
        }
    }

    fn io(&self, operation: &'static str, path: &str, reason: String) -> StorageError {
        StorageError::Io {
            storage: self.description.clone(),
            operation,
            path: path.to_owned(),
            reason,
        }
    }

    fn error(
        &self,
        operation: &'static str,
        path: &str,
        error: object_store::Error,
    ) -> StorageError {
        match error {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                storage: self.description.clone(),
                path: path.to_owned(),
            },
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists {
                storage: self.description.clone(),
                path: path.to_owned(),
            },
            other => self.io(operation, path, error_chain(&other)),
        }
    }

    fn put_with(
        &self,
        operation: &'static str,
        path: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let location = self.location(operation, path)?;
        self.check_local(operation, path, Expect::ParentsOnly)?;
        let store = if mode == PutMode::Create {
            self.publish_store.clone()
        } else {
            self.store.clone()
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        block_on(async move {
            store
                .put_opts(&location, PutPayload::from(bytes), options)
                .await
        })
        .map(drop)
        .map_err(|e| self.error(operation, path, e))
    }
}

impl CheckpointStorage for ObjectStoreStorage {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn local_path(&self, path: &str) -> Option<std::path::PathBuf> {
        // Only plain relative paths map onto the directory.
        let plain = !path.is_empty()
            && !path.starts_with('/')
            && path
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..");
        let root = self.local_root.as_ref().filter(|_| plain)?;
        // A link or special file is not handed out to be linked or opened.
        no_follow::check(root, path, Expect::RegularFile).ok()?;
        Some(root.join(path))
    }

    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.put_with("put", path, bytes, PutMode::Overwrite)
    }

    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.put_with("put_if_absent", path, bytes, PutMode::Create)
    }

    /// A local directory: straight into a staging file renamed into place at
    /// the end ([`super::local_writer`]). Elsewhere objects of at most
    /// [`STREAM_PART_BYTES`] are one `put`; larger ones a multipart upload
    /// (S3: parts of that size; memory: the parts joined at the end), one
    /// part in flight at a time.
    fn put_streaming<'a>(&'a self, path: &str) -> Result<Box<dyn ObjectWriter + 'a>, StorageError> {
        self.location("put", path)?;
        self.check_local("put", path, Expect::ParentsOnly)?;
        if let Some(root) = &self.local_root {
            return Ok(Box::new(super::local_writer::LocalFileWriter::create(
                root,
                path,
                &self.description,
            )?));
        }
        Ok(Box::new(MultipartWriter {
            storage: self,
            path: path.to_owned(),
            upload: None,
            buffer: Vec::new(),
        }))
    }

    /// A ranged `GET` (a seek and read for local directories).
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let location = self.location("get_range", path)?;
        self.check_local("get_range", path, Expect::RegularFile)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| range_outside(&self.description, path, offset, len, u64::MAX))?;
        if len == 0 {
            return match self.size(path)? {
                Some(size) if offset <= size => Ok(Vec::new()),
                Some(size) => Err(range_outside(&self.description, path, offset, len, size)),
                None => Err(StorageError::NotFound {
                    storage: self.description.clone(),
                    path: path.to_owned(),
                }),
            };
        }
        let store = self.store.clone();
        let bytes = block_on(async move { store.get_range(&location, offset..end).await })
            .map_err(|e| self.error("get_range", path, e))?;
        if bytes.len() as u64 != len {
            let size = self.size(path)?.unwrap_or(0);
            return Err(range_outside(&self.description, path, offset, len, size));
        }
        Ok(Vec::from(bytes))
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        let location = self.location("get", path)?;
        self.check_local("get", path, Expect::RegularFile)?;
        let store = self.store.clone();
        block_on(async move { store.get(&location).await?.bytes().await })
            .map(Vec::from)
            .map_err(|e| self.error("get", path, e))
    }

    /// One `HEAD` request (a `stat` for local directories).
    fn size(&self, path: &str) -> Result<Option<u64>, StorageError> {
        let location = self.location("size", path)?;
        self.check_local("size", path, Expect::RegularFile)?;
        let store = self.store.clone();
        match block_on(async move { store.head(&location).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("size", path, e)),
        }
    }

    /// Local directories are walked without following links (see
    /// [`super::no_follow`]); a link is listed as an object of its own.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let location = self.location("list", prefix)?;
        if let Some(root) = &self.local_root {
            return no_follow::list(root, prefix)
                .map(|entries| entries.into_iter().map(|e| e.relative).collect())
                .map_err(|refusal| self.refused("list", prefix, refusal));
        }
        let store = self.store.clone();
        let found: Vec<Path> = block_on(async move {
            let root = (!location.as_ref().is_empty()).then_some(&location);
            store
                .list(root)
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
        })
        .map_err(|e| self.error("list", prefix, e))?;
        found
            .iter()
            .map(|location| {
                self.relative(location).ok_or_else(|| {
                    self.io(
                        "list",
                        prefix,
                        format!("the store listed '{location}', outside '{}'", self.prefix),
                    )
                })
            })
            .collect()
    }

    fn delete(&self, path: &str) -> Result<(), StorageError> {
        let location = self.location("delete", path)?;
        if let Some(root) = &self.local_root {
            return no_follow::remove(root, path)
                .map_err(|refusal| self.refused("delete", path, refusal));
        }
        let store = self.store.clone();
        match block_on(async move { store.delete(&location).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }

    /// Lists, then deletes in batches (one `DeleteObjects` request per 1000
    /// objects on S3). Objects that vanished meanwhile are not an error.
    /// A local directory: its entries one by one, links removed as links.
    fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let location = self.location("delete_prefix", prefix)?;
        if let Some(root) = &self.local_root {
            let entries = no_follow::list(root, prefix)
                .map_err(|refusal| self.refused("delete_prefix", prefix, refusal))?;
            for entry in entries {
                no_follow::remove(root, &entry.relative)
                    .map_err(|refusal| self.refused("delete_prefix", &entry.relative, refusal))?;
            }
            return Ok(());
        }
        let store = self.store.clone();
        block_on(async move {
            let root = (!location.as_ref().is_empty()).then_some(&location);
            let paths = store.list(root).map_ok(|meta| meta.location).boxed();
            let mut deleted = store.delete_stream(paths);
            while let Some(result) = deleted.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .map_err(|e| self.error("delete_prefix", prefix, e))
    }
}

/// [`ObjectStoreStorage::put_streaming`]'s writer: a buffer of at most
/// [`STREAM_PART_BYTES`]; the multipart upload starts when it first fills.
struct MultipartWriter<'a> {
    storage: &'a ObjectStoreStorage,
    path: String,
    upload: Option<Box<dyn MultipartUpload>>,
    buffer: Vec<u8>,
}

impl MultipartWriter<'_> {
    /// Uploads the buffer as the next part (starting the upload first).
    fn send_part(&mut self) -> Result<(), StorageError> {
        let storage = self.storage;
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let location = storage.location("put", &self.path)?;
                let store = storage.store.clone();
                let upload = block_on(async move { store.put_multipart(&location).await })
                    .map_err(|e| storage.error("put", &self.path, e))?;
                self.upload.insert(upload)
            }
        };
        let part = upload.put_part(PutPayload::from(std::mem::take(&mut self.buffer)));
        block_on(part).map_err(|e| storage.error("put", &self.path, e))
    }
}

impl ObjectWriter for MultipartWriter<'_> {
    fn write(&mut self, mut bytes: &[u8]) -> Result<(), StorageError> {
        while !bytes.is_empty() {
            if self.buffer.capacity() == 0 {
                self.buffer
                    .reserve_exact(STREAM_PART_BYTES.min(bytes.len().max(64 << 10)));
            }
            let take = (STREAM_PART_BYTES - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() == STREAM_PART_BYTES {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        if self.upload.is_none() {
            // Small: one put, as `put` would have done.
            let bytes = std::mem::take(&mut self.buffer);
            return self.storage.put(&self.path, bytes);
        }
        if !self.buffer.is_empty() {
            self.send_part()?;
        }
        let Some(mut upload) = self.upload.take() else {
            unreachable!("checked above")
        };
        let storage = self.storage;
        block_on(async move { upload.complete().await })
            .map(drop)
            .map_err(|e| storage.error("put", &self.path, e))
    }

    fn abort(self: Box<Self>) {
        // Dropping aborts.
    }
}

impl Drop for MultipartWriter<'_> {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            // Best effort, not waited for: S3 drops the parts, a local
            // directory its staging file.
            drop(runtime().spawn(async move {
                let _ = upload.abort().await;
            }));
        }
    }
}

/// The process-wide runtime that carries out storage calls.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flowstate-storage")
            .on_thread_start(crate::background::mark_current_thread)
            .enable_all()
            .build()
            .expect("cannot start the checkpoint storage runtime")
    })
}

/// Runs `future` on the storage runtime and waits for it on the calling thread.
/// Safe from any number of threads at once, and from inside another runtime.
fn block_on<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    let task = runtime().spawn(future);
    match futures::executor::block_on(task) {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("checkpoint storage task did not finish: {e}"),
    }
}

/// An error and its sources, `: `-separated, without repeating a source that the
/// message already contains.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
