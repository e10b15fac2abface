//! At-most-once read-ahead reservations (`Guarantee::AtMostOnce`): the
//! runtime's half of [`flowstate_checkpoint::reservation`].
//!
//! A source task in at-most-once mode polls ahead of what it emits, asks for
//! the reader's position after the records it holds to be made durable
//! ([`ReadAheadHandle::submit`]), and emits them only once the writer thread
//! acknowledged that write ([`ReadAheadHandle::durable`]; the task's worker
//! is woken). One write per subtask is in flight at a time; what the task
//! reads meanwhile goes into the next one (group commit). A restart resumes
//! every source from its newest reservation: what was emitted is never
//! emitted again.
//!
//! Per attempt ([`AttemptReservations`]): before the plan is built, the
//! positions of the job's newest epoch are read (when the attempt resumes
//! the job's own state: a restart, or `--restore latest`); the plan deals
//! them to the source instances instead of the checkpoint's positions and
//! registers every source instance, with its reader's initial position; then
//! [`AttemptReservations::begin`] writes those initial positions as the new
//! epoch's reservations and its marker, deletes older epochs, and starts the
//! writer thread, all before any task runs. Storage I/O happens on the
//! supervisor (`begin`) and the writer thread only, never on a worker.
//!
//! In the other modes a job with periodic checkpoints deletes what an
//! earlier at-most-once run of it left ([`clear`]), before any task runs:
//! its positions would be older than the checkpoints that run takes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use flowstate_checkpoint::reservation::{
    EpochMarker, Reservation, ReservedPositions, epoch_dir, list_epochs, load_newest,
    reservations_dir, write_marker, write_reservation,
};
use flowstate_checkpoint::storage::SharedStorage;
use flowstate_checkpoint::{CheckpointError, OperatorListState};

use crate::channel::Signal;
use crate::error::JobError;

/// What one source subtask's task and the writer share.
#[derive(Debug, Default)]
struct Progress {
    /// The newest seq written durably (0: none yet).
    durable: AtomicU64,
    /// Why a write failed: the task fails with it.
    failure: Mutex<Option<String>>,
}

struct Slot {
    uid: String,
    subtask: u32,
    /// The reader's position when it was created: the epoch's first
    /// reservation of this subtask.
    initial: Option<Vec<OperatorListState>>,
    /// The newest reservation asked for and not yet taken by the writer.
    pending: Option<(u64, Vec<OperatorListState>)>,
    progress: Arc<Progress>,
    signal: Arc<Signal>,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    stopped: bool,
}

/// The reservations of one attempt: the writer's state and the positions
/// this attempt starts from.
pub(crate) struct AttemptReservations {
    storage: SharedStorage,
    job_id: String,
    epoch: u64,
    parallelism: u32,
    restored_checkpoint: Option<u64>,
    /// Epochs found in storage when the attempt started: deleted once the
    /// new one is marked.
    older: Vec<u64>,
    /// The positions of the newest epoch, if the attempt resumes from it.
    positions: Option<ReservedPositions>,
    slots: Mutex<Slots>,
    changed: Condvar,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// A source task's end: asks for reservations and sees them acknowledged.
#[derive(Clone)]
pub struct ReadAheadHandle {
    owner: Arc<AttemptReservations>,
    slot: usize,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for ReadAheadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAheadHandle")
            .field("slot", &self.slot)
            .finish()
    }
}

impl ReadAheadHandle {
    /// The reader's position before it read anything (at creation).
    pub(crate) fn set_initial(&self, lists: Vec<OperatorListState>) {
        let mut slots = self.owner.lock();
        slots.slots[self.slot].initial = Some(lists);
    }

    /// Asks for reservation `seq` (greater than every earlier one) to be
    /// written; [`ReadAheadHandle::durable`] reaches `seq` once it is.
    pub(crate) fn submit(&self, seq: u64, lists: Vec<OperatorListState>) {
        let mut slots = self.owner.lock();
        slots.slots[self.slot].pending = Some((seq, lists));
        drop(slots);
        self.owner.changed.notify_one();
    }

    /// The newest reservation written durably.
    #[inline]
    pub(crate) fn durable(&self) -> u64 {
        self.progress.durable.load(Ordering::Acquire)
    }

