//! State time-to-live: a declaration's [`StateTtlConfig`], the stored form of a
//! TTL'd value ([`TtlValue`]) and the tables that apply TTL on top of any
//! backend's tables.
//!
//! Owns: when a value has expired (processing time, read from the backend's
//! [`crate::Clock`]), refreshing its timestamp on writes (and reads), hiding
//! expired values, and the incremental cleanup step. Must not touch: event time,
//! threads, storage (a backend's tables store `TtlValue<V>` like any value).
//!
//! A TTL'd state stores, for every value (every list element, every map entry),
//! the processing time of its last refresh: `TtlValue { last_access_ms, value }`,
//! encoded `i64 LE ++ enc(V)` with the declared type name `ttl<V>` (see
//! docs/savepoint-format.md, section 5.5). A value has expired when
//! `last_access_ms + ttl_ms <= now`. Expired values are never returned; they
//! are removed by writes, by the incremental cleanup (if configured), and left
//! out of every canonical snapshot (if snapshot cleanup is on, the default).

use std::cell::RefCell;
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::error::StateError;
use crate::heap::GroupMap;
use crate::snapshot::TableSnapshot;
use crate::state_type::StateType;
use crate::table::{KeyedTable, ListTable, MapTable, ValueTable};
use crate::{KeyGroup, StateKey, StateValue};

/// When a value's timestamp is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlUpdateType {
    /// On creation and on every write (the default).
    #[default]
    OnCreateAndWrite,
    /// Also on every read: a value read within its TTL lives another TTL. A read
    /// then writes (the timestamp), so reads cost what writes cost.
    OnReadAndWrite,
}

/// Whether an expired value that is still stored may be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlStateVisibility {
    /// Never (the only choice): an expired value reads as absent.
    #[default]
    NeverReturnExpired,
}

/// How expired entries leave storage (they are never *returned* in any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlCleanup {
    /// Leave expired entries out of canonical snapshots (full checkpoints and
    /// savepoints) and out of a heap restore. Default: on.
    pub in_snapshots: bool,
    /// On every access of the state, check this many further entries of the
    /// state (a cursor going round the instance's key groups) and remove the
    /// expired ones. Default: off (`None`).
    pub incremental: Option<usize>,
}

impl Default for TtlCleanup {
    fn default() -> Self {
        Self {
            in_snapshots: true,
            incremental: None,
        }
    }
}

/// The time-to-live of a state, given to a descriptor with `with_ttl`.
///
/// ```
/// use std::time::Duration;
/// use flowstate_state::{StateTtlConfig, TtlUpdateType, ValueStateDescriptor};
/// let ttl = StateTtlConfig::new(Duration::from_secs(3600))
///     .update_type(TtlUpdateType::OnReadAndWrite)
///     .cleanup_incrementally(10);
/// let sessions = ValueStateDescriptor::<u64>::new("sessions").with_ttl(ttl);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtlConfig {
    ttl_ms: i64,
    pub update_type: TtlUpdateType,
    pub visibility: TtlStateVisibility,
    pub cleanup: TtlCleanup,
}

impl StateTtlConfig {
    /// A TTL of `ttl` (whole milliseconds, at least 1), refreshed on create and
    /// write, cleaned up in snapshots.
    pub fn new(ttl: Duration) -> Self {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        Self {
            ttl_ms,
            update_type: TtlUpdateType::default(),
            visibility: TtlStateVisibility::default(),
            cleanup: TtlCleanup::default(),
        }
    }

    /// The TTL in milliseconds (at least 1).
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    pub fn update_type(mut self, update_type: TtlUpdateType) -> Self {
        self.update_type = update_type;
        self
    }

    pub fn visibility(mut self, visibility: TtlStateVisibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// Whether canonical snapshots leave expired entries out (default true).
    pub fn cleanup_in_snapshots(mut self, on: bool) -> Self {
        self.cleanup.in_snapshots = on;
        self
    }

    /// Checks `entries` further entries per access of the state and removes
    /// the expired ones (`0` turns it off).
    pub fn cleanup_incrementally(mut self, entries: usize) -> Self {
        self.cleanup.incremental = (entries > 0).then_some(entries);
        self
    }
}

/// The moment expiry is judged at: an entry refreshed at `t` has expired if
/// `t + ttl_ms <= now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub now_ms: i64,
    pub ttl_ms: i64,
}

