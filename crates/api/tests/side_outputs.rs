//! Side outputs (issue 13): a keyed process function splits its records
//! between its main output and a side output of another type, each consumed
//! by its own exchanges and sinks; exactly once on both outputs across a
//! failure and restore; a window's late records reach a side output; and a
//! branch fed only by a side output takes part in checkpoints and hears the
//! end of event time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowstate::connectors::{FileSink, SequenceSource};
use flowstate::runtime::checkpoint::{CoordinatorSettings, open_storage};
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom};
use flowstate::{
    ExecutionConfig, FnResult, KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction,
    KeyedStateBackend, OutputTag, StreamEnvironment, TumblingEventTimeWindows,
    ValueStateDescriptor, ValueStateHandle, Watermark, WatermarkStrategy,
};

const KEYS: u64 = 10;

fn odd_tag() -> OutputTag<(u64, String)> {
    OutputTag::new("odd")
}

/// Counts the records of each key; an even record goes to the main output
/// as `(key, count of even records so far, record)`, an odd one to the side
/// output `odd` as `(record, "odd <record>")`.
#[derive(Clone, Default)]
struct Splitter {
    evens: Option<ValueStateHandle<u64>>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64, u64)> for Splitter {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.evens = Some(state.value_state(&ValueStateDescriptor::new("evens"))?);
        Ok(())
    }

    fn process(
        &mut self,
        x: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, u64, u64)>,
    ) -> FnResult {
        if x % 2 == 1 {
            return ctx.output(&odd_tag(), (x, format!("odd {x}")));
        }
        let handle = self.evens.clone().ok_or("open first")?;
        let n = ctx.value(&handle).modify(
            || 0,
            |n| {
                *n += 1;
                *n
            },
        )?;
        out.push((*ctx.key(), n, x));
        Ok(())
    }
}

/// Counts the records of each key of `(key, record)` and emits
/// `(key, count, record)`.
#[derive(Clone, Default)]
struct Count {
    count: Option<ValueStateHandle<u64>>,
}

impl KeyedProcessFunction<u64, (u64, u64), (u64, u64, u64)> for Count {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.count = Some(state.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    fn process(
        &mut self,
        (key, x): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, u64, u64)>,
    ) -> FnResult {
        let handle = self.count.clone().ok_or("open first")?;
        let n = ctx.value(&handle).modify(
            || 0,
            |n| {
                *n += 1;
                *n
            },
        )?;
        out.push((key, n, x));
        Ok(())
    }
}

/// Panics unless the `(key, count, record)` triples hold every record of
/// `expected` exactly once, each under its key (`key_of`), and every key's
/// counts are exactly `1..=n` once each (a count restored inconsistently, or
/// a key split over two instances, shows as a gap or a repeat).
fn assert_exactly(
    what: &str,
    triples: &[(u64, u64, u64)],
    expected: &BTreeSet<u64>,
    key_of: impl Fn(u64) -> u64,
) {
    let mut records = BTreeSet::new();
    let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(key, count, x) in triples {
        assert!(records.insert(x), "{what}: record {x} twice");
        assert_eq!(key, key_of(x), "{what}: record {x} under key {key}");
        counts.entry(key).or_default().push(count);
    }
    assert_eq!(
        &records, expected,
        "{what}: not exactly the expected records"
    );
    for (key, mut found) in counts {
        found.sort_unstable();
        let n = found.len() as u64;
        assert_eq!(found, (1..=n).collect::<Vec<_>>(), "{what}: key {key}");
    }
}

/// The job of most tests: `source -> key_by(x % 10) -> Splitter`, the main
/// output and the side output `odd` each to their own branch. The side
/// branch is hash-exchanged again (`key_by(x % 3)`) into a keyed count.
struct Branches {
    main: flowstate::DataStream<(u64, u64, u64)>,
    side: flowstate::DataStream<(u64, u64, u64)>,
}

fn split(numbers: flowstate::DataStream<u64>) -> Branches {
    let main = numbers
        .key_by(|x: &u64| x % KEYS)
        .process(Splitter::default())
        .uid("splitter")
        .name("Splitter");
    let side = main
        .side_output(&odd_tag())
        .map(|(x, label): (u64, String)| {
            assert_eq!(label, format!("odd {x}"));
            (x % 3, x)
        })
        .key_by(|(key, _): &(u64, u64)| *key)
        .process(Count::default())
        .uid("side-count")
        .name("SideCount");
    Branches { main, side }
}

fn evens_and_odds(n: u64) -> (BTreeSet<u64>, BTreeSet<u64>) {
    (0..n).partition(|x| x.is_multiple_of(2))
}

