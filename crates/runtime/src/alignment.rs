//! How the barriers of one checkpoint meet at a task with input channels:
//! the [`BarrierTracker`], shared by the task's input gates.
//!
//! Three ways (the task's [`InputMode`] and the barrier's
//! [`BarrierAlignment`] decide):
//!
//! - **non-blocking** (at-least-once): nothing waits; the snapshot is taken
//!   when the last channel delivered the barrier;
//! - **aligned** (exactly-once): a channel that delivered barrier n is
//!   blocked until every open channel did; then the snapshot;
//! - **unaligned** (exactly-once, the task's gates can record): the snapshot
//!   is taken at the *first sighting* of barrier n (a notice on the task's
//!   board, an in-band barrier, or the deadline of an aligned-until
//!   checkpoint), nothing is blocked, and every channel is *recorded* from
//!   then until its in-band barrier n: what the task takes out of it in
//!   between is channel state of checkpoint n.
//!
//! Owns: the per-channel bookkeeping of the checkpoint in flight at a task
//! and the events that tell the task when to snapshot and when its input
//! side is done. Must not touch: channels, records or the control plane (the
//! gates and the task act on its answers); it reads the monotonic clock only
//! to measure alignment time, never to decide.

use std::time::{Duration, Instant};

use flowstate_checkpoint::BarrierAlignment;

use crate::message::Barrier;

/// Whether a task may hold channels back, and whether it may go unaligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputMode {
    /// At-least-once and at-most-once: never block a channel.
    NonBlocking,
    /// Exactly-once, aligned only (also every unaligned barrier): a task
    /// whose gates cannot record (a `union` input has no codec).
    Aligned,
    /// Exactly-once; unaligned and aligned-until barriers may go unaligned.
    MayUnalign,
}

/// What the task does next for a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrackerEvent {
    /// Barrier n arrived on every open channel (aligned or non-blocking):
    /// snapshot, forward and submit now, after `alignment`.
    Aligned {
        barrier: Barrier,
        alignment: Duration,
    },
    /// The first sighting of an unaligned barrier n: snapshot and forward
    /// now (as `Unaligned`), then record every channel until its in-band
    /// barrier n; [`BarrierTracker::input_done`] says when all are done.
    Unaligned { barrier: Barrier },
}

impl TrackerEvent {
    /// The barrier the event is about.
    pub(crate) fn barrier(&self) -> Barrier {
        match *self {
            TrackerEvent::Aligned { barrier, .. } | TrackerEvent::Unaligned { barrier } => barrier,
        }
    }
}

/// The task's side of the checkpoint in flight (one at a time; a newer
/// barrier supersedes an older one, whose checkpoint was abandoned).
#[derive(Debug)]
pub(crate) struct BarrierTracker {
    mode: InputMode,
    /// Channel delivered barrier `current` in band.
    got: Vec<bool>,
    /// Aligned: held back until every open channel delivered the barrier.
    blocked: Vec<bool>,
    ended: Vec<bool>,
    /// The barrier being aligned or recorded.
    current: Option<Barrier>,
    /// First sighting of `current` (alignment time is measured from it).
    started: Option<Instant>,
    /// The snapshot of `current` was taken unaligned: channels not `got`
    /// nor ended are recorded.
    recording: bool,
    /// The newest checkpoint the task snapshotted or abandoned: barriers
    /// and notices of it or older are stale.
    handled: u64,
}

impl BarrierTracker {
    pub(crate) fn new(channels: usize, mode: InputMode) -> Self {
        Self {
            mode,
            got: vec![false; channels],
            blocked: vec![false; channels],
            ended: vec![false; channels],
            current: None,
            started: None,
            recording: false,
            handled: 0,
        }
    }

    pub(crate) fn mode(&self) -> InputMode {
        self.mode
    }

    /// The newest checkpoint the task snapshotted or abandoned.
    pub(crate) fn handled(&self) -> u64 {
        self.handled
    }

    #[inline]
    pub(crate) fn is_blocked(&self, channel: usize) -> bool {
        self.blocked[channel]
    }

    /// The snapshot of the checkpoint in flight was taken unaligned and
    /// some channel is still recorded.
    #[inline]
    pub(crate) fn is_recording(&self) -> bool {
        self.recording
    }

