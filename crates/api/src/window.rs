//! Windows on keyed streams, built on timers and keyed state.
//!
//! `keyed.window_by(assigner, |r| r.ts)` puts each record into the windows
//! its assigner gives for its timestamp (event time) or for the clock's time
//! (processing time); `reduce`, `aggregate` / `aggregate_with` and `process`
//! then say what a window emits when it fires. A window is a keyed function
//! ([`KeyedProcessFunction`]) run by the ordinary keyed operator: its state is
//! keyed state and its firings are timers, so windows are checkpointed,
//! rescaled and moved between backends like any other state.
//!
//! State per key (reserved names):
//! - `_window/contents`: value state, the key's open windows with their
//!   accumulators, `Vec<((start, end), accumulator)>` (`reduce`,
//!   `aggregate`), or `_window/elements`: list state of `((start, end),
//!   record)` (`process`, which gets every element);
//! - `_window/windows`: value state, the key's active windows as a sorted
//!   `Vec<(start, end)>` — for merging (session) windows and `process`
//!   windows only: the contents of non-merging `reduce`/`aggregate` windows
//!   list their windows themselves.
//!
//! Event time: a window `[start, end)` fires when the watermark reaches
//! `end - 1` (its timer), keeps its state until `end - 1 + allowed lateness`
//! (its clean-up timer), and fires again for every record that arrives in
//! between. A record whose every window is past clean-up is dropped and
//! counted ([`WindowedStream::dropped_late_records`]), and with
//! [`WindowedStream::side_output_late_data`] also emitted to a side output
//! (read with `result.side_output(&tag)`). Session windows merge:
//! a record's window `[ts, ts + gap)` merges with every active window it
//! overlaps or touches, their contents merge and their timers move to the
//! merged window.
//!
//! Absent: custom triggers and evictors, processing-time session windows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowstate_runtime::{Data, UserError, WatermarkStrategy};
use flowstate_state::{
    KeyedStateBackend, ListStateDescriptor, ListStateHandle, StateKey, StateValue,
    ValueStateDescriptor, ValueStateHandle,
};

use crate::keyed::{FnResult, KeyedContext, KeyedProcessFunction, TimeDomain};
use crate::side_output::OutputTag;
use crate::stream::{DataStream, KeyedStream};

/// The reserved state of a window operator: each key's active windows.
pub const WINDOWS_STATE: &str = "_window/windows";
/// The reserved state of `reduce`/`aggregate` windows: accumulators by window.
pub const CONTENTS_STATE: &str = "_window/contents";
/// The reserved state of `process` windows: `(window, element)` pairs.
pub const ELEMENTS_STATE: &str = "_window/elements";

/// A half-open interval of time `[start, end)` in milliseconds. Serde: a
/// record that carries one may cross processes (`Wire`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TimeWindow {
    pub start: i64,
    pub end: i64,
}

impl TimeWindow {
    pub fn new(start: i64, end: i64) -> Self {
        Self { start, end }
    }

    /// The last timestamp inside the window: it fires when the watermark
    /// reaches this.
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }

    /// Whether the windows overlap or touch (session windows merge then).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }

    fn pair(&self) -> (i64, i64) {
        (self.start, self.end)
    }

    fn from_pair((start, end): (i64, i64)) -> Self {
        Self { start, end }
    }
}

/// The start of the window of `size` (aligned to the epoch, shifted by
/// `offset`) that holds `timestamp`.
pub fn window_start(timestamp: i64, offset: i64, size: i64) -> i64 {
    timestamp - (timestamp - offset).rem_euclid(size)
}

/// Decides which windows a record belongs to.
pub trait WindowAssigner: Clone + Send + Sync + 'static {
    /// The windows of a record at `timestamp` (its event time, or the clock's
    /// time for a processing-time assigner).
    fn assign(&self, timestamp: i64, windows: &mut Vec<TimeWindow>);
    /// Event time (timestamps, watermarks) or processing time (the clock).
    fn domain(&self) -> TimeDomain;
    /// Whether a record's window merges with the windows it touches (sessions).
    fn is_merging(&self) -> bool {
        false
    }
}

fn millis(duration: Duration, what: &str) -> i64 {
    let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    assert!(ms > 0, "{what} must be at least 1 ms");
    ms
}

/// Windows of a fixed size that do not overlap: `[start, start + size)` with
/// `start = ts - (ts - offset) mod size`.
#[derive(Debug, Clone, Copy)]
pub struct TumblingEventTimeWindows {
    size: i64,
    offset: i64,
}

