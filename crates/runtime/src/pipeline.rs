//! Pipelines: the chain of operators inside one task, ending in channels to other
//! tasks (an [`ExchangeOutput`]) or in a sink.
//!
//! A pipeline is pushed whole batches. Output that a full channel cannot take yet
//! stays *pending* in the pipeline; the task does not take new input while
//! anything is pending, so a task holds at most the output of one input batch and
//! a slow consumer slows its producers (backpressure) with bounded memory.
//!
//! Owns: the stages of a chain ([`OperatorStage`], [`SinkStage`], [`Tee`],
//! [`Discard`]), an operator's output side ([`Fanout`]: its main output and
//! the pipelines behind its side outputs, [`SidePipeline`], [`SideOutputPipeline`]).
//! A pipeline that ends in channels to other tasks ends in an
//! [`crate::exchange::ExchangeOutput`].
//! Must not touch: the task's head, its inbox or the coordinator (that is
//! `task` and `control_plane`), how the chain was planned (`plan`), or how
//! records are routed and batched into channels (`exchange`).

use std::any::Any;
use std::sync::Arc;

use crate::connector::SinkWriter;
/// Re-exported: a pipeline's snapshot is made of them (see [`Pipeline::snapshot`]).
pub use crate::control_plane::OperatorPart;
use crate::error::{TaskError, guarded};
use crate::message::{Barrier, Watermark, WatermarkStatus};
use crate::metrics::{JobMetrics, OperatorMetrics, QueueSample, RecordCounter};
use crate::operator::{Operator, SideOutputs, StateSnapshot};

/// The rest of a task from some operator on.
pub trait Pipeline<T>: Send {
    /// Processes `batch` (leaving it empty).
    fn push(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError>;
    /// The input has ended: finish every operator and send end-of-input on.
    fn end_of_input(&mut self) -> Result<(), TaskError>;
    /// Sends pending output; with `partial`, first also turns partly filled
    /// buffers into batches. Returns true when nothing is left pending.
    fn flush(&mut self, partial: bool) -> Result<bool, TaskError>;
    /// The synchronous part of a checkpoint: every stage's operator snapshots,
    /// in chain order.
    fn snapshot(
        &mut self,
        barrier: Barrier,
        parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError>;
    /// Sends `barrier` downstream, behind everything sent before it.
    fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError>;
    /// Event time advanced to `watermark` (it only grows): every operator in
    /// chain order hears it (`Operator::on_watermark`), its output goes on
    /// before the watermark does, and the watermark is sent downstream
    /// behind everything sent before it (an exchange sends it to every
    /// channel).
    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError>;
    /// The task became idle (every split of its source, or every input
    /// channel, idle) or active again: sent downstream behind everything
    /// sent before it (an exchange sends it to every channel, side outputs
    /// get it too), so consumers stop or start waiting for this task's
    /// watermark. Operators do not hear it; it changes no watermark.
    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError>;
    /// The earliest processing time any operator from here on wants to hear
    /// about (`Operator::next_processing_time`, the minimum over the chain).
    /// Asked by a task with no input to process, never per batch.
    fn next_processing_time(&self) -> Option<i64> {
        None
    }
    /// The idle hook: the job's clock reads `now_ms`; every operator whose
    /// next processing time has come fires (`Operator::on_processing_time`),
    /// in chain order, its output going on like a batch's.
    fn processing_time(&mut self, _now_ms: i64) -> Result<(), TaskError> {
        Ok(())
    }
    /// Checkpoint `checkpoint_id` is complete: let every operator know (sinks commit).
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), TaskError>;
    /// Snapshot `checkpoint_id` was aborted: let every operator and sink know,
    /// in chain order.
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<(), TaskError>;
    /// Metrics, about once per second (never per batch): every operator
    /// samples its state sizes, every exchange adds its channels' fill to
    /// `queues`.
    fn sample(&mut self, _queues: &mut QueueSample) {}
    /// Output is pending that a full channel did not take (as of the last
    /// send): the task waits for room downstream. Asked once per step.
    fn blocked(&self) -> bool {
        false
    }
}

/// Who an operator stage is, for errors and for checkpoints.
#[derive(Clone)]
pub struct StageIdentity {
    pub name: Arc<str>,
    pub uid: Arc<str>,
    pub subtask: u32,
}

impl StageIdentity {
    pub fn of(info: &crate::config::SubtaskInfo) -> Self {
        Self {
            name: info.operator.as_str().into(),
            uid: info.uid.as_str().into(),
            subtask: info.index,
        }
    }

