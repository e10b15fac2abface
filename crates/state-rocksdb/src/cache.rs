//! The write-back cache of value-like columns and the frozen layers that let
//! the synchronous part of a snapshot take constant time.
//!
//! Owns: the in-memory entries of value-like states (value, reducing,
//! aggregating, without TTL) between their writes and RocksDB, and the order
//! in which they reach the database. It must not touch checkpoint storage or
//! the runtime's threads; it only knows that snapshots are finished on
//! another thread (the uploader).
//!
//! How it works:
//! - Every cached column has one map from key to current value (keys and
//!   values up to 22 bytes inline: one probe, no pointer to follow) and a
//!   *log*: the writes since the last snapshot, each key once with its latest
//!   value (an entry knows its place in the log). The log holds at most
//!   `capacity` bytes (counted as keys, values and a fixed overhead per
//!   entry; a full log is written to RocksDB at once), the map `capacity`
//!   bytes of clean entries besides those of the logs not yet written.
//!   Entries whose last write is in the database are *clean*; when the map is
//!   full the clean ones are evicted (never waiting for a snapshot in
//!   flight), so a key the map lacks has its current value in RocksDB and a
//!   miss reads only RocksDB.
//! - The synchronous part of a snapshot moves each log, as it is, into
//!   a frozen layer (an `O(1)` swap) and records the layers of all columns as
//!   one *epoch*. Epochs are written to RocksDB strictly in order, sorted, in
//!   batches of 8 MiB ([`Shared::apply_through`]), by the snapshot's
//!   asynchronous part or by the task when it must write to the database
//!   itself. Layers already written are freed with a later epoch, never in
//!   the synchronous part.
//! - A native snapshot's asynchronous part writes the epochs up to its own,
//!   then takes the RocksDB checkpoint. It is consistent because nothing else
//!   reaches the database meanwhile: while such a capture is outstanding, the
//!   task waits before any direct write ([`Shared::settle`]), and nothing
//!   applies a later epoch. A canonical view instead reads a RocksDB snapshot
//!   (sequence number) taken in the synchronous part, overlaid with the dirty
//!   entries of the epochs not yet written, so it stays consistent whatever
//!   happens later.
//! - The task writes to the database directly only after every earlier epoch
//!   is written (so a newer value is never overwritten by an older one): when
//!   the log is full, and before scans, range deletions and batches
//!   (rare: restore, `clear`, `for_each`, key counts).

use std::collections::{BTreeMap, HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use flowstate_state::StateError;
use flowstate_state::serialized::{KvBatch, KvColumn, KvView, ScanFn};
use rocksdb::{BoundColumnFamily, ReadOptions, WriteBatch, WriteOptions};

use crate::store::{Db, OpenDb, failed, scan_db};

/// What one cached entry costs besides its key and value bytes (the map's
/// slot, two boxes, allocator rounding), as the cache counts it.
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// Write epochs and spills in batches of at most this many bytes.
const APPLY_BATCH_BYTES_MAX: usize = 8 << 20;
/// How long the task waits for outstanding native captures before a direct
/// write, before it gives up with an error (the task then fails and restarts
/// from its last checkpoint: nothing is lost, nothing is written twice).
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(120);

/// Locks `m`; a poisoned lock still holds consistent data here (every
/// critical section either completes its change or leaves it undone).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A column family handle resolved once, kept with the database it lives in.
pub(crate) struct Cf {
    // Declared before `db`: dropped before it.
    handle: Arc<BoundColumnFamily<'static>>,
    db: Arc<OpenDb>,
    pub(crate) name: String,
}

impl Cf {
    pub(crate) fn new(db: &Arc<OpenDb>, name: &str) -> Result<Self, StateError> {
        let handle = db.db().cf_handle(name).ok_or_else(|| StateError::Backend {
            backend: crate::store::BACKEND,
            action: format!("use column family {name}"),
            reason: "it does not exist".into(),
        })?;
        // SAFETY: the handle points at a column family of `db`, which lives as
        // long as the database is open (column families are never dropped
        // here). `Cf` keeps the database open through its own `Arc` and drops
        // the handle first, so the handle never outlives what it points at.
        let handle = unsafe {
            std::mem::transmute::<Arc<BoundColumnFamily<'_>>, Arc<BoundColumnFamily<'static>>>(
                handle,
            )
        };
        Ok(Self {
            handle,
            db: Arc::clone(db),
            name: name.to_owned(),
        })
    }

    pub(crate) fn db(&self) -> &Db {
        self.db.db()
    }

    pub(crate) fn handle(&self) -> &Arc<BoundColumnFamily<'static>> {
        &self.handle
    }
}

