//! The input side of a task: an [`InputGate`] reads the channels of one
//! input round robin, keeps their watermarks and statuses, and hands
//! barriers to the task's [`BarrierTracker`].
//!
//! For unaligned checkpoints a gate can also read ahead: once its task took
//! an unaligned snapshot, [`InputGate::drain`] moves messages out of the
//! channels that are still recorded into a per-channel queue (ahead of
//! processing, so the in-band barrier is reached at the speed of the
//! channels, not of the task), recording every batch it moves; `poll` reads
//! that queue before the channel. A restored gate first replays the batches
//! of its recovered channel state, before any channel.
//!
//! Owns: reading channels in order, watermark bookkeeping per channel, the
//! read-ahead queues and the gate's [`ChannelRecorder`]. Must not touch: what
//! a snapshot holds or when it is submitted (the task), or the control plane.

use std::collections::VecDeque;

use flowstate_checkpoint::channel_file::InputContents;

use crate::alignment::{BarrierTracker, TrackerEvent};
use crate::channel::ChannelReceiver;
use crate::channel_state::ChannelRecorder;
use crate::error::TaskError;
use crate::message::{Message, Watermark, WatermarkStatus};

/// What the channels of a task's inputs say about event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputWatermark {
    /// The minimum watermark over the channels that are not idle (`None`:
    /// every channel is idle, or there is none).
    pub min: Option<Watermark>,
    /// Some channel is idle.
    pub any_idle: bool,
}

/// Where a task's event time stands, from its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputStatus {
    /// At least one input channel is active; the minimum over them.
    Active(Watermark),
    /// Every channel is idle, or finished (`MAX`) while the others are idle.
    Idle,
}

impl InputWatermark {
    /// Both inputs of a two-input task together.
    pub fn combine(self, other: InputWatermark) -> InputWatermark {
        let min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        InputWatermark {
            min,
            any_idle: self.any_idle || other.any_idle,
        }
    }

    /// The task's status (`None`: it has no input channel). Channels that
    /// finished (at `MAX`) count as idle when others are idle: their end
    /// does not end the event time of an idle channel, whose records may
    /// still come.
    pub fn status(self) -> Option<InputStatus> {
        match self.min {
            Some(w) if !(self.any_idle && w == Watermark::MAX) => Some(InputStatus::Active(w)),
            _ if self.any_idle => Some(InputStatus::Idle),
            _ => None,
        }
    }
}

/// The channels into one input of a task.
///
/// It keeps the watermark and the [`WatermarkStatus`] of every channel (the
/// newest watermark it delivered; idle from its sender's `Idle` until its
/// `Active`) and yields [`GateEvent::Watermark`] when the
/// minimum over the channels that are not idle, or whether some channel is
/// idle, changed. An ended channel keeps its last watermark and status.
/// Watermarks and statuses are read in stream order like batches, so on a
/// channel blocked for alignment they wait too.
pub struct InputGate<T> {
    channels: Vec<ChannelReceiver<T>>,
    /// Index of this gate's first channel in the task's [`BarrierTracker`].
    offset: usize,
    /// Per channel: messages read ahead of processing (unaligned
    /// checkpoints), taken before the channel's own.
    drained: Vec<VecDeque<Message<T>>>,
    /// Records what the gate takes out of recorded channels (`None`: the
    /// gate cannot record; its task aligns).
    recorder: Option<ChannelRecorder<T>>,
    /// Restored channel state, replayed before any channel.
    recovered: VecDeque<Vec<T>>,
    ended: Vec<bool>,
    open: usize,
    cursor: usize,
    task: String,
    watermarks: Vec<Watermark>,
    /// The channel's sender said it is idle (and has not said otherwise).
    idle: Vec<bool>,
    /// What the channels said, as last yielded.
    reported: InputWatermark,
    /// A change of the minimum not yielded yet (a barrier went first).
    dirty: bool,
}

/// What an input gate yielded.
pub enum GateEvent<T> {
    Batch(Vec<T>),
    /// Time to snapshot (barrier n arrived on every input of the task, or
    /// the first sighting of an unaligned barrier).
    Checkpoint(TrackerEvent),
    /// The minimum watermark over the gate's channels that are not idle
    /// changed, or whether some channel is idle did.
    Watermark(InputWatermark),
    /// Nothing available now.
    Empty,
    /// Every channel has ended.
    Ended,
}

impl<T> InputGate<T> {
    pub fn new(task: &str, channels: Vec<ChannelReceiver<T>>, offset: usize) -> Self {
        let n = channels.len();
        Self {
            drained: (0..n).map(|_| VecDeque::new()).collect(),
            recorder: None,
            recovered: VecDeque::new(),
            channels,
            offset,
            ended: vec![false; n],
            open: n,
            cursor: 0,
            task: task.to_owned(),
            watermarks: vec![Watermark::MIN; n],
            idle: vec![false; n],
            reported: InputWatermark {
                min: (n > 0).then_some(Watermark::MIN),
                any_idle: false,
            },
            dirty: false,
        }
    }

