//! The runtime flags of [`RunArgs`](super::RunArgs) — what `flowstate run`
//! and every [`App`](super::App) accept besides the job's own flags — and
//! the [`ExecutionConfig`] they make.
//!
//! Owns: the flags (`RuntimeArgs`, `StateArgs`; the restart and HTTP API
//! flags are in `restart` and `service`), their parsers (`parse_size`,
//! `parse_interval`, `parse_inflight_size`), what `--restore X` names
//! (`restore_from`), the checkpoints' alignment policy (`alignment_policy`)
//! and the checks of flag combinations. Must not touch: running the job (`super`),
//! signals (`shutdown`), the configuration file (`config_file`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use flowstate_runtime::checkpoint::{
    AlignmentPolicy, CoordinatorSettings, DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX, LeaseSettings,
    Location, open_storage,
};
use flowstate_runtime::{CheckpointingConfig, ExecutionConfig, Guarantee, RestoreFrom};

use super::error::AppError;
use super::{restart, service};

type Result<T, E = AppError> = std::result::Result<T, E>;

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(AppError::Usage(format!($($arg)*)))
    };
}

/// Where the HTTP API listens unless `--rest` says otherwise.
pub const DEFAULT_REST: &str = "127.0.0.1:8081";

/// The checkpoint storage of a job run with `--checkpoint-interval off` that
/// restores nothing from `--checkpoint-dir`: such a job writes nothing to its
/// checkpoint storage, so it gets one in memory rather than a directory.
const UNUSED_CHECKPOINT_STORAGE: &str = "memory://flowstate-no-checkpoints";

