//! From a logical graph to tasks: chaining, channels, placement.
//!
//! Chaining rule: a one-input operator (or sink) whose single input edge is
//! `Forward` runs in its producer's task, as the next stage of the producer's
//! pipeline (of the output port the edge starts at: an operator's side
//! outputs are pipelines of their own behind its stage, each with its own
//! chained stages and exchanges). Every other node heads a task of its own. Channels are created per
//! non-chained edge: one per (producer instance, consumer instance) pair, or only
//! `i -> i` for forward edges. Subtask `i` of every node runs on worker
//! `i % workers`.
//!
//! Owns: the physical plan of one attempt — which nodes chain, the channels,
//! placement, each task's control plane (and the coordinator's handles), and
//! each instance's restored state. It reads the logical graph (`graph`) and
//! builds through its nodes (`wiring`). Must not touch: the coordinator, threads
//! or the running of tasks (that is `executor`).

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::Sender;
use flowstate_checkpoint::AlignmentPolicy;
use flowstate_checkpoint::restore::LoadedCheckpoint;

use crate::channel::{BarrierAnnouncements, Signal};
use crate::config::{ExecutionConfig, RestoredState, SubtaskInfo};
use crate::control_plane::{CoordinatorSender, TaskControlPlane, TaskHandle, UploadJob};
use crate::error::BuildError;
use crate::exchange::Batching;
use crate::graph::{JobGraph, MAIN_OUTPUT, NodeId, NodeKind};
use crate::metrics::{JobMetrics, OperatorKind, TaskMetrics};
use crate::pipeline::NamedSidePipelines;
use crate::remote::ChannelId;
use crate::task::Task;
use crate::unaligned::UnalignedInput;
use crate::wiring::{BuildContext, Erased, GateInput};

/// A task's control-plane handle, with the task's number in the plan.
pub(crate) type NumberedHandle = (usize, TaskHandle);

/// A task and the worker it runs on.
pub(crate) struct PlannedTask {
    pub worker: usize,
    pub task: Box<dyn Task>,
}

/// What the plan needs when checkpoints are on.
pub(crate) struct PlanCheckpointing {
    /// Exactly-once: tasks align barriers (or record, unaligned).
    pub aligned: bool,
    /// Whether checkpoints may be unaligned (with exactly-once only).
    pub alignment: AlignmentPolicy,
    pub events: CoordinatorSender,
    pub uploads: Sender<UploadJob>,
    pub restored: Option<Arc<LoadedCheckpoint>>,
    pub job_id: String,
    /// State of operators the job no longer has may be dropped.
    pub allow_non_restored_state: bool,
    /// At-most-once: the attempt's read-ahead reservations (and the source
    /// positions it resumes from, which replace the checkpoint's).
    pub reservations: Option<Arc<crate::reservation::AttemptReservations>>,
}

struct Planner<'g> {
    graph: &'g JobGraph,
    config: &'g ExecutionConfig,
    metrics: &'g Arc<JobMetrics>,
    checkpointing: Option<&'g PlanCheckpointing>,
    signals: &'g [Arc<Signal>],
    /// The control planes' handles of the tasks built, with their numbers.
    handles: Vec<(usize, TaskHandle)>,
    /// The number of the task being built: its index among every task of
    /// the plan, in every process (tasks of other processes count too).
    task_number: usize,
    /// Consumers of each node: (consumer, index of the edge in the consumer's inputs).
    consumers: Vec<Vec<(NodeId, usize)>>,
    /// Senders of (consumer, edge index, producer subtask), one per consumer subtask.
    senders: HashMap<(NodeId, usize, u32), Vec<Erased>>,
    /// Receivers of (consumer, side, consumer subtask).
    receivers: HashMap<(NodeId, usize, u32), Vec<Erased>>,
    /// Notice boards of unaligned barriers, per (consumer, consumer subtask)
    /// that may take unaligned snapshots.
    boards: HashMap<(NodeId, u32), Arc<BarrierAnnouncements>>,
    /// The metrics of the task being built.
    task_metrics: Option<Arc<TaskMetrics>>,
    /// The attempt the plan is built for (it names remote channels).
    attempt: u32,
}

