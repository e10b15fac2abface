//! The serialising keyed backend: typed tables over a byte-level, ordered
//! key/value store ([`KvStore`]), which is what RocksDB offers.
//!
//! Values are serialised on every access (nothing is cached between records),
//! so state can be far larger than memory. The store is a small trait so that
//! this layer is tested without RocksDB ([`crate::memory_store`]) and RocksDB
//! lives in its own crate.
//!
//! Layout: one column per state (named `s:<state name>`), keys ordered
//! bytewise. Every key starts with its key group as a big-endian `u16`, so the
//! state of a key-group range is one contiguous scan and one range deletion.
//! - value, reducing, aggregating: `kg ++ enc(K)` → `enc(V)`;
//! - list: `kg ++ enc(K)` → elements, each `u32 LE length ++ enc(V)`, so
//!   that adding one is a blind append (a RocksDB merge) rather than a
//!   read-modify-write;
//! - map: `kg ++ u32 BE len(enc(K)) ++ enc(K) ++ enc(UK)` →
//!   `enc(UV)`: one store entry per map entry, and the entries of one key
//!   are one prefix.
//!
//! `enc` is the durable encoding of snapshot entries ([`crate::codec`]). That
//! is why a canonical key-group section can be produced from a store's bytes
//! without knowing the Rust types ([`ColumnSnapshot`]): a canonical entry is
//! `enc(K) ++ enc(S)`.
//!
//! Restored canonical sections of states no one declared yet wait in the
//! column `meta:unclaimed` (key `kg`, value: a key-group section of those
//! states), not in memory, so that a restore of state larger than memory
//! works and native snapshots carry them too. A restore writes them one key
//! group at a time; a declaration loads its state's part from there, one key
//! group at a time, then removes it.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::backend::{
    BackendKind, BackendSnapshot, Declarations, KeyedStateBackend, SnapshotRequest, StateId,
    TableLayout, TableSlot,
};
use crate::descriptor::{StateKind, StateSignature};
use crate::error::StateError;
use crate::key_group::KeyGroupRange;
use crate::native::{NativeRestore, NativeSnapshot};
use crate::snapshot::{KeyedStateSnapshot, RestoredKeyedState, TableSnapshot};
use crate::table::{KeyedTable, ListTable, MapTable, ValueTable};
use crate::ttl::Expiry;
use crate::{KeyGroup, StateKey, StateValue};

/// Bytes of the key-group prefix of every key.
pub const KEY_GROUP_PREFIX_BYTES: usize = 2;

/// The first key of `key_group` (and the end of the one before).
pub fn key_group_prefix(key_group: KeyGroup) -> [u8; KEY_GROUP_PREFIX_BYTES] {
    debug_assert!(key_group <= u16::MAX as u32 + 1);
    // Key groups stay below MAX_PARALLELISM_LIMIT (32768), so the end of the last
    // range (at most 32768) still fits.
    (key_group as u16).to_be_bytes()
}

/// The least byte string greater than every string starting with `prefix`.
/// Exists for every key here: the first byte (a key group's high byte) is at
/// most 0x80.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// A batch of puts, written at once (one RocksDB write batch).
#[derive(Debug, Default)]
pub struct KvBatch {
    bytes: Vec<u8>,
    /// `(key start, value start, value end)` into `bytes`.
    spans: Vec<(usize, usize, usize)>,
}

impl KvBatch {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let middle = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.spans.push((start, middle, self.bytes.len()));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// `(key, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|&(k, v, e)| (&self.bytes[k..v], &self.bytes[v..e]))
    }
}

/// Flush a restore batch once it holds this many bytes (a limit on memory).
const RESTORE_BATCH_BYTES_MAX: usize = 4 << 20;

/// Gets one `(user key bytes, value bytes)` of a map.
type EntryFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateError> + 'a;

/// Scan callback: gets `(key, value)`, returns `false` to stop.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StateError> + 'a;

