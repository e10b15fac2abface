//! Key groups shared with a snapshot: the copy-on-write map of a key group
//! ([`CowMap`]), what a snapshot holds of it ([`FrozenGroup`]) and how a group
//! is encoded for a snapshot ([`GroupEncoder`]), by whichever side comes first.
//!
//! Owns: the hand-over between the table's first write after a freeze and the
//! snapshot's writer, and the budget on the bytes a snapshot holds encoded
//! that its writer has not taken yet ([`Pending`]). Must not touch: tables,
//! TTL cleanup or the backend (the parent module), the snapshot file format
//! (`crate::snapshot`).
//!
//! The budget: a table's first write to a key group still held by a snapshot
//! encodes the group for the snapshot. Left alone, a workload that touches
//! every group right after the freeze (keyed-count does, within milliseconds)
//! encodes the whole snapshot while the writer is still at its first groups,
//! and the bytes wait in memory: the size of the snapshot on top of the state
//! (+40% RSS at 10M keys). So a view counts the encoded bytes its writer has
//! not taken, and while they exceed its budget and a writer is taking the
//! view's groups (between [`Pending::begin_write`] and
//! [`Pending::end_write`]), the table's hand-over waits for the writer to take
//! some, or this very group. It cannot deadlock: the waiter holds no lock the
//! writer needs, a writer never waits for a table, and with no writer at work
//! (not started, finished, failed, or the single thread that writes is the
//! one that would wait) nothing waits: the group is encoded over budget, as
//! before. Waiting costs no CPU: the waiting thread's core goes to the
//! writer, which encodes the groups it reaches itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

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
            taken: AtomicBool::new(false),
            taking: AtomicBool::new(false),
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
    /// Set once the writer has taken the group ([`FrozenGroup::take`]): a
    /// hand-over waiting for room stops waiting, there is nothing to encode.
    taken: AtomicBool,
    /// Set while the writer takes the group: a hand-over then waits for it
    /// (one group's encoding) rather than encode it too and copy the map.
    taking: AtomicBool,
    encoder: Arc<GroupEncoder<S>>,
}

enum Frozen<K, S> {
    Map(Arc<GroupMap<K, S>>),
    Encoded {
        bytes: Vec<u8>,
        entries: u64,
    },
    /// Written by a writer that will not write it again: nothing held.
    Taken,
}

impl<K: StateKey, S: StateValue> FrozenGroup<K, S> {
    /// The table's first write to the group since the snapshot, while the
    /// snapshot still holds it: serialises the group for the snapshot (if
    /// its writer has not begun to) and takes the map back, copying it only
    /// if the writer is reading it right now (or an older snapshot still
    /// holds it).
    fn hand_over(&self, map: Arc<GroupMap<K, S>>) -> GroupMap<K, S> {
        if self.needs(&map) {
            // The writer taking this very group, or over budget with a
            // writer at work: wait until it has taken this group (then there
            // is nothing to encode and the map comes back uncopied) or, over
            // budget, enough others.
            let taking = self.taking.load(Ordering::Acquire);
            self.encoder.pending.wait_for_room(&self.taken, taking);
        }
        // Poisoned: every change below is one assignment, the state is whole.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let encoded = match &*state {
            Frozen::Map(held) if Arc::ptr_eq(held, &map) => {
                // Sized from the last group's bytes per entry: one allocation,
                // not a doubling series, per group.
                let per_entry = self.encoder.bytes_per_entry.load(Ordering::Relaxed);
                let mut bytes = self
                    .encoder
                    .pool
                    .get(8 + held.len().saturating_mul(per_entry));
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
            if let Frozen::Encoded { bytes, .. } = &encoded {
                self.encoder.pending.add(bytes.capacity());
            }
            *state = encoded;
        }
        drop(state);
        Arc::unwrap_or_clone(map)
    }

    /// Whether the snapshot still holds `map` itself (not yet encoded or taken).
    fn needs(&self, map: &Arc<GroupMap<K, S>>) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        matches!(&*state, Frozen::Map(held) if Arc::ptr_eq(held, map))
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
            Frozen::Taken => Err(taken_twice(&self.encoder.name)),
        }
    }

    /// Appends the group's section payload to `out` like [`Self::write`],
    /// then lets go of what the snapshot holds of the group (its bytes, or
    /// its map, which the table then takes back without copying): the
    /// writer's way, which writes each group once. Writing the group again
    /// is an error.
    pub(super) fn take(&self, out: &mut Vec<u8>) -> Result<u64, StateError> {
        self.taking.store(true, Ordering::Release);
        let written = self.write(out);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let held = std::mem::replace(&mut *state, Frozen::Taken);
        self.taken.store(true, Ordering::Release);
        drop(state);
        let released = match held {
            Frozen::Encoded { bytes, .. } => {
                let released = bytes.capacity();
                self.encoder.pool.put(bytes);
                released
            }
            // Let go of the map before waking a hand-over waiting over this
            // group: it then takes the map back without copying.
            held => {
                drop(held);
                0
            }
        };
        self.encoder.pending.sub(released);
        written
    }
}