impl TumblingEventTimeWindows {
    /// Windows of `size`, aligned to the epoch.
    pub fn of(size: Duration) -> Self {
        Self {
            size: millis(size, "a window size"),
            offset: 0,
        }
    }

    /// Shifts the windows by `offset` (e.g. to another time zone's midnight).
    pub fn with_offset(mut self, offset: Duration) -> Self {
        self.offset = i64::try_from(offset.as_millis()).unwrap_or(i64::MAX) % self.size;
        self
    }
}

impl WindowAssigner for TumblingEventTimeWindows {
    fn assign(&self, timestamp: i64, windows: &mut Vec<TimeWindow>) {
        let start = window_start(timestamp, self.offset, self.size);
        windows.push(TimeWindow::new(start, start.saturating_add(self.size)));
    }
    fn domain(&self) -> TimeDomain {
        TimeDomain::EventTime
    }
}

/// Tumbling windows over processing time.
#[derive(Debug, Clone, Copy)]
pub struct TumblingProcessingTimeWindows(TumblingEventTimeWindows);

impl TumblingProcessingTimeWindows {
    pub fn of(size: Duration) -> Self {
        Self(TumblingEventTimeWindows::of(size))
    }
    pub fn with_offset(self, offset: Duration) -> Self {
        Self(self.0.with_offset(offset))
    }
}

impl WindowAssigner for TumblingProcessingTimeWindows {
    fn assign(&self, timestamp: i64, windows: &mut Vec<TimeWindow>) {
        self.0.assign(timestamp, windows);
    }
    fn domain(&self) -> TimeDomain {
        TimeDomain::ProcessingTime
    }
}

/// Windows of `size` starting every `slide`: each record is in `size / slide`
/// windows (rounded up when `slide` does not divide `size`).
#[derive(Debug, Clone, Copy)]
pub struct SlidingEventTimeWindows {
    size: i64,
    slide: i64,
    offset: i64,
}

impl SlidingEventTimeWindows {
    pub fn of(size: Duration, slide: Duration) -> Self {
        Self {
            size: millis(size, "a window size"),
            slide: millis(slide, "a window slide"),
            offset: 0,
        }
    }

    pub fn with_offset(mut self, offset: Duration) -> Self {
        self.offset = i64::try_from(offset.as_millis()).unwrap_or(i64::MAX) % self.slide;
        self
    }
}

impl WindowAssigner for SlidingEventTimeWindows {
    fn assign(&self, timestamp: i64, windows: &mut Vec<TimeWindow>) {
        let mut start = window_start(timestamp, self.offset, self.slide);
        while start > timestamp.saturating_sub(self.size) {
            windows.push(TimeWindow::new(start, start.saturating_add(self.size)));
            start = start.saturating_sub(self.slide);
        }
    }
    fn domain(&self) -> TimeDomain {
        TimeDomain::EventTime
    }
}

/// Sliding windows over processing time.
#[derive(Debug, Clone, Copy)]
pub struct SlidingProcessingTimeWindows(SlidingEventTimeWindows);

impl SlidingProcessingTimeWindows {
    pub fn of(size: Duration, slide: Duration) -> Self {
        Self(SlidingEventTimeWindows::of(size, slide))
    }
    pub fn with_offset(self, offset: Duration) -> Self {
        Self(self.0.with_offset(offset))
    }
}

impl WindowAssigner for SlidingProcessingTimeWindows {
    fn assign(&self, timestamp: i64, windows: &mut Vec<TimeWindow>) {
        self.0.assign(timestamp, windows);
    }
    fn domain(&self) -> TimeDomain {
        TimeDomain::ProcessingTime
    }
}

/// Sessions: a record opens `[ts, ts + gap)`, which merges with every window
/// of its key that it overlaps or touches.
#[derive(Debug, Clone, Copy)]
pub struct EventTimeSessionWindows {
    gap: i64,
}

impl EventTimeSessionWindows {
    pub fn with_gap(gap: Duration) -> Self {
        Self {
            gap: millis(gap, "a session gap"),
        }
    }
}

impl WindowAssigner for EventTimeSessionWindows {
    fn assign(&self, timestamp: i64, windows: &mut Vec<TimeWindow>) {
        windows.push(TimeWindow::new(
            timestamp,
            timestamp.saturating_add(self.gap),
        ));
    }
    fn domain(&self) -> TimeDomain {
        TimeDomain::EventTime
    }
    fn is_merging(&self) -> bool {
        true
    }
}

