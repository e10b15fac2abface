//! The RocksDB keyed state backend: keyed state serialised in an embedded
//! RocksDB on local disk, so that it can be far larger than memory.
//!
//! This crate owns only the store: it implements `flowstate_state`'s
//! byte-level [`KvStore`] trait over RocksDB (one column family per state,
//! keys prefixed by their key group in big endian; see
//! `flowstate_state::serialized` for the layout) and RocksDB's native
//! snapshots. The typed tables, declarations and the canonical format live in
//! `flowstate-state`; the upload of files lives in `flowstate-checkpoint`.
//!
//! Value-like states go through a write-back cache ([`cache`]): hot keys are
//! read and written in memory and reach RocksDB in write batches.
//!
//! Snapshots (the synchronous part, on the task's thread): freeze the caches
//! (constant time). Then either
//! - incremental (`RocksDbOptions::incremental`): a native snapshot whose
//!   files the upload thread makes (it writes the frozen entries, flushes the
//!   memtables and takes a RocksDB checkpoint: hard links of the immutable SST
//!   files); SST files that an earlier *completed* checkpoint already stored
//!   are referenced, not uploaded again; or
//! - full (and every savepoint): a RocksDB snapshot (a sequence number) read
//!   on the upload thread, overlaid with the frozen entries not yet written,
//!   in the canonical key-group format.
//!
//! It must not touch: checkpoint storage, threads or channels of the runtime.
//! Heavy to build (RocksDB's C++), which is why it is a crate of its own behind
//! the `rocksdb` feature of the crates that use it.

mod cache;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flowstate_state::serialized::{BackendInstance, KvStore, KvStoreFactory};
use flowstate_state::{BackendKind, StateError};

pub use store::RocksDbStore;

/// Default size of the block cache shared by every RocksDB instance of a job.
pub const DEFAULT_BLOCK_CACHE_BYTES: u64 = 256 << 20;
/// Default memtable size of one state (column family).
pub const DEFAULT_WRITE_BUFFER_BYTES: u64 = 64 << 20;
/// Default size of the write-back cache of one value-like state of one
/// instance (keys, values and 64 bytes per entry).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Settings of the RocksDB backend.
#[derive(Debug, Clone)]
pub struct RocksDbOptions {
    /// Where instances keep their databases (a directory per instance).
    pub local_dir: PathBuf,
    /// Block cache shared by all instances of the process (bounded read memory).
    pub block_cache_bytes: u64,
    /// Memtable size per state; memtables of all instances together are capped
    /// at twice this times the number of instances (a write buffer manager).
    pub write_buffer_bytes: u64,
    /// Checkpoints upload only SST files that no earlier checkpoint stored.
    pub incremental: bool,
    /// Bytes of each value-like state (value, reducing, aggregating, without
    /// TTL) that an instance keeps in its write-back cache: hot keys are read
    /// and written in memory and reach RocksDB once per snapshot (or when the
    /// cache is full). Counted as keys, values and 64 bytes per entry; a
    /// snapshot in flight may hold as much again until it is written. 0 turns
    /// the cache off.
    pub cache_bytes: u64,
}

impl RocksDbOptions {
    pub fn new(local_dir: impl Into<PathBuf>) -> Self {
        Self {
            local_dir: local_dir.into(),
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            incremental: false,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Opens one [`RocksDbStore`] per keyed operator instance; all of them share
/// one block cache.
pub struct RocksDbFactory {
    options: RocksDbOptions,
    cache: rocksdb::Cache,
    instances: AtomicU64,
}

impl std::fmt::Debug for RocksDbFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbFactory")
            .field("options", &self.options)
            .finish()
    }
}

impl RocksDbFactory {
    pub fn new(options: RocksDbOptions) -> Arc<Self> {
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes as usize);
        Arc::new(Self {
            options,
            cache,
            instances: AtomicU64::new(0),
        })
    }

    pub fn options(&self) -> &RocksDbOptions {
        &self.options
    }
}

impl KvStoreFactory for RocksDbFactory {
    fn kind(&self) -> BackendKind {
        BackendKind::RocksDb
    }

    fn open(&self, instance: &BackendInstance) -> Result<Box<dyn KvStore>, StateError> {
        // A fresh directory per opening: a restarted attempt never sees the files
        // of the one before, which may still be closing.
        let nonce = self.instances.fetch_add(1, Ordering::Relaxed);
        let dir = self.options.local_dir.join(&instance.job_id).join(format!(
            "{}-{}-p{}-{nonce}",
            sanitize(&instance.operator_uid),
            instance.subtask,
            std::process::id()
        ));
        Ok(Box::new(RocksDbStore::open(
            dir,
            instance.range,
            &self.options,
            &self.cache,
        )?))
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
