//! The `flowstate` command line.
//!
//! Owns argument parsing, progress reporting and exit codes; builds jobs through
//! `flowstate-jobs` and runs them on the embedded local cluster. Nothing below the
//! CLI knows it exists.

mod check;
mod kafka;
mod progress;
mod remote;
mod restart;
mod service;
mod tools;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::time::Duration;

use flowstate::runtime::checkpoint::{CoordinatorSettings, LeaseSettings, Location, open_storage};
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestoreFrom};
use flowstate::{ExecutionConfig, StreamEnvironment};
use flowstate_jobs::{keyed_count, window_count, window_workload, wordcount};

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
    /// Would a savepoint restore into a built-in job? (0 yes, 1 no, 2 error)
    CheckSavepoint(check::CheckSavepointArgs),
    /// Writes workload W into a Kafka topic (created if missing), for
    /// `kafka-count`. Needs `--features kafka`.
    Produce(kafka::ProduceArgs),
    /// Reads what `produce` wrote with a plain consumer and prints the rate
    /// (the broker's own, for benchmarks). Needs `--features kafka`.
    Consume(kafka::ConsumeArgs),
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Job {
    /// Workload W: (count, sum) per key over generated records.
    KeyedCount(KeyedCountArgs),
    /// Running count of the words of text files.
    Wordcount(WordcountArgs),
    /// Workload WT (event time): (count, sum) per key in tumbling event-time
    /// windows, emitted when the watermark passes each window's end.
    WindowCount(WindowCountArgs),
    /// Workload W from a Kafka topic (see `flowstate produce`): (count, sum)
    /// per key into files, a PostgreSQL table or a Kafka topic. Needs
    /// `--features kafka`.
    KafkaCount(kafka::KafkaCountArgs),
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
    #[command(flatten)]
    runtime: RuntimeArgs,
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
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct WordcountArgs {
    /// A UTF-8 text file, or a directory of them.
    #[arg(long)]
    input: PathBuf,
    /// Write `word,count` updates into part files in this directory.
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub(crate) struct RuntimeArgs {
    /// Parallel instances of every operator [default: number of CPUs].
    #[arg(long)]
    parallelism: Option<u32>,
    /// Number of key groups: the most instances state can be rescaled to.
    #[arg(long, default_value_t = flowstate::state::DEFAULT_MAX_PARALLELISM)]
    max_parallelism: u32,
    /// Time between checkpoints (`500ms`, `1s`, `2m`), or `off`: no checkpoints
    /// and no restarts, but savepoints and --restore of a named one still work.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    checkpoint_interval: Interval,
    /// Where checkpoints go: a path, `file:///path`, `s3://bucket/prefix` or
    /// `memory://` [default: <temp dir>/flowstate/checkpoints/<job>].
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// A checkpoint not complete after this long is aborted.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    checkpoint_timeout: Duration,
    /// Least time between the end of a checkpoint and the start of the next.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    min_pause: Duration,
    /// Consecutive failed checkpoints tolerated before the job fails.
    #[arg(long, default_value_t = 3)]
    tolerable_failures: u32,
    /// Delivery guarantee: exactly-once, at-least-once, or at-most-once
    /// (see docs/at-most-once.md). May differ from the run that wrote the
    /// checkpoint --restore resumes.
    #[arg(long, value_enum, default_value_t = Mode::ExactlyOnce)]
    mode: Mode,
    /// Completed checkpoints kept.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    retain: u32,
    /// Start from `latest` (the newest completed checkpoint under
    /// --checkpoint-dir; a fresh start if there is none), from a savepoint
    /// directory (a path or URL), or from a checkpoint directory (anywhere, or
    /// relative to --checkpoint-dir).
    #[arg(long)]
    restore: Option<String>,
    /// With --restore: drop the state of operators this job no longer has
    /// (otherwise the restore fails, naming them).
    #[arg(long)]
    allow_non_restored_state: bool,
    /// With --restore: restore a snapshot taken with other job parameters
    /// or another job (otherwise the restore fails, naming each difference).
    #[arg(long)]
    allow_parameter_change: bool,
    /// With --restore latest: when the newest checkpoint cannot be restored,
    /// fall back to an older one even though the job's exactly-once sinks
    /// already published the newer one's output, which the replay then
    /// publishes again (duplicates). Without it such a restore fails,
    /// naming the damaged file.
    #[arg(long)]
    allow_fallback_duplicates: bool,
    /// With --restore latest: take over the lease of the job's checkpoint
    /// directory even though its owner looks alive. Only for a run you know
    /// is dead where this one cannot tell (on another host, before its lease
    /// lapses 30s after its last renewal): two live runs of one job destroy
    /// each other's checkpoints and publish their output twice.
    #[arg(long)]
    take_over_lease: bool,
    /// Where savepoints go when a request names no directory; requests may
    /// also name it or a directory under it (see --savepoint-root).
    #[arg(long)]
    savepoint_dir: Option<String>,
    /// Address of the job's HTTP API (`host:port`; port 0 picks a free one),
    /// or `off`. Anything but loopback needs --rest-token.
    #[arg(long, default_value = DEFAULT_REST)]
    rest: String,
    #[command(flatten)]
    api: service::RestArgs,
    #[command(flatten)]
    restart: restart::RestartArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Args)]
struct StateArgs {
    /// Where keyed state lives: `heap` (memory) or `rocksdb` (local disk; needs a
    /// build with `--features rocksdb`).
    #[arg(long, default_value = "heap")]
    state_backend: flowstate::state::BackendKind,
    /// Local directory of the rocksdb backend's databases
    /// [default: <temp dir>/flowstate/state].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// rocksdb: checkpoints upload only the files that changed since the last one.
    #[arg(long)]
    incremental: bool,
    /// rocksdb: block cache shared by all instances (`256MiB`, `1GiB`).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    rocksdb_block_cache: u64,
    /// rocksdb: memtable size per state (`64MiB`).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    rocksdb_write_buffer: u64,
}

/// `512`, `64KiB`, `256MiB`, `2GiB` (also `K`, `M`, `G`, all powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(format!("unknown unit '{unit}' (use B, KiB, MiB or GiB)")),
    };
    let value: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 256MiB)"))?;
    value
        .checked_mul(1 << shift)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("'{text}' is not a size between 1 byte and 16 EiB"))
}

