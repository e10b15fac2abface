//! Job-wide counters (records, checkpoints, restarts) and the per-task and
//! per-operator metrics of a running job, and their snapshots.
//!
//! The data path updates plain counters that a task owns, once per batch
//! (never per record), and publishes them with a relaxed store into the
//! shared atomics here (no read-modify-write, no lock, no clock read per
//! record). Time is accounted by the worker thread around each task's step
//! (one clock read per step: [`StepClock`]). Gauges that cost something to
//! read (queue fill, state sizes) are sampled by the worker about once per
//! second ([`SAMPLE_INTERVAL`]) through the task. Whoever reports (progress
//! line, HTTP API, Prometheus) reads snapshots ([`JobMetrics::tasks`],
//! [`JobMetrics::operators`]); this module knows nothing of their formats.
//!
//! Owns: [`JobMetrics`], [`TaskMetrics`], [`OperatorMetrics`], the gauges
//! connectors register ([`ConnectorGauge`]) and their snapshots. Must not
//! touch: anything it counts (tasks, channels, operators update it), or any
//! exposition format.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate_checkpoint::CheckpointStats;
pub use flowstate_state::StateStats;

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
    /// Completed checkpoints some task took unaligned.
    checkpoints_unaligned: AtomicU64,
    last_checkpoint_unaligned: AtomicBool,
    last_checkpoint_persisted_bytes: AtomicU64,
    /// In-flight bytes persisted by all completed checkpoints.
    checkpoint_persisted_bytes_total: AtomicU64,
    restarts: AtomicU64,
    /// Every task's current input watermark (a source task's: what it
    /// emitted), by task name; registered when a task is built.
    watermarks: Mutex<Vec<(String, WatermarkGauge)>>,
    /// Every task's metrics, in the order the tasks were first built (a
    /// restarted attempt's task of the same name continues them).
    tasks: Mutex<Vec<Arc<TaskMetrics>>>,
    /// Every operator instance's metrics, by (uid, subtask), in build order.
    operators: Mutex<Vec<Arc<OperatorMetrics>>>,
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

