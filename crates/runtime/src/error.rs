//! Errors of building and running a job.
//!
//! Owns: the error types and turning a user error or panic into a
//! [`TaskError`] (`guarded`). Must not touch: any other module of the runtime.

use thiserror::Error;

/// An error returned by user code (functions, sources, sinks).
pub type UserError = Box<dyn std::error::Error + Send + Sync>;

/// A task failed; names the operator and the cause.
#[derive(Debug, Error)]
pub enum TaskError {
    #[error("operator '{operator}' failed: {cause}")]
    Operator { operator: String, cause: String },
    #[error("operator '{operator}' panicked: {message}")]
    Panic { operator: String, message: String },
    #[error("a channel into '{task}' closed before the end of its input")]
    ChannelClosed { task: String },
    /// Recording in-flight records of an unaligned checkpoint failed.
    #[error("'{task}' could not record its in-flight records: {reason}")]
    ChannelState { task: String, reason: String },
    /// A channel out of the task lost its consumer (its task ended or failed,
    /// or, across processes, its connection was lost).
    #[error("a channel out of '{task}' closed: its consumer is gone")]
    OutputClosed { task: String },
}

impl TaskError {
    /// An operator's error; the message is the cause's whole chain of sources,
    /// so that e.g. the I/O error under a connector's error is not lost.
    pub fn operator(operator: &str, cause: UserError) -> Self {
        TaskError::Operator {
            operator: operator.to_owned(),
            cause: error_chain(cause.as_ref()),
        }
    }

    pub fn panic(operator: &str, payload: Box<dyn std::any::Any + Send>) -> Self {
        TaskError::Panic {
            operator: operator.to_owned(),
            message: panic_message(payload.as_ref()),
        }
    }
}

/// Runs `f` on behalf of operator `name`, turning an error or a panic into a
/// [`TaskError`] that names the operator.
#[inline]
pub(crate) fn guarded<R>(
    name: &str,
    f: impl FnOnce() -> Result<R, UserError>,
) -> Result<R, TaskError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(cause)) => Err(TaskError::operator(name, cause)),
        Err(payload) => Err(TaskError::panic(name, payload)),
    }
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// The job graph cannot be turned into tasks.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("cannot create '{operator}' (subtask {subtask}): {cause}")]
    Create {
        operator: String,
        subtask: u32,
        cause: String,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid job graph: {0}")]
    Graph(String),
    #[error("cannot restore: {0}")]
    Restore(String),
    /// The snapshot records other job parameters or another job name.
    #[error("cannot restore: {0}")]
    ParametersChanged(Box<flowstate_checkpoint::ParameterMismatch>),
    /// A channel could not be set up through the transport.
    #[error("cannot set up a channel between processes: {0}")]
    Network(#[from] crate::remote::TransportError),
}

/// A job did not complete.
#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("task '{task}' failed")]
    TaskFailed {
        task: String,
        #[source]
        source: TaskError,
    },
    #[error("job was cancelled")]
    Cancelled,
    /// A channel between processes failed (bytes that do not decode, a
    /// lost connection): the attempt's tasks saw only their channel close.
    #[error("the network between processes failed: {0}")]
    Network(crate::remote::TransportError),
    /// The attempt could not be deployed on the task managers.
    #[error("cannot deploy the attempt on the task managers: {0}")]
    Deploy(String),
    /// A task manager's part of the attempt failed.
    #[error("task manager {process} failed: {cause}")]
    TaskManager { process: u32, cause: String },
    /// A task manager's control connection was lost (it died, hangs, or the
    /// network failed).
    #[error("task manager {process} was lost: {cause}")]
    TaskManagerLost { process: u32, cause: String },
    /// The job was cancelled but did not stop within the cancellation
    /// timeout: some task is blocked where it cannot see the cancel flag.
    #[error(
        "job was cancelled but did not stop within {timeout:?}; still running: {}",
        .running.join(", ")
    )]
    CancelTimeout {
        timeout: std::time::Duration,
        /// The tasks (or threads) that had not stopped.
        running: Vec<String>,
    },
    #[error("no task can make progress and the job has not finished (a deadlock)")]
    Stalled,
    #[error("could not start a thread: {0}")]
    Spawn(std::io::Error),
    #[error("checkpointing failed the job: {0}")]
    Checkpointing(String),
    #[error(transparent)]
    Restore(#[from] flowstate_checkpoint::CheckpointError),
    /// Another run holds the job's checkpoint directory, or this run lost it.
    #[error(transparent)]
    Lease(#[from] flowstate_checkpoint::LeaseError),
    /// The newest checkpoint cannot be restored, and falling back to an older
    /// one would publish again output the job's sinks already committed.
    #[error(
        "cannot restore {newest} ({reason}); the older checkpoint {fallback} is intact, but \
         restoring it would publish again the output that sink(s) {sinks} committed after it. \
         Repair or put back the damaged file and run again, or accept the fallback and its \
         duplicate output knowingly"
    )]
    FallbackRefused {
        /// The newest snapshot that could not be loaded.
        newest: String,
        reason: String,
        /// The snapshot that could be restored instead.
        fallback: String,
        /// Uids of the sinks that commit on checkpoints.
        sinks: String,
    },
}

/// `error: source: source ...`, the way a user should read an error.
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