/// Keys and values up to this many bytes live inside the map's slots (no
/// allocation, no pointer to follow on a probe); longer ones are boxed.
const INLINE_BYTES: usize = 22;

/// A byte string, inline up to [`INLINE_BYTES`] (24 bytes in all).
#[derive(Clone)]
pub(crate) enum Bytes {
    Inline { len: u8, buf: [u8; INLINE_BYTES] },
    Heap(Box<[u8]>),
}

impl Bytes {
    fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_BYTES {
            let mut buf = [0; INLINE_BYTES];
            buf[..bytes.len()].copy_from_slice(bytes);
            Self::Inline {
                len: bytes.len() as u8,
                buf,
            }
        } else {
            Self::Heap(Box::from(bytes))
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, buf } => &buf[..*len as usize],
            Self::Heap(bytes) => bytes,
        }
    }

    /// Overwrites the bytes, in place if they keep their length.
    fn set(&mut self, bytes: &[u8]) {
        match self {
            Self::Inline { len, buf } if *len as usize == bytes.len() => {
                buf[..bytes.len()].copy_from_slice(bytes)
            }
            Self::Heap(old) if old.len() == bytes.len() => old.copy_from_slice(bytes),
            _ => *self = Self::new(bytes),
        }
    }
}

impl std::borrow::Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for Bytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes: lookups by `&[u8]` find it.
        self.as_slice().hash(state)
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Bytes {}

/// Sets `slot` to `value` (`None`: deleted), in place where it can.
fn set_value(slot: &mut Option<Bytes>, value: Option<&[u8]>) {
    match (slot.as_mut(), value) {
        (Some(old), Some(new)) => old.set(new),
        (_, new) => *slot = new.map(Bytes::new),
    }
}

/// One entry of a column's map: the key's current value (`None`: deleted)
/// and the generation of its last write (see [`ColumnCache`]).
struct Entry {
    value: Option<Bytes>,
    /// 0: read from the database, never written here.
    generation: u64,
    /// Where the entry's write sits in the log, if `generation` is the
    /// current one.
    log: u32,
}

/// A frozen log: the writes of one generation of one column (each key once,
/// with its last value; `None`: deleted). Read-only from the moment it is
/// frozen.
pub(crate) struct Layer {
    entries: Vec<(Bytes, Option<Bytes>)>,
    generation: u64,
    /// Its entries are in the database.
    applied: AtomicBool,
    /// Where its emptied log goes when it is dropped.
    spare: Arc<Spare>,
}

/// A log written in the database is emptied and kept for a later
/// generation: a fresh one of the same size would take its pages from the
/// kernel again (zeroed), about as much work per second as the writes.
type Log = Vec<(Bytes, Option<Bytes>)>;

/// Emptied logs of one column (at most [`SPARE_LOGS_MAX`]).
#[derive(Default)]
pub(crate) struct Spare(Mutex<Vec<Log>>);

const SPARE_LOGS_MAX: usize = 2;

impl Spare {
    fn take(&self, capacity: usize) -> Log {
        lock(&self.0)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }
}

impl Drop for Layer {
    fn drop(&mut self) {
        let mut log = std::mem::take(&mut self.entries);
        log.clear();
        let mut spare = lock(&self.spare.0);
        if spare.len() < SPARE_LOGS_MAX {
            spare.push(log);
        }
    }
}

/// The layers of every cached column at one snapshot.
struct Epoch {
    seq: u64,
    layers: Vec<(Arc<Cf>, Arc<Layer>)>,
    /// Layers written before, which the columns no longer read: freed with
    /// the epoch (on the thread that writes it), not in the synchronous part.
    _retired: Vec<Arc<Layer>>,
}

struct Epochs {
    /// Frozen epochs not yet written to the database, oldest first.
    pending: VecDeque<Arc<Epoch>>,
    next_seq: u64,
    /// The last epoch written to the database.
    applied_upto: u64,
    /// Native captures handed out and neither done nor dropped.
    captures: usize,
}