/// The runtime flags (see the module docs of [`flowstate::app`](super) for
/// each one's configuration key).
#[derive(Args)]
pub struct RuntimeArgs {
    /// Read flags from this TOML file (keys are the long flag names, e.g.
    /// `parallelism = 2`, `checkpoint-interval = "1s"`); flags given on the
    /// command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Parallel instances of every operator [default: number of CPUs].
    #[arg(long)]
    pub parallelism: Option<u32>,
    /// Number of key groups: the most instances state can be rescaled to.
    #[arg(long, default_value_t = flowstate_state::DEFAULT_MAX_PARALLELISM)]
    pub max_parallelism: u32,
    /// Time between checkpoints (`500ms`, `1s`, `2m`), or `off`: no checkpoints
    /// and no restarts, but savepoints and --restore of a named one still work.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub checkpoint_interval: Interval,
    /// Where checkpoints go: a path, `file:///path`, `s3://bucket/prefix` or
    /// `memory://` [default: <temp dir>/flowstate/checkpoints/<job>].
    #[arg(long)]
    pub checkpoint_dir: Option<String>,
    /// A checkpoint not complete after this long is aborted.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub checkpoint_timeout: Duration,
    /// Least time between the end of a checkpoint and the start of the next.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub min_pause: Duration,
    /// Consecutive failed checkpoints tolerated before the job fails.
    #[arg(long, default_value_t = 3)]
    pub tolerable_failures: u32,
    /// Delivery guarantee: exactly-once, at-least-once, or at-most-once
    /// (see docs/at-most-once.md). May differ from the run that wrote the
    /// checkpoint --restore resumes.
    #[arg(long, value_enum, default_value_t = Mode::ExactlyOnce)]
    pub mode: Mode,
    /// How a checkpoint's barriers meet at a task with several inputs:
    /// `aligned` (the task waits for the barrier on every input) or
    /// `unaligned` (the barrier overtakes the records in flight, which are
    /// stored with the checkpoint, so checkpoints complete under
    /// backpressure). Unaligned needs --mode exactly-once; savepoints are
    /// always aligned.
    #[arg(long, value_enum, default_value_t = Checkpointing::Aligned)]
    pub checkpointing: Checkpointing,
    /// With --checkpointing unaligned: a checkpoint starts aligned and
    /// becomes unaligned once this long has passed since its trigger; `0s`:
    /// it starts unaligned [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub aligned_checkpoint_timeout: Option<Duration>,
    /// With --checkpointing unaligned: in-flight records a task stores for
    /// one checkpoint at most (`1MiB` to `1GiB`); a task that would store
    /// more declines the checkpoint [default: 128MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_inflight_size)]
    pub unaligned_max_inflight: Option<u64>,
    /// Completed checkpoints kept.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub retain: u32,
    /// Start from `latest` (the newest completed checkpoint under
    /// --checkpoint-dir; a fresh start if there is none), from a savepoint
    /// directory (a path or URL), or from a checkpoint directory (anywhere, or
    /// relative to --checkpoint-dir).
    #[arg(long)]
    pub restore: Option<String>,
    /// With --restore: drop the state of operators this job no longer has
    /// (otherwise the restore fails, naming them).
    #[arg(long)]
    pub allow_non_restored_state: bool,
    /// With --restore: restore a snapshot taken with other job parameters
    /// or by another job (otherwise the restore fails, naming each difference).
    #[arg(long)]
    pub allow_parameter_change: bool,
    /// Run nothing: compare the savepoint or checkpoint at PATH with the job
    /// these flags build, print per operator and state whether it would be
    /// restored, new, dropped or incompatible, and exit 0 if a restore would
    /// succeed (with --allow-non-restored-state, --allow-parameter-change,
    /// --max-parallelism as given), 1 if not, 2 if PATH cannot be read.
    #[arg(long, value_name = "PATH")]
    pub check_savepoint: Option<String>,
    /// With --check-savepoint: print the report as JSON.
    #[arg(long)]
    pub check_json: bool,
    /// With --restore latest: when the newest checkpoint cannot be restored,
    /// fall back to an older one even though the job's exactly-once sinks
    /// already published the newer one's output, which the replay then
    /// publishes again (duplicates). Without it such a restore fails,
    /// naming the damaged file.
    #[arg(long)]
    pub allow_fallback_duplicates: bool,
    /// With --restore latest: take over the lease of the job's checkpoint
    /// directory even though its owner looks alive. Only for a run you know
    /// is dead where this one cannot tell (on another host, before its lease
    /// lapses 30s after its last renewal): two live runs of one job destroy
    /// each other's checkpoints and publish their output twice.
    #[arg(long)]
    pub take_over_lease: bool,
    /// Where savepoints go when a request names no directory; requests may
    /// also name it or a directory under it (see --savepoint-root).
    #[arg(long)]
    pub savepoint_dir: Option<String>,
    /// What SIGTERM and SIGINT do: `checkpoint` (stop at a final checkpoint;
    /// resume with --restore latest), `savepoint` (stop with a savepoint
    /// into --savepoint-dir) or `cancel`. A second signal exits at once.
    #[arg(long, value_enum, default_value_t = OnSignal::Checkpoint)]
    pub on_signal: OnSignal,
    /// After SIGTERM or SIGINT, exit non-zero if the job has not stopped
    /// within this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Address of the job's HTTP API (`host:port`; port 0 picks a free one),
    /// or `off`. Anything but loopback needs --rest-token.
    #[arg(long, default_value = DEFAULT_REST)]
    pub rest: String,
    #[command(flatten)]
    pub api: service::RestArgs,
    #[command(flatten)]
    pub restart: restart::RestartArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub cluster: super::cluster::ClusterArgs,
}

/// The state backend flags.
#[derive(Args)]
pub struct StateArgs {
    /// Where keyed state lives: `heap` (memory) or `rocksdb` (local disk; needs a
    /// build with `--features rocksdb`).
    #[arg(long, default_value = "heap")]
    pub state_backend: flowstate_state::BackendKind,
    /// Local directory of the rocksdb backend's databases
    /// [default: <temp dir>/flowstate/state].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// rocksdb: checkpoints upload only the files that changed since the last one.
    #[arg(long)]
    pub incremental: bool,
    /// rocksdb: block cache shared by all instances (`256MiB`, `1GiB`).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub rocksdb_block_cache: u64,
    /// rocksdb: memtable size per state (`64MiB`).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub rocksdb_write_buffer: u64,
    /// rocksdb: write-back cache of each value-like state per instance
    /// (`64MiB` of reads and as much of writes; `0` turns it off): hot keys
    /// are read and written in memory and reach RocksDB once per checkpoint.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub rocksdb_cache: u64,
}

/// `512`, `64KiB`, `256MiB`, `2GiB` (also `K`, `M`, `G`, all powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(format!("unknown unit '{unit}' (use B, KiB, MiB or GiB)")),
    };
    let value: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 256MiB)"))?;
    value
        .checked_mul(1 << shift)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("'{text}' is not a size between 1 byte and 16 EiB"))
}

