//! Operator-level tests of keyed timers: the keyed operator is driven by hand
//! (`process_batch`, `on_watermark`, `snapshot`), with a manual clock.

use std::sync::Arc;

use flowstate_runtime::{Barrier, Operator, RestoredState, SubtaskInfo, Watermark};
use flowstate_state::codec::encode_to_vec;
use flowstate_state::memory_store::MemoryStoreFactory;
use flowstate_state::{
    BackendSnapshot, KeyGroup, ManualClock, RestoredKeyedState, SharedClock, StateBackendConfig,
    key_group_of,
};

use crate::keyed::{
    FnResult, KeySelector, KeyedContext, KeyedProcessFunction, KeyedProcessOperator,
};
use crate::timers::TimeDomain;

pub(crate) const MAX_PARALLELISM: u32 = 128;

/// What a probe record asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmd {
    RegisterEvent(i64),
    DeleteEvent(i64),
    RegisterProcessing(i64),
    DeleteProcessing(i64),
}

/// Registers and deletes timers as told; emits `(key, time, domain)` per
/// firing. A firing event timer at a time in `chain` registers one more at
/// `time - 5` (already passed) and one at `time + 1000`.
#[derive(Clone, Default)]
struct Probe {
    chain: Vec<i64>,
}

type Fired = (u64, i64, TimeDomain);

impl KeyedProcessFunction<u64, (u64, Cmd), Fired> for Probe {
    fn process(
        &mut self,
        (_, cmd): (u64, Cmd),
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Vec<Fired>,
    ) -> FnResult {
        match cmd {
            Cmd::RegisterEvent(t) => ctx.register_event_time_timer(t),
            Cmd::DeleteEvent(t) => ctx.delete_event_time_timer(t),
            Cmd::RegisterProcessing(t) => ctx.register_processing_time_timer(t),
            Cmd::DeleteProcessing(t) => ctx.delete_processing_time_timer(t),
        }
    }

    fn on_timer(
        &mut self,
        timestamp: i64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Fired>,
    ) -> FnResult {
        out.push((*ctx.key(), timestamp, domain));
        if domain == TimeDomain::EventTime && self.chain.contains(&timestamp) {
            ctx.register_event_time_timer(timestamp - 5)?;
            ctx.register_event_time_timer(timestamp + 1000)?;
        }
        Ok(())
    }
}

pub(crate) fn subtask(
    index: u32,
    parallelism: u32,
    backend: StateBackendConfig,
    clock: SharedClock,
    restored: Option<&[(KeyGroup, Vec<u8>)]>,
) -> SubtaskInfo {
    let mut subtask = SubtaskInfo::new("probe", index, parallelism, MAX_PARALLELISM);
    subtask.state_backend = backend;
    subtask.clock = clock;
    let range = subtask.key_group_range();
    subtask.restored = restored.map(|sections| {
        Arc::new(RestoredState {
            keyed: RestoredKeyedState {
                groups: sections
                    .iter()
                    .filter(|(g, _)| range.contains(*g))
                    .cloned()
                    .collect(),
                native: Vec::new(),
                streams: Vec::new(),
            },
            lists: Vec::new(),
        })
    });
    subtask
}

/// A savepoint (canonical) of an operator, as key-group sections.
pub(crate) fn savepoint_sections<I, O>(
    operator: &mut dyn Operator<I, O>,
) -> Vec<(KeyGroup, Vec<u8>)> {
    let snapshot = operator.snapshot(Barrier::savepoint(1)).expect("snapshot");
    let Some(BackendSnapshot::KeyGroups(keyed)) = snapshot.keyed else {
        panic!("a savepoint is in key groups");
    };
    keyed
        .range
        .iter()
        .map(|group| {
            let mut bytes = Vec::new();
            keyed.write_key_group(group, &mut bytes).expect("section");
            (group, bytes)
        })
        .collect()
}

pub(crate) fn memory_store() -> StateBackendConfig {
    StateBackendConfig::Store(Arc::new(MemoryStoreFactory))
}

