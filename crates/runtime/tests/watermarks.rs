//! Watermarks through the runtime: per-channel minimum, two inputs, ended
//! channels, order with data, alignment, sources (per split, idleness, end
//! of input) and operators that generate watermarks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flowstate_runtime::channel::{ChannelReceiver, ChannelSender, Signal, channel};
use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::exchange::{ExchangeOutput, Router};
use flowstate_runtime::executor::RunState;
use flowstate_runtime::message::Message;
use flowstate_runtime::pipeline::{OperatorPart, Pipeline, StageIdentity};
use flowstate_runtime::task::{OneInputTask, Step, Task, TwoInputTask};
use flowstate_runtime::{
    Barrier, DeterministicExecutor, ExecutionConfig, JobGraph, Operator, Partitioning, Source,
    SourcePoll, SourceReader, SplitWatermarks, SubtaskInfo, TaskError, TimestampsAndWatermarks,
    TwoInputOperator, UserError, Watermark, WatermarkStatus, WatermarkStrategy,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Data(Vec<u64>),
    Wm(i64),
    Idle,
    Active,
    End,
    Finish,
}

fn status_event(status: WatermarkStatus) -> Ev {
    match status {
        WatermarkStatus::Idle => Ev::Idle,
        WatermarkStatus::Active => Ev::Active,
    }
}

type Log = Arc<Mutex<Vec<Ev>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn events(log: &Log) -> Vec<Ev> {
    log.lock().unwrap().clone()
}

/// The end of a pipeline that records what reaches it.
struct Recorder(Log);

impl Pipeline<u64> for Recorder {
    fn push(&mut self, batch: &mut Vec<u64>) -> Result<(), TaskError> {
        self.0.lock().unwrap().push(Ev::Data(std::mem::take(batch)));
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.0.lock().unwrap().push(Ev::End);
        Ok(())
    }
    fn flush(&mut self, _partial: bool) -> Result<bool, TaskError> {
        Ok(true)
    }
    fn snapshot(&mut self, _b: Barrier, _p: &mut Vec<OperatorPart>) -> Result<(), TaskError> {
        Ok(())
    }
    fn barrier(&mut self, _barrier: Barrier) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        self.0.lock().unwrap().push(Ev::Wm(watermark.0));
        Ok(())
    }
    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        self.0.lock().unwrap().push(status_event(status));
        Ok(())
    }
    fn notify_complete(&mut self, _id: u64) -> Result<(), TaskError> {
        Ok(())
    }
    fn notify_aborted(&mut self, _id: u64) -> Result<(), TaskError> {
        Ok(())
    }
}

fn pair() -> (ChannelSender<u64>, ChannelReceiver<u64>) {
    channel(64, Signal::new(), Signal::new())
}

fn send(tx: &ChannelSender<u64>, message: Message<u64>) {
    assert!(tx.try_send(message).is_ok(), "channel has room");
}

fn wm(w: i64) -> Message<u64> {
    Message::Watermark(Watermark(w))
}

fn run(task: &mut dyn Task) {
    while task.step().unwrap() == Step::Progress {}
}

fn watermarks(log: &Log) -> Vec<i64> {
    events(log)
        .into_iter()
        .filter_map(|e| match e {
            Ev::Wm(w) => Some(w),
            _ => None,
        })
        .collect()
}

#[test]
fn task_watermark_is_the_minimum_over_its_channels() {
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let out = log();
    let mut task = OneInputTask::new(
        "t".into(),
        vec![rx0, rx1],
        Box::new(Recorder(out.clone())),
        None,
    );
    // One channel ahead, the other has said nothing: held at MIN.
    send(&tx0, wm(100));
    run(&mut task);
    assert_eq!(watermarks(&out), Vec::<i64>::new());
    send(&tx1, wm(50));
    run(&mut task);
    assert_eq!(watermarks(&out), vec![50]);
    send(&tx1, wm(200));
    run(&mut task);
    assert_eq!(watermarks(&out), vec![50, 100]);
    // A smaller watermark is ignored (channel 1 stays at 200).
    send(&tx1, wm(150));
    send(&tx0, wm(300));
    run(&mut task);
    assert_eq!(watermarks(&out), vec![50, 100, 200]);
    // A channel that ends without `MAX` (a stop with a savepoint: its
    // records after the savepoint come after the resume) keeps holding the
    // minimum at its last watermark.
    send(&tx1, Message::EndOfInput);
    run(&mut task);
    assert_eq!(watermarks(&out), vec![50, 100, 200]);
    send(&tx0, wm(i64::MAX));
    send(&tx0, Message::EndOfInput);
    run(&mut task);
    assert_eq!(watermarks(&out), vec![50, 100, 200]);
    assert_eq!(events(&out).last(), Some(&Ev::End));
}

