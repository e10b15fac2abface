//! The behaviour suite of keyed state: every case is a function of a
//! [`Harness`], so that one suite runs against every backend.
//!
//! This file is compiled by more than one crate. It uses only the public API of
//! `flowstate_state` and std. To run it against a backend, include it at the
//! crate root of an integration test, under the name `suite` (the macro refers
//! to `$crate::suite::...`), and expand [`semantics_suite!`] once per backend,
//! each in a module of its own:
//!
//! ```ignore
//! #[macro_use]
//! #[path = "../../state/tests/semantics/suite.rs"]
//! mod suite;
//!
//! mod rocksdb {
//!     use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};
//!     semantics_suite!({
//!         let dir = tempfile::tempdir().expect("temp dir");
//!         Harness::store(RocksDbFactory::new(RocksDbOptions::new(dir.path()))).keeping(dir)
//!     });
//! }
//! ```
//!
//! The expression is evaluated once per test (every test gets a fresh
//! harness, dropped when the test ends), with `Harness` in scope.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use flowstate_state::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateHandle, BackendInstance,
    BackendKind, BackendSnapshot, KeyGroup, KeyGroupRange, KeyScope, KeyedStateBackend,
    KeyedStateSnapshot, KvStoreFactory, ListStateDescriptor, ListStateHandle, MapStateDescriptor,
    MapStateHandle, ReducingStateDescriptor, ReducingStateHandle, RestoredKeyedState,
    SnapshotRequest, StateBackendConfig, StateError, StateKey, ValueStateDescriptor,
    ValueStateHandle, create_keyed_backend, key_group_of,
};
use flowstate_state::{Clock, ManualClock, StateTtlConfig, TtlUpdateType};

/// Expands to one `#[test]` per case of the suite, each running the case on a
/// fresh harness made by `$harness` (an expression of type [`Harness`];
/// `Harness` is in scope where it is evaluated). Expand it at most once per
/// module.
macro_rules! semantics_suite {
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        fn __semantics_harness() -> $crate::suite::Harness {
            #[allow(unused_imports)]
            use $crate::suite::Harness;
            $harness
        }
        $(
            #[test]
            fn $case() {
                $crate::suite::$case(&__semantics_harness());
            }
        )+
    };
    ($harness:expr $(,)?) => {
        $crate::suite::semantics_suite!(@cases $harness;
            value_state_get_set_clear_update_modify,
            list_state_add_get_update_clear,
            map_state_put_get_remove_contains_len_for_each_clear,
            reducing_state_add_get_clear,
            aggregating_state_add_get_clear,
            state_of_one_key_is_invisible_under_another_key,
            states_with_different_names_are_independent,
            state_stats_report_each_declared_state,
            redeclaring_with_another_kind_or_type_is_incompatible,
            redeclaring_the_same_state_returns_a_handle_to_the_same_state,
            invalid_state_names_are_rejected,
            key_group_outside_the_backend_range_is_an_error,
            for_each_value_visits_every_key_exactly_once,
            snapshot_restores_into_the_same_range,
            snapshot_restores_into_split_and_merged_ranges,
            heap_snapshot_restores_into_this_backend,
            snapshot_of_this_backend_restores_into_heap,
            writes_after_a_snapshot_do_not_appear_in_it,
            unclaimed_restored_states_are_reported_and_carried_unchanged,
            restoring_a_state_under_another_type_is_incompatible,
            failed_declaration_of_a_restored_state_keeps_it,
            restoring_key_groups_outside_the_range_is_an_error,
            damaged_snapshot_bytes_are_errors,
            damaged_length_in_a_snapshot_is_an_error_not_an_abort,
            string_keys_that_are_prefixes_of_each_other_stay_isolated,
            tuple_keys_stay_isolated,
            map_user_keys_that_are_prefixes_of_each_other_stay_isolated,
            zero_sized_and_empty_values_round_trip,
            ttl_value_expires_and_is_refreshed_by_writes_not_reads,
            ttl_refresh_on_read_keeps_read_state_alive,
            ttl_expired_values_are_never_returned_by_any_state_kind,
            ttl_list_elements_and_map_entries_expire_one_by_one,
            ttl_full_snapshots_leave_expired_entries_out,
            ttl_restored_state_never_shows_an_expired_value,
            ttl_snapshots_restore_across_backends,
            ttl_incremental_cleanup_removes_expired_entries,
            ttl_added_or_removed_on_restore_is_refused,
        );
    };
}
pub(crate) use semantics_suite;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Makes backends of one kind for the suite.
pub struct Harness {
    pub config: StateBackendConfig,
    /// Numbers the backends made, so that every one is a distinct operator
    /// instance (stores on disk name their directories after it).
    instances: AtomicU32,
    /// Kept alive as long as the harness (a store's temporary directory).
    guards: Vec<Box<dyn Any>>,
    /// The processing time of every backend of the harness (state TTL).
    pub clock: Arc<ManualClock>,
}

impl Harness {
    pub fn new(config: StateBackendConfig) -> Self {
        Self {
            config,
            instances: AtomicU32::new(0),
            guards: Vec::new(),
            clock: ManualClock::new(TTL_EPOCH_MS),
        }
    }

    /// The heap backend.
    pub fn heap() -> Self {
        Self::new(StateBackendConfig::Heap)
    }

    /// The serialising backend over stores of `factory`
    /// (`Arc::new(MemoryStoreFactory)`, `RocksDbFactory::new(options)`).
    pub fn store(factory: Arc<dyn KvStoreFactory>) -> Self {
        Self::new(StateBackendConfig::Store(factory))
    }

    /// Keeps `guard` (say, the `TempDir` a store factory writes into) alive as
    /// long as the harness, which outlives every backend of a case.
    // Used by the crates of backends that need a directory, not by the ones here.
    #[allow(dead_code)]
    pub fn keeping(mut self, guard: impl Any) -> Self {
        self.guards.push(Box::new(guard));
        self
    }

    pub fn kind(&self) -> BackendKind {
        self.config.kind()
    }

    /// A new, empty backend owning `range` of `max_parallelism` key groups.
    pub fn backend<K: StateKey>(
        &self,
        range: KeyGroupRange,
        max_parallelism: u32,
    ) -> Box<dyn KeyedStateBackend<K>> {
        let n = self.instances.fetch_add(1, Ordering::Relaxed);
        let instance = BackendInstance {
            job_id: "semantics-suite".to_owned(),
            operator_uid: format!("operator-{n}"),
            subtask: 0,
            range,
            max_parallelism,
            clock: self.clock.clone(),
        };
        create_keyed_backend::<K>(&self.config, &instance).unwrap_or_else(|e| {
            panic!(
                "cannot create a {:?} backend for {range} of {max_parallelism}: {e}",
                self.config
            )
        })
    }

    /// A new backend owning `range`, restored from those of `sections` that
    /// fall in `range` (nothing declared yet).
    pub fn restored<K: StateKey>(
        &self,
        range: KeyGroupRange,
        max_parallelism: u32,
        sections: &[(KeyGroup, Vec<u8>)],
    ) -> Box<dyn KeyedStateBackend<K>> {
        let mut backend = self.backend::<K>(range, max_parallelism);
        restore_sections(backend.as_mut(), sections);
        backend
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Key groups of the backends of most cases.
pub const MAXP: u32 = 16;

fn all_groups(max_parallelism: u32) -> KeyGroupRange {
    KeyGroupRange::new(0, max_parallelism)
}

/// The scope of `key` on `backend`, with the key's own key group.
fn scope<'a, K: StateKey>(
    backend: &'a mut dyn KeyedStateBackend<K>,
    key: &'a K,
) -> KeyScope<'a, K> {
    let key_group = key_group_of(key, backend.max_parallelism());
    KeyScope::new(backend, key, key_group)
}

/// The synchronous part of a canonical snapshot.
pub fn canonical_snapshot<K: StateKey>(
    backend: &mut dyn KeyedStateBackend<K>,
    checkpoint_id: u64,
) -> KeyedStateSnapshot {
    let request = SnapshotRequest {
        checkpoint_id,
        canonical: true,
    };
    match backend.snapshot(request) {
        Ok(BackendSnapshot::KeyGroups(snapshot)) => snapshot,
        Ok(BackendSnapshot::Native(native)) => {
            panic!("a canonical snapshot request was answered with native files: {native:?}")
        }
        Err(e) => panic!(
            "snapshot {checkpoint_id} of a {} backend failed: {e}",
            backend.kind()
        ),
    }
}

/// The asynchronous part: every key group's section, as checkpoint storage
/// would keep them.
pub fn write_sections(snapshot: &KeyedStateSnapshot) -> Vec<(KeyGroup, Vec<u8>)> {
    snapshot
        .range
        .iter()
        .map(|key_group| {
            let mut bytes = Vec::new();
            snapshot
                .write_key_group(key_group, &mut bytes)
                .unwrap_or_else(|e| panic!("writing key group {key_group} failed: {e}"));
            (key_group, bytes)
        })
        .collect()
}

fn sections_of<K: StateKey>(
    backend: &mut dyn KeyedStateBackend<K>,
    checkpoint_id: u64,
) -> Vec<(KeyGroup, Vec<u8>)> {
    write_sections(&canonical_snapshot(backend, checkpoint_id))
}

/// Restores the sections of `sections` that fall in the backend's range.
fn restore_sections<K: StateKey>(
    backend: &mut dyn KeyedStateBackend<K>,
    sections: &[(KeyGroup, Vec<u8>)],
) {
    let range = backend.key_group_range();
    let groups = sections
        .iter()
        .filter(|(g, _)| range.contains(*g))
        .cloned()
        .collect();
    backend
        .restore(RestoredKeyedState {
            groups,
            native: Vec::new(),
            streams: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("restoring {range} failed: {e}"));
}

/// Names of the states in a snapshot, sorted.
fn state_names(snapshot: &KeyedStateSnapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .states
        .iter()
        .map(|(signature, _)| signature.name.clone())
        .collect();
    names.sort();
    names
}

fn assert_same_sections(
    actual: &[(KeyGroup, Vec<u8>)],
    expected: &[(KeyGroup, Vec<u8>)],
    context: &str,
) {
    let groups = |s: &[(KeyGroup, Vec<u8>)]| s.iter().map(|(g, _)| *g).collect::<Vec<_>>();
    assert_eq!(groups(actual), groups(expected), "{context}: key groups");
    for ((g, a), (_, e)) in actual.iter().zip(expected) {
        assert!(
            a == e,
            "{context}: key group {g} differs ({} bytes, expected {} bytes)",
            a.len(),
            e.len()
        );
    }
}

/// Asserts that `result` is an `IncompatibleDeclaration` of `name`, or (a
/// restored state declared with the same kind and other types) a
/// `RestoredTypeMismatch` of `name`.
pub fn assert_incompatible<T>(result: Result<T, StateError>, name: &str) {
    match result {
        Err(StateError::IncompatibleDeclaration { name: n, .. }) => assert_eq!(
            n, name,
            "IncompatibleDeclaration names the state that was declared"
        ),
        Err(StateError::RestoredTypeMismatch { state: n, .. }) => assert_eq!(
            n, name,
            "RestoredTypeMismatch names the state that was declared"
        ),
        Err(other) => panic!("expected IncompatibleDeclaration for '{name}', got {other}"),
        Ok(_) => panic!("expected IncompatibleDeclaration for '{name}', got a handle"),
    }
}

/// Two keys sharing one key group and one key in another, so that isolation
/// is checked both within and across key groups.
fn probe_keys() -> Vec<String> {
    let mut by_group: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for i in 0..1000 {
        let k = format!("key-{i}");
        by_group.entry(key_group_of(&k, MAXP)).or_default().push(k);
    }
    let mut groups = by_group.into_values();
    let shared = groups
        .find(|keys| keys.len() >= 2)
        .expect("1000 keys over 16 groups share a group");
    let other = groups.next().expect("more than one key group is used");
    assert_ne!(
        key_group_of(&shared[0], MAXP),
        key_group_of(&other[0], MAXP)
    );
    assert_eq!(
        key_group_of(&shared[0], MAXP),
        key_group_of(&shared[1], MAXP)
    );
    vec![shared[0].clone(), shared[1].clone(), other[0].clone()]
}

/// Average of the inputs; accumulator (sum, count).
#[derive(Clone)]
struct Average;

impl AggregateFunction<u32, (u64, u64), f64> for Average {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u32) {
        acc.0 += u64::from(input);
        acc.1 += 1;
    }
    fn result(&self, acc: &(u64, u64)) -> f64 {
        if acc.1 == 0 {
            0.0
        } else {
            acc.0 as f64 / acc.1 as f64
        }
    }
}

/// [`Average`] with another result type (another signature).
struct AverageF32;

impl AggregateFunction<u32, (u64, u64), f32> for AverageF32 {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u32) {
        Average.add(acc, input);
    }
    fn result(&self, acc: &(u64, u64)) -> f32 {
        Average.result(acc) as f32
    }
}

// ---------------------------------------------------------------------------
// A model of five states, kept in step with a backend
// ---------------------------------------------------------------------------

type Row = (u64, String);

/// The five states of the snapshot cases, named so that their alphabetical
/// order is their declaration order (a snapshot lists declared states in
/// declaration order and undeclared restored states by name).
struct Fixture {
    aggregating: AggregatingStateHandle<u32, (u64, u64), f64>,
    list: ListStateHandle<String>,
    map: MapStateHandle<String, i64>,
    reducing: ReducingStateHandle<i64>,
    value: ValueStateHandle<Row>,
}

const FIXTURE_STATES: [&str; 5] = ["a", "l", "m", "r", "v"];

fn value_descriptor() -> ValueStateDescriptor<Row> {
    ValueStateDescriptor::new("v")
}

fn map_descriptor() -> MapStateDescriptor<String, i64> {
    MapStateDescriptor::new("m")
}

