//! Typed state declaration and access for the current key.
//!
//! Declaration: `backend.value_state(&descriptor)` and friends (inherent methods of
//! `dyn KeyedStateBackend<K>`) return handles. Access: a [`KeyScope`] binds a
//! backend to the key of the record being processed; `scope.value(&handle)` gives
//! that key's value state, and so on. There is no way to reach another key's
//! state from inside a scope: that is what "scoped to the current key" means.

use std::hash::Hash;
use std::sync::Arc;

use crate::backend::{KeyedStateBackend, TableLayout, list_slot, map_slot, value_slot};
use crate::descriptor::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateHandle, ListStateDescriptor,
    ListStateHandle, MapStateDescriptor, MapStateHandle, ReduceFn, ReducingStateDescriptor,
    ReducingStateHandle, StateKind, StateSignature, ValueStateDescriptor, ValueStateHandle,
};
use crate::error::StateError;
use crate::heap::{GroupMap, HeapTable};
use crate::serialized::{SerializedListTable, SerializedMapTable, SerializedValueTable};
use crate::table::{ListTable, MapTable, ValueTable};
use crate::ttl::{StateTtlConfig, TtlListTable, TtlMapTable, TtlSettings, TtlValue, TtlValueTable};
use crate::{KeyGroup, StateKey, StateType, StateValue};

fn plain_value_table<K: StateKey, V: StateValue>(
    name: &str,
    layout: TableLayout,
) -> Box<dyn ValueTable<K, V>> {
    match layout {
        TableLayout::Heap { range } => Box::new(HeapTable::<K, V>::new(name, range)),
        TableLayout::Serialized { range, column } => {
            Box::new(SerializedValueTable::<K, V>::new(name, range, column))
        }
    }
}

/// The table of a value-like state (value, reducing, aggregating), with TTL
/// over a table of `TtlValue<V>` if `ttl` is set.
fn value_table<K: StateKey, V: StateValue>(
    name: &str,
    layout: TableLayout,
    ttl: Option<&TtlSettings>,
) -> crate::backend::TableSlot<K> {
    let Some(ttl) = ttl else {
        return value_slot::<K, V>(plain_value_table::<K, V>(name, layout));
    };
    let inner: Box<dyn ValueTable<K, TtlValue<V>>> = match layout {
        TableLayout::Heap { range } => Box::new(HeapTable::<K, TtlValue<V>>::with_ttl(
            name,
            range,
            ttl.clone(),
        )),
        TableLayout::Serialized { range, column } => Box::new(
            SerializedValueTable::<K, TtlValue<V>>::new(name, range, column),
        ),
    };
    value_slot::<K, V>(Box::new(TtlValueTable::new(inner, ttl.clone())))
}

