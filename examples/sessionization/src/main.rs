//! `sessionization`: the job of this crate's `build`, run by `flowstate::App`
//! with the engine's runtime flags (`--parallelism`, `--checkpoint-interval`,
//! `--restore latest`, `--config FILE`, the HTTP API, graceful stop on
//! SIGTERM/SIGINT, ...); prints its `RESULT` line. `sessionization-produce`
//! (`src/bin/sessionization-produce.rs`) writes the clicks it reads.

use std::process::ExitCode;

use flowstate::App;
use flowstate::app::ResultLine;

use sessionization::{Params, build};

fn main() -> ExitCode {
    App::new("sessionization")
        .about(
            "Click events from Kafka into event-time session windows per user, written exactly \
             once to PostgreSQL (--database) or to files (--output). \
             `sessionization-produce` writes generated clicks into a topic.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .run(|env, params: &Params| {
            let job = build(env, params)?;
            Ok(ResultLine(move || job.result_line()))
        })
}