#[test]
fn channels_that_end_with_their_input_carry_max_and_hold_nothing_back() {
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let out = log();
    let mut task = OneInputTask::new(
        "t".into(),
        vec![rx0, rx1],
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&tx0, wm(100));
    send(&tx1, wm(i64::MAX));
    send(&tx1, Message::EndOfInput);
    run(&mut task);
    assert_eq!(watermarks(&out), vec![100]);
    send(&tx0, wm(i64::MAX));
    send(&tx0, Message::EndOfInput);
    run(&mut task);
    assert_eq!(watermarks(&out), vec![100, i64::MAX]);
    assert_eq!(events(&out).last(), Some(&Ev::End));
}

#[test]
fn watermarks_do_not_overtake_data_in_a_task() {
    let (tx, rx) = pair();
    let out = log();
    let mut task = OneInputTask::new("t".into(), vec![rx], Box::new(Recorder(out.clone())), None);
    send(&tx, Message::Batch(vec![1, 2]));
    send(&tx, wm(10));
    send(&tx, Message::Batch(vec![3]));
    send(&tx, wm(20));
    send(&tx, wm(i64::MAX));
    send(&tx, Message::EndOfInput);
    run(&mut task);
    assert_eq!(
        events(&out),
        vec![
            Ev::Data(vec![1, 2]),
            Ev::Wm(10),
            Ev::Data(vec![3]),
            Ev::Wm(20),
            Ev::Wm(i64::MAX),
            Ev::End
        ]
    );
}

fn drain(rx: &ChannelReceiver<u64>) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = rx.try_recv() {
        out.push(match m {
            Message::Batch(b) => Ev::Data(b),
            Message::Watermark(w) => Ev::Wm(w.0),
            Message::WatermarkStatus(s) => status_event(s),
            Message::EndOfInput => Ev::End,
            Message::Barrier(_) => continue,
        });
    }
    out
}

/// An exchange sends a watermark to every channel, behind the records
/// routed there before it; a watermark waits for a partly filled buffer
/// instead of cutting it (batches stay whole).
#[test]
fn an_exchange_broadcasts_watermarks_behind_the_data() {
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let mut exchange = ExchangeOutput::new("t", Router::Rebalance { next: 0 }, vec![tx0, tx1], 4);
    exchange.push(&mut vec![1, 2, 3]).unwrap(); // channel 0, partly filled
    exchange.watermark(Watermark(5)).unwrap();
    // Channel 1 had nothing pending: the watermark is out at once.
    assert_eq!(drain(&rx1), vec![Ev::Wm(5)]);
    // Channel 0's waits behind its buffer.
    assert_eq!(drain(&rx0), vec![]);
    exchange.push(&mut vec![4, 5]).unwrap(); // channel 1
    exchange.push(&mut vec![6, 7, 8, 9]).unwrap(); // channel 0: full, cut
    exchange.watermark(Watermark(7)).unwrap();
    assert_eq!(
        drain(&rx0),
        vec![Ev::Data(vec![1, 2, 3, 6, 7, 8, 9]), Ev::Wm(5), Ev::Wm(7)]
    );
    exchange.flush(true).unwrap();
    assert_eq!(drain(&rx1), vec![Ev::Data(vec![4, 5]), Ev::Wm(7)]);
    exchange.end_of_input().unwrap();
    assert_eq!(drain(&rx0), vec![Ev::End]);
}

/// A partly filled batch goes out once its first record waited the buffer
/// timeout, at the next push (the task keeps getting input, so the idle
/// flush never comes); a full batch goes at once and starts no wait.
#[test]
fn an_exchange_sends_a_partial_batch_once_it_waited_the_buffer_timeout() {
    use flowstate_runtime::exchange::Batching;
    let (tx0, rx0) = pair();
    let clock = flowstate_state::ManualClock::new(1_000);
    let batching = Batching {
        size: 4,
        timeout_ms: Some(5),
        clock: clock.clone(),
    };
    let mut exchange = ExchangeOutput::with_batching("t", Router::Forward, vec![tx0], batching);
    exchange.push(&mut vec![1]).unwrap(); // waits from 1000
    clock.advance_ms(4);
    exchange.push(&mut vec![2]).unwrap();
    assert_eq!(drain(&rx0), vec![], "4 ms: still waiting for more");
    clock.advance_ms(1);
    exchange.push(&mut vec![3]).unwrap();
    assert_eq!(drain(&rx0), vec![Ev::Data(vec![1, 2, 3])], "5 ms: cut");
    exchange.push(&mut vec![4, 5, 6, 7]).unwrap(); // full: out at once
    assert_eq!(drain(&rx0), vec![Ev::Data(vec![4, 5, 6, 7])]);
    clock.advance_ms(100);
    exchange.push(&mut vec![8]).unwrap(); // a new wait starts now, not at the last cut
    assert_eq!(drain(&rx0), vec![]);
    clock.advance_ms(5);
    exchange.push(&mut vec![9]).unwrap();
    assert_eq!(drain(&rx0), vec![Ev::Data(vec![8, 9])]);
}

