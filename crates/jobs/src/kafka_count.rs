//! `kafka-count`: workload W read from a Kafka topic (written by
//! [`produce_workload`]: key and value as decimal text), through the same keyed
//! `(count, sum)` as `keyed-count`, into committed files, a PostgreSQL table
//! (feature `postgres`), a Kafka topic, or nowhere. It shows the connectors end to end: the
//! partitions' offsets are the source's state, so a crash rewinds and replays.
//!
//! Bounded or not: with `records`, every partition is read up to the offset
//! [`produce_workload`] of that many records ends it at (the broker's own high
//! watermark is not relied on: tansu reports it wrongly), and the job ends.
//! After a restore every partition is re-read from its start and records below
//! the restored offsets are dropped (`reread_on_resume`): tansu 0.6 answers a
//! fetch inside a record batch with nothing, which would otherwise stall or
//! skip the rest of the batch.
//!
//! With a consumer group (`group_id`), the offsets of every completed
//! checkpoint are committed to it, so Kafka's tools show the job's lag; they
//! are never read back (recovery uses the checkpoint's offsets).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flowstate::StreamEnvironment;
use flowstate::connectors::ConnectorError;
use flowstate_kafka::{
    ClientSettings, ErrorPolicy, KafkaSink, KafkaSource, RawRecord, StopAt, topic_partitions,
    workload_end_offsets,
};

use crate::keyed_count::{CountAndSum, CountUpdate};
use crate::workload::Checksum;

pub use flowstate_kafka::{create_topic, produce_workload};

/// Where the updates go.
#[derive(Debug, Clone, Default)]
pub enum KafkaCountOutput {
    /// Counted and dropped.
    #[default]
    Discard,
    /// `key,count,sum` lines through the exactly-once file sink.
    Files(PathBuf),
    /// Rows `(key, count, sum)` upserted by key into `table` (created if
    /// missing) through the exactly-once PostgreSQL sink.
    #[cfg(feature = "postgres")]
    Table { url: String, table: String },
    /// Records with key `key` and payload `key,count,sum` (decimal text) into
    /// `topic` on the input's brokers (created if missing, with as many
    /// partitions as the input topic), through the at-least-once Kafka sink
    /// (idempotent producer; a restore writes the updates after the restored
    /// checkpoint again). A key's updates all go to one partition, in order,
    /// so its last record there holds its final `(count, sum)`.
    Topic(String),
}

/// Parameters of `kafka-count`.
#[derive(Debug, Clone)]
pub struct KafkaCountParams {
    pub brokers: String,
    pub topic: String,
    /// Read the `records` records `produce_workload` wrote into the (then
    /// empty) topic, and end; `None` reads on forever.
    pub records: Option<u64>,
    /// Skip (and count) records whose key or value is not a decimal number,
    /// instead of failing the job.
    pub skip_malformed: bool,
    /// Commit the offsets of every completed checkpoint to this consumer
    /// group (monitoring only); `None` commits nothing.
    pub group_id: Option<String>,
    pub output: KafkaCountOutput,
}

/// Why `kafka-count` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KafkaCountError {
    #[error(transparent)]
    Kafka(#[from] flowstate_kafka::KafkaError),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Postgres(#[from] flowstate_postgres::PostgresError),
    #[error("output table '{table}': {reason}")]
    Table { table: String, reason: String },
}

/// What a built `kafka-count` job reports once it ends.
pub struct KafkaCountJob {
    pub totals: Arc<Mutex<Checksum>>,
    /// Records skipped as malformed (with `skip_malformed`).
    pub skipped: Arc<std::sync::atomic::AtomicU64>,
}

impl KafkaCountJob {
    /// `RESULT records=N keys=K checksum=...`, as `keyed-count` prints it.
    pub fn result_line(&self) -> String {
        let c = *self.totals.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "RESULT records={} keys={} checksum={:016x}",
            c.records, c.keys, c.value
        )
    }
}

