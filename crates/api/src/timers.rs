//! Timers of keyed functions, and the context they and records are processed in.
//!
//! A timer is keyed state: each key's pending timers are an ordinary value
//! state per time domain (`_timers/event`, `_timers/processing`, a sorted
//! `Vec<i64>` of times), declared on first registration or, after a restore,
//! when the operator opens. Checkpoints, savepoints, rescaling (by key group)
//! and switching backends therefore carry timers with no machinery of their
//! own. Beside the state, an operator keeps an in-memory index of every
//! pending timer grouped by time ([`TimerIndex`]), rebuilt from the state
//! when it opens; the index decides what fires, the state is what survives.
//! One time's keys fire in (key group, encoded key) order, sorted when they
//! fire.
//!
//! Owns: [`TimeDomain`], [`KeyedContext`] and the operator-side timer
//! bookkeeping. Must not touch: how state is stored, or when the runtime
//! delivers watermarks.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use flowstate_runtime::{SideOutputs, UserError};
use flowstate_state::codec::encode_into;
use flowstate_state::{
    KeyGroup, KeyScope, KeyedStateBackend, SharedClock, StateKey, ValueStateDescriptor,
    ValueStateHandle, key_group_of,
};

use crate::keyed::FnResult;
use crate::side_output::OutputTag;

/// The reserved state holding each key's pending event-time timers.
pub const EVENT_TIMERS_STATE: &str = "_timers/event";
/// The reserved state holding each key's pending processing-time timers.
pub const PROCESSING_TIMERS_STATE: &str = "_timers/processing";

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timer's time.
    EventTime,
    /// Fires when the job's clock ([`flowstate_state::Clock`]) reaches it.
    ProcessingTime,
}

/// The keys with a timer at one time.
type TimeKeys<K> = Vec<(KeyGroup, K)>;

/// Every pending timer of one domain, grouped by time: a time's keys in a
/// `Vec`, in no particular order until they fire, then sorted by (key group,
/// encoded key) — the order of a key's bytes in a store, whatever the
/// backend. Registering costs a lookup of the time (few distinct times are
/// pending: windows of many keys end together) and a push, with no
/// allocation per timer; deleting scans the time's keys. A (time, key) is in
/// the index at most once: the key's timer state deduplicates.
pub(crate) struct TimerIndex<K> {
    by_time: BTreeMap<i64, TimeKeys<K>>,
    len: usize,
}

impl<K: StateKey> TimerIndex<K> {
    fn new() -> Self {
        Self {
            by_time: BTreeMap::new(),
            len: 0,
        }
    }

    /// Adds a timer the key's state did not hold yet.
    fn insert(&mut self, time: i64, key_group: KeyGroup, key: K) {
        self.by_time.entry(time).or_default().push((key_group, key));
        self.len += 1;
    }

    /// Removes the timer (time, key), if indexed.
    fn remove(&mut self, time: i64, key_group: KeyGroup, key: &K) {
        let Some(keys) = self.by_time.get_mut(&time) else {
            return;
        };
        if let Some(at) = keys
            .iter()
            .position(|(group, k)| *group == key_group && k == key)
        {
            keys.swap_remove(at);
            self.len -= 1;
            if keys.is_empty() {
                self.by_time.remove(&time);
            }
        }
    }

    fn first_time(&self) -> Option<i64> {
        self.by_time.first_key_value().map(|(time, _)| *time)
    }

    /// Takes the earliest time's keys if it is at or before `limit`, in
    /// firing order.
    fn take_due(&mut self, limit: i64) -> Result<Option<(i64, TimeKeys<K>)>, UserError> {
        match self.by_time.first_key_value() {
            Some((time, _)) if *time <= limit => {}
            _ => return Ok(None),
        }
        let Some((time, mut keys)) = self.by_time.pop_first() else {
            return Ok(None);
        };
        self.len -= keys.len();
        sort_for_firing(&mut keys)?;
        Ok(Some((time, keys)))
    }

    /// Puts back keys of `time` taken but not fired.
    fn put_back(&mut self, time: i64, keys: impl Iterator<Item = (KeyGroup, K)>) {
        let bucket = self.by_time.entry(time).or_default();
        let before = bucket.len();
        bucket.extend(keys);
        self.len += bucket.len() - before;
        if bucket.is_empty() {
            self.by_time.remove(&time);
        }
    }
}

/// Sorts one time's keys by (key group, encoded key), encoding them once
/// into one buffer.
fn sort_for_firing<K: StateKey>(keys: &mut Vec<(KeyGroup, K)>) -> FnResult {
    if keys.len() < 2 {
        return Ok(());
    }
    let mut bytes = Vec::new();
    let mut order = Vec::with_capacity(keys.len());
    for (key_group, key) in keys.drain(..) {
        let start = bytes.len();
        encode_into(&key, &mut bytes)?;
        order.push((key_group, start, bytes.len(), key));
    }
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| bytes[a.1..a.2].cmp(&bytes[b.1..b.2]))
    });
    keys.extend(
        order
            .into_iter()
            .map(|(key_group, _, _, key)| (key_group, key)),
    );
    Ok(())
}

