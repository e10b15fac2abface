//! How the records of an edge are distributed over the consumer's instances:
//! [`Partitioning`] and the key-group function of hash partitioning
//! ([`KeyGroupFn`]).
//!
//! Owns: these two types, which the logical graph stores on its edges and the
//! pipelines' routers apply. Must not touch: graphs, plans or tasks; it sits
//! below all of them so that neither has to import the other for it.

use std::sync::Arc;

use flowstate_state::KeyGroup;

/// Computes the key groups of a batch of records (for hash partitioning):
/// one dynamic call per batch, with the per-record loop compiled around the
/// concrete key function inside it (no dynamic call per record).
pub struct KeyGroupFn<T>(Arc<BatchKeyGroups<T>>);

/// Appends the key group of every record of a batch.
type BatchKeyGroups<T> = dyn Fn(&[T], &mut Vec<KeyGroup>) + Send + Sync;

impl<T> Clone for KeyGroupFn<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: 'static> KeyGroupFn<T> {
    /// The batch form of `key_group`, the key group of one record.
    pub fn new(key_group: impl Fn(&T) -> KeyGroup + Send + Sync + 'static) -> Self {
        Self(Arc::new(move |records: &[T], out: &mut Vec<KeyGroup>| {
            out.extend(records.iter().map(&key_group))
        }))
    }
}

impl<T> KeyGroupFn<T> {
    /// Appends the key group of every record of `records` to `out`, in order.
    #[inline]
    pub fn key_groups(&self, records: &[T], out: &mut Vec<KeyGroup>) {
        (self.0)(records, out)
    }
}

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
            Partitioning::Hash(f) => Partitioning::Hash(f.clone()),
        }
    }
}
