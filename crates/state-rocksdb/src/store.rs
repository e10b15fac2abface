//! One operator instance's RocksDB: columns, native snapshots, restore.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flowstate_state::native::{
    NativeFile, NativeRestore, NativeSnapshot, StoredFile, UploadReceipt,
};
use flowstate_state::serialized::{
    KvBatch, KvColumn, KvStore, ScanFn, StoreSnapshot, key_group_prefix,
};
use flowstate_state::{BackendKind, KeyGroupRange, PrepareFiles, SnapshotRequest, StateError};

use crate::cache::{CachedColumn, CaptureToken, Cf, ColumnCache, Shared, SnapshotView, lock};
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, MergeOperands, Options,
    ReadOptions, WriteBatch, WriteOptions,
};

pub(crate) type Db = rocksdb::DBWithThreadMode<rocksdb::MultiThreaded>;

pub(crate) const BACKEND: &str = "rocksdb";
/// The end of every key: key groups are below 32768, so first bytes are < 0x80.
const END_OF_KEYS: &[u8] = &[0xFF];
/// Flush a rebuild batch at this many bytes (a limit on memory while restoring).
const REBUILD_BATCH_BYTES_MAX: usize = 8 << 20;

/// Maps a RocksDB or I/O error of `action` to the backend's error.
pub(crate) fn failed<E: std::fmt::Display>(
    action: impl std::fmt::Display,
) -> impl FnOnce(E) -> StateError {
    move |e| StateError::Backend {
        backend: BACKEND,
        action: action.to_string(),
        reason: e.to_string(),
    }
}

/// List state appends are merges: the value is the concatenation of operands.
fn append_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut out = existing.map(<[u8]>::to_vec).unwrap_or_default();
    for operand in operands {
        out.extend_from_slice(operand);
    }
    Some(out)
}

/// A database and the directory it lives in; closing removes the directory.
pub(crate) struct OpenDb {
    db: Option<Db>,
    dir: PathBuf,
}

impl OpenDb {
    pub(crate) fn db(&self) -> &Db {
        match &self.db {
            Some(db) => db,
            None => unreachable!("the database is taken only when dropped"),
        }
    }
}

impl Drop for OpenDb {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            // The instance directory goes with the last of its contents.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Removes a local snapshot directory once nobody needs it.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            // The instance directory goes with its last snapshot (if the store
            // closed already).
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Files of a checkpoint in flight: reused ones are known now, new ones when
/// the uploader has put them.
struct Pending {
    /// Filled when the files are listed (in the asynchronous part).
    reused: Arc<Mutex<Vec<(String, StoredFile)>>>,
    receipt: Arc<UploadReceipt>,
}

/// The RocksDB of one operator instance.
pub struct RocksDbStore {
    dir: PathBuf,
    range: KeyGroupRange,
    db: Arc<OpenDb>,
    db_options: Options,
    cf_options: Options,
    incremental: bool,
    /// SST files of the last completed checkpoint, by name: later checkpoints
    /// reference them instead of uploading them again.
    confirmed: HashMap<String, StoredFile>,
    pending: BTreeMap<u64, Pending>,
    nonce: AtomicU64,
    /// Epochs of the write-back cache, shared with columns and snapshots.
    shared: Arc<Shared>,
    /// The cached (value-like) columns, by name.
    cached: Vec<(Arc<Cf>, Arc<Mutex<ColumnCache>>)>,
    /// Bytes each cached column keeps in memory (0: no cache).
    cache_bytes: usize,
    /// A column of another kind (list, map) is open: its writes go straight
    /// to the database, so native snapshots are captured in the synchronous
    /// part.
    uncached: bool,
}

impl RocksDbStore {
    pub(crate) fn open(
        dir: PathBuf,
        range: KeyGroupRange,
        options: &crate::RocksDbOptions,
        cache: &rocksdb::Cache,
    ) -> Result<Self, StateError> {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&table);
        cf_options.set_write_buffer_size(options.write_buffer_bytes as usize);
        cf_options.set_max_write_buffer_number(2);
        cf_options.set_compression_type(DBCompressionType::Lz4);
        cf_options.set_merge_operator_associative("flowstate.append", append_merge);

        let mut db_options = cf_options.clone();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        // Every column family flushes at a checkpoint, together.
        db_options.set_atomic_flush(true);
        db_options.set_db_write_buffer_size(2 * options.write_buffer_bytes as usize);
        db_options.set_max_background_jobs(2);
        // Open table files on the calling thread: the default (16) starts
        // up to 15 threads, with 8 MiB stacks each, after every flush, which
        // a 2-core machine gains nothing from.
        db_options.set_max_file_opening_threads(1);
        db_options.set_keep_log_file_num(2);
        db_options.set_max_log_file_size(1 << 20);