    pub(crate) fn part(&self, snapshot: StateSnapshot) -> OperatorPart {
        OperatorPart {
            uid: Arc::clone(&self.uid),
            name: Arc::clone(&self.name),
            subtask: self.subtask,
            snapshot,
            deferred: None,
        }
    }
}

/// The pipeline behind one side output of an operator, without its record
/// type: what the operator emitted there arrives as the `Vec<T>` buffer of
/// its [`SideOutputs`] port, taken once per call that may emit; everything
/// else (barriers, watermarks, end of input, snapshots, notifications) goes
/// to it exactly as to the operator's main output.
pub trait SideOutputPipeline: Send {
    /// An empty buffer of the side output's record type (a `Vec<T>`), to
    /// declare on the operator's [`SideOutputs`].
    fn new_buffer(&self) -> Box<dyn Any + Send>;
    /// Sends on the records of `buffer` (a `Vec<T>`), leaving it empty.
    fn push_buffer(&mut self, buffer: &mut (dyn Any + Send)) -> Result<(), TaskError>;
    fn end_of_input(&mut self) -> Result<(), TaskError>;
    fn flush(&mut self, partial: bool) -> Result<bool, TaskError>;
    fn snapshot(
        &mut self,
        barrier: Barrier,
        parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError>;
    fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError>;
    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError>;
    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError>;
    fn next_processing_time(&self) -> Option<i64>;
    fn processing_time(&mut self, now_ms: i64) -> Result<(), TaskError>;
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), TaskError>;
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<(), TaskError>;
    /// See [`Pipeline::sample`].
    fn sample(&mut self, _queues: &mut QueueSample) {}
    /// Output is pending that a full channel did not take (as of the last
    /// send): the task waits for room downstream. Asked once per step.
    fn blocked(&self) -> bool {
        false
    }
}

/// The [`SideOutputPipeline`] of records `T`: the typed pipeline behind it.
pub struct SidePipeline<T> {
    next: Box<dyn Pipeline<T>>,
}

impl<T> SidePipeline<T> {
    pub fn new(next: Box<dyn Pipeline<T>>) -> Self {
        Self { next }
    }
}

impl<T: Send + 'static> SideOutputPipeline for SidePipeline<T> {
    fn new_buffer(&self) -> Box<dyn Any + Send> {
        Box::new(Vec::<T>::new())
    }
    #[inline]
    fn push_buffer(&mut self, buffer: &mut (dyn Any + Send)) -> Result<(), TaskError> {
        let Some(records) = buffer.downcast_mut::<Vec<T>>() else {
            unreachable!("a side output's buffer is made by its pipeline");
        };
        if records.is_empty() {
            return Ok(());
        }
        self.next.push(records)
    }
    fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.next.end_of_input()
    }
    fn flush(&mut self, partial: bool) -> Result<bool, TaskError> {
        self.next.flush(partial)
    }
    fn snapshot(
        &mut self,
        barrier: Barrier,
        parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError> {
        self.next.snapshot(barrier, parts)
    }
    fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        self.next.barrier(barrier)
    }
    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        self.next.watermark(watermark)
    }
    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        self.next.watermark_status(status)
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.next.next_processing_time()
    }
    fn processing_time(&mut self, now_ms: i64) -> Result<(), TaskError> {
        self.next.processing_time(now_ms)
    }
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        self.next.notify_complete(checkpoint_id)
    }
    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        self.next.notify_aborted(checkpoint_id)
    }
    fn sample(&mut self, queues: &mut QueueSample) {
        self.next.sample(queues)
    }
    fn blocked(&self) -> bool {
        self.next.blocked()
    }
}

/// The pipelines of an operator's consumed side outputs, each with its name.
pub type NamedSidePipelines = Vec<(String, Box<dyn SideOutputPipeline>)>;

