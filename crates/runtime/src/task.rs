//! Tasks: the unit of scheduling. A task is a head (a source, or one or two input
//! gates) followed by a pipeline of chained operators.
//!
//! Tasks never block: [`Task::step`] does a bounded amount of work (at most one
//! input batch or one control event) and says whether it made progress. That is
//! what lets one worker thread run many tasks, and lets a seeded scheduler run a
//! whole job on one thread in a reproducible order.
//!
//! Checkpoints: a source task records its reader's position and emits barrier n
//! when the coordinator triggers n; other tasks take their snapshot when barrier
//! n has arrived on every input, or, unaligned, at its first sighting, and
//! then record their input until barrier n arrived everywhere
//! ([`crate::alignment`]). The snapshot's synchronous part runs in the task's
//! step; the frozen state (and, unaligned, the recorded in-flight records,
//! once complete) goes to an upload thread.
//!
//! Unaligned checkpoints change the order of a step: notices of barriers on
//! the task's board, the aligned-until deadline and reading ahead on recorded
//! channels come before the task looks at its own pending output, so a
//! backpressured task still snapshots, forwards the barrier and records.
//!
//! Lifecycle notifications (`Complete(n)`, `Abort(n)` in the task's inbox) are
//! taken at the start of every step, before any input: the head (a source's
//! reader, a two-input operator) hears them first, then every chained operator
//! and the sink, on the task's worker thread.
//!
//! Watermarks: a source task sends its reader's watermark on when it grew
//! (and [`Watermark::MAX`] once the reader is finished); other tasks keep
//! the watermark of each input channel, and when the minimum over the open
//! channels (of both gates, for two inputs) grows, every chained operator
//! hears it in order and it travels on. Watermarks are in band: on a channel
//! blocked for alignment they wait like data.
//!
//! Idleness ([`WatermarkStatus`]): a source task whose reader says it is
//! idle (`SourceReader::is_idle`: every split idle for the strategy's
//! idleness) sends `Idle` once, and `Active` before the next record or
//! watermark. An input gate leaves its idle channels out of the minimum; a
//! task all of whose channels are idle (or finished at `MAX`) sends `Idle`
//! on, and `Active` when one of them is active again. A task's output
//! watermark never goes backwards: a channel active again below it holds
//! the task where it is until it catches up. Barriers and alignment ignore
//! the status.
//!
//! Processing time (the idle hook): a task with no input to process (its
//! gates empty, its source `Pending`) asks its operators when they next need
//! processing time ([`Pipeline::next_processing_time`]) and reads the job's
//! clock only if one does: what is due fires at once
//! ([`Pipeline::processing_time`]) and its output goes on like a batch's;
//! otherwise the step says when it will be due (`Step::Idle { wake_at }`).
//! Nothing is asked per record or batch.
//!
//! Owns: the task kinds ([`SourceTask`], [`OneInputTask`], [`TwoInputTask`]),
//! input gates and barrier alignment, and the synchronous part of a snapshot.
//! It talks to the coordinator only through its `control_plane` end. Must not
//! touch: threads or scheduling (`executor`), snapshot storage (`upload`), or
//! the graph and plan that built it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_state::SharedClock;

use crate::alignment::{BarrierTracker, InputMode, TrackerEvent};
use crate::channel::ChannelReceiver;
use crate::connector::{SourcePoll, SourceReader};
use crate::control_plane::{OperatorPart, TaskCommand, TaskControlPlane};
use crate::error::{TaskError, guarded};
use crate::input_gate::{GateEvent, InputGate, InputStatus, InputWatermark, RecordedInput};
use crate::message::{Barrier, BarrierKind, Watermark, WatermarkStatus};
use crate::metrics::{
    JobMetrics, OperatorMetrics, QueueSample, RecordCounter, TaskMetrics, Waiting, WatermarkGauge,
};
use crate::operator::{StateSnapshot, TwoInputOperator};
use crate::pipeline::{Fanout, NamedSidePipelines, Pipeline, StageIdentity};
use crate::unaligned::{UnalignedInput, deadline_instant};

/// What one step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Did some work; step again soon.
    Progress,
    /// Nothing to do until a channel wakes the worker (or `wake_at` passes).
    Idle { wake_at: Option<Instant> },
    /// The task has ended; never step it again.
    Finished,
}

/// A schedulable task.
pub trait Task: Send {
    fn name(&self) -> &str;
    fn step(&mut self) -> Result<Step, TaskError>;
    /// The task's metrics, whose time its worker accounts (`None`: none).
    fn metrics(&self) -> Option<&Arc<TaskMetrics>> {
        None
    }
    /// What the task waits for after its last step (asked once per step):
    /// room downstream (backpressured: output is pending, or the step
    /// found it so), input (idle: a step that said `Idle` for another
    /// reason), or nothing (`None`: it is runnable).
    fn waiting(&self) -> Option<Waiting> {
        None
    }
    /// Samples the gauges that cost a look (queue fill, state sizes) into
    /// the task's metrics: called by the worker about once per
    /// [`crate::metrics::SAMPLE_INTERVAL`], between steps.
    fn sample_metrics(&mut self) {}
}

/// A task's metrics as the task keeps them: its shared [`TaskMetrics`] and
/// its own record counters, and what its last step waits for.
struct TaskMeter {
    shared: Arc<TaskMetrics>,
    counter: RecordCounter,
    /// What the last step waits for: `Input` unless it found its output
    /// blocked; `None` after progress.
    waiting: Option<Waiting>,
}

impl TaskMeter {
    fn new(shared: Arc<TaskMetrics>) -> Self {
        Self {
            counter: shared.records(),
            shared,
            waiting: None,
        }
    }

    /// What the task waits for after its step, `blocked`: its pipeline
    /// holds output a full channel did not take.
    #[inline]
    fn waiting(&self, blocked: bool) -> Option<Waiting> {
        if blocked {
            Some(Waiting::Output)
        } else {
            self.waiting
        }
    }

    /// `n` records came in (once per batch).
    #[inline]
    fn records_in(&mut self, n: usize) {
        self.counter.records_in += n as u64;
        self.shared.publish_records_in(&self.counter);
    }

    /// Publishes the queue fill: the inputs' (`input`) and what the
    /// pipeline reports of its outputs.
    fn sample<T>(&self, input: (u64, u64), pipeline: &mut dyn Pipeline<T>) {
        let mut sample = QueueSample {
            input: input.0,
            input_capacity: input.1,
            ..QueueSample::default()
        };
        pipeline.sample(&mut sample);
        self.shared.set_queues(&sample);
    }
}

/// An operator instance's counters at the head of a task (a source, a
/// two-input operator): published once per batch.
struct HeadMeter {
    shared: Arc<OperatorMetrics>,
    counter: RecordCounter,
}

impl HeadMeter {
    fn new(shared: Arc<OperatorMetrics>) -> Self {
        Self {
            counter: shared.records(),
            shared,
        }
    }