    /// The checkpoint being recorded.
    pub(crate) fn recording_id(&self) -> Option<u64> {
        self.current.filter(|_| self.recording).map(|b| b.id)
    }

    /// Checkpoint `id` is the one being recorded.
    #[inline]
    pub(crate) fn is_current(&self, id: u64) -> bool {
        self.recording && self.current.is_some_and(|b| b.id == id)
    }

    /// What the task takes out of `channel` now is channel state.
    #[inline]
    pub(crate) fn records(&self, channel: usize) -> bool {
        self.recording && !self.got[channel] && !self.ended[channel]
    }

    /// The deadline (ms since the Unix epoch) of an aligned-until
    /// alignment in progress, after which the task goes unaligned.
    pub(crate) fn deadline_unix_ms(&self) -> Option<u64> {
        match self.current {
            Some(Barrier {
                alignment: BarrierAlignment::AlignedUntil { deadline_unix_ms },
                ..
            }) if self.mode == InputMode::MayUnalign && !self.recording => Some(deadline_unix_ms),
            _ => None,
        }
    }

    fn reset(&mut self) {
        self.got.iter_mut().for_each(|g| *g = false);
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.current = None;
        self.started = None;
        self.recording = false;
    }

    /// Starts tracking `barrier` (a first sighting) unless it is stale;
    /// a newer one supersedes the one in flight. False: ignore it.
    fn sight(&mut self, barrier: Barrier) -> bool {
        match self.current {
            Some(current) if barrier.id < current.id => return false,
            Some(current) if barrier.id == current.id => return true,
            Some(_) => self.reset(), // the one in flight was abandoned upstream
            None if barrier.id <= self.handled => return false,
            None => {}
        }
        self.current = Some(barrier);
        self.started = Some(Instant::now());
        true
    }

    /// Goes unaligned for the barrier in flight: channels that delivered it
    /// are done, every other open one is recorded from now.
    fn unalign(&mut self) -> Option<TrackerEvent> {
        let barrier = self.current?;
        self.recording = true;
        self.handled = barrier.id;
        self.blocked.iter_mut().for_each(|b| *b = false);
        Some(TrackerEvent::Unaligned {
            barrier: barrier.with_alignment(BarrierAlignment::Unaligned),
        })
    }

    fn complete_aligned(&mut self) -> Option<TrackerEvent> {
        let barrier = self.current?;
        if self.recording || !(0..self.got.len()).all(|i| self.got[i] || self.ended[i]) {
            return None;
        }
        let alignment = self.started.map_or(Duration::ZERO, |s| s.elapsed());
        self.handled = barrier.id;
        self.reset();
        Some(TrackerEvent::Aligned { barrier, alignment })
    }

    /// Barrier `barrier` arrived in band on `channel`.
    pub(crate) fn on_barrier(&mut self, channel: usize, barrier: Barrier) -> Option<TrackerEvent> {
        if !self.sight(barrier) {
            return None;
        }
        self.got[channel] = true;
        if self.recording {
            return None; // `input_done` says when every channel is
        }
        if self.mode == InputMode::MayUnalign && barrier.alignment == BarrierAlignment::Unaligned {
            return self.unalign();
        }
        if self.mode != InputMode::NonBlocking {
            self.blocked[channel] = true;
        }
        self.complete_aligned()
    }

    /// A producer announced `barrier` (it is on its way in some channel).
    /// A notice never supersedes the barrier in flight: that one may still
    /// be on its way too (a savepoint triggered beside a checkpoint); only
    /// an in-band barrier proves the older one abandoned.
    pub(crate) fn on_announcement(&mut self, barrier: Barrier) -> Option<TrackerEvent> {
        if self.mode != InputMode::MayUnalign
            || self.current.is_some_and(|c| c.id != barrier.id)
            || !self.sight(barrier)
            || self.recording
        {
            return None;
        }
        match barrier.alignment {
            BarrierAlignment::Unaligned => self.unalign(),
            // Aligned until its deadline, which the task now knows.
            _ => None,
        }
    }

    /// The clock reads `now_unix_ms`: an aligned-until alignment past its
    /// deadline goes unaligned.
    pub(crate) fn on_clock(&mut self, now_unix_ms: u64) -> Option<TrackerEvent> {
        match self.deadline_unix_ms() {
            Some(deadline) if now_unix_ms >= deadline => self.unalign(),
            _ => None,
        }
    }

