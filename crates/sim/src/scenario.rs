//! The simulated job and its independent checker.
//!
//! The job is a real flowstate dataflow built with the public API: a
//! replayable sequence source with split positions, an exchange by key, a
//! keyed count on the heap backend, and the exactly-once file sink (real
//! files in a real directory, published by two-phase commit). Every output
//! line is `key count id`: record `id`, the `count`-th of its key.
//!
//! The checker knows nothing of the runtime: it recomputes, from the record
//! ids alone, which key each record has and how many records each key has,
//! and reads the visible output files as any downstream reader would.

use std::collections::BTreeMap;
use std::path::Path;

use flowstate::connectors::{FileSink, SequenceSource};
use flowstate::runtime::WatermarkStrategy;
use flowstate::runtime::{
    Barrier, PreparedCommit, Sink, SinkWriter, SubtaskInfo, UserError,
    checkpoint::OperatorListState,
};
use flowstate::{
    FnResult, KeyedContext, KeyedProcessFunction, KeyedStateBackend, StreamEnvironment,
    TumblingEventTimeWindows, ValueStateDescriptor, ValueStateHandle, WindowAggregateFunction,
};
use std::time::Duration;

/// Which job to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The job as a user writes it.
    Correct,
    /// Deliberately broken: the sink publishes its output in the first
    /// commit phase, before the checkpoint is complete. The simulation must
    /// catch this (duplicates after a restore).
    CommitBeforeComplete,
    /// Deliberately broken: the channel state of unaligned checkpoints is
    /// lost (their metadata is stored without it, see
    /// [`crate::storage::SimStorage::dropping_channel_state`]), so a
    /// restore replays none of the in-flight records. The simulation must
    /// catch this (records missing after a restore).
    DropChannelState,
}

impl Variant {
    pub fn parse(name: &str) -> Option<Variant> {
        match name {
            "correct" => Some(Variant::Correct),
            "commit-before-complete" => Some(Variant::CommitBeforeComplete),
            "drop-channel-state" => Some(Variant::DropChannelState),
            _ => None,
        }
    }
}

/// The size of one seed's job.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub records: u64,
    pub keys: u64,
    pub splits: u32,
    /// Event-time tumbling windows instead of a running count.
    pub window: Option<WindowShape>,
}

/// The windowed job: record `id` has event time [`event_time`]; tumbling
/// windows of `window_ms`; watermarks trail by `disorder_ms` (per split), so
/// no record is late.
#[derive(Debug, Clone, Copy)]
pub struct WindowShape {
    pub window_ms: u64,
    pub disorder_ms: u64,
}

/// The event time of record `id`: 10 ms apart, up to `disorder_ms` early.
pub fn event_time(id: u64, disorder_ms: u64) -> i64 {
    (id * 10) as i64 - (key_of(id ^ 0xD1B5_4A32_D192_ED03, disorder_ms + 1)) as i64
}

fn window_start(ts: i64, window_ms: u64) -> i64 {
    ts - ts.rem_euclid(window_ms.max(1) as i64)
}

/// The key of record `id`.
pub fn key_of(id: u64, keys: u64) -> u64 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % keys.max(1)
}

#[derive(Clone)]
struct CountPerKey {
    state: Option<ValueStateHandle<u64>>,
}

impl KeyedProcessFunction<u64, u64, String> for CountPerKey {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    fn process(
        &mut self,
        id: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<String>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let key = *ctx.key();
        let count = ctx.value(handle).modify(
            || 0,
            |count| {
                *count += 1;
                *count
            },
        )?;
        out.push(format!("{key} {count} {id}"));
        Ok(())
    }
}

/// `(key, window_start, count, sum)` of a window's records (sum of ids).
#[derive(Clone, Copy)]
struct CountSum;

impl WindowAggregateFunction<u64, (u64, u64), (u64, u64)> for CountSum {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, accumulator: &mut (u64, u64), id: u64) {
        accumulator.0 += 1;
        accumulator.1 += id;
    }
    fn merge(&self, accumulator: &mut (u64, u64), other: (u64, u64)) {
        accumulator.0 += other.0;
        accumulator.1 += other.1;
    }
    fn result(&self, accumulator: &(u64, u64)) -> (u64, u64) {
        *accumulator
    }
}