/// The job's completed checkpoints and the latest one, as the progress line
/// shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointProgress {
    pub completed: u64,
    pub failed: u64,
    pub last_id: u64,
    pub last_duration_us: u64,
    pub last_bytes: u64,
    /// Completed checkpoints some task took unaligned.
    pub unaligned: u64,
    /// The latest completed checkpoint was unaligned.
    pub last_unaligned: bool,
    /// Bytes of in-flight records the latest completed checkpoint persisted.
    pub last_persisted_bytes: u64,
    /// Bytes of in-flight records all completed checkpoints persisted.
    pub persisted_bytes_total: u64,
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
            unaligned: self.checkpoints_unaligned.load(Ordering::Relaxed),
            last_unaligned: self.last_checkpoint_unaligned.load(Ordering::Relaxed),
            last_persisted_bytes: self.last_checkpoint_persisted_bytes.load(Ordering::Relaxed),
            persisted_bytes_total: self
                .checkpoint_persisted_bytes_total
                .load(Ordering::Relaxed),
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

    /// The metrics of task `task` (head operator `uid`, subtask `subtask`),
    /// created on first use. A restarted attempt's task of the same name
    /// continues the counters (they never go back) and starts its watermark
    /// from `MIN`.
    pub(crate) fn register_task(&self, task: &str, uid: &str, subtask: u32) -> Arc<TaskMetrics> {
        let watermark = self.register_watermark(task);
        let mut tasks = lock(&self.tasks);
        if let Some(existing) = tasks.iter().find(|t| t.name == task) {
            return Arc::clone(existing);
        }
        let metrics = Arc::new(TaskMetrics::new(task, uid, subtask, watermark));
        tasks.push(Arc::clone(&metrics));
        metrics
    }

    /// The metrics of operator instance `uid`/`subtask` (named `name`, run
    /// in task `task`), created on first use; a restart continues them.
    pub(crate) fn register_operator(
        &self,
        uid: &str,
        name: &str,
        subtask: u32,
        task: &str,
        kind: OperatorKind,
    ) -> Arc<OperatorMetrics> {
        let mut operators = lock(&self.operators);
        if let Some(existing) = operators
            .iter()
            .find(|o| o.uid == uid && o.subtask == subtask)
        {
            return Arc::clone(existing);
        }
        let metrics = Arc::new(OperatorMetrics::new(uid, name, subtask, task, kind));
        operators.push(Arc::clone(&metrics));
        metrics
    }

    /// Every task's metrics now, in the order the tasks were first built.
    pub fn tasks(&self) -> Vec<TaskMetricsSnapshot> {
        let now_unix_ms = unix_ms_now();
        lock(&self.tasks)
            .iter()
            .map(|t| t.snapshot(now_unix_ms))
            .collect()
    }

    /// Every operator instance's metrics now, in build order.
    pub fn operators(&self) -> Vec<OperatorMetricsSnapshot> {
        lock(&self.operators).iter().map(|o| o.snapshot()).collect()
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
        self.last_checkpoint_unaligned
            .store(stats.unaligned, Ordering::Relaxed);
        self.last_checkpoint_persisted_bytes
            .store(stats.persisted_bytes, Ordering::Relaxed);
        self.checkpoint_persisted_bytes_total
            .fetch_add(stats.persisted_bytes, Ordering::Relaxed);
        if stats.unaligned {
            self.checkpoints_unaligned.fetch_add(1, Ordering::Relaxed);
        }
        self.checkpoints_completed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_failed_checkpoint(&self) {
        self.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How often a worker samples its tasks' gauges (queue fill, state sizes)
/// and computes their per-second rates.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// A rate stored as thousandths per second in an integer atomic.
fn rate_milli(delta: f64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0
    } else {
        (delta / secs * 1000.0) as u64
    }
}

/// One task's metrics: written by the task (records, checkpoints), by its
/// worker (time, rates, sampled gauges) and by an upload thread (its
/// snapshot's figures); read by snapshots.
#[derive(Debug)]
pub struct TaskMetrics {
    name: String,
    uid: String,
    subtask: u32,
    records_in: AtomicU64,
    records_out: AtomicU64,
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    backpressured_ns: AtomicU64,
    /// Per-second rates over the last sample interval, in thousandths.
    records_in_rate: AtomicU64,
    records_out_rate: AtomicU64,
    busy_rate: AtomicU64,
    idle_rate: AtomicU64,
    backpressured_rate: AtomicU64,
    input_queue: AtomicU64,
    input_capacity: AtomicU64,
    output_queue: AtomicU64,
    output_capacity: AtomicU64,
    watermark: WatermarkGauge,
    checkpoints: AtomicU64,
    last_checkpoint_id: AtomicU64,
    last_checkpoint_ns: AtomicU64,
    last_sync_pause_ns: AtomicU64,
    last_alignment_ns: AtomicU64,
    last_checkpoint_bytes: AtomicU64,
    last_checkpoint_unaligned: AtomicBool,
    last_checkpoint_persisted_bytes: AtomicU64,
    /// In-flight bytes persisted by every snapshot the task acknowledged.
    checkpoint_persisted_bytes_total: AtomicU64,
}

impl TaskMetrics {
    fn new(name: &str, uid: &str, subtask: u32, watermark: WatermarkGauge) -> Self {
        Self {
            name: name.to_owned(),
            uid: uid.to_owned(),
            subtask,
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            backpressured_ns: AtomicU64::new(0),
            records_in_rate: AtomicU64::new(0),
            records_out_rate: AtomicU64::new(0),
            busy_rate: AtomicU64::new(0),
            idle_rate: AtomicU64::new(0),
            backpressured_rate: AtomicU64::new(0),
            input_queue: AtomicU64::new(0),
            input_capacity: AtomicU64::new(0),
            output_queue: AtomicU64::new(0),
            output_capacity: AtomicU64::new(0),
            watermark,
            checkpoints: AtomicU64::new(0),
            last_checkpoint_id: AtomicU64::new(0),
            last_checkpoint_ns: AtomicU64::new(0),
            last_sync_pause_ns: AtomicU64::new(0),
            last_alignment_ns: AtomicU64::new(0),
            last_checkpoint_bytes: AtomicU64::new(0),
            last_checkpoint_unaligned: AtomicBool::new(false),
            last_checkpoint_persisted_bytes: AtomicU64::new(0),
            checkpoint_persisted_bytes_total: AtomicU64::new(0),
        }
    }

    /// Metrics of a task outside any job (tests, tools): counted, reported
    /// nowhere.
    pub fn detached(name: &str) -> Arc<Self> {
        let watermark = WatermarkGauge(Arc::new(AtomicI64::new(i64::MIN)));
        Arc::new(Self::new(name, name, 0, watermark))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task's record counters as they stand (an attempt's task starts
    /// counting from here).
    pub(crate) fn records(&self) -> RecordCounter {
        RecordCounter {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
        }
    }

    /// Publishes the task's record counters (once per batch).
    #[inline]
    pub(crate) fn publish_records_in(&self, counter: &RecordCounter) {
        self.records_in.store(counter.records_in, Ordering::Relaxed);
    }

    /// `n` records went to the task's output channels (once per batch;
    /// a task may have several exchanges, hence an addition).
    #[inline]
    pub(crate) fn add_records_out(&self, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn watermark_gauge(&self) -> &WatermarkGauge {
        &self.watermark
    }

    /// Sampled: messages waiting in the task's input channels and their
    /// capacity, and the same for its output channels.
    pub(crate) fn set_queues(&self, sample: &QueueSample) {
        self.input_queue.store(sample.input, Ordering::Relaxed);
        self.input_capacity
            .store(sample.input_capacity, Ordering::Relaxed);
        self.output_queue.store(sample.output, Ordering::Relaxed);
        self.output_capacity
            .store(sample.output_capacity, Ordering::Relaxed);
    }

    /// The task acknowledged checkpoint `id` (its upload finished):
    /// `duration` from the start of its synchronous part to the end of the
    /// upload.
    pub(crate) fn record_checkpoint(
        &self,
        id: u64,
        duration: Duration,
        sync_pause: Duration,
        alignment: Duration,
        bytes: u64,
    ) {
        self.last_checkpoint_id.store(id, Ordering::Relaxed);
        self.last_checkpoint_ns
            .store(duration.as_nanos() as u64, Ordering::Relaxed);
        self.last_sync_pause_ns
            .store(sync_pause.as_nanos() as u64, Ordering::Relaxed);
        self.last_alignment_ns
            .store(alignment.as_nanos() as u64, Ordering::Relaxed);
        self.last_checkpoint_bytes.store(bytes, Ordering::Relaxed);
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
    }

    /// The channel state of the snapshot the task just acknowledged (beside
    /// [`record_checkpoint`](Self::record_checkpoint), by the upload thread):
    /// whether it was taken unaligned, and the bytes of in-flight records it
    /// persisted (0 when aligned).
    pub(crate) fn record_channel_state(&self, unaligned: bool, persisted_bytes: u64) {
        self.last_checkpoint_unaligned
            .store(unaligned, Ordering::Relaxed);
        self.last_checkpoint_persisted_bytes
            .store(persisted_bytes, Ordering::Relaxed);
        self.checkpoint_persisted_bytes_total
            .fetch_add(persisted_bytes, Ordering::Relaxed);
    }

    fn snapshot(&self, now_unix_ms: i64) -> TaskMetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rate = |a: &AtomicU64| load(a) as f64 / 1000.0;
        let watermark = self.watermark.get();
        let watermark = (watermark > Watermark::MIN).then_some(watermark.0);
        let checkpoints = load(&self.checkpoints);
        TaskMetricsSnapshot {
            task: self.name.clone(),
            uid: self.uid.clone(),
            subtask: self.subtask,
            records_in: load(&self.records_in),
            records_out: load(&self.records_out),
            records_in_per_second: rate(&self.records_in_rate),
            records_out_per_second: rate(&self.records_out_rate),
            busy: Duration::from_nanos(load(&self.busy_ns)),
            idle: Duration::from_nanos(load(&self.idle_ns)),
            backpressured: Duration::from_nanos(load(&self.backpressured_ns)),
            busy_ms_per_second: rate(&self.busy_rate),
            idle_ms_per_second: rate(&self.idle_rate),
            backpressured_ms_per_second: rate(&self.backpressured_rate),
            input_queue_length: load(&self.input_queue),
            input_queue_capacity: load(&self.input_capacity),
            output_queue_length: load(&self.output_queue),
            output_queue_capacity: load(&self.output_capacity),
            watermark,
            watermark_lag_ms: watermark
                .filter(|w| *w < i64::MAX)
                .map(|w| now_unix_ms.saturating_sub(w)),
            checkpoints_acknowledged: checkpoints,
            checkpoint_persisted_bytes_total: load(&self.checkpoint_persisted_bytes_total),
            last_checkpoint: (checkpoints > 0).then(|| TaskCheckpointMetrics {
                id: load(&self.last_checkpoint_id),
                duration: Duration::from_nanos(load(&self.last_checkpoint_ns)),
                sync_pause: Duration::from_nanos(load(&self.last_sync_pause_ns)),
                alignment: Duration::from_nanos(load(&self.last_alignment_ns)),
                bytes: load(&self.last_checkpoint_bytes),
                unaligned: self.last_checkpoint_unaligned.load(Ordering::Relaxed),
                persisted_bytes: load(&self.last_checkpoint_persisted_bytes),
            }),
        }
    }
}

/// A task's own record counters: plain integers updated once per batch,
/// published into its [`TaskMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecordCounter {
    pub records_in: u64,
    pub records_out: u64,
}

/// Queue fill of one task, as sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSample {
    pub input: u64,
    pub input_capacity: u64,
    pub output: u64,
    pub output_capacity: u64,
}

