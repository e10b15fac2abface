//! The Kafka source. Owns partition assignment, the per-partition read
//! positions and their operator list state; must not use offsets committed to
//! the broker for recovery (a checkpoint's list state is the only truth) and
//! must never block a task (`poll` uses `BaseConsumer::poll(Duration::ZERO)`,
//! offset commits are asynchronous).
//!
//! - Assignment: every instance fetches the topics' partitions when its reader
//!   is created and takes partition `p` of the `k`-th configured topic iff
//!   [`partition_owner`]`(k, p, parallelism) == index`, i.e. `(k + p) %
//!   parallelism`. The rule depends only on the configuration and the partition,
//!   so instances that fetch metadata separately agree, and a single topic's
//!   partition `p` goes to instance `p % parallelism`.
//! - Lag: per owned partition a gauge [`LAG_GAUGE`] (labels `topic`,
//!   `partition`) through the runtime's metrics hook (`SubtaskInfo::metrics`):
//!   the partition's high watermark as librdkafka's statistics report it
//!   (`statistics.interval.ms`, from its own fetch responses: no request is
//!   made for it) minus the next offset to read, updated once a second at the
//!   start of a poll, never per record.
//! - Positions: one [`PartitionOffset`] per owned partition (the next offset to
//!   read; `None` before the first record of a partition that starts at the
//!   earliest offset), snapshotted at the barrier as **Union** list state
//!   [`OFFSETS_STATE`]: after a restore every instance sees every partition's
//!   position and picks those it owns at the new parallelism, so a rescale
//!   moves partitions together with their offsets. Partitions without a stored
//!   position start at [`StartFrom`].
//! - The consumer is manually assigned (`assign` with explicit offsets; no
//!   group membership, no rebalancing, `enable.auto.commit=false`, and
//!   `auto.offset.reset=error` so that a position the broker no longer has is
//!   an error, never a silent jump).
//! - Resuming at a stored offset `n`: the first record must be `n` (or one
//!   below, dropped). If the broker answers with a later offset, the reader
//!   re-reads the partition from its start and drops what it already emitted,
//!   so a broker that skips the rest of a record batch (tansu 0.6) cannot lose
//!   records silently. tansu also answers a fetch inside its *last* batch with
//!   nothing at all; [`KafkaSource::reread_on_resume`] avoids both by always
//!   resuming from the start (for tests against tansu).
//! - Consumer group offsets ([`KafkaSource::group_id`]): for monitoring only
//!   (lag in `kafka-consumer-groups.sh` and similar tools). The positions of
//!   each snapshot are remembered (`GroupCommits`, bounded) and committed to
//!   the group when the runtime reports the snapshot complete
//!   (`notify_checkpoint_complete`): a completed checkpoint or the savepoint
//!   of a stop-with-savepoint, never an intermediate savepoint, never an
//!   aborted snapshot, never ahead of the newest completed one. The commit is
//!   asynchronous (`CommitMode::Async`); its result is logged by
//!   `GroupContext` when the consumer is next polled (or closed, which waits
//!   for outstanding commits). A failed commit is logged, never fatal: the
//!   next completed checkpoint commits newer offsets anyway.
//! - Event time ([`KafkaSource::with_event_time`] with an assigner over the
//!   deserialised record, or [`KafkaSource::with_kafka_timestamps`] with the
//!   Kafka record's timestamp): one watermark generator per owned partition
//!   (`SplitWatermarks`, keyed by the partition's index in the reader), fed a
//!   run of consecutive records of one partition at a time; the reader's
//!   watermark is the minimum over its partitions that have not reached a
//!   bounded end and, with idleness, are not idle (on the job's clock,
//!   `SubtaskInfo::clock`); when all of them are idle the reader is
//!   (`SourceReader::is_idle`), and its task tells downstream not to wait
//!   for it (`WatermarkStatus::Idle`). A reader that owns no partition reports
//!   [`Watermark::MAX`]: it will never emit a record. Watermarks are not
//!   checkpointed: a reader created on restore or rescale starts a fresh
//!   generator for each partition it owns, and records dropped while
//!   re-reading up to a restored position feed none.
//! - Per-partition state lives in one struct per partition (`PartitionState`);
//!   a new stored field needs a serde default to keep old checkpoints readable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowstate_runtime::checkpoint::{OperatorListState, decode_list, encode_list};
use flowstate_runtime::{
    Barrier, Data, Source, SourcePoll, SourceReader, SplitWatermarks, SubtaskInfo, UserError,
    Watermark, WatermarkStrategy,
};
use flowstate_state::RedistributionMode;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as RdError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::client::ClientSettings;
use crate::error::KafkaError;

/// Name of the source's operator list state (Union): one [`PartitionOffset`]
/// per partition, JSON.
pub const OFFSETS_STATE: &str = "kafka-offsets";

/// How long an idle reader asks not to be polled (records arrive on
/// librdkafka's threads, which cannot wake a task).
pub const DEFAULT_IDLE_WAIT: Duration = Duration::from_millis(5);