impl Expiry {
    #[inline]
    pub fn expired(&self, last_access_ms: i64) -> bool {
        last_access_ms.saturating_add(self.ttl_ms) <= self.now_ms
    }

    /// Whether stored bytes that start with a TTL timestamp (`i64 LE`) have
    /// expired; bytes too short to hold one are an error.
    pub fn expired_bytes(&self, state: &str, bytes: &[u8]) -> Result<bool, StateError> {
        match bytes.first_chunk::<8>() {
            Some(ts) => Ok(self.expired(i64::from_le_bytes(*ts))),
            None => Err(StateError::Codec {
                state: state.to_owned(),
                action: "decode",
                reason: "a TTL'd value shorter than its timestamp".to_owned(),
            }),
        }
    }
}

/// A value of a TTL'd state as stored: the processing time (ms since the
/// epoch) of its last refresh, then the value. Encodes as `i64 LE ++ enc(V)`;
/// its declared name is `ttl<V>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TtlValue<V> {
    pub last_access_ms: i64,
    pub value: V,
}

impl<V: StateType> StateType for TtlValue<V> {
    fn write_type_name(out: &mut String) {
        out.push_str("ttl<");
        V::write_type_name(out);
        out.push('>');
    }
}

/// Whether a declared type name holds a TTL'd value (`ttl<...>`) anywhere.
pub fn is_ttl_type_name(types: &str) -> bool {
    types.starts_with("ttl<") || types.contains(",ttl<") || types.contains("<ttl<")
}

/// What snapshot or cleanup does with one stored `S` of a TTL'd state.
pub enum Pruned<S> {
    /// Nothing has expired.
    Keep,
    /// Everything has expired: remove it.
    Drop,
    /// Some elements/entries have expired: store this instead.
    Replace(S),
}

/// The stored forms of TTL'd state (`TtlValue<V>` for value-like states, a
/// list of them, a map of them) and how expiry prunes each.
pub trait TtlPrune: Sized {
    fn prune(&self, expiry: Expiry) -> Pruned<Self>;
}

impl<V: Clone> TtlPrune for TtlValue<V> {
    #[inline]
    fn prune(&self, expiry: Expiry) -> Pruned<Self> {
        if expiry.expired(self.last_access_ms) {
            Pruned::Drop
        } else {
            Pruned::Keep
        }
    }
}

impl<V: Clone> TtlPrune for Vec<TtlValue<V>> {
    fn prune(&self, expiry: Expiry) -> Pruned<Self> {
        let live = self
            .iter()
            .filter(|t| !expiry.expired(t.last_access_ms))
            .count();
        if live == self.len() {
            Pruned::Keep
        } else if live == 0 {
            Pruned::Drop
        } else {
            Pruned::Replace(
                self.iter()
                    .filter(|t| !expiry.expired(t.last_access_ms))
                    .cloned()
                    .collect(),
            )
        }
    }
}

impl<UK: Clone + Hash + Eq, UV: Clone> TtlPrune for GroupMap<UK, TtlValue<UV>> {
    fn prune(&self, expiry: Expiry) -> Pruned<Self> {
        let live = self
            .values()
            .filter(|t| !expiry.expired(t.last_access_ms))
            .count();
        if live == self.len() {
            Pruned::Keep
        } else if live == 0 {
            Pruned::Drop
        } else {
            Pruned::Replace(
                self.iter()
                    .filter(|(_, t)| !expiry.expired(t.last_access_ms))
                    .map(|(k, t)| (k.clone(), t.clone()))
                    .collect(),
            )
        }
    }
}

/// A declared state's TTL with the clock it is judged by.
#[derive(Debug, Clone)]
pub struct TtlSettings {
    pub config: StateTtlConfig,
    pub clock: SharedClock,
}

impl TtlSettings {
    #[inline]
    pub fn expiry(&self) -> Expiry {
        Expiry {
            now_ms: self.clock.now_ms(),
            ttl_ms: self.config.ttl_ms,
        }
    }

