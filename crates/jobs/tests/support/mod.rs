//! In-process fault injection for a keyed-count job.
//!
//! A run is fully described by a [`RunSpec`] derived from a seed with a tiny
//! splitmix64 generator: topology, parallelism, input size, batch size,
//! checkpoint interval, retention, storage and one [`Fault`]. The job is the
//! keyed-count job rebuilt with the public API so that every stage can fail:
//!
//! ```text
//! SequenceSource(s) -> map (may fail) -> key_by -> CountAndSum (may fail) -> FileSink (may fail)
//! ```
//!
//! or, for the timed shapes ([`Topology::Windowed`], [`Topology::Session`]),
//! windows over event time ([`TimedWorkload`]):
//!
//! ```text
//! SequenceSource (event time) -> map (may fail) -> key_by -> window (aggregate and firing may fail) -> FileSink (may fail)
//! ```
//!
//! and its checkpoint storage is wrapped so that a task file write can fail or
//! stall (the asynchronous upload) and so that the completion of a checkpoint
//! (its `_metadata` written) can arm a failure that fires at the next hook,
//! before or while the commit notification is delivered.
//!
//! Every fault fires at most once per run, so the restarted attempt proceeds.
//! Whether a run passes never depends on timing; only *where* a fault lands does.
//!
//! The checks ([`check_exactly_once`], [`check_nothing_lost`],
//! [`check_windows_exactly_once`] against [`expected_windows`]) are
//! independent of the crate under test: their own splitmix64 and their own
//! expected state.

#![allow(dead_code)] // each test binary uses a part of the harness

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use flowstate::connectors::{FileSink, SequenceSource, ThrottledSink};
use flowstate::runtime::checkpoint::layout::parse_metadata_path;
use flowstate::runtime::checkpoint::{
    AlignmentPolicy, CheckpointMetadata, CheckpointStorage, CoordinatorSettings,
    DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX, OperatorListState, SharedStorage, StorageError,
    open_storage,
};
use flowstate::runtime::{
    Barrier, CheckpointingConfig, Data, Guarantee, PreparedCommit, RestartStrategy, RestoreFrom,
    WatermarkStrategy,
};
use flowstate::state::StateBackendConfig;
use flowstate::{
    DataStream, EventTimeSessionWindows, ExecutionConfig, FnResult, JobReport,
    KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction, KeyedStateBackend, Sink,
    SinkWriter, StreamEnvironment, SubtaskInfo, TimeWindow, TumblingEventTimeWindows, UserError,
    WindowAggregateFunction,
};
use flowstate_jobs::keyed_count::{CountAndSum, CountUpdate};
use flowstate_jobs::workload::Checksum;
use std::fmt::Display;

/// Every injected panic and error carries this text (the panic hook hides them).
pub const INJECTED: &str = "injected fault";

/// How long one run may take before the test fails with its seed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Independent reference: splitmix64, the workload, a seeded generator.

/// splitmix64 as the brief defines it (written again here on purpose).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Record `i` of workload W: `(key, value)`.
pub fn w_record(i: u64, keys: u64) -> (u64, u64) {
    (mix(i) % keys, i)
}

/// A splitmix64 sequence generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5EED_F00D_CAFE_0001)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// The values of every key's records, in index order: the failure-free result
/// is `(values.len(), sum(values))` per key.
pub fn expected_values(records: u64, keys: u64) -> HashMap<u64, Vec<u64>> {
    let mut by_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for i in 0..records {
        let (key, value) = w_record(i, keys);
        by_key.entry(key).or_default().push(value);
    }
    by_key
}

/// The brief's checksum over a final state, computed independently.
pub fn checksum_of(state: &HashMap<u64, (u64, u64)>) -> u64 {
    state
        .iter()
        .filter(|(_, (count, _))| *count > 0)
        .fold(0u64, |acc, (&key, &(count, sum))| {
            acc.wrapping_add(mix(mix(mix(key) ^ count) ^ sum))
        })
}

// ---------------------------------------------------------------------------
// The timed shapes' workload and its reference windows.

/// Event time advances by this much per position in a split.
pub const TICK_MS: i64 = 2;
/// Records are out of order within a split by less than this (even jitter
/// `0..JITTER_MS`); the source's bounded out-of-orderness: no record is late.
pub const JITTER_MS: i64 = 8;

/// The records of the timed shapes, `(key, value = i)`, and their event time.
///
/// Every split of the source (the index ranges of `SequenceSource`: split `s`
/// holds `[records * s / splits, records * (s + 1) / splits)`) covers the same
/// span of event time: record `i` at position `p` of its split has the
/// timestamp `p * TICK_MS + jitter(i)`. So the splits, read in turn, move the
/// watermark (the minimum over splits) along the whole span and windows fire
/// all through the run, not only at its end. Timestamps are even.
///
/// Tumbling windows: `key = mix(i) % keys`, windows of `span / windows` ms.
///
/// Sessions are made, per key: event time is cut into rounds of
/// `round_ms`, and key `k` is silent in round `r` when
/// `mix(mix(k ^ SALT) ^ r) % 3 == 0` (a third of the rounds). A record's key
/// is `mix(i) % keys`, or, if that key is silent in the record's round, the
/// next key (in key order) that is not. A silent round is longer than the gap
/// (an odd number of ms, about five times a key's mean interval between
/// records), so every key's sessions end where its silences start; within
/// its active rounds a key may, rarely, also have a longer interval than the
/// gap by chance. Since timestamps are even and the gap odd, no two records
/// of a key are exactly a gap apart (whether windows that only touch merge
/// would depend on when the watermark came).
#[derive(Debug, Clone, Copy)]
pub struct TimedWorkload {
    pub records: u64,
    pub splits: u64,
    pub keys: u64,
    pub session: bool,
    /// Tumbling windows' size.
    pub window_ms: i64,
    /// Sessions' gap.
    pub gap_ms: i64,
    /// Sessions' rounds of activity and silence.
    pub round_ms: i64,
}

const SILENCE_SALT: u64 = 0x5E55_10A5;
const JITTER_SALT: u64 = 0x7E57_0001;

impl TimedWorkload {
    fn new(spec: &RunSpec) -> Self {
        let splits = u64::from(spec.splits.max(1));
        let positions = spec.records.div_ceil(splits).max(1) as i64;
        let span = positions * TICK_MS;
        let window_ms = (span / spec.windows.max(1) as i64).max(10);
        // A key's mean interval: `splits` records per tick over two thirds of the keys.
        let mean_interval = (TICK_MS * spec.keys as i64 * 3 / (2 * splits as i64)).max(1);
        let gap_ms = (5 * mean_interval).max(11) | 1;
        TimedWorkload {
            records: spec.records,
            splits,
            keys: spec.keys,
            session: spec.topology == Topology::Session,
            window_ms,
            gap_ms,
            round_ms: 4 * gap_ms,
        }
    }

    fn split_start(&self, split: u64) -> u64 {
        (u128::from(self.records) * u128::from(split) / u128::from(self.splits)) as u64
    }

    /// Record `i`'s position in its split.
    fn position(&self, i: u64) -> u64 {
        let mut split =
            (u128::from(i) * u128::from(self.splits) / u128::from(self.records.max(1))) as u64;
        while split + 1 < self.splits && self.split_start(split + 1) <= i {
            split += 1;
        }
        while split > 0 && self.split_start(split) > i {
            split -= 1;
        }
        i - self.split_start(split)
    }

    /// Record `i`'s event time (ms).
    pub fn timestamp(&self, i: u64) -> i64 {
        let jitter = 2 * (mix(i ^ JITTER_SALT) % (JITTER_MS as u64 / 2)) as i64;
        self.position(i) as i64 * TICK_MS + jitter
    }

    /// Whether key `k` has records in round `round` (sessions).
    pub fn active(&self, key: u64, round: i64) -> bool {
        !mix(mix(key ^ SILENCE_SALT) ^ round as u64).is_multiple_of(3)
    }