fn probe(subtask: &SubtaskInfo, chain: Vec<i64>) -> KeyedProcessOperator<u64, (u64, Cmd), Probe> {
    KeyedProcessOperator::create::<Fired>(
        subtask,
        KeySelector::new(|r: &(u64, Cmd)| r.0),
        Probe { chain },
    )
    .expect("operator opens")
}

fn single(clock: &Arc<ManualClock>) -> KeyedProcessOperator<u64, (u64, Cmd), Probe> {
    probe(
        &subtask(0, 1, StateBackendConfig::Heap, clock.clone(), None),
        Vec::new(),
    )
}

fn feed(operator: &mut dyn Operator<(u64, Cmd), Fired>, records: Vec<(u64, Cmd)>) -> Vec<Fired> {
    let mut input = records;
    let mut out = Vec::new();
    operator.process_batch(&mut input, &mut out).expect("batch");
    out
}

fn watermark(operator: &mut dyn Operator<(u64, Cmd), Fired>, at: i64) -> Vec<Fired> {
    let mut out = Vec::new();
    operator
        .on_watermark(Watermark(at), &mut out)
        .expect("watermark");
    out
}

/// The order timers of one time fire in: key group, then encoded key.
fn key_order(keys: &mut [u64]) {
    keys.sort_by_key(|k| {
        (
            key_group_of(k, MAX_PARALLELISM),
            encode_to_vec(k).expect("encodes"),
        )
    });
}

#[test]
fn timers_are_deduplicated_and_fire_in_time_then_key_order() {
    let clock = ManualClock::new(0);
    let mut op = single(&clock);
    let mut records = Vec::new();
    for key in 1..=20u64 {
        for t in [30, 10, 20, 10, 30] {
            records.push((key, Cmd::RegisterEvent(t)));
        }
    }
    assert!(feed(&mut op, records).is_empty());
    assert_eq!(op.pending_timers(TimeDomain::EventTime), 60);

    let fired = watermark(&mut op, 15);
    let mut keys: Vec<u64> = (1..=20).collect();
    key_order(&mut keys);
    let expected: Vec<Fired> = keys
        .iter()
        .map(|&k| (k, 10, TimeDomain::EventTime))
        .collect();
    assert_eq!(fired, expected, "time 10 fires once per key, in key order");

    let fired = watermark(&mut op, 30);
    let expected: Vec<Fired> = [20, 30]
        .iter()
        .flat_map(|&t| keys.iter().map(move |&k| (k, t, TimeDomain::EventTime)))
        .collect();
    assert_eq!(fired, expected, "time order first, then key order");
    assert_eq!(op.pending_timers(TimeDomain::EventTime), 0);
    assert!(watermark(&mut op, 1_000).is_empty(), "a timer fires once");
}

#[test]
fn a_deleted_timer_does_not_fire() {
    let clock = ManualClock::new(0);
    let mut op = single(&clock);
    feed(
        &mut op,
        vec![
            (1, Cmd::RegisterEvent(10)),
            (1, Cmd::RegisterEvent(20)),
            (2, Cmd::RegisterEvent(10)),
            (1, Cmd::DeleteEvent(10)),
            (1, Cmd::DeleteEvent(99)),
            (3, Cmd::DeleteEvent(10)),
            (1, Cmd::RegisterProcessing(50)),
            (1, Cmd::DeleteProcessing(50)),
        ],
    );
    assert_eq!(
        watermark(&mut op, 100),
        vec![
            (2, 10, TimeDomain::EventTime),
            (1, 20, TimeDomain::EventTime)
        ]
    );
    clock.set_ms(1_000);
    assert!(feed(&mut op, Vec::new()).is_empty());
    assert_eq!(op.pending_timers(TimeDomain::ProcessingTime), 0);
}

