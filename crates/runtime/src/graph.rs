//! The logical job graph: sources, operators, two-input operators and sinks, and
//! the edges between them with their partitioning.
//!
//! A node has *output ports*: its main output (port 0) and, for a one-input
//! operator, named side outputs (ports 1..), each with a record type of its
//! own. An edge starts at one port of its producer ([`OutputId`]).
//!
//! Owns: [`JobGraph`] and its typed builder methods, node names and uids, the
//! output ports, the edges with their [`Partitioning`], and what the graph shows people and tools
//! ([`VertexInfo`]). Nodes are added through typed methods; each node keeps the
//! physical node objects of `wiring` (type-erased factories of typed pipelines,
//! channel ends and tasks) so that one graph can hold streams of many record
//! types. The types are checked when a node is added, so the casts in the plan
//! cannot fail. Must not touch: chaining, channels or tasks (that is `plan`,
//! which reads the graph) nor how a node becomes a task (that is `wiring`).

use std::any::{Any, TypeId, type_name};
use std::sync::Arc;

use crate::Data;
use crate::connector::{Sink, Source};
pub use crate::partitioning::{KeyGroupFn, Partitioning};
pub use crate::wiring::{OperatorFactory, TwoInputFactory};
use crate::wiring::{
    OperatorNode, Port, SourceNode, TwoInputNode, operator_node, port, sink_node, source_node,
    two_input_node,
};

/// Index of a node in its graph.
pub type NodeId = usize;

/// The port of a node's main output.
pub const MAIN_OUTPUT: usize = 0;

/// One output of a node: its main output ([`MAIN_OUTPUT`]) or one of its side
/// outputs (ports from 1, in the order they were declared). A `NodeId` is
/// its main output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutputId {
    pub node: NodeId,
    pub port: usize,
}

impl From<NodeId> for OutputId {
    fn from(node: NodeId) -> Self {
        Self {
            node,
            port: MAIN_OUTPUT,
        }
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
    /// The producer's output port the edge starts at ([`MAIN_OUTPUT`] or a
    /// side output).
    pub port: usize,
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
    /// The side outputs (ports 1..): name, stream type. Only one-input
    /// operators have them.
    pub side_outputs: Vec<(String, TypeId, Arc<dyn Port>)>,
}

impl Node {
    /// The stream type and port of output `port`.
    pub(crate) fn port(&self, port: usize) -> Option<(TypeId, &Arc<dyn Port>)> {
        if port == MAIN_OUTPUT {
            self.output.as_ref().map(|(t, p)| (*t, p))
        } else {
            self.side_outputs.get(port - 1).map(|(_, t, p)| (*t, p))
        }
    }
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

