//! The builder: an environment holds the job graph; streams are typed handles to
//! its nodes.

use std::cell::RefCell;
use std::fmt::Display;
use std::marker::PhantomData;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use flowstate_connectors::{
    CollectSink, CollectionSource, ConnectorError, CountingSink, FileSink, StdoutSink,
    TextLinesSource,
};
use flowstate_runtime::CheckError;
use flowstate_runtime::checkpoint::{CheckOptions, CompatibilityReport, JobParameters};
use flowstate_runtime::graph::{OperatorFactory, TwoInputFactory};
use flowstate_runtime::{
    Data, DeterministicExecutor, ExecutionConfig, JobError, JobGraph, JobReport, NodeId, Operator,
    OutputId, Partitioning, RunningJob, Sink, Source, Wire, WireCodec, start_job,
};
use flowstate_state::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateHandle, KeyedStateBackend,
    ReducingStateDescriptor, ReducingStateHandle, StateKey, StateType, StateValue,
};

use crate::keyed::{
    FnResult, KeySelector, KeyedCoProcessFunction, KeyedCoProcessOperator, KeyedContext,
    KeyedProcessFunction, KeyedProcessOperator,
};
use crate::side_output::OutputTag;

struct EnvInner {
    graph: RefCell<JobGraph>,
    /// Bumped whenever the graph is taken to run: streams of an earlier job
    /// must not be wired into the next one.
    generation: std::cell::Cell<u64>,
    config: ExecutionConfig,
    /// Set by the job's builder ([`StreamEnvironment::set_job_parameters`]);
    /// replaces `config.job_parameters` when the job runs.
    job_parameters: RefCell<Option<JobParameters>>,
}

/// Where a job is assembled and from which it is run.
#[derive(Clone)]
pub struct StreamEnvironment {
    inner: Rc<EnvInner>,
}

impl StreamEnvironment {
    pub fn new(config: ExecutionConfig) -> Self {
        Self {
            inner: Rc::new(EnvInner {
                graph: RefCell::new(JobGraph::new()),
                generation: std::cell::Cell::new(0),
                config,
                job_parameters: RefCell::new(None),
            }),
        }
    }

    /// The configuration the environment was created with (the job
    /// parameters as given then; see [`Self::job_parameters`]).
    pub fn config(&self) -> &ExecutionConfig {
        &self.inner.config
    }

    /// Records `parameters` as the job's (replacing
    /// `config().job_parameters`): a job builder says what its job was built
    /// with, so that every snapshot records it and a restore with other
    /// parameters fails naming them (see [`ExecutionConfig::job_parameters`]).
    pub fn set_job_parameters(&self, parameters: JobParameters) {
        *self.inner.job_parameters.borrow_mut() = Some(parameters);
    }

    /// The job's parameters: the last [`Self::set_job_parameters`], else
    /// the configuration's.
    pub fn job_parameters(&self) -> JobParameters {
        self.inner
            .job_parameters
            .borrow()
            .clone()
            .unwrap_or_else(|| self.inner.config.job_parameters.clone())
    }

    /// The configuration a run uses: [`Self::config`] with
    /// [`Self::job_parameters`].
    pub fn run_config(&self) -> ExecutionConfig {
        ExecutionConfig {
            job_parameters: self.job_parameters(),
            ..self.inner.config.clone()
        }
    }

    fn stream<T>(&self, node: NodeId) -> DataStream<T> {
        self.output_stream(OutputId::from(node))
    }

    fn output_stream<T>(&self, output: OutputId) -> DataStream<T> {
        DataStream {
            env: self.clone(),
            node: output.node,
            port: output.port,
            generation: self.inner.generation.get(),
            _type: PhantomData,
        }
    }

    /// A stream read from `source`.
    pub fn from_source<T: Data>(&self, name: &str, source: impl Source<T>) -> DataStream<T> {
        let node = self
            .inner
            .graph
            .borrow_mut()
            .add_source(name, Arc::new(source));
        self.stream(node)
    }

    /// A bounded stream of the given items.
    pub fn from_collection<T: Data + Sync>(&self, items: Vec<T>) -> DataStream<T> {
        self.from_source("Source: Collection", CollectionSource::new(items))
    }

