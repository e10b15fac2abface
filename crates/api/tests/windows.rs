//! Windows and timers end to end: a source with event time, a keyed window,
//! run by the deterministic executor under several seeds.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flowstate::connectors::SequenceSource;
use flowstate::runtime::WatermarkStrategy;
use flowstate::{
    ExecutionConfig, FnResult, KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction,
    StreamEnvironment, TimeDomain, TumblingEventTimeWindows, WindowAggregateFunction,
};

/// `(key, timestamp, value)`.
type Rec = (u64, i64, i64);

const RECORDS: u64 = 2_000;

fn record(i: u64) -> Rec {
    (i % 7, i as i64 * 3, (i % 13) as i64)
}

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

fn source() -> SequenceSource<Rec> {
    SequenceSource::new(RECORDS, 4, record)
        .expect("source")
        .with_event_time(WatermarkStrategy::bounded_out_of_orderness(0, |r: &Rec| {
            r.1
        }))
}

#[test]
fn tumbling_windows_end_to_end_give_the_exact_count_and_sum() {
    let mut expected: BTreeMap<(u64, i64), (u64, i64)> = BTreeMap::new();
    for i in 0..RECORDS {
        let (key, ts, value) = record(i);
        let entry = expected.entry((key, ts - ts % 100)).or_default();
        entry.0 += 1;
        entry.1 += value;
    }
    let expected: Vec<(u64, i64, u64, i64)> = expected
        .into_iter()
        .map(|((k, s), (c, v))| (k, s, c, v))
        .collect();
    for seed in [1, 7, 42] {
        let mut config = ExecutionConfig::with_parallelism(2);
        config.batch_size = 50;
        let env = StreamEnvironment::new(config);
        let windowed = env
            .from_source("Source: Sequence", source())
            .key_by(|r: &Rec| r.0)
            .window_by(
                TumblingEventTimeWindows::of(Duration::from_millis(100)),
                |r| r.1,
            );
        let dropped = windowed.dropped_late_records();
        let out = windowed
            .aggregate_with(CountSum, |key, window, (count, sum)| {
                (*key, window.start, count, sum)
            })
            .collect();
        let run = env.deterministic(seed).expect("job builds").run();
        if let Err(e) = run {
            panic!("seed {seed}: the job failed: {e}");
        }
        let mut got = out.lock().expect("results").clone();
        got.sort();
        assert_eq!(got, expected, "seed {seed}");
        assert_eq!(dropped.load(Ordering::Relaxed), 0, "seed {seed}");
    }
}

/// Registers an event-time timer at each record's timestamp; a firing emits
/// `(timestamp, watermark)`.
#[derive(Clone)]
struct TimerAtTimestamp;

impl KeyedProcessFunction<u64, Rec, (i64, i64)> for TimerAtTimestamp {
    fn process(
        &mut self,
        record: Rec,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Vec<(i64, i64)>,
    ) -> FnResult {
        ctx.register_event_time_timer(record.1)
    }

    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(i64, i64)>,
    ) -> FnResult {
        assert_eq!(domain, TimeDomain::EventTime);
        out.push((timestamp, ctx.current_watermark()));
        Ok(())
    }
}

#[test]
fn watermarks_fire_event_time_timers_before_the_end_of_input() {
    // Small batches: a split's watermark grows batch by batch.
    let mut config = ExecutionConfig::with_parallelism(2);
    config.batch_size = 50;
    let env = StreamEnvironment::new(config);
    let out = env
        .from_source("Source: Sequence", source())
        .key_by(|r: &Rec| r.0)
        .process(TimerAtTimestamp)
        .collect();
    env.deterministic(3)
        .expect("job builds")
        .run()
        .expect("job succeeds");
    let fired = out.lock().expect("results").clone();
    assert_eq!(
        fired.len() as u64,
        RECORDS,
        "one timer per (key, timestamp)"
    );
    for (timestamp, watermark) in &fired {
        assert!(
            timestamp <= watermark,
            "{timestamp} fired at watermark {watermark}"
        );
    }
    assert!(
        fired.iter().any(|(_, watermark)| *watermark < i64::MAX),
        "every timer fired only at the end of input: watermarks did not reach the keyed operator"
    );
}

/// Orders wait for a payment until 100 ms of event time after them: an
/// event-time timer per order; a payment deletes it.
#[derive(Clone)]
struct PaymentTimeout;

impl KeyedCoProcessFunction<u64, Rec, Rec, (u64, &'static str)> for PaymentTimeout {
    fn process_first(
        &mut self,
        order: Rec,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Vec<(u64, &'static str)>,
    ) -> FnResult {
        ctx.register_event_time_timer(order.1 + 100)
    }

    fn process_second(
        &mut self,
        payment: Rec,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, &'static str)>,
    ) -> FnResult {
        // Order `k` was at `k * 10`; its timer is at `k * 10 + 100`.
        ctx.delete_event_time_timer(payment.0 as i64 * 10 + 100)?;
        out.push((payment.0, "paid"));
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: i64,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, &'static str)>,
    ) -> FnResult {
        out.push((*ctx.key(), "timed out"));
        Ok(())
    }
}

#[test]
fn a_keyed_co_process_function_gets_its_timers() {
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(2));
    let orders = env.from_collection((0..20u64).map(|k| (k, k as i64 * 10, 0)).collect());
    let payments = env.from_collection(
        (0..20u64)
            .filter(|k| k % 3 == 0)
            .map(|k| (k, 0, 0))
            .collect(),
    );
    let out = orders
        .key_by(|r: &Rec| r.0)
        .connect(&payments.key_by(|r: &Rec| r.0))
        .process(PaymentTimeout)
        .collect();
    env.deterministic(5)
        .expect("job builds")
        .run()
        .expect("job succeeds");
    let mut got = out.lock().expect("results").clone();
    got.sort();
    // Payments may arrive before their order; then the order's timer stays.
    for k in 0..20u64 {
        let events: Vec<&str> = got
            .iter()
            .filter(|(key, _)| *key == k)
            .map(|e| e.1)
            .collect();
        if k % 3 == 0 {
            assert!(events.contains(&"paid"), "{k}: {events:?}");
        } else {
            assert_eq!(events, ["timed out"], "{k}");
        }
    }
}
