//! Offline tools over a checkpoint or savepoint directory: `inspect`,
//! `state dump` and `verify`. They read snapshots through
//! `flowstate::runtime::checkpoint` only; nothing here runs a job.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

/// `flowstate inspect PATH`.
#[derive(Args)]
pub struct InspectArgs {
    /// A checkpoint (`.../<job>/chk-<n>`) or savepoint directory, or its `_metadata`.
    pub path: String,
}

/// `flowstate state ...`.
#[derive(Subcommand)]
pub enum StateCommand {
    /// Writes the keys and values of one state of one operator.
    Dump(DumpArgs),
}

#[derive(Args)]
pub struct DumpArgs {
    /// A checkpoint or savepoint directory.
    pub path: String,
    /// The operator's uid (see `flowstate inspect`).
    #[arg(long)]
    pub operator: String,
    /// The state's name.
    #[arg(long)]
    pub state: String,
}

/// `flowstate verify PATH`.
#[derive(Args)]
pub struct VerifyArgs {
    /// A checkpoint or savepoint directory.
    pub path: String,
}

pub fn inspect(_args: InspectArgs) -> Result<()> {
    bail!("inspect: not implemented yet")
}

pub fn state(command: StateCommand) -> Result<()> {
    match command {
        StateCommand::Dump(_) => bail!("state dump: not implemented yet"),
    }
}

pub fn verify(_args: VerifyArgs) -> Result<()> {
    bail!("verify: not implemented yet")
}