    fn refresh_on_read(&self) -> bool {
        self.config.update_type == TtlUpdateType::OnReadAndWrite
    }
}

/// Runs the incremental cleanup step (if configured) and returns the expiry of
/// this access.
fn access<K>(
    settings: &TtlSettings,
    table: &mut (impl KeyedTable<K> + ?Sized),
) -> Result<Expiry, StateError> {
    let expiry = settings.expiry();
    if let Some(budget) = settings.config.cleanup.incremental {
        table.ttl_cleanup_step(budget, expiry)?;
    }
    Ok(expiry)
}

fn wrap<V>(now_ms: i64, value: V) -> TtlValue<V> {
    TtlValue {
        last_access_ms: now_ms,
        value,
    }
}

macro_rules! keyed_table_delegate {
    () => {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn key_count(&self, key_group: KeyGroup) -> Result<usize, StateError> {
            self.inner.key_count(key_group)
        }
        fn clear(&mut self) -> Result<(), StateError> {
            self.inner.clear()
        }
        fn snapshot(&mut self) -> Result<Box<dyn TableSnapshot>, StateError> {
            self.inner.snapshot()
        }
        fn restore_key_group(
            &mut self,
            key_group: KeyGroup,
            payload: &[u8],
        ) -> Result<(), StateError> {
            self.inner.restore_key_group(key_group, payload)
        }
        fn snapshot_ttl_ms(&self) -> Option<i64> {
            self.settings
                .config
                .cleanup
                .in_snapshots
                .then_some(self.settings.config.ttl_ms)
        }
        fn ttl_cleanup_step(&mut self, budget: usize, expiry: Expiry) -> Result<(), StateError> {
            self.inner.ttl_cleanup_step(budget, expiry)
        }
        fn prefetch(&mut self, keys: &[(KeyGroup, K)]) {
            self.inner.prefetch(keys)
        }
    };
}

/// A value (reducing, aggregating) state with TTL over a table of `TtlValue<V>`.
pub struct TtlValueTable<K, V> {
    inner: Box<dyn ValueTable<K, TtlValue<V>>>,
    settings: TtlSettings,
}

impl<K, V> TtlValueTable<K, V> {
    pub fn new(inner: Box<dyn ValueTable<K, TtlValue<V>>>, settings: TtlSettings) -> Self {
        Self { inner, settings }
    }
}

impl<K: StateKey, V: StateValue> KeyedTable<K> for TtlValueTable<K, V> {
    keyed_table_delegate!();
}

impl<K: StateKey, V: StateValue> ValueTable<K, V> for TtlValueTable<K, V> {
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<&V>, StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        if self.settings.refresh_on_read() {
            let now = expiry.now_ms;
            let value = self.inner.update(key_group, key, &mut |old| {
                old.filter(|t| !expiry.expired(t.last_access_ms))
                    .map(|t| wrap(now, t.value))
            })?;
            return Ok(value.map(|t| &t.value));
        }
        Ok(self
            .inner
            .get(key_group, key)?
            .filter(|t| !expiry.expired(t.last_access_ms))
            .map(|t| &t.value))
    }

    fn put(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        self.inner.put(key_group, key, wrap(expiry.now_ms, value))
    }

    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<Option<V>, StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        Ok(self
            .inner
            .remove(key_group, key)?
            .filter(|t| !expiry.expired(t.last_access_ms))
            .map(|t| t.value))
    }

    fn update(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(Option<V>) -> Option<V>,
    ) -> Result<Option<&V>, StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        let now = expiry.now_ms;
        let value = self.inner.update(key_group, key, &mut |old| {
            let old = old
                .filter(|t| !expiry.expired(t.last_access_ms))
                .map(|t| t.value);
            f(old).map(|v| wrap(now, v))
        })?;
        Ok(value.map(|t| &t.value))
    }

    fn modify(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        init: &mut dyn FnMut() -> V,
        f: &mut dyn FnMut(&mut V),
    ) -> Result<(), StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        let now = expiry.now_ms;
        // Called at most once in all: by the table for a new value, or here for
        // an expired one.
        let init = RefCell::new(init);
        self.inner.modify(
            key_group,
            key,
            &mut || wrap(now, (init.borrow_mut())()),
            &mut |t| {
                if expiry.expired(t.last_access_ms) {
                    t.value = (init.borrow_mut())();
                }
                f(&mut t.value);
                t.last_access_ms = now;
            },
        )
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) -> Result<(), StateError> {
        let expiry = self.settings.expiry();
        self.inner.for_each(&mut |k, t| {
            if !expiry.expired(t.last_access_ms) {
                f(k, &t.value);
            }
        })
    }
}

