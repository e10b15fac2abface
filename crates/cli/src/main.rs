//! The `flowstate` command line.
//!
//! Owns what is specific to the `flowstate` binary: its subcommand tree, the
//! built-in jobs' flags and choice, the client commands of a running job's
//! HTTP API (`remote.rs`), the offline snapshot tools (`tools.rs`) and the
//! Kafka commands (`kafka.rs`). `run <job>` goes through `flowstate::app`
//! exactly as a user's own `main` does: the runtime flags, configuration
//! file, HTTP API, progress, logs, signals and exit codes are the library's.
//! Nothing below the CLI knows it exists.

mod check;
mod kafka;
mod remote;
mod tools;

/// mimalloc instead of the system allocator: with a million keys whose state
/// values are heap allocations, every checkpoint clones key groups (worker
/// threads allocate) while the upload thread frees the previous copies, and
/// glibc's malloc serialises those cross-thread frees on the workers' arenas
/// (bench/RESULTS.md, "A million open windows").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use flowstate::app::{AppError, BoxError, ResultLine, RunArgs, RuntimeArgs};
use flowstate_jobs::nexmark::generator::{self as nexmark_generator, GeneratorConfig};
use flowstate_jobs::{keyed_count, latency, nexmark, window_count, window_workload, wordcount};

#[derive(Parser)]
#[command(
    name = "flowstate",
    version,
    about = "A stateful stream processor with consistent snapshots"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a built-in job on the embedded local cluster.
    Run {
        #[command(subcommand)]
        job: Job,
    },
    /// Be the job manager of a job whose task managers are started separately
    /// (as Flink's `jobmanager`): `run JOB`, where `--task-managers N` is
    /// required. Every process runs the same job with the same job flags.
    Jobmanager {
        #[command(subcommand)]
        job: Job,
    },
    /// Be a task manager of a job (as Flink's `taskmanager`): `run JOB`,
    /// where `--jobmanager HOST:PORT` (or `--ha-etcd URL`) is required.
    Taskmanager {
        #[command(subcommand)]
        job: Job,
    },
    /// Lists the jobs of a running flowstate (through its HTTP API).
    List(remote::ListArgs),
    /// Takes a savepoint of a running job.
    Savepoint(remote::SavepointArgs),
    /// Stops a running job with a final savepoint.
    Stop(remote::StopArgs),
    /// Cancels a running job (no savepoint).
    Cancel(remote::CancelArgs),
    /// Shows what a checkpoint or savepoint holds.
    Inspect(tools::InspectArgs),
    /// Reads the state in a checkpoint or savepoint.
    State {
        #[command(subcommand)]
        command: tools::StateCommand,
    },
    /// Checks every file of a checkpoint or savepoint against its checksum.
    Verify(tools::VerifyArgs),
    /// Would a savepoint restore into a built-in job? Compares it with the job
    /// the arguments build, running nothing (exit 0 yes, 1 no, 2 error).
    CheckSavepoint(check::CheckSavepointArgs),
    /// Writes keyed-count's generated records (`key,value` pairs) into a Kafka
    /// topic (created if missing), for
    /// `kafka-count`. Needs `--features kafka`.
    Produce(kafka::ProduceArgs),
    /// Reads what `produce` wrote with a plain consumer and prints the rate
    /// (the broker's own, for benchmarks). Needs `--features kafka`.
    Consume(kafka::ConsumeArgs),
    /// Nexmark's events, for other engines (docs/nexmark.md).
    Nexmark {
        #[command(subcommand)]
        command: NexmarkCommand,
    },
}

#[derive(Subcommand)]
enum NexmarkCommand {
    /// Writes the generator's events as JSON lines into DIR/person/,
    /// DIR/auction/ and DIR/bid/ (the events `run nexmark` generates with
    /// the same --events, --rate and --seed).
    Generate(NexmarkGenerateArgs),
}