/// An operator's output side: the pipeline of its main output and one per
/// consumed side output, in the order of the operator's [`SideOutputs`]
/// ports. Everything but records (barriers, watermarks, end of input,
/// snapshots, notifications, flushes, processing time) goes to all of them,
/// the main output first. Used by a chained operator ([`OperatorStage`]) and
/// by the head of a two-input task alike.
pub struct Fanout<O> {
    main: Box<dyn Pipeline<O>>,
    /// Empty for almost every operator, which then pays one branch per call
    /// for them.
    sides: Vec<Box<dyn SideOutputPipeline>>,
}

impl<O> Fanout<O> {
    /// Only a main output.
    pub fn new(main: Box<dyn Pipeline<O>>) -> Self {
        Self {
            main,
            sides: Vec::new(),
        }
    }

    /// Adds the pipelines of an operator's consumed side outputs (named),
    /// declaring their buffers on the operator's `outputs`. An error names an
    /// operator (`operator`) that has no side outputs.
    pub fn declare_side_outputs(
        &mut self,
        operator: &str,
        outputs: Option<&mut SideOutputs>,
        sides: NamedSidePipelines,
    ) -> Result<(), String> {
        if sides.is_empty() {
            return Ok(());
        }
        let Some(outputs) = outputs else {
            return Err(format!(
                "operator '{operator}' emits no side outputs, but its side output '{}' is consumed",
                sides[0].0
            ));
        };
        for (name, side) in &sides {
            outputs.declare(name, side.new_buffer());
        }
        self.sides = sides.into_iter().map(|(_, side)| side).collect();
        Ok(())
    }

    /// Whether side outputs are consumed (so the operator's buffers must be
    /// taken after each call that may emit).
    #[inline]
    pub fn has_sides(&self) -> bool {
        !self.sides.is_empty()
    }

    /// Sends on `output` (the main output of one call of the operator), then
    /// what the same call emitted to its side outputs (`outputs`, the
    /// operator's buffers; asked for only when a side output is consumed).
    #[inline]
    pub fn emit<'a>(
        &mut self,
        output: &mut Vec<O>,
        outputs: impl FnOnce() -> Option<&'a mut SideOutputs>,
    ) -> Result<(), TaskError> {
        if !output.is_empty() {
            self.main.push(output)?;
        }
        if self.sides.is_empty() {
            return Ok(());
        }
        let Some(outputs) = outputs() else {
            return Ok(());
        };
        for (index, side) in self.sides.iter_mut().enumerate() {
            side.push_buffer(outputs.records(index))?;
        }
        Ok(())
    }
}

impl<O: Send> Pipeline<O> for Fanout<O> {
    #[inline]
    fn push(&mut self, batch: &mut Vec<O>) -> Result<(), TaskError> {
        self.main.push(batch)
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.main.end_of_input()?;
        for side in &mut self.sides {
            side.end_of_input()?;
        }
        Ok(())
    }

    #[inline]
    fn flush(&mut self, partial: bool) -> Result<bool, TaskError> {
        let mut idle = self.main.flush(partial)?;
        for side in &mut self.sides {
            idle &= side.flush(partial)?;
        }
        Ok(idle)
    }

    fn snapshot(
        &mut self,
        barrier: Barrier,
        parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError> {
        self.main.snapshot(barrier, parts)?;
        for side in &mut self.sides {
            side.snapshot(barrier, parts)?;
        }
        Ok(())
    }

    fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        self.main.barrier(barrier)?;
        for side in &mut self.sides {
            side.barrier(barrier)?;
        }
        Ok(())
    }

    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        self.main.watermark(watermark)?;
        for side in &mut self.sides {
            side.watermark(watermark)?;
        }
        Ok(())
    }

    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        self.main.watermark_status(status)?;
        for side in &mut self.sides {
            side.watermark_status(status)?;
        }
        Ok(())
    }

    fn next_processing_time(&self) -> Option<i64> {
        std::iter::once(self.main.next_processing_time())
            .chain(self.sides.iter().map(|side| side.next_processing_time()))
            .flatten()
            .min()
    }

    fn processing_time(&mut self, now_ms: i64) -> Result<(), TaskError> {
        self.main.processing_time(now_ms)?;
        for side in &mut self.sides {
            side.processing_time(now_ms)?;
        }
        Ok(())
    }

    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        self.main.notify_complete(checkpoint_id)?;
        for side in &mut self.sides {
            side.notify_complete(checkpoint_id)?;
        }
        Ok(())
    }

    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        self.main.notify_aborted(checkpoint_id)?;
        for side in &mut self.sides {
            side.notify_aborted(checkpoint_id)?;
        }
        Ok(())
    }

    fn sample(&mut self, queues: &mut QueueSample) {
        self.main.sample(queues);
        for side in &mut self.sides {
            side.sample(queues);
        }
    }

    #[inline]
    fn blocked(&self) -> bool {
        self.main.blocked() || self.sides.iter().any(|side| side.blocked())
    }
}