fn taken_twice(state: &str) -> StateError {
    StateError::Unsupported(format!(
        "a key group of state '{state}' was written again after the snapshot's writer took it"
    ))
}

/// The encoded bytes of one snapshot (one table's view) that its writer has
/// not taken yet, against a budget, and whether a writer is at work.
pub(super) struct Pending {
    budget: usize,
    state: Mutex<PendingState>,
    room: Condvar,
}

#[derive(Default)]
struct PendingState {
    bytes: usize,
    /// The most `bytes` ever held (tests and the memory claim).
    peak: usize,
    /// Writers between `begin_write` and `end_write`.
    writers: usize,
    /// Hand-overs waiting for room (tests).
    waiting: usize,
}

impl Pending {
    pub(super) fn new(budget: usize) -> Self {
        Self {
            budget,
            state: Mutex::new(PendingState::default()),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        // Poisoned: every change is one assignment, the state is whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn begin_write(&self) {
        self.lock().writers += 1;
    }

    pub(super) fn end_write(&self) {
        let mut state = self.lock();
        state.writers = state.writers.saturating_sub(1);
        drop(state);
        self.room.notify_all();
    }

    fn add(&self, bytes: usize) {
        let mut state = self.lock();
        state.bytes += bytes;
        state.peak = state.peak.max(state.bytes);
    }

    /// Also wakes the waiters of a group just taken: a waiter checks `taken`
    /// with the lock held, so it either sees it set or is waiting when this
    /// notifies.
    fn sub(&self, bytes: usize) {
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
        drop(state);
        self.room.notify_all();
    }

    /// Returns once `taken` is set, no writer is at work, or (unless
    /// `until_taken`: the writer is taking the group, and sets `taken` when
    /// done) the bytes held are under the budget. A writer that fails or
    /// unwinds ends its work (`SnapshotWriter`'s drop), so nothing waits
    /// for a group it will never take.
    fn wait_for_room(&self, taken: &AtomicBool, until_taken: bool) {
        let mut state = self.lock();
        while state.writers > 0
            && (until_taken || state.bytes >= self.budget)
            && !taken.load(Ordering::Acquire)
        {
            state.waiting += 1;
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
            state.waiting -= 1;
        }
    }

    /// (bytes held now, most ever held, budget).
    pub(super) fn figures(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.bytes, state.peak, self.budget)
    }

    /// Hand-overs waiting for room now.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.lock().waiting
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
    /// The view's encoded bytes not taken yet, against its budget.
    pub(super) pending: Pending,
    /// The table's buffers for encoded groups (they outlive the view).
    pool: Arc<BufferPool>,
}

impl<S> GroupEncoder<S> {
    pub(super) fn new(
        name: String,
        prune: Option<(Expiry, PruneFn<S>)>,
        pending_budget: usize,
        pool: Arc<BufferPool>,
    ) -> Self {
        Self {
            name,
            prune,
            bytes_per_entry: AtomicUsize::new(0),
            pending: Pending::new(pending_budget),
            pool,
        }
    }
}

/// A table's buffers of encoded groups that writers have taken, for the
/// next hand-overs: a checkpoint's encoded bytes go into the last one's
/// buffers instead of fresh allocations. Fresh ones cost a page fault and
/// the kernel's zeroing per page, and freed ones (by the writer's thread)
/// were kept by the allocator for a while: at 10M keys, +55 MB of peak RSS
/// (bench/RESULTS.md). Holds at most its limit (the pending budget), so a
/// checkpoint's buffers, pooled or held, stay within the budget plus one
/// group: a hand-over allocates only when the pool is empty.
#[derive(Default)]
pub(super) struct BufferPool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    limit: usize,
}

impl BufferPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // Poisoned: every change leaves the state whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps at most `limit` bytes from now on.
    pub(super) fn set_limit(&self, limit: usize) {
        let mut state = self.lock();
        state.limit = limit;
        while state.bytes > limit {
            let Some(buffer) = state.buffers.pop() else {
                break;
            };
            state.bytes -= buffer.capacity();
        }
    }

    /// An empty buffer for about `capacity` bytes: a pooled one that holds
    /// them if there is one, else the last pooled one or a new one sized with
    /// 1/16 to spare (groups differ a little in size, and a buffer short of a
    /// few bytes would double while encoding).
    fn get(&self, capacity: usize) -> Vec<u8> {
        let capacity = capacity.saturating_add(capacity / 16);
        let buffer = {
            let mut state = self.lock();
            let fits = state.buffers.iter().position(|b| b.capacity() >= capacity);
            let buffer = match fits {
                Some(at) => Some(state.buffers.swap_remove(at)),
                None => state.buffers.pop(),
            };
            if let Some(buffer) = &buffer {
                state.bytes -= buffer.capacity();
            }
            buffer
        };
        match buffer {
            Some(mut buffer) => {
                buffer.reserve_exact(capacity);
                buffer
            }
            None => Vec::with_capacity(capacity),
        }
    }

    fn put(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut state = self.lock();
        if state.bytes + buffer.capacity() <= state.limit {
            state.bytes += buffer.capacity();
            state.buffers.push(buffer);
        }
    }

    /// Bytes pooled now.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.lock().bytes
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