/// A source that takes `pause` of real time per record (one record per poll).
struct Dawdling {
    count: u64,
    pause: std::time::Duration,
}

struct DawdlingReader {
    next: u64,
    count: u64,
    pause: std::time::Duration,
}

impl Source<u64> for Dawdling {
    fn create_reader(&self, _: &SubtaskInfo) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(DawdlingReader {
            next: 0,
            count: self.count,
            pause: self.pause,
        }))
    }
}

impl SourceReader<u64> for DawdlingReader {
    fn poll(&mut self, out: &mut Vec<u64>, _: usize, _: Instant) -> Result<SourcePoll, UserError> {
        if self.next == self.count {
            return Ok(SourcePoll::Finished);
        }
        std::thread::sleep(self.pause);
        out.push(self.next);
        self.next += 1;
        Ok(SourcePoll::Ready)
    }
}

/// The sizes of the batches a sink was handed.
struct BatchSizes(Arc<Mutex<Vec<usize>>>);

impl flowstate_runtime::Sink<u64> for BatchSizes {
    fn create_writer(
        &self,
        _: &SubtaskInfo,
    ) -> Result<Box<dyn flowstate_runtime::SinkWriter<u64>>, UserError> {
        Ok(Box::new(BatchSizes(Arc::clone(&self.0))))
    }
}

impl flowstate_runtime::SinkWriter<u64> for BatchSizes {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        self.0.lock().unwrap().push(batch.len());
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

/// A deterministic run on the system clock must not depend on the machine's
/// speed: the buffer timeout is off there, so a slow source's records still
/// travel in one batch (each record took longer than the timeout; with the
/// timeout on, each went alone, and a seed's output order changed from run
/// to run: `same_seed_gives_identical_results` failed one run in six).
#[test]
fn the_deterministic_executor_on_the_system_clock_cuts_no_batch_by_time() {
    let mut graph = JobGraph::new();
    let source = graph.add_source(
        "Source: Dawdling",
        Arc::new(Dawdling {
            count: 5,
            pause: std::time::Duration::from_millis(
                2 * flowstate_runtime::config::BUFFER_TIMEOUT_MS as u64,
            ),
        }),
    );
    let sizes = Arc::new(Mutex::new(Vec::new()));
    graph.add_sink(
        "Sink: Sizes",
        (source, Partitioning::rebalance()),
        Arc::new(BatchSizes(Arc::clone(&sizes))),
    );
    let mut executor = DeterministicExecutor::new(graph, &ExecutionConfig::default(), 7).unwrap();
    executor.run().unwrap();
    assert_eq!(*sizes.lock().unwrap(), vec![5]);
}

/// Exactly-once alignment: a watermark behind a barrier on a blocked channel
/// waits like data.
#[test]
fn watermarks_wait_on_a_channel_blocked_for_alignment() {
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let out = log();
    let mut task = OneInputTask::new(
        "t".into(),
        vec![rx0, rx1],
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&tx0, wm(50));
    send(&tx0, Message::Barrier(Barrier::checkpoint(1)));
    send(&tx0, wm(500));
    send(&tx0, Message::Batch(vec![7]));
    send(&tx1, wm(300));
    run(&mut task);
    // Channel 0 is blocked after its barrier: its 500 is not read yet.
    assert_eq!(events(&out), vec![Ev::Wm(50)]);
    send(&tx1, Message::Barrier(Barrier::checkpoint(1)));
    run(&mut task);
    assert_eq!(
        events(&out),
        vec![Ev::Wm(50), Ev::Wm(300), Ev::Data(vec![7])]
    );
}

/// Records what a two-input operator hears; on a watermark it emits the
/// watermark as a record (which must go downstream before the watermark).
struct TwoRecorder(Log);

impl TwoInputOperator<u64, u64, u64> for TwoRecorder {
    fn process_batch1(
        &mut self,
        input: &mut Vec<u64>,
        out: &mut Vec<u64>,
    ) -> Result<(), UserError> {
        out.append(input);
        Ok(())
    }
    fn process_batch2(
        &mut self,
        input: &mut Vec<u64>,
        out: &mut Vec<u64>,
    ) -> Result<(), UserError> {
        out.append(input);
        Ok(())
    }
    fn on_watermark(&mut self, w: Watermark, out: &mut Vec<u64>) -> Result<(), UserError> {
        self.0.lock().unwrap().push(Ev::Wm(w.0));
        out.push(w.0 as u64);
        Ok(())
    }
    fn finish(&mut self, _out: &mut Vec<u64>) -> Result<(), UserError> {
        self.0.lock().unwrap().push(Ev::Finish);
        Ok(())
    }
}

#[test]
fn two_input_watermark_is_the_minimum_over_both_inputs() {
    let (ta, ra) = pair();
    let (tb, rb) = pair();
    let heard = log();
    let out = log();
    let id = StageIdentity {
        name: "two".into(),
        uid: "two".into(),
        subtask: 0,
    };
    let mut task = TwoInputTask::new(
        "two".into(),
        id,
        vec![ra],
        vec![rb],
        Box::new(TwoRecorder(heard.clone())),
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&ta, wm(100));
    run(&mut task);
    assert!(events(&heard).is_empty());
    send(&tb, wm(40));
    run(&mut task);
    send(&tb, wm(400));
    run(&mut task);
    assert_eq!(watermarks(&heard), vec![40, 100]);
    // The first input ends with its input (`MAX` first): the second alone
    // counts.
    send(&ta, wm(i64::MAX));
    send(&ta, Message::EndOfInput);
    run(&mut task);
    assert_eq!(watermarks(&heard), vec![40, 100, 400]);
    send(&tb, wm(i64::MAX));
    send(&tb, Message::EndOfInput);
    run(&mut task);
    assert_eq!(
        events(&heard),
        vec![
            Ev::Wm(40),
            Ev::Wm(100),
            Ev::Wm(400),
            Ev::Wm(i64::MAX),
            Ev::Finish
        ]
    );
    // The operator's output goes before the watermark it reacted to.
    assert_eq!(
        events(&out),
        vec![
            Ev::Data(vec![40]),
            Ev::Wm(40),
            Ev::Data(vec![100]),
            Ev::Wm(100),
            Ev::Data(vec![400]),
            Ev::Wm(400),
            Ev::Data(vec![i64::MAX as u64]),
            Ev::Wm(i64::MAX),
            Ev::End
        ]
    );
}

// ---------------------------------------------------------------------------
// Whole jobs on the seeded executor
// ---------------------------------------------------------------------------

/// A source of `0..n` (instance i: `i, i + p, ...`; every instance has the
/// splits `0..splits`, record v in split `v % splits`), with per-split event
/// time `ts(v)` when given a strategy. With `hold`, a split never produces
/// and the reader waits (Pending) after its records until `release`.
struct TestSource {
    n: u64,
    splits: u64,
    strategy: Option<WatermarkStrategy<u64>>,
    hold_split: Option<u64>,
    release: Arc<AtomicBool>,
}

struct TestReader {
    next: u64,
    step: u64,
    n: u64,
    splits: u64,
    watermarks: Option<SplitWatermarks<u64, u64>>,
    hold_split: Option<u64>,
    release: Arc<AtomicBool>,
}

impl Source<u64> for TestSource {
    fn create_reader(&self, s: &SubtaskInfo) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        let watermarks = self.strategy.clone().map(|strategy| {
            let mut w = SplitWatermarks::new(strategy, Arc::clone(&s.clock));
            for split in 0..self.splits {
                w.add_split(&split);
            }
            w
        });
        Ok(Box::new(TestReader {
            next: u64::from(s.index),
            step: u64::from(s.parallelism),
            n: self.n,
            splits: self.splits,
            watermarks,
            hold_split: self.hold_split,
            release: Arc::clone(&self.release),
        }))
    }
}