#[test]
fn a_timer_registered_while_firing_for_a_passed_time_fires_in_the_same_pass() {
    let clock = ManualClock::new(0);
    let mut op = probe(
        &subtask(0, 1, StateBackendConfig::Heap, clock.clone(), None),
        vec![100],
    );
    feed(&mut op, vec![(7, Cmd::RegisterEvent(100))]);
    assert_eq!(
        watermark(&mut op, 200),
        vec![
            (7, 100, TimeDomain::EventTime),
            (7, 95, TimeDomain::EventTime)
        ]
    );
    assert_eq!(op.pending_timers(TimeDomain::EventTime), 1, "1100 waits");
    assert_eq!(
        watermark(&mut op, 1_100),
        vec![(7, 1_100, TimeDomain::EventTime)]
    );
}

#[test]
fn event_time_and_processing_time_timers_follow_their_own_clocks() {
    let clock = ManualClock::new(0);
    let mut op = single(&clock);
    feed(
        &mut op,
        vec![
            (1, Cmd::RegisterEvent(500)),
            (1, Cmd::RegisterProcessing(1_000)),
            (2, Cmd::RegisterProcessing(2_000)),
        ],
    );
    clock.set_ms(999);
    assert!(
        feed(&mut op, Vec::new()).is_empty(),
        "the clock is before 1000"
    );
    assert!(watermark(&mut op, 400).is_empty());
    clock.set_ms(1_000);
    assert_eq!(
        watermark(&mut op, 450),
        vec![(1, 1_000, TimeDomain::ProcessingTime)],
        "a watermark also checks the clock; event time 500 is not reached"
    );
    assert_eq!(
        watermark(&mut op, 5_000),
        vec![(1, 500, TimeDomain::EventTime)],
        "a watermark past 2000 does not fire processing time 2000"
    );
    clock.set_ms(2_500);
    assert_eq!(
        feed(&mut op, vec![(3, Cmd::RegisterProcessing(2_400))]),
        vec![(2, 2_000, TimeDomain::ProcessingTime)],
        "the batch checks the clock before its records"
    );
    let mut out = Vec::new();
    // The end of a bounded input as the runtime delivers it: `MAX`, then
    // `finish` (which fires nothing itself).
    flowstate_runtime::Operator::on_watermark(&mut op, flowstate_runtime::Watermark::MAX, &mut out)
        .expect("end of event time");
    op.finish(&mut out).expect("finish");
    assert_eq!(out, vec![(3, 2_400, TimeDomain::ProcessingTime)]);
}

#[test]
fn the_end_of_input_fires_every_event_time_timer_but_only_due_processing_timers() {
    let clock = ManualClock::new(0);
    let mut op = single(&clock);
    feed(
        &mut op,
        vec![
            (1, Cmd::RegisterEvent(i64::MAX - 1)),
            (2, Cmd::RegisterEvent(3)),
            (3, Cmd::RegisterProcessing(10)),
        ],
    );
    let mut out = Vec::new();
    // The end of a bounded input as the runtime delivers it: `MAX`, then
    // `finish` (which fires nothing itself).
    flowstate_runtime::Operator::on_watermark(&mut op, flowstate_runtime::Watermark::MAX, &mut out)
        .expect("end of event time");
    op.finish(&mut out).expect("finish");
    assert_eq!(
        out,
        vec![
            (2, 3, TimeDomain::EventTime),
            (1, i64::MAX - 1, TimeDomain::EventTime)
        ]
    );
    assert_eq!(op.pending_timers(TimeDomain::ProcessingTime), 1);
}