    #[inline]
    fn count(&mut self, records_in: usize, records_out: usize) {
        self.counter.records_in += records_in as u64;
        self.counter.records_out += records_out as u64;
        self.shared.publish(&self.counter);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// End of input was pushed; sending what is pending.
    Draining,
    Done,
}

/// Steps shared by every task after its input ended.
fn drain<T>(
    phase: &mut Phase,
    pipeline: &mut dyn Pipeline<T>,
    meter: &mut TaskMeter,
) -> Result<Step, TaskError> {
    match phase {
        Phase::Done => Ok(Step::Finished),
        _ => {
            if pipeline.flush(false)? {
                *phase = Phase::Done;
                Ok(Step::Finished)
            } else {
                meter.waiting = Some(Waiting::Output);
                Ok(Step::Idle { wake_at: None })
            }
        }
    }
}

/// What the idle hook found (see [`idle_processing_time`]).
enum ProcessingTime {
    /// Something is due: fire everything due at this reading of the clock.
    Due(i64),
    /// Nothing is due: the instant the next timer is (`None`: none pending,
    /// or a clock that cannot say, e.g. a `ManualClock`).
    Later(Option<Instant>),
}

/// The idle hook's look at processing time, given the earliest time the
/// task's operators want to hear about: the clock is read only if there is
/// one.
fn idle_processing_time(clock: &SharedClock, next: Option<i64>) -> ProcessingTime {
    let Some(next) = next else {
        return ProcessingTime::Later(None);
    };
    let now = clock.now_ms();
    if next <= now {
        ProcessingTime::Due(now)
    } else {
        ProcessingTime::Later(clock.instant_at(next))
    }
}

/// The earlier of two wake-up instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sends the task's new status downstream if it changed (`idle`: the status
/// last sent, initially active).
fn announce<T>(
    idle: &mut bool,
    now_idle: bool,
    pipeline: &mut dyn Pipeline<T>,
) -> Result<(), TaskError> {
    if *idle != now_idle {
        *idle = now_idle;
        let status = if now_idle {
            WatermarkStatus::Idle
        } else {
            WatermarkStatus::Active
        };
        pipeline.watermark_status(status)?;
    }
    Ok(())
}

/// The synchronous part of a checkpoint, then the barrier downstream, then the
/// hand-over to an upload thread.
/// `parts` holds what the task's head snapshotted since `started` (a source's
/// position, a two-input operator's state): the pause counts from there.
fn checkpoint<T>(
    control: &TaskControlPlane,
    pipeline: &mut dyn Pipeline<T>,
    barrier: Barrier,
    started: Instant,
    parts: Vec<OperatorPart>,
    alignment: Duration,
) -> Result<(), TaskError> {
    let (parts, sync_pause) = snapshot_and_forward(pipeline, barrier, started, parts)?;
    control.submit(barrier, parts, sync_pause, alignment);
    Ok(())
}

/// The synchronous part of a checkpoint and the barrier downstream: the
/// parts to upload and the pause.
fn snapshot_and_forward<T>(
    pipeline: &mut dyn Pipeline<T>,
    barrier: Barrier,
    started: Instant,
    mut parts: Vec<OperatorPart>,
) -> Result<(Vec<OperatorPart>, Duration), TaskError> {
    pipeline.snapshot(barrier, &mut parts)?;
    let sync_pause = started.elapsed();
    tracing::debug!(
        checkpoint = barrier.id,
        sync_pause_us = sync_pause.as_micros() as u64,
        "synchronous part done"
    );
    pipeline.barrier(barrier)?;
    Ok((parts, sync_pause))
}

/// The input mode of a task reading channels under `control`.
fn input_mode(control: Option<&TaskControlPlane>) -> InputMode {
    if control.is_none_or(|c| c.aligned) {
        InputMode::Aligned
    } else {
        InputMode::NonBlocking
    }
}

/// What a source does about a barrier it is told to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterBarrier {
    Continue,
    /// Stop-with-savepoint: emit nothing more until `Finish` or `Resume`.
    Suspend,
}

/// A command for the head of a task (a source's reader, a two-input
/// operator), which the pipeline behind it does not cover.
#[derive(Debug, Clone, Copy)]
enum HeadCommand {
    /// Sources only: take the position and emit this barrier.
    Trigger(Barrier, AfterBarrier),
    /// Sources only: a suspending savepoint failed; read on.
    Resume,
    /// Snapshot n is complete; the head hears it before the pipeline does.
    Complete(u64),
    /// Snapshot n was aborted; the head hears it before the pipeline does.
    Aborted(u64),
}

/// Handles the commands from the coordinator: the lifecycle notifications go
/// to the head (`head`) and then down the pipeline, in the order they were
/// sent. Returns the newest completed checkpoint id (`u64::MAX` for `Finish`).
///
/// Completion and abort travel out of band: they carry no position in the
/// stream, and a task hears of snapshot n only after it acknowledged n
/// (complete) or at any time (abort), so they may be handled between any two
/// steps.
fn drain_commands<T>(
    control: Option<&TaskControlPlane>,
    pipeline: &mut dyn Pipeline<T>,
    mut head: impl FnMut(HeadCommand) -> Result<(), TaskError>,
) -> Result<Option<u64>, TaskError> {
    let Some(control) = control else {
        return Ok(None);
    };
    let mut completed = None;
    while let Some(command) = control.next_command() {
        match command {
            TaskCommand::Trigger(barrier) => {
                head(HeadCommand::Trigger(barrier, AfterBarrier::Continue))?
            }
            TaskCommand::TriggerAndSuspend(barrier) => {
                // The barrier after which the sources stop: sinks and operators
                // learn from its kind that it ends the job.
                let kind = if barrier.kind.is_savepoint() {
                    BarrierKind::StopWithSavepoint
                } else {
                    BarrierKind::StopWithCheckpoint
                };
                let barrier = Barrier { kind, ..barrier };
                head(HeadCommand::Trigger(barrier, AfterBarrier::Suspend))?
            }
            TaskCommand::Resume => head(HeadCommand::Resume)?,
            TaskCommand::Complete(id) => {
                head(HeadCommand::Complete(id))?;
                pipeline.notify_complete(id)?;
                completed = Some(completed.map_or(id, |c: u64| c.max(id)));
            }
            TaskCommand::Abort(id) => {
                head(HeadCommand::Aborted(id))?;
                pipeline.notify_aborted(id)?;
            }
            TaskCommand::Finish => completed = Some(u64::MAX),
        }
    }
    Ok(completed)
}

