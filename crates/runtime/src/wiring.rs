//! The physical side of graph nodes: what turns one node of the logical graph
//! into typed pipelines, channel ends and tasks of one subtask, without the
//! planner knowing the record types.
//!
//! Owns: the node traits the logical graph stores ([`Port`] for a stream
//! type, [`SourceNode`], [`OperatorNode`], [`TwoInputNode`]) and their typed
//! implementations, the [`BuildContext`] the plan passes to them, and the
//! type erasure between them ([`Erased`], [`cast`]). The logical graph
//! (`graph`) creates the nodes through [`source_node`], [`operator_node`],
//! [`sink_node`], [`two_input_node`] and [`port`]; the plan (`plan`) calls
//! them. Must not touch: the graph's structure, chaining or placement (it knows
//! nothing of `graph` or `plan`), or checkpoint coordination beyond handing a
//! task its [`TaskControlPlane`].

use std::any::{Any, type_name};
use std::marker::PhantomData;
use std::sync::Arc;

use flowstate_checkpoint::DeclaredKeyedState;

use crate::Data;
use flowstate_checkpoint::EdgePartitioning;
use flowstate_checkpoint::restore::RestoredChannelInput;

use crate::channel::{
    BarrierAnnouncements, ChannelReceiver, ChannelSender, Signal, channel_with_announcements,
};
use crate::channel_state::{ChannelRecorder, RecordedEdge, recovered_batches};
use crate::config::SubtaskInfo;
use crate::connector::{Sink, Source};
use crate::control_plane::TaskControlPlane;
use crate::error::{BuildError, UserError};
use crate::exchange::{Batching, ExchangeOutput, Router};
use crate::metrics::{JobMetrics, TaskMetrics};
use crate::operator::{Operator, TwoInputOperator};
use crate::partitioning::Partitioning;
use crate::pipeline::StageIdentity;
use crate::pipeline::{
    Discard, NamedSidePipelines, OperatorStage, Pipeline, SideOutputPipeline, SidePipeline,
    SinkStage, Tee,
};
use crate::remote::{InboundChannel, OutboundChannel};
use crate::task::{OneInputTask, SourceTask, Task, TwoInputTask};
use crate::unaligned::UnalignedInput;

/// Creates the operator instance of one subtask.
pub type OperatorFactory<I, O> =
    Box<dyn Fn(&SubtaskInfo) -> Result<Box<dyn Operator<I, O>>, UserError> + Send>;

/// Creates the two-input operator instance of one subtask.
pub type TwoInputFactory<A, B, O> =
    Box<dyn Fn(&SubtaskInfo) -> Result<Box<dyn TwoInputOperator<A, B, O>>, UserError> + Send>;

/// A type-erased value whose concrete type the plan knows.
pub(crate) type Erased = Box<dyn Any + Send>;

pub(crate) fn cast<T: 'static>(erased: Erased) -> T {
    match erased.downcast::<T>() {
        Ok(value) => *value,
        Err(_) => unreachable!(
            "job graph types are checked when nodes are added: {}",
            type_name::<T>()
        ),
    }
}

/// What the plan passes to node factories.
pub(crate) struct BuildContext<'a> {
    pub info: SubtaskInfo,
    pub metrics: &'a Arc<JobMetrics>,
    /// The metrics of the task the node is built into.
    pub task: Option<Arc<TaskMetrics>>,
    pub batch_size: usize,
    /// At-most-once, sources only: where the instance reserves its positions.
    pub read_ahead: Option<crate::reservation::ReadAheadHandle>,
}

impl BuildContext<'_> {
    /// The metrics of the task being built (detached if the plan has none).
    fn task_metrics(&self, name: &str) -> Arc<TaskMetrics> {
        self.task
            .clone()
            .unwrap_or_else(|| TaskMetrics::detached(name))
    }

    fn create_error(&self, cause: UserError) -> BuildError {
        BuildError::Create {
            operator: self.info.operator.clone(),
            subtask: self.info.index,
            cause: crate::error::error_chain(cause.as_ref()),
        }
    }
}

/// What the plan knows about the edge one input gate of a task reads (a
/// hash or rebalance edge of its own), for recording and replaying its
/// in-flight records.
pub(crate) struct GateInput<'a> {
    /// The edge's index among the head node's inputs.
    pub edge: u32,
    pub from_uid: String,
    /// The edge's `Partitioning<T>`.
    pub partitioning: &'a (dyn Any + Send + Sync),
    pub batch_size: usize,
    /// Restored channel state of this instance, to replay first.
    pub recovered: Option<RestoredChannelInput>,
}

