//! The source and sink traits: the boundary between the runtime and connectors.
//!
//! The checkpoint lifecycle a connector sees, all on the task's worker thread
//! and in stream order (hooks must not block: they run between two steps of
//! a task that may share its thread with others):
//!
//! - `SourceReader::snapshot(barrier)` / `SinkWriter::prepare_commit_deferred(barrier)`
//!   in the synchronous part of snapshot `barrier.id`; `barrier.kind` says
//!   whether it is a checkpoint, a savepoint or a stop-with-savepoint. A sink
//!   may hand back a [`DeferredPrepare`]: the slow half of its first commit
//!   phase (an fsync, a producer flush, a `PREPARE TRANSACTION`), which an
//!   upload thread runs before the task acknowledges the snapshot.
//! - `notify_checkpoint_complete(n)` / `SinkWriter::commit(n)` once snapshot n
//!   is complete everywhere and its completion is published (checkpoints and
//!   stop-with-savepoints; never an intermediate savepoint). Notifications
//!   may be skipped (a full inbox) but never come early or out of order in a
//!   way that matters: n subsumes every older snapshot.
//! - `notify_checkpoint_aborted(n)` / `SinkWriter::abort(n)` when snapshot n
//!   failed (declined, timed out, subsumed, its metadata not written). The job
//!   goes on and does not rewind: whatever was prepared for n must be carried
//!   into a later snapshot, never dropped.

use std::time::Instant;

use flowstate_checkpoint::OperatorListState;

use crate::config::SubtaskInfo;
use crate::error::UserError;
use crate::message::{Barrier, Watermark};

/// What a source reader did in one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// Records were appended (possibly none, if the reader made other progress).
    Ready,
    /// Nothing available now; poll again at `wake_at` (or when woken).
    Pending { wake_at: Option<Instant> },
    /// The reader has no more records, ever.
    Finished,
}

/// A parallel source: creates one reader per parallel instance.
pub trait Source<T>: Send + Sync + 'static {
    fn create_reader(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SourceReader<T>>, UserError>;
}

/// One parallel instance of a source.
pub trait SourceReader<T>: Send {
    /// Appends at most `max` records to `out`. Must not block.
    fn poll(&mut self, out: &mut Vec<T>, max: usize, now: Instant)
    -> Result<SourcePoll, UserError>;

    /// The reader's position for snapshot `barrier` (operator state; given
    /// back through `SubtaskInfo::restored` when the reader is created again).
    /// Taken in the same step as the barrier is emitted: nothing read falls
    /// between them.
    fn snapshot(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        Ok(Vec::new())
    }

    /// The reader's position now, in the list state `snapshot` gives (what a
    /// restore hands back), for an at-most-once read-ahead reservation
    /// (`Guarantee::AtMostOnce`): the position after every record polled so
    /// far, durable before any of them is emitted. Taken between polls, at
    /// no barrier, so it must not record anything per snapshot. Default:
    /// `snapshot` with the barrier of checkpoint 0, an id no checkpoint has
    /// (they start at 1); a reader whose `snapshot` has side effects
    /// overrides this. Must not block.
    fn position(&mut self) -> Result<Vec<OperatorListState>, UserError> {
        self.snapshot(Barrier::checkpoint(0))
    }

    /// Snapshot `checkpoint_id` is complete everywhere: a checkpoint, or the
    /// savepoint of a stop-with-savepoint (an intermediate savepoint gets no
    /// notification). Never called before it completed; ids only grow. For
    /// side effects that must not run ahead of a completed checkpoint (e.g.
    /// committing offsets to a broker for monitoring). Must not block.
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }

    /// Snapshot `checkpoint_id` failed; a later one will cover what it would
    /// have. Must not block.
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }

    /// The reader's event time now: no record it emits after this is older
    /// (unless late). Asked after every poll; the task sends it downstream
    /// (behind the records polled) when it grew, and sends
    /// [`Watermark::MAX`] itself once the reader is finished. A reader of
    /// several splits reports the minimum over its splits
    /// ([`crate::watermark::SplitWatermarks`]). Default: none (no event
    /// time; downstream sees only the final `MAX`). Must not block.
    fn watermark(&mut self) -> Option<Watermark> {
        None
    }

    /// The reader has nothing to say about event time for now: every split
    /// it reads has been idle for the strategy's idleness
    /// ([`crate::watermark::SplitWatermarks::is_idle`]). Asked after every
    /// poll that read nothing; the task then sends
    /// [`crate::WatermarkStatus::Idle`] downstream once, so no consumer waits
    /// for this instance's watermark, and `Active` before its next record or
    /// watermark (when this turns false again). Default: never idle. Must
    /// not block.
    fn is_idle(&mut self) -> bool {
        false
    }
}