/// Adds the job to `env`, writing into `output`.
pub fn build(
    env: &StreamEnvironment,
    shape: Shape,
    output: &Path,
    variant: Variant,
) -> anyhow::Result<()> {
    let keys = shape.keys;
    let source = SequenceSource::new(shape.records, shape.splits, |i| i)?;
    // Small parts: files roll over within a checkpoint, too.
    let sink = FileSink::new(output)?.with_part_bytes_max(256);
    if let Some(window) = shape.window {
        let disorder = window.disorder_ms;
        let source = source.with_event_time(WatermarkStrategy::bounded_out_of_orderness(
            disorder as i64,
            move |id: &u64| event_time(*id, disorder),
        ));
        let lines = env
            .from_source("Source: Sequence", source)
            .uid("numbers")
            .key_by(move |id: &u64| key_of(*id, keys))
            .window_by(
                TumblingEventTimeWindows::of(Duration::from_millis(window.window_ms)),
                move |id: &u64| event_time(*id, disorder),
            )
            .aggregate_with(CountSum, |key, w, (count, sum)| {
                format!("{key} {} {count} {sum}", w.start)
            })
            .name("Window")
            .uid("window");
        match variant {
            Variant::Correct | Variant::DropChannelState => lines.sink_to("Sink: Files", sink),
            Variant::CommitBeforeComplete => lines.sink_to("Sink: Files", EarlyCommit(sink)),
        }
        return Ok(());
    }
    let lines = env
        .from_source("Source: Sequence", source)
        .uid("numbers")
        .key_by(move |id: &u64| key_of(*id, keys))
        .process(CountPerKey { state: None })
        .name("Count per key")
        .uid("count");
    match variant {
        Variant::Correct | Variant::DropChannelState => lines.sink_to("Sink: Files", sink),
        Variant::CommitBeforeComplete => lines.sink_to("Sink: Files", EarlyCommit(sink)),
    }
    Ok(())
}

/// A sink that commits in its first phase (the deliberate bug).
struct EarlyCommit<S>(S);

impl<T: Send + 'static, S: Sink<T>> Sink<T> for EarlyCommit<S> {
    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(EarlyCommitWriter(self.0.create_writer(subtask)?)))
    }

    fn commits_on_checkpoint(&self) -> bool {
        self.0.commits_on_checkpoint()
    }
}

struct EarlyCommitWriter<T>(Box<dyn SinkWriter<T>>);

impl<T> SinkWriter<T> for EarlyCommitWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        self.0.write_batch(batch)
    }

    fn finish(&mut self) -> Result<(), UserError> {
        self.0.finish()
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        let state = self.0.prepare_commit(barrier)?;
        self.0.commit(barrier.id)?;
        Ok(state)
    }

    fn prepare_commit_deferred(&mut self, barrier: Barrier) -> Result<PreparedCommit, UserError> {
        self.prepare_commit(barrier).map(PreparedCommit::done)
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.0.commit(checkpoint_id)
    }

    fn abort(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.0.abort(checkpoint_id)
    }
}

/// What the checker found wrong.
pub type Violation = String;

/// Checks the visible output in `output` against the exactly-once contract.
/// `complete`: the job ended, so every record must be there (otherwise only
/// safety is checked: nothing twice, nothing inconsistent).
pub fn check(output: &Path, shape: Shape, complete: bool) -> Result<OutputDigest, Violation> {
    let lines = read_output(output)?;
    match shape.window {
        Some(window) => check_windows(&lines, shape, window, complete),
        None => check_counts(&lines, shape, complete),
    }
}