    /// Record `i`'s key.
    pub fn key(&self, i: u64) -> u64 {
        let first = mix(i) % self.keys;
        if !self.session {
            return first;
        }
        let round = self.timestamp(i) / self.round_ms;
        (0..self.keys)
            .map(|step| (first + step) % self.keys)
            .find(|&key| self.active(key, round))
            .unwrap_or(first)
    }

    /// Record `i` as the source emits it.
    pub fn record(&self, i: u64) -> (u64, u64) {
        (self.key(i), i)
    }
}

/// A window's result as the checks expect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowTotals {
    pub end: i64,
    pub count: u64,
    pub sum: u64,
}

/// Every window of the timed workload, `(key, start) -> totals`, computed
/// from the record definition alone: tumbling windows by `ts - ts mod size`;
/// sessions by sorting each key's timestamps and cutting where two
/// neighbours are more than the gap apart (`[first, last + gap)`).
pub fn expected_windows(w: &TimedWorkload) -> BTreeMap<(u64, i64), WindowTotals> {
    let mut windows: BTreeMap<(u64, i64), WindowTotals> = BTreeMap::new();
    if !w.session {
        for i in 0..w.records {
            let (key, ts) = (w.key(i), w.timestamp(i));
            let start = ts - ts.rem_euclid(w.window_ms);
            let entry = windows.entry((key, start)).or_insert(WindowTotals {
                end: start + w.window_ms,
                count: 0,
                sum: 0,
            });
            entry.count += 1;
            entry.sum = entry.sum.wrapping_add(i);
        }
        return windows;
    }
    let mut by_key: HashMap<u64, Vec<(i64, u64)>> = HashMap::new();
    for i in 0..w.records {
        by_key
            .entry(w.key(i))
            .or_default()
            .push((w.timestamp(i), i));
    }
    for (key, mut records) in by_key {
        records.sort_unstable();
        let mut open: Option<(i64, i64, u64, u64)> = None; // (start, last, count, sum)
        for (ts, value) in records {
            match &mut open {
                Some((_, last, count, sum)) if ts - *last <= w.gap_ms => {
                    assert_ne!(ts - *last, w.gap_ms, "two records of key {key} a gap apart");
                    *last = ts;
                    *count += 1;
                    *sum = sum.wrapping_add(value);
                }
                _ => {
                    if let Some((start, last, count, sum)) = open.take() {
                        windows.insert(
                            (key, start),
                            WindowTotals {
                                end: last + w.gap_ms,
                                count,
                                sum,
                            },
                        );
                    }
                    open = Some((ts, ts, 1, value));
                }
            }
        }
        if let Some((start, last, count, sum)) = open {
            windows.insert(
                (key, start),
                WindowTotals {
                    end: last + w.gap_ms,
                    count,
                    sum,
                },
            );
        }
    }
    windows
}

/// The window of the timed workload that holds record `i`: `(key, start)`.
pub fn window_of(w: &TimedWorkload, i: u64) -> (u64, i64) {
    let (key, ts) = (w.key(i), w.timestamp(i));
    if !w.session {
        return (key, ts - ts.rem_euclid(w.window_ms));
    }
    let sessions = expected_windows(w);
    let (&(_, start), _) = sessions
        .range((key, i64::MIN)..=(key, ts))
        .next_back()
        .expect("every record is in a session");
    (key, start)
}

/// Exactly once for the timed shapes: one line per expected window, none
/// repeated, none extra, each with its window's true count and sum (and, for
/// sessions, end). Returns the number of windows.
pub fn check_windows_exactly_once(
    seed: u64,
    lines: &[String],
    expected: &BTreeMap<(u64, i64), WindowTotals>,
    session: bool,
) -> Result<usize, String> {
    let fields = if session { 5 } else { 4 };
    let mut got: BTreeMap<(u64, i64), Vec<WindowTotals>> = BTreeMap::new();
    for line in lines {
        let parts: Vec<&str> = line.split(',').collect();
        let malformed = || format!("seed {seed}: malformed output line {line:?}");
        if parts.len() != fields {
            return Err(malformed());
        }
        let int = |s: &str| s.parse::<i64>().map_err(|_| malformed());
        let uint = |s: &str| s.parse::<u64>().map_err(|_| malformed());
        let key = uint(parts[0])?;
        let start = int(parts[1])?;
        let (end, rest) = if session {
            (int(parts[2])?, &parts[3..])
        } else {
            (
                expected.get(&(key, start)).map_or(start, |w| w.end),
                &parts[2..],
            )
        };
        got.entry((key, start)).or_default().push(WindowTotals {
            end,
            count: uint(rest[0])?,
            sum: uint(rest[1])?,
        });
    }
    let mut problems = Vec::new();
    if lines.len() != expected.len() {
        problems.push(format!(
            "{} output lines for {} windows ({:+})",
            lines.len(),
            expected.len(),
            lines.len() as i64 - expected.len() as i64
        ));
    }
    for ((key, start), want) in expected {
        match got.remove(&(*key, *start)).as_deref() {
            None => problems.push(format!(
                "key {key}: window at {start} is missing ({want:?})"
            )),
            Some([only]) if only == want => {}
            Some([only]) => problems.push(format!(
                "key {key}: window at {start} is {only:?}, expected {want:?}"
            )),
            Some(many) => problems.push(format!(
                "key {key}: window at {start} emitted {} times: {many:?}",
                many.len()
            )),
        }
    }
    for ((key, start), extra) in got {
        problems.push(format!(
            "key {key}: unexpected window at {start}: {extra:?}"
        ));
    }
    if problems.is_empty() {
        Ok(expected.len())
    } else {
        let shown = problems.len().min(12);
        Err(format!(
            "seed {seed}: exactly-once check of the windows failed ({} problems):\n  {}",
            problems.len(),
            problems[..shown].join("\n  ")
        ))
    }
}

// ---------------------------------------------------------------------------
// Run specification.

/// Which graph feeds the keyed operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One source, the map chained to it, one keyed exchange.
    Single,
    /// Two sources (low and high half of the indices) unioned: the union task
    /// aligns barriers over 2p channels; the map is chained behind the union.
    Union,
    /// Two sources, each with its map, keyed and connected into a two-input
    /// keyed operator (a `TwoInputTask` aligning both gates).
    Connect,
    /// An event-time source (per-split watermarks, [`TimedWorkload`]), the
    /// map, then keyed tumbling event-time windows counting and summing:
    /// one line `key,window_start,count,sum` per key and window.
    Windowed,
    /// The same source with per-key sessions ([`TimedWorkload::key`]) into
    /// event-time session windows: one line `key,start,end,count,sum` per
    /// session.
    Session,
}

impl Topology {
    /// The shapes with event time, windows and timers.
    pub fn is_timed(self) -> bool {
        matches!(self, Topology::Windowed | Topology::Session)
    }
}

/// Where an armed failure fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The next record reaching a map.
    Map,
    /// The next record reaching the keyed function.
    Process,
    /// The next batch reaching a sink writer.
    SinkWrite,
    /// The next commit notification reaching a sink writer (before it commits).
    SinkCommit,
}

/// The operator a record fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Map,
    Process,
    Sink,
}

/// The one failure of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Record `index` fails in `stage` (in the sink: the update that record
    /// produces, identified by its key and the count it brings the key to).
    /// `after`: the stage handles the record first, then fails. `panic`: a
    /// panic rather than an error return.
    Record {
        stage: Stage,
        index: u64,
        after: bool,
        panic: bool,
    },
    /// The `put`-th task state upload fails (the asynchronous upload): that
    /// checkpoint must be aborted; the job goes on without a restart. See
    /// [`StateWrite`] for what counts as one upload and where in it the
    /// failure lands.
    UploadError {
        put: u64,
    },
    /// The `put`-th task state upload stalls until a task failed at `then` (or
    /// 500 ms passed), then succeeds: a task fails while its checkpoint is
    /// being uploaded.
    UploadStall {
        put: u64,
        then: Hook,
    },
    /// Right after the `checkpoint`-th `_metadata` was published, a failure is
    /// armed; it fires at `then` (or, if nothing reaches `then` any more, when a
    /// sink finishes): a failure between completion and commit notification.
    AfterCompletion {
        checkpoint: u64,
        then: Hook,
    },
}

