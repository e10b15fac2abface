//! `fraud-detection`: runs the job of this crate's `build` on the embedded
//! local cluster and prints its `RESULT` line.

mod runtime_flags;

use std::process::ExitCode;

use clap::Parser;
use flowstate::StreamEnvironment;

use fraud_detection::{Params, build};

/// Fraud detection with keyed state and timers over generated card
/// transactions; alerts are written exactly once into --output.
#[derive(Parser)]
#[command(name = "fraud-detection", version)]
struct Cli {
    #[command(flatten)]
    params: Params,
    #[command(flatten)]
    runtime: runtime_flags::RuntimeFlags,
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    // TODO(App): once `flowstate::App` lands, all of this becomes
    //     flowstate::App::new("fraud-detection").run(|env, params: &Params| build(env, params))
    // with the engine's standard flags; delete `runtime_flags.rs` then.
    let env = StreamEnvironment::new(cli.runtime.config("fraud-detection")?);
    let params = Params {
        output: cli.runtime.output.clone(),
        ..cli.params
    };
    let job = build(&env, &params)?;
    let report = env.execute()?;
    runtime_flags::report("fraud-detection", &report);
    println!("{}", job.result_line());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fraud-detection: error: {error}");
            ExitCode::FAILURE
        }
    }
}