/// A gate's input and the task's unaligned side, as the plan hands them
/// to a node factory.
pub(crate) type GateSetup<'a> = (Option<GateInput<'a>>, Option<UnalignedInput>);

/// Both gates' inputs of a two-input task and its unaligned side.
pub(crate) type TwoGateSetup<'a> = (
    (Option<GateInput<'a>>, Option<GateInput<'a>>),
    Option<UnalignedInput>,
);

/// The typed parts of a gate's input: the recorder (if `unaligned`) and the
/// decoded batches to replay.
type TypedGate<T> = (Option<ChannelRecorder<T>>, Vec<Vec<T>>);

fn typed_gate<T: Data>(
    input: Option<GateInput<'_>>,
    record: bool,
) -> Result<TypedGate<T>, BuildError> {
    let Some(input) = input else {
        return Ok((None, Vec::new()));
    };
    let (key_groups, codec, partitioning) = match input.partitioning.downcast_ref() {
        Some(Partitioning::<T>::Hash(f, codec)) => {
            (Some(f.clone()), *codec, EdgePartitioning::Hash)
        }
        Some(Partitioning::<T>::Rebalance(codec)) => (None, *codec, EdgePartitioning::Rebalance),
        _ => return Ok((None, Vec::new())),
    };
    let edge = RecordedEdge {
        edge: input.edge,
        from_uid: input.from_uid,
        partitioning,
        record_type: type_name::<T>().to_owned(),
    };
    let recovered = match &input.recovered {
        Some(restored) => recovered_batches(restored, &edge, codec)
            .map_err(|e| BuildError::Restore(e.to_string()))?,
        None => Vec::new(),
    };
    let recorder = record.then(|| ChannelRecorder::new(edge, codec, key_groups, input.batch_size));
    Ok((recorder, recovered))
}

/// Operations on a stream type `T` that the plan needs without knowing `T`.
pub(crate) trait Port: Send + Sync {
    /// A local channel; `announcements`: the consumer's notice board, if it
    /// may take unaligned snapshots.
    fn channel(
        &self,
        capacity: usize,
        producer: Arc<Signal>,
        consumer: Arc<Signal>,
        announcements: Option<Arc<BarrierAnnouncements>>,
    ) -> (Erased, Erased);
    /// A channel whose consumer runs in another process (or behind the
    /// transport): the producer's sender and the transport's end. `None` for
    /// a forward edge (its records have no codec; they never cross).
    /// `announcing`: the consumer may take unaligned snapshots (the sender
    /// announces unaligned barriers through the transport).
    fn outbound(
        &self,
        partitioning: &(dyn Any + Send + Sync),
        capacity: usize,
        producer: Arc<Signal>,
        transport: Arc<Signal>,
        announcing: bool,
    ) -> Option<(Erased, Box<dyn OutboundChannel>)>;
    /// A channel whose producer runs in another process: the transport's
    /// end and the consumer's receiver. `None` for a forward edge.
    /// `announcements`: the consumer's notice board, if it may take
    /// unaligned snapshots (announce frames are posted there).
    fn inbound(
        &self,
        partitioning: &(dyn Any + Send + Sync),
        capacity: usize,
        transport: Arc<Signal>,
        consumer: Arc<Signal>,
        announcements: Option<Arc<BarrierAnnouncements>>,
    ) -> Option<(Box<dyn InboundChannel>, Erased)>;
    fn exchange(
        &self,
        task: &str,
        partitioning: &(dyn Any + Send + Sync),
        senders: Vec<Erased>,
        max_parallelism: u32,
        batching: Batching,
        metrics: Option<Arc<TaskMetrics>>,
    ) -> Erased;
    fn tee(&self, branches: Vec<Erased>) -> Erased;
    fn discard(&self) -> Erased;
    /// The pipeline behind a side output of this type, from its typed
    /// pipeline `next`.
    fn side_output(&self, next: Erased) -> Box<dyn SideOutputPipeline>;
    #[allow(clippy::too_many_arguments)]
    fn one_input_task(
        &self,
        name: String,
        receivers: Vec<Erased>,
        pipeline: Erased,
        control: Option<TaskControlPlane>,
        metrics: Arc<TaskMetrics>,
        clock: flowstate_state::SharedClock,
        gate: GateSetup<'_>,
    ) -> Result<Box<dyn Task>, BuildError>;
}

