//! The heap backend: state as Rust objects in memory.
//!
//! Layout: every table keeps one hash map per key group of the instance's
//! range. A snapshot freezes every map in O(key groups) ([`HeapTable::freeze`]):
//! the map moves into an `Arc` that the table keeps reading and the snapshot's
//! [`FrozenGroup`] holds. Whoever comes first then serialises the group: the
//! snapshot's writer (the upload thread), or the table's next write to it, which
//! encodes the group's section for the snapshot and takes its map back without
//! copying it. So the synchronous part does not grow with the state, a snapshot
//! costs one encoding of each group whoever does it, memory holds at most a
//! budget of encoded bytes besides the state (never a second copy of the
//! maps: the writer frees each group as it writes it, and a table over budget
//! waits for it), and the hot path takes no lock and no atomic operation once
//! a key group is owned again (the hand-over and the budget live in
//! [`frozen`]). (Before, a write to a frozen
//! group copied it: with W's state touched all over between checkpoints, every
//! checkpoint copied the whole state, and the kernel's zeroing of the copies'
//! fresh pages cost more than the copies.)

use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use crate::backend::{
    BackendKind, BackendSnapshot, Declarations, KeyedStateBackend, SnapshotRequest, StateId,
    TableLayout, TableSlot,
};
use crate::descriptor::StateSignature;
use crate::error::StateError;
use crate::key_group::KeyGroupRange;
use crate::snapshot::{KeyedStateSnapshot, RestoredKeyedState};
use crate::snapshot::{decode_entries, encode_entries};
use crate::table::{KeyedTable, ListTable, MapTable, ValueTable};
use crate::ttl::{Expiry, Pruned, TtlPrune, TtlSettings};
use crate::{KeyGroup, StateKey, StateValue};

/// The hash map of one key group. Fx hashing: keys are already spread by key group
/// and the map is never exposed to untrusted hash-flooding inputs of its own.
pub type GroupMap<K, S> = hashbrown::HashMap<K, S, FxBuildHasher>;

mod frozen;

pub use frozen::FrozenGroup;
use frozen::{BufferPool, CowMap, GroupEncoder};

/// One declared state of the heap backend: a map per key group from key to `S`
/// (`V` for value state, `Vec<V>` for lists, a map for map state).
pub struct HeapTable<K, S> {
    name: String,
    range: KeyGroupRange,
    groups: Vec<CowMap<K, S>>,
    /// Set for a TTL'd state (`S` holds `TtlValue`s): how expiry prunes an `S`.
    ttl: Option<HeapTtl<S>>,
    /// Buffers for encoded groups, reused from one snapshot to the next.
    buffers: Arc<BufferPool>,
}

/// Prunes one stored `S` of a TTL'd state.
type PruneFn<S> = fn(&S, Expiry) -> Pruned<S>;

/// The TTL bookkeeping of a heap table.
struct HeapTtl<S> {
    settings: TtlSettings,
    prune: PruneFn<S>,
    /// The key group (index) the incremental cleanup checks next.
    cursor: usize,
    /// Entries the incremental cleanup may still check: a key group is pruned
    /// whole once the credit covers it.
    credit: usize,
}

/// An immutable view of a [`HeapTable`] at the moment of [`HeapTable::freeze`]:
/// what the snapshot writes, whatever the table does afterwards.
pub struct HeapTableView<K, S> {
    pub name: String,
    pub groups: Vec<(KeyGroup, Arc<FrozenGroup<K, S>>)>,
    /// Shared with every group: the budget on encoded bytes not taken yet.
    encoder: Arc<GroupEncoder<S>>,
}

/// The least budget on a view's encoded bytes that its writer has not taken
/// yet: a small state never waits for its writer.
pub const PENDING_BUDGET_MIN: usize = 2 << 20;

/// The budget on a view's encoded bytes not taken yet, as a fraction of its
/// table's hash tables (`1 / PENDING_BUDGET_DIVISOR`): what a snapshot may add
/// to the memory of the state while its writer runs behind the table's writes.
pub const PENDING_BUDGET_DIVISOR: usize = 8;

