//! `keyed-count`: workload W through `key_by` into a keyed `(count, sum)`
//! operator that emits `key,count,sum` on every update.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flowstate::connectors::sequence::{DEFAULT_SPLITS, SequenceSource};
use flowstate::connectors::{ConnectorError, CountingSink, FileSink, ThrottledSink};
use flowstate::{
    FnResult, JobParameters, KeyedContext, KeyedProcessFunction, KeyedStateBackend, ParameterError,
    StreamEnvironment, ValueStateDescriptor, ValueStateHandle,
};

use crate::totals::InstanceShares;
use crate::workload::{Checksum, DEFAULT_KEYS, Workload};

/// Parameters of `keyed-count`.
#[derive(Debug, Clone)]
pub struct KeyedCountParams {
    pub records: u64,
    pub keys: u64,
    /// Total records per second; `None` for as fast as possible.
    pub rate_per_s: Option<u64>,
    /// Where committed output files go; `None` counts and drops the updates.
    pub output: Option<PathBuf>,
    pub splits: u32,
    /// The sink writes at most this many records per second in total,
    /// blocking as a slow synchronous sink does (backpressure); `None`: as
    /// fast as it can.
    pub sink_rate_per_s: Option<u64>,
}

impl KeyedCountParams {
    /// The parameters every snapshot of the job records, named like the
    /// CLI's flags. Compared on restore: `records`, `keys` (they define the
    /// workload the state counts) and `splits` (the source's positions are
    /// per split). Changeable: `rate` (a throttle) and `output` (where
    /// committed results go; the state does not depend on it, and pending
    /// files a snapshot lists are published where they were written).
    pub fn job_parameters(&self) -> Result<JobParameters, ParameterError> {
        let mut p = JobParameters::new()
            .with("records", self.records)?
            .with("keys", self.keys)?
            .with("splits", self.splits)?;
        if let Some(rate) = self.rate_per_s {
            p.insert("rate", rate, true)?;
        }
        if let Some(output) = &self.output {
            p.insert("output", output.display(), true)?;
        }
        if let Some(rate) = self.sink_rate_per_s {
            p.insert("sink-rate", rate, true)?;
        }
        Ok(p)
    }
}

impl Default for KeyedCountParams {
    fn default() -> Self {
        Self {
            records: 5_000_000,
            keys: DEFAULT_KEYS,
            rate_per_s: None,
            output: None,
            splits: DEFAULT_SPLITS,
            sink_rate_per_s: None,
        }
    }
}

/// One update of a key's state, written as `key,count,sum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountUpdate {
    pub key: u64,
    pub count: u64,
    pub sum: u64,
}

impl fmt::Display for CountUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.key, self.count, self.sum)
    }
}

/// The per-key `(count, sum)` function.
#[derive(Clone)]
pub struct CountAndSum {
    state: Option<ValueStateHandle<(u64, u64)>>,
    /// The job's checksum, each instance's share once.
    shares: InstanceShares<Checksum>,
}

impl CountAndSum {
    pub fn new(totals: Arc<Mutex<Checksum>>) -> Self {
        Self {
            state: None,
            shares: InstanceShares::new(totals),
        }
    }
}

impl KeyedProcessFunction<u64, (u64, u64), CountUpdate> for CountAndSum {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("count-sum"))?);
        Ok(())
    }

    #[inline]
    fn process(
        &mut self,
        (key, value): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<CountUpdate>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let (count, sum) = ctx.value(handle).modify(
            || (0, 0),
            |(count, sum)| {
                *count += 1;
                *sum = sum.wrapping_add(value);
                (*count, *sum)
            },
        )?;
        out.push(CountUpdate { key, count, sum });
        Ok(())
    }

    /// Folds this instance's final state into the job's checksum.
    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        _out: &mut Vec<CountUpdate>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let mut local = Checksum::default();
        state.for_each_value(handle, |key, &(count, sum)| local.add(*key, count, sum))?;
        // An instance may finish in an attempt that then fails and finish again
        // in the next: its key groups must count once, with the latest state.
        self.shares.replace(state.key_group_range().start, local)?;
        Ok(())
    }
}

/// What a built `keyed-count` job reports once it ends.
pub struct KeyedCountJob {
    pub totals: Arc<Mutex<Checksum>>,
}

impl KeyedCountJob {
    pub fn checksum(&self) -> Checksum {
        *self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `RESULT records=N keys=K checksum=...`, the job's final line.
    pub fn result_line(&self) -> String {
        let c = self.checksum();
        format!(
            "RESULT records={} keys={} checksum={:016x}",
            c.records, c.keys, c.value
        )
    }
}

/// The source of W's records as `make` builds them (throttled to the
/// parameters' rate), after checking the parameters and recording them on
/// `env`: what every variant of the job starts with.
pub(crate) fn workload_source<T: flowstate::Data>(
    env: &StreamEnvironment,
    params: &KeyedCountParams,
    make: impl Fn(Workload, u64) -> T + Send + Sync + 'static,
) -> Result<SequenceSource<T>, ConnectorError> {
    let workload = Workload::new(params.keys)
        .ok_or_else(|| ConnectorError::Config("the key count must be at least 1".into()))?;
    env.set_job_parameters(
        params
            .job_parameters()
            .map_err(|e| ConnectorError::Config(e.to_string()))?,
    );
    let mut source =
        SequenceSource::new(params.records, params.splits, move |i| make(workload, i))?;
    if let Some(rate) = params.rate_per_s {
        source = source.with_rate(rate)?;
    }
    Ok(source)
}

/// Adds `keyed-count` to `env`.
pub fn build(
    env: &StreamEnvironment,
    params: &KeyedCountParams,
) -> Result<KeyedCountJob, ConnectorError> {
    let source = workload_source(env, params, |workload, i| workload.record(i))?;
    let totals = Arc::new(Mutex::new(Checksum::default()));
    let updates = env
        .from_source("Source: W generator", source)
        .uid("w-generator")
        .key_by(|&(key, _): &(u64, u64)| key)
        .process(CountAndSum::new(Arc::clone(&totals)))
        .name("Count and sum")
        .uid("count-and-sum");
    match (&params.output, params.sink_rate_per_s) {
        (Some(dir), None) => updates.write_lines(dir)?,
        (Some(dir), Some(rate)) => updates.sink_to(
            "Sink: Files",
            ThrottledSink::new(FileSink::new(dir)?, rate)?,
        ),
        (None, None) => {
            updates.count();
        }
        (None, Some(rate)) => updates.sink_to(
            "Sink: Count",
            ThrottledSink::new(CountingSink::new().0, rate)?,
        ),
    }
    Ok(KeyedCountJob { totals })
}