/// One column of a store: the entries of one state.
pub trait KvColumn: Send {
    /// Copies the value of `key` into `out` (cleared first); false if absent.
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError>;
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    /// Appends `bytes` to the value of `key` (creating it).
    fn append(&self, key: &[u8], bytes: &[u8]) -> Result<(), StateError>;
    fn delete(&self, key: &[u8]) -> Result<(), StateError>;
    /// Deletes every key in `[start, end)`.
    fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StateError>;
    /// Calls `f` on the entries in `[start, end)`, in key order.
    fn scan(&self, start: &[u8], end: &[u8], f: &mut ScanFn<'_>) -> Result<(), StateError>;
    fn write_batch(&self, batch: &KvBatch) -> Result<(), StateError>;
    /// A hint: the keys `keys[ends[i-1]..ends[i]]` (`ends` ascending, the
    /// first key from 0) are about to be read and written. A column may load
    /// them now, all at once. Changes no value; default: no-op.
    fn prefetch(&self, _keys: &[u8], _ends: &[usize]) {}
}

/// A consistent, read-only view of a whole store, read on another thread (the
/// asynchronous part of a canonical snapshot).
pub trait KvView: Send + Sync {
    fn scan(
        &self,
        column: &str,
        start: &[u8],
        end: &[u8],
        f: &mut ScanFn<'_>,
    ) -> Result<(), StateError>;
}

/// What the synchronous part of a store's snapshot produced.
pub enum StoreSnapshot {
    /// A frozen view, to be written in the canonical key-group format.
    View(Arc<dyn KvView>),
    /// The store's own files.
    Native(NativeSnapshot),
}

/// A byte-level ordered key/value store with columns: the storage of one
/// operator instance's keyed state.
pub trait KvStore: Send {
    fn kind(&self) -> BackendKind;
    /// Opens the column `name`, creating it if it does not exist.
    fn open_column(&mut self, name: &str) -> Result<Box<dyn KvColumn>, StateError>;
    /// Opens the column of a value-like state (value, reducing, aggregating;
    /// no TTL): values are only ever read and replaced whole, point by point,
    /// so a store may keep hot entries in memory and write them back later
    /// (it must still snapshot exactly the writes before the snapshot).
    /// Default: [`Self::open_column`].
    fn open_value_column(&mut self, name: &str) -> Result<Box<dyn KvColumn>, StateError> {
        self.open_column(name)
    }
    /// The synchronous part of a snapshot.
    fn snapshot(&mut self, request: SnapshotRequest) -> Result<StoreSnapshot, StateError>;
    /// Loads native snapshots of earlier instances (before any column is
    /// opened). Only key groups of this store's range are kept.
    fn restore_native(&mut self, restores: &[NativeRestore]) -> Result<(), StateError>;
    /// The estimated entries and bytes of `column`, if the store can say
    /// cheaply (metrics, sampled now and then; never a scan). Default: no.
    fn column_stats(&self, _column: &str) -> Option<(u64, u64)> {
        None
    }
    /// Checkpoint `id` completed: its files may be referenced from now on.
    fn notify_complete(&mut self, _id: u64) {}
    /// Checkpoint `id` was aborted.
    fn notify_aborted(&mut self, _id: u64) {}
}

/// Which operator instance a backend serves; stores use it to name their
/// local directories.
#[derive(Debug, Clone)]
pub struct BackendInstance {
    pub job_id: String,
    pub operator_uid: String,
    pub subtask: u32,
    pub range: KeyGroupRange,
    pub max_parallelism: u32,
    /// Processing time, as state TTL reads it (the operator's clock; the
    /// system clock by default).
    pub clock: crate::clock::SharedClock,
}

/// Opens stores for operator instances (one per job run; holds shared
/// resources such as RocksDB's block cache).
pub trait KvStoreFactory: Send + Sync {
    fn kind(&self) -> BackendKind;
    fn open(&self, instance: &BackendInstance) -> Result<Box<dyn KvStore>, StateError>;
}

fn codec_error(state: &str, action: &'static str, e: impl std::fmt::Display) -> StateError {
    StateError::Codec {
        state: state.to_owned(),
        action,
        reason: e.to_string(),
    }
}

/// Appends the store key of a value-like state's entry: `kg ++ enc(key)`.
fn append_value_key<K: serde::Serialize>(
    out: &mut Vec<u8>,
    key_group: KeyGroup,
    key: &K,
) -> Result<(), crate::codec::CodecError> {
    out.extend_from_slice(&key_group_prefix(key_group));
    crate::codec::encode_into(key, out)
}

fn encode_into<T: serde::Serialize + ?Sized>(
    state: &str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), StateError> {
    crate::codec::encode_into(value, out).map_err(|e| codec_error(state, "encode", e))
}

fn decode_prefix<T: serde::de::DeserializeOwned>(
    state: &str,
    bytes: &[u8],
) -> Result<(T, usize), StateError> {
    crate::codec::decode_prefix(bytes).map_err(|e| codec_error(state, "decode", e))
}

fn decode_exact<T: serde::de::DeserializeOwned>(
    state: &str,
    bytes: &[u8],
) -> Result<T, StateError> {
    let (value, used) = decode_prefix(state, bytes)?;
    if used != bytes.len() {
        return Err(codec_error(
            state,
            "decode",
            format!("{} bytes after the value", bytes.len() - used),
        ));
    }
    Ok(value)
}

/// Splits a list value into its element encodings.
fn list_frames<'a>(
    state: &str,
    mut bytes: &'a [u8],
    mut f: impl FnMut(&'a [u8]) -> Result<(), StateError>,
) -> Result<(), StateError> {
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| codec_error(state, "decode", "list element length cut short"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(codec_error(state, "decode", "list element cut short"));
        }
        f(&rest[..len])?;
        bytes = &rest[len..];
    }
    Ok(())
}

fn push_frame(
    state: &str,
    value: &impl serde::Serialize,
    out: &mut Vec<u8>,
) -> Result<(), StateError> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    encode_into(state, value, out)?;
    let len = u32::try_from(out.len() - at - 4)
        .map_err(|_| codec_error(state, "encode", "a list element larger than 4 GiB"))?;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// `(K bytes, UK bytes)` of a map entry's key.
fn split_map_key<'a>(state: &str, key: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), StateError> {
    let rest = &key[KEY_GROUP_PREFIX_BYTES.min(key.len())..];
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| codec_error(state, "decode", "map key cut short"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(codec_error(state, "decode", "map key cut short"));
    }
    Ok(rest.split_at(len))
}

/// What all serialised tables share: the column, the owned range, buffers.
struct ColumnTable {
    name: String,
    range: KeyGroupRange,
    column: Box<dyn KvColumn>,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Where the TTL incremental cleanup goes on (a store key; empty: the
    /// start of the range).
    ttl_cursor: Vec<u8>,
}

/// How TTL timestamps sit in a column's values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TtlLayout {
    /// The value starts with the timestamp (value-like states, map entries).
    Value,
    /// Every list frame starts with its element's timestamp.
    ListFrames,
}

impl ColumnTable {
    fn new(name: &str, range: KeyGroupRange, column: Box<dyn KvColumn>) -> Self {
        Self {
            name: name.to_owned(),
            range,
            column,
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(256),
            ttl_cursor: Vec::new(),
        }
    }

    /// TTL incremental cleanup: checks up to `budget` store entries from the
    /// cursor on, deletes expired ones (rewrites lists of which only some
    /// elements expired), and moves the cursor (back to the range start at
    /// the end of the range).
    fn ttl_step(
        &mut self,
        budget: usize,
        expiry: Expiry,
        layout: TtlLayout,
    ) -> Result<(), StateError> {
        let (start, end) = self.range_bounds();
        if self.ttl_cursor.is_empty() {
            self.ttl_cursor = start;
        }
        let name = self.name.as_str();
        let mut visited = 0usize;
        let mut last: Vec<u8> = Vec::new();
        let mut deletes: Vec<Vec<u8>> = Vec::new();
        let mut rewrites = KvBatch::default();
        self.column.scan(&self.ttl_cursor, &end, &mut |k, v| {
            visited += 1;
            last.clear();
            last.extend_from_slice(k);
            match layout {
                TtlLayout::Value => {
                    if expiry.expired_bytes(name, v)? {
                        deletes.push(k.to_vec());
                    }
                }
                TtlLayout::ListFrames => {
                    let (mut live, mut expired) = (Vec::new(), false);
                    list_frames(name, v, |frame| {
                        if expiry.expired_bytes(name, frame)? {
                            expired = true;
                        } else {
                            live.extend_from_slice(&(frame.len() as u32).to_le_bytes());
                            live.extend_from_slice(frame);
                        }
                        Ok(())
                    })?;
                    if expired && live.is_empty() {
                        deletes.push(k.to_vec());
                    } else if expired {
                        rewrites.put(k, &live);
                    }
                }
            }
            Ok(visited < budget)
        })?;
        for key in &deletes {
            self.column.delete(key)?;
        }
        if !rewrites.is_empty() {
            self.column.write_batch(&rewrites)?;
        }
        if visited < budget {
            self.ttl_cursor.clear();
        } else {
            // The least key after the last one checked.
            last.push(0);
            self.ttl_cursor = last;
        }
        Ok(())
    }

    fn check(&self, key_group: KeyGroup) -> Result<(), StateError> {
        if self.range.contains(key_group) {
            Ok(())
        } else {
            Err(StateError::KeyGroupOutOfRange {
                key_group,
                range: self.range.to_string(),
            })
        }
    }

