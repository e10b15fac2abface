//! TODO(App): a stand-in for `flowstate::App`'s standard runtime flags, with
//! the names and meanings of `flowstate run`'s (a subset: parallelism,
//! checkpoint interval and directory, restore, output). The same file is in
//! every example; it goes away when `App` gives a user's `main` the engine's
//! flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowstate::runtime::checkpoint::{CoordinatorSettings, open_storage};
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom};
use flowstate::{ExecutionConfig, JobReport};

/// Checkpoint interval: a duration, or `off`.
#[derive(Clone, Copy, Debug)]
pub enum Interval {
    Off,
    Every(Duration),
}

fn parse_interval(text: &str) -> Result<Interval, String> {
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

#[derive(clap::Args, Debug)]
pub struct RuntimeFlags {
    /// Parallel instances of every operator [default: number of CPUs].
    #[arg(long)]
    pub parallelism: Option<u32>,
    /// Time between checkpoints (`500ms`, `1s`, `2m`), or `off`.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub checkpoint_interval: Interval,
    /// Where checkpoints go: a path, `file:///path`, `s3://bucket/prefix` or
    /// `memory://` [default: <temp dir>/flowstate/checkpoints/<job>].
    #[arg(long)]
    pub checkpoint_dir: Option<String>,
    /// Start from `latest` (the newest completed checkpoint under
    /// --checkpoint-dir; a fresh start if there is none), or from a savepoint
    /// or checkpoint directory.
    #[arg(long)]
    pub restore: Option<String>,
    /// Write the results into part files in this directory, exactly once.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl RuntimeFlags {
    /// The job's configuration, as `flowstate run` builds it from the same
    /// flags (everything not given here at its default).
    pub fn config(&self, job: &str) -> Result<ExecutionConfig, String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let mut config = ExecutionConfig {
            job_name: job.to_owned(),
            ..ExecutionConfig::with_parallelism(self.parallelism.unwrap_or(cpus))
        };
        config.validate().map_err(|e| e.to_string())?;
        let interval = match self.checkpoint_interval {
            Interval::Off => None,
            Interval::Every(every) => Some(every),
        };
        if interval.is_none() && self.restore.as_deref() == Some("latest") {
            return Err("--restore latest needs checkpoints (a --checkpoint-interval)".into());
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
            Some("latest") => RestoreFrom::Latest,
            Some(given) if Path::new(given).exists() => RestoreFrom::Location(
                std::path::absolute(given)
                    .map_err(|e| format!("--restore {given}: {e}"))?
                    .display()
                    .to_string(),
            ),
            // A checkpoint named relative to --checkpoint-dir (`<job id>/chk-<n>`).
            Some(given) => RestoreFrom::Path(given.to_owned()),
        };
        // Without checkpoints nothing is written there: a directory is opened
        // (and created) only to read a checkpoint named relative to it.
        let location = if interval.is_some() || matches!(restore, RestoreFrom::Path(_)) {
            dir.as_str()
        } else {
            "memory://flowstate-no-checkpoints"
        };
        let storage =
            open_storage(location).map_err(|e| format!("--checkpoint-dir {location}: {e}"))?;
        config.checkpointing = Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval,
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            savepoint_dir: None,
            restart: RestartStrategy::default(),
        });
        Ok(config)
    }
}

/// The run's last log line on standard error (the job id names its
/// checkpoints: `<checkpoint dir>/<job id>/chk-<n>`).
pub fn report(job: &str, report: &JobReport) {
    eprintln!(
        "job {job} finished: job_id={} records_in={} secs={:.2} restarts={} checkpoints={} restored_from={}",
        report.job_id.as_deref().unwrap_or("-"),
        report.records_in,
        report.duration.as_secs_f64(),
        report.restarts,
        report.completed_checkpoints,
        report
            .restored_from
            .map_or_else(|| "-".to_owned(), |id| id.to_string()),
    );
}
