//! How the records of an edge are distributed over the consumer's instances:
//! [`Partitioning`] and the key-group function of hash partitioning
//! ([`KeyGroupFn`]).
//!
//! Owns: these two types, which the logical graph stores on its edges and the
//! pipelines' routers apply. Must not touch: graphs, plans or tasks; it sits
//! below all of them so that neither has to import the other for it.

use std::sync::Arc;

use flowstate_state::KeyGroup;

/// Computes the key group of a record (for hash partitioning).
pub type KeyGroupFn<T> = Arc<dyn Fn(&T) -> KeyGroup + Send + Sync>;

/// How records of an edge are distributed over the consumer's instances.
pub enum Partitioning<T> {
    /// Instance `i` feeds instance `i` (chained when possible).
    Forward,
    /// Whole batches round-robin over all consumer instances.
    Rebalance,
    /// Each record goes to the instance owning its key group.
    Hash(KeyGroupFn<T>),
}

impl<T> Clone for Partitioning<T> {
    fn clone(&self) -> Self {
        match self {
            Partitioning::Forward => Partitioning::Forward,
            Partitioning::Rebalance => Partitioning::Rebalance,
            Partitioning::Hash(f) => Partitioning::Hash(Arc::clone(f)),
        }
    }
}
