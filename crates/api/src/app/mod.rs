//! A runner for a job's `main`: the runtime flags, configuration file, HTTP
//! API, progress, logs, restore and restart behaviour, exit codes and
//! graceful shutdown of `flowstate run`, for any job built with this crate
//! (feature `app`, on by default; feature `rocksdb` adds
//! `--state-backend rocksdb`).
//!
//! ```no_run
//! use flowstate::app::{App, ResultLine};
//!
//! #[derive(clap::Args)] // the job's own flags (clap 4, derive)
//! struct Params {
//!     #[arg(long, default_value_t = 1000)]
//!     cards: u64,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     App::new("fraud-detection").run(|env: &flowstate::StreamEnvironment, params: &Params| {
//!         let seen = env.from_collection((0..params.cards).collect()).count();
//!         Ok(ResultLine(move || {
//!             format!("RESULT cards={}", seen.load(std::sync::atomic::Ordering::Relaxed))
//!         }))
//!     })
//! }
//! ```
//!
//! [`App::run`] parses the command line into [`RunArgs<P>`] (the job's `P`
//! beside [`RuntimeArgs`]), reads `--config FILE`, starts logging (to
//! stderr; filter with `FLOWSTATE_LOG`, default `info`), builds the job,
//! runs it, prints the job's result line on stdout and returns the exit
//! code: 0, or 1 with one `NAME: error: ...` line on stderr (2 for bad
//! flags or configuration). The `flowstate` binary's `run <job>` commands go
//! through exactly this path ([`parse_args`], [`init_logging`], [`run`]).
//!
//! # Configuration file
//!
//! `--config FILE` reads TOML whose keys are the long flag names, with the
//! values the flags take (strings, numbers; `true`/`false` for switches;
//! lists for repeatable flags). Flags on the command line win over the file.
//! An unknown key, or a value the flag would refuse, is an error naming the
//! key and the file. The job's own flags are keys too. The runtime keys:
//!
//! | key | value |
//! |---|---|
//! | `parallelism` | instances of every operator (default: CPUs) |
//! | `max-parallelism` | key groups (default 128) |
//! | `checkpoint-interval` | `"500ms"`, `"10s"` (default), or `"off"` |
//! | `checkpoint-dir` | path or URL of checkpoint storage |
//! | `checkpoint-timeout` | default `"10m"` |
//! | `min-pause` | between checkpoints, default `"0s"` |
//! | `tolerable-failures` | consecutive failed checkpoints, default 3 |
//! | `mode` | `"exactly-once"` (default), `"at-least-once"`, `"at-most-once"` |
//! | `checkpointing` | `"aligned"` (default) or `"unaligned"` (needs exactly-once) |
//! | `aligned-checkpoint-timeout` | unaligned: start aligned for this long, default `"0s"` |
//! | `unaligned-max-inflight` | unaligned: in-flight bytes per task and checkpoint, default `"128MiB"` |
//! | `retain` | completed checkpoints kept, default 1 |
//! | `restore` | `"latest"`, or a savepoint or checkpoint directory |
//! | `allow-non-restored-state` | `true`/`false` |
//! | `allow-fallback-duplicates` | `true`/`false` |
//! | `take-over-lease` | `true`/`false` |
//! | `savepoint-dir` | default target of savepoints |
//! | `on-signal` | `"checkpoint"` (default), `"savepoint"`, `"cancel"` |
//! | `shutdown-timeout` | default `"60s"` |
//! | `rest` | HTTP API address, default `"127.0.0.1:8081"`, or `"off"` |
//! | `rest-token` | bearer token of the HTTP API |
//! | `rest-insecure` | `true`/`false` |
//! | `rest-allowed-host` | list of host names |
//! | `savepoint-root` | list of directories savepoint requests may name |
//! | `allow-any-savepoint-target` | `true`/`false` |
//! | `restart-strategy` | `"exponential-delay"` (default), `"fixed-delay"`, `"failure-rate"`, `"none"` |
//! | `restart-attempts`, `restart-delay`, `restart-delay-max`, `restart-backoff-multiplier`, `restart-reset-after`, `restart-jitter-factor`, `restart-failure-rate-max`, `restart-failure-rate-interval` | the strategy's parameters |
//! | `state-backend` | `"heap"` (default) or `"rocksdb"` |
//! | `state-dir`, `incremental`, `rocksdb-block-cache`, `rocksdb-write-buffer`, `rocksdb-cache` | rocksdb settings |
//!
//! (`docs/configuration.md` describes each one.)
//!
//! # Signals
//!
//! SIGTERM and SIGINT stop the job (`--on-signal`): at a final checkpoint
//! (default; `--restore latest` resumes from it), with a savepoint into
//! `--savepoint-dir`, or by cancelling it. The process then exits 0 and
//! prints the command that resumes it; past `--shutdown-timeout` it exits 1
//! saying so, and a second signal exits at once (130 for SIGINT, 143 for
//! SIGTERM). Without checkpoints (`--checkpoint-interval off`) a signal takes
//! a savepoint if there is a `--savepoint-dir`, else it cancels the job.
//!
//! Owns: the runner ([`App`], [`RunArgs`], [`run`]), and through its
//! submodules the runtime flags, the configuration file, the HTTP API's view
//! of the job (`service`), progress and the signal handling. Must not touch:
//! what a job computes (the build function's), the runtime's decisions.

