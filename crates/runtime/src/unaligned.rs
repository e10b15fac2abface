//! A task's part in unaligned checkpoints, the same for one and two inputs:
//! the notice board its producers post barriers on, the snapshot it holds
//! while its input records, the in-flight limit, and the hand-over of the
//! held snapshot with its channel state (or its decline).
//!
//! Owns: [`UnalignedInput`] and the order of its work within a task's step
//! (aborts, then notices and the aligned-until deadline, then reading ahead,
//! then the limit and the submission). Must not touch: what a snapshot holds
//! (the task takes it and forwards the barrier), records (the gates'
//! [`RecordedInput`]) or the tracker's rules (`alignment`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_checkpoint::channel_file::ChannelStateContents;
use flowstate_state::{KeyGroupRange, SharedClock};

use crate::alignment::{BarrierTracker, TrackerEvent};
use crate::channel::BarrierAnnouncements;
use crate::control_plane::{ChannelStatePart, OperatorPart, Submission, TaskControlPlane};
use crate::error::TaskError;
use crate::input_gate::RecordedInput;
use crate::message::Barrier;
use crate::pipeline::StageIdentity;

/// Messages a recorded channel gives up to reading ahead per step: a step
/// stays bounded, and the channel's producer refills it meanwhile.
const READ_AHEAD_PER_STEP: usize = 64;

/// A task's part in unaligned checkpoints: the notice board its producers
/// post barriers on, and the snapshot it holds while its input records.
pub(crate) struct UnalignedInput {
    board: Arc<BarrierAnnouncements>,
    /// The head operator: channel state is indexed under it.
    owner: StageIdentity,
    /// The instance's key groups (for the channel state's validation).
    key_groups: KeyGroupRange,
    inflight_bytes_max: u64,
    held: Option<HeldSnapshot>,
}

/// A snapshot taken unaligned, submitted once the recording is complete.
struct HeldSnapshot {
    barrier: Barrier,
    parts: Vec<OperatorPart>,
    sync_pause: Duration,
}

impl UnalignedInput {
    pub(crate) fn new(
        board: Arc<BarrierAnnouncements>,
        owner: StageIdentity,
        key_groups: KeyGroupRange,
        inflight_bytes_max: u64,
    ) -> Self {
        Self {
            board,
            owner,
            key_groups,
            inflight_bytes_max,
            held: None,
        }
    }

    /// Drops the recording of every checkpoint in `aborted` the task was
    /// recording, declining its held snapshot.
    pub(crate) fn on_aborted(
        &mut self,
        control: &TaskControlPlane,
        tracker: &mut BarrierTracker,
        input: &mut impl RecordedInput,
        aborted: &[u64],
    ) {
        for &id in aborted {
            if tracker.abandon(id) {
                input.clear_recorded();
                self.decline(control, format!("checkpoint {id} was aborted"));
            }
        }
    }

    /// The next checkpoint event that does not come in band: a notice on
    /// the board, else the passed deadline of an aligned-until alignment
    /// (the clock is read only while one is open).
    pub(crate) fn next_event(
        &self,
        tracker: &mut BarrierTracker,
        clock: &SharedClock,
    ) -> Option<TrackerEvent> {
        if let Some(barrier) = self.board.take_newer_than(tracker.handled())
            && let Some(event) = tracker.on_announcement(barrier)
        {
            return Some(event);
        }
        tracker.deadline_unix_ms()?;
        tracker.on_clock(u64::try_from(clock.now_ms()).unwrap_or(0))
    }

    /// An aligned snapshot of `id` comes: a recording in progress was
    /// superseded (its checkpoint abandoned upstream).
    pub(crate) fn supersede(
        &mut self,
        control: &TaskControlPlane,
        input: &mut impl RecordedInput,
        id: u64,
    ) {
        input.clear_recorded();
        self.decline(control, format!("superseded by checkpoint {id}"));
    }

