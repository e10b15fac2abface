//! The operator traits: what a chained step of a task does with a batch, and
//! how it takes part in checkpoints.
//!
//! Owns: [`Operator`], [`TwoInputOperator`] and [`StateSnapshot`]. Must not
//! touch: tasks, pipelines or how state is stored.

use flowstate_checkpoint::OperatorListState;
use flowstate_state::BackendSnapshot;

use crate::error::UserError;
use crate::message::{Barrier, Watermark};

/// What one operator instance hands over in the synchronous part of a
/// checkpoint. The keyed part is a frozen view, serialised later on an upload
/// thread; operator lists are small and taken as they are.
#[derive(Default)]
pub struct StateSnapshot {
    pub keyed: Option<BackendSnapshot>,
    pub lists: Vec<OperatorListState>,
}

impl StateSnapshot {
    pub fn is_empty(&self) -> bool {
        self.keyed.is_none() && self.lists.is_empty()
    }
}

/// A one-input operator. It receives whole batches: per-record work happens in a
/// loop the compiler can see, and a call through this trait costs once per batch.
pub trait Operator<I, O>: Send {
    /// Processes `input` (and leaves it empty), appending results to `output`.
    fn process_batch(&mut self, input: &mut Vec<I>, output: &mut Vec<O>) -> Result<(), UserError>;

    /// Called once after the last batch of a bounded input; may emit final records.
    fn finish(&mut self, _output: &mut Vec<O>) -> Result<(), UserError> {
        Ok(())
    }

    /// Event time advanced to `watermark` (the minimum over the task's
    /// inputs): every record before it in the stream has been processed, and
    /// no later one is older (unless late). The operator may emit records
    /// (fired timers, windows) before the watermark travels on downstream,
    /// which the runtime does after this returns. Called only when the
    /// watermark grows; [`Watermark::MAX`] at the end of a bounded input,
    /// before `finish`.
    fn on_watermark(
        &mut self,
        _watermark: Watermark,
        _output: &mut Vec<O>,
    ) -> Result<(), UserError> {
        Ok(())
    }

    /// The synchronous part of the snapshot `barrier` starts (a checkpoint,
    /// or a savepoint, which must be in the canonical format): must be brief.
    fn snapshot(&mut self, _barrier: Barrier) -> Result<StateSnapshot, UserError> {
        Ok(StateSnapshot::default())
    }

    /// Checkpoint `checkpoint_id` is complete everywhere.
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }

    /// Snapshot `checkpoint_id` was aborted (the job goes on; a later
    /// checkpoint covers it). Must not block.
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }
}

/// A two-input operator (the head of a task with two input gates).
pub trait TwoInputOperator<I1, I2, O>: Send {
    fn process_batch1(&mut self, input: &mut Vec<I1>, output: &mut Vec<O>)
    -> Result<(), UserError>;
    fn process_batch2(&mut self, input: &mut Vec<I2>, output: &mut Vec<O>)
    -> Result<(), UserError>;
    fn finish(&mut self, _output: &mut Vec<O>) -> Result<(), UserError> {
        Ok(())
    }
    /// Event time advanced to `watermark`, the minimum over both inputs (see
    /// [`Operator::on_watermark`]).
    fn on_watermark(
        &mut self,
        _watermark: Watermark,
        _output: &mut Vec<O>,
    ) -> Result<(), UserError> {
        Ok(())
    }
    fn snapshot(&mut self, _barrier: Barrier) -> Result<StateSnapshot, UserError> {
        Ok(StateSnapshot::default())
    }
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }
}
