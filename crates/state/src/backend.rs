//! The [`KeyedStateBackend`] trait: the one door through which operators reach
//! keyed state.
//!
//! A backend holds one table per declared state for the key-group range of one
//! operator instance. Tables are typed (`dyn ValueTable<K, V>` and so on) and are
//! created by the typed declaration methods on `dyn KeyedStateBackend<K>`, which ask
//! the backend for its [`TableLayout`] and build the matching table.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::descriptor::StateSignature;
use crate::error::StateError;
use crate::heap::HeapKeyedStateBackend;
use crate::key_group::KeyGroupRange;
use crate::native::NativeSnapshot;
use crate::serialized::{BackendInstance, KvColumn, KvStoreFactory, SerializedKeyedStateBackend};
use crate::snapshot::{
    KeyedStateSnapshot, RestoredKeyedState, RestoredSection, TableSnapshot, parse_section,
};
use crate::table::KeyedTable;
use crate::{KeyGroup, StateKey};

/// Index of a declared state within one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateId(pub(crate) u32);

/// Which backend holds working state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Objects in memory, laid out by key group with copy-on-write per key group.
    #[default]
    Heap,
    /// Serialised in an embedded RocksDB on local disk (crate `flowstate-state-rocksdb`).
    RocksDb,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendKind::Heap => f.write_str("heap"),
            BackendKind::RocksDb => f.write_str("rocksdb"),
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "heap" => Ok(BackendKind::Heap),
            "rocksdb" => Ok(BackendKind::RocksDb),
            other => Err(format!(
                "unknown state backend '{other}' (known: heap, rocksdb)"
            )),
        }
    }
}

/// How a backend stores tables; decides which table implementation a declaration
/// builds.
#[non_exhaustive]
pub enum TableLayout {
    /// Typed objects per key group (the heap backend).
    Heap { range: KeyGroupRange },
    /// Serialised entries in one column of a byte-level store.
    Serialized {
        range: KeyGroupRange,
        column: Box<dyn KvColumn>,
    },
}

/// What the runtime asks of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub checkpoint_id: u64,
    /// The canonical key-group format is required (savepoints); otherwise a
    /// backend may snapshot natively.
    pub canonical: bool,
}

/// The synchronous part's result: either a frozen view to be written in the
/// canonical key-group format, or the backend's native files.
#[derive(Debug)]
pub enum BackendSnapshot {
    KeyGroups(KeyedStateSnapshot),
    Native(NativeSnapshot),
}

impl std::fmt::Debug for KeyedStateSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStateSnapshot")
            .field("range", &self.range)
            .field("states", &self.states.len())
            .finish()
    }
}

/// A typed table behind `dyn Any`, plus the way back to its untyped operations.
pub struct TableSlot<K> {
    /// Holds a `Box<dyn ValueTable<K, V>>` (or `ListTable`, `MapTable`).
    pub(crate) typed: Box<dyn Any + Send>,
    pub(crate) untyped: for<'a> fn(&'a mut (dyn Any + Send)) -> Option<&'a mut dyn KeyedTable<K>>,
}

impl<K> TableSlot<K> {
    /// The table's untyped operations.
    pub fn table(&mut self) -> &mut dyn KeyedTable<K> {
        match (self.untyped)(self.typed.as_mut()) {
            Some(table) => table,
            None => unreachable!("a table slot's accessor matches its table by construction"),
        }
    }

    /// The typed table; panics if the handle was declared with other types, which
    /// the declaration check rules out for handles of this backend.
    pub(crate) fn typed<T: Any>(&mut self) -> &mut T {
        match self.typed.downcast_mut::<T>() {
            Some(t) => t,
            None => panic!(
                "state handle used with a table of another type (a handle from another operator?)"
            ),
        }
    }
}