/// Applies `prune` to every entry of one key group, thawing it only if
/// something expired.
fn prune_group<K: StateKey, S: StateValue>(
    group: &mut CowMap<K, S>,
    prune: PruneFn<S>,
    expiry: Expiry,
) {
    if group
        .read()
        .values()
        .all(|s| matches!(prune(s, expiry), Pruned::Keep))
    {
        return;
    }
    group.write().retain(|_, s| match prune(s, expiry) {
        Pruned::Keep => true,
        Pruned::Drop => false,
        Pruned::Replace(pruned) => {
            *s = pruned;
            true
        }
    });
}

impl<K: StateKey, S: StateValue> HeapTable<K, S> {
    pub fn new(name: &str, range: KeyGroupRange) -> Self {
        let groups = range
            .iter()
            .map(|_| CowMap::Owned(GroupMap::default()))
            .collect();
        Self {
            name: name.to_owned(),
            range,
            groups,
            ttl: None,
            buffers: Arc::default(),
        }
    }

    /// A table of a TTL'd state: `S` holds `TtlValue`s, pruned by `settings`
    /// in snapshots (if configured), on restore and by the incremental cleanup.
    pub fn with_ttl(name: &str, range: KeyGroupRange, settings: TtlSettings) -> Self
    where
        S: TtlPrune,
    {
        let mut table = Self::new(name, range);
        table.ttl = Some(HeapTtl {
            settings,
            prune: S::prune,
            cursor: 0,
            credit: 0,
        });
        table
    }

    /// The index of `key_group`'s map in `groups`, or the error naming the range.
    #[inline(always)]
    fn index(&self, key_group: KeyGroup) -> Result<usize, StateError> {
        self.position(key_group)
            .ok_or_else(|| self.out_of_range(key_group))
    }

    /// `key_group`'s map in `groups`, if the range holds it (one comparison:
    /// a key group below the range wraps around to a large index).
    #[inline(always)]
    fn position(&self, key_group: KeyGroup) -> Option<usize> {
        let index = key_group.wrapping_sub(self.range.start) as usize;
        (index < self.groups.len()).then_some(index)
    }

    #[cold]
    #[inline(never)]
    fn out_of_range(&self, key_group: KeyGroup) -> StateError {
        StateError::KeyGroupOutOfRange {
            key_group,
            range: self.range.to_string(),
        }
    }

    #[inline(always)]
    fn read(&self, key_group: KeyGroup) -> Result<&GroupMap<K, S>, StateError> {
        let i = self.index(key_group)?;
        Ok(self.groups[i].read())
    }

    #[inline(always)]
    fn write(&mut self, key_group: KeyGroup) -> Result<&mut GroupMap<K, S>, StateError> {
        let i = self.index(key_group)?;
        Ok(self.groups[i].write())
    }

    /// Changes the value of `key` in place (inserting `init()` first if there is
    /// none) and returns what `f` returns: generic, so that the value state's
    /// hot path inlines the user's closures ([`ValueTable::as_heap`]).
    #[inline(always)]
    pub(crate) fn modify_in_place<R>(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        init: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> Result<R, StateError> {
        let map = self.write(key_group)?;
        Ok(match map.get_mut(key) {
            Some(value) => f(value),
            None => {
                let mut value = init();
                let result = f(&mut value);
                map.insert(key.clone(), value);
                result
            }
        })
    }

    /// Freezes every key group and returns a view that later writes never change.
    /// O(number of key groups), independent of the number of keys.
    pub fn freeze(&mut self) -> HeapTableView<K, S> {
        self.freeze_with_budget(None)
    }

    /// [`Self::freeze`] with a budget on the view's encoded bytes not taken
    /// yet: `None` for the default (`PENDING_BUDGET_MIN` or a
    /// `PENDING_BUDGET_DIVISOR`th of the hash tables, whichever is larger).
    pub(crate) fn freeze_with_budget(&mut self, budget: Option<usize>) -> HeapTableView<K, S> {
        let prune = self.ttl.as_ref().and_then(|ttl| {
            ttl.settings
                .config
                .cleanup
                .in_snapshots
                .then(|| (ttl.settings.expiry(), ttl.prune))
        });
        // The hash tables' own bytes (what a `Vec` or `String` in `S` holds
        // besides is not counted: the budget errs on the small side).
        let table_bytes: usize = self
            .groups
            .iter()
            .map(|group| group.read().allocation_size())
            .sum();
        let budget =
            budget.unwrap_or_else(|| PENDING_BUDGET_MIN.max(table_bytes / PENDING_BUDGET_DIVISOR));
        self.buffers.set_limit(budget);
        let encoder = Arc::new(GroupEncoder::new(
            self.name.clone(),
            prune,
            budget,
            Arc::clone(&self.buffers),
        ));
        let start = self.range.start;
        let groups = self
            .groups
            .iter_mut()
            .enumerate()
            .map(|(i, group)| (start + i as KeyGroup, group.freeze(&encoder)))
            .collect();
        HeapTableView {
            name: self.name.clone(),
            groups,
            encoder,
        }
    }

    fn for_each_entry(&self, f: &mut dyn FnMut(&K, &S)) {
        for group in &self.groups {
            for (k, s) in group.read() {
                f(k, s);
            }
        }
    }
}

impl<K, S> HeapTableView<K, S> {
    /// The encoded bytes the view holds that its writer has not taken: (now,
    /// the most ever held, the budget).
    pub fn pending_bytes(&self) -> (usize, usize, usize) {
        self.encoder.pending.figures()
    }