struct TypedPort<T>(PhantomData<fn() -> T>);

impl<T: Data> Port for TypedPort<T> {
    fn channel(
        &self,
        capacity: usize,
        producer: Arc<Signal>,
        consumer: Arc<Signal>,
        announcements: Option<Arc<BarrierAnnouncements>>,
    ) -> (Erased, Erased) {
        let (tx, rx) = channel_with_announcements::<T>(capacity, producer, consumer, announcements);
        (Box::new(tx), Box::new(rx))
    }

    fn outbound(
        &self,
        partitioning: &(dyn Any + Send + Sync),
        capacity: usize,
        producer: Arc<Signal>,
        transport: Arc<Signal>,
        announcing: bool,
    ) -> Option<(Erased, Box<dyn OutboundChannel>)> {
        let wire = partitioning.downcast_ref::<Partitioning<T>>()?.wire()?;
        let (tx, end) = crate::remote::outbound_with_announcements::<T>(
            wire, capacity, producer, transport, announcing,
        );
        Some((Box::new(tx), end))
    }

    fn inbound(
        &self,
        partitioning: &(dyn Any + Send + Sync),
        capacity: usize,
        transport: Arc<Signal>,
        consumer: Arc<Signal>,
        announcements: Option<Arc<BarrierAnnouncements>>,
    ) -> Option<(Box<dyn InboundChannel>, Erased)> {
        let wire = partitioning.downcast_ref::<Partitioning<T>>()?.wire()?;
        let (end, rx) = crate::remote::inbound_with_announcements::<T>(
            wire,
            capacity,
            transport,
            consumer,
            announcements,
        );
        Some((end, Box::new(rx)))
    }

    fn exchange(
        &self,
        task: &str,
        partitioning: &(dyn Any + Send + Sync),
        senders: Vec<Erased>,
        max_parallelism: u32,
        batching: Batching,
        metrics: Option<Arc<TaskMetrics>>,
    ) -> Erased {
        let senders: Vec<ChannelSender<T>> = senders.into_iter().map(cast).collect();
        let router = match partitioning.downcast_ref::<Partitioning<T>>() {
            Some(Partitioning::Forward) => Router::Forward,
            Some(Partitioning::Rebalance(_)) => Router::Rebalance { next: 0 },
            Some(Partitioning::Hash(f, _)) => Router::Hash {
                key_group: f.clone(),
                max_parallelism,
                groups: Vec::new(),
            },
            None => unreachable!("edge partitioning has the edge's type"),
        };
        let mut exchange = ExchangeOutput::with_batching(task, router, senders, batching);
        if let Some(metrics) = metrics {
            exchange = exchange.with_metrics(metrics);
        }
        let pipeline: Box<dyn Pipeline<T>> = Box::new(exchange);
        Box::new(pipeline)
    }

    fn tee(&self, branches: Vec<Erased>) -> Erased {
        let branches: Vec<Box<dyn Pipeline<T>>> = branches.into_iter().map(cast).collect();
        let pipeline: Box<dyn Pipeline<T>> = Box::new(Tee::new(branches));
        Box::new(pipeline)
    }

    fn discard(&self) -> Erased {
        let pipeline: Box<dyn Pipeline<T>> = Box::new(Discard);
        Box::new(pipeline)
    }

    fn side_output(&self, next: Erased) -> Box<dyn SideOutputPipeline> {
        Box::new(SidePipeline::new(cast::<Box<dyn Pipeline<T>>>(next)))
    }

    fn one_input_task(
        &self,
        name: String,
        receivers: Vec<Erased>,
        pipeline: Erased,
        control: Option<TaskControlPlane>,
        metrics: Arc<TaskMetrics>,
        clock: flowstate_state::SharedClock,
        (input, unaligned): GateSetup<'_>,
    ) -> Result<Box<dyn Task>, BuildError> {
        let receivers: Vec<ChannelReceiver<T>> = receivers.into_iter().map(cast).collect();
        let (recorder, recovered) = typed_gate::<T>(input, unaligned.is_some())?;
        let mut task = OneInputTask::new(
            name,
            receivers,
            cast::<Box<dyn Pipeline<T>>>(pipeline),
            control,
        )
        .with_metrics(metrics)
        .with_clock(clock)
        .with_recovered(recovered);
        if let (Some(recorder), Some(unaligned)) = (recorder, unaligned) {
            task = task.with_unaligned(recorder, unaligned);
        }
        Ok(Box::new(task))
    }
}