    /// Sets `self.key` to `kg ++ enc(key)`.
    fn set_key<K: serde::Serialize>(
        &mut self,
        key_group: KeyGroup,
        key: &K,
    ) -> Result<(), StateError> {
        self.check(key_group)?;
        self.key.clear();
        append_value_key(&mut self.key, key_group, key)
            .map_err(|e| codec_error(&self.name, "encode", e))
    }

    /// Sets `self.key` to the map prefix `kg ++ len ++ enc(key)`.
    fn set_map_prefix<K: serde::Serialize>(
        &mut self,
        key_group: KeyGroup,
        key: &K,
    ) -> Result<usize, StateError> {
        self.check(key_group)?;
        self.key.clear();
        self.key.extend_from_slice(&key_group_prefix(key_group));
        self.key.extend_from_slice(&[0; 4]);
        encode_into(&self.name, key, &mut self.key)?;
        let len = u32::try_from(self.key.len() - KEY_GROUP_PREFIX_BYTES - 4)
            .map_err(|_| codec_error(&self.name, "encode", "a key larger than 4 GiB"))?;
        self.key[KEY_GROUP_PREFIX_BYTES..KEY_GROUP_PREFIX_BYTES + 4]
            .copy_from_slice(&len.to_be_bytes());
        Ok(self.key.len())
    }

    /// Reads `self.key` into `self.value`.
    fn read(&mut self) -> Result<bool, StateError> {
        self.column.get(&self.key, &mut self.value)
    }

    fn range_bounds(&self) -> (Vec<u8>, Vec<u8>) {
        (
            key_group_prefix(self.range.start).to_vec(),
            key_group_prefix(self.range.end).to_vec(),
        )
    }

    fn scan_group(&self, key_group: KeyGroup, f: &mut ScanFn<'_>) -> Result<(), StateError> {
        let start = key_group_prefix(key_group);
        self.column
            .scan(&start, &key_group_prefix(key_group + 1), f)
    }

    fn clear(&mut self) -> Result<(), StateError> {
        let (start, end) = self.range_bounds();
        self.column.delete_range(&start, &end)
    }

    /// Writes the entries of a restored canonical key-group payload in
    /// batches. A canonical entry is `enc(K) ++ enc(S)`: `K` is decoded
    /// only to find where its bytes end (they are the store's key bytes as they
    /// are); `write` turns `S` into store entries.
    fn restore_entries<K, S>(
        &mut self,
        key_group: KeyGroup,
        payload: &[u8],
        mut write: impl FnMut(&str, &[u8], S, &[u8], &mut KvBatch) -> Result<(), StateError>,
    ) -> Result<(), StateError>
    where
        K: serde::de::DeserializeOwned,
        S: serde::de::DeserializeOwned,
    {
        self.check(key_group)?;
        let name = self.name.clone();
        let corrupt = |reason: String| codec_error(&name, "decode", reason);
        let (count, mut rest) = payload
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("payload shorter than its entry count".into()))?;
        let count = u64::from_le_bytes(*count);
        let mut batch = KvBatch::default();
        let mut key = Vec::new();
        for _ in 0..count {
            let (_, key_len): (K, usize) = decode_prefix(&name, rest)?;
            let (value, value_len): (S, usize) = decode_prefix(&name, &rest[key_len..])?;
            key.clear();
            key.extend_from_slice(&key_group_prefix(key_group));
            key.extend_from_slice(&rest[..key_len]);
            write(
                &name,
                &key,
                value,
                &rest[key_len..key_len + value_len],
                &mut batch,
            )?;
            rest = &rest[key_len + value_len..];
            if batch.bytes_len() >= RESTORE_BATCH_BYTES_MAX {
                self.column.write_batch(&batch)?;
                batch.clear();
            }
        }
        if !rest.is_empty() {
            return Err(corrupt(format!(
                "{} bytes after the last entry",
                rest.len()
            )));
        }
        if !batch.is_empty() {
            self.column.write_batch(&batch)?;
        }
        Ok(())
    }

    /// Distinct keys in `key_group`, where `key_of` gives a store key's `K` bytes.
    fn count_keys(
        &self,
        key_group: KeyGroup,
        key_of: impl Fn(&str, &[u8]) -> Result<Vec<u8>, StateError>,
    ) -> Result<usize, StateError> {
        let mut count = 0;
        let mut last: Option<Vec<u8>> = None;
        self.scan_group(key_group, &mut |k, _| {
            let key = key_of(&self.name, k)?;
            if last.as_ref() != Some(&key) {
                count += 1;
                last = Some(key);
            }
            Ok(true)
        })?;
        Ok(count)
    }
}

fn not_snapshotted_per_table(name: &str) -> StateError {
    StateError::Unsupported(format!(
        "state '{name}' is serialised: it is snapshotted through its store, not per table"
    ))
}

/// A value (or reducing, or aggregating) state in a store.
pub struct SerializedValueTable<K, V> {
    table: ColumnTable,
    current: Option<V>,
    /// The encoded keys of a prefetch hint, end to end, and where each ends.
    hint: Vec<u8>,
    hint_ends: Vec<usize>,
    _key: PhantomData<fn(K)>,
}

impl<K: StateKey, V: StateValue> SerializedValueTable<K, V> {
    pub fn new(name: &str, range: KeyGroupRange, column: Box<dyn KvColumn>) -> Self {
        Self {
            table: ColumnTable::new(name, range, column),
            current: None,
            hint: Vec::new(),
            hint_ends: Vec::new(),
            _key: PhantomData,
        }
    }

    /// Reads the value of `key` (decoded, owned).
    fn load(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<V>, StateError> {
        self.table.set_key(key_group, key)?;
        if self.table.read()? {
            Ok(Some(decode_exact(&self.table.name, &self.table.value)?))
        } else {
            Ok(None)
        }
    }

    /// Writes `value` under the key set by the last `load`/`set_key`.
    fn store(&mut self, value: &V) -> Result<(), StateError> {
        self.table.value.clear();
        encode_into(&self.table.name, value, &mut self.table.value)?;
        self.table.column.put(&self.table.key, &self.table.value)
    }
}

impl<K: StateKey, V: StateValue> KeyedTable<K> for SerializedValueTable<K, V> {
    fn name(&self) -> &str {
        &self.table.name
    }

    fn key_count(&self, key_group: KeyGroup) -> Result<usize, StateError> {
        self.table.count_keys(key_group, |_, k| Ok(k.to_vec()))
    }

    fn clear(&mut self) -> Result<(), StateError> {
        self.table.clear()
    }

