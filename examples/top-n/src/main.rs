//! `top-n`: the job of this crate's `build`, run by `flowstate::App` with the
//! engine's runtime flags (`--parallelism`, `--checkpoint-interval`,
//! `--restore latest`, `--config FILE`, the HTTP API, graceful stop on
//! SIGTERM/SIGINT, ...); prints its `RESULT` line.

use std::process::ExitCode;

use flowstate::App;
use flowstate::app::ResultLine;

use top_n::{Params, build};

fn main() -> ExitCode {
    App::new("top-n")
        // A throttle: a restore may run at another rate.
        .changeable_parameters(["rate"])
        .about(
            "The top pages by views in sliding event-time windows over a user-written source; \
             the rankings are written exactly once into --output.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .run(|env, params: &Params| {
            let job = build(env, params)?;
            Ok(ResultLine(move || job.result_line()))
        })
}