#[derive(Args)]
struct NexmarkGenerateArgs {
    /// Number of events (people, auctions and bids together).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per second of event time (the reference's first event rate).
    #[arg(long, default_value_t = nexmark_generator::DEFAULT_RATE)]
    rate: u64,
    /// Seed of the events' random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The folder to write (created if missing).
    #[arg(long)]
    output: PathBuf,
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Job {
    /// (count, sum) per key over generated records: record i is
    /// (splitmix64(i) % keys, i).
    KeyedCount(RunArgs<KeyedCountArgs>),
    /// Running count of the words of text files.
    Wordcount(RunArgs<WordcountArgs>),
    /// keyed-count's records with event times: (count, sum) per key in tumbling event-time
    /// windows, emitted when the watermark passes each window's end.
    WindowCount(RunArgs<WindowCountArgs>),
    /// keyed-count's records from a Kafka topic (see `flowstate produce`): (count, sum)
    /// per key into files, a PostgreSQL table or a Kafka topic. Needs
    /// `--features kafka`.
    KafkaCount(RunArgs<kafka::KafkaCountArgs>),
    /// A Nexmark query (q0 q1 q2 q3 q4 q5 q7 q8 q11) over generated events or
    /// a folder of event files; ends with `RESULT query=.. events=..
    /// results=.. checksum=..` (docs/nexmark.md).
    Nexmark(RunArgs<NexmarkArgs>),
}

#[derive(Args)]
struct NexmarkArgs {
    /// The query: q0 q1 q2 q3 q4 q5 q7 q8 q11.
    #[arg(long)]
    query: String,
    /// Number of generated events (people, auctions and bids together).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per second of event time (the reference's first event rate).
    #[arg(long, default_value_t = nexmark_generator::DEFAULT_RATE)]
    rate: u64,
    /// Seed of the generated events' random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Throttle the source to this many events per second of processing
    /// time in total.
    #[arg(long)]
    throttle: Option<u64>,
    /// Read the events from this folder (person/, auction/, bid/ of JSON
    /// lines, as `flowstate nexmark generate` writes) instead of generating.
    #[arg(long)]
    input: Option<PathBuf>,
    /// With --input: bound on disorder within a file (`4s`, `0ms`).
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    out_of_orderness: std::time::Duration,
    /// Write the result rows into part files in this directory.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct KeyedCountArgs {
    /// Number of records N.
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Number of distinct keys K.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Throttle the source to this many records per second in total.
    #[arg(long)]
    rate: Option<u64>,
    /// Write `key,count,sum` updates into part files in this directory.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Slow the sink to this many records per second in total: it blocks as
    /// a slow synchronous sink does, and the job runs under backpressure
    /// (bench/unaligned.sh).
    #[arg(long, value_name = "RECORDS_PER_S", conflicts_with = "measure_latency",
          value_parser = clap::value_parser!(u64).range(1..))]
    sink_rate: Option<u64>,
    /// Benchmark mode (bench/latency.sh): stamp every record when the source
    /// makes it and end with `LATENCY ... p50_us=.. p99_us=.. max_us=..`, the
    /// age of a sample of updates at the (counting) sink, instead of RESULT.
    #[arg(long, conflicts_with = "output")]
    measure_latency: bool,
}

#[derive(Args)]
struct WindowCountArgs {
    /// Number of records N.
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Number of distinct keys K.
    #[arg(long, default_value_t = window_workload::DEFAULT_KEYS)]
    keys: u64,
    /// Events per second of event time R (how fast event time advances).
    #[arg(long, default_value_t = window_workload::DEFAULT_EVENTS_PER_SECOND)]
    events_per_second: u64,
    /// Bound on disorder D (`2s`, `500ms`): the watermark trails the largest
    /// timestamp by it, so no record is late.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    out_of_orderness: std::time::Duration,
    /// Tumbling window size W (`10s`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: std::time::Duration,
    /// Throttle the source to this many records per second (processing time) in total.
    #[arg(long)]
    rate: Option<u64>,
    /// Write `key,window_start_ms,count,sum` results into part files in this directory.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct WordcountArgs {
    /// A UTF-8 text file, or a directory of them.
    #[arg(long)]
    input: PathBuf,
    /// Write `word,count` updates into part files in this directory.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn usage(message: &str) -> BoxError {
    message.into()
}

/// Runs (or with `--check-savepoint`, checks) a built-in job.
fn run_job(job: Job) -> Result<(), AppError> {
    match job {
        Job::KeyedCount(args) => flowstate::app::run("keyed-count", &args, |env, args| {
            if args.keys == 0 {
                return Err(usage("--keys must be at least 1"));
            }
            if args.rate == Some(0) {
                return Err(usage("--rate must be at least 1 record/s"));
            }
            let params = keyed_count::KeyedCountParams {
                records: args.records,
                keys: args.keys,
                rate_per_s: args.rate,
                output: args.output.clone(),
                sink_rate_per_s: args.sink_rate,
                ..Default::default()
            };
            let line: Box<dyn FnOnce() -> String + Send> = if args.measure_latency {
                let job = latency::build(env, &params)?;
                Box::new(move || job.result_line())
            } else {
                let job = keyed_count::build(env, &params)?;
                Box::new(move || job.result_line())
            };
            Ok(ResultLine(line))
        }),
        Job::WindowCount(args) => flowstate::app::run("window-count", &args, |env, args| {
            if args.keys == 0 {
                return Err(usage("--keys must be at least 1"));
            }
            if args.events_per_second == 0 {
                return Err(usage("--events-per-second must be at least 1"));
            }
            if args.rate == Some(0) {
                return Err(usage("--rate must be at least 1 record/s"));
            }
            let window_ms = u64::try_from(args.window.as_millis()).unwrap_or(u64::MAX);
            if window_ms == 0 {
                return Err(usage("--window must be at least 1ms"));
            }
            let out_of_orderness_ms =
                u64::try_from(args.out_of_orderness.as_millis()).unwrap_or(u64::MAX);
            let params = window_count::WindowCountParams {
                workload: window_workload::WindowWorkload {
                    records: args.records,
                    keys: args.keys,
                    events_per_second: args.events_per_second,
                    out_of_orderness_ms,
                    window_ms,
                },
                rate_per_s: args.rate,
                output: args.output.clone(),
                ..Default::default()
            };
            let job = window_count::build(env, &params)?;
            Ok(ResultLine(move || job.result_line()))
        }),
        Job::Wordcount(args) => flowstate::app::run("wordcount", &args, |env, args| {
            let params = wordcount::WordcountParams {
                input: args.input.clone(),
                output: args.output.clone(),
            };
            let job = wordcount::build(env, &params)?;
            Ok(ResultLine(move || job.result_line()))
        }),
        Job::Nexmark(args) => flowstate::app::run("nexmark", &args, |env, args| {
            if args.rate == 0 {
                return Err(usage("--rate must be at least 1 event/s"));
            }
            if args.throttle == Some(0) {
                return Err(usage("--throttle must be at least 1 event/s"));
            }
            let events = match &args.input {
                Some(dir) => nexmark::Events::Files {
                    dir: dir.clone(),
                    out_of_orderness_ms: i64::try_from(args.out_of_orderness.as_millis())
                        .unwrap_or(i64::MAX),
                    throttle: args.throttle,
                },
                None => nexmark::Events::Generated {
                    events: args.events,
                    config: GeneratorConfig {
                        rate: args.rate,
                        seed: args.seed,
                        ..GeneratorConfig::default()
                    },
                    splits: flowstate::connectors::sequence::DEFAULT_SPLITS,
                    throttle: args.throttle,
                },
            };
            let params = nexmark::NexmarkParams {
                query: args.query.clone(),
                events,
                output: args.output.clone(),
            };
            let job = nexmark::build(env, &params)?;
            Ok(ResultLine(move || job.result_line()))
        }),
        Job::KafkaCount(args) => flowstate::app::run("kafka-count", &args, |env, args| {
            let result = kafka::build_kafka_count(env, args)?;
            Ok(flowstate::app::TryResultLine(move || {
                result().map_err(BoxError::from)
            }))
        }),
    }
}