/// What a store, its cached columns and its snapshots share.
pub(crate) struct Shared {
    epochs: Mutex<Epochs>,
    changed: Condvar,
    /// Held while epochs are written (and across a native capture).
    apply: Mutex<()>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            epochs: Mutex::new(Epochs {
                pending: VecDeque::new(),
                next_seq: 1,
                applied_upto: 0,
                captures: 0,
            }),
            changed: Condvar::new(),
            apply: Mutex::new(()),
        })
    }

    /// Records the frozen layers of one snapshot; returns its epoch.
    fn freeze(&self, layers: Vec<(Arc<Cf>, Arc<Layer>)>, retired: Vec<Arc<Layer>>) -> u64 {
        let mut epochs = lock(&self.epochs);
        let seq = epochs.next_seq;
        epochs.next_seq += 1;
        epochs.pending.push_back(Arc::new(Epoch {
            seq,
            layers,
            _retired: retired,
        }));
        seq
    }

    pub(crate) fn apply_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.apply)
    }

    /// Writes every pending epoch up to `seq`, oldest first. The caller holds
    /// the apply lock (`_held`).
    pub(crate) fn apply_through(
        &self,
        _held: &MutexGuard<'_, ()>,
        seq: u64,
    ) -> Result<(), StateError> {
        loop {
            let next = {
                let epochs = lock(&self.epochs);
                match epochs.pending.front() {
                    Some(epoch) if epoch.seq <= seq => Arc::clone(epoch),
                    _ => return Ok(()),
                }
            };
            for (cf, layer) in &next.layers {
                write_dirty(cf, &layer.entries)?;
                layer.applied.store(true, Ordering::Release);
            }
            let mut epochs = lock(&self.epochs);
            epochs.pending.pop_front();
            epochs.applied_upto = next.seq;
            self.changed.notify_all();
        }
    }

    /// The last epoch written to the database.
    pub(crate) fn applied_upto(&self) -> u64 {
        lock(&self.epochs).applied_upto
    }

    /// Before the task writes to the database itself: waits until no native
    /// capture is outstanding, then writes every pending epoch.
    pub(crate) fn settle(&self) -> Result<(), StateError> {
        let deadline = Instant::now() + SETTLE_WAIT_MAX;
        let mut epochs = lock(&self.epochs);
        while epochs.captures > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Err(StateError::Backend {
                    backend: crate::store::BACKEND,
                    action: "write state".into(),
                    reason: format!(
                        "a checkpoint's local part did not finish within {} s",
                        SETTLE_WAIT_MAX.as_secs()
                    ),
                });
            }
            epochs = self
                .changed
                .wait_timeout(epochs, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let pending = !epochs.pending.is_empty();
        drop(epochs);
        if pending {
            let held = self.apply_lock();
            self.apply_through(&held, u64::MAX)?;
        }
        Ok(())
    }

    /// Whether a native capture is outstanding (direct writes must wait).
    pub(crate) fn capturing(&self) -> bool {
        lock(&self.epochs).captures > 0
    }
}

fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES
}

/// Writes `entries` to `cf` in batches, in key order (RocksDB's memtable
/// inserts sorted keys much faster: each insert starts where the last one
/// ended).
fn write_dirty(cf: &Cf, entries: &[(Bytes, Option<Bytes>)]) -> Result<(), StateError> {
    let dirty: Vec<(&[u8], Option<&[u8]>)> = entries
        .iter()
        .map(|(key, value)| (key.as_slice(), value.as_ref().map(Bytes::as_slice)))
        .collect();
    // Compares the first 8 bytes as one integer (keys start with their key
    // group, then the key): most comparisons end there.
    let head = |key: &[u8]| {
        let mut bytes = [0u8; 8];
        let n = key.len().min(8);
        bytes[..n].copy_from_slice(&key[..n]);
        u64::from_be_bytes(bytes)
    };
    let mut order: Vec<(u64, u32)> = dirty
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (head(key), i as u32))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| dirty[a.1 as usize].0.cmp(dirty[b.1 as usize].0))
    });
    let dirty = order.into_iter().map(|(_, i)| dirty[i as usize]);
    let write = crate::store::unlogged();
    let mut batch = WriteBatch::default();
    for (key, value) in dirty {
        match value {
            Some(value) => batch.put_cf(cf.handle(), key, value),
            None => batch.delete_cf(cf.handle(), key),
        }
        if batch.size_in_bytes() >= APPLY_BATCH_BYTES_MAX {
            cf.db()
                .write_opt(std::mem::take(&mut batch), &write)
                .map_err(failed(format!("write back {}", cf.name)))?;
        }
    }
    if !batch.is_empty() {
        cf.db()
            .write_opt(batch, &write)
            .map_err(failed(format!("write back {}", cf.name)))?;
    }
    Ok(())
}

