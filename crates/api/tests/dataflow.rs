//! Dataflow semantics of the DataStream API: results of transformations and keyed
//! operators equal a plain-Rust computation at several parallelisms, on the
//! threaded executor and on the seeded one; keys reach the instance owning their
//! key group; operators are chained into the expected tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use flowstate::state::{KeyGroupRange, key_group_of};
use flowstate::{
    AggregateFunction, ExecutionConfig, FnResult, KeyedCoProcessFunction, KeyedContext,
    KeyedProcessFunction, KeyedStateBackend, Sink, SinkWriter, StreamEnvironment, SubtaskInfo,
    UserError, ValueStateDescriptor, ValueStateHandle,
};

/// Small batches and channels so that even small inputs cross many batch and
/// channel boundaries.
fn config(parallelism: u32) -> ExecutionConfig {
    ExecutionConfig {
        batch_size: 7,
        channel_capacity: 2,
        ..ExecutionConfig::with_parallelism(parallelism)
    }
}

/// How a job is run.
#[derive(Debug, Clone, Copy)]
enum Exec {
    Threads,
    Seeded(u64),
}

fn run(env: &StreamEnvironment, exec: Exec) {
    match exec {
        Exec::Threads => {
            env.execute().expect("job succeeds");
        }
        Exec::Seeded(seed) => {
            env.deterministic(seed)
                .expect("job builds")
                .run()
                .expect("job succeeds");
        }
    }
}

/// Every parallelism the tests cover, on both executors.
fn setups() -> Vec<(u32, Exec)> {
    let mut all = Vec::new();
    for p in [1, 2, 3] {
        all.push((p, Exec::Threads));
        all.push((p, Exec::Seeded(u64::from(p) * 31 + 7)));
    }
    all
}

fn take<T: Clone>(items: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    items.lock().unwrap().clone()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn map_filter_flat_map_equal_plain_rust() {
    let input: Vec<u64> = (0..2000).collect();
    let expected = sorted(
        input
            .iter()
            .map(|x| x * 3 + 1)
            .filter(|x| x % 2 == 0)
            .flat_map(|x| std::iter::repeat_n(x, (x % 4) as usize))
            .map(|x| format!("v{x}"))
            .collect(),
    );
    for (p, exec) in setups() {
        let env = StreamEnvironment::new(config(p));
        let out = env
            .from_collection(input.clone())
            .map(|x| x * 3 + 1)
            .filter(|x| x % 2 == 0)
            .flat_map(|x| std::iter::repeat_n(x, (x % 4) as usize))
            .map(|x| format!("v{x}"))
            .collect();
        run(&env, exec);
        assert_eq!(sorted(take(&out)), expected, "p={p} {exec:?}");
    }
}

#[test]
fn union_and_rebalance_equal_plain_rust() {
    let left: Vec<i64> = (0..700).collect();
    let right: Vec<i64> = (-300..0).collect();
    let expected = sorted(
        left.iter()
            .map(|x| x * 2)
            .chain(right.iter().filter(|x| *x % 3 != 0).copied())
            .map(|x| x - 1)
            .collect(),
    );
    for (p, exec) in setups() {
        let env = StreamEnvironment::new(config(p));
        let l = env.from_collection(left.clone()).map(|x| x * 2);
        let r = env.from_collection(right.clone()).filter(|x| *x % 3 != 0);
        let out = l.union(&r).rebalance().map(|x| x - 1).collect();
        run(&env, exec);
        assert_eq!(sorted(take(&out)), expected, "p={p} {exec:?}");
    }
}

#[test]
fn union_of_a_stream_with_itself_has_every_record_twice() {
    let input: Vec<u32> = (0..500).collect();
    let expected = sorted(input.iter().chain(input.iter()).copied().collect());
    for (p, exec) in setups() {
        let env = StreamEnvironment::new(config(p));
        let s = env.from_collection(input.clone());
        let out = s.union(&s).collect();
        run(&env, exec);
        assert_eq!(sorted(take(&out)), expected, "p={p} {exec:?}");
    }
}

/// A sink that records which subtask wrote each record.
#[derive(Clone)]
struct SubtaskSink {
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
}

struct SubtaskWriter {
    index: u32,
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
}

impl Sink<u64> for SubtaskSink {
    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        Ok(Box::new(SubtaskWriter {
            index: subtask.index,
            seen: Arc::clone(&self.seen),
        }))
    }
}