#[test]
fn a_process_function_splits_records_between_main_and_side_output() {
    const N: u64 = 3_000;
    let (evens, odds) = evens_and_odds(N);
    for (parallelism, seed) in [
        (2, None),
        (2, Some(5)),
        (2, Some(11)),
        (3, Some(2)),
        (1, None),
    ] {
        let config = ExecutionConfig {
            batch_size: 7,
            channel_capacity: 2,
            ..ExecutionConfig::with_parallelism(parallelism)
        };
        let env = StreamEnvironment::new(config);
        let numbers = env.from_source("numbers", SequenceSource::new(N, 8, |i| i).unwrap());
        let branches = split(numbers);
        let main = branches.main.collect();
        let side = branches.side.collect();
        match seed {
            None => {
                env.execute().expect("job succeeds");
            }
            Some(seed) => {
                env.deterministic(seed)
                    .unwrap()
                    .run()
                    .expect("job succeeds");
            }
        }
        let what = format!("parallelism {parallelism}, seed {seed:?}");
        assert_exactly(
            &format!("main, {what}"),
            &main.lock().unwrap(),
            &evens,
            |x| x % KEYS,
        );
        assert_exactly(
            &format!("side, {what}"),
            &side.lock().unwrap(),
            &odds,
            |x| x % 3,
        );
    }
}

#[test]
fn records_emitted_to_a_side_output_nobody_consumes_are_dropped() {
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(2));
    let main = env
        .from_collection((0..100u64).collect())
        .key_by(|x: &u64| x % KEYS)
        .process(Splitter::default())
        .collect();
    env.execute().expect("job succeeds");
    let mut got: Vec<u64> = main.lock().unwrap().iter().map(|t| t.2).collect();
    got.sort_unstable();
    assert_eq!(got, (0..100).step_by(2).collect::<Vec<_>>());
}

#[test]
fn a_side_output_of_an_operator_without_side_outputs_fails_the_build() {
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(1));
    let mapped = env.from_collection(vec![1u64, 2, 3]).map(|x| x + 1);
    mapped.side_output(&odd_tag()).collect();
    let error = env.execute().expect_err("a map has no side outputs");
    assert!(
        error.to_string().contains("emits no side outputs")
            || format!("{error:?}").contains("emits no side outputs"),
        "{error:?}"
    );
}

fn checkpointed(storage: &str, parallelism: u32) -> ExecutionConfig {
    ExecutionConfig {
        job_name: "side-outputs".into(),
        batch_size: 64,
        checkpointing: Some(CheckpointingConfig {
            storage: open_storage(storage).unwrap(),
            settings: CoordinatorSettings {
                interval: Some(Duration::from_millis(20)),
                // A checkpoint a task never acknowledges (a barrier that
                // did not reach it) fails the test instead of hanging it.
                timeout: Duration::from_secs(5),
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::fixed_delay(3, Duration::from_millis(10)),
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(parallelism)
    }
}

/// The published `a,b,c` lines of a file sink's directory (hidden,
/// unpublished files skipped).
fn published(dir: &Path) -> Vec<(u64, u64, u64)> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: Vec<u64> = line.split(',').map(|s| s.parse().unwrap()).collect();
            lines.push((v[0], v[1], v[2]));
        }
    }
    lines
}

fn line((a, b, c): (u64, u64, u64)) -> String {
    format!("{a},{b},{c}")
}

/// Both outputs go to exactly-once file sinks; an operator upstream fails
/// once, mid-stream, after checkpoints completed: the job restarts from the
/// latest checkpoint, and each output holds each of its records exactly once
/// with consistent keyed counts.
#[test]
fn both_outputs_are_exactly_once_across_a_failure_and_restore() {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let (main_dir, side_dir) = (dir.path().join("main"), dir.path().join("side"));
    let storage = format!("memory://side-outputs-eo-{}", std::process::id());
    let env = StreamEnvironment::new(checkpointed(&storage, 2));
    let failed = AtomicBool::new(false);
    let source = SequenceSource::new(N, 16, |i| i)
        .unwrap()
        .with_rate(25_000)
        .unwrap();
    let numbers = env
        .from_source("numbers", source)
        .uid("numbers")
        .map(move |x: u64| {
            if x == N / 2 && !failed.swap(true, Ordering::SeqCst) {
                panic!("injected failure at record {x}");
            }
            x
        })
        .name("Fragile");
    let branches = split(numbers);
    branches
        .main
        .map(line)
        .sink_to("main files", FileSink::new(&main_dir).unwrap());
    branches
        .side
        .map(line)
        .sink_to("side files", FileSink::new(&side_dir).unwrap());
    let report = env.execute().expect("job succeeds after its restart");
    assert_eq!(report.restarts, 1, "the injected failure restarted the job");
    assert!(
        report.restored_from.is_some() || report.completed_checkpoints > 0,
        "checkpoints completed"
    );
    let (evens, odds) = evens_and_odds(N);
    assert_exactly("main files", &published(&main_dir), &evens, |x| x % KEYS);
    assert_exactly("side files", &published(&side_dir), &odds, |x| x % 3);
}

