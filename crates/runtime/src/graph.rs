//! The logical job graph: sources, operators, two-input operators and sinks, and
//! the edges between them with their partitioning.
//!
//! Nodes are added through typed methods; internally each node keeps type-erased
//! factories (`dyn Any` holding typed pipelines, channel ends and tasks) so that
//! one graph can hold streams of many record types. The types are checked when a
//! node is added, so the casts in [`crate::plan`] cannot fail.

use std::any::{Any, TypeId, type_name};
use std::marker::PhantomData;
use std::sync::Arc;

use flowstate_state::KeyGroup;

use crate::Data;
use crate::channel::{ChannelReceiver, ChannelSender, Signal, channel};
use crate::checkpointing::TaskControl;
use crate::config::SubtaskInfo;
use crate::connector::{Sink, Source};
use crate::error::{BuildError, UserError};
use crate::metrics::JobMetrics;
use crate::operator::{Operator, TwoInputOperator};
use crate::pipeline::StageIdentity;
use crate::pipeline::{Discard, ExchangeOutput, OperatorStage, Pipeline, Router, SinkStage, Tee};
use crate::task::{OneInputTask, SourceTask, Task, TwoInputTask};

/// Index of a node in its graph.
pub type NodeId = usize;

/// Computes the key group of a record (for hash partitioning).
pub type KeyGroupFn<T> = Arc<dyn Fn(&T) -> KeyGroup + Send + Sync>;

/// Creates the operator instance of one subtask.
pub type OperatorFactory<I, O> =
    Box<dyn Fn(&SubtaskInfo) -> Result<Box<dyn Operator<I, O>>, UserError> + Send>;

/// Creates the two-input operator instance of one subtask.
pub type TwoInputFactory<A, B, O> =
    Box<dyn Fn(&SubtaskInfo) -> Result<Box<dyn TwoInputOperator<A, B, O>>, UserError> + Send>;

/// How records of an edge are distributed over the consumer's instances.
pub enum Partitioning<T> {
    /// Instance `i` feeds instance `i` (chained when possible).
    Forward,
    /// Whole batches round-robin over all consumer instances.
    Rebalance,
    /// Each record goes to the instance owning its key group.
    Hash(KeyGroupFn<T>),
}

impl<T> Clone for Partitioning<T> {
    fn clone(&self) -> Self {
        match self {
            Partitioning::Forward => Partitioning::Forward,
            Partitioning::Rebalance => Partitioning::Rebalance,
            Partitioning::Hash(f) => Partitioning::Hash(Arc::clone(f)),
        }
    }
}

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
    pub batch_size: usize,
}

impl BuildContext<'_> {
    fn create_error(&self, cause: UserError) -> BuildError {
        BuildError::Create {
            operator: self.info.operator.clone(),
            subtask: self.info.index,
            cause: crate::error::error_chain(cause.as_ref()),
        }
    }
}

/// Operations on a stream type `T` that the plan needs without knowing `T`.
pub(crate) trait Port: Send + Sync {
    fn channel(
        &self,
        capacity: usize,
        producer: Arc<Signal>,
        consumer: Arc<Signal>,
    ) -> (Erased, Erased);
    fn exchange(
        &self,
        task: &str,
        partitioning: &(dyn Any + Send + Sync),
        senders: Vec<Erased>,
        max_parallelism: u32,
        batch_size: usize,
    ) -> Erased;
    fn tee(&self, branches: Vec<Erased>) -> Erased;
    fn discard(&self) -> Erased;
    fn one_input_task(
        &self,
        name: String,
        receivers: Vec<Erased>,
        pipeline: Erased,
        control: Option<TaskControl>,
    ) -> Box<dyn Task>;
}

struct TypedPort<T>(PhantomData<fn() -> T>);

impl<T: Data> Port for TypedPort<T> {
    fn channel(
        &self,
        capacity: usize,
        producer: Arc<Signal>,
        consumer: Arc<Signal>,
    ) -> (Erased, Erased) {
        let (tx, rx) = channel::<T>(capacity, producer, consumer);
        (Box::new(tx), Box::new(rx))
    }