impl Fault {
    /// Restarts the fault must cause.
    pub fn expected_restarts(&self) -> u64 {
        match self {
            Fault::None | Fault::UploadError { .. } => 0,
            _ => 1,
        }
    }

    /// The same fault at its earliest point: it fires in every run.
    pub fn earliest(&self) -> Fault {
        match *self {
            Fault::UploadError { .. } => Fault::UploadError { put: 1 },
            Fault::UploadStall { then, .. } => Fault::UploadStall { put: 1, then },
            Fault::AfterCompletion { then, .. } => Fault::AfterCompletion {
                checkpoint: 1,
                then,
            },
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// `memory://<unique name>`
    Memory,
    /// A temporary local directory.
    Local,
}

/// The keyed state backend of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Objects on the heap; checkpoints write canonical key-group files.
    Heap,
    /// RocksDB in a temporary directory of the run. `incremental`: checkpoints
    /// upload its SST files (shared between checkpoints under
    /// `<job>/shared/`); otherwise canonical key-group files like the heap.
    #[cfg(feature = "rocksdb")]
    RocksDb { incremental: bool },
}

impl Backend {
    /// The backend `FAULT_BACKEND` names: `heap` (or unset), `rocksdb`
    /// (incremental) or `rocksdb-full`.
    pub fn from_env() -> Backend {
        let name = std::env::var("FAULT_BACKEND").unwrap_or_default();
        match name.as_str() {
            "" | "heap" => Backend::Heap,
            #[cfg(feature = "rocksdb")]
            "rocksdb" => Backend::RocksDb { incremental: true },
            #[cfg(feature = "rocksdb")]
            "rocksdb-full" => Backend::RocksDb { incremental: false },
            #[cfg(not(feature = "rocksdb"))]
            "rocksdb" | "rocksdb-full" => {
                panic!("FAULT_BACKEND={name} needs the rocksdb feature (--features rocksdb)")
            }
            other => panic!("FAULT_BACKEND={other}: expected heap, rocksdb or rocksdb-full"),
        }
    }

    /// Checkpoints hold the backend's native files rather than key-group files.
    pub fn native_checkpoints(self) -> bool {
        match self {
            Backend::Heap => false,
            #[cfg(feature = "rocksdb")]
            Backend::RocksDb { incremental } => incremental,
        }
    }
}

/// Everything that determines one run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub seed: u64,
    pub topology: Topology,
    pub parallelism: u32,
    pub records: u64,
    pub keys: u64,
    pub splits: u32,
    pub batch_size: usize,
    pub interval: Duration,
    pub retain: usize,
    pub storage: StorageKind,
    pub part_bytes_max: Option<u64>,
    pub guarantee: Guarantee,
    pub fault: Fault,
    /// `(n, delay)`: every task state upload of checkpoint n but the one an
    /// `UploadError` fails starts only after `delay` (a slow upload).
    pub slow_uploads: Option<(u64, Duration)>,
    pub backend: Backend,
    /// Timed shapes: the tumbling windows the event-time span is cut into
    /// (see [`TimedWorkload`]).
    pub windows: u64,
    /// How periodic checkpoints align (exactly-once only; see
    /// [`RunSpec::from_seed_unaligned`]).
    pub alignment: AlignmentPolicy,
    /// The sink writes at most this many records per second in total (a
    /// [`ThrottledSink`] around the file sink): backpressure, so that
    /// channels hold data when a barrier comes.
    pub sink_rate: Option<u64>,
}

impl RunSpec {
    /// The run of `seed` on the heap backend; `seed % 6` picks the fault
    /// family so that a range of seeds covers every family evenly, and
    /// `seed / 6 % 5` the shape: 3 is [`Topology::Windowed`], 4
    /// [`Topology::Session`], the others one of the three count shapes drawn
    /// at random. So every 30 consecutive seeds from a multiple of 30 run each
    /// fault family once on each timed shape.
    pub fn from_seed(seed: u64, guarantee: Guarantee) -> Self {
        Self::draw(seed, guarantee, false)
    }

    /// The exactly-once run of `seed` as [`RunSpec::from_seed`] draws it, but
    /// with unaligned checkpoints: unaligned from the start or aligned until a
    /// timeout of 1 to 5 ms (by `seed / 30`), and a throttled sink
    /// (two seeds in three; 30,000 to 90,000 records/s) so that channels back
    /// up. Drawn after everything else, so the rest of the run is the
    /// aligned seed's.
    pub fn from_seed_unaligned(seed: u64) -> Self {
        Self::draw(seed, Guarantee::ExactlyOnce, true)
    }

    fn draw(seed: u64, guarantee: Guarantee, unaligned: bool) -> Self {
        let mut rng = Rng::new(seed);
        let topology = rng.pick(&[Topology::Single, Topology::Union, Topology::Connect]);
        let parallelism = rng.range(1, 3) as u32;
        let records = rng.range(20_000, 40_000);
        let keys = rng.pick(&[50, 500, 500, 2_000]);
        let splits = rng.range(u64::from(parallelism), 16) as u32;
        let batch_size = rng.pick(&[16, 64, 64, 256]);
        let interval = Duration::from_millis(rng.range(5, 20));
        let retain = rng.range(1, 3) as usize;
        let storage = if rng.range(0, 4) == 0 {
            StorageKind::Local
        } else {
            StorageKind::Memory
        };
        let part_bytes_max = rng.coin().then(|| rng.range(2_000, 20_000));
        let hooks = [Hook::Map, Hook::Process, Hook::SinkWrite, Hook::SinkCommit];
        let fault = match seed % 6 {
            0..=2 => Fault::Record {
                stage: [Stage::Map, Stage::Process, Stage::Sink][(seed % 6) as usize],
                index: rng.range(0, records - 1),
                after: rng.coin(),
                panic: rng.coin(),
            },
            3 => Fault::UploadError {
                put: rng.range(1, 3 * u64::from(parallelism)),
            },
            4 => Fault::UploadStall {
                put: rng.range(1, 3 * u64::from(parallelism)),
                then: rng.pick(&hooks),
            },
            _ => Fault::AfterCompletion {
                checkpoint: rng.range(1, 4),
                then: rng.pick(&hooks),
            },
        };
        // Drawn last: the count shapes' runs are what they were before.
        let windows = rng.range(6, 20);
        // Drawn last: every other draw is the aligned seed's.
        // Unaligned from the start when `seed / 30` is even, aligned until 1
        // to 5 ms otherwise: 60 consecutive seeds from a multiple of 60 run
        // every fault family on each timed shape in both modes.
        let timeout_ms = rng.range(1, 5) * (seed / 30 % 2);
        let aligned_timeout = Duration::from_millis(timeout_ms);
        let sink_rate = (rng.range(0, 2) > 0).then(|| rng.range(30_000, 90_000));
        let (alignment, sink_rate) = if unaligned {
            let policy = AlignmentPolicy::Unaligned {
                aligned_timeout,
                inflight_bytes_max: DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX,
            };
            (policy, sink_rate)
        } else {
            (AlignmentPolicy::Aligned, None)
        };
        let spec = RunSpec {
            seed,
            topology,
            parallelism,
            records,
            keys,
            splits,
            batch_size,
            interval,
            retain,
            storage,
            part_bytes_max,
            guarantee,
            fault,
            slow_uploads: None,
            backend: Backend::Heap,
            windows,
            alignment,
            sink_rate,
        };
        match seed / 6 % 5 {
            3 => spec.with_topology(Topology::Windowed),
            4 => spec.with_topology(Topology::Session),
            _ => spec,
        }
    }

    /// The same run with another shape; sessions get few keys (10, 40 or
    /// 100), so that every key has records often enough to form sessions.
    pub fn with_topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        if topology == Topology::Session {
            self.keys = [10, 40, 100][(self.seed / 30 % 3) as usize];
        }
        self
    }

    /// The records and event time of the timed shapes.
    pub fn timed(&self) -> TimedWorkload {
        TimedWorkload::new(self)
    }

    /// The same run on `backend`.
    pub fn on(self, backend: Backend) -> Self {
        RunSpec { backend, ..self }
    }
}

