//! `fraud-detection`: the job of this crate's `build`, run by
//! `flowstate::App` with the engine's runtime flags (`--parallelism`,
//! `--checkpoint-interval`, `--restore latest`, `--config FILE`, the HTTP
//! API, graceful stop on SIGTERM/SIGINT, ...); prints its `RESULT` line.

use std::process::ExitCode;

use flowstate::App;
use flowstate::app::ResultLine;

use fraud_detection::{Params, build};

fn main() -> ExitCode {
    App::new("fraud-detection")
        // A throttle: a restore may run at another rate.
        .changeable_parameters(["rate"])
        .about(
            "Fraud detection with keyed state and timers over generated card transactions; \
             alerts are written exactly once into --output.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .run(|env, params: &Params| {
            let job = build(env, params)?;
            Ok(ResultLine(move || job.result_line()))
        })
}