/// A source followed by its chained operators.
pub struct SourceTask<T> {
    name: String,
    id: StageIdentity,
    reader: Box<dyn SourceReader<T>>,
    pipeline: Box<dyn Pipeline<T>>,
    buffer: Vec<T>,
    batch_size: usize,
    phase: Phase,
    metrics: Arc<JobMetrics>,
    control: Option<TaskControlPlane>,
    /// The reader has no more records; with checkpoints, the task ends its
    /// output only when the coordinator says so (`Finish`), after the checkpoint
    /// taken once every source was exhausted completed: so the last records are
    /// committed, and every task is still there to take part in that checkpoint.
    exhausted: bool,
    exhaustion_reported: bool,
    /// Stop-with-savepoint: the barrier is out and nothing may follow it
    /// until the coordinator says `Finish` or `Resume`.
    suspended: bool,
    /// Barriers the coordinator asked for that are not out yet (they wait
    /// for the records held read ahead to be emitted).
    pending: Vec<(Barrier, AfterBarrier)>,
    /// At-most-once: records polled ahead of what was emitted.
    read_ahead: Option<ReadAhead<T>>,
    /// The newest watermark sent downstream.
    watermark: Watermark,
    /// The status last sent downstream is `Idle` (the reader was idle).
    idle: bool,
    gauge: Option<WatermarkGauge>,
    /// Processing time, for the idle hook (the job's clock).
    clock: SharedClock,
    meter: TaskMeter,
    /// The source's own counters (records read).
    head: HeadMeter,
}

impl<T: Send> SourceTask<T> {
    pub fn new(
        name: String,
        id: StageIdentity,
        reader: Box<dyn SourceReader<T>>,
        pipeline: Box<dyn Pipeline<T>>,
        batch_size: usize,
        metrics: Arc<JobMetrics>,
        control: Option<TaskControlPlane>,
    ) -> Self {
        let name_for_metrics = name.clone();
        Self {
            name,
            id,
            reader,
            pipeline,
            buffer: Vec::with_capacity(batch_size),
            batch_size,
            phase: Phase::Running,
            metrics,
            control,
            exhausted: false,
            exhaustion_reported: false,
            suspended: false,
            pending: Vec::new(),
            read_ahead: None,
            watermark: Watermark::MIN,
            idle: false,
            gauge: None,
            clock: flowstate_state::system_clock(),
            meter: TaskMeter::new(TaskMetrics::detached(&name_for_metrics)),
            head: HeadMeter::new(OperatorMetrics::detached(&name_for_metrics)),
        }
    }

    /// Counts into `task` (the task's metrics, its watermark gauge
    /// included) and `head` (the source's); default: counted, reported
    /// nowhere.
    pub fn with_metrics(mut self, task: Arc<TaskMetrics>, head: Arc<OperatorMetrics>) -> Self {
        self.gauge = Some(task.watermark_gauge().clone());
        self.meter = TaskMeter::new(task);
        self.head = HeadMeter::new(head);
        self
    }

    /// `n` records were read and go on now.
    #[inline]
    fn count_read(&mut self, n: usize) {
        self.metrics.add_records_in(n);
        self.meter.records_in(n);
        self.head.count(0, n);
    }

    /// Reads processing time from `clock` (the job's) for the idle hook;
    /// default: the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The reader has nothing now (`wake_at`: when it wants to be polled
    /// again): the idle hook fires the chain's due processing-time timers,
    /// or the step parks until the earlier of the reader's and the next
    /// timer's instant.
    fn idle(&mut self, wake_at: Option<Instant>) -> Result<Step, TaskError> {
        match idle_processing_time(&self.clock, self.pipeline.next_processing_time()) {
            ProcessingTime::Due(now) => {
                self.pipeline.processing_time(now)?;
                self.pipeline.flush(true)?;
                Ok(Step::Progress)
            }
            ProcessingTime::Later(at) => {
                self.pipeline.flush(true)?;
                Ok(Step::Idle {
                    wake_at: earliest(wake_at, at),
                })
            }
        }
    }

    /// Reports the watermark the task sends in `gauge` (metrics).
    pub fn with_watermark_gauge(mut self, gauge: WatermarkGauge) -> Self {
        self.gauge = Some(gauge);
        self
    }

    /// Sends `watermark` downstream if it grew, behind what was pushed
    /// (after `Active` if the task said it was idle).
    fn emit_watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        if watermark > self.watermark {
            announce(&mut self.idle, false, self.pipeline.as_mut())?;
            self.watermark = watermark;
            self.pipeline.watermark(watermark)?;
            if let Some(gauge) = &self.gauge {
                gauge.set(watermark);
            }
        }
        Ok(())
    }

    /// The reader's watermark after a poll.
    fn reader_watermark(&mut self) -> Result<Option<Watermark>, TaskError> {
        let reader = &mut self.reader;
        guarded(&self.id.name, || Ok(reader.watermark()))
    }

    /// Whether the reader is idle after a poll that read nothing and did not
    /// finish it (a poll that read records makes it active).
    fn reader_idle(&mut self, read: bool, poll: SourcePoll) -> Result<bool, TaskError> {
        if read || poll == SourcePoll::Finished {
            return Ok(false);
        }
        let reader = &mut self.reader;
        guarded(&self.id.name, || Ok(reader.is_idle()))
    }

    /// At-most-once: the reader's records wait until the position after
    /// them is durable (see [`ReadAhead`]). Registers the reader's initial
    /// position as the epoch's first reservation of this instance.
    pub(crate) fn with_read_ahead(
        mut self,
        handle: crate::reservation::ReadAheadHandle,
    ) -> Result<Self, crate::error::UserError> {
        handle.set_initial(self.reader.position()?);
        self.read_ahead = Some(ReadAhead::new(handle, self.batch_size));
        Ok(self)
    }

    fn end(&mut self) -> Result<Step, TaskError> {
        self.pipeline.end_of_input()?;
        self.phase = Phase::Draining;
        Ok(Step::Progress)
    }
}