    /// The fingerprint of the plan `config` makes of this graph: 16 hex
    /// digits over every node's uid, name and kind, every edge (producer,
    /// port, input side, ship strategy) and side output, the parallelism,
    /// the max parallelism and the job's name and parameters. Every process
    /// of a job builds its graph from the same program and arguments; equal
    /// fingerprints say they did (a task manager whose fingerprint is not the
    /// job manager's is refused). FNV-1a 64: stable across builds and
    /// machines, not a defence against a forger.
    pub fn fingerprint(&self, config: &crate::config::ExecutionConfig) -> String {
        use std::fmt::Write as _;
        let mut text = format!(
            "job={:?} parallelism={} max_parallelism={} parameters={:?}\n",
            config.job_name, config.parallelism, config.max_parallelism, config.job_parameters
        );
        for (id, node) in self.nodes.iter().enumerate() {
            let kind = match &node.kind {
                NodeKind::Source(_) => "source",
                NodeKind::Operator(_) if node.output.is_none() => "sink",
                NodeKind::Operator(_) => "operator",
                NodeKind::TwoInput(_) => "two-input",
            };
            let _ = write!(
                text,
                "{id} {kind} uid={:?} name={:?}",
                self.uid(id),
                node.name
            );
            for edge in &node.inputs {
                let _ = write!(
                    text,
                    " in({}:{} side {} {})",
                    edge.from, edge.port, edge.side, edge.ship_strategy
                );
            }
            for (name, _, _) in &node.side_outputs {
                let _ = write!(text, " side-output {name:?}");
            }
            text.push('\n');
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
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

    fn output_port<T: Data>() -> Option<(TypeId, Arc<dyn Port>)> {
        Some((TypeId::of::<T>(), port::<T>()))
    }

    /// Declares side output `name` of records `T` on operator `node` (one-
    /// or two-input) and returns it; declaring a name again returns the same
    /// port (with the same type). Records the operator emits to a side output
    /// that no edge starts at are dropped.
    pub fn add_side_output<T: Data>(&mut self, node: NodeId, name: &str) -> OutputId {
        let n = &mut self.nodes[node];
        assert!(
            matches!(n.kind, NodeKind::Operator(_) | NodeKind::TwoInput(_)) && n.output.is_some(),
            "'{}' cannot have side outputs: only operators (not sources or sinks) have them",
            n.name
        );
        if let Some(index) = n.side_outputs.iter().position(|(s, _, _)| s == name) {
            assert_eq!(
                n.side_outputs[index].1,
                TypeId::of::<T>(),
                "side output '{name}' of '{}' was declared with another type than {}",
                n.name,
                type_name::<T>()
            );
            return OutputId {
                node,
                port: index + 1,
            };
        }
        n.side_outputs
            .push((name.to_owned(), TypeId::of::<T>(), port::<T>()));
        OutputId {
            node,
            port: n.side_outputs.len(),
        }
    }

    fn edge<T: Data>(&self, from: OutputId, side: usize, partitioning: Partitioning<T>) -> Edge {
        let produced = self
            .nodes
            .get(from.node)
            .and_then(|n| n.port(from.port))
            .map(|(t, _)| t);
        assert_eq!(
            produced,
            Some(TypeId::of::<T>()),
            "output {} of node {} does not produce a stream of {}",
            from.port,
            from.node,
            type_name::<T>()
        );
        Edge {
            from: from.node,
            port: from.port,
            side,
            forward: matches!(partitioning, Partitioning::Forward),
            ship_strategy: match partitioning {
                Partitioning::Forward => "FORWARD",
                Partitioning::Rebalance(_) => "REBALANCE",
                Partitioning::Hash(..) => "HASH",
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
            kind: NodeKind::Source(source_node(source)),
            inputs: Vec::new(),
            output: Self::output_port::<T>(),
            side_outputs: Vec::new(),
        })
    }

    /// Adds a one-input operator fed by `inputs` (several inputs of one type make a
    /// union).
    pub fn add_operator<I: Data, O: Data>(
        &mut self,
        name: &str,
        inputs: Vec<(impl Into<OutputId>, Partitioning<I>)>,
        factory: OperatorFactory<I, O>,
    ) -> NodeId {
        assert!(!inputs.is_empty(), "operator '{name}' needs an input");
        let inputs = inputs
            .into_iter()
            .map(|(from, p)| self.edge(from.into(), 0, p))
            .collect();
        self.push(Node {
            name: name.to_owned(),
            uid: None,
            kind: NodeKind::Operator(operator_node(factory)),
            inputs,
            output: Self::output_port::<O>(),
            side_outputs: Vec::new(),
        })
    }

    pub fn add_two_input<A: Data, B: Data, O: Data>(
        &mut self,
        name: &str,
        first: (impl Into<OutputId>, Partitioning<A>),
        second: (impl Into<OutputId>, Partitioning<B>),
        factory: TwoInputFactory<A, B, O>,
    ) -> NodeId {
        let inputs = vec![
            self.edge(first.0.into(), 0, first.1),
            self.edge(second.0.into(), 1, second.1),
        ];
        self.push(Node {
            name: name.to_owned(),
            uid: None,
            kind: NodeKind::TwoInput(two_input_node(factory)),
            inputs,
            output: Self::output_port::<O>(),
            side_outputs: Vec::new(),
        })
    }

    pub fn add_sink<T: Data>(
        &mut self,
        name: &str,
        input: (impl Into<OutputId>, Partitioning<T>),
        sink: Arc<dyn Sink<T>>,
    ) -> NodeId {
        let inputs = vec![self.edge(input.0.into(), 0, input.1)];
        self.push(Node {
            name: name.to_owned(),
            uid: None,
            kind: NodeKind::Operator(sink_node(sink)),
            inputs,
            output: None,
            side_outputs: Vec::new(),
        })
    }
}
