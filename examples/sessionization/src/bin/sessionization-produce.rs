//! `sessionization-produce`: writes generated clicks into a Kafka topic
//! (created if missing) for `sessionization` to read. A plain command-line
//! tool, not a job: no runtime flags.

use std::process::ExitCode;

use clap::Parser;

use sessionization::{ProduceParams, produce};

/// Write generated clicks into a Kafka topic (created if missing), for
/// `sessionization --records N` to read.
#[derive(Parser)]
#[command(name = "sessionization-produce", version)]
struct Cli {
    #[command(flatten)]
    params: ProduceParams,
}

fn main() -> ExitCode {
    let Cli { params } = Cli::parse();
    match produce(&params) {
        Ok(()) => {
            println!("PRODUCED clicks={} topic={}", params.clicks, params.topic);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sessionization-produce: error: {error}");
            ExitCode::FAILURE
        }
    }
}
