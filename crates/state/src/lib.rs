//! Keyed and operator state.
//!
//! This crate owns everything about *state*: how keys map to key groups
//! ([`key_group`]), how a piece of state is declared ([`descriptor`]), the typed
//! tables that hold it ([`table`]), the [`KeyedStateBackend`] trait every backend
//! implements, the [`heap`] backend, the [`serialized`] backend over a byte-level
//! store (RocksDB lives in its own crate), the description of [`native`]
//! snapshots, the per-record scoped view of state
//! ([`access::KeyScope`]), non-keyed operator state ([`operator_state`]) and
//! the durable encoding of keys and values in checkpoints, savepoints and
//! stores ([`codec`]).
//!
//! It must not touch: threads, channels, tasks or the runtime's scheduling. The
//! runtime reaches state only through [`KeyedStateBackend`] and the handles in
//! [`descriptor`]; state never calls back into the runtime.

pub mod access;
pub mod backend;
pub mod clock;
pub mod codec;
pub mod descriptor;
pub mod error;
pub mod heap;
pub mod key_group;
pub mod memory_store;
pub mod native;
pub mod operator_state;
pub mod serialized;
pub mod snapshot;
pub mod state_type;
pub mod table;
pub mod ttl;

pub use access::KeyScope;
pub use backend::{
    BackendKind, BackendSnapshot, KeyedStateBackend, SnapshotRequest, StateBackendConfig, StateId,
    StateStats, create_keyed_backend, heap_backend,
};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};
pub use descriptor::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateHandle, ListStateDescriptor,
    ListStateHandle, MapStateDescriptor, MapStateHandle, ReducingStateDescriptor,
    ReducingStateHandle, StateKind, ValueStateDescriptor, ValueStateHandle,
};
pub use error::StateError;
pub use heap::HeapKeyedStateBackend;
pub use key_group::{
    DEFAULT_MAX_PARALLELISM, KeyGroup, KeyGroupRange, MAX_PARALLELISM_LIMIT, key_group_for_hash,
    key_group_of, operator_index_for_key_group, stable_hash,
};
pub use native::{
    FileFetcher, NativeFile, NativeRestore, NativeSnapshot, PrepareFiles, StoredFile, UploadReceipt,
};
pub use operator_state::{OperatorListHandle, OperatorStateStore, RedistributionMode};
pub use serialized::{BackendInstance, KvStore, KvStoreFactory, SerializedKeyedStateBackend};
pub use snapshot::{
    KeyedStateSnapshot, RestoredKeyedState, SectionFn, SectionSource, SnapshotWriter, TableSnapshot,
};
pub use state_type::{StateType, state_type_name};
pub use ttl::{StateTtlConfig, TtlCleanup, TtlStateVisibility, TtlUpdateType, TtlValue};

use std::fmt::Debug;
use std::hash::Hash;

/// A type usable as a key of keyed state.
///
/// The key's [`Hash`] implementation must be deterministic (it must not depend on a
/// random seed or on addresses): it decides the key group, and the key group decides
/// where the key's state lives after a restore or a rescale. Its declared name
/// ([`StateType`]) is recorded in snapshots.
pub trait StateKey:
    Hash
    + Eq
    + Clone
    + Debug
    + Send
    + Sync
    + serde::Serialize
    + serde::de::DeserializeOwned
    + StateType
    + 'static
{
}
impl<T> StateKey for T where
    T: Hash
        + Eq
        + Clone
        + Debug
        + Send
        + Sync
        + serde::Serialize
        + serde::de::DeserializeOwned
        + StateType
        + 'static
{
}

/// A type usable as a value held in state. Its declared name ([`StateType`])
/// is recorded in snapshots and checked on restore.
pub trait StateValue:
    Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + StateType + 'static
{
}
impl<T> StateValue for T where
    T: Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + StateType + 'static
{
}