impl<T: Send> Task for SourceTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn metrics(&self) -> Option<&Arc<TaskMetrics>> {
        Some(&self.meter.shared)
    }

    fn waiting(&self) -> Option<Waiting> {
        self.meter.waiting(self.pipeline.blocked())
    }

    fn sample_metrics(&mut self) {
        self.meter.sample((0, 0), self.pipeline.as_mut());
    }

    fn step(&mut self) -> Result<Step, TaskError> {
        self.meter.waiting = None;
        if self.phase != Phase::Running {
            return drain(&mut self.phase, self.pipeline.as_mut(), &mut self.meter);
        }
        let mut suspend = self.suspended;
        let (reader, name, pending) = (&mut self.reader, &self.id.name, &mut self.pending);
        let completed = drain_commands(self.control.as_ref(), self.pipeline.as_mut(), |command| {
            match command {
                HeadCommand::Trigger(barrier, after) => pending.push((barrier, after)),
                HeadCommand::Resume => {
                    suspend = false;
                    // A suspending barrier not out yet suspends nothing now.
                    for (_, after) in pending.iter_mut() {
                        *after = AfterBarrier::Continue;
                    }
                }
                HeadCommand::Complete(id) => {
                    guarded(name, || reader.notify_checkpoint_complete(id))?
                }
                HeadCommand::Aborted(id) => guarded(name, || reader.notify_checkpoint_aborted(id))?,
            }
            Ok(())
        })?;
        self.suspended = suspend;
        // A barrier goes out once everything read was emitted (at once unless
        // records are held read ahead, at-most-once): the position it records
        // is exactly what was emitted before it.
        if !self.pending.is_empty() && self.read_ahead.as_ref().is_none_or(ReadAhead::is_empty) {
            for (barrier, after) in std::mem::take(&mut self.pending) {
                let Some(control) = self.control.as_ref() else {
                    break;
                };
                // The reader's position and the barrier are taken in the same
                // step: nothing is emitted between them.
                let started = Instant::now();
                let reader = &mut self.reader;
                let lists = guarded(&self.id.name, || reader.snapshot(barrier))?;
                let part = self.id.part(StateSnapshot { keyed: None, lists });
                checkpoint(
                    control,
                    self.pipeline.as_mut(),
                    barrier,
                    started,
                    vec![part],
                    Duration::ZERO,
                )?;
                self.suspended |= after == AfterBarrier::Suspend;
            }
        }
        if (self.exhausted || self.suspended) && completed == Some(u64::MAX) {
            return self.end();
        }
        if self.suspended {
            if !self.pipeline.flush(true)? {
                self.meter.waiting = Some(Waiting::Output);
            }
            return Ok(Step::Idle { wake_at: None });
        }
        if self.exhausted && !self.exhaustion_reported {
            self.exhaustion_reported = self.control.as_ref().is_some_and(|c| c.report_exhausted());
        }
        if self.exhausted {
            if !self.pipeline.flush(true)? {
                self.meter.waiting = Some(Waiting::Output);
            }
            return Ok(Step::Idle { wake_at: None });
        }
        if !self.pipeline.flush(false)? {
            self.meter.waiting = Some(Waiting::Output);
            return Ok(Step::Idle { wake_at: None });
        }
        if self.read_ahead.is_some() {
            return self.step_read_ahead();
        }
        let (reader, buffer, max) = (&mut self.reader, &mut self.buffer, self.batch_size);
        let poll = guarded(&self.id.name, || reader.poll(buffer, max, Instant::now()))?;
        let idle = self.reader_idle(!self.buffer.is_empty(), poll)?;
        if !self.buffer.is_empty() {
            // Active again before the records.
            announce(&mut self.idle, false, self.pipeline.as_mut())?;
            self.count_read(self.buffer.len());
            self.pipeline.push(&mut self.buffer)?;
        }
        // After the records it covers: a watermark never overtakes them.
        if let Some(watermark) = self.reader_watermark()? {
            self.emit_watermark(watermark)?;
        }
        // Idle once (every split idle), active again as soon as the reader
        // no longer is (a split produced, or was added).
        announce(&mut self.idle, idle, self.pipeline.as_mut())?;
        match poll {
            SourcePoll::Ready => Ok(Step::Progress),
            SourcePoll::Pending { wake_at } => self.idle(wake_at),
            SourcePoll::Finished => self.reader_finished(),
        }
    }
}

impl<T: Send> SourceTask<T> {
    /// The reader has no more records and everything it read was emitted.
    /// Event time ends (`Watermark::MAX`, so every event-time timer fires)
    /// before the exhaustion is reported, hence before the final
    /// checkpoint's barrier: what the timers emit is in that checkpoint.
    fn reader_finished(&mut self) -> Result<Step, TaskError> {
        self.emit_watermark(Watermark::MAX)?;
        match &self.control {
            Some(control) => {
                self.exhausted = true;
                self.exhaustion_reported = control.report_exhausted();
                self.pipeline.flush(true)?;
                Ok(Step::Progress)
            }
            None => self.end(),
        }
    }

    /// One at-most-once step (see [`ReadAhead`]): emit the oldest batch held
    /// if its reservation is durable, poll one more batch unless enough is
    /// held or a barrier waits, and ask for a reservation of what was read
    /// if none is being written.
    fn step_read_ahead(&mut self) -> Result<Step, TaskError> {
        let Some(ahead) = self.read_ahead.as_mut() else {
            return Ok(Step::Idle { wake_at: None });
        };
        if let Some(failure) = ahead.handle.failure() {
            return Err(TaskError::Operator {
                operator: self.id.name.to_string(),
                cause: format!(
                    "at-most-once: cannot write the read-ahead reservation of its position: \
                     {failure}"
                ),
            });
        }
        let durable = ahead.handle.durable();
        let mut progressed = false;
        let mut emitted_watermark = None;
        // The reader's idleness after a poll this step (`None`: no poll).
        let mut reader_idle = None;
        if ahead
            .batches
            .front()
            .is_some_and(|(seq, _, _)| *seq <= durable)
            && let Some((_, mut batch, watermark)) = ahead.batches.pop_front()
        {
            ahead.held -= batch.len();
            announce(&mut self.idle, false, self.pipeline.as_mut())?;
            self.metrics.add_records_in(batch.len());
            self.meter.records_in(batch.len());
            self.head.count(0, batch.len());
            self.pipeline.push(&mut batch)?;
            batch.clear();
            ahead.spare = Some(batch);
            emitted_watermark = watermark;
            progressed = true;
        }
        if !ahead.reader_done && self.pending.is_empty() && ahead.held < ahead.max_held {
            let mut batch = ahead
                .spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(self.batch_size));
            let (reader, max) = (&mut self.reader, self.batch_size);
            let poll = guarded(&self.id.name, || {
                reader.poll(&mut batch, max, Instant::now())
            })?;
            match poll {
                SourcePoll::Ready => ahead.wake_at = None,
                SourcePoll::Pending { wake_at } => ahead.wake_at = wake_at,
                SourcePoll::Finished => ahead.reader_done = true,
            }
            // The watermark after this poll goes out behind the records
            // polled so far (held ones: with the last of them).
            let reader = &mut self.reader;
            let watermark = guarded(&self.id.name, || Ok(reader.watermark()))?;
            reader_idle = Some(
                batch.is_empty()
                    && poll != SourcePoll::Finished
                    && guarded(&self.id.name, || Ok(reader.is_idle()))?,
            );
            if batch.is_empty() {
                ahead.spare = Some(batch);
                match ahead.batches.back_mut() {
                    Some((_, _, held)) => *held = watermark.max(*held),
                    None => emitted_watermark = watermark.max(emitted_watermark),
                }
            } else {
                ahead.held += batch.len();
                ahead.unreserved += batch.len();
                ahead.batches.push_back((ahead.next_seq, batch, watermark));
                progressed = true;
            }
        }
        // One reservation in flight at a time; it covers everything read. It
        // is asked for once half the read-ahead was read, or at once
        // when nothing covered is left to emit (or a barrier waits, or the
        // reader has nothing more now): few writes, and no stall while one
        // is written.
        let starving = ahead
            .batches
            .front()
            .is_none_or(|(seq, _, _)| *seq > durable);
        let due = starving
            || ahead.unreserved >= ahead.max_held / 2
            || ahead.reader_done
            || ahead.wake_at.is_some()
            || !self.pending.is_empty();
        if ahead.unreserved > 0 && ahead.requested <= durable && due {
            let reader = &mut self.reader;
            let lists = guarded(&self.id.name, || reader.position())?;
            ahead.handle.submit(ahead.next_seq, lists);
            ahead.requested = ahead.next_seq;
            ahead.next_seq += 1;
            ahead.unreserved = 0;
            progressed = true;
        }
        let reader_done = ahead.reader_done && ahead.is_empty();
        let wake_at = ahead.wake_at;
        // Idle only once everything read was emitted; active as soon as the
        // reader is (its records and watermark follow).
        let now_idle = reader_idle.map(|idle| idle && ahead.is_empty());
        if let Some(watermark) = emitted_watermark {
            self.emit_watermark(watermark)?;
        }
        if let Some(now_idle) = now_idle {
            announce(&mut self.idle, now_idle, self.pipeline.as_mut())?;
        }
        if reader_done {
            return self.reader_finished();
        }
        if progressed {
            return Ok(Step::Progress);
        }
        // Woken by the reservation writer (or at the reader's `wake_at`, or
        // when a processing-time timer is due).
        self.idle(wake_at)
    }
}

