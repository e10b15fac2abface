//! `flowstate check-savepoint [--json] PATH JOB [JOB ARGS]`: would the
//! savepoint (or checkpoint) at PATH restore into the built-in job JOB built
//! with JOB ARGS, as `flowstate run JOB ... --restore PATH` would build it?
//! The same as `flowstate run JOB ... --check-savepoint PATH` (the runner's
//! `--check-savepoint`, which a user's own program has too): runs nothing,
//! opens no source, sink or state backend.
//!
//! Exit status: 0 the restore would succeed, 1 it would not, 2 the command
//! is wrong or the snapshot cannot be read.

use clap::Args;
use flowstate::app::AppError;

use crate::Job;

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

/// Checks; `Err(AppError::NotRestorable)` when a restore would fail.
pub(crate) fn check_savepoint(mut args: CheckSavepointArgs) -> Result<(), AppError> {
    if matches!(args.job, Job::KafkaCount(_)) {
        return Err(AppError::Usage(
            "check-savepoint does not check kafka-count".into(),
        ));
    }
    let runtime = args.job.runtime_mut();
    runtime.check_savepoint = Some(args.path);
    runtime.check_json = args.json;
    crate::run_job(args.job)
}