    fn group(&self, key_group: KeyGroup) -> Option<&Arc<FrozenGroup<K, S>>> {
        // The groups are the range's, in order.
        let first = self.groups.first()?.0;
        let (g, group) = self.groups.get(key_group.checked_sub(first)? as usize)?;
        (*g == key_group).then_some(group)
    }
}

impl<K: StateKey, S: StateValue> crate::snapshot::TableSnapshot for HeapTableView<K, S> {
    fn write_key_group(&self, key_group: KeyGroup, out: &mut Vec<u8>) -> Result<u64, StateError> {
        match self.group(key_group) {
            Some(group) => group.write(out),
            None => {
                encode_entries::<K, S>(&self.name, std::iter::empty(), out)?;
                Ok(0)
            }
        }
    }

    fn take_key_group(&self, key_group: KeyGroup, out: &mut Vec<u8>) -> Result<u64, StateError> {
        match self.group(key_group) {
            Some(group) => group.take(out),
            None => self.write_key_group(key_group, out),
        }
    }

    fn begin_write(&self) {
        self.encoder.pending.begin_write();
    }

    fn end_write(&self) {
        self.encoder.pending.end_write();
    }
}

impl<K: StateKey, S: StateValue> KeyedTable<K> for HeapTable<K, S> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Looks every key up and drops the result: a loop of independent loads
    /// that the processor runs several at a time, leaving the entries in cache
    /// for the accesses that follow.
    fn prefetch(&mut self, keys: &[(KeyGroup, K)]) {
        for (key_group, key) in keys {
            if let Some(index) = self.position(*key_group) {
                std::hint::black_box(self.groups[index].read().get(key));
            }
        }
    }

    fn key_count(&self, key_group: KeyGroup) -> Result<usize, StateError> {
        Ok(self.read(key_group).map(|m| m.len()).unwrap_or(0))
    }