impl Fixture {
    fn declare(backend: &mut dyn KeyedStateBackend<String>) -> Self {
        Self {
            aggregating: backend
                .aggregating_state(&AggregatingStateDescriptor::new("a", Average))
                .expect("declare aggregating state 'a'"),
            list: backend
                .list_state(&ListStateDescriptor::<String>::new("l"))
                .expect("declare list state 'l'"),
            map: backend
                .map_state(&map_descriptor())
                .expect("declare map state 'm'"),
            reducing: backend
                .reducing_state(&ReducingStateDescriptor::new("r", |a: i64, b: i64| a + b))
                .expect("declare reducing state 'r'"),
            value: backend
                .value_state(&value_descriptor())
                .expect("declare value state 'v'"),
        }
    }
}

/// What the five states of a [`Fixture`] should hold. Absent lists and maps
/// are empty ones.
#[derive(Debug, Clone, Default)]
struct Model {
    /// Every key ever written, so that absence is checked too.
    keys: BTreeSet<String>,
    value: BTreeMap<String, Row>,
    list: BTreeMap<String, Vec<String>>,
    map: BTreeMap<String, BTreeMap<String, i64>>,
    reducing: BTreeMap<String, i64>,
    aggregating: BTreeMap<String, (u64, u64)>,
}

type Backend<'a> = &'a mut dyn KeyedStateBackend<String>;

/// Keys of the model cases: the empty key, and keys that are prefixes of
/// each other ("k", "k1", "k10", "k100").
fn fixture_keys() -> Vec<String> {
    let mut keys = vec![String::new(), "k".to_owned()];
    keys.extend((0..120).map(|i| format!("k{i}")));
    keys
}

fn owns(backend: &dyn KeyedStateBackend<String>, key: &String) -> bool {
    backend
        .key_group_range()
        .contains(key_group_of(key, backend.max_parallelism()))
}

impl Model {
    fn set_value(&mut self, b: Backend, h: &ValueStateHandle<Row>, key: &str, value: Row) {
        let key = key.to_owned();
        scope(b, &key).value(h).set(value.clone()).unwrap();
        self.keys.insert(key.clone());
        self.value.insert(key, value);
    }

    fn clear_value(&mut self, b: Backend, h: &ValueStateHandle<Row>, key: &str) {
        let key = key.to_owned();
        let old = scope(b, &key).value(h).clear().unwrap();
        assert_eq!(
            old,
            self.value.remove(&key),
            "clearing the value of {key:?} returns the old value"
        );
        self.keys.insert(key);
    }

    fn add_list(&mut self, b: Backend, h: &ListStateHandle<String>, key: &str, element: &str) {
        let key = key.to_owned();
        scope(b, &key).list(h).add(element.to_owned()).unwrap();
        self.list
            .entry(key.clone())
            .or_default()
            .push(element.to_owned());
        self.keys.insert(key);
    }

    fn replace_list(&mut self, b: Backend, h: &ListStateHandle<String>, key: &str, list: &[&str]) {
        let key = key.to_owned();
        let list: Vec<String> = list.iter().map(|e| (*e).to_owned()).collect();
        scope(b, &key).list(h).update(list.clone()).unwrap();
        if list.is_empty() {
            self.list.remove(&key);
        } else {
            self.list.insert(key.clone(), list);
        }
        self.keys.insert(key);
    }

    fn clear_list(&mut self, b: Backend, h: &ListStateHandle<String>, key: &str) {
        let key = key.to_owned();
        scope(b, &key).list(h).clear().unwrap();
        self.list.remove(&key);
        self.keys.insert(key);
    }

    fn put_map(
        &mut self,
        b: Backend,
        h: &MapStateHandle<String, i64>,
        key: &str,
        user_key: &str,
        value: i64,
    ) {
        let key = key.to_owned();
        scope(b, &key)
            .map(h)
            .put(user_key.to_owned(), value)
            .unwrap();
        self.map
            .entry(key.clone())
            .or_default()
            .insert(user_key.to_owned(), value);
        self.keys.insert(key);
    }

    fn remove_map(
        &mut self,
        b: Backend,
        h: &MapStateHandle<String, i64>,
        key: &str,
        user_key: &str,
    ) {
        let key = key.to_owned();
        let old = scope(b, &key).map(h).remove(&user_key.to_owned()).unwrap();
        let expected = self.map.get_mut(&key).and_then(|m| m.remove(user_key));
        if self.map.get(&key).is_some_and(BTreeMap::is_empty) {
            self.map.remove(&key);
        }
        assert_eq!(
            old, expected,
            "removing {user_key:?} from the map of {key:?} returns the old value"
        );
        self.keys.insert(key);
    }

    fn clear_map(&mut self, b: Backend, h: &MapStateHandle<String, i64>, key: &str) {
        let key = key.to_owned();
        scope(b, &key).map(h).clear().unwrap();
        self.map.remove(&key);
        self.keys.insert(key);
    }

    fn add_reducing(&mut self, b: Backend, h: &ReducingStateHandle<i64>, key: &str, x: i64) {
        let key = key.to_owned();
        let new = scope(b, &key).reducing(h).add(x).unwrap().copied();
        let expected = *self
            .reducing
            .entry(key.clone())
            .and_modify(|sum| *sum += x)
            .or_insert(x);
        assert_eq!(
            new,
            Some(expected),
            "adding {x} to the reducing state of {key:?} returns the new sum"
        );
        self.keys.insert(key);
    }

    fn clear_reducing(&mut self, b: Backend, h: &ReducingStateHandle<i64>, key: &str) {
        let key = key.to_owned();
        scope(b, &key).reducing(h).clear().unwrap();
        self.reducing.remove(&key);
        self.keys.insert(key);
    }

    fn add_aggregating(
        &mut self,
        b: Backend,
        h: &AggregatingStateHandle<u32, (u64, u64), f64>,
        key: &str,
        x: u32,
    ) {
        let key = key.to_owned();
        let new = scope(b, &key).aggregating(h).add(x).unwrap();
        let acc = self.aggregating.entry(key.clone()).or_insert((0, 0));
        Average.add(acc, x);
        assert_eq!(
            new,
            Average.result(acc),
            "adding {x} to the aggregating state of {key:?} returns the new average"
        );
        self.keys.insert(key);
    }

    fn clear_aggregating(
        &mut self,
        b: Backend,
        h: &AggregatingStateHandle<u32, (u64, u64), f64>,
        key: &str,
    ) {
        let key = key.to_owned();
        scope(b, &key).aggregating(h).clear().unwrap();
        self.aggregating.remove(&key);
        self.keys.insert(key);
    }

    /// Writes every kind of change to every state of the fixture's keys: sets,
    /// overwrites, clears, empty lists, replaced lists, map removals.
    fn populate(b: Backend, f: &Fixture) -> Model {
        let mut m = Model::default();
        for (i, key) in fixture_keys().iter().enumerate() {
            let n = i as u64;
            match i % 4 {
                0 => m.set_value(b, &f.value, key, (n, format!("value of {key:?}"))),
                1 => {
                    m.set_value(b, &f.value, key, (n, String::new()));
                    m.set_value(b, &f.value, key, (n * 2, "overwritten".into()));
                }
                2 => {
                    m.set_value(b, &f.value, key, (n, "cleared".into()));
                    m.clear_value(b, &f.value, key);
                }
                _ => {}
            }
            match i % 5 {
                0 => {}
                1 => {
                    for e in ["x", "", "x"] {
                        m.add_list(b, &f.list, key, e);
                    }
                }
                2 => {
                    m.add_list(b, &f.list, key, "gone");
                    m.replace_list(b, &f.list, key, &[]);
                }
                3 => {
                    m.add_list(b, &f.list, key, "old");
                    m.replace_list(b, &f.list, key, &["p", "", "q"]);
                }
                _ => {
                    m.add_list(b, &f.list, key, "z");
                    m.clear_list(b, &f.list, key);
                    m.add_list(b, &f.list, key, "again");
                }
            }
            match i % 6 {
                0 => {
                    m.put_map(b, &f.map, key, "a", n as i64);
                    m.put_map(b, &f.map, key, "ab", -(n as i64));
                    m.put_map(b, &f.map, key, "", 0);
                }
                1 => {
                    m.put_map(b, &f.map, key, "x", 1);
                    m.put_map(b, &f.map, key, "y", 2);
                    m.clear_map(b, &f.map, key);
                }
                2 => {
                    m.put_map(b, &f.map, key, "a", 1);
                    m.put_map(b, &f.map, key, "b", 2);
                    m.remove_map(b, &f.map, key, "a");
                }
                3 => {
                    m.put_map(b, &f.map, key, "only", 3);
                    m.remove_map(b, &f.map, key, "only");
                }
                _ => {}
            }
            if i % 3 != 0 {
                m.add_reducing(b, &f.reducing, key, n as i64);
                m.add_reducing(b, &f.reducing, key, -2 * n as i64);
            }
            if i % 9 == 1 {
                m.clear_reducing(b, &f.reducing, key);
                m.add_reducing(b, &f.reducing, key, 5);
            }
            if i % 2 == 0 {
                m.add_aggregating(b, &f.aggregating, key, i as u32);
                m.add_aggregating(b, &f.aggregating, key, i as u32 + 2);
            }
            if i % 8 == 0 {
                m.clear_aggregating(b, &f.aggregating, key);
            }
        }
        m
    }

    /// More changes to the keys the backend owns (and one new key if the
    /// backend owns it): appends to existing lists, puts and removals in
    /// existing maps, overwrites and clears.
    fn mutate(&mut self, b: Backend, f: &Fixture, round: u64) {
        let mut keys: Vec<String> = self.keys.iter().filter(|k| owns(b, k)).cloned().collect();
        let new_key = format!("new in round {round}");
        if owns(b, &new_key) {
            keys.push(new_key);
        }
        let tag = format!("round {round}");
        for (i, key) in keys.iter().enumerate() {
            let n = i as u64 + round * 1000;
            if i % 3 == 0 {
                self.clear_value(b, &f.value, key);
            } else {
                self.set_value(b, &f.value, key, (n, tag.clone()));
            }
            self.add_list(b, &f.list, key, &tag);
            self.put_map(b, &f.map, key, &tag, -(n as i64));
            self.remove_map(b, &f.map, key, "a");
            if i % 5 == 0 {
                self.clear_map(b, &f.map, key);
            }
            self.add_reducing(b, &f.reducing, key, 100 * round as i64);
            if i % 7 == 0 {
                self.clear_aggregating(b, &f.aggregating, key);
            } else {
                self.add_aggregating(b, &f.aggregating, key, 7);
            }
        }
    }

    fn owned_keys<'m>(&'m self, b: &dyn KeyedStateBackend<String>) -> Vec<&'m String> {
        self.keys.iter().filter(|k| owns(b, k)).collect()
    }

    fn check_value(&self, b: Backend, h: &ValueStateHandle<Row>, context: &str) {
        for key in self.owned_keys(b) {
            assert_eq!(
                scope(b, key).value(h).get().unwrap(),
                self.value.get(key),
                "{context}: value state 'v' of key {key:?}"
            );
        }
        let mut seen = BTreeMap::new();
        b.for_each_value(h, |k, v| {
            assert!(
                seen.insert(k.clone(), v.clone()).is_none(),
                "{context}: for_each_value visited key {k:?} twice"
            );
        })
        .unwrap();
        let expected: BTreeMap<String, Row> = self
            .value
            .iter()
            .filter(|(k, _)| owns(b, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            seen, expected,
            "{context}: for_each_value visits exactly the keys with a value"
        );
    }

    fn check_list(&self, b: Backend, h: &ListStateHandle<String>, context: &str) {
        for key in self.owned_keys(b) {
            let expected = self.list.get(key).map_or(&[][..], Vec::as_slice);
            assert_eq!(
                scope(b, key).list(h).get().unwrap(),
                expected,
                "{context}: list state 'l' of key {key:?}"
            );
        }
    }

    fn check_map(&self, b: Backend, h: &MapStateHandle<String, i64>, context: &str) {
        for key in self.owned_keys(b) {
            let expected = self.map.get(key).cloned().unwrap_or_default();
            let mut s = scope(b, key);
            let mut actual = BTreeMap::new();
            s.map(h)
                .for_each(|k, v| {
                    assert!(
                        actual.insert(k.clone(), *v).is_none(),
                        "{context}: map of key {key:?}: entry {k:?} visited twice"
                    );
                })
                .unwrap();
            assert_eq!(
                actual, expected,
                "{context}: map state 'm' of key {key:?} (for_each)"
            );
            assert_eq!(
                s.map(h).len().unwrap(),
                expected.len(),
                "{context}: map state 'm' of key {key:?} (len)"
            );
            for (user_key, value) in &expected {
                assert_eq!(
                    s.map(h).get(user_key).unwrap(),
                    Some(value),
                    "{context}: map state 'm' of key {key:?}, entry {user_key:?}"
                );
            }
            for absent in ["a", "b", "x", "only", "never"] {
                if !expected.contains_key(absent) {
                    assert!(
                        !s.map(h).contains(&absent.to_owned()).unwrap(),
                        "{context}: map state 'm' of key {key:?} has no entry {absent:?}"
                    );
                }
            }
        }
    }

    fn check_reducing(&self, b: Backend, h: &ReducingStateHandle<i64>, context: &str) {
        for key in self.owned_keys(b) {
            assert_eq!(
                scope(b, key).reducing(h).get().unwrap(),
                self.reducing.get(key),
                "{context}: reducing state 'r' of key {key:?}"
            );
        }
    }

    fn check_aggregating(
        &self,
        b: Backend,
        h: &AggregatingStateHandle<u32, (u64, u64), f64>,
        context: &str,
    ) {
        for key in self.owned_keys(b) {
            assert_eq!(
                scope(b, key).aggregating(h).get().unwrap(),
                self.aggregating.get(key).map(|acc| Average.result(acc)),
                "{context}: aggregating state 'a' of key {key:?}"
            );
        }
    }

    /// Keys with an entry in `key_group`, summed over the five states.
    fn entries_in(&self, key_group: KeyGroup, max_parallelism: u32) -> usize {
        let in_group = |k: &&String| key_group_of(*k, max_parallelism) == key_group;
        self.value.keys().filter(in_group).count()
            + self.list.keys().filter(in_group).count()
            + self.map.keys().filter(in_group).count()
            + self.reducing.keys().filter(in_group).count()
            + self.aggregating.keys().filter(in_group).count()
    }

    /// Every state of the fixture, and `key_count` of every key group, for the
    /// keys the backend owns.
    fn check_all(&self, b: Backend, f: &Fixture, context: &str) {
        self.check_value(b, &f.value, context);
        self.check_list(b, &f.list, context);
        self.check_map(b, &f.map, context);
        self.check_reducing(b, &f.reducing, context);
        self.check_aggregating(b, &f.aggregating, context);
        let maxp = b.max_parallelism();
        for key_group in b.key_group_range().iter() {
            assert_eq!(
                b.key_count(key_group).unwrap(),
                self.entries_in(key_group, maxp),
                "{context}: key_count of key group {key_group}"
            );
        }
    }
}