impl StateArgs {
    fn backend(&self) -> Result<flowstate::state::StateBackendConfig> {
        use flowstate::state::{BackendKind, StateBackendConfig};
        match self.state_backend {
            BackendKind::Heap => {
                if self.incremental {
                    bail!(
                        "--incremental needs --state-backend rocksdb (heap checkpoints are always complete)"
                    );
                }
                Ok(StateBackendConfig::Heap)
            }
            BackendKind::RocksDb => self.rocksdb(),
        }
    }

    #[cfg(feature = "rocksdb")]
    fn rocksdb(&self) -> Result<flowstate::state::StateBackendConfig> {
        use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("flowstate").join("state"));
        let options = RocksDbOptions {
            block_cache_bytes: self.rocksdb_block_cache,
            write_buffer_bytes: self.rocksdb_write_buffer,
            incremental: self.incremental,
            ..RocksDbOptions::new(dir)
        };
        Ok(flowstate::state::StateBackendConfig::Store(
            RocksDbFactory::new(options),
        ))
    }

    #[cfg(not(feature = "rocksdb"))]
    fn rocksdb(&self) -> Result<flowstate::state::StateBackendConfig> {
        bail!(
            "this flowstate was built without the rocksdb backend; build it with `cargo build --release -p flowstate-cli --features rocksdb` (needs libclang-dev)"
        )
    }
}

// The names are the flag's values (`exactly-once`, ...).
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Aligned barriers: every record affects state and committed output once.
    ExactlyOnce,
    /// No alignment: after a failure records may be replayed (counted twice).
    AtLeastOnce,
    /// No alignment and no rewind: sources emit only what a durable
    /// reservation covers and resume after it; a record may be lost, never
    /// counted twice.
    AtMostOnce,
}

#[derive(Clone, Copy, Debug)]
enum Interval {
    Off,
    Every(Duration),
}

fn parse_interval(text: &str) -> Result<Interval, String> {
    if text == "off" {
        return Ok(Interval::Off);
    }
    let every = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected e.g. 500ms, 1s, or off)"))?;
    if every < Duration::from_millis(10) {
        return Err("the interval must be at least 10ms".into());
    }
    Ok(Interval::Every(every))
}