/// An incremental aggregation over a window: inputs `I` fold into an
/// accumulator `Acc`; session windows also merge accumulators.
pub trait WindowAggregateFunction<I, Acc, O>: Clone + Send + Sync + 'static {
    fn create_accumulator(&self) -> Acc;
    fn add(&self, accumulator: &mut Acc, input: I);
    /// Folds `other` into `accumulator` (when session windows merge).
    fn merge(&self, accumulator: &mut Acc, other: Acc);
    fn result(&self, accumulator: &Acc) -> O;
}

type TimestampFn<T> = Arc<dyn Fn(&T) -> i64 + Send + Sync>;

/// A keyed stream cut into windows; `reduce`, `aggregate` or `process` says
/// what each window emits.
pub struct WindowedStream<K, T, A> {
    keyed: KeyedStream<K, T>,
    assigner: A,
    timestamp: TimestampFn<T>,
    lateness: i64,
    dropped: Arc<AtomicU64>,
    late: Option<OutputTag<T>>,
}

impl<K: StateKey, T: Data> KeyedStream<K, T> {
    /// Cuts the stream into the windows of `assigner`; `timestamp` gives each
    /// record's event time (milliseconds; unused by processing-time assigners).
    pub fn window_by<A: WindowAssigner>(
        &self,
        assigner: A,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> WindowedStream<K, T, A> {
        WindowedStream {
            keyed: self.clone(),
            assigner,
            timestamp: Arc::new(timestamp),
            lateness: 0,
            dropped: Arc::new(AtomicU64::new(0)),
            late: None,
        }
    }

    /// [`window_by`](Self::window_by) with the timestamps of `strategy`: the
    /// strategy given to the source (`with_event_time`) or to
    /// `assign_timestamps_and_watermarks` upstream.
    pub fn window<A: WindowAssigner>(
        &self,
        assigner: A,
        strategy: &WatermarkStrategy<T>,
    ) -> WindowedStream<K, T, A>
    where
        T: Sync,
    {
        let strategy = strategy.clone();
        self.window_by(assigner, move |record| strategy.timestamp(record))
    }
}

impl<K: StateKey, T: Data, A: WindowAssigner> WindowedStream<K, T, A> {
    /// Keeps an event-time window's state for `lateness` after it fired; a
    /// record arriving meanwhile updates it and fires it again. Later records
    /// are dropped and counted.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// How many records were dropped as too late (every instance together).
    pub fn dropped_late_records(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }

    /// Emits every record too late for all its windows (later than the
    /// allowed lateness) to the side output `tag` as well as counting it:
    /// read them with `result.side_output(&tag)` on the stream `reduce`,
    /// `aggregate` or `process` returns.
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late = Some(tag.clone());
        self
    }

    fn build<C: WindowContents<K, T>>(&self, contents: C, name: &str) -> DataStream<C::Out>
    where
        C::Out: Data,
    {
        let function = WindowFunction {
            assigner: self.assigner.clone(),
            timestamp: Arc::clone(&self.timestamp),
            lateness: self.lateness,
            dropped: Arc::clone(&self.dropped),
            late: self.late.clone(),
            contents,
            windows: None,
            scratch: Vec::new(),
        };
        self.keyed.process(function).name(name)
    }