/// At-most-once read-ahead of a source task: batches polled but not yet
/// emitted, each with the sequence number of the reservation that covers it
/// (the reader's position after it). A batch is emitted only once that
/// reservation is durable, so a restart (which resumes from the newest
/// reservation) never emits it again.
pub(crate) struct ReadAhead<T> {
    handle: crate::reservation::ReadAheadHandle,
    /// Each with the reader's watermark after it (sent behind it).
    batches: std::collections::VecDeque<(u64, Vec<T>, Option<Watermark>)>,
    /// Records in `batches`.
    held: usize,
    /// At most this many records are held ([`crate::config::READ_AHEAD_BATCHES`]).
    max_held: usize,
    /// Records polled since the last reservation was asked for: they carry
    /// `next_seq`.
    unreserved: usize,
    next_seq: u64,
    /// The newest reservation asked for (0: none).
    requested: u64,
    reader_done: bool,
    wake_at: Option<Instant>,
    spare: Option<Vec<T>>,
}

impl<T> ReadAhead<T> {
    pub(crate) fn new(handle: crate::reservation::ReadAheadHandle, batch_size: usize) -> Self {
        Self {
            handle,
            batches: std::collections::VecDeque::new(),
            held: 0,
            max_held: batch_size.saturating_mul(crate::config::READ_AHEAD_BATCHES),
            unreserved: 0,
            next_seq: 1,
            requested: 0,
            reader_done: false,
            wake_at: None,
            spare: None,
        }
    }

    /// Nothing is held: everything read was emitted.
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// A task reading one input (from one or more upstream tasks).
pub struct OneInputTask<T> {
    name: String,
    gate: InputGate<T>,
    tracker: BarrierTracker,
    /// Unaligned checkpoints: the task's board and held snapshot.
    unaligned: Option<UnalignedInput>,
    pipeline: Box<dyn Pipeline<T>>,
    phase: Phase,
    control: Option<TaskControlPlane>,
    /// The task's input watermark (the minimum over its channels that are
    /// not idle; it never goes backwards).
    watermark: Watermark,
    /// The status last sent downstream is `Idle` (every channel idle).
    idle: bool,
    gauge: Option<WatermarkGauge>,
    idle_timers: IdleTimers,
    meter: TaskMeter,
}

impl<T: Send> OneInputTask<T> {
    pub fn new(
        name: String,
        channels: Vec<ChannelReceiver<T>>,
        pipeline: Box<dyn Pipeline<T>>,
        control: Option<TaskControlPlane>,
    ) -> Self {
        let gate = InputGate::new(&name, channels, 0);
        let tracker = BarrierTracker::new(gate.len(), input_mode(control.as_ref()));
        let meter = TaskMeter::new(TaskMetrics::detached(&name));
        Self {
            meter,
            name,
            gate,
            tracker,
            unaligned: None,
            pipeline,
            phase: Phase::Running,
            control,
            watermark: Watermark::MIN,
            idle: false,
            gauge: None,
            idle_timers: IdleTimers::new(),
        }
    }

    /// Reports the task's input watermark in `gauge` (metrics).
    pub fn with_watermark_gauge(mut self, gauge: WatermarkGauge) -> Self {
        self.gauge = Some(gauge);
        self
    }

    /// Replays `batches` (restored channel state) before any channel.
    pub(crate) fn with_recovered(mut self, batches: Vec<Vec<T>>) -> Self {
        self.gate = self.gate.with_recovered(batches);
        self
    }

    /// Takes unaligned snapshots when a barrier says so, recording with
    /// `recorder`; only for an exactly-once task.
    pub(crate) fn with_unaligned(
        mut self,
        recorder: crate::channel_state::ChannelRecorder<T>,
        unaligned: UnalignedInput,
    ) -> Self {
        if self.tracker.mode() == InputMode::Aligned {
            self.gate = self.gate.with_recorder(recorder);
            self.tracker = BarrierTracker::new(self.gate.len(), InputMode::MayUnalign);
            self.unaligned = Some(unaligned);
        }
        self
    }

    /// Counts into `task` (the task's metrics, its watermark gauge
    /// included); default: counted, reported nowhere.
    pub fn with_metrics(mut self, task: Arc<TaskMetrics>) -> Self {
        self.gauge = Some(task.watermark_gauge().clone());
        self.meter = TaskMeter::new(task);
        self
    }

    /// Reads processing time from `clock` (the job's) for the idle hook;
    /// default: the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.idle_timers.clock = clock;
        self
    }

    /// The gate's channels said something about event time: the task goes
    /// idle, or active again, and its watermark grows (never backwards).
    fn advance_watermark(&mut self, input: InputWatermark) -> Result<(), TaskError> {
        match input.status() {
            None => {}
            Some(InputStatus::Idle) => announce(&mut self.idle, true, self.pipeline.as_mut())?,
            Some(InputStatus::Active(watermark)) => {
                announce(&mut self.idle, false, self.pipeline.as_mut())?;
                if watermark > self.watermark {
                    self.watermark = watermark;
                    self.pipeline.watermark(watermark)?;
                    if let Some(gauge) = &self.gauge {
                        gauge.set(watermark);
                    }
                }
            }
        }
        Ok(())
    }

    /// The gate has nothing: the idle hook fires the chain's due
    /// processing-time timers, or the step parks until the next is due.
    fn idle(&mut self) -> Result<Step, TaskError> {
        let next = if self.idle_timers.active(self.watermark) {
            self.pipeline.next_processing_time()
        } else {
            None
        };
        match idle_processing_time(&self.idle_timers.clock, next) {
            ProcessingTime::Due(now) => {
                self.pipeline.processing_time(now)?;
                self.pipeline.flush(true)?;
                Ok(Step::Progress)
            }
            ProcessingTime::Later(wake_at) => {
                self.pipeline.flush(true)?;
                let deadline = deadline_instant(&self.idle_timers.clock, &self.tracker);
                Ok(Step::Idle {
                    wake_at: earliest(wake_at, deadline),
                })
            }
        }
    }