/// A backend of `harness` for `range`, restored from `sections` and with the
/// fixture declared, checked against `model`.
fn restore_and_check(
    harness: &Harness,
    range: KeyGroupRange,
    sections: &[(KeyGroup, Vec<u8>)],
    model: &Model,
    context: &str,
) -> (Box<dyn KeyedStateBackend<String>>, Fixture) {
    let mut backend = harness.restored::<String>(range, MAXP, sections);
    assert_eq!(
        backend.unclaimed_restored_states(),
        FIXTURE_STATES,
        "{context}: every restored state waits for its declaration"
    );
    let fixture = Fixture::declare(backend.as_mut());
    assert!(
        backend.unclaimed_restored_states().is_empty(),
        "{context}: declaring claims every restored state"
    );
    model.check_all(backend.as_mut(), &fixture, context);
    (backend, fixture)
}

// ---------------------------------------------------------------------------
// Cases: each state type
// ---------------------------------------------------------------------------

pub fn value_state_get_set_clear_update_modify(harness: &Harness) {
    let mut backend = harness.backend::<String>(all_groups(MAXP), MAXP);
    let handle = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let key = "a".to_string();
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.value(&handle).get().unwrap(), None);
    s.value(&handle).set(7).unwrap();
    assert_eq!(s.value(&handle).get().unwrap(), Some(&7));
    s.value(&handle).set(8).unwrap();
    assert_eq!(s.value(&handle).get().unwrap(), Some(&8), "set overwrites");

    assert_eq!(
        s.value(&handle).clear().unwrap(),
        Some(8),
        "clear returns the old value"
    );
    assert_eq!(s.value(&handle).get().unwrap(), None);
    assert_eq!(
        s.value(&handle).clear().unwrap(),
        None,
        "clearing an empty value returns nothing"
    );

    // update: absent -> present.
    let mut seen = Vec::new();
    let new = s
        .value(&handle)
        .update(|old| {
            seen.push(old);
            Some(old.unwrap_or(0) + 10)
        })
        .unwrap()
        .copied();
    assert_eq!(new, Some(10));
    assert_eq!(seen, vec![None], "update calls f once with the old value");
    // update: present -> present.
    let new = s
        .value(&handle)
        .update(|old| old.map(|v| v * 3))
        .unwrap()
        .copied();
    assert_eq!(new, Some(30));
    assert_eq!(s.value(&handle).get().unwrap(), Some(&30));
    // update: present -> absent clears.
    let mut calls = 0;
    let new = s
        .value(&handle)
        .update(|old| {
            calls += 1;
            assert_eq!(old, Some(30), "update passes the present value");
            None
        })
        .unwrap()
        .copied();
    assert_eq!(new, None);
    assert_eq!(calls, 1, "update calls f exactly once");
    assert_eq!(
        s.value(&handle).get().unwrap(),
        None,
        "update returning None clears"
    );
    // update: absent -> absent stays absent.
    assert_eq!(s.value(&handle).update(|_| None).unwrap(), None);
    assert_eq!(s.value(&handle).get().unwrap(), None);

    // modify: init only when absent, returns what f returns.
    let mut inits = 0;
    let r = s
        .value(&handle)
        .modify(
            || {
                inits += 1;
                100
            },
            |v| {
                *v += 1;
                *v * 2
            },
        )
        .unwrap();
    assert_eq!((r, inits), (202, 1), "init is called for an absent value");
    let r = s
        .value(&handle)
        .modify(
            || {
                inits += 1;
                100
            },
            |v| {
                *v += 1;
                *v
            },
        )
        .unwrap();
    assert_eq!(
        (r, inits),
        (102, 1),
        "init is not called for a present value"
    );
    assert_eq!(
        s.value(&handle).get().unwrap(),
        Some(&102),
        "modify stores the changed value"
    );
}

pub fn list_state_add_get_update_clear(harness: &Harness) {
    let mut backend = harness.backend::<u32>(all_groups(MAXP), MAXP);
    let handle = backend
        .list_state(&ListStateDescriptor::<String>::new("l"))
        .unwrap();
    let key = 5u32;
    let mut s = scope(backend.as_mut(), &key);

    assert!(s.list(&handle).get().unwrap().is_empty());
    s.list(&handle).add("x".into()).unwrap();
    s.list(&handle).add("y".into()).unwrap();
    s.list(&handle).add("x".into()).unwrap();
    assert_eq!(
        s.list(&handle).get().unwrap(),
        ["x", "y", "x"],
        "add appends, keeping duplicates and order"
    );

    s.list(&handle)
        .update(vec!["p".into(), "q".into()])
        .unwrap();
    assert_eq!(
        s.list(&handle).get().unwrap(),
        ["p", "q"],
        "update replaces"
    );
    s.list(&handle).add("r".into()).unwrap();
    assert_eq!(s.list(&handle).get().unwrap(), ["p", "q", "r"]);

    s.list(&handle).update(Vec::new()).unwrap();
    assert!(
        s.list(&handle).get().unwrap().is_empty(),
        "an empty update clears"
    );

    s.list(&handle).add("z".into()).unwrap();
    s.list(&handle).clear().unwrap();
    assert!(s.list(&handle).get().unwrap().is_empty(), "clear empties");
    s.list(&handle).clear().unwrap();
    s.list(&handle).add("again".into()).unwrap();
    assert_eq!(s.list(&handle).get().unwrap(), ["again"]);

    // Empty strings are elements like any other.
    s.list(&handle).add(String::new()).unwrap();
    s.list(&handle).add(String::new()).unwrap();
    assert_eq!(s.list(&handle).get().unwrap(), ["again", "", ""]);
}

pub fn map_state_put_get_remove_contains_len_for_each_clear(harness: &Harness) {
    let mut backend = harness.backend::<u64>(all_groups(MAXP), MAXP);
    let handle = backend
        .map_state(&MapStateDescriptor::<String, i64>::new("m"))
        .unwrap();
    let key = 42u64;
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.map(&handle).len().unwrap(), 0);
    assert!(s.map(&handle).is_empty().unwrap());
    assert!(!s.map(&handle).contains(&"a".into()).unwrap());
    assert_eq!(s.map(&handle).get(&"a".into()).unwrap(), None);

    s.map(&handle).put("a".into(), 1).unwrap();
    s.map(&handle).put("b".into(), 2).unwrap();
    s.map(&handle).put("c".into(), 3).unwrap();
    s.map(&handle).put("a".into(), -1).unwrap();
    assert_eq!(s.map(&handle).len().unwrap(), 3, "put overwrites");
    assert_eq!(s.map(&handle).get(&"a".into()).unwrap(), Some(&-1));
    assert!(s.map(&handle).contains(&"b".into()).unwrap());
    assert!(!s.map(&handle).contains(&"d".into()).unwrap());

    let mut entries = BTreeMap::new();
    s.map(&handle)
        .for_each(|k, v| {
            assert!(
                entries.insert(k.clone(), *v).is_none(),
                "entry {k} visited twice"
            );
        })
        .unwrap();
    assert_eq!(
        entries,
        BTreeMap::from([("a".into(), -1), ("b".into(), 2), ("c".into(), 3)])
    );

    assert_eq!(s.map(&handle).remove(&"b".into()).unwrap(), Some(2));
    assert_eq!(
        s.map(&handle).remove(&"b".into()).unwrap(),
        None,
        "removing an absent entry returns nothing"
    );
    assert!(!s.map(&handle).contains(&"b".into()).unwrap());
    assert_eq!(s.map(&handle).len().unwrap(), 2);

    // Removing every entry one by one leaves an empty, still usable map.
    s.map(&handle).remove(&"a".into()).unwrap();
    s.map(&handle).remove(&"c".into()).unwrap();
    assert_eq!(s.map(&handle).len().unwrap(), 0);
    s.map(&handle).put("e".into(), 5).unwrap();
    assert_eq!(s.map(&handle).len().unwrap(), 1);

    s.map(&handle).put("f".into(), 6).unwrap();
    s.map(&handle).clear().unwrap();
    assert_eq!(
        s.map(&handle).len().unwrap(),
        0,
        "clear removes every entry"
    );
    assert_eq!(s.map(&handle).get(&"e".into()).unwrap(), None);
    let mut visited = 0;
    s.map(&handle).for_each(|_, _| visited += 1).unwrap();
    assert_eq!(visited, 0, "a cleared map has no entries to visit");
    s.map(&handle).put("g".into(), 7).unwrap();
    assert_eq!(
        s.map(&handle).get(&"g".into()).unwrap(),
        Some(&7),
        "a cleared map is usable"
    );
}

pub fn reducing_state_add_get_clear(harness: &Harness) {
    let mut backend = harness.backend::<u64>(all_groups(MAXP), MAXP);
    let handle = backend
        .reducing_state(&ReducingStateDescriptor::new("max", |a: i64, b: i64| {
            a.max(b)
        }))
        .unwrap();
    let sum = backend
        .reducing_state(&ReducingStateDescriptor::new("sum", |a: i64, b: i64| a + b))
        .unwrap();
    let key = 1u64;
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.reducing(&handle).get().unwrap(), None);
    assert_eq!(s.reducing(&handle).add(3).unwrap(), Some(&3));
    assert_eq!(s.reducing(&handle).add(-5).unwrap(), Some(&3));
    assert_eq!(s.reducing(&handle).add(9).unwrap(), Some(&9));
    assert_eq!(s.reducing(&handle).get().unwrap(), Some(&9));
    for v in [3, -5, 9, 10] {
        s.reducing(&sum).add(v).unwrap();
    }
    assert_eq!(s.reducing(&sum).get().unwrap(), Some(&17));

    s.reducing(&handle).clear().unwrap();
    assert_eq!(s.reducing(&handle).get().unwrap(), None);
    assert_eq!(
        s.reducing(&sum).get().unwrap(),
        Some(&17),
        "clearing one state leaves another alone"
    );
    assert_eq!(
        s.reducing(&handle).add(-100).unwrap(),
        Some(&-100),
        "after clear the first value is taken as is"
    );
}

pub fn aggregating_state_add_get_clear(harness: &Harness) {
    let mut backend = harness.backend::<String>(all_groups(MAXP), MAXP);
    let handle = backend
        .aggregating_state(&AggregatingStateDescriptor::new("avg", Average))
        .unwrap();
    let key = "sensor".to_string();
    let mut s = scope(backend.as_mut(), &key);

    assert_eq!(s.aggregating(&handle).get().unwrap(), None);
    assert_eq!(s.aggregating(&handle).add(10).unwrap(), 10.0);
    assert_eq!(s.aggregating(&handle).add(20).unwrap(), 15.0);
    assert_eq!(s.aggregating(&handle).add(0).unwrap(), 10.0);
    assert_eq!(s.aggregating(&handle).get().unwrap(), Some(10.0));

    s.aggregating(&handle).clear().unwrap();
    assert_eq!(s.aggregating(&handle).get().unwrap(), None);
    assert_eq!(
        s.aggregating(&handle).add(4).unwrap(),
        4.0,
        "a cleared state starts from a fresh accumulator"
    );
}

// ---------------------------------------------------------------------------
// Cases: keys, names, declarations
// ---------------------------------------------------------------------------