        std::fs::create_dir_all(&dir).map_err(failed(format!("create {}", dir.display())))?;
        let db_dir = dir.join("db");
        let db = Self::open_db(&db_options, &cf_options, &db_dir, &["default".to_owned()])?;
        Ok(Self {
            dir,
            range,
            db: Arc::new(db),
            db_options,
            cf_options,
            incremental: options.incremental,
            confirmed: HashMap::new(),
            pending: BTreeMap::new(),
            nonce: AtomicU64::new(0),
            shared: Shared::new(),
            cached: Vec::new(),
            cache_bytes: options.cache_bytes as usize,
            uncached: false,
        })
    }

    fn open_db(
        db_options: &Options,
        cf_options: &Options,
        dir: &Path,
        columns: &[String],
    ) -> Result<OpenDb, StateError> {
        let descriptors = columns
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
        let db = Db::open_cf_descriptors(db_options, dir, descriptors)
            .map_err(failed(format!("open {}", dir.display())))?;
        Ok(OpenDb {
            db: Some(db),
            dir: dir.to_owned(),
        })
    }

    fn next_nonce(&self) -> u64 {
        self.nonce.fetch_add(1, Ordering::Relaxed)
    }

    /// Copies every file of `restore` into `dir` (verified by the fetcher).
    fn fetch_all(restore: &NativeRestore, dir: &Path) -> Result<(), StateError> {
        std::fs::create_dir_all(dir).map_err(failed(format!("create {}", dir.display())))?;
        for (name, stored) in &restore.files {
            if name.contains('/') || name.contains("..") {
                return Err(StateError::CorruptSnapshot(format!(
                    "native file name '{name}' is not a plain file name"
                )));
            }
            restore
                .fetcher
                .fetch(stored, &dir.join(name), name.ends_with(".sst"))?;
        }
        Ok(())
    }

    fn columns_of(&self, dir: &Path) -> Result<Vec<String>, StateError> {
        Db::list_cf(&self.db_options, dir).map_err(failed(format!(
            "list the column families of {}",
            dir.display()
        )))
    }