/// Registers timers for 60 keys on `from`, takes a savepoint, restores it
/// into three instances on `to`, and checks that the same timers fire there.
fn timers_survive_a_restore(from: StateBackendConfig, to: StateBackendConfig) {
    let clock = ManualClock::new(0);
    let mut before = probe(&subtask(0, 1, from, clock.clone(), None), Vec::new());
    let mut records = Vec::new();
    for key in 0..60u64 {
        records.push((key, Cmd::RegisterEvent(100 + key as i64 % 7)));
        records.push((key, Cmd::RegisterEvent(1_000)));
        records.push((key, Cmd::RegisterProcessing(5_000 + key as i64)));
    }
    records.push((0, Cmd::DeleteEvent(1_000)));
    feed(&mut before, records);
    assert!(watermark(&mut before, 50).is_empty());
    let sections = savepoint_sections(&mut before);

    let mut expected_event: Vec<Fired> = Vec::new();
    for key in 0..60u64 {
        expected_event.push((key, 100 + key as i64 % 7, TimeDomain::EventTime));
        if key != 0 {
            expected_event.push((key, 1_000, TimeDomain::EventTime));
        }
    }
    expected_event.sort();
    let mut expected_processing: Vec<Fired> = (0..60u64)
        .map(|key| (key, 5_000 + key as i64, TimeDomain::ProcessingTime))
        .collect();
    expected_processing.sort();

    // The job was down while the clock passed every processing timer.
    clock.set_ms(10_000);
    let mut fired_event = Vec::new();
    let mut fired_processing = Vec::new();
    let mut pending = 0;
    for index in 0..3 {
        let mut after = probe(
            &subtask(index, 3, to.clone(), clock.clone(), Some(&sections)),
            Vec::new(),
        );
        pending += after.pending_timers(TimeDomain::EventTime);
        // The first batch after the restore fires what became due meanwhile.
        fired_processing.extend(feed(&mut after, Vec::new()));
        let fired = watermark(&mut after, i64::MAX);
        let mut times: Vec<i64> = fired.iter().map(|f| f.1).collect();
        let sorted = {
            let mut t = times.clone();
            t.sort();
            t
        };
        assert_eq!(times, sorted, "an instance fires in time order");
        times.clear();
        fired_event.extend(fired);
    }
    assert_eq!(pending, expected_event.len());
    fired_event.sort();
    fired_processing.sort();
    assert_eq!(fired_event, expected_event);
    assert_eq!(fired_processing, expected_processing);
}

#[test]
fn timers_restore_at_another_parallelism_on_the_same_backend() {
    timers_survive_a_restore(StateBackendConfig::Heap, StateBackendConfig::Heap);
}

#[test]
fn timers_restore_from_heap_into_the_serialising_backend() {
    timers_survive_a_restore(StateBackendConfig::Heap, memory_store());
}

#[test]
fn timers_restore_from_the_serialising_backend_into_heap() {
    timers_survive_a_restore(memory_store(), StateBackendConfig::Heap);
}

#[test]
fn an_operator_without_timers_snapshots_no_timer_state() {
    let clock = ManualClock::new(0);
    let mut op = single(&clock);
    let snapshot = op.snapshot(Barrier::savepoint(1)).expect("snapshot");
    let Some(BackendSnapshot::KeyGroups(keyed)) = snapshot.keyed else {
        panic!("a savepoint is in key groups");
    };
    assert!(
        keyed.states.is_empty(),
        "timer states are declared on first use"
    );
    feed(&mut op, vec![(1, Cmd::RegisterEvent(1))]);
    let snapshot = op.snapshot(Barrier::savepoint(2)).expect("snapshot");
    let Some(BackendSnapshot::KeyGroups(keyed)) = snapshot.keyed else {
        panic!("a savepoint is in key groups");
    };
    let names: Vec<&str> = keyed.states.iter().map(|(s, _)| s.name.as_str()).collect();
    assert_eq!(names, ["_timers/event"]);
    assert_eq!(keyed.states[0].0.types, "list<i64>");
}

/// `finish` alone fires nothing: a stop-with-savepoint ends the input
/// without ending event time, and the savepoint holds the pending timers
/// (whatever fired would be published and fire again after the resume).
#[test]
fn finish_without_the_end_of_event_time_fires_nothing() {
    let clock = ManualClock::new(0);
    let mut op = single(&clock);
    feed(
        &mut op,
        vec![(1, Cmd::RegisterEvent(3)), (2, Cmd::RegisterProcessing(10))],
    );
    clock.set_ms(100);
    let mut out = Vec::new();
    op.finish(&mut out).expect("finish");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(op.pending_timers(TimeDomain::EventTime), 1);
    assert_eq!(op.pending_timers(TimeDomain::ProcessingTime), 1);
}
