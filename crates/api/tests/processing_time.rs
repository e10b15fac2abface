//! Processing time on a quiet stream (the idle hook): windows and timers fire
//! when the job's clock passes them, with no record or watermark after them,
//! and never before.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate::runtime::RunState;
use flowstate::state::ManualClock;
use flowstate::{
    Data, DataStream, ExecutionConfig, FnResult, KeyedCoProcessFunction, KeyedContext,
    KeyedProcessFunction, Sink, SinkWriter, Source, SourcePoll, SourceReader, StreamEnvironment,
    SubtaskInfo, TimeDomain, TumblingProcessingTimeWindows, UserError, WindowAggregateFunction,
};

/// `(key, value)`.
type Rec = (u64, i64);

/// A source whose first instance emits what the test feeds it, then
/// nothing (`Pending`) for good: the stream goes quiet, it never ends.
#[derive(Clone, Default)]
struct Feed(Arc<Mutex<VecDeque<Rec>>>);

impl Feed {
    fn push(&self, records: impl IntoIterator<Item = Rec>) {
        self.0.lock().unwrap().extend(records);
    }
}

struct FeedReader(Option<Feed>);

impl Source<Rec> for Feed {
    fn create_reader(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Box<dyn SourceReader<Rec>>, UserError> {
        Ok(Box::new(FeedReader(
            (subtask.index == 0).then(|| self.clone()),
        )))
    }
}

impl SourceReader<Rec> for FeedReader {
    fn poll(
        &mut self,
        out: &mut Vec<Rec>,
        max: usize,
        _now: Instant,
    ) -> Result<SourcePoll, UserError> {
        let before = out.len();
        if let Some(feed) = &self.0 {
            let mut queue = feed.0.lock().unwrap();
            while out.len() - before < max {
                let Some(record) = queue.pop_front() else {
                    break;
                };
                out.push(record);
            }
        }
        Ok(if out.len() > before {
            SourcePoll::Ready
        } else {
            SourcePoll::Pending { wake_at: None }
        })
    }
}

/// A sink that shows every record at once (the collect sink publishes
/// only at the end of the input, which a quiet stream never reaches).
struct Live<T>(Arc<Mutex<Vec<T>>>);

impl<T: Data> Sink<T> for Live<T> {
    fn create_writer(&self, _: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(Live(Arc::clone(&self.0))))
    }
}

impl<T: Data> SinkWriter<T> for Live<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        self.0.lock().unwrap().append(batch);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

fn live<T: Data>(stream: &DataStream<T>) -> Arc<Mutex<Vec<T>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    stream.sink_to("Sink: Live", Live(Arc::clone(&out)));
    out
}

#[derive(Clone)]
struct CountSum;

impl WindowAggregateFunction<Rec, (u64, i64), (u64, i64)> for CountSum {
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, i64), input: Rec) {
        acc.0 += 1;
        acc.1 += input.1;
    }
    fn merge(&self, acc: &mut (u64, i64), other: (u64, i64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
}

/// `(key, window start, count, sum)`.
type WindowResult = (u64, i64, u64, i64);

fn expected(records: impl IntoIterator<Item = Rec>, start: i64) -> Vec<WindowResult> {
    let mut per_key: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
    for (key, value) in records {
        let entry = per_key.entry(key).or_default();
        entry.0 += 1;
        entry.1 += value;
    }
    per_key
        .into_iter()
        .map(|(key, (count, sum))| (key, start, count, sum))
        .collect()
}

fn taken<T: Ord>(out: &Mutex<Vec<T>>) -> Vec<T> {
    let mut got = std::mem::take(&mut *out.lock().unwrap());
    got.sort();
    got
}

fn windowed_job(
    clock: Option<Arc<ManualClock>>,
    size_ms: u64,
) -> (StreamEnvironment, Feed, Arc<Mutex<Vec<WindowResult>>>) {
    let mut config = ExecutionConfig::with_parallelism(2);
    config.batch_size = 4;
    if let Some(clock) = clock {
        config.clock = clock;
    }
    let env = StreamEnvironment::new(config);
    let feed = Feed::default();
    let windows = env
        .from_source("Source: Feed", feed.clone())
        .key_by(|r: &Rec| r.0)
        .window_by(
            TumblingProcessingTimeWindows::of(Duration::from_millis(size_ms)),
            |_| 0,
        )
        .aggregate_with(CountSum, |key, window, (count, sum)| {
            (*key, window.start, count, sum)
        });
    let out = live(&windows);
    (env, feed, out)
}

#[test]
fn a_processing_time_window_on_a_quiet_stream_fires_when_the_clock_passes_its_end() {
    for seed in [1, 7, 42] {
        let clock = ManualClock::new(1_000);
        let (env, feed, out) = windowed_job(Some(clock.clone()), 100);
        let mut executor = env.deterministic(seed).expect("job builds");
        let first: Vec<Rec> = (0..20).map(|i| (i % 3, i as i64)).collect();
        feed.push(first.clone());
        // Every record is in, then the stream is quiet: nothing more comes.
        let state = executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(state, RunState::Quiescent, "seed {seed}");
        assert_eq!(
            taken(&out),
            vec![],
            "seed {seed}: nothing before the window's end"
        );
        // The window [1000, 1100) fires at 1099 on the clock, not before.
        clock.set_ms(1_098);
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(taken(&out), vec![], "seed {seed}: 1098 is before the end");
        clock.set_ms(1_099);
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(taken(&out), expected(first, 1_000), "seed {seed}");

        // Later records go to a later window, which fires on its own.
        clock.set_ms(1_150);
        let second: Vec<Rec> = (0..7).map(|i| (i % 4, 100 + i as i64)).collect();
        feed.push(second.clone());
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(taken(&out), vec![], "seed {seed}");
        clock.set_ms(5_000);
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(taken(&out), expected(second, 1_100), "seed {seed}");
        // Each window fired once: nothing is left to fire.
        clock.set_ms(50_000);
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(taken(&out), vec![], "seed {seed}");
    }
}

/// On every record, a processing-time timer 500 ms later for its key; the
/// timer emits `(key, time)`.
#[derive(Clone)]
struct Remind;

impl KeyedProcessFunction<u64, Rec, (u64, i64)> for Remind {
    fn process(
        &mut self,
        _r: Rec,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Vec<(u64, i64)>,
    ) -> FnResult {
        let at = ctx.current_processing_time() + 500;
        ctx.register_processing_time_timer(at)
    }
    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, i64)>,
    ) -> FnResult {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        assert!(ctx.current_processing_time() >= timestamp, "fired early");
        out.push((*ctx.key(), timestamp));
        Ok(())
    }
}