/// A decimal `u64` from a record's key or value, or why not.
fn decimal(what: &str, bytes: Option<&[u8]>) -> Result<u64, String> {
    let bytes = bytes.ok_or_else(|| format!("the record has no {what}"))?;
    let text = std::str::from_utf8(bytes).map_err(|_| format!("its {what} is not UTF-8"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("its {what} {text:?} is not a decimal number"))
}

fn key_and_value(record: &RawRecord<'_>) -> Result<(u64, u64), String> {
    Ok((
        decimal("key", record.key)?,
        decimal("value", record.payload)?,
    ))
}

/// Adds `kafka-count` to `env`. Fails at once if the brokers cannot be asked
/// for the topic's partitions (bounded runs) or the output cannot be prepared.
pub fn build(
    env: &StreamEnvironment,
    params: &KafkaCountParams,
) -> Result<KafkaCountJob, KafkaCountError> {
    let mut source = KafkaSource::new(
        params.brokers.clone(),
        [params.topic.clone()],
        key_and_value,
    )?
    .on_error(if params.skip_malformed {
        ErrorPolicy::Skip
    } else {
        ErrorPolicy::Fail
    })
    // A restored partition is read from its start, records below the
    // stored offset dropped: correct on any broker, and needed on
    // tansu, which cannot start a fetch inside a record batch.
    .reread_on_resume(true);
    if let Some(group) = &params.group_id {
        source = source.group_id(group.clone())?;
    }
    if let Some(records) = params.records {
        let partitions =
            topic_partitions(ClientSettings::new(params.brokers.clone()), &params.topic)?;
        let count = partitions.len() as i32;
        source = source.stop_at(StopAt::EndOffsets(workload_end_offsets(
            &params.topic,
            count,
            records,
        )));
    }
    let skipped = source.skipped_records();
    let totals = Arc::new(Mutex::new(Checksum::default()));
    let updates = env
        .from_source("Source: Kafka", source)
        .uid("kafka-source")
        .key_by(|&(key, _): &(u64, u64)| key)
        .process(CountAndSum::new(Arc::clone(&totals)))
        .name("Count and sum")
        .uid("count-and-sum");
    match &params.output {
        KafkaCountOutput::Discard => {
            updates.count();
        }
        KafkaCountOutput::Files(dir) => updates.write_lines(dir)?,
        #[cfg(feature = "postgres")]
        KafkaCountOutput::Table { url, table } => {
            let sink = flowstate_postgres::PostgresSink::new(
                url,
                table,
                &["key", "count", "sum"],
                flowstate_postgres::Mode::Upsert {
                    key_columns: vec!["key".into()],
                },
                |u: &CountUpdate| {
                    use flowstate_postgres::SqlValue;
                    vec![
                        SqlValue::UInt(u.key),
                        SqlValue::UInt(u.count),
                        SqlValue::UInt(u.sum),
                    ]
                },
            )?;
            create_counts_table(url, table, sink.endpoint())?;
            updates.sink_to("Sink: PostgreSQL", sink);
        }
        KafkaCountOutput::Topic(topic) => {
            create_output_topic(&params.brokers, &params.topic, topic)?;
            let sink = KafkaSink::new(params.brokers.clone(), topic.clone(), |u: &CountUpdate| {
                (
                    Some(u.key.to_string().into_bytes()),
                    u.to_string().into_bytes(),
                )
            })?;
            updates.sink_to("Sink: Kafka", sink);
        }
    }
    Ok(KafkaCountJob { totals, skipped })
}

/// Creates `output` with as many partitions as `input` unless it exists: the
/// job owns its output topic's shape, like its output table's.
fn create_output_topic(brokers: &str, input: &str, output: &str) -> Result<(), KafkaCountError> {
    if output == input {
        return Err(flowstate_kafka::KafkaError::Config(format!(
            "the output topic '{output}' is the input topic"
        ))
        .into());
    }
    let partitions = topic_partitions(brokers, input)?.len() as i32;
    match flowstate_kafka::create_topic(brokers, output, partitions) {
        Ok(()) | Err(flowstate_kafka::KafkaError::TopicExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `CREATE TABLE IF NOT EXISTS table (key bigint primary key, count bigint,
/// sum bigint)`: the job owns its output table's shape.
#[cfg(feature = "postgres")]
fn create_counts_table(url: &str, table: &str, endpoint: &str) -> Result<(), KafkaCountError> {
    let fail = |e: postgres::Error| KafkaCountError::Table {
        table: table.to_owned(),
        reason: match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => format!(
                "cannot reach PostgreSQL at {endpoint}: {e}{}",
                std::error::Error::source(&e).map_or_else(String::new, |s| format!(": {s}"))
            ),
        },
    };
    let valid = !table.is_empty()
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        return Err(KafkaCountError::Table {
            table: table.to_owned(),
            reason: "use letters, digits, '_' and '.' only".into(),
        });
    }
    let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(fail)?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} \
             (key bigint PRIMARY KEY, count bigint NOT NULL, sum bigint NOT NULL)"
        ))
        .map_err(fail)
}
