//! A sink slowed to a rate: [`ThrottledSink`] writes through another sink at
//! most `rate_per_s` records per second in total, by sleeping in
//! `write_batch`, as a sink doing synchronous I/O against a slow system
//! does (its worker blocks; upstream fills the channels and backpressure
//! reaches the sources). Used to put a job under sustained backpressure
//! (the checkpoint benchmarks of issue 18, `keyed-count --sink-rate`).
//!
//! Owns: the pacing of writes. Must not touch: what the inner sink writes or
//! commits (every other call is passed through unchanged).

use std::time::{Duration, Instant};

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{Barrier, PreparedCommit, Sink, SinkWriter, SubtaskInfo, UserError};

use crate::ConnectorError;

/// `inner`, at most `rate_per_s` records per second over all instances
/// (each instance gets an equal share, at least 1 record/s).
pub struct ThrottledSink<S> {
    inner: S,
    rate_per_s: u64,
}

impl<S> ThrottledSink<S> {
    pub fn new(inner: S, rate_per_s: u64) -> Result<Self, ConnectorError> {
        if rate_per_s == 0 {
            return Err(ConnectorError::Config(
                "a sink's rate must be at least 1 record/s".into(),
            ));
        }
        Ok(Self { inner, rate_per_s })
    }
}

impl<T: 'static, S: Sink<T>> Sink<T> for ThrottledSink<S> {
    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        let share = (self.rate_per_s / u64::from(subtask.parallelism.max(1))).max(1);
        Ok(Box::new(ThrottledWriter {
            inner: self.inner.create_writer(subtask)?,
            pacer: Pacer::new(share),
        }))
    }

    fn commits_on_checkpoint(&self) -> bool {
        self.inner.commits_on_checkpoint()
    }
}

/// How long to wait before a write so that the records written since the
/// first stay at most `rate_per_s` per second (no burst beyond one batch).
#[derive(Debug)]
struct Pacer {
    rate_per_s: u64,
    started: Option<Instant>,
    written: u64,
}

impl Pacer {
    fn new(rate_per_s: u64) -> Self {
        Self {
            rate_per_s,
            started: None,
            written: 0,
        }
    }

    /// The wait before writing `records` more at `now`.
    fn delay(&mut self, now: Instant, records: u64) -> Duration {
        let started = *self.started.get_or_insert(now);
        // The records before these must have taken their time.
        let due = started + Duration::from_secs_f64(self.written as f64 / self.rate_per_s as f64);
        if due < now {
            // Late (no input for a while): no credit for the idle time, the
            // rate counts from now.
            self.started = Some(now);
            self.written = records;
            return Duration::ZERO;
        }
        self.written = self.written.saturating_add(records);
        due - now
    }
}

struct ThrottledWriter<T> {
    inner: Box<dyn SinkWriter<T>>,
    pacer: Pacer,
}

impl<T> SinkWriter<T> for ThrottledWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        let wait = self.pacer.delay(Instant::now(), batch.len() as u64);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        self.inner.write_batch(batch)
    }

    fn finish(&mut self) -> Result<(), UserError> {
        self.inner.finish()
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        self.inner.prepare_commit(barrier)
    }

    fn prepare_commit_deferred(&mut self, barrier: Barrier) -> Result<PreparedCommit, UserError> {
        self.inner.prepare_commit_deferred(barrier)
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.inner.commit(checkpoint_id)
    }

    fn abort(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.inner.abort(checkpoint_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_spaced_to_the_rate_without_bursts() {
        let mut pacer = Pacer::new(1000);
        let t0 = Instant::now();
        // The first batch goes at once; the next waits for the first's time.
        assert_eq!(pacer.delay(t0, 500), Duration::ZERO);
        assert_eq!(pacer.delay(t0, 500), Duration::from_millis(500));
        // Called late (no input for a while): no wait, and no credit for
        // the idle time: the rate counts from then.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(pacer.delay(t2, 100), Duration::ZERO);
        assert_eq!(pacer.delay(t2, 100), Duration::from_millis(100));
        assert_eq!(
            pacer.delay(t2 + Duration::from_millis(50), 1),
            Duration::from_millis(150)
        );
    }

    #[test]
    fn a_rate_of_zero_is_refused() {
        assert!(ThrottledSink::new(crate::CountingSink::new().0, 0).is_err());
    }
}