    /// Why a reservation could not be written, if one could not.
    pub(crate) fn failure(&self) -> Option<String> {
        self.progress
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl AttemptReservations {
    /// Prepares an attempt: reads the newest epoch's positions if `resume`
    /// (the attempt continues the job's own state), and picks the new
    /// epoch's number (after every epoch found).
    pub(crate) fn prepare(
        storage: SharedStorage,
        job_id: &str,
        parallelism: u32,
        restored_checkpoint: Option<u64>,
        resume: bool,
    ) -> Result<Arc<Self>, JobError> {
        let epochs = list_epochs(storage.as_ref(), job_id)?;
        let positions = if resume {
            load_newest(storage.as_ref(), job_id)?
        } else {
            None
        };
        if let Some(p) = &positions {
            tracing::info!(
                epoch = p.epoch,
                "at-most-once: the sources resume from the read-ahead reservations of epoch {} \
                 (written at parallelism {}), not from the checkpoint's positions",
                p.epoch,
                p.parallelism
            );
        }
        let epoch = epochs.keys().next_back().map_or(1, |e| e + 1);
        Ok(Arc::new(Self {
            storage,
            job_id: job_id.to_owned(),
            epoch,
            parallelism,
            restored_checkpoint,
            older: epochs.keys().copied().collect(),
            positions,
            slots: Mutex::new(Slots::default()),
            changed: Condvar::new(),
            writer: Mutex::new(None),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reserved lists of source `uid` for instance `index`, if the
    /// attempt resumes from an epoch that has this source.
    pub(crate) fn operator_lists(&self, uid: &str, index: u32) -> Option<Vec<OperatorListState>> {
        self.positions
            .as_ref()?
            .operator_lists(uid, index, self.parallelism)
    }

    /// Registers source instance `subtask` of `uid` (while the plan is built).
    pub(crate) fn register(
        self: &Arc<Self>,
        uid: &str,
        subtask: u32,
        signal: Arc<Signal>,
    ) -> ReadAheadHandle {
        let progress = Arc::new(Progress::default());
        let mut slots = self.lock();
        slots.slots.push(Slot {
            uid: uid.to_owned(),
            subtask,
            initial: None,
            pending: None,
            progress: Arc::clone(&progress),
            signal,
        });
        ReadAheadHandle {
            owner: Arc::clone(self),
            slot: slots.slots.len() - 1,
            progress,
        }
    }

    /// Writes the new epoch (every source instance's initial position, then
    /// the marker), deletes the older epochs and starts the writer thread.
    /// On the supervisor, before any task runs: an error fails the attempt.
    pub(crate) fn begin(self: &Arc<Self>) -> Result<(), JobError> {
        let initial: Vec<Reservation> = {
            let slots = self.lock();
            slots
                .slots
                .iter()
                .map(|s| Reservation {
                    job: self.job_id.clone(),
                    epoch: self.epoch,
                    uid: s.uid.clone(),
                    subtask: s.subtask,
                    parallelism: self.parallelism,
                    seq: 0,
                    lists: s.initial.clone().unwrap_or_default(),
                })
                .collect()
        };
        let mut sources: Vec<String> = Vec::new();
        for r in &initial {
            if r.lists.is_empty() && r.subtask == 0 {
                tracing::warn!(
                    "at-most-once: source '{}' records no position; after a failure it starts \
                     again from its beginning, which at-most-once cannot prevent",
                    r.uid
                );
            }
            write_reservation(self.storage.as_ref(), r)?;
            if !sources.contains(&r.uid) {
                sources.push(r.uid.clone());
            }
        }
        let marker = EpochMarker {
            job: self.job_id.clone(),
            epoch: self.epoch,
            parallelism: self.parallelism,
            sources,
            restored_checkpoint: self.restored_checkpoint,
            created_unix_ms: flowstate_checkpoint::coordinator::unix_ms_now(),
        };
        write_marker(self.storage.as_ref(), &marker)?;
        // The new epoch is the truth now; the older ones are only garbage.
        for old in &self.older {
            if let Err(e) = self.storage.delete_prefix(&epoch_dir(&self.job_id, *old)) {
                tracing::warn!(
                    "at-most-once: cannot delete the reservations of epoch {old} of job {}: {e}",
                    self.job_id
                );
            }
        }
        let owner = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("flowstate-reservations".into())
            .spawn(move || owner.write_loop())
            .map_err(JobError::Spawn)?;
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// The writer thread: takes the newest pending reservation of any
    /// subtask, writes it, acknowledges it and wakes the task's worker.
    fn write_loop(&self) {
        let mut next = 0usize;
        loop {
            let (index, uid, subtask, seq, lists, progress, signal) = {
                let mut slots = self.lock();
                loop {
                    if slots.stopped {
                        return;
                    }
                    let n = slots.slots.len();
                    // Round-robin from the last one written: none starves.
                    let found = (0..n)
                        .map(|k| (next + k) % n.max(1))
                        .find(|&i| slots.slots[i].pending.is_some());
                    if let Some(i) = found {
                        let slot = &mut slots.slots[i];
                        let (seq, lists) = slot.pending.take().unwrap_or_default();
                        break (
                            i,
                            slot.uid.clone(),
                            slot.subtask,
                            seq,
                            lists,
                            Arc::clone(&slot.progress),
                            Arc::clone(&slot.signal),
                        );
                    }
                    slots = self.changed.wait(slots).unwrap_or_else(|e| e.into_inner());
                }
            };
            next = index + 1;
            let reservation = Reservation {
                job: self.job_id.clone(),
                epoch: self.epoch,
                uid,
                subtask,
                parallelism: self.parallelism,
                seq,
                lists,
            };
            match write_reservation(self.storage.as_ref(), &reservation) {
                Ok(()) => progress.durable.store(seq, Ordering::Release),
                Err(e) => {
                    *progress.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(e.to_string());
                }
            }
            signal.wake();
        }
    }

    /// Stops the writer thread when dropped (see [`AttemptReservations::stop`]).
    pub(crate) fn stop_guard(self: &Arc<Self>) -> StopWriter {
        StopWriter(Arc::clone(self))
    }

    /// Stops the writer thread (at the end of the attempt; what is pending
    /// is dropped: its records were never emitted).
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Stops the writer of an attempt's reservations when dropped.
pub(crate) struct StopWriter(Arc<AttemptReservations>);

impl Drop for StopWriter {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Deletes every reservation of `job_id`: a run in another mode takes over
/// the job, and its checkpoints will be newer than those positions. Before
/// any task runs; an error fails the attempt (stale positions left behind
/// would make a later at-most-once run emit records again).
pub(crate) fn clear(storage: &SharedStorage, job_id: &str) -> Result<(), JobError> {
    let dir = reservations_dir(job_id);
    if storage
        .list(&dir)
        .map_err(CheckpointError::from)?
        .is_empty()
    {
        return Ok(());
    }
    tracing::info!(
        "job {job_id} continues in a mode other than at-most-once: deleting its read-ahead \
         reservations"
    );
    storage.delete_prefix(&dir).map_err(CheckpointError::from)?;
    Ok(())
}