mod cluster;
mod config_file;
mod error;
mod progress;
pub mod prometheus;
pub mod restart;
mod runtime_args;
pub mod service;
mod shutdown;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use clap;
/// The trait of a job's own flags (`#[derive(clap::Args)]`).
pub use clap::Args as JobArgs;
use clap::{Args, FromArgMatches, Parser};

use crate::StreamEnvironment;
pub use cluster::ClusterArgs;
pub use config_file::with_config_file;
pub use error::{AppError, BoxError, error_chain};
pub use runtime_args::{
    Checkpointing, DEFAULT_REST, Interval, Mode, OnSignal, RuntimeArgs, StateArgs,
    parse_inflight_size, parse_interval, parse_size,
};
pub use shutdown::resume_command;

/// The program's name in messages: the file name this process was started
/// as (`flowstate`, or a user's own binary), read once.
pub(crate) fn program_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .and_then(|arg0| {
                std::path::Path::new(&arg0)
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "flowstate".to_owned())
    })
}

/// How long a job stopped with a savepoint keeps its HTTP API up for the
/// client to read the savepoint's location.
const STOP_ANSWER_WAIT_MAX: Duration = Duration::from_secs(3);

/// A job's flags: its own (`P`) and the runtime's.
#[derive(Args)]
pub struct RunArgs<P: Args> {
    #[command(flatten)]
    pub job: P,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// What a build function returns: something that gives the job's result
/// line once the job ended, or `()` for none.
pub trait JobOutput {
    /// The line printed on stdout after the job ended, if any.
    fn result_line(self) -> Result<Option<String>, BoxError>;
}

impl JobOutput for () {
    fn result_line(self) -> Result<Option<String>, BoxError> {
        Ok(None)
    }
}

/// A result line computed once the job ended.
pub struct ResultLine<F>(pub F);

impl<F: FnOnce() -> String> JobOutput for ResultLine<F> {
    fn result_line(self) -> Result<Option<String>, BoxError> {
        Ok(Some((self.0)()))
    }
}

/// A result line computed once the job ended, which may fail.
pub struct TryResultLine<F>(pub F);

impl<F: FnOnce() -> Result<String, BoxError>> JobOutput for TryResultLine<F> {
    fn result_line(self) -> Result<Option<String>, BoxError> {
        (self.0)().map(Some)
    }
}

/// A job's `main`: see the module docs.
pub struct App {
    name: String,
    about: Option<String>,
    version: Option<String>,
    /// Job flags recorded in snapshots but not compared on restore.
    changeable: Vec<String>,
}

impl App {
    /// A runner for the job `name` (also the program's name in messages).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            about: None,
            version: None,
            changeable: Vec::new(),
        }
    }

    /// Job flags (long names, e.g. `rate`) that may differ between a run and
    /// the snapshot it restores: recorded, not compared. Every other flag of
    /// the job's own is compared on restore (see [`crate::JobParameters`]);
    /// runtime flags never are.
    pub fn changeable_parameters<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.changeable.extend(names.into_iter().map(Into::into));
        self
    }

    /// The description `--help` shows.
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// The version `--version` shows.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Parses this process's arguments, builds the job with `build` and runs
    /// it (module docs); returns the exit code.
    pub fn run<P, O, F>(self, build: F) -> ExitCode
    where
        P: Args,
        O: JobOutput,
        F: FnOnce(&StreamEnvironment, &P) -> Result<O, BoxError>,
    {
        self.run_from(std::env::args_os(), build)
    }

    /// [`App::run`] with the given arguments (the first is the program).
    pub fn run_from<P, O, F, I, T>(self, argv: I, build: F) -> ExitCode
    where
        P: Args,
        O: JobOutput,
        F: FnOnce(&StreamEnvironment, &P) -> Result<O, BoxError>,
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut command = RunArgs::<P>::augment_args(clap::Command::new(self.name.clone()));
        // Without one, no description: not `RunArgs`'s doc comment, which
        // the derive would show.
        command = match &self.about {
            Some(about) => command.about(about.clone()),
            None => command.about(None::<&'static str>),
        };
        if let Some(version) = &self.version {
            command = command.version(version.clone());
        }
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let parsed = matches(&command, argv.clone()).and_then(|m| {
            let args = RunArgs::<P>::from_arg_matches(&m).map_err(ArgsError::Clap)?;
            Ok((args, job_parameters::<P>(&m, &self.changeable)?))
        });
        let (args, parameters) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return e.report(&self.name),
        };
        init_logging();
        match run_with_argv(&self.name, &args, &argv, Some(parameters), build) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{}: error: {}", self.name, error_chain(&error));
                ExitCode::from(error.exit_code())
            }
        }
    }
}

