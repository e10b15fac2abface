//! Execution settings: every limit is named here with its default.
//!
//! Owns: [`ExecutionConfig`], [`CheckpointingConfig`], [`SubtaskInfo`] and their
//! validation. Must not touch: running jobs; it names the savepoint-target
//! policy (`savepoint_target`) and the restart strategy (`restart`) but decides
//! neither.

use flowstate_state::{
    DEFAULT_MAX_PARALLELISM, KeyGroupRange, MAX_PARALLELISM_LIMIT, StateBackendConfig,
};

use crate::error::BuildError;

/// Records per batch a task sends downstream (at most; partial batches are sent
/// when a task runs out of input).
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// The longest a record waits in a partly filled outgoing batch while its task
/// keeps getting input (like Flink's `execution.buffer-timeout`, 100 ms there):
/// a task that runs out of input sends its partial batches at once; this bounds
/// the wait of a source that trickles records without ever running dry.
pub const BUFFER_TIMEOUT_MS: i64 = 5;
/// Batches a channel holds before its producer must wait.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 16;
/// Largest accepted parallelism.
pub const MAX_PARALLELISM_PER_OPERATOR: u32 = 1024;
/// At-most-once: the most records a source task holds read ahead of what it
/// emitted, waiting for the reservation of the position after them (see
/// [`Guarantee::AtMostOnce`]), in batches of `batch_size`.
pub const READ_AHEAD_BATCHES: usize = 64;
/// How long a cancelled job may take to stop before [`crate::RunningJob::join`]
/// gives up on it (like Flink's `task.cancellation.timeout`): a task blocked in
/// user code or a system call never sees the cancel flag.
pub const DEFAULT_CANCELLATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The delivery guarantee of checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Barriers are aligned: each record affects state once.
    #[default]
    ExactlyOnce,
    /// Barriers are not aligned: lower latency, records may be replayed twice.
    AtLeastOnce,
    /// Barriers are not aligned and sources never rewind: a source emits
    /// records only once its position after them is durable (a read-ahead
    /// reservation, see [`crate::reservation`]), and after a failure or a
    /// crash resumes from there. State comes from the latest checkpoint, so
    /// what happened between it and the failure is lost: an event may be
    /// lost, never counted twice.
    AtMostOnce,
}

/// What a job starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RestoreFrom {
    #[default]
    Nothing,
    /// The newest completed checkpoint in the storage (nothing if there is none).
    Latest,
    /// A checkpoint directory or its `_metadata`, relative to the storage root.
    Path(String),
    /// A savepoint or checkpoint anywhere (a path or URL, see
    /// [`flowstate_checkpoint::restore::open_snapshot`]).
    Location(String),
}

/// How often and how soon a failed job is restarted from its latest checkpoint:
/// defined, with its defaults, next to the policy that applies it.
pub use crate::restart::RestartStrategy;

/// Checkpoint settings of a job: its coordinator, and so its savepoints and
/// restores.
///
/// Without periodic checkpoints (`settings.interval` `None`) the job still
/// takes savepoints (also stop-with-savepoint) and restores a snapshot named
/// by `restore`, but writes nothing to `storage`: no checkpoint, no final
/// checkpoint at the end of bounded input (sinks publish at `finish`), no
/// restore pointer, no lease. Such a job is not restarted after a failure
/// (there is no checkpoint to go back to, and replaying from its start would
/// publish twice what its sinks already published), and cannot restore
/// [`RestoreFrom::Latest`].
#[derive(Clone)]
pub struct CheckpointingConfig {
    pub storage: flowstate_checkpoint::storage::SharedStorage,
    pub settings: flowstate_checkpoint::CoordinatorSettings,
    pub guarantee: Guarantee,
    /// The job's id in the storage; generated when `None` (and taken over from
    /// the restored checkpoint with [`RestoreFrom::Latest`]).
    pub job_id: Option<String>,
    pub restore: RestoreFrom,
    /// Restoring may drop state of operators this job no longer has
    /// (otherwise such a restore fails, naming them).
    pub allow_non_restored_state: bool,
    /// Restoring the latest checkpoint may fall back past newer ones that
    /// cannot be loaded even when the job's sinks already published their
    /// output (which is then published again: duplicates). Off: such a
    /// restore fails, naming the damaged snapshot.
    pub allow_fallback_duplicates: bool,
    pub restart: RestartStrategy,
    /// Where savepoints go when a request names no directory.
    pub savepoint_dir: Option<String>,
}