// ---------------------------------------------------------------------------
// The fault plan shared by the operators, the sink and the storage of a run.

/// How far one task state upload got.
#[derive(Debug, Default)]
struct UploadProgress {
    /// Uploads are numbered from 1 in the order of their first write.
    number: u64,
    writes: u64,
    /// Shared files among the writes.
    shared: u64,
    /// The write an upload fault lands on has come.
    past_fault_point: bool,
}

/// Shared by every copy of the injecting operators of one run.
pub struct Faults {
    fault: Fault,
    keys: u64,
    /// The sink update a `Record { stage: Sink }` fault waits for (its
    /// [`SinkTag::tag`]).
    sink_target: Option<(u64, u64)>,
    /// Timed shapes: the window `(key, start)` whose firing a
    /// `Record { stage: Process, after: true }` fault waits for (the window
    /// of the record).
    fire_target: Option<(u64, i64)>,
    /// A failure is due at the next hook (after completion, or while stalled).
    armed: AtomicBool,
    /// The one failure happened.
    fired: AtomicBool,
    /// Where it happened.
    fired_at: Mutex<Option<String>>,
    slow_uploads: Option<(u64, Duration)>,
    /// Task state uploads by [`StateWrite::upload`].
    uploads: Mutex<HashMap<String, UploadProgress>>,
    metadata_puts: AtomicU64,
    /// `_metadata` files read: a restart restored a checkpoint.
    metadata_reads: AtomicU64,
    /// Channel state files written (unaligned checkpoints), and their bytes.
    channel_files_written: AtomicU64,
    channel_bytes_written: AtomicU64,
    /// Channel state files read: a restore replayed in-flight records.
    channel_files_read: AtomicU64,
}