impl<K: StateKey> dyn KeyedStateBackend<K> + '_ {
    /// The TTL settings of a declaration with `config`.
    fn ttl_settings(&self, config: Option<&StateTtlConfig>) -> Option<TtlSettings> {
        config.map(|config| TtlSettings {
            config: *config,
            clock: self.clock(),
        })
    }

    /// Declares (or looks up) a value state.
    pub fn value_state<V: StateValue>(
        &mut self,
        descriptor: &ValueStateDescriptor<V>,
    ) -> Result<ValueStateHandle<V>, StateError> {
        let name = descriptor.name.as_str();
        let ttl = self.ttl_settings(descriptor.ttl.as_ref());
        let signature = match ttl {
            None => StateSignature::new::<V>(name, StateKind::Value),
            Some(_) => StateSignature::new::<TtlValue<V>>(name, StateKind::Value),
        };
        let id = self.declare(signature, &mut |layout| {
            value_table::<K, V>(name, layout, ttl.as_ref())
        })?;
        Ok(ValueStateHandle::from_id(id))
    }

    /// Declares (or looks up) a list state.
    pub fn list_state<V: StateValue>(
        &mut self,
        descriptor: &ListStateDescriptor<V>,
    ) -> Result<ListStateHandle<V>, StateError> {
        let name = descriptor.name.as_str();
        let ttl = self.ttl_settings(descriptor.ttl.as_ref());
        let signature = match ttl {
            None => StateSignature::new::<V>(name, StateKind::List),
            Some(_) => StateSignature::new::<TtlValue<V>>(name, StateKind::List),
        };
        let id = self.declare(signature, &mut |layout| match &ttl {
            None => list_slot::<K, V>(match layout {
                TableLayout::Heap { range } => {
                    Box::new(HeapTable::<K, Vec<V>>::new(name, range)) as Box<dyn ListTable<K, V>>
                }
                TableLayout::Serialized { range, column } => {
                    Box::new(SerializedListTable::<K, V>::new(name, range, column))
                }
            }),
            Some(ttl) => {
                let inner: Box<dyn ListTable<K, TtlValue<V>>> =
                    match layout {
                        TableLayout::Heap { range } => Box::new(
                            HeapTable::<K, Vec<TtlValue<V>>>::with_ttl(name, range, ttl.clone()),
                        ),
                        TableLayout::Serialized { range, column } => Box::new(
                            SerializedListTable::<K, TtlValue<V>>::new(name, range, column),
                        ),
                    };
                list_slot::<K, V>(Box::new(TtlListTable::new(inner, ttl.clone())))
            }
        })?;
        Ok(ListStateHandle::from_id(id))
    }

    /// Declares (or looks up) a map state.
    pub fn map_state<UK, UV>(
        &mut self,
        descriptor: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapStateHandle<UK, UV>, StateError>
    where
        UK: StateKey,
        UV: StateValue,
    {
        let name = descriptor.name.as_str();
        let ttl = self.ttl_settings(descriptor.ttl.as_ref());
        let signature = match ttl {
            None => StateSignature::new::<(UK, UV)>(name, StateKind::Map),
            Some(_) => StateSignature::new::<(UK, TtlValue<UV>)>(name, StateKind::Map),
        };
        let id = self.declare(signature, &mut |layout| match &ttl {
            None => map_slot::<K, UK, UV>(match layout {
                TableLayout::Heap { range } => {
                    Box::new(HeapTable::<K, GroupMap<UK, UV>>::new(name, range))
                        as Box<dyn MapTable<K, UK, UV>>
                }
                TableLayout::Serialized { range, column } => {
                    Box::new(SerializedMapTable::<K, UK, UV>::new(name, range, column))
                }
            }),
            Some(ttl) => {
                let inner: Box<dyn MapTable<K, UK, TtlValue<UV>>> =
                    match layout {
                        TableLayout::Heap { range } => Box::new(HeapTable::<
                            K,
                            GroupMap<UK, TtlValue<UV>>,
                        >::with_ttl(
                            name, range, ttl.clone()
                        )),
                        TableLayout::Serialized { range, column } => Box::new(
                            SerializedMapTable::<K, UK, TtlValue<UV>>::new(name, range, column),
                        ),
                    };
                map_slot::<K, UK, UV>(Box::new(TtlMapTable::new(inner, ttl.clone())))
            }
        })?;
        Ok(MapStateHandle::from_id(id))
    }

    /// Declares (or looks up) a reducing state.
    pub fn reducing_state<V: StateValue>(
        &mut self,
        descriptor: &ReducingStateDescriptor<V>,
    ) -> Result<ReducingStateHandle<V>, StateError> {
        let name = descriptor.name.as_str();
        let ttl = self.ttl_settings(descriptor.ttl.as_ref());
        let signature = match ttl {
            None => StateSignature::new::<V>(name, StateKind::Reducing),
            Some(_) => StateSignature::new::<TtlValue<V>>(name, StateKind::Reducing),
        };
        let id = self.declare(signature, &mut |layout| {
            value_table::<K, V>(name, layout, ttl.as_ref())
        })?;
        Ok(ReducingStateHandle {
            id,
            reduce: Arc::clone(&descriptor.reduce),
        })
    }

    /// Declares (or looks up) an aggregating state; the table holds accumulators.
    pub fn aggregating_state<I, Acc, O>(
        &mut self,
        descriptor: &AggregatingStateDescriptor<I, Acc, O>,
    ) -> Result<AggregatingStateHandle<I, Acc, O>, StateError>
    where
        I: StateType + 'static,
        Acc: StateValue,
        O: StateType + 'static,
    {
        let name = descriptor.name.as_str();
        let ttl = self.ttl_settings(descriptor.ttl.as_ref());
        let signature = match ttl {
            None => StateSignature::new::<(I, Acc, O)>(name, StateKind::Aggregating),
            Some(_) => StateSignature::new::<(I, TtlValue<Acc>, O)>(name, StateKind::Aggregating),
        };
        let id = self.declare(signature, &mut |layout| {
            value_table::<K, Acc>(name, layout, ttl.as_ref())
        })?;
        Ok(AggregatingStateHandle {
            id,
            function: Arc::clone(&descriptor.function),
        })
    }

    /// Calls `f` with every key and value of a value state (all key groups of this
    /// instance), e.g. to emit final results at the end of a bounded input.
    pub fn for_each_value<V: StateValue>(
        &mut self,
        handle: &ValueStateHandle<V>,
        mut f: impl FnMut(&K, &V),
    ) -> Result<(), StateError> {
        self.slot(handle.id)
            .typed::<Box<dyn ValueTable<K, V>>>()
            .for_each(&mut f)
    }
}

