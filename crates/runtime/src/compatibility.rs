//! The runtime's half of a savepoint compatibility check: what a job graph
//! declares, learned without running it, compared with a snapshot by
//! [`flowstate_checkpoint::compatibility`].
//!
//! Owns: the dry declaration pass ([`declare_job`]): every one- and
//! two-input operator's factory creates one instance (subtask 0, nothing
//! restored, on the heap backend, so no RocksDB directory is opened) whose
//! keyed operator opens its function, which declares its states; the
//! instance is then dropped without processing anything. Sources and sinks
//! are not created (no reader, no writer: no file or connection is opened);
//! they are compared by uid. Must not touch: tasks, channels, storage other
//! than reading the snapshot.

use flowstate_checkpoint::CheckpointError;
use flowstate_checkpoint::compatibility::{
    CheckOptions, CompatibilityReport, DeclaredOperator, JobUnderCheck, OperatorRole,
};
use flowstate_state::StateBackendConfig;
use thiserror::Error;

use crate::config::{ExecutionConfig, SubtaskInfo};
use crate::error::{BuildError, guarded};
use crate::graph::{JobGraph, NodeKind};

/// A compatibility check could not be made.
#[derive(Debug, Error)]
pub enum CheckError {
    /// The job's graph or configuration is not valid, or an operator could
    /// not be created to learn its declarations.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The snapshot could not be read.
    #[error("cannot read the snapshot")]
    Read(#[from] CheckpointError),
}

/// What `graph` run with `config` declares: every operator's uid, role and
/// keyed states, and the job's name, parameters and parallelism.
pub fn declare_job(
    graph: &JobGraph,
    config: &ExecutionConfig,
) -> Result<JobUnderCheck, BuildError> {
    config.validate()?;
    let mut operators = Vec::with_capacity(graph.nodes.len());
    for (id, node) in graph.nodes.iter().enumerate() {
        let uid = graph.uid(id);
        let info = SubtaskInfo {
            operator: node.name.clone(),
            uid: uid.clone(),
            index: 0,
            parallelism: config.parallelism,
            max_parallelism: config.max_parallelism,
            state_backend: StateBackendConfig::Heap,
            job_id: "compatibility-check".to_owned(),
            restored: None,
            clock: config.clock.clone(),
            metrics: crate::metrics::OperatorMetrics::detached(&node.name),
        };
        let create_error = |e: crate::error::TaskError| BuildError::Create {
            operator: node.name.clone(),
            subtask: 0,
            cause: e.to_string(),
        };
        let (role, keyed) = match &node.kind {
            NodeKind::Source(_) => (OperatorRole::Source, None),
            NodeKind::Operator(op) if op.is_sink() => (OperatorRole::Sink, None),
            NodeKind::Operator(op) => (
                OperatorRole::Operator,
                guarded(&node.name, || op.declare(&info)).map_err(create_error)?,
            ),
            NodeKind::TwoInput(op) => (
                OperatorRole::Operator,
                guarded(&node.name, || op.declare(&info)).map_err(create_error)?,
            ),
        };
        operators.push(DeclaredOperator {
            uid,
            name: node.name.clone(),
            role,
            keyed,
        });
    }
    Ok(JobUnderCheck {
        name: config.job_name.clone(),
        parameters: config.job_parameters.clone(),
        max_parallelism: config.max_parallelism,
        parallelism: config.parallelism,
        operators,
    })
}

/// Would the snapshot at `location` (a savepoint or checkpoint, as
/// `RestoreFrom::Location` takes it) restore into `graph` run with `config`,
/// under `options`? Runs nothing: see [`declare_job`].
pub fn check_snapshot(
    location: &str,
    graph: &JobGraph,
    config: &ExecutionConfig,
    options: CheckOptions,
) -> Result<CompatibilityReport, CheckError> {
    let job = declare_job(graph, config)?;
    Ok(flowstate_checkpoint::compatibility::check_snapshot(
        location, &job, options,
    )?)
}
