//! Topic administration and the workload producer, for tests, benchmarks and
//! built-in jobs. Owns nothing a running job depends on except the metadata
//! lookup the source uses (`partitions_with`); must not be needed for recovery.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::client::ClientSettings;
use crate::error::KafkaError;
use crate::sink::{flush_checked, idempotent_producer, send_blocking};
use crate::source::TopicPartition;

/// The offsets consumer group `group` has committed for every partition of
/// `topic` (the next offset to read; `None`: nothing committed), as lag tools
/// see them. Blocks for at most `settings.request_timeout` per request: for
/// tests and tools, never called by a running job.
pub fn committed_offsets(
    settings: impl Into<ClientSettings>,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
    let settings = &settings.into();
    let failed = |reason: String| KafkaError::GroupOffsets {
        brokers: settings.brokers.clone(),
        group: group.to_owned(),
        topic: topic.to_owned(),
        reason,
    };
    let mut config = settings.base_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false");
    settings.apply_overrides(&mut config);
    let consumer: BaseConsumer = config.create().map_err(|e| KafkaError::Client {
        brokers: settings.brokers.clone(),
        reason: e.to_string(),
    })?;
    let mut list = TopicPartitionList::new();
    for partition in partitions_with(&consumer, settings, topic)? {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, settings.request_timeout)
        .map_err(|e| failed(e.to_string()))?;
    let mut offsets = BTreeMap::new();
    for element in committed.elements() {
        if let Some(error) = element.error().err() {
            return Err(failed(format!(
                "partition {}: {error}",
                element.partition()
            )));
        }
        let offset = match element.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        };
        offsets.insert(element.partition(), offset);
    }
    Ok(offsets)
}

/// The sorted partition ids of `topic`, or a clear error: unreachable brokers
/// (bounded by `settings.request_timeout`) or a missing topic.
pub fn topic_partitions(
    settings: impl Into<ClientSettings>,
    topic: &str,
) -> Result<Vec<i32>, KafkaError> {
    let settings = &settings.into();
    let mut config = settings.base_config();
    config.set("allow.auto.create.topics", "false");
    settings.apply_overrides(&mut config);
    let consumer: BaseConsumer = config.create().map_err(|e| KafkaError::Client {
        brokers: settings.brokers.clone(),
        reason: e.to_string(),
    })?;
    partitions_with(&consumer, settings, topic)
}

pub(crate) fn partitions_with<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    settings: &ClientSettings,
    topic: &str,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), settings.request_timeout)
        .map_err(|e| KafkaError::Metadata {
            brokers: settings.brokers.clone(),
            topic: topic.to_owned(),
            timeout_ms: settings.request_timeout.as_millis(),
            reason: e.to_string(),
        })?;
    let missing = |detail: String| KafkaError::MissingTopic {
        brokers: settings.brokers.clone(),
        topic: topic.to_owned(),
        detail,
    };
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(missing(String::new()));
    };
    if let Some(error) = found.error() {
        return Err(missing(format!(
            " (the broker answered: {})",
            RDKafkaErrorCode::from(error)
        )));
    }
    let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(missing(" (it has no partitions)".into()));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// Creates `topic` with `partitions` partitions (replication 1) and waits,
/// bounded by `settings.request_timeout`, for the broker's answer.
/// [`KafkaError::TopicExists`] if it is already there.
pub fn create_topic(
    settings: impl Into<ClientSettings>,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let settings = &settings.into();
    let fail = |reason: String| KafkaError::CreateTopic {
        brokers: settings.brokers.clone(),
        topic: topic.to_owned(),
        reason,
    };
    if partitions < 1 {
        return Err(fail(format!(
            "{partitions} partitions: at least 1 is needed"
        )));
    }
    let mut config: ClientConfig = settings.base_config();
    settings.apply_overrides(&mut config);
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| KafkaError::Client {
            brokers: settings.brokers.clone(),
            reason: e.to_string(),
        })?;
    let options = AdminOptions::new()
        .request_timeout(Some(settings.request_timeout))
        .operation_timeout(Some(settings.request_timeout));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics([&new], &options))
        .map_err(|e| fail(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                return Err(KafkaError::TopicExists {
                    brokers: settings.brokers.clone(),
                    topic: topic.to_owned(),
                });
            }
            Err((_, code)) => return Err(fail(code.to_string())),
        }
    }
    Ok(())
}