/// One chained operator followed by the rest of the pipeline: its main
/// output's, and one per consumed side output.
pub struct OperatorStage<I, O> {
    id: StageIdentity,
    operator: Box<dyn Operator<I, O>>,
    output: Vec<O>,
    next: Fanout<O>,
    /// The operator makes its output's watermarks (an assigner).
    generates: bool,
    /// The newest watermark a generating operator sent on.
    emitted: Watermark,
    metrics: Arc<OperatorMetrics>,
    counter: RecordCounter,
}

impl<I, O> OperatorStage<I, O> {
    pub fn new(
        id: StageIdentity,
        operator: Box<dyn Operator<I, O>>,
        next: Box<dyn Pipeline<O>>,
    ) -> Self {
        let generates = operator.generates_watermarks();
        let metrics = OperatorMetrics::detached(&id.name);
        Self {
            id,
            operator,
            output: Vec::new(),
            next: Fanout::new(next),
            generates,
            emitted: Watermark::MIN,
            counter: RecordCounter::default(),
            metrics,
        }
    }

    /// Counts into `metrics` (the instance's); default: counted, reported
    /// nowhere.
    pub fn with_metrics(mut self, metrics: Arc<OperatorMetrics>) -> Self {
        self.counter = metrics.records();
        self.metrics = metrics;
        self
    }

    /// Adds the pipelines of the operator's consumed side outputs (named),
    /// declaring their buffers on the operator's [`SideOutputs`]. An error
    /// names an operator that has no side outputs.
    pub fn with_side_outputs(mut self, sides: NamedSidePipelines) -> Result<Self, String> {
        self.next
            .declare_side_outputs(&self.id.name, self.operator.side_outputs(), sides)?;
        Ok(self)
    }

    /// Sends on the main output of the operator's last call, then what it
    /// emitted to its side outputs.
    #[inline]
    fn emit(&mut self) -> Result<(), TaskError>
    where
        O: Send,
    {
        // Once per call of the operator (a batch, a watermark, a timer).
        self.counter.records_out += self.output.len() as u64;
        self.metrics.publish(&self.counter);
        let operator = &mut self.operator;
        self.next.emit(&mut self.output, || operator.side_outputs())
    }

    /// A generating operator's watermark after a batch, sent on if it grew.
    fn generated_watermark(&mut self) -> Result<(), TaskError>
    where
        O: Send,
    {
        let operator = &mut self.operator;
        let watermark = guarded(&self.id.name, || Ok(operator.output_watermark()))?;
        if let Some(w) = watermark
            && w > self.emitted
        {
            self.emitted = w;
            self.next.watermark(w)?;
        }
        Ok(())
    }
}