/// A branch fed only by a side output (the main output unused): its sink
/// takes part in every checkpoint (with exactly-once alignment a missing
/// barrier would stall every checkpoint, and the file sink publishes only
/// what completed checkpoints cover), and it hears the end of event time.
#[test]
fn a_side_output_only_branch_completes_checkpoints_and_hears_the_end_of_event_time() {
    const N: u64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let side_dir = dir.path().join("side");
    let storage = format!("memory://side-outputs-only-{}", std::process::id());
    let mut config = checkpointed(&storage, 2);
    let checkpointing = config.checkpointing.as_mut().unwrap();
    checkpointing.settings.tolerable_failures = 0;
    checkpointing.restart = RestartStrategy::None;
    let env = StreamEnvironment::new(config);
    let source = SequenceSource::new(N, 4, |i| i)
        .unwrap()
        .with_rate(20_000)
        .unwrap()
        .with_event_time(WatermarkStrategy::monotonous(|x: &u64| *x as i64));
    let numbers = env.from_source("numbers", source).uid("numbers");
    let branches = split(numbers);
    branches
        .side
        .map(line)
        .sink_to("side files", FileSink::new(&side_dir).unwrap());
    let job = env.start().expect("job starts");
    let metrics = std::sync::Arc::clone(job.metrics());
    let report = job.join().expect("job succeeds");
    assert!(
        report.completed_checkpoints >= 2,
        "checkpoints completed: {}",
        report.completed_checkpoints
    );
    let (_, odds) = evens_and_odds(N);
    assert_exactly("side files", &published(&side_dir), &odds, |x| x % 3);
    assert_eq!(
        metrics.watermark_of("SideCount"),
        Some(Watermark::MAX),
        "the side branch's task heard the end of event time: {:?}",
        metrics.watermarks()
    );
}

/// `(key, timestamp)`.
type Event = (u64, i64);

#[test]
fn late_records_reach_the_side_output_and_are_counted() {
    // Timestamps 0, 10, ..., 1990 in order; one record of key 1 at 50
    // arrives after 1500: far behind the watermark (out-of-orderness 30).
    let mut events: Vec<Event> = (0..200).map(|i| (i % 3, i as i64 * 10)).collect();
    let late: Event = (1, 50);
    events.insert(151, late);
    let late_tag: OutputTag<Event> = OutputTag::new("late");
    for seed in [1, 2, 3] {
        let config = ExecutionConfig {
            batch_size: 8,
            ..ExecutionConfig::with_parallelism(1)
        };
        let env = StreamEnvironment::new(config);
        let windowed = env
            .from_collection(events.clone())
            .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(
                30,
                |e: &Event| e.1,
            ))
            .key_by(|e: &Event| e.0)
            .window_by(
                TumblingEventTimeWindows::of(Duration::from_millis(100)),
                |e| e.1,
            )
            .side_output_late_data(&late_tag);
        let dropped = windowed.dropped_late_records();
        let counts = windowed
            .aggregate_with(CountAgg, |key, window, n| (*key, window.start, n))
            .name("Counts");
        // The late records go through a hash exchange of their own.
        let late_out = counts
            .side_output(&late_tag)
            .key_by(|e: &Event| e.0)
            .reduce(|a, _| a)
            .collect();
        let counted = counts.collect();
        env.deterministic(seed)
            .unwrap()
            .run()
            .expect("job succeeds");
        assert_eq!(*late_out.lock().unwrap(), vec![late], "seed {seed}");
        assert_eq!(dropped.load(Ordering::Relaxed), 1, "seed {seed}");
        let total: u64 = counted.lock().unwrap().iter().map(|c| c.2).sum();
        assert_eq!(total, 200, "seed {seed}: the late record is in no window");
    }
}

#[derive(Clone)]
struct CountAgg;

impl flowstate::WindowAggregateFunction<Event, u64, u64> for CountAgg {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _input: Event) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

fn late_payments_tag() -> OutputTag<(u64, u64, u64)> {
    OutputTag::new("second")
}

/// A keyed co-process function: records of the first input are counted per
/// key and go to the main output as `(key, count, record)`; records of the
/// second input are counted apart and go to the side output `second`.
#[derive(Clone, Default)]
struct CoSplitter {
    first: Option<ValueStateHandle<u64>>,
    second: Option<ValueStateHandle<u64>>,
}