impl SourceReader<u64> for TestReader {
    fn poll(
        &mut self,
        out: &mut Vec<u64>,
        max: usize,
        _now: Instant,
    ) -> Result<SourcePoll, UserError> {
        if self.next >= self.n {
            if let Some(w) = self.watermarks.as_mut() {
                for split in 0..self.splits {
                    if Some(split) != self.hold_split {
                        w.finish_split(&split);
                    }
                }
            }
            if self.hold_split.is_some() && !self.release.load(Ordering::SeqCst) {
                return Ok(SourcePoll::Pending { wake_at: None });
            }
            return Ok(SourcePoll::Finished);
        }
        for _ in 0..max.min(3) {
            if self.next >= self.n {
                break;
            }
            let v = self.next;
            self.next += self.step;
            let split = v % self.splits;
            if Some(split) == self.hold_split {
                continue;
            }
            out.push(v);
            if let Some(w) = self.watermarks.as_mut() {
                w.on_batch(&split, &[v]);
            }
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self, _b: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        Ok(Vec::new())
    }

    fn watermark(&mut self) -> Option<Watermark> {
        self.watermarks.as_mut()?.current()
    }
}

/// Records per instance what an operator hears, and checks that no record
/// is late (its timestamp at or before the watermark already heard).
struct Checker {
    log: Log,
    ts: fn(u64) -> i64,
    current: Watermark,
}

impl Operator<u64, u64> for Checker {
    fn process_batch(&mut self, input: &mut Vec<u64>, out: &mut Vec<u64>) -> Result<(), UserError> {
        for &v in input.iter() {
            if (self.ts)(v) <= self.current.0 {
                return Err(format!("record {v} late at {:?}", self.current).into());
            }
        }
        self.log.lock().unwrap().push(Ev::Data(input.clone()));
        out.append(input);
        Ok(())
    }
    fn on_watermark(&mut self, w: Watermark, _out: &mut Vec<u64>) -> Result<(), UserError> {
        if w <= self.current {
            return Err(format!("watermark {w:?} after {:?}", self.current).into());
        }
        self.current = w;
        self.log.lock().unwrap().push(Ev::Wm(w.0));
        Ok(())
    }
    fn finish(&mut self, _out: &mut Vec<u64>) -> Result<(), UserError> {
        self.log.lock().unwrap().push(Ev::Finish);
        Ok(())
    }
}

fn checker(
    logs: &Arc<Mutex<Vec<Log>>>,
    ts: fn(u64) -> i64,
) -> flowstate_runtime::graph::OperatorFactory<u64, u64> {
    let logs = Arc::clone(logs);
    Box::new(move |_s: &SubtaskInfo| {
        let log = log();
        logs.lock().unwrap().push(Arc::clone(&log));
        Ok(Box::new(Checker {
            log,
            ts,
            current: Watermark::MIN,
        }) as Box<dyn Operator<u64, u64>>)
    })
}

fn config(parallelism: u32) -> ExecutionConfig {
    ExecutionConfig {
        batch_size: 4,
        channel_capacity: 2,
        ..ExecutionConfig::with_parallelism(parallelism)
    }
}

fn source(n: u64, splits: u64, strategy: Option<WatermarkStrategy<u64>>) -> TestSource {
    TestSource {
        n,
        splits,
        strategy,
        hold_split: None,
        release: Arc::new(AtomicBool::new(false)),
    }
}

/// Event time through chains and exchanges: every instance hears growing
/// watermarks, never a record at or before one it heard (watermarks never
/// overtake data, through a forward chain, a rebalance and a hash exchange),
/// and `MAX` before `finish`.
#[test]
fn event_time_through_a_job_ends_with_max_before_finish() {
    fn ts(v: u64) -> i64 {
        1_000 + v as i64
    }
    for seed in 0..8 {
        let chained = Arc::new(Mutex::new(Vec::new()));
        let rebalanced = Arc::new(Mutex::new(Vec::new()));
        let hashed = Arc::new(Mutex::new(Vec::new()));
        let mut graph = JobGraph::new();
        let strategy = WatermarkStrategy::monotonous(|v: &u64| ts(*v));
        let src = graph.add_source("src", Arc::new(source(400, 4, Some(strategy))));
        let a = graph.add_operator(
            "chained",
            vec![(src, Partitioning::Forward)],
            checker(&chained, ts),
        );
        let b = graph.add_operator(
            "rebalanced",
            vec![(a, Partitioning::rebalance())],
            checker(&rebalanced, ts),
        );
        let key = flowstate_runtime::KeyGroupFn::new(|v: &u64| (*v % 128) as _);
        graph.add_operator(
            "hashed",
            vec![(b, Partitioning::hash(key))],
            checker(&hashed, ts),
        );
        let mut executor = DeterministicExecutor::new(graph, &config(3), seed).unwrap();
        executor.run().unwrap();
        for logs in [&chained, &rebalanced, &hashed] {
            let logs = logs.lock().unwrap();
            assert_eq!(logs.len(), 3);
            for log in logs.iter() {
                let events = events(log);
                let n = events.len();
                assert_eq!(
                    events[n - 2..],
                    [Ev::Wm(i64::MAX), Ev::Finish],
                    "seed {seed}"
                );
                // Event time advanced while the records flowed.
                assert!(watermarks(log).len() > 2, "seed {seed}: {events:?}");
            }
        }
        let metrics = executor.metrics().watermarks();
        assert!(
            metrics.iter().all(|(_, w)| *w == Watermark::MAX),
            "{metrics:?}"
        );
    }
}

/// A job without event time still ends event time: `MAX` before `finish`.
#[test]
fn a_source_without_event_time_ends_with_max() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut graph = JobGraph::new();
    let src = graph.add_source("src", Arc::new(source(50, 1, None)));
    graph.add_operator(
        "op",
        vec![(src, Partitioning::rebalance())],
        checker(&logs, |_| i64::MAX),
    );
    DeterministicExecutor::new(graph, &config(2), 7)
        .unwrap()
        .run()
        .unwrap();
    for log in logs.lock().unwrap().iter() {
        let w = watermarks(log);
        assert_eq!(w, vec![i64::MAX]);
        assert_eq!(events(log).last(), Some(&Ev::Finish));
    }
}

