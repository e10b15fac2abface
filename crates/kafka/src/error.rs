//! Errors of the Kafka connectors. Owns the messages a user reads when a Kafka
//! job fails; every variant names the brokers and, where known, the topic,
//! partition and offset. Must not hold librdkafka handles (errors cross threads
//! and outlive clients), only their text.

use thiserror::Error;

/// A Kafka connector cannot be set up or cannot go on.
#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("invalid Kafka connector setting: {0}")]
    Config(String),
    #[error("cannot create a Kafka client for brokers '{brokers}': {reason}")]
    Client { brokers: String, reason: String },
    #[error(
        "cannot fetch the metadata of topic '{topic}' from brokers '{brokers}' within {timeout_ms} ms (is the broker reachable?): {reason}"
    )]
    Metadata {
        brokers: String,
        topic: String,
        timeout_ms: u128,
        reason: String,
    },
    #[error("topic '{topic}' does not exist on brokers '{brokers}'{detail}")]
    MissingTopic {
        brokers: String,
        topic: String,
        detail: String,
    },
    #[error(
        "cannot read the offsets of topic '{topic}' partition {partition} from brokers '{brokers}': {reason}"
    )]
    Watermarks {
        brokers: String,
        topic: String,
        partition: i32,
        reason: String,
    },
    #[error(
        "cannot deserialise the record of topic '{topic}' partition {partition} offset {offset}: {reason} (set the error policy to Skip to count and skip such records)"
    )]
    Deserialize {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("consuming from brokers '{brokers}' (topics {topics}) failed: {reason}")]
    Consume {
        brokers: String,
        topics: String,
        reason: String,
    },
    #[error("cannot send a record to topic '{topic}' on brokers '{brokers}': {reason}")]
    Produce {
        brokers: String,
        topic: String,
        reason: String,
    },
    #[error(
        "{pending} record(s) for topic '{topic}' were not acknowledged by brokers '{brokers}' within {timeout_ms} ms: {reason}"
    )]
    Flush {
        brokers: String,
        topic: String,
        pending: i32,
        timeout_ms: u128,
        reason: String,
    },
    #[error(
        "brokers '{brokers}' rejected {failed} record(s) for topic '{topic}'; the first: {first}"
    )]
    Delivery {
        brokers: String,
        topic: String,
        failed: u64,
        first: String,
    },
    #[error(
        "cannot fetch the offsets committed to consumer group '{group}' for topic '{topic}' from brokers '{brokers}': {reason}"
    )]
    GroupOffsets {
        brokers: String,
        group: String,
        topic: String,
        reason: String,
    },
    #[error("cannot create topic '{topic}' on brokers '{brokers}': {reason}")]
    CreateTopic {
        brokers: String,
        topic: String,
        reason: String,
    },
    #[error("topic '{topic}' already exists on brokers '{brokers}'")]
    TopicExists { brokers: String, topic: String },
    #[error("restored Kafka offsets of '{operator}' are damaged: {reason}")]
    State { operator: String, reason: String },
}
