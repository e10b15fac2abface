//! Job-wide counters, updated once per batch (never per record) or once per
//! checkpoint, and read by progress reporters.
//!
//! Owns: [`JobMetrics`] and its snapshots. Must not touch: anything it counts.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flowstate_checkpoint::CheckpointStats;

use crate::message::Watermark;

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
    /// Every task's current input watermark (a source task's: what it
    /// emitted), by task name; registered when a task is built.
    watermarks: Mutex<Vec<(String, WatermarkGauge)>>,
}

/// One task's current watermark, set once per watermark that grew (never
/// per record).
#[derive(Debug, Clone)]
pub struct WatermarkGauge(Arc<AtomicI64>);

impl WatermarkGauge {
    pub fn set(&self, watermark: Watermark) {
        self.0.store(watermark.0, Ordering::Relaxed);
    }

    pub fn get(&self) -> Watermark {
        Watermark(self.0.load(Ordering::Relaxed))
    }
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

    /// The current input watermark of every task (a source task's: the
    /// watermark it emitted), by task name, in the order the tasks were
    /// built; [`Watermark::MIN`] before the first.
    pub fn watermarks(&self) -> Vec<(String, Watermark)> {
        let gauges = self.watermarks.lock().unwrap_or_else(|e| e.into_inner());
        gauges.iter().map(|(n, g)| (n.clone(), g.get())).collect()
    }

    /// The current input watermark of the first task whose name starts
    /// with `prefix` (task names are `<chain> (<i>/<p>)`).
    pub fn watermark_of(&self, prefix: &str) -> Option<Watermark> {
        let gauges = self.watermarks.lock().unwrap_or_else(|e| e.into_inner());
        gauges
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, g)| g.get())
    }

    /// The gauge of task `task` (its watermark reset to `MIN`: a restarted
    /// attempt starts from nothing).
    pub(crate) fn register_watermark(&self, task: &str) -> WatermarkGauge {
        let mut gauges = self.watermarks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, gauge)) = gauges.iter().find(|(n, _)| n == task) {
            gauge.set(Watermark::MIN);
            return gauge.clone();
        }
        let gauge = WatermarkGauge(Arc::new(AtomicI64::new(i64::MIN)));
        gauges.push((task.to_owned(), gauge.clone()));
        gauge
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
