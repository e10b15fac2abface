//! Offline tools over a checkpoint or savepoint directory: `inspect`,
//! `state dump` and `verify`. They read snapshots through `flowstate_tools`
//! (its `inspect` module does the reading; this module parses arguments and
//! prints) and open them with `flowstate::runtime::checkpoint`; nothing here
//! runs a job or writes to a snapshot.
//!
//! `state dump` output, one record per row:
//! - value, reducing and aggregating state (the accumulator): one row per key;
//! - list state: one row per element, with its `index` in the key's list;
//! - map state: one row per map entry, with its `user_key`.
//!
//! `--format json` writes JSON Lines (`{"key":17,"value":[3,51]}`, with
//! `"index"` or `"user_key"` between key and value for lists and maps);
//! `--format csv` writes a header, then one record per row, tuples flattened
//! into columns (`key,value.0,value.1`). Rows come subtask by subtask, key
//! group by key group: not sorted by key.

use std::io::{self, BufWriter, Write};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use flowstate::runtime::checkpoint::Location;
use flowstate::runtime::checkpoint::restore::{OpenedSnapshot, open_snapshot};
use flowstate_tools::dynamic::{EntryLayout, Row};
use flowstate_tools::inspect::{
    DumpSink, FileRole, SnapshotSummary, csv_header, csv_line, dump_state, json_line, summarize,
    verify as verify_snapshot,
};

/// `flowstate inspect PATH`.
#[derive(Args)]
pub struct InspectArgs {
    /// A checkpoint (`.../<job>/chk-<n>`) or savepoint directory, or its `_metadata`.
    pub path: String,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// `json`: JSON Lines, one object per row; `csv`: a header, then one
    /// record per row with tuples flattened into columns. Lists give one row
    /// per element (with `index`), maps one per entry (with `user_key`).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

/// `flowstate verify PATH`.
#[derive(Args)]
pub struct VerifyArgs {
    /// A checkpoint or savepoint directory.
    pub path: String,
}

/// Opens the snapshot at `path`, refusing a local path (plain or `file://`)
/// that does not exist (opening local storage would create it).
fn open(path: &str) -> Result<OpenedSnapshot> {
    let local = Location::parse(path).local_path();
    if local.is_some_and(|local| !std::path::Path::new(local).exists()) {
        bail!("{path}: no such checkpoint or savepoint directory");
    }
    open_snapshot(path).with_context(|| format!("cannot open {path}"))
}

fn time_of(unix_ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

fn kind_name(summary: &SnapshotSummary) -> &'static str {
    match summary.kind {
        flowstate::runtime::checkpoint::SnapshotKind::Checkpoint => "checkpoint",
        flowstate::runtime::checkpoint::SnapshotKind::Savepoint => "savepoint",
    }
}

/// The readable `inspect` report.
fn render_summary(summary: &SnapshotSummary, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{} {} of job {}",
        kind_name(summary),
        summary.checkpoint_id,
        summary.job_id
    )?;
    writeln!(out, "  metadata:         {}", summary.metadata_path)?;
    writeln!(
        out,
        "  created:          {} ({} ms since the epoch)",
        time_of(summary.created_unix_ms),
        summary.created_unix_ms
    )?;
    writeln!(
        out,
        "  max parallelism:  {} key groups",
        summary.max_parallelism
    )?;
    writeln!(out, "  state size:       {} bytes", summary.state_bytes)?;
    match &summary.job {
        None => writeln!(
            out,
            "  job:              not recorded (no parameters recorded: an older snapshot)"
        )?,
        Some(job) => {
            writeln!(out, "  job:              {}", job.name.escape_debug())?;
            if job.parameters.is_empty() {
                writeln!(out, "  parameters:       none")?;
            } else {
                writeln!(out, "  parameters:")?;
                for p in &job.parameters {
                    let note = if p.changeable { "  (changeable)" } else { "" };
                    writeln!(out, "    {:<20} {}{note}", p.name, p.value.escape_debug())?;
                }
            }
        }
    }
    writeln!(out, "  operators:        {}", summary.operators.len())?;
    for operator in &summary.operators {
        writeln!(out)?;
        writeln!(
            out,
            "operator {} ({}), parallelism {}",
            operator.uid, operator.name, operator.parallelism
        )?;
        if operator.states.is_empty() {
            writeln!(out, "  keyed state: none")?;
        } else {
            writeln!(out, "  keyed state:")?;
            for state in &operator.states {
                let key = if state.key_type.is_empty() {
                    "unknown"
                } else {
                    &state.key_type
                };
                writeln!(
                    out,
                    "    {:<20} {:<11} {}  (key {key})",
                    state.name,
                    state.kind.to_string(),
                    state.types
                )?;
            }
        }
        for subtask in &operator.subtasks {
            let mut line = format!("  subtask {}:", subtask.subtask);
            if let Some((start, end)) = subtask.key_groups {
                line.push_str(&format!(" key groups [{start}, {end})"));
            }
            if let Some(file) = &subtask.keyed_file {
                line.push_str(&format!(
                    ", keyed file {} ({} bytes, {} entries)",
                    file.path, file.size, file.entries
                ));
            }
            if let Some(native) = &subtask.native {
                line.push_str(&format!(
                    ", {} native files ({} files, {} shared, {} bytes)",
                    native.backend, native.files, native.shared_files, native.bytes
                ));
            }
            if let Some(channels) = &subtask.channels {
                line.push_str(&format!(
                    ", channel state {} ({} bytes)",
                    channels.path, channels.size
                ));
            }
            if subtask.key_groups.is_none()
                && subtask.lists.is_empty()
                && subtask.channels.is_none()
            {
                line.push_str(" no state");
            }
            writeln!(out, "{line}")?;
            for list in &subtask.lists {
                writeln!(
                    out,
                    "    list state {}: {:?}, {} elements, {} bytes",
                    list.name, list.mode, list.elements, list.bytes
                )?;
            }
            for input in subtask.channels.iter().flat_map(|c| &c.inputs) {
                writeln!(
                    out,
                    "    in-flight input {} from {} ({:?}, {}): {} sections, {} batches, {} records, {} bytes",
                    input.edge,
                    input.from_uid,
                    input.partitioning,
                    input.record_type,
                    input.sections,
                    input.batches,
                    input.records,
                    input.bytes
                )?;
            }
            if let Some(problem) = &subtask.problem {
                writeln!(out, "    cannot read its states: {problem}")?;
            }
        }
    }
    Ok(())
}