/// What a task waits for when its step found nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Input (or time: a throttled source, a timer): idle.
    Input,
    /// Room in an output channel: backpressured.
    Output,
}

/// The worker's time accounting of one task: one clock reading per step
/// (the end of a step is the start of the next task's), the step itself
/// counted busy and the time until the task's next step counted by what
/// its last step said: busy after progress (it is runnable, waiting for the
/// worker), idle when it waits for input, backpressured when it waits for
/// room downstream. As Flink's busy/idle/backpressured time, the three add
/// up to the wall-clock time.
#[derive(Debug)]
pub(crate) struct StepClock {
    metrics: Arc<TaskMetrics>,
    /// End of the task's last step.
    last: Instant,
    /// What the task did when its last step ended (None: made progress).
    waiting: Option<Waiting>,
    busy: u64,
    idle: u64,
    backpressured: u64,
    /// At the last sample: the instant and the counters, for the rates.
    sampled: Instant,
    sampled_values: [u64; 5],
}

impl StepClock {
    pub(crate) fn new(metrics: Arc<TaskMetrics>, now: Instant) -> Self {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (busy, idle, backpressured) = (
            load(&metrics.busy_ns),
            load(&metrics.idle_ns),
            load(&metrics.backpressured_ns),
        );
        let records = metrics.records();
        Self {
            last: now,
            waiting: Some(Waiting::Input),
            busy,
            idle,
            backpressured,
            sampled: now,
            sampled_values: [
                busy,
                idle,
                backpressured,
                records.records_in,
                records.records_out,
            ],
            metrics,
        }
    }