    fn snapshot(&mut self) -> Result<Box<dyn TableSnapshot>, StateError> {
        Err(not_snapshotted_per_table(&self.table.name))
    }

    fn restore_key_group(&mut self, key_group: KeyGroup, payload: &[u8]) -> Result<(), StateError> {
        self.table
            .restore_entries::<K, V>(key_group, payload, |_, key, _, bytes, batch| {
                batch.put(key, bytes);
                Ok(())
            })
    }

    fn ttl_cleanup_step(&mut self, budget: usize, expiry: Expiry) -> Result<(), StateError> {
        self.table.ttl_step(budget, expiry, TtlLayout::Value)
    }

    /// Encodes the keys (those of the range that encode; the rest are left
    /// to the accesses, which report them) and hands them to the column.
    fn prefetch(&mut self, keys: &[(KeyGroup, K)]) {
        self.hint.clear();
        self.hint_ends.clear();
        for (key_group, key) in keys {
            if !self.table.range.contains(*key_group) {
                continue;
            }
            let start = self.hint.len();
            if append_value_key(&mut self.hint, *key_group, key).is_err() {
                self.hint.truncate(start);
                continue;
            }
            self.hint_ends.push(self.hint.len());
        }
        self.table.column.prefetch(&self.hint, &self.hint_ends);
    }
}

impl<K: StateKey, V: StateValue> ValueTable<K, V> for SerializedValueTable<K, V> {
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<&V>, StateError> {
        self.current = self.load(key_group, key)?;
        Ok(self.current.as_ref())
    }

    fn put(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError> {
        self.table.set_key(key_group, key)?;
        self.store(&value)
    }

    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<V>, StateError> {
        let old = self.load(key_group, key)?;
        if old.is_some() {
            self.table.column.delete(&self.table.key)?;
        }
        Ok(old)
    }

    fn update(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(Option<V>) -> Option<V>,
    ) -> Result<Option<&V>, StateError> {
        let old = self.load(key_group, key)?;
        let existed = old.is_some();
        self.current = f(old);
        match self.current.take() {
            Some(value) => {
                self.store(&value)?;
                self.current = Some(value);
            }
            None if existed => self.table.column.delete(&self.table.key)?,
            None => {}
        }
        Ok(self.current.as_ref())
    }

    fn modify(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        init: &mut dyn FnMut() -> V,
        f: &mut dyn FnMut(&mut V),
    ) -> Result<(), StateError> {
        let mut value = match self.load(key_group, key)? {
            Some(value) => value,
            None => init(),
        };
        f(&mut value);
        self.store(&value)
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) -> Result<(), StateError> {
        let (start, end) = self.table.range_bounds();
        let name = &self.table.name;
        self.table.column.scan(&start, &end, &mut |k, v| {
            let key: K = decode_exact(name, &k[KEY_GROUP_PREFIX_BYTES..])?;
            let value: V = decode_exact(name, v)?;
            f(&key, &value);
            Ok(true)
        })
    }
}

/// A list state in a store.
pub struct SerializedListTable<K, V> {
    table: ColumnTable,
    current: Vec<V>,
    _key: PhantomData<fn(K)>,
}

impl<K: StateKey, V: StateValue> SerializedListTable<K, V> {
    pub fn new(name: &str, range: KeyGroupRange, column: Box<dyn KvColumn>) -> Self {
        Self {
            table: ColumnTable::new(name, range, column),
            current: Vec::new(),
            _key: PhantomData,
        }
    }
}

fn decode_list<V: StateValue>(
    state: &str,
    bytes: &[u8],
    out: &mut Vec<V>,
) -> Result<(), StateError> {
    out.clear();
    list_frames(state, bytes, |frame| {
        out.push(decode_exact(state, frame)?);
        Ok(())
    })
}

impl<K: StateKey, V: StateValue> KeyedTable<K> for SerializedListTable<K, V> {
    fn name(&self) -> &str {
        &self.table.name
    }

    fn key_count(&self, key_group: KeyGroup) -> Result<usize, StateError> {
        self.table.count_keys(key_group, |_, k| Ok(k.to_vec()))
    }

    fn clear(&mut self) -> Result<(), StateError> {
        self.table.clear()
    }

    fn snapshot(&mut self) -> Result<Box<dyn TableSnapshot>, StateError> {
        Err(not_snapshotted_per_table(&self.table.name))
    }

    fn restore_key_group(&mut self, key_group: KeyGroup, payload: &[u8]) -> Result<(), StateError> {
        let mut framed = Vec::new();
        self.table.restore_entries::<K, Vec<V>>(
            key_group,
            payload,
            |name, key, values, _, batch| {
                if values.is_empty() {
                    return Ok(());
                }
                framed.clear();
                for value in &values {
                    push_frame(name, value, &mut framed)?;
                }
                batch.put(key, &framed);
                Ok(())
            },
        )
    }

    fn ttl_cleanup_step(&mut self, budget: usize, expiry: Expiry) -> Result<(), StateError> {
        self.table.ttl_step(budget, expiry, TtlLayout::ListFrames)
    }
}

impl<K: StateKey, V: StateValue> ListTable<K, V> for SerializedListTable<K, V> {
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<&[V], StateError> {
        self.table.set_key(key_group, key)?;
        if self.table.read()? {
            decode_list(&self.table.name, &self.table.value, &mut self.current)?;
        } else {
            self.current.clear();
        }
        Ok(&self.current)
    }

    fn add(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError> {
        self.table.set_key(key_group, key)?;
        self.table.value.clear();
        push_frame(&self.table.name, &value, &mut self.table.value)?;
        self.table.column.append(&self.table.key, &self.table.value)
    }

    fn replace(&mut self, key_group: KeyGroup, key: &K, values: Vec<V>) -> Result<(), StateError> {
        self.table.set_key(key_group, key)?;
        if values.is_empty() {
            return self.table.column.delete(&self.table.key);
        }
        self.table.value.clear();
        for value in &values {
            push_frame(&self.table.name, value, &mut self.table.value)?;
        }
        self.table.column.put(&self.table.key, &self.table.value)
    }

    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError> {
        self.table.set_key(key_group, key)?;
        self.table.column.delete(&self.table.key)
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &[V])) -> Result<(), StateError> {
        let (start, end) = self.table.range_bounds();
        let name = &self.table.name;
        let mut values = Vec::new();
        self.table.column.scan(&start, &end, &mut |k, v| {
            let key: K = decode_exact(name, &k[KEY_GROUP_PREFIX_BYTES..])?;
            decode_list(name, v, &mut values)?;
            if !values.is_empty() {
                f(&key, &values);
            }
            Ok(true)
        })
    }
}

/// A map state in a store: one store entry per map entry.
pub struct SerializedMapTable<K, UK, UV> {
    table: ColumnTable,
    current: Option<UV>,
    _types: PhantomData<fn(K, UK)>,
}

impl<K: StateKey, UK: StateKey, UV: StateValue> SerializedMapTable<K, UK, UV> {
    pub fn new(name: &str, range: KeyGroupRange, column: Box<dyn KvColumn>) -> Self {
        Self {
            table: ColumnTable::new(name, range, column),
            current: None,
            _types: PhantomData,
        }
    }