/// Writes `records` records to `topic`: record `i` is `record(i) = (key,
/// value)` (e.g. workload W's `flowstate_jobs::workload::record(i, keys)`),
/// written with key and payload the decimal text of `key` and `value`, into
/// partition `i % partitions`, by an idempotent producer, and flushed: when
/// this returns `Ok`, the broker has acknowledged every record.
///
/// Returns, per partition `0..partitions`, the offset after the last record
/// written (from the delivery reports, not from the broker's watermarks).
pub fn produce_workload(
    settings: impl Into<ClientSettings>,
    topic: &str,
    partitions: i32,
    records: u64,
    record: impl Fn(u64) -> (u64, u64),
) -> Result<Vec<i64>, KafkaError> {
    if partitions < 1 {
        return Err(KafkaError::Config(format!(
            "{partitions} partitions: at least 1 is needed"
        )));
    }
    let settings = &settings.into();
    let timeout = Duration::from_secs(60);
    let producer = idempotent_producer(settings, timeout)?;
    let mut key_text = String::new();
    let mut value_text = String::new();
    for i in 0..records {
        let (key, value) = record(i);
        key_text.clear();
        value_text.clear();
        use std::fmt::Write;
        let _ = write!(key_text, "{key}");
        let _ = write!(value_text, "{value}");
        let partition = (i % partitions as u64) as i32;
        let message = BaseRecord::with_opaque_to(topic, 0)
            .partition(partition)
            .key(key_text.as_bytes())
            .payload(value_text.as_bytes());
        send_blocking(&producer, &settings.brokers, message, timeout)?;
        if i % 4096 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    flush_checked(&producer, &settings.brokers, topic, timeout)?;
    let mut next = producer
        .context()
        .next_offsets
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    next.resize(partitions as usize, 0);
    Ok(next)
}

/// The end offsets of [`produce_workload`]`(.., partitions, records, ..)` into
/// a topic that was empty: partition `p` holds the records `i` with `i %
/// partitions == p`. For [`crate::StopAt::EndOffsets`] (a bounded read that does
/// not rely on the broker's watermarks).
pub fn workload_end_offsets(
    topic: &str,
    partitions: i32,
    records: u64,
) -> BTreeMap<TopicPartition, i64> {
    let n = partitions.max(1) as u64;
    (0..partitions.max(1))
        .map(|p| {
            let count = records / n + u64::from((p as u64) < records % n);
            (TopicPartition::new(topic, p), count as i64)
        })
        .collect()
}

/// Reads every record of `ends` (partition -> exclusive end offset, e.g.
/// [`workload_end_offsets`]) from the start of each partition with a plain
/// consumer and counts them: the broker's own consume rate, for benchmarks
/// beside a job reading the same records. Fails if no record arrives for
/// `settings.request_timeout`.
pub fn consume_all(
    settings: impl Into<ClientSettings>,
    ends: &BTreeMap<TopicPartition, i64>,
) -> Result<u64, KafkaError> {
    use rdkafka::Offset;
    use rdkafka::message::Message;
    let settings = &settings.into();
    let mut config = settings.base_config();
    config.set("group.id", "flowstate-consume-all");
    config.set("enable.auto.commit", "false");
    settings.apply_overrides(&mut config);
    let consumer: BaseConsumer = config.create().map_err(|e| KafkaError::Client {
        brokers: settings.brokers.clone(),
        reason: e.to_string(),
    })?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0u64;
    for (tp, end) in ends {
        if *end > 0 {
            assignment
                .add_partition_offset(&tp.topic, tp.partition, Offset::Beginning)
                .map_err(|e| KafkaError::Config(e.to_string()))?;
            remaining += *end as u64;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| KafkaError::Client {
            brokers: settings.brokers.clone(),
            reason: e.to_string(),
        })?;
    let mut read = 0u64;
    let mut last_record = std::time::Instant::now();
    while read < remaining {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let tp = TopicPartition::new(message.topic(), message.partition());
                if ends.get(&tp).is_some_and(|end| message.offset() < *end) {
                    read += 1;
                }
                last_record = std::time::Instant::now();
            }
            Some(Err(e)) => {
                return Err(KafkaError::Client {
                    brokers: settings.brokers.clone(),
                    reason: e.to_string(),
                });
            }
            None if last_record.elapsed() > settings.request_timeout => {
                return Err(KafkaError::Client {
                    brokers: settings.brokers.clone(),
                    reason: format!(
                        "no record for {:?} with {} of {remaining} read",
                        settings.request_timeout, read
                    ),
                });
            }
            None => {}
        }
    }
    Ok(read)
}

/// One record read back by [`read_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Reads every partition of `topic` from its start with a plain consumer
/// (`isolation.level=read_committed`) until at least `min_records` were read
/// and then no record came for `idle`; returns the records in the order read
/// (offset order within each partition). For tests and benchmarks that check
/// what a sink wrote after its job ended: the broker's watermarks are not
/// relied on (tansu reports them wrongly). Fails if no record arrives for
/// `settings.request_timeout` before `min_records` were read.
pub fn read_topic(
    settings: impl Into<ClientSettings>,
    topic: &str,
    min_records: u64,
    idle: Duration,
) -> Result<Vec<ReadRecord>, KafkaError> {
    use rdkafka::message::Message;
    let settings = &settings.into();
    let fail = |reason: String| KafkaError::Consume {
        brokers: settings.brokers.clone(),
        topics: topic.to_owned(),
        reason,
    };
    let mut config = settings.base_config();
    config
        .set("group.id", "flowstate-read-topic")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false");
    settings.apply_overrides(&mut config);
    let consumer: BaseConsumer = config.create().map_err(|e| KafkaError::Client {
        brokers: settings.brokers.clone(),
        reason: e.to_string(),
    })?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions_with(&consumer, settings, topic)? {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(|e| KafkaError::Config(e.to_string()))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| fail(e.to_string()))?;
    let mut records = Vec::new();
    let mut last_record = std::time::Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records.push(ReadRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                });
                last_record = std::time::Instant::now();
            }
            Some(Err(e)) => return Err(fail(e.to_string())),
            None if (records.len() as u64) >= min_records && last_record.elapsed() >= idle => {
                return Ok(records);
            }
            None if last_record.elapsed() > settings.request_timeout => {
                return Err(fail(format!(
                    "no record for {:?} with {} of at least {min_records} read",
                    settings.request_timeout,
                    records.len()
                )));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_end_offsets_count_the_records_of_each_partition() {
        let ends = workload_end_offsets("t", 4, 10);
        let counts: Vec<i64> = ends.values().copied().collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
        assert_eq!(ends.keys().next(), Some(&TopicPartition::new("t", 0)));
        assert_eq!(workload_end_offsets("t", 3, 0).values().sum::<i64>(), 0);
    }
}