    /// The task stepped from `start` to `end` and then waits for `waiting`
    /// (`None`: it made progress).
    #[inline]
    pub(crate) fn account(&mut self, start: Instant, end: Instant, waiting: Option<Waiting>) {
        let gap = start.saturating_duration_since(self.last).as_nanos() as u64;
        let step = end.saturating_duration_since(start).as_nanos() as u64;
        match self.waiting {
            None => self.busy += gap,
            Some(Waiting::Input) => self.idle += gap,
            Some(Waiting::Output) => self.backpressured += gap,
        }
        self.busy += step;
        self.last = end;
        self.waiting = waiting;
        let m = &self.metrics;
        m.busy_ns.store(self.busy, Ordering::Relaxed);
        m.idle_ns.store(self.idle, Ordering::Relaxed);
        m.backpressured_ns
            .store(self.backpressured, Ordering::Relaxed);
    }

    /// Counts the time since the last step up to `now` (the worker parked
    /// or stopped) and computes the rates over the time since the last
    /// sample.
    pub(crate) fn sample(&mut self, now: Instant) {
        self.account(now, now, self.waiting);
        let elapsed = now.saturating_duration_since(self.sampled);
        let records = self.metrics.records();
        let values = [
            self.busy,
            self.idle,
            self.backpressured,
            records.records_in,
            records.records_out,
        ];
        let m = &self.metrics;
        let rates = [
            &m.busy_rate,
            &m.idle_rate,
            &m.backpressured_rate,
            &m.records_in_rate,
            &m.records_out_rate,
        ];
        for (i, rate) in rates.into_iter().enumerate() {
            let delta = values[i].saturating_sub(self.sampled_values[i]);
            // Times are in ns: ms per second is ns / 1e6 per second.
            let delta = if i < 3 {
                delta as f64 / 1e6
            } else {
                delta as f64
            };
            rate.store(rate_milli(delta, elapsed), Ordering::Relaxed);
        }
        self.sampled = now;
        self.sampled_values = values;
    }
}