impl<I: Send, O: Send> Pipeline<I> for OperatorStage<I, O> {
    #[inline]
    fn push(&mut self, batch: &mut Vec<I>) -> Result<(), TaskError> {
        self.counter.records_in += batch.len() as u64;
        let (operator, output) = (&mut self.operator, &mut self.output);
        guarded(&self.id.name, || operator.process_batch(batch, output))?;
        batch.clear();
        self.emit()?;
        if self.generates {
            self.generated_watermark()?;
        }
        Ok(())
    }

    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        let (operator, output) = (&mut self.operator, &mut self.output);
        guarded(&self.id.name, || operator.on_watermark(watermark, output))?;
        self.emit()?;
        if !self.generates {
            return self.next.watermark(watermark);
        }
        // An assigner replaces its input's watermarks; only the end of
        // input goes through.
        if watermark == Watermark::MAX && self.emitted < Watermark::MAX {
            self.emitted = Watermark::MAX;
            self.next.watermark(Watermark::MAX)?;
        }
        Ok(())
    }

    /// Passed on unheard, also by an assigner (which replaces watermarks,
    /// not the status): while its input is idle it has no records to make
    /// watermarks from either.
    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        self.next.watermark_status(status)
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        let (operator, output) = (&mut self.operator, &mut self.output);
        guarded(&self.id.name, || operator.finish(output))?;
        self.emit()?;
        self.next.end_of_input()
    }

    fn next_processing_time(&self) -> Option<i64> {
        [
            self.operator.next_processing_time(),
            self.next.next_processing_time(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn processing_time(&mut self, now_ms: i64) -> Result<(), TaskError> {
        if self
            .operator
            .next_processing_time()
            .is_some_and(|due| due <= now_ms)
        {
            let (operator, output) = (&mut self.operator, &mut self.output);
            guarded(&self.id.name, || {
                operator.on_processing_time(now_ms, output)
            })?;
            self.emit()?;
        }
        self.next.processing_time(now_ms)
    }

    #[inline]
    fn flush(&mut self, partial: bool) -> Result<bool, TaskError> {
        self.next.flush(partial)
    }

    fn snapshot(
        &mut self,
        barrier: Barrier,
        parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError> {
        let operator = &mut self.operator;
        let snapshot = guarded(&self.id.name, || operator.snapshot(barrier))?;
        if !snapshot.is_empty() {
            parts.push(self.id.part(snapshot));
        }
        self.next.snapshot(barrier, parts)
    }

    fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        self.next.barrier(barrier)
    }

    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        let operator = &mut self.operator;
        guarded(&self.id.name, || {
            operator.notify_checkpoint_complete(checkpoint_id)
        })?;
        self.next.notify_complete(checkpoint_id)
    }

    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        let operator = &mut self.operator;
        guarded(&self.id.name, || {
            operator.notify_checkpoint_aborted(checkpoint_id)
        })?;
        self.next.notify_aborted(checkpoint_id)
    }

    fn sample(&mut self, queues: &mut QueueSample) {
        self.metrics.set_states(self.operator.state_stats());
        self.next.sample(queues);
    }

    #[inline]
    fn blocked(&self) -> bool {
        self.next.blocked()
    }
}

/// The end of a pipeline that writes into a sink.
pub struct SinkStage<T> {
    id: StageIdentity,
    writer: Box<dyn SinkWriter<T>>,
    metrics: Arc<JobMetrics>,
    operator: Arc<OperatorMetrics>,
    counter: RecordCounter,
}

impl<T> SinkStage<T> {
    pub fn new(
        id: StageIdentity,
        writer: Box<dyn SinkWriter<T>>,
        metrics: Arc<JobMetrics>,
    ) -> Self {
        let operator = OperatorMetrics::detached(&id.name);
        Self {
            id,
            writer,
            metrics,
            operator,
            counter: RecordCounter::default(),
        }
    }

    /// Counts into `operator` (the sink instance's metrics); default:
    /// counted, reported nowhere.
    pub fn with_metrics(mut self, operator: Arc<OperatorMetrics>) -> Self {
        self.counter = operator.records();
        self.operator = operator;
        self
    }
}

impl<T: Send> Pipeline<T> for SinkStage<T> {
    #[inline]
    fn push(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        self.metrics.add_records_to_sinks(batch.len());
        self.counter.records_in += batch.len() as u64;
        self.operator.publish(&self.counter);
        let writer = &mut self.writer;
        guarded(&self.id.name, || writer.write_batch(batch))?;
        batch.clear();
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        let writer = &mut self.writer;
        guarded(&self.id.name, || writer.finish())
    }

    fn flush(&mut self, _partial: bool) -> Result<bool, TaskError> {
        Ok(true)
    }