/// An operator that generates watermarks replaces upstream's: the source's
/// (a million ahead) never reaches the operator behind it; only `MAX` does.
#[test]
fn an_assigner_replaces_upstream_watermarks() {
    fn ts(v: u64) -> i64 {
        v as i64
    }
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut graph = JobGraph::new();
    let upstream = WatermarkStrategy::monotonous(|v: &u64| 1_000_000 + *v as i64);
    let src = graph.add_source("src", Arc::new(source(200, 2, Some(upstream))));
    let assign = graph.add_operator(
        "assign",
        vec![(src, Partitioning::Forward)],
        Box::new(|_s: &SubtaskInfo| {
            Ok(Box::new(TimestampsAndWatermarks::new(
                WatermarkStrategy::bounded_out_of_orderness(10, |v: &u64| *v as i64),
            )) as Box<dyn Operator<u64, u64>>)
        }),
    );
    graph.add_operator(
        "op",
        vec![(assign, Partitioning::rebalance())],
        checker(&logs, ts),
    );
    DeterministicExecutor::new(graph, &config(2), 3)
        .unwrap()
        .run()
        .unwrap();
    for log in logs.lock().unwrap().iter() {
        let w = watermarks(log);
        assert_eq!(w.last(), Some(&i64::MAX));
        assert!(w.len() > 1, "{w:?}");
        assert!(w[..w.len() - 1].iter().all(|w| *w < 200), "{w:?}");
    }
}

