//! The Kafka commands: `flowstate run kafka-count` and `flowstate produce`.
//! Without the `kafka` feature they exist, and say how to get a binary that
//! has them.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use flowstate::StreamEnvironment;

#[derive(Args)]
pub struct KafkaCountArgs {
    /// Bootstrap servers (`host:port[,host:port...]`).
    #[arg(long)]
    brokers: String,
    /// The topic `flowstate produce` wrote the records into.
    #[arg(long)]
    topic: String,
    /// Read the N records `flowstate produce --records N` wrote, then end
    /// [default: read on forever].
    #[arg(long)]
    records: Option<u64>,
    /// Skip (and count) records whose key or value is not a decimal number,
    /// instead of failing the job.
    #[arg(long)]
    skip_malformed: bool,
    /// Commit the offsets of every completed checkpoint to this Kafka consumer
    /// group, so that Kafka's tools (`kafka-consumer-groups.sh --describe`)
    /// show the job's position and lag. Monitoring only: recovery uses the
    /// offsets in the checkpoint, never the group's. Without checkpoints
    /// nothing is committed.
    #[arg(long)]
    group_id: Option<String>,
    /// Write `key,count,sum` updates into part files in this directory.
    #[arg(long, conflicts_with_all = ["output_table", "output_topic"])]
    output: Option<PathBuf>,
    /// Write `key,count,sum` updates (record key: the key) into this Kafka
    /// topic on `--brokers` (created if missing, with the input topic's
    /// partition count). At least once: after a restore the updates since
    /// the restored checkpoint are written again; each key's last record
    /// holds its final count and sum.
    #[arg(long, conflicts_with = "output_table")]
    output_topic: Option<String>,
    /// Upsert `(key, count, sum)` rows into this PostgreSQL table (created if
    /// missing; needs `--database` and `--features postgres`).
    #[arg(long, requires = "database")]
    output_table: Option<String>,
    /// `postgres://user:password@host:port/database` for `--output-table`.
    #[arg(long)]
    database: Option<String>,
}

#[derive(Args)]
pub struct ProduceArgs {
    /// Bootstrap servers (`host:port[,host:port...]`).
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Number of records N (record i is (splitmix64(i) % keys, i)).
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Number of distinct keys K.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Partitions of the topic when it is created (record i goes to partition
    /// i % partitions).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

#[derive(Args)]
#[group(id = "how_many", required = true, args = ["records", "at_least"])]
pub struct ConsumeArgs {
    /// Bootstrap servers (`host:port[,host:port...]`).
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Read the N records `flowstate produce --records N` wrote.
    #[arg(long, conflicts_with = "at_least")]
    records: Option<u64>,
    /// Read every partition from its start until at least N records were
    /// read and the topic then stayed quiet for two seconds (any layout, e.g.
    /// `kafka-count --output-topic`'s), and print how many there are.
    #[arg(long)]
    at_least: Option<u64>,
}

/// The built job's final line, once it ended.
pub type ResultLine = Box<dyn Fn() -> Result<String>>;

#[cfg(feature = "kafka")]
pub fn build_kafka_count(env: &StreamEnvironment, args: &KafkaCountArgs) -> Result<ResultLine> {
    use flowstate_jobs::kafka_count::{KafkaCountOutput, KafkaCountParams, build};
    let output = match (&args.output, &args.output_table, &args.database) {
        (Some(dir), _, _) => KafkaCountOutput::Files(dir.clone()),
        (None, Some(table), Some(url)) => table_output(url, table)?,
        (None, Some(_), None) => bail!("--output-table needs --database URL"),
        (None, None, _) => match &args.output_topic {
            Some(topic) => KafkaCountOutput::Topic(topic.clone()),
            None => KafkaCountOutput::Discard,
        },
    };
    let params = KafkaCountParams {
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
        records: args.records,
        skip_malformed: args.skip_malformed,
        group_id: args.group_id.clone(),
        output,
    };
    let job = build(env, &params)?;
    Ok(Box::new(move || {
        let skipped = job.skipped.load(std::sync::atomic::Ordering::Relaxed);
        if skipped > 0 {
            tracing::warn!("skipped {skipped} malformed records (--skip-malformed)");
        }
        Ok(job.result_line())
    }))
}

#[cfg(all(feature = "kafka", feature = "postgres"))]
fn table_output(url: &str, table: &str) -> Result<flowstate_jobs::kafka_count::KafkaCountOutput> {
    Ok(flowstate_jobs::kafka_count::KafkaCountOutput::Table {
        url: url.to_owned(),
        table: table.to_owned(),
    })
}

#[cfg(all(feature = "kafka", not(feature = "postgres")))]
fn table_output(_url: &str, _table: &str) -> Result<flowstate_jobs::kafka_count::KafkaCountOutput> {
    bail!(
        "this flowstate was built without the PostgreSQL sink; build it with `cargo build --release -p flowstate-cli --features postgres`"
    )
}

#[cfg(not(feature = "kafka"))]
pub fn build_kafka_count(_env: &StreamEnvironment, _args: &KafkaCountArgs) -> Result<ResultLine> {
    bail!(without_kafka())
}

#[cfg(not(feature = "kafka"))]
fn without_kafka() -> &'static str {
    "this flowstate was built without Kafka; build it with `cargo build --release -p flowstate-cli --features kafka` (needs cmake)"
}

#[cfg(feature = "kafka")]
pub fn produce(args: ProduceArgs) -> Result<()> {
    use flowstate_jobs::kafka_count::{create_topic, produce_workload};
    use flowstate_jobs::workload::record;
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    match create_topic(args.brokers.as_str(), &args.topic, args.partitions) {
        Ok(()) => {}
        Err(flowstate_kafka::KafkaError::TopicExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let started = std::time::Instant::now();
    let keys = args.keys;
    let ends = produce_workload(
        args.brokers.as_str(),
        &args.topic,
        args.partitions,
        args.records,
        move |i| record(i, keys),
    )?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        records = args.records,
        secs,
        rate = (args.records as f64 / secs.max(1e-9)) as u64,
        "produced keyed-count records into {} ({} partitions; end offsets {ends:?})",
        args.topic,
        args.partitions
    );
    println!("PRODUCED records={} topic={}", args.records, args.topic);
    Ok(())
}

#[cfg(not(feature = "kafka"))]
pub fn produce(_args: ProduceArgs) -> Result<()> {
    bail!(without_kafka())
}

/// Reads the records with a plain consumer and reports the rate: the
/// broker's own consume rate, for benchmarks beside `kafka-count`.
#[cfg(feature = "kafka")]
pub fn consume(args: ConsumeArgs) -> Result<()> {
    use flowstate_kafka::{consume_all, read_topic, topic_partitions, workload_end_offsets};
    let Some(records) = args.records else {
        let quiet = std::time::Duration::from_secs(2);
        let min = args.at_least.unwrap_or(0);
        let read = read_topic(args.brokers.as_str(), &args.topic, min, quiet)?;
        println!("CONSUMED records={}", read.len());
        return Ok(());
    };
    let partitions = topic_partitions(args.brokers.as_str(), &args.topic)?;
    let ends = workload_end_offsets(&args.topic, partitions.len() as i32, records);
    let started = std::time::Instant::now();
    let read = consume_all(args.brokers.as_str(), &ends)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "CONSUMED records={read} secs={secs:.3} rate={}",
        (read as f64 / secs.max(1e-9)) as u64
    );
    Ok(())
}

#[cfg(not(feature = "kafka"))]
pub fn consume(_args: ConsumeArgs) -> Result<()> {
    bail!(without_kafka())
}