/// Why the arguments could not be parsed.
#[derive(Debug)]
pub enum ArgsError {
    /// clap's own (also `--help` and `--version`, which are not failures).
    Clap(clap::Error),
    /// The configuration file.
    Config(AppError),
}

impl ArgsError {
    /// Prints it as clap would (help, version, usage errors) or as
    /// `NAME: error: ...`, and returns the exit code (0 for help and version,
    /// 2 otherwise).
    pub fn report(self, name: &str) -> ExitCode {
        match self {
            ArgsError::Clap(e) => {
                let _ = e.print();
                ExitCode::from(e.exit_code().clamp(0, 255) as u8)
            }
            ArgsError::Config(e) => {
                eprintln!("{name}: error: {}", error_chain(&e));
                ExitCode::from(2)
            }
        }
    }
}

/// The job's parameters as its flags give them (defaults included): every
/// argument of `P`, named by its long flag (else its id), values joined by
/// `,`; those named in `changeable` are recorded but not compared. Recorded
/// in every snapshot and compared on restore (see [`crate::JobParameters`]);
/// a build function may replace them (`env.set_job_parameters`).
fn job_parameters<P: Args>(
    m: &clap::ArgMatches,
    changeable: &[String],
) -> Result<crate::JobParameters, ArgsError> {
    let own = P::augment_args(clap::Command::new("job"));
    let mut parameters = crate::JobParameters::new();
    for arg in own.get_arguments() {
        let id = arg.get_id().as_str();
        let Ok(Some(values)) = m.try_get_raw(id) else {
            continue;
        };
        let name = arg.get_long().unwrap_or(id);
        let value: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let changes = changeable.iter().any(|c| c == name || c == id);
        parameters
            .insert(name, value.join(","), changes)
            .map_err(|e| {
                ArgsError::Config(AppError::Usage(format!("job parameter {name}: {e}")))
            })?;
    }
    Ok(parameters)
}

fn matches(command: &clap::Command, argv: Vec<OsString>) -> Result<clap::ArgMatches, ArgsError> {
    let argv = with_config_file(command, argv).map_err(ArgsError::Config)?;
    command
        .clone()
        .try_get_matches_from(argv)
        .map_err(ArgsError::Clap)
}

/// Parses `argv` (with any `--config FILE` of the subcommand it names) into
/// `C`.
pub fn try_parse_args_from<C: Parser>(argv: Vec<OsString>) -> Result<C, ArgsError> {
    let m = matches(&C::command(), argv)?;
    C::from_arg_matches(&m).map_err(ArgsError::Clap)
}