/// The sizes `--unaligned-max-inflight` accepts.
const INFLIGHT_BYTES_MIN: u64 = 1 << 20;
const INFLIGHT_BYTES_MAX: u64 = 1 << 30;

/// A size (as [`parse_size`]) from 1MiB to 1GiB: below, a task would decline
/// unaligned checkpoints under any real backlog; above, one checkpoint's
/// in-flight records per task would outgrow what a restore holds in memory.
pub fn parse_inflight_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if !(INFLIGHT_BYTES_MIN..=INFLIGHT_BYTES_MAX).contains(&bytes) {
        return Err(format!("'{text}' is not between 1MiB and 1GiB"));
    }
    Ok(bytes)
}

impl StateArgs {
    fn backend(&self) -> Result<flowstate_state::StateBackendConfig> {
        use flowstate_state::{BackendKind, StateBackendConfig};
        match self.state_backend {
            BackendKind::Heap => {
                if self.incremental {
                    bail!(
                        "--incremental needs --state-backend rocksdb (heap checkpoints are always complete)"
                    );
                }
                Ok(StateBackendConfig::Heap)
            }
            BackendKind::RocksDb => self.rocksdb(),
        }
    }

    #[cfg(feature = "rocksdb")]
    fn rocksdb(&self) -> Result<flowstate_state::StateBackendConfig> {
        use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("flowstate").join("state"));
        let options = RocksDbOptions {
            block_cache_bytes: self.rocksdb_block_cache,
            write_buffer_bytes: self.rocksdb_write_buffer,
            cache_bytes: self.rocksdb_cache,
            incremental: self.incremental,
            ..RocksDbOptions::new(dir)
        };
        Ok(flowstate_state::StateBackendConfig::Store(
            RocksDbFactory::new(options),
        ))
    }

    #[cfg(not(feature = "rocksdb"))]
    fn rocksdb(&self) -> Result<flowstate_state::StateBackendConfig> {
        bail!(
            "this flowstate was built without the rocksdb backend; build it with `cargo build --release -p flowstate-cli --features rocksdb` (needs libclang-dev)"
        )
    }
}

/// `--mode`. The names are the flag's values (`exactly-once`, ...).
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Aligned barriers: every record affects state and committed output once.
    ExactlyOnce,
    /// No alignment: after a failure records may be replayed (counted twice).
    AtLeastOnce,
    /// No alignment and no rewind: sources emit only what a durable
    /// reservation covers and resume after it; a record may be lost, never
    /// counted twice.
    AtMostOnce,
}

/// `--checkpointing`: how the barriers of a periodic checkpoint meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpointing {
    /// A task waits for the barrier on every input before its snapshot.
    Aligned,
    /// The barrier overtakes the records in flight, which the checkpoint
    /// stores (Flink's unaligned checkpoints).
    Unaligned,
}

/// `--on-signal`: what SIGTERM and SIGINT do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnSignal {
    /// Stop at a final checkpoint (stop-with-checkpoint); `--restore latest`
    /// resumes from it.
    Checkpoint,
    /// Stop with a savepoint into `--savepoint-dir` (stop-with-savepoint).
    Savepoint,
    /// Cancel the job (no snapshot; `--restore latest` resumes from the
    /// latest completed checkpoint).
    Cancel,
}

/// `--checkpoint-interval`.
#[derive(Clone, Copy, Debug)]
pub enum Interval {
    Off,
    Every(Duration),
}

/// `500ms`, `1s`, `2m` (at least 10ms), or `off`.
pub fn parse_interval(text: &str) -> Result<Interval, String> {
    if text == "off" {
        return Ok(Interval::Off);
    }
    let every = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected e.g. 500ms, 1s, or off)"))?;
    if every < Duration::from_millis(10) {
        return Err("the interval must be at least 10ms".into());
    }
    Ok(Interval::Every(every))
}

