//! Operator-level tests of windows: the window function runs in the keyed
//! operator, driven by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowstate_runtime::{Operator, Watermark};
use flowstate_state::{ManualClock, StateBackendConfig};

use super::*;
use crate::keyed::{KeySelector, KeyedProcessOperator};
use crate::timer_tests::{memory_store, savepoint_sections, subtask};

/// `(key, timestamp, value)`.
type Rec = (u64, i64, i64);
/// `(key, window start, window end, count, sum)`.
type Out = (u64, i64, i64, u64, i64);

#[derive(Clone)]
struct CountSum;

impl WindowAggregateFunction<Rec, (u64, i64), (u64, i64)> for CountSum {
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, i64), input: Rec) {
        acc.0 += 1;
        acc.1 += input.2;
    }
    fn merge(&self, acc: &mut (u64, i64), other: (u64, i64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
}

type Op = Box<dyn Operator<Rec, Out>>;

fn window_function<A: WindowAssigner>(
    assigner: A,
    lateness: i64,
    dropped: &Arc<AtomicU64>,
) -> WindowFunction<Rec, A, impl WindowContents<u64, Rec, Out = Out>> {
    let emit: EmitFn<u64, (u64, i64), Out> =
        Arc::new(|key: &u64, w: &TimeWindow, (count, sum)| (*key, w.start, w.end, count, sum));
    WindowFunction {
        assigner,
        timestamp: Arc::new(|r: &Rec| r.1),
        lateness,
        dropped: Arc::clone(dropped),
        late: None,
        contents: Incremental {
            agg: CountSum,
            emit,
            handle: None,
        },
        windows: None,
        scratch: Vec::new(),
    }
}

struct Harness<A: WindowAssigner> {
    assigner: A,
    lateness: i64,
    dropped: Arc<AtomicU64>,
    clock: Arc<ManualClock>,
}

impl<A: WindowAssigner> Harness<A> {
    fn new(assigner: A, lateness: i64) -> Self {
        Self {
            assigner,
            lateness,
            dropped: Arc::new(AtomicU64::new(0)),
            clock: ManualClock::new(0),
        }
    }

    fn operator(
        &self,
        index: u32,
        parallelism: u32,
        backend: StateBackendConfig,
        restored: Option<&[(flowstate_state::KeyGroup, Vec<u8>)]>,
    ) -> KeyedProcessOperator<
        u64,
        Rec,
        WindowFunction<Rec, A, impl WindowContents<u64, Rec, Out = Out>>,
    > {
        let subtask = subtask(index, parallelism, backend, self.clock.clone(), restored);
        KeyedProcessOperator::create::<Out>(
            &subtask,
            KeySelector::new(|r: &Rec| r.0),
            window_function(self.assigner.clone(), self.lateness, &self.dropped),
        )
        .expect("operator opens")
    }

    fn single(&self) -> Op {
        Box::new(self.operator(0, 1, StateBackendConfig::Heap, None))
    }
}

fn feed(op: &mut Op, records: &[Rec]) -> Vec<Out> {
    let mut input = records.to_vec();
    let mut out = Vec::new();
    op.process_batch(&mut input, &mut out).expect("batch");
    out
}

fn watermark(op: &mut Op, at: i64) -> Vec<Out> {
    let mut out = Vec::new();
    op.on_watermark(Watermark(at), &mut out).expect("watermark");
    out
}

fn sorted(mut v: Vec<Out>) -> Vec<Out> {
    v.sort();
    v
}

/// Records of 5 keys over 0..1000 ms with out-of-order timestamps.
fn records() -> Vec<Rec> {
    let mut records = Vec::new();
    let mut x: u64 = 7;
    for i in 0..400i64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = (x >> 33) % 5;
        let ts = (i * 2 + (x >> 40) as i64 % 50).max(0);
        records.push((key, ts, (x >> 50) as i64 % 100));
    }
    records
}

/// The reference: count and sum per (key, window) by brute force.
fn expected(records: &[Rec], windows_of: impl Fn(i64) -> Vec<TimeWindow>) -> Vec<Out> {
    let mut by: BTreeMap<(u64, i64, i64), (u64, i64)> = BTreeMap::new();
    for &(key, ts, value) in records {
        for w in windows_of(ts) {
            let entry = by.entry((key, w.start, w.end)).or_default();
            entry.0 += 1;
            entry.1 += value;
        }
    }
    by.into_iter()
        .map(|((k, s, e), (c, v))| (k, s, e, c, v))
        .collect()
}