impl Job {
    /// The job's runtime flags.
    /// The job's cluster flags.
    fn cluster(&self) -> &flowstate::app::ClusterArgs {
        match self {
            Job::KeyedCount(args) => &args.runtime.cluster,
            Job::Wordcount(args) => &args.runtime.cluster,
            Job::WindowCount(args) => &args.runtime.cluster,
            Job::KafkaCount(args) => &args.runtime.cluster,
            Job::Nexmark(args) => &args.runtime.cluster,
        }
    }

    fn runtime_mut(&mut self) -> &mut RuntimeArgs {
        match self {
            Job::KeyedCount(args) => &mut args.runtime,
            Job::Wordcount(args) => &mut args.runtime,
            Job::WindowCount(args) => &mut args.runtime,
            Job::KafkaCount(args) => &mut args.runtime,
            Job::Nexmark(args) => &mut args.runtime,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { job } => run_job(job)?,
        Command::Jobmanager { job } => {
            if job.cluster().task_managers.is_none() {
                return Err(AppError::Usage(
                    "jobmanager: give --task-managers N (the task managers it waits for); \
                     `run JOB --processes N` starts them itself"
                        .into(),
                )
                .into());
            }
            run_job(job)?
        }
        Command::Taskmanager { job } => {
            let cluster = job.cluster();
            if cluster.jobmanager.is_none() && cluster.ha_etcd.is_none() {
                return Err(AppError::Usage(
                    "taskmanager: give --jobmanager HOST:PORT (or --ha-etcd URL to find it in \
                     etcd)"
                        .into(),
                )
                .into());
            }
            run_job(job)?
        }
        Command::CheckSavepoint(args) => check::check_savepoint(args)?,
        Command::List(args) => remote::list(args)?,
        Command::Savepoint(args) => remote::savepoint(args)?,
        Command::Stop(args) => remote::stop(args)?,
        Command::Cancel(args) => remote::cancel(args)?,
        Command::Inspect(args) => tools::inspect(args)?,
        Command::State { command } => tools::state(command)?,
        Command::Verify(args) => tools::verify(args)?,
        Command::Produce(args) => kafka::produce(args)?,
        Command::Consume(args) => kafka::consume(args)?,
        Command::Nexmark {
            command: NexmarkCommand::Generate(args),
        } => nexmark_generate(&args)?,
    }
    Ok(())
}

/// `flowstate nexmark generate`.
fn nexmark_generate(args: &NexmarkGenerateArgs) -> Result<()> {
    if args.rate == 0 {
        anyhow::bail!("--rate must be at least 1 event/s");
    }
    let config = GeneratorConfig {
        rate: args.rate,
        seed: args.seed,
        ..GeneratorConfig::default()
    };
    let started = std::time::Instant::now();
    let [people, auctions, bids] = nexmark::generate(&config, args.events, &args.output)?;
    println!(
        "wrote {} events ({people} people, {auctions} auctions, {bids} bids) into {} in {:.1}s",
        args.events,
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = flowstate::app::parse_args("flowstate");
    flowstate::app::init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowstate: error: {error:#}");
            match error.downcast_ref::<AppError>() {
                Some(app) => ExitCode::from(app.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}
