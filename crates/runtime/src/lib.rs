//! The runtime: turns a logical [`JobGraph`] into parallel tasks and runs them.
//!
//! It owns: the job graph ([`graph`]) and how its nodes become typed pipelines
//! and tasks (`wiring`), chaining and the physical plan ([`plan`]), tasks
//! ([`task`]) and the pipelines of chained operators inside a task
//! ([`pipeline`]), bounded channels that carry batches and in-band control events
//! ([`channel`], [`message`]), the checkpoint control plane between tasks and the
//! coordinator ([`control_plane`]), the asynchronous part of snapshots (`upload`),
//! the coordinator's driver (`coordinator_driver`), the executors that drive
//! tasks on worker threads or on a seeded single-threaded scheduler
//! ([`executor`]), the supervisor that restarts attempts ([`supervisor`]), the
//! job's control surface ([`control`]), and the job's, tasks' and operators'
//! metrics with their snapshots ([`metrics`]; no exposition format, no HTTP).
//! The traits at its boundaries are
//! [`operator::Operator`], [`connector::Source`] and [`connector::Sink`].
//!
//! The modules are layered; a module uses only modules below it (the test
//! `tests/module_layering.rs` fails on any cycle):
//!
//! 1. leaves: `error`, `message`, `wire` (messages as bytes), `channel`,
//!    `remote` (channels through a transport, over `channel` and `wire`),
//!    `metrics`, `savepoint_target`, `restart`, `config`, `operator`,
//!    `connector`, `partitioning`, `lease`; `watermark` (strategies and
//!    generators, over `operator`);
//! 2. `control_plane` (messages between tasks, upload threads, the controller and
//!    the coordinator, and their ends);
//! 3. `pipeline`, then `task` (what runs in a task); `upload` (the asynchronous
//!    part of snapshots);
//! 4. `wiring` (physical nodes), then `graph` (the logical graph), then `plan`
//!    and `compatibility` (the dry declaration pass of a savepoint check);
//! 5. `control` (the `JobController`), then `coordinator_driver`;
//! 6. `executor` (workers, one attempt), then `distributed` (an attempt
//!    whose tasks run in other processes: the job manager's and a task
//!    manager's side), then `supervisor` (attempts, restarts).
//!
//! It must not touch: how state is stored (operators reach state only through
//! `flowstate_state::KeyedStateBackend`), connector specifics, or the CLI.

pub(crate) mod alignment;
pub mod channel;
pub mod channel_state;
pub mod compatibility;
pub mod config;
pub mod connector;
pub mod control;
pub mod control_plane;
mod coordinator_driver;
pub mod distributed;
pub mod error;
pub mod exchange;
pub mod executor;
pub mod graph;
pub(crate) mod input_gate;
mod lease;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod partitioning;
pub mod pipeline;
pub mod plan;
pub mod remote;
pub mod reservation;
pub mod restart;
pub mod savepoint_target;
pub mod simulation;
pub mod supervisor;
pub mod task;
mod unaligned;
mod upload;
pub mod watermark;
pub mod wire;
mod wiring;

pub use compatibility::{CheckError, check_snapshot, declare_job};
pub use config::{
    CheckpointingConfig, ExecutionConfig, Guarantee, RestartStrategy, RestoreFrom, RestoredState,
    SubtaskInfo,
};
pub use connector::{
    DeferredPrepare, PreparedCommit, Sink, SinkWriter, Source, SourcePoll, SourceReader,
};
pub use control::{JobController, JobStatus};
pub use error::{BuildError, JobError, TaskError, UserError};
pub use executor::{DeterministicExecutor, JobReport, RunState, RunningJob};
pub use flowstate_checkpoint as checkpoint;
pub use graph::{JobGraph, NodeId, OutputId};
pub use message::{
    Barrier, BarrierAlignment, BarrierKind, SnapshotKind, Watermark, WatermarkStatus,
};
pub use metrics::{CheckpointProgress, JobMetrics, WatermarkGauge};
pub use operator::{Operator, SideOutputs, StateSnapshot, TwoInputOperator};
pub use partitioning::{KeyGroupFn, Partitioning};
pub use remote::{NetworkPlacement, Transport};
pub use supervisor::{start_job, start_job_on_cluster};
pub use watermark::{
    BoundedOutOfOrderness, SplitWatermarks, TimestampsAndWatermarks, WatermarkGenerator,
    WatermarkStrategy,
};
pub use wire::{Wire, WireCodec};

/// A record type that can flow between operators.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}
