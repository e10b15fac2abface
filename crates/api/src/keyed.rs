//! Keyed functions and the operators that run them.
//!
//! A keyed operator owns a `Box<dyn KeyedStateBackend<K>>` for its key-group
//! range. For every record it computes the key and its key group, binds the
//! backend to that key ([`KeyedContext`]) and calls the user's function, which can
//! reach only the current key's state.

use std::sync::Arc;

use flowstate_runtime::{
    Barrier, Operator, StateSnapshot, SubtaskInfo, TwoInputOperator, UserError,
};
use flowstate_state::{
    BackendSnapshot, KeyScope, KeyedStateBackend, SnapshotRequest, StateKey, create_keyed_backend,
    key_group_of,
};

/// The result of a user function.
pub type FnResult = Result<(), UserError>;

/// The state of the current key, passed to keyed functions.
pub type KeyedContext<'a, K> = KeyScope<'a, K>;

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

    /// Called once at the end of a bounded input, with this instance's whole state.
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
    fn finish(&mut self, _state: &mut dyn KeyedStateBackend<K>, _out: &mut Vec<O>) -> FnResult {
        Ok(())
    }
}

pub(crate) type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

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

/// The keyed part of a checkpoint: the backend's frozen view (or native files).
fn snapshot_backend<K: StateKey>(
    backend: &mut dyn KeyedStateBackend<K>,
    barrier: Barrier,
) -> Result<StateSnapshot, UserError> {
    // A savepoint must be readable by any backend: canonical format.
    let snapshot: BackendSnapshot = backend.snapshot(SnapshotRequest {
        checkpoint_id: barrier.id,
        canonical: barrier.kind.is_savepoint(),
    })?;
    Ok(StateSnapshot {
        keyed: Some(snapshot),
        lists: Vec::new(),
    })
}

/// Runs a [`KeyedProcessFunction`].
pub(crate) struct KeyedProcessOperator<K: StateKey, I, F> {
    key_fn: KeyFn<I, K>,
    backend: Box<dyn KeyedStateBackend<K>>,
    function: F,
    max_parallelism: u32,
}

impl<K: StateKey, I, F> KeyedProcessOperator<K, I, F> {
    pub(crate) fn create<O>(
        subtask: &SubtaskInfo,
        key_fn: KeyFn<I, K>,
        mut function: F,
    ) -> Result<Self, UserError>
    where
        F: KeyedProcessFunction<K, I, O>,
    {
        let mut backend = open_backend::<K>(subtask)?;
        function.open(backend.as_mut())?;
        Ok(Self {
            key_fn,
            backend,
            function,
            max_parallelism: subtask.max_parallelism,
        })
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
        for record in input.drain(..) {
            let key = (self.key_fn)(&record);
            let key_group = key_group_of(&key, self.max_parallelism);
            let mut ctx = KeyScope::new(self.backend.as_mut(), &key, key_group);
            self.function.process(record, &mut ctx, output)?;
        }
        Ok(())
    }

    fn finish(&mut self, output: &mut Vec<O>) -> FnResult {
        self.function.finish(self.backend.as_mut(), output)
    }

    fn snapshot(&mut self, barrier: Barrier) -> Result<StateSnapshot, UserError> {
        snapshot_backend(self.backend.as_mut(), barrier)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.backend.notify_checkpoint_complete(checkpoint_id);
        Ok(())
    }
}

/// Runs a [`KeyedCoProcessFunction`].
pub(crate) struct KeyedCoProcessOperator<K: StateKey, A, B, F> {
    first_key: KeyFn<A, K>,
    second_key: KeyFn<B, K>,
    backend: Box<dyn KeyedStateBackend<K>>,
    function: F,
    max_parallelism: u32,
}

impl<K: StateKey, A, B, F> KeyedCoProcessOperator<K, A, B, F> {
    pub(crate) fn create<O>(
        subtask: &SubtaskInfo,
        first_key: KeyFn<A, K>,
        second_key: KeyFn<B, K>,
        mut function: F,
    ) -> Result<Self, UserError>
    where
        F: KeyedCoProcessFunction<K, A, B, O>,
    {
        let mut backend = open_backend::<K>(subtask)?;
        function.open(backend.as_mut())?;
        Ok(Self {
            first_key,
            second_key,
            backend,
            function,
            max_parallelism: subtask.max_parallelism,
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
        for record in input.drain(..) {
            let key = (self.first_key)(&record);
            let key_group = key_group_of(&key, self.max_parallelism);
            let mut ctx = KeyScope::new(self.backend.as_mut(), &key, key_group);
            self.function.process_first(record, &mut ctx, output)?;
        }
        Ok(())
    }

    fn process_batch2(&mut self, input: &mut Vec<B>, output: &mut Vec<O>) -> FnResult {
        for record in input.drain(..) {
            let key = (self.second_key)(&record);
            let key_group = key_group_of(&key, self.max_parallelism);
            let mut ctx = KeyScope::new(self.backend.as_mut(), &key, key_group);
            self.function.process_second(record, &mut ctx, output)?;
        }
        Ok(())
    }

    fn finish(&mut self, output: &mut Vec<O>) -> FnResult {
        self.function.finish(self.backend.as_mut(), output)
    }

    fn snapshot(&mut self, barrier: Barrier) -> Result<StateSnapshot, UserError> {
        snapshot_backend(self.backend.as_mut(), barrier)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.backend.notify_checkpoint_complete(checkpoint_id);
        Ok(())
    }
}
