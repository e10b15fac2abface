//! `flowstate-sim`: runs seeds of the whole-job simulation (see the library
//! docs). `scripts/simulate.sh` is the way in.

use std::process::ExitCode;

use clap::Parser;
use flowstate::runtime::checkpoint::AlignmentPolicy;
use flowstate_sim::scenario::Variant;
use flowstate_sim::{Ending, SeedReport, run_seed, summary_line};

#[derive(Parser)]
#[command(about = "Whole-job deterministic simulation of flowstate under injected faults")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 0)]
    start_seed: u64,
    /// Runs this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// With `--seed`: prints the trace hash (identical on every run).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// `correct`, or the deliberately broken `commit-before-complete` or
    /// `drop-channel-state`.
    #[arg(long, default_value = "correct")]
    variant: String,
}

fn describe(report: &SeedReport) -> String {
    let ending = match &report.ending {
        Ending::Finished => "finished".to_owned(),
        Ending::Stopped(reason) => format!("stopped ({reason})"),
    };
    let fired: Vec<String> = report
        .fired
        .iter()
        .map(|(p, n)| format!("{}={n}", p.name()))
        .collect();
    format!(
        "seed={} {ending} backend={} alignment={} attempts={} steps={} checkpoints={} \
         unaligned={} persisted_bytes={} declined={} faults=[{}]",
        report.seed,
        if report.serialized_state {
            "serialized"
        } else {
            "heap"
        },
        match report.alignment {
            AlignmentPolicy::Aligned => "aligned".to_owned(),
            AlignmentPolicy::Unaligned {
                aligned_timeout,
                inflight_bytes_max,
            } if aligned_timeout.is_zero() => format!("unaligned(max {inflight_bytes_max} B)"),
            AlignmentPolicy::Unaligned {
                aligned_timeout,
                inflight_bytes_max,
            } => format!("aligned-until-{aligned_timeout:?}(max {inflight_bytes_max} B)"),
        },
        report.attempts,
        report.steps,
        report.checkpoints,
        report.unaligned_checkpoints,
        report.persisted_bytes,
        report.declines,
        fired.join(",")
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(variant) = Variant::parse(&args.variant) else {
        eprintln!(
            "error: unknown variant '{}' (correct, commit-before-complete, drop-channel-state)",
            args.variant
        );
        return ExitCode::from(2);
    };
    let variant_flag = match variant {
        Variant::Correct => String::new(),
        Variant::CommitBeforeComplete => " --variant commit-before-complete".into(),
        Variant::DropChannelState => " --variant drop-channel-state".into(),
    };
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.start_seed..args.start_seed.saturating_add(args.seeds)).collect(),
    };
    let mut reports = Vec::with_capacity(seeds.len());
    for seed in seeds {
        let report = run_seed(seed, variant);
        if args.seed.is_some() {
            println!("{}", describe(&report));
            for (attempt, reason) in report.restarts.iter().enumerate() {
                println!("  attempt {} ended: {reason}", attempt + 1);
            }
        }
        if let Some(violation) = &report.violation {
            println!("FAILED {}: {violation}", describe(&report));
            println!("  replay: bash scripts/simulate.sh --seed {seed} --trace{variant_flag}");
        }
        if args.trace {
            println!("TRACE {:016x}", report.trace);
        }
        reports.push(report);
    }
    println!("{}", summary_line(&reports));
    if reports.iter().any(|r| r.violation.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