/// The task's side of one cached column: one map of current values (one
/// probe per access) and the log of this generation's writes.
///
/// Every write belongs to a *generation*: the current one until the next
/// snapshot freezes the log (or a spill writes it), then the next. An entry
/// whose generation is the current one has its write in `log` (at
/// `Entry::log`); one of an older generation not yet in the database has it in
/// a frozen layer; any other entry is *clean* (the database holds its value)
/// and may be evicted. So a key the map lacks has its current value in the
/// database: a miss never looks at the layers.
pub(crate) struct ColumnCache {
    map: FxHashMap<Bytes, Entry>,
    map_bytes: usize,
    /// Evict when the map would exceed this (or the capacity, if more).
    evict_at: usize,
    /// This generation's writes, each key once with its latest value.
    log: Log,
    spare: Arc<Spare>,
    log_bytes: usize,
    generation: u64,
    /// Frozen logs that may not be in the database yet, oldest first.
    frozen: Vec<Arc<Layer>>,
}

impl ColumnCache {
    pub(crate) fn new() -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            map: FxHashMap::default(),
            map_bytes: 0,
            evict_at: 0,
            log: Vec::new(),
            spare: Arc::default(),
            log_bytes: 0,
            generation: 1,
            frozen: Vec::new(),
        }))
    }

    /// Caches what the database holds for `key` (`None`: nothing): a clean
    /// entry, evictable at once; `bytes` is its [`entry_bytes`].
    fn insert_clean(&mut self, key: &[u8], value: Option<&[u8]>, bytes: usize) {
        self.map_bytes += bytes;
        self.map.insert(
            Bytes::new(key),
            Entry {
                value: value.map(Bytes::new),
                generation: 0,
                log: 0,
            },
        );
    }

    /// `(entries, bytes)` held in memory (entries may also be in the database).
    pub(crate) fn held(&self) -> (u64, u64) {
        (
            self.map.len() as u64,
            (self.map_bytes + self.log_bytes) as u64,
        )
    }

    /// Entries of this generation or later are clean: their last write is
    /// in the database.
    fn clean_upto(&self) -> u64 {
        match self
            .frozen
            .iter()
            .find(|l| !l.applied.load(Ordering::Acquire))
        {
            Some(layer) => layer.generation - 1,
            None => self.generation - 1,
        }
    }

    /// Freezes the writes since the last snapshot (an `O(1)` swap); layers
    /// written since go to `retired` (freed with the epoch, by whoever
    /// writes it, not in the synchronous part).
    fn freeze(&mut self, retired: &mut Vec<Arc<Layer>>) -> Option<Arc<Layer>> {
        let (written, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.frozen)
            .into_iter()
            .partition(|l| l.applied.load(Ordering::Acquire));
        self.frozen = kept;
        retired.extend(written);
        if self.log.is_empty() {
            return None;
        }
        let fresh = self.spare.take(self.log.len());
        let entries = std::mem::replace(&mut self.log, fresh);
        self.log_bytes = 0;
        let layer = Arc::new(Layer {
            entries,
            generation: self.generation,
            applied: AtomicBool::new(false),
            spare: Arc::clone(&self.spare),
        });
        self.generation += 1;
        self.frozen.push(Arc::clone(&layer));
        Some(layer)
    }
}

/// A native capture handed out: counted until it is done or dropped.
pub(crate) struct CaptureToken {
    shared: Arc<Shared>,
    done: AtomicBool,
}

impl CaptureToken {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        lock(&shared.epochs).captures += 1;
        Self {
            shared: Arc::clone(shared),
            done: AtomicBool::new(false),
        }
    }

    pub(crate) fn finish(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            let mut epochs = lock(&self.shared.epochs);
            epochs.captures -= 1;
            self.shared.changed.notify_all();
        }
    }
}

