//! The source and sink traits: the boundary between the runtime and connectors.

use std::time::Instant;

use flowstate_checkpoint::OperatorListState;

use crate::config::SubtaskInfo;
use crate::error::UserError;

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

    /// The reader's position for a checkpoint (operator state; given back through
    /// `SubtaskInfo::restored` when the reader is created again).
    fn snapshot(&mut self) -> Result<Vec<OperatorListState>, UserError> {
        Ok(Vec::new())
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

    /// First phase of a two-phase commit, in the synchronous part of checkpoint
    /// `checkpoint_id`: close what was written since the last checkpoint and return
    /// it as pending (operator state). Nothing becomes visible yet.
    fn prepare_commit(&mut self, _checkpoint_id: u64) -> Result<Vec<OperatorListState>, UserError> {
        Ok(Vec::new())
    }

    /// Second phase: checkpoint `checkpoint_id` is complete; publish everything
    /// prepared up to it. Must be idempotent.
    fn commit(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }
}
