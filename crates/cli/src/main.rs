//! The `flowstate` command line.
//!
//! Owns argument parsing, progress reporting and exit codes; builds jobs through
//! `flowstate-jobs` and runs them on the embedded local cluster. Nothing below the
//! CLI knows it exists.

mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use flowstate::{ExecutionConfig, StreamEnvironment};
use flowstate_jobs::{keyed_count, wordcount};

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

#[derive(Subcommand)]
enum Command {
    /// Run a built-in job on the embedded local cluster.
    Run {
        #[command(subcommand)]
        job: Job,
    },
}

#[derive(Subcommand)]
enum Job {
    /// Workload W: (count, sum) per key over generated records.
    KeyedCount(KeyedCountArgs),
    /// Running count of the words of text files.
    Wordcount(WordcountArgs),
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
struct RuntimeArgs {
    /// Parallel instances of every operator [default: number of CPUs].
    #[arg(long)]
    parallelism: Option<u32>,
    /// Number of key groups: the most instances state can be rescaled to.
    #[arg(long, default_value_t = flowstate::state::DEFAULT_MAX_PARALLELISM)]
    max_parallelism: u32,
}

impl RuntimeArgs {
    fn config(&self) -> Result<ExecutionConfig> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let parallelism = self
            .parallelism
            .unwrap_or_else(|| cpus.min(self.max_parallelism).max(1));
        let config = ExecutionConfig {
            max_parallelism: self.max_parallelism,
            ..ExecutionConfig::with_parallelism(parallelism)
        };
        config.validate()?;
        Ok(config)
    }
}

fn run_job(env: &StreamEnvironment, label: &str) -> Result<()> {
    let job = env.start()?;
    let reporter = progress::Reporter::start(
        label,
        std::sync::Arc::clone(job.metrics()),
        std::io::stderr().is_terminal(),
    );
    let outcome = job.join();
    let report = reporter.finish();
    let report_line = format!(
        "{} records in {:.2}s",
        report.records,
        report.elapsed.as_secs_f64()
    );
    let job_report = outcome.with_context(|| format!("job {label} failed after {report_line}"))?;
    tracing::info!(
        records_in = job_report.records_in,
        records_to_sinks = job_report.records_to_sinks,
        secs = job_report.duration.as_secs_f64(),
        rate = (job_report.records_in as f64 / job_report.duration.as_secs_f64().max(1e-9)) as u64,
        "job {label} finished"
    );
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
            let env = StreamEnvironment::new(args.runtime.config()?);
            let params = keyed_count::KeyedCountParams {
                records: args.records,
                keys: args.keys,
                rate_per_s: args.rate,
                output: args.output,
                ..Default::default()
            };
            let job = keyed_count::build(&env, &params)?;
            run_job(&env, "keyed-count")?;
            println!("{}", job.result_line());
        }
        Command::Run {
            job: Job::Wordcount(args),
        } => {
            let env = StreamEnvironment::new(args.runtime.config()?);
            let params = wordcount::WordcountParams {
                input: args.input,
                output: args.output,
            };
            let job = wordcount::build(&env, &params)?;
            run_job(&env, "wordcount")?;
            println!("{}", job.result_line());
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