macro_rules! slot_constructor {
    ($fn_name:ident, $table:ident < $($p:ident),* >) => {
        pub(crate) fn $fn_name<K: StateKey, $($p: 'static),*>(
            table: Box<dyn crate::table::$table<K, $($p),*>>,
        ) -> TableSlot<K> {
            TableSlot {
                typed: Box::new(table),
                untyped: |any| {
                    any.downcast_mut::<Box<dyn crate::table::$table<K, $($p),*>>>()
                        .map(|t| &mut **t as &mut dyn KeyedTable<K>)
                },
            }
        }
    };
}
slot_constructor!(value_slot, ValueTable<V>);
slot_constructor!(list_slot, ListTable<V>);
slot_constructor!(map_slot, MapTable<UK, UV>);

/// Keyed state of one operator instance.
///
/// Object safe: operators hold a `Box<dyn KeyedStateBackend<K>>` and never know
/// which backend it is. Typed declaration and access are inherent methods on
/// `dyn KeyedStateBackend<K>` (see [`crate::access`]).
pub trait KeyedStateBackend<K: StateKey>: Send {
    fn kind(&self) -> BackendKind;
    /// Processing time, as state TTL reads it.
    fn clock(&self) -> crate::clock::SharedClock {
        crate::clock::system_clock()
    }
    fn key_group_range(&self) -> KeyGroupRange;
    fn max_parallelism(&self) -> u32;
    /// Declares a state: returns the id of the existing table if `signature` was
    /// declared before (and matches), or stores `create()` under a new id.
    fn declare(
        &mut self,
        signature: StateSignature,
        create: &mut dyn FnMut(TableLayout) -> TableSlot<K>,
    ) -> Result<StateId, StateError>;
    fn slot(&mut self, id: StateId) -> &mut TableSlot<K>;
    /// A hint before a batch: the keys (with their key groups) about to be
    /// accessed, in order. A backend may warm what the states accessed since
    /// the last hint hold for them; nothing changes. Default: no-op.
    fn prefetch(&mut self, _keys: &[(KeyGroup, K)]) {}
    /// Every declared state, in declaration order.
    fn signatures(&self) -> Vec<StateSignature>;
    /// Number of keys with an entry in `key_group`, summed over all states.
    fn key_count(&mut self, key_group: KeyGroup) -> Result<usize, StateError>;
    /// The synchronous part of a snapshot: a consistent, frozen view of every
    /// state (or the backend's native files) that another thread writes to
    /// checkpoint storage while processing goes on.
    fn snapshot(&mut self, request: SnapshotRequest) -> Result<BackendSnapshot, StateError>;
    /// Loads snapshot sections (before or after states are declared: a section
    /// of a state not declared yet is decoded when it is declared).
    fn restore(&mut self, restored: RestoredKeyedState) -> Result<(), StateError>;
    /// Names of restored states that no declaration has claimed.
    fn unclaimed_restored_states(&self) -> Vec<String>;
    /// Checkpoint `id` completed everywhere (a backend may now reuse its files).
    fn notify_checkpoint_complete(&mut self, _id: u64) {}
    /// Checkpoint `id` was aborted.
    fn notify_checkpoint_aborted(&mut self, _id: u64) {}
    /// The size of every declared state, as far as the backend can tell it
    /// cheaply (metrics: sampled now and then, never per record). Default:
    /// nothing known.
    fn state_stats(&mut self) -> Vec<StateStats> {
        Vec::new()
    }
}

/// How big one state is, for metrics ([`KeyedStateBackend::state_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateStats {
    /// The state's declared name.
    pub name: String,
    /// Keys with an entry (exact on the heap; an estimate of the store's
    /// entries when `estimated`).
    pub entries: u64,
    /// Bytes the state takes, when the backend knows (RocksDB: its
    /// estimate of live data plus memtables); the heap backend does not.
    pub bytes: Option<u64>,
    /// The figures are the backend's estimates, not counts.
    pub estimated: bool,
}