/// The slow half of a sink's first commit phase, handed back by
/// [`SinkWriter::prepare_commit_deferred`]: it makes what the synchronous half
/// closed durable (fsync a closed file, wait for a producer's deliveries,
/// `PREPARE TRANSACTION`). The runtime runs it on an upload thread, off the
/// task's worker, and acknowledges the snapshot only after it returned `Ok`;
/// an error declines the snapshot. It may block (bounded), but it runs
/// concurrently with the writer's later calls (`write_batch`, the next
/// snapshot, `commit` of an older checkpoint), so whatever it shares with the
/// writer must be synchronised, and the actions of consecutive snapshots may
/// run on different upload threads, in either order or at once: an action
/// must itself wait for what an earlier one must finish first. It may also be
/// dropped without being run (the upload queue was full, the job stopped):
/// the snapshot then fails, and a later action must still cover the work.
pub type DeferredPrepare = Box<dyn FnOnce() -> Result<(), UserError> + Send>;

/// What the synchronous half of a sink's first commit phase hands over.
#[derive(Default)]
pub struct PreparedCommit {
    /// The writer's operator state for the snapshot (pending files,
    /// transaction names), as [`SinkWriter::prepare_commit`] returns it.
    pub state: Vec<OperatorListState>,
    /// Work to run on an upload thread before the acknowledgement.
    pub deferred: Option<DeferredPrepare>,
}

impl PreparedCommit {
    /// Everything was done synchronously: only state.
    pub fn done(state: Vec<OperatorListState>) -> Self {
        Self {
            state,
            deferred: None,
        }
    }
}

impl std::fmt::Debug for PreparedCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedCommit")
            .field("state", &self.state.len())
            .field("deferred", &self.deferred.is_some())
            .finish()
    }
}

/// A parallel sink: creates one writer per parallel instance.
pub trait Sink<T>: Send + Sync + 'static {
    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError>;

    /// Whether output becomes visible when a checkpoint completes
    /// ([`SinkWriter::commit`], exactly-once by two-phase commit). The runtime
    /// then refuses to restore from a checkpoint older than the newest
    /// completed one unless told to accept duplicate output: replaying from it
    /// would publish what the newer one already published.
    fn commits_on_checkpoint(&self) -> bool {
        false
    }
}

/// One parallel instance of a sink.
pub trait SinkWriter<T>: Send {
    /// Writes (and drains) a batch.
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError>;
    /// Called once at the end of a bounded input: make everything written visible.
    fn finish(&mut self) -> Result<(), UserError>;

    /// First phase of a two-phase commit, in the synchronous part of snapshot
    /// `barrier.id`: close what was written since the last barrier and return
    /// it as pending (operator state). Nothing becomes visible yet.
    /// `barrier.kind` tells a checkpoint from a savepoint, whose completion
    /// is not notified unless it is a stop-with-savepoint.
    ///
    /// Does the whole first phase before it returns. The runtime calls
    /// [`SinkWriter::prepare_commit_deferred`] instead, which by default calls
    /// this; a sink whose first phase does I/O overrides that one and
    /// implements this as "prepare, then run the deferred part here" (what a
    /// direct caller, e.g. a test, expects).
    fn prepare_commit(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        Ok(Vec::new())
    }

    /// The first phase of a two-phase commit as the runtime runs it: the
    /// synchronous half, in the synchronous part of snapshot `barrier.id`
    /// (its time is the task's pause, so it must be brief: close the current
    /// file or transaction buffer and return the pending state), and an
    /// optional [`DeferredPrepare`] that makes it durable on an upload thread
    /// before the snapshot is acknowledged. `commit(n)` still runs only after
    /// checkpoint n completed, so after its deferred part succeeded.
    /// Default: [`SinkWriter::prepare_commit`], nothing deferred.
    fn prepare_commit_deferred(&mut self, barrier: Barrier) -> Result<PreparedCommit, UserError> {
        self.prepare_commit(barrier).map(PreparedCommit::done)
    }

    /// Second phase: checkpoint `checkpoint_id` is complete; publish everything
    /// prepared up to it. Must be idempotent.
    fn commit(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }

    /// Snapshot `checkpoint_id` was aborted. The job does not rewind, so what
    /// was prepared for it holds records that will never be replayed (unless
    /// the job fails and restores): keep it pending and publish it with the
    /// next completed checkpoint, which covers it. Rolling it back is only
    /// correct if its records are written again. Must not block.
    fn abort(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }
}
