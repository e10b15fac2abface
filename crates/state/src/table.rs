//! Typed state tables: the storage of one declared state across the key groups of
//! one operator instance.
//!
//! Each state kind has its own table trait so that every backend can lay the kind
//! out in its own way (a serialising backend stores map entries as separate keys,
//! for example). Every operation names the key group explicitly: the caller has
//! computed it already, and a backend laid out by key group uses it directly.

use crate::KeyGroup;
use crate::error::StateError;

/// Operations common to every table, independent of its value type.
pub trait KeyedTable<K>: Send {
    /// The declared state name.
    fn name(&self) -> &str;
    /// Number of keys with an entry in `key_group`.
    fn key_count(&self, key_group: KeyGroup) -> Result<usize, StateError>;
    /// Removes every entry.
    fn clear(&mut self) -> Result<(), StateError>;
    /// Freezes the table for an asynchronous snapshot (the synchronous part).
    /// Serialised tables are snapshotted through their store instead.
    fn snapshot(&mut self) -> Result<Box<dyn crate::snapshot::TableSnapshot>, StateError>;
    /// Loads the entries of one key group from a snapshot payload.
    fn restore_key_group(&mut self, key_group: KeyGroup, payload: &[u8]) -> Result<(), StateError>;
    /// A TTL'd state whose canonical snapshots leave expired entries out: its
    /// TTL in milliseconds (`None`: no TTL, or no snapshot cleanup). A
    /// serialising backend filters the store's bytes by it.
    fn snapshot_ttl_ms(&self) -> Option<i64> {
        None
    }
    /// TTL incremental cleanup: checks up to `budget` further entries (from where
    /// the last call stopped, going round the instance's key groups) and removes
    /// the expired ones. Called only on tables of TTL'd states (which store
    /// [`crate::ttl::TtlValue`]s); a no-op elsewhere.
    fn ttl_cleanup_step(
        &mut self,
        _budget: usize,
        _expiry: crate::ttl::Expiry,
    ) -> Result<(), StateError> {
        Ok(())
    }
    /// A hint: the entries of `keys` are about to be accessed, one by one.
    /// A table in memory looks them all up now, in one tight loop, so that
    /// the processor overlaps the cache misses that the per-record accesses
    /// would otherwise take one at a time. Changes nothing; default: no-op.
    fn prefetch(&mut self, _keys: &[(KeyGroup, K)]) {}
}

/// Storage of a `ValueState<V>`: at most one `V` per key.
pub trait ValueTable<K, V>: KeyedTable<K> {
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<&V>, StateError>;
    fn put(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError>;
    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<V>, StateError>;
    /// Replaces the value by `f(old)` in one lookup; `None` removes it. Returns the
    /// new value.
    fn update(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(Option<V>) -> Option<V>,
    ) -> Result<Option<&V>, StateError>;
    /// Changes the value in place, inserting `init()` first if there is none: the
    /// common read-modify-write in one lookup, without moving the value.
    fn modify(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        init: &mut dyn FnMut() -> V,
        f: &mut dyn FnMut(&mut V),
    ) -> Result<(), StateError>;
    /// Calls `f` for every key and value of the table, key group by key group.
    fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) -> Result<(), StateError>;
    /// This table as the heap backend's, for [`crate::ValueState::modify`]'s
    /// inlined read-modify-write (the user's closures called directly, not
    /// through `modify`'s dynamic ones: the hot path of an aggregation).
    /// `None` for every other table, which `modify` serves.
    #[inline]
    fn as_heap(&mut self) -> Option<&mut crate::heap::HeapTable<K, V>> {
        None
    }
}

/// Storage of a `ListState<V>`: an ordered list of `V` per key.
pub trait ListTable<K, V>: KeyedTable<K> {
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<&[V], StateError>;
    fn add(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError>;
    fn replace(&mut self, key_group: KeyGroup, key: &K, values: Vec<V>) -> Result<(), StateError>;
    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError>;
    fn for_each(&mut self, f: &mut dyn FnMut(&K, &[V])) -> Result<(), StateError>;
}

/// Storage of a `MapState<UK, UV>`: a map from user keys to user values per key.
pub trait MapTable<K, UK, UV>: KeyedTable<K> {
    fn get(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<&UV>, StateError>;
    fn put(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: UK,
        value: UV,
    ) -> Result<(), StateError>;
    fn remove(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<UV>, StateError>;
    fn len(&mut self, key_group: KeyGroup, key: &K) -> Result<usize, StateError>;
    /// Calls `f` on every entry of the current key's map (in no particular order).
    fn for_each_entry(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(&UK, &UV),
    ) -> Result<(), StateError>;
    fn remove_all(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError>;
}
