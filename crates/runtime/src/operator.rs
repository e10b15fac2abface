//! The operator traits: what a chained step of a task does with a batch.

use crate::error::UserError;

/// A one-input operator. It receives whole batches: per-record work happens in a
/// loop the compiler can see, and a call through this trait costs once per batch.
pub trait Operator<I, O>: Send {
    /// Processes `input` (and leaves it empty), appending results to `output`.
    fn process_batch(&mut self, input: &mut Vec<I>, output: &mut Vec<O>) -> Result<(), UserError>;

    /// Called once after the last batch of a bounded input; may emit final records.
    fn finish(&mut self, _output: &mut Vec<O>) -> Result<(), UserError> {
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
}