impl std::fmt::Debug for CheckpointingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointingConfig")
            .field("storage", &self.storage.describe())
            .field("settings", &self.settings)
            .field("guarantee", &self.guarantee)
            .field("job_id", &self.job_id)
            .field("restore", &self.restore)
            .field("allow_non_restored_state", &self.allow_non_restored_state)
            .field("allow_fallback_duplicates", &self.allow_fallback_duplicates)
            .field("restart", &self.restart)
            .field("savepoint_dir", &self.savepoint_dir)
            .finish()
    }
}

/// How a job runs.
#[derive(Debug, Clone)]
pub struct ExecutionConfig {
    /// The job's name, for people (the HTTP API, logs). Recorded in every
    /// snapshot with [`Self::job_parameters`]; a restore compares it.
    pub job_name: String,
    /// Parallel instances of every operator.
    pub parallelism: u32,
    /// Number of key groups (upper bound on parallelism after a rescale).
    pub max_parallelism: u32,
    /// Records per batch between tasks.
    pub batch_size: usize,
    /// How long a partial batch may wait for more records before it is sent
    /// ([`BUFFER_TIMEOUT_MS`]), on `clock`. `None`: it waits for a full
    /// batch, a barrier, a watermark or the end of the task's input (the
    /// deterministic executor on a wall clock, whose runs must not depend
    /// on how fast the machine is).
    pub buffer_timeout_ms: Option<i64>,
    /// Batches per channel.
    pub channel_capacity: usize,
    /// Worker threads; subtask `i` of every operator runs on worker `i % workers`.
    pub workers: usize,
    /// Where keyed state lives.
    pub state_backend: StateBackendConfig,
    /// Checkpoints, savepoints, restore and restarts; `None` runs without
    /// any (no coordinator: savepoint requests are refused).
    pub checkpointing: Option<CheckpointingConfig>,
    /// Once the job was cancelled, how long `join` waits for it to stop
    /// before it returns [`crate::JobError::CancelTimeout`] naming the tasks
    /// still running (their threads are left behind; a process exit ends them).
    pub cancellation_timeout: std::time::Duration,
    /// Which directories a savepoint request may name (with checkpointing):
    /// by default only `checkpointing.savepoint_dir` and what lies under it.
    /// Here rather than in [`CheckpointingConfig`] so that adding it broke no
    /// struct literal of that type.
    pub savepoint_policy: crate::savepoint_target::SavepointTargetPolicy,
    /// How a job with checkpointing holds the lease of its directory in the
    /// checkpoint storage (one run per job id; see
    /// [`flowstate_checkpoint::lease`]): its TTL, renewal interval, and
    /// whether to take over a lease that looks alive. Here rather than in
    /// [`CheckpointingConfig`] so that adding it broke no struct literal of
    /// that type.
    pub lease: flowstate_checkpoint::LeaseSettings,
    /// Processing time for every operator (TTL, processing-time timers):
    /// the system clock unless a test or simulation gives its own.
    pub clock: flowstate_state::SharedClock,
    /// The job's parameters (see
    /// [`flowstate_checkpoint::job::JobParameters`]): recorded with the job
    /// name in every checkpoint's and savepoint's metadata. Restoring a
    /// snapshot that records other parameters (or another job name) fails
    /// naming every difference, unless [`Self::allow_parameter_change`].
    pub job_parameters: flowstate_checkpoint::JobParameters,
    /// Restoring a snapshot taken with other job parameters or another job
    /// name is intended: it proceeds (with a warning naming the
    /// differences). Next to `allow_non_restored_state` in meaning; here
    /// rather than in [`CheckpointingConfig`] so that adding it broke no
    /// struct literal of that type.
    pub allow_parameter_change: bool,
    /// The job spans processes (or a test sends its exchanges through a
    /// transport): which subtasks run here, and the transport of the
    /// channels that cross. `None`: every subtask runs in this process on
    /// local channels.
    pub network: Option<crate::remote::NetworkPlacement>,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            job_name: "job".to_owned(),
            parallelism: 1,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            batch_size: DEFAULT_BATCH_SIZE,
            buffer_timeout_ms: Some(BUFFER_TIMEOUT_MS),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            workers: 1,
            state_backend: StateBackendConfig::Heap,
            checkpointing: None,
            cancellation_timeout: DEFAULT_CANCELLATION_TIMEOUT,
            savepoint_policy: crate::savepoint_target::SavepointTargetPolicy::default(),
            lease: flowstate_checkpoint::LeaseSettings::default(),
            clock: flowstate_state::system_clock(),
            job_parameters: flowstate_checkpoint::JobParameters::new(),
            allow_parameter_change: false,
            network: None,
        }
    }
}