    fn exchange(
        &self,
        task: &str,
        partitioning: &(dyn Any + Send + Sync),
        senders: Vec<Erased>,
        max_parallelism: u32,
        batch_size: usize,
    ) -> Erased {
        let senders: Vec<ChannelSender<T>> = senders.into_iter().map(cast).collect();
        let router = match partitioning.downcast_ref::<Partitioning<T>>() {
            Some(Partitioning::Forward) => Router::Forward,
            Some(Partitioning::Rebalance) => Router::Rebalance { next: 0 },
            Some(Partitioning::Hash(f)) => Router::Hash {
                key_group: Arc::clone(f),
                max_parallelism,
            },
            None => unreachable!("edge partitioning has the edge's type"),
        };
        let pipeline: Box<dyn Pipeline<T>> =
            Box::new(ExchangeOutput::new(task, router, senders, batch_size));
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

    fn one_input_task(
        &self,
        name: String,
        receivers: Vec<Erased>,
        pipeline: Erased,
        control: Option<TaskControl>,
    ) -> Box<dyn Task> {
        let receivers: Vec<ChannelReceiver<T>> = receivers.into_iter().map(cast).collect();
        Box::new(OneInputTask::new(
            name,
            receivers,
            cast::<Box<dyn Pipeline<T>>>(pipeline),
            control,
        ))
    }
}

pub(crate) trait SourceNode: Send {
    fn create_task(
        &self,
        name: String,
        cx: &BuildContext<'_>,
        pipeline: Erased,
        control: Option<TaskControl>,
    ) -> Result<Box<dyn Task>, BuildError>;
}

pub(crate) trait OperatorNode: Send {
    /// The operator of one subtask, followed by `next`.
    fn wrap(&self, cx: &BuildContext<'_>, next: Option<Erased>) -> Result<Erased, BuildError>;

    /// A sink that publishes its output when a checkpoint completes.
    fn commits_on_checkpoint(&self) -> bool {
        false
    }
}

pub(crate) trait TwoInputNode: Send {
    fn create_task(
        &self,
        name: String,
        cx: &BuildContext<'_>,
        first: Vec<Erased>,
        second: Vec<Erased>,
        pipeline: Erased,
        control: Option<TaskControl>,
    ) -> Result<Box<dyn Task>, BuildError>;
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
        control: Option<TaskControl>,
    ) -> Result<Box<dyn Task>, BuildError> {
        let reader = self
            .source
            .create_reader(&cx.info)
            .map_err(|e| cx.create_error(e))?;
        Ok(Box::new(SourceTask::new(
            name,
            StageIdentity::of(&cx.info),
            reader,
            cast::<Box<dyn Pipeline<T>>>(pipeline),
            cx.batch_size,
            Arc::clone(cx.metrics),
            control,
        )))
    }
}

struct OperatorNodeImpl<I, O> {
    factory: OperatorFactory<I, O>,
}

impl<I: Data, O: Data> OperatorNode for OperatorNodeImpl<I, O> {
    fn wrap(&self, cx: &BuildContext<'_>, next: Option<Erased>) -> Result<Erased, BuildError> {
        let operator = (self.factory)(&cx.info).map_err(|e| cx.create_error(e))?;
        let next = match next {
            Some(next) => cast::<Box<dyn Pipeline<O>>>(next),
            None => Box::new(Discard),
        };
        let pipeline: Box<dyn Pipeline<I>> = Box::new(OperatorStage::new(
            StageIdentity::of(&cx.info),
            operator,
            next,
        ));
        Ok(Box::new(pipeline))
    }
}

struct SinkNodeImpl<T> {
    sink: Arc<dyn Sink<T>>,
}

impl<T: Data> OperatorNode for SinkNodeImpl<T> {
    fn commits_on_checkpoint(&self) -> bool {
        self.sink.commits_on_checkpoint()
    }