pub fn state_of_one_key_is_invisible_under_another_key(harness: &Harness) {
    let mut backend = harness.backend::<String>(all_groups(MAXP), MAXP);
    let value = backend
        .value_state(&ValueStateDescriptor::<u64>::new("value"))
        .unwrap();
    let list = backend
        .list_state(&ListStateDescriptor::<u64>::new("list"))
        .unwrap();
    let map = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("map"))
        .unwrap();
    let reducing = backend
        .reducing_state(&ReducingStateDescriptor::new(
            "reducing",
            |a: u64, b: u64| a + b,
        ))
        .unwrap();
    let aggregating = backend
        .aggregating_state(&AggregatingStateDescriptor::new("aggregating", Average))
        .unwrap();

    let keys = probe_keys();
    for (i, key) in keys.iter().enumerate() {
        let i = i as u64 + 1;
        let mut s = scope(backend.as_mut(), key);
        // Nothing written under an earlier key shows up here.
        assert_eq!(s.value(&value).get().unwrap(), None, "{key}");
        assert!(s.list(&list).get().unwrap().is_empty(), "{key}");
        assert_eq!(s.map(&map).len().unwrap(), 0, "{key}");
        assert_eq!(s.map(&map).get(&1).unwrap(), None, "{key}");
        assert_eq!(s.reducing(&reducing).get().unwrap(), None, "{key}");
        assert_eq!(s.aggregating(&aggregating).get().unwrap(), None, "{key}");

        s.value(&value).set(i).unwrap();
        s.list(&list).add(i).unwrap();
        s.list(&list).add(i * 10).unwrap();
        s.map(&map).put(1, i).unwrap();
        s.reducing(&reducing).add(i).unwrap();
        s.reducing(&reducing).add(i).unwrap();
        s.aggregating(&aggregating).add(i as u32).unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let i = i as u64 + 1;
        let mut s = scope(backend.as_mut(), key);
        assert_eq!(s.value(&value).get().unwrap(), Some(&i), "{key}");
        assert_eq!(s.list(&list).get().unwrap(), [i, i * 10], "{key}");
        assert_eq!(s.map(&map).len().unwrap(), 1, "{key}");
        assert_eq!(s.map(&map).get(&1).unwrap(), Some(&i), "{key}");
        assert_eq!(
            s.reducing(&reducing).get().unwrap(),
            Some(&(2 * i)),
            "{key}"
        );
        assert_eq!(
            s.aggregating(&aggregating).get().unwrap(),
            Some(i as f64),
            "{key}"
        );
    }
    // Clearing one key leaves the others (same key group or not) untouched.
    {
        let mut s = scope(backend.as_mut(), &keys[0]);
        s.value(&value).clear().unwrap();
        s.list(&list).clear().unwrap();
        s.map(&map).clear().unwrap();
        s.reducing(&reducing).clear().unwrap();
        s.aggregating(&aggregating).clear().unwrap();
    }
    for (i, key) in keys.iter().enumerate().skip(1) {
        let i = i as u64 + 1;
        let mut s = scope(backend.as_mut(), key);
        assert_eq!(s.value(&value).get().unwrap(), Some(&i), "{key}");
        assert_eq!(s.list(&list).get().unwrap(), [i, i * 10], "{key}");
        assert_eq!(s.map(&map).get(&1).unwrap(), Some(&i), "{key}");
        assert_eq!(
            s.reducing(&reducing).get().unwrap(),
            Some(&(2 * i)),
            "{key}"
        );
        assert_eq!(
            s.aggregating(&aggregating).get().unwrap(),
            Some(i as f64),
            "{key}"
        );
    }
}

pub fn states_with_different_names_are_independent(harness: &Harness) {
    let mut backend = harness.backend::<u64>(all_groups(MAXP), MAXP);
    let a = backend
        .value_state(&ValueStateDescriptor::<u64>::new("a"))
        .unwrap();
    let b = backend
        .value_state(&ValueStateDescriptor::<u64>::new("b"))
        .unwrap();
    // Names that are prefixes of each other.
    let ab = backend
        .value_state(&ValueStateDescriptor::<u64>::new("ab"))
        .unwrap();
    let key = 9u64;
    let mut s = scope(backend.as_mut(), &key);
    s.value(&a).set(1).unwrap();
    assert_eq!(s.value(&b).get().unwrap(), None, "'b' does not see 'a'");
    assert_eq!(s.value(&ab).get().unwrap(), None, "'ab' does not see 'a'");
    s.value(&b).set(2).unwrap();
    s.value(&ab).set(3).unwrap();
    assert_eq!(s.value(&a).get().unwrap(), Some(&1));
    assert_eq!(s.value(&b).get().unwrap(), Some(&2));
    assert_eq!(s.value(&ab).get().unwrap(), Some(&3));
    s.value(&a).clear().unwrap();
    assert_eq!(
        s.value(&ab).get().unwrap(),
        Some(&3),
        "clearing 'a' leaves 'ab' alone"
    );
}

/// Metrics: every declared state's size. Exact where the backend counts
/// (`estimated: false`), an estimate of the right order otherwise (RocksDB's
/// `estimate-num-keys` over memtables and files).
pub fn state_stats_report_each_declared_state(harness: &Harness) {
    let mut backend = harness.backend::<u64>(all_groups(MAXP), MAXP);
    let many = backend
        .value_state(&ValueStateDescriptor::<u64>::new("many"))
        .unwrap();
    let _none = backend
        .value_state(&ValueStateDescriptor::<u64>::new("none"))
        .unwrap();
    for key in 0..1000u64 {
        scope(backend.as_mut(), &key).value(&many).set(key).unwrap();
    }
    let stats = backend.state_stats();
    let mut names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["many", "none"], "{stats:?}");
    for s in &stats {
        let expected = if s.name == "many" { 1000 } else { 0 };
        if s.estimated {
            assert!(
                s.entries >= expected / 2 && s.entries <= expected * 2,
                "{s:?}: an estimate of {expected}"
            );
            if expected > 0 {
                assert!(s.bytes.is_some_and(|b| b > 0), "{s:?}");
            }
        } else {
            assert_eq!(s.entries, expected, "{s:?}");
        }
    }
}

pub fn redeclaring_with_another_kind_or_type_is_incompatible(harness: &Harness) {
    let mut backend = harness.backend::<u64>(all_groups(MAXP), MAXP);
    backend
        .value_state(&ValueStateDescriptor::<u64>::new("s"))
        .unwrap();

    // Same kind, other type.
    assert_incompatible(
        backend.value_state(&ValueStateDescriptor::<String>::new("s")),
        "s",
    );
    assert_incompatible(
        backend.value_state(&ValueStateDescriptor::<u32>::new("s")),
        "s",
    );
    // Other kinds, even with the same value type.
    assert_incompatible(
        backend.list_state(&ListStateDescriptor::<u64>::new("s")),
        "s",
    );
    assert_incompatible(
        backend.map_state(&MapStateDescriptor::<u64, u64>::new("s")),
        "s",
    );
    assert_incompatible(
        backend.reducing_state(&ReducingStateDescriptor::new("s", |a: u64, b: u64| a + b)),
        "s",
    );
    assert_incompatible(
        backend.aggregating_state(&AggregatingStateDescriptor::new("s", Average)),
        "s",
    );

    // The other direction: a map declared first refuses another map type and a value.
    backend
        .map_state(&MapStateDescriptor::<String, u64>::new("m"))
        .unwrap();
    assert_incompatible(
        backend.map_state(&MapStateDescriptor::<String, u32>::new("m")),
        "m",
    );
    assert_incompatible(
        backend.map_state(&MapStateDescriptor::<u64, u64>::new("m")),
        "m",
    );
    assert_incompatible(
        backend.value_state(&ValueStateDescriptor::<u64>::new("m")),
        "m",
    );

    // The error message names the state and both declarations.
    let message = backend
        .list_state(&ListStateDescriptor::<u64>::new("s"))
        .expect_err("incompatible")
        .to_string();
    assert!(message.contains("'s'"), "{message}");
    assert!(
        message.contains("value") && message.contains("list"),
        "{message}"
    );

    // Failed declarations added nothing.
    let names: Vec<String> = backend.signatures().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s", "m"], "failed declarations add no state");
}

pub fn redeclaring_the_same_state_returns_a_handle_to_the_same_state(harness: &Harness) {
    let mut backend = harness.backend::<u64>(all_groups(MAXP), MAXP);
    let v1 = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let l1 = backend
        .list_state(&ListStateDescriptor::<u64>::new("l"))
        .unwrap();
    let m1 = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("m"))
        .unwrap();
    let r1 = backend
        .reducing_state(&ReducingStateDescriptor::new("r", |a: u64, b: u64| a + b))
        .unwrap();
    let a1 = backend
        .aggregating_state(&AggregatingStateDescriptor::new("a", Average))
        .unwrap();
    let key = 3u64;
    {
        let mut s = scope(backend.as_mut(), &key);
        s.value(&v1).set(1).unwrap();
        s.list(&l1).add(2).unwrap();
        s.map(&m1).put(3, 4).unwrap();
        s.reducing(&r1).add(5).unwrap();
        s.aggregating(&a1).add(6).unwrap();
    }

    let v2 = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let l2 = backend
        .list_state(&ListStateDescriptor::<u64>::new("l"))
        .unwrap();
    let m2 = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("m"))
        .unwrap();
    let r2 = backend
        .reducing_state(&ReducingStateDescriptor::new("r", |a: u64, b: u64| a + b))
        .unwrap();
    let a2 = backend
        .aggregating_state(&AggregatingStateDescriptor::new("a", Average))
        .unwrap();
    assert_eq!(
        backend.signatures().len(),
        5,
        "redeclaring adds no new state"
    );
    let mut s = scope(backend.as_mut(), &key);
    assert_eq!(s.value(&v2).get().unwrap(), Some(&1));
    assert_eq!(s.list(&l2).get().unwrap(), [2]);
    assert_eq!(s.map(&m2).get(&3).unwrap(), Some(&4));
    assert_eq!(s.reducing(&r2).get().unwrap(), Some(&5));
    assert_eq!(s.aggregating(&a2).get().unwrap(), Some(6.0));
    // Writes through the new handle are seen through the old one.
    s.value(&v2).set(10).unwrap();
    s.reducing(&r2).add(5).unwrap();
    assert_eq!(s.value(&v1).get().unwrap(), Some(&10));
    assert_eq!(s.reducing(&r1).get().unwrap(), Some(&10));
}

pub fn invalid_state_names_are_rejected(harness: &Harness) {
    let mut backend = harness.backend::<u64>(all_groups(MAXP), MAXP);
    assert!(
        matches!(
            backend.value_state(&ValueStateDescriptor::<u64>::new("")),
            Err(StateError::InvalidName { .. })
        ),
        "the empty name is refused"
    );
    assert!(
        matches!(
            backend.value_state(&ValueStateDescriptor::<u64>::new("x".repeat(257))),
            Err(StateError::InvalidName { .. })
        ),
        "a 257-byte name is refused"
    );
    assert!(
        backend
            .value_state(&ValueStateDescriptor::<u64>::new("x".repeat(256)))
            .is_ok(),
        "a 256-byte name is accepted"
    );
}

pub fn key_group_outside_the_backend_range_is_an_error(harness: &Harness) {
    let maxp = 8;
    let range = KeyGroupRange::new(2, 5);
    let mut backend = harness.backend::<u64>(range, maxp);
    assert_eq!(
        backend.kind(),
        harness.kind(),
        "the backend is of the harness's kind"
    );
    assert_eq!(backend.key_group_range(), range);
    assert_eq!(backend.max_parallelism(), maxp);
    let value = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let list = backend
        .list_state(&ListStateDescriptor::<u64>::new("l"))
        .unwrap();
    let map = backend
        .map_state(&MapStateDescriptor::<u64, u64>::new("m"))
        .unwrap();
    let reducing = backend
        .reducing_state(&ReducingStateDescriptor::new("r", |a: u64, b: u64| a + b))
        .unwrap();
    let aggregating = backend
        .aggregating_state(&AggregatingStateDescriptor::new("a", Average))
        .unwrap();

    let outside = (0..1000u64)
        .find(|k| !range.contains(key_group_of(k, maxp)))
        .expect("some key falls outside [2, 5) of 8 groups");
    let inside = (0..1000u64)
        .find(|k| range.contains(key_group_of(k, maxp)))
        .expect("some key falls inside [2, 5) of 8 groups");
    let group = key_group_of(&outside, maxp);

    fn out_of_range<T: std::fmt::Debug>(r: Result<T, StateError>, group: u32) {
        match r {
            Err(StateError::KeyGroupOutOfRange { key_group, range }) => {
                assert_eq!(key_group, group, "the error names the key group");
                assert_eq!(range, "[2, 5)", "the error names the owned range");
            }
            other => panic!("expected KeyGroupOutOfRange, got {other:?}"),
        }
    }

    let mut s = KeyScope::new(backend.as_mut(), &outside, group);
    assert_eq!(s.key_group(), group);
    assert_eq!(*s.key(), outside);
    out_of_range(s.value(&value).set(1), group);
    out_of_range(s.value(&value).get(), group);
    out_of_range(s.value(&value).clear(), group);
    out_of_range(s.value(&value).update(|_| Some(1)), group);
    out_of_range(s.value(&value).modify(|| 0, |v| *v += 1), group);
    out_of_range(s.list(&list).add(1), group);
    out_of_range(s.list(&list).get(), group);
    out_of_range(s.list(&list).update(vec![1]), group);
    out_of_range(s.list(&list).clear(), group);
    out_of_range(s.map(&map).put(1, 1), group);
    out_of_range(s.map(&map).get(&1), group);
    out_of_range(s.map(&map).contains(&1), group);
    out_of_range(s.map(&map).remove(&1), group);
    out_of_range(s.map(&map).len(), group);
    out_of_range(s.map(&map).for_each(|_, _| {}), group);
    out_of_range(s.map(&map).clear(), group);
    out_of_range(s.reducing(&reducing).add(1), group);
    out_of_range(s.reducing(&reducing).get(), group);
    out_of_range(s.reducing(&reducing).clear(), group);
    out_of_range(s.aggregating(&aggregating).add(1), group);
    out_of_range(s.aggregating(&aggregating).get(), group);
    out_of_range(s.aggregating(&aggregating).clear(), group);

    // Nothing was stored, and a key inside the range works.
    let mut count = 0;
    backend.for_each_value(&value, |_, _| count += 1).unwrap();
    assert_eq!(count, 0, "failed writes stored nothing");
    for g in range.iter() {
        assert_eq!(backend.key_count(g).unwrap(), 0, "key group {g} is empty");
    }
    let mut s = scope(backend.as_mut(), &inside);
    s.value(&value).set(5).unwrap();
    assert_eq!(s.value(&value).get().unwrap(), Some(&5));
}