impl ExecutionConfig {
    /// A configuration with `parallelism` instances on as many workers.
    pub fn with_parallelism(parallelism: u32) -> Self {
        Self {
            parallelism,
            workers: parallelism as usize,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), BuildError> {
        let fail = |m: String| Err(BuildError::Config(m));
        if self.parallelism == 0 || self.parallelism > MAX_PARALLELISM_PER_OPERATOR {
            return fail(format!(
                "parallelism {} is not between 1 and {MAX_PARALLELISM_PER_OPERATOR}",
                self.parallelism
            ));
        }
        if self.max_parallelism == 0 || self.max_parallelism > MAX_PARALLELISM_LIMIT {
            return fail(format!(
                "max parallelism {} is not between 1 and {MAX_PARALLELISM_LIMIT}",
                self.max_parallelism
            ));
        }
        if self.parallelism > self.max_parallelism {
            return fail(format!(
                "parallelism {} exceeds max parallelism {} (each instance needs at least one key group)",
                self.parallelism, self.max_parallelism
            ));
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return fail(format!(
                "batch size {} is not between 1 and 2^20",
                self.batch_size
            ));
        }
        if self.channel_capacity == 0 || self.channel_capacity > 1 << 16 {
            return fail(format!(
                "channel capacity {} is not between 1 and 65536",
                self.channel_capacity
            ));
        }
        if self.workers == 0 || self.workers > 1024 {
            return fail(format!(
                "workers {} is not between 1 and 1024",
                self.workers
            ));
        }
        if self.cancellation_timeout.is_zero() {
            return fail("the cancellation timeout must be longer than zero".to_owned());
        }
        if let Err(e) = flowstate_checkpoint::job::check_job_name(&self.job_name) {
            return fail(e.to_string());
        }
        if let Err(e) = self.job_parameters.validate() {
            return fail(e.to_string());
        }
        if let Err(e) = self.lease.validate() {
            return fail(e.to_string());
        }
        if let Some(c) = &self.checkpointing {
            c.validate()?;
            c.restart.validate()?;
        }
        Ok(())
    }
}

impl CheckpointingConfig {
    /// Refuses what cannot work with these settings.
    pub fn validate(&self) -> Result<(), BuildError> {
        if !self.settings.periodic() && self.restore == RestoreFrom::Latest {
            return Err(BuildError::Config(
                "restoring the latest checkpoint needs periodic checkpoints: a job without \
                 them keeps nothing in the checkpoint storage to resume from; restore a \
                 savepoint or checkpoint by its location instead"
                    .to_owned(),
            ));
        }
        if let flowstate_checkpoint::AlignmentPolicy::Unaligned {
            inflight_bytes_max, ..
        } = self.settings.alignment
        {
            // Overtaking without recording would lose records, and recording
            // without alignment gains nothing: Flink's rule too.
            if self.guarantee != Guarantee::ExactlyOnce {
                return Err(BuildError::Config(format!(
                    "unaligned checkpoints need exactly-once, not {:?}",
                    self.guarantee
                )));
            }
            if self.settings.max_concurrent > 1 {
                return Err(BuildError::Config(
                    "unaligned checkpoints allow one checkpoint in flight at a time".to_owned(),
                ));
            }
            if inflight_bytes_max == 0 {
                return Err(BuildError::Config(
                    "the in-flight limit of unaligned checkpoints must be above zero".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// State restored into one operator instance.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    /// Keyed state of the key groups this instance owns.
    pub keyed: flowstate_state::RestoredKeyedState,
    /// Operator list states, already redistributed for this instance.
    pub lists: Vec<flowstate_checkpoint::OperatorListState>,
}

impl RestoredState {
    /// The elements of list `name`, if it was restored.
    pub fn list(&self, name: &str) -> Option<&[Vec<u8>]> {
        self.lists
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.elements.as_slice())
    }
}

/// What one parallel instance knows about itself when it is created.
#[derive(Debug, Clone)]
pub struct SubtaskInfo {
    /// The operator's name.
    pub operator: String,
    /// The operator's stable id: its state is matched by it on restore.
    pub uid: String,
    /// This instance's index, `0 <= index < parallelism`.
    pub index: u32,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub state_backend: StateBackendConfig,
    /// The job's id (names the backend's local files).
    pub job_id: String,
    /// State from the checkpoint the job restores, if any.
    pub restored: Option<std::sync::Arc<RestoredState>>,
    /// Processing time (TTL, processing-time timers): the job's clock.
    pub clock: flowstate_state::SharedClock,
    /// The instance's metrics: a connector registers its own gauges there
    /// ([`crate::metrics::OperatorMetrics::gauge`], e.g. a Kafka source's
    /// lag per partition).
    pub metrics: std::sync::Arc<crate::metrics::OperatorMetrics>,
}

impl SubtaskInfo {
    /// Test helper: instance `index` of `parallelism` with nothing restored.
    pub fn new(operator: &str, index: u32, parallelism: u32, max_parallelism: u32) -> Self {
        Self {
            operator: operator.to_owned(),
            uid: operator.to_owned(),
            index,
            parallelism,
            max_parallelism,
            state_backend: StateBackendConfig::Heap,
            job_id: "local".to_owned(),
            restored: None,
            clock: flowstate_state::system_clock(),
            metrics: crate::metrics::OperatorMetrics::detached(operator),
        }
    }

    /// The key groups this instance owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        KeyGroupRange::for_operator(self.index, self.parallelism, self.max_parallelism)
    }

    /// This instance as the state backend sees it.
    pub fn backend_instance(&self) -> flowstate_state::BackendInstance {
        flowstate_state::BackendInstance {
            job_id: self.job_id.clone(),
            operator_uid: self.uid.clone(),
            subtask: self.index,
            range: self.key_group_range(),
            max_parallelism: self.max_parallelism,
            clock: self.clock.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flowstate_checkpoint::{AlignmentPolicy, CoordinatorSettings};

    use super::*;

    fn checkpointing(guarantee: Guarantee, alignment: AlignmentPolicy) -> CheckpointingConfig {
        CheckpointingConfig {
            storage: flowstate_checkpoint::open_storage("memory://").expect("memory storage"),
            settings: CoordinatorSettings {
                interval: Some(Duration::from_secs(1)),
                alignment,
                ..CoordinatorSettings::default()
            },
            guarantee,
            job_id: None,
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::default(),
            savepoint_dir: None,
        }
    }

    #[test]
    fn unaligned_checkpoints_need_exactly_once_one_in_flight_and_a_limit() {
        let unaligned = AlignmentPolicy::Unaligned {
            aligned_timeout: Duration::ZERO,
            inflight_bytes_max: 1 << 20,
        };
        assert!(
            checkpointing(Guarantee::ExactlyOnce, unaligned)
                .validate()
                .is_ok()
        );
        assert!(
            checkpointing(Guarantee::AtLeastOnce, AlignmentPolicy::Aligned)
                .validate()
                .is_ok()
        );
        for guarantee in [Guarantee::AtLeastOnce, Guarantee::AtMostOnce] {
            let e = checkpointing(guarantee, unaligned).validate().unwrap_err();
            assert!(e.to_string().contains("exactly-once"), "{e}");
        }
        let mut two = checkpointing(Guarantee::ExactlyOnce, unaligned);
        two.settings.max_concurrent = 2;
        assert!(
            two.validate()
                .unwrap_err()
                .to_string()
                .contains("one checkpoint")
        );
        let zero = AlignmentPolicy::Unaligned {
            aligned_timeout: Duration::ZERO,
            inflight_bytes_max: 0,
        };
        let e = checkpointing(Guarantee::ExactlyOnce, zero)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
