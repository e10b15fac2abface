//! Job-wide counters, updated once per batch (never per record) or once per
//! checkpoint, and read by progress reporters.
//!
//! Owns: [`JobMetrics`] and its snapshots. Must not touch: anything it counts.

use std::sync::atomic::{AtomicU64, Ordering};

use flowstate_checkpoint::CheckpointStats;

/// Counters of a running job.
#[derive(Debug, Default)]
pub struct JobMetrics {
    records_in: AtomicU64,
    records_to_sinks: AtomicU64,
    checkpoints_completed: AtomicU64,
    checkpoints_failed: AtomicU64,
    last_checkpoint_id: AtomicU64,
    last_checkpoint_duration_us: AtomicU64,
    last_checkpoint_bytes: AtomicU64,
    restarts: AtomicU64,
}

/// The latest completed checkpoint, as the progress line shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointProgress {
    pub completed: u64,
    pub failed: u64,
    pub last_id: u64,
    pub last_duration_us: u64,
    pub last_bytes: u64,
}

impl JobMetrics {
    /// Records emitted by all sources so far (replays after a restart included).
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }

    /// Records handed to all sinks so far.
    pub fn records_to_sinks(&self) -> u64 {
        self.records_to_sinks.load(Ordering::Relaxed)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn checkpoints(&self) -> CheckpointProgress {
        CheckpointProgress {
            completed: self.checkpoints_completed.load(Ordering::Relaxed),
            failed: self.checkpoints_failed.load(Ordering::Relaxed),
            last_id: self.last_checkpoint_id.load(Ordering::Relaxed),
            last_duration_us: self.last_checkpoint_duration_us.load(Ordering::Relaxed),
            last_bytes: self.last_checkpoint_bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_records_in(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_records_to_sinks(&self, n: usize) {
        self.records_to_sinks.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_checkpoint(&self, stats: &CheckpointStats) {
        self.last_checkpoint_id.store(stats.id, Ordering::Relaxed);
        self.last_checkpoint_duration_us
            .store(stats.duration.as_micros() as u64, Ordering::Relaxed);
        self.last_checkpoint_bytes
            .store(stats.bytes, Ordering::Relaxed);
        self.checkpoints_completed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_failed_checkpoint(&self) {
        self.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}