    /// Combines a window's records with `f` and emits the result when the
    /// window fires.
    pub fn reduce(&self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DataStream<T>
    where
        T: StateValue,
    {
        let f = Arc::new(f);
        self.build(
            Incremental {
                agg: ReduceAgg(f),
                emit: Arc::new(|_: &K, _: &TimeWindow, value: T| value),
                handle: None,
            },
            "Window(Reduce)",
        )
    }

    /// Folds a window's records with `function` and emits its result.
    pub fn aggregate<Acc: StateValue, O: Data>(
        &self,
        function: impl WindowAggregateFunction<T, Acc, O>,
    ) -> DataStream<O> {
        self.aggregate_with(function, |_, _, result| result)
    }

    /// Like [`aggregate`](Self::aggregate), with the key and window of each
    /// result: `emit(key, window, result)`.
    pub fn aggregate_with<Acc: StateValue, O, R: Data>(
        &self,
        function: impl WindowAggregateFunction<T, Acc, O>,
        emit: impl Fn(&K, &TimeWindow, O) -> R + Send + Sync + 'static,
    ) -> DataStream<R>
    where
        O: 'static,
    {
        self.build(
            Incremental {
                agg: function,
                emit: Arc::new(emit),
                handle: None,
            },
            "Window(Aggregate)",
        )
    }

    /// Calls `f(key, window, elements, out)` with every record of a window
    /// when it fires (the records are held in list state until then).
    pub fn process<O: Data>(
        &self,
        f: impl Fn(&K, &TimeWindow, &[T], &mut Vec<O>) -> FnResult + Send + Sync + 'static,
    ) -> DataStream<O>
    where
        T: StateValue,
    {
        self.build(
            Elements {
                f: Arc::new(f),
                handle: None,
            },
            "Window(Process)",
        )
    }
}

/// What a window holds and emits.
trait WindowContents<K: StateKey, T>: Clone + Send + 'static {
    type Out;
    fn open(&mut self, backend: &mut dyn KeyedStateBackend<K>) -> FnResult;
    fn add(&mut self, ctx: &mut KeyedContext<'_, K>, window: TimeWindow, record: T) -> FnResult;
    /// Like `add`; says whether the window had no contents before, if that
    /// is known without another lookup (`None`: unknown). Lets a
    /// non-merging window skip its list of active windows and its timers for
    /// every record but a window's first.
    fn add_tracking_new(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        window: TimeWindow,
        record: T,
    ) -> Result<Option<bool>, UserError> {
        self.add(ctx, window, record)?;
        Ok(None)
    }
    /// Whether the contents list the key's open windows themselves: a
    /// non-merging assigner then keeps no separate list of active windows
    /// (no `_window/windows`), and its timers go to [`fire_listed`](Self::fire_listed).
    fn lists_windows(&self) -> bool {
        false
    }
    /// For contents that list their windows: emits, in window order, every
    /// window whose fire time (`end - 1`) is `time`, and drops every window
    /// whose clean-up time (`end - 1 + cleanup_delay`) is `time`.
    fn fire_listed(
        &mut self,
        _ctx: &mut KeyedContext<'_, K>,
        _time: i64,
        _cleanup_delay: i64,
        _out: &mut Vec<Self::Out>,
    ) -> FnResult {
        Err("these window contents do not list their windows".into())
    }
    /// Moves the contents of `from` into `into`.
    fn merge(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        into: TimeWindow,
        from: &[TimeWindow],
    ) -> FnResult;
    fn emit(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        window: TimeWindow,
        out: &mut Vec<Self::Out>,
    ) -> FnResult;
    fn clear(&mut self, ctx: &mut KeyedContext<'_, K>, window: TimeWindow) -> FnResult;
}

/// `reduce` as an aggregation whose accumulator is `Option<T>`.
struct ReduceAgg<T>(Arc<dyn Fn(T, T) -> T + Send + Sync>);

impl<T> Clone for ReduceAgg<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Clone + Send + 'static> WindowAggregateFunction<T, Option<T>, T> for ReduceAgg<T> {
    fn create_accumulator(&self) -> Option<T> {
        None
    }
    fn add(&self, accumulator: &mut Option<T>, input: T) {
        *accumulator = Some(match accumulator.take() {
            Some(old) => (self.0)(old, input),
            None => input,
        });
    }
    fn merge(&self, accumulator: &mut Option<T>, other: Option<T>) {
        if let Some(other) = other {
            self.add(accumulator, other);
        }
    }
    fn result(&self, accumulator: &Option<T>) -> T {
        match accumulator {
            Some(value) => value.clone(),
            None => unreachable!("a window's accumulator exists only after a record"),
        }
    }
}

type EmitFn<K, O, R> = Arc<dyn Fn(&K, &TimeWindow, O) -> R + Send + Sync>;

/// Accumulators by window: one value per key holding its open windows'
/// accumulators (a key has few open windows: one or two for tumbling
/// windows, size/slide for sliding ones), so a record costs one lookup of its
/// key and an update in place, not a lookup of an inner map and a copy.
struct Incremental<K, F, Acc, O, R> {
    agg: F,
    emit: EmitFn<K, O, R>,
    handle: Option<ValueStateHandle<Vec<(WindowPair, Acc)>>>,
}

impl<K, F: Clone, Acc, O, R> Clone for Incremental<K, F, Acc, O, R> {
    fn clone(&self) -> Self {
        Self {
            agg: self.agg.clone(),
            emit: Arc::clone(&self.emit),
            handle: self.handle.clone(),
        }
    }
}

impl<K, F, Acc, O, R> Incremental<K, F, Acc, O, R> {
    fn handle(&self) -> Result<ValueStateHandle<Vec<(WindowPair, Acc)>>, &'static str> {
        self.handle.clone().ok_or("window state used before open")
    }
}

