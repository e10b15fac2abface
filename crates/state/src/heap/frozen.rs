//! Key groups shared with a snapshot: the copy-on-write map of a key group
//! ([`CowMap`]), what a snapshot holds of it ([`FrozenGroup`]) and how a group
//! is encoded for a snapshot ([`GroupEncoder`]), by whichever side comes first.
//!
//! Owns: the hand-over between the table's first write after a freeze and the
//! snapshot's writer. Must not touch: tables, TTL cleanup or the backend (the
//! parent module), the snapshot file format (`crate::snapshot`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{GroupMap, PruneFn};
use crate::error::StateError;
use crate::snapshot::encode_entries;
use crate::ttl::{Expiry, Pruned};
use crate::{StateKey, StateValue};

/// A key group's map: owned (writable in place) or frozen (shared with a
/// snapshot's [`FrozenGroup`], read through the `Arc`).
pub(super) enum CowMap<K, S> {
    Owned(GroupMap<K, S>),
    Frozen(Arc<GroupMap<K, S>>, Arc<FrozenGroup<K, S>>),
}

impl<K: StateKey, S: StateValue> CowMap<K, S> {
    #[inline]
    pub(super) fn read(&self) -> &GroupMap<K, S> {
        match self {
            CowMap::Owned(map) => map,
            CowMap::Frozen(map, _) => map,
        }
    }

    #[inline]
    pub(super) fn write(&mut self) -> &mut GroupMap<K, S> {
        if let CowMap::Frozen(..) = self {
            self.thaw();
        }
        match self {
            CowMap::Owned(map) => map,
            CowMap::Frozen(..) => unreachable!("thawed just above"),
        }
    }

    #[cold]
    fn thaw(&mut self) {
        if let CowMap::Frozen(map, group) =
            std::mem::replace(self, CowMap::Owned(GroupMap::default()))
        {
            let map = match Arc::try_unwrap(map) {
                // The snapshot is done with it.
                Ok(map) => map,
                Err(map) => group.hand_over(map),
            };
            *self = CowMap::Owned(map);
        }
    }

    pub(super) fn freeze(&mut self, encoder: &Arc<GroupEncoder<S>>) -> Arc<FrozenGroup<K, S>> {
        let map = match std::mem::replace(self, CowMap::Owned(GroupMap::default())) {
            CowMap::Owned(map) => Arc::new(map),
            // Not written since an earlier snapshot, which may still hold it:
            // this snapshot gets a group of its own over the same map.
            CowMap::Frozen(map, _) => map,
        };
        let group = Arc::new(FrozenGroup {
            state: Mutex::new(Frozen::Map(Arc::clone(&map))),
            encoder: Arc::clone(encoder),
        });
        *self = CowMap::Frozen(map, Arc::clone(&group));
        group
    }
}

/// One key group as a snapshot holds it: the frozen map until someone
/// serialises it, then the section's bytes (the snapshot may be written more
/// than once, so what it holds stays until it is dropped).
pub struct FrozenGroup<K, S> {
    state: Mutex<Frozen<K, S>>,
    encoder: Arc<GroupEncoder<S>>,
}

enum Frozen<K, S> {
    Map(Arc<GroupMap<K, S>>),
    Encoded { bytes: Vec<u8>, entries: u64 },
}

impl<K: StateKey, S: StateValue> FrozenGroup<K, S> {
    /// The table's first write to the group since the snapshot, while the
    /// snapshot still holds it: serialises the group for the snapshot (if
    /// its writer has not begun to) and takes the map back, copying it only
    /// if the writer is reading it right now (or an older snapshot still
    /// holds it).
    fn hand_over(&self, map: Arc<GroupMap<K, S>>) -> GroupMap<K, S> {
        // Poisoned: every change below is one assignment, the state is whole.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let encoded = match &*state {
            Frozen::Map(held) if Arc::ptr_eq(held, &map) => {
                // Sized from the last group's bytes per entry: one allocation,
                // not a doubling series, per group.
                let per_entry = self.encoder.bytes_per_entry.load(Ordering::Relaxed);
                let mut bytes = Vec::with_capacity(8 + held.len().saturating_mul(per_entry));
                // An encoding error is left to the writer, which fails the
                // snapshot naming it; the table then copies the group.
                self.encoder
                    .encode(held, &mut bytes)
                    .ok()
                    .map(|entries| Frozen::Encoded { bytes, entries })
            }
            _ => None,
        };
        if let Some(encoded) = encoded {
            *state = encoded;
        }
        drop(state);
        Arc::unwrap_or_clone(map)
    }

    /// Appends the group's section payload to `out`; returns its entries.
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<u64, StateError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            Frozen::Encoded { bytes, entries } => {
                out.extend_from_slice(bytes);
                Ok(*entries)
            }
            Frozen::Map(map) => {
                // Encoded outside the lock: the table's write to this group
                // meanwhile copies it instead of waiting.
                let map = Arc::clone(map);
                drop(state);
                self.encoder.encode(&map, out)
            }
        }
    }
}

/// How a snapshot encodes a key group of one state: the state's name (for
/// errors) and, for a TTL'd state with snapshot cleanup, the expiry as of
/// the freeze.
pub(super) struct GroupEncoder<S> {
    name: String,
    prune: Option<(Expiry, PruneFn<S>)>,
    /// Bytes per entry of the last group encoded (a sizing hint).
    bytes_per_entry: AtomicUsize,
}

impl<S> GroupEncoder<S> {
    pub(super) fn new(name: String, prune: Option<(Expiry, PruneFn<S>)>) -> Self {
        Self {
            name,
            prune,
            bytes_per_entry: AtomicUsize::new(0),
        }
    }
}

impl<S: StateValue> GroupEncoder<S> {
    fn encode<K: StateKey>(
        &self,
        map: &GroupMap<K, S>,
        out: &mut Vec<u8>,
    ) -> Result<u64, StateError> {
        let Some((expiry, prune)) = self.prune else {
            let start = out.len();
            encode_entries(&self.name, map.iter(), out)?;
            if let Some(per_entry) = (out.len() - start - 8).checked_div(map.len()) {
                self.bytes_per_entry.store(per_entry, Ordering::Relaxed);
            }
            return Ok(map.len() as u64);
        };
        // Expired entries stay out of the snapshot.
        let codec_error = |e: crate::codec::CodecError| StateError::Codec {
            state: self.name.clone(),
            action: "encode",
            reason: e.to_string(),
        };
        let count_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        let mut count = 0u64;
        for (key, value) in map.iter() {
            let pruned = prune(value, expiry);
            let value = match &pruned {
                Pruned::Keep => value,
                Pruned::Drop => continue,
                Pruned::Replace(pruned) => pruned,
            };
            crate::codec::encode_into(key, out).map_err(codec_error)?;
            crate::codec::encode_into(value, out).map_err(codec_error)?;
            count += 1;
        }
        out[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        Ok(count)
    }
}
