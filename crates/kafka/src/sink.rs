//! The Kafka sink: at-least-once through librdkafka's idempotent producer.
//! Owns the producer of each writer and the accounting of delivery reports;
//! must not acknowledge a barrier while a record written before it is
//! unacknowledged, and must never drop a record (a full queue is waited on,
//! not skipped).
//!
//! The wait for the deliveries is the deferred part of the first commit phase
//! ([`SinkWriter::prepare_commit_deferred`]): records are counted per *epoch*
//! (the records between two barriers; the epoch travels as each record's
//! delivery opaque), the barrier only closes the epoch, and an upload thread
//! waits, bounded, until every record of every epoch up to it was delivered.
//! A plain `flush` would not do there: it waits until the producer's queue is
//! empty, records written after the barrier included, which a busy writer
//! never lets happen.
//!
//! A completed checkpoint therefore implies that every record written before
//! its barrier is in the topic; after a failure, records after the restored
//! checkpoint are written again (duplicates, no loss). Exactly-once would need
//! Kafka transactions, which this sink does not use.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{Barrier, Data, PreparedCommit, Sink, SinkWriter, SubtaskInfo, UserError};
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
            producer: Arc::new(producer),
            epoch: FIRST_EPOCH,
            sent: 0,
            brokers: self.settings.brokers.clone(),
            topic: self.topic.clone(),
            serializer: Arc::clone(&self.serializer),
            flush_timeout: self.flush_timeout,
        }))
    }
}

/// Delivery reports: counts the records the broker finally rejected and
/// remembers the first reason, remembers the highest delivered offset per
/// partition (for the workload producer), and counts the reports per epoch
/// (the delivery opaque of every record; the workload producer uses 0 only).
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    pub(crate) failed: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
    pub(crate) next_offsets: Mutex<Vec<i64>>,
    /// Epochs with records not all reported: epoch -> (records sent, once
    /// the epoch was closed by a barrier; reports so far). An entry is
    /// removed as soon as every record of its closed epoch was reported, so
    /// a closed epoch without an entry is fully reported.
    epochs: Mutex<BTreeMap<usize, (Option<u64>, u64)>>,
}

/// A sink writer's first epoch (0 is the workload producer's, never closed).
const FIRST_EPOCH: usize = 1;

/// How long the deferred wait for deliveries polls at a time.
const DELIVERY_POLL_SLICE: Duration = Duration::from_millis(100);

impl DeliveryTracker {
    fn epochs(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, (Option<u64>, u64)>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more report (a delivery or a final failure) of a record of `epoch`.
    fn reported(&self, epoch: usize) {
        let mut epochs = self.epochs();
        let entry = epochs.entry(epoch).or_insert((None, 0));
        entry.1 += 1;
        if entry.0 == Some(entry.1) {
            epochs.remove(&epoch);
        }
    }

    /// A barrier closed `epoch` after `sent` records.
    fn close(&self, epoch: usize, sent: u64) {
        let mut epochs = self.epochs();
        let entry = epochs.entry(epoch).or_insert((None, 0));
        entry.0 = Some(sent);
        if entry.1 >= sent {
            epochs.remove(&epoch);
        }
    }

    /// Every record of every epoch up to `epoch` was reported.
    fn reported_through(&self, epoch: usize) -> bool {
        self.epochs().range(..=epoch).next().is_none()
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        // Counted after the failure is recorded, so that a waiter that sees
        // the epoch complete also sees the failure.
        self.record(result);
        self.reported(epoch);
    }
}

impl DeliveryTracker {
    fn record(&self, result: &DeliveryResult<'_>) {
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
    mut record: BaseRecord<'_, [u8], [u8], usize>,
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
    /// Shared with the deferred waits of this writer's snapshots, which poll
    /// it on an upload thread (librdkafka's handle is thread-safe).
    producer: Arc<BaseProducer<DeliveryTracker>>,
    /// The epoch records are sent in now, and how many so far.
    epoch: usize,
    sent: u64,
    brokers: String,
    topic: String,
    serializer: Serializer<T>,
    flush_timeout: Duration,
}

/// Waits, bounded by `timeout`, until every record of every epoch up to
/// `epoch` was reported, serving delivery reports meanwhile; then checks
/// that none was rejected.
fn await_deliveries(
    producer: &BaseProducer<DeliveryTracker>,
    brokers: &str,
    topic: &str,
    epoch: usize,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    while !producer.context().reported_through(epoch) {
        let now = Instant::now();
        if now >= deadline {
            check_deliveries(producer, brokers, topic)?;
            return Err(KafkaError::Flush {
                brokers: brokers.to_owned(),
                topic: topic.to_owned(),
                pending: producer.in_flight_count(),
                timeout_ms: timeout.as_millis(),
                reason: "records written before the barrier were not acknowledged in time".into(),
            });
        }
        producer.poll((deadline - now).min(DELIVERY_POLL_SLICE));
    }
    check_deliveries(producer, brokers, topic)
}

impl<T: Data> SinkWriter<T> for KafkaWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        for value in batch.drain(..) {
            let (key, payload) = (self.serializer)(&value);
            let mut record =
                BaseRecord::with_opaque_to(&self.topic, self.epoch).payload(payload.as_slice());
            if let Some(key) = key.as_deref() {
                record = record.key(key);
            }
            send_blocking(&self.producer, &self.brokers, record, self.flush_timeout)?;
            self.sent += 1;
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

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        let prepared = self.prepare_commit_deferred(barrier)?;
        if let Some(deferred) = prepared.deferred {
            deferred()?;
        }
        Ok(prepared.state)
    }

    fn prepare_commit_deferred(&mut self, _barrier: Barrier) -> Result<PreparedCommit, UserError> {
        // Everything written before the barrier is acknowledged before the
        // barrier is: a completed checkpoint implies it is in the topic. The
        // barrier closes the epoch; the wait runs on an upload thread.
        let closed = self.epoch;
        if self.sent > 0 {
            self.producer.context().close(closed, self.sent);
            self.epoch += 1;
            self.sent = 0;
        }
        if self.producer.context().reported_through(closed) {
            check_deliveries(&self.producer, &self.brokers, &self.topic)?;
            return Ok(PreparedCommit::default());
        }
        let (producer, brokers, topic, timeout) = (
            Arc::clone(&self.producer),
            self.brokers.clone(),
            self.topic.clone(),
            self.flush_timeout,
        );
        Ok(PreparedCommit {
            state: Vec::new(),
            deferred: Some(Box::new(move || {
                await_deliveries(&producer, &brokers, &topic, closed, timeout)?;
                Ok(())
            })),
        })
    }
}
