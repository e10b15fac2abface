//! Keyed functions and the operators that run them.
//!
//! A keyed operator owns a `Box<dyn KeyedStateBackend<K>>` for its key-group
//! range. For every record it computes the key and its key group, binds the
//! backend to that key ([`KeyedContext`]) and calls the user's function, which can
//! reach only the current key's state.

use std::sync::Arc;

use flowstate_runtime::checkpoint::DeclaredKeyedState;
use flowstate_runtime::{
    Barrier, KeyGroupFn, Operator, SideOutputs, StateSnapshot, SubtaskInfo, TwoInputOperator,
    UserError, Watermark,
};
use flowstate_state::{
    BackendSnapshot, KeyGroup, KeyScope, KeyedStateBackend, SnapshotRequest, StateKey,
    create_keyed_backend, key_group_of, state_type_name,
};

pub use crate::timers::{KeyedContext, TimeDomain};
use crate::timers::{Timers, fire_timers};

/// The result of a user function.
pub type FnResult = Result<(), UserError>;

/// A function over a keyed stream with access to keyed state.
///
/// One clone runs per parallel instance; `open` declares state on that
/// instance's backend.
pub trait KeyedProcessFunction<K: StateKey, I, O>: Clone + Send + 'static {
    /// Declares state (e.g. `state.value_state(&descriptor)`), before any record.
    fn open(&mut self, _state: &mut dyn KeyedStateBackend<K>) -> FnResult {
        Ok(())
    }

    /// Processes one record of the current key; results go to `out`.
    fn process(&mut self, record: I, ctx: &mut KeyedContext<'_, K>, out: &mut Vec<O>) -> FnResult;

    /// A timer of the current key (`ctx`, with its state) registered for
    /// `timestamp` in `domain` fired; it is gone before this is called.
    fn on_timer(
        &mut self,
        _timestamp: i64,
        _domain: TimeDomain,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Vec<O>,
    ) -> FnResult {
        Ok(())
    }

    /// Called once at the end of a bounded input, with this instance's whole state.
    ///
    /// With checkpoints on, this runs after the job's final checkpoint, so what it
    /// emits is not covered by one: a `--restore latest` of a job that had already
    /// ended emits it again. For end-of-input results that must be exactly-once,
    /// register an event-time timer at `i64::MAX` (the end of time): it fires
    /// before the final checkpoint.
    fn finish(&mut self, _state: &mut dyn KeyedStateBackend<K>, _out: &mut Vec<O>) -> FnResult {
        Ok(())
    }
}

/// A function over two keyed streams with the same key type (`connect`), sharing
/// one keyed state.
pub trait KeyedCoProcessFunction<K: StateKey, A, B, O>: Clone + Send + 'static {
    fn open(&mut self, _state: &mut dyn KeyedStateBackend<K>) -> FnResult {
        Ok(())
    }
    fn process_first(
        &mut self,
        record: A,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Vec<O>,
    ) -> FnResult;
    fn process_second(
        &mut self,
        record: B,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Vec<O>,
    ) -> FnResult;
    /// A timer of the current key fired (see [`KeyedProcessFunction::on_timer`]).
    fn on_timer(
        &mut self,
        _timestamp: i64,
        _domain: TimeDomain,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Vec<O>,
    ) -> FnResult {
        Ok(())
    }
    fn finish(&mut self, _state: &mut dyn KeyedStateBackend<K>, _out: &mut Vec<O>) -> FnResult {
        Ok(())
    }
}

/// A keyed stream's key selector, in the two forms the data path needs, both
/// built around the user's concrete key function so that the loops over a
/// batch's records make no dynamic call per record: the operator's
/// (`(key group, key)` of every record) and the exchange's (key groups only).
pub(crate) struct KeySelector<T, K> {
    keys: Arc<KeysFn<T, K>>,
    key_groups: Arc<dyn Fn(u32) -> KeyGroupFn<T> + Send + Sync>,
}

/// Appends `(key group, key)` of every record of a batch, given the max parallelism.
type KeysFn<T, K> = dyn Fn(&[T], u32, &mut Vec<(KeyGroup, K)>) + Send + Sync;

impl<T, K> Clone for KeySelector<T, K> {
    fn clone(&self) -> Self {
        Self {
            keys: Arc::clone(&self.keys),
            key_groups: Arc::clone(&self.key_groups),
        }
    }
}

