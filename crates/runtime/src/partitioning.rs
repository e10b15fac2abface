//! How the records of an edge are distributed over the consumer's instances:
//! [`Partitioning`] and the key-group function of hash partitioning
//! ([`KeyGroupFn`]).
//!
//! Owns: these two types, which the logical graph stores on its edges and the
//! pipelines' routers apply. An exchange edge (hash or rebalance) also carries
//! the [`WireCodec`] of its record type: its channels may cross processes. Must not touch: graphs, plans or tasks; it sits
//! below all of them so that neither has to import the other for it.

use std::sync::Arc;

use flowstate_state::KeyGroup;

use crate::wire::{Wire, WireCodec};

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
/// Forward edges never leave a process (a pipeline instance runs in one);
/// the others carry their records' codec, for the channels that do.
pub enum Partitioning<T> {
    /// Instance `i` feeds instance `i` (chained when possible).
    Forward,
    /// Whole batches round-robin over all consumer instances.
    Rebalance(WireCodec<T>),
    /// Each record goes to the instance owning its key group.
    Hash(KeyGroupFn<T>, WireCodec<T>),
}

impl<T: Wire> Partitioning<T> {
    /// Whole batches round-robin over all consumer instances.
    pub fn rebalance() -> Self {
        Partitioning::Rebalance(WireCodec::new())
    }

    /// Each record to the instance owning its key group, given by `key_group`.
    pub fn hash(key_group: KeyGroupFn<T>) -> Self {
        Partitioning::Hash(key_group, WireCodec::new())
    }
}

impl<T> Partitioning<T> {
    /// The codec of the edge's records: `None` for a forward edge.
    pub fn wire(&self) -> Option<WireCodec<T>> {
        match self {
            Partitioning::Forward => None,
            Partitioning::Rebalance(wire) | Partitioning::Hash(_, wire) => Some(*wire),
        }
    }
}

impl<T> Clone for Partitioning<T> {
    fn clone(&self) -> Self {
        match self {
            Partitioning::Forward => Partitioning::Forward,
            Partitioning::Rebalance(wire) => Partitioning::Rebalance(*wire),
            Partitioning::Hash(f, wire) => Partitioning::Hash(f.clone(), *wire),
        }
    }
}