    /// A checkpoint event of the tracker: snapshot and forward, then submit
    /// (aligned) or hold while the gate records (unaligned).
    fn on_checkpoint(&mut self, event: TrackerEvent) -> Result<(), TaskError> {
        self.idle_timers.on_barrier(event.barrier());
        let Some(control) = &self.control else {
            return Ok(());
        };
        match event {
            TrackerEvent::Aligned { barrier, alignment } => {
                if let Some(unaligned) = &mut self.unaligned {
                    unaligned.supersede(control, &mut self.gate, barrier.id);
                }
                checkpoint(
                    control,
                    self.pipeline.as_mut(),
                    barrier,
                    Instant::now(),
                    Vec::new(),
                    alignment,
                )
            }
            TrackerEvent::Unaligned { barrier } => {
                self.gate.start_recording()?;
                let (parts, sync_pause) = snapshot_and_forward(
                    self.pipeline.as_mut(),
                    barrier,
                    Instant::now(),
                    Vec::new(),
                )?;
                if let Some(unaligned) = &mut self.unaligned {
                    unaligned.hold(control, barrier, parts, sync_pause);
                }
                Ok(())
            }
        }
    }

    /// Unaligned checkpoints, ahead of output and input: aborts, the
    /// notice board and the aligned-until deadline, reading ahead on
    /// recorded channels, and the submission once every channel delivered
    /// its barrier. True if reading ahead left messages for the next step.
    fn step_unaligned(&mut self, aborted: &[u64]) -> Result<bool, TaskError> {
        let (Some(unaligned), Some(control)) = (&mut self.unaligned, &self.control) else {
            return Ok(false);
        };
        unaligned.on_aborted(control, &mut self.tracker, &mut self.gate, aborted);
        if let Some(event) = unaligned.next_event(&mut self.tracker, &self.idle_timers.clock) {
            self.on_checkpoint(event)?;
        }
        let (Some(unaligned), Some(control)) = (&mut self.unaligned, &self.control) else {
            return Ok(false);
        };
        unaligned.read_ahead(control, &mut self.tracker, &mut self.gate)
    }

    /// After input: the in-flight limit, and the submission once every
    /// channel delivered its barrier (see [`UnalignedInput::finish`]).
    fn finish_recording(&mut self) -> Result<(), TaskError> {
        match (&mut self.unaligned, &self.control) {
            (Some(unaligned), Some(control)) => {
                unaligned.finish(control, &mut self.tracker, &mut self.gate)
            }
            _ => Ok(()),
        }
    }
}

/// The idle hook of a task reading channels: its clock, and whether the
/// input is still going on.
struct IdleTimers {
    clock: SharedClock,
    /// A stop-with-savepoint barrier passed and no input followed: the job
    /// is ending, and a timer fired now would be published by the sinks'
    /// `finish` and fire again after the resume (like an event-time timer
    /// fired at `finish`). Input after it (the savepoint failed, the
    /// sources resumed) or another barrier clears it.
    stopping: bool,
}

impl IdleTimers {
    fn new() -> Self {
        Self {
            clock: flowstate_state::system_clock(),
            stopping: false,
        }
    }

    /// Whether idle firing is on: not after the end of the input's event
    /// time (`Watermark::MAX`, every source finished: as at `finish`,
    /// timers not due then are dropped) nor at a stop-with-savepoint.
    fn active(&self, watermark: Watermark) -> bool {
        !self.stopping && watermark < Watermark::MAX
    }

    fn on_input(&mut self) {
        self.stopping = false;
    }

    fn on_barrier(&mut self, barrier: Barrier) {
        self.stopping = barrier.kind.is_stop();
    }
}

impl<T: Send> Task for OneInputTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn metrics(&self) -> Option<&Arc<TaskMetrics>> {
        Some(&self.meter.shared)
    }

    fn waiting(&self) -> Option<Waiting> {
        self.meter.waiting(self.pipeline.blocked())
    }

    fn sample_metrics(&mut self) {
        self.meter.sample(self.gate.queue(), self.pipeline.as_mut());
    }

    fn step(&mut self) -> Result<Step, TaskError> {
        self.meter.waiting = None;
        if self.phase != Phase::Running {
            return drain(&mut self.phase, self.pipeline.as_mut(), &mut self.meter);
        }
        // No head: the pipeline hears completions and aborts.
        let mut aborted = Vec::new();
        drain_commands(self.control.as_ref(), self.pipeline.as_mut(), |command| {
            if let HeadCommand::Aborted(id) = command {
                aborted.push(id);
            }
            Ok(())
        })?;
        let reading_ahead = self.step_unaligned(&aborted)?;
        if !self.pipeline.flush(false)? {
            self.meter.waiting = Some(Waiting::Output);
            if reading_ahead {
                return Ok(Step::Progress);
            }
            let wake_at = deadline_instant(&self.idle_timers.clock, &self.tracker);
            return Ok(Step::Idle { wake_at });
        }
        let step = match self.gate.poll(&mut self.tracker)? {
            GateEvent::Batch(mut batch) => {
                self.meter.records_in(batch.len());
                self.idle_timers.on_input();
                self.pipeline.push(&mut batch)?;
                Step::Progress
            }
            GateEvent::Checkpoint(event) => {
                self.on_checkpoint(event)?;
                Step::Progress
            }
            GateEvent::Watermark(input) => {
                self.idle_timers.on_input();
                self.advance_watermark(input)?;
                Step::Progress
            }
            GateEvent::Empty => self.idle()?,
            GateEvent::Ended => {
                self.pipeline.end_of_input()?;
                self.phase = Phase::Draining;
                Step::Progress
            }
        };
        self.finish_recording()?;
        Ok(step)
    }
}

/// A task with two typed inputs and a two-input head operator.
pub struct TwoInputTask<A, B, O> {
    name: String,
    id: StageIdentity,
    first: InputGate<A>,
    second: InputGate<B>,
    tracker: BarrierTracker,
    /// Unaligned checkpoints: the task's board and held snapshot.
    unaligned: Option<UnalignedInput>,
    first_ended: bool,
    second_ended: bool,
    prefer_second: bool,
    operator: Box<dyn TwoInputOperator<A, B, O>>,
    output: Vec<O>,
    /// The head's main output and consumed side outputs.
    pipeline: Fanout<O>,
    phase: Phase,
    control: Option<TaskControlPlane>,
    /// The task's input watermark: the minimum over the channels of both
    /// gates that are not idle (it never goes backwards).
    watermark: Watermark,
    /// The status last sent downstream is `Idle` (every channel of both
    /// gates idle).
    idle: bool,
    gauge: Option<WatermarkGauge>,
    idle_timers: IdleTimers,
    meter: TaskMeter,
    head: HeadMeter,
}