impl Faults {
    fn new(spec: &RunSpec) -> Self {
        let timed = spec.topology.is_timed().then(|| spec.timed());
        let sink_target = match spec.fault {
            Fault::Record {
                stage: Stage::Sink,
                index,
                ..
            } => match &timed {
                Some(w) => {
                    let (key, start) = window_of(w, index);
                    Some((key, start as u64))
                }
                None => {
                    let key = w_record(index, spec.keys).0;
                    let count = (0..=index)
                        .filter(|&i| w_record(i, spec.keys).0 == key)
                        .count() as u64;
                    Some((key, count))
                }
            },
            _ => None,
        };
        let fire_target = match (spec.fault, &timed) {
            (
                Fault::Record {
                    stage: Stage::Process,
                    index,
                    after: true,
                    ..
                },
                Some(w),
            ) => Some(window_of(w, index)),
            _ => None,
        };
        Faults {
            fault: spec.fault,
            keys: spec.keys,
            sink_target,
            fire_target,
            armed: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            fired_at: Mutex::new(None),
            slow_uploads: spec.slow_uploads,
            uploads: Mutex::new(HashMap::new()),
            metadata_puts: AtomicU64::new(0),
            metadata_reads: AtomicU64::new(0),
            channel_files_written: AtomicU64::new(0),
            channel_bytes_written: AtomicU64::new(0),
            channel_files_read: AtomicU64::new(0),
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    pub fn fired_at(&self) -> Option<String> {
        self.fired_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Claims the one failure; true for the caller that must fail.
    fn claim(&self, place: String) -> bool {
        if self.fired.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.armed.store(false, Ordering::SeqCst);
        *self.fired_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(place);
        true
    }

    /// Fails (panic or error) if the fault is due here.
    fn fail(&self, place: String, panic: bool) -> FnResult {
        if !self.claim(place.clone()) {
            return Ok(());
        }
        if panic {
            panic!("{INJECTED}: {place}");
        }
        Err(format!("{INJECTED}: {place}").into())
    }

    /// An armed failure due at `hook`?
    fn at_hook(&self, hook: Hook, place: impl FnOnce() -> String) -> FnResult {
        let due = match self.fault {
            Fault::UploadStall { then, .. } | Fault::AfterCompletion { then, .. } => then == hook,
            _ => false,
        };
        if due && self.armed.load(Ordering::SeqCst) {
            // Alternate panics and errors by hook so that both are covered.
            let panic = matches!(hook, Hook::Map | Hook::SinkCommit);
            return self.fail(format!("armed {hook:?}: {}", place()), panic);
        }
        Ok(())
    }

    /// A map sees `record`.
    fn on_map(&self, record: (u64, u64)) {
        if let Fault::Record {
            stage: Stage::Map,
            index,
            ..
        } = self.fault
            && record.1 == index
        {
            // A map cannot return an error: always a panic.
            let _ = self.fail(format!("map at record {index}"), true);
        }
        if let Err(e) = self.at_hook(Hook::Map, || format!("map at record {}", record.1)) {
            panic!("{e}");
        }
    }

    /// The keyed function sees `record`; `after` tells whether it was handled.
    fn on_process(&self, record: (u64, u64), after: bool) -> FnResult {
        if let Fault::Record {
            stage: Stage::Process,
            index,
            after: fault_after,
            panic,
        } = self.fault
            && record.1 == index
            && after == fault_after
        {
            self.fail(
                format!(
                    "keyed function {} record {index}",
                    if after { "after" } else { "before" }
                ),
                panic,
            )?;
        }
        if !after {
            self.at_hook(Hook::Process, || {
                format!("keyed function at record {}", record.1)
            })?;
        }
        Ok(())
    }

    /// A window's aggregate adds record `index` (timed shapes). Panics: an
    /// aggregate cannot return an error.
    fn on_window_add(&self, index: u64) {
        if let Fault::Record {
            stage: Stage::Process,
            index: at,
            after: false,
            ..
        } = self.fault
            && index == at
        {
            let _ = self.fail(format!("window aggregate adding record {index}"), true);
        }
        if let Err(e) = self.at_hook(Hook::Process, || {
            format!("window aggregate at record {index}")
        }) {
            panic!("{e}");
        }
    }

    /// A window `(key, start)` fires (an event-time timer; timed shapes).
    /// Panics: the window's result function cannot return an error.
    fn on_window_fire(&self, key: u64, start: i64) {
        if self.fire_target == Some((key, start)) {
            let _ = self.fail(format!("window {key},{start} firing"), true);
        }
    }

    /// A sink writer sees `batch`; `after` tells whether it was written.
    fn on_sink_batch<T: SinkTag>(&self, batch: &[T], after: bool) -> FnResult {
        if let (
            Some((key, count)),
            Fault::Record {
                after: fault_after,
                panic,
                ..
            },
        ) = (self.sink_target, self.fault)
            && after == fault_after
            && batch.iter().any(|u| u.tag() == (key, count))
        {
            self.fail(
                format!(
                    "sink {} the batch with update {key},{count}",
                    if after {
                        "after writing"
                    } else {
                        "before writing"
                    }
                ),
                panic,
            )?;
        }
        if !after && !batch.is_empty() {
            self.at_hook(Hook::SinkWrite, || "sink write".to_owned())?;
        }
        Ok(())
    }

    /// A task state file is about to be written: `Err` to fail the upload.
    fn on_state_write(&self, path: &str, write: &StateWrite) -> Result<(), String> {
        let (n, first_write, at_fault_point, shared_before) = {
            let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            let next = uploads.len() as u64 + 1;
            let upload = uploads
                .entry(write.upload.clone())
                .or_insert_with(|| UploadProgress {
                    number: next,
                    ..Default::default()
                });
            let first_write = upload.writes == 0;
            let at_fault_point =
                !upload.past_fault_point && (write.whole || (write.private && !first_write));
            upload.past_fault_point |= at_fault_point;
            let shared_before = upload.shared;
            upload.writes += 1;
            upload.shared += u64::from(!write.private);
            (upload.number, first_write, at_fault_point, shared_before)
        };
        let failing = matches!(self.fault, Fault::UploadError { put } if put == n);
        if let Some((checkpoint, delay)) = self.slow_uploads
            && write.checkpoint == checkpoint
            && first_write
            && !failing
        {
            std::thread::sleep(delay);
        }
        if !at_fault_point {
            return Ok(());
        }
        match self.fault {
            Fault::UploadError { .. }
                if failing
                    && self.claim(format!(
                        "upload of {path} (put {n}, after {shared_before} new shared files)"
                    )) =>
            {
                return Err(format!("{INJECTED}: upload of {path}"));
            }
            Fault::UploadStall { put, .. } if n == put && !self.fired() => {
                self.armed.store(true, Ordering::SeqCst);
                let until = Instant::now() + Duration::from_millis(500);
                while !self.fired() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `_metadata` of a checkpoint was published.
    fn on_metadata_published(&self) {
        let n = self.metadata_puts.fetch_add(1, Ordering::SeqCst) + 1;
        if let Fault::AfterCompletion { checkpoint, .. } = self.fault
            && n == checkpoint
            && !self.fired()
        {
            self.armed.store(true, Ordering::SeqCst);
        }
    }

    /// A sink writer finishes: an armed failure nothing else picked up fires here.
    fn on_sink_finish(&self) -> FnResult {
        if self.armed.load(Ordering::SeqCst) {
            return self.fail("armed, fired at sink finish".to_owned(), false);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Injecting wrappers.

/// A checkpoint storage whose task file writes can fail or stall and whose
/// metadata writes arm after-completion failures.
pub struct FaultyStorage {
    inner: SharedStorage,
    faults: Arc<Faults>,
}

impl FaultyStorage {
    /// Fails or stalls a task state file write if the fault says so.
    fn before_write(&self, path: &str, operation: &'static str) -> Result<(), StorageError> {
        let Some(write) = StateWrite::of(path) else {
            return Ok(());
        };
        self.faults
            .on_state_write(path, &write)
            .map_err(|reason| StorageError::Io {
                storage: self.describe(),
                operation,
                path: path.to_owned(),
                reason,
            })
    }
}

impl FaultyStorage {
    /// Counts a channel state file that was written.
    fn after_write(&self, path: &str, len: u64) {
        if path.ends_with(".channels") {
            self.faults
                .channel_files_written
                .fetch_add(1, Ordering::SeqCst);
            self.faults
                .channel_bytes_written
                .fetch_add(len, Ordering::SeqCst);
        }
    }
}

/// A write of task state, told from its path (see the checkpoint layout).
///
/// One *upload* is what one operator instance writes for one checkpoint: a
/// keyed state file (`<job>/chk-<n>/<uid>-<subtask>.keyed`, heap and full
/// RocksDB checkpoints), or the native files of an incremental RocksDB
/// checkpoint: shared SST files (`<job>/shared/<instance>/<n>-<name>`) and
/// private ones (`<job>/chk-<n>/<instance>/<name>`). A task's channel state
/// file of an unaligned checkpoint (`<job>/chk-<n>/<uid>-<subtask>.channels`)
/// is an upload of its own, written whole like a keyed file.
///
/// Upload faults count uploads in the order of their first write and land on
/// one write of the upload: the keyed or channel state file itself; for native files, the first
/// private file that is not the upload's first write. RocksDB's files are
/// uploaded in name order: the WAL (`000004.log`, private), then the new SST
/// files (shared), then `CURRENT`, `MANIFEST-*`, `OPTIONS-*` (private), so the
/// fault lands on `CURRENT`, after the upload wrote its new shared files (which
/// it must then take back).
#[derive(Debug)]
pub struct StateWrite {
    /// Identifies the upload: `chk-<n>/<instance>`.
    pub upload: String,
    pub checkpoint: u64,
    /// Under the checkpoint's directory (not a shared file).
    pub private: bool,
    /// The write is the whole upload (a keyed state file).
    pub whole: bool,
}

impl StateWrite {
    pub fn of(path: &str) -> Option<StateWrite> {
        let segments: Vec<&str> = path.split('/').collect();
        let checkpoint_of = |segment: &str| segment.strip_prefix("chk-")?.parse::<u64>().ok();
        match segments.as_slice() {
            [.., chk, file] if file.ends_with(".keyed") || file.ends_with(".channels") => {
                Some(StateWrite {
                    checkpoint: checkpoint_of(chk)?,
                    upload: format!("{chk}/{file}"),
                    private: true,
                    whole: true,
                })
            }
            [.., chk, instance, _] if checkpoint_of(chk).is_some() => Some(StateWrite {
                checkpoint: checkpoint_of(chk)?,
                upload: format!("{chk}/{instance}"),
                private: true,
                whole: false,
            }),
            [.., "shared", instance, file] => {
                let checkpoint = file.split_once('-')?.0.parse().ok()?;
                Some(StateWrite {
                    checkpoint,
                    upload: format!("chk-{checkpoint}/{instance}"),
                    private: false,
                    whole: false,
                })
            }
            _ => None,
        }
    }
}

impl CheckpointStorage for FaultyStorage {
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.before_write(path, "put")?;
        let len = bytes.len() as u64;
        self.inner.put(path, bytes)?;
        self.after_write(path, len);
        Ok(())
    }

    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.before_write(path, "put_if_absent")?;
        let len = bytes.len() as u64;
        self.inner.put_if_absent(path, bytes)?;
        self.after_write(path, len);
        if path.ends_with("/_metadata") {
            self.faults.on_metadata_published();
        }
        Ok(())
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        if path.ends_with("/_metadata") {
            self.faults.metadata_reads.fetch_add(1, Ordering::SeqCst);
        }
        if path.ends_with(".channels") {
            self.faults
                .channel_files_read
                .fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get(path)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix)
    }

    fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.inner.delete(path)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        self.inner.delete_prefix(prefix)
    }
}

/// `CountAndSum` with an injection point before and after each record.
#[derive(Clone)]
pub struct FaultyCount {
    inner: CountAndSum,
    faults: Arc<Faults>,
}

impl KeyedProcessFunction<u64, (u64, u64), CountUpdate> for FaultyCount {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.inner.open(state)
    }

    fn process(
        &mut self,
        record: (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<CountUpdate>,
    ) -> FnResult {
        self.faults.on_process(record, false)?;
        self.inner.process(record, ctx, out)?;
        self.faults.on_process(record, true)
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        out: &mut Vec<CountUpdate>,
    ) -> FnResult {
        self.inner.finish(state, out)
    }
}

/// The same count over two connected inputs.
#[derive(Clone)]
pub struct FaultyCoCount(FaultyCount);

impl KeyedCoProcessFunction<u64, (u64, u64), (u64, u64), CountUpdate> for FaultyCoCount {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.0.open(state)
    }

    fn process_first(
        &mut self,
        record: (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<CountUpdate>,
    ) -> FnResult {
        self.0.process(record, ctx, out)
    }

    fn process_second(
        &mut self,
        record: (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<CountUpdate>,
    ) -> FnResult {
        self.0.process(record, ctx, out)
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        out: &mut Vec<CountUpdate>,
    ) -> FnResult {
        self.0.finish(state, out)
    }
}

/// What identifies an output line to a sink fault: `(key, count)` of a count
/// update, `(key, start)` of a window.
pub trait SinkTag {
    fn tag(&self) -> (u64, u64);
}

impl SinkTag for CountUpdate {
    fn tag(&self) -> (u64, u64) {
        (self.key, self.count)
    }
}

/// A window's result (timed shapes): written as `key,start,count,sum`
/// (tumbling) or `key,start,end,count,sum` (sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLine {
    pub key: u64,
    pub start: i64,
    pub end: i64,
    pub count: u64,
    pub sum: u64,
    pub session: bool,
}

impl std::fmt::Display for WindowLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.session {
            write!(
                f,
                "{},{},{},{},{}",
                self.key, self.start, self.end, self.count, self.sum
            )
        } else {
            write!(f, "{},{},{},{}", self.key, self.start, self.count, self.sum)
        }
    }
}

impl SinkTag for WindowLine {
    fn tag(&self) -> (u64, u64) {
        (self.key, self.start as u64)
    }
}

/// `(count, sum)` of a window's records, with an injection point per record
/// added (timed shapes).
#[derive(Clone)]
pub struct FaultyWindowSum {
    faults: Arc<Faults>,
}

impl WindowAggregateFunction<(u64, u64), (u64, u64), (u64, u64)> for FaultyWindowSum {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }

    fn add(&self, accumulator: &mut (u64, u64), input: (u64, u64)) {
        self.faults.on_window_add(input.1);
        accumulator.0 += 1;
        accumulator.1 = accumulator.1.wrapping_add(input.1);
    }

    fn merge(&self, accumulator: &mut (u64, u64), other: (u64, u64)) {
        accumulator.0 += other.0;
        accumulator.1 = accumulator.1.wrapping_add(other.1);
    }

    fn result(&self, accumulator: &(u64, u64)) -> (u64, u64) {
        *accumulator
    }
}

/// The two-phase-commit `FileSink` with injection points.
pub struct FaultySink {
    inner: FileSink,
    faults: Arc<Faults>,
}

impl<T: Data + Display + SinkTag> Sink<T> for FaultySink {
    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(FaultyWriter {
            inner: Sink::<T>::create_writer(&self.inner, subtask)?,
            faults: Arc::clone(&self.faults),
        }))
    }
}

struct FaultyWriter<T> {
    inner: Box<dyn SinkWriter<T>>,
    faults: Arc<Faults>,
}

impl<T: Data + Clone + SinkTag> SinkWriter<T> for FaultyWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        self.faults.on_sink_batch(batch, false)?;
        let copy = (self.faults.sink_target.is_some()
            && matches!(self.faults.fault, Fault::Record { after: true, .. }))
        .then(|| batch.clone());
        self.inner.write_batch(batch)?;
        if let Some(copy) = copy {
            self.faults.on_sink_batch(&copy, true)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        self.faults.on_sink_finish()?;
        self.inner.finish()
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        self.inner.prepare_commit(barrier)
    }

