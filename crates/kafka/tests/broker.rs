//! The Kafka source and sink against a real Kafka-protocol broker (tansu, see
//! scripts/kafka-server.sh) at `FLOWSTATE_TEST_KAFKA_BROKERS`. Without it these
//! tests print a notice and pass, unless `FLOWSTATE_REQUIRE_KAFKA=1` (set by
//! scripts/test.sh), which makes them fail. The unreachable-broker tests need no
//! broker and always run.
//!
//! Every test creates its own topics (tansu creates none by itself) and bounds
//! its reads by end offsets it knows, never by the broker's watermarks (tansu
//! 0.6 reports them wrongly).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowstate::runtime::checkpoint::{CoordinatorSettings, open_storage};
use flowstate::runtime::{
    CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom, RestoredState,
};
use flowstate::{
    Barrier, ExecutionConfig, Source, SourcePoll, SourceReader, StreamEnvironment, SubtaskInfo,
};
use flowstate_kafka::{
    ErrorPolicy, KafkaSink, KafkaSource, RawRecord, StopAt, TopicPartition, committed_offsets,
    create_topic, produce_workload, workload_end_offsets,
};

/// Bound on every wait for records.
const DEADLINE: Duration = Duration::from_secs(60);

fn brokers() -> Option<String> {
    match std::env::var("FLOWSTATE_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            assert!(
                std::env::var("FLOWSTATE_REQUIRE_KAFKA").as_deref() != Ok("1"),
                "FLOWSTATE_REQUIRE_KAFKA=1 but FLOWSTATE_TEST_KAFKA_BROKERS is not set \
                 (start a broker with: eval \"$(scripts/kafka-server.sh)\")"
            );
            eprintln!(
                "skipped: no Kafka broker (FLOWSTATE_TEST_KAFKA_BROKERS unset); \
                 run eval \"$(scripts/kafka-server.sh)\" first"
            );
            None
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{nanos}", std::process::id())
}

fn parse_u64(record: &RawRecord<'_>) -> Result<u64, String> {
    let payload = record.payload.ok_or("no payload")?;
    let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
    text.parse::<u64>()
        .map_err(|e| format!("payload '{text}' is not a number: {e}"))
}

fn subtask(index: u32, parallelism: u32, restored: Option<Arc<RestoredState>>) -> SubtaskInfo {
    let mut info = SubtaskInfo::new("kafka-source", index, parallelism, 128);
    info.restored = restored;
    info
}