    /// Holds the snapshot of `barrier` until its recording is complete;
    /// one held before it was abandoned upstream and is declined.
    pub(crate) fn hold(
        &mut self,
        control: &TaskControlPlane,
        barrier: Barrier,
        parts: Vec<OperatorPart>,
        sync_pause: Duration,
    ) {
        let held = HeldSnapshot {
            barrier,
            parts,
            sync_pause,
        };
        if let Some(old) = self.held.replace(held) {
            decline_held(
                control,
                old,
                format!("superseded by checkpoint {}", barrier.id),
            );
        }
    }

    /// Reads ahead on the recorded channels, then [`finish`](Self::finish).
    /// True if reading ahead left messages for the next step.
    pub(crate) fn read_ahead(
        &mut self,
        control: &TaskControlPlane,
        tracker: &mut BarrierTracker,
        input: &mut impl RecordedInput,
    ) -> Result<bool, TaskError> {
        let mut more = false;
        if tracker.is_recording() {
            more = input.drain(tracker, READ_AHEAD_PER_STEP)?;
        }
        self.finish(control, tracker, input)?;
        Ok(more)
    }

    /// Declines the checkpoint being recorded if it is over the in-flight
    /// limit; submits the held snapshot with what the input recorded once
    /// every channel delivered its barrier.
    pub(crate) fn finish(
        &mut self,
        control: &TaskControlPlane,
        tracker: &mut BarrierTracker,
        input: &mut impl RecordedInput,
    ) -> Result<(), TaskError> {
        if let Some(id) = tracker.recording_id() {
            let bytes = input.recorded_bytes();
            if bytes > self.inflight_bytes_max {
                tracker.abandon(id);
                input.clear_recorded();
                let reason = format!(
                    "the in-flight records of checkpoint {id} reached {bytes} bytes, over the \
                     limit of {} bytes per task",
                    self.inflight_bytes_max
                );
                self.decline(control, reason);
                return Ok(());
            }
        }
        let Some((barrier, alignment)) = tracker.input_done() else {
            return Ok(());
        };
        let mut inputs = Vec::with_capacity(2);
        input.take_recorded(&mut inputs)?;
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        tracing::debug!(
            checkpoint = barrier.id,
            alignment_us = alignment.as_micros() as u64,
            inputs = inputs.len(),
            "in-flight records recorded"
        );
        if held.barrier.id != barrier.id {
            let reason = format!("superseded by checkpoint {}", barrier.id);
            decline_held(control, held, reason);
            return Ok(());
        }
        let channels = (!inputs.is_empty()).then(|| ChannelStatePart {
            uid: Arc::clone(&self.owner.uid),
            name: Arc::clone(&self.owner.name),
            subtask: self.owner.subtask,
            contents: ChannelStateContents {
                key_group_start: self.key_groups.start,
                key_group_end: self.key_groups.end,
                inputs,
            },
        });
        control.submit_job(Submission {
            barrier: held.barrier,
            parts: held.parts,
            sync_pause: held.sync_pause,
            alignment,
            unaligned: true,
            channels,
            decline: None,
        });
        Ok(())
    }

    /// Declines the held snapshot, if any (its sinks' deferred work still
    /// runs on the upload thread).
    fn decline(&mut self, control: &TaskControlPlane, reason: String) {
        if let Some(held) = self.held.take() {
            decline_held(control, held, reason);
        }
    }
}

fn decline_held(control: &TaskControlPlane, held: HeldSnapshot, reason: String) {
    control.submit_job(Submission {
        barrier: held.barrier,
        parts: held.parts,
        sync_pause: held.sync_pause,
        alignment: Duration::ZERO,
        unaligned: true,
        channels: None,
        decline: Some(reason),
    });
}

/// The instant the open aligned-until deadline falls at on `clock` (a
/// task idle during such an alignment wakes then).
pub(crate) fn deadline_instant(clock: &SharedClock, tracker: &BarrierTracker) -> Option<Instant> {
    let deadline = tracker.deadline_unix_ms()?;
    clock.instant_at(i64::try_from(deadline).unwrap_or(i64::MAX))
}
