//! A job built with `flowstate::app`, for the App API's own tests
//! (`tests/app.rs`): the sum of `0..records` plus `offset`, counted through
//! a keyed stream so that it checkpoints state. Its result line shows the
//! parameters and parallelism it ran with.

use std::sync::atomic::Ordering;

use flowstate::app::{App, ResultLine};

#[derive(clap::Args)]
struct Params {
    /// Records to generate.
    #[arg(long, default_value_t = 1000)]
    records: u64,
    /// Added to the sum.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Fail the build with this message.
    #[arg(long)]
    fail_build: Option<String>,
}

fn main() -> std::process::ExitCode {
    App::new("app-test").run(|env: &flowstate::StreamEnvironment, params: &Params| {
        if let Some(message) = &params.fail_build {
            return Err(message.clone().into());
        }
        let parallelism = env.config().parallelism;
        let offset = params.offset;
        let count = env
            .from_collection((0..params.records).collect())
            .key_by(|i: &u64| i % 7)
            .reduce(|a, b| a + b)
            .count();
        Ok(ResultLine(move || {
            format!(
                "RESULT updates={} offset={offset} parallelism={parallelism}",
                count.load(Ordering::Relaxed)
            )
        }))
    })
}
