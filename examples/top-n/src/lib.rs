//! Top-N pages by views in sliding event-time windows, over a user-written
//! source ([`source::PageViewSource`]).
//!
//! Views are keyed by page and counted in sliding windows (`--window` long,
//! every `--slide`); the counts of a window are then keyed by the window and
//! ranked by a keyed function that collects them in `ValueState` and emits
//! the top `--top` when the watermark passes the window's end (an event-time
//! timer). Each ranked line `window_start_ms,rank,page,views` goes through the
//! exactly-once file sink. The job ends with `RESULT windows=W lines=L
//! checksum=<16 hex>` (wrapping sum over lines of `splitmix64(fnv1a64(line))`,
//! kept as keyed state, so the same at any parallelism and after a restore).

pub mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate::connectors::ConnectorError;
use flowstate::{
    FnResult, KeyedContext, KeyedProcessFunction, KeyedStateBackend, SlidingEventTimeWindows,
    StreamEnvironment, TimeDomain, ValueStateDescriptor, ValueStateHandle, WindowAggregateFunction,
};

/// Event time of view 0 (ms since the Unix epoch).
pub const T0_MS: i64 = 1_700_000_000_000;

/// The job's parameters (besides the engine's runtime flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Page views generated (then the job ends).
    #[arg(long, default_value_t = 300_000)]
    pub views: u64,
    /// Distinct pages.
    #[arg(long, default_value_t = 50)]
    pub pages: u64,
    /// Views per second of event time.
    #[arg(long, default_value_t = 500)]
    pub events_per_second: u64,
    /// Splits of the source (the most source instances that read).
    #[arg(long, default_value_t = 16)]
    pub splits: u32,
    /// Throttle the source to R views per second of processing time
    /// [default: as fast as possible].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Window length.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// How often a window starts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub slide: Duration,
    /// Pages ranked per window.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// Write the rankings, exactly once, into part files in this directory
    /// [default: count the lines and drop them].
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            views: 300_000,
            pages: 50,
            events_per_second: 500,
            splits: 16,
            rate: None,
            window: Duration::from_secs(60),
            slide: Duration::from_secs(10),
            top: 3,
            output: None,
        }
    }
}

/// SplitMix64's finaliser.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// One page view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageView {
    pub id: u64,
    pub page: u64,
    /// Event time, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// The generated views: view `i` is a pure function of `i`.
#[derive(Debug, Clone, Copy)]
pub struct Views {
    pub count: u64,
    pub pages: u64,
    pub events_per_second: u64,
}

impl Views {
    /// View `i`: at `T0 + i * 1000 / events_per_second` ms, of page
    /// `min(splitmix64(i) % pages, splitmix64(i ^ 0x5851F42D4C957F2D) % pages)`
    /// (low page numbers are more popular).
    pub fn view(&self, i: u64) -> PageView {
        let pages = self.pages.max(1);
        let a = splitmix64(i) % pages;
        let b = splitmix64(i ^ 0x5851_F42D_4C95_7F2D) % pages;
        PageView {
            id: i,
            page: a.min(b),
            timestamp_ms: T0_MS
                + (u128::from(i) * 1000 / u128::from(self.events_per_second.max(1))) as i64,
        }
    }
}

/// A page's views in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowCount {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub page: u64,
    pub views: u64,
}

/// Counts views.
#[derive(Clone, Copy)]
struct Count;

impl WindowAggregateFunction<PageView, u64, u64> for Count {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, accumulator: &mut u64, _input: PageView) {
        *accumulator += 1;
    }
    fn merge(&self, accumulator: &mut u64, other: u64) {
        *accumulator += other;
    }
    fn result(&self, accumulator: &u64) -> u64 {
        *accumulator
    }
}

/// What the job reports at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub windows: u64,
    pub lines: u64,
    pub checksum: u64,
}

impl Summary {
    /// `RESULT windows=W lines=L checksum=<16 hex>`.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT windows={} lines={} checksum={:016x}",
            self.windows, self.lines, self.checksum
        )
    }
}

/// Each ranking instance's share, by its first key group (replaced, not
/// added, when an instance finishes again after a restart).
#[derive(Clone, Default)]
struct Shares(Arc<Mutex<HashMap<u32, Summary>>>);

/// The states of [`TopN`]: the window's `(page, views)`, and what it emitted.
type TopNHandles = (
    ValueStateHandle<Vec<(u64, u64)>>,
    ValueStateHandle<(u64, u64)>,
);

/// Ranks one window's pages (the key is the window's start).
#[derive(Clone)]
struct TopN {
    top: usize,
    /// `(page, views)` of the window, collected until it is complete.
    counts: Option<ValueStateHandle<Vec<(u64, u64)>>>,
    /// `(lines, checksum)` the window emitted (kept for the summary).
    emitted: Option<ValueStateHandle<(u64, u64)>>,
    shares: Shares,
}