impl<T: 'static, K: StateKey> KeySelector<T, K> {
    pub(crate) fn new(key: impl Fn(&T) -> K + Send + Sync + 'static) -> Self {
        let key = Arc::new(key);
        let for_groups = Arc::clone(&key);
        Self {
            keys: Arc::new(
                move |records: &[T], max_parallelism, out: &mut Vec<(KeyGroup, K)>| {
                    out.extend(records.iter().map(|record| {
                        let key = key(record);
                        (key_group_of(&key, max_parallelism), key)
                    }))
                },
            ),
            key_groups: Arc::new(move |max_parallelism| {
                let key = Arc::clone(&for_groups);
                KeyGroupFn::new(move |record: &T| key_group_of(&key(record), max_parallelism))
            }),
        }
    }

    /// The exchange's form: the key groups of a batch's records.
    pub(crate) fn key_group_fn(&self, max_parallelism: u32) -> KeyGroupFn<T> {
        (self.key_groups)(max_parallelism)
    }

    /// Appends `(key group, key)` of every record of `records` to `out`.
    #[inline]
    fn keys(&self, records: &[T], max_parallelism: u32, out: &mut Vec<(KeyGroup, K)>) {
        (self.keys)(records, max_parallelism, out)
    }
}

/// The instance's backend, with the restored key groups loaded (they are
/// decoded when the function declares its states in `open`).
fn open_backend<K: StateKey>(
    subtask: &SubtaskInfo,
) -> Result<Box<dyn KeyedStateBackend<K>>, UserError> {
    let mut backend =
        create_keyed_backend::<K>(&subtask.state_backend, &subtask.backend_instance())?;
    if let Some(restored) = &subtask.restored {
        backend.restore(restored.keyed.clone())?;
    }
    Ok(backend)
}

/// What every keyed operator holds besides its function and key selectors:
/// the instance's backend, its timers, the side outputs, and the scratch
/// list of a batch's keys. Owns the per-batch loop (keys and key groups
/// computed once, handed to the backend as a prefetch hint, then one
/// [`KeyedContext`] per record), timer firing, and the operator's checkpoint
/// hooks, so that one- and two-input operators differ only in their function.
pub(crate) struct KeyedCore<K: StateKey> {
    backend: Box<dyn KeyedStateBackend<K>>,
    timers: Timers<K>,
    /// What the function emits with `ctx.output`, for the consumed side
    /// outputs the runtime declared (the rest is dropped).
    side: SideOutputs,
    max_parallelism: u32,
    /// Each record's key and key group, computed once per batch before any
    /// state access (and handed to the backend as a prefetch hint).
    keys: Vec<(KeyGroup, K)>,
}

impl<K: StateKey> KeyedCore<K> {
    /// Opens the instance's backend (restored key groups loaded), lets the
    /// function declare its states (`open`), then the timers theirs.
    fn open(
        subtask: &SubtaskInfo,
        open: impl FnOnce(&mut dyn KeyedStateBackend<K>) -> FnResult,
    ) -> Result<Self, UserError> {
        let mut backend = open_backend::<K>(subtask)?;
        open(backend.as_mut())?;
        let mut timers = Timers::new(subtask.clock.clone(), subtask.max_parallelism);
        timers.open(backend.as_mut())?;
        Ok(Self {
            backend,
            timers,
            side: SideOutputs::new(),
            max_parallelism: subtask.max_parallelism,
            keys: Vec::new(),
        })
    }