impl Drop for CaptureToken {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Freezes every cached column (the synchronous part of a snapshot); returns
/// the epoch.
pub(crate) fn freeze_all(shared: &Shared, columns: &[(Arc<Cf>, Arc<Mutex<ColumnCache>>)]) -> u64 {
    let mut layers = Vec::new();
    let mut retired = Vec::new();
    for (cf, cache) in columns {
        if let Some(layer) = lock(cache).freeze(&mut retired) {
            layers.push((Arc::clone(cf), layer));
        }
    }
    shared.freeze(layers, retired)
}

/// A cached column.
pub(crate) struct CachedColumn {
    pub(crate) cf: Arc<Cf>,
    pub(crate) cache: Arc<Mutex<ColumnCache>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) read: ReadOptions,
    pub(crate) write: WriteOptions,
    /// At most this many bytes of clean entries in the map, and as many in the
    /// log (see [`ENTRY_OVERHEAD_BYTES`]).
    pub(crate) capacity: usize,
}

impl CachedColumn {
    /// Makes room for an entry of `bytes` in the map: when full, evicts
    /// every clean entry. Never writes nor waits: entries not in the
    /// database yet stay (they are bounded by the logs), and the next
    /// eviction comes after at least half the budget again (amortised
    /// constant time per entry).
    fn make_room(&self, cache: &mut ColumnCache, bytes: usize) {
        if cache.map_bytes + bytes <= cache.evict_at.max(self.capacity) {
            return;
        }
        let clean = cache.clean_upto();
        let mut kept = 0;
        cache.map.retain(|key, entry| {
            let keep = entry.generation > clean;
            if keep {
                kept += entry_bytes(key.as_slice(), entry.value.as_ref().map(Bytes::as_slice));
            }
            keep
        });
        cache.map_bytes = kept;
        cache.evict_at = kept + self.capacity / 2;
    }

    /// Brings the database up to date for this column: every epoch and the
    /// writes since the last snapshot written, after which every entry is
    /// clean (the map stays: it holds the database's values now).
    fn write_back(&self, cache: &mut ColumnCache) -> Result<(), StateError> {
        self.shared.settle()?;
        cache.frozen.clear();
        write_dirty(&self.cf, &cache.log)?;
        cache.log.clear();
        cache.log_bytes = 0;
        cache.generation += 1;
        Ok(())
    }

    fn set(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        let mut guard = lock(&self.cache);
        let cache = &mut *guard;
        let generation = cache.generation;
        let bytes = entry_bytes(key, value);
        if let Some(entry) = cache.map.get_mut(key) {
            let was = entry.value.as_ref().map_or(0, |v| v.as_slice().len());
            cache.map_bytes = (cache.map_bytes + value.map_or(0, <[u8]>::len)).saturating_sub(was);
            set_value(&mut entry.value, value);
            if entry.generation == generation
                && let Some((_, logged)) = cache.log.get_mut(entry.log as usize)
            {
                set_value(logged, value);
                return Ok(());
            }
            entry.generation = generation;
            entry.log = cache.log.len() as u32;
        } else {
            self.make_room(cache, bytes);
            cache.map_bytes += bytes;
            cache.map.insert(
                Bytes::new(key),
                Entry {
                    value: value.map(Bytes::new),
                    generation: cache.generation,
                    log: cache.log.len() as u32,
                },
            );
        }
        cache.log.push((Bytes::new(key), value.map(Bytes::new)));
        cache.log_bytes += bytes;
        if cache.log_bytes > self.capacity || cache.log.len() >= u32::MAX as usize {
            // Too many writes between two snapshots: write them now.
            self.write_back(cache)?;
        }
        Ok(())
    }

    /// Forgets `key` (clean: after a write back).
    fn forget(cache: &mut ColumnCache, key: &[u8]) {
        if let Some(entry) = cache.map.remove(key) {
            cache.map_bytes = cache
                .map_bytes
                .saturating_sub(entry_bytes(key, entry.value.as_ref().map(Bytes::as_slice)));
        }
    }
}