/// A graph index as a channel id's field (a graph holds at most
/// `graph::MAX_NODES` nodes, and a node as many inputs).
fn node_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

impl<'g> Planner<'g> {
    fn chained(&self, node: NodeId) -> bool {
        is_chained(self.graph, node)
    }

    /// The in-flight limit if the tasks headed by `node` may take unaligned
    /// snapshots: checkpoints are exactly-once and may be unaligned, and
    /// every input of the node can be recorded (`None`: they align).
    fn inflight_bytes_max(&self, node: NodeId) -> Option<u64> {
        let checkpointing = self.checkpointing?;
        let AlignmentPolicy::Unaligned {
            inflight_bytes_max, ..
        } = checkpointing.alignment
        else {
            return None;
        };
        let sides = match self.graph.nodes[node].kind {
            NodeKind::Source(_) => return None,
            NodeKind::Operator(_) => 1,
            NodeKind::TwoInput(_) => 2,
        };
        let recordable = (0..sides).all(|side| recorded_edge(self.graph, node, side).is_some());
        (checkpointing.aligned && !self.chained(node) && recordable).then_some(inflight_bytes_max)
    }

    /// How side `side` of `node`'s task reads its edge: what it records and
    /// what it replays of a restored checkpoint (`None`: nothing to do).
    fn gate_input(
        &self,
        node: NodeId,
        side: usize,
        index: u32,
    ) -> Result<Option<GateInput<'g>>, BuildError> {
        let Some(edge_index) = recorded_edge(self.graph, node, side) else {
            return Ok(None);
        };
        let graph = self.graph;
        let edge = &graph.nodes[node].inputs[edge_index];
        let head_uid = graph.uid(node);
        let range = flowstate_state::KeyGroupRange::for_operator(
            index,
            self.config.parallelism,
            self.config.max_parallelism,
        );
        let edge_u32 = node_u32(edge_index);
        let recovered = match self.checkpointing.and_then(|c| c.restored.as_ref()) {
            Some(loaded) => loaded
                .channel_state(&head_uid, edge_u32, index, self.config.parallelism, range)
                .map_err(|e| BuildError::Restore(e.to_string()))?,
            None => None,
        };
        Ok(Some(GateInput {
            edge: edge_u32,
            from_uid: graph.uid(edge.from),
            partitioning: edge.partitioning.as_ref(),
            batch_size: self.config.batch_size,
            recovered,
        }))
    }

    /// The unaligned side of the task of `node`'s subtask `index`, if it
    /// may take unaligned snapshots.
    fn unaligned_input(&mut self, node: NodeId, index: u32) -> Option<UnalignedInput> {
        let inflight_bytes_max = self.inflight_bytes_max(node)?;
        let board = Arc::clone(self.boards.entry((node, index)).or_default());
        let graph = self.graph;
        let owner = crate::pipeline::StageIdentity {
            name: graph.nodes[node].name.as_str().into(),
            uid: graph.uid(node).into(),
            subtask: index,
        };
        let range = flowstate_state::KeyGroupRange::for_operator(
            index,
            self.config.parallelism,
            self.config.max_parallelism,
        );
        Some(UnalignedInput::new(board, owner, range, inflight_bytes_max))
    }

    fn context(&self, node: NodeId, index: u32) -> Result<BuildContext<'_>, BuildError> {
        let uid = self.graph.uid(node);
        let kind = match &self.graph.nodes[node].kind {
            NodeKind::Source(_) => OperatorKind::Source,
            NodeKind::Operator(op) if op.is_sink() => OperatorKind::Sink,
            _ => OperatorKind::Operator,
        };
        let task = self
            .task_metrics
            .as_ref()
            .map_or("", |t| t.name())
            .to_owned();
        let operator_metrics =
            self.metrics
                .register_operator(&uid, &self.graph.nodes[node].name, index, &task, kind);
        let mut info = SubtaskInfo {
            operator: self.graph.nodes[node].name.clone(),
            uid,
            index,
            parallelism: self.config.parallelism,
            max_parallelism: self.config.max_parallelism,
            state_backend: self.config.state_backend.clone(),
            job_id: self
                .checkpointing
                .map_or_else(|| "local".to_owned(), |c| c.job_id.clone()),
            restored: None,
            clock: std::sync::Arc::clone(&self.config.clock),
            metrics: operator_metrics,
        };
        if let Some(loaded) = self.checkpointing.and_then(|c| c.restored.as_ref())
            && loaded.has_operator(&info.uid)
        {
            let keyed = loaded
                .keyed_state(&info.uid, info.key_group_range(), &info.job_id)
                .map_err(|e| BuildError::Restore(e.to_string()))?;
            let lists = loaded.operator_lists(&info.uid, index, self.config.parallelism);
            info.restored = Some(Arc::new(RestoredState { keyed, lists }));
        }
        // At-most-once: a source resumes from its newest reservation, never
        // from the older position of the checkpoint (which would emit again
        // what was emitted after it).
        if let Some(lists) = self
            .checkpointing
            .and_then(|c| c.reservations.as_ref())
            .and_then(|r| r.operator_lists(&info.uid, index))
        {
            let keyed = info
                .restored
                .as_ref()
                .map(|r| r.keyed.clone())
                .unwrap_or_default();
            info.restored = Some(Arc::new(RestoredState { keyed, lists }));
        }
        Ok(BuildContext {
            info,
            metrics: self.metrics,
            task: self.task_metrics.clone(),
            batch_size: self.config.batch_size,
            read_ahead: None,
        })
    }

    /// The control plane of the next task, if checkpoints are on.
    fn control(&mut self, name: &str, index: u32, is_source: bool) -> Option<TaskControlPlane> {
        let checkpointing = self.checkpointing?;
        let signal = Arc::clone(&self.signals[index as usize % self.signals.len()]);
        let (control, handle) = TaskControlPlane::pair(
            name.to_owned(),
            self.task_number,
            checkpointing.aligned,
            signal,
            is_source,
            checkpointing.events.clone(),
            checkpointing.uploads.clone(),
        );
        self.handles.push((self.task_number, handle));
        Some(match &self.task_metrics {
            Some(metrics) => control.with_metrics(Arc::clone(metrics)),
            None => control,
        })
    }

    fn create_channels(&mut self, signals: &[Arc<Signal>]) -> Result<(), BuildError> {
        let p = self.config.parallelism;
        let workers = signals.len();
        let network = self.config.network.as_ref();
        let local = |index: u32| network.is_none_or(|n| n.is_local(index));
        for (consumer, node) in self.graph.nodes.iter().enumerate() {
            if self.chained(consumer) {
                continue;
            }
            for (edge_index, edge) in node.inputs.iter().enumerate() {
                let Some((_, port)) = self.graph.nodes[edge.from].port(edge.port) else {
                    unreachable!("edges start at outputs of their producer");
                };
                for producer in 0..p {
                    let targets: Vec<u32> = if edge.forward {
                        vec![producer]
                    } else {
                        (0..p).collect()
                    };
                    let mut senders = Vec::with_capacity(targets.len());
                    for target in targets {
                        let (producer_here, consumer_here) = (local(producer), local(target));
                        let producer_signal = &signals[producer as usize % workers];
                        let consumer_signal = &signals[target as usize % workers];
                        let remote =
                            network.filter(|n| !edge.forward && n.is_remote(producer, target));
                        // The consumer may take unaligned snapshots: its
                        // producers announce barriers on its notice board
                        // (through the transport for a remote channel).
                        let unaligned = self.inflight_bytes_max(consumer).is_some();
                        let Some(network) = remote else {
                            if producer_here && consumer_here {
                                let board = unaligned.then(|| {
                                    Arc::clone(self.boards.entry((consumer, target)).or_default())
                                });
                                let (tx, rx) = port.channel(
                                    self.config.channel_capacity,
                                    Arc::clone(producer_signal),
                                    Arc::clone(consumer_signal),
                                    board,
                                );
                                senders.push(tx);
                                self.receivers
                                    .entry((consumer, edge.side, target))
                                    .or_default()
                                    .push(rx);
                            }
                            continue;
                        };
                        // A channel through the transport: this process
                        // builds the end(s) whose subtask runs here.
                        let id = ChannelId {
                            attempt: self.attempt,
                            node: node_u32(consumer),
                            edge: node_u32(edge_index),
                            producer,
                            consumer: target,
                        };
                        let transport = &network.transport;
                        let unsupported = || {
                            BuildError::Graph(format!(
                                "the channels into '{}' cannot cross processes",
                                node.name
                            ))
                        };
                        if producer_here {
                            let peer = network.process_of(target);
                            let (tx, end) = port
                                .outbound(
                                    edge.partitioning.as_ref(),
                                    self.config.channel_capacity,
                                    Arc::clone(producer_signal),
                                    transport.outbound_signal(id, peer)?,
                                    unaligned,
                                )
                                .ok_or_else(unsupported)?;
                            transport.register_outbound(id, peer, end)?;
                            senders.push(tx);
                        }
                        if consumer_here {
                            let peer = network.process_of(producer);
                            let board = unaligned.then(|| {
                                Arc::clone(self.boards.entry((consumer, target)).or_default())
                            });
                            let (end, rx) = port
                                .inbound(
                                    edge.partitioning.as_ref(),
                                    self.config.channel_capacity,
                                    transport.inbound_signal(
                                        id,
                                        peer,
                                        self.config.channel_capacity,
                                    )?,
                                    Arc::clone(consumer_signal),
                                    board,
                                )
                                .ok_or_else(unsupported)?;
                            transport.register_inbound(id, peer, end)?;
                            self.receivers
                                .entry((consumer, edge.side, target))
                                .or_default()
                                .push(rx);
                        }
                    }
                    if local(producer) {
                        self.senders
                            .insert((consumer, edge_index, producer), senders);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether anything consumes output `port` of `node`.
    fn consumed(&self, node: NodeId, port: usize) -> bool {
        self.consumers[node]
            .iter()
            .any(|&(consumer, edge)| self.graph.nodes[consumer].inputs[edge].port == port)
    }

    /// The pipeline that follows output `port` of `node` in subtask `index`.
    fn output_pipeline(
        &mut self,
        node: NodeId,
        port: usize,
        index: u32,
        task: &str,
    ) -> Result<Erased, BuildError> {
        let graph = self.graph;
        let Some((_, port_type)) = graph.nodes[node].port(port) else {
            unreachable!("only nodes with an output have an output pipeline");
        };
        let mut branches = Vec::new();
        for (consumer, edge_index) in self.consumers[node].clone() {
            if graph.nodes[consumer].inputs[edge_index].port != port {
                continue;
            }
            if self.chained(consumer) {
                branches.push(self.stage(consumer, index, task)?);
            } else {
                let edge = &self.graph.nodes[consumer].inputs[edge_index];
                let senders = self
                    .senders
                    .remove(&(consumer, edge_index, index))
                    .ok_or_else(|| {
                        BuildError::Graph(format!(
                            "no channels for edge into '{}'",
                            self.graph.nodes[consumer].name
                        ))
                    })?;
                branches.push(port_type.exchange(
                    task,
                    edge.partitioning.as_ref(),
                    senders,
                    self.config.max_parallelism,
                    Batching {
                        size: self.config.batch_size,
                        timeout_ms: self.config.buffer_timeout_ms,
                        clock: Arc::clone(&self.config.clock),
                    },
                    self.task_metrics.clone(),
                ));
            }
        }
        Ok(match branches.len() {
            0 => port_type.discard(),
            1 => branches.pop().unwrap_or_else(|| port_type.discard()),
            _ => port_type.tee(branches),
        })
    }

    /// The pipeline starting with one-input node `node` (an operator or a
    /// sink): its stage, followed by its main output's pipeline and by one
    /// pipeline per side output that something consumes (side outputs
    /// nothing consumes get none: the operator drops their records).
    fn stage(&mut self, node: NodeId, index: u32, task: &str) -> Result<Erased, BuildError> {
        let graph = self.graph;
        let next = match graph.nodes[node].output {
            Some(_) => Some(self.output_pipeline(node, MAIN_OUTPUT, index, task)?),
            None => None,
        };
        let sides = self.side_pipelines(node, index, task)?;
        let cx = self.context(node, index)?;
        match &graph.nodes[node].kind {
            NodeKind::Operator(op) => op.wrap(&cx, next, sides),
            _ => unreachable!("only one-input nodes are stages"),
        }
    }

    /// The pipelines of the side outputs of `node` that something consumes,
    /// named, in port order (side outputs nothing consumes get none: the
    /// operator drops their records).
    fn side_pipelines(
        &mut self,
        node: NodeId,
        index: u32,
        task: &str,
    ) -> Result<NamedSidePipelines, BuildError> {
        let graph = self.graph;
        let mut sides = Vec::new();
        for (i, (name, _, port_type)) in graph.nodes[node].side_outputs.iter().enumerate() {
            let port = i + 1;
            if !self.consumed(node, port) {
                continue;
            }
            let pipeline = self.output_pipeline(node, port, index, task)?;
            sides.push((name.clone(), port_type.side_output(pipeline)));
        }
        Ok(sides)
    }

    fn take_receivers(&mut self, node: NodeId, side: usize, index: u32) -> Vec<Erased> {
        self.receivers
            .remove(&(node, side, index))
            .unwrap_or_default()
    }

    fn task(&mut self, head: NodeId, index: u32) -> Result<Box<dyn Task>, BuildError> {
        let chain = chain_name(self.graph, &self.consumers, head);
        let name = task_name(&chain, index, self.config.parallelism);
        let graph = self.graph;
        let node = &graph.nodes[head];
        self.task_metrics = Some(self.metrics.register_task(&name, &graph.uid(head), index));
        match &node.kind {
            NodeKind::Source(source) => {
                let pipeline = self.output_pipeline(head, MAIN_OUTPUT, index, &name)?;
                let control = self.control(&name, index, true);
                let mut cx = self.context(head, index)?;
                if let Some(reservations) = self.checkpointing.and_then(|c| c.reservations.as_ref())
                {
                    let signal = Arc::clone(&self.signals[index as usize % self.signals.len()]);
                    cx.read_ahead = Some(reservations.register(&cx.info.uid, index, signal));
                }
                source.create_task(name, &cx, pipeline, control)
            }
            NodeKind::Operator(_) => {
                let input = &node.inputs[0];
                let Some((_, port)) = graph.nodes[input.from].port(input.port) else {
                    unreachable!("edges start at outputs of their producer");
                };
                let pipeline = self.stage(head, index, &name)?;
                let receivers = self.take_receivers(head, 0, index);
                let control = self.control(&name, index, false);
                let metrics = self
                    .task_metrics
                    .clone()
                    .unwrap_or_else(|| TaskMetrics::detached(&name));
                let input = self.gate_input(head, 0, index)?;
                let unaligned = self.unaligned_input(head, index);
                port.one_input_task(
                    name,
                    receivers,
                    pipeline,
                    control,
                    metrics,
                    Arc::clone(&self.config.clock),
                    (input, unaligned),
                )
            }
            NodeKind::TwoInput(two) => {
                let pipeline = self.output_pipeline(head, MAIN_OUTPUT, index, &name)?;
                let sides = self.side_pipelines(head, index, &name)?;
                let first = self.take_receivers(head, 0, index);
                let second = self.take_receivers(head, 1, index);
                let control = self.control(&name, index, false);
                let inputs = (
                    self.gate_input(head, 0, index)?,
                    self.gate_input(head, 1, index)?,
                );
                let unaligned = self.unaligned_input(head, index);
                two.create_task(
                    name,
                    &self.context(head, index)?,
                    first,
                    second,
                    (pipeline, sides),
                    control,
                    (inputs, unaligned),
                )
            }
        }
    }
}

/// Builds every task of `graph` that runs in this process (all of them
/// without a [`crate::NetworkPlacement`]); `signals` has one entry per
/// worker. With checkpoints on, also returns the coordinator's handle of
/// every task built, with its number (its index among all the plan's tasks,
/// as [`task_list`] lists them: the tasks' acknowledgements name it).
pub(crate) fn build_tasks(
    graph: &JobGraph,
    config: &ExecutionConfig,
    signals: &[Arc<Signal>],
    metrics: &Arc<JobMetrics>,
    checkpointing: Option<&PlanCheckpointing>,
    attempt: u32,
) -> Result<(Vec<PlannedTask>, Vec<NumberedHandle>), BuildError> {
    config.validate()?;
    if graph.nodes.is_empty() {
        return Err(BuildError::Graph("the job has no operators".into()));
    }
    // A uid names an operator's state in every snapshot: two operators with
    // one uid would restore each other's state.
    let mut seen: HashMap<String, NodeId> = HashMap::new();
    for node in 0..graph.nodes.len() {
        if let Some(other) = seen.insert(graph.uid(node), node) {
            return Err(BuildError::Graph(format!(
                "operators '{}' and '{}' both have uid '{}'; uids must be unique",
                graph.nodes[other].name,
                graph.nodes[node].name,
                graph.uid(node)
            )));
        }
    }
    if let Some(c) = checkpointing
        && let Some(loaded) = c.restored.as_ref()
    {
        check_channel_state(&loaded.metadata, &loaded.metadata_path, |uid, edge| {
            let node = (0..graph.nodes.len()).find(|&n| graph.uid(n) == uid);
            match node {
                None => Err("the job has no such operator".to_owned()),
                Some(n) if is_chained(graph, n) => {
                    Err("the operator now reads its input in its producer's task".to_owned())
                }
                Some(n) => match graph.nodes[n].inputs.get(edge as usize) {
                    None => Err(format!("the operator has no input edge {edge}")),
                    Some(e) if recorded_edge(graph, n, e.side) != Some(edge as usize) => {
                        Err(format!(
                            "its input edge {edge} is no longer a hash or rebalance edge of its own"
                        ))
                    }
                    Some(_) => Ok(()),
                },
            }
        })?;
        let uids: Vec<String> = (0..graph.nodes.len()).map(|n| graph.uid(n)).collect();
        let unknown: Vec<String> = loaded
            .metadata
            .operators
            .iter()
            .filter(|o| !uids.contains(&o.uid))
            .map(|o| format!("'{}' ({})", o.uid, o.name))
            .collect();
        if !unknown.is_empty() && !c.allow_non_restored_state {
            return Err(BuildError::Restore(format!(
                "{} holds state of operators this job does not have: {}. Give them their uids \
                 again (`.uid(...)`), or drop their state with --allow-non-restored-state",
                loaded.metadata_path,
                unknown.join(", ")
            )));
        }
        if !unknown.is_empty() {
            tracing::warn!(
                "dropping the state of operators this job does not have: {}",
                unknown.join(", ")
            );
        }
        if let Some(recorded) = &loaded.metadata.job {
            let differences = flowstate_checkpoint::compare_job(
                recorded,
                &config.job_name,
                &config.job_parameters,
            );
            if !differences.is_empty() {
                let mismatch = flowstate_checkpoint::ParameterMismatch {
                    snapshot: loaded.metadata_path.clone(),
                    differences,
                };
                if !config.allow_parameter_change {
                    return Err(BuildError::ParametersChanged(Box::new(mismatch)));
                }
                tracing::warn!("restoring with changed job parameters, as allowed: {mismatch}");
            }
        }
        if loaded.metadata.max_parallelism != config.max_parallelism {
            return Err(BuildError::Restore(format!(
                "{} was taken with max parallelism {}; this job has {} (key groups cannot change)",
                loaded.metadata_path, loaded.metadata.max_parallelism, config.max_parallelism
            )));
        }
    }
    let consumers = consumers_of(graph);
    let mut planner = Planner {
        graph,
        config,
        metrics,
        checkpointing,
        signals,
        consumers,
        senders: HashMap::new(),
        receivers: HashMap::new(),
        boards: HashMap::new(),
        task_metrics: None,
        attempt,
        task_number: 0,
        handles: Vec::new(),
    };
    planner.create_channels(signals)?;
    let mut tasks = Vec::new();
    for head in 0..graph.nodes.len() {
        if planner.chained(head) {
            continue;
        }
        for index in 0..config.parallelism {
            if config.network.as_ref().is_some_and(|n| !n.is_local(index)) {
                planner.task_number += 1;
                continue;
            }
            let task = planner.task(head, index)?;
            planner.task_number += 1;
            tasks.push(PlannedTask {
                worker: index as usize % signals.len(),
                task,
            });
        }
    }
    Ok((tasks, planner.handles))
}

/// A task of the plan as the coordinator sees it from afar: its name and
/// whether it is a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTaskInfo {
    pub name: String,
    pub is_source: bool,
}

/// Every task of the plan, in task-number order (the order [`build_tasks`]
/// numbers them in, whichever process builds them), without building any.
pub(crate) fn task_list(graph: &JobGraph, config: &ExecutionConfig) -> Vec<PlannedTaskInfo> {
    let consumers = consumers_of(graph);
    let mut tasks = Vec::new();
    for head in 0..graph.nodes.len() {
        if is_chained(graph, head) {
            continue;
        }
        let chain = chain_name(graph, &consumers, head);
        for index in 0..config.parallelism {
            tasks.push(PlannedTaskInfo {
                name: task_name(&chain, index, config.parallelism),
                is_source: matches!(graph.nodes[head].kind, NodeKind::Source(_)),
            });
        }
    }
    tasks
}

/// Whether `node` runs in its producer's task (see the module's chaining rule).
fn is_chained(graph: &JobGraph, node: NodeId) -> bool {
    let node = &graph.nodes[node];
    matches!(node.kind, NodeKind::Operator(_)) && node.inputs.len() == 1 && node.inputs[0].forward
}

/// Consumers of each node: (consumer, index of the edge in the consumer's inputs).
fn consumers_of(graph: &JobGraph) -> Vec<Vec<(NodeId, usize)>> {
    let mut consumers = vec![Vec::new(); graph.nodes.len()];
    for (id, node) in graph.nodes.iter().enumerate() {
        for (edge_index, edge) in node.inputs.iter().enumerate() {
            consumers[edge.from].push((id, edge_index));
        }
    }
    consumers
}

/// "a -> b -> c": the head and every node chained behind it.
fn chain_name(graph: &JobGraph, consumers: &[Vec<(NodeId, usize)>], head: NodeId) -> String {
    let mut name = graph.nodes[head].name.clone();
    for &(consumer, _) in &consumers[head] {
        if is_chained(graph, consumer) {
            name.push_str(" -> ");
            name.push_str(&chain_name(graph, consumers, consumer));
        }
    }
    name
}

/// "a -> b (2/4)": the task of subtask `index` of a chain.
fn task_name(chain: &str, index: u32, parallelism: u32) -> String {
    format!("{chain} ({}/{parallelism})", index + 1)
}

/// The index of the edge that side `side` of `node` reads, if a task can
/// record it and replay it: the side has exactly one input edge, and it is a
/// hash or rebalance edge (forward edges, which only `union` leaves
/// unchained, have no record codec).
fn recorded_edge(graph: &JobGraph, node: NodeId, side: usize) -> Option<usize> {
    let mut edges = graph.nodes[node]
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.side == side);
    match (edges.next(), edges.next()) {
        (Some((index, edge)), None) if !edge.forward => Some(index),
        _ => None,
    }
}

/// In-flight records of an unaligned checkpoint (metadata version 3) must
/// be replayed into the input they were recorded from: a checkpoint whose
/// channel state names an operator or input edge the job cannot replay it
/// into (`replayable` says why not) is refused, whatever
/// `--allow-non-restored-state` says: dropping them loses records. The
/// remedy is a savepoint, which is always aligned.
fn check_channel_state(
    metadata: &flowstate_checkpoint::CheckpointMetadata,
    path: &str,
    replayable: impl Fn(&str, u32) -> Result<(), String>,
) -> Result<(), BuildError> {
    for operator in &metadata.operators {
        for subtask in &operator.subtasks {
            let Some(channels) = &subtask.channels else {
                continue;
            };
            for input in &channels.inputs {
                if let Err(why) = replayable(&operator.uid, input.edge) {
                    return Err(BuildError::Restore(format!(
                        "{path} holds in-flight records of an unaligned checkpoint for \
                         '{}' subtask {} (input edge {}), which this job cannot replay: {why}; \
                         restore a savepoint (always aligned) or the same job",
                        operator.uid, subtask.subtask, input.edge
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod channel_state_tests {
    use flowstate_checkpoint::{
        ChannelStateHandle, CheckpointMetadata, FileRef, OperatorSnapshot, SnapshotKind,
        SubtaskSnapshot,
    };

    use super::check_channel_state;

    fn metadata(channels: Option<ChannelStateHandle>) -> CheckpointMetadata {
        CheckpointMetadata {
            job_id: "job".into(),
            checkpoint_id: 7,
            kind: SnapshotKind::Checkpoint,
            created_unix_ms: 0,
            max_parallelism: 128,
            operators: vec![OperatorSnapshot {
                uid: "count".into(),
                name: "Count".into(),
                parallelism: 2,
                subtasks: vec![
                    SubtaskSnapshot::default(),
                    SubtaskSnapshot {
                        subtask: 1,
                        channels,
                        ..SubtaskSnapshot::default()
                    },
                ],
            }],
            job: None,
        }
    }

    #[test]
    fn channel_state_the_job_cannot_replay_is_refused_naming_who_holds_it() {
        let never = |_: &str, _: u32| Err("no such input".to_owned());
        assert!(check_channel_state(&metadata(None), "job/chk-7/_metadata", never).is_ok());
        let channels = ChannelStateHandle {
            file: FileRef {
                path: "job/chk-7/count-1.channels".into(),
                size: 53,
                crc32c: 0,
            },
            key_group_start: 64,
            key_group_end: 128,
            inputs: vec![flowstate_checkpoint::ChannelInputState {
                edge: 0,
                from_uid: "source".into(),
                partitioning: flowstate_checkpoint::EdgePartitioning::Hash,
                record_type: "u64".into(),
                sections: Vec::new(),
            }],
        };
        let with_state = metadata(Some(channels));
        let error = check_channel_state(&with_state, "job/chk-7/_metadata", never)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("job/chk-7/_metadata")
                && error.contains("'count' subtask 1")
                && error.contains("no such input"),
            "{error}"
        );
        let edge_0 = |uid: &str, edge: u32| {
            (uid == "count" && edge == 0)
                .then_some(())
                .ok_or_else(|| "no".to_owned())
        };
        assert!(check_channel_state(&with_state, "job/chk-7/_metadata", edge_0).is_ok());
    }
}