/// The state of one key: a backend bound to the key of the record being processed.
pub struct KeyScope<'a, K: StateKey> {
    backend: &'a mut dyn KeyedStateBackend<K>,
    key: &'a K,
    key_group: KeyGroup,
}

impl<'a, K: StateKey> KeyScope<'a, K> {
    /// Binds `backend` to `key`, whose key group the caller has computed.
    #[inline]
    pub fn new(backend: &'a mut dyn KeyedStateBackend<K>, key: &'a K, key_group: KeyGroup) -> Self {
        debug_assert_eq!(
            key_group,
            crate::key_group_of(key, backend.max_parallelism()),
            "key group passed to KeyScope does not match the key"
        );
        Self {
            backend,
            key,
            key_group,
        }
    }

    /// The current key.
    #[inline]
    pub fn key(&self) -> &K {
        self.key
    }

    /// The key group of the current key.
    #[inline]
    pub fn key_group(&self) -> KeyGroup {
        self.key_group
    }

    /// Declares (or looks up) a value state while a key is bound: for state
    /// declared lazily, on first use (the timer service's `_timers/*` states).
    /// The handle still reaches only the bound key's entry through the scope.
    pub fn declare_value_state<V: StateValue>(
        &mut self,
        descriptor: &ValueStateDescriptor<V>,
    ) -> Result<ValueStateHandle<V>, StateError> {
        self.backend.value_state(descriptor)
    }

    #[inline]
    pub fn value<V: StateValue>(&mut self, handle: &ValueStateHandle<V>) -> ValueState<'_, K, V> {
        ValueState {
            table: &mut **self
                .backend
                .slot(handle.id)
                .typed::<Box<dyn ValueTable<K, V>>>(),
            key: self.key,
            key_group: self.key_group,
        }
    }

    #[inline]
    pub fn list<V: StateValue>(&mut self, handle: &ListStateHandle<V>) -> ListState<'_, K, V> {
        ListState {
            table: &mut **self
                .backend
                .slot(handle.id)
                .typed::<Box<dyn ListTable<K, V>>>(),
            key: self.key,
            key_group: self.key_group,
        }
    }

    #[inline]
    pub fn map<UK, UV>(&mut self, handle: &MapStateHandle<UK, UV>) -> MapState<'_, K, UK, UV>
    where
        UK: StateKey,
        UV: StateValue,
    {
        MapState {
            table: &mut **self
                .backend
                .slot(handle.id)
                .typed::<Box<dyn MapTable<K, UK, UV>>>(),
            key: self.key,
            key_group: self.key_group,
        }
    }

    #[inline]
    pub fn reducing<'h, V: StateValue>(
        &'h mut self,
        handle: &'h ReducingStateHandle<V>,
    ) -> ReducingState<'h, K, V> {
        ReducingState {
            table: &mut **self
                .backend
                .slot(handle.id)
                .typed::<Box<dyn ValueTable<K, V>>>(),
            reduce: &handle.reduce,
            key: self.key,
            key_group: self.key_group,
        }
    }

    #[inline]
    pub fn aggregating<'h, I: 'static, Acc: StateValue, O: 'static>(
        &'h mut self,
        handle: &'h AggregatingStateHandle<I, Acc, O>,
    ) -> AggregatingState<'h, K, I, Acc, O> {
        AggregatingState {
            table: &mut **self
                .backend
                .slot(handle.id)
                .typed::<Box<dyn ValueTable<K, Acc>>>(),
            function: &*handle.function,
            key: self.key,
            key_group: self.key_group,
        }
    }
}

