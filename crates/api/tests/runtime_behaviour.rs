//! Runtime behaviour seen through the DataStream API: seeded determinism,
//! backpressure with bounded memory, failure propagation and configuration checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flowstate::connectors::SequenceSource;
use flowstate::runtime::{BuildError, DeterministicExecutor, RunState, TaskError};
use flowstate::{
    ExecutionConfig, FnResult, JobError, KeyedContext, KeyedProcessFunction, KeyedStateBackend,
    Sink, SinkWriter, StreamEnvironment, SubtaskInfo, UserError, ValueStateDescriptor,
};

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------

/// Everything a run of the determinism job produced, in the order produced.
#[derive(Debug, PartialEq)]
struct RunOutput {
    counts: Vec<(String, u64)>,
    rebalanced: Vec<u64>,
    records_in: u64,
    records_to_sinks: u64,
}

fn words() -> Vec<String> {
    (0..240u64)
        .map(|i| format!("w{}", (i * 7 + i / 5) % 17))
        .collect()
}

/// A small job with every kind of exchange (hash, rebalance, forward chains),
/// run on the seeded executor.
fn run_seeded(seed: u64) -> RunOutput {
    let env = StreamEnvironment::new(ExecutionConfig {
        batch_size: 5,
        channel_capacity: 2,
        ..ExecutionConfig::with_parallelism(3)
    });
    let words = env.from_collection(words());
    let counts = words
        .map(|w| (w, 1u64))
        .key_by(|(w, _)| w.clone())
        .reduce(|(w, a), (_, b)| (w, a + b))
        .collect();
    let rebalanced = words
        .map(|w| w.len() as u64)
        .rebalance()
        .map(|n| n * 10)
        .collect();
    let mut executor = env.deterministic(seed).expect("job builds");
    let report = executor.run().expect("job succeeds");
    let counts = counts.lock().unwrap().clone();
    let rebalanced = rebalanced.lock().unwrap().clone();
    RunOutput {
        counts,
        rebalanced,
        records_in: report.records_in,
        records_to_sinks: report.records_to_sinks,
    }
}

#[test]
fn same_seed_gives_identical_results() {
    for seed in [0, 1, 7, 12345, u64::MAX] {
        let first = run_seeded(seed);
        let second = run_seeded(seed);
        // Not just the same multiset: the very same order of every output.
        assert_eq!(first, second, "seed {seed}");
    }
}

#[test]
fn every_seed_gives_correct_results() {
    let input = words();
    let mut expected_counts: BTreeMap<String, u64> = BTreeMap::new();
    for w in &input {
        *expected_counts.entry(w.clone()).or_default() += 1;
    }
    let expected_rebalanced = sorted(input.iter().map(|w| w.len() as u64 * 10).collect());
    let mut orders = BTreeSet::new();
    for seed in 0..50 {
        let out = run_seeded(seed);
        // Per key, the reduce emitted 1, 2, ..., n in that order.
        let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (w, c) in &out.counts {
            per_key.entry(w.clone()).or_default().push(*c);
        }
        for (w, counts) in &per_key {
            assert_eq!(
                *counts,
                (1..=counts.len() as u64).collect::<Vec<_>>(),
                "seed {seed}, key {w}"
            );
        }
        let finals: BTreeMap<String, u64> = per_key
            .into_iter()
            .map(|(w, c)| (w, c.len() as u64))
            .collect();
        assert_eq!(finals, expected_counts, "seed {seed}");
        assert_eq!(
            sorted(out.rebalanced.clone()),
            expected_rebalanced,
            "seed {seed}"
        );
        assert_eq!(out.records_in, input.len() as u64, "seed {seed}");
        assert_eq!(out.records_to_sinks, 2 * input.len() as u64, "seed {seed}");
        orders.insert((out.counts, out.rebalanced));
    }
    // The seed really drives the interleaving: 50 seeds do not all produce the
    // output in one order.
    assert!(
        orders.len() > 1,
        "all 50 seeds gave the same output order: the seed has no effect"
    );
}

/// Passes on only the multiples of three (so keyed output batches are partial).
#[derive(Clone)]
struct EveryThird;