impl SinkWriter<u64> for SubtaskWriter {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(batch.drain(..).map(|r| (self.index, r)));
        Ok(())
    }
    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

#[test]
fn forward_edges_keep_records_on_their_instance_and_rebalance_spreads_them() {
    let n = 3000u64;
    for (p, exec) in setups() {
        // Forward: the collection source's instance i emits items i, i+p, ...; a
        // chained map and sink stay on instance i.
        let env = StreamEnvironment::new(config(p));
        let forward = SubtaskSink {
            seen: Arc::default(),
        };
        let rebalanced = SubtaskSink {
            seen: Arc::default(),
        };
        let mapped = env.from_collection((0..n).collect()).map(|x| x + 1);
        mapped.sink_to("Sink: Forward", forward.clone());
        mapped
            .rebalance()
            .sink_to("Sink: Rebalanced", rebalanced.clone());
        run(&env, exec);

        let forward = take(&forward.seen);
        assert_eq!(forward.len() as u64, n, "p={p} {exec:?}");
        for &(index, record) in &forward {
            assert_eq!(
                (record - 1) % u64::from(p),
                u64::from(index),
                "record {record} left its instance (p={p} {exec:?})"
            );
        }

        let rebalanced = take(&rebalanced.seen);
        assert_eq!(
            sorted(rebalanced.iter().map(|(_, r)| *r).collect()),
            (1..=n).collect::<Vec<_>>(),
            "p={p} {exec:?}"
        );
        // Each source instance sends more than p batches, dealt round-robin: every
        // downstream instance gets some.
        let used: BTreeSet<u32> = rebalanced.iter().map(|(i, _)| *i).collect();
        assert_eq!(used, (0..p).collect(), "p={p} {exec:?}");
    }
}

/// Words with a skewed distribution, and their values.
fn word_records() -> Vec<(String, u64)> {
    (0..3000u64)
        .map(|i| {
            let word = format!("w{}", (i * i + 3 * i) % 97 % (1 + i % 41));
            (word, i % 13 + 1)
        })
        .collect()
}

#[test]
fn key_by_reduce_gives_final_per_key_values() {
    let input = word_records();
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (w, v) in &input {
        let e = expected.entry(w.clone()).or_default();
        e.0 += 1;
        e.1 += v;
    }
    for (p, exec) in setups() {
        let env = StreamEnvironment::new(config(p));
        let out = env
            .from_collection(input.clone())
            .map(|(w, v)| (w, 1u64, v))
            .key_by(|(w, _, _)| w.clone())
            .reduce(|(w, c1, s1), (_, c2, s2)| (w, c1 + c2, s1 + s2))
            .collect();
        run(&env, exec);

        // All emissions of a key come from one instance, in order: counts 1..=c.
        let mut per_key: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for (w, c, s) in take(&out) {
            per_key.entry(w).or_default().push((c, s));
        }
        let finals: BTreeMap<String, (u64, u64)> = per_key
            .iter()
            .map(|(w, updates)| {
                let counts: Vec<u64> = updates.iter().map(|(c, _)| *c).collect();
                assert_eq!(
                    counts,
                    (1..=updates.len() as u64).collect::<Vec<_>>(),
                    "updates of {w} (p={p} {exec:?})"
                );
                (w.clone(), *updates.last().unwrap())
            })
            .collect();
        assert_eq!(finals, expected, "p={p} {exec:?}");
    }
}

/// Average per key; the accumulator remembers the key so the result names it.
#[derive(Clone)]
struct KeyedAverage;

impl AggregateFunction<(String, u64), (String, u64, u64), (String, u64, f64)> for KeyedAverage {
    fn create_accumulator(&self) -> (String, u64, u64) {
        (String::new(), 0, 0)
    }
    fn add(&self, acc: &mut (String, u64, u64), (key, value): (String, u64)) {
        acc.0 = key;
        acc.1 += value;
        acc.2 += 1;
    }
    fn result(&self, acc: &(String, u64, u64)) -> (String, u64, f64) {
        (acc.0.clone(), acc.2, acc.1 as f64 / acc.2 as f64)
    }
}