impl KeyedCoProcessFunction<u64, Rec, Rec, (u64, i64)> for Remind {
    fn process_first(
        &mut self,
        r: Rec,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, i64)>,
    ) -> FnResult {
        KeyedProcessFunction::process(self, r, ctx, out)
    }
    fn process_second(
        &mut self,
        r: Rec,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, i64)>,
    ) -> FnResult {
        KeyedProcessFunction::process(self, r, ctx, out)
    }
    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, i64)>,
    ) -> FnResult {
        KeyedProcessFunction::on_timer(self, timestamp, domain, ctx, out)
    }
}

#[test]
fn keyed_processing_time_timers_fire_on_an_idle_task() {
    for (seed, two_inputs) in [(3, false), (11, false), (3, true), (11, true)] {
        let clock = ManualClock::new(0);
        let mut config = ExecutionConfig::with_parallelism(2);
        config.clock = clock.clone();
        let env = StreamEnvironment::new(config);
        let feed = Feed::default();
        let other = Feed::default();
        let first = env
            .from_source("Source: Feed", feed.clone())
            .key_by(|r: &Rec| r.0);
        let out = if two_inputs {
            let second = env
                .from_source("Source: Other", other.clone())
                .key_by(|r: &Rec| r.0);
            live(&first.connect(&second).process(Remind))
        } else {
            live(&first.process(Remind))
        };
        let mut executor = env.deterministic(seed).expect("job builds");
        feed.push((0..10).map(|i| (i % 5, 0)));
        other.push((0..3).map(|i| (10 + i, 0)));
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        clock.set_ms(499);
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(taken(&out), vec![], "seed {seed}: not due before 500");
        clock.set_ms(500);
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        let keys: Vec<u64> = if two_inputs {
            (0..5).chain(10..13).collect()
        } else {
            (0..5).collect()
        };
        let want: Vec<(u64, i64)> = keys.into_iter().map(|k| (k, 500)).collect();
        assert_eq!(taken(&out), want, "seed {seed}, two inputs: {two_inputs}");
        clock.set_ms(10_000);
        executor
            .run_until_quiescent(&|_| false)
            .expect("no failure");
        assert_eq!(taken(&out), vec![], "seed {seed}: each timer fires once");
    }
}

/// Worker threads and the system clock: small windows over records that
/// all arrive at once, then a quiet source. Every record is counted in some
/// window without any input after it (which window depends on timing, so
/// only the totals are checked).
#[test]
fn windows_fire_on_a_quiet_stream_with_worker_threads_and_the_system_clock() {
    let (env, feed, out) = windowed_job(None, 20);
    let records: Vec<Rec> = (0..30).map(|i| (i % 4, i as i64)).collect();
    feed.push(records.clone());
    let job = env.start().expect("job starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let totals = || {
        let got = out.lock().unwrap();
        (
            got.iter().map(|r| r.2).sum::<u64>(),
            got.iter().map(|r| r.3).sum::<i64>(),
        )
    };
    while totals().0 < 30 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    job.cancel();
    let _ = job.join();
    let want_sum: i64 = records.iter().map(|r| r.1).sum();
    assert_eq!(totals(), (30, want_sum), "every record fired in a window");
}