/// How long a job stopped with a savepoint keeps its HTTP API up for the
/// client to read the savepoint's location.
const STOP_ANSWER_WAIT_MAX: Duration = Duration::from_secs(3);

/// Where the HTTP API listens unless `--rest` says otherwise.
const DEFAULT_REST: &str = "127.0.0.1:8081";

/// The checkpoint storage of a job run with `--checkpoint-interval off` that
/// restores nothing from `--checkpoint-dir`: such a job writes nothing to its
/// checkpoint storage, so it gets one in memory rather than a directory.
const UNUSED_CHECKPOINT_STORAGE: &str = "memory://flowstate-no-checkpoints";

/// What `--restore X` names: a checkpoint relative to `--checkpoint-dir` (also
/// given as a local path inside it), or a savepoint or checkpoint anywhere
/// else (a local path or a URL).
fn restore_from(given: &str, checkpoint_dir: &str) -> Result<RestoreFrom> {
    if given == "latest" {
        return Ok(RestoreFrom::Latest);
    }
    let Some(path) = Location::parse(given).local_path() else {
        return Ok(RestoreFrom::Location(given.to_owned()));
    };
    let root = Location::parse(checkpoint_dir)
        .local_path()
        .unwrap_or(checkpoint_dir);
    let (path, root) = (path.to_owned(), root.to_owned());
    if !path.starts_with('/') {
        // A snapshot directory relative to the working directory, else a
        // checkpoint relative to --checkpoint-dir.
        let here = std::path::Path::new(&path);
        let is_snapshot =
            here.join("_metadata").is_file() || (here.ends_with("_metadata") && here.is_file());
        if is_snapshot {
            let absolute =
                std::path::absolute(here).with_context(|| format!("--restore {given}"))?;
            return Ok(RestoreFrom::Location(absolute.display().to_string()));
        }
        return Ok(RestoreFrom::Path(path));
    }
    let root = std::path::absolute(&root).unwrap_or_else(|_| PathBuf::from(&root));
    match std::path::Path::new(&path).strip_prefix(&root) {
        Ok(relative) => Ok(RestoreFrom::Path(relative.display().to_string())),
        Err(_) => Ok(RestoreFrom::Location(path)),
    }
}

impl RuntimeArgs {
    fn config(&self, job: &str) -> Result<ExecutionConfig> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let parallelism = self
            .parallelism
            .unwrap_or_else(|| cpus.min(self.max_parallelism).max(1));
        if self.allow_non_restored_state && self.restore.is_none() {
            bail!("--allow-non-restored-state only applies with --restore");
        }
        if self.take_over_lease && self.restore.as_deref() != Some("latest") {
            // Any other start is a new job id, whose lease nobody holds.
            bail!("--take-over-lease only applies with --restore latest");
        }
        self.api.check(&self.rest)?;
        let mut config = ExecutionConfig {
            job_name: job.to_owned(),
            allow_parameter_change: self.allow_parameter_change,
            max_parallelism: self.max_parallelism,
            state_backend: self.state.backend()?,
            savepoint_policy: self.api.savepoint_policy()?,
            lease: LeaseSettings {
                take_over: self.take_over_lease,
                ..LeaseSettings::default()
            },
            ..ExecutionConfig::with_parallelism(parallelism)
        };
        config.validate()?;
        // `off` means no periodic (and no final) checkpoints, not no
        // coordinator: savepoints, stop-with-savepoint and restores still work.
        let interval = match self.checkpoint_interval {
            Interval::Off => None,
            Interval::Every(every) => Some(every),
        };
        if interval.is_none() && self.restore.as_deref() == Some("latest") {
            bail!(
                "--restore latest resumes a job from its latest checkpoint, and a job run with \
                 --checkpoint-interval off has none (it keeps no directory under \
                 --checkpoint-dir): name the savepoint or checkpoint to restore (--restore DIR), \
                 or give a --checkpoint-interval"
            );
        }
        let dir = match &self.checkpoint_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir()
                .join("flowstate")
                .join("checkpoints")
                .join(job)
                .display()
                .to_string(),
        };
        let restore = match self.restore.as_deref() {
            None => RestoreFrom::Nothing,
            Some(given) => restore_from(given, &dir)?,
        };
        // Without checkpoints nothing is ever written to the checkpoint
        // storage, and opening a local directory creates it: it is opened only
        // to read a checkpoint named relative to it.
        let storage = if interval.is_some() || matches!(restore, RestoreFrom::Path(_)) {
            open_storage(&dir).with_context(|| format!("--checkpoint-dir {dir}"))?
        } else {
            open_storage(UNUSED_CHECKPOINT_STORAGE)
                .with_context(|| format!("opening {UNUSED_CHECKPOINT_STORAGE}"))?
        };
        config.checkpointing = Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval,
                timeout: self.checkpoint_timeout,
                min_pause: self.min_pause,
                max_concurrent: 1,
                tolerable_failures: self.tolerable_failures,
                retain: self.retain as usize,
            },
            guarantee: match self.mode {
                Mode::ExactlyOnce => Guarantee::ExactlyOnce,
                Mode::AtLeastOnce => Guarantee::AtLeastOnce,
                Mode::AtMostOnce => Guarantee::AtMostOnce,
            },
            job_id: None,
            restore,
            allow_non_restored_state: self.allow_non_restored_state,
            allow_fallback_duplicates: self.allow_fallback_duplicates,
            savepoint_dir: self.savepoint_dir.clone(),
            restart: self.restart.strategy()?,
        });
        Ok(config)
    }
}