pub fn for_each_value_visits_every_key_exactly_once(harness: &Harness) {
    // A backend owning only part of the key groups, as one parallel instance does.
    let maxp = 32;
    let range = KeyGroupRange::for_operator(1, 3, maxp);
    let mut backend = harness.backend::<u64>(range, maxp);
    let value = backend
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let other = backend
        .value_state(&ValueStateDescriptor::<u64>::new("other"))
        .unwrap();

    let mut expected = BTreeMap::new();
    for k in (0..5000u64).filter(|k| range.contains(key_group_of(k, maxp))) {
        let mut s = scope(backend.as_mut(), &k);
        s.value(&value).set(k * 7).unwrap();
        // Written twice: still one entry.
        s.value(&value).set(k * 3).unwrap();
        expected.insert(k, k * 3);
        if k % 5 == 0 {
            s.value(&other).set(1).unwrap();
        }
    }
    // Some keys removed again.
    for k in expected
        .keys()
        .copied()
        .filter(|k| k % 4 == 0)
        .collect::<Vec<_>>()
    {
        let mut s = scope(backend.as_mut(), &k);
        s.value(&value).clear().unwrap();
        expected.remove(&k);
    }
    assert!(expected.len() > 500, "enough keys to span every key group");

    let mut seen = BTreeMap::new();
    backend
        .for_each_value(&value, |k, v| {
            assert!(seen.insert(*k, *v).is_none(), "key {k} visited twice");
        })
        .unwrap();
    assert_eq!(seen, expected, "for_each_value sees exactly the live keys");

    let mut others = BTreeSet::new();
    backend
        .for_each_value(&other, |k, _| {
            assert!(others.insert(*k), "key {k} visited twice");
        })
        .unwrap();
    let expected_others: BTreeSet<u64> = (0..5000u64)
        .filter(|k| range.contains(key_group_of(k, maxp)) && k % 5 == 0)
        .collect();
    assert_eq!(
        others, expected_others,
        "the other state keeps its own keys"
    );

    // key_count per key group adds up to every key with any state.
    let mut total = 0;
    for g in range.iter() {
        total += backend.key_count(g).unwrap();
    }
    assert_eq!(
        total,
        expected.len() + expected_others.len(),
        "key_count summed over the range"
    );
}

// ---------------------------------------------------------------------------
// Cases: snapshots and restores
// ---------------------------------------------------------------------------

pub fn snapshot_restores_into_the_same_range(harness: &Harness) {
    let full = all_groups(MAXP);
    let mut source = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    let mut model = Model::populate(source.as_mut(), &f);
    model.check_all(source.as_mut(), &f, "source");
    let sections = sections_of(source.as_mut(), 1);

    // Restored, then declared.
    let (mut restored, rf) =
        restore_and_check(harness, full, &sections, &model, "restored, then declared");

    // Declared, then restored: sections of declared states load at once.
    let mut declared_first = harness.backend::<String>(full, MAXP);
    let df = Fixture::declare(declared_first.as_mut());
    restore_sections(declared_first.as_mut(), &sections);
    assert!(
        declared_first.unclaimed_restored_states().is_empty(),
        "restoring into declared states leaves nothing unclaimed"
    );
    model.check_all(declared_first.as_mut(), &df, "declared, then restored");

    // The restored state is live: later writes build on it (appends to
    // restored lists, puts into restored maps, adds to restored reductions),
    // and the next snapshot carries both.
    model.mutate(restored.as_mut(), &rf, 1);
    model.check_all(restored.as_mut(), &rf, "restored, then written");
    let again = sections_of(restored.as_mut(), 2);
    restore_and_check(harness, full, &again, &model, "second generation");
}

pub fn snapshot_restores_into_split_and_merged_ranges(harness: &Harness) {
    let full = all_groups(MAXP);
    let mut source = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    let mut model = Model::populate(source.as_mut(), &f);
    let sections = sections_of(source.as_mut(), 1);

    // Scale out from 1 to 3 instances; each writes to its own keys.
    let mut thirds = Vec::new();
    for i in 0..3 {
        let range = KeyGroupRange::for_operator(i, 3, MAXP);
        let context = format!("instance {i} of 3, {range}");
        let (mut backend, f) = restore_and_check(harness, range, &sections, &model, &context);
        model.mutate(backend.as_mut(), &f, u64::from(i) + 1);
        model.check_all(backend.as_mut(), &f, &format!("{context}, written"));
        thirds.push(backend);
    }
    let mut from_thirds = Vec::new();
    for (i, backend) in thirds.iter_mut().enumerate() {
        from_thirds.extend(sections_of(backend.as_mut(), 10 + i as u64));
    }
    assert_eq!(
        from_thirds.len(),
        MAXP as usize,
        "the three instances' snapshots cover every key group once"
    );

    // 3 -> 2: halves that cut across the thirds' ranges.
    let mut from_halves = Vec::new();
    for (i, range) in [
        KeyGroupRange::new(0, MAXP / 2),
        KeyGroupRange::new(MAXP / 2, MAXP),
    ]
    .into_iter()
    .enumerate()
    {
        let context = format!("half {i}, {range}, from three instances");
        let (mut backend, _) = restore_and_check(harness, range, &from_thirds, &model, &context);
        from_halves.extend(sections_of(backend.as_mut(), 20 + i as u64));
    }

    // 2 -> 1.
    restore_and_check(
        harness,
        full,
        &from_halves,
        &model,
        "one instance from two halves",
    );
}

pub fn heap_snapshot_restores_into_this_backend(harness: &Harness) {
    let heap = Harness::heap();
    let full = all_groups(MAXP);
    let mut source = heap.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    let mut model = Model::populate(source.as_mut(), &f);
    let sections = sections_of(source.as_mut(), 1);

    let (mut restored, rf) = restore_and_check(
        harness,
        full,
        &sections,
        &model,
        "heap snapshot, same range",
    );
    for range in [KeyGroupRange::new(0, 5), KeyGroupRange::new(5, MAXP)] {
        restore_and_check(
            harness,
            range,
            &sections,
            &model,
            &format!("heap snapshot, {range}"),
        );
    }
    // And back: heap -> this backend -> heap.
    model.mutate(restored.as_mut(), &rf, 1);
    let back = sections_of(restored.as_mut(), 2);
    restore_and_check(&heap, full, &back, &model, "heap, this backend, heap again");
}

pub fn snapshot_of_this_backend_restores_into_heap(harness: &Harness) {
    let heap = Harness::heap();
    let full = all_groups(MAXP);
    let mut source = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    let mut model = Model::populate(source.as_mut(), &f);
    let sections = sections_of(source.as_mut(), 1);

    let (mut restored, rf) =
        restore_and_check(&heap, full, &sections, &model, "into heap, same range");
    for range in [KeyGroupRange::new(0, 11), KeyGroupRange::new(11, MAXP)] {
        restore_and_check(
            &heap,
            range,
            &sections,
            &model,
            &format!("into heap, {range}"),
        );
    }
    // And back: this backend -> heap -> this backend.
    model.mutate(restored.as_mut(), &rf, 1);
    let back = sections_of(restored.as_mut(), 2);
    restore_and_check(
        harness,
        full,
        &back,
        &model,
        "this backend, heap, this backend again",
    );
}

pub fn writes_after_a_snapshot_do_not_appear_in_it(harness: &Harness) {
    let full = all_groups(MAXP);
    let mut backend = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(backend.as_mut());
    let mut model = Model::populate(backend.as_mut(), &f);
    let at_first = model.clone();

    // The synchronous part of snapshot 1, then writes, then snapshot 2 and
    // more writes, and only then are both written out (as the asynchronous
    // part does, on another thread, while processing goes on).
    let first = canonical_snapshot(backend.as_mut(), 1);
    model.mutate(backend.as_mut(), &f, 1);
    let at_second = model.clone();
    let second = canonical_snapshot(backend.as_mut(), 2);
    model.mutate(backend.as_mut(), &f, 2);
    model.check_all(
        backend.as_mut(),
        &f,
        "live backend after both rounds of writes",
    );
    // A state declared after the snapshots is in neither.
    let late = backend
        .value_state(&ValueStateDescriptor::<u64>::new("late"))
        .unwrap();
    let key = "k1".to_owned();
    scope(backend.as_mut(), &key).value(&late).set(1).unwrap();

    assert_eq!(state_names(&first), FIXTURE_STATES, "states in snapshot 1");
    assert_eq!(state_names(&second), FIXTURE_STATES, "states in snapshot 2");
    let second = write_sections(&second);
    let first = write_sections(&first);
    restore_and_check(harness, full, &first, &at_first, "snapshot 1");
    restore_and_check(harness, full, &second, &at_second, "snapshot 2");

    // A snapshot taken now has everything, including the late state.
    let third = sections_of(backend.as_mut(), 3);
    let mut restored = harness.restored::<String>(full, MAXP, &third);
    let rf = Fixture::declare(restored.as_mut());
    assert_eq!(
        restored.unclaimed_restored_states(),
        ["late"],
        "snapshot 3 holds the late state"
    );
    model.check_all(restored.as_mut(), &rf, "snapshot 3");
}

pub fn unclaimed_restored_states_are_reported_and_carried_unchanged(harness: &Harness) {
    let full = all_groups(MAXP);
    let mut source = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    let mut model = Model::populate(source.as_mut(), &f);
    let first = sections_of(source.as_mut(), 1);

    // Nothing declared: every state is reported, and a snapshot writes the
    // restored sections back byte for byte.
    let mut restored = harness.restored::<String>(full, MAXP, &first);
    assert_eq!(
        restored.unclaimed_restored_states(),
        FIXTURE_STATES,
        "undeclared restored states are reported"
    );
    let carried = canonical_snapshot(restored.as_mut(), 2);
    assert_eq!(
        state_names(&carried),
        FIXTURE_STATES,
        "a snapshot carries the undeclared states"
    );
    assert_same_sections(
        &write_sections(&carried),
        &first,
        "snapshot of undeclared restored states",
    );

    // Two of them declared lazily (after that snapshot): they are claimed, the
    // others still wait.
    let v = restored.value_state(&value_descriptor()).unwrap();
    let m = restored.map_state(&map_descriptor()).unwrap();
    assert_eq!(
        restored.unclaimed_restored_states(),
        ["a", "l", "r"],
        "declaring claims a restored state"
    );
    model.check_value(restored.as_mut(), &v, "lazily declared value state");
    model.check_map(restored.as_mut(), &m, "lazily declared map state");
    for key in ["k3", "k4", ""] {
        model.set_value(restored.as_mut(), &v, key, (99, "after restore".into()));
        model.put_map(restored.as_mut(), &m, key, "after restore", 99);
    }

    // The next snapshot has each state exactly once: the declared ones with
    // their new data, the others as restored.
    let mixed = canonical_snapshot(restored.as_mut(), 3);
    let names: Vec<String> = mixed.states.iter().map(|(s, _)| s.name.clone()).collect();
    assert_eq!(
        state_names(&mixed),
        FIXTURE_STATES,
        "each state once in a snapshot of declared and undeclared states (in order: {names:?})"
    );
    let mixed = write_sections(&mixed);
    restore_and_check(harness, full, &mixed, &model, "declared and carried states");
    restore_and_check(
        &Harness::heap(),
        full,
        &mixed,
        &model,
        "declared and carried states, into heap",
    );

    // Carried through a rescale without ever being declared: 1 -> 2 -> 1.
    let mut halves = Vec::new();
    for range in [KeyGroupRange::new(0, 7), KeyGroupRange::new(7, MAXP)] {
        let mut half = harness.restored::<String>(range, MAXP, &mixed);
        assert_eq!(
            half.unclaimed_restored_states(),
            FIXTURE_STATES,
            "{range}: undeclared restored states are reported"
        );
        halves.extend(sections_of(half.as_mut(), 4));
    }
    restore_and_check(
        harness,
        full,
        &halves,
        &model,
        "carried undeclared through two halves",
    );
}

pub fn restoring_a_state_under_another_type_is_incompatible(harness: &Harness) {
    let full = all_groups(MAXP);
    let mut source = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    Model::populate(source.as_mut(), &f);
    let sections = sections_of(source.as_mut(), 1);

    type Declare = fn(&mut dyn KeyedStateBackend<String>) -> Result<(), StateError>;
    let attempts: [(&str, &str, Declare); 12] = [
        ("v", "value of another type", |b| {
            b.value_state(&ValueStateDescriptor::<u64>::new("v"))
                .map(drop)
        }),
        ("v", "list of the same type", |b| {
            b.list_state(&ListStateDescriptor::<Row>::new("v"))
                .map(drop)
        }),
        ("l", "list of another type", |b| {
            b.list_state(&ListStateDescriptor::<u64>::new("l"))
                .map(drop)
        }),
        ("l", "value of the same type", |b| {
            b.value_state(&ValueStateDescriptor::<String>::new("l"))
                .map(drop)
        }),
        ("m", "map of another value type", |b| {
            b.map_state(&MapStateDescriptor::<String, i32>::new("m"))
                .map(drop)
        }),
        ("m", "map of another key type", |b| {
            b.map_state(&MapStateDescriptor::<u64, i64>::new("m"))
                .map(drop)
        }),
        ("r", "reducing of another type", |b| {
            b.reducing_state(&ReducingStateDescriptor::new("r", |a: i32, b: i32| a + b))
                .map(drop)
        }),
        ("r", "value of the same type", |b| {
            b.value_state(&ValueStateDescriptor::<i64>::new("r"))
                .map(drop)
        }),
        ("a", "aggregating of another result type", |b| {
            b.aggregating_state(&AggregatingStateDescriptor::new("a", AverageF32))
                .map(drop)
        }),
        ("a", "value of the accumulator type", |b| {
            b.value_state(&ValueStateDescriptor::<(u64, u64)>::new("a"))
                .map(drop)
        }),
        ("a", "reducing of the accumulator type", |b| {
            b.reducing_state(&ReducingStateDescriptor::new("a", |a: (u64, u64), _| a))
                .map(drop)
        }),
        ("m", "value", |b| {
            b.value_state(&ValueStateDescriptor::<String>::new("m"))
                .map(drop)
        }),
    ];
    for (name, what, declare) in attempts {
        let mut restored = harness.restored::<String>(full, MAXP, &sections);
        match declare(restored.as_mut()) {
            Err(
                StateError::IncompatibleDeclaration { name: n, .. }
                | StateError::RestoredTypeMismatch { state: n, .. },
            ) => assert_eq!(
                n, name,
                "restored '{name}' declared as {what}: the error names the state"
            ),
            Err(other) => panic!(
                "restored '{name}' declared as {what}: expected IncompatibleDeclaration, got {other}"
            ),
            Ok(()) => panic!(
                "restored '{name}' declared as {what}: expected IncompatibleDeclaration, got a handle"
            ),
        }
    }
}