/// What `--restore X` names: a checkpoint relative to `--checkpoint-dir` (also
/// given as a local path inside it), or a savepoint or checkpoint anywhere
/// else (a local path or a URL).
fn restore_from(given: &str, checkpoint_dir: &str) -> Result<RestoreFrom> {
    if given == "latest" {
        return Ok(RestoreFrom::Latest);
    }
    let Some(path) = Location::parse(given).local_path() else {
        return Ok(RestoreFrom::Location(given.to_owned()));
    };
    let root = Location::parse(checkpoint_dir)
        .local_path()
        .unwrap_or(checkpoint_dir);
    let (path, root) = (path.to_owned(), root.to_owned());
    if !path.starts_with('/') {
        // A snapshot directory relative to the working directory, else a
        // checkpoint relative to --checkpoint-dir.
        let here = std::path::Path::new(&path);
        let is_snapshot =
            here.join("_metadata").is_file() || (here.ends_with("_metadata") && here.is_file());
        if is_snapshot {
            let absolute = std::path::absolute(here).map_err(|e| AppError::Flag {
                context: format!("--restore {given}"),
                source: Box::new(e),
            })?;
            return Ok(RestoreFrom::Location(absolute.display().to_string()));
        }
        return Ok(RestoreFrom::Path(path));
    }
    let root = std::path::absolute(&root).unwrap_or_else(|_| PathBuf::from(&root));
    match std::path::Path::new(&path).strip_prefix(&root) {
        Ok(relative) => Ok(RestoreFrom::Path(relative.display().to_string())),
        Err(_) => Ok(RestoreFrom::Location(path)),
    }
}

impl RuntimeArgs {
    /// Whether the job takes periodic checkpoints.
    pub fn checkpoints(&self) -> bool {
        matches!(self.checkpoint_interval, Interval::Every(_))
    }

    /// Which checkpoints may be unaligned (`--checkpointing` and its two
    /// parameters), checked against `--mode`.
    pub fn alignment_policy(&self) -> Result<AlignmentPolicy> {
        if self.checkpointing == Checkpointing::Aligned {
            for (given, flag) in [
                (
                    self.aligned_checkpoint_timeout.is_some(),
                    "--aligned-checkpoint-timeout",
                ),
                (
                    self.unaligned_max_inflight.is_some(),
                    "--unaligned-max-inflight",
                ),
            ] {
                if given {
                    bail!(
                        "{flag} only applies with --checkpointing unaligned (checkpoints are aligned)"
                    );
                }
            }
            return Ok(AlignmentPolicy::Aligned);
        }
        match self.mode {
            Mode::ExactlyOnce => {}
            Mode::AtLeastOnce => bail!(
                "--checkpointing unaligned needs --mode exactly-once, not at-least-once: an \
                 at-least-once task does not align barriers (it takes its snapshot at the \
                 first barrier and keeps reading its other inputs), so there is no alignment \
                 for a barrier to overtake and no in-flight records to store"
            ),
            Mode::AtMostOnce => bail!(
                "--checkpointing unaligned needs --mode exactly-once, not at-most-once: \
                 at-most-once checkpoints are at-least-once checkpoints (barriers are not \
                 aligned, see docs/at-most-once.md), so there is no alignment for a barrier \
                 to overtake and no in-flight records to store"
            ),
        }
        Ok(AlignmentPolicy::Unaligned {
            aligned_timeout: self.aligned_checkpoint_timeout.unwrap_or(Duration::ZERO),
            inflight_bytes_max: self
                .unaligned_max_inflight
                .unwrap_or(DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX),
        })
    }

    /// The configuration [`--check-savepoint`](Self::check_savepoint) builds
    /// job `job` with: what a restore checks (key groups, the job's name,
    /// whether a parameter change is allowed), and nothing that opens storage.
    pub fn check_config(&self, job: &str) -> ExecutionConfig {
        let parallelism = self
            .parallelism
            .unwrap_or(1)
            .min(self.max_parallelism)
            .max(1);
        ExecutionConfig {
            job_name: job.to_owned(),
            max_parallelism: self.max_parallelism,
            allow_parameter_change: self.allow_parameter_change,
            ..ExecutionConfig::with_parallelism(parallelism)
        }
    }

