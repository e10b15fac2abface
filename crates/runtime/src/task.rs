//! Tasks: the unit of scheduling. A task is a head (a source, or one or two input
//! gates) followed by a pipeline of chained operators.
//!
//! Tasks never block: [`Task::step`] does a bounded amount of work (at most one
//! input batch) and says whether it made progress. That is what lets one worker
//! thread run many tasks, and lets a seeded scheduler run a whole job on one
//! thread in a reproducible order.

use std::sync::Arc;
use std::time::Instant;

use crate::channel::ChannelReceiver;
use crate::connector::{SourcePoll, SourceReader};
use crate::error::TaskError;
use crate::message::Message;
use crate::metrics::JobMetrics;
use crate::operator::TwoInputOperator;
use crate::pipeline::{Pipeline, guarded};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// End of input was pushed; sending what is pending.
    Draining,
    Done,
}

/// Steps shared by every task after its input ended.
fn drain<T>(phase: &mut Phase, pipeline: &mut dyn Pipeline<T>) -> Result<Step, TaskError> {
    match phase {
        Phase::Done => Ok(Step::Finished),
        _ => {
            if pipeline.flush(false)? {
                *phase = Phase::Done;
                Ok(Step::Finished)
            } else {
                Ok(Step::Idle { wake_at: None })
            }
        }
    }
}

/// A source followed by its chained operators.
pub struct SourceTask<T> {
    name: String,
    operator: Arc<str>,
    reader: Box<dyn SourceReader<T>>,
    pipeline: Box<dyn Pipeline<T>>,
    buffer: Vec<T>,
    batch_size: usize,
    phase: Phase,
    metrics: Arc<JobMetrics>,
}

impl<T: Send> SourceTask<T> {
    pub fn new(
        name: String,
        operator: &str,
        reader: Box<dyn SourceReader<T>>,
        pipeline: Box<dyn Pipeline<T>>,
        batch_size: usize,
        metrics: Arc<JobMetrics>,
    ) -> Self {
        Self {
            name,
            operator: operator.into(),
            reader,
            pipeline,
            buffer: Vec::with_capacity(batch_size),
            batch_size,
            phase: Phase::Running,
            metrics,
        }
    }
}

impl<T: Send> Task for SourceTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn step(&mut self) -> Result<Step, TaskError> {
        if self.phase != Phase::Running {
            return drain(&mut self.phase, self.pipeline.as_mut());
        }
        if !self.pipeline.flush(false)? {
            return Ok(Step::Idle { wake_at: None });
        }
        let (reader, buffer, max) = (&mut self.reader, &mut self.buffer, self.batch_size);
        let poll = guarded(&self.operator, || reader.poll(buffer, max, Instant::now()))?;
        if !self.buffer.is_empty() {
            self.metrics.add_records_in(self.buffer.len());
            self.pipeline.push(&mut self.buffer)?;
        }
        match poll {
            SourcePoll::Ready => Ok(Step::Progress),
            SourcePoll::Pending { wake_at } => {
                self.pipeline.flush(true)?;
                Ok(Step::Idle { wake_at })
            }
            SourcePoll::Finished => {
                self.pipeline.end_of_input()?;
                self.phase = Phase::Draining;
                Ok(Step::Progress)
            }
        }
    }
}

/// The channels into one input of a task.
pub struct InputGate<T> {
    channels: Vec<ChannelReceiver<T>>,
    ended: Vec<bool>,
    open: usize,
    cursor: usize,
    task: String,
}

/// What an input gate yielded.
pub enum GateEvent<T> {
    Batch(Vec<T>),
    /// Nothing available now.
    Empty,
    /// Every channel has ended.
    Ended,
}

impl<T> InputGate<T> {
    pub fn new(task: &str, channels: Vec<ChannelReceiver<T>>) -> Self {
        let n = channels.len();
        Self {
            channels,
            ended: vec![false; n],
            open: n,
            cursor: 0,
            task: task.to_owned(),
        }
    }

    /// The next batch of any channel, round-robin so that no channel starves.
    pub fn poll(&mut self) -> Result<GateEvent<T>, TaskError> {
        let n = self.channels.len();
        for offset in 0..n {
            let i = (self.cursor + offset) % n;
            if self.ended[i] {
                continue;
            }
            match self.channels[i].try_recv() {
                Ok(Some(Message::Batch(batch))) => {
                    self.cursor = (i + 1) % n;
                    return Ok(GateEvent::Batch(batch));
                }
                Ok(Some(Message::EndOfInput)) => {
                    self.ended[i] = true;
                    self.open -= 1;
                }
                Ok(None) => {}
                Err(_) => {
                    return Err(TaskError::ChannelClosed {
                        task: self.task.clone(),
                    });
                }
            }
        }
        Ok(if self.open == 0 {
            GateEvent::Ended
        } else {
            GateEvent::Empty
        })
    }
}