/// Which backend a job's keyed operators use.
#[derive(Clone, Default)]
pub enum StateBackendConfig {
    #[default]
    Heap,
    /// A serialising backend over stores from this factory.
    Store(Arc<dyn KvStoreFactory>),
}

impl StateBackendConfig {
    pub fn kind(&self) -> BackendKind {
        match self {
            StateBackendConfig::Heap => BackendKind::Heap,
            StateBackendConfig::Store(factory) => factory.kind(),
        }
    }
}

impl std::fmt::Debug for StateBackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind())
    }
}

/// Creates the backend of one operator instance.
pub fn create_keyed_backend<K: StateKey>(
    config: &StateBackendConfig,
    instance: &BackendInstance,
) -> Result<Box<dyn KeyedStateBackend<K>>, StateError> {
    Ok(match config {
        StateBackendConfig::Heap => Box::new(
            HeapKeyedStateBackend::<K>::new(instance.range, instance.max_parallelism)
                .with_clock(Arc::clone(&instance.clock)),
        ),
        StateBackendConfig::Store(factory) => Box::new(
            SerializedKeyedStateBackend::<K>::new(
                factory.open(instance)?,
                instance.range,
                instance.max_parallelism,
            )
            .with_clock(Arc::clone(&instance.clock)),
        ),
    })
}

/// A heap backend for `range` (tests and tools).
pub fn heap_backend<K: StateKey>(
    range: KeyGroupRange,
    max_parallelism: u32,
) -> Box<dyn KeyedStateBackend<K>> {
    Box::new(HeapKeyedStateBackend::<K>::new(range, max_parallelism))
}

/// One state of a snapshot.
pub(crate) type StateSnapshotEntry = (StateSignature, Box<dyn TableSnapshot>);
/// Snapshots one declared table.
pub(crate) type SnapshotTableFn<'a, K> = dyn FnMut(&StateSignature, &mut TableSlot<K>) -> Result<Box<dyn TableSnapshot>, StateError>
    + 'a;

/// The declaration bookkeeping every backend shares: signatures checked against
/// earlier declarations, tables stored by id, restored sections waiting for
/// their state to be declared.
pub(crate) struct Declarations<K> {
    entries: Vec<(StateSignature, TableSlot<K>)>,
    /// Per entry: accessed since the last [`Declarations::prefetch`].
    touched: Vec<bool>,
    waiting: HashMap<String, Vec<RestoredSection>>,
}

/// Checks a state's kind and recorded type names (read from a snapshot)
/// against its declaration: a kind mismatch is an
/// [`StateError::IncompatibleDeclaration`], a type mismatch a
/// [`StateError::RestoredTypeMismatch`] naming both.
pub fn check_restored(
    signature: &StateSignature,
    kind: crate::StateKind,
    types: &str,
) -> Result<(), StateError> {
    if kind != signature.kind {
        return Err(StateError::IncompatibleDeclaration {
            name: signature.name.clone(),
            existing: format!("{kind} state of {types} (in the snapshot)"),
            requested: signature.to_string(),
        });
    }
    if !signature.matches_recorded(types) {
        let (recorded_ttl, requested_ttl) = (
            crate::ttl::is_ttl_type_name(types),
            crate::ttl::is_ttl_type_name(&signature.types),
        );
        if recorded_ttl != requested_ttl {
            let with = |ttl: bool| if ttl { "with TTL" } else { "without TTL" };
            return Err(StateError::TtlMismatch {
                state: signature.name.clone(),
                recorded_ttl: with(recorded_ttl),
                requested_ttl: with(requested_ttl),
                recorded: types.to_owned(),
                requested: signature.types.clone(),
            });
        }
        return Err(StateError::RestoredTypeMismatch {
            state: signature.name.clone(),
            kind,
            recorded: types.to_owned(),
            requested: signature.types.clone(),
        });
    }
    Ok(())
}

/// At most this many states per operator instance (a limit on everything).
pub const MAX_STATES_PER_OPERATOR: usize = 1024;
/// Longest accepted state name, in bytes.
pub const MAX_STATE_NAME_BYTES: usize = 256;