    /// The lines of a text file or of the files of a directory.
    pub fn read_text_lines(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<DataStream<String>, ConnectorError> {
        let source = TextLinesSource::new(path)?;
        Ok(self.from_source("Source: Text files", source))
    }

    fn take_graph(&self) -> JobGraph {
        self.inner.generation.set(self.inner.generation.get() + 1);
        self.inner.graph.replace(JobGraph::new())
    }

    /// The job graph built so far, for a driver of its own (the whole-job
    /// simulation); the environment starts a new, empty graph.
    pub fn take_job_graph(&self) -> JobGraph {
        self.take_graph()
    }

    /// Would the savepoint or checkpoint at `location` restore into the job
    /// built so far (with [`Self::run_config`]) under `options`? Runs
    /// nothing and leaves the graph in place: each keyed operator is created
    /// once, with nothing restored, so that its function declares its
    /// states; sources and sinks are compared by uid and never opened (see
    /// [`flowstate_runtime::compatibility`]).
    pub fn check_snapshot(
        &self,
        location: &str,
        options: CheckOptions,
    ) -> Result<CompatibilityReport, CheckError> {
        flowstate_runtime::check_snapshot(
            location,
            &self.inner.graph.borrow(),
            &self.run_config(),
            options,
        )
    }

    /// Starts the job on worker threads and returns at once.
    pub fn start(&self) -> Result<RunningJob, JobError> {
        start_job(self.take_graph(), &self.run_config())
    }

    /// Starts the job with its tasks on `cluster` (this process is the job
    /// manager) and returns at once.
    pub fn start_on_cluster(
        &self,
        cluster: std::sync::Arc<dyn flowstate_runtime::distributed::Cluster>,
    ) -> Result<RunningJob, JobError> {
        flowstate_runtime::start_job_on_cluster(self.take_graph(), &self.run_config(), cluster)
    }

    /// [`Self::start_on_cluster`] with the configuration as `adjust` leaves
    /// it (an elected job manager resumes the job it took over).
    pub fn start_on_cluster_with(
        &self,
        cluster: std::sync::Arc<dyn flowstate_runtime::distributed::Cluster>,
        adjust: impl FnOnce(&mut ExecutionConfig),
    ) -> Result<RunningJob, JobError> {
        let mut config = self.run_config();
        adjust(&mut config);
        flowstate_runtime::start_job_on_cluster(self.take_graph(), &config, cluster)
    }

    /// The fingerprint of the job's plan (`JobGraph::fingerprint`): equal in
    /// every process that built the same job with the same arguments.
    pub fn fingerprint(&self) -> String {
        self.inner.graph.borrow().fingerprint(&self.run_config())
    }

    /// Hands the job's graph and configuration to `run` (a task manager runs
    /// its parts with them); the environment's job counts as started.
    pub fn run_with_graph<R>(&self, run: impl FnOnce(&JobGraph, &ExecutionConfig) -> R) -> R {
        let config = self.run_config();
        run(&self.take_graph(), &config)
    }

    /// Runs the job to its end.
    pub fn execute(&self) -> Result<JobReport, JobError> {
        self.start()?.join()
    }

    /// A single-threaded executor whose task interleaving is fixed by `seed`.
    pub fn deterministic(&self, seed: u64) -> Result<DeterministicExecutor, JobError> {
        DeterministicExecutor::new(self.take_graph(), &self.run_config(), seed)
    }
}

/// A stream of records of type `T`.
pub struct DataStream<T> {
    env: StreamEnvironment,
    node: NodeId,
    /// The node's output port this stream is (0: its main output; a side
    /// output otherwise).
    port: usize,
    generation: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        Self {
            env: self.env.clone(),
            node: self.node,
            port: self.port,
            generation: self.generation,
            _type: PhantomData,
        }
    }
}

struct MapOperator<F>(Arc<F>);

impl<I, O, F: Fn(I) -> O + Send + Sync> Operator<I, O> for MapOperator<F> {
    #[inline]
    fn process_batch(&mut self, input: &mut Vec<I>, output: &mut Vec<O>) -> FnResult {
        let f = &*self.0;
        output.extend(input.drain(..).map(f));
        Ok(())
    }
}

struct FilterOperator<F>(Arc<F>);

impl<T, F: Fn(&T) -> bool + Send + Sync> Operator<T, T> for FilterOperator<F> {
    #[inline]
    fn process_batch(&mut self, input: &mut Vec<T>, output: &mut Vec<T>) -> FnResult {
        let f = &*self.0;
        output.extend(input.drain(..).filter(f));
        Ok(())
    }
}

struct FlatMapOperator<F>(Arc<F>);