/// A list state with TTL per element over a list table of `TtlValue<V>`.
pub struct TtlListTable<K, V> {
    inner: Box<dyn ListTable<K, TtlValue<V>>>,
    settings: TtlSettings,
    current: Vec<V>,
}

impl<K, V> TtlListTable<K, V> {
    pub fn new(inner: Box<dyn ListTable<K, TtlValue<V>>>, settings: TtlSettings) -> Self {
        Self {
            inner,
            settings,
            current: Vec::new(),
        }
    }
}

impl<K: StateKey, V: StateValue> KeyedTable<K> for TtlListTable<K, V> {
    keyed_table_delegate!();
}

impl<K: StateKey, V: StateValue> ListTable<K, V> for TtlListTable<K, V> {
    fn get(&mut self, key_group: KeyGroup, key: &K) -> Result<&[V], StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        self.current.clear();
        let mut expired = 0usize;
        for t in self.inner.get(key_group, key)? {
            if expiry.expired(t.last_access_ms) {
                expired += 1;
            } else {
                self.current.push(t.value.clone());
            }
        }
        if self.settings.refresh_on_read() && (expired > 0 || !self.current.is_empty()) {
            // Refreshes every live element; drops the expired ones.
            let now = expiry.now_ms;
            let refreshed = self.current.iter().map(|v| wrap(now, v.clone())).collect();
            self.inner.replace(key_group, key, refreshed)?;
        }
        Ok(&self.current)
    }

    fn add(&mut self, key_group: KeyGroup, key: &K, value: V) -> Result<(), StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        self.inner.add(key_group, key, wrap(expiry.now_ms, value))
    }

    fn replace(&mut self, key_group: KeyGroup, key: &K, values: Vec<V>) -> Result<(), StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        let now = expiry.now_ms;
        self.inner.replace(
            key_group,
            key,
            values.into_iter().map(|v| wrap(now, v)).collect(),
        )
    }

    fn remove(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError> {
        access(&self.settings, &mut *self.inner)?;
        self.inner.remove(key_group, key)
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &[V])) -> Result<(), StateError> {
        let expiry = self.settings.expiry();
        let mut live = Vec::new();
        self.inner.for_each(&mut |k, list| {
            live.clear();
            live.extend(
                list.iter()
                    .filter(|t| !expiry.expired(t.last_access_ms))
                    .map(|t| t.value.clone()),
            );
            if !live.is_empty() {
                f(k, &live);
            }
        })
    }
}

/// A map state with TTL per entry over a map table of `TtlValue<UV>`.
pub struct TtlMapTable<K, UK, UV> {
    inner: Box<dyn MapTable<K, UK, TtlValue<UV>>>,
    settings: TtlSettings,
    current: Option<UV>,
    _key: PhantomData<fn(UK)>,
}

impl<K, UK, UV> TtlMapTable<K, UK, UV> {
    pub fn new(inner: Box<dyn MapTable<K, UK, TtlValue<UV>>>, settings: TtlSettings) -> Self {
        Self {
            inner,
            settings,
            current: None,
            _key: PhantomData,
        }
    }
}

impl<K: StateKey, UK: StateKey, UV: StateValue> KeyedTable<K> for TtlMapTable<K, UK, UV> {
    keyed_table_delegate!();
}