pub fn failed_declaration_of_a_restored_state_keeps_it(harness: &Harness) {
    let full = all_groups(MAXP);
    let mut source = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    let model = Model::populate(source.as_mut(), &f);
    let sections = sections_of(source.as_mut(), 1);

    // A declaration refused for its type must change nothing: the restored
    // state still waits, and a matching declaration gets its data.
    let mut restored = harness.restored::<String>(full, MAXP, &sections);
    assert_incompatible(
        restored.value_state(&ValueStateDescriptor::<u64>::new("v")),
        "v",
    );
    assert_incompatible(
        restored.list_state(&ListStateDescriptor::<u64>::new("l")),
        "l",
    );
    assert!(
        restored.signatures().is_empty(),
        "a refused declaration adds no state"
    );
    assert_eq!(
        restored.unclaimed_restored_states(),
        FIXTURE_STATES,
        "a refused declaration leaves the restored state unclaimed"
    );
    let rf = Fixture::declare(restored.as_mut());
    model.check_all(
        restored.as_mut(),
        &rf,
        "declared correctly after a refused declaration",
    );
}

pub fn restoring_key_groups_outside_the_range_is_an_error(harness: &Harness) {
    let full = all_groups(MAXP);
    let mut source = harness.backend::<String>(full, MAXP);
    let f = Fixture::declare(source.as_mut());
    Model::populate(source.as_mut(), &f);
    let sections = sections_of(source.as_mut(), 1);

    let range = KeyGroupRange::new(4, 8);
    let mut half = harness.backend::<String>(range, MAXP);
    let result = half.restore(RestoredKeyedState {
        groups: sections,
        native: Vec::new(),
        streams: Vec::new(),
    });
    match result {
        Err(StateError::KeyGroupOutOfRange { key_group, .. }) => assert!(
            !range.contains(key_group),
            "the error names a key group outside {range}, not {key_group}"
        ),
        Err(other) => panic!("expected KeyGroupOutOfRange, got {other}"),
        Ok(()) => panic!("restoring key groups outside {range} succeeded"),
    }
}

pub fn damaged_snapshot_bytes_are_errors(harness: &Harness) {
    let maxp = 4;
    let full = all_groups(maxp);
    let mut source = harness.backend::<u64>(full, maxp);
    let value = source
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    for key in 0..20u64 {
        scope(source.as_mut(), &key).value(&value).set(key).unwrap();
    }
    let sections = sections_of(source.as_mut(), 1);

    // A section cut short does not parse.
    let mut truncated = sections.clone();
    let cut = truncated[1].1.len() - 3;
    truncated[1].1.truncate(cut);
    let mut restored = harness.backend::<u64>(full, maxp);
    let result = restored.restore(RestoredKeyedState {
        groups: truncated,
        native: Vec::new(),
        streams: Vec::new(),
    });
    assert!(
        matches!(result, Err(StateError::CorruptSnapshot(_))),
        "a truncated section is a CorruptSnapshot error, got {result:?}"
    );

    // A payload claiming one entry more than it holds parses, but fails to
    // decode when the state is declared. Section layout (little-endian):
    // u32 states, u16 name_len, name, u8 kind, u16 types_len, types,
    // u64 payload_len, then the payload, which starts with u64 entries.
    let mut inflated = sections.clone();
    let bytes = &mut inflated[2].1;
    let count_at = single_state_payload_at(bytes);
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[count_at..count_at + 8]);
    let count = u64::from_le_bytes(count);
    bytes[count_at..count_at + 8].copy_from_slice(&(count + 1).to_le_bytes());
    let mut restored = harness.backend::<u64>(full, maxp);
    restored
        .restore(RestoredKeyedState {
            groups: inflated,
            native: Vec::new(),
            streams: Vec::new(),
        })
        .expect("the section structure is intact");
    let result = restored.value_state(&ValueStateDescriptor::<u64>::new("v"));
    assert!(
        matches!(result, Err(StateError::Codec { .. })),
        "an entry count beyond the payload is a Codec error at declaration, got {:?}",
        result.err()
    );
}

/// Where the payload of the only state of a key-group section starts. Section
/// layout (little-endian): u32 states, u16 name_len, name, u8 kind, u16
/// types_len, types, u64 payload_len, then the payload (u64 entries, entries).
fn single_state_payload_at(section: &[u8]) -> usize {
    assert_eq!(section[..4], 1u32.to_le_bytes(), "one state in the section");
    let name_len = u16::from_le_bytes([section[4], section[5]]) as usize;
    let types_at = 4 + 2 + name_len + 1;
    let types_len = u16::from_le_bytes([section[types_at], section[types_at + 1]]) as usize;
    types_at + 2 + types_len + 8
}

/// Set in the child process that [`in_child_process`] starts.
const CHILD_ENV: &str = "FLOWSTATE_SEMANTICS_SUITE_CHILD";