    /// `channel` ended; it no longer takes part (idempotent).
    pub(crate) fn on_end(&mut self, channel: usize) -> Option<TrackerEvent> {
        self.ended[channel] = true;
        self.blocked[channel] = false;
        self.complete_aligned()
    }

    /// Unaligned: every channel delivered the barrier or ended, so the
    /// recording is complete: the barrier and the alignment time, once.
    pub(crate) fn input_done(&mut self) -> Option<(Barrier, Duration)> {
        if !self.recording || !(0..self.got.len()).all(|i| self.got[i] || self.ended[i]) {
            return None;
        }
        let barrier = self.current?;
        let alignment = self.started.map_or(Duration::ZERO, |s| s.elapsed());
        self.reset();
        Some((
            barrier.with_alignment(BarrierAlignment::Unaligned),
            alignment,
        ))
    }

    /// Gives up recording checkpoint `id` (aborted, or over the in-flight
    /// limit): its remaining in-band barriers are stale. True if it was
    /// being recorded.
    pub(crate) fn abandon(&mut self, id: u64) -> bool {
        if self.recording && self.current.is_some_and(|b| b.id == id) {
            self.reset();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(id: u64) -> Barrier {
        Barrier::checkpoint(id)
    }

    fn unaligned(id: u64) -> Barrier {
        Barrier::checkpoint(id).with_alignment(BarrierAlignment::Unaligned)
    }

    fn until(id: u64, deadline_unix_ms: u64) -> Barrier {
        Barrier::checkpoint(id).with_alignment(BarrierAlignment::AlignedUntil { deadline_unix_ms })
    }

    fn snapshot_at(event: Option<TrackerEvent>) -> Barrier {
        match event {
            Some(TrackerEvent::Unaligned { barrier }) => barrier,
            other => panic!("expected an unaligned snapshot, got {other:?}"),
        }
    }

    #[test]
    fn aligned_blocks_each_channel_until_all_delivered() {
        let mut t = BarrierTracker::new(3, InputMode::Aligned);
        assert_eq!(t.on_barrier(0, aligned(1)), None);
        assert!(t.is_blocked(0) && !t.is_blocked(1));
        assert_eq!(t.on_end(2), None);
        match t.on_barrier(1, aligned(1)) {
            Some(TrackerEvent::Aligned { barrier, .. }) => assert_eq!(barrier.id, 1),
            other => panic!("{other:?}"),
        }
        assert!(!t.is_blocked(0) && !t.is_blocked(1));
        assert_eq!(t.handled(), 1);
    }

    #[test]
    fn an_aligned_task_aligns_unaligned_barriers() {
        let mut t = BarrierTracker::new(2, InputMode::Aligned);
        assert_eq!(t.on_announcement(unaligned(1)), None);
        assert_eq!(t.on_barrier(0, unaligned(1)), None);
        assert!(t.is_blocked(0) && !t.records(1));
        assert!(matches!(
            t.on_barrier(1, unaligned(1)),
            Some(TrackerEvent::Aligned { .. })
        ));
    }

    #[test]
    fn non_blocking_never_blocks() {
        let mut t = BarrierTracker::new(2, InputMode::NonBlocking);
        assert_eq!(t.on_barrier(0, aligned(1)), None);
        assert!(!t.is_blocked(0));
        assert!(t.on_barrier(1, aligned(1)).is_some());
    }

    #[test]
    fn an_announcement_snapshots_at_once_and_records_every_channel_to_its_barrier() {
        let mut t = BarrierTracker::new(3, InputMode::MayUnalign);
        assert_eq!(snapshot_at(t.on_announcement(unaligned(4))), unaligned(4));
        assert!(t.is_recording() && t.records(0) && t.records(1) && t.records(2));
        assert_eq!(t.on_announcement(unaligned(4)), None, "seen once");
        assert_eq!(t.on_barrier(1, unaligned(4)), None);
        assert!(!t.records(1) && !t.is_blocked(1), "done, not blocked");
        assert_eq!(t.input_done(), None);
        assert_eq!(t.on_end(2), None);
        assert_eq!(t.input_done(), None);
        assert_eq!(t.on_barrier(0, unaligned(4)), None);
        let (barrier, _) = t.input_done().expect("every channel done");
        assert_eq!(barrier, unaligned(4));
        assert_eq!(t.input_done(), None, "once");
        assert!(!t.is_recording());
    }

    #[test]
    fn an_in_band_unaligned_barrier_is_a_first_sighting() {
        let mut t = BarrierTracker::new(2, InputMode::MayUnalign);
        assert_eq!(snapshot_at(t.on_barrier(1, unaligned(2))), unaligned(2));
        assert!(t.records(0) && !t.records(1));
        assert_eq!(t.on_announcement(unaligned(2)), None, "a late notice");
        t.on_barrier(0, unaligned(2));
        assert!(t.input_done().is_some());
        // Stale: barrier 2 again, or its notice, after it was handled.
        assert_eq!(t.on_barrier(0, unaligned(2)), None);
        assert_eq!(t.on_announcement(unaligned(2)), None);
        assert!(!t.is_blocked(0) && !t.is_recording());
    }

    #[test]
    fn a_single_channel_is_done_at_its_first_sighting() {
        let mut t = BarrierTracker::new(1, InputMode::MayUnalign);
        snapshot_at(t.on_barrier(0, unaligned(1)));
        assert!(t.input_done().is_some());
    }

    #[test]
    fn aligned_until_goes_unaligned_at_its_deadline_keeping_delivered_channels_done() {
        let mut t = BarrierTracker::new(3, InputMode::MayUnalign);
        assert_eq!(
            t.on_announcement(until(1, 1_000)),
            None,
            "aligned until then"
        );
        assert_eq!(t.deadline_unix_ms(), Some(1_000));
        assert_eq!(t.on_barrier(0, until(1, 1_000)), None);
        assert!(t.is_blocked(0));
        assert_eq!(t.on_clock(999), None);
        assert_eq!(snapshot_at(t.on_clock(1_000)), unaligned(1));
        assert!(!t.is_blocked(0) && !t.records(0) && t.records(1) && t.records(2));
        assert_eq!(t.deadline_unix_ms(), None);
        t.on_barrier(1, until(1, 1_000));
        t.on_barrier(2, until(1, 1_000));
        assert!(t.input_done().is_some());
    }

    #[test]
    fn aligned_until_completing_before_its_deadline_stays_aligned() {
        let mut t = BarrierTracker::new(2, InputMode::MayUnalign);
        t.on_barrier(0, until(1, 1_000));
        assert!(matches!(
            t.on_barrier(1, until(1, 1_000)),
            Some(TrackerEvent::Aligned { .. })
        ));
        assert_eq!(t.on_clock(5_000), None);
    }

    #[test]
    fn a_notice_does_not_supersede_an_alignment_in_progress() {
        let mut t = BarrierTracker::new(2, InputMode::MayUnalign);
        let savepoint = Barrier {
            kind: crate::message::BarrierKind::Savepoint,
            ..aligned(1)
        };
        assert_eq!(t.on_barrier(0, savepoint), None);
        assert_eq!(t.on_announcement(unaligned(2)), None);
        assert!(t.is_blocked(0), "the savepoint still aligns");
        assert!(matches!(
            t.on_barrier(1, savepoint),
            Some(TrackerEvent::Aligned { barrier, .. }) if barrier.id == 1
        ));
        // Checkpoint 2 then starts at its first in-band barrier.
        assert_eq!(snapshot_at(t.on_barrier(1, unaligned(2))), unaligned(2));
    }

    #[test]
    fn a_newer_barrier_supersedes_and_an_abandoned_one_is_stale() {
        let mut t = BarrierTracker::new(2, InputMode::MayUnalign);
        snapshot_at(t.on_announcement(unaligned(1)));
        assert!(t.abandon(1));
        assert!(!t.is_recording());
        assert_eq!(t.on_barrier(0, unaligned(1)), None, "abandoned: stale");
        assert!(!t.abandon(1));
        snapshot_at(t.on_announcement(unaligned(2)));
        // 2 aborted upstream without the task hearing; 3 supersedes it.
        assert_eq!(snapshot_at(t.on_barrier(0, unaligned(3))), unaligned(3));
        assert!(t.records(1) && !t.records(0));
    }
}