#[test]
fn tumbling_windows_give_the_exact_count_and_sum_per_key_and_window() {
    let h = Harness::new(TumblingEventTimeWindows::of(Duration::from_millis(100)), 0);
    let mut op = h.single();
    let records = records();
    let mut out = Vec::new();
    // Watermarks trail the records by 60 ms (more than their disorder).
    for chunk in records.chunks(20) {
        out.extend(feed(&mut op, chunk));
        let max = chunk.iter().map(|r| r.1).max().unwrap_or(0);
        let fired = watermark(&mut op, max - 60);
        for f in &fired {
            assert!(
                f.2 - 1 <= max - 60,
                "{f:?} fired before the watermark passed its end"
            );
        }
        out.extend(fired);
    }
    out.extend(watermark(&mut op, i64::MAX));
    let want = expected(&records, |ts| {
        let start = ts - ts.rem_euclid(100);
        vec![TimeWindow::new(start, start + 100)]
    });
    assert_eq!(sorted(out), want);
    assert_eq!(h.dropped.load(Ordering::Relaxed), 0);
}

/// Non-merging `aggregate` windows keep no list of active windows: their
/// contents list them (docs/savepoint-format.md, section 5.4).
#[test]
fn tumbling_aggregate_windows_store_only_their_contents_and_timers() {
    let h = Harness::new(TumblingEventTimeWindows::of(Duration::from_millis(100)), 0);
    let mut op = h.single();
    feed(&mut op, &[(1, 10, 1), (1, 120, 2), (2, 50, 4)]);
    let sections = savepoint_sections(op.as_mut());
    let holds = |name: &str| {
        sections
            .iter()
            .any(|(_, bytes)| bytes.windows(name.len()).any(|w| w == name.as_bytes()))
    };
    assert!(holds(CONTENTS_STATE) && holds(crate::timers::EVENT_TIMERS_STATE));
    assert!(!holds(WINDOWS_STATE));
    assert_eq!(
        sorted(watermark(&mut op, 99)),
        vec![(1, 0, 100, 1, 1), (2, 0, 100, 1, 4)]
    );
    assert_eq!(watermark(&mut op, i64::MAX), vec![(1, 100, 200, 1, 2)]);
}

#[test]
fn a_window_fires_when_the_watermark_reaches_its_last_millisecond() {
    let h = Harness::new(
        TumblingEventTimeWindows::of(Duration::from_millis(10))
            .with_offset(Duration::from_millis(3)),
        0,
    );
    let mut op = h.single();
    feed(&mut op, &[(1, 3, 1), (1, 12, 2), (1, 13, 4), (1, -1, 8)]);
    assert!(watermark(&mut op, 1).is_empty());
    assert_eq!(watermark(&mut op, 2), vec![(1, -7, 3, 1, 8)]);
    assert!(watermark(&mut op, 11).is_empty());
    assert_eq!(watermark(&mut op, 12), vec![(1, 3, 13, 2, 3)]);
    assert_eq!(watermark(&mut op, 22), vec![(1, 13, 23, 1, 4)]);
}

#[test]
fn sliding_windows_hold_each_record_in_size_over_slide_windows() {
    let h = Harness::new(
        SlidingEventTimeWindows::of(Duration::from_millis(300), Duration::from_millis(100)),
        0,
    );
    let mut op = h.single();
    let records = records();
    let mut out = feed(&mut op, &records);
    out.extend(watermark(&mut op, i64::MAX));
    let want = expected(&records, |ts| {
        let last = ts - ts.rem_euclid(100);
        (0..3)
            .map(|i| TimeWindow::new(last - i * 100, last - i * 100 + 300))
            .collect()
    });
    let total: u64 = out.iter().map(|o| o.3).sum();
    assert_eq!(total, 3 * records.len() as u64);
    assert_eq!(sorted(out), want);
}

#[test]
fn a_record_bridging_two_sessions_merges_them_and_their_timers() {
    let h = Harness::new(
        EventTimeSessionWindows::with_gap(Duration::from_millis(10)),
        0,
    );
    let mut op_inner = h.operator(0, 1, StateBackendConfig::Heap, None);
    {
        let op: &mut dyn Operator<Rec, Out> = &mut op_inner;
        let mut out = Vec::new();
        op.process_batch(
            &mut vec![(1, 0, 1), (1, 5, 2), (1, 25, 4), (2, 7, 100)],
            &mut out,
        )
        .expect("batch");
        assert!(out.is_empty());
    }
    // Sessions of key 1: [0, 15) and [25, 35); key 2: [7, 17).
    assert_eq!(op_inner.pending_timers(TimeDomain::EventTime), 3);
    {
        let op: &mut dyn Operator<Rec, Out> = &mut op_inner;
        let mut out = Vec::new();
        // [15, 25) touches both sessions of key 1.
        op.process_batch(&mut vec![(1, 15, 8)], &mut out)
            .expect("batch");
        assert!(out.is_empty());
    }
    assert_eq!(
        op_inner.pending_timers(TimeDomain::EventTime),
        2,
        "the timer of [0, 15) moved to the merged [0, 35)"
    );
    let op: &mut dyn Operator<Rec, Out> = &mut op_inner;
    let mut out = Vec::new();
    op.on_watermark(Watermark(20), &mut out).expect("watermark");
    assert_eq!(
        out,
        vec![(2, 7, 17, 1, 100)],
        "the merged session is still open"
    );
    out.clear();
    op.on_watermark(Watermark(34), &mut out).expect("watermark");
    assert_eq!(out, vec![(1, 0, 35, 4, 15)]);
}