pub(crate) trait SourceNode: Send {
    fn create_task(
        &self,
        name: String,
        cx: &BuildContext<'_>,
        pipeline: Erased,
        control: Option<TaskControlPlane>,
    ) -> Result<Box<dyn Task>, BuildError>;
}

pub(crate) trait OperatorNode: Send {
    /// The operator of one subtask, followed by `next` (its main output)
    /// and by the pipelines of its consumed side outputs (named).
    fn wrap(
        &self,
        cx: &BuildContext<'_>,
        next: Option<Erased>,
        sides: NamedSidePipelines,
    ) -> Result<Erased, BuildError>;

    /// A sink that publishes its output when a checkpoint completes.
    fn commits_on_checkpoint(&self) -> bool {
        false
    }

    /// The keyed states one instance declares when created for `info`
    /// (nothing restored); a sink answers without creating a writer, so no
    /// file or connection is opened.
    fn declare(&self, info: &SubtaskInfo) -> Result<Option<DeclaredKeyedState>, UserError>;

    /// A sink: compared by uid only.
    fn is_sink(&self) -> bool {
        false
    }
}

pub(crate) trait TwoInputNode: Send {
    #[allow(clippy::too_many_arguments)]
    fn create_task(
        &self,
        name: String,
        cx: &BuildContext<'_>,
        first: Vec<Erased>,
        second: Vec<Erased>,
        outputs: (Erased, NamedSidePipelines),
        control: Option<TaskControlPlane>,
        gates: TwoGateSetup<'_>,
    ) -> Result<Box<dyn Task>, BuildError>;

    /// See [`OperatorNode::declare`].
    fn declare(&self, info: &SubtaskInfo) -> Result<Option<DeclaredKeyedState>, UserError>;
}

struct SourceNodeImpl<T> {
    source: Arc<dyn Source<T>>,
}

impl<T: Data> SourceNode for SourceNodeImpl<T> {
    fn create_task(
        &self,
        name: String,
        cx: &BuildContext<'_>,
        pipeline: Erased,
        control: Option<TaskControlPlane>,
    ) -> Result<Box<dyn Task>, BuildError> {
        let reader = self
            .source
            .create_reader(&cx.info)
            .map_err(|e| cx.create_error(e))?;
        let task_metrics = cx.task_metrics(&name);
        let task = SourceTask::new(
            name,
            StageIdentity::of(&cx.info),
            reader,
            cast::<Box<dyn Pipeline<T>>>(pipeline),
            cx.batch_size,
            Arc::clone(cx.metrics),
            control,
        )
        .with_metrics(task_metrics, Arc::clone(&cx.info.metrics))
        .with_clock(Arc::clone(&cx.info.clock));
        Ok(match cx.read_ahead.clone() {
            Some(handle) => Box::new(
                task.with_read_ahead(handle)
                    .map_err(|e| cx.create_error(e))?,
            ),
            None => Box::new(task),
        })
    }
}

struct OperatorNodeImpl<I, O> {
    factory: OperatorFactory<I, O>,
}

impl<I: Data, O: Data> OperatorNode for OperatorNodeImpl<I, O> {
    fn declare(&self, info: &SubtaskInfo) -> Result<Option<DeclaredKeyedState>, UserError> {
        Ok((self.factory)(info)?.declared_keyed_state())
    }

    fn wrap(
        &self,
        cx: &BuildContext<'_>,
        next: Option<Erased>,
        sides: NamedSidePipelines,
    ) -> Result<Erased, BuildError> {
        let operator = (self.factory)(&cx.info).map_err(|e| cx.create_error(e))?;
        let next = match next {
            Some(next) => cast::<Box<dyn Pipeline<O>>>(next),
            None => Box::new(Discard),
        };
        let stage = OperatorStage::new(StageIdentity::of(&cx.info), operator, next)
            .with_metrics(Arc::clone(&cx.info.metrics))
            .with_side_outputs(sides)
            .map_err(BuildError::Graph)?;
        let pipeline: Box<dyn Pipeline<I>> = Box::new(stage);
        Ok(Box::new(pipeline))
    }
}