    // The runtime's path: the file sink's fsync runs on an upload thread.
    fn prepare_commit_deferred(&mut self, barrier: Barrier) -> Result<PreparedCommit, UserError> {
        self.inner.prepare_commit_deferred(barrier)
    }

    fn abort(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.inner.abort(checkpoint_id)
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.faults.at_hook(Hook::SinkCommit, || {
            format!("sink commit of checkpoint {checkpoint_id}")
        })?;
        self.inner.commit(checkpoint_id)
    }
}

// ---------------------------------------------------------------------------
// Running.

/// What a run left behind.
pub struct RunOutcome {
    pub spec: RunSpec,
    pub report: JobReport,
    pub fired: bool,
    pub fired_at: Option<String>,
    /// Lines of the committed (visible) files.
    pub lines: Vec<String>,
    /// Hidden entries of the output directory (in-progress files).
    pub hidden: Vec<String>,
    /// The job's own RESULT checksum (CountAndSum's totals).
    pub totals: Checksum,
    /// Every object left in checkpoint storage.
    pub storage_objects: Vec<String>,
    /// The metadata of every completed checkpoint left in storage.
    pub retained: Vec<CheckpointMetadata>,
    /// A restart restored a checkpoint (false: every restart started from
    /// nothing, or there was none).
    pub restored_a_checkpoint: bool,
    /// Channel state files written (by completed checkpoints or not) and
    /// their bytes.
    pub channel_files_written: u64,
    pub channel_bytes_written: u64,
    /// Channel state files a restore read.
    pub channel_files_read: u64,
    pub elapsed: Duration,
}

/// Silences the panics this harness injects (others print as usual).
pub fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !message.contains(INJECTED) {
                default(info);
            }
        }));
    });
}

/// The keyed state backend of a run; RocksDB keeps its databases in `dir`.
fn state_backend(backend: Backend, dir: &std::path::Path) -> StateBackendConfig {
    match backend {
        Backend::Heap => {
            let _ = dir;
            StateBackendConfig::Heap
        }
        #[cfg(feature = "rocksdb")]
        Backend::RocksDb { incremental } => {
            use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};
            StateBackendConfig::Store(RocksDbFactory::new(RocksDbOptions {
                incremental,
                ..RocksDbOptions::new(dir)
            }))
        }
    }
}

/// The metadata of every completed checkpoint among `objects`.
fn retained_checkpoints(
    storage: &dyn CheckpointStorage,
    objects: &[String],
) -> Result<Vec<CheckpointMetadata>, String> {
    let mut retained = Vec::new();
    for path in objects {
        if parse_metadata_path(path).is_none() {
            continue;
        }
        let bytes = storage.get(path).map_err(|e| e.to_string())?;
        retained.push(CheckpointMetadata::decode(path, &bytes).map_err(|e| e.to_string())?);
    }
    retained.sort_by_key(|m| m.checkpoint_id);
    Ok(retained)
}

fn unique_name(seed: u64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "faults-{}-{seed}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds and runs the job of `spec` on this thread.
fn run_here(spec: &RunSpec) -> Result<RunOutcome, String> {
    let seed = spec.seed;
    let started = Instant::now();
    let out_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let chk_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = match spec.storage {
        StorageKind::Memory => format!("memory://{}", unique_name(seed)),
        StorageKind::Local => chk_dir.path().display().to_string(),
    };
    let inner = open_storage(&url).map_err(|e| format!("seed {seed}: {e}"))?;
    let faults = Arc::new(Faults::new(spec));
    let storage: SharedStorage = Arc::new(FaultyStorage {
        inner: Arc::clone(&inner),
        faults: Arc::clone(&faults),
    });
    // Owned by the run, and alive until its end: no two runs share databases.
    let state_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = ExecutionConfig {
        batch_size: spec.batch_size,
        state_backend: state_backend(spec.backend, state_dir.path()),
        checkpointing: Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval: Some(spec.interval),
                timeout: Duration::from_secs(10),
                retain: spec.retain,
                tolerable_failures: 100,
                alignment: spec.alignment,
                ..Default::default()
            },
            guarantee: spec.guarantee,
            job_id: None,
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::fixed_delay(10, Duration::from_millis(1)),
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(spec.parallelism)
    };
    let env = StreamEnvironment::new(config);
    let totals = Arc::new(Mutex::new(Checksum::default()));
    let count = FaultyCount {
        inner: CountAndSum::new(Arc::clone(&totals)),
        faults: Arc::clone(&faults),
    };
    let mut file_sink = FileSink::new(out_dir.path()).map_err(|e| e.to_string())?;
    if let Some(bytes) = spec.part_bytes_max {
        file_sink = file_sink.with_part_bytes_max(bytes);
    }
    let sink = FaultySink {
        inner: file_sink,
        faults: Arc::clone(&faults),
    };
    let keys = spec.keys;
    let map_faults = Arc::clone(&faults);
    let faulty_map = move |record: (u64, u64)| {
        map_faults.on_map(record);
        record
    };
    let source = |name: &str, first: u64, len: u64| {
        let make = move |i: u64| w_record(first + i, keys);
        let source =
            SequenceSource::new(len, spec.splits, make).map_err(|e| format!("seed {seed}: {e}"))?;
        Ok::<_, String>(env.from_source(name, source))
    };
    let low = spec.records / 2;
    if spec.topology.is_timed() {
        build_timed(&env, spec, faulty_map, sink, Arc::clone(&faults))?;
    } else {
        let updates = match spec.topology {
            Topology::Single => source("Source: W", 0, spec.records)?
                .map(faulty_map)
                .key_by(|r: &(u64, u64)| r.0)
                .process(count)
                .name("Count and sum"),
            Topology::Union => {
                let a = source("Source: W low", 0, low)?;
                let b = source("Source: W high", low, spec.records - low)?;
                a.union(&b)
                    .map(faulty_map)
                    .key_by(|r: &(u64, u64)| r.0)
                    .process(count)
                    .name("Count and sum")
            }
            Topology::Connect => {
                let a = source("Source: W low", 0, low)?
                    .map(faulty_map.clone())
                    .key_by(|r: &(u64, u64)| r.0);
                let b = source("Source: W high", low, spec.records - low)?
                    .map(faulty_map)
                    .key_by(|r: &(u64, u64)| r.0);
                a.connect(&b)
                    .process(FaultyCoCount(count))
                    .name("Count and sum")
            }
            Topology::Windowed | Topology::Session => unreachable!("built by build_timed"),
        };
        sink_to(&updates, sink, spec.sink_rate)?;
    }
    let report = env
        .execute()
        .map_err(|e| format!("seed {seed}: the job failed: {}", error_chain(&e)))?;

    let mut lines = Vec::new();
    let mut hidden = Vec::new();
    for entry in std::fs::read_dir(out_dir.path()).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            hidden.push(name);
        } else {
            let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
            lines.extend(text.lines().map(str::to_owned));
        }
    }
    let storage_objects = inner.list("").map_err(|e| e.to_string())?;
    let retained = retained_checkpoints(inner.as_ref(), &storage_objects)
        .map_err(|e| format!("seed {seed}: {e}"))?;
    let totals = *totals.lock().unwrap_or_else(|e| e.into_inner());
    Ok(RunOutcome {
        spec: spec.clone(),
        report,
        fired: faults.fired(),
        fired_at: faults.fired_at(),
        lines,
        hidden,
        totals,
        storage_objects,
        retained,
        restored_a_checkpoint: faults.metadata_reads.load(Ordering::SeqCst) > 0,
        channel_files_written: faults.channel_files_written.load(Ordering::SeqCst),
        channel_bytes_written: faults.channel_bytes_written.load(Ordering::SeqCst),
        channel_files_read: faults.channel_files_read.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
    })
}