enum SideEvent {
    Nothing,
    Data,
    Checkpoint(TrackerEvent),
    Watermark,
}

impl<A: Send, B: Send, O: Send> TwoInputTask<A, B, O> {
    pub fn new(
        name: String,
        id: StageIdentity,
        first: Vec<ChannelReceiver<A>>,
        second: Vec<ChannelReceiver<B>>,
        operator: Box<dyn TwoInputOperator<A, B, O>>,
        pipeline: Box<dyn Pipeline<O>>,
        control: Option<TaskControlPlane>,
    ) -> Self {
        let first = InputGate::new(&name, first, 0);
        let second = InputGate::new(&name, second, first.len());
        let tracker = BarrierTracker::new(first.len() + second.len(), input_mode(control.as_ref()));
        let meter = TaskMeter::new(TaskMetrics::detached(&name));
        let head = HeadMeter::new(OperatorMetrics::detached(&name));
        Self {
            meter,
            head,
            first,
            second,
            tracker,
            unaligned: None,
            name,
            id,
            first_ended: false,
            second_ended: false,
            prefer_second: false,
            operator,
            output: Vec::new(),
            pipeline: Fanout::new(pipeline),
            phase: Phase::Running,
            control,
            watermark: Watermark::MIN,
            idle: false,
            gauge: None,
            idle_timers: IdleTimers::new(),
        }
    }

    /// Reports the task's input watermark in `gauge` (metrics).
    pub fn with_watermark_gauge(mut self, gauge: WatermarkGauge) -> Self {
        self.gauge = Some(gauge);
        self
    }

    /// Counts into `task` (the task's metrics, its watermark gauge
    /// included) and `head` (the two-input operator's); default: counted,
    /// reported nowhere.
    pub fn with_metrics(mut self, task: Arc<TaskMetrics>, head: Arc<OperatorMetrics>) -> Self {
        self.gauge = Some(task.watermark_gauge().clone());
        self.meter = TaskMeter::new(task);
        self.head = HeadMeter::new(head);
        self
    }

    /// Reads processing time from `clock` (the job's) for the idle hook;
    /// default: the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.idle_timers.clock = clock;
        self
    }

    /// Adds the pipelines of the head's consumed side outputs (named),
    /// declaring their buffers on it. An error names a head that has none.
    pub fn with_side_outputs(mut self, sides: NamedSidePipelines) -> Result<Self, String> {
        self.pipeline
            .declare_side_outputs(&self.id.name, self.operator.side_outputs(), sides)?;
        Ok(self)
    }

    /// Neither gate has anything: the idle hook fires the head's and the
    /// chain's due processing-time timers (the head first, its output
    /// before the chain's), or the step parks until the next is due.
    fn idle(&mut self) -> Result<Step, TaskError> {
        let (head, next) = if self.idle_timers.active(self.watermark) {
            (
                self.operator.next_processing_time(),
                self.pipeline.next_processing_time(),
            )
        } else {
            (None, None)
        };
        let earliest_time = [head, next].into_iter().flatten().min();
        match idle_processing_time(&self.idle_timers.clock, earliest_time) {
            ProcessingTime::Due(now) => {
                if head.is_some_and(|due| due <= now) {
                    let (operator, output) = (&mut self.operator, &mut self.output);
                    guarded(&self.id.name, || operator.on_processing_time(now, output))?;
                    self.forward_output()?;
                }
                self.pipeline.processing_time(now)?;
                self.pipeline.flush(true)?;
                Ok(Step::Progress)
            }
            ProcessingTime::Later(wake_at) => {
                self.pipeline.flush(true)?;
                let deadline = deadline_instant(&self.idle_timers.clock, &self.tracker);
                Ok(Step::Idle {
                    wake_at: earliest(wake_at, deadline),
                })
            }
        }
    }

    /// A gate's minimum or idleness changed: the task goes idle when every
    /// channel of both gates is, active again when one is; if the minimum
    /// over both (channels not idle) grew, the head operator hears it, its
    /// output goes on, then the watermark.
    fn advance_watermark(&mut self) -> Result<(), TaskError> {
        let input = self.first.watermark().combine(self.second.watermark());
        let watermark = match input.status() {
            None => return Ok(()),
            Some(InputStatus::Idle) => return announce(&mut self.idle, true, &mut self.pipeline),
            Some(InputStatus::Active(watermark)) => {
                announce(&mut self.idle, false, &mut self.pipeline)?;
                watermark
            }
        };
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        let (operator, output) = (&mut self.operator, &mut self.output);
        guarded(&self.id.name, || operator.on_watermark(watermark, output))?;
        self.forward_output()?;
        self.pipeline.watermark(watermark)?;
        if let Some(gauge) = &self.gauge {
            gauge.set(watermark);
        }
        Ok(())
    }

    /// Sends on the head's main output of its last call, then what it
    /// emitted to its side outputs.
    fn forward_output(&mut self) -> Result<(), TaskError> {
        if !self.output.is_empty() {
            self.head.count(0, self.output.len());
        }
        let operator = &mut self.operator;
        self.pipeline
            .emit(&mut self.output, || operator.side_outputs())
    }

    /// Polls one side.
    fn poll_side(&mut self, second: bool) -> Result<SideEvent, TaskError> {
        let (operator, output) = (&mut self.operator, &mut self.output);
        let event = if second {
            if self.second_ended {
                return Ok(SideEvent::Nothing);
            }
            match self.second.poll(&mut self.tracker)? {
                GateEvent::Batch(mut batch) => {
                    self.meter.records_in(batch.len());
                    self.head.count(batch.len(), 0);
                    guarded(&self.id.name, || {
                        operator.process_batch2(&mut batch, output)
                    })?;
                    SideEvent::Data
                }
                GateEvent::Checkpoint(event) => SideEvent::Checkpoint(event),
                GateEvent::Watermark(_) => SideEvent::Watermark,
                GateEvent::Empty => SideEvent::Nothing,
                GateEvent::Ended => {
                    self.second_ended = true;
                    SideEvent::Nothing
                }
            }
        } else {
            if self.first_ended {
                return Ok(SideEvent::Nothing);
            }
            match self.first.poll(&mut self.tracker)? {
                GateEvent::Batch(mut batch) => {
                    self.meter.records_in(batch.len());
                    self.head.count(batch.len(), 0);
                    guarded(&self.id.name, || {
                        operator.process_batch1(&mut batch, output)
                    })?;
                    SideEvent::Data
                }
                GateEvent::Checkpoint(event) => SideEvent::Checkpoint(event),
                GateEvent::Watermark(_) => SideEvent::Watermark,
                GateEvent::Empty => SideEvent::Nothing,
                GateEvent::Ended => {
                    self.first_ended = true;
                    SideEvent::Nothing
                }
            }
        };
        if let SideEvent::Data = event {
            self.forward_output()?;
        }
        Ok(event)
    }

    /// A checkpoint event of the tracker: the head's snapshot, the chain's,
    /// the barrier downstream, then submit (aligned) or hold while the gates
    /// record (unaligned).
    fn on_checkpoint(&mut self, event: TrackerEvent) -> Result<(), TaskError> {
        self.idle_timers.on_barrier(event.barrier());
        let Some(control) = &self.control else {
            return Ok(());
        };
        let (barrier, alignment) = match event {
            TrackerEvent::Aligned { barrier, alignment } => {
                if let Some(unaligned) = &mut self.unaligned {
                    unaligned.supersede(
                        control,
                        &mut (&mut self.first, &mut self.second),
                        barrier.id,
                    );
                }
                (barrier, Some(alignment))
            }
            TrackerEvent::Unaligned { barrier } => {
                (&mut self.first, &mut self.second).start_recording()?;
                (barrier, None)
            }
        };
        let started = Instant::now();
        let operator = &mut self.operator;
        let snapshot = guarded(&self.id.name, || operator.snapshot(barrier))?;
        let parts = if snapshot.is_empty() {
            Vec::new()
        } else {
            vec![self.id.part(snapshot)]
        };
        let (parts, sync_pause) =
            snapshot_and_forward(&mut self.pipeline, barrier, started, parts)?;
        match (alignment, &mut self.unaligned) {
            (Some(alignment), _) => control.submit(barrier, parts, sync_pause, alignment),
            (None, Some(unaligned)) => unaligned.hold(control, barrier, parts, sync_pause),
            (None, None) => {}
        }
        Ok(())
    }

    /// Takes unaligned snapshots when a barrier says so, recording each
    /// input with its recorder; only for an exactly-once task.
    pub(crate) fn with_unaligned(
        mut self,
        recorders: (
            crate::channel_state::ChannelRecorder<A>,
            crate::channel_state::ChannelRecorder<B>,
        ),
        unaligned: UnalignedInput,
    ) -> Self {
        if self.tracker.mode() == InputMode::Aligned {
            self.first = self.first.with_recorder(recorders.0);
            self.second = self.second.with_recorder(recorders.1);
            let channels = self.first.len() + self.second.len();
            self.tracker = BarrierTracker::new(channels, InputMode::MayUnalign);
            self.unaligned = Some(unaligned);
        }
        self
    }

    /// Replays restored channel state before any channel of each input.
    pub(crate) fn with_recovered(mut self, first: Vec<Vec<A>>, second: Vec<Vec<B>>) -> Self {
        self.first = self.first.with_recovered(first);
        self.second = self.second.with_recovered(second);
        self
    }

    /// See [`OneInputTask::step_unaligned`].
    fn step_unaligned(&mut self, aborted: &[u64]) -> Result<bool, TaskError> {
        let (Some(unaligned), Some(control)) = (&mut self.unaligned, &self.control) else {
            return Ok(false);
        };
        let mut input = (&mut self.first, &mut self.second);
        unaligned.on_aborted(control, &mut self.tracker, &mut input, aborted);
        if let Some(event) = unaligned.next_event(&mut self.tracker, &self.idle_timers.clock) {
            self.on_checkpoint(event)?;
        }
        let (Some(unaligned), Some(control)) = (&mut self.unaligned, &self.control) else {
            return Ok(false);
        };
        let mut input = (&mut self.first, &mut self.second);
        unaligned.read_ahead(control, &mut self.tracker, &mut input)
    }

    /// See [`OneInputTask::finish_recording`].
    fn finish_recording(&mut self) -> Result<(), TaskError> {
        match (&mut self.unaligned, &self.control) {
            (Some(unaligned), Some(control)) => {
                let mut input = (&mut self.first, &mut self.second);
                unaligned.finish(control, &mut self.tracker, &mut input)
            }
            _ => Ok(()),
        }
    }
}

