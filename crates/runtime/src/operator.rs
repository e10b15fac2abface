//! The operator traits: what a chained step of a task does with a batch, and
//! how it takes part in checkpoints.
//!
//! Owns: [`Operator`], [`TwoInputOperator`], [`StateSnapshot`] and the
//! buffers of an operator's side outputs ([`SideOutputs`]). Must not touch:
//! tasks, pipelines or how state is stored.

use std::any::{Any, type_name};
use std::sync::Arc;

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

/// The side outputs of one operator instance: a buffer of records per side
/// output that something downstream consumes (a *port* of the operator other
/// than its main output). The operator owns it and emits into it by name
/// ([`SideOutputs::emit`]); the runtime declares the consumed ports when it
/// builds the task ([`Operator::side_outputs`]) and takes the buffers' records
/// once per call that may emit (a batch, a watermark, the end of input). A
/// record for a side output that nothing consumes is dropped: it has no buffer.
#[derive(Default)]
pub struct SideOutputs {
    ports: Vec<SideBuffer>,
}

struct SideBuffer {
    name: Arc<str>,
    /// A `Vec<T>` of the port's record type.
    records: Box<dyn Any + Send>,
}

impl SideOutputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a consumed side output; `records` is an empty `Vec<T>` of its
    /// record type. Its index is the number of ports declared before it.
    pub(crate) fn declare(&mut self, name: &str, records: Box<dyn Any + Send>) {
        self.ports.push(SideBuffer {
            name: name.into(),
            records,
        });
    }

    /// Whether no side output is consumed (every `emit` drops its record).
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Emits `value` to the side output `name`; dropped if nothing consumes
    /// it. An error if the consumed side output of that name carries another
    /// type.
    #[inline]
    pub fn emit<T: 'static>(&mut self, name: &str, value: T) -> Result<(), UserError> {
        let Some(port) = self.ports.iter_mut().find(|p| &*p.name == name) else {
            return Ok(());
        };
        match port.records.downcast_mut::<Vec<T>>() {
            Some(records) => {
                records.push(value);
                Ok(())
            }
            None => Err(format!(
                "side output '{name}' does not carry records of type {}",
                type_name::<T>()
            )
            .into()),
        }
    }

    /// The buffer of the `index`th declared port (a `Vec<T>`).
    pub(crate) fn records(&mut self, index: usize) -> &mut (dyn Any + Send) {
        self.ports[index].records.as_mut()
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

    /// The earliest processing time (the job's clock, `SubtaskInfo::clock`,
    /// in ms) at which the operator wants [`Operator::on_processing_time`]
    /// (a keyed operator: its earliest processing-time timer). Asked only
    /// when the task has no input to process (never per record or batch):
    /// the task then fires what is due, or parks until then at most. Must be
    /// cheap and must not fail. Default: never.
    fn next_processing_time(&self) -> Option<i64> {
        None
    }

    /// The job's clock reached `now_ms` >= [`Operator::next_processing_time`]
    /// while the task had no input to process (the idle hook): the operator
    /// fires what is due and may emit records, which travel on like the
    /// output of a batch. Like a batch, a firing falls between two records
    /// and before the next barrier: its state changes and output belong to
    /// the next snapshot. Default: nothing.
    fn on_processing_time(&mut self, _now_ms: i64, _output: &mut Vec<O>) -> Result<(), UserError> {
        Ok(())
    }

    /// Whether this operator makes the watermarks of its output itself (a
    /// timestamp and watermark assigner) instead of passing on its input's:
    /// the runtime then sends on [`Operator::output_watermark`] when it grew
    /// and drops the input's watermarks, except [`Watermark::MAX`] (end of
    /// input). Asked once, when the task is built. Default: no.
    fn generates_watermarks(&self) -> bool {
        false
    }

    /// For an operator that [generates watermarks](Operator::generates_watermarks):
    /// its output's watermark now, asked after every batch it processed
    /// (never per record). Default: none.
    fn output_watermark(&mut self) -> Option<Watermark> {
        None
    }

    /// The operator's side outputs, for an operator that emits records to
    /// ports besides its main output (a keyed process function's
    /// `ctx.output`, a window's late records). The runtime declares on it
    /// the side outputs something consumes when the task is built, and after
    /// every `process_batch`, `on_watermark` and `finish` sends what they
    /// hold on, behind the main output of the same call. Asked only of an
    /// operator whose side outputs are consumed (never per batch otherwise).
    /// Default: none (declaring a consumed side output on such an operator
    /// fails the build).
    fn side_outputs(&mut self) -> Option<&mut SideOutputs> {
        None
    }

    /// The synchronous part of the snapshot `barrier` starts (a checkpoint,
    /// or a savepoint, which must be in the canonical format): must be brief.
    fn snapshot(&mut self, _barrier: Barrier) -> Result<StateSnapshot, UserError> {
        Ok(StateSnapshot::default())
    }

    /// The keyed states this instance declared when it was created (a
    /// compatibility check creates one instance with nothing restored and
    /// reads them); `None` for an operator without keyed state.
    fn declared_keyed_state(&self) -> Option<flowstate_checkpoint::DeclaredKeyedState> {
        None
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

    /// The sizes of the instance's keyed states (metrics; the worker asks
    /// about once per second, between batches): its backend's
    /// `state_stats`. Default: none.
    fn state_stats(&mut self) -> Vec<flowstate_state::StateStats> {
        Vec::new()
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
    /// See [`Operator::next_processing_time`].
    fn next_processing_time(&self) -> Option<i64> {
        None
    }
    /// See [`Operator::on_processing_time`].
    fn on_processing_time(&mut self, _now_ms: i64, _output: &mut Vec<O>) -> Result<(), UserError> {
        Ok(())
    }
    /// See [`Operator::side_outputs`]: taken after every call that may emit.
    fn side_outputs(&mut self) -> Option<&mut SideOutputs> {
        None
    }
    fn snapshot(&mut self, _barrier: Barrier) -> Result<StateSnapshot, UserError> {
        Ok(StateSnapshot::default())
    }

    /// The keyed states this instance declared when it was created (a
    /// compatibility check creates one instance with nothing restored and
    /// reads them); `None` for an operator without keyed state.
    fn declared_keyed_state(&self) -> Option<flowstate_checkpoint::DeclaredKeyedState> {
        None
    }
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        Ok(())
    }
    /// See [`Operator::state_stats`].
    fn state_stats(&mut self) -> Vec<flowstate_state::StateStats> {
        Vec::new()
    }
}
