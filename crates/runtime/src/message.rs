//! What travels in a channel: batches of records and in-band control events, in
//! one order. That order is the consistency argument of checkpoint barriers
//! (Chandy–Lamport): no control event may overtake data sent before it.

pub use flowstate_checkpoint::SnapshotKind;

/// Checkpoint barrier `id`: everything before it in a channel belongs to
/// checkpoint `id`, nothing after it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub id: u64,
    pub kind: SnapshotKind,
}

/// One element of a channel.
#[derive(Debug)]
pub enum Message<T> {
    /// A non-empty batch of records.
    Batch(Vec<T>),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The sender will send nothing more.
    EndOfInput,
}