/// What kind of operator an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorKind {
    Source,
    Operator,
    Sink,
}

impl OperatorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorKind::Source => "source",
            OperatorKind::Operator => "operator",
            OperatorKind::Sink => "sink",
        }
    }
}

/// One operator instance's metrics: records in and out (published once per
/// batch by its stage), its states' sizes (sampled), a sink's commits, and
/// the gauges its connector registered.
#[derive(Debug)]
pub struct OperatorMetrics {
    uid: String,
    name: String,
    subtask: u32,
    task: String,
    kind: OperatorKind,
    records_in: AtomicU64,
    records_out: AtomicU64,
    states: Mutex<Vec<StateStats>>,
    commits: AtomicU64,
    commit_ns_total: AtomicU64,
    last_commit_ns: AtomicU64,
    gauges: Mutex<Vec<ConnectorGauge>>,
}

impl OperatorMetrics {
    fn new(uid: &str, name: &str, subtask: u32, task: &str, kind: OperatorKind) -> Self {
        Self {
            uid: uid.to_owned(),
            name: name.to_owned(),
            subtask,
            task: task.to_owned(),
            kind,
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            states: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
            commit_ns_total: AtomicU64::new(0),
            last_commit_ns: AtomicU64::new(0),
            gauges: Mutex::new(Vec::new()),
        }
    }

    /// Metrics of an operator instance outside any job (tests, dry runs):
    /// counted, reported nowhere.
    pub fn detached(name: &str) -> Arc<Self> {
        Arc::new(Self::new(name, name, 0, name, OperatorKind::Operator))
    }

    /// The instance's record counters as they stand (a restarted attempt's
    /// instance counts on from here).
    pub(crate) fn records(&self) -> RecordCounter {
        RecordCounter {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
        }
    }

    #[inline]
    pub(crate) fn publish(&self, counter: &RecordCounter) {
        self.records_in.store(counter.records_in, Ordering::Relaxed);
        self.records_out
            .store(counter.records_out, Ordering::Relaxed);
    }

    /// Sampled sizes of the instance's states (not per record: the worker
    /// samples about once per [`SAMPLE_INTERVAL`]).
    pub(crate) fn set_states(&self, states: Vec<StateStats>) {
        *lock(&self.states) = states;
    }

