//! `sessionization`: runs the job of this crate's `build` on the embedded
//! local cluster and prints its `RESULT` line; `sessionization produce`
//! writes generated clicks into a topic first.

mod runtime_flags;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowstate::StreamEnvironment;

use sessionization::{Params, ProduceParams, build, produce};

/// Click events from Kafka into event-time session windows per user, written
/// exactly once to PostgreSQL (--database) or to files (--output).
#[derive(Parser)]
#[command(
    name = "sessionization",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    params: Option<Params>,
    #[command(flatten)]
    runtime: runtime_flags::RuntimeFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Write generated clicks into a topic (created if missing).
    Produce(ProduceParams),
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(Command::Produce(args)) = &cli.command {
        produce(args)?;
        println!("PRODUCED clicks={} topic={}", args.clicks, args.topic);
        return Ok(());
    }
    let params = cli.params.ok_or("--brokers and --topic are required")?;
    // TODO(App): once `flowstate::App` lands, the run becomes
    //     flowstate::App::new("sessionization").run(|env, params: &Params| build(env, params))
    // with the engine's standard flags; delete `runtime_flags.rs` then.
    let env = StreamEnvironment::new(cli.runtime.config("sessionization")?);
    let params = Params {
        output: cli.runtime.output.clone(),
        ..params
    };
    let job = build(&env, &params)?;
    let report = env.execute()?;
    runtime_flags::report("sessionization", &report);
    println!("{}", job.result_line());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sessionization: error: {error}");
            ExitCode::FAILURE
        }
    }
}