/// A task reading one input (from one or more upstream tasks).
pub struct OneInputTask<T> {
    name: String,
    gate: InputGate<T>,
    pipeline: Box<dyn Pipeline<T>>,
    phase: Phase,
}

impl<T: Send> OneInputTask<T> {
    pub fn new(
        name: String,
        channels: Vec<ChannelReceiver<T>>,
        pipeline: Box<dyn Pipeline<T>>,
    ) -> Self {
        let gate = InputGate::new(&name, channels);
        Self {
            name,
            gate,
            pipeline,
            phase: Phase::Running,
        }
    }
}

impl<T: Send> Task for OneInputTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn step(&mut self) -> Result<Step, TaskError> {
        if self.phase != Phase::Running {
            return drain(&mut self.phase, self.pipeline.as_mut());
        }
        if !self.pipeline.flush(false)? {
            return Ok(Step::Idle { wake_at: None });
        }
        match self.gate.poll()? {
            GateEvent::Batch(mut batch) => {
                self.pipeline.push(&mut batch)?;
                Ok(Step::Progress)
            }
            GateEvent::Empty => {
                self.pipeline.flush(true)?;
                Ok(Step::Idle { wake_at: None })
            }
            GateEvent::Ended => {
                self.pipeline.end_of_input()?;
                self.phase = Phase::Draining;
                Ok(Step::Progress)
            }
        }
    }
}

/// A task with two typed inputs and a two-input head operator.
pub struct TwoInputTask<A, B, O> {
    name: String,
    operator_name: Arc<str>,
    first: InputGate<A>,
    second: InputGate<B>,
    first_ended: bool,
    second_ended: bool,
    prefer_second: bool,
    operator: Box<dyn TwoInputOperator<A, B, O>>,
    output: Vec<O>,
    pipeline: Box<dyn Pipeline<O>>,
    phase: Phase,
}

impl<A: Send, B: Send, O: Send> TwoInputTask<A, B, O> {
    pub fn new(
        name: String,
        operator_name: &str,
        first: Vec<ChannelReceiver<A>>,
        second: Vec<ChannelReceiver<B>>,
        operator: Box<dyn TwoInputOperator<A, B, O>>,
        pipeline: Box<dyn Pipeline<O>>,
    ) -> Self {
        Self {
            first: InputGate::new(&name, first),
            second: InputGate::new(&name, second),
            name,
            operator_name: operator_name.into(),
            first_ended: false,
            second_ended: false,
            prefer_second: false,
            operator,
            output: Vec::new(),
            pipeline,
            phase: Phase::Running,
        }
    }

    fn forward_output(&mut self) -> Result<(), TaskError> {
        if !self.output.is_empty() {
            self.pipeline.push(&mut self.output)?;
        }
        Ok(())
    }

    /// Polls one side; true if it yielded a batch.
    fn poll_side(&mut self, second: bool) -> Result<bool, TaskError> {
        let (operator, output) = (&mut self.operator, &mut self.output);
        if second {
            if self.second_ended {
                return Ok(false);
            }
            match self.second.poll()? {
                GateEvent::Batch(mut batch) => {
                    guarded(&self.operator_name, || {
                        operator.process_batch2(&mut batch, output)
                    })?;
                }
                GateEvent::Empty => return Ok(false),
                GateEvent::Ended => {
                    self.second_ended = true;
                    return Ok(false);
                }
            }
        } else {
            if self.first_ended {
                return Ok(false);
            }
            match self.first.poll()? {
                GateEvent::Batch(mut batch) => {
                    guarded(&self.operator_name, || {
                        operator.process_batch1(&mut batch, output)
                    })?;
                }
                GateEvent::Empty => return Ok(false),
                GateEvent::Ended => {
                    self.first_ended = true;
                    return Ok(false);
                }
            }
        }
        self.forward_output()?;
        Ok(true)
    }
}

impl<A: Send, B: Send, O: Send> Task for TwoInputTask<A, B, O> {
    fn name(&self) -> &str {
        &self.name
    }

    fn step(&mut self) -> Result<Step, TaskError> {
        if self.phase != Phase::Running {
            return drain(&mut self.phase, self.pipeline.as_mut());
        }
        if !self.pipeline.flush(false)? {
            return Ok(Step::Idle { wake_at: None });
        }
        // Alternate which side goes first so neither input starves the other.
        let first_side = self.prefer_second;
        self.prefer_second = !self.prefer_second;
        if self.poll_side(first_side)? || self.poll_side(!first_side)? {
            return Ok(Step::Progress);
        }
        if self.first_ended && self.second_ended {
            let (operator, output) = (&mut self.operator, &mut self.output);
            guarded(&self.operator_name, || operator.finish(output))?;
            self.forward_output()?;
            self.pipeline.end_of_input()?;
            self.phase = Phase::Draining;
            return Ok(Step::Progress);
        }
        self.pipeline.flush(true)?;
        Ok(Step::Idle { wake_at: None })
    }
}
