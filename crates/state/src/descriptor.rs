//! State descriptors (what a function declares) and handles (what it gets back).
//!
//! A descriptor names a state and fixes its kind and types. Declaring it on a
//! backend returns a small, copyable handle; state is then read and written through
//! [`crate::KeyScope`] with that handle, always for the current key.

use std::any::type_name;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::backend::StateId;
use crate::state_type::{LEGACY_PREFIX, StateType, state_type_name};
use crate::ttl::StateTtlConfig;

/// The kind of a keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StateKind {
    Value,
    List,
    Map,
    Reducing,
    Aggregating,
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
        };
        f.write_str(s)
    }
}

/// Declares a `ValueState<V>`: one value per key.
#[derive(Debug, Clone)]
pub struct ValueStateDescriptor<V> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    _value: PhantomData<fn() -> V>,
}

impl<V> ValueStateDescriptor<V> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            _value: PhantomData,
        }
    }
}

/// Declares a `ListState<V>`: a list of values per key.
#[derive(Debug, Clone)]
pub struct ListStateDescriptor<V> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    _value: PhantomData<fn() -> V>,
}

impl<V> ListStateDescriptor<V> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            _value: PhantomData,
        }
    }
}

/// Declares a `MapState<UK, UV>`: a map per key.
#[derive(Debug, Clone)]
pub struct MapStateDescriptor<UK, UV> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    _value: PhantomData<fn() -> (UK, UV)>,
}

impl<UK, UV> MapStateDescriptor<UK, UV> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            _value: PhantomData,
        }
    }
}

/// The combining function of a reducing state.
pub type ReduceFn<V> = Arc<dyn Fn(V, V) -> V + Send + Sync>;

/// Declares a `ReducingState<V>`: values added for a key are combined into one.
pub struct ReducingStateDescriptor<V> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    pub(crate) reduce: ReduceFn<V>,
}

impl<V> ReducingStateDescriptor<V> {
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            reduce: Arc::new(reduce),
        }
    }
}

/// An incremental aggregation: inputs `I` are folded into an accumulator `Acc`,
/// from which a result `O` is read.
pub trait AggregateFunction<I, Acc, O>: Send + Sync + 'static {
    fn create_accumulator(&self) -> Acc;
    fn add(&self, accumulator: &mut Acc, input: I);
    fn result(&self, accumulator: &Acc) -> O;
}

/// Declares an `AggregatingState<I, O>` with accumulator `Acc`.
pub struct AggregatingStateDescriptor<I, Acc, O> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    pub(crate) function: Arc<dyn AggregateFunction<I, Acc, O>>,
}

impl<I, Acc, O> AggregatingStateDescriptor<I, Acc, O> {
    pub fn new(name: impl Into<String>, function: impl AggregateFunction<I, Acc, O>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            function: Arc::new(function),
        }
    }
}

macro_rules! with_ttl {
    ($($desc:ident < $($p:ident),* >),+ $(,)?) => {
        $(
            impl<$($p),*> $desc<$($p),*> {
                /// Gives the state a time-to-live in processing time (for list
                /// and map state: per element, per entry). A TTL'd state stores
                /// a timestamp with every value and records `ttl<...>` in its
                /// type names: restoring it with TTL added or removed is
                /// refused ([`crate::StateError::TtlMismatch`]).
                pub fn with_ttl(mut self, ttl: StateTtlConfig) -> Self {
                    self.ttl = Some(ttl);
                    self
                }

                /// The state's TTL, if any.
                pub fn ttl(&self) -> Option<&StateTtlConfig> {
                    self.ttl.as_ref()
                }
            }
        )+
    };
}
with_ttl!(
    ValueStateDescriptor<V>,
    ListStateDescriptor<V>,
    MapStateDescriptor<UK, UV>,
    ReducingStateDescriptor<V>,
    AggregatingStateDescriptor<I, Acc, O>,
);