impl KvColumn for CachedColumn {
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        let mut cache = lock(&self.cache);
        if let Some(entry) = cache.map.get(key) {
            return Ok(match &entry.value {
                Some(value) => {
                    out.clear();
                    out.extend_from_slice(value.as_slice());
                    true
                }
                None => false,
            });
        }
        // Not in the map: the database holds the current value.
        let read = self
            .cf
            .db()
            .get_pinned_cf_opt(self.cf.handle(), key, &self.read)
            .map_err(failed(format!("read {}", self.cf.name)))?;
        let found = match read {
            Some(value) => {
                out.clear();
                out.extend_from_slice(&value);
                true
            }
            None => false,
        };
        let value = found.then_some(out.as_slice());
        let bytes = entry_bytes(key, value);
        self.make_room(&mut cache, bytes);
        cache.insert_clean(key, value, bytes);
        Ok(found)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.set(key, Some(value))
    }

    fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        self.set(key, None)
    }

    fn append(&self, key: &[u8], bytes: &[u8]) -> Result<(), StateError> {
        // Not used by value-like states; correct anyway: write back, then
        // merge in the database and forget the cached value.
        let mut cache = lock(&self.cache);
        self.write_back(&mut cache)?;
        Self::forget(&mut cache, key);
        self.cf
            .db()
            .merge_cf_opt(self.cf.handle(), key, bytes, &self.write)
            .map_err(failed(format!("append to {}", self.cf.name)))
    }

    fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StateError> {
        let mut cache = lock(&self.cache);
        self.write_back(&mut cache)?;
        let mut freed = 0;
        cache.map.retain(|k, entry| {
            let keep = k.as_slice() < start || k.as_slice() >= end;
            if !keep {
                freed += entry_bytes(k.as_slice(), entry.value.as_ref().map(Bytes::as_slice));
            }
            keep
        });
        cache.map_bytes = cache.map_bytes.saturating_sub(freed);
        self.cf
            .db()
            .delete_range_cf_opt(self.cf.handle(), start, end, &self.write)
            .map_err(failed(format!("delete a range of {}", self.cf.name)))
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut ScanFn<'_>) -> Result<(), StateError> {
        {
            let mut cache = lock(&self.cache);
            self.write_back(&mut cache)?;
        }
        scan_db(self.cf.db(), self.cf.handle(), &self.cf.name, start, end, f)
    }

    /// Looks every key up in one loop (the processor overlaps the misses,
    /// and the accesses that follow find the slots in its cache), then
    /// reads the keys the map lacks from RocksDB in one `multi_get` and
    /// keeps them as clean entries while there is room. A hint: an error
    /// of RocksDB is left to the accesses, which report it.
    fn prefetch(&self, keys: &[u8], ends: &[usize]) {
        let mut guard = lock(&self.cache);
        let cache = &mut *guard;
        let generation = cache.generation;
        let mut missing: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        for &end in ends {
            let Some(key) = keys.get(start..end) else {
                return;
            };
            start = end;
            match cache.map.get(key) {
                Some(entry) => {
                    if entry.generation == generation {
                        // Reads the slot: the write that follows finds it in cache.
                        std::hint::black_box(
                            cache.log.get(entry.log as usize).map(|e| e.1.is_some()),
                        );
                    }
                }
                None => missing.push(key),
            }
        }
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        let read = self.cf.db().batched_multi_get_cf_opt(
            self.cf.handle(),
            missing.iter().copied(),
            true,
            &self.read,
        );
        for (key, value) in missing.into_iter().zip(read) {
            let Ok(value) = value else {
                return;
            };
            let value = value.as_deref();
            let bytes = entry_bytes(key, value);
            if cache.map_bytes + bytes > self.capacity {
                return;
            }
            cache.insert_clean(key, value, bytes);
        }
    }

    fn write_batch(&self, batch: &KvBatch) -> Result<(), StateError> {
        let mut cache = lock(&self.cache);
        self.write_back(&mut cache)?;
        let mut write = WriteBatch::default();
        for (k, v) in batch.iter() {
            Self::forget(&mut cache, k);
            write.put_cf(self.cf.handle(), k, v);
        }
        self.cf
            .db()
            .write_opt(write, &self.write)
            .map_err(failed(format!("write a batch to {}", self.cf.name)))
    }
}

/// A canonical snapshot's view: the database as of the synchronous part (a
/// RocksDB snapshot) overlaid with the dirty entries of the epochs that were
/// not written to it yet.
pub(crate) struct SnapshotView {
    // Declared before `db`: released before the database can close.
    snapshot: rocksdb::SnapshotWithThreadMode<'static, Db>,
    /// `(column, layer)` of every epoch not yet written, oldest first.
    layers: Vec<(String, Arc<Layer>)>,
    overlay: OnceLock<HashMap<String, Overlay>>,
    seq: u64,
    shared: Arc<Shared>,
    db: Arc<OpenDb>,
}