impl<A: Send, B: Send, O: Send> Task for TwoInputTask<A, B, O> {
    fn name(&self) -> &str {
        &self.name
    }

    fn metrics(&self) -> Option<&Arc<TaskMetrics>> {
        Some(&self.meter.shared)
    }

    fn waiting(&self) -> Option<Waiting> {
        self.meter.waiting(self.pipeline.blocked())
    }

    fn sample_metrics(&mut self) {
        let (a, b) = (self.first.queue(), self.second.queue());
        self.meter
            .sample((a.0 + b.0, a.1 + b.1), &mut self.pipeline);
        let operator = &mut self.operator;
        self.head.shared.set_states(operator.state_stats());
    }

    fn step(&mut self) -> Result<Step, TaskError> {
        self.meter.waiting = None;
        if self.phase != Phase::Running {
            return drain(&mut self.phase, &mut self.pipeline, &mut self.meter);
        }
        let (operator, name) = (&mut self.operator, &self.id.name);
        let mut aborted = Vec::new();
        drain_commands(
            self.control.as_ref(),
            &mut self.pipeline,
            |command| match command {
                HeadCommand::Complete(id) => {
                    guarded(name, || operator.notify_checkpoint_complete(id))
                }
                HeadCommand::Aborted(id) => {
                    aborted.push(id);
                    guarded(name, || operator.notify_checkpoint_aborted(id))
                }
                // Sent to sources only.
                HeadCommand::Trigger(..) | HeadCommand::Resume => Ok(()),
            },
        )?;
        let reading_ahead = self.step_unaligned(&aborted)?;
        if !self.pipeline.flush(false)? {
            self.meter.waiting = Some(Waiting::Output);
            if reading_ahead {
                return Ok(Step::Progress);
            }
            let wake_at = deadline_instant(&self.idle_timers.clock, &self.tracker);
            return Ok(Step::Idle { wake_at });
        }
        let step = self.step_input()?;
        self.finish_recording()?;
        Ok(step)
    }
}

impl<A: Send, B: Send, O: Send> TwoInputTask<A, B, O> {
    /// Polls both sides (alternating which goes first) and acts on what
    /// one yields; the idle hook if neither has anything.
    fn step_input(&mut self) -> Result<Step, TaskError> {
        // Alternate which side goes first so neither input starves the other.
        let first_side = self.prefer_second;
        self.prefer_second = !self.prefer_second;
        for side in [first_side, !first_side] {
            match self.poll_side(side)? {
                SideEvent::Data => {
                    self.idle_timers.on_input();
                    return Ok(Step::Progress);
                }
                SideEvent::Checkpoint(event) => {
                    self.on_checkpoint(event)?;
                    return Ok(Step::Progress);
                }
                SideEvent::Watermark => {
                    self.idle_timers.on_input();
                    self.advance_watermark()?;
                    return Ok(Step::Progress);
                }
                SideEvent::Nothing => {}
            }
        }
        if self.first_ended && self.second_ended {
            let (operator, output) = (&mut self.operator, &mut self.output);
            guarded(&self.id.name, || operator.finish(output))?;
            self.forward_output()?;
            self.pipeline.end_of_input()?;
            self.phase = Phase::Draining;
            return Ok(Step::Progress);
        }
        self.idle()
    }
}