/// Polls until `reader` has appended `at_least` records (or finished).
fn poll_until(
    reader: &mut dyn SourceReader<u64>,
    out: &mut Vec<u64>,
    at_least: usize,
    max: usize,
) -> SourcePoll {
    let started = Instant::now();
    loop {
        let before = out.len();
        let room = max.min(at_least.saturating_sub(out.len()).max(1));
        let result = reader.poll(out, room, Instant::now()).expect("poll");
        if result == SourcePoll::Finished || out.len() >= at_least {
            return result;
        }
        if started.elapsed() >= DEADLINE {
            let positions: Vec<String> = reader
                .snapshot(Barrier::checkpoint(1))
                .map(|lists| {
                    lists
                        .iter()
                        .flat_map(|l| &l.elements)
                        .map(|e| String::from_utf8_lossy(e).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "timed out after {} records (wanted {at_least}); positions {positions:?}",
                out.len()
            );
        }
        if out.len() == before {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn checkpointed(parallelism: u32) -> ExecutionConfig {
    ExecutionConfig {
        job_name: "kafka-test".into(),
        checkpointing: Some(CheckpointingConfig {
            storage: open_storage(&format!("memory://{}", unique("kafka-chk"))).expect("storage"),
            settings: CoordinatorSettings {
                interval: Some(Duration::from_millis(20)),
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
        ..ExecutionConfig::with_parallelism(parallelism)
    }
}

#[test]
fn a_checkpointed_job_reads_every_record_once() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("job");
    let (partitions, records) = (4, 20_000u64);
    create_topic(brokers.as_str(), &topic, partitions).expect("create topic");
    let ends = produce_workload(brokers.as_str(), &topic, partitions, records, |i| {
        (i % 97, i)
    })
    .expect("produce");
    assert_eq!(ends, vec![5_000; 4], "offsets from the delivery reports");

    let env = StreamEnvironment::new(checkpointed(2));
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .stop_at(StopAt::EndOffsets(workload_end_offsets(
            &topic, partitions, records,
        )));
    let collected = env.from_source("kafka", source).collect();
    let report = env.execute().expect("job");
    let mut seen = collected.lock().expect("collected").clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..records).collect::<Vec<_>>());
    eprintln!(
        "read {records} records in {:?} with {} checkpoints",
        report.duration,
        report.checkpoints.len()
    );
}

#[test]
fn the_consumer_group_holds_the_final_checkpoint_s_positions_after_a_run() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("group");
    let group = unique("flowstate-group");
    let (partitions, records) = (3, 3_000u64);
    create_topic(brokers.as_str(), &topic, partitions).expect("create topic");
    let ends = produce_workload(brokers.as_str(), &topic, partitions, records, |i| (i, i))
        .expect("produce");
    let before = committed_offsets(brokers.as_str(), &group, &topic).expect("offset fetch");
    assert!(
        before.values().all(Option::is_none),
        "a new group has no offsets: {before:?}"
    );

    let env = StreamEnvironment::new(checkpointed(2));
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .group_id(group.as_str())
        .expect("group id")
        .stop_at(StopAt::EndOffsets(workload_end_offsets(
            &topic, partitions, records,
        )));
    let collected = env.from_source("kafka", source).collect();
    let report = env.execute().expect("job");
    assert_eq!(collected.lock().expect("collected").len() as u64, records);
    assert!(!report.checkpoints.is_empty());

    // The job ends only after its final checkpoint completed (its positions
    // are the end offsets) and closing a consumer waits for its outstanding
    // commits: the group holds exactly the final checkpoint's positions.
    let committed = committed_offsets(brokers.as_str(), &group, &topic).expect("offset fetch");
    let expected: BTreeMap<i32, Option<i64>> = ends
        .iter()
        .enumerate()
        .map(|(p, end)| (p as i32, Some(*end)))
        .collect();
    assert_eq!(committed, expected);
}

#[test]
fn without_a_group_id_nothing_is_committed() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("nogroup");
    let (partitions, records) = (2, 200u64);
    create_topic(brokers.as_str(), &topic, partitions).expect("create topic");
    produce_workload(brokers.as_str(), &topic, partitions, records, |i| (i, i)).expect("produce");
    let env = StreamEnvironment::new(checkpointed(1));
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .stop_at(StopAt::EndOffsets(workload_end_offsets(
            &topic, partitions, records,
        )));
    env.from_source("kafka", source).uid("src").collect();
    let report = env.execute().expect("job");
    // The group librdkafka needs for `assign` is named after the job and uid;
    // without `group_id` nothing is committed to it.
    let job = report.job_id.expect("a checkpointed job has an id");
    let committed = committed_offsets(brokers.as_str(), &format!("flowstate-{job}-src"), &topic)
        .expect("offset fetch");
    assert_eq!(committed.len(), partitions as usize);
    assert!(committed.values().all(Option::is_none), "{committed:?}");
}

#[test]
fn positions_survive_a_rescale_from_2_to_3() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("rescale");
    let (partitions, records) = (4, 8_000u64);
    create_topic(brokers.as_str(), &topic, partitions).expect("create topic");
    produce_workload(brokers.as_str(), &topic, partitions, records, |i| (i, i)).expect("produce");
    // tansu cannot fetch from inside a record batch: resume by re-reading.
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .reread_on_resume(true)
        .stop_at(StopAt::EndOffsets(workload_end_offsets(
            &topic, partitions, records,
        )));

    // Parallelism 2: each instance owns two partitions; read part of them.
    let mut seen = Vec::new();
    let mut lists = Vec::new();
    for index in 0..2 {
        let mut reader = source
            .create_reader(&subtask(index, 2, None))
            .expect("reader");
        let mut out = Vec::new();
        poll_until(reader.as_mut(), &mut out, 1_500, 100);
        lists.extend(reader.snapshot(Barrier::checkpoint(1)).expect("snapshot"));
        seen.extend(out);
    }
    assert_eq!(seen.len(), 3_000);
    // Union state: every new instance gets every element.
    let mut all = lists[0].clone();
    for list in &lists[1..] {
        assert_eq!(list.name, all.name);
        assert_eq!(list.mode, flowstate::state::RedistributionMode::Union);
        all.elements.extend(list.elements.iter().cloned());
    }
    assert_eq!(all.elements.len(), 4, "one position per partition");
    let restored = Arc::new(RestoredState {
        keyed: Default::default(),
        lists: vec![all],
    });
    // Parallelism 3: partitions 0 and 3 on instance 0, 1 on 1, 2 on 2.
    for index in 0..3 {
        let mut reader = source
            .create_reader(&subtask(index, 3, Some(Arc::clone(&restored))))
            .expect("reader");
        let mut out = Vec::new();
        let last = poll_until(reader.as_mut(), &mut out, usize::MAX, 100);
        assert_eq!(last, SourcePoll::Finished);
        seen.extend(out);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..records).collect::<Vec<_>>(), "no loss, no repeat");
}

/// Writes `payloads` into partition 0 of a new one-partition topic with the
/// sink, and returns the topic.
fn topic_with(brokers: &str, name: &str, payloads: &[&str]) -> String {
    let topic = unique(name);
    create_topic(brokers, &topic, 1).expect("create topic");
    let sink = KafkaSink::new(brokers, topic.as_str(), |s: &String| {
        (None, s.as_bytes().to_vec())
    })
    .expect("sink");
    let mut writer = flowstate::Sink::create_writer(&sink, &subtask(0, 1, None)).expect("writer");
    let mut batch: Vec<String> = payloads.iter().map(|s| (*s).to_owned()).collect();
    writer.write_batch(&mut batch).expect("write");
    writer
        .prepare_commit(Barrier::checkpoint(1))
        .expect("flush at the barrier");
    writer.finish().expect("finish");
    topic
}

#[test]
fn a_malformed_record_fails_naming_topic_partition_and_offset() {
    let Some(brokers) = brokers() else { return };
    let topic = topic_with(&brokers, "malformed", &["1", "2", "oops", "4"]);
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .stop_at(StopAt::EndOffsets(
            [(TopicPartition::new(&topic, 0), 4)].into(),
        ));
    let mut reader = source.create_reader(&subtask(0, 1, None)).expect("reader");
    let started = Instant::now();
    let mut out = Vec::new();
    let error = loop {
        match reader.poll(&mut out, 100, Instant::now()) {
            Ok(SourcePoll::Finished) => panic!("finished without an error: {out:?}"),
            Ok(_) => {
                assert!(started.elapsed() < DEADLINE, "no error in time");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => break e.to_string(),
        }
    };
    assert_eq!(out, vec![1, 2]);
    assert!(
        error.contains(&format!("topic '{topic}' partition 0 offset 2"))
            && error.contains("'oops' is not a number"),
        "{error}"
    );
}

#[test]
fn a_malformed_record_is_skipped_and_counted() {
    let Some(brokers) = brokers() else { return };
    let topic = topic_with(&brokers, "skip", &["1", "2", "oops", "4", "", "6"]);
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .on_error(ErrorPolicy::Skip)
        .stop_at(StopAt::EndOffsets(
            [(TopicPartition::new(&topic, 0), 6)].into(),
        ));
    let skipped = source.skipped_records();
    let mut reader = source.create_reader(&subtask(0, 1, None)).expect("reader");
    let mut out = Vec::new();
    assert_eq!(
        poll_until(reader.as_mut(), &mut out, usize::MAX, 100),
        SourcePoll::Finished
    );
    assert_eq!(out, vec![1, 2, 4, 6]);
    assert_eq!(skipped.load(Ordering::Relaxed), 2);
}

#[test]
fn a_missing_topic_is_a_clear_error() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("missing");
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .request_timeout(Duration::from_secs(5));
    let error = match source.create_reader(&subtask(0, 1, None)) {
        Ok(_) => panic!("a reader of a missing topic"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains(&format!(
            "topic '{topic}' does not exist on brokers '{brokers}'"
        )),
        "{error}"
    );
}

#[test]
fn the_sink_round_trips_through_a_checkpointed_job() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("sink");
    let records = 5_000u64;
    create_topic(brokers.as_str(), &topic, 1).expect("create topic");
    let env = StreamEnvironment::new(checkpointed(2));
    let sink = KafkaSink::new(brokers.as_str(), topic.as_str(), |v: &u64| {
        (Some(v.to_string().into_bytes()), v.to_string().into_bytes())
    })
    .expect("sink");
    env.from_collection((0..records).collect::<Vec<u64>>())
        .sink_to("kafka", sink);
    env.execute().expect("writing job");

    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .stop_at(StopAt::EndOffsets(
            [(TopicPartition::new(&topic, 0), records as i64)].into(),
        ));
    let mut reader = source.create_reader(&subtask(0, 1, None)).expect("reader");
    let mut out = Vec::new();
    assert_eq!(
        poll_until(reader.as_mut(), &mut out, usize::MAX, 500),
        SourcePoll::Finished
    );
    out.sort_unstable();
    assert_eq!(out, (0..records).collect::<Vec<_>>());
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn an_unreachable_broker_is_a_clear_error_in_bounded_time() {
    let brokers = format!("127.0.0.1:{}", closed_port());
    let source = KafkaSource::new(brokers.as_str(), ["t"], parse_u64)
        .expect("source")
        .request_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let error = match source.create_reader(&subtask(0, 1, None)) {
        Ok(_) => panic!("a reader without a broker"),
        Err(e) => e.to_string(),
    };
    eprintln!("after {:?}: {error}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        error.contains(&format!(
            "cannot fetch the metadata of topic 't' from brokers '{brokers}'"
        )),
        "{error}"
    );
}