impl<K, T, F, Acc, O, R> WindowContents<K, T> for Incremental<K, F, Acc, O, R>
where
    K: StateKey,
    T: 'static,
    F: WindowAggregateFunction<T, Acc, O>,
    Acc: StateValue,
    O: 'static,
    R: Send + 'static,
{
    type Out = R;

    fn open(&mut self, backend: &mut dyn KeyedStateBackend<K>) -> FnResult {
        self.handle = Some(backend.value_state(&ValueStateDescriptor::new(CONTENTS_STATE))?);
        Ok(())
    }

    fn add(&mut self, ctx: &mut KeyedContext<'_, K>, window: TimeWindow, record: T) -> FnResult {
        self.add_tracking_new(ctx, window, record).map(|_| ())
    }

    #[inline]
    fn add_tracking_new(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        window: TimeWindow,
        record: T,
    ) -> Result<Option<bool>, UserError> {
        let handle = self.handle()?;
        let pair = window.pair();
        let agg = &self.agg;
        let new = ctx.value(&handle).modify(Vec::new, |windows| {
            match windows.iter_mut().find(|(w, _)| *w == pair) {
                Some((_, acc)) => {
                    agg.add(acc, record);
                    false
                }
                None => {
                    let mut acc = agg.create_accumulator();
                    agg.add(&mut acc, record);
                    windows.push((pair, acc));
                    true
                }
            }
        })?;
        Ok(Some(new))
    }

    fn lists_windows(&self) -> bool {
        true
    }

    fn fire_listed(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        time: i64,
        cleanup_delay: i64,
        out: &mut Vec<R>,
    ) -> FnResult {
        let handle = self.handle()?;
        let agg = &self.agg;
        // One window fires at a time for tumbling and sliding windows (a
        // window's end is its own); more only for an assigner of several
        // sizes.
        let mut first: Option<(TimeWindow, O)> = None;
        let mut more: Vec<(TimeWindow, O)> = Vec::new();
        ctx.value(&handle).update(|windows| {
            let mut windows = windows?;
            windows.retain(|(pair, acc)| {
                let window = TimeWindow::from_pair(*pair);
                let fire = window.max_timestamp();
                if fire == time {
                    let result = (window, agg.result(acc));
                    match first {
                        None => first = Some(result),
                        Some(_) => more.push(result),
                    }
                }
                fire.saturating_add(cleanup_delay) != time
            });
            (!windows.is_empty()).then_some(windows)
        })?;
        if more.is_empty() {
            if let Some((window, result)) = first {
                out.push((self.emit)(ctx.key(), &window, result));
            }
            return Ok(());
        }
        more.extend(first);
        more.sort_unstable_by_key(|(window, _)| *window);
        for (window, result) in more {
            out.push((self.emit)(ctx.key(), &window, result));
        }
        Ok(())
    }

    fn merge(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        into: TimeWindow,
        from: &[TimeWindow],
    ) -> FnResult {
        let handle = self.handle()?;
        let agg = &self.agg;
        let into = into.pair();
        let from: Vec<WindowPair> = from.iter().map(TimeWindow::pair).collect();
        ctx.value(&handle).modify(Vec::new, |windows| {
            let mut merged: Option<Acc> = None;
            let mut kept = Vec::with_capacity(windows.len());
            for (w, acc) in windows.drain(..) {
                if w == into || from.contains(&w) {
                    match &mut merged {
                        Some(merged) => agg.merge(merged, acc),
                        None => merged = Some(acc),
                    }
                } else {
                    kept.push((w, acc));
                }
            }
            if let Some(merged) = merged {
                kept.push((into, merged));
            }
            *windows = kept;
        })?;
        Ok(())
    }

    fn emit(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        window: TimeWindow,
        out: &mut Vec<R>,
    ) -> FnResult {
        let handle = self.handle()?;
        let pair = window.pair();
        let result = match ctx
            .value(&handle)
            .get()?
            .and_then(|windows| windows.iter().find(|(w, _)| *w == pair))
        {
            Some((_, acc)) => self.agg.result(acc),
            None => return Ok(()),
        };
        out.push((self.emit)(ctx.key(), &window, result));
        Ok(())
    }

    fn clear(&mut self, ctx: &mut KeyedContext<'_, K>, window: TimeWindow) -> FnResult {
        let handle = self.handle()?;
        let pair = window.pair();
        let empty = ctx.value(&handle).modify(Vec::new, |windows| {
            windows.retain(|(w, _)| *w != pair);
            windows.is_empty()
        })?;
        if empty {
            ctx.value(&handle).clear()?;
        }
        Ok(())
    }
}