impl KeyedProcessFunction<u64, u64, u64> for EveryThird {
    fn process(&mut self, r: u64, _: &mut KeyedContext<'_, u64>, out: &mut Vec<u64>) -> FnResult {
        if r.is_multiple_of(3) {
            out.push(r);
        }
        Ok(())
    }
}

#[test]
fn seeded_runs_never_report_a_false_stall() {
    // `run_until_quiescent` marks a task idle when its step returns Idle and
    // clears the marks only when some step returns Progress. But tasks also send
    // data in steps that return Idle: `drain` (a finished source sends its last
    // batch, then finds the channel full for end-of-input), the `!flush(false)`
    // branch at the top of every step (pending output partly sent), and the
    // `flush(true)` on an empty input. A consumer marked idle before such a send
    // keeps its mark, every task looks idle, and `run()` returns
    // JobError::Stalled although the job can go on: running it again finishes it.
    let mut false_stalls = Vec::new();
    for (batch_size, channel_capacity) in [(3, 1), (5, 1), (2, 2)] {
        for seed in 0..100 {
            let env = StreamEnvironment::new(ExecutionConfig {
                batch_size,
                channel_capacity,
                ..ExecutionConfig::with_parallelism(1)
            });
            let out = env
                .from_collection((0..200u64).collect())
                .key_by(|x| x % 13)
                .process(EveryThird)
                .collect();
            let mut executor = env.deterministic(seed).unwrap();
            match executor.run() {
                Ok(_) => assert_eq!(out.lock().unwrap().len(), 67),
                Err(error) => {
                    let resumed = executor.run_until_quiescent(&|_| false);
                    false_stalls.push(format!(
                        "batch {batch_size}, capacity {channel_capacity}, seed {seed}: \
                         {error}; running again: {resumed:?}"
                    ));
                }
            }
        }
    }
    assert!(
        false_stalls.is_empty(),
        "{} of 300 runs stalled, e.g. {:?}",
        false_stalls.len(),
        &false_stalls[..false_stalls.len().min(3)]
    );
}

// ---------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------

/// Forwards every record unchanged (a keyed step, so that the sink behind it runs
/// in a task of its own, separate from the source).
#[derive(Clone)]
struct PassThrough;

impl KeyedProcessFunction<u64, u64, u64> for PassThrough {
    fn process(
        &mut self,
        record: u64,
        _: &mut KeyedContext<'_, u64>,
        out: &mut Vec<u64>,
    ) -> FnResult {
        out.push(record);
        Ok(())
    }
}

/// Counts records and sums them (and their squares), to check that every record
/// arrived exactly once without keeping them.
#[derive(Clone, Default)]
struct ChecksumSink {
    totals: Arc<[AtomicU64; 3]>,
}

impl ChecksumSink {
    fn totals(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.totals[i].load(Ordering::SeqCst))
    }
}

struct ChecksumWriter {
    totals: Arc<[AtomicU64; 3]>,
}

impl Sink<u64> for ChecksumSink {
    fn create_writer(&self, _: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        Ok(Box::new(ChecksumWriter {
            totals: Arc::clone(&self.totals),
        }))
    }
}

impl SinkWriter<u64> for ChecksumWriter {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        let (mut sum, mut squares) = (0u64, 0u64);
        for r in batch.iter() {
            sum = sum.wrapping_add(*r);
            squares = squares.wrapping_add(r.wrapping_mul(*r));
        }
        self.totals[0].fetch_add(batch.len() as u64, Ordering::SeqCst);
        self.totals[1].fetch_add(sum, Ordering::SeqCst);
        self.totals[2].fetch_add(squares, Ordering::SeqCst);
        batch.clear();
        Ok(())
    }
    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

/// Runs with the tasks matching `paused` held until nothing moves any more, and
/// returns the records read by the sources. `run_until_quiescent` is called
/// until the metrics stop changing, because one call can stop early (see
/// `seeded_runs_never_report_a_false_stall`); the bounds below hold at every
/// moment anyway, and the lower bounds need the true quiescent state.
fn pause_until_stable(executor: &mut DeterministicExecutor, paused: &dyn Fn(&str) -> bool) -> u64 {
    let mut last = None;
    for _ in 0..1000 {
        let state = executor.run_until_quiescent(paused).expect("no failure");
        assert_eq!(state, RunState::Quiescent, "a paused job cannot finish");
        let now = (
            executor.metrics().records_in(),
            executor.metrics().records_to_sinks(),
        );
        if last == Some(now) {
            return now.0;
        }
        last = Some(now);
    }
    panic!("the paused job never became quiescent");
}

