//! `window-count`: workload WT (event time) through `key_by` into 10 s
//! tumbling event-time windows computing `(count, sum)` per key and window,
//! emitted as `key,window_start_ms,count,sum` once the watermark passes the
//! window's end.
//!
//! The source generates watermarks per split (bounded out-of-orderness D), so
//! no record is ever late. The job's checksum is kept as keyed state by a
//! second keyed stage (per key: windows emitted and the sum of their `mix4`),
//! so that it is exactly-once across restores like the output itself, and is
//! read from that state when the input ends.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate::ParameterError;
use flowstate::connectors::ConnectorError;
use flowstate::connectors::sequence::{DEFAULT_SPLITS, SequenceSource};
use flowstate::runtime::WatermarkStrategy;
use flowstate::{
    FnResult, JobParameters, KeyedContext, KeyedProcessFunction, KeyedStateBackend,
    StreamEnvironment, TumblingEventTimeWindows, ValueStateDescriptor, ValueStateHandle,
    WindowAggregateFunction,
};

use crate::totals::InstanceShares;
use crate::window_workload::{TimedRecord, WindowChecksum, WindowWorkload, mix4};

/// Parameters of `window-count`.
#[derive(Debug, Clone)]
pub struct WindowCountParams {
    pub workload: WindowWorkload,
    /// Total records per second of processing time; `None`: as fast as possible.
    pub rate_per_s: Option<u64>,
    /// Where committed output files go; `None` counts and drops the results.
    pub output: Option<PathBuf>,
    pub splits: u32,
}

impl WindowCountParams {
    /// The parameters every snapshot of the job records, named like the
    /// CLI's flags. Compared on restore: `records`, `keys`,
    /// `events-per-second`, `out-of-orderness` and `window` (in ms, e.g.
    /// `10000ms`: they define the windows the state holds) and `splits`.
    /// Changeable: `rate` and `output` (as for `keyed-count`).
    pub fn job_parameters(&self) -> Result<JobParameters, ParameterError> {
        let w = &self.workload;
        let mut p = JobParameters::new()
            .with("records", w.records)?
            .with("keys", w.keys)?
            .with("events-per-second", w.events_per_second)?
            .with(
                "out-of-orderness",
                format_args!("{}ms", w.out_of_orderness_ms),
            )?
            .with("window", format_args!("{}ms", w.window_ms))?
            .with("splits", self.splits)?;
        if let Some(rate) = self.rate_per_s {
            p.insert("rate", rate, true)?;
        }
        if let Some(output) = &self.output {
            p.insert("output", output.display(), true)?;
        }
        Ok(p)
    }
}

impl Default for WindowCountParams {
    fn default() -> Self {
        Self {
            workload: WindowWorkload::default(),
            rate_per_s: None,
            output: None,
            splits: DEFAULT_SPLITS,
        }
    }
}

/// One window's result, written as `key,window_start_ms,count,sum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowResult {
    pub key: u64,
    pub window_start_ms: i64,
    pub count: u64,
    pub sum: u64,
}

impl fmt::Display for WindowResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.key, self.window_start_ms, self.count, self.sum
        )
    }
}

/// `(count, sum)` of a window's records.
#[derive(Clone, Copy)]
struct CountSum;

impl WindowAggregateFunction<TimedRecord, (u64, u64), (u64, u64)> for CountSum {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }

    #[inline]
    fn add(&self, accumulator: &mut (u64, u64), input: TimedRecord) {
        accumulator.0 += 1;
        accumulator.1 = accumulator.1.wrapping_add(input.value);
    }

    fn merge(&self, accumulator: &mut (u64, u64), other: (u64, u64)) {
        accumulator.0 += other.0;
        accumulator.1 = accumulator.1.wrapping_add(other.1);
    }

    fn result(&self, accumulator: &(u64, u64)) -> (u64, u64) {
        *accumulator
    }
}

/// Keeps, per key, what its emitted windows add to the checksum, and passes
/// the results on; at the end of the input folds its state into the job's
/// totals.
#[derive(Clone)]
struct ChecksumPerKey {
    /// `(windows, wrapping sum of mix4, records)` of the key's results.
    state: Option<ValueStateHandle<(u64, u64, u64)>>,
    /// The job's checksum, each instance's share once.
    shares: InstanceShares<WindowChecksum>,
}

impl KeyedProcessFunction<u64, WindowResult, WindowResult> for ChecksumPerKey {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("results"))?);
        Ok(())
    }

    fn process(
        &mut self,
        result: WindowResult,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<WindowResult>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let mixed = mix4(result.key, result.window_start_ms, result.count, result.sum);
        ctx.value(handle).modify(
            || (0, 0, 0),
            |(windows, sum, records)| {
                *windows += 1;
                *sum = sum.wrapping_add(mixed);
                *records += result.count;
            },
        )?;
        out.push(result);
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        _out: &mut Vec<WindowResult>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let mut local = WindowChecksum::default();
        state.for_each_value(handle, |_, &(windows, sum, records)| {
            local.value = local.value.wrapping_add(sum);
            local.windows += windows;
            local.records += records;
        })?;
        self.shares.replace(state.key_group_range().start, local)?;
        Ok(())
    }
}

/// What a built `window-count` job reports once it ends.
pub struct WindowCountJob {
    pub totals: Arc<Mutex<WindowChecksum>>,
}

impl WindowCountJob {
    pub fn checksum(&self) -> WindowChecksum {
        *self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `RESULT records=N windows=W checksum=...`, the job's final line.
    pub fn result_line(&self) -> String {
        self.checksum().result_line()
    }
}

/// Adds `window-count` to `env`.
pub fn build(
    env: &StreamEnvironment,
    params: &WindowCountParams,
) -> Result<WindowCountJob, ConnectorError> {
    let workload = params.workload;
    if workload.keys == 0 || workload.events_per_second == 0 || workload.window_ms == 0 {
        return Err(ConnectorError::Config(
            "window-count needs at least one key, one event per second and a window of at least 1 ms"
                .into(),
        ));
    }
    env.set_job_parameters(
        params
            .job_parameters()
            .map_err(|e| ConnectorError::Config(e.to_string()))?,
    );
    let delay = i64::try_from(workload.out_of_orderness_ms).unwrap_or(i64::MAX);
    let strategy =
        WatermarkStrategy::bounded_out_of_orderness(delay, |r: &TimedRecord| r.timestamp_ms);
    let mut source =
        SequenceSource::new(workload.records, params.splits, move |i| workload.record(i))?
            .with_event_time(strategy);
    if let Some(rate) = params.rate_per_s {
        source = source.with_rate(rate)?;
    }
    let totals = Arc::new(Mutex::new(WindowChecksum::default()));
    let results = env
        .from_source("Source: WT generator", source)
        .uid("wt-generator")
        .key_by(|r: &TimedRecord| r.key)
        .window_by(
            TumblingEventTimeWindows::of(Duration::from_millis(workload.window_ms)),
            |r: &TimedRecord| r.timestamp_ms,
        )
        .aggregate_with(CountSum, |key, window, (count, sum)| WindowResult {
            key: *key,
            window_start_ms: window.start,
            count,
            sum,
        })
        .name("Tumbling window count and sum")
        .uid("window-count-sum")
        .key_by(|r: &WindowResult| r.key)
        .process(ChecksumPerKey {
            state: None,
            shares: InstanceShares::new(Arc::clone(&totals)),
        })
        .name("Checksum")
        .uid("window-checksum");
    match &params.output {
        Some(dir) => results.write_lines(dir)?,
        None => {
            results.count();
        }
    }
    Ok(WindowCountJob { totals })
}