/// Runs the current test again in a child process and asserts that it
/// passes there; returns false in that child (where the caller does the
/// work). For cases whose failure mode is aborting the process, which would
/// otherwise take every other test of the binary down with it. libtest names
/// a test's thread after the test; where it does not (the main thread), the
/// case runs in this process.
fn in_child_process() -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return false;
    }
    let Some(test) = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(str::to_owned)
    else {
        return false;
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("start the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let head = |s: &str| s.lines().take(12).collect::<Vec<_>>().join("\n");
    assert!(
        output.status.success(),
        "{test} failed in a child process ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        head(&stdout),
        head(&stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child process ran {test}:\n{stdout}"
    );
    true
}

pub fn damaged_length_in_a_snapshot_is_an_error_not_an_abort(harness: &Harness) {
    if in_child_process() {
        return;
    }
    let maxp = 4;
    let full = all_groups(maxp);
    let mut source = harness.backend::<u64>(full, maxp);
    let value = source
        .value_state(&ValueStateDescriptor::<String>::new("v"))
        .unwrap();
    for key in 0..20u64 {
        scope(source.as_mut(), &key)
            .value(&value)
            .set(format!("value {key}"))
            .unwrap();
    }
    let mut sections = sections_of(source.as_mut(), 1);

    // The first entry of key group 1 is `u64 key, u64 length, bytes`: claim a
    // string of 2^62 bytes. A decoder must refuse it (the payload is far
    // shorter), not try to allocate it.
    let bytes = &mut sections[1].1;
    let count_at = single_state_payload_at(bytes);
    assert_ne!(
        bytes[count_at..count_at + 8],
        0u64.to_le_bytes(),
        "key group 1 holds entries"
    );
    let length_at = count_at + 8 + 8;
    bytes[length_at..length_at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());

    let mut restored = harness.backend::<u64>(full, maxp);
    restored
        .restore(RestoredKeyedState {
            groups: sections,
            native: Vec::new(),
            streams: Vec::new(),
        })
        .expect("the section structure is intact");
    let result = restored.value_state(&ValueStateDescriptor::<String>::new("v"));
    assert!(
        matches!(result, Err(StateError::Codec { .. })),
        "a string length beyond the payload is a Codec error at declaration, got {:?}",
        result.err()
    );
}

// ---------------------------------------------------------------------------
// Cases: awkward encodings
// ---------------------------------------------------------------------------

/// Writes a value, a list and a map under each of `keys` (each different),
/// clears the first key, and checks that every key sees only its own state:
/// live, after a snapshot restored into this backend, and into the heap
/// backend. Run with one key group (every key in the same group) and with
/// `MAXP`.
fn check_keys_stay_isolated<K: StateKey>(harness: &Harness, keys: &[K]) {
    type Handles = (
        ValueStateHandle<String>,
        ListStateHandle<String>,
        MapStateHandle<String, usize>,
    );
    fn declare<K: StateKey>(b: &mut dyn KeyedStateBackend<K>) -> Handles {
        (
            b.value_state(&ValueStateDescriptor::new("v")).unwrap(),
            b.list_state(&ListStateDescriptor::new("l")).unwrap(),
            b.map_state(&MapStateDescriptor::new("m")).unwrap(),
        )
    }
    fn check<K: StateKey>(
        b: &mut dyn KeyedStateBackend<K>,
        h: &Handles,
        keys: &[K],
        context: &str,
    ) {
        let (value, list, map) = h;
        for (i, key) in keys.iter().enumerate() {
            let mut s = scope(b, key);
            if i == 0 {
                assert_eq!(
                    s.value(value).get().unwrap(),
                    None,
                    "{context}: cleared key {key:?}"
                );
                assert!(
                    s.list(list).get().unwrap().is_empty(),
                    "{context}: cleared key {key:?}"
                );
                assert_eq!(
                    s.map(map).len().unwrap(),
                    0,
                    "{context}: cleared key {key:?}"
                );
                continue;
            }
            assert_eq!(
                s.value(value).get().unwrap(),
                Some(&format!("value {i}")),
                "{context}: value of key {key:?}"
            );
            assert_eq!(
                s.list(list).get().unwrap(),
                [format!("{i}"), String::new()],
                "{context}: list of key {key:?}"
            );
            let mut entries = BTreeMap::new();
            s.map(map)
                .for_each(|k, v| {
                    entries.insert(k.clone(), *v);
                })
                .unwrap();
            assert_eq!(
                entries,
                BTreeMap::from([(String::new(), i), (format!("{i}"), i)]),
                "{context}: map of key {key:?}"
            );
        }
        let mut seen = Vec::new();
        b.for_each_value(value, |k, v| seen.push((k.clone(), v.clone())))
            .unwrap();
        assert_eq!(
            seen.len(),
            keys.len() - 1,
            "{context}: for_each_value visits each key with a value once: {seen:?}"
        );
        for (k, v) in &seen {
            let i = keys.iter().position(|key| key == k);
            assert_eq!(
                i.map(|i| format!("value {i}")).as_ref(),
                Some(v),
                "{context}: for_each_value pairs key {k:?} with its own value"
            );
        }
        let total: usize = b
            .key_group_range()
            .iter()
            .map(|g| b.key_count(g).unwrap())
            .sum();
        assert_eq!(
            total,
            3 * (keys.len() - 1),
            "{context}: key_count counts each key once per state"
        );
    }

    for maxp in [1, MAXP] {
        let full = all_groups(maxp);
        let mut backend = harness.backend::<K>(full, maxp);
        let h = declare(backend.as_mut());
        for (i, key) in keys.iter().enumerate() {
            let mut s = scope(backend.as_mut(), key);
            s.value(&h.0).set(format!("value {i}")).unwrap();
            s.list(&h.1).add(format!("{i}")).unwrap();
            s.list(&h.1).add(String::new()).unwrap();
            s.map(&h.2).put(String::new(), i).unwrap();
            s.map(&h.2).put(format!("{i}"), i).unwrap();
        }
        {
            let mut s = scope(backend.as_mut(), &keys[0]);
            s.value(&h.0).clear().unwrap();
            s.list(&h.1).clear().unwrap();
            s.map(&h.2).clear().unwrap();
        }
        check(
            backend.as_mut(),
            &h,
            keys,
            &format!("live, {maxp} key groups"),
        );
        let sections = sections_of(backend.as_mut(), 1);
        for (target, name) in [(harness, "this backend"), (&Harness::heap(), "heap")] {
            let mut restored = target.restored::<K>(full, maxp, &sections);
            let rh = declare(restored.as_mut());
            check(
                restored.as_mut(),
                &rh,
                keys,
                &format!("restored into {name}, {maxp} key groups"),
            );
        }
    }
}

pub fn string_keys_that_are_prefixes_of_each_other_stay_isolated(harness: &Harness) {
    let long = "x".repeat(300);
    let keys: Vec<String> = [
        "a",
        "",
        "ab",
        "abc",
        "b",
        "a\0",
        "\0",
        "\u{e9}",
        "e\u{301}",
        long.as_str(),
        &long[..299],
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    check_keys_stay_isolated(harness, &keys);
}

pub fn tuple_keys_stay_isolated(harness: &Harness) {
    let pairs: Vec<(String, String)> = [
        ("a", "bc"),
        ("ab", "c"),
        ("abc", ""),
        ("", "abc"),
        ("", ""),
        ("a", ""),
        ("", "a"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    check_keys_stay_isolated(harness, &pairs);

    let mixed: Vec<(u8, String, u64)> = vec![
        (0, String::new(), 0),
        (0, "a".into(), 0),
        (1, String::new(), 0),
        (0, String::new(), 1),
        (0, String::new(), 256),
        (255, "\u{ff}".into(), u64::MAX),
    ];
    check_keys_stay_isolated(harness, &mixed);
}

pub fn map_user_keys_that_are_prefixes_of_each_other_stay_isolated(harness: &Harness) {
    let user_keys = ["", "a", "ab", "abc", "b", "\0", "a\0"];
    let keys = ["", "a", "ab"];
    let entries = |key: &str| -> BTreeMap<String, String> {
        user_keys
            .iter()
            .map(|uk| ((*uk).to_owned(), format!("{key:?}/{uk:?}")))
            .collect()
    };

    for maxp in [1, MAXP] {
        let full = all_groups(maxp);
        let mut backend = harness.backend::<String>(full, maxp);
        let map = backend
            .map_state(&MapStateDescriptor::<String, String>::new("m"))
            .unwrap();
        let set = backend
            .map_state(&MapStateDescriptor::<Vec<u8>, ()>::new("set"))
            .unwrap();
        let byte_keys: [&[u8]; 5] = [&[], &[0], &[0, 0], &[0, 1], &[1]];
        for key in keys {
            let key = key.to_owned();
            let mut s = scope(backend.as_mut(), &key);
            for (uk, uv) in entries(&key) {
                s.map(&map).put(uk, uv).unwrap();
            }
            for bytes in byte_keys {
                s.map(&set).put(bytes.to_vec(), ()).unwrap();
            }
        }
        // Removing one entry, and all entries of one key, touches nothing else.
        let a = "a".to_owned();
        let mut s = scope(backend.as_mut(), &a);
        assert_eq!(
            s.map(&map).remove(&"ab".to_owned()).unwrap(),
            Some("\"a\"/\"ab\"".to_owned()),
            "remove returns the entry's value"
        );
        assert_eq!(s.map(&set).remove(&vec![0]).unwrap(), Some(()));
        let empty = String::new();
        scope(backend.as_mut(), &empty).map(&map).clear().unwrap();

        let check = |b: &mut dyn KeyedStateBackend<String>,
                     map: &MapStateHandle<String, String>,
                     set: &MapStateHandle<Vec<u8>, ()>,
                     context: &str| {
            for key in keys {
                let key = key.to_owned();
                let mut expected = entries(&key);
                let mut expected_set: BTreeSet<Vec<u8>> =
                    byte_keys.iter().map(|b| b.to_vec()).collect();
                match key.as_str() {
                    "" => expected.clear(),
                    "a" => {
                        expected.remove("ab");
                        expected_set.remove(&vec![0]);
                    }
                    _ => {}
                }
                let mut s = scope(b, &key);
                let mut actual = BTreeMap::new();
                s.map(map)
                    .for_each(|k, v| {
                        assert!(
                            actual.insert(k.clone(), v.clone()).is_none(),
                            "{context}: key {key:?}, user key {k:?} visited twice"
                        );
                    })
                    .unwrap();
                assert_eq!(actual, expected, "{context}: map of key {key:?}");
                assert_eq!(
                    s.map(map).len().unwrap(),
                    expected.len(),
                    "{context}: len of the map of key {key:?}"
                );
                for uk in user_keys {
                    assert_eq!(
                        s.map(map).get(&uk.to_owned()).unwrap(),
                        expected.get(uk),
                        "{context}: key {key:?}, user key {uk:?}"
                    );
                }
                let mut actual_set = BTreeSet::new();
                s.map(set)
                    .for_each(|k, ()| {
                        assert!(
                            actual_set.insert(k.clone()),
                            "{context}: key {key:?}, byte key {k:?} visited twice"
                        );
                    })
                    .unwrap();
                assert_eq!(
                    actual_set, expected_set,
                    "{context}: byte-key set of key {key:?}"
                );
                for bytes in byte_keys {
                    assert_eq!(
                        s.map(set).contains(&bytes.to_vec()).unwrap(),
                        expected_set.contains(bytes),
                        "{context}: key {key:?} contains byte key {bytes:?}"
                    );
                }
            }
        };
        check(
            backend.as_mut(),
            &map,
            &set,
            &format!("live, {maxp} key groups"),
        );
        let sections = sections_of(backend.as_mut(), 1);
        for (target, name) in [(harness, "this backend"), (&Harness::heap(), "heap")] {
            let mut restored = target.restored::<String>(full, maxp, &sections);
            let rmap = restored
                .map_state(&MapStateDescriptor::<String, String>::new("m"))
                .unwrap();
            let rset = restored
                .map_state(&MapStateDescriptor::<Vec<u8>, ()>::new("set"))
                .unwrap();
            check(
                restored.as_mut(),
                &rmap,
                &rset,
                &format!("restored into {name}, {maxp} key groups"),
            );
        }
    }
}

pub fn zero_sized_and_empty_values_round_trip(harness: &Harness) {
    type Handles = (
        ValueStateHandle<()>,
        ValueStateHandle<Option<u8>>,
        ValueStateHandle<String>,
        ListStateHandle<()>,
        MapStateHandle<(), ()>,
        ReducingStateHandle<()>,
    );
    fn declare(b: &mut dyn KeyedStateBackend<u64>) -> Handles {
        (
            b.value_state(&ValueStateDescriptor::new("unit")).unwrap(),
            b.value_state(&ValueStateDescriptor::new("none")).unwrap(),
            b.value_state(&ValueStateDescriptor::new("empty")).unwrap(),
            b.list_state(&ListStateDescriptor::new("units")).unwrap(),
            b.map_state(&MapStateDescriptor::new("unit map")).unwrap(),
            b.reducing_state(&ReducingStateDescriptor::new("unit reduce", |(), ()| ()))
                .unwrap(),
        )
    }
    // Keys 0..20 hold the values; keys 20..40 hold none of them.
    fn check(b: &mut dyn KeyedStateBackend<u64>, h: &Handles, context: &str) {
        for key in 0..40u64 {
            let present = key < 20;
            let mut s = scope(b, &key);
            assert_eq!(
                s.value(&h.0).get().unwrap(),
                present.then_some(&()),
                "{context}: unit value of key {key}"
            );
            assert_eq!(
                s.value(&h.1).get().unwrap(),
                present.then_some(&None),
                "{context}: Option value (None) of key {key}"
            );
            assert_eq!(
                s.value(&h.2).get().unwrap(),
                present.then_some(&String::new()),
                "{context}: empty string value of key {key}"
            );
            assert_eq!(
                s.list(&h.3).get().unwrap().len(),
                if present { 3 } else { 0 },
                "{context}: list of units of key {key}"
            );
            assert_eq!(
                s.map(&h.4).get(&()).unwrap(),
                present.then_some(&()),
                "{context}: unit map of key {key}"
            );
            assert_eq!(
                s.map(&h.4).len().unwrap(),
                usize::from(present),
                "{context}: len of the unit map of key {key}"
            );
            assert_eq!(
                s.reducing(&h.5).get().unwrap(),
                present.then_some(&()),
                "{context}: unit reduction of key {key}"
            );
        }
        let mut units = BTreeSet::new();
        b.for_each_value(&h.0, |k, ()| {
            assert!(units.insert(*k), "{context}: key {k} visited twice");
        })
        .unwrap();
        assert_eq!(
            units,
            (0..20).collect::<BTreeSet<u64>>(),
            "{context}: for_each_value of unit values"
        );
        let total: usize = b
            .key_group_range()
            .iter()
            .map(|g| b.key_count(g).unwrap())
            .sum();
        assert_eq!(
            total,
            20 * 6,
            "{context}: key_count counts zero-sized entries"
        );
    }

    let full = all_groups(MAXP);
    let mut backend = harness.backend::<u64>(full, MAXP);
    let h = declare(backend.as_mut());
    for key in 0..20u64 {
        let mut s = scope(backend.as_mut(), &key);
        s.value(&h.0).set(()).unwrap();
        s.value(&h.1).set(None).unwrap();
        s.value(&h.2).set(String::new()).unwrap();
        for _ in 0..3 {
            s.list(&h.3).add(()).unwrap();
        }
        s.map(&h.4).put((), ()).unwrap();
        s.reducing(&h.5).add(()).unwrap();
        s.reducing(&h.5).add(()).unwrap();
    }
    check(backend.as_mut(), &h, "live");
    let sections = sections_of(backend.as_mut(), 1);
    for (target, name) in [(harness, "this backend"), (&Harness::heap(), "heap")] {
        let mut restored = target.restored::<u64>(full, MAXP, &sections);
        let rh = declare(restored.as_mut());
        check(restored.as_mut(), &rh, &format!("restored into {name}"));
    }
}

// ---------------------------------------------------------------------------
// State TTL (processing time, the harness's manual clock)
// ---------------------------------------------------------------------------

/// Where every harness clock starts.
pub const TTL_EPOCH_MS: i64 = 1_700_000_000_000;
/// The TTL of the TTL cases.
const TTL_MS: u64 = 100;

fn ttl() -> StateTtlConfig {
    StateTtlConfig::new(std::time::Duration::from_millis(TTL_MS))
}

/// The five kinds of state, all with `config` as TTL.
struct TtlStates {
    value: ValueStateHandle<u64>,
    list: ListStateHandle<String>,
    map: MapStateHandle<String, u64>,
    sum: ReducingStateHandle<u64>,
    avg: AggregatingStateHandle<u32, (u64, u64), f64>,
}

impl TtlStates {
    fn declare(backend: &mut dyn KeyedStateBackend<String>, config: StateTtlConfig) -> Self {
        Self {
            value: backend
                .value_state(&ValueStateDescriptor::new("t-value").with_ttl(config))
                .unwrap(),
            list: backend
                .list_state(&ListStateDescriptor::new("t-list").with_ttl(config))
                .unwrap(),
            map: backend
                .map_state(&MapStateDescriptor::new("t-map").with_ttl(config))
                .unwrap(),
            sum: backend
                .reducing_state(
                    &ReducingStateDescriptor::new("t-sum", |a, b| a + b).with_ttl(config),
                )
                .unwrap(),
            avg: backend
                .aggregating_state(
                    &AggregatingStateDescriptor::new("t-avg", Average).with_ttl(config),
                )
                .unwrap(),
        }
    }

    /// Writes every state of `key` once.
    fn write(&self, backend: &mut dyn KeyedStateBackend<String>, key: &String, n: u64) {
        let mut s = scope(backend, key);
        s.value(&self.value).set(n).unwrap();
        s.list(&self.list).add(format!("e{n}")).unwrap();
        s.map(&self.map).put(format!("u{n}"), n).unwrap();
        s.reducing(&self.sum).add(n).unwrap();
        s.aggregating(&self.avg).add(n as u32).unwrap();
    }

    /// What `key` reads: value, list, map entries (sorted), sum, average.
    #[allow(clippy::type_complexity)]
    fn read(
        &self,
        backend: &mut dyn KeyedStateBackend<String>,
        key: &String,
    ) -> (
        Option<u64>,
        Vec<String>,
        Vec<(String, u64)>,
        Option<u64>,
        Option<f64>,
    ) {
        let mut s = scope(backend, key);
        let value = s.value(&self.value).get().unwrap().copied();
        let list = s.list(&self.list).get().unwrap().to_vec();
        let mut entries = Vec::new();
        s.map(&self.map)
            .for_each(|k, v| entries.push((k.clone(), *v)))
            .unwrap();
        entries.sort();
        let sum = s.reducing(&self.sum).get().unwrap().copied();
        let avg = s.aggregating(&self.avg).get().unwrap();
        (value, list, entries, sum, avg)
    }

    fn assert_gone(
        &self,
        backend: &mut dyn KeyedStateBackend<String>,
        key: &String,
        context: &str,
    ) {
        assert_eq!(
            self.read(backend, key),
            (None, vec![], vec![], None, None),
            "{context}: every state of {key:?} has expired"
        );
    }
}

pub fn ttl_value_expires_and_is_refreshed_by_writes_not_reads(h: &Harness) {
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let handle = b
        .value_state(&ValueStateDescriptor::<u64>::new("v").with_ttl(ttl()))
        .unwrap();
    let key = "k".to_string();
    let get = |b: &mut dyn KeyedStateBackend<String>| {
        let mut s = scope(b, &key);
        s.value(&handle).get().unwrap().copied()
    };
    scope(b, &key).value(&handle).set(1).unwrap();
    h.clock.advance_ms(99);
    assert_eq!(get(b), Some(1), "alive until last write + ttl");
    // A write refreshes.
    scope(b, &key).value(&handle).set(2).unwrap();
    h.clock.advance_ms(99);
    assert_eq!(
        get(b),
        Some(2),
        "the write at +99 refreshed it (read at +198)"
    );
    // Reads do not (OnCreateAndWrite): the reads above did not refresh.
    h.clock.advance_ms(1);
    assert_eq!(get(b), None, "expired exactly ttl after the last write");
    // An expired value is absent for update, remove and modify too.
    let mut s = scope(b, &key);
    let new = s.value(&handle).update(|old| {
        assert_eq!(old, None, "update sees no expired value");
        Some(10)
    });
    assert_eq!(new.unwrap().copied(), Some(10));
    h.clock.advance_ms(TTL_MS as i64);
    assert_eq!(
        scope(b, &key).value(&handle).clear().unwrap(),
        None,
        "clear returns no expired value"
    );
    scope(b, &key).value(&handle).set(5).unwrap();
    h.clock.advance_ms(TTL_MS as i64);
    let seen = scope(b, &key)
        .value(&handle)
        .modify(
            || 100,
            |v| {
                *v += 1;
                *v
            },
        )
        .unwrap();
    assert_eq!(seen, 101, "modify of an expired value starts from init");
    h.clock.advance_ms(TTL_MS as i64 - 1);
    assert_eq!(get(b), Some(101), "modify refreshed it");
    // Whole-state iteration skips expired values.
    let other = "other".to_string();
    scope(b, &other).value(&handle).set(7).unwrap();
    h.clock.advance_ms(1);
    let mut seen = Vec::new();
    b.for_each_value(&handle, |k, v| seen.push((k.clone(), *v)))
        .unwrap();
    assert_eq!(
        seen,
        vec![(other.clone(), 7)],
        "for_each_value skips the expired value"
    );
    assert_eq!(
        b.signatures()
            .iter()
            .find(|s| s.name == "v")
            .map(|s| s.types.clone()),
        Some("ttl<u64>".to_string()),
        "a TTL'd state records ttl<V> as its type"
    );
}

pub fn ttl_refresh_on_read_keeps_read_state_alive(h: &Harness) {
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let config = ttl().update_type(TtlUpdateType::OnReadAndWrite);
    let states = TtlStates::declare(b, config);
    let key = "k".to_string();
    states.write(b, &key, 4);
    let alive = (
        Some(4),
        vec!["e4".to_string()],
        vec![("u4".to_string(), 4)],
        Some(4),
        Some(4.0),
    );
    for round in 0..5 {
        h.clock.advance_ms(TTL_MS as i64 - 1);
        assert_eq!(
            states.read(b, &key),
            alive,
            "round {round}: each read refreshed every state"
        );
    }
    h.clock.advance_ms(TTL_MS as i64);
    states.assert_gone(b, &key, "unread for a whole ttl");
    // A map entry read by `get` (and `contains`) is refreshed; others are not.
    let mut s = scope(b, &key);
    s.map(&states.map).put("a".into(), 1).unwrap();
    s.map(&states.map).put("b".into(), 2).unwrap();
    h.clock.advance_ms(60);
    assert_eq!(
        scope(b, &key)
            .map(&states.map)
            .get(&"a".to_string())
            .unwrap(),
        Some(&1)
    );
    h.clock.advance_ms(60);
    let mut s = scope(b, &key);
    assert!(s.map(&states.map).contains(&"a".to_string()).unwrap());
    assert!(
        !s.map(&states.map).contains(&"b".to_string()).unwrap(),
        "b was not read"
    );
}

pub fn ttl_expired_values_are_never_returned_by_any_state_kind(h: &Harness) {
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let states = TtlStates::declare(b, ttl());
    let keys = probe_keys();
    for (i, key) in keys.iter().enumerate() {
        states.write(b, key, i as u64 + 1);
    }
    h.clock.advance_ms(50);
    // A read in the middle does not refresh (OnCreateAndWrite).
    assert_eq!(states.read(b, &keys[0]).0, Some(1));
    h.clock.advance_ms(50);
    for key in &keys {
        states.assert_gone(b, key, "ttl after the writes");
        let mut s = scope(b, key);
        assert_eq!(
            s.map(&states.map).len().unwrap(),
            0,
            "map len counts no expired entry"
        );
        assert!(s.map(&states.map).is_empty().unwrap());
        assert_eq!(s.map(&states.map).get(&"u1".to_string()).unwrap(), None);
        assert_eq!(s.map(&states.map).remove(&"u1".to_string()).unwrap(), None);
    }
    // Adding to expired reducing/aggregating state starts afresh.
    let key = &keys[0];
    let mut s = scope(b, key);
    assert_eq!(
        s.reducing(&states.sum).add(10).unwrap().copied(),
        Some(10),
        "not 1 + 10"
    );
    assert_eq!(
        s.aggregating(&states.avg).add(3).unwrap(),
        3.0,
        "not the average of 1 and 3"
    );
    s.list(&states.list).add("new".into()).unwrap();
    assert_eq!(s.list(&states.list).get().unwrap(), ["new".to_string()]);
}

pub fn ttl_list_elements_and_map_entries_expire_one_by_one(h: &Harness) {
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let states = TtlStates::declare(b, ttl());
    let key = "k".to_string();
    let mut s = scope(b, &key);
    s.list(&states.list).add("a".into()).unwrap();
    s.map(&states.map).put("x".into(), 1).unwrap();
    h.clock.advance_ms(60);
    let mut s = scope(b, &key);
    s.list(&states.list).add("b".into()).unwrap();
    s.map(&states.map).put("y".into(), 2).unwrap();
    h.clock.advance_ms(40);
    let mut s = scope(b, &key);
    assert_eq!(
        s.list(&states.list).get().unwrap(),
        ["b".to_string()],
        "a expired, b did not"
    );
    assert_eq!(s.map(&states.map).len().unwrap(), 1);
    assert_eq!(s.map(&states.map).get(&"x".to_string()).unwrap(), None);
    assert_eq!(s.map(&states.map).get(&"y".to_string()).unwrap(), Some(&2));
    // `update` replaces the list with fresh elements.
    s.list(&states.list)
        .update(vec!["c".into(), "d".into()])
        .unwrap();
    h.clock.advance_ms(99);
    let mut s = scope(b, &key);
    assert_eq!(
        s.list(&states.list).get().unwrap(),
        ["c".to_string(), "d".to_string()]
    );
    h.clock.advance_ms(1);
    assert!(scope(b, &key).list(&states.list).get().unwrap().is_empty());
}

/// Entries of state `name` per key group of `sections`, summed.
fn entries_of(sections: &[(KeyGroup, Vec<u8>)], name: &str) -> u64 {
    sections
        .iter()
        .map(|(g, bytes)| {
            flowstate_state::snapshot::read_section(*g, bytes)
                .unwrap()
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.entries().unwrap())
                .sum::<u64>()
        })
        .sum()
}

pub fn ttl_full_snapshots_leave_expired_entries_out(h: &Harness) {
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let states = TtlStates::declare(b, ttl());
    let keys = probe_keys();
    let start = h.clock.now_ms();
    states.write(b, &keys[0], 1);
    states.write(b, &keys[1], 2);
    h.clock.advance_ms(60);
    states.write(b, &keys[2], 3);
    // keys[1] gets a second list element and map entry, written later.
    let mut s = scope(b, &keys[1]);
    s.list(&states.list).add("late".into()).unwrap();
    s.map(&states.map).put("late".into(), 9).unwrap();
    h.clock.advance_ms(40);
    let sections = sections_of(b, 1);
    for name in ["t-value", "t-sum", "t-avg"] {
        assert_eq!(
            entries_of(&sections, name),
            1,
            "{name}: only keys[2] is live"
        );
    }
    assert_eq!(
        entries_of(&sections, "t-list"),
        2,
        "keys[1] and keys[2] have live elements"
    );
    assert_eq!(entries_of(&sections, "t-map"), 2);
    // Turn the clock back to when everything was live: what the snapshot
    // left out does not come back, so it was not in the snapshot.
    h.clock.set_ms(start + 61);
    let mut restored = h.restored::<String>(all_groups(MAXP), MAXP, &sections);
    let r = restored.as_mut();
    let states = TtlStates::declare(r, ttl());
    assert_eq!(
        states.read(r, &keys[0]),
        (None, vec![], vec![], None, None),
        "keys[0] was left out"
    );
    assert_eq!(
        states.read(r, &keys[1]),
        (
            None,
            vec!["late".to_string()],
            vec![("late".to_string(), 9)],
            None,
            None
        ),
        "only the element and entry written late are in the snapshot"
    );
    assert_eq!(
        states.read(r, &keys[2]),
        (
            Some(3),
            vec!["e3".to_string()],
            vec![("u3".to_string(), 3)],
            Some(3),
            Some(3.0)
        )
    );
    // With snapshot cleanup off, expired entries are written (and stay hidden).
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let keep = TtlStates::declare(b, ttl().cleanup_in_snapshots(false));
    keep.write(b, &keys[0], 1);
    h.clock.advance_ms(TTL_MS as i64);
    let sections = sections_of(b, 2);
    assert_eq!(entries_of(&sections, "t-value"), 1, "no snapshot cleanup");
}

pub fn ttl_restored_state_never_shows_an_expired_value(h: &Harness) {
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let states = TtlStates::declare(b, ttl());
    let keys = probe_keys();
    for (i, key) in keys.iter().enumerate() {
        states.write(b, key, i as u64 + 1);
    }
    h.clock.advance_ms(10);
    let sections = sections_of(b, 1);
    // Restored (whole and split), every state is live until ttl after the
    // writes, and then gone: the timestamps came through the snapshot.
    let half = MAXP / 2;
    for range in [
        all_groups(MAXP),
        KeyGroupRange::new(0, half),
        KeyGroupRange::new(half, MAXP),
    ] {
        let mut restored = h.restored::<String>(range, MAXP, &sections);
        let r = restored.as_mut();
        let states = TtlStates::declare(r, ttl());
        let mine: Vec<&String> = keys
            .iter()
            .filter(|k| range.contains(key_group_of(*k, MAXP)))
            .collect();
        for key in &mine {
            assert!(
                states.read(r, key).0.is_some(),
                "{range}: live after restore"
            );
        }
    }
    // Declared before the restore, and after it.
    let mut early = h.backend::<String>(all_groups(MAXP), MAXP);
    let early_states = TtlStates::declare(early.as_mut(), ttl());
    restore_sections(early.as_mut(), &sections);
    let mut late = h.restored::<String>(all_groups(MAXP), MAXP, &sections);
    h.clock.advance_ms(89);
    assert_eq!(
        early_states.read(early.as_mut(), &keys[0]).0,
        Some(1),
        "still live at ttl - 1"
    );
    h.clock.advance_ms(1);
    for key in &keys {
        early_states.assert_gone(early.as_mut(), key, "restored, declared first");
    }
    let late_states = TtlStates::declare(late.as_mut(), ttl());
    for key in &keys {
        late_states.assert_gone(late.as_mut(), key, "restored, declared after");
    }
    // Restored after the values expired: nothing shows either.
    let mut expired = h.restored::<String>(all_groups(MAXP), MAXP, &sections);
    let states = TtlStates::declare(expired.as_mut(), ttl());
    for key in &keys {
        states.assert_gone(expired.as_mut(), key, "restored after expiry");
    }
}

pub fn ttl_snapshots_restore_across_backends(h: &Harness) {
    let heap = Harness::heap();
    heap.clock.set_ms(h.clock.now_ms());
    let keys = probe_keys();
    for (from, to) in [(h, &heap), (&heap, h)] {
        let mut backend = from.backend::<String>(all_groups(MAXP), MAXP);
        let states = TtlStates::declare(backend.as_mut(), ttl());
        for (i, key) in keys.iter().enumerate() {
            states.write(backend.as_mut(), key, i as u64 + 1);
        }
        let sections = sections_of(backend.as_mut(), 1);
        let mut restored = to.restored::<String>(all_groups(MAXP), MAXP, &sections);
        let r = TtlStates::declare(restored.as_mut(), ttl());
        for (i, key) in keys.iter().enumerate() {
            let n = i as u64 + 1;
            assert_eq!(
                r.read(restored.as_mut(), key),
                (
                    Some(n),
                    vec![format!("e{n}")],
                    vec![(format!("u{n}"), n)],
                    Some(n),
                    Some(n as f64)
                ),
                "{} -> {}",
                from.kind(),
                to.kind()
            );
        }
        // Both clocks move together.
        h.clock.advance_ms(TTL_MS as i64);
        heap.clock.advance_ms(TTL_MS as i64);
        for key in &keys {
            r.assert_gone(
                restored.as_mut(),
                key,
                "expired after the cross-backend restore",
            );
        }
    }
}

/// Keys with an entry in any key group, over every state.
fn stored_keys(backend: &mut dyn KeyedStateBackend<String>) -> usize {
    backend
        .key_group_range()
        .iter()
        .map(|g| backend.key_count(g).unwrap())
        .sum()
}

pub fn ttl_incremental_cleanup_removes_expired_entries(h: &Harness) {
    let mut backend = h.backend::<String>(all_groups(MAXP), MAXP);
    let b = backend.as_mut();
    let config = ttl().cleanup_in_snapshots(false).cleanup_incrementally(3);
    let states = TtlStates::declare(b, config);
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        states.write(b, key, i as u64);
    }
    // Partly expired lists are trimmed, not dropped.
    h.clock.advance_ms(50);
    let mut s = scope(b, &keys[0]);
    s.list(&states.list).add("young".into()).unwrap();
    s.map(&states.map).put("young".into(), 1).unwrap();
    assert_eq!(stored_keys(b), 5 * 40, "nothing expired yet");
    h.clock.advance_ms(50);
    // Reads of one key drive the cleanup of every state's other keys.
    let probe = "probe".to_string();
    for _ in 0..200 {
        let mut s = scope(b, &probe);
        s.value(&states.value).get().unwrap();
        s.list(&states.list).get().unwrap();
        s.map(&states.map).len().unwrap();
        s.reducing(&states.sum).get().unwrap();
        s.aggregating(&states.avg).get().unwrap();
    }
    assert_eq!(
        stored_keys(b),
        2,
        "only keys[0]'s young list element and map entry are left"
    );
    let (_, list, map, _, _) = states.read(b, &keys[0]);
    assert_eq!(list, ["young".to_string()]);
    assert_eq!(map, [("young".to_string(), 1)]);
    // Nothing is left to snapshot but those (snapshot cleanup is off here).
    let sections = sections_of(b, 1);
    assert_eq!(entries_of(&sections, "t-value"), 0);
    assert_eq!(entries_of(&sections, "t-list"), 1);
    assert_eq!(entries_of(&sections, "t-map"), 1);
}

pub fn ttl_added_or_removed_on_restore_is_refused(h: &Harness) {
    let key = "k".to_string();
    let mut plain = h.backend::<String>(all_groups(MAXP), MAXP);
    let p = plain.as_mut();
    let handle = p
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    scope(p, &key).value(&handle).set(1).unwrap();
    let plain_sections = sections_of(p, 1);
    let mut with = h.backend::<String>(all_groups(MAXP), MAXP);
    let w = with.as_mut();
    let handle = w
        .value_state(&ValueStateDescriptor::<u64>::new("v").with_ttl(ttl()))
        .unwrap();
    scope(w, &key).value(&handle).set(1).unwrap();
    let ttl_sections = sections_of(w, 1);
    // In one backend, the same name with and without TTL are two declarations.
    assert_incompatible(w.value_state(&ValueStateDescriptor::<u64>::new("v")), "v");

    let mut r = h.restored::<String>(all_groups(MAXP), MAXP, &plain_sections);
    match r.value_state(&ValueStateDescriptor::<u64>::new("v").with_ttl(ttl())) {
        Err(StateError::TtlMismatch {
            state,
            recorded_ttl,
            requested_ttl,
            ..
        }) => {
            assert_eq!(state, "v");
            assert_eq!((recorded_ttl, requested_ttl), ("without TTL", "with TTL"));
        }
        other => panic!(
            "expected TtlMismatch adding TTL, got {:?}",
            other.map(|_| ())
        ),
    }
    let mut r = h.restored::<String>(all_groups(MAXP), MAXP, &ttl_sections);
    match r.value_state(&ValueStateDescriptor::<u64>::new("v")) {
        Err(StateError::TtlMismatch {
            state,
            recorded_ttl,
            requested_ttl,
            ..
        }) => {
            assert_eq!(state, "v");
            assert_eq!((recorded_ttl, requested_ttl), ("with TTL", "without TTL"));
        }
        other => panic!(
            "expected TtlMismatch removing TTL, got {:?}",
            other.map(|_| ())
        ),
    }
    // The refused declaration kept the state: declared as it was, it reads.
    let handle = r
        .value_state(&ValueStateDescriptor::<u64>::new("v").with_ttl(ttl()))
        .unwrap();
    assert_eq!(
        scope(r.as_mut(), &key).value(&handle).get().unwrap(),
        Some(&1)
    );
}
