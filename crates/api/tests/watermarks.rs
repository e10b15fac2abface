//! Event time through the DataStream API: a source's per-split watermarks
//! with checkpoints flowing (barrier alignment still exactly-once), and
//! `assign_timestamps_and_watermarks`; a source instance whose splits are
//! all idle does not hold a downstream window back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::{CoordinatorSettings, open_storage};
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom};
use flowstate::runtime::{
    RunState, Source, SourcePoll, SourceReader, SplitWatermarks, SubtaskInfo, UserError,
};
use flowstate::state::ManualClock;
use flowstate::{
    ExecutionConfig, StreamEnvironment, TumblingEventTimeWindows, Watermark, WatermarkStrategy,
};

const RECORDS: u64 = 30_000;

fn ts(i: u64) -> i64 {
    // Out of order by up to 50 ms, ten records a millisecond.
    1_700_000_000_000 + (i / 10) as i64 - ((i * 7919) % 51) as i64
}

/// Exactly-once checkpoints with watermarks in every channel: the keyed
/// result is exact, checkpoints completed while records flowed, and every
/// task ended with event time at `MAX`.
#[test]
fn event_time_source_with_checkpoints_is_exactly_once() {
    let storage = open_storage(&format!("memory://watermarks-{}", std::process::id())).unwrap();
    let config = ExecutionConfig {
        job_name: "watermark-test".into(),
        batch_size: 64,
        checkpointing: Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval: Some(Duration::from_millis(10)),
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::None,
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(2)
    };
    let env = StreamEnvironment::new(config);
    let source = SequenceSource::new(RECORDS, 8, |i| i)
        .unwrap()
        .with_rate(60_000)
        .unwrap()
        .with_event_time(WatermarkStrategy::bounded_out_of_orderness(
            50,
            |i: &u64| ts(*i),
        ));
    let sums = env
        .from_source("Source: Sequence", source)
        .map(|i| (i % 13, i))
        .key_by(|(k, _)| *k)
        .reduce(|(k, a), (_, b)| (k, a + b))
        .collect();
    let job = env.start().unwrap();
    let metrics = std::sync::Arc::clone(job.metrics());
    let report = job.join().unwrap();
    assert!(report.completed_checkpoints > 0, "{report:?}");
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (k, sum) in sums.lock().unwrap().iter() {
        let entry = last.entry(*k).or_default();
        assert!(*sum >= *entry, "sums only grow");
        *entry = *sum;
    }
    for k in 0..13 {
        let expected: u64 = (0..RECORDS).filter(|i| i % 13 == k).sum();
        assert_eq!(last[&k], expected, "key {k}");
    }
    let watermarks = metrics.watermarks();
    assert!(!watermarks.is_empty());
    assert!(
        watermarks.iter().all(|(_, w)| *w == Watermark::MAX),
        "{watermarks:?}"
    );
}

/// `assign_timestamps_and_watermarks` passes records on unchanged; the
/// stream's event time ends at `MAX`.
#[test]
fn assign_timestamps_and_watermarks_forwards_records() {
    let env = StreamEnvironment::new(ExecutionConfig {
        batch_size: 8,
        channel_capacity: 2,
        ..ExecutionConfig::with_parallelism(2)
    });
    let out = env
        .from_collection((0..500u64).collect())
        .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            5,
            |v: &u64| *v as i64,
        ))
        .rebalance()
        .map(|v| v * 2)
        .collect();
    let mut executor = env.deterministic(11).unwrap();
    executor.run().unwrap();
    let mut got = out.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..500u64).map(|v| v * 2).collect::<Vec<_>>());
    assert_eq!(
        executor.metrics().watermark_of("Rebalance"),
        Some(Watermark::MAX)
    );
}

/// `(key, event time)`.
type Rec = (u64, i64);

/// Instance i reads one split, fed by the test through `queues[i]`; it
/// never ends until `release`.
struct Queues {
    queues: Arc<Vec<Mutex<Vec<Rec>>>>,
    strategy: WatermarkStrategy<Rec>,
    release: Arc<AtomicBool>,
}