#[test]
fn key_by_aggregate_gives_final_per_key_values() {
    let input = word_records();
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (w, v) in &input {
        let e = sums.entry(w.clone()).or_default();
        e.0 += v;
        e.1 += 1;
    }
    let expected: BTreeMap<String, (u64, f64)> = sums
        .into_iter()
        .map(|(w, (sum, n))| (w, (n, sum as f64 / n as f64)))
        .collect();
    for (p, exec) in setups() {
        let env = StreamEnvironment::new(config(p));
        let out = env
            .from_collection(input.clone())
            .key_by(|(w, _)| w.clone())
            .aggregate(KeyedAverage)
            .collect();
        run(&env, exec);
        let emitted = take(&out);
        assert_eq!(emitted.len(), input.len(), "one result per record");
        let mut finals: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for (w, n, avg) in emitted {
            let e = finals.entry(w).or_insert((0, 0.0));
            if n > e.0 {
                *e = (n, avg);
            }
        }
        assert_eq!(finals, expected, "p={p} {exec:?}");
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Joined {
    Paid { id: u64, amount: u64, paid: u64 },
    Unpaid { id: u64, amount: u64 },
}

/// Joins orders `(id, amount)` with payments `(id, paid)` by id; whichever comes
/// first waits in keyed state. At the end, orders still waiting are reported.
#[derive(Clone, Default)]
struct OrderPaymentJoin {
    orders: Option<ValueStateHandle<u64>>,
    payments: Option<ValueStateHandle<u64>>,
}

impl KeyedCoProcessFunction<u64, (u64, u64), (u64, u64), Joined> for OrderPaymentJoin {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.orders = Some(state.value_state(&ValueStateDescriptor::new("orders"))?);
        self.payments = Some(state.value_state(&ValueStateDescriptor::new("payments"))?);
        Ok(())
    }

    fn process_first(
        &mut self,
        (id, amount): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Joined>,
    ) -> FnResult {
        let payments = self.payments.as_ref().ok_or("not open")?;
        let orders = self.orders.as_ref().ok_or("not open")?;
        assert_eq!(*ctx.key(), id);
        match ctx.value(payments).clear()? {
            Some(paid) => out.push(Joined::Paid { id, amount, paid }),
            None => ctx.value(orders).set(amount)?,
        }
        Ok(())
    }

    fn process_second(
        &mut self,
        (id, paid): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Joined>,
    ) -> FnResult {
        let payments = self.payments.as_ref().ok_or("not open")?;
        let orders = self.orders.as_ref().ok_or("not open")?;
        assert_eq!(*ctx.key(), id);
        match ctx.value(orders).clear()? {
            Some(amount) => out.push(Joined::Paid { id, amount, paid }),
            None => ctx.value(payments).set(paid)?,
        }
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        out: &mut Vec<Joined>,
    ) -> FnResult {
        let orders = self.orders.as_ref().ok_or("not open")?;
        state.for_each_value(orders, |&id, &amount| {
            out.push(Joined::Unpaid { id, amount })
        })?;
        Ok(())
    }
}

#[test]
fn connected_keyed_streams_join_orders_and_payments() {
    // Orders 0..400; every third order is never paid; payments arrive in another
    // order than the orders.
    let orders: Vec<(u64, u64)> = (0..400).map(|id| (id, 100 + id * 7 % 50)).collect();
    let payments: Vec<(u64, u64)> = (0..400)
        .rev()
        .filter(|id| id % 3 != 0)
        .map(|id| (id, id * 11 % 90))
        .collect();
    let expected: Vec<Joined> = sorted(
        orders
            .iter()
            .map(
                |&(id, amount)| match payments.iter().find(|(p, _)| *p == id) {
                    Some(&(_, paid)) => Joined::Paid { id, amount, paid },
                    None => Joined::Unpaid { id, amount },
                },
            )
            .collect(),
    );
    let mut setups = setups();
    setups.extend((100..110).map(|seed| (2, Exec::Seeded(seed))));
    for (p, exec) in setups {
        let env = StreamEnvironment::new(config(p));
        let o = env.from_collection(orders.clone()).key_by(|(id, _)| *id);
        let pay = env
            .from_collection(payments.clone())
            .map(|x| x)
            .key_by(|(id, _)| *id);
        let out = o
            .connect(&pay)
            .process(OrderPaymentJoin::default())
            .collect();
        run(&env, exec);
        assert_eq!(sorted(take(&out)), expected, "p={p} {exec:?}");
    }
}

#[test]
fn a_stream_consumed_twice_feeds_both_consumers_fully() {
    let input: Vec<u64> = (0..1500).collect();
    let squares: Vec<u64> = input.iter().map(|x| x * x % 1000).collect();
    let mut expected_counts: BTreeMap<u64, u64> = BTreeMap::new();
    for s in &squares {
        *expected_counts.entry(s % 10).or_default() += 1;
    }
    for (p, exec) in setups() {
        let env = StreamEnvironment::new(config(p));
        let s = env.from_collection(input.clone()).map(|x| x * x % 1000);
        // Two sinks on one stream (chained: a tee inside the task) ...
        let first = s.collect();
        let count = s.count();
        // ... and a third, non-chained consumer through a key_by.
        let per_digit = s
            .map(|x| (x % 10, 1u64))
            .key_by(|(d, _)| *d)
            .reduce(|(d, a), (_, b)| (d, a + b))
            .collect();
        run(&env, exec);

        assert_eq!(
            sorted(take(&first)),
            sorted(squares.clone()),
            "p={p} {exec:?}"
        );
        assert_eq!(
            count.load(std::sync::atomic::Ordering::Relaxed),
            squares.len() as u64,
            "p={p} {exec:?}"
        );
        let mut finals: BTreeMap<u64, u64> = BTreeMap::new();
        for (d, c) in take(&per_digit) {
            let e = finals.entry(d).or_default();
            *e = (*e).max(c);
        }
        assert_eq!(finals, expected_counts, "p={p} {exec:?}");
    }
}

/// Records the key-group range of its instance (from the backend, in `open`) and
/// every key it processes; counts records per key in keyed state.
#[derive(Clone)]
struct AssignmentProbe {
    range: Option<KeyGroupRange>,
    count: Option<ValueStateHandle<u64>>,
    ranges: Arc<Mutex<Vec<KeyGroupRange>>>,
    seen: Arc<Mutex<Vec<(KeyGroupRange, u64)>>>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for AssignmentProbe {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        let range = state.key_group_range();
        self.range = Some(range);
        self.ranges.lock().unwrap().push(range);
        self.count = Some(state.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    fn process(
        &mut self,
        record: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, u64)>,
    ) -> FnResult {
        let range = self.range.ok_or("not open")?;
        let key = *ctx.key();
        assert_eq!(key, record % 1000);
        self.seen.lock().unwrap().push((range, key));
        let handle = self.count.as_ref().ok_or("not open")?;
        let n = ctx.value(handle).modify(
            || 0,
            |n| {
                *n += 1;
                *n
            },
        )?;
        out.push((key, n));
        Ok(())
    }
}

#[test]
fn every_key_is_processed_by_the_instance_owning_its_key_group() {
    let input: Vec<u64> = (0..5000).map(|i| i * 7919 % 100_003).collect();
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &input {
        *expected.entry(r % 1000).or_default() += 1;
    }
    let cases = [
        (3, 7, Exec::Threads),
        (3, 7, Exec::Seeded(1)),
        (4, 128, Exec::Threads),
        (4, 128, Exec::Seeded(2)),
        (2, 2, Exec::Threads),
        (2, 2, Exec::Seeded(3)),
        (1, 1, Exec::Seeded(4)),
        (5, 5, Exec::Threads),
        (3, 1000, Exec::Seeded(5)),
    ];
    for (p, m, exec) in cases {
        let env = StreamEnvironment::new(ExecutionConfig {
            max_parallelism: m,
            ..config(p)
        });
        let probe = AssignmentProbe {
            range: None,
            count: None,
            ranges: Arc::default(),
            seen: Arc::default(),
        };
        let out = env
            .from_collection(input.clone())
            .key_by(|r| r % 1000)
            .process(probe.clone())
            .collect();
        run(&env, exec);
        let case = format!("p={p} m={m} {exec:?}");

        // The instances' ranges are the p contiguous ranges covering [0, m).
        let ranges = sorted(
            take(&probe.ranges)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect(),
        );
        let expected_ranges: Vec<(u32, u32)> = (0..p)
            .map(|i| {
                let r = KeyGroupRange::for_operator(i, p, m);
                (r.start, r.end)
            })
            .collect();
        assert_eq!(ranges, expected_ranges, "{case}");

        let seen = take(&probe.seen);
        assert_eq!(seen.len(), input.len(), "{case}");
        let mut owner: BTreeMap<u64, KeyGroupRange> = BTreeMap::new();
        for (range, key) in seen {
            let group = key_group_of(&key, m);
            assert!(
                range.contains(group),
                "key {key} (group {group}) processed by instance {range} ({case})"
            );
            assert_eq!(*owner.entry(key).or_insert(range), range, "{case}");
        }
        // Keyed state counted every record of each key.
        let mut finals: BTreeMap<u64, u64> = BTreeMap::new();
        for (k, n) in take(&out) {
            let e = finals.entry(k).or_default();
            *e = (*e).max(n);
        }
        assert_eq!(finals, expected, "{case}");
    }
}

/// Emits `(key, running sum)` per record, from a value state.
#[derive(Clone, Default)]
struct RunningSum {
    sum: Option<ValueStateHandle<u64>>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for RunningSum {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.sum = Some(state.value_state(&ValueStateDescriptor::new("sum"))?);
        Ok(())
    }

    fn process(
        &mut self,
        record: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, u64)>,
    ) -> FnResult {
        let handle = self.sum.as_ref().ok_or("not open")?;
        let sum = ctx.value(handle).modify(
            || 0,
            |s| {
                *s += record;
                *s
            },
        )?;
        out.push((*ctx.key(), sum));
        Ok(())
    }
}

#[test]
fn operators_are_chained_into_two_tasks_per_subtask() {
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(2));
    let out = env
        .from_collection((0..100u64).collect())
        .map(|x| x * 2)
        .filter(|x| x % 3 != 0)
        .key_by(|x| x % 5)
        .process(RunningSum::default())
        .collect();
    let mut executor = env.deterministic(42).expect("job builds");
    let names = sorted(executor.task_names());
    assert_eq!(
        names,
        [
            "KeyedProcess -> Sink: Collect (1/2)",
            "KeyedProcess -> Sink: Collect (2/2)",
            "Source: Collection -> Map -> Filter (1/2)",
            "Source: Collection -> Map -> Filter (2/2)",
        ],
        "map and filter chain into the source task, the sink into the keyed task: \
         2 chains x 2 subtasks"
    );
    executor.run().expect("job succeeds");

    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for x in (0..100u64).map(|x| x * 2).filter(|x| x % 3 != 0) {
        *expected.entry(x % 5).or_default() += x;
    }
    let mut finals: BTreeMap<u64, u64> = BTreeMap::new();
    for (k, sum) in take(&out) {
        // Running sums only grow: the largest per key is the final one.
        let e = finals.entry(k).or_default();
        *e = (*e).max(sum);
    }
    assert_eq!(finals, expected);
}