type ProcessFn<K, T, O> = Arc<dyn Fn(&K, &TimeWindow, &[T], &mut Vec<O>) -> FnResult + Send + Sync>;

/// A window as stored: `(start, end)`.
type WindowPair = (i64, i64);
type ElementsHandle<T> = ListStateHandle<(WindowPair, T)>;

/// Every element, tagged with its window, in list state.
struct Elements<K, T, O> {
    f: ProcessFn<K, T, O>,
    handle: Option<ElementsHandle<T>>,
}

impl<K, T, O> Clone for Elements<K, T, O> {
    fn clone(&self) -> Self {
        Self {
            f: Arc::clone(&self.f),
            handle: self.handle.clone(),
        }
    }
}

impl<K, T, O> Elements<K, T, O> {
    fn handle(&self) -> Result<ElementsHandle<T>, &'static str> {
        self.handle.clone().ok_or("window state used before open")
    }
}

impl<K: StateKey, T: StateValue, O: Send + 'static> WindowContents<K, T> for Elements<K, T, O> {
    type Out = O;

    fn open(&mut self, backend: &mut dyn KeyedStateBackend<K>) -> FnResult {
        self.handle = Some(backend.list_state(&ListStateDescriptor::new(ELEMENTS_STATE))?);
        Ok(())
    }

    fn add(&mut self, ctx: &mut KeyedContext<'_, K>, window: TimeWindow, record: T) -> FnResult {
        let handle = self.handle()?;
        ctx.list(&handle).add((window.pair(), record))?;
        Ok(())
    }

    fn merge(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        into: TimeWindow,
        from: &[TimeWindow],
    ) -> FnResult {
        let handle = self.handle()?;
        let from: Vec<(i64, i64)> = from.iter().map(TimeWindow::pair).collect();
        let elements: Vec<((i64, i64), T)> = ctx
            .list(&handle)
            .get()?
            .iter()
            .map(|(window, record)| {
                let window = if from.contains(window) {
                    into.pair()
                } else {
                    *window
                };
                (window, record.clone())
            })
            .collect();
        ctx.list(&handle).update(elements)?;
        Ok(())
    }

    fn emit(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        window: TimeWindow,
        out: &mut Vec<O>,
    ) -> FnResult {
        let handle = self.handle()?;
        let elements: Vec<T> = ctx
            .list(&handle)
            .get()?
            .iter()
            .filter(|(w, _)| *w == window.pair())
            .map(|(_, record)| record.clone())
            .collect();
        if elements.is_empty() {
            return Ok(());
        }
        (self.f)(ctx.key(), &window, &elements, out)
    }

    fn clear(&mut self, ctx: &mut KeyedContext<'_, K>, window: TimeWindow) -> FnResult {
        let handle = self.handle()?;
        let rest: Vec<((i64, i64), T)> = ctx
            .list(&handle)
            .get()?
            .iter()
            .filter(|(w, _)| *w != window.pair())
            .cloned()
            .collect();
        ctx.list(&handle).update(rest)?;
        Ok(())
    }
}

/// The keyed function of a window operator.
struct WindowFunction<T, A, C> {
    assigner: A,
    timestamp: TimestampFn<T>,
    lateness: i64,
    dropped: Arc<AtomicU64>,
    /// Where records too late for every window go (besides the count).
    late: Option<OutputTag<T>>,
    contents: C,
    windows: Option<ValueStateHandle<Vec<(i64, i64)>>>,
    scratch: Vec<TimeWindow>,
}

impl<T, A: Clone, C: Clone> Clone for WindowFunction<T, A, C> {
    fn clone(&self) -> Self {
        Self {
            assigner: self.assigner.clone(),
            timestamp: Arc::clone(&self.timestamp),
            lateness: self.lateness,
            dropped: Arc::clone(&self.dropped),
            late: self.late.clone(),
            contents: self.contents.clone(),
            windows: self.windows.clone(),
            scratch: Vec::new(),
        }
    }
}