impl CoSplitter {
    fn count(handle: &Option<ValueStateHandle<u64>>, ctx: &mut KeyedContext<'_, u64>) -> u64 {
        let handle = handle.clone().expect("opened");
        ctx.value(&handle)
            .modify(
                || 0,
                |n| {
                    *n += 1;
                    *n
                },
            )
            .expect("heap state")
    }
}

impl KeyedCoProcessFunction<u64, u64, u64, (u64, u64, u64)> for CoSplitter {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.first = Some(state.value_state(&ValueStateDescriptor::new("first"))?);
        self.second = Some(state.value_state(&ValueStateDescriptor::new("second"))?);
        Ok(())
    }

    fn process_first(
        &mut self,
        x: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, u64, u64)>,
    ) -> FnResult {
        let n = Self::count(&self.first, ctx);
        out.push((*ctx.key(), n, x));
        Ok(())
    }

    fn process_second(
        &mut self,
        x: u64,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Vec<(u64, u64, u64)>,
    ) -> FnResult {
        let n = Self::count(&self.second, ctx);
        let key = *ctx.key();
        ctx.output(&late_payments_tag(), (key, n, x))
    }
}

/// Two-input operators have side outputs too: a keyed co-process function's
/// `ctx.output` reaches the side output's own branch (exchanged again), in
/// plain and seeded runs, and both outputs stay exactly-once through the file
/// sink across an injected failure and restore. Without side outputs on
/// two-input operators, `side_output` panics while the graph is built (and
/// `ctx.output` dropped the records).
#[test]
fn a_keyed_co_process_function_emits_to_a_side_output_exactly_once() {
    const N: u64 = 6_000;
    let firsts: BTreeSet<u64> = (0..N).collect();
    let seconds: BTreeSet<u64> = (N..2 * N).collect();
    let build = |env: &StreamEnvironment, fail: Option<Arc<AtomicBool>>| {
        let first = env
            .from_source("first", SequenceSource::new(N, 4, |i| i).unwrap())
            .uid("first")
            .map(move |x: u64| {
                if x == N / 2
                    && fail
                        .as_ref()
                        .is_some_and(|f| !f.swap(true, Ordering::SeqCst))
                {
                    panic!("injected failure at record {x}");
                }
                x
            })
            .key_by(|x: &u64| x % KEYS);
        let second = env
            .from_source("second", SequenceSource::new(N, 4, |i| N + i).unwrap())
            .uid("second")
            .key_by(|x: &u64| x % KEYS);
        let main = first
            .connect(&second)
            .process(CoSplitter::default())
            .uid("co-splitter");
        let side = main
            .side_output(&late_payments_tag())
            .map(|(_, _, x): (u64, u64, u64)| (x % 3, x))
            .key_by(|(key, _): &(u64, u64)| *key)
            .process(Count::default())
            .uid("side-count");
        (main, side)
    };
    for (parallelism, seed) in [(2, None), (2, Some(3)), (3, Some(8)), (1, None)] {
        let env = StreamEnvironment::new(ExecutionConfig {
            batch_size: 5,
            channel_capacity: 2,
            ..ExecutionConfig::with_parallelism(parallelism)
        });
        let (main, side) = build(&env, None);
        let (main, side) = (main.collect(), side.collect());
        match seed {
            None => drop(env.execute().expect("job succeeds")),
            Some(seed) => drop(
                env.deterministic(seed)
                    .unwrap()
                    .run()
                    .expect("job succeeds"),
            ),
        }
        let what = format!("parallelism {parallelism}, seed {seed:?}");
        assert_exactly(
            &format!("main, {what}"),
            &main.lock().unwrap(),
            &firsts,
            |x| x % KEYS,
        );
        assert_exactly(
            &format!("side, {what}"),
            &side.lock().unwrap(),
            &seconds,
            |x| x % 3,
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (main_dir, side_dir) = (dir.path().join("main"), dir.path().join("side"));
    let storage = format!("memory://co-side-outputs-eo-{}", std::process::id());
    let env = StreamEnvironment::new(checkpointed(&storage, 2));
    let (main, side) = build(&env, Some(Arc::new(AtomicBool::new(false))));
    main.map(line)
        .sink_to("main files", FileSink::new(&main_dir).unwrap());
    side.map(line)
        .sink_to("side files", FileSink::new(&side_dir).unwrap());
    let report = env.execute().expect("job succeeds after its restart");
    assert_eq!(report.restarts, 1, "the injected failure restarted the job");
    assert_exactly("main files", &published(&main_dir), &firsts, |x| x % KEYS);
    assert_exactly("side files", &published(&side_dir), &seconds, |x| x % 3);
}