#[test]
fn keyed_process_and_named_operators_appear_in_task_names() {
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(3));
    env.from_collection(vec![1u64, 2, 3])
        .map(|x| x + 1)
        .name("AddOne")
        .rebalance()
        .key_by(|x| *x)
        .process(AssignmentProbe {
            range: None,
            count: None,
            ranges: Arc::default(),
            seen: Arc::default(),
        })
        .name("Probe")
        .count();
    let mut executor = env.deterministic(1).expect("job builds");
    let names = sorted(executor.task_names());
    let mut expected = Vec::new();
    for chain in [
        "Probe -> Sink: Count",
        "Rebalance",
        "Source: Collection -> AddOne",
    ] {
        for i in 1..=3 {
            expected.push(format!("{chain} ({i}/3)"));
        }
    }
    assert_eq!(names, sorted(expected));
    executor.run().expect("job succeeds");
}

#[test]
fn a_stream_of_an_executed_job_is_not_silently_rebound() {
    // `execute` takes the graph out of the environment and leaves an empty one;
    // streams built before keep their node index. If a new job reuses that index
    // for another node of the same type, an old stream is silently wired to it.
    let env = StreamEnvironment::new(ExecutionConfig::default());
    let old = env.from_collection(vec![1u64, 2, 3]);
    old.count();
    env.execute().expect("first job succeeds");

    let _new = env.from_collection(vec![10u64, 20]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let out = old.map(|x| x).collect();
        env.execute().map(|_| take(&out))
    }));
    match result {
        // Refusing the stale stream (a panic or an error) is fine.
        Err(_) | Ok(Err(_)) => {}
        Ok(Ok(records)) => {
            panic!("a stream of the first job (1, 2, 3) read the second job's source: {records:?}")
        }
    }
}