/// A declared `ValueState<V>`.
#[derive(Debug)]
pub struct ValueStateHandle<V> {
    pub(crate) id: StateId,
    _value: PhantomData<fn() -> V>,
}

/// A declared `ListState<V>`.
#[derive(Debug)]
pub struct ListStateHandle<V> {
    pub(crate) id: StateId,
    _value: PhantomData<fn() -> V>,
}

/// A declared `MapState<UK, UV>`.
#[derive(Debug)]
pub struct MapStateHandle<UK, UV> {
    pub(crate) id: StateId,
    _value: PhantomData<fn() -> (UK, UV)>,
}

/// A declared `ReducingState<V>`.
pub struct ReducingStateHandle<V> {
    pub(crate) id: StateId,
    pub(crate) reduce: ReduceFn<V>,
}

/// A declared `AggregatingState<I, O>` with accumulator `Acc`.
pub struct AggregatingStateHandle<I, Acc, O> {
    pub(crate) id: StateId,
    pub(crate) function: Arc<dyn AggregateFunction<I, Acc, O>>,
}

macro_rules! handle_impls {
    ($handle:ident < $($p:ident),* >) => {
        impl<$($p),*> $handle<$($p),*> {
            pub(crate) fn from_id(id: StateId) -> Self {
                Self { id, _value: PhantomData }
            }
        }
        impl<$($p),*> Clone for $handle<$($p),*> {
            fn clone(&self) -> Self {
                Self::from_id(self.id)
            }
        }
    };
}
handle_impls!(ValueStateHandle<V>);
handle_impls!(ListStateHandle<V>);
handle_impls!(MapStateHandle<UK, UV>);

impl<V> Clone for ReducingStateHandle<V> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            reduce: Arc::clone(&self.reduce),
        }
    }
}

impl<I, Acc, O> Clone for AggregatingStateHandle<I, Acc, O> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            function: Arc::clone(&self.function),
        }
    }
}

/// What a declaration asks for: name, kind and the declared names of its types
/// ([`StateType`]), so that a second declaration of the same name, and state
/// restored from a snapshot, can be checked against it.
///
/// Equality compares `name`, `kind` and `types`: what a snapshot records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StateSignature {
    pub name: String,
    pub kind: StateKind,
    /// The declared type names (see the table in docs/savepoint-format.md,
    /// section 5.1): `V`, or `tuple<UK,UV>` for a map, `tuple<I,Acc,O>` for an
    /// aggregating state. A signature restored from a version-1 snapshot holds
    /// a legacy name instead ([`crate::state_type::legacy`]).
    pub types: String,
    /// `std::any::type_name` of the same Rust types, when this signature comes
    /// from a declaration in this process (empty when it was read from a
    /// snapshot): what a legacy name is compared with, and what tells apart two
    /// declarations of one name with different Rust types. Never written.
    #[serde(skip)]
    pub rust_types: &'static str,
}

impl PartialEq for StateSignature {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.kind == other.kind && self.types == other.types
    }
}

impl Eq for StateSignature {}

impl StateSignature {
    pub(crate) fn new<T: StateType + ?Sized>(name: &str, kind: StateKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            types: state_type_name::<T>(),
            rust_types: type_name::<T>(),
        }
    }

    /// Whether type names recorded in a snapshot (`recorded`: a declared name,
    /// or a legacy name from a version-1 snapshot) name this declaration's
    /// types. A legacy name matches only the declaration's
    /// `std::any::type_name`, as version 1 checked; nothing else is accepted.
    pub fn matches_recorded(&self, recorded: &str) -> bool {
        match recorded.strip_prefix(LEGACY_PREFIX) {
            Some(rust) => !self.rust_types.is_empty() && rust == self.rust_types,
            None => recorded == self.types,
        }
    }
}

impl std::fmt::Display for StateSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} state of {}", self.kind, self.types)
    }
}