/// At most one warning about skipped records per reader in this interval.
const SKIP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// At most one warning about broker trouble per reader in this interval.
const TRANSIENT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often librdkafka reports its statistics (the partitions' high
/// watermarks) and the reader updates its lag gauges.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// The name of the lag gauge a reader registers per partition (exported as
/// `flowstate_kafka_consumer_lag{topic,partition}`).
pub const LAG_GAUGE: &str = "kafka_consumer_lag";

/// The partitions' high watermarks as librdkafka's last statistics said
/// (from its fetch responses: no request of its own), by topic and partition.
type HighWatermarks = Arc<std::sync::Mutex<HashMap<(String, i32), i64>>>;

/// Snapshots whose positions wait for their completion, per reader. Only
/// intermediate savepoints (never notified) and snapshots in flight are
/// waiting, so a few suffice; beyond this the oldest is forgotten (a later
/// completed checkpoint commits newer positions anyway).
pub const GROUP_COMMITS_PENDING_MAX: usize = 16;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// A stored position: an element of [`OFFSETS_STATE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read; `None`: the earliest offset the broker has
    /// (nothing read yet).
    pub next: Option<i64>,
}

/// A record as the broker delivered it, for the deserializer.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Milliseconds since the epoch, if the record has a timestamp.
    pub timestamp_ms: Option<i64>,
}

/// Turns a record into a `T`, or says why it cannot.
pub type Deserializer<T> = Arc<dyn Fn(&RawRecord<'_>) -> Result<T, String> + Send + Sync>;

/// What to do with a record the deserializer rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Fail the job, naming topic, partition, offset and the reason.
    #[default]
    Fail,
    /// Skip it: counted ([`KafkaSource::skipped_records`]) and logged (a
    /// warning per reader at most every 10 s with the running total).
    Skip,
}

/// Where a partition without a stored position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The earliest offset the broker holds.
    #[default]
    Earliest,
    /// The high watermark when the reader is created (fetched from the broker;
    /// note that tansu 0.6 reports it wrongly).
    Latest,
}

/// When a reader is finished.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StopAt {
    /// Never (a streaming job).
    #[default]
    Never,
    /// Each partition up to an exclusive end offset given by the job; every
    /// partition a reader owns must be listed. Works against any broker (the
    /// bounded mode for tests and built-in jobs; see [`crate::workload_end_offsets`]).
    /// The end must be an offset a record has or will have: transaction markers
    /// are never delivered, so an end just after one is never reached.
    EndOffsets(BTreeMap<TopicPartition, i64>),
    /// Each partition up to its high watermark fetched when the reader is
    /// created. Not reliable on tansu 0.6, which reports the latest offset
    /// wrongly: use [`StopAt::EndOffsets`] there.
    HighWatermark,
}

/// Where the event time of a record comes from ([`KafkaSource::with_event_time`],
/// [`KafkaSource::with_kafka_timestamps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTimestamps {
    /// The strategy's timestamp assigner, over the deserialised record.
    Assigner,
    /// The Kafka record's timestamp ([`RawRecord::timestamp_ms`]): the
    /// producer's create time, or the broker's log-append time if the topic
    /// has `message.timestamp.type=LogAppendTime`. The strategy's assigner is
    /// not called.
    Kafka,
}

/// A bounded out-of-orderness strategy (watermark = the largest timestamp
/// seen − `max_delay_ms` − 1) for [`KafkaSource::with_kafka_timestamps`],
/// which feeds it the Kafka record timestamps; add idleness with
/// [`WatermarkStrategy::with_idleness`]. It has no timestamp assigner of its
/// own: used anywhere else (`with_event_time`,
/// `assign_timestamps_and_watermarks`), the first record fails the task.
pub fn kafka_timestamps<T>(max_delay_ms: i64) -> WatermarkStrategy<T> {
    WatermarkStrategy::bounded_out_of_orderness(max_delay_ms, |_: &T| {
        panic!(
            "a flowstate_kafka::kafka_timestamps strategy has no timestamp assigner: \
             use it with KafkaSource::with_kafka_timestamps"
        )
    })
}

/// Instance owning partition `partition` of the `topic_index`-th configured
/// topic at `parallelism`: `(topic_index + partition) % parallelism`.
pub fn partition_owner(topic_index: usize, partition: i32, parallelism: u32) -> u32 {
    let parallelism = u64::from(parallelism.max(1));
    ((topic_index as u64 % parallelism + u64::from(partition.unsigned_abs()) % parallelism)
        % parallelism) as u32
}

/// Reads records of one or more topics; see the module documentation.
pub struct KafkaSource<T> {
    settings: ClientSettings,
    topics: Vec<String>,
    deserializer: Deserializer<T>,
    on_error: ErrorPolicy,
    start: StartFrom,
    stop: StopAt,
    idle_wait: Duration,
    reread_on_resume: bool,
    group_id: Option<String>,
    skipped: Arc<AtomicU64>,
    event_time: Option<(WatermarkStrategy<T>, EventTimestamps)>,
}

impl<T: Data> KafkaSource<T> {
    /// A source of `topics` on `brokers` (`host:port[,host:port...]`).
    pub fn new(
        brokers: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
        deserializer: impl Fn(&RawRecord<'_>) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, KafkaError> {
        Self::with_settings(ClientSettings::new(brokers), topics, deserializer)
    }

    /// A source with explicit connection settings.
    pub fn with_settings(
        settings: ClientSettings,
        topics: impl IntoIterator<Item = impl Into<String>>,
        deserializer: impl Fn(&RawRecord<'_>) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, KafkaError> {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        if settings.brokers.trim().is_empty() {
            return Err(KafkaError::Config("no Kafka brokers given".into()));
        }
        if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
            return Err(KafkaError::Config(
                "a Kafka source needs at least one topic, and topic names are not empty".into(),
            ));
        }
        for (i, topic) in topics.iter().enumerate() {
            if topics[..i].contains(topic) {
                return Err(KafkaError::Config(format!(
                    "topic '{topic}' is listed twice"
                )));
            }
        }
        Ok(Self {
            settings,
            topics,
            deserializer: Arc::new(deserializer),
            on_error: ErrorPolicy::Fail,
            start: StartFrom::Earliest,
            stop: StopAt::Never,
            idle_wait: DEFAULT_IDLE_WAIT,
            reread_on_resume: false,
            group_id: None,
            skipped: Arc::new(AtomicU64::new(0)),
            event_time: None,
        })
    }

