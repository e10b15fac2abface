//! Execution settings: every limit is named here with its default.

use flowstate_state::{BackendKind, DEFAULT_MAX_PARALLELISM, KeyGroupRange, MAX_PARALLELISM_LIMIT};

use crate::error::BuildError;

/// Records per batch a task sends downstream (at most; partial batches are sent
/// when a task runs out of input).
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// Batches a channel holds before its producer must wait.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 16;
/// Largest accepted parallelism.
pub const MAX_PARALLELISM_PER_OPERATOR: u32 = 1024;

/// How a job runs.
#[derive(Debug, Clone)]
pub struct ExecutionConfig {
    /// Parallel instances of every operator.
    pub parallelism: u32,
    /// Number of key groups (upper bound on parallelism after a rescale).
    pub max_parallelism: u32,
    /// Records per batch between tasks.
    pub batch_size: usize,
    /// Batches per channel.
    pub channel_capacity: usize,
    /// Worker threads; subtask `i` of every operator runs on worker `i % workers`.
    pub workers: usize,
    /// Where keyed state lives.
    pub state_backend: BackendKind,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            parallelism: 1,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            batch_size: DEFAULT_BATCH_SIZE,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            workers: 1,
            state_backend: BackendKind::Heap,
        }
    }
}

impl ExecutionConfig {
    /// A configuration with `parallelism` instances on as many workers.
    pub fn with_parallelism(parallelism: u32) -> Self {
        Self {
            parallelism,
            workers: parallelism as usize,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), BuildError> {
        let fail = |m: String| Err(BuildError::Config(m));
        if self.parallelism == 0 || self.parallelism > MAX_PARALLELISM_PER_OPERATOR {
            return fail(format!(
                "parallelism {} is not between 1 and {MAX_PARALLELISM_PER_OPERATOR}",
                self.parallelism
            ));
        }
        if self.max_parallelism == 0 || self.max_parallelism > MAX_PARALLELISM_LIMIT {
            return fail(format!(
                "max parallelism {} is not between 1 and {MAX_PARALLELISM_LIMIT}",
                self.max_parallelism
            ));
        }
        if self.parallelism > self.max_parallelism {
            return fail(format!(
                "parallelism {} exceeds max parallelism {} (each instance needs at least one key group)",
                self.parallelism, self.max_parallelism
            ));
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return fail(format!(
                "batch size {} is not between 1 and 2^20",
                self.batch_size
            ));
        }
        if self.channel_capacity == 0 || self.channel_capacity > 1 << 16 {
            return fail(format!(
                "channel capacity {} is not between 1 and 65536",
                self.channel_capacity
            ));
        }
        if self.workers == 0 || self.workers > 1024 {
            return fail(format!(
                "workers {} is not between 1 and 1024",
                self.workers
            ));
        }
        Ok(())
    }
}

/// What one parallel instance knows about itself when it is created.
#[derive(Debug, Clone)]
pub struct SubtaskInfo {
    /// The operator's name.
    pub operator: String,
    /// This instance's index, `0 <= index < parallelism`.
    pub index: u32,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub state_backend: BackendKind,
}

impl SubtaskInfo {
    /// The key groups this instance owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        KeyGroupRange::for_operator(self.index, self.parallelism, self.max_parallelism)
    }
}