struct DomainTimers<K> {
    state: &'static str,
    handle: Option<ValueStateHandle<Vec<i64>>>,
    index: TimerIndex<K>,
}

impl<K: StateKey> DomainTimers<K> {
    fn new(state: &'static str) -> Self {
        Self {
            state,
            handle: None,
            index: TimerIndex::new(),
        }
    }
}

/// One operator instance's timers: the handles of the timer states, the
/// in-memory index and the current times.
pub(crate) struct Timers<K> {
    event: DomainTimers<K>,
    processing: DomainTimers<K>,
    watermark: i64,
    clock: SharedClock,
    max_parallelism: u32,
}

impl<K: StateKey> Timers<K> {
    pub(crate) fn new(clock: SharedClock, max_parallelism: u32) -> Self {
        Self {
            event: DomainTimers::new(EVENT_TIMERS_STATE),
            processing: DomainTimers::new(PROCESSING_TIMERS_STATE),
            watermark: i64::MIN,
            clock,
            max_parallelism,
        }
    }

    fn domain(&mut self, domain: TimeDomain) -> &mut DomainTimers<K> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Declares the timer states a restored snapshot holds and indexes their
    /// timers (called when the operator opens, after the backend restored).
    pub(crate) fn open(&mut self, backend: &mut dyn KeyedStateBackend<K>) -> FnResult {
        let unclaimed = backend.unclaimed_restored_states();
        let declared = backend.signatures();
        let max_parallelism = self.max_parallelism;
        for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            let timers = self.domain(domain);
            let present = unclaimed.iter().any(|name| name == timers.state)
                || declared.iter().any(|s| s.name == timers.state);
            if !present {
                continue;
            }
            let handle =
                backend.value_state(&ValueStateDescriptor::<Vec<i64>>::new(timers.state))?;
            let mut pending: Vec<(i64, K)> = Vec::new();
            backend.for_each_value(&handle, |key, times| {
                pending.extend(times.iter().map(|&time| (time, key.clone())));
            })?;
            for (time, key) in pending {
                let key_group = key_group_of(&key, max_parallelism);
                timers.index.insert(time, key_group, key);
            }
            timers.handle = Some(handle);
        }
        Ok(())
    }

    /// The event time reached so far (`i64::MIN` before the first watermark).
    pub(crate) fn watermark(&self) -> i64 {
        self.watermark
    }

    pub(crate) fn advance_watermark(&mut self, watermark: i64) {
        self.watermark = self.watermark.max(watermark);
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The earliest pending timer of `domain`.
    pub(crate) fn next_time(&self, domain: TimeDomain) -> Option<i64> {
        let timers = match domain {
            TimeDomain::EventTime => &self.event,
            TimeDomain::ProcessingTime => &self.processing,
        };
        timers.index.first_time()
    }

    /// Pending timers of `domain` (all keys).
    #[cfg(test)]
    pub(crate) fn pending(&self, domain: TimeDomain) -> usize {
        match domain {
            TimeDomain::EventTime => self.event.index.len,
            TimeDomain::ProcessingTime => self.processing.index.len,
        }
    }
}

/// Fires every timer of `domain` at or before `limit`, in time order then key
/// order; a timer registered meanwhile at or before `limit` fires in the same
/// pass. `on_timer` gets the time and the context of the timer's key.
pub(crate) fn fire_timers<K: StateKey>(
    timers: &mut Timers<K>,
    backend: &mut dyn KeyedStateBackend<K>,
    side: &mut SideOutputs,
    domain: TimeDomain,
    limit: i64,
    mut on_timer: impl FnMut(i64, &mut KeyedContext<'_, K>) -> FnResult,
) -> FnResult {
    while let Some((time, keys)) = timers.domain(domain).index.take_due(limit)? {
        let mut keys = keys.into_iter();
        while let Some((key_group, key)) = keys.next() {
            let mut ctx = KeyedContext {
                scope: KeyScope::new(&mut *backend, &key, key_group),
                timers: &mut *timers,
                side: &mut *side,
            };
            ctx.remove_from_state(domain, time)?;
            on_timer(time, &mut ctx)?;
            // A timer registered meanwhile for an earlier time fires first.
            let index = &mut timers.domain(domain).index;
            if index.first_time().is_some_and(|first| first < time) {
                index.put_back(time, keys.by_ref());
                break;
            }
        }
    }
    Ok(())
}

/// The current key's state and timers, passed to keyed functions, and the
/// operator's side outputs ([`KeyedContext::output`]).
///
/// Derefs to [`KeyScope`]: `ctx.value(&handle)` and the other state accessors
/// reach the current key's state.
pub struct KeyedContext<'a, K: StateKey> {
    scope: KeyScope<'a, K>,
    timers: &'a mut Timers<K>,
    side: &'a mut SideOutputs,
}