/// Serves the HTTP API of `job` on `rest` (unless `off`). The default address
/// may be taken by another job: then the job runs without an API (a warning
/// says so); an address the user chose must work.
fn start_rest(
    rest: &str,
    api: &service::RestArgs,
    job: &std::sync::Arc<flowstate::runtime::JobController>,
) -> Result<Option<flowstate_rest::RestServer>> {
    if rest == "off" {
        return Ok(None);
    }
    let jobs = std::sync::Arc::new(service::LocalJobs::default());
    jobs.add(std::sync::Arc::clone(job));
    match flowstate_rest::serve_with(rest, jobs, &api.serve_options()) {
        Ok(server) => {
            tracing::info!("HTTP API listening on http://{}", server.local_addr());
            Ok(Some(server))
        }
        Err(e) if rest == DEFAULT_REST => {
            tracing::warn!(
                "HTTP API not started ({e}); pass --rest HOST:PORT to choose another address"
            );
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("--rest {rest}"))),
    }
}

fn run_job(env: &StreamEnvironment, label: &str, runtime: &RuntimeArgs) -> Result<()> {
    let job = env.start()?;
    let server = match start_rest(&runtime.rest, &runtime.api, job.controller()) {
        Ok(server) => server,
        Err(e) => {
            job.cancel();
            let _ = job.join();
            return Err(e);
        }
    };
    let reporter = progress::Reporter::start(
        label,
        std::sync::Arc::clone(job.metrics()),
        std::io::stderr().is_terminal(),
    );
    let controller = std::sync::Arc::clone(job.controller());
    let outcome = job.join();
    if let Some(server) = server {
        // A `flowstate stop` client polls for the final savepoint's location:
        // answer it before the API goes away (bounded: it may never ask).
        if controller.stopped_with_savepoint().is_some() {
            let asked_by = std::time::Instant::now() + STOP_ANSWER_WAIT_MAX;
            while !controller.stop_reported() && std::time::Instant::now() < asked_by {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server.shutdown();
    }
    let report = reporter.finish();
    let report_line = format!(
        "{} records in {:.2}s",
        report.records,
        report.elapsed.as_secs_f64()
    );
    let job_report = match outcome {
        Err(flowstate::JobError::Cancelled) => {
            bail!("job {label} was cancelled after {report_line}")
        }
        Err(e @ flowstate::JobError::FallbackRefused { .. }) => {
            bail!(
                "job {label} failed after {report_line}: {e} (run again with \
                 --allow-fallback-duplicates to accept them)"
            )
        }
        Err(flowstate::JobError::Lease(e)) if e.can_take_over() => {
            bail!("job {label} did not start: {e} (--take-over-lease)")
        }
        outcome => outcome.with_context(|| format!("job {label} failed after {report_line}"))?,
    };
    if let Some(location) = &job_report.stopped_with_savepoint {
        tracing::info!("job {label} stopped with savepoint {location}");
    }
    tracing::info!(
        records_in = job_report.records_in,
        records_to_sinks = job_report.records_to_sinks,
        secs = job_report.duration.as_secs_f64(),
        rate = (job_report.records_in as f64 / job_report.duration.as_secs_f64().max(1e-9)) as u64,
        restarts = job_report.restarts,
        "job {label} finished"
    );
    if let Some(job_id) = &job_report.job_id {
        let mut durations: Vec<Duration> =
            job_report.checkpoints.iter().map(|c| c.duration).collect();
        durations.sort();
        let p50 = durations
            .get(durations.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = durations.last().copied().unwrap_or_default();
        let pause_max = job_report
            .checkpoints
            .iter()
            .map(|c| c.sync_pause_max)
            .max()
            .unwrap_or_default();
        let bytes = job_report.checkpoints.last().map_or(0, |c| c.bytes);
        tracing::info!(
            job_id = job_id.as_str(),
            completed = job_report.completed_checkpoints,
            failed = job_report.failed_checkpoints,
            p50_ms = p50.as_secs_f64() * 1e3,
            max_ms = max.as_secs_f64() * 1e3,
            last_bytes = bytes,
            sync_pause_max_us = pause_max.as_micros() as u64,
            restored_from = job_report.restored_from.unwrap_or(0),
            "checkpoints"
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            job: Job::KeyedCount(args),
        } => {
            if args.keys == 0 {
                bail!("--keys must be at least 1");
            }
            if args.rate == Some(0) {
                bail!("--rate must be at least 1 record/s");
            }
            let env = StreamEnvironment::new(args.runtime.config("keyed-count")?);
            let params = keyed_count::KeyedCountParams {
                records: args.records,
                keys: args.keys,
                rate_per_s: args.rate,
                output: args.output,
                ..Default::default()
            };
            let job = keyed_count::build(&env, &params)?;
            run_job(&env, "keyed-count", &args.runtime)?;
            println!("{}", job.result_line());
        }
        Command::Run {
            job: Job::WindowCount(args),
        } => {
            if args.keys == 0 {
                bail!("--keys must be at least 1");
            }
            if args.events_per_second == 0 {
                bail!("--events-per-second must be at least 1");
            }
            if args.rate == Some(0) {
                bail!("--rate must be at least 1 record/s");
            }
            let window_ms = u64::try_from(args.window.as_millis()).unwrap_or(u64::MAX);
            if window_ms == 0 {
                bail!("--window must be at least 1ms");
            }
            let out_of_orderness_ms =
                u64::try_from(args.out_of_orderness.as_millis()).unwrap_or(u64::MAX);
            let env = StreamEnvironment::new(args.runtime.config("window-count")?);
            let params = window_count::WindowCountParams {
                workload: window_workload::WindowWorkload {
                    records: args.records,
                    keys: args.keys,
                    events_per_second: args.events_per_second,
                    out_of_orderness_ms,
                    window_ms,
                },
                rate_per_s: args.rate,
                output: args.output,
                ..Default::default()
            };
            let job = window_count::build(&env, &params)?;
            run_job(&env, "window-count", &args.runtime)?;
            println!("{}", job.result_line());
        }
        Command::Run {
            job: Job::Wordcount(args),
        } => {
            let env = StreamEnvironment::new(args.runtime.config("wordcount")?);
            let params = wordcount::WordcountParams {
                input: args.input,
                output: args.output,
            };
            let job = wordcount::build(&env, &params)?;
            run_job(&env, "wordcount", &args.runtime)?;
            println!("{}", job.result_line());
        }
        Command::List(args) => remote::list(args)?,
        Command::Savepoint(args) => remote::savepoint(args)?,
        Command::Stop(args) => remote::stop(args)?,
        Command::Cancel(args) => remote::cancel(args)?,
        Command::Inspect(args) => tools::inspect(args)?,
        Command::State { command } => tools::state(command)?,
        Command::Verify(args) => tools::verify(args)?,
        Command::CheckSavepoint(args) => std::process::exit(check::check_savepoint(args)),
        Command::Produce(args) => kafka::produce(args)?,
        Command::Consume(args) => kafka::consume(args)?,
        Command::Run {
            job: Job::KafkaCount(args),
        } => {
            let env = StreamEnvironment::new(args.runtime.config("kafka-count")?);
            let result = kafka::build_kafka_count(&env, &args)?;
            run_job(&env, "kafka-count", &args.runtime)?;
            println!("{}", result()?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWSTATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowstate: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