    fn snapshot(
        &mut self,
        barrier: Barrier,
        parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError> {
        // Only the synchronous half runs here (it is part of the task's
        // pause); the sink's I/O goes with the part to an upload thread.
        let writer = &mut self.writer;
        let prepared = guarded(&self.id.name, || writer.prepare_commit_deferred(barrier))?;
        if !prepared.state.is_empty() || prepared.deferred.is_some() {
            let mut part = self.id.part(StateSnapshot {
                keyed: None,
                lists: prepared.state,
            });
            part.deferred = prepared.deferred;
            parts.push(part);
        }
        Ok(())
    }

    fn barrier(&mut self, _barrier: Barrier) -> Result<(), TaskError> {
        Ok(())
    }

    fn watermark(&mut self, _watermark: Watermark) -> Result<(), TaskError> {
        Ok(())
    }

    fn watermark_status(&mut self, _status: WatermarkStatus) -> Result<(), TaskError> {
        Ok(())
    }

    /// Commits, timed (once per checkpoint): the sink's commit latency.
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        let writer = &mut self.writer;
        let started = std::time::Instant::now();
        let result = guarded(&self.id.name, || writer.commit(checkpoint_id));
        if result.is_ok() {
            self.operator.record_commit(started.elapsed());
        }
        result
    }

    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        let writer = &mut self.writer;
        guarded(&self.id.name, || writer.abort(checkpoint_id))
    }
}

/// The end of a pipeline whose output nobody consumes.
pub struct Discard;

impl<T: Send> Pipeline<T> for Discard {
    fn push(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        batch.clear();
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    fn flush(&mut self, _partial: bool) -> Result<bool, TaskError> {
        Ok(true)
    }
    fn snapshot(
        &mut self,
        _barrier: Barrier,
        _parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError> {
        Ok(())
    }
    fn barrier(&mut self, _barrier: Barrier) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark(&mut self, _watermark: Watermark) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark_status(&mut self, _status: WatermarkStatus) -> Result<(), TaskError> {
        Ok(())
    }
    fn notify_complete(&mut self, _checkpoint_id: u64) -> Result<(), TaskError> {
        Ok(())
    }
    fn notify_aborted(&mut self, _checkpoint_id: u64) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Hands every batch to several pipelines (a stream consumed more than once).
pub struct Tee<T> {
    branches: Vec<Box<dyn Pipeline<T>>>,
    copy: Vec<T>,
}

impl<T> Tee<T> {
    pub fn new(branches: Vec<Box<dyn Pipeline<T>>>) -> Self {
        assert!(branches.len() >= 2, "a tee needs at least two branches");
        Self {
            branches,
            copy: Vec::new(),
        }
    }
}

impl<T: Clone + Send> Pipeline<T> for Tee<T> {
    fn push(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        let last = self.branches.len() - 1;
        for branch in &mut self.branches[..last] {
            self.copy.clone_from(batch);
            branch.push(&mut self.copy)?;
        }
        self.branches[last].push(batch)
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.end_of_input()?;
        }
        Ok(())
    }

    fn flush(&mut self, partial: bool) -> Result<bool, TaskError> {
        let mut idle = true;
        for branch in &mut self.branches {
            idle &= branch.flush(partial)?;
        }
        Ok(idle)
    }

    fn snapshot(
        &mut self,
        barrier: Barrier,
        parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.snapshot(barrier, parts)?;
        }
        Ok(())
    }

    fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.barrier(barrier)?;
        }
        Ok(())
    }

    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.watermark(watermark)?;
        }
        Ok(())
    }

    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.watermark_status(status)?;
        }
        Ok(())
    }

    fn next_processing_time(&self) -> Option<i64> {
        self.branches
            .iter()
            .filter_map(|branch| branch.next_processing_time())
            .min()
    }

    fn processing_time(&mut self, now_ms: i64) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.processing_time(now_ms)?;
        }
        Ok(())
    }

    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.notify_complete(checkpoint_id)?;
        }
        Ok(())
    }

    fn notify_aborted(&mut self, checkpoint_id: u64) -> Result<(), TaskError> {
        for branch in &mut self.branches {
            branch.notify_aborted(checkpoint_id)?;
        }
        Ok(())
    }

    fn sample(&mut self, queues: &mut QueueSample) {
        for branch in &mut self.branches {
            branch.sample(queues);
        }
    }

    fn blocked(&self) -> bool {
        self.branches.iter().any(|branch| branch.blocked())
    }
}