/// Every line of the visible (published) files, with its file and number.
fn read_output(output: &Path) -> Result<Vec<(String, usize, String)>, Violation> {
    let mut lines = Vec::new();
    let entries =
        std::fs::read_dir(output).map_err(|e| format!("reading {}: {e}", output.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    for name in &names {
        let text = std::fs::read_to_string(output.join(name))
            .map_err(|e| format!("reading output file {name}: {e}"))?;
        for (number, line) in text.lines().enumerate() {
            lines.push((name.clone(), number + 1, line.to_owned()));
        }
    }
    Ok(lines)
}

/// The windowed job: every line is a whole window with its true count and
/// sum (a window fires once, complete: no record is late), none twice; if
/// the job finished, every window is there.
fn check_windows(
    lines: &[(String, usize, String)],
    shape: Shape,
    window: WindowShape,
    complete: bool,
) -> Result<OutputDigest, Violation> {
    let mut expected: BTreeMap<(u64, i64), (u64, u64)> = BTreeMap::new();
    for id in 0..shape.records {
        let start = window_start(event_time(id, window.disorder_ms), window.window_ms);
        let entry = expected
            .entry((key_of(id, shape.keys), start))
            .or_insert((0, 0));
        entry.0 += 1;
        entry.1 += id;
    }
    let mut seen: BTreeMap<(u64, i64), (String, usize)> = BTreeMap::new();
    let mut digest = crate::trace::Fnv::default();
    for (file, number, line) in lines {
        let at = || format!("{file} line {number} ('{line}')");
        let fields: Vec<i64> = line
            .split(' ')
            .map(|f| f.parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{}: not four numbers", at()))?;
        let [key, start, count, sum] = fields[..] else {
            return Err(format!("{}: not four numbers", at()));
        };
        let (key, count, sum) = (key as u64, count as u64, sum as u64);
        match expected.get(&(key, start)) {
            None => return Err(format!("{}: no record falls in this window", at())),
            Some(&truth) if truth != (count, sum) => {
                return Err(format!("{}: the window holds (count, sum) {truth:?}", at()));
            }
            Some(_) => {}
        }
        if let Some((other, other_line)) = seen.insert((key, start), (file.clone(), *number)) {
            return Err(format!(
                "{}: window output twice (also {other} line {other_line})",
                at()
            ));
        }
    }
    if complete && seen.len() != expected.len() {
        let missing = expected.keys().find(|w| !seen.contains_key(w));
        return Err(format!(
            "{} of {} windows in the output; first missing: {missing:?}",
            seen.len(),
            expected.len()
        ));
    }
    for (key, start) in seen.keys() {
        digest.write_u64(*key);
        digest.write_u64(*start as u64);
    }
    Ok(OutputDigest {
        lines: seen.len() as u64,
        hash: digest.finish(),
    })
}

/// The running count: see [`check`].
fn check_counts(
    lines: &[(String, usize, String)],
    shape: Shape,
    complete: bool,
) -> Result<OutputDigest, Violation> {
    let mut ids: BTreeMap<u64, (String, usize)> = BTreeMap::new();
    let mut counts: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut digest = crate::trace::Fnv::default();
    for (file, number, line) in lines {
        let at = || format!("{file} line {number} ('{line}')");
        let fields: Vec<u64> = line
            .split(' ')
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{}: not three numbers", at()))?;
        let [key, count, id] = fields[..] else {
            return Err(format!("{}: not three numbers", at()));
        };
        if id >= shape.records {
            return Err(format!("{}: no record {id} was ever read", at()));
        }
        if key != key_of(id, shape.keys) {
            return Err(format!(
                "{}: record {id} has key {}",
                at(),
                key_of(id, shape.keys)
            ));
        }
        if let Some((other, other_line)) = ids.insert(id, (file.clone(), *number)) {
            return Err(format!(
                "{}: record {id} output twice (also {other} line {other_line})",
                at()
            ));
        }
        if let Some(previous) = counts.entry(key).or_default().insert(count, id) {
            return Err(format!(
                "{}: key {key} counted {count} twice (also for record {previous})",
                at()
            ));
        }
    }
    // Per key, counts 1..=n with no gap, finished or not: each key's output
    // goes through one sink instance per attempt, which publishes whole
    // checkpoints; a gap is a count whose line was lost while its effect on
    // state was kept.
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for id in 0..shape.records {
        *expected.entry(key_of(id, shape.keys)).or_insert(0) += 1;
    }
    for (key, seen) in &counts {
        let n = seen.len() as u64;
        if let Some((&max, _)) = seen.last_key_value()
            && max != n
        {
            return Err(format!("key {key}: counts up to {max} but only {n} lines"));
        }
        let total = expected.get(key).copied().unwrap_or(0);
        if n > total {
            return Err(format!("key {key}: {n} lines for {total} records"));
        }
        if complete && n != total {
            return Err(format!(
                "key {key}: {n} lines for {total} records (output lost)"
            ));
        }
    }
    if complete && ids.len() as u64 != shape.records {
        let missing = (0..shape.records).find(|id| !ids.contains_key(id));
        return Err(format!(
            "{} of {} records in the output; first missing: {missing:?}",
            ids.len(),
            shape.records
        ));
    }
    for id in ids.keys() {
        digest.write_u64(*id);
    }
    for (key, seen) in &counts {
        digest.write_u64(*key);
        digest.write_u64(seen.len() as u64);
    }
    Ok(OutputDigest {
        lines: ids.len() as u64,
        hash: digest.finish(),
    })
}

/// A summary of correct output.
#[derive(Debug, Clone, Copy)]
pub struct OutputDigest {
    pub lines: u64,
    pub hash: u64,
}