    /// Records carry event time, read by `strategy`'s timestamp assigner from
    /// the deserialised record. Every partition a reader owns has its own
    /// generator; the reader's watermark is the minimum over its partitions
    /// that have not reached a bounded end ([`StopAt`]) and, with
    /// [`WatermarkStrategy::with_idleness`], have produced a record within
    /// the idleness on the job's clock. So a partition far ahead never makes
    /// another's records late, and a partition without a record yet holds
    /// the watermark back until it produces or, with idleness, is idle. When
    /// every partition of a reader is idle, the reader is idle downstream
    /// (`WatermarkStatus::Idle`): consumers leave it out of their minimum
    /// until a partition produces again. To use the Kafka record timestamp, copy [`RawRecord::timestamp_ms`] into
    /// `T` in the deserializer (records carry no timestamp of their own, so
    /// downstream event-time operators need it in `T` too), or see
    /// [`KafkaSource::with_kafka_timestamps`].
    pub fn with_event_time(mut self, strategy: WatermarkStrategy<T>) -> Self {
        self.event_time = Some((strategy, EventTimestamps::Assigner));
        self
    }

    /// As [`KafkaSource::with_event_time`], but a record's event time is its
    /// Kafka timestamp ([`EventTimestamps::Kafka`]: the producer's create
    /// time, or the broker's log-append time, as the topic is configured);
    /// `strategy` gives the generator (e.g. [`kafka_timestamps`]`(ms)`, or a
    /// user's generator, which sees the deserialised record with that
    /// timestamp) and the idleness, and its assigner is never called. A
    /// record without a timestamp (the pre-0.10 message format) is treated
    /// as one the deserializer rejects ([`ErrorPolicy`]).
    pub fn with_kafka_timestamps(mut self, strategy: WatermarkStrategy<T>) -> Self {
        self.event_time = Some((strategy, EventTimestamps::Kafka));
        self
    }