impl<K: StateKey, UK: StateKey, UV: StateValue> MapTable<K, UK, UV> for TtlMapTable<K, UK, UV> {
    fn get(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<&UV>, StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        if self.settings.refresh_on_read() {
            let live = self
                .inner
                .get(key_group, key, user_key)?
                .filter(|t| !expiry.expired(t.last_access_ms))
                .map(|t| t.value.clone());
            self.current = match live {
                Some(value) => {
                    let refreshed = wrap(expiry.now_ms, value.clone());
                    self.inner
                        .put(key_group, key, user_key.clone(), refreshed)?;
                    Some(value)
                }
                None => None,
            };
            return Ok(self.current.as_ref());
        }
        Ok(self
            .inner
            .get(key_group, key, user_key)?
            .filter(|t| !expiry.expired(t.last_access_ms))
            .map(|t| &t.value))
    }

    fn put(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: UK,
        value: UV,
    ) -> Result<(), StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        self.inner
            .put(key_group, key, user_key, wrap(expiry.now_ms, value))
    }

    fn remove(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<UV>, StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        Ok(self
            .inner
            .remove(key_group, key, user_key)?
            .filter(|t| !expiry.expired(t.last_access_ms))
            .map(|t| t.value))
    }

    fn len(&mut self, key_group: KeyGroup, key: &K) -> Result<usize, StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        let mut count = 0;
        self.inner.for_each_entry(key_group, key, &mut |_, t| {
            if !expiry.expired(t.last_access_ms) {
                count += 1;
            }
        })?;
        Ok(count)
    }

    fn for_each_entry(
        &mut self,
        key_group: KeyGroup,
        key: &K,
        f: &mut dyn FnMut(&UK, &UV),
    ) -> Result<(), StateError> {
        let expiry = access(&self.settings, &mut *self.inner)?;
        if !self.settings.refresh_on_read() {
            return self.inner.for_each_entry(key_group, key, &mut |uk, t| {
                if !expiry.expired(t.last_access_ms) {
                    f(uk, &t.value);
                }
            });
        }
        // Refresh on read: every live entry read is written back refreshed.
        let mut live = Vec::new();
        self.inner.for_each_entry(key_group, key, &mut |uk, t| {
            if !expiry.expired(t.last_access_ms) {
                live.push((uk.clone(), t.value.clone()));
            }
        })?;
        for (uk, uv) in live {
            f(&uk, &uv);
            self.inner
                .put(key_group, key, uk, wrap(expiry.now_ms, uv))?;
        }
        Ok(())
    }

    fn remove_all(&mut self, key_group: KeyGroup, key: &K) -> Result<(), StateError> {
        access(&self.settings, &mut *self.inner)?;
        self.inner.remove_all(key_group, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_type_name;

    #[test]
    fn a_ttl_value_is_its_timestamp_then_the_value() {
        let bytes = crate::codec::encode_to_vec(&TtlValue {
            last_access_ms: 0x0102_0304_0506_0708,
            value: 17u32,
        })
        .unwrap();
        assert_eq!(
            bytes,
            [8, 7, 6, 5, 4, 3, 2, 1, 17, 0, 0, 0],
            "i64 LE timestamp, then enc(V)"
        );
        assert_eq!(state_type_name::<TtlValue<u32>>(), "ttl<u32>");
        assert_eq!(
            state_type_name::<(String, TtlValue<u64>)>(),
            "tuple<string,ttl<u64>>"
        );
        assert!(is_ttl_type_name("ttl<u32>"));
        assert!(is_ttl_type_name("tuple<string,ttl<u64>>"));
        assert!(is_ttl_type_name("tuple<u32,ttl<tuple<u64,u64>>,f64>"));
        assert!(!is_ttl_type_name("tuple<u32,my.ttl,f64>"));
        assert!(!is_ttl_type_name("list<u64>"));
    }

    #[test]
    fn expiry_is_at_last_access_plus_ttl() {
        let at = |now_ms| Expiry { now_ms, ttl_ms: 10 };
        assert!(!at(109).expired(100));
        assert!(at(110).expired(100));
        assert!(!at(i64::MAX - 1).expired(i64::MAX - 5), "no overflow");
        let config = StateTtlConfig::new(Duration::from_micros(10));
        assert_eq!(config.ttl_ms(), 1, "at least one millisecond");
    }
}
