//! Per-task and per-operator metrics of a running job: records in and out are
//! exact after a bounded job; a task blocked on a full output channel accrues
//! backpressured time, one waiting for input idle time; the sampled gauges
//! (queue fill) and the per-second rates are filled in while the job runs.
//!
//! No assertion depends on timing: tests poll with generous deadlines, and
//! only check what cannot be otherwise (e.g. a task without output channels
//! is never backpressured).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_runtime::metrics::{OperatorKind, TaskMetricsSnapshot};
use flowstate_runtime::{
    ExecutionConfig, JobGraph, JobMetrics, Operator, Partitioning, Sink, SinkWriter, Source,
    SourcePoll, SourceReader, SubtaskInfo, UserError, start_job,
};

/// Emits `0..count` in batches; instance `i` of `p` emits the numbers `n`
/// with `n % p == i`. `count: None`: never ends.
struct Numbers {
    count: Option<u64>,
}

struct NumbersReader {
    next: u64,
    step: u64,
    end: Option<u64>,
}

impl Source<u64> for Numbers {
    fn create_reader(&self, info: &SubtaskInfo) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(NumbersReader {
            next: info.index as u64,
            step: info.parallelism as u64,
            end: self.count,
        }))
    }
}

impl SourceReader<u64> for NumbersReader {
    fn poll(
        &mut self,
        out: &mut Vec<u64>,
        max: usize,
        _: Instant,
    ) -> Result<SourcePoll, UserError> {
        for _ in 0..max {
            if self.end.is_some_and(|end| self.next >= end) {
                return Ok(SourcePoll::Finished);
            }
            out.push(self.next);
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }
}

/// Instance 0 emits numbers without end, every other instance nothing.
struct FirstOnly;

impl Source<u64> for FirstOnly {
    fn create_reader(&self, info: &SubtaskInfo) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        if info.index == 0 {
            Numbers { count: None }.create_reader(info)
        } else {
            Ok(Box::new(Silent))
        }
    }
}

/// A source with nothing to say, ever: it asks to be polled again later.
struct Silent;

impl Source<u64> for Silent {
    fn create_reader(&self, _: &SubtaskInfo) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(Silent))
    }
}

impl SourceReader<u64> for Silent {
    fn poll(&mut self, _: &mut Vec<u64>, _: usize, now: Instant) -> Result<SourcePoll, UserError> {
        Ok(SourcePoll::Pending {
            wake_at: Some(now + Duration::from_millis(20)),
        })
    }
}

/// Keeps the even numbers.
struct Evens;

impl Operator<u64, u64> for Evens {
    fn process_batch(
        &mut self,
        input: &mut Vec<u64>,
        output: &mut Vec<u64>,
    ) -> Result<(), UserError> {
        output.extend(input.drain(..).filter(|n| n % 2 == 0));
        Ok(())
    }
}

/// Drops what it gets, sleeping `pause` per batch (a slow consumer); with
/// `only_last`, instance p-1 sleeps and the others are fast.
struct Slow {
    pause: Duration,
    only_last: bool,
}

impl Sink<u64> for Slow {
    fn create_writer(&self, info: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        let slow = !self.only_last || info.index + 1 == info.parallelism;
        Ok(Box::new(Slow {
            pause: if slow { self.pause } else { Duration::ZERO },
            only_last: false,
        }))
    }
}

impl SinkWriter<u64> for Slow {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        std::thread::sleep(self.pause);
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

fn task<'a>(tasks: &'a [TaskMetricsSnapshot], prefix: &str) -> &'a TaskMetricsSnapshot {
    tasks
        .iter()
        .find(|t| t.task.starts_with(prefix))
        .unwrap_or_else(|| panic!("no task {prefix} in {tasks:#?}"))
}

fn find<'a>(tasks: &'a [TaskMetricsSnapshot], prefix: &str) -> Option<&'a TaskMetricsSnapshot> {
    tasks.iter().find(|t| t.task.starts_with(prefix))
}

