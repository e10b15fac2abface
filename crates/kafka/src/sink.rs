//! The Kafka sink: at-least-once through librdkafka's idempotent producer.
//! Owns the producer of each writer and the accounting of delivery reports;
//! must not acknowledge a barrier while a record written before it is
//! unacknowledged (`prepare_commit` flushes, bounded, and fails otherwise), and
//! must never drop a record (a full queue is waited on, not skipped).
//!
//! A completed checkpoint therefore implies that every record written before
//! its barrier is in the topic; after a failure, records after the restored
//! checkpoint are written again (duplicates, no loss). Exactly-once would need
//! Kafka transactions, which this sink does not use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{Barrier, Data, Sink, SinkWriter, SubtaskInfo, UserError};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::client::ClientSettings;
use crate::error::KafkaError;

/// Default bound on a flush at a barrier or at the end (and on waiting for
/// room in a full producer queue).
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Turns a record into `(key, payload)`.
pub type Serializer<T> = Arc<dyn Fn(&T) -> (Option<Vec<u8>>, Vec<u8>) + Send + Sync>;

/// Writes records to one topic; see the module documentation.
pub struct KafkaSink<T> {
    settings: ClientSettings,
    topic: String,
    serializer: Serializer<T>,
    flush_timeout: Duration,
}

impl<T: Data> KafkaSink<T> {
    pub fn new(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        serializer: impl Fn(&T) -> (Option<Vec<u8>>, Vec<u8>) + Send + Sync + 'static,
    ) -> Result<Self, KafkaError> {
        Self::with_settings(ClientSettings::new(brokers), topic, serializer)
    }

    pub fn with_settings(
        settings: ClientSettings,
        topic: impl Into<String>,
        serializer: impl Fn(&T) -> (Option<Vec<u8>>, Vec<u8>) + Send + Sync + 'static,
    ) -> Result<Self, KafkaError> {
        let topic = topic.into();
        if settings.brokers.trim().is_empty() {
            return Err(KafkaError::Config("no Kafka brokers given".into()));
        }
        if topic.is_empty() {
            return Err(KafkaError::Config("a Kafka sink needs a topic".into()));
        }
        Ok(Self {
            settings,
            topic,
            serializer: Arc::new(serializer),
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        })
    }

    /// Bound on a flush (at a barrier, at the end) and on waiting for room in
    /// the producer's queue; also librdkafka's `message.timeout.ms`.
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// Sets a librdkafka producer property (applied after this crate's own;
    /// overriding `enable.idempotence` or `acks` weakens the guarantee).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.properties.push((key.into(), value.into()));
        self
    }
}

impl<T: Data> Sink<T> for KafkaSink<T> {
    fn create_writer(&self, _subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        let producer = idempotent_producer(&self.settings, self.flush_timeout)?;
        Ok(Box::new(KafkaWriter {
            producer,
            brokers: self.settings.brokers.clone(),
            topic: self.topic.clone(),
            serializer: Arc::clone(&self.serializer),
            flush_timeout: self.flush_timeout,
        }))
    }
}

/// Delivery reports: counts the records the broker finally rejected and
/// remembers the first reason, and remembers the highest delivered offset per
/// partition (for the workload producer).
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    pub(crate) failed: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
    pub(crate) next_offsets: Mutex<Vec<i64>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        use rdkafka::message::Message;
        match result {
            Ok(message) => {
                let (partition, offset) = (message.partition(), message.offset());
                if let (Ok(p), Ok(mut next)) =
                    (usize::try_from(partition), self.next_offsets.lock())
                {
                    if next.len() <= p {
                        next.resize(p + 1, 0);
                    }
                    next[p] = next[p].max(offset + 1);
                }
            }
            Err((error, message)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| {
                        format!("partition {}: {error}", message.partition())
                    });
                }
            }
        }
    }
}

/// A producer with `enable.idempotence=true` and `acks=all`.
pub(crate) fn idempotent_producer(
    settings: &ClientSettings,
    delivery_timeout: Duration,
) -> Result<BaseProducer<DeliveryTracker>, KafkaError> {
    let mut config = settings.base_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().max(1).to_string(),
        );
    settings.apply_overrides(&mut config);
    config
        .create_with_context(DeliveryTracker::default())
        .map_err(|e| KafkaError::Client {
            brokers: settings.brokers.clone(),
            reason: e.to_string(),
        })
}

/// Enqueues one record, waiting (bounded by `timeout`) while the producer's
/// queue is full: a record is never dropped.
pub(crate) fn send_blocking(
    producer: &BaseProducer<DeliveryTracker>,
    brokers: &str,
    mut record: BaseRecord<'_, [u8], [u8]>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let mut deadline = None;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                if Instant::now() >= deadline {
                    return Err(KafkaError::Produce {
                        brokers: brokers.to_owned(),
                        topic: back.topic.to_owned(),
                        reason: format!(
                            "the producer queue stayed full for {} ms (brokers slow or unreachable)",
                            timeout.as_millis()
                        ),
                    });
                }
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((error, back)) => {
                return Err(KafkaError::Produce {
                    brokers: brokers.to_owned(),
                    topic: back.topic.to_owned(),
                    reason: error.to_string(),
                });
            }
        }
    }
}

/// Flushes (bounded) and checks that the broker acknowledged everything.
pub(crate) fn flush_checked(
    producer: &BaseProducer<DeliveryTracker>,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let flushed = producer.flush(timeout);
    check_deliveries(producer, brokers, topic)?;
    flushed.map_err(|e| KafkaError::Flush {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        pending: producer.in_flight_count(),
        timeout_ms: timeout.as_millis(),
        reason: e.to_string(),
    })
}

fn check_deliveries(
    producer: &BaseProducer<DeliveryTracker>,
    brokers: &str,
    topic: &str,
) -> Result<(), KafkaError> {
    let context = producer.context();
    let failed = context.failed.load(Ordering::Relaxed);
    if failed == 0 {
        return Ok(());
    }
    let first = context
        .first_error
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .unwrap_or_else(|| "(no reason recorded)".into());
    Err(KafkaError::Delivery {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        failed,
        first,
    })
}

struct KafkaWriter<T> {
    producer: BaseProducer<DeliveryTracker>,
    brokers: String,
    topic: String,
    serializer: Serializer<T>,
    flush_timeout: Duration,
}

impl<T: Data> SinkWriter<T> for KafkaWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        for value in batch.drain(..) {
            let (key, payload) = (self.serializer)(&value);
            let mut record = BaseRecord::to(&self.topic).payload(payload.as_slice());
            if let Some(key) = key.as_deref() {
                record = record.key(key);
            }
            send_blocking(&self.producer, &self.brokers, record, self.flush_timeout)?;
        }
        // Serve delivery reports; a rejected record fails the job early.
        self.producer.poll(Duration::ZERO);
        check_deliveries(&self.producer, &self.brokers, &self.topic)?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        flush_checked(
            &self.producer,
            &self.brokers,
            &self.topic,
            self.flush_timeout,
        )?;
        Ok(())
    }

    fn prepare_commit(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        // Everything written before the barrier is acknowledged before the
        // barrier is: a completed checkpoint implies it is in the topic.
        flush_checked(
            &self.producer,
            &self.brokers,
            &self.topic,
            self.flush_timeout,
        )?;
        Ok(Vec::new())
    }
}
