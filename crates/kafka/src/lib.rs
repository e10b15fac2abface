//! Kafka connectors: [`KafkaSource`] (offsets as operator state, rewind and
//! replay on recovery, deterministic partition assignment that survives a
//! rescale) and [`KafkaSink`] (at-least-once through the idempotent producer,
//! flushed at every barrier), plus the admin and producer helpers that tests and
//! built-in jobs use ([`create_topic`], [`topic_partitions`], [`produce_workload`],
//! [`read_topic`]).
//!
//! Like `flowstate-connectors`, this crate implements the runtime's
//! `Source`/`Sink` traits and nothing else: it knows nothing of the CLI, the API
//! builder, state backends or checkpoint storage. It is the only crate that links
//! librdkafka (built from source with cmake); it is not a default member of the
//! workspace, so the daily `cargo build` never compiles that C.
//!
//! Modules:
//! - `error`: [`KafkaError`], every way a Kafka connector can fail, naming the
//!   brokers, topic, partition and offset concerned.
//! - `client`: the librdkafka settings shared by every client (timeouts,
//!   bootstrap servers, user overrides); no I/O of its own.
//! - `source`: the source, its readers, the offsets' list state, the
//!   partition-to-instance rule, the per-partition watermarks (event time)
//!   and the commits of completed checkpoints' offsets to a consumer group
//!   (monitoring only).
//! - `sink`: the sink and its writers.
//! - `admin`: topic creation, partition lookup, a consumer group's committed
//!   offsets and the workload producer.

mod admin;
mod client;
mod error;
pub mod sink;
pub mod source;

pub use admin::{
    ReadRecord, committed_offsets, consume_all, create_topic, produce_workload, read_topic,
    topic_partitions, workload_end_offsets,
};
pub use client::ClientSettings;
pub use error::KafkaError;
pub use sink::{KafkaSink, Serializer};
pub use source::{
    Deserializer, ErrorPolicy, EventTimestamps, GROUP_COMMITS_PENDING_MAX, KafkaSource, LAG_GAUGE,
    OFFSETS_STATE, PartitionOffset, RawRecord, StartFrom, StopAt, TopicPartition, kafka_timestamps,
    partition_owner,
};
