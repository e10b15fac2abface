//! `keyed-count --measure-latency`: workload W's keys through the same keyed
//! `(count, sum)` function, with every record stamped when the source makes
//! it and the age of a sample of updates measured right before the (counting,
//! non-transactional) sink. What `bench/latency.sh` reads.
//!
//! The stamp replaces W's value (so the state's sums, and the checksum, are
//! not W's): a record is `(key, made_ns)`, nanoseconds since a process-wide
//! epoch, read again where the update reaches the sink. Source and sink run
//! in one process, so one monotonic clock serves both. Owns only this job's
//! shape; the runtime, state and the count function are the ordinary ones.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use flowstate::connectors::ConnectorError;
use flowstate::{
    FnResult, KeyedContext, KeyedProcessFunction, KeyedStateBackend, StreamEnvironment,
};

use crate::keyed_count::{CountAndSum, CountUpdate, KeyedCountParams, workload_source};
use crate::workload::Checksum;

/// One update in this many (by key) is measured: a uniform sample whose
/// bookkeeping stays off the per-record path.
const SAMPLE_EVERY_KEY: u64 = 16;
/// At most this many samples are kept (a limit on everything): ~32 MB.
const SAMPLES_MAX: usize = 4 << 20;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// [`CountAndSum`] over stamped records: the stamp rides along to the output.
#[derive(Clone)]
struct StampedCountAndSum {
    inner: CountAndSum,
    updates: Vec<CountUpdate>,
}

impl KeyedProcessFunction<u64, (u64, u64), (CountUpdate, u64)> for StampedCountAndSum {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        KeyedProcessFunction::<u64, (u64, u64), CountUpdate>::open(&mut self.inner, state)
    }

    #[inline]
    fn process(
        &mut self,
        (key, made_ns): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(CountUpdate, u64)>,
    ) -> FnResult {
        self.inner.process((key, made_ns), ctx, &mut self.updates)?;
        out.extend(self.updates.drain(..).map(|update| (update, made_ns)));
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        _out: &mut Vec<(CountUpdate, u64)>,
    ) -> FnResult {
        self.inner.finish(state, &mut self.updates)?;
        self.updates.clear();
        Ok(())
    }
}

/// What a built latency run reports once it ends.
pub struct LatencyJob {
    samples: Arc<Mutex<Vec<u64>>>,
}

impl LatencyJob {
    /// `LATENCY samples=N p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..`:
    /// the age of the sampled updates at the sink, in microseconds.
    pub fn result_line(&self) -> String {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[i.min(samples.len() - 1)] as f64 / 1000.0
        };
        format!(
            "LATENCY samples={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
            samples.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            at(0.999),
            at(1.0)
        )
    }
}

/// Adds the latency-measuring variant of `keyed-count` to `env` (the
/// parameters' `output` is not used: the sink counts).
pub fn build(
    env: &StreamEnvironment,
    params: &KeyedCountParams,
) -> Result<LatencyJob, ConnectorError> {
    epoch();
    let source = workload_source(env, params, |workload, i| (workload.record(i).0, now_ns()))?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sink_samples = Arc::clone(&samples);
    env.from_source("Source: W generator (stamped)", source)
        .uid("w-generator")
        .key_by(|&(key, _): &(u64, u64)| key)
        .process(StampedCountAndSum {
            inner: CountAndSum::new(Arc::new(Mutex::new(Checksum::default()))),
            updates: Vec::new(),
        })
        .name("Count and sum")
        .uid("count-and-sum")
        .map(move |(update, made_ns): (CountUpdate, u64)| {
            if update.key % SAMPLE_EVERY_KEY == 0 {
                let age_ns = now_ns().saturating_sub(made_ns);
                let mut samples = sink_samples.lock().unwrap_or_else(|e| e.into_inner());
                if samples.len() < SAMPLES_MAX {
                    samples.push(age_ns);
                }
            }
            update
        })
        .name("Latency probe")
        .count();
    Ok(LatencyJob { samples })
}