#[test]
fn a_sink_without_a_broker_fails_at_the_barrier_in_bounded_time() {
    let brokers = format!("127.0.0.1:{}", closed_port());
    let sink = KafkaSink::new(brokers.as_str(), "t", |v: &u64| {
        (None, v.to_string().into_bytes())
    })
    .expect("sink")
    .flush_timeout(Duration::from_secs(2));
    let mut writer = flowstate::Sink::create_writer(&sink, &subtask(0, 1, None)).expect("writer");
    writer.write_batch(&mut vec![1, 2, 3]).expect("enqueue");
    let started = Instant::now();
    let error = match writer.prepare_commit(Barrier::checkpoint(1)) {
        Ok(_) => panic!("a barrier acknowledged without a broker"),
        Err(e) => e.to_string(),
    };
    eprintln!("after {:?}: {error}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(error.contains(&format!("brokers '{brokers}'")), "{error}");
}

#[test]
fn resuming_inside_a_record_batch_loses_nothing() {
    let Some(brokers) = brokers() else { return };
    // Two batches, [0, 10) and [10, 20): the sink flushes between them.
    let topic = unique("inside-batch");
    create_topic(brokers.as_str(), &topic, 1).expect("create topic");
    let sink = KafkaSink::new(brokers.as_str(), topic.as_str(), |v: &u64| {
        (None, v.to_string().into_bytes())
    })
    .expect("sink");
    let mut writer = flowstate::Sink::create_writer(&sink, &subtask(0, 1, None)).expect("writer");
    for range in [0..10u64, 10..20] {
        writer.write_batch(&mut range.collect()).expect("write");
        writer
            .prepare_commit(Barrier::checkpoint(1))
            .expect("flush");
    }
    // Resume at offset 5 by fetching there (no re-read): a broker that answers
    // with the next batch must not make the reader skip 5..10.
    let position = serde_json::to_vec(&flowstate_kafka::PartitionOffset {
        topic: topic.clone(),
        partition: 0,
        next: Some(5),
    })
    .expect("json");
    let restored = Arc::new(RestoredState {
        keyed: Default::default(),
        lists: vec![flowstate::runtime::checkpoint::OperatorListState {
            name: flowstate_kafka::OFFSETS_STATE.into(),
            mode: flowstate::state::RedistributionMode::Union,
            elements: vec![position],
        }],
    });
    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64)
        .expect("source")
        .stop_at(StopAt::EndOffsets(
            [(TopicPartition::new(&topic, 0), 20)].into(),
        ));
    let mut reader = source
        .create_reader(&subtask(0, 1, Some(restored)))
        .expect("reader");
    let mut out = Vec::new();
    assert_eq!(
        poll_until(reader.as_mut(), &mut out, usize::MAX, 100),
        SourcePoll::Finished
    );
    assert_eq!(out, (5..20).collect::<Vec<_>>());
}
