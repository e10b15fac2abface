//! The runtime: turns a logical [`JobGraph`] into parallel tasks and runs them.
//!
//! It owns: the job graph ([`graph`]), chaining and the physical plan ([`plan`]),
//! tasks ([`task`]) and the pipelines of chained operators inside a task
//! ([`pipeline`]), bounded channels that carry batches and in-band control events
//! ([`channel`], [`message`]), and the executors that drive tasks on worker
//! threads or on a seeded single-threaded scheduler ([`executor`]). The traits at
//! its boundaries are [`operator::Operator`], [`connector::Source`] and
//! [`connector::Sink`].
//!
//! It must not touch: how state is stored (operators reach state only through
//! `flowstate_state::KeyedStateBackend`), connector specifics, or the CLI.

pub mod channel;
pub mod checkpointing;
pub mod config;
pub mod connector;
pub mod control;
pub mod error;
pub mod executor;
pub mod graph;
mod lease;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod plan;
pub mod restart;
pub mod savepoint_target;
pub mod task;

pub use config::{
    CheckpointingConfig, ExecutionConfig, Guarantee, RestartStrategy, RestoreFrom, RestoredState,
    SubtaskInfo,
};
pub use connector::{
    DeferredPrepare, PreparedCommit, Sink, SinkWriter, Source, SourcePoll, SourceReader,
};
pub use control::{JobController, JobStatus};
pub use error::{BuildError, JobError, TaskError, UserError};
pub use executor::{DeterministicExecutor, JobReport, RunState, RunningJob, start_job};
pub use flowstate_checkpoint as checkpoint;
pub use graph::{JobGraph, KeyGroupFn, NodeId, Partitioning};
pub use message::{Barrier, BarrierKind, SnapshotKind};
pub use metrics::{CheckpointProgress, JobMetrics};
pub use operator::{Operator, StateSnapshot, TwoInputOperator};

/// A record type that can flow between operators.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}