impl TopN {
    fn handles(&self) -> Result<TopNHandles, &'static str> {
        match (&self.counts, &self.emitted) {
            (Some(c), Some(e)) => Ok((c.clone(), e.clone())),
            _ => Err("state used before open"),
        }
    }
}

impl KeyedProcessFunction<i64, WindowCount, String> for TopN {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<i64>) -> FnResult {
        self.counts = Some(state.value_state(&ValueStateDescriptor::new("counts"))?);
        self.emitted = Some(state.value_state(&ValueStateDescriptor::new("emitted"))?);
        Ok(())
    }

    fn process(
        &mut self,
        count: WindowCount,
        ctx: &mut KeyedContext<'_, i64>,
        _out: &mut Vec<String>,
    ) -> FnResult {
        let (counts, _) = self.handles()?;
        ctx.value(&counts)
            .modify(Vec::new, |c| c.push((count.page, count.views)))?;
        // Every page's count of the window arrives before the watermark
        // passes the window's end: rank then.
        ctx.register_event_time_timer(count.window_end_ms - 1)
    }

    fn on_timer(
        &mut self,
        _time: i64,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, i64>,
        out: &mut Vec<String>,
    ) -> FnResult {
        let (counts, emitted) = self.handles()?;
        let window_start = *ctx.key();
        let Some(mut pages) = ctx.value(&counts).clear()? else {
            return Ok(());
        };
        pages.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let (mut lines, mut checksum) = (0, 0u64);
        for (rank, (page, views)) in pages.into_iter().take(self.top).enumerate() {
            let line = format!("{window_start},{},{page},{views}", rank + 1);
            lines += 1;
            checksum = checksum.wrapping_add(splitmix64(fnv1a64(line.as_bytes())));
            out.push(line);
        }
        ctx.value(&emitted).set((lines, checksum))?;
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<i64>,
        _out: &mut Vec<String>,
    ) -> FnResult {
        let (_, emitted) = self.handles()?;
        let mut share = Summary::default();
        state.for_each_value(&emitted, |_, &(lines, checksum)| {
            share.windows += 1;
            share.lines += lines;
            share.checksum = share.checksum.wrapping_add(checksum);
        })?;
        self.shares
            .0
            .lock()
            .map_err(|_| "summary lock poisoned")?
            .insert(state.key_group_range().start, share);
        Ok(())
    }
}

/// A built job: its summary once it ended.
pub struct Job {
    shares: Shares,
}

impl Job {
    pub fn summary(&self) -> Summary {
        let shares = self.shares.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = Summary::default();
        for share in shares.values() {
            total.windows += share.windows;
            total.lines += share.lines;
            total.checksum = total.checksum.wrapping_add(share.checksum);
        }
        total
    }

    pub fn result_line(&self) -> String {
        self.summary().result_line()
    }
}

/// Adds the top-N job to `env`.
pub fn build(env: &StreamEnvironment, params: &Params) -> Result<Job, ConnectorError> {
    if params.pages == 0 || params.events_per_second == 0 || params.splits == 0 {
        return Err(ConnectorError::Config(
            "--pages, --events-per-second and --splits must be at least 1".into(),
        ));
    }
    if params.window.is_zero() || params.slide.is_zero() || params.top == 0 {
        return Err(ConnectorError::Config(
            "--window and --slide must be at least 1ms, --top at least 1".into(),
        ));
    }
    if params.rate == Some(0) {
        return Err(ConnectorError::Config("--rate must be at least 1".into()));
    }
    let source = source::PageViewSource {
        views: Views {
            count: params.views,
            pages: params.pages,
            events_per_second: params.events_per_second,
        },
        splits: params.splits,
        rate_per_s: params.rate,
    };
    let shares = Shares::default();
    let ranked = env
        .from_source("Source: Page views", source)
        .uid("page-views")
        .key_by(|v: &PageView| v.page)
        .window_by(
            SlidingEventTimeWindows::of(params.window, params.slide),
            |v: &PageView| v.timestamp_ms,
        )
        .aggregate_with(Count, |page, window, views| WindowCount {
            window_start_ms: window.start,
            window_end_ms: window.end,
            page: *page,
            views,
        })
        .name("Views per page and window")
        .uid("views-per-window")
        .key_by(|c: &WindowCount| c.window_start_ms)
        .process(TopN {
            top: params.top,
            counts: None,
            emitted: None,
            shares: shares.clone(),
        })
        .name("Top N per window")
        .uid("top-n");
    match &params.output {
        Some(dir) => ranked.write_lines(dir)?,
        None => {
            ranked.count();
        }
    }
    Ok(Job { shares })
}
