//! The errors of [`flowstate::app`](super): what stops a run before, while or
//! after its job runs. Owns [`AppError`] and nothing else.
//!
//! These messages may name flags and configuration keys: the app layer is
//! where they are defined. Errors from below (the runtime's [`JobError`], a
//! storage error) come as sources, so a printed chain reads "what the app
//! was doing: what went wrong below".

use std::path::PathBuf;

use flowstate_runtime::JobError;

/// Any error a job's build function returns (`?` converts every error type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Flags (or configuration keys) that do not make a runnable job; the
    /// message names them.
    #[error("{0}")]
    Usage(String),
    /// The configuration file cannot be read, or one of its keys is unknown
    /// or has a bad value (`key` names it).
    #[error("{}: {message}", file.display())]
    ConfigFile {
        file: PathBuf,
        key: Option<String>,
        message: String,
    },
    /// What a flag names could not be used (`context`: the flag and its value).
    #[error("{context}")]
    Flag {
        context: String,
        #[source]
        source: BoxError,
    },
    /// The job's own build function (or its result line) failed.
    #[error(transparent)]
    Build(BoxError),
    /// The job could not be started.
    #[error(transparent)]
    Start(Box<JobError>),
    /// The job failed while running (`after`: what it had done).
    #[error("job {label} failed after {after}")]
    Failed {
        label: String,
        after: String,
        #[source]
        source: Box<JobError>,
    },
    /// The job was cancelled (not by a signal this process asked to cancel).
    #[error("job {label} was cancelled after {after}")]
    Cancelled { label: String, after: String },
    /// A restore fell back past output the job's sinks already published.
    #[error(
        "job {label} failed after {after}: {error} (run again with \
         --allow-fallback-duplicates to accept them)"
    )]
    FallbackRefused {
        label: String,
        after: String,
        error: Box<JobError>,
    },
    /// The snapshot to restore was taken with other job parameters.
    #[error("job {label} did not start: {error} (--allow-parameter-change)")]
    ParametersChanged { label: String, error: Box<JobError> },
    /// Another run holds the job's lease.
    #[error("job {label} did not start: {error} (--take-over-lease)")]
    LeaseHeld { label: String, error: Box<JobError> },
    /// `--check-savepoint`: the snapshot cannot be read or compared.
    #[error("cannot check {location}")]
    Check {
        location: String,
        #[source]
        source: BoxError,
    },
    /// `--check-savepoint`: the report (printed) says a restore would fail.
    #[error("{location} would not restore into this job (see the report above)")]
    NotRestorable { location: String },
    /// Anything else from below, shown as it is.
    #[error(transparent)]
    Other(BoxError),
}

impl AppError {
    /// The process's exit status for this error: 2 for flags, configuration
    /// and a snapshot `--check-savepoint` cannot read, 1 otherwise (a job
    /// that failed, a snapshot that would not restore).
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Usage(_) | AppError::ConfigFile { .. } | AppError::Check { .. } => 2,
            _ => 1,
        }
    }
}

/// `error` and its sources, `: `-separated (what `{:#}` of `anyhow` prints).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