impl<T, A: WindowAssigner, C> WindowFunction<T, A, C> {
    fn event_time(&self) -> bool {
        self.assigner.domain() == TimeDomain::EventTime
    }

    /// When a window fires.
    fn fire_time(&self, window: &TimeWindow) -> i64 {
        window.max_timestamp()
    }

    /// When a window's state goes.
    fn cleanup_time(&self, window: &TimeWindow) -> i64 {
        if self.event_time() {
            window.max_timestamp().saturating_add(self.lateness)
        } else {
            window.max_timestamp()
        }
    }

    /// `process` for windows that never merge (tumbling, sliding): a
    /// record of a window that already has contents touches only them; the
    /// list of active windows (`windows_handle`; `None` when the contents
    /// list their windows) and the timers change only for a window's first
    /// record.
    fn process_fixed<K: StateKey>(
        &mut self,
        record: T,
        assigned: &[TimeWindow],
        windows_handle: Option<&ValueStateHandle<Vec<(i64, i64)>>>,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Vec<C::Out>,
        watermark: i64,
    ) -> FnResult
    where
        T: Clone,
        C: WindowContents<K, T>,
    {
        let event_time = self.event_time();
        let mut active: Option<Vec<(i64, i64)>> = None;
        let mut record = Some(record);
        for (i, window) in assigned.iter().enumerate() {
            let value = if i + 1 == assigned.len() {
                record.take()
            } else {
                record.clone()
            }
            .ok_or("a record is added once per window")?;
            let new = self.contents.add_tracking_new(ctx, *window, value)?;
            let Some(windows_handle) = windows_handle else {
                // The contents are the list of active windows.
                if new != Some(false) {
                    self.register(ctx, window)?;
                }
                if event_time && self.fire_time(window) <= watermark {
                    self.contents.emit(ctx, *window, out)?;
                }
                continue;
            };
            if new != Some(false) {
                if active.is_none() {
                    active = Some(
                        ctx.value(windows_handle)
                            .get()?
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                if let Some(list) = active.as_mut()
                    && insert_sorted(list, window.pair())
                {
                    self.register(ctx, window)?;
                }
            }
            // Late, but within the allowed lateness: fire again at once.
            if event_time && self.fire_time(window) <= watermark {
                self.contents.emit(ctx, *window, out)?;
            }
        }
        if let (Some(list), Some(windows_handle)) = (active, windows_handle) {
            ctx.value(windows_handle).set(list)?;
        }
        Ok(())
    }

    fn register<K: StateKey>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        window: &TimeWindow,
    ) -> FnResult {
        let (fire, cleanup) = (self.fire_time(window), self.cleanup_time(window));
        let times = if fire == cleanup {
            &[fire][..]
        } else {
            &[fire, cleanup][..]
        };
        for &time in times {
            match self.assigner.domain() {
                TimeDomain::EventTime => ctx.register_event_time_timer(time)?,
                TimeDomain::ProcessingTime => ctx.register_processing_time_timer(time)?,
            }
        }
        Ok(())
    }

    /// Deletes the timers of `gone` that no window in `active` needs.
    fn delete_timers<K: StateKey>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        gone: &TimeWindow,
        active: &[(i64, i64)],
    ) -> FnResult {
        for time in [self.fire_time(gone), self.cleanup_time(gone)] {
            let needed = active
                .iter()
                .map(|w| TimeWindow::from_pair(*w))
                .any(|w| self.fire_time(&w) == time || self.cleanup_time(&w) == time);
            if !needed {
                match self.assigner.domain() {
                    TimeDomain::EventTime => ctx.delete_event_time_timer(time)?,
                    TimeDomain::ProcessingTime => ctx.delete_processing_time_timer(time)?,
                }
            }
        }
        Ok(())
    }
}

fn insert_sorted(windows: &mut Vec<(i64, i64)>, window: (i64, i64)) -> bool {
    match windows.binary_search(&window) {
        Ok(_) => false,
        Err(at) => {
            windows.insert(at, window);
            true
        }
    }
}