#[test]
fn session_windows_of_a_key_stay_apart_when_the_gap_separates_them() {
    let h = Harness::new(
        EventTimeSessionWindows::with_gap(Duration::from_millis(10)),
        0,
    );
    let mut op = h.single();
    // [1, 11) merges with [0, 10) but not with [12, 22).
    feed(&mut op, &[(1, 0, 1), (1, 12, 2), (1, 1, 4)]);
    let out = watermark(&mut op, i64::MAX);
    assert_eq!(out, vec![(1, 0, 11, 2, 5), (1, 12, 22, 1, 2)]);
    // Windows that touch merge: [22, 32) joins [12, 22).
    let mut op = h.single();
    feed(&mut op, &[(1, 12, 2), (1, 22, 4)]);
    assert_eq!(watermark(&mut op, i64::MAX), vec![(1, 12, 32, 2, 6)]);
}

#[test]
fn allowed_lateness_refires_and_a_too_late_record_is_dropped_and_counted() {
    let h = Harness::new(TumblingEventTimeWindows::of(Duration::from_millis(10)), 5);
    let mut op = h.single();
    feed(&mut op, &[(1, 1, 1), (1, 2, 2)]);
    assert_eq!(watermark(&mut op, 9), vec![(1, 0, 10, 2, 3)]);
    assert_eq!(
        feed(&mut op, &[(1, 3, 4)]),
        vec![(1, 0, 10, 3, 7)],
        "a late record within the lateness fires the window again"
    );
    assert_eq!(h.dropped.load(Ordering::Relaxed), 0);
    assert!(watermark(&mut op, 13).is_empty());
    assert_eq!(feed(&mut op, &[(1, 4, 8)]), vec![(1, 0, 10, 4, 15)]);
    assert!(watermark(&mut op, 14).is_empty(), "clean-up emits nothing");
    assert!(feed(&mut op, &[(1, 5, 16), (2, 9, 1)]).is_empty());
    assert_eq!(h.dropped.load(Ordering::Relaxed), 2, "past end + lateness");
    assert_eq!(feed(&mut op, &[(1, 10, 32)]), Vec::<Out>::new());
    assert_eq!(watermark(&mut op, i64::MAX), vec![(1, 10, 20, 1, 32)]);
}

#[test]
fn without_lateness_a_record_behind_the_watermark_is_dropped() {
    let h = Harness::new(TumblingEventTimeWindows::of(Duration::from_millis(10)), 0);
    let mut op = h.single();
    watermark(&mut op, 9);
    assert!(feed(&mut op, &[(1, 9, 1)]).is_empty());
    assert_eq!(h.dropped.load(Ordering::Relaxed), 1);
    assert!(watermark(&mut op, i64::MAX).is_empty());
}

#[test]
fn the_end_of_input_fires_every_window() {
    let h = Harness::new(
        TumblingEventTimeWindows::of(Duration::from_millis(100)),
        1_000,
    );
    let mut op = h.single();
    let records = records();
    feed(&mut op, &records);
    let mut out = Vec::new();
    // The end of a bounded input as the runtime delivers it: `MAX`, then
    // `finish` (which fires nothing itself).
    op.on_watermark(flowstate_runtime::Watermark::MAX, &mut out)
        .expect("end of event time");
    op.finish(&mut out).expect("finish");
    let want = expected(&records, |ts| {
        let start = ts - ts.rem_euclid(100);
        vec![TimeWindow::new(start, start + 100)]
    });
    assert_eq!(sorted(out), want);
}