    /// Records what it takes out of recorded channels with `recorder`.
    pub fn with_recorder(mut self, recorder: ChannelRecorder<T>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Replays `batches` (restored channel state) before any channel.
    pub fn with_recovered(mut self, batches: Vec<Vec<T>>) -> Self {
        self.recovered = batches.into();
        self
    }

    /// What the channels say about event time, as last yielded.
    pub fn watermark(&self) -> InputWatermark {
        self.reported
    }

    /// Recomputes the minimum; true if it changed since last yielded.
    ///
    /// An ended channel keeps its last watermark in the minimum. A channel
    /// that ends with its input carried `Watermark::MAX` first (sources emit
    /// it when their reader finishes), so it holds nothing back; one that
    /// ends because the job stopped with a savepoint did not, and its
    /// records after the savepoint are still to come (after the resume):
    /// leaving it out let the other channels' watermarks fire windows
    /// before all their records had arrived (found by the whole-job
    /// simulation).
    ///
    /// An idle channel is left out of the minimum, whatever its watermark:
    /// its sender has nothing to say for now.
    fn watermark_changed(&mut self) -> bool {
        let min = self
            .watermarks
            .iter()
            .zip(&self.idle)
            .filter(|(_, idle)| !**idle)
            .map(|(w, _)| *w)
            .min();
        let reported = InputWatermark {
            min,
            any_idle: self.idle.iter().any(|idle| *idle),
        };
        let changed = reported != self.reported;
        self.reported = reported;
        changed
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Messages waiting in the gate's channels and their total capacity
    /// (metrics: sampled, never per message).
    pub fn queue(&self) -> (u64, u64) {
        self.channels.iter().fold((0, 0), |(len, cap), c| {
            (len + c.len() as u64, cap + c.capacity() as u64)
        })
    }

    /// The next event of any unblocked channel, round-robin so none starves.
    pub fn poll(&mut self, tracker: &mut BarrierTracker) -> Result<GateEvent<T>, TaskError> {
        if let Some(batch) = self.recovered.pop_front() {
            return Ok(GateEvent::Batch(batch));
        }
        if self.dirty {
            self.dirty = false;
            if self.watermark_changed() {
                return Ok(GateEvent::Watermark(self.reported));
            }
        }
        let n = self.channels.len();
        let start = self.cursor;
        for step in 0..n {
            let i = (start + step) % n;
            // A control message that yields nothing (a barrier still
            // aligning, a watermark that moves no minimum) is consumed and
            // the same channel read on: the gate says `Empty` only when no
            // unblocked channel has anything.
            loop {
                if self.ended[i] || tracker.is_blocked(self.offset + i) {
                    break;
                }
                // Read ahead (and recorded when it was) first.
                let (next, fresh) = match self.drained[i].pop_front() {
                    Some(message) => (Ok(Some(message)), false),
                    None => (self.channels[i].try_recv(), true),
                };
                match next {
                    Ok(Some(Message::Batch(batch))) => {
                        self.cursor = (i + 1) % n;
                        if fresh
                            && tracker.records(self.offset + i)
                            && let Some(recorder) = &mut self.recorder
                        {
                            recorder
                                .record(&batch)
                                .map_err(|e| record_error(&self.task, e))?;
                        }
                        return Ok(GateEvent::Batch(batch));
                    }
                    Ok(Some(Message::Barrier(barrier))) => {
                        self.cursor = (i + 1) % n;
                        if let Some(event) = tracker.on_barrier(self.offset + i, barrier) {
                            return Ok(GateEvent::Checkpoint(event));
                        }
                    }
                    Ok(Some(Message::Watermark(watermark))) => {
                        self.cursor = (i + 1) % n;
                        // Watermarks only grow: an older one is ignored.
                        // One from an idle channel is kept, but the channel
                        // stays idle until its sender says `Active` (an
                        // assigner behind an idle task may still make
                        // watermarks from records fired by timers).
                        if watermark > self.watermarks[i] {
                            self.watermarks[i] = watermark;
                            if self.watermark_changed() {
                                return Ok(GateEvent::Watermark(self.reported));
                            }
                        }
                    }
                    Ok(Some(Message::WatermarkStatus(status))) => {
                        self.cursor = (i + 1) % n;
                        self.idle[i] = status == WatermarkStatus::Idle;
                        if self.watermark_changed() {
                            return Ok(GateEvent::Watermark(self.reported));
                        }
                    }
                    Ok(Some(Message::EndOfInput)) => {
                        self.ended[i] = true;
                        self.open -= 1;
                        if let Some(event) = tracker.on_end(self.offset + i) {
                            // The channel no longer holds the watermark
                            // back: said on the next poll.
                            self.dirty = true;
                            return Ok(GateEvent::Checkpoint(event));
                        }
                        if self.watermark_changed() {
                            return Ok(GateEvent::Watermark(self.reported));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        return Err(TaskError::ChannelClosed {
                            task: self.task.clone(),
                        });
                    }
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

/// What a task's unaligned side asks of its input: one gate, or both gates
/// of a two-input task (`(&mut first, &mut second)`).
pub(crate) trait RecordedInput {
    /// The task took an unaligned snapshot: starts recording afresh.
    fn start_recording(&mut self) -> Result<(), TaskError>;
    /// Reads ahead on recorded channels (see [`InputGate`]'s impl); true if
    /// a channel still has messages beyond `budget`.
    fn drain(&mut self, tracker: &mut BarrierTracker, budget: usize) -> Result<bool, TaskError>;
    /// Bytes recorded for the checkpoint in flight.
    fn recorded_bytes(&self) -> u64;
    /// Drops what was recorded (the checkpoint was abandoned).
    fn clear_recorded(&mut self);
    /// Appends what was recorded, one entry per input that recorded
    /// anything, and starts afresh.
    fn take_recorded(&mut self, inputs: &mut Vec<InputContents>) -> Result<(), TaskError>;
}

impl<T> RecordedInput for InputGate<T> {
    /// Bytes recorded for the checkpoint in flight.
    fn recorded_bytes(&self) -> u64 {
        self.recorder.as_ref().map_or(0, |r| r.bytes())
    }

    /// The task took an unaligned snapshot: everything the gate holds and
    /// has not processed (recovered batches, batches read ahead for an
    /// older checkpoint) precedes the barrier in its channel, so it is
    /// channel state of the new checkpoint too.
    fn start_recording(&mut self) -> Result<(), TaskError> {
        let Some(recorder) = &mut self.recorder else {
            return Ok(());
        };
        recorder.clear();
        for batch in &self.recovered {
            recorder
                .record(batch)
                .map_err(|e| record_error(&self.task, e))?;
        }
        for queue in &self.drained {
            for message in queue {
                if let Message::Batch(batch) = message {
                    recorder
                        .record(batch)
                        .map_err(|e| record_error(&self.task, e))?;
                }
            }
        }
        Ok(())
    }

    fn take_recorded(&mut self, inputs: &mut Vec<InputContents>) -> Result<(), TaskError> {
        if let Some(recorder) = &mut self.recorder {
            inputs.extend(recorder.take().map_err(|e| record_error(&self.task, e))?);
        }
        Ok(())
    }

    /// Drops what was recorded (the checkpoint was abandoned).
    fn clear_recorded(&mut self) {
        if let Some(recorder) = &mut self.recorder {
            recorder.clear();
        }
    }

    /// Reads ahead of processing on every recorded channel, at most
    /// `budget` messages each, until its in-band barrier: batches are
    /// recorded and queued, watermarks and statuses queued, the barrier
    /// taken (the channel is then done). True if a channel still has
    /// messages beyond the budget.
    fn drain(&mut self, tracker: &mut BarrierTracker, budget: usize) -> Result<bool, TaskError> {
        let mut more = false;
        for i in 0..self.channels.len() {
            let mut taken = 0;
            while tracker.records(self.offset + i) {
                if taken == budget {
                    more = true;
                    break;
                }
                let message = match self.channels[i].try_recv() {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_) => {
                        return Err(TaskError::ChannelClosed {
                            task: self.task.clone(),
                        });
                    }
                };
                taken += 1;
                match message {
                    Message::Batch(batch) => {
                        if let Some(recorder) = &mut self.recorder {
                            recorder
                                .record(&batch)
                                .map_err(|e| record_error(&self.task, e))?;
                        }
                        self.drained[i].push_back(Message::Batch(batch));
                    }
                    // The barrier of the recording: the channel is done
                    // (its first sighting was earlier, so no event).
                    Message::Barrier(barrier) if tracker.is_current(barrier.id) => {
                        tracker.on_barrier(self.offset + i, barrier);
                    }
                    Message::EndOfInput => {
                        tracker.on_end(self.offset + i);
                        self.drained[i].push_back(Message::EndOfInput);
                    }
                    // Stale barriers, watermarks, statuses: in order, for `poll`.
                    other => self.drained[i].push_back(other),
                }
            }
        }
        Ok(more)
    }
}

impl<A: RecordedInput, B: RecordedInput> RecordedInput for (&mut A, &mut B) {
    fn start_recording(&mut self) -> Result<(), TaskError> {
        self.0.start_recording()?;
        self.1.start_recording()
    }

    fn drain(&mut self, tracker: &mut BarrierTracker, budget: usize) -> Result<bool, TaskError> {
        let first = self.0.drain(tracker, budget)?;
        Ok(self.1.drain(tracker, budget)? || first)
    }

    fn recorded_bytes(&self) -> u64 {
        self.0.recorded_bytes() + self.1.recorded_bytes()
    }

    fn clear_recorded(&mut self) {
        self.0.clear_recorded();
        self.1.clear_recorded();
    }

    fn take_recorded(&mut self, inputs: &mut Vec<InputContents>) -> Result<(), TaskError> {
        self.0.take_recorded(inputs)?;
        self.1.take_recorded(inputs)
    }
}

fn record_error(task: &str, e: crate::channel_state::RecordError) -> TaskError {
    TaskError::ChannelState {
        task: task.to_owned(),
        reason: e.to_string(),
    }
}