impl<K, T, A, C> KeyedProcessFunction<K, T, C::Out> for WindowFunction<T, A, C>
where
    K: StateKey,
    T: Data,
    A: WindowAssigner,
    C: WindowContents<K, T>,
{
    fn open(&mut self, state: &mut dyn KeyedStateBackend<K>) -> FnResult {
        // Non-merging windows whose contents list their windows keep no
        // separate list.
        if self.assigner.is_merging() || !self.contents.lists_windows() {
            self.windows = Some(state.value_state(&ValueStateDescriptor::new(WINDOWS_STATE))?);
        }
        self.contents.open(state)
    }

    fn process(
        &mut self,
        record: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Vec<C::Out>,
    ) -> FnResult {
        let event_time = self.event_time();
        let timestamp = if event_time {
            (self.timestamp)(&record)
        } else {
            ctx.current_processing_time()
        };
        let watermark = ctx.current_watermark();
        let mut assigned = std::mem::take(&mut self.scratch);
        assigned.clear();
        self.assigner.assign(timestamp, &mut assigned);
        // A window past its clean-up time takes nothing.
        assigned.retain(|w| !(event_time && self.cleanup_time(w) <= watermark));
        if assigned.is_empty() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.scratch = assigned;
            if let Some(tag) = &self.late {
                ctx.output(tag, record)?;
            }
            return Ok(());
        }
        if !self.assigner.is_merging() {
            let windows_handle = if self.contents.lists_windows() {
                None
            } else {
                Some(
                    self.windows
                        .clone()
                        .ok_or("window state used before open")?,
                )
            };
            let result = self.process_fixed(
                record,
                &assigned,
                windows_handle.as_ref(),
                ctx,
                out,
                watermark,
            );
            self.scratch = assigned;
            return result;
        }
        let windows_handle = self
            .windows
            .clone()
            .ok_or("window state used before open")?;
        let mut active: Vec<(i64, i64)> = ctx
            .value(&windows_handle)
            .get()?
            .cloned()
            .unwrap_or_default();
        let count = assigned.len();
        let mut record = Some(record);
        for (i, window) in assigned.iter().enumerate() {
            let mut target = *window;
            if self.assigner.is_merging() {
                let touching: Vec<TimeWindow> = active
                    .iter()
                    .map(|w| TimeWindow::from_pair(*w))
                    .filter(|w| w.intersects(window))
                    .collect();
                for w in &touching {
                    target = target.cover(w);
                }
                let from: Vec<TimeWindow> =
                    touching.iter().copied().filter(|w| *w != target).collect();
                if !from.is_empty() {
                    self.contents.merge(ctx, target, &from)?;
                    active.retain(|w| !from.iter().any(|f| f.pair() == *w));
                    insert_sorted(&mut active, target.pair());
                    for gone in &from {
                        self.delete_timers(ctx, gone, &active)?;
                    }
                }
            }
            if insert_sorted(&mut active, target.pair()) || self.assigner.is_merging() {
                self.register(ctx, &target)?;
            }
            let record = if i + 1 == count {
                record.take().ok_or("a record is added once per window")?
            } else {
                record.clone().ok_or("a record is added once per window")?
            };
            self.contents.add(ctx, target, record)?;
            // Late, but within the allowed lateness: fire again at once.
            if event_time && self.fire_time(&target) <= watermark {
                self.contents.emit(ctx, target, out)?;
            }
        }
        ctx.value(&windows_handle).set(active)?;
        self.scratch = assigned;
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Vec<C::Out>,
    ) -> FnResult {
        if domain != self.assigner.domain() {
            return Ok(());
        }
        if !self.assigner.is_merging() && self.contents.lists_windows() {
            let cleanup_delay = if self.event_time() { self.lateness } else { 0 };
            return self
                .contents
                .fire_listed(ctx, timestamp, cleanup_delay, out);
        }
        let windows_handle = self
            .windows
            .clone()
            .ok_or("window state used before open")?;
        let Some(mut active) = ctx.value(&windows_handle).get()?.cloned() else {
            return Ok(());
        };
        for window in active.iter().map(|w| TimeWindow::from_pair(*w)) {
            if self.fire_time(&window) == timestamp {
                self.contents.emit(ctx, window, out)?;
            }
        }
        let before = active.len();
        let mut kept = Vec::with_capacity(active.len());
        for pair in active.drain(..) {
            let window = TimeWindow::from_pair(pair);
            if self.cleanup_time(&window) == timestamp {
                self.contents.clear(ctx, window)?;
            } else {
                kept.push(pair);
            }
        }
        if kept.len() != before {
            if kept.is_empty() {
                ctx.value(&windows_handle).clear()?;
            } else {
                ctx.value(&windows_handle).set(kept)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