struct QueueReader {
    queues: Arc<Vec<Mutex<Vec<Rec>>>>,
    index: usize,
    watermarks: SplitWatermarks<u32, Rec>,
    release: Arc<AtomicBool>,
}

impl Source<Rec> for Queues {
    fn create_reader(&self, s: &SubtaskInfo) -> Result<Box<dyn SourceReader<Rec>>, UserError> {
        let mut watermarks = SplitWatermarks::new(self.strategy.clone(), Arc::clone(&s.clock));
        watermarks.add_split(&s.index);
        Ok(Box::new(QueueReader {
            queues: Arc::clone(&self.queues),
            index: s.index as usize,
            watermarks,
            release: Arc::clone(&self.release),
        }))
    }
}

impl SourceReader<Rec> for QueueReader {
    fn poll(
        &mut self,
        out: &mut Vec<Rec>,
        _max: usize,
        _now: Instant,
    ) -> Result<SourcePoll, UserError> {
        let mut queue = self.queues[self.index].lock().map_err(|e| e.to_string())?;
        if queue.is_empty() {
            return Ok(if self.release.load(Ordering::SeqCst) {
                SourcePoll::Finished
            } else {
                SourcePoll::Pending { wake_at: None }
            });
        }
        let first = out.len();
        out.append(&mut queue);
        self.watermarks
            .on_batch(&(self.index as u32), &out[first..]);
        Ok(SourcePoll::Ready)
    }

    fn watermark(&mut self) -> Option<Watermark> {
        self.watermarks.current()
    }

    fn is_idle(&mut self) -> bool {
        self.watermarks.is_idle()
    }
}

/// Two source instances, the second of which never produces: with
/// idleness, once it has been idle for the idleness (the job's manual
/// clock), the windows downstream fire from the first one's watermark
/// alone (before issue 13 they waited for the end of input).
#[test]
fn an_idle_source_instance_does_not_hold_a_window_back() {
    for seed in [1, 5, 9] {
        let clock = ManualClock::new(0);
        let queues = Arc::new(vec![
            Mutex::new(vec![(1, 10), (1, 50), (1, 150)]),
            Mutex::new(Vec::new()),
        ]);
        let release = Arc::new(AtomicBool::new(false));
        let env = StreamEnvironment::new(ExecutionConfig {
            batch_size: 8,
            clock: clock.clone(),
            ..ExecutionConfig::with_parallelism(2)
        });
        let strategy = WatermarkStrategy::monotonous(|r: &Rec| r.1).with_idleness(1_000);
        // What fired, as it fires (a collect sink publishes at the end).
        let fired: Arc<Mutex<Vec<(u64, i64, usize)>>> = Arc::default();
        let firing = Arc::clone(&fired);
        env.from_source(
            "Source: Queues",
            Queues {
                queues: Arc::clone(&queues),
                strategy,
                release: Arc::clone(&release),
            },
        )
        .key_by(|r: &Rec| r.0)
        .window_by(
            TumblingEventTimeWindows::of(Duration::from_millis(100)),
            |r| r.1,
        )
        .process(move |key, window, records, out: &mut Vec<u64>| {
            let mut fired = firing.lock().map_err(|e| e.to_string())?;
            fired.push((*key, window.start, records.len()));
            out.push(*key);
            Ok(())
        })
        .count();
        let mut executor = env.deterministic(seed).unwrap();
        let state = executor.run_until_quiescent(&|_| false).unwrap();
        assert!(matches!(state, RunState::Quiescent));
        // The second instance has said nothing yet: nothing fires.
        assert_eq!(fired.lock().unwrap().clone(), vec![], "seed {seed}");
        // The first instance goes on; the second has been idle for the
        // idleness.
        clock.advance_ms(1_000);
        queues[0].lock().unwrap().push((1, 250));
        executor.run_until_quiescent(&|_| false).unwrap();
        let mut got = fired.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, vec![(1, 0, 2), (1, 100, 1)], "seed {seed}");
        release.store(true, Ordering::SeqCst);
        executor.run().unwrap();
        let mut got = fired.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(
            got,
            vec![(1, 0, 2), (1, 100, 1), (1, 200, 1)],
            "seed {seed}"
        );
    }
}