    /// A sink committed a checkpoint's output in `took`.
    pub(crate) fn record_commit(&self, took: Duration) {
        let ns = took.as_nanos() as u64;
        self.last_commit_ns.store(ns, Ordering::Relaxed);
        self.commit_ns_total.fetch_add(ns, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// A gauge of the connector's own (e.g. a Kafka source's lag of one
    /// partition), reported with this instance's labels plus `labels`.
    /// `name` is a metric name (`[a-z_][a-z0-9_]*`, the exposition adds a
    /// prefix). Registering the same name and labels again (a restarted
    /// attempt) returns the same gauge. Set it when the value changes or is
    /// sampled, never per record.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut gauges = lock(&self.gauges);
        if let Some(existing) = gauges.iter().find(|g| g.name == name && g.labels == labels) {
            return existing.value.clone();
        }
        let value = Gauge(Arc::new(AtomicI64::new(0)));
        gauges.push(ConnectorGauge {
            name: name.to_owned(),
            help: help.to_owned(),
            labels,
            value: value.clone(),
        });
        value
    }

    /// The instance's metrics now.
    pub fn snapshot(&self) -> OperatorMetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let commits = load(&self.commits);
        OperatorMetricsSnapshot {
            uid: self.uid.clone(),
            name: self.name.clone(),
            subtask: self.subtask,
            task: self.task.clone(),
            kind: self.kind,
            records_in: load(&self.records_in),
            records_out: load(&self.records_out),
            states: lock(&self.states).clone(),
            commits: (self.kind == OperatorKind::Sink).then(|| CommitMetrics {
                count: commits,
                total: Duration::from_nanos(load(&self.commit_ns_total)),
                last: Duration::from_nanos(load(&self.last_commit_ns)),
            }),
            gauges: lock(&self.gauges)
                .iter()
                .map(|g| GaugeSnapshot {
                    name: g.name.clone(),
                    help: g.help.clone(),
                    labels: g.labels.clone(),
                    value: g.value.get(),
                })
                .collect(),
        }
    }
}

/// A gauge a connector sets (see [`OperatorMetrics::gauge`]).
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connector's gauge with its name and labels.
#[derive(Debug)]
pub struct ConnectorGauge {
    name: String,
    help: String,
    labels: Vec<(String, String)>,
    value: Gauge,
}

/// One task's metrics at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMetricsSnapshot {
    /// The task's name: `<chain> (<i>/<p>)`.
    pub task: String,
    /// The uid of the task's head operator.
    pub uid: String,
    pub subtask: u32,
    /// Records the task's head took in (a source task: records read).
    pub records_in: u64,
    /// Records the task sent to its output channels.
    pub records_out: u64,
    /// Rates over the last sample interval.
    pub records_in_per_second: f64,
    pub records_out_per_second: f64,
    /// Wall-clock time busy, waiting for input and waiting for room in an
    /// output channel, since the task's first attempt started.
    pub busy: Duration,
    pub idle: Duration,
    pub backpressured: Duration,
    /// Flink's `busyTimeMsPerSecond`, `idleTimeMsPerSecond`,
    /// `backPressuredTimeMsPerSecond` over the last sample interval.
    pub busy_ms_per_second: f64,
    pub idle_ms_per_second: f64,
    pub backpressured_ms_per_second: f64,
    /// Messages (batches and control events) waiting in the task's input
    /// channels, and how many they can hold (sampled).
    pub input_queue_length: u64,
    pub input_queue_capacity: u64,
    /// The same for the task's output channels.
    pub output_queue_length: u64,
    pub output_queue_capacity: u64,
    /// The task's current watermark (ms); `None` before the first.
    pub watermark: Option<i64>,
    /// How far the watermark is behind the wall clock (ms); `None` before
    /// the first watermark and after the end of event time.
    pub watermark_lag_ms: Option<i64>,
    /// Checkpoints (and savepoints) this task acknowledged.
    pub checkpoints_acknowledged: u64,
    /// Bytes of in-flight records those snapshots persisted.
    pub checkpoint_persisted_bytes_total: u64,
    pub last_checkpoint: Option<TaskCheckpointMetrics>,
}