struct SinkNodeImpl<T> {
    sink: Arc<dyn Sink<T>>,
}

impl<T: Data> OperatorNode for SinkNodeImpl<T> {
    /// Never creates a writer: a sink keeps operator state only.
    fn declare(&self, _info: &SubtaskInfo) -> Result<Option<DeclaredKeyedState>, UserError> {
        Ok(None)
    }

    fn is_sink(&self) -> bool {
        true
    }

    fn commits_on_checkpoint(&self) -> bool {
        self.sink.commits_on_checkpoint()
    }

    fn wrap(
        &self,
        cx: &BuildContext<'_>,
        _next: Option<Erased>,
        _sides: NamedSidePipelines,
    ) -> Result<Erased, BuildError> {
        let writer = self
            .sink
            .create_writer(&cx.info)
            .map_err(|e| cx.create_error(e))?;
        let pipeline: Box<dyn Pipeline<T>> = Box::new(
            SinkStage::new(StageIdentity::of(&cx.info), writer, Arc::clone(cx.metrics))
                .with_metrics(Arc::clone(&cx.info.metrics)),
        );
        Ok(Box::new(pipeline))
    }
}

struct TwoInputNodeImpl<A, B, O> {
    factory: TwoInputFactory<A, B, O>,
}

impl<A: Data, B: Data, O: Data> TwoInputNode for TwoInputNodeImpl<A, B, O> {
    fn declare(&self, info: &SubtaskInfo) -> Result<Option<DeclaredKeyedState>, UserError> {
        Ok((self.factory)(info)?.declared_keyed_state())
    }

    fn create_task(
        &self,
        name: String,
        cx: &BuildContext<'_>,
        first: Vec<Erased>,
        second: Vec<Erased>,
        (pipeline, sides): (Erased, NamedSidePipelines),
        control: Option<TaskControlPlane>,
        ((first_input, second_input), unaligned): TwoGateSetup<'_>,
    ) -> Result<Box<dyn Task>, BuildError> {
        let operator = (self.factory)(&cx.info).map_err(|e| cx.create_error(e))?;
        let task_metrics = cx.task_metrics(&name);
        let record = unaligned.is_some();
        let (first_recorder, first_recovered) = typed_gate::<A>(first_input, record)?;
        let (second_recorder, second_recovered) = typed_gate::<B>(second_input, record)?;
        let task = TwoInputTask::new(
            name,
            StageIdentity::of(&cx.info),
            first.into_iter().map(cast::<ChannelReceiver<A>>).collect(),
            second.into_iter().map(cast::<ChannelReceiver<B>>).collect(),
            operator,
            cast::<Box<dyn Pipeline<O>>>(pipeline),
            control,
        )
        .with_side_outputs(sides)
        .map_err(BuildError::Graph)?
        .with_metrics(task_metrics, Arc::clone(&cx.info.metrics))
        .with_clock(Arc::clone(&cx.info.clock))
        .with_recovered(first_recovered, second_recovered);
        Ok(match (first_recorder, second_recorder, unaligned) {
            (Some(first), Some(second), Some(unaligned)) => {
                Box::new(task.with_unaligned((first, second), unaligned))
            }
            _ => Box::new(task),
        })
    }
}

/// The port of stream type `T`.
pub(crate) fn port<T: Data>() -> Arc<dyn Port> {
    Arc::new(TypedPort::<T>(PhantomData))
}

/// A source node reading `source`.
pub(crate) fn source_node<T: Data>(source: Arc<dyn Source<T>>) -> Box<dyn SourceNode> {
    Box::new(SourceNodeImpl { source })
}

/// A one-input operator node creating its instances with `factory`.
pub(crate) fn operator_node<I: Data, O: Data>(
    factory: OperatorFactory<I, O>,
) -> Box<dyn OperatorNode> {
    Box::new(OperatorNodeImpl { factory })
}

/// A sink node writing to `sink`.
pub(crate) fn sink_node<T: Data>(sink: Arc<dyn Sink<T>>) -> Box<dyn OperatorNode> {
    Box::new(SinkNodeImpl { sink })
}

/// A two-input operator node creating its instances with `factory`.
pub(crate) fn two_input_node<A: Data, B: Data, O: Data>(
    factory: TwoInputFactory<A, B, O>,
) -> Box<dyn TwoInputNode> {
    Box::new(TwoInputNodeImpl { factory })
}