    fn clear(&mut self) -> Result<(), StateError> {
        for group in &mut self.groups {
            *group = CowMap::Owned(GroupMap::default());
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Box<dyn crate::snapshot::TableSnapshot>, StateError> {
        Ok(Box::new(self.freeze()))
    }

    fn restore_key_group(&mut self, key_group: KeyGroup, payload: &[u8]) -> Result<(), StateError> {
        let name = self.name.clone();
        // A TTL'd state restores only what has not expired.
        let prune = self
            .ttl
            .as_ref()
            .map(|ttl| (ttl.settings.expiry(), ttl.prune));
        let map = self.write(key_group)?;
        if let Some(count) = payload.get(..8) {
            // Size the map once instead of growing it through every power of two.
            let count = u64::from_le_bytes(count.try_into().unwrap_or([0; 8]));
            map.reserve(usize::try_from(count).unwrap_or(0).min(payload.len() / 2));
        }
        decode_entries::<K, S>(&name, payload, |key, value| match prune {
            None => {
                map.insert(key, value);
            }
            Some((expiry, prune)) => match prune(&value, expiry) {
                Pruned::Keep => {
                    map.insert(key, value);
                }
                Pruned::Drop => {}
                Pruned::Replace(pruned) => {
                    map.insert(key, pruned);
                }
            },
        })
    }

    fn ttl_cleanup_step(&mut self, budget: usize, expiry: Expiry) -> Result<(), StateError> {
        let Some(ttl) = self.ttl.as_mut() else {
            return Ok(());
        };
        let groups = self.groups.len();
        ttl.credit = ttl.credit.saturating_add(budget);
        // A key group is checked whole once the credit covers it, so the cost
        // per access is `budget` entries amortised (one key group at most at once).
        for _ in 0..groups {
            let group = &mut self.groups[ttl.cursor];
            let len = group.read().len();
            if len > ttl.credit {
                return Ok(());
            }
            ttl.credit -= len;
            prune_group(group, ttl.prune, expiry);
            ttl.cursor = (ttl.cursor + 1) % groups;
        }
        // Went round every key group: no credit is saved for later.
        ttl.credit = 0;
        Ok(())
    }
}

impl<K: StateKey, V: StateValue> ValueTable<K, V> for HeapTable<K, V> {
    #[inline]
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<&V>, StateError> {
        Ok(self.read(key_group)?.get(key))
    }

    #[inline]
    fn put(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError> {
        self.write(key_group)?.insert(key.clone(), value);
        Ok(())
    }

    #[inline]
    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<V>, StateError> {
        Ok(self.write(key_group)?.remove(key))
    }

    #[inline]
    fn update(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(Option<V>) -> Option<V>,
    ) -> Result<Option<&V>, StateError> {
        use hashbrown::hash_map::Entry;
        let map = self.write(key_group)?;
        let entry = match map.entry(key.clone()) {
            Entry::Occupied(occupied) => occupied.replace_entry_with(|_, old| f(Some(old))),
            vacant => vacant,
        };
        Ok(match entry {
            Entry::Occupied(occupied) => Some(&*occupied.into_mut()),
            Entry::Vacant(vacant) => match f(None) {
                Some(value) => Some(&*vacant.insert(value)),
                None => None,
            },
        })
    }

    #[inline]
    fn modify(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        init: &mut dyn FnMut() -> V,
        f: &mut dyn FnMut(&mut V),
    ) -> Result<(), StateError> {
        self.modify_in_place(key_group, key, init, f)
    }

    #[inline]
    fn as_heap(&mut self) -> Option<&mut HeapTable<K, V>> {
        Some(self)
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) -> Result<(), StateError> {
        self.for_each_entry(f);
        Ok(())
    }
}

impl<K: StateKey, V: StateValue> ListTable<K, V> for HeapTable<K, Vec<V>> {
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<&[V], StateError> {
        Ok(self
            .read(key_group)?
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or(&[]))
    }

    fn add(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError> {
        let map = self.write(key_group)?;
        match map.get_mut(key) {
            Some(list) => list.push(value),
            None => {
                map.insert(key.clone(), vec![value]);
            }
        }
        Ok(())
    }

    fn replace(&mut self, key_group: KeyGroup, key: &K, values: Vec<V>) -> Result<(), StateError> {
        let map = self.write(key_group)?;
        if values.is_empty() {
            map.remove(key);
        } else {
            map.insert(key.clone(), values);
        }
        Ok(())
    }

    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError> {
        self.write(key_group)?.remove(key);
        Ok(())
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &[V])) -> Result<(), StateError> {
        self.for_each_entry(&mut |k, list: &Vec<V>| f(k, list));
        Ok(())
    }
}

impl<K, UK, UV> MapTable<K, UK, UV> for HeapTable<K, GroupMap<UK, UV>>
where
    K: StateKey,
    UK: StateKey,
    UV: StateValue,
{
    fn get(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<&UV>, StateError> {
        Ok(self.read(key_group)?.get(key).and_then(|m| m.get(user_key)))
    }

    fn put(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: UK,
        value: UV,
    ) -> Result<(), StateError> {
        let map = self.write(key_group)?;
        match map.get_mut(key) {
            Some(inner) => {
                inner.insert(user_key, value);
            }
            None => {
                let mut inner = GroupMap::default();
                inner.insert(user_key, value);
                map.insert(key.clone(), inner);
            }
        }
        Ok(())
    }

    fn remove(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<UV>, StateError> {
        let map = self.write(key_group)?;
        let Some(inner) = map.get_mut(key) else {
            return Ok(None);
        };
        let removed = inner.remove(user_key);
        if inner.is_empty() {
            map.remove(key);
        }
        Ok(removed)
    }

    fn len(&mut self, key_group: KeyGroup, key: &K) -> Result<usize, StateError> {
        Ok(self.read(key_group)?.get(key).map_or(0, |m| m.len()))
    }

    fn for_each_entry(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(&UK, &UV),
    ) -> Result<(), StateError> {
        if let Some(inner) = self.read(key_group)?.get(key) {
            for (uk, uv) in inner {
                f(uk, uv);
            }
        }
        Ok(())
    }

    fn remove_all(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError> {
        self.write(key_group)?.remove(key);
        Ok(())
    }
}

/// The heap backend of one operator instance.
pub struct HeapKeyedStateBackend<K> {
    range: KeyGroupRange,
    max_parallelism: u32,
    declarations: Declarations<K>,
    clock: crate::clock::SharedClock,
}

impl<K: StateKey> HeapKeyedStateBackend<K> {
    pub fn new(range: KeyGroupRange, max_parallelism: u32) -> Self {
        assert!(
            range.end <= max_parallelism,
            "range {range} beyond max parallelism {max_parallelism}"
        );
        Self {
            range,
            max_parallelism,
            declarations: Declarations::new(),
            clock: crate::clock::system_clock(),
        }
    }

    /// Reads processing time (state TTL) from `clock`.
    pub fn with_clock(mut self, clock: crate::clock::SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

impl<K: StateKey> KeyedStateBackend<K> for HeapKeyedStateBackend<K> {
    fn kind(&self) -> BackendKind {
        BackendKind::Heap
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
        let range = self.range;
        self.declarations
            .declare(signature, &mut |_| Ok(TableLayout::Heap { range }), create)
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

    fn state_stats(&mut self) -> Vec<crate::backend::StateStats> {
        let range = self.range;
        self.declarations
            .tables_mut()
            .map(|(signature, slot)| {
                let table = slot.table();
                let entries = range
                    .iter()
                    .map(|group| table.key_count(group).unwrap_or(0) as u64)
                    .sum();
                crate::backend::StateStats {
                    name: signature.name.clone(),
                    entries,
                    bytes: None,
                    estimated: false,
                }
            })
            .collect()
    }

    fn key_count(&mut self, key_group: KeyGroup) -> Result<usize, StateError> {
        self.declarations.key_count(key_group)
    }

    fn snapshot(&mut self, _request: SnapshotRequest) -> Result<BackendSnapshot, StateError> {
        let states = self
            .declarations
            .snapshot_with(&mut |_, slot| slot.table().snapshot())?;
        Ok(BackendSnapshot::KeyGroups(KeyedStateSnapshot {
            range: self.range,
            key_type: crate::state_type_name::<K>(),
            states,
        }))
    }

    fn restore(&mut self, restored: RestoredKeyedState) -> Result<(), StateError> {
        if let Some(native) = restored.native.first() {
            // Never start empty in silence: the state is there, in another format.
            return Err(StateError::Unsupported(format!(
                "the checkpoint holds native {} files for key groups {}; the heap backend reads only the canonical format: restore with --state-backend {} or from a savepoint",
                native.backend, native.range, native.backend
            )));
        }
        self.declarations.restore(self.range, &restored)
    }

    fn unclaimed_restored_states(&self) -> Vec<String> {
        self.declarations.unclaimed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_view_does_not_see_later_writes() {
        let range = KeyGroupRange::new(0, 4);
        let mut table = HeapTable::<u64, u64>::new("t", range);
        for k in 0..100u64 {
            ValueTable::put(&mut table, (k % 4) as u32, &k, k).unwrap();
        }
        let view = table.freeze();
        for k in 0..100u64 {
            ValueTable::put(&mut table, (k % 4) as u32, &k, k + 1000).unwrap();
        }
        ValueTable::put(&mut table, 0, &1000, 1).unwrap();
        let frozen: Vec<(u64, u64)> = (0..4).flat_map(|g| view_entries(&view, g)).collect();
        assert_eq!(
            frozen.iter().map(|(_, v)| v).sum::<u64>(),
            (0..100).sum::<u64>()
        );
        assert_eq!(frozen.len(), 100);
        assert_eq!(ValueTable::get(&mut table, 2, &2).unwrap(), Some(&1002));
    }

    /// What `view` writes for `key_group`, decoded, sorted by key.
    fn view_entries<V: StateValue>(
        view: &HeapTableView<u64, V>,
        key_group: KeyGroup,
    ) -> Vec<(u64, V)> {
        use crate::snapshot::TableSnapshot;
        let mut bytes = Vec::new();
        let entries = view.write_key_group(key_group, &mut bytes).unwrap();
        let mut decoded = Vec::new();
        decode_entries::<u64, V>("t", &bytes, |k, v| decoded.push((k, v))).unwrap();
        assert_eq!(decoded.len() as u64, entries);
        decoded.sort_by_key(|(k, _)| *k);
        decoded
    }

    thread_local! {
        static CLONES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Counted(u64);
    crate::state_type!(Counted => "test.Counted");

    impl Clone for Counted {
        fn clone(&self) -> Self {
            CLONES.with(|c| c.set(c.get() + 1));
            Counted(self.0)
        }
    }

    /// The first write to a key group a snapshot still holds serialises the
    /// group for the snapshot and takes the map back: no entry is copied, the
    /// snapshot writes the group as of the freeze, the table has the write.
    /// A snapshot released before the write costs nothing either.
    #[test]
    fn a_write_during_a_snapshot_encodes_the_group_for_it_instead_of_copying() {
        let mut table = HeapTable::<u64, Counted>::new("t", KeyGroupRange::new(0, 2));
        for k in 0..10u64 {
            ValueTable::put(&mut table, (k % 2) as u32, &k, Counted(k)).unwrap();
        }
        CLONES.with(|c| c.set(0));

        // Snapshot released before the next write: taking the map back is free.
        drop(table.freeze());
        ValueTable::put(&mut table, 0, &100, Counted(100)).unwrap();
        assert_eq!(CLONES.with(|c| c.get()), 0);

        // Snapshot alive: the write encodes key group 0 for it, copies nothing.
        let view = table.freeze();
        ValueTable::put(&mut table, 0, &101, Counted(101)).unwrap();
        ValueTable::put(&mut table, 0, &102, Counted(102)).unwrap();
        ValueTable::remove(&mut table, 0, &0).unwrap();
        assert_eq!(CLONES.with(|c| c.get()), 0, "no entry copied");
        let keys =
            |entries: Vec<(u64, Counted)>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(view_entries(&view, 0)), vec![0, 2, 4, 6, 8, 100]);
        assert_eq!(keys(view_entries(&view, 1)), vec![1, 3, 5, 7, 9]);
        // Written twice, the same bytes (the view keeps what it was handed).
        assert_eq!(keys(view_entries(&view, 0)), vec![0, 2, 4, 6, 8, 100]);
        assert_eq!(KeyedTable::key_count(&table, 0).unwrap(), 7);

        // Two snapshots in flight over an unwritten group, then a write: each
        // writes the group as of its freeze.
        let older = table.freeze();
        let newer = table.freeze();
        ValueTable::put(&mut table, 1, &103, Counted(103)).unwrap();
        assert_eq!(keys(view_entries(&older, 1)), vec![1, 3, 5, 7, 9]);
        assert_eq!(keys(view_entries(&newer, 1)), vec![1, 3, 5, 7, 9]);
        assert_eq!(KeyedTable::key_count(&table, 1).unwrap(), 6);
    }

    /// A table of `groups` key groups with `per_group` entries each (key
    /// `k` in group `k % groups`, value `k`).
    fn filled_table(groups: u32, per_group: u64) -> HeapTable<u64, u64> {
        let mut table = HeapTable::<u64, u64>::new("t", KeyGroupRange::new(0, groups));
        for k in 0..groups as u64 * per_group {
            ValueTable::put(&mut table, (k % groups as u64) as u32, &k, k).unwrap();
        }
        table
    }

    /// The memory bound of a snapshot: while a writer is at work, the
    /// table's writes to groups the view still holds wait for it rather than
    /// encode more than the budget (plus the one group being encoded); the
    /// view still writes every group as of the freeze and the table has
    /// every write. The writer starts taking only once the table waits or
    /// is done with all its writes, so without the budget the table would
    /// encode every group first (the peak would be all of them).
    #[test]
    fn encoded_bytes_not_taken_stay_within_the_budget_while_a_writer_is_at_work() {
        use crate::snapshot::TableSnapshot;
        use std::sync::atomic::{AtomicBool, Ordering};
        const GROUPS: u32 = 32;
        const PER_GROUP: u64 = 1000;
        // One group's payload: the count, then 16 bytes per entry.
        let group_bytes = 8 + 16 * PER_GROUP as usize;
        let budget = 4 * group_bytes;
        let mut table = filled_table(GROUPS, PER_GROUP);
        let view = Arc::new(table.freeze_with_budget(Some(budget)));
        let table_done = Arc::new(AtomicBool::new(false));
        view.begin_write();
        let writer = {
            let (view, table_done) = (Arc::clone(&view), Arc::clone(&table_done));
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                while view.encoder.pending.waiting() == 0 && !table_done.load(Ordering::Acquire) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the table neither waited nor finished"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let mut taken = Vec::new();
                for g in 0..GROUPS {
                    let mut bytes = Vec::new();
                    view.take_key_group(g, &mut bytes).unwrap();
                    taken.push(bytes);
                }
                view.end_write();
                taken
            })
        };
        // The groups the writer reaches last, first.
        for g in (0..GROUPS).rev() {
            ValueTable::put(&mut table, g, &(1_000_000 + g as u64), 1).unwrap();
        }
        table_done.store(true, Ordering::Release);
        let taken = writer.join().unwrap();
        let (now, peak, _) = view.pending_bytes();
        assert_eq!(now, 0, "every encoded group was taken");
        // Under the budget, then one group more (the first group's buffer
        // grows by doubling, later ones are sized from its bytes per entry).
        assert!(
            peak < budget + group_bytes.next_power_of_two(),
            "{peak} bytes held against a budget of {budget}"
        );
        for (g, bytes) in taken.iter().enumerate() {
            let mut keys = Vec::new();
            decode_entries::<u64, u64>("t", bytes, |k, v| {
                assert_eq!(k, v, "as of the freeze");
                keys.push(k);
            })
            .unwrap();
            keys.sort_unstable();
            let expected: Vec<u64> = (0..PER_GROUP)
                .map(|i| i * GROUPS as u64 + g as u64)
                .collect();
            assert_eq!(keys, expected, "group {g}");
            assert_eq!(
                KeyedTable::key_count(&table, g as u32).unwrap(),
                PER_GROUP as usize + 1
            );
        }
        // Taken once: writing a group again is an error, not other bytes.
        assert!(view.take_key_group(0, &mut Vec::new()).is_err());
        assert!(view.write_key_group(0, &mut Vec::new()).is_err());
    }

    /// With no writer at work (not begun, or done), a write over budget
    /// encodes the group and goes on: nothing waits for a writer that may
    /// never come (a queued snapshot, a single thread doing both).
    #[test]
    fn with_no_writer_at_work_a_write_over_budget_does_not_wait() {
        use crate::snapshot::TableSnapshot;
        let mut table = filled_table(8, 100);
        let view = table.freeze_with_budget(Some(1));
        for g in 0..8 {
            ValueTable::put(&mut table, g, &1_000_000, 1).unwrap();
        }
        let (_, peak, _) = view.pending_bytes();
        assert!(peak >= 8 * (8 + 16 * 100), "all encoded: {peak}");
        // A writer that came and went.
        let view = table.freeze_with_budget(Some(1));
        view.begin_write();
        view.end_write();
        for g in 0..8 {
            ValueTable::put(&mut table, g, &1_000_001, 1).unwrap();
        }
        assert_eq!(view_entries(&view, 3).len(), 101);
    }

    /// A group the writer has taken is handed back to the table without
    /// being encoded again or copied, and its bytes are freed at once.
    #[test]
    fn a_group_taken_by_the_writer_costs_the_table_nothing() {
        use crate::snapshot::TableSnapshot;
        let mut table = HeapTable::<u64, Counted>::new("t", KeyGroupRange::new(0, 2));
        for k in 0..10u64 {
            ValueTable::put(&mut table, (k % 2) as u32, &k, Counted(k)).unwrap();
        }
        CLONES.with(|c| c.set(0));
        let view = table.freeze();
        view.begin_write();
        let mut bytes = Vec::new();
        view.take_key_group(0, &mut bytes).unwrap();
        ValueTable::put(&mut table, 0, &100, Counted(100)).unwrap();
        assert_eq!(view.pending_bytes().1, 0, "nothing encoded for the view");
        // Group 1, encoded by the table's write, then taken: freed.
        ValueTable::put(&mut table, 1, &101, Counted(101)).unwrap();
        assert!(view.pending_bytes().0 > 0);
        view.take_key_group(1, &mut bytes).unwrap();
        view.end_write();
        assert_eq!(view.pending_bytes().0, 0);
        assert_eq!(CLONES.with(|c| c.get()), 0, "no entry copied");
    }

    /// The buffers a writer took serve the next snapshot's hand-overs
    /// instead of fresh allocations, and the pool keeps no more than the
    /// budget.
    #[test]
    fn the_buffers_of_taken_groups_serve_the_next_snapshot_within_the_budget() {
        use crate::snapshot::TableSnapshot;
        let mut table = filled_table(2, 100);
        let view = table.freeze();
        view.begin_write();
        ValueTable::put(&mut table, 0, &1_000_000, 1).unwrap();
        let (held, _, _) = view.pending_bytes();
        view.take_key_group(0, &mut Vec::new()).unwrap();
        view.end_write();
        drop(view);
        assert_eq!(
            table.buffers.bytes(),
            held,
            "the taken group's buffer is pooled"
        );

        let view = table.freeze();
        ValueTable::put(&mut table, 0, &1_000_001, 1).unwrap();
        assert_eq!(table.buffers.bytes(), 0, "the hand-over took it back");
        assert_eq!(view_entries(&view, 0).len(), 101, "as of the freeze");
        view.begin_write();
        view.take_key_group(0, &mut Vec::new()).unwrap();
        view.end_write();
        assert!(table.buffers.bytes() > 0);
        // A smaller budget trims what is pooled.
        let _view = table.freeze_with_budget(Some(1));
        assert_eq!(table.buffers.bytes(), 0);
    }

    /// The hint goes to the states accessed since the last hint (the ones the
    /// next batch most likely touches), and changes no state.
    #[test]
    fn prefetch_hints_the_states_accessed_since_the_last_hint_and_changes_nothing() {
        use crate::{KeyScope, ValueStateDescriptor};
        let mut backend = HeapKeyedStateBackend::<u64>::new(KeyGroupRange::new(0, 4), 4);
        let dyn_backend: &mut dyn KeyedStateBackend<u64> = &mut backend;
        let a = dyn_backend
            .value_state(&ValueStateDescriptor::<u64>::new("a"))
            .unwrap();
        let b = dyn_backend
            .value_state(&ValueStateDescriptor::<u64>::new("b"))
            .unwrap();
        let put = |backend: &mut dyn KeyedStateBackend<u64>, key: u64, value: u64| {
            let group = crate::key_group_of(&key, 4);
            KeyScope::new(backend, &key, group)
                .value(&a)
                .set(value)
                .unwrap();
        };
        for key in 0..8 {
            put(dyn_backend, key, key * 10);
        }
        let keys: Vec<(KeyGroup, u64)> = (0..12).map(|k| (crate::key_group_of(&k, 4), k)).collect();
        assert_eq!(
            backend.declarations.prefetch(&keys),
            1,
            "only `a` was accessed"
        );
        assert_eq!(backend.declarations.prefetch(&keys), 0, "nothing since");
        let dyn_backend: &mut dyn KeyedStateBackend<u64> = &mut backend;
        put(dyn_backend, 1, 11);
        KeyScope::new(dyn_backend, &2, crate::key_group_of(&2u64, 4))
            .value(&b)
            .set(2)
            .unwrap();
        dyn_backend.prefetch(&keys);
        assert_eq!(
            backend.declarations.prefetch(&keys),
            0,
            "the hint was taken"
        );
        let dyn_backend: &mut dyn KeyedStateBackend<u64> = &mut backend;
        for key in 0..12u64 {
            let group = crate::key_group_of(&key, 4);
            let expected = match key {
                1 => Some(11),
                0..8 => Some(key * 10),
                _ => None,
            };
            let got = KeyScope::new(dyn_backend, &key, group)
                .value(&a)
                .get()
                .unwrap()
                .copied();
            assert_eq!(got, expected, "key {key}");
        }
    }

    #[test]
    fn out_of_range_key_group_is_an_error() {
        let mut table = HeapTable::<u64, u64>::new("t", KeyGroupRange::new(4, 8));
        assert!(matches!(
            ValueTable::put(&mut table, 3, &1, 1),
            Err(StateError::KeyGroupOutOfRange { key_group: 3, .. })
        ));
        assert!(ValueTable::put(&mut table, 7, &1, 1).is_ok());
        assert!(ValueTable::put(&mut table, 8, &1, 1).is_err());
    }
}