impl<K> Declarations<K> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::new(),
            touched: Vec::new(),
            waiting: HashMap::new(),
        }
    }

    fn load(
        signature: &StateSignature,
        slot: &mut TableSlot<K>,
        section: &RestoredSection,
    ) -> Result<(), StateError> {
        check_restored(signature, section.kind, &section.types)?;
        slot.table()
            .restore_key_group(section.key_group, &section.payload)
    }

    pub(crate) fn restore(
        &mut self,
        range: KeyGroupRange,
        restored: &RestoredKeyedState,
    ) -> Result<(), StateError> {
        restored.for_each_section(&mut |key_group, bytes| {
            if !range.contains(key_group) {
                return Err(StateError::KeyGroupOutOfRange {
                    key_group,
                    range: range.to_string(),
                });
            }
            for (name, section) in parse_section(key_group, bytes)? {
                match self.entries.iter_mut().find(|(s, _)| s.name == name) {
                    Some((signature, slot)) => Self::load(signature, slot, &section)?,
                    None => self.waiting.entry(name).or_default().push(section),
                }
            }
            Ok(())
        })
    }

    pub(crate) fn unclaimed(&self) -> Vec<String> {
        let mut names: Vec<String> = self.waiting.keys().cloned().collect();
        names.sort();
        names
    }

    /// Every declared state's snapshot (made by `f`), then the restored sections
    /// nobody declared.
    pub(crate) fn snapshot_with(
        &mut self,
        f: &mut SnapshotTableFn<'_, K>,
    ) -> Result<Vec<StateSnapshotEntry>, StateError> {
        let mut states: Vec<StateSnapshotEntry> =
            Vec::with_capacity(self.entries.len() + self.waiting.len());
        for (signature, slot) in &mut self.entries {
            states.push((signature.clone(), f(signature, slot)?));
        }
        states.extend(self.waiting_states());
        Ok(states)
    }

    /// The declared state `name` and its table.
    pub(crate) fn find_mut(&mut self, name: &str) -> Option<(&StateSignature, &mut TableSlot<K>)> {
        self.entries
            .iter_mut()
            .find(|(s, _)| s.name == name)
            .map(|(s, t)| (&*s, t))
    }

    /// Takes back the newest declaration (its restore failed).
    pub(crate) fn undeclare_last(&mut self) {
        self.entries.pop();
        self.touched.truncate(self.entries.len());
    }

    fn waiting_states(&self) -> Vec<StateSnapshotEntry> {
        let mut states: Vec<StateSnapshotEntry> = Vec::new();
        // Restored state nobody declared (yet) is carried into the next snapshot
        // unchanged, so that a job that declares it lazily does not lose it.
        for (name, sections) in &self.waiting {
            if let Some(first) = sections.first() {
                let signature = StateSignature {
                    name: name.clone(),
                    kind: first.kind,
                    types: first.types.clone(),
                    rust_types: "",
                };
                states.push((
                    signature,
                    Box::new(RawTableSnapshot {
                        sections: sections.clone(),
                    }),
                ));
            }
        }
        states.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        states
    }

    /// `layout(name)` is asked only when the state is new.
    pub(crate) fn declare(
        &mut self,
        signature: StateSignature,
        layout: &mut dyn FnMut(&str) -> Result<TableLayout, StateError>,
        create: &mut dyn FnMut(TableLayout) -> TableSlot<K>,
    ) -> Result<StateId, StateError> {
        if signature.name.is_empty() || signature.name.len() > MAX_STATE_NAME_BYTES {
            return Err(StateError::InvalidName {
                name: signature.name,
                reason: "a state name must have 1 to 256 bytes",
            });
        }
        if let Some(index) = self
            .entries
            .iter()
            .position(|(s, _)| s.name == signature.name)
        {
            let existing = &self.entries[index].0;
            // The Rust types too: one declared name given to two Rust types
            // would hand out a handle of the wrong type.
            if *existing != signature {
                return Err(StateError::IncompatibleDeclaration {
                    name: signature.name.clone(),
                    existing: existing.to_string(),
                    requested: signature.to_string(),
                });
            }
            if existing.rust_types != signature.rust_types {
                return Err(StateError::IncompatibleDeclaration {
                    name: signature.name.clone(),
                    existing: format!("{existing} (Rust type {})", existing.rust_types),
                    requested: format!("{signature} (Rust type {})", signature.rust_types),
                });
            }
            return Ok(StateId(index as u32));
        }
        if signature.types.is_empty() || signature.types.starts_with('~') {
            return Err(StateError::InvalidTypeName {
                state: signature.name,
                type_name: signature.types,
                reason: "a declared type name is not empty and does not start with '~' (that marks the Rust type names of version-1 snapshots)",
            });
        }
        if self.entries.len() >= MAX_STATES_PER_OPERATOR {
            return Err(StateError::InvalidName {
                name: signature.name,
                reason: "too many states in one operator (the limit is 1024)",
            });
        }
        let mut slot = create(layout(&signature.name)?);
        // Sections leave the waiting list only once they loaded: a refused
        // declaration keeps them for a correct one.
        if let Some(sections) = self.waiting.get(&signature.name) {
            for section in sections {
                Self::load(&signature, &mut slot, section)?;
            }
            self.waiting.remove(&signature.name);
        }
        self.entries.push((signature, slot));
        self.touched.push(false);
        Ok(StateId((self.entries.len() - 1) as u32))
    }

    pub(crate) fn slot(&mut self, id: StateId) -> &mut TableSlot<K> {
        let index = id.0 as usize;
        if let Some(touched) = self.touched.get_mut(index) {
            *touched = true;
        }
        &mut self.entries[index].1
    }

    /// Passes `keys` to the tables of the states accessed since the last call
    /// ([`KeyedStateBackend::prefetch`]): the states a batch touched are the
    /// ones the next batch will most likely touch.
    /// Returns how many tables it hinted.
    pub(crate) fn prefetch(&mut self, keys: &[(KeyGroup, K)]) -> usize {
        let mut hinted = 0;
        for (index, touched) in self.touched.iter_mut().enumerate() {
            if std::mem::take(touched) {
                self.entries[index].1.table().prefetch(keys);
                hinted += 1;
            }
        }
        hinted
    }

    pub(crate) fn signatures(&self) -> Vec<StateSignature> {
        self.entries.iter().map(|(s, _)| s.clone()).collect()
    }

    /// Every declared state with its table, in declaration order.
    pub(crate) fn tables_mut(
        &mut self,
    ) -> impl Iterator<Item = (&StateSignature, &mut TableSlot<K>)> {
        self.entries.iter_mut().map(|(s, t)| (&*s, t))
    }

    /// Keys with an entry in `key_group`, summed over every declared state.
    pub(crate) fn key_count(&mut self, key_group: KeyGroup) -> Result<usize, StateError> {
        let mut total = 0;
        for (_, slot) in &mut self.entries {
            total += slot.table().key_count(key_group)?;
        }
        Ok(total)
    }
}

/// Restored sections of a state nobody declared, written back as they came.
struct RawTableSnapshot {
    sections: Vec<RestoredSection>,
}

impl TableSnapshot for RawTableSnapshot {
    fn write_key_group(&self, key_group: KeyGroup, out: &mut Vec<u8>) -> Result<u64, StateError> {
        match self.sections.iter().find(|s| s.key_group == key_group) {
            Some(section) => {
                out.extend_from_slice(&section.payload);
                Ok(section
                    .payload
                    .first_chunk::<8>()
                    .map_or(0, |b| u64::from_le_bytes(*b)))
            }
            None => {
                out.extend_from_slice(&0u64.to_le_bytes());
                Ok(0)
            }
        }
    }
}