/// The value state of the current key.
pub struct ValueState<'s, K, V> {
    table: &'s mut dyn ValueTable<K, V>,
    key: &'s K,
    key_group: KeyGroup,
}

impl<'s, K, V> ValueState<'s, K, V> {
    /// The current key's value (consumes the view so the reference outlives it).
    #[inline]
    pub fn get(self) -> Result<Option<&'s V>, StateError> {
        self.table.get(self.key_group, self.key)
    }

    #[inline]
    pub fn set(&mut self, value: V) -> Result<(), StateError> {
        self.table.put(self.key_group, self.key, value)
    }

    #[inline]
    pub fn clear(&mut self) -> Result<Option<V>, StateError> {
        self.table.remove(self.key_group, self.key)
    }

    /// Replaces the value with `f(old)` in one lookup (`None` clears it) and
    /// returns the new value.
    #[inline]
    pub fn update(
        self,
        f: impl FnOnce(Option<V>) -> Option<V>,
    ) -> Result<Option<&'s V>, StateError> {
        let mut f = Some(f);
        self.table
            .update(self.key_group, self.key, &mut |old| match f.take() {
                Some(f) => f(old),
                None => old,
            })
    }
}

impl<K: StateKey, V: StateValue> ValueState<'_, K, V> {
    /// Changes the value in place (starting from `init()` if there is none) and
    /// returns what `f` returns. One lookup; the fastest read-modify-write.
    #[inline]
    pub fn modify<R>(
        &mut self,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<R, StateError> {
        if let Some(heap) = self.table.as_heap() {
            return heap.modify_in_place(self.key_group, self.key, init, f);
        }
        let (mut init, mut f, mut result) = (Some(init), Some(f), None);
        self.table.modify(
            self.key_group,
            self.key,
            &mut || match init.take() {
                Some(init) => init(),
                None => unreachable!("a table calls init at most once"),
            },
            &mut |value| {
                if let Some(f) = f.take() {
                    result = Some(f(value));
                }
            },
        )?;
        match result {
            Some(result) => Ok(result),
            None => unreachable!("a table calls f exactly once"),
        }
    }
}

/// The list state of the current key.
pub struct ListState<'s, K, V> {
    table: &'s mut dyn ListTable<K, V>,
    key: &'s K,
    key_group: KeyGroup,
}

impl<'s, K, V> ListState<'s, K, V> {
    /// The current key's list (consumes the view so the slice outlives it).
    pub fn get(self) -> Result<&'s [V], StateError> {
        self.table.get(self.key_group, self.key)
    }

    pub fn add(&mut self, value: V) -> Result<(), StateError> {
        self.table.add(self.key_group, self.key, value)
    }

    /// Replaces the whole list (an empty list clears it).
    pub fn update(&mut self, values: Vec<V>) -> Result<(), StateError> {
        self.table.replace(self.key_group, self.key, values)
    }

    pub fn clear(&mut self) -> Result<(), StateError> {
        self.table.remove(self.key_group, self.key)
    }
}