/// A task's part of the last checkpoint it acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCheckpointMetrics {
    pub id: u64,
    /// From the start of the synchronous part to the end of the upload.
    pub duration: Duration,
    pub sync_pause: Duration,
    pub alignment: Duration,
    pub bytes: u64,
    /// Taken unaligned: its in-flight records are channel state.
    pub unaligned: bool,
    /// Bytes of in-flight records it persisted (also counted in `bytes`).
    pub persisted_bytes: u64,
}

/// One operator instance's metrics at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorMetricsSnapshot {
    pub uid: String,
    pub name: String,
    pub subtask: u32,
    /// The task the instance runs in.
    pub task: String,
    pub kind: OperatorKind,
    pub records_in: u64,
    pub records_out: u64,
    /// Sizes of its states, as last sampled.
    pub states: Vec<StateStats>,
    /// A sink's commits (`None` for other operators).
    pub commits: Option<CommitMetrics>,
    /// The gauges its connector registered.
    pub gauges: Vec<GaugeSnapshot>,
}

/// A sink's commits of checkpoints' output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMetrics {
    pub count: u64,
    pub total: Duration,
    pub last: Duration,
}

/// A connector's gauge at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaugeSnapshot {
    pub name: String,
    pub help: String,
    pub labels: Vec<(String, String)>,
    pub value: i64,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flowstate_checkpoint::SnapshotKind;
    use flowstate_checkpoint::coordinator::TaskStats;

    use super::*;

    #[test]
    fn a_tasks_channel_state_is_its_last_checkpoints_and_adds_up() {
        let job = JobMetrics::default();
        let task = job.register_task("count (1/1)", "count", 0);
        let ms = Duration::from_millis;
        task.record_checkpoint(1, ms(5), ms(1), ms(2), 5000);
        task.record_channel_state(true, 3000);
        task.record_checkpoint(2, ms(5), ms(1), ms(2), 1000);
        task.record_channel_state(false, 0);
        task.record_checkpoint(3, ms(5), ms(1), ms(2), 2500);
        task.record_channel_state(true, 1500);
        let snapshot = &job.tasks()[0];
        let last = snapshot.last_checkpoint.expect("acknowledged");
        assert_eq!(
            (last.id, last.unaligned, last.persisted_bytes, last.bytes),
            (3, true, 1500, 2500)
        );
        assert_eq!(snapshot.checkpoint_persisted_bytes_total, 4500);
        task.record_checkpoint(4, ms(5), ms(1), ms(2), 900);
        task.record_channel_state(false, 0);
        let last = job.tasks()[0].last_checkpoint.expect("acknowledged");
        assert_eq!((last.unaligned, last.persisted_bytes), (false, 0));
    }

    #[test]
    fn the_jobs_unaligned_checkpoints_are_counted() {
        let job = JobMetrics::default();
        let stats = |id, unaligned, persisted_bytes| CheckpointStats {
            id,
            kind: SnapshotKind::Checkpoint,
            trigger_unix_ms: 0,
            duration: Duration::from_millis(10),
            bytes: 100 + persisted_bytes,
            full_bytes: 100 + persisted_bytes,
            sync_pause_max: Duration::ZERO,
            alignment_max: Duration::ZERO,
            unaligned,
            persisted_bytes,
            tasks: vec![TaskStats {
                task: 0,
                sync_pause: Duration::ZERO,
                alignment: Duration::ZERO,
                bytes: 100 + persisted_bytes,
                unaligned,
                persisted_bytes,
            }],
        };
        job.record_checkpoint(&stats(1, true, 700));
        job.record_checkpoint(&stats(2, true, 300));
        let progress = job.checkpoints();
        assert_eq!(
            (
                progress.completed,
                progress.unaligned,
                progress.last_unaligned,
                progress.last_persisted_bytes,
                progress.persisted_bytes_total
            ),
            (2, 2, true, 300, 1000)
        );
        job.record_checkpoint(&stats(3, false, 0));
        let progress = job.checkpoints();
        assert_eq!(
            (
                progress.completed,
                progress.unaligned,
                progress.last_unaligned,
                progress.last_persisted_bytes,
                progress.persisted_bytes_total
            ),
            (3, 2, false, 0, 1000)
        );
    }
}
