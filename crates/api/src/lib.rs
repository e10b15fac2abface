//! The DataStream API.
//!
//! ```no_run
//! use flowstate::{ExecutionConfig, StreamEnvironment};
//!
//! let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(2));
//! let counts = env
//!     .from_collection(vec!["a", "b", "a"])
//!     .map(|w| (w.to_string(), 1u64))
//!     .key_by(|(w, _)| w.clone())
//!     .reduce(|(w, a), (_, b)| (w, a + b))
//!     .collect();
//! env.execute().unwrap();
//! println!("{:?}", counts.lock().unwrap());
//! ```
//!
//! This crate owns the user-facing builder ([`StreamEnvironment`], [`DataStream`],
//! [`KeyedStream`]) and the keyed operators that bind user functions to keyed
//! state ([`keyed`]), their timers ([`timers`]), their side outputs
//! ([`side_output`]) and windows built on both ([`window`]). It must not touch scheduling or channels (that is the
//! runtime's) nor how state is stored (that is the state backend's).

#[cfg(feature = "app")]
pub mod app;
pub mod keyed;
pub mod side_output;
mod stream;
#[cfg(test)]
mod timer_tests;
pub mod timers;
pub mod window;

/// `docs/guide.md`, "Your first flowstate job": every Rust block in it is
/// compiled (and the runnable ones run) by `cargo test -p flowstate --doc`.
#[cfg(all(doctest, feature = "app"))]
#[doc = include_str!("../../../docs/guide.md")]
pub struct GuideDoctests;

#[cfg(feature = "app")]
pub use app::App;
pub use keyed::{FnResult, KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction};
pub use side_output::OutputTag;
pub use stream::{ConnectedKeyedStreams, DataStream, KeyedStream, StreamEnvironment};
pub use timers::TimeDomain;
pub use window::{
    EventTimeSessionWindows, SlidingEventTimeWindows, SlidingProcessingTimeWindows, TimeWindow,
    TumblingEventTimeWindows, TumblingProcessingTimeWindows, WindowAggregateFunction,
    WindowAssigner, WindowedStream,
};

pub use flowstate_connectors as connectors;
pub use flowstate_runtime as runtime;
pub use flowstate_runtime::CheckError;
pub use flowstate_runtime::checkpoint::compatibility::{
    CheckOptions, CompatibilityReport, OperatorCheck, Outcome, ParameterCheck, StateCheck,
};
pub use flowstate_runtime::checkpoint::{
    JobParameter, JobParameters, ParameterDifference, ParameterError, ParameterMismatch,
};
pub use flowstate_runtime::{
    Barrier, BarrierKind, Data, ExecutionConfig, JobError, JobReport, RunningJob, Sink, SinkWriter,
    Source, SourcePoll, SourceReader, SubtaskInfo, UserError, Wire,
};
pub use flowstate_runtime::{
    BoundedOutOfOrderness, SplitWatermarks, Watermark, WatermarkGenerator, WatermarkStrategy,
};
pub use flowstate_state as state;
pub use flowstate_state::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateHandle, BackendKind,
    KeyedStateBackend, ListStateDescriptor, ListStateHandle, MapStateDescriptor, MapStateHandle,
    ReducingStateDescriptor, ReducingStateHandle, StateError, StateKey, StateType, StateValue,
    ValueStateDescriptor, ValueStateHandle, state_type,
};