    /// Sets the table's key to the entry `(key, user_key)`; returns the length
    /// of the key's prefix.
    fn set_entry_key(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<usize, StateError> {
        let prefix = self.table.set_map_prefix(key_group, key)?;
        encode_into(&self.table.name, user_key, &mut self.table.key)?;
        Ok(prefix)
    }

    fn load(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<UV>, StateError> {
        self.set_entry_key(key_group, key, user_key)?;
        if self.table.read()? {
            Ok(Some(decode_exact(&self.table.name, &self.table.value)?))
        } else {
            Ok(None)
        }
    }

    /// Calls `f` with every `(user key bytes, value bytes)` of `key`.
    fn scan_key(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut EntryFn<'_>,
    ) -> Result<(), StateError> {
        let prefix_len = self.table.set_map_prefix(key_group, key)?;
        let end = prefix_end(&self.table.key);
        self.table.column.scan(&self.table.key, &end, &mut |k, v| {
            f(&k[prefix_len..], v)?;
            Ok(true)
        })
    }
}

impl<K: StateKey, UK: StateKey, UV: StateValue> KeyedTable<K> for SerializedMapTable<K, UK, UV> {
    fn name(&self) -> &str {
        &self.table.name
    }

    fn key_count(&self, key_group: KeyGroup) -> Result<usize, StateError> {
        self.table
            .count_keys(key_group, |name, k| Ok(split_map_key(name, k)?.0.to_vec()))
    }

    fn clear(&mut self) -> Result<(), StateError> {
        self.table.clear()
    }

    fn snapshot(&mut self) -> Result<Box<dyn TableSnapshot>, StateError> {
        Err(not_snapshotted_per_table(&self.table.name))
    }

    fn restore_key_group(&mut self, key_group: KeyGroup, payload: &[u8]) -> Result<(), StateError> {
        let mut entry_key = Vec::new();
        let mut entry_value = Vec::new();
        self.table.restore_entries::<K, Vec<(UK, UV)>>(
            key_group,
            payload,
            |name, key, entries, _, batch| {
                // `key` is kg ++ enc(K); the map layout puts K's length between.
                let key_bytes = &key[KEY_GROUP_PREFIX_BYTES..];
                let len = u32::try_from(key_bytes.len())
                    .map_err(|_| codec_error(name, "encode", "a key larger than 4 GiB"))?;
                for (user_key, value) in &entries {
                    entry_key.clear();
                    entry_key.extend_from_slice(&key[..KEY_GROUP_PREFIX_BYTES]);
                    entry_key.extend_from_slice(&len.to_be_bytes());
                    entry_key.extend_from_slice(key_bytes);
                    encode_into(name, user_key, &mut entry_key)?;
                    entry_value.clear();
                    encode_into(name, value, &mut entry_value)?;
                    batch.put(&entry_key, &entry_value);
                }
                Ok(())
            },
        )
    }

    fn ttl_cleanup_step(&mut self, budget: usize, expiry: Expiry) -> Result<(), StateError> {
        self.table.ttl_step(budget, expiry, TtlLayout::Value)
    }
}

impl<K: StateKey, UK: StateKey, UV: StateValue> MapTable<K, UK, UV>
    for SerializedMapTable<K, UK, UV>
{
    fn get(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<&UV>, StateError> {
        self.current = self.load(key_group, key, user_key)?;
        Ok(self.current.as_ref())
    }

    fn put(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: UK,
        value: UV,
    ) -> Result<(), StateError> {
        self.set_entry_key(key_group, key, &user_key)?;
        self.table.value.clear();
        encode_into(&self.table.name, &value, &mut self.table.value)?;
        self.table.column.put(&self.table.key, &self.table.value)
    }

    fn remove(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<UV>, StateError> {
        let old = self.load(key_group, key, user_key)?;
        if old.is_some() {
            self.table.column.delete(&self.table.key)?;
        }
        Ok(old)
    }

    fn len(&mut self, key_group: KeyGroup, key: &K) -> Result<usize, StateError> {
        let mut count = 0;
        self.scan_key(key_group, key, &mut |_, _| {
            count += 1;
            Ok(())
        })?;
        Ok(count)
    }

    fn for_each_entry(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(&UK, &UV),
    ) -> Result<(), StateError> {
        let name = self.table.name.clone();
        self.scan_key(key_group, key, &mut |user_key, value| {
            let user_key: UK = decode_exact(&name, user_key)?;
            let value: UV = decode_exact(&name, value)?;
            f(&user_key, &value);
            Ok(())
        })
    }

    fn remove_all(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError> {
        self.table.set_map_prefix(key_group, key)?;
        let end = prefix_end(&self.table.key);
        self.table.column.delete_range(&self.table.key, &end)
    }
}

/// One state of a store view, written as canonical key-group payloads: the
/// store's bytes rearranged, with no knowledge of the Rust types.
pub struct ColumnSnapshot {
    view: Arc<dyn KvView>,
    column: String,
    state: String,
    kind: StateKind,
    /// A TTL'd state with snapshot cleanup: entries expired by then stay out.
    ttl: Option<Expiry>,
}

impl ColumnSnapshot {
    pub fn new(view: Arc<dyn KvView>, state: &StateSignature) -> Self {
        Self {
            view,
            column: column_name(&state.name),
            state: state.name.clone(),
            kind: state.kind,
            ttl: None,
        }
    }

    /// Leaves out entries (list elements, map entries) of a TTL'd state that
    /// `expiry` finds expired. Every stored value (every list frame) of a
    /// TTL'd state starts with its `i64 LE` timestamp.
    pub fn with_ttl(mut self, expiry: Option<Expiry>) -> Self {
        self.ttl = expiry;
        self
    }

    fn expired(&self, bytes: &[u8]) -> Result<bool, StateError> {
        match &self.ttl {
            Some(expiry) => expiry.expired_bytes(&self.state, bytes),
            None => Ok(false),
        }
    }
}

impl TableSnapshot for ColumnSnapshot {
    fn write_key_group(&self, key_group: KeyGroup, out: &mut Vec<u8>) -> Result<u64, StateError> {
        let count_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        let mut count = 0u64;
        let start = key_group_prefix(key_group);
        let end = key_group_prefix(key_group + 1);
        let state = self.state.as_str();
        match self.kind {
            StateKind::Value | StateKind::Reducing | StateKind::Aggregating => {
                self.view.scan(&self.column, &start, &end, &mut |k, v| {
                    if self.expired(v)? {
                        return Ok(true);
                    }
                    out.extend_from_slice(&k[KEY_GROUP_PREFIX_BYTES..]);
                    out.extend_from_slice(v);
                    count += 1;
                    Ok(true)
                })?;
            }
            StateKind::List => {
                self.view.scan(&self.column, &start, &end, &mut |k, v| {
                    let mut elements = 0u64;
                    list_frames(state, v, |frame| {
                        if !self.expired(frame)? {
                            elements += 1;
                        }
                        Ok(())
                    })?;
                    if elements == 0 {
                        return Ok(true);
                    }
                    out.extend_from_slice(&k[KEY_GROUP_PREFIX_BYTES..]);
                    out.extend_from_slice(&elements.to_le_bytes());
                    list_frames(state, v, |frame| {
                        if !self.expired(frame)? {
                            out.extend_from_slice(frame);
                        }
                        Ok(())
                    })?;
                    count += 1;
                    Ok(true)
                })?;
            }
            StateKind::Map => {
                // Entries of one key are adjacent: open a group at each new key,
                // patch its entry count when the next begins.
                let mut current: Vec<u8> = Vec::new();
                let mut group_count_at = 0usize;
                let mut group_entries = 0u64;
                self.view.scan(&self.column, &start, &end, &mut |k, v| {
                    if self.expired(v)? {
                        return Ok(true);
                    }
                    let (key, user_key) = split_map_key(state, k)?;
                    if count == 0 || key != current.as_slice() {
                        if count > 0 {
                            out[group_count_at..group_count_at + 8]
                                .copy_from_slice(&group_entries.to_le_bytes());
                        }
                        current.clear();
                        current.extend_from_slice(key);
                        out.extend_from_slice(key);
                        group_count_at = out.len();
                        out.extend_from_slice(&0u64.to_le_bytes());
                        group_entries = 0;
                        count += 1;
                    }
                    out.extend_from_slice(user_key);
                    out.extend_from_slice(v);
                    group_entries += 1;
                    Ok(true)
                })?;
                if count > 0 {
                    out[group_count_at..group_count_at + 8]
                        .copy_from_slice(&group_entries.to_le_bytes());
                }
            }
        }
        out[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        Ok(count)
    }
}

/// The store column of a state.
pub fn column_name(state: &str) -> String {
    format!("s:{state}")
}

/// The column of restored sections no declaration has claimed.
pub const UNCLAIMED_COLUMN: &str = "meta:unclaimed";

/// Keyed state of one operator instance in a [`KvStore`].
pub struct SerializedKeyedStateBackend<K> {
    range: KeyGroupRange,
    max_parallelism: u32,
    store: Box<dyn KvStore>,
    declarations: Declarations<K>,
    /// States restored natively: their data is in the store already.
    native_states: Vec<StateSignature>,
    /// Restored states no declaration has claimed yet: their sections wait
    /// in the unclaimed column (never in memory), one value per key group.
    waiting: Vec<StateSignature>,
    unclaimed: Option<Box<dyn KvColumn>>,
    /// Processing time for state TTL.
    clock: crate::clock::SharedClock,
}

/// A value of the unclaimed column starts with this mark (a state count no
/// section has) and the `u32` section version, then the section. Values
/// without it were written by flowstate 0.1: version-1 sections.
const UNCLAIMED_MARK: [u8; 4] = [0xff; 4];

/// The version-2 section held by a value of the unclaimed column; sets
/// `legacy` if the value was a version-1 section.
fn unclaimed_section<'a>(
    key_group: KeyGroup,
    value: &'a [u8],
    legacy: &mut bool,
) -> Result<std::borrow::Cow<'a, [u8]>, StateError> {
    match value.strip_prefix(&UNCLAIMED_MARK[..]) {
        Some(rest) => match rest.split_first_chunk::<4>() {
            Some((version, section))
                if u32::from_le_bytes(*version) == crate::snapshot::SECTION_VERSION =>
            {
                Ok(std::borrow::Cow::Borrowed(section))
            }
            _ => Err(StateError::CorruptSnapshot(format!(
                "key group {key_group}: unclaimed state of an unknown section version"
            ))),
        },
        None => {
            *legacy = true;
            crate::snapshot::section_from_v1(key_group, value).map(std::borrow::Cow::Owned)
        }
    }
}

/// A value of the unclaimed column holding `states` (this build's layout).
fn unclaimed_value(states: &[crate::snapshot::SectionState<'_>]) -> Vec<u8> {
    let mut value = UNCLAIMED_MARK.to_vec();
    value.extend_from_slice(&crate::snapshot::SECTION_VERSION.to_le_bytes());
    crate::snapshot::write_section(states, &mut value);
    value
}

impl<K: StateKey> SerializedKeyedStateBackend<K> {
    pub fn new(store: Box<dyn KvStore>, range: KeyGroupRange, max_parallelism: u32) -> Self {
        Self {
            range,
            max_parallelism,
            store,
            declarations: Declarations::new(),
            native_states: Vec::new(),
            waiting: Vec::new(),
            unclaimed: None,
            clock: crate::clock::system_clock(),
        }
    }

    /// Reads processing time (state TTL) from `clock`.
    pub fn with_clock(mut self, clock: crate::clock::SharedClock) -> Self {
        self.clock = clock;
        self
    }

    fn open_unclaimed(&mut self) -> Result<(), StateError> {
        if self.unclaimed.is_none() {
            self.unclaimed = Some(self.store.open_column(UNCLAIMED_COLUMN)?);
        }
        Ok(())
    }

    fn unclaimed_column(&mut self) -> Result<&dyn KvColumn, StateError> {
        self.open_unclaimed()?;
        match &self.unclaimed {
            Some(column) => Ok(column.as_ref()),
            None => unreachable!("opened above"),
        }
    }

    /// Notes that `state` waits in the unclaimed column.
    fn note_waiting(&mut self, state: &crate::snapshot::SectionState<'_>) {
        if !self.waiting.iter().any(|s| s.name == state.name) {
            self.waiting.push(StateSignature {
                name: state.name.to_owned(),
                kind: state.kind,
                types: state.types.clone().into_owned(),
                rust_types: "",
            });
        }
    }

    /// Learns the states whose sections wait in the unclaimed column (after
    /// a native restore: they waited for a declaration in the earlier run),
    /// and rewrites values of flowstate 0.1 (version-1 sections) in this
    /// build's layout. One value in memory at a time.
    fn adopt_unclaimed(&mut self) -> Result<(), StateError> {
        let range = self.range;
        let mut found: Vec<(String, StateKind, String)> = Vec::new();
        let mut legacy_groups = Vec::new();
        self.unclaimed_column()?.scan(
            &key_group_prefix(range.start),
            &key_group_prefix(range.end),
            &mut |k, v| {
                let key_group = u16::from_be_bytes([k[0], k[1]]) as u32;
                let mut legacy = false;
                let section = unclaimed_section(key_group, v, &mut legacy)?;
                for state in crate::snapshot::read_section(key_group, &section)? {
                    if !found.iter().any(|(name, _, _)| name == state.name) {
                        found.push((state.name.to_owned(), state.kind, state.types.into_owned()));
                    }
                }
                if legacy {
                    legacy_groups.push(key_group);
                }
                Ok(true)
            },
        )?;
        for (name, kind, types) in found {
            if !self.waiting.iter().any(|s| s.name == name) {
                self.waiting.push(StateSignature {
                    name,
                    kind,
                    types,
                    rust_types: "",
                });
            }
        }
        let column = self.unclaimed_column()?;
        let mut value = Vec::new();
        for key_group in legacy_groups {
            let key = key_group_prefix(key_group);
            if column.get(&key, &mut value)? {
                let section = unclaimed_section(key_group, &value, &mut false)?;
                let states = crate::snapshot::read_section(key_group, &section)?;
                column.put(&key, &unclaimed_value(&states))?;
            }
        }
        Ok(())
    }

    /// Restores one canonical key-group section: declared states into their
    /// columns (in write batches), the others into the unclaimed column.
    fn restore_section(&mut self, key_group: KeyGroup, bytes: &[u8]) -> Result<(), StateError> {
        if !self.range.contains(key_group) {
            return Err(StateError::KeyGroupOutOfRange {
                key_group,
                range: self.range.to_string(),
            });
        }
        let states = crate::snapshot::read_section(key_group, bytes)?;
        let mut rest = Vec::new();
        for state in states {
            match self.declarations.find_mut(state.name) {
                Some((signature, slot)) => {
                    crate::backend::check_restored(signature, state.kind, &state.types)?;
                    slot.table().restore_key_group(key_group, state.payload)?;
                }
                None => rest.push(state),
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        for state in &rest {
            self.note_waiting(state);
        }
        let column = self.unclaimed_column()?;
        let key = key_group_prefix(key_group);
        let mut existing = Vec::new();
        let section;
        if column.get(&key, &mut existing)? {
            // Waiting already (another snapshot's part of this key group):
            // keep what this section does not replace.
            section = unclaimed_section(key_group, &existing, &mut false)?;
            for state in crate::snapshot::read_section(key_group, &section)? {
                if !rest.iter().any(|s| s.name == state.name) {
                    rest.push(state);
                }
            }
        }
        column.put(&key, &unclaimed_value(&rest))
    }

    /// Loads the waiting sections of `name` into its freshly declared table,
    /// then removes them from the unclaimed column (only once all loaded).
    /// One key group's section in memory at a time.
    fn load_waiting(&mut self, name: &str) -> Result<(), StateError> {
        self.open_unclaimed()?;
        let Some(column) = &self.unclaimed else {
            unreachable!("opened above")
        };
        let Some((signature, slot)) = self.declarations.find_mut(name) else {
            return Ok(());
        };
        let mut value = Vec::new();
        let mut holding = Vec::new();
        for key_group in self.range.iter() {
            if !column.get(&key_group_prefix(key_group), &mut value)? {
                continue;
            }
            let section = unclaimed_section(key_group, &value, &mut false)?;
            for state in crate::snapshot::read_section(key_group, &section)? {
                if state.name == name {
                    crate::backend::check_restored(signature, state.kind, &state.types)?;
                    slot.table().restore_key_group(key_group, state.payload)?;
                    holding.push(key_group);
                }
            }
        }
        for key_group in holding {
            let key = key_group_prefix(key_group);
            if !column.get(&key, &mut value)? {
                continue;
            }
            let section = unclaimed_section(key_group, &value, &mut false)?;
            let mut states = crate::snapshot::read_section(key_group, &section)?;
            states.retain(|s| s.name != name);
            if states.is_empty() {
                column.delete(&key)?;
            } else {
                column.put(&key, &unclaimed_value(&states))?;
            }
        }
        Ok(())
    }

    /// Every state the store holds data of in its own columns: declared and
    /// restored natively.
    fn stored_states(&self) -> Vec<StateSignature> {
        let mut states = self.declarations.signatures();
        for state in &self.native_states {
            if !states.iter().any(|s| s.name == state.name) {
                states.push(state.clone());
            }
        }
        states
    }
}

impl<K: StateKey> KeyedStateBackend<K> for SerializedKeyedStateBackend<K> {
    fn kind(&self) -> BackendKind {
        self.store.kind()
    }

    fn state_stats(&mut self) -> Vec<crate::backend::StateStats> {
        let store = &self.store;
        self.declarations
            .tables_mut()
            .filter_map(|(signature, _)| {
                let (entries, bytes) = store.column_stats(&column_name(&signature.name))?;
                Some(crate::backend::StateStats {
                    name: signature.name.clone(),
                    entries,
                    bytes: Some(bytes),
                    estimated: true,
                })
            })
            .collect()
    }

    fn clock(&self) -> crate::clock::SharedClock {
        Arc::clone(&self.clock)
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn declare(
        &mut self,
        signature: StateSignature,
        create: &mut dyn FnMut(TableLayout) -> TableSlot<K>,
    ) -> Result<StateId, StateError> {
        if let Some(restored) = self.native_states.iter().find(|s| s.name == signature.name) {
            crate::backend::check_restored(&signature, restored.kind, &restored.types)?;
        }
        // Refused before anything changes: the sections wait for a correct
        // declaration.
        let waiting = self.waiting.iter().position(|s| s.name == signature.name);
        if let Some(index) = waiting {
            let w = &self.waiting[index];
            crate::backend::check_restored(&signature, w.kind, &w.types)?;
        }
        let name = signature.name.clone();
        let range = self.range;
        let store = &mut self.store;
        let point_values = matches!(
            signature.kind,
            StateKind::Value | StateKind::Reducing | StateKind::Aggregating
        ) && !crate::ttl::is_ttl_type_name(&signature.types);
        let id = self.declarations.declare(
            signature,
            &mut |name| {
                let column = if point_values {
                    store.open_value_column(&column_name(name))?
                } else {
                    store.open_column(&column_name(name))?
                };
                Ok(TableLayout::Serialized { range, column })
            },
            create,
        )?;
        if let Some(index) = waiting {
            if let Err(e) = self.load_waiting(&name) {
                // Nothing of the state stays: the declaration is taken back
                // and its sections keep waiting.
                if let Some((_, slot)) = self.declarations.find_mut(&name) {
                    let _ = slot.table().clear();
                }
                self.declarations.undeclare_last();
                return Err(e);
            }
            self.waiting.remove(index);
        }
        Ok(id)
    }

    #[inline]
    fn slot(&mut self, id: StateId) -> &mut TableSlot<K> {
        self.declarations.slot(id)
    }

    fn prefetch(&mut self, keys: &[(KeyGroup, K)]) {
        self.declarations.prefetch(keys);
    }

    fn signatures(&self) -> Vec<StateSignature> {
        self.declarations.signatures()
    }

    fn key_count(&mut self, key_group: KeyGroup) -> Result<usize, StateError> {
        self.declarations.key_count(key_group)
    }

    fn snapshot(&mut self, request: SnapshotRequest) -> Result<BackendSnapshot, StateError> {
        if !self.waiting.is_empty() {
            // The column exists before the store's snapshot is taken.
            self.open_unclaimed()?;
        }
        match self.store.snapshot(request)? {
            StoreSnapshot::View(view) => {
                let now_ms = self.clock.now_ms();
                let mut states = self.declarations.snapshot_with(&mut |signature, slot| {
                    let ttl = slot
                        .table()
                        .snapshot_ttl_ms()
                        .map(|ttl_ms| Expiry { now_ms, ttl_ms });
                    Ok(Box::new(
                        ColumnSnapshot::new(Arc::clone(&view), signature).with_ttl(ttl),
                    ))
                })?;
                // States restored natively and not declared (yet) are in the store
                // too: they go into the snapshot as they are.
                let declared = self.declarations.signatures();
                for state in &self.native_states {
                    if !declared.iter().any(|s| s.name == state.name) {
                        let table = ColumnSnapshot::new(Arc::clone(&view), state);
                        states.push((state.clone(), Box::new(table)));
                    }
                }
                // Restored state nobody declared (yet) is carried into the
                // next snapshot unchanged, so that a job that declares it
                // lazily does not lose it.
                let mut waiting = self.waiting.clone();
                waiting.sort_by(|a, b| a.name.cmp(&b.name));
                for state in waiting {
                    let table = UnclaimedSnapshot {
                        view: Arc::clone(&view),
                        state: state.name.clone(),
                    };
                    states.push((state, Box::new(table)));
                }
                Ok(BackendSnapshot::KeyGroups(KeyedStateSnapshot {
                    range: self.range,
                    key_type: crate::state_type_name::<K>(),
                    states,
                }))
            }
            StoreSnapshot::Native(mut native) => {
                // Waiting states travel in the unclaimed column.
                native.states = self.stored_states();
                Ok(BackendSnapshot::Native(native))
            }
        }
    }

    fn restore(&mut self, restored: RestoredKeyedState) -> Result<(), StateError> {
        if !restored.native.is_empty() {
            self.store.restore_native(&restored.native)?;
            for native in &restored.native {
                for state in &native.states {
                    if !self.native_states.iter().any(|s| s.name == state.name) {
                        self.native_states.push(state.clone());
                    }
                }
            }
            self.adopt_unclaimed()?;
        }
        // Canonical sections, one key group at a time (read from storage as
        // they are needed: never the whole state in memory).
        restored.for_each_section(&mut |key_group, bytes| self.restore_section(key_group, bytes))
    }

    fn unclaimed_restored_states(&self) -> Vec<String> {
        let declared = self.declarations.signatures();
        let mut names = self.declarations.unclaimed();
        for state in self.native_states.iter().chain(&self.waiting) {
            if !declared.iter().any(|s| s.name == state.name) && !names.contains(&state.name) {
                names.push(state.name.clone());
            }
        }
        names.sort();
        names
    }

    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.store.notify_complete(id);
    }

    fn notify_checkpoint_aborted(&mut self, id: u64) {
        self.store.notify_aborted(id);
    }
}

/// A waiting state of a store view, written as it was restored: its payload
/// in each key group's value of the unclaimed column.
struct UnclaimedSnapshot {
    view: Arc<dyn KvView>,
    state: String,
}

impl TableSnapshot for UnclaimedSnapshot {
    fn write_key_group(&self, key_group: KeyGroup, out: &mut Vec<u8>) -> Result<u64, StateError> {
        let mut entries = None;
        self.view.scan(
            UNCLAIMED_COLUMN,
            &key_group_prefix(key_group),
            &key_group_prefix(key_group + 1),
            &mut |_, v| {
                let section = unclaimed_section(key_group, v, &mut false)?;
                for state in crate::snapshot::read_section(key_group, &section)? {
                    if state.name == self.state {
                        out.extend_from_slice(state.payload);
                        entries = Some(state.entries().unwrap_or(0));
                    }
                }
                Ok(false)
            },
        )?;
        Ok(match entries {
            Some(entries) => entries,
            None => {
                out.extend_from_slice(&0u64.to_le_bytes());
                0
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One state `s`, kind value, type names `types`, an empty payload.
    fn section(types: &str) -> Vec<u8> {
        let mut out = 1u32.to_le_bytes().to_vec();
        out.extend_from_slice(&1u16.to_le_bytes());
        out.push(b's');
        out.push(0);
        out.extend_from_slice(&(types.len() as u16).to_le_bytes());
        out.extend_from_slice(types.as_bytes());
        out.extend_from_slice(&8u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out
    }

    #[test]
    fn unclaimed_values_of_both_versions_read() {
        // This build's values: the mark, version 2, the section.
        let mut value = UNCLAIMED_MARK.to_vec();
        value.extend_from_slice(&2u32.to_le_bytes());
        value.extend_from_slice(&section("tuple<u64,u64>"));
        let mut legacy = false;
        assert_eq!(
            unclaimed_section(3, &value, &mut legacy).unwrap(),
            section("tuple<u64,u64>")
        );
        assert!(!legacy);
        // flowstate 0.1's: a bare version-1 section, read with legacy names.
        assert_eq!(
            unclaimed_section(3, &section("(u64, u64)"), &mut legacy).unwrap(),
            section("~rust:(u64, u64)")
        );
        assert!(legacy);
        // An unknown version is refused.
        let mut value = UNCLAIMED_MARK.to_vec();
        value.extend_from_slice(&3u32.to_le_bytes());
        value.extend_from_slice(&section("u64"));
        assert!(unclaimed_section(3, &value, &mut legacy).is_err());
    }
}
