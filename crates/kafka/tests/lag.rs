//! The Kafka source's lag gauges (`kafka_consumer_lag{topic,partition}`,
//! through the runtime's metrics hook) against a real Kafka-protocol broker
//! (tansu, see scripts/kafka-server.sh) at `FLOWSTATE_TEST_KAFKA_BROKERS`;
//! without one the test prints a notice and passes, unless
//! `FLOWSTATE_REQUIRE_KAFKA=1`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowstate::{Source, SubtaskInfo};
use flowstate_kafka::{KafkaSource, RawRecord, create_topic, produce_workload};

fn brokers() -> Option<String> {
    match std::env::var("FLOWSTATE_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            assert!(
                std::env::var("FLOWSTATE_REQUIRE_KAFKA").as_deref() != Ok("1"),
                "FLOWSTATE_REQUIRE_KAFKA=1 but FLOWSTATE_TEST_KAFKA_BROKERS is not set"
            );
            eprintln!("skipped: no Kafka broker (FLOWSTATE_TEST_KAFKA_BROKERS unset)");
            None
        }
    }
}

fn parse_u64(record: &RawRecord<'_>) -> Result<u64, String> {
    let payload = record.payload.ok_or("no payload")?;
    let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
    text.parse::<u64>().map_err(|e| e.to_string())
}

#[test]
fn a_reader_reports_the_lag_of_each_partition_it_owns() {
    let Some(brokers) = brokers() else { return };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let topic = format!("lag-{}-{nanos}", std::process::id());
    create_topic(brokers.as_str(), &topic, 2).expect("create topic");
    produce_workload(brokers.as_str(), &topic, 2, 1000, |i| (i % 7, i)).expect("produce");

    let source = KafkaSource::new(brokers.as_str(), [topic.as_str()], parse_u64).expect("source");
    let info = SubtaskInfo::new("kafka-source", 0, 1, 128);
    let metrics = std::sync::Arc::clone(&info.metrics);
    let mut reader = source.create_reader(&info).expect("reader");

    // One gauge per partition, named and labelled for the exposition.
    let gauges = metrics.snapshot().gauges;
    let mut labels: Vec<Vec<(String, String)>> = gauges.iter().map(|g| g.labels.clone()).collect();
    labels.sort();
    assert_eq!(
        labels,
        (0..2)
            .map(|p| vec![
                ("topic".to_owned(), topic.clone()),
                ("partition".to_owned(), p.to_string())
            ])
            .collect::<Vec<_>>()
    );
    assert!(gauges.iter().all(|g| g.name == flowstate_kafka::LAG_GAUGE));

    // One record per poll, every 50 ms (about 50 s for everything): the
    // statistics (every second) show records left behind the position.
    let lags = || -> Vec<i64> { metrics.snapshot().gauges.iter().map(|g| g.value).collect() };
    let mut out = Vec::new();
    loop {
        assert!(
            out.len() < 1000,
            "read everything and never saw a lag: {:?}",
            lags()
        );
        reader.poll(&mut out, 1, Instant::now()).expect("poll");
        let now = lags();
        // 500 records per partition: the lag is never more, never negative.
        assert!(now.iter().all(|v| (0..=500).contains(v)), "{now:?}");
        if now.iter().any(|v| *v > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Read the rest: the lag goes to 0 once the statistics catch up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        reader.poll(&mut out, 256, Instant::now()).expect("poll");
        if out.len() >= 1000 && lags().iter().all(|v| *v == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read {} records, lags {:?}",
            out.len(),
            lags()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