/// The timed shapes: an event-time source of [`TimedWorkload`] records (a
/// watermark generator per split, out of order by less than [`JITTER_MS`]),
/// the map, keyed windows (tumbling or sessions) counting and summing, and
/// the file sink.
fn build_timed(
    env: &StreamEnvironment,
    spec: &RunSpec,
    faulty_map: impl Fn((u64, u64)) -> (u64, u64) + Clone + Send + Sync + 'static,
    sink: FaultySink,
    faults: Arc<Faults>,
) -> Result<(), String> {
    let seed = spec.seed;
    let w = spec.timed();
    let strategy = WatermarkStrategy::bounded_out_of_orderness(JITTER_MS, move |r: &(u64, u64)| {
        w.timestamp(r.1)
    });
    let source = SequenceSource::new(spec.records, spec.splits, move |i| w.record(i))
        .map_err(|e| format!("seed {seed}: {e}"))?
        .with_event_time(strategy);
    let keyed = env
        .from_source("Source: WT", source)
        .map(faulty_map)
        .key_by(|r: &(u64, u64)| r.0);
    let aggregate = FaultyWindowSum {
        faults: Arc::clone(&faults),
    };
    let session = w.session;
    let emit = move |key: &u64, window: &TimeWindow, (count, sum): (u64, u64)| {
        faults.on_window_fire(*key, window.start);
        WindowLine {
            key: *key,
            start: window.start,
            end: window.end,
            count,
            sum,
            session,
        }
    };
    let timestamp = move |r: &(u64, u64)| w.timestamp(r.1);
    let lines = if session {
        keyed
            .window_by(
                EventTimeSessionWindows::with_gap(Duration::from_millis(w.gap_ms as u64)),
                timestamp,
            )
            .aggregate_with(aggregate, emit)
            .name("Session count and sum")
    } else {
        keyed
            .window_by(
                TumblingEventTimeWindows::of(Duration::from_millis(w.window_ms as u64)),
                timestamp,
            )
            .aggregate_with(aggregate, emit)
            .name("Window count and sum")
    };
    sink_to(&lines, sink, spec.sink_rate)
}

/// Ends `stream` in the file sink, throttled to `rate` records/s if given.
fn sink_to<T: Data + Clone + Display + SinkTag>(
    stream: &DataStream<T>,
    sink: FaultySink,
    rate: Option<u64>,
) -> Result<(), String> {
    match rate {
        Some(rate) => stream.sink_to(
            "Sink: Files",
            ThrottledSink::new(sink, rate).map_err(|e| e.to_string())?,
        ),
        None => stream.sink_to("Sink: Files", sink),
    }
    Ok(())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `spec` on its own thread; fails with the seed if it takes longer than
/// [`RUN_TIMEOUT`] (a hang) or if the job fails.
pub fn run(spec: &RunSpec) -> RunOutcome {
    quiet_injected_panics();
    let seed = spec.seed;
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = spec.clone();
    std::thread::Builder::new()
        .name(format!("fault-run-{seed}"))
        .spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_here(&owned)));
            let _ = tx.send(result.unwrap_or_else(|_| Err("the harness panicked".to_owned())));
        })
        .expect("spawn a run thread");
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(message)) => panic!("seed {seed}: {message}\n{spec:?}"),
        Err(_) => {
            panic!("seed {seed}: the job did not end within {RUN_TIMEOUT:?} (hang)\n{spec:?}")
        }
    }
}

/// Runs `spec`; if its fault could not fire (the job ended first), runs it again
/// with the fault at its earliest point, which always fires.
pub fn run_until_fired(spec: &RunSpec) -> RunOutcome {
    let outcome = run(spec);
    if outcome.fired || spec.fault == Fault::None {
        return outcome;
    }
    let earlier = RunSpec {
        fault: spec.fault.earliest(),
        ..spec.clone()
    };
    let outcome = run(&earlier);
    assert!(
        outcome.fired,
        "seed {}: the fault never fired, even at its earliest point\n{earlier:?}",
        spec.seed
    );
    outcome
}

// ---------------------------------------------------------------------------
// Checks.

fn parse_lines(seed: u64, lines: &[String]) -> Result<Vec<(u64, u64, u64)>, String> {
    lines
        .iter()
        .map(|line| {
            let mut parts = line.split(',').map(str::parse::<u64>);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(Ok(k)), Some(Ok(c)), Some(Ok(s)), None) => Ok((k, c, s)),
                _ => Err(format!("seed {seed}: malformed output line {line:?}")),
            }
        })
        .collect()
}

/// The brief's exactly-once check, strengthened: for every key its lines carry
/// the counts 1..c exactly once each; the line with count c carries the final
/// sum; the increments between consecutive counts are exactly the values of the
/// key's records (each record affected the state once); no key is missing or
/// extra; the number of lines equals the number of records. Returns the final
/// state read from the output.
pub fn check_exactly_once(
    seed: u64,
    lines: &[String],
    expected: &HashMap<u64, Vec<u64>>,
    records: u64,
) -> Result<HashMap<u64, (u64, u64)>, String> {
    let parsed = parse_lines(seed, lines)?;
    let mut by_key: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for &(key, count, sum) in &parsed {
        by_key.entry(key).or_default().push((count, sum));
    }
    let mut problems = Vec::new();
    if parsed.len() as u64 != records {
        problems.push(format!(
            "{} output lines for {records} records ({:+})",
            parsed.len(),
            parsed.len() as i64 - records as i64
        ));
    }
    let mut final_state = HashMap::new();
    let keys: HashSet<u64> = by_key.keys().chain(expected.keys()).copied().collect();
    let mut keys: Vec<u64> = keys.into_iter().collect();
    keys.sort_unstable();
    for key in keys {
        let want: &[u64] = expected.get(&key).map_or(&[], Vec::as_slice);
        let mut got = by_key.remove(&key).unwrap_or_default();
        got.sort_unstable();
        let counts: Vec<u64> = got.iter().map(|(c, _)| *c).collect();
        let c = want.len() as u64;
        if counts != (1..=c).collect::<Vec<u64>>() {
            let missing: Vec<u64> = (1..=c).filter(|n| !counts.contains(n)).collect();
            let mut seen = HashSet::new();
            let repeated: Vec<u64> = counts
                .iter()
                .copied()
                .filter(|n| !seen.insert(*n))
                .collect();
            let beyond: Vec<u64> = counts
                .iter()
                .copied()
                .filter(|&n| n > c || n == 0)
                .collect();
            problems.push(format!(
                "key {key}: expected counts 1..={c}; missing {missing:?}, repeated {repeated:?}, unexpected {beyond:?}"
            ));
            continue;
        }
        let mut increments: Vec<u64> = Vec::with_capacity(got.len());
        let mut previous = 0u64;
        for &(_, sum) in &got {
            increments.push(sum.wrapping_sub(previous));
            previous = sum;
        }
        increments.sort_unstable();
        let mut want_sorted = want.to_vec();
        want_sorted.sort_unstable();
        if increments != want_sorted {
            problems.push(format!(
                "key {key}: the increments of its sums are not exactly its records' values"
            ));
        }
        let want_sum = want.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        let (last_count, last_sum) = got.last().copied().unwrap_or((0, 0));
        if last_sum != want_sum {
            problems.push(format!(
                "key {key}: final line {last_count},{last_sum}; expected sum {want_sum}"
            ));
        }
        final_state.insert(key, (last_count, last_sum));
    }
    if problems.is_empty() {
        Ok(final_state)
    } else {
        let shown = problems.len().min(12);
        Err(format!(
            "seed {seed}: exactly-once check failed ({} problems):\n  {}",
            problems.len(),
            problems[..shown].join("\n  ")
        ))
    }
}