/// Dirty entries of one column, in key order (`None`: deleted).
type Overlay = BTreeMap<Box<[u8]>, Option<Box<[u8]>>>;

impl SnapshotView {
    /// The synchronous part: freezes nothing itself (see [`freeze_all`]),
    /// pins the database and the epochs up to `seq` not written yet.
    pub(crate) fn new(shared: &Arc<Shared>, db: &Arc<OpenDb>, seq: u64) -> Self {
        let epochs = lock(&shared.epochs);
        let layers = epochs
            .pending
            .iter()
            .filter(|e| e.seq <= seq)
            .flat_map(|e| e.layers.iter())
            .map(|(cf, layer)| (cf.name.clone(), Arc::clone(layer)))
            .collect();
        // Taken while no epoch can leave `pending` unseen: an epoch written
        // meanwhile is in both, with the same values.
        let snapshot = db.db().snapshot();
        drop(epochs);
        // SAFETY: the snapshot refers to `db`'s database, which `SnapshotView`
        // keeps open (its `db` field) and which is released after the
        // snapshot (field order).
        let snapshot = unsafe {
            std::mem::transmute::<
                rocksdb::SnapshotWithThreadMode<'_, Db>,
                rocksdb::SnapshotWithThreadMode<'static, Db>,
            >(snapshot)
        };
        Self {
            snapshot,
            layers,
            overlay: OnceLock::new(),
            seq,
            shared: Arc::clone(shared),
            db: Arc::clone(db),
        }
    }

    fn overlay(&self) -> Result<&HashMap<String, Overlay>, StateError> {
        if let Some(overlay) = self.overlay.get() {
            return Ok(overlay);
        }
        let mut overlay: HashMap<String, Overlay> = HashMap::new();
        for (column, layer) in &self.layers {
            let entries = overlay.entry(column.clone()).or_default();
            for (key, value) in &layer.entries {
                entries.insert(
                    Box::from(key.as_slice()),
                    value.as_ref().map(|v| Box::from(v.as_slice())),
                );
            }
        }
        let overlay = self.overlay.get_or_init(|| overlay);
        // Off the task's thread: write the epochs this view pinned, unless a
        // native capture needs the database as it is.
        if !self.shared.capturing() {
            let held = self.shared.apply_lock();
            if !self.shared.capturing() {
                self.shared.apply_through(&held, self.seq)?;
            }
        }
        Ok(overlay)
    }
}

impl KvView for SnapshotView {
    fn scan(
        &self,
        column: &str,
        start: &[u8],
        end: &[u8],
        f: &mut ScanFn<'_>,
    ) -> Result<(), StateError> {
        let overlay = self.overlay()?;
        let mut dirty = overlay
            .get(column)
            .map(|o| {
                o.range::<[u8], _>((
                    std::ops::Bound::Included(start),
                    std::ops::Bound::Excluded(end),
                ))
            })
            .into_iter()
            .flatten()
            .peekable();
        let db = self.db.db();
        let Some(cf) = db.cf_handle(column) else {
            for (k, v) in dirty {
                if let Some(v) = v
                    && !f(k, v)?
                {
                    return Ok(());
                }
            }
            return Ok(());
        };
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        read.set_snapshot(&self.snapshot);
        read.fill_cache(false);
        let mut iter = db.raw_iterator_cf_opt(&cf, read);
        iter.seek(start);
        loop {
            let stored = iter.key();
            let next_dirty = dirty.peek().map(|(k, _)| k.as_ref());
            let go_on = match (stored, next_dirty) {
                (None, None) => break,
                (Some(k), Some(d)) if k < d => {
                    let v = iter.value().unwrap_or_default();
                    let go_on = f(k, v)?;
                    iter.next();
                    go_on
                }
                (Some(k), None) => {
                    let v = iter.value().unwrap_or_default();
                    let go_on = f(k, v)?;
                    iter.next();
                    go_on
                }
                (stored, Some(d)) => {
                    if stored == Some(d) {
                        // The overlay's entry replaces the stored one.
                        iter.next();
                    }
                    match dirty.next() {
                        Some((k, Some(v))) => f(k, v)?,
                        _ => true,
                    }
                }
            };
            if !go_on {
                return Ok(());
            }
        }
        iter.status()
            .map_err(failed(format!("scan {column} of a snapshot")))
    }
}