impl<I, O, R, F> Operator<I, O> for FlatMapOperator<F>
where
    R: IntoIterator<Item = O>,
    F: Fn(I) -> R + Send + Sync,
{
    #[inline]
    fn process_batch(&mut self, input: &mut Vec<I>, output: &mut Vec<O>) -> FnResult {
        let f = &*self.0;
        for record in input.drain(..) {
            output.extend(f(record));
        }
        Ok(())
    }
}

struct Identity;

impl<T: Send> Operator<T, T> for Identity {
    fn process_batch(&mut self, input: &mut Vec<T>, output: &mut Vec<T>) -> FnResult {
        output.append(input);
        Ok(())
    }
}

fn factory<I, O, Op>(make: impl Fn() -> Op + Send + 'static) -> OperatorFactory<I, O>
where
    Op: Operator<I, O> + 'static,
{
    Box::new(move |_| Ok(Box::new(make()) as Box<dyn Operator<I, O>>))
}

impl<T> DataStream<T> {
    /// The graph this stream belongs to; panics if that job was already started
    /// (a programming error: its node ids mean nothing in the next job).
    fn graph(&self) -> std::cell::RefMut<'_, JobGraph> {
        assert_eq!(
            self.generation,
            self.env.inner.generation.get(),
            "this stream belongs to a job that was already started; build the next job's streams anew"
        );
        self.env.inner.graph.borrow_mut()
    }

    /// The node output this stream is.
    fn output(&self) -> OutputId {
        OutputId {
            node: self.node,
            port: self.port,
        }
    }
}

impl<T: Data> DataStream<T> {
    /// The side output `tag` of the operator that produced this stream (a
    /// keyed process function's `ctx.output(&tag, ..)`, a window's late
    /// records): a stream of its own, transformed, exchanged and sunk like
    /// any other. Records emitted to a side output that is never asked for
    /// are dropped. Panics if this stream is itself a side output, or its
    /// operator cannot have side outputs (sources); the job fails to build
    /// if the operator emits none (e.g. a `map`).
    pub fn side_output<U: Data>(&self, tag: &OutputTag<U>) -> DataStream<U> {
        assert_eq!(
            self.port, 0,
            "a side output has no side outputs of its own: ask the operator's main stream"
        );
        let output = self.graph().add_side_output::<U>(self.node, tag.name());
        self.env.output_stream(output)
    }

    /// Sets the stable id under which this operator's state is checkpointed
    /// (restore matches state by it). Without one, `<position>-<name>` is used.
    /// On a side output, this is the id of the operator that emits it.
    pub fn uid(self, uid: &str) -> Self {
        self.graph().set_uid(self.node, uid);
        self
    }

    /// Renames the operator that produces this stream (names appear in task names
    /// and error messages).
    pub fn name(self, name: &str) -> Self {
        self.graph().set_name(self.node, name);
        self
    }

    fn add<O: Data>(&self, name: &str, factory: OperatorFactory<T, O>) -> DataStream<O> {
        let node =
            self.graph()
                .add_operator(name, vec![(self.output(), Partitioning::Forward)], factory);
        self.env.stream(node)
    }

    pub fn map<O: Data>(&self, f: impl Fn(T) -> O + Send + Sync + 'static) -> DataStream<O> {
        let f = Arc::new(f);
        self.add("Map", factory(move || MapOperator(Arc::clone(&f))))
    }

    pub fn filter(&self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DataStream<T> {
        let f = Arc::new(f);
        self.add("Filter", factory(move || FilterOperator(Arc::clone(&f))))
    }

    pub fn flat_map<O: Data, R: IntoIterator<Item = O> + 'static>(
        &self,
        f: impl Fn(T) -> R + Send + Sync + 'static,
    ) -> DataStream<O> {
        let f = Arc::new(f);
        self.add("FlatMap", factory(move || FlatMapOperator(Arc::clone(&f))))
    }

    /// The records of both streams, in no particular order between them.
    pub fn union(&self, other: &DataStream<T>) -> DataStream<T> {
        let node = self.graph().add_operator(
            "Union",
            vec![
                (self.output(), Partitioning::<T>::Forward),
                (other.output(), Partitioning::Forward),
            ],
            factory(|| Identity),
        );
        self.env.stream(node)
    }

    /// Redistributes whole batches round-robin over the next operator's
    /// instances. Its channels may cross processes: the records must be
    /// [`Wire`] (serde's `Serialize` and `Deserialize`, derived).
    pub fn rebalance(&self) -> DataStream<T>
    where
        T: Wire,
    {
        let node = self.graph().add_operator(
            "Rebalance",
            vec![(self.output(), Partitioning::<T>::rebalance())],
            factory(|| Identity),
        );
        self.env.stream(node)
    }