/// Parses this process's arguments into `C` (with `--config FILE`); on
/// failure (or `--help`) prints and exits as [`ArgsError::report`] says.
pub fn parse_args<C: Parser>(name: &str) -> C {
    match try_parse_args_from(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(e) => {
            let code = match &e {
                ArgsError::Clap(c) => c.exit_code(),
                ArgsError::Config(_) => 2,
            };
            let _ = e.report(name);
            std::process::exit(code)
        }
    }
}

/// Logs to stderr, filtered by `FLOWSTATE_LOG` (default `info`). Once per
/// process; a second call does nothing.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWSTATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Builds job `label` from `args` with `build`, runs it (HTTP API, progress,
/// signals, restarts) and prints its result line on stdout. The command
/// that resumes a run stopped by a signal is this process's arguments plus
/// `--restore`.
pub fn run<P, O, F>(label: &str, args: &RunArgs<P>, build: F) -> Result<(), AppError>
where
    P: Args,
    O: JobOutput,
    F: FnOnce(&StreamEnvironment, &P) -> Result<O, BoxError>,
{
    let argv: Vec<OsString> = std::env::args_os().collect();
    run_with_argv(label, args, &argv, None, build)
}

/// `parameters`: the job's, as its flags give them, recorded unless the
/// build function sets its own.
fn run_with_argv<P, O, F>(
    label: &str,
    args: &RunArgs<P>,
    argv: &[OsString],
    parameters: Option<crate::JobParameters>,
    build: F,
) -> Result<(), AppError>
where
    P: Args,
    O: JobOutput,
    F: FnOnce(&StreamEnvironment, &P) -> Result<O, BoxError>,
{
    let checking = args.runtime.check_savepoint.as_deref();
    let mut config = match checking {
        Some(_) => args.runtime.check_config(label),
        None => args.runtime.config(label)?,
    };
    if let Some(parameters) = parameters {
        config.job_parameters = parameters;
    }
    let env = StreamEnvironment::new(config);
    if let Some(location) = checking {
        build(&env, &args.job).map_err(AppError::Build)?;
        return check_savepoint(&env, location, &args.runtime);
    }
    let output = build(&env, &args.job).map_err(AppError::Build)?;
    let role = args.runtime.cluster.role();
    if let cluster::Role::TaskManager(_) | cluster::Role::HaTaskManager(..) = &role {
        match &role {
            cluster::Role::HaTaskManager(options, ha) => {
                cluster::ha_task_manager(&env, options, ha)?
            }
            cluster::Role::TaskManager(options) => cluster::task_manager(&env, options)?,
            _ => {}
        }
        // This process ran only its part of the job: its result is partial.
        if let Some(line) = output.result_line().map_err(AppError::Build)? {
            tracing::info!("this task manager's part of the result: {line}");
        }
        return Ok(());
    }
    let single = matches!(role, cluster::Role::Single);
    run_job(&env, label, &args.runtime, argv, role)?;
    match output.result_line().map_err(AppError::Build)? {
        Some(line) if single => println!("{line}"),
        Some(_) => tracing::info!(
            "the job ran on task managers: its result line is theirs, each for its part \
             (in their logs); its output is in its sinks"
        ),
        None => {}
    }
    Ok(())
}

/// `--check-savepoint`: compares the snapshot at `location` with the job
/// built into `env` and prints the report (a table, or JSON); an error if a
/// restore would fail.
fn check_savepoint(
    env: &StreamEnvironment,
    location: &str,
    runtime: &RuntimeArgs,
) -> Result<(), AppError> {
    let options = crate::CheckOptions {
        allow_non_restored_state: runtime.allow_non_restored_state,
        allow_parameter_change: runtime.allow_parameter_change,
    };
    let check_error = |source: BoxError| AppError::Check {
        location: location.to_owned(),
        source,
    };
    let report = env
        .check_snapshot(location, options)
        .map_err(|e| check_error(Box::new(e)))?;
    let text = if runtime.check_json {
        report.to_json().map_err(|e| check_error(Box::new(e)))? + "\n"
    } else {
        report.to_string()
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| AppError::Other(Box::new(e)))?;
    if report.restorable {
        Ok(())
    } else {
        Err(AppError::NotRestorable {
            location: location.to_owned(),
        })
    }
}