impl<'a, K: StateKey> Deref for KeyedContext<'a, K> {
    type Target = KeyScope<'a, K>;
    fn deref(&self) -> &Self::Target {
        &self.scope
    }
}

impl<K: StateKey> DerefMut for KeyedContext<'_, K> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.scope
    }
}

impl<'a, K: StateKey> KeyedContext<'a, K> {
    pub(crate) fn new(
        scope: KeyScope<'a, K>,
        timers: &'a mut Timers<K>,
        side: &'a mut SideOutputs,
    ) -> Self {
        Self {
            scope,
            timers,
            side,
        }
    }

    /// Emits `value` to the side output `tag` (read as a stream with
    /// `stream.side_output(&tag)`), after the main output of the same
    /// batch. Dropped if nothing consumes that side output. (A keyed
    /// co-process function's side outputs are not supported yet: there
    /// every record is dropped.)
    #[inline]
    pub fn output<T: Send + 'static>(&mut self, tag: &OutputTag<T>, value: T) -> FnResult {
        self.side.emit(tag.name(), value)
    }

    /// Calls `on_timer(timestamp, EventTime, ..)` for the current key once the
    /// watermark reaches `timestamp`. Registering a (key, time) twice keeps
    /// one timer.
    pub fn register_event_time_timer(&mut self, timestamp: i64) -> FnResult {
        self.register(TimeDomain::EventTime, timestamp)
    }

    /// Removes the current key's event-time timer at `timestamp`, if any.
    pub fn delete_event_time_timer(&mut self, timestamp: i64) -> FnResult {
        self.delete(TimeDomain::EventTime, timestamp)
    }

    /// Calls `on_timer(timestamp, ProcessingTime, ..)` for the current key
    /// once the job's clock reaches `timestamp` (checked on every batch and
    /// watermark, and whenever the task has no input: the idle hook).
    pub fn register_processing_time_timer(&mut self, timestamp: i64) -> FnResult {
        self.register(TimeDomain::ProcessingTime, timestamp)
    }

    /// Removes the current key's processing-time timer at `timestamp`, if any.
    pub fn delete_processing_time_timer(&mut self, timestamp: i64) -> FnResult {
        self.delete(TimeDomain::ProcessingTime, timestamp)
    }

    /// The operator's watermark (`i64::MIN` before the first one, `i64::MAX`
    /// at the end of a bounded input).
    pub fn current_watermark(&self) -> i64 {
        self.timers.watermark()
    }

    /// The job's clock, in milliseconds since the Unix epoch.
    pub fn current_processing_time(&self) -> i64 {
        self.timers.now()
    }

    fn handle(&mut self, domain: TimeDomain) -> Result<ValueStateHandle<Vec<i64>>, UserError> {
        let timers = self.timers.domain(domain);
        if let Some(handle) = &timers.handle {
            return Ok(handle.clone());
        }
        let handle = self
            .scope
            .declare_value_state(&ValueStateDescriptor::<Vec<i64>>::new(timers.state))?;
        timers.handle = Some(handle.clone());
        Ok(handle)
    }

    fn register(&mut self, domain: TimeDomain, time: i64) -> FnResult {
        let handle = self.handle(domain)?;
        let inserted = self.scope.value(&handle).modify(Vec::new, |times| {
            match times.binary_search(&time) {
                Ok(_) => false,
                Err(at) => {
                    times.insert(at, time);
                    true
                }
            }
        })?;
        if inserted {
            let key = self.scope.key().clone();
            let key_group = self.scope.key_group();
            self.timers
                .domain(domain)
                .index
                .insert(time, key_group, key);
        }
        Ok(())
    }

    fn delete(&mut self, domain: TimeDomain, time: i64) -> FnResult {
        if self.remove_from_state(domain, time)? {
            let key_group = self.scope.key_group();
            let key = self.scope.key();
            self.timers
                .domain(domain)
                .index
                .remove(time, key_group, key);
        }
        Ok(())
    }

    /// Removes `time` from the current key's timer state; whether it was there.
    fn remove_from_state(&mut self, domain: TimeDomain, time: i64) -> Result<bool, UserError> {
        let Some(handle) = self.timers.domain(domain).handle.clone() else {
            return Ok(false);
        };
        let mut removed = false;
        self.scope.value(&handle).update(|old| {
            let mut times = old?;
            if let Ok(at) = times.binary_search(&time) {
                times.remove(at);
                removed = true;
            }
            (!times.is_empty()).then_some(times)
        })?;
        Ok(removed)
    }
}