    /// Calls `process` on every record of `input` (drained) with the
    /// record's key in scope.
    #[inline]
    fn process_batch<I>(
        &mut self,
        input: &mut Vec<I>,
        key_selector: &KeySelector<I, K>,
        mut process: impl FnMut(I, &mut KeyedContext<'_, K>) -> FnResult,
    ) -> FnResult
    where
        I: 'static,
    {
        self.keys.clear();
        key_selector.keys(input, self.max_parallelism, &mut self.keys);
        // A batch's state lookups then overlap instead of each waiting on memory.
        self.backend.prefetch(&self.keys);
        for (record, (key_group, key)) in input.drain(..).zip(self.keys.drain(..)) {
            let scope = KeyScope::new(self.backend.as_mut(), &key, key_group);
            let mut ctx = KeyedContext::new(scope, &mut self.timers, &mut self.side);
            process(record, &mut ctx)?;
        }
        Ok(())
    }

    /// Fires the processing-time timers the clock has passed (the clock is
    /// read only when a timer is pending): before every batch, on every
    /// watermark, and from the idle hook (`on_processing_time`, which reads
    /// the clock again: never earlier than the runtime's reading).
    fn fire_processing_timers(
        &mut self,
        on_timer: impl FnMut(i64, &mut KeyedContext<'_, K>) -> FnResult,
    ) -> FnResult {
        let Some(next) = self.timers.next_time(TimeDomain::ProcessingTime) else {
            return Ok(());
        };
        let now = self.timers.now();
        if next > now {
            return Ok(());
        }
        fire_timers(
            &mut self.timers,
            self.backend.as_mut(),
            &mut self.side,
            TimeDomain::ProcessingTime,
            now,
            on_timer,
        )
    }

    /// Event time reached `watermark`: its due timers fire, then the due
    /// processing-time ones. `on_timer` gets the timer's time and domain.
    fn on_watermark(
        &mut self,
        watermark: Watermark,
        mut on_timer: impl FnMut(i64, TimeDomain, &mut KeyedContext<'_, K>) -> FnResult,
    ) -> FnResult {
        self.timers.advance_watermark(watermark.0);
        fire_timers(
            &mut self.timers,
            self.backend.as_mut(),
            &mut self.side,
            TimeDomain::EventTime,
            watermark.0,
            |time, ctx| on_timer(time, TimeDomain::EventTime, ctx),
        )?;
        self.fire_processing_timers(|time, ctx| on_timer(time, TimeDomain::ProcessingTime, ctx))
    }

    fn next_processing_time(&self) -> Option<i64> {
        self.timers.next_time(TimeDomain::ProcessingTime)
    }

    fn declared_keyed_state(&self) -> Option<DeclaredKeyedState> {
        Some(DeclaredKeyedState {
            key_type: state_type_name::<K>(),
            states: self.backend.signatures(),
        })
    }

    /// The keyed part of a checkpoint: the backend's frozen view (or native
    /// files); a savepoint in the canonical format any backend reads.
    fn snapshot(&mut self, barrier: Barrier) -> Result<StateSnapshot, UserError> {
        let snapshot: BackendSnapshot = self.backend.snapshot(SnapshotRequest {
            checkpoint_id: barrier.id,
            canonical: barrier.kind.is_savepoint(),
        })?;
        Ok(StateSnapshot {
            keyed: Some(snapshot),
            lists: Vec::new(),
        })
    }
}

/// Runs a [`KeyedProcessFunction`].
pub(crate) struct KeyedProcessOperator<K: StateKey, I, F> {
    key_fn: KeySelector<I, K>,
    core: KeyedCore<K>,
    function: F,
}

impl<K: StateKey, I, F> KeyedProcessOperator<K, I, F> {
    pub(crate) fn create<O>(
        subtask: &SubtaskInfo,
        key_fn: KeySelector<I, K>,
        mut function: F,
    ) -> Result<Self, UserError>
    where
        F: KeyedProcessFunction<K, I, O>,
    {
        let core = KeyedCore::open(subtask, |backend| function.open(backend))?;
        Ok(Self {
            key_fn,
            core,
            function,
        })
    }

    /// The instance's pending timers (tests).
    #[cfg(test)]
    pub(crate) fn pending_timers(&self, domain: TimeDomain) -> usize {
        self.core.timers.pending(domain)
    }
}

impl<K, I, O, F> Operator<I, O> for KeyedProcessOperator<K, I, F>
where
    K: StateKey,
    I: Send + 'static,
    F: KeyedProcessFunction<K, I, O>,
{
    #[inline]
    fn process_batch(&mut self, input: &mut Vec<I>, output: &mut Vec<O>) -> FnResult {
        let function = &mut self.function;
        self.core.fire_processing_timers(|time, ctx| {
            function.on_timer(time, TimeDomain::ProcessingTime, ctx, output)
        })?;
        self.core.process_batch(input, &self.key_fn, |record, ctx| {
            function.process(record, ctx, output)
        })
    }

    fn on_watermark(&mut self, watermark: Watermark, output: &mut Vec<O>) -> FnResult {
        let function = &mut self.function;
        self.core.on_watermark(watermark, |time, domain, ctx| {
            function.on_timer(time, domain, ctx, output)
        })
    }

    /// The earliest pending processing-time timer: the runtime calls
    /// `on_processing_time` when the clock passed it and the task has no
    /// input (the idle hook).
    fn next_processing_time(&self) -> Option<i64> {
        self.core.next_processing_time()
    }

    fn on_processing_time(&mut self, _now_ms: i64, output: &mut Vec<O>) -> FnResult {
        let function = &mut self.function;
        self.core.fire_processing_timers(|time, ctx| {
            function.on_timer(time, TimeDomain::ProcessingTime, ctx, output)
        })
    }

    /// Fires nothing: at the end of a bounded input the runtime has sent
    /// `Watermark::MAX` (every event-time timer fired then), and at the end
    /// of a stop-with-savepoint event time must *not* end: the savepoint
    /// holds the pending timers and open windows, and whatever fired here
    /// would be published by the sinks' `finish` and fire again after the
    /// resume (found by the whole-job simulation).
    fn finish(&mut self, output: &mut Vec<O>) -> FnResult {
        self.function.finish(self.core.backend.as_mut(), output)
    }

    fn side_outputs(&mut self) -> Option<&mut SideOutputs> {
        Some(&mut self.core.side)
    }

    fn declared_keyed_state(&self) -> Option<DeclaredKeyedState> {
        self.core.declared_keyed_state()
    }

    fn snapshot(&mut self, barrier: Barrier) -> Result<StateSnapshot, UserError> {
        self.core.snapshot(barrier)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.core.backend.notify_checkpoint_complete(checkpoint_id);
        Ok(())
    }

    fn state_stats(&mut self) -> Vec<flowstate_state::StateStats> {
        self.core.backend.state_stats()
    }
}

/// Runs a [`KeyedCoProcessFunction`]: two inputs, one keyed state.
pub(crate) struct KeyedCoProcessOperator<K: StateKey, A, B, F> {
    first_key: KeySelector<A, K>,
    second_key: KeySelector<B, K>,
    core: KeyedCore<K>,
    function: F,
}

impl<K: StateKey, A, B, F> KeyedCoProcessOperator<K, A, B, F> {
    pub(crate) fn create<O>(
        subtask: &SubtaskInfo,
        first_key: KeySelector<A, K>,
        second_key: KeySelector<B, K>,
        mut function: F,
    ) -> Result<Self, UserError>
    where
        F: KeyedCoProcessFunction<K, A, B, O>,
    {
        let core = KeyedCore::open(subtask, |backend| function.open(backend))?;
        Ok(Self {
            first_key,
            second_key,
            core,
            function,
        })
    }
}

impl<K, A, B, O, F> TwoInputOperator<A, B, O> for KeyedCoProcessOperator<K, A, B, F>
where
    K: StateKey,
    A: Send + 'static,
    B: Send + 'static,
    F: KeyedCoProcessFunction<K, A, B, O>,
{
    fn process_batch1(&mut self, input: &mut Vec<A>, output: &mut Vec<O>) -> FnResult {
        let function = &mut self.function;
        self.core.fire_processing_timers(|time, ctx| {
            function.on_timer(time, TimeDomain::ProcessingTime, ctx, output)
        })?;
        self.core
            .process_batch(input, &self.first_key, |record, ctx| {
                function.process_first(record, ctx, output)
            })
    }

    fn process_batch2(&mut self, input: &mut Vec<B>, output: &mut Vec<O>) -> FnResult {
        let function = &mut self.function;
        self.core.fire_processing_timers(|time, ctx| {
            function.on_timer(time, TimeDomain::ProcessingTime, ctx, output)
        })?;
        self.core
            .process_batch(input, &self.second_key, |record, ctx| {
                function.process_second(record, ctx, output)
            })
    }

    fn on_watermark(&mut self, watermark: Watermark, output: &mut Vec<O>) -> FnResult {
        let function = &mut self.function;
        self.core.on_watermark(watermark, |time, domain, ctx| {
            function.on_timer(time, domain, ctx, output)
        })
    }

    /// See the one-input operator's.
    fn next_processing_time(&self) -> Option<i64> {
        self.core.next_processing_time()
    }

    fn on_processing_time(&mut self, _now_ms: i64, output: &mut Vec<O>) -> FnResult {
        let function = &mut self.function;
        self.core.fire_processing_timers(|time, ctx| {
            function.on_timer(time, TimeDomain::ProcessingTime, ctx, output)
        })
    }

    /// Fires nothing (see the one-input operator's `finish`).
    fn finish(&mut self, output: &mut Vec<O>) -> FnResult {
        self.function.finish(self.core.backend.as_mut(), output)
    }

    fn side_outputs(&mut self) -> Option<&mut SideOutputs> {
        Some(&mut self.core.side)
    }

    fn declared_keyed_state(&self) -> Option<DeclaredKeyedState> {
        self.core.declared_keyed_state()
    }

    fn snapshot(&mut self, barrier: Barrier) -> Result<StateSnapshot, UserError> {
        self.core.snapshot(barrier)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.core.backend.notify_checkpoint_complete(checkpoint_id);
        Ok(())
    }

    fn state_stats(&mut self) -> Vec<flowstate_state::StateStats> {
        self.core.backend.state_stats()
    }
}