/// source -> key_by -> process -> sink: the keyed process and the sink share a
/// task, separate from the source task.
fn paused_sink_job(
    p: u64,
    b: u64,
    c: u64,
    records: u64,
    seed: u64,
) -> (DeterministicExecutor, ChecksumSink) {
    let env = StreamEnvironment::new(ExecutionConfig {
        batch_size: b as usize,
        channel_capacity: c as usize,
        ..ExecutionConfig::with_parallelism(p as u32)
    });
    let sink = ChecksumSink::default();
    env.from_source(
        "Source: Sequence",
        SequenceSource::new(records, 128, |i| i).unwrap(),
    )
    .key_by(|x| x % 1024)
    .process(PassThrough)
    .sink_to("Sink: Slow", sink.clone());
    (env.deterministic(seed).expect("job builds"), sink)
}

#[test]
fn a_paused_sink_bounds_what_sources_read_and_unpausing_delivers_everything() {
    // Enough records that an unbounded source would read far more than the
    // bound, few enough that draining them all stays fast in a debug build.
    const RECORDS: u64 = 2_000_000;
    const P: u64 = 2;
    const B: u64 = 16;
    const C: u64 = 2;
    // Upper bound on what the sources can have read while nothing is consumed:
    // - P*P channels (every source instance to every keyed instance), each
    //   holding at most C messages of at most B records (a hash exchange with
    //   several targets cuts a batch as soon as a target buffer reaches B);
    // - per source instance, outside the channels: partly filled buffers, one
    //   per target, of at most B-1 records each (a buffer is cut when it reaches
    //   B), plus the output of the one source batch (<= B records) read while
    //   nothing was pending. A source reads its next batch only once all its
    //   pending output is sent, so nothing more can pile up.
    let bound = P * P * C * B + P * (P * (B - 1) + B);
    assert_eq!(bound, 220);
    // Lower bound: a source stops only when a channel of its is full (C batches
    // of exactly B records), so each source read at least that much.
    let at_least = P * C * B;
    let paused = |name: &str| name.contains("Sink: Slow");

    for seed in 0..20 {
        let (mut executor, sink) = paused_sink_job(P, B, C, RECORDS, seed);
        if seed == 0 {
            let names = sorted(executor.task_names());
            assert_eq!(
                names,
                [
                    "KeyedProcess -> Sink: Slow (1/2)",
                    "KeyedProcess -> Sink: Slow (2/2)",
                    "Source: Sequence (1/2)",
                    "Source: Sequence (2/2)",
                ]
            );
        }
        let read = pause_until_stable(&mut executor, &paused);
        assert_eq!(executor.metrics().records_to_sinks(), 0, "seed {seed}");
        assert_eq!(sink.totals()[0], 0, "the paused sink received nothing");
        assert!(
            read <= bound,
            "seed {seed}: sources read {read} records while the sink was paused; \
             the bound is {bound}"
        );
        assert!(
            read >= at_least,
            "seed {seed}: sources read only {read} records before stalling"
        );
        assert!(read * 1000 < RECORDS, "far below the total");

        if seed == 0 {
            // Unpaused, every record arrives exactly once.
            let state = executor
                .run_until_quiescent(&|_| false)
                .expect("no failure");
            assert_eq!(state, RunState::Finished);
            let n = RECORDS;
            let sum = (0..n).fold(0u64, |a, i| a.wrapping_add(i));
            let squares = (0..n).fold(0u64, |a, i| a.wrapping_add(i.wrapping_mul(i)));
            assert_eq!(sink.totals(), [n, sum, squares]);
            assert_eq!(executor.metrics().records_in(), n);
            assert_eq!(executor.metrics().records_to_sinks(), n);
        }
    }
}