/// The map state of the current key.
pub struct MapState<'s, K, UK, UV> {
    table: &'s mut dyn MapTable<K, UK, UV>,
    key: &'s K,
    key_group: KeyGroup,
}

impl<'s, K, UK: Hash + Eq, UV> MapState<'s, K, UK, UV> {
    pub fn get(self, user_key: &UK) -> Result<Option<&'s UV>, StateError> {
        self.table.get(self.key_group, self.key, user_key)
    }

    pub fn contains(&mut self, user_key: &UK) -> Result<bool, StateError> {
        Ok(self
            .table
            .get(self.key_group, self.key, user_key)?
            .is_some())
    }

    pub fn put(&mut self, user_key: UK, value: UV) -> Result<(), StateError> {
        self.table.put(self.key_group, self.key, user_key, value)
    }

    pub fn remove(&mut self, user_key: &UK) -> Result<Option<UV>, StateError> {
        self.table.remove(self.key_group, self.key, user_key)
    }

    pub fn len(&mut self) -> Result<usize, StateError> {
        self.table.len(self.key_group, self.key)
    }

    pub fn is_empty(&mut self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }

    /// Calls `f` on every entry, in no particular order.
    pub fn for_each(&mut self, mut f: impl FnMut(&UK, &UV)) -> Result<(), StateError> {
        self.table.for_each_entry(self.key_group, self.key, &mut f)
    }

    pub fn clear(&mut self) -> Result<(), StateError> {
        self.table.remove_all(self.key_group, self.key)
    }
}

/// The reducing state of the current key.
pub struct ReducingState<'s, K, V> {
    table: &'s mut dyn ValueTable<K, V>,
    reduce: &'s ReduceFn<V>,
    key: &'s K,
    key_group: KeyGroup,
}

impl<'s, K, V> ReducingState<'s, K, V> {
    /// Combines `value` into the state and returns the combined value.
    // `add` is the name every stream processor uses for this; it is not `Add::add`.
    #[allow(clippy::should_implement_trait)]
    #[inline]
    pub fn add(self, value: V) -> Result<Option<&'s V>, StateError> {
        let reduce = self.reduce;
        let mut value = Some(value);
        self.table.update(
            self.key_group,
            self.key,
            &mut |old| match (old, value.take()) {
                (Some(old), Some(new)) => Some(reduce(old, new)),
                (None, new) => new,
                (old, None) => old,
            },
        )
    }

    pub fn get(self) -> Result<Option<&'s V>, StateError> {
        self.table.get(self.key_group, self.key)
    }

    pub fn clear(&mut self) -> Result<(), StateError> {
        self.table.remove(self.key_group, self.key).map(drop)
    }
}

/// The aggregating state of the current key.
pub struct AggregatingState<'s, K, I, Acc, O> {
    table: &'s mut dyn ValueTable<K, Acc>,
    function: &'s dyn AggregateFunction<I, Acc, O>,
    key: &'s K,
    key_group: KeyGroup,
}

impl<K, I: 'static, Acc: 'static, O: 'static> AggregatingState<'_, K, I, Acc, O> {
    /// Adds `input` to the accumulator and returns the new result, in one lookup.
    #[inline]
    pub fn add(&mut self, input: I) -> Result<O, StateError> {
        let function = self.function;
        let mut input = Some(input);
        let mut result = None;
        self.table.modify(
            self.key_group,
            self.key,
            &mut || function.create_accumulator(),
            &mut |acc| {
                if let Some(input) = input.take() {
                    function.add(acc, input);
                }
                result = Some(function.result(acc));
            },
        )?;
        Ok(match result {
            Some(result) => result,
            None => unreachable!("a table calls f exactly once"),
        })
    }

    /// The current result, `None` if nothing was added for this key.
    pub fn get(&mut self) -> Result<Option<O>, StateError> {
        let function = self.function;
        Ok(self
            .table
            .get(self.key_group, self.key)?
            .map(|acc| function.result(acc)))
    }

    pub fn clear(&mut self) -> Result<(), StateError> {
        self.table.remove(self.key_group, self.key).map(drop)
    }
}
