//! What travels in a channel: batches of records and in-band control events, in
//! one order. That order is the consistency argument of checkpoint barriers
//! (Chandy–Lamport): no control event may overtake data sent before it.
//!
//! Watermarks travel the same way: between batches, never ahead of the data
//! sent before them, and so does the sender's [`WatermarkStatus`] (idle or
//! active), which says whether its watermark is to be waited for.
//!
//! Owns: [`Message`], [`Barrier`] with its kind, [`Watermark`] and
//! [`WatermarkStatus`]. Must not touch: channels, tasks or the coordinator.

pub use flowstate_checkpoint::{BarrierAlignment, SnapshotKind};

/// What a barrier's snapshot is for. It travels in band with the barrier, so
/// every operator and sink it passes learns it in the synchronous part
/// (`Operator::snapshot`, `SourceReader::snapshot`, `SinkWriter::prepare_commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BarrierKind {
    /// A periodic (or final) checkpoint: a recovery point; its completion is
    /// notified and sinks publish what they prepared for it.
    Checkpoint,
    /// An intermediate savepoint: canonical state in its own directory; the job
    /// goes on, and its completion is *not* notified (recovery goes back to
    /// checkpoints, so its side effects wait for the next checkpoint).
    Savepoint,
    /// The savepoint of a stop-with-savepoint: the sources emit nothing after
    /// it, and its completion is notified (sinks publish) before the job ends.
    StopWithSavepoint,
    /// The checkpoint of a stop-with-checkpoint (a graceful shutdown): an
    /// ordinary checkpoint in the checkpoint storage, but the sources emit
    /// nothing after it; its completion is notified (sinks publish) before
    /// the job ends.
    StopWithCheckpoint,
}

impl BarrierKind {
    /// The kind of snapshot (metadata, file layout) the barrier produces.
    pub fn snapshot_kind(self) -> SnapshotKind {
        match self {
            BarrierKind::Checkpoint | BarrierKind::StopWithCheckpoint => SnapshotKind::Checkpoint,
            BarrierKind::Savepoint | BarrierKind::StopWithSavepoint => SnapshotKind::Savepoint,
        }
    }

    /// A savepoint's barrier (state must be in the canonical format).
    pub fn is_savepoint(self) -> bool {
        self.snapshot_kind() == SnapshotKind::Savepoint
    }

    /// A barrier after which the sources emit nothing (the job ends).
    pub fn is_stop(self) -> bool {
        matches!(
            self,
            BarrierKind::StopWithSavepoint | BarrierKind::StopWithCheckpoint
        )
    }
}

impl From<SnapshotKind> for BarrierKind {
    /// A coordinator's snapshot kind; a stop-with-savepoint is made one by the
    /// source that suspends after it (`TaskCommand::TriggerAndSuspend`).
    fn from(kind: SnapshotKind) -> Self {
        match kind {
            SnapshotKind::Checkpoint => BarrierKind::Checkpoint,
            SnapshotKind::Savepoint => BarrierKind::Savepoint,
        }
    }
}

/// Checkpoint barrier `id`: everything before it in a channel belongs to
/// checkpoint `id`, nothing after it does. Also what the snapshot hooks are
/// given: the id and what the snapshot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Barrier {
    pub id: u64,
    pub kind: BarrierKind,
    /// How the barriers of this checkpoint meet at a task with several
    /// input channels (the coordinator's decision; see `crate::alignment`).
    #[serde(default)]
    pub alignment: BarrierAlignment,
}

impl Barrier {
    /// The barrier of checkpoint `id`.
    pub fn checkpoint(id: u64) -> Self {
        Self {
            id,
            kind: BarrierKind::Checkpoint,
            alignment: BarrierAlignment::Aligned,
        }
    }

    /// This barrier, aligned as `alignment` says.
    pub fn with_alignment(self, alignment: BarrierAlignment) -> Self {
        Self { alignment, ..self }
    }

    /// The barrier of an intermediate savepoint `id`.
    pub fn savepoint(id: u64) -> Self {
        Self {
            id,
            kind: BarrierKind::Savepoint,
            alignment: BarrierAlignment::Aligned,
        }
    }
}

/// Event time: everything with a timestamp at or before `self` has been seen
/// (milliseconds since the Unix epoch, like record timestamps). Watermarks
/// only grow along a channel; a task's watermark is the minimum over its input
/// channels. [`Watermark::MAX`] ends event time (end of a bounded input):
/// every pending event-time timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark(pub i64);

impl Watermark {
    /// Nothing seen yet.
    pub const MIN: Watermark = Watermark(i64::MIN);
    /// The end of event time.
    pub const MAX: Watermark = Watermark(i64::MAX);

    pub fn millis(self) -> i64 {
        self.0
    }
}

/// Whether a sender's watermark is to be waited for (Flink's
/// `WatermarkStatus`). A channel is active until its sender says it is idle;
/// an idle channel does not hold the receiver's watermark back until its
/// sender says it is active again. Only this message changes it (a sender
/// says `Active` before its first record or watermark after an `Idle`):
/// an idle task may still emit records (fired processing-time timers), and
/// an assigner behind it watermarks made from them, while its inputs have
/// nothing to say about event time; had they made the channel active, the
/// task would never say `Idle` again and hold its consumers back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatermarkStatus {
    /// The sender has nothing to say for now (every split of a source idle,
    /// every input of a task idle): do not wait for its watermark.
    Idle,
    /// The sender's watermark counts again (sent before the first record or
    /// watermark after an `Idle`).
    Active,
}

/// One element of a channel.
#[derive(Debug)]
pub enum Message<T> {
    /// A non-empty batch of records.
    Batch(Vec<T>),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// Event time of the sender advanced: no record after it in this
    /// channel is older (unless late). Watermarks only grow along a channel.
    Watermark(Watermark),
    /// The sender became idle or active again (see [`WatermarkStatus`]).
    /// Not checkpointed: barriers and alignment are the same whatever the
    /// status.
    WatermarkStatus(WatermarkStatus),
    /// The sender will send nothing more.
    EndOfInput,
}