#[test]
fn processing_time_windows_fire_on_the_clock() {
    let h = Harness::new(
        TumblingProcessingTimeWindows::of(Duration::from_millis(10)),
        0,
    );
    h.clock.set_ms(1_003);
    let mut op = h.single();
    feed(&mut op, &[(1, -5, 1), (2, 999_999, 2)]);
    h.clock.set_ms(1_008);
    assert!(feed(&mut op, &[(1, 0, 4)]).is_empty());
    assert!(
        watermark(&mut op, i64::MAX).is_empty(),
        "event time does not fire them"
    );
    h.clock.set_ms(1_010);
    assert_eq!(
        sorted(feed(&mut op, &[(1, 0, 8)])),
        vec![(1, 1_000, 1_010, 2, 5), (2, 1_000, 1_010, 1, 2)],
        "the batch that sees the clock past 1009 fires first; its record opens the next window"
    );
    h.clock.set_ms(1_019);
    let mut out = Vec::new();
    // The end of a bounded input as the runtime delivers it: `MAX`, then
    // `finish` (which fires nothing itself).
    op.on_watermark(flowstate_runtime::Watermark::MAX, &mut out)
        .expect("end of event time");
    op.finish(&mut out).expect("finish");
    assert_eq!(out, vec![(1, 1_010, 1_020, 1, 8)]);
}

fn windows_survive_a_restore(from: StateBackendConfig, to: StateBackendConfig) {
    let h = Harness::new(
        SlidingEventTimeWindows::of(Duration::from_millis(200), Duration::from_millis(100)),
        50,
    );
    let records = records();
    let (first, second) = records.split_at(200);
    let mut op: Op = Box::new(h.operator(0, 1, from, None));
    let mut out = feed(&mut op, first);
    out.extend(watermark(&mut op, 300));
    let sections = savepoint_sections(op.as_mut());
    let mut fired_before = out.clone();
    let mut after = Vec::new();
    for index in 0..2 {
        let mut op: Op = Box::new(h.operator(index, 2, to.clone(), Some(&sections)));
        let mine: Vec<Rec> = second
            .iter()
            .copied()
            .filter(|r| (index == 0) == (flowstate_state::key_group_of(&r.0, 128) < 64))
            .collect();
        after.extend(feed(&mut op, &mine));
        after.extend(watermark(&mut op, i64::MAX));
    }
    // Without the restore, the same job fires the same windows.
    let mut op = h.single();
    let mut reference = feed(&mut op, first);
    reference.extend(watermark(&mut op, 300));
    reference.extend(feed(&mut op, second));
    reference.extend(watermark(&mut op, i64::MAX));
    fired_before.extend(after);
    assert_eq!(sorted(fired_before), sorted(reference));
}

#[test]
fn windows_restore_at_another_parallelism_into_the_serialising_backend() {
    windows_survive_a_restore(StateBackendConfig::Heap, memory_store());
}

#[test]
fn windows_restore_from_the_serialising_backend_into_heap() {
    windows_survive_a_restore(memory_store(), StateBackendConfig::Heap);
}

#[test]
fn a_process_window_gets_every_element() {
    let dropped = Arc::new(AtomicU64::new(0));
    let f: ProcessFn<u64, Rec, (u64, i64, Vec<i64>)> = Arc::new(|key, w, elements, out| {
        out.push((*key, w.start, elements.iter().map(|r| r.2).collect()));
        Ok(())
    });
    let function = WindowFunction {
        assigner: EventTimeSessionWindows::with_gap(Duration::from_millis(10)),
        timestamp: Arc::new(|r: &Rec| r.1),
        lateness: 0,
        dropped,
        late: None,
        contents: Elements { f, handle: None },
        windows: None,
        scratch: Vec::new(),
    };
    for backend in [StateBackendConfig::Heap, memory_store()] {
        let subtask = subtask(0, 1, backend, ManualClock::new(0), None);
        let mut op = KeyedProcessOperator::create::<(u64, i64, Vec<i64>)>(
            &subtask,
            KeySelector::new(|r: &Rec| r.0),
            function.clone(),
        )
        .expect("opens");
        let op: &mut dyn Operator<Rec, (u64, i64, Vec<i64>)> = &mut op;
        let mut out = Vec::new();
        op.process_batch(
            &mut vec![(1, 0, 1), (1, 30, 2), (1, 5, 3), (2, 1, 4), (1, 20, 5)],
            &mut out,
        )
        .expect("batch");
        op.on_watermark(Watermark(i64::MAX), &mut out)
            .expect("watermark");
        assert_eq!(
            out,
            vec![(2, 1, vec![4]), (1, 0, vec![1, 3]), (1, 20, vec![2, 5])],
            "key 2's [1, 11) fires at 10; key 1's [0, 15) at 14; 20 merged with 30"
        );
    }
}

#[test]
fn assigners_align_to_the_epoch() {
    let mut w = Vec::new();
    TumblingEventTimeWindows::of(Duration::from_millis(10)).assign(-3, &mut w);
    assert_eq!(w, [TimeWindow::new(-10, 0)]);
    w.clear();
    SlidingEventTimeWindows::of(Duration::from_millis(10), Duration::from_millis(4))
        .assign(9, &mut w);
    assert_eq!(
        w,
        [
            TimeWindow::new(8, 18),
            TimeWindow::new(4, 14),
            TimeWindow::new(0, 10)
        ]
    );
}