/// A split that never produces holds the source's watermark back, unless it
/// has been idle (processing time, the job's `ManualClock`) for the
/// idleness timeout.
#[test]
fn an_idle_split_holds_back_only_without_idleness() {
    for (idleness, advance, expect_advanced) in [
        (None, 10_000, false),
        (Some(1_000), 999, false),
        (Some(1_000), 10_000, true),
    ] {
        let clock = flowstate_state::ManualClock::new(0);
        let release = Arc::new(AtomicBool::new(false));
        let mut strategy = WatermarkStrategy::monotonous(|v: &u64| *v as i64);
        if let Some(ms) = idleness {
            strategy = strategy.with_idleness(ms);
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut graph = JobGraph::new();
        let src = graph.add_source(
            "src",
            Arc::new(TestSource {
                n: 100,
                splits: 2,
                strategy: Some(strategy),
                hold_split: Some(1),
                release: Arc::clone(&release),
            }),
        );
        graph.add_operator(
            "op",
            vec![(src, Partitioning::rebalance())],
            checker(&logs, |v| v as i64),
        );
        let config = ExecutionConfig {
            clock: clock.clone(),
            ..config(1)
        };
        let mut executor = DeterministicExecutor::new(graph, &config, 1).unwrap();
        clock.advance_ms(advance);
        // Everything read; the source waits for its held split.
        let state = executor.run_until_quiescent(&|_| false).unwrap();
        assert!(matches!(state, RunState::Quiescent));
        let w = executor.metrics().watermark_of("op").unwrap();
        if expect_advanced {
            // Split 0's records are the even ones below 100.
            assert_eq!(w, Watermark(97), "idleness {idleness:?}");
        } else {
            assert_eq!(
                w,
                Watermark::MIN,
                "idleness {idleness:?} after {advance} ms"
            );
        }
        release.store(true, Ordering::SeqCst);
        executor.run().unwrap();
        assert_eq!(executor.metrics().watermark_of("op"), Some(Watermark::MAX));
    }
}

// ---------------------------------------------------------------------------
// Idleness: the in-band watermark status
// ---------------------------------------------------------------------------

fn idle() -> Message<u64> {
    Message::WatermarkStatus(WatermarkStatus::Idle)
}

fn active() -> Message<u64> {
    Message::WatermarkStatus(WatermarkStatus::Active)
}

/// An idle channel is left out of the minimum: the other channel's
/// watermark goes on. When every channel is idle, the task says so
/// downstream (once).
#[test]
fn an_idle_channel_is_left_out_of_the_minimum() {
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let out = log();
    let mut task = OneInputTask::new(
        "t".into(),
        vec![rx0, rx1],
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&tx0, wm(100));
    run(&mut task);
    // Channel 1 has said nothing: held at MIN.
    assert_eq!(events(&out), vec![]);
    send(&tx1, idle());
    run(&mut task);
    assert_eq!(events(&out), vec![Ev::Wm(100)]);
    send(&tx0, wm(200));
    run(&mut task);
    assert_eq!(events(&out), vec![Ev::Wm(100), Ev::Wm(200)]);
    send(&tx0, idle());
    send(&tx1, idle());
    run(&mut task);
    assert_eq!(events(&out), vec![Ev::Wm(100), Ev::Wm(200), Ev::Idle]);
    // Records from an idle channel (a processing-time timer upstream)
    // change no status.
    send(&tx0, Message::Batch(vec![7]));
    run(&mut task);
    assert_eq!(
        events(&out),
        vec![Ev::Wm(100), Ev::Wm(200), Ev::Idle, Ev::Data(vec![7])]
    );
    // Nor does a watermark: it is kept, but not counted while idle.
    send(&tx0, wm(250));
    run(&mut task);
    assert_eq!(events(&out).len(), 4);
    // Active again with a watermark: the task is active before it.
    send(&tx1, active());
    send(&tx1, wm(300));
    run(&mut task);
    assert_eq!(
        events(&out)[4..],
        [Ev::Active, Ev::Wm(300)],
        "{:?}",
        events(&out)
    );
    // Channel 0 active again at the 250 it sent while idle: it holds the
    // task (no watermark goes backwards) until it passes channel 1.
    send(&tx0, active());
    send(&tx1, wm(400));
    run(&mut task);
    assert_eq!(events(&out).len(), 6);
    send(&tx0, wm(350));
    run(&mut task);
    assert_eq!(events(&out)[6..], [Ev::Wm(350)]);
}

/// A channel that becomes active again with a watermark below the task's
/// does not lower it: the task stays where it is until the channel caught
/// up, then goes on from the minimum again.
#[test]
fn a_channel_active_again_below_the_task_watermark_does_not_lower_it() {
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let out = log();
    let mut task = OneInputTask::new(
        "t".into(),
        vec![rx0, rx1],
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&tx0, wm(50));
    send(&tx1, wm(40));
    run(&mut task);
    send(&tx0, idle());
    send(&tx1, wm(500));
    run(&mut task);
    assert_eq!(watermarks(&out), vec![40, 500]);
    // Channel 0 is back at 60: no watermark goes backwards, and none goes
    // on until it passed 500.
    send(&tx0, active());
    send(&tx0, wm(60));
    send(&tx1, wm(900));
    run(&mut task);
    assert_eq!(watermarks(&out), vec![40, 500]);
    send(&tx0, wm(700));
    run(&mut task);
    assert_eq!(watermarks(&out), vec![40, 500, 700]);
    assert!(!events(&out).contains(&Ev::Idle), "{:?}", events(&out));
}

/// A channel that finished (`MAX`) while the other is idle does not end
/// event time: the task is idle, and the idle channel's records may still
/// come.
#[test]
fn a_finished_channel_beside_an_idle_one_does_not_end_event_time() {
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let out = log();
    let mut task = OneInputTask::new(
        "t".into(),
        vec![rx0, rx1],
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&tx0, wm(100));
    send(&tx1, wm(10));
    send(&tx1, idle());
    run(&mut task);
    send(&tx0, wm(i64::MAX));
    send(&tx0, Message::EndOfInput);
    run(&mut task);
    assert_eq!(events(&out), vec![Ev::Wm(10), Ev::Wm(100), Ev::Idle]);
    send(&tx1, active());
    send(&tx1, wm(i64::MAX));
    send(&tx1, Message::EndOfInput);
    run(&mut task);
    assert_eq!(
        events(&out)[3..],
        [Ev::Active, Ev::Wm(i64::MAX), Ev::End],
        "{:?}",
        events(&out)
    );
}

/// A task all of whose inputs are idle is idle downstream: the status goes
/// through its exchange to every channel, and a second stage reading it and
/// an active channel goes on with the active one's watermark.
#[test]
fn all_inputs_idle_propagates_through_an_exchange_to_a_second_stage() {
    let (tx_in, rx_in) = pair();
    let (tx_a, rx_a) = pair();
    let (tx_b, rx_b) = pair();
    let exchange = ExchangeOutput::new("first", Router::Rebalance { next: 0 }, vec![tx_a, tx_b], 4);
    let mut first = OneInputTask::new("first".into(), vec![rx_in], Box::new(exchange), None);
    let (tx_other, rx_other) = pair();
    let out = log();
    let mut second = OneInputTask::new(
        "second".into(),
        vec![rx_a, rx_other],
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&tx_in, Message::Batch(vec![1]));
    send(&tx_in, wm(100));
    run(&mut first);
    send(&tx_other, wm(500));
    run(&mut second);
    assert_eq!(events(&out), vec![Ev::Data(vec![1]), Ev::Wm(100)]);
    // The first stage's only input goes idle: so does the first stage, on
    // both channels of its exchange.
    send(&tx_in, idle());
    run(&mut first);
    assert_eq!(drain(&rx_b), vec![Ev::Wm(100), Ev::Idle]);
    run(&mut second);
    assert_eq!(
        events(&out),
        vec![Ev::Data(vec![1]), Ev::Wm(100), Ev::Wm(500)]
    );
    // Active again: the status goes through before the records (routed to
    // channel b).
    send(&tx_in, active());
    send(&tx_in, Message::Batch(vec![2, 3, 4, 5]));
    run(&mut first);
    assert_eq!(drain(&rx_b), vec![Ev::Active, Ev::Data(vec![2, 3, 4, 5])]);
    // Channel a is active again at 100: the second stage stays at 500.
    run(&mut second);
    assert_eq!(
        events(&out),
        vec![Ev::Data(vec![1]), Ev::Wm(100), Ev::Wm(500)]
    );
}

/// Two inputs: an idle side is left out of the minimum the head operator
/// hears; both sides idle make the task idle; a side active again counts.
#[test]
fn two_input_minimum_leaves_an_idle_side_out() {
    let (ta, ra) = pair();
    let (tb, rb) = pair();
    let heard = log();
    let out = log();
    let id = StageIdentity {
        name: "two".into(),
        uid: "two".into(),
        subtask: 0,
    };
    let mut task = TwoInputTask::new(
        "two".into(),
        id,
        vec![ra],
        vec![rb],
        Box::new(TwoRecorder(heard.clone())),
        Box::new(Recorder(out.clone())),
        None,
    );
    send(&ta, wm(100));
    send(&tb, wm(40));
    run(&mut task);
    assert_eq!(watermarks(&heard), vec![40]);
    send(&tb, idle());
    run(&mut task);
    assert_eq!(watermarks(&heard), vec![40, 100]);
    send(&ta, wm(200));
    run(&mut task);
    assert_eq!(watermarks(&heard), vec![40, 100, 200]);
    send(&ta, idle());
    run(&mut task);
    assert_eq!(events(&out).last(), Some(&Ev::Idle));
    send(&tb, active());
    send(&tb, wm(300));
    run(&mut task);
    assert_eq!(watermarks(&heard), vec![40, 100, 200, 300]);
    let tail: Vec<Ev> = events(&out).into_iter().rev().take(4).collect();
    assert_eq!(
        tail,
        vec![Ev::Wm(300), Ev::Data(vec![300]), Ev::Active, Ev::Idle]
    );
}

/// One split fed by the test; never finishes.
struct QueueReader {
    queue: Arc<Mutex<Vec<u64>>>,
    watermarks: SplitWatermarks<u32, u64>,
}

impl SourceReader<u64> for QueueReader {
    fn poll(
        &mut self,
        out: &mut Vec<u64>,
        _max: usize,
        _now: Instant,
    ) -> Result<SourcePoll, UserError> {
        let mut queue = self.queue.lock().unwrap();
        if queue.is_empty() {
            return Ok(SourcePoll::Pending { wake_at: None });
        }
        let first = out.len();
        out.append(&mut queue);
        self.watermarks.on_batch(&0, &out[first..]);
        Ok(SourcePoll::Ready)
    }

    fn watermark(&mut self) -> Option<Watermark> {
        self.watermarks.current()
    }

    fn is_idle(&mut self) -> bool {
        self.watermarks.is_idle()
    }
}

fn source_task(
    queue: &Arc<Mutex<Vec<u64>>>,
    strategy: WatermarkStrategy<u64>,
    clock: &Arc<flowstate_state::ManualClock>,
    out: &Log,
) -> flowstate_runtime::task::SourceTask<u64> {
    let mut watermarks = SplitWatermarks::new(strategy, clock.clone());
    watermarks.add_split(&0);
    flowstate_runtime::task::SourceTask::new(
        "src".into(),
        StageIdentity {
            name: "src".into(),
            uid: "src".into(),
            subtask: 0,
        },
        Box::new(QueueReader {
            queue: Arc::clone(queue),
            watermarks,
        }),
        Box::new(Recorder(out.clone())),
        16,
        Arc::new(flowstate_runtime::JobMetrics::default()),
        None,
    )
}

/// A source whose only split produced nothing for the idleness says it is
/// idle, once; when the split produces again it is active before its
/// records. Without idleness it never is.
#[test]
fn a_source_whose_splits_are_all_idle_says_so_once() {
    let clock = flowstate_state::ManualClock::new(0);
    let queue = Arc::new(Mutex::new(vec![10, 20]));
    let out = log();
    let strategy = WatermarkStrategy::monotonous(|v: &u64| *v as i64);
    let mut task = source_task(&queue, strategy.clone().with_idleness(1_000), &clock, &out);
    run(&mut task);
    assert_eq!(events(&out), vec![Ev::Data(vec![10, 20]), Ev::Wm(19)]);
    clock.advance_ms(999);
    run(&mut task);
    assert_eq!(events(&out).len(), 2);
    clock.advance_ms(1);
    run(&mut task);
    run(&mut task);
    assert_eq!(events(&out)[2..], [Ev::Idle]);
    queue.lock().unwrap().push(30);
    run(&mut task);
    clock.advance_ms(5_000);
    run(&mut task);
    assert_eq!(
        events(&out)[2..],
        [
            Ev::Idle,
            Ev::Active,
            Ev::Data(vec![30]),
            Ev::Wm(29),
            Ev::Idle
        ]
    );

    let held = log();
    let mut task = source_task(&queue, strategy, &clock, &held);
    queue.lock().unwrap().push(40);
    run(&mut task);
    clock.advance_ms(1_000_000);
    run(&mut task);
    assert_eq!(events(&held), vec![Ev::Data(vec![40]), Ev::Wm(39)]);
}