    /// Event time for a stream whose source has none: records pass
    /// unchanged, and the stream's watermarks are made from them by
    /// `strategy` (one generator per parallel instance, asked after every
    /// batch). Watermarks from upstream are dropped (only the end of input
    /// goes through), as Flink's `assignTimestampsAndWatermarks`. Prefer a
    /// source's own event time (e.g. `SequenceSource::with_event_time`): it
    /// is generated per split, so records are not late merely because
    /// splits are interleaved.
    pub fn assign_timestamps_and_watermarks(
        &self,
        strategy: flowstate_runtime::WatermarkStrategy<T>,
    ) -> DataStream<T> {
        self.add(
            "Timestamps/Watermarks",
            Box::new(move |_| {
                Ok(Box::new(flowstate_runtime::TimestampsAndWatermarks::new(
                    strategy.clone(),
                )) as Box<dyn Operator<T, T>>)
            }),
        )
    }

    /// Partitions the stream by key: all records of a key reach the same instance
    /// of the next (keyed) operator. Its channels may cross processes: the
    /// records must be [`Wire`] (serde's `Serialize` and `Deserialize`,
    /// derived).
    pub fn key_by<K: StateKey>(
        &self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<K, T>
    where
        T: Wire,
    {
        KeyedStream {
            stream: self.clone(),
            key_fn: KeySelector::new(key),
            wire: WireCodec::new(),
        }
    }

    /// Writes the stream to `sink`.
    pub fn sink_to(&self, name: &str, sink: impl Sink<T>) {
        self.graph()
            .add_sink(name, (self.output(), Partitioning::Forward), Arc::new(sink));
    }

    /// Collects every record in memory; read the vector after the job ended.
    pub fn collect(&self) -> Arc<Mutex<Vec<T>>> {
        let (sink, items) = CollectSink::new();
        self.sink_to("Sink: Collect", sink);
        items
    }

    /// Counts the records and drops them.
    pub fn count(&self) -> Arc<AtomicU64> {
        let (sink, count) = CountingSink::new();
        self.sink_to("Sink: Count", sink);
        count
    }
}

impl<T: Data + Display> DataStream<T> {
    /// Prints each record to standard output.
    pub fn print(&self) {
        self.sink_to("Sink: Stdout", StdoutSink);
    }

    /// Writes each record as a line into part files under `dir`.
    pub fn write_lines(&self, dir: impl AsRef<Path>) -> Result<(), ConnectorError> {
        self.sink_to("Sink: Files", FileSink::new(dir)?);
        Ok(())
    }
}

/// A stream partitioned by a key of type `K`.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    key_fn: KeySelector<T, K>,
    /// The records' codec: the channels of the edge into a keyed operator
    /// may cross processes.
    wire: WireCodec<T>,
}

impl<K, T> Clone for KeyedStream<K, T> {
    fn clone(&self) -> Self {
        Self {
            stream: self.stream.clone(),
            key_fn: self.key_fn.clone(),
            wire: self.wire,
        }
    }
}

impl<K: StateKey, T: Data> KeyedStream<K, T> {
    fn partitioning(&self) -> Partitioning<T> {
        let max_parallelism = self.stream.env.config().max_parallelism;
        Partitioning::Hash(self.key_fn.key_group_fn(max_parallelism), self.wire)
    }

    /// Runs `function` on every record with the state of the record's key.
    pub fn process<O: Data>(&self, function: impl KeyedProcessFunction<K, T, O>) -> DataStream<O> {
        let key_fn = self.key_fn.clone();
        let factory: OperatorFactory<T, O> = Box::new(move |subtask| {
            let operator =
                KeyedProcessOperator::create::<O>(subtask, key_fn.clone(), function.clone())?;
            Ok(Box::new(operator) as Box<dyn Operator<T, O>>)
        });
        let env = &self.stream.env;
        let node = self.stream.graph().add_operator(
            "KeyedProcess",
            vec![(self.stream.output(), self.partitioning())],
            factory,
        );
        env.stream(node)
    }