    fn wrap(&self, cx: &BuildContext<'_>, _next: Option<Erased>) -> Result<Erased, BuildError> {
        let writer = self
            .sink
            .create_writer(&cx.info)
            .map_err(|e| cx.create_error(e))?;
        let pipeline: Box<dyn Pipeline<T>> = Box::new(SinkStage::new(
            StageIdentity::of(&cx.info),
            writer,
            Arc::clone(cx.metrics),
        ));
        Ok(Box::new(pipeline))
    }
}

struct TwoInputNodeImpl<A, B, O> {
    factory: TwoInputFactory<A, B, O>,
}

impl<A: Data, B: Data, O: Data> TwoInputNode for TwoInputNodeImpl<A, B, O> {
    fn create_task(
        &self,
        name: String,
        cx: &BuildContext<'_>,
        first: Vec<Erased>,
        second: Vec<Erased>,
        pipeline: Erased,
        control: Option<TaskControl>,
    ) -> Result<Box<dyn Task>, BuildError> {
        let operator = (self.factory)(&cx.info).map_err(|e| cx.create_error(e))?;
        Ok(Box::new(TwoInputTask::new(
            name,
            StageIdentity::of(&cx.info),
            first.into_iter().map(cast::<ChannelReceiver<A>>).collect(),
            second.into_iter().map(cast::<ChannelReceiver<B>>).collect(),
            operator,
            cast::<Box<dyn Pipeline<O>>>(pipeline),
            control,
        )))
    }
}

pub(crate) enum NodeKind {
    Source(Box<dyn SourceNode>),
    /// A one-input operator or a sink (a sink has no output port).
    Operator(Box<dyn OperatorNode>),
    TwoInput(Box<dyn TwoInputNode>),
}

pub(crate) struct Edge {
    pub from: NodeId,
    /// 0 for the first (or only) input, 1 for the second input of a two-input node.
    pub side: usize,
    pub forward: bool,
    /// How records are shipped, for people: `FORWARD`, `REBALANCE` or `HASH`.
    pub ship_strategy: &'static str,
    /// A `Partitioning<T>` for the edge's record type `T`.
    pub partitioning: Box<dyn Any + Send + Sync>,
}

pub(crate) struct Node {
    pub name: String,
    /// Set by the user; derived from the position and name otherwise.
    pub uid: Option<String>,
    pub kind: NodeKind,
    pub inputs: Vec<Edge>,
    /// The output stream type; `None` for sinks.
    pub output: Option<(TypeId, Arc<dyn Port>)>,
}

/// One node of a job graph as shown to people and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexInfo {
    pub uid: String,
    pub name: String,
    /// `(uid of the producing node, ship strategy)` per input.
    pub inputs: Vec<(String, &'static str)>,
}

/// A logical dataflow graph.
#[derive(Default)]
pub struct JobGraph {
    pub(crate) nodes: Vec<Node>,
}

/// Upper bound on the number of nodes of one job (a limit on everything).
pub const MAX_NODES: usize = 4096;

impl JobGraph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The name of a node.
    pub fn name(&self, node: NodeId) -> &str {
        &self.nodes[node].name
    }