/// What the at-least-once check saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct AtLeastOnceStats {
    /// Output lines beyond one per record.
    pub extra_lines: u64,
    /// Lines that repeat another line exactly.
    pub repeated_lines: u64,
    /// Keys whose final count exceeds their number of records (a record counted twice).
    pub keys_over_counted: u64,
}

/// At-least-once: nothing lost. For every key, every record's value shows as the
/// increment from some line `(c-1, s-v)` (or nothing, for c = 1) to a line
/// `(c, s)`, and the highest count is at least the key's number of records.
pub fn check_nothing_lost(
    seed: u64,
    lines: &[String],
    expected: &HashMap<u64, Vec<u64>>,
    records: u64,
) -> Result<AtLeastOnceStats, String> {
    let parsed = parse_lines(seed, lines)?;
    let mut stats = AtLeastOnceStats {
        extra_lines: (parsed.len() as u64).saturating_sub(records),
        ..Default::default()
    };
    let mut by_key: HashMap<u64, HashSet<(u64, u64)>> = HashMap::new();
    for &(key, count, sum) in &parsed {
        if !by_key.entry(key).or_default().insert((count, sum)) {
            stats.repeated_lines += 1;
        }
    }
    let mut problems = Vec::new();
    if (parsed.len() as u64) < records {
        problems.push(format!(
            "{} output lines for {records} records",
            parsed.len()
        ));
    }
    let ordered: BTreeMap<u64, &Vec<u64>> = expected.iter().map(|(k, v)| (*k, v)).collect();
    for (key, values) in ordered {
        let empty = HashSet::new();
        let lines = by_key.get(&key).unwrap_or(&empty);
        let max_count = lines.iter().map(|(c, _)| *c).max().unwrap_or(0);
        if max_count < values.len() as u64 {
            problems.push(format!(
                "key {key}: highest count {max_count} < {} records",
                values.len()
            ));
        }
        if max_count > values.len() as u64 {
            stats.keys_over_counted += 1;
        }
        // Every increment some line shows over a line with the count before it.
        let mut sums_by_count: HashMap<u64, Vec<u64>> = HashMap::new();
        for &(c, s) in lines {
            sums_by_count.entry(c).or_default().push(s);
        }
        let mut increments: HashSet<u64> = HashSet::new();
        for &(c, s) in lines {
            if c == 1 {
                increments.insert(s);
            } else if let Some(before) = sums_by_count.get(&(c - 1)) {
                increments.extend(before.iter().map(|b| s.wrapping_sub(*b)));
            }
        }
        let lost: Vec<u64> = values
            .iter()
            .copied()
            .filter(|v| !increments.contains(v))
            .collect();
        if !lost.is_empty() {
            problems.push(format!("key {key}: records with values {lost:?} are lost"));
        }
    }
    if problems.is_empty() {
        Ok(stats)
    } else {
        let shown = problems.len().min(12);
        Err(format!(
            "seed {seed}: at-least-once check failed ({} problems):\n  {}",
            problems.len(),
            problems[..shown].join("\n  ")
        ))
    }
}

/// What a run left in checkpoint storage, against what its completed
/// checkpoints reference.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// `_metadata` of the completed checkpoints.
    pub metadata: Vec<String>,
    /// Files no completed checkpoint references: files of checkpoints without
    /// metadata (aborted ones), and shared files no retained checkpoint uses.
    pub orphans: Vec<String>,
    /// Files a completed checkpoint references that are not in storage.
    pub dangling: Vec<String>,
    /// Shared files (`<job>/shared/...`) in storage.
    pub shared: usize,
}

impl RunOutcome {
    /// Checkpoint files left in storage, by whether a completed checkpoint
    /// references them.
    pub fn leftovers(&self) -> Leftovers {
        let mut referenced: HashSet<&str> = HashSet::new();
        for metadata in &self.retained {
            let subtasks = metadata.operators.iter().flat_map(|o| &o.subtasks);
            for subtask in subtasks {
                if let Some(keyed) = &subtask.keyed {
                    referenced.insert(&keyed.file.path);
                }
                if let Some(channels) = &subtask.channels {
                    referenced.insert(&channels.file.path);
                }
            }
            referenced.extend(metadata.native_files().map(|f| f.file.path.as_str()));
        }
        let present: HashSet<&str> = self.storage_objects.iter().map(String::as_str).collect();
        let mut leftovers = Leftovers::default();
        for path in &self.storage_objects {
            if parse_metadata_path(path).is_some() {
                leftovers.metadata.push(path.clone());
            } else if !referenced.contains(path.as_str()) {
                leftovers.orphans.push(path.clone());
            }
            if StateWrite::of(path).is_some_and(|w| !w.private) {
                leftovers.shared += 1;
            }
        }
        leftovers.dangling = referenced
            .into_iter()
            .filter(|p| !present.contains(p))
            .map(str::to_owned)
            .collect();
        leftovers.metadata.sort();
        leftovers.orphans.sort();
        leftovers.dangling.sort();
        leftovers
    }
}

/// The completed checkpoints a run left are sound: at least one (the job's
/// final checkpoint completes), at most `retain`; every file they reference is
/// in storage and every file in storage is referenced by one of them (nothing
/// of aborted checkpoints, nor shared files only discarded ones used); every
/// keyed instance's state is in the backend's format (native files on
/// incremental RocksDB, key-group files otherwise).
pub fn check_checkpoints(outcome: &RunOutcome) -> Result<(), String> {
    let spec = &outcome.spec;
    let seed = spec.seed;
    let leftovers = outcome.leftovers();
    if outcome.retained.is_empty() || outcome.retained.len() > spec.retain {
        return Err(format!(
            "seed {seed}: {} completed checkpoints remain with retain {}: {:?}",
            outcome.retained.len(),
            spec.retain,
            leftovers.metadata
        ));
    }
    if !leftovers.orphans.is_empty() {
        return Err(format!(
            "seed {seed}: files no completed checkpoint references remain: {:?}",
            leftovers.orphans
        ));
    }
    if !leftovers.dangling.is_empty() {
        return Err(format!(
            "seed {seed}: completed checkpoints reference files that are not in storage: {:?}",
            leftovers.dangling
        ));
    }
    let native = spec.backend.native_checkpoints();
    for metadata in &outcome.retained {
        let subtasks: Vec<_> = metadata
            .operators
            .iter()
            .flat_map(|o| o.subtasks.iter().map(move |s| (&o.name, s)))
            .filter(|(_, s)| s.keyed.is_some() || s.native.is_some())
            .collect();
        let wrong = subtasks
            .iter()
            .find(|(_, s)| s.native.is_some() != native || s.keyed.is_some() == native);
        if subtasks.is_empty() || wrong.is_some() {
            return Err(format!(
                "seed {seed}: checkpoint {} of a {:?} run holds keyed state {} (expected {})",
                metadata.checkpoint_id,
                spec.backend,
                wrong.map_or("nowhere".to_owned(), |(name, s)| format!(
                    "of '{name}' ({}) as {}",
                    s.subtask,
                    if s.native.is_some() {
                        "native files"
                    } else {
                        "a key-group file"
                    }
                )),
                if native {
                    "native files only"
                } else {
                    "key-group files only"
                }
            ));
        }
    }
    Ok(())
}
