//! Event time through the DataStream API: a source's per-split watermarks
//! with checkpoints flowing (barrier alignment still exactly-once), and
//! `assign_timestamps_and_watermarks`.

use std::collections::BTreeMap;
use std::time::Duration;

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::{CoordinatorSettings, open_storage};
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom};
use flowstate::{ExecutionConfig, StreamEnvironment, Watermark, WatermarkStrategy};

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