/// Serves the HTTP API of `job` on `rest` (unless `off`). The default address
/// may be taken by another job: then the job runs without an API (a warning
/// says so); an address the user chose must work.
fn start_rest(
    rest: &str,
    api: &service::RestArgs,
    job: &Arc<flowstate_runtime::JobController>,
) -> Result<Option<flowstate_rest::RestServer>, AppError> {
    if rest == "off" {
        return Ok(None);
    }
    let jobs = Arc::new(service::LocalJobs::default());
    jobs.add(Arc::clone(job));
    match flowstate_rest::serve_with(rest, jobs, &api.serve_options()) {
        Ok(server) => {
            tracing::info!("HTTP API listening on http://{}", server.local_addr());
            Ok(Some(server))
        }
        Err(e) if rest == DEFAULT_REST => {
            tracing::warn!(
                "HTTP API not started ({e}); pass --rest HOST:PORT to choose another address"
            );
            Ok(None)
        }
        Err(e) => Err(AppError::Flag {
            context: format!("--rest {rest}"),
            source: Box::new(e),
        }),
    }
}

fn run_job(
    env: &StreamEnvironment,
    label: &str,
    runtime: &RuntimeArgs,
    argv: &[OsString],
    role: cluster::Role,
) -> Result<(), AppError> {
    let (job, cluster) = match role {
        cluster::Role::JobManager {
            listen,
            task_managers,
            local,
            ha,
        } => {
            match cluster::job_manager(env, listen, task_managers, local, argv, ha.as_ref())? {
                Some((job, guard)) => (job, Some(guard)),
                // A standby whose job ended (its leader ran it).
                None => return Ok(()),
            }
        }
        cluster::Role::Single
        | cluster::Role::TaskManager(_)
        | cluster::Role::HaTaskManager(..) => {
            (env.start().map_err(|e| AppError::Start(Box::new(e)))?, None)
        }
    };
    // The task managers are told the job is over however it ended.
    let _cluster = cluster.map(cluster::FinishOnDrop);
    let server = match start_rest(&runtime.rest, &runtime.api, job.controller()) {
        Ok(server) => server,
        Err(e) => {
            job.cancel();
            let _ = job.join();
            return Err(e);
        }
    };
    let controller = Arc::clone(job.controller());
    let plan = shutdown::Plan::new(
        runtime.on_signal,
        runtime.checkpoints(),
        runtime.savepoint_dir.is_some(),
        runtime.shutdown_timeout,
    );
    let signals =
        match shutdown::Shutdown::install(Arc::clone(&controller), plan, Some(runtime.on_signal)) {
            Ok(signals) => signals,
            Err(e) => {
                job.cancel();
                let _ = job.join();
                return Err(e);
            }
        };
    let reporter = progress::Reporter::start(
        label,
        Arc::clone(job.metrics()),
        std::io::stderr().is_terminal(),
    );
    let outcome = job.join();
    let stopped = signals.finish();
    if let Some(server) = server {
        // A `flowstate stop` client polls for the final savepoint's location:
        // answer it before the API goes away (bounded: it may never ask).
        if controller.stopped_with_savepoint().is_some() && stopped.is_none() {
            let asked_by = std::time::Instant::now() + STOP_ANSWER_WAIT_MAX;
            while !controller.stop_reported() && std::time::Instant::now() < asked_by {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server.shutdown();
    }
    let report = reporter.finish();
    let after = format!(
        "{} records in {:.2}s",
        report.records,
        report.elapsed.as_secs_f64()
    );
    let job_report = match outcome {
        Err(flowstate_runtime::JobError::Cancelled)
            if stopped
                .as_ref()
                .is_some_and(|s| s.action == OnSignal::Cancel) =>
        {
            if let Some(stopped) = &stopped {
                eprintln!(
                    "{}: job {label} cancelled on {} after {after}",
                    crate::app::program_name(),
                    stopped.signal
                );
                if runtime.checkpoints() {
                    print_resume(argv, "latest");
                }
            }
            return Ok(());
        }
        Err(flowstate_runtime::JobError::Cancelled) => {
            return Err(AppError::Cancelled {
                label: label.to_owned(),
                after,
            });
        }
        Err(error @ flowstate_runtime::JobError::FallbackRefused { .. }) => {
            return Err(AppError::FallbackRefused {
                label: label.to_owned(),
                after,
                error: Box::new(error),
            });
        }
        Err(
            error @ flowstate_runtime::JobError::Build(
                flowstate_runtime::BuildError::ParametersChanged(_),
            ),
        ) => {
            return Err(AppError::ParametersChanged {
                label: label.to_owned(),
                error: Box::new(error),
            });
        }
        Err(flowstate_runtime::JobError::Lease(e)) if e.can_take_over() => {
            return Err(AppError::LeaseHeld {
                label: label.to_owned(),
                error: Box::new(flowstate_runtime::JobError::Lease(e)),
            });
        }
        Err(source) => {
            return Err(AppError::Failed {
                label: label.to_owned(),
                after,
                source: Box::new(source),
            });
        }
        Ok(report) => report,
    };
    if let Some(location) = &job_report.stopped_with_savepoint {
        tracing::info!("job {label} stopped with savepoint {location}");
    }
    tracing::info!(
        records_in = job_report.records_in,
        records_to_sinks = job_report.records_to_sinks,
        secs = job_report.duration.as_secs_f64(),
        rate = (job_report.records_in as f64 / job_report.duration.as_secs_f64().max(1e-9)) as u64,
        restarts = job_report.restarts,
        "job {label} finished"
    );
    if let Some(job_id) = &job_report.job_id {
        let mut durations: Vec<Duration> =
            job_report.checkpoints.iter().map(|c| c.duration).collect();
        durations.sort();
        let p50 = durations
            .get(durations.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = durations.last().copied().unwrap_or_default();
        // Per checkpoint, the longest synchronous pause of any task.
        let mut pauses: Vec<Duration> = job_report
            .checkpoints
            .iter()
            .map(|c| c.sync_pause_max)
            .collect();
        pauses.sort();
        let pause_p50 = pauses.get(pauses.len() / 2).copied().unwrap_or_default();
        let pause_max = pauses.last().copied().unwrap_or_default();
        let bytes = job_report.checkpoints.last().map_or(0, |c| c.bytes);
        // Over the job's life, like `completed`; absent (`None` records
        // nothing) unless some checkpoint was unaligned.
        let progress = controller.metrics().checkpoints();
        let unaligned = (progress.unaligned > 0).then_some(progress.unaligned);
        let in_flight_persisted_bytes = unaligned.map(|_| progress.persisted_bytes_total);
        tracing::info!(
            job_id = job_id.as_str(),
            completed = job_report.completed_checkpoints,
            failed = job_report.failed_checkpoints,
            p50_ms = p50.as_secs_f64() * 1e3,
            max_ms = max.as_secs_f64() * 1e3,
            last_bytes = bytes,
            sync_pause_p50_us = pause_p50.as_micros() as u64,
            sync_pause_max_us = pause_max.as_micros() as u64,
            restored_from = job_report.restored_from.unwrap_or(0),
            unaligned,
            in_flight_persisted_bytes,
            "checkpoints"
        );
    }
    if let Some(stopped) = stopped {
        match (&job_report.stopped_with_savepoint, stopped.action) {
            (Some(location), _) => {
                eprintln!(
                    "{}: job {label} stopped on {} with savepoint {location}",
                    crate::app::program_name(),
                    stopped.signal
                );
                print_resume(argv, location);
            }
            (None, _) if runtime.checkpoints() => {
                eprintln!(
                    "{}: job {label} stopped on {} at a checkpoint",
                    crate::app::program_name(),
                    stopped.signal
                );
                print_resume(argv, "latest");
            }
            (None, _) => {}
        }
    }
    Ok(())
}

fn print_resume(argv: &[OsString], restore: &str) {
    eprintln!(
        "{}: resume with: {}",
        crate::app::program_name(),
        resume_command(argv, restore)
    );
}