    /// Copies the key groups of `self.range` that `other` holds into `db`.
    fn copy_overlap(&self, db: &Db, other: &NativeRestore, dir: &Path) -> Result<(), StateError> {
        Self::fetch_all(other, dir)?;
        let columns = self.columns_of(dir)?;
        let descriptors = columns
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, self.cf_options.clone()));
        let source = Db::open_cf_descriptors_read_only(&self.db_options, dir, descriptors, false)
            .map_err(failed(format!("open {} read-only", dir.display())))?;
        let start = key_group_prefix(self.range.start.max(other.range.start));
        let end = key_group_prefix(self.range.end.min(other.range.end));
        let write = unlogged();
        for column in &columns {
            let Some(from) = source.cf_handle(column) else {
                continue;
            };
            if db.cf_handle(column).is_none() {
                db.create_cf(column, &self.cf_options)
                    .map_err(failed(format!("create column family {column}")))?;
            }
            let Some(to) = db.cf_handle(column) else {
                continue;
            };
            let mut read = ReadOptions::default();
            read.set_iterate_upper_bound(end.to_vec());
            read.fill_cache(false);
            let mut iter = source.raw_iterator_cf_opt(&from, read);
            iter.seek(start);
            let mut batch = WriteBatch::default();
            while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
                batch.put_cf(&to, k, v);
                if batch.size_in_bytes() >= REBUILD_BATCH_BYTES_MAX {
                    db.write_opt(std::mem::take(&mut batch), &write)
                        .map_err(failed("write restored state"))?;
                }
                iter.next();
            }
            iter.status()
                .map_err(failed(format!("read {}", dir.display())))?;
            db.write_opt(batch, &write)
                .map_err(failed("write restored state"))?;
        }
        drop(source);
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }

    /// Pair assertion: after a rescaling restore nothing outside the range is
    /// visible.
    fn check_range(&self, db: &Db) -> Result<(), StateError> {
        let columns = self.columns_of(&self.db.dir)?;
        for column in columns {
            let Some(cf) = db.cf_handle(&column) else {
                continue;
            };
            for (start, end) in [
                (vec![0u8, 0], key_group_prefix(self.range.start).to_vec()),
                (
                    key_group_prefix(self.range.end).to_vec(),
                    END_OF_KEYS.to_vec(),
                ),
            ] {
                let mut read = ReadOptions::default();
                read.set_iterate_upper_bound(end);
                let mut iter = db.raw_iterator_cf_opt(&cf, read);
                iter.seek(&start);
                if iter.valid() {
                    return Err(StateError::CorruptSnapshot(format!(
                        "column {column} holds a key outside key groups {} after the restore",
                        self.range
                    )));
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn unlogged() -> WriteOptions {
    // State is made durable by checkpoints, not by RocksDB's log.
    let mut write = WriteOptions::default();
    write.disable_wal(true);
    write
}

fn overlap(a: KeyGroupRange, b: KeyGroupRange) -> u32 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

/// One column family without a cache (list and map states, the unclaimed
/// column): every access goes to the database.
struct RocksColumn {
    cf: Cf,
    shared: Arc<Shared>,
    read: ReadOptions,
    write: WriteOptions,
}

impl RocksColumn {
    /// Before a write: a native capture in flight must not see it.
    fn before_write(&self) -> Result<(), StateError> {
        if self.shared.capturing() {
            self.shared.settle()?;
        }
        Ok(())
    }
}

impl KvColumn for RocksColumn {
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        match self
            .cf
            .db()
            .get_pinned_cf_opt(self.cf.handle(), key, &self.read)
            .map_err(failed(format!("read {}", self.cf.name)))?
        {
            Some(value) => {
                out.clear();
                out.extend_from_slice(&value);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.before_write()?;
        self.cf
            .db()
            .put_cf_opt(self.cf.handle(), key, value, &self.write)
            .map_err(failed(format!("write {}", self.cf.name)))
    }

    fn append(&self, key: &[u8], bytes: &[u8]) -> Result<(), StateError> {
        self.before_write()?;
        self.cf
            .db()
            .merge_cf_opt(self.cf.handle(), key, bytes, &self.write)
            .map_err(failed(format!("append to {}", self.cf.name)))
    }

    fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        self.before_write()?;
        self.cf
            .db()
            .delete_cf_opt(self.cf.handle(), key, &self.write)
            .map_err(failed(format!("delete from {}", self.cf.name)))
    }

    fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StateError> {
        self.before_write()?;
        self.cf
            .db()
            .delete_range_cf_opt(self.cf.handle(), start, end, &self.write)
            .map_err(failed(format!("delete a range of {}", self.cf.name)))
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut ScanFn<'_>) -> Result<(), StateError> {
        scan_db(self.cf.db(), self.cf.handle(), &self.cf.name, start, end, f)
    }

    fn write_batch(&self, batch: &KvBatch) -> Result<(), StateError> {
        self.before_write()?;
        let mut write = WriteBatch::default();
        for (k, v) in batch.iter() {
            write.put_cf(self.cf.handle(), k, v);
        }
        self.cf
            .db()
            .write_opt(write, &self.write)
            .map_err(failed(format!("write a batch to {}", self.cf.name)))
    }
}

pub(crate) fn scan_db(
    db: &Db,
    cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
    name: &str,
    start: &[u8],
    end: &[u8],
    f: &mut ScanFn<'_>,
) -> Result<(), StateError> {
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound(end.to_vec());
    let mut iter = db.raw_iterator_cf_opt(cf, read);
    iter.seek(start);
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        if !f(k, v)? {
            return Ok(());
        }
        iter.next();
    }
    iter.status().map_err(failed(format!("scan {name}")))
}

impl RocksDbStore {
    fn create_column(&mut self, name: &str) -> Result<(), StateError> {
        let db = self.db.db();
        if db.cf_handle(name).is_none() {
            db.create_cf(name, &self.cf_options)
                .map_err(failed(format!("create column family {name}")))?;
        }
        Ok(())
    }
}

/// The asynchronous part of a native snapshot: writes the frozen epochs up
/// to its own into the database, takes the RocksDB checkpoint (a flush, then
/// hard links) and lists its files. Consistent because nothing else writes
/// to the database while it is outstanding (see [`crate::cache`]).
struct NativeCapture {
    token: CaptureToken,
    shared: Arc<Shared>,
    db: Arc<OpenDb>,
    seq: u64,
    id: u64,
    dir: Arc<DirGuard>,
    /// The files of the last completed checkpoint when the snapshot began.
    confirmed: HashMap<String, StoredFile>,
    reused: Arc<Mutex<Vec<(String, StoredFile)>>>,
}

impl NativeCapture {
    fn capture(&self) -> Result<Vec<NativeFile>, StateError> {
        let id = self.id;
        {
            let held = self.shared.apply_lock();
            self.shared.apply_through(&held, self.seq)?;
            if self.shared.applied_upto() > self.seq {
                return Err(StateError::Backend {
                    backend: BACKEND,
                    action: format!("take checkpoint {id}"),
                    reason: "a later snapshot was written to the database first".into(),
                });
            }
            // Flushes every memtable (the log is off), then hard-links the files.
            Checkpoint::new(self.db.db())
                .and_then(|c| c.create_checkpoint(&self.dir.0))
                .map_err(failed(format!("take checkpoint {id}")))?;
        }
        let mut files = Vec::new();
        let mut reused = Vec::new();
        let dir = &self.dir.0;
        let entries = std::fs::read_dir(dir).map_err(failed(format!("list {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(failed(format!("list {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let size = entry
                .metadata()
                .map_err(failed(format!("stat {name}")))?
                .len();
            let shareable = name.ends_with(".sst");
            let stored = shareable
                .then(|| self.confirmed.get(&name).cloned())
                .flatten()
                .filter(|s| s.size == size);
            if let Some(stored) = &stored {
                reused.push((name.clone(), stored.clone()));
            }
            files.push(NativeFile {
                name,
                local: entry.path(),
                size,
                stored,
                shareable,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        *lock(&self.reused) = reused;
        Ok(files)
    }
}

impl PrepareFiles for NativeCapture {
    fn files(&self) -> Result<Vec<NativeFile>, StateError> {
        let files = self.capture();
        self.token.finish();
        files
    }
}

impl KvStore for RocksDbStore {
    fn kind(&self) -> BackendKind {
        BackendKind::RocksDb
    }

    /// RocksDB's own estimates (table properties and memtable counters kept
    /// in memory; no read of the data): `rocksdb.estimate-num-keys`, and
    /// `rocksdb.estimate-live-data-size` plus `rocksdb.cur-size-all-mem-tables`;
    /// for a cached column at least the entries the cache holds, plus its bytes.
    fn column_stats(&self, column: &str) -> Option<(u64, u64)> {
        let db = self.db.db();
        let cf = db.cf_handle(column)?;
        let property = |name: &str| {
            db.property_int_value_cf(&cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let mut entries = property("rocksdb.estimate-num-keys");
        let mut bytes = property("rocksdb.estimate-live-data-size")
            + property("rocksdb.cur-size-all-mem-tables");
        // The write-back cache: entries there may be in the database too.
        if let Some((_, cache)) = self.cached.iter().find(|(cf, _)| cf.name == column) {
            let (held, held_bytes) = lock(cache).held();
            entries = entries.max(held);
            bytes += held_bytes;
        }
        Some((entries, bytes))
    }

    fn open_column(&mut self, name: &str) -> Result<Box<dyn KvColumn>, StateError> {
        if self.cached.iter().any(|(cf, _)| cf.name == name) {
            return self.open_value_column(name);
        }
        self.create_column(name)?;
        if !name.starts_with("meta:") {
            self.uncached = true;
        }
        Ok(Box::new(RocksColumn {
            cf: Cf::new(&self.db, name)?,
            shared: Arc::clone(&self.shared),
            read: ReadOptions::default(),
            write: unlogged(),
        }))
    }

    fn open_value_column(&mut self, name: &str) -> Result<Box<dyn KvColumn>, StateError> {
        if self.cache_bytes == 0 {
            return self.open_column(name);
        }
        self.create_column(name)?;
        let (cf, cache) = match self.cached.iter().find(|(cf, _)| cf.name == name) {
            Some((cf, cache)) => (Arc::clone(cf), Arc::clone(cache)),
            None => {
                let entry = (Arc::new(Cf::new(&self.db, name)?), ColumnCache::new());
                self.cached
                    .push((Arc::clone(&entry.0), Arc::clone(&entry.1)));
                entry
            }
        };
        Ok(Box::new(CachedColumn {
            cf,
            cache,
            shared: Arc::clone(&self.shared),
            read: ReadOptions::default(),
            write: unlogged(),
            capacity: self.cache_bytes,
        }))
    }

    /// The synchronous part: freezes the cached columns (constant time per
    /// column) and pins the database (a RocksDB snapshot) for a canonical
    /// view. A native snapshot's files are made in the asynchronous part
    /// ([`NativeCapture`]), or here if a column without cache is open.
    fn snapshot(&mut self, request: SnapshotRequest) -> Result<StoreSnapshot, StateError> {
        let id = request.checkpoint_id;
        let seq = crate::cache::freeze_all(&self.shared, &self.cached);
        if request.canonical || !self.incremental {
            return Ok(StoreSnapshot::View(Arc::new(SnapshotView::new(
                &self.shared,
                &self.db,
                seq,
            ))));
        }
        let dir = self.dir.join(format!("chk-{id}-{}", self.next_nonce()));
        let guard = Arc::new(DirGuard(dir));
        let reused = Arc::new(Mutex::new(Vec::new()));
        let capture = NativeCapture {
            token: CaptureToken::new(&self.shared),
            shared: Arc::clone(&self.shared),
            db: Arc::clone(&self.db),
            seq,
            id,
            dir: Arc::clone(&guard),
            confirmed: self.confirmed.clone(),
            reused: Arc::clone(&reused),
        };
        let receipt = Arc::new(UploadReceipt::default());
        self.pending.insert(
            id,
            Pending {
                reused,
                receipt: Arc::clone(&receipt),
            },
        );
        let (files, prepare) = if self.uncached {
            (capture.files()?, None)
        } else {
            (Vec::new(), Some(Box::new(capture) as Box<dyn PrepareFiles>))
        };
        Ok(StoreSnapshot::Native(NativeSnapshot {
            backend: BACKEND.to_owned(),
            range: self.range,
            checkpoint_id: id,
            states: Vec::new(),
            files,
            prepare,
            receipt,
            guard: Box::new(guard),
        }))
    }

    fn restore_native(&mut self, restores: &[NativeRestore]) -> Result<(), StateError> {
        let Some(base) = restores
            .iter()
            .filter(|r| overlap(r.range, self.range) > 0)
            .max_by_key(|r| overlap(r.range, self.range))
        else {
            return Ok(());
        };
        if let Some(other) = restores.iter().find(|r| r.backend != BACKEND) {
            return Err(StateError::Unsupported(format!(
                "the rocksdb backend cannot restore native {} files; restore from a savepoint",
                other.backend
            )));
        }
        if Arc::strong_count(&self.db) > 1 {
            return Err(StateError::Unsupported(
                "a native restore must come before any state is declared".into(),
            ));
        }
        let db_dir = self.dir.join(format!("db-restored-{}", self.next_nonce()));
        Self::fetch_all(base, &db_dir)?;
        let columns = self.columns_of(&db_dir)?;
        let db = Self::open_db(&self.db_options, &self.cf_options, &db_dir, &columns)?;
        if base.range != self.range {
            // The fast path is opening the files as they are; with other ranges,
            // drop the foreign key groups and copy in the missing ones.
            for column in &columns {
                if let Some(cf) = db.db().cf_handle(column) {
                    for (start, end) in [
                        (vec![0u8, 0], key_group_prefix(self.range.start).to_vec()),
                        (
                            key_group_prefix(self.range.end).to_vec(),
                            END_OF_KEYS.to_vec(),
                        ),
                    ] {
                        db.db()
                            .delete_range_cf_opt(&cf, start, end, &unlogged())
                            .map_err(failed("drop key groups of other instances"))?;
                    }
                }
            }
            for (i, other) in restores.iter().enumerate() {
                if std::ptr::eq(other, base) || overlap(other.range, self.range) == 0 {
                    continue;
                }
                let dir = self.dir.join(format!("rebuild-{}-{i}", self.next_nonce()));
                self.copy_overlap(db.db(), other, &dir)?;
            }
        }
        self.db = Arc::new(db);
        if base.range != self.range {
            self.check_range(self.db.db())?;
        }
        self.confirmed = if base.reusable {
            base.files
                .iter()
                .filter(|(name, _)| name.ends_with(".sst"))
                .cloned()
                .collect()
        } else {
            HashMap::new()
        };
        Ok(())
    }

    fn notify_complete(&mut self, id: u64) {
        if let Some(done) = self.pending.remove(&id) {
            let reused = std::mem::take(&mut *crate::cache::lock(&done.reused));
            let mut confirmed: HashMap<String, StoredFile> = reused.into_iter().collect();
            confirmed.extend(done.receipt.take());
            self.confirmed = confirmed;
        }
        // Older checkpoints in flight are subsumed.
        self.pending.retain(|&pending, _| pending > id);
    }

    fn notify_aborted(&mut self, id: u64) {
        self.pending.remove(&id);
    }
}