    /// The event-time strategy and where its timestamps come from, if any.
    pub fn event_time(&self) -> Option<(&WatermarkStrategy<T>, EventTimestamps)> {
        self.event_time.as_ref().map(|(s, from)| (s, *from))
    }

    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.on_error = policy;
        self
    }

    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    pub fn stop_at(mut self, stop: StopAt) -> Self {
        self.stop = stop;
        self
    }

    /// Resume a partition by reading it from its earliest offset and dropping
    /// the records below the stored position, instead of fetching at that
    /// position. For brokers that cannot serve a fetch from inside a record
    /// batch: tansu 0.6 answers such a fetch with the next batch or, at the
    /// last batch, with nothing, so a restored reader would skip records or
    /// wait forever. Costs a re-read of every resumed partition on every
    /// restore; leave it off for Apache Kafka and Redpanda.
    pub fn reread_on_resume(mut self, reread: bool) -> Self {
        self.reread_on_resume = reread;
        self
    }

    /// Commit the positions of every completed checkpoint to consumer group
    /// `group` (Kafka's `group.id`), so that the broker's tools show the job's
    /// progress and lag. For monitoring only: recovery uses the offsets in the
    /// checkpoint, never the group's. The group must not be used by other
    /// consumers: the readers assign their partitions themselves and commit
    /// outside any group generation. Without it nothing is committed.
    pub fn group_id(mut self, group: impl Into<String>) -> Result<Self, KafkaError> {
        let group = group.into();
        if group.trim().is_empty() {
            return Err(KafkaError::Config("the consumer group id is empty".into()));
        }
        self.group_id = Some(group);
        Ok(self)
    }

    /// The consumer group offsets are committed to, if any.
    pub fn committed_group(&self) -> Option<&str> {
        self.group_id.as_deref()
    }

    /// How long an idle reader waits before it is polled again.
    pub fn idle_wait(mut self, wait: Duration) -> Self {
        self.idle_wait = wait;
        self
    }

    /// Bound on metadata and watermark requests (the time an unreachable broker
    /// takes to become an error when a reader is created).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// Sets a librdkafka consumer property (applied after this crate's own).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.properties.push((key.into(), value.into()));
        self
    }

    /// Records skipped by [`ErrorPolicy::Skip`], over all readers of this source
    /// (the counter is shared; read it with `load`).
    pub fn skipped_records(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.skipped)
    }

    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    fn consumer(&self, subtask: &SubtaskInfo) -> Result<BaseConsumer<GroupContext>, KafkaError> {
        let mut config = self.settings.base_config();
        // Never used for recovery: without a configured group librdkafka
        // still needs one to accept `assign`, and nothing is committed to it.
        let group = match &self.group_id {
            Some(group) => group.clone(),
            None => format!("flowstate-{}-{}", subtask.job_id, subtask.uid),
        };
        config
            .set("group.id", &group)
            // The statistics carry each partition's high watermark (lag).
            .set(
                "statistics.interval.ms",
                LAG_INTERVAL.as_millis().to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false");
        self.settings.apply_overrides(&mut config);
        let context = GroupContext {
            operator: subtask.operator.clone(),
            group,
            high_watermarks: HighWatermarks::default(),
        };
        config
            .create_with_context(context)
            .map_err(|e| KafkaError::Client {
                brokers: self.settings.brokers.clone(),
                reason: e.to_string(),
            })
    }

    /// The partitions of `topic` (sorted), or a clear error.
    fn partitions(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        topic: &str,
    ) -> Result<Vec<i32>, KafkaError> {
        crate::admin::partitions_with(consumer, &self.settings, topic)
    }

    fn high_watermark(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        tp: &TopicPartition,
    ) -> Result<i64, KafkaError> {
        consumer
            .fetch_watermarks(&tp.topic, tp.partition, self.settings.request_timeout)
            .map(|(_, high)| high)
            .map_err(|e| KafkaError::Watermarks {
                brokers: self.settings.brokers.clone(),
                topic: tp.topic.clone(),
                partition: tp.partition,
                reason: e.to_string(),
            })
    }

    fn restored_offsets(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Option<HashMap<TopicPartition, Option<i64>>>, KafkaError> {
        let Some(elements) = subtask
            .restored
            .as_ref()
            .and_then(|r| r.list(OFFSETS_STATE))
        else {
            return Ok(None);
        };
        let stored: Vec<PartitionOffset> =
            decode_list(OFFSETS_STATE, elements).map_err(|e| KafkaError::State {
                operator: subtask.operator.clone(),
                reason: e.to_string(),
            })?;
        let mut offsets = HashMap::new();
        for stored in stored {
            let tp = TopicPartition::new(stored.topic, stored.partition);
            // Every partition has one owner, so it is stored once; should it
            // appear twice, the smaller position replays rather than skips.
            let entry = offsets.entry(tp).or_insert(stored.next);
            if stored.next < *entry {
                *entry = stored.next;
            }
        }
        Ok(Some(offsets))
    }
}

impl<T: Data> Source<T> for KafkaSource<T> {
    fn create_reader(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SourceReader<T>>, UserError> {
        let consumer = self.consumer(subtask)?;
        let restored = self.restored_offsets(subtask)?;
        let mut partitions = Vec::new();
        for (k, topic) in self.topics.iter().enumerate() {
            for p in self.partitions(&consumer, topic)? {
                if partition_owner(k, p, subtask.parallelism) != subtask.index {
                    continue;
                }
                let tp = TopicPartition::new(topic.clone(), p);
                let next = match restored.as_ref().and_then(|r| r.get(&tp)) {
                    Some(next) => *next,
                    None => match self.start {
                        StartFrom::Earliest => None,
                        StartFrom::Latest => Some(self.high_watermark(&consumer, &tp)?),
                    },
                };
                let end = match &self.stop {
                    StopAt::Never => None,
                    StopAt::HighWatermark => Some(self.high_watermark(&consumer, &tp)?),
                    StopAt::EndOffsets(ends) => Some(*ends.get(&tp).ok_or_else(|| {
                        KafkaError::Config(format!(
                            "no end offset given for topic '{}' partition {}",
                            tp.topic, tp.partition
                        ))
                    })?),
                };
                let contiguous = self.reread_on_resume || next.is_none_or(|n| n <= 0);
                partitions.push(PartitionState {
                    tp,
                    next,
                    end,
                    contiguous,
                });
            }
        }
        let mut assignment = TopicPartitionList::new();
        for state in partitions.iter().filter(|s| !s.done()) {
            let offset = match state.next {
                Some(n) if !self.reread_on_resume => Offset::Offset(n),
                _ => Offset::Beginning,
            };
            assignment
                .add_partition_offset(&state.tp.topic, state.tp.partition, offset)
                .map_err(|e| KafkaError::Config(e.to_string()))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| KafkaError::Consume {
                brokers: self.settings.brokers.clone(),
                topics: self.topics.join(","),
                reason: format!("cannot assign partitions: {e}"),
            })?;
        let mut index: Vec<(String, HashMap<i32, usize>)> = self
            .topics
            .iter()
            .map(|t| (t.clone(), HashMap::new()))
            .collect();
        for (i, state) in partitions.iter().enumerate() {
            if let Some((_, map)) = index.iter_mut().find(|(t, _)| *t == state.tp.topic) {
                map.insert(state.tp.partition, i);
            }
        }
        tracing::info!(
            operator = %subtask.operator,
            instance = subtask.index,
            partitions = ?partitions.iter().map(|s| (&s.tp.topic, s.tp.partition, s.next)).collect::<Vec<_>>(),
            "Kafka reader assigned"
        );
        // Fresh generators for every partition owned now (restored or not):
        // watermarks are not checkpointed. One that is already at its
        // bounded end never holds the watermark back.
        let event_time = self.event_time.as_ref().map(|(strategy, from)| {
            let mut watermarks = SplitWatermarks::new(strategy.clone(), Arc::clone(&subtask.clock));
            for (i, state) in partitions.iter().enumerate() {
                if !state.done() {
                    watermarks.add_split(&i);
                }
            }
            EventTime {
                watermarks,
                from: *from,
                run: None,
                timestamps: Vec::new(),
            }
        });
        let lag = partitions
            .iter()
            .map(|state| {
                subtask.metrics.gauge(
                    LAG_GAUGE,
                    "Records of the Kafka partition after the reader's position (its high \
                     watermark, as of librdkafka's last statistics, minus the next offset).",
                    &[
                        ("topic", &state.tp.topic),
                        ("partition", &state.tp.partition.to_string()),
                    ],
                )
            })
            .collect();
        let high_watermarks = Arc::clone(&consumer.context().high_watermarks);
        Ok(Box::new(KafkaReader {
            lag,
            high_watermarks,
            lag_due: None,
            consumer,
            brokers: self.settings.brokers.clone(),
            topics: self.topics.join(","),
            operator: subtask.operator.clone(),
            bounded: !matches!(self.stop, StopAt::Never),
            partitions,
            index,
            deserializer: Arc::clone(&self.deserializer),
            on_error: self.on_error,
            idle_wait: self.idle_wait,
            skip_log: SkipLog {
                operator: subtask.operator.clone(),
                skipped: Arc::clone(&self.skipped),
                here: 0,
                last_log: None,
            },
            last_transient_log: None,
            commits: self.group_id.as_ref().map(|_| GroupCommits::default()),
            event_time,
        }))
    }
}

/// The consumer's librdkafka callbacks: logs the outcome of offset commits
/// (served on the reader's thread when the consumer is polled or closed).
pub(crate) struct GroupContext {
    operator: String,
    group: String,
    high_watermarks: HighWatermarks,
}

impl ClientContext for GroupContext {
    /// Every [`LAG_INTERVAL`], on the reader's thread (served by its poll):
    /// keeps the partitions' high watermarks for the lag gauges.
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let mut high = self
            .high_watermarks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (name, topic) in statistics.topics {
            for (partition, p) in topic.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    high.insert((name.clone(), partition), p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(
                operator = %self.operator,
                group = %self.group,
                offsets = offsets.count(),
                "committed a completed checkpoint's offsets to the consumer group"
            ),
            // Monitoring only: the next completed checkpoint commits again.
            Err(error) => tracing::warn!(
                operator = %self.operator,
                group = %self.group,
                "could not commit offsets to the consumer group (monitoring only; \
                 recovery does not use them): {error}"
            ),
        }
    }
}

/// The positions of snapshots waiting for their completion, oldest first,
/// and the newest snapshot whose positions were committed.
#[derive(Debug, Default)]
struct GroupCommits {
    pending: VecDeque<(u64, Vec<(TopicPartition, i64)>)>,
    committed: Option<u64>,
}

impl GroupCommits {
    /// Remembers snapshot `id`'s positions (partitions not read yet have none
    /// to commit).
    fn record(&mut self, id: u64, partitions: &[PartitionState]) {
        let offsets = partitions
            .iter()
            .filter_map(|s| s.next.map(|next| (s.tp.clone(), next)))
            .collect();
        if self.pending.len() >= GROUP_COMMITS_PENDING_MAX {
            self.pending.pop_front();
        }
        self.pending.push_back((id, offsets));
    }

    /// Snapshot `id` completed: the positions to commit, if it is newer than
    /// what was committed and its positions are known. Forgets it and every
    /// older one (subsumed).
    fn complete(&mut self, id: u64) -> Option<Vec<(TopicPartition, i64)>> {
        if self.committed.is_some_and(|c| c >= id) {
            return None;
        }
        let mut found = None;
        while self.pending.front().is_some_and(|(p, _)| *p <= id) {
            if let Some((p, offsets)) = self.pending.pop_front()
                && p == id
            {
                found = Some(offsets);
            }
        }
        if found.is_some() {
            self.committed = Some(id);
        }
        found
    }

    /// Snapshot `id` failed: its positions are never committed.
    fn abort(&mut self, id: u64) {
        self.pending.retain(|(p, _)| *p != id);
    }
}

/// One owned partition's position (and, later, its watermark).
#[derive(Debug)]
struct PartitionState {
    tp: TopicPartition,
    next: Option<i64>,
    /// Exclusive end offset of a bounded read.
    end: Option<i64>,
    /// Whether the first record after assigning at `next` has been seen (or the
    /// partition was read from its start). Until then a record past `next`
    /// may mean the broker skipped records (see `KafkaReader::poll`).
    contiguous: bool,
}

impl PartitionState {
    fn done(&self) -> bool {
        match self.end {
            None => false,
            Some(end) => self.next.unwrap_or(0) >= end,
        }
    }
}

struct KafkaReader<T> {
    consumer: BaseConsumer<GroupContext>,
    brokers: String,
    topics: String,
    operator: String,
    bounded: bool,
    partitions: Vec<PartitionState>,
    /// Per configured topic: partition -> position in `partitions`.
    index: Vec<(String, HashMap<i32, usize>)>,
    deserializer: Deserializer<T>,
    on_error: ErrorPolicy,
    idle_wait: Duration,
    skip_log: SkipLog,
    last_transient_log: Option<Instant>,
    /// With a consumer group: positions to commit once their snapshot completed.
    commits: Option<GroupCommits>,
    /// With event time: the per-partition watermarks.
    event_time: Option<EventTime<T>>,
    /// Per partition (as `partitions`): its lag gauge.
    lag: Vec<flowstate_runtime::metrics::Gauge>,
    high_watermarks: HighWatermarks,
    /// When the lag gauges are next updated.
    lag_due: Option<Instant>,
}

/// A reader's per-partition watermarks. Records of one poll arrive in runs
/// per partition (a fetched batch at a time); each run is fed to its
/// partition's generator in one call (one clock read per run, not per record).
struct EventTime<T> {
    /// Keyed by the partition's index in `KafkaReader::partitions`.
    watermarks: SplitWatermarks<usize, T>,
    from: EventTimestamps,
    /// The current run: its partition and the index in `out` of its first record.
    run: Option<(usize, usize)>,
    /// With [`EventTimestamps::Kafka`]: the Kafka timestamps of the run's records.
    timestamps: Vec<i64>,
}

impl<T> EventTime<T> {
    /// The last record of `out` was read from partition `partition`, with
    /// Kafka timestamp `timestamp` (used with [`EventTimestamps::Kafka`]).
    fn read(&mut self, partition: usize, out: &[T], timestamp: i64) {
        let last = out.len() - 1;
        if self.run.is_some_and(|(p, _)| p != partition) {
            self.flush(&out[..last]);
        }
        if self.run.is_none() {
            self.run = Some((partition, last));
        }
        if self.from == EventTimestamps::Kafka {
            self.timestamps.push(timestamp);
        }
    }

    /// Feeds the current run (its records end at the end of `out`).
    fn flush(&mut self, out: &[T]) {
        let Some((partition, first)) = self.run.take() else {
            return;
        };
        let records = &out[first..];
        match self.from {
            EventTimestamps::Assigner => self.watermarks.on_batch(&partition, records),
            EventTimestamps::Kafka => {
                self.watermarks
                    .on_batch_with_timestamps(&partition, records, &self.timestamps);
                self.timestamps.clear();
            }
        }
    }
}

/// Consumer errors after which reading cannot go on correctly; every other
/// error (broker down, timeouts, leader changes) is retried by librdkafka and
/// only logged here.
fn is_fatal(error: &RdError) -> bool {
    if matches!(error, RdError::MessageConsumptionFatal(_)) {
        return true;
    }
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::OffsetOutOfRange
                | RDKafkaErrorCode::AutoOffsetReset
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// Counts and logs skipped records (never silent).
struct SkipLog {
    operator: String,
    skipped: Arc<AtomicU64>,
    here: u64,
    last_log: Option<Instant>,
}

impl SkipLog {
    fn record(&mut self, record: &RawRecord<'_>, reason: &str, now: Instant) {
        self.here += 1;
        let total = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= SKIP_LOG_INTERVAL);
        if due {
            self.last_log = Some(now);
            tracing::warn!(
                operator = %self.operator,
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                skipped_by_this_reader = self.here,
                skipped_in_total = total,
                "skipped a Kafka record that cannot be deserialised: {reason}"
            );
        }
    }
}

impl<T> KafkaReader<T> {
    /// Sets every partition's lag gauge: its high watermark (librdkafka's
    /// last statistics) minus the next offset to read; left alone while
    /// either is unknown. Once per [`LAG_INTERVAL`], never per record.
    fn update_lag(&self) {
        let high = self
            .high_watermarks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (state, gauge) in self.partitions.iter().zip(&self.lag) {
            let key = (state.tp.topic.clone(), state.tp.partition);
            if let (Some(high), Some(next)) = (high.get(&key), state.next) {
                gauge.set((high - next).max(0));
            }
        }
    }
}

impl<T: Data> SourceReader<T> for KafkaReader<T> {
    fn poll(
        &mut self,
        out: &mut Vec<T>,
        max: usize,
        now: Instant,
    ) -> Result<SourcePoll, UserError> {
        if self.bounded && self.partitions.iter().all(PartitionState::done) {
            return Ok(SourcePoll::Finished);
        }
        if self.lag_due.is_none_or(|due| now >= due) {
            self.lag_due = Some(now + LAG_INTERVAL);
            self.update_lag();
        }
        if let Some(event_time) = &mut self.event_time {
            // A run left by a poll that failed points into another `out`.
            event_time.run = None;
            event_time.timestamps.clear();
        }
        let mut progressed = false;
        for _ in 0..max.max(1) {
            let message = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(error)) if is_fatal(&error) => {
                    return Err(KafkaError::Consume {
                        brokers: self.brokers.clone(),
                        topics: self.topics.clone(),
                        reason: error.to_string(),
                    }
                    .into());
                }
                Some(Err(error)) => {
                    let due = self
                        .last_transient_log
                        .is_none_or(|t| now.duration_since(t) >= TRANSIENT_LOG_INTERVAL);
                    if due {
                        self.last_transient_log = Some(now);
                        tracing::warn!(
                            operator = %self.operator,
                            brokers = %self.brokers,
                            "Kafka consumer trouble (retrying): {error}"
                        );
                    }
                    continue;
                }
            };
            progressed = true;
            let Some(&i) = self
                .index
                .iter()
                .find(|(t, _)| t == message.topic())
                .and_then(|(_, map)| map.get(&message.partition()))
            else {
                continue;
            };
            let offset = message.offset();
            let state = &mut self.partitions[i];
            if !state.contiguous {
                let expected = state.next.unwrap_or(0);
                if offset > expected {
                    // A fetch at `expected` answered from a later offset: a gap
                    // (compaction, markers) or a broker that cannot serve a fetch
                    // from inside a record batch (tansu 0.6 answers with the
                    // next batch, silently skipping the rest of this one). Read
                    // the partition again from its start (records below
                    // `expected` are dropped): what arrives then is contiguous.
                    tracing::warn!(
                        operator = %self.skip_log.operator,
                        topic = %state.tp.topic,
                        partition = state.tp.partition,
                        expected,
                        got = offset,
                        "Kafka fetch skipped offsets; re-reading the partition from its start"
                    );
                    self.consumer
                        .seek(
                            &state.tp.topic,
                            state.tp.partition,
                            Offset::Beginning,
                            Duration::ZERO,
                        )
                        .map_err(|e| KafkaError::Consume {
                            brokers: self.brokers.clone(),
                            topics: self.topics.clone(),
                            reason: format!(
                                "cannot seek topic '{}' partition {}: {e}",
                                state.tp.topic, state.tp.partition
                            ),
                        })?;
                }
                // From here on records arrive in order from at or below
                // `expected`: later gaps are real.
                state.contiguous = true;
                if offset > expected {
                    continue;
                }
            }
            if state.end.is_some_and(|end| offset >= end)
                || state.next.is_some_and(|next| offset < next)
            {
                // Past a bounded end, or a record already emitted.
                continue;
            }
            let record = RawRecord {
                topic: message.topic(),
                partition: message.partition(),
                offset,
                key: message.key(),
                payload: message.payload(),
                timestamp_ms: message.timestamp().to_millis(),
            };
            let kafka_timestamp = match &self.event_time {
                Some(e) if e.from == EventTimestamps::Kafka => {
                    record.timestamp_ms.ok_or_else(|| {
                        "the record has no timestamp (event time from Kafka timestamps)".to_owned()
                    })
                }
                _ => Ok(0),
            };
            match kafka_timestamp.and_then(|ts| (self.deserializer)(&record).map(|v| (v, ts))) {
                Ok((value, timestamp)) => {
                    out.push(value);
                    if let Some(event_time) = &mut self.event_time {
                        event_time.read(i, out, timestamp);
                    }
                }
                Err(reason) => match self.on_error {
                    ErrorPolicy::Fail => {
                        return Err(KafkaError::Deserialize {
                            topic: record.topic.to_owned(),
                            partition: record.partition,
                            offset,
                            reason,
                        }
                        .into());
                    }
                    ErrorPolicy::Skip => self.skip_log.record(&record, &reason, now),
                },
            }
            self.partitions[i].next = Some(offset + 1);
            if let Some(event_time) = &mut self.event_time
                && self.partitions[i].done()
            {
                // Its last record is fed with the run it belongs to.
                event_time.watermarks.finish_split(&i);
            }
        }
        if let Some(event_time) = &mut self.event_time {
            event_time.flush(out);
        }
        if progressed {
            Ok(SourcePoll::Ready)
        } else if self.partitions.is_empty() && self.bounded {
            Ok(SourcePoll::Finished)
        } else {
            Ok(SourcePoll::Pending {
                wake_at: Some(now + self.idle_wait),
            })
        }
    }

    /// The minimum over the partitions that are neither at their bounded end
    /// nor idle (see [`KafkaSource::with_event_time`]); [`Watermark::MAX`]
    /// for a reader that owns no partition (it never emits a record).
    fn watermark(&mut self) -> Option<Watermark> {
        let event_time = self.event_time.as_mut()?;
        if self.partitions.is_empty() {
            return Some(Watermark::MAX);
        }
        event_time.watermarks.current()
    }

    /// Every partition not at its bounded end produced nothing for the
    /// strategy's idleness (see [`KafkaSource::with_event_time`]): the task
    /// tells downstream not to wait for this reader's watermark until one of
    /// them produces again. A reader without partitions reports
    /// [`Watermark::MAX`] instead (see [`SourceReader::watermark`]).
    fn is_idle(&mut self) -> bool {
        !self.partitions.is_empty()
            && self
                .event_time
                .as_ref()
                .is_some_and(|e| e.watermarks.is_idle())
    }

    fn snapshot(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        if let Some(commits) = &mut self.commits {
            commits.record(barrier.id, &self.partitions);
        }
        self.position()
    }

    /// The offsets alone: an at-most-once reservation is no checkpoint, so
    /// nothing is recorded for the consumer group.
    fn position(&mut self) -> Result<Vec<OperatorListState>, UserError> {
        let offsets = self.partitions.iter().map(|s| PartitionOffset {
            topic: s.tp.topic.clone(),
            partition: s.tp.partition,
            next: s.next,
        });
        Ok(vec![encode_list(
            OFFSETS_STATE,
            RedistributionMode::Union,
            offsets,
        )?])
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        let Some(offsets) = self
            .commits
            .as_mut()
            .and_then(|c| c.complete(checkpoint_id))
        else {
            return Ok(());
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for (tp, next) in &offsets {
            // Kafka's committed offset is the next one to read, as ours.
            list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next))
                .map_err(|e| KafkaError::Config(e.to_string()))?;
        }
        // Asynchronous: librdkafka queues the request and returns; the result
        // reaches `GroupContext::commit_callback`. Monitoring only, so a
        // refusal to queue is logged, not fatal.
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(
                operator = %self.operator,
                checkpoint = checkpoint_id,
                "could not queue the offset commit to the consumer group: {error}"
            );
        }
        Ok(())
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        if let Some(commits) = &mut self.commits {
            commits.abort(checkpoint_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_topic_deals_partition_p_to_instance_p_mod_parallelism() {
        for parallelism in 1..6 {
            for p in 0..20 {
                assert_eq!(partition_owner(0, p, parallelism), p as u32 % parallelism);
            }
        }
    }

    #[test]
    fn every_partition_has_exactly_one_owner_at_any_parallelism() {
        for parallelism in 1..8u32 {
            let mut load = vec![0u32; parallelism as usize];
            for topic in 0..3 {
                for p in 0..10 {
                    let owner = partition_owner(topic, p, parallelism);
                    assert!(owner < parallelism);
                    load[owner as usize] += 1;
                }
            }
            assert_eq!(load.iter().sum::<u32>(), 30);
            // Every instance reads something: partitions of one topic go round robin.
            assert!(load.iter().all(|&n| n > 0), "{load:?}");
        }
    }

    #[test]
    fn a_position_is_done_only_at_its_end() {
        let state = |next, end| PartitionState {
            tp: TopicPartition::new("t", 0),
            next,
            end,
            contiguous: true,
        };
        assert!(!state(None, None).done());
        assert!(!state(Some(5), None).done());
        assert!(state(None, Some(0)).done());
        assert!(!state(None, Some(1)).done());
        assert!(!state(Some(4), Some(5)).done());
        assert!(state(Some(5), Some(5)).done());
    }

    fn positions(offsets: &[(i32, Option<i64>)]) -> Vec<PartitionState> {
        offsets
            .iter()
            .map(|&(p, next)| PartitionState {
                tp: TopicPartition::new("t", p),
                next,
                end: None,
                contiguous: true,
            })
            .collect()
    }

    #[test]
    fn only_a_completed_snapshot_s_positions_are_committed_and_never_backwards() {
        let mut commits = GroupCommits::default();
        commits.record(1, &positions(&[(0, Some(5)), (1, None)]));
        commits.record(2, &positions(&[(0, Some(7)), (1, Some(2))]));
        commits.record(3, &positions(&[(0, Some(9)), (1, Some(4))]));
        // 2 was aborted: never committed, even if a late completion came.
        commits.abort(2);
        assert_eq!(commits.complete(2), None);
        // 3 completes: 1 (an unnotified savepoint, say) is subsumed.
        assert_eq!(
            commits.complete(3),
            Some(vec![
                (TopicPartition::new("t", 0), 9),
                (TopicPartition::new("t", 1), 4)
            ])
        );
        assert!(commits.pending.is_empty());
        // Older or repeated completions commit nothing.
        assert_eq!(commits.complete(1), None);
        assert_eq!(commits.complete(3), None);
        // A partition not read yet has nothing to commit.
        commits.record(4, &positions(&[(0, Some(9)), (1, None)]));
        assert_eq!(
            commits.complete(4),
            Some(vec![(TopicPartition::new("t", 0), 9)])
        );
    }

    #[test]
    fn waiting_positions_are_bounded() {
        let mut commits = GroupCommits::default();
        for id in 0..(GROUP_COMMITS_PENDING_MAX as u64 * 3) {
            commits.record(id, &positions(&[(0, Some(id as i64))]));
        }
        assert_eq!(commits.pending.len(), GROUP_COMMITS_PENDING_MAX);
        // The oldest were forgotten; the newest still commits.
        assert_eq!(commits.complete(0), None);
        let last = GROUP_COMMITS_PENDING_MAX as u64 * 3 - 1;
        assert_eq!(
            commits.complete(last),
            Some(vec![(TopicPartition::new("t", 0), last as i64)])
        );
    }

    /// Records of interleaved partitions are fed, run by run, to their own
    /// partition's generator, with the assigner or the Kafka timestamps.
    #[test]
    fn interleaved_runs_feed_each_partition_s_generator() {
        for from in [EventTimestamps::Assigner, EventTimestamps::Kafka] {
            let strategy = WatermarkStrategy::monotonous(|r: &i64| *r);
            let clock: flowstate_state::SharedClock = flowstate_state::ManualClock::new(0);
            let mut event_time = EventTime {
                watermarks: SplitWatermarks::new(strategy, clock),
                from,
                run: None,
                timestamps: Vec::new(),
            };
            event_time.watermarks.add_split(&0);
            event_time.watermarks.add_split(&1);
            // Something from an earlier poll stays in `out`.
            let mut out = vec![i64::MAX];
            // (partition, record); the Kafka timestamp is record + 1.
            for (partition, record) in [(0, 500), (0, 600), (1, 10), (1, 20), (0, 700), (1, 30)] {
                out.push(record);
                event_time.read(partition, &out, record + 1);
            }
            event_time.flush(&out);
            let shift = i64::from(from == EventTimestamps::Kafka);
            // Partition 1's newest is 30 (monotonous: minus one).
            assert_eq!(
                event_time.watermarks.current(),
                Some(Watermark(29 + shift)),
                "{from:?}"
            );
            event_time.watermarks.finish_split(&1);
            assert_eq!(
                event_time.watermarks.current(),
                Some(Watermark(699 + shift)),
                "{from:?}"
            );
            assert!(event_time.run.is_none() && event_time.timestamps.is_empty());
        }
    }

    #[test]
    fn the_source_refuses_a_bad_configuration() {
        let parse = |_: &RawRecord<'_>| Ok(0u64);
        assert!(KafkaSource::new("", ["t"], parse).is_err());
        assert!(KafkaSource::new("b:9092", Vec::<String>::new(), parse).is_err());
        assert!(KafkaSource::new("b:9092", ["t", "t"], parse).is_err());
        assert!(KafkaSource::new("b:9092", [""], parse).is_err());
        let source = KafkaSource::new("b:9092", ["t"], parse).unwrap();
        assert!(source.group_id(" ").is_err());
    }
}