/// Whether `error` is (caused by) a closed output pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Runs `write`, treating a closed stdout (`| head`) as success.
fn quiet_on_broken_pipe(result: Result<()>) -> Result<()> {
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let opened = open(&args.path)?;
    let summary = summarize(opened.storage.as_ref(), &opened.metadata_path)
        .with_context(|| format!("cannot inspect {}", args.path))?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    quiet_on_broken_pipe((|| {
        if args.json {
            writeln!(out, "{}", summary.to_json()?)?;
        } else {
            render_summary(&summary, &mut out)?;
        }
        out.flush()?;
        Ok(())
    })())
}

/// Writes rows as they are decoded.
struct Writer<W: Write> {
    out: W,
    format: Format,
    line: String,
}

impl<W: Write> DumpSink for Writer<W> {
    type Error = anyhow::Error;

    fn begin(&mut self, layout: &EntryLayout) -> Result<()> {
        if self.format == Format::Csv {
            self.line.clear();
            csv_header(layout, &mut self.line);
            self.line.push('\n');
            self.out.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }

    fn row(&mut self, row: &Row<'_>) -> Result<()> {
        self.line.clear();
        match self.format {
            Format::Json => json_line(row, &mut self.line)?,
            Format::Csv => csv_line(row, &mut self.line)?,
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())?;
        Ok(())
    }
}

pub fn state(command: StateCommand) -> Result<()> {
    match command {
        StateCommand::Dump(args) => dump(args),
    }
}

fn dump(args: DumpArgs) -> Result<()> {
    let opened = open(&args.path)?;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --output {}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let mut writer = Writer {
        out: BufWriter::with_capacity(1 << 20, out),
        format: args.format,
        line: String::new(),
    };
    let result = dump_state(
        opened.storage.as_ref(),
        &opened.metadata_path,
        &args.operator,
        &args.state,
        &mut writer,
    )
    .and_then(|stats| {
        writer.out.flush()?;
        Ok(stats)
    });
    match result {
        Ok(stats) => {
            tracing::debug!(
                files = stats.files,
                key_groups = stats.key_groups,
                keys = stats.entries,
                rows = stats.rows,
                "dumped state '{}' of operator '{}'",
                args.state,
                args.operator
            );
            Ok(())
        }
        Err(e) if args.output.is_none() && is_broken_pipe(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn verify(args: VerifyArgs) -> Result<()> {
    let opened = open(&args.path)?;
    let report = verify_snapshot(opened.storage.as_ref(), &opened.metadata_path)
        .with_context(|| format!("cannot verify {}", args.path))?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    quiet_on_broken_pipe((|| {
        for file in &report.files {
            let role = match &file.role {
                FileRole::Metadata => "metadata".to_owned(),
                FileRole::Keyed { uid, subtask } => format!("keyed state of {uid} #{subtask}"),
                FileRole::Channels { uid, subtask } => {
                    format!("channel state of {uid} #{subtask}")
                }
                FileRole::Native {
                    uid,
                    subtask,
                    shared,
                    ..
                } => format!(
                    "native {}file of {uid} #{subtask}",
                    if *shared { "shared " } else { "" }
                ),
            };
            match &file.problem {
                None => writeln!(out, "ok       {} ({role}, {} bytes)", file.path, file.size)?,
                Some(problem) => writeln!(out, "DAMAGED  {} ({role}): {problem}", file.path)?,
            }
        }
        let damaged = report.damaged().count();
        if damaged == 0 {
            writeln!(out, "{} files verified: all sound", report.files.len())?;
        }
        out.flush()?;
        Ok(())
    })())?;
    let damaged: Vec<String> = report
        .damaged()
        .map(|f| {
            format!(
                "'{}' ({})",
                f.path,
                f.problem.as_deref().unwrap_or("damaged")
            )
        })
        .collect();
    if !damaged.is_empty() {
        bail!(
            "{} of {} files of {} are damaged: {}",
            damaged.len(),
            report.files.len(),
            args.path,
            damaged.join("; ")
        );
    }
    Ok(())
}
