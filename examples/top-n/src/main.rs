//! `top-n`: runs the job of this crate's `build` on the embedded
//! local cluster and prints its `RESULT` line.

mod runtime_flags;

use std::process::ExitCode;

use clap::Parser;
use flowstate::StreamEnvironment;

use top_n::{Params, build};

/// The top pages by views in sliding event-time windows over a user-written
/// source; the rankings are written exactly once into --output.
#[derive(Parser)]
#[command(name = "top-n", version)]
struct Cli {
    #[command(flatten)]
    params: Params,
    #[command(flatten)]
    runtime: runtime_flags::RuntimeFlags,
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    // TODO(App): once `flowstate::App` lands, all of this becomes
    //     flowstate::App::new("top-n").run(|env, params: &Params| build(env, params))
    // with the engine's standard flags; delete `runtime_flags.rs` then.
    let env = StreamEnvironment::new(cli.runtime.config("top-n")?);
    let params = Params {
        output: cli.runtime.output.clone(),
        ..cli.params
    };
    let job = build(&env, &params)?;
    let report = env.execute()?;
    runtime_flags::report("top-n", &report);
    println!("{}", job.result_line());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("top-n: error: {error}");
            ExitCode::FAILURE
        }
    }
}
