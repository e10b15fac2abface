//! What travels in a channel: batches of records and in-band control events, in
//! one order. That order is the consistency argument of checkpoint barriers, so no
//! control event may overtake data sent before it.

/// One element of a channel.
#[derive(Debug)]
pub enum Message<T> {
    /// A non-empty batch of records.
    Batch(Vec<T>),
    /// The sender will send nothing more.
    EndOfInput,
}