    /// The stable id under which a node's state is checkpointed: the one the
    /// user set, or `<index>-<name>` (deterministic for the same job code).
    pub fn uid(&self, node: NodeId) -> String {
        let n = &self.nodes[node];
        match &n.uid {
            Some(uid) => uid.clone(),
            None => {
                let slug: String = n
                    .name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '-'
                        }
                    })
                    .collect();
                format!("{node}-{}", slug.trim_matches('-'))
            }
        }
    }

    /// The graph for people and tools: every node's uid, name and inputs.
    pub fn describe(&self) -> Vec<VertexInfo> {
        (0..self.nodes.len())
            .map(|node| VertexInfo {
                uid: self.uid(node),
                name: self.nodes[node].name.clone(),
                inputs: self.nodes[node]
                    .inputs
                    .iter()
                    .map(|edge| (self.uid(edge.from), edge.ship_strategy))
                    .collect(),
            })
            .collect()
    }

    /// Uids of the sinks that publish output when a checkpoint completes
    /// (two-phase commit): a restore from an older checkpoint than the
    /// newest completed one would publish that output again.
    pub fn committing_sinks(&self) -> Vec<String> {
        (0..self.nodes.len())
            .filter(|&node| match &self.nodes[node].kind {
                NodeKind::Operator(operator) => operator.commits_on_checkpoint(),
                _ => false,
            })
            .map(|node| self.uid(node))
            .collect()
    }

    /// Sets the stable id of a node (what restore matches state by).
    pub fn set_uid(&mut self, node: NodeId, uid: &str) {
        self.nodes[node].uid = Some(uid.to_owned());
    }

    /// Renames a node.
    pub fn set_name(&mut self, node: NodeId, name: &str) {
        self.nodes[node].name = name.to_owned();
    }

    fn port<T: Data>() -> Option<(TypeId, Arc<dyn Port>)> {
        Some((TypeId::of::<T>(), Arc::new(TypedPort::<T>(PhantomData))))
    }

    fn edge<T: Data>(&self, from: NodeId, side: usize, partitioning: Partitioning<T>) -> Edge {
        let produced = self
            .nodes
            .get(from)
            .and_then(|n| n.output.as_ref())
            .map(|(t, _)| *t);
        assert_eq!(
            produced,
            Some(TypeId::of::<T>()),
            "node {from} does not produce a stream of {}",
            type_name::<T>()
        );
        Edge {
            from,
            side,
            forward: matches!(partitioning, Partitioning::Forward),
            ship_strategy: match partitioning {
                Partitioning::Forward => "FORWARD",
                Partitioning::Rebalance => "REBALANCE",
                Partitioning::Hash(_) => "HASH",
            },
            partitioning: Box::new(partitioning),
        }
    }

    fn push(&mut self, node: Node) -> NodeId {
        assert!(
            self.nodes.len() < MAX_NODES,
            "a job graph holds at most {MAX_NODES} nodes"
        );
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn add_source<T: Data>(&mut self, name: &str, source: Arc<dyn Source<T>>) -> NodeId {
        self.push(Node {
            name: name.to_owned(),
            uid: None,
            kind: NodeKind::Source(Box::new(SourceNodeImpl { source })),
            inputs: Vec::new(),
            output: Self::port::<T>(),
        })
    }

    /// Adds a one-input operator fed by `inputs` (several inputs of one type make a
    /// union).
    pub fn add_operator<I: Data, O: Data>(
        &mut self,
        name: &str,
        inputs: Vec<(NodeId, Partitioning<I>)>,
        factory: OperatorFactory<I, O>,
    ) -> NodeId {
        assert!(!inputs.is_empty(), "operator '{name}' needs an input");
        let inputs = inputs
            .into_iter()
            .map(|(from, p)| self.edge(from, 0, p))
            .collect();
        self.push(Node {
            name: name.to_owned(),
            uid: None,
            kind: NodeKind::Operator(Box::new(OperatorNodeImpl { factory })),
            inputs,
            output: Self::port::<O>(),
        })
    }

    pub fn add_two_input<A: Data, B: Data, O: Data>(
        &mut self,
        name: &str,
        first: (NodeId, Partitioning<A>),
        second: (NodeId, Partitioning<B>),
        factory: TwoInputFactory<A, B, O>,
    ) -> NodeId {
        let inputs = vec![
            self.edge(first.0, 0, first.1),
            self.edge(second.0, 1, second.1),
        ];
        self.push(Node {
            name: name.to_owned(),
            uid: None,
            kind: NodeKind::TwoInput(Box::new(TwoInputNodeImpl { factory })),
            inputs,
            output: Self::port::<O>(),
        })
    }

    pub fn add_sink<T: Data>(
        &mut self,
        name: &str,
        input: (NodeId, Partitioning<T>),
        sink: Arc<dyn Sink<T>>,
    ) -> NodeId {
        let inputs = vec![self.edge(input.0, 0, input.1)];
        self.push(Node {
            name: name.to_owned(),
            uid: None,
            kind: NodeKind::Operator(Box::new(SinkNodeImpl { sink })),
            inputs,
            output: None,
        })
    }
}
