//! Job-wide counters, updated once per batch (never per record) and read by
//! progress reporters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a running job.
#[derive(Debug, Default)]
pub struct JobMetrics {
    records_in: AtomicU64,
    records_to_sinks: AtomicU64,
}

impl JobMetrics {
    /// Records emitted by all sources so far.
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }

    /// Records handed to all sinks so far.
    pub fn records_to_sinks(&self) -> u64 {
        self.records_to_sinks.load(Ordering::Relaxed)
    }

    pub(crate) fn add_records_in(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_records_to_sinks(&self, n: usize) {
        self.records_to_sinks.fetch_add(n as u64, Ordering::Relaxed);
    }
}
