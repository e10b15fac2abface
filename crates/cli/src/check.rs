//! `flowstate check-savepoint [--json] PATH JOB [JOB ARGS]`: would the
//! savepoint (or checkpoint) at PATH restore into the built-in job JOB built
//! with JOB ARGS, as `flowstate run JOB ... --restore PATH` would build it?
//! Runs nothing: the job is built into an environment and compared
//! ([`flowstate::StreamEnvironment::check_snapshot`]); no source, sink or
//! state backend is opened.
//!
//! Exit status: 0 the restore would succeed, 1 it would not, 2 the command
//! is wrong or the snapshot cannot be read.

use std::io::Write;

use clap::Args;

use flowstate::{CheckOptions, ExecutionConfig, StreamEnvironment};
use flowstate_jobs::{keyed_count, window_count, window_workload, wordcount};

use crate::{Job, RuntimeArgs};

#[derive(Args)]
pub(crate) struct CheckSavepointArgs {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The savepoint or checkpoint directory (a path or URL).
    path: String,
    /// The job, with the arguments `flowstate run` would get (runtime flags
    /// such as --max-parallelism, --allow-non-restored-state and
    /// --allow-parameter-change count; the others are ignored).
    #[command(subcommand)]
    job: Job,
}

/// A usage or reading error: exit status 2.
fn usage(message: impl std::fmt::Display) -> i32 {
    eprintln!("flowstate: error: {message}");
    2
}

fn config(name: &str, runtime: &RuntimeArgs) -> ExecutionConfig {
    let parallelism = runtime
        .parallelism
        .unwrap_or(1)
        .min(runtime.max_parallelism)
        .max(1);
    ExecutionConfig {
        job_name: name.to_owned(),
        max_parallelism: runtime.max_parallelism,
        allow_parameter_change: runtime.allow_parameter_change,
        ..ExecutionConfig::with_parallelism(parallelism)
    }
}

/// Builds JOB into an environment as `run` does (the same parameter
/// conversions and checks).
fn build(job: &Job) -> Result<(StreamEnvironment, &RuntimeArgs), String> {
    match job {
        Job::KeyedCount(args) => {
            if args.keys == 0 {
                return Err("--keys must be at least 1".into());
            }
            let env = StreamEnvironment::new(config("keyed-count", &args.runtime));
            let params = keyed_count::KeyedCountParams {
                records: args.records,
                keys: args.keys,
                rate_per_s: args.rate,
                output: args.output.clone(),
                ..Default::default()
            };
            keyed_count::build(&env, &params).map_err(|e| e.to_string())?;
            Ok((env, &args.runtime))
        }
        Job::WindowCount(args) => {
            let window_ms = u64::try_from(args.window.as_millis()).unwrap_or(u64::MAX);
            let out_of_orderness_ms =
                u64::try_from(args.out_of_orderness.as_millis()).unwrap_or(u64::MAX);
            let env = StreamEnvironment::new(config("window-count", &args.runtime));
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
            window_count::build(&env, &params).map_err(|e| e.to_string())?;
            Ok((env, &args.runtime))
        }
        Job::Wordcount(args) => {
            let env = StreamEnvironment::new(config("wordcount", &args.runtime));
            let params = wordcount::WordcountParams {
                input: args.input.clone(),
                output: args.output.clone(),
            };
            wordcount::build(&env, &params).map_err(|e| e.to_string())?;
            Ok((env, &args.runtime))
        }
        Job::KafkaCount(_) => Err("check-savepoint does not check kafka-count".into()),
    }
}

/// Runs the check and returns the exit status.
pub(crate) fn check_savepoint(args: CheckSavepointArgs) -> i32 {
    let (env, runtime) = match build(&args.job) {
        Ok(built) => built,
        Err(e) => return usage(e),
    };
    let options = CheckOptions {
        allow_non_restored_state: runtime.allow_non_restored_state,
        allow_parameter_change: runtime.allow_parameter_change,
    };
    let report = match env.check_snapshot(&args.path, options) {
        Ok(report) => report,
        Err(e) => return usage(format_args!("cannot check {}: {e}", args.path)),
    };
    let text = if args.json {
        match report.to_json() {
            Ok(json) => json + "\n",
            Err(e) => return usage(e),
        }
    } else {
        report.to_string()
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return 2;
    }
    if report.restorable { 0 } else { 1 }
}