    /// The execution configuration of job `job` the flags describe, checked.
    pub fn config(&self, job: &str) -> Result<ExecutionConfig> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let parallelism = self
            .parallelism
            .unwrap_or_else(|| cpus.min(self.max_parallelism).max(1));
        if self.allow_non_restored_state && self.restore.is_none() {
            bail!("--allow-non-restored-state only applies with --restore");
        }
        if self.take_over_lease && self.restore.as_deref() != Some("latest") {
            // Any other start is a new job id, whose lease nobody holds.
            bail!("--take-over-lease only applies with --restore latest");
        }
        if self.on_signal == OnSignal::Savepoint && self.savepoint_dir.is_none() {
            bail!("--on-signal savepoint needs --savepoint-dir (where the savepoint goes)");
        }
        self.api.check(&self.rest)?;
        let alignment = self.alignment_policy()?;
        let mut config = ExecutionConfig {
            job_name: job.to_owned(),
            allow_parameter_change: self.allow_parameter_change,
            max_parallelism: self.max_parallelism,
            state_backend: self.state.backend()?,
            savepoint_policy: self.api.savepoint_policy()?,
            lease: LeaseSettings {
                take_over: self.take_over_lease,
                ..LeaseSettings::default()
            },
            ..ExecutionConfig::with_parallelism(parallelism)
        };
        config
            .validate()
            .map_err(|e| AppError::Other(Box::new(e)))?;
        // `off` means no periodic (and no final) checkpoints, not no
        // coordinator: savepoints, stop-with-savepoint and restores still work.
        let interval = match self.checkpoint_interval {
            Interval::Off => None,
            Interval::Every(every) => Some(every),
        };
        if interval.is_none() && self.restore.as_deref() == Some("latest") {
            bail!(
                "--restore latest resumes a job from its latest checkpoint, and a job run with \
                 --checkpoint-interval off has none (it keeps no directory under \
                 --checkpoint-dir): name the savepoint or checkpoint to restore (--restore DIR), \
                 or give a --checkpoint-interval"
            );
        }
        let dir = match &self.checkpoint_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir()
                .join("flowstate")
                .join("checkpoints")
                .join(job)
                .display()
                .to_string(),
        };
        let restore = match self.restore.as_deref() {
            None => RestoreFrom::Nothing,
            Some(given) => restore_from(given, &dir)?,
        };
        // Without checkpoints nothing is ever written to the checkpoint
        // storage, and opening a local directory creates it: it is opened only
        // to read a checkpoint named relative to it.
        let storage = if interval.is_some() || matches!(restore, RestoreFrom::Path(_)) {
            open_storage(&dir).map_err(|e| AppError::Flag {
                context: format!("--checkpoint-dir {dir}"),
                source: Box::new(e),
            })?
        } else {
            open_storage(UNUSED_CHECKPOINT_STORAGE).map_err(|e| AppError::Flag {
                context: format!("opening {UNUSED_CHECKPOINT_STORAGE}"),
                source: Box::new(e),
            })?
        };
        config.checkpointing = Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval,
                timeout: self.checkpoint_timeout,
                min_pause: self.min_pause,
                max_concurrent: 1,
                tolerable_failures: self.tolerable_failures,
                retain: self.retain as usize,
                alignment,
            },
            guarantee: match self.mode {
                Mode::ExactlyOnce => Guarantee::ExactlyOnce,
                Mode::AtLeastOnce => Guarantee::AtLeastOnce,
                Mode::AtMostOnce => Guarantee::AtMostOnce,
            },
            job_id: None,
            restore,
            allow_non_restored_state: self.allow_non_restored_state,
            allow_fallback_duplicates: self.allow_fallback_duplicates,
            savepoint_dir: self.savepoint_dir.clone(),
            restart: self.restart.strategy()?,
        });
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        runtime: RuntimeArgs,
    }

    fn parse(args: &[&str]) -> Result<RuntimeArgs, String> {
        Cli::try_parse_from(std::iter::once("flowstate").chain(args.iter().copied()))
            .map(|cli| cli.runtime)
            .map_err(|e| e.to_string())
    }

    fn policy(args: &[&str]) -> Result<AlignmentPolicy, String> {
        parse(args)?.alignment_policy().map_err(|e| e.to_string())
    }

    #[test]
    fn checkpoints_are_aligned_unless_asked() {
        assert_eq!(policy(&[]).unwrap(), AlignmentPolicy::Aligned);
        assert_eq!(
            policy(&["--checkpointing", "aligned"]).unwrap(),
            AlignmentPolicy::Aligned
        );
    }

    #[test]
    fn unaligned_takes_its_defaults_and_its_flags() {
        assert_eq!(
            policy(&["--checkpointing", "unaligned"]).unwrap(),
            AlignmentPolicy::Unaligned {
                aligned_timeout: Duration::ZERO,
                inflight_bytes_max: DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX,
            }
        );
        assert_eq!(
            policy(&[
                "--checkpointing",
                "unaligned",
                "--aligned-checkpoint-timeout",
                "2s",
                "--unaligned-max-inflight",
                "16MiB",
                "--mode",
                "exactly-once",
            ])
            .unwrap(),
            AlignmentPolicy::Unaligned {
                aligned_timeout: Duration::from_secs(2),
                inflight_bytes_max: 16 << 20,
            }
        );
    }

    /// The policy reaches the coordinator's settings.
    #[test]
    fn the_configuration_carries_the_policy() {
        let args = parse(&[
            "--checkpointing",
            "unaligned",
            "--aligned-checkpoint-timeout",
            "500ms",
            "--checkpoint-dir",
            "memory://runtime-args-test",
            "--rest",
            "off",
        ])
        .unwrap();
        let config = args.config("runtime-args-test").unwrap();
        let checkpointing = config.checkpointing.expect("checkpointing");
        assert_eq!(
            checkpointing.settings.alignment,
            AlignmentPolicy::Unaligned {
                aligned_timeout: Duration::from_millis(500),
                inflight_bytes_max: DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX,
            }
        );
        assert_eq!(checkpointing.settings.max_concurrent, 1);
    }

    #[test]
    fn the_in_flight_limit_is_between_1mib_and_1gib() {
        assert_eq!(parse_inflight_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_inflight_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_inflight_size("1048576"), Ok(1 << 20));
        for text in ["1023KiB", "1048575", "2GiB", "1025MiB"] {
            let error = parse_inflight_size(text).expect_err(text);
            assert!(error.contains("between 1MiB and 1GiB"), "{text}: {error}");
        }
        assert!(parse_inflight_size("lots").is_err());
        let error = parse(&[
            "--checkpointing",
            "unaligned",
            "--unaligned-max-inflight",
            "4GiB",
        ])
        .err()
        .expect("4GiB is refused");
        assert!(
            error.contains("--unaligned-max-inflight") && error.contains("between 1MiB and 1GiB"),
            "{error}"
        );
    }

    #[test]
    fn unaligned_is_refused_outside_exactly_once_saying_why() {
        for (mode, why) in [
            ("at-least-once", "does not align barriers"),
            ("at-most-once", "at-most-once checkpoints are at-least-once"),
        ] {
            let error = policy(&["--checkpointing", "unaligned", "--mode", mode]).expect_err(mode);
            assert!(
                error.contains("--checkpointing unaligned needs --mode exactly-once")
                    && error.contains(&format!("not {mode}"))
                    && error.contains(why),
                "{mode}: {error}"
            );
        }
        // Aligned checkpoints go with every mode.
        for mode in ["at-least-once", "at-most-once"] {
            assert_eq!(policy(&["--mode", mode]).unwrap(), AlignmentPolicy::Aligned);
        }
    }

    #[test]
    fn the_unaligned_parameters_without_unaligned_are_refused() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--aligned-checkpoint-timeout", "1s"],
                "--aligned-checkpoint-timeout",
            ),
            (
                &["--aligned-checkpoint-timeout", "0s"],
                "--aligned-checkpoint-timeout",
            ),
            (
                &["--unaligned-max-inflight", "64MiB"],
                "--unaligned-max-inflight",
            ),
            (
                &[
                    "--checkpointing",
                    "aligned",
                    "--unaligned-max-inflight",
                    "64MiB",
                ],
                "--unaligned-max-inflight",
            ),
        ];
        for (args, flag) in cases {
            let error = policy(args).expect_err(&args.join(" "));
            assert!(
                error.contains(flag)
                    && error.contains("only applies with --checkpointing unaligned"),
                "{args:?}: {error}"
            );
        }
        // The refusal also stops `config` (before any storage is opened).
        let args = parse(&["--aligned-checkpoint-timeout", "1s", "--rest", "off"]).unwrap();
        assert!(matches!(
            args.config("runtime-args-test"),
            Err(AppError::Usage(_))
        ));
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        assert!(parse(&["--checkpointing", "sometimes"]).is_err());
        assert!(parse(&["--aligned-checkpoint-timeout", "soon"]).is_err());
    }
}