#[test]
fn a_paused_middle_task_bounds_a_longer_pipeline() {
    // source -> key_by -> process -> rebalance -> sink: pausing the rebalance
    // task backs up through the keyed task into the source.
    const P: u64 = 3;
    const B: u64 = 4;
    const C: u64 = 1;
    // Source stage: as in the test above. Keyed stage: P*P channels into the
    // rebalance tasks, C messages each; a rebalance exchange appends a whole
    // input batch (<= B records) to one target buffer (< B records) before
    // cutting it, so its messages hold at most 2B-1 records. Per keyed instance,
    // outside those channels: buffers (< B records per target) plus the output
    // of one input batch (<= B records); it reads the next batch only once its
    // pending output is sent.
    let source_stage = P * P * C * B + P * (P * (B - 1) + B);
    let keyed_stage = P * P * C * (2 * B - 1) + P * (P * (B - 1) + B);
    let bound = source_stage + keyed_stage;
    for seed in 0..20 {
        let env = StreamEnvironment::new(ExecutionConfig {
            batch_size: B as usize,
            channel_capacity: C as usize,
            ..ExecutionConfig::with_parallelism(P as u32)
        });
        let count = env
            .from_source(
                "Source: Sequence",
                SequenceSource::new(10_000_000, 128, |i| i).unwrap(),
            )
            .key_by(|x| x % 64)
            .process(PassThrough)
            .rebalance()
            .count();
        let mut executor = env.deterministic(seed).expect("job builds");
        let read = pause_until_stable(&mut executor, &|name| name.starts_with("Rebalance"));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert!(read <= bound, "seed {seed}: read {read}, bound {bound}");
        assert!(read >= P * C * B, "seed {seed}: read only {read}");
    }
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

/// The error and its causes, as the CLI prints them (`{:#}` of anyhow): each
/// message once, joined by ": ".
fn full_message(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The operator named by a `TaskFailed` error whose cause is an operator error.
fn failed_operator(error: &JobError) -> Option<&str> {
    match error {
        JobError::TaskFailed {
            source: TaskError::Operator { operator, .. },
            ..
        } => Some(operator),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Exec {
    Threads,
    Seeded(u64),
}

fn run(env: &StreamEnvironment, exec: Exec) -> Result<(), JobError> {
    match exec {
        Exec::Threads => env.execute().map(drop),
        Exec::Seeded(seed) => env.deterministic(seed)?.run().map(drop),
    }
}

fn executions() -> [(u32, Exec); 4] {
    [
        (1, Exec::Threads),
        (2, Exec::Threads),
        (1, Exec::Seeded(3)),
        (2, Exec::Seeded(4)),
    ]
}

#[test]
fn a_panicking_map_fails_the_job_naming_the_operator_and_the_panic() {
    for (p, exec) in executions() {
        let env = StreamEnvironment::new(ExecutionConfig {
            batch_size: 8,
            ..ExecutionConfig::with_parallelism(p)
        });
        let out = env
            .from_collection((0..1000u64).collect())
            .map(|x| {
                if x == 777 {
                    panic!("boom at record {x}");
                }
                x
            })
            .name("Explode")
            .collect();
        let error = run(&env, exec).expect_err("the job must fail");
        let message = full_message(&error);
        match &error {
            JobError::TaskFailed { task, source } => {
                assert!(task.contains("Explode"), "task {task} ({p} {exec:?})");
                match source {
                    TaskError::Panic { operator, message } => {
                        assert_eq!(operator, "Explode");
                        assert!(message.contains("boom at record 777"), "{message}");
                    }
                    other => panic!("expected a panic, got {other:?}"),
                }
            }
            other => panic!("expected TaskFailed, got {other:?} ({p} {exec:?})"),
        }
        assert!(error.to_string().contains("Explode"), "{error}");
        assert!(message.contains("'Explode'"), "{message}");
        assert!(message.contains("boom at record 777"), "{message}");
        assert!(
            !out.lock().unwrap().contains(&777),
            "the failing record was not emitted"
        );
    }
}

/// Sums amounts per key and refuses negative ones with an error.
#[derive(Clone, Default)]
struct Validate {
    sum: Option<flowstate::ValueStateHandle<i64>>,
}

impl KeyedProcessFunction<u64, (u64, i64), i64> for Validate {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.sum = Some(state.value_state(&ValueStateDescriptor::new("sum"))?);
        Ok(())
    }

    fn process(
        &mut self,
        (key, amount): (u64, i64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<i64>,
    ) -> FnResult {
        if amount < 0 {
            return Err(format!("negative amount {amount} for key {key}").into());
        }
        let handle = self.sum.as_ref().ok_or("not open")?;
        out.push(ctx.value(handle).modify(
            || 0,
            |s| {
                *s += amount;
                *s
            },
        )?);
        Ok(())
    }
}

#[test]
fn a_keyed_function_error_fails_the_job_naming_the_operator_and_the_cause() {
    for (p, exec) in executions() {
        let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(p));
        let input: Vec<(u64, i64)> = (0..500u64)
            .map(|i| (i % 10, if i == 321 { -5 } else { i as i64 }))
            .collect();
        env.from_collection(input)
            .key_by(|(k, _)| *k)
            .process(Validate::default())
            .name("Explode")
            .count();
        let error = run(&env, exec).expect_err("the job must fail");
        let message = full_message(&error);
        match &error {
            JobError::TaskFailed { task, source } => {
                assert!(task.contains("Explode"), "task {task}");
                assert!(
                    matches!(source, TaskError::Operator { operator, .. } if operator == "Explode"),
                    "{source:?}"
                );
            }
            other => panic!("expected TaskFailed, got {other:?} ({p} {exec:?})"),
        }
        assert!(error.to_string().contains("Explode"), "{error}");
        assert!(message.contains("'Explode'"), "{message}");
        assert!(
            message.contains("negative amount -5 for key 1"),
            "{message}"
        );
    }
}

#[test]
fn a_failure_stops_a_job_whose_source_never_ends() {
    // The source would run for hours: the job ends only because the failure of
    // the keyed task cancels every other task.
    for (p, exec) in executions() {
        let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(p));
        env.from_source(
            "Source: Endless",
            SequenceSource::new(1 << 40, 8, |i| (i % 7, if i == 5000 { -1 } else { 1 })).unwrap(),
        )
        .key_by(|(k, _)| *k)
        .process(Validate::default())
        .name("Explode")
        .count();
        let error = run(&env, exec).expect_err("the job must fail");
        assert_eq!(
            failed_operator(&error),
            Some("Explode"),
            "{error:?} ({p} {exec:?})"
        );
    }
}

/// A fresh path under the target's temporary directory.
fn temp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("runtime_behaviour-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_failing_source_names_the_file_and_the_line() {
    let dir = temp_path("bad-utf8");
    let file = dir.join("input.txt");
    let mut bytes = b"first line\nsecond line\n".to_vec();
    bytes.extend_from_slice(b"bad \xff\xfe bytes\nfourth line\n");
    std::fs::write(&file, bytes).unwrap();
    let shown = file.display().to_string();

    for (p, exec) in executions() {
        let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(p));
        let lines = env.read_text_lines(&file).expect("the file exists");
        lines.map(|l| l.len()).count();
        let error = run(&env, exec).expect_err("the job must fail");
        let message = full_message(&error);
        assert_eq!(
            failed_operator(&error),
            Some("Source: Text files"),
            "{error:?} ({p} {exec:?})"
        );
        assert!(error.to_string().contains("Source: Text files"), "{error}");
        assert!(message.contains(&shown), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("UTF-8"), "{message}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_source_io_error_keeps_its_cause() {
    // The file is listed when the job is built and gone when the reader opens it:
    // the job fails with ConnectorError::Read { path, source: NotFound }. Since
    // ConnectorError::Read displays only "cannot read '<path>'" and leaves the
    // I/O error to `source()`, and TaskError::operator() stores only
    // `cause.to_string()`, nothing in the job error says *why* the read failed.
    let dir = temp_path("vanished");
    let file = dir.join("gone.txt");
    std::fs::write(&file, "a line\n").unwrap();
    let env = StreamEnvironment::new(ExecutionConfig::default());
    env.read_text_lines(&dir)
        .expect("the directory exists")
        .count();
    std::fs::remove_file(&file).unwrap();
    let error = env.execute().expect_err("the job must fail");
    let message = full_message(&error);
    assert!(message.contains("gone.txt"), "{message}");
    let io = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
    assert!(
        message.contains("os error 2") || message.contains(&io),
        "the I/O cause is missing: {message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_input_is_refused_when_the_job_is_built() {
    let env = StreamEnvironment::new(ExecutionConfig::default());
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("does-not-exist.txt");
    let error = env
        .read_text_lines(&missing)
        .err()
        .expect("a missing file is an error");
    assert!(error.to_string().contains("does-not-exist.txt"), "{error}");
}

/// Declares one state name twice with different types: `open` fails.
#[derive(Clone)]
struct BadDeclaration;

impl KeyedProcessFunction<u64, u64, u64> for BadDeclaration {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        state.value_state(&ValueStateDescriptor::<u64>::new("total"))?;
        state.value_state(&ValueStateDescriptor::<String>::new("total"))?;
        Ok(())
    }
    fn process(&mut self, r: u64, _: &mut KeyedContext<'_, u64>, out: &mut Vec<u64>) -> FnResult {
        out.push(r);
        Ok(())
    }
}

#[test]
fn a_failing_open_fails_the_build_naming_the_operator_and_the_state() {
    for (p, exec) in executions() {
        let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(p));
        env.from_collection(vec![1u64, 2, 3])
            .key_by(|x| *x)
            .process(BadDeclaration)
            .name("Declare")
            .count();
        let error = run(&env, exec).expect_err("the job must fail");
        match &error {
            JobError::Build(BuildError::Create {
                operator, cause, ..
            }) => {
                assert_eq!(operator, "Declare");
                assert!(cause.contains("'total'"), "{cause}");
            }
            other => panic!("expected a build error, got {other:?} ({p} {exec:?})"),
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn parallelism_above_max_parallelism_is_rejected() {
    for exec in [Exec::Threads, Exec::Seeded(0)] {
        let env = StreamEnvironment::new(ExecutionConfig {
            max_parallelism: 4,
            ..ExecutionConfig::with_parallelism(8)
        });
        let out = env
            .from_collection((0..10u64).collect())
            .key_by(|x| *x)
            .reduce(|a, b| a + b)
            .collect();
        let error = run(&env, exec).expect_err("the job must be rejected");
        match &error {
            JobError::Build(BuildError::Config(message)) => {
                assert!(
                    message.contains("parallelism 8 exceeds max parallelism 4"),
                    "{message}"
                );
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
        assert!(
            error
                .to_string()
                .contains("parallelism 8 exceeds max parallelism 4"),
            "{error}"
        );
        assert!(out.lock().unwrap().is_empty());
    }
    // The limit itself is accepted.
    let env = StreamEnvironment::new(ExecutionConfig {
        max_parallelism: 4,
        ..ExecutionConfig::with_parallelism(4)
    });
    let out = env
        .from_collection((0..10u64).collect())
        .key_by(|x| *x)
        .reduce(|a, b| a + b)
        .collect();
    env.execute().expect("p = max parallelism is fine");
    assert_eq!(
        sorted(out.lock().unwrap().clone()),
        (0..10).collect::<Vec<_>>()
    );
}

#[test]
fn invalid_limits_are_rejected_with_a_build_error() {
    let bad = [
        ExecutionConfig {
            batch_size: 0,
            ..ExecutionConfig::default()
        },
        ExecutionConfig {
            channel_capacity: 0,
            ..ExecutionConfig::default()
        },
        ExecutionConfig {
            parallelism: 0,
            ..ExecutionConfig::default()
        },
        ExecutionConfig {
            max_parallelism: 0,
            ..ExecutionConfig::default()
        },
    ];
    for config in bad {
        for exec in [Exec::Threads, Exec::Seeded(0)] {
            let env = StreamEnvironment::new(config.clone());
            env.from_collection(vec![1u64]).count();
            let error = run(&env, exec).expect_err("invalid configuration");
            assert!(
                matches!(error, JobError::Build(BuildError::Config(_))),
                "{config:?}: {error:?}"
            );
        }
    }
}

#[test]
fn a_job_reports_what_it_read_and_wrote() {
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(2));
    let s = env.from_collection((0..1000u64).collect());
    s.filter(|x| x % 2 == 0).count();
    s.count();
    let report = env.execute().expect("job succeeds");
    assert_eq!(report.records_in, 1000);
    assert_eq!(report.records_to_sinks, 1500);
}