/// Polls `metrics` until `done` holds of its tasks, for at most a minute.
fn wait_for(metrics: &JobMetrics, what: &str, done: impl Fn(&[TaskMetricsSnapshot]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = metrics.tasks();
        if done(&tasks) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within a minute: {tasks:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn records_in_and_out_are_exact_after_a_bounded_job() {
    const N: u64 = 100_003;
    let mut graph = JobGraph::new();
    let source = graph.add_source("Source: Numbers", Arc::new(Numbers { count: Some(N) }));
    let evens = graph.add_operator::<u64, u64>(
        "Evens",
        vec![(source, Partitioning::Forward)],
        Box::new(|_| Ok(Box::new(Evens))),
    );
    graph.add_sink(
        "Sink: Drop",
        (evens, Partitioning::rebalance()),
        Arc::new(Slow {
            pause: Duration::ZERO,
            only_last: false,
        }),
    );
    let config = ExecutionConfig {
        batch_size: 100,
        ..ExecutionConfig::with_parallelism(2)
    };
    let job = start_job(graph, &config).unwrap();
    let metrics = Arc::clone(job.metrics());
    job.join().unwrap();

    let evens_count = N.div_ceil(2);
    let tasks = metrics.tasks();
    assert_eq!(tasks.len(), 4, "{tasks:#?}");
    let sum = |prefix: &str, f: fn(&TaskMetricsSnapshot) -> u64| {
        tasks
            .iter()
            .filter(|t| t.task.starts_with(prefix))
            .map(f)
            .sum::<u64>()
    };
    assert_eq!(sum("Source: Numbers -> Evens", |t| t.records_in), N);
    assert_eq!(
        sum("Source: Numbers -> Evens", |t| t.records_out),
        evens_count
    );
    assert_eq!(sum("Sink: Drop", |t| t.records_in), evens_count);
    assert_eq!(sum("Sink: Drop", |t| t.records_out), 0);
    for t in &tasks {
        assert!(t.task.ends_with("/2)"), "{}", t.task);
        assert!(t.subtask < 2);
    }

    let operators = metrics.operators();
    let op_sum =
        |uid_part: &str, f: fn(&flowstate_runtime::metrics::OperatorMetricsSnapshot) -> u64| {
            operators
                .iter()
                .filter(|o| o.name == uid_part)
                .map(f)
                .sum::<u64>()
        };
    assert_eq!(op_sum("Source: Numbers", |o| o.records_out), N);
    assert_eq!(op_sum("Evens", |o| o.records_in), N);
    assert_eq!(op_sum("Evens", |o| o.records_out), evens_count);
    assert_eq!(op_sum("Sink: Drop", |o| o.records_in), evens_count);
    let kinds: Vec<(String, OperatorKind)> =
        operators.iter().map(|o| (o.name.clone(), o.kind)).collect();
    assert!(kinds.contains(&("Source: Numbers".into(), OperatorKind::Source)));
    assert!(kinds.contains(&("Evens".into(), OperatorKind::Operator)));
    assert!(kinds.contains(&("Sink: Drop".into(), OperatorKind::Sink)));
    // Every operator instance is in the task it runs in.
    for o in &operators {
        assert!(tasks.iter().any(|t| t.task == o.task), "{o:?}");
    }
    // A sink's commits are reported (none here: no checkpoints).
    let sink = operators.iter().find(|o| o.name == "Sink: Drop").unwrap();
    assert_eq!(sink.commits.map(|c| c.count), Some(0));
}

#[test]
fn a_task_blocked_on_a_full_output_channel_accrues_backpressured_time() {
    let mut graph = JobGraph::new();
    // Worker 0 steps the one producing source and a fast sink; worker 1 an
    // idle source and the slow sink. The source rebalances over both sinks
    // and makes batches far faster than the slow one takes them (5 ms
    // each): its channel to the slow sink fills and stays full, so the
    // source waits for room whatever the scheduling. (A source and a slow
    // sink on every worker, matched one for one, filled the channels only
    // when the scheduler happened to favour the sources: 2-74 s.)
    let source = graph.add_source("Source: Numbers", Arc::new(FirstOnly));
    graph.add_sink(
        "Sink: Slow",
        (source, Partitioning::rebalance()),
        Arc::new(Slow {
            pause: Duration::from_millis(5),
            only_last: true,
        }),
    );
    let config = ExecutionConfig {
        batch_size: 16,
        channel_capacity: 2,
        ..ExecutionConfig::with_parallelism(2)
    };
    let job = start_job(graph, &config).unwrap();
    let metrics = Arc::clone(job.metrics());
    wait_for(&metrics, "the source backpressured for 300 ms", |tasks| {
        find(tasks, "Source: Numbers (1/2)")
            .is_some_and(|s| s.backpressured >= Duration::from_millis(300))
    });
    // The rates and the sampled queue fill follow within a sample or two.
    wait_for(&metrics, "rates and queue fill sampled", |tasks| {
        let source = task(tasks, "Source: Numbers (1/2)");
        let sink = task(tasks, "Sink: Slow (2/2)");
        source.backpressured_ms_per_second > 0.0
            && source.output_queue_capacity == 4
            && sink.input_queue_capacity == 4
            && source.records_out_per_second > 0.0
    });
    job.cancel();
    let _ = job.join();

    let tasks = metrics.tasks();
    let source = task(&tasks, "Source: Numbers (1/2)");
    let sink = task(&tasks, "Sink: Slow (2/2)");
    // The slow sink is the one working; it has no output to wait for.
    assert!(source.backpressured > source.idle, "{source:#?}");
    assert!(source.backpressured > source.busy, "{source:#?}");
    for sink in tasks.iter().filter(|t| t.task.starts_with("Sink: Slow")) {
        assert_eq!(sink.backpressured, Duration::ZERO, "{sink:#?}");
    }
    assert!(sink.busy >= Duration::from_millis(300), "{sink:#?}");
    // What the sinks took, the source sent (the rest waits in the channel).
    let taken: u64 = tasks
        .iter()
        .filter(|t| t.task.starts_with("Sink: Slow"))
        .map(|t| t.records_in)
        .sum();
    assert!(sink.records_in > 0 && taken <= source.records_out);
}

#[test]
fn a_task_waiting_for_input_accrues_idle_time_and_no_backpressure() {
    let mut graph = JobGraph::new();
    let source = graph.add_source("Source: Silent", Arc::new(Silent));
    graph.add_sink(
        "Sink: Slow",
        (source, Partitioning::rebalance()),
        Arc::new(Slow {
            pause: Duration::ZERO,
            only_last: false,
        }),
    );
    let config = ExecutionConfig::with_parallelism(1);
    let job = start_job(graph, &config).unwrap();
    let metrics = Arc::clone(job.metrics());
    wait_for(&metrics, "both tasks idle for 300 ms", |tasks| {
        let idle =
            |prefix| find(tasks, prefix).is_some_and(|t| t.idle >= Duration::from_millis(300));
        idle("Source: Silent") && idle("Sink: Slow")
    });
    wait_for(&metrics, "the idle rate sampled", |tasks| {
        task(tasks, "Sink: Slow").idle_ms_per_second > 500.0
    });
    job.cancel();
    let _ = job.join();
    for t in metrics.tasks() {
        // Nothing was ever sent: nobody waited for room downstream.
        assert_eq!(t.backpressured, Duration::ZERO, "{t:#?}");
        assert_eq!(t.records_in, 0);
        assert_eq!(t.records_out, 0);
        assert!(t.idle > t.busy, "{t:#?}");
        assert_eq!(t.watermark, None);
    }
}

#[test]
fn the_deterministic_executor_counts_records_too() {
    let mut graph = JobGraph::new();
    let source = graph.add_source("Source: Numbers", Arc::new(Numbers { count: Some(10) }));
    graph.add_sink(
        "Sink: Drop",
        (source, Partitioning::rebalance()),
        Arc::new(Slow {
            pause: Duration::ZERO,
            only_last: false,
        }),
    );
    let mut executor =
        flowstate_runtime::DeterministicExecutor::new(graph, &ExecutionConfig::default(), 1)
            .unwrap();
    executor.run().unwrap();
    let tasks = executor.metrics().tasks();
    assert_eq!(task(&tasks, "Source: Numbers").records_in, 10);
    assert_eq!(task(&tasks, "Source: Numbers").records_out, 10);
    assert_eq!(task(&tasks, "Sink: Drop").records_in, 10);
}