    /// Combines the records of each key with `f` and emits the combined value after
    /// every record.
    pub fn reduce(&self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DataStream<T>
    where
        T: StateValue,
    {
        let reduce = Reduce {
            f: Arc::new(f),
            handle: None,
        };
        self.process(reduce).name("Reduce")
    }

    /// Folds the records of each key with `function` and emits its result after
    /// every record.
    /// The input, accumulator and output types are recorded in snapshots by
    /// their declared names ([`flowstate_state::StateType`]).
    pub fn aggregate<Acc: StateValue, O: Data + StateType>(
        &self,
        function: impl AggregateFunction<T, Acc, O> + Clone,
    ) -> DataStream<O>
    where
        T: StateType,
    {
        self.process(Aggregate {
            function,
            handle: None,
        })
        .name("Aggregate")
    }

    /// Joins this keyed stream with another of the same key type: a two-input
    /// operator sharing the key's state.
    pub fn connect<B: Data>(&self, other: &KeyedStream<K, B>) -> ConnectedKeyedStreams<K, T, B> {
        ConnectedKeyedStreams {
            first: self.clone(),
            second: other.clone(),
        }
    }
}

/// Two keyed streams processed together.
pub struct ConnectedKeyedStreams<K, A, B> {
    first: KeyedStream<K, A>,
    second: KeyedStream<K, B>,
}

impl<K: StateKey, A: Data, B: Data> ConnectedKeyedStreams<K, A, B> {
    pub fn process<O: Data>(
        &self,
        function: impl KeyedCoProcessFunction<K, A, B, O>,
    ) -> DataStream<O> {
        let first_key = self.first.key_fn.clone();
        let second_key = self.second.key_fn.clone();
        let factory: TwoInputFactory<A, B, O> = Box::new(move |subtask| {
            let operator = KeyedCoProcessOperator::create::<O>(
                subtask,
                first_key.clone(),
                second_key.clone(),
                function.clone(),
            )?;
            Ok(Box::new(operator) as Box<dyn flowstate_runtime::TwoInputOperator<A, B, O>>)
        });
        let env = &self.first.stream.env;
        let node = self.first.stream.graph().add_two_input(
            "KeyedCoProcess",
            (self.first.stream.output(), self.first.partitioning()),
            (self.second.stream.output(), self.second.partitioning()),
            factory,
        );
        env.stream(node)
    }
}

struct Reduce<T> {
    f: Arc<dyn Fn(T, T) -> T + Send + Sync>,
    handle: Option<ReducingStateHandle<T>>,
}

impl<T> Clone for Reduce<T> {
    fn clone(&self) -> Self {
        Self {
            f: Arc::clone(&self.f),
            handle: self.handle.clone(),
        }
    }
}

impl<K: StateKey, T: StateValue> KeyedProcessFunction<K, T, T> for Reduce<T> {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<K>) -> FnResult {
        let f = Arc::clone(&self.f);
        let descriptor = ReducingStateDescriptor::new("reduce", move |a, b| f(a, b));
        self.handle = Some(state.reducing_state(&descriptor)?);
        Ok(())
    }

    #[inline]
    fn process(&mut self, record: T, ctx: &mut KeyedContext<'_, K>, out: &mut Vec<T>) -> FnResult {
        let handle = self
            .handle
            .as_ref()
            .ok_or("reduce state used before open")?;
        if let Some(value) = ctx.reducing(handle).add(record)? {
            out.push(value.clone());
        }
        Ok(())
    }
}

struct Aggregate<F, I, Acc, O> {
    function: F,
    handle: Option<AggregatingStateHandle<I, Acc, O>>,
}

impl<F: Clone, I, Acc, O> Clone for Aggregate<F, I, Acc, O> {
    fn clone(&self) -> Self {
        Self {
            function: self.function.clone(),
            handle: self.handle.clone(),
        }
    }
}

impl<K, I, Acc, O, F> KeyedProcessFunction<K, I, O> for Aggregate<F, I, Acc, O>
where
    K: StateKey,
    I: Send + StateType + 'static,
    Acc: StateValue,
    O: Send + StateType + 'static,
    F: AggregateFunction<I, Acc, O> + Clone,
{
    fn open(&mut self, state: &mut dyn KeyedStateBackend<K>) -> FnResult {
        let descriptor = AggregatingStateDescriptor::new("aggregate", self.function.clone());
        self.handle = Some(state.aggregating_state(&descriptor)?);
        Ok(())
    }

    #[inline]
    fn process(&mut self, record: I, ctx: &mut KeyedContext<'_, K>, out: &mut Vec<O>) -> FnResult {
        let handle = self
            .handle
            .as_ref()
            .ok_or("aggregate state used before open")?;
        out.push(ctx.aggregating(handle).add(record)?);
        Ok(())
    }
}
