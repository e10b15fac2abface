//! The checkpoint coordinator's state machine.
//!
//! It decides when checkpoint n starts, collects one acknowledgement per task,
//! writes `_metadata` last (create-if-absent) once all arrived, keeps the last
//! `retain` completed checkpoints and deletes the rest, and aborts checkpoints
//! that time out or that a task declines. It does no I/O with tasks: the runtime
//! feeds it events and carries out the [`CoordinatorAction`]s it returns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::CheckpointId;
use crate::layout::{checkpoint_dir, metadata_path};
use crate::metadata::{CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskSnapshot};
use crate::storage::SharedStorage;

/// Defaults of the checkpoint settings.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_RETAIN: usize = 1;
pub const DEFAULT_TOLERABLE_FAILURES: u32 = 3;

/// How checkpoints are taken.
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    /// Time between the start of consecutive checkpoints.
    pub interval: Duration,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time between the end of one checkpoint and the start of the next.
    pub min_pause: Duration,
    /// Checkpoints in flight at once.
    pub max_concurrent: usize,
    /// Consecutive failed checkpoints after which the job fails.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept.
    pub retain: usize,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: DEFAULT_TOLERABLE_FAILURES,
            retain: DEFAULT_RETAIN,
        }
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorAction {
    /// Have every source record its position and inject barrier `id`.
    Trigger {
        id: CheckpointId,
        kind: SnapshotKind,
    },
    /// Checkpoint `id` is complete: notify every task (sinks commit).
    Complete { id: CheckpointId },
    /// Checkpoint `id` failed: tasks drop what they hold for it.
    Abort { id: CheckpointId, reason: String },
    /// Too many consecutive failures: fail the job.
    FailJob { reason: String },
}

/// One task's acknowledgement: what its operators wrote for checkpoint `id`.
#[derive(Debug, Clone)]
pub struct TaskAck {
    pub id: CheckpointId,
    pub task: usize,
    /// `(operator uid, operator name, snapshot of this instance)`.
    pub operators: Vec<(String, String, SubtaskSnapshot)>,
    pub bytes: u64,
    /// Synchronous part of the task's snapshot.
    pub sync_pause: Duration,
    /// Time from the first to the last barrier at an aligning input.
    pub alignment: Duration,
}

/// Figures of a completed checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub duration: Duration,
    pub bytes: u64,
    pub sync_pause_max: Duration,
    pub alignment_max: Duration,
}

struct Pending {
    kind: SnapshotKind,
    started: Instant,
    acks: HashMap<usize, TaskAck>,
}

/// The coordinator of one job.
pub struct Coordinator {
    storage: SharedStorage,
    job_id: String,
    settings: CoordinatorSettings,
    tasks: usize,
    max_parallelism: u32,
    parallelism: u32,
    next_id: CheckpointId,
    pending: BTreeMap<CheckpointId, Pending>,
    retained: VecDeque<CheckpointId>,
    last_trigger: Option<Instant>,
    last_finished: Option<Instant>,
    consecutive_failures: u32,
    completed: Vec<CheckpointStats>,
    failed: u64,
}

impl Coordinator {
    /// `tasks` acknowledgements complete a checkpoint. Ids continue after
    /// `last_id` (the restored checkpoint's, or 0), which stays retained until
    /// newer ones replace it.
    pub fn new(
        storage: SharedStorage,
        job_id: &str,
        settings: CoordinatorSettings,
        tasks: usize,
        parallelism: u32,
        max_parallelism: u32,
        restored: Option<CheckpointId>,
    ) -> Self {
        let mut coordinator = Self {
            storage,
            job_id: job_id.to_owned(),
            settings,
            tasks,
            max_parallelism,
            parallelism,
            next_id: restored.unwrap_or(0) + 1,
            pending: BTreeMap::new(),
            retained: restored.into_iter().collect(),
            last_trigger: Some(Instant::now()),
            last_finished: None,
            consecutive_failures: 0,
            completed: Vec::new(),
            failed: 0,
        };
        coordinator.adopt_existing();
        coordinator
    }

    /// A job that continues (after a restart or a crash) takes over what its
    /// earlier runs left in storage: completed checkpoints join the retained
    /// ones (and retention applies to them), directories of checkpoints that
    /// never completed are deleted, and ids continue after the highest seen.
    fn adopt_existing(&mut self) {
        let prefix = format!("{}/", self.job_id);
        let paths = match self.storage.list(&prefix) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!(
                    "cannot list earlier checkpoints of job {}: {e}",
                    self.job_id
                );
                return;
            }
        };
        let mut completed = std::collections::BTreeSet::new();
        let mut seen = std::collections::BTreeSet::new();
        for path in &paths {
            let Some(chk) = path
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            let Some(id) = chk
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<CheckpointId>().ok())
            else {
                continue;
            };
            seen.insert(id);
            if path.ends_with(crate::layout::METADATA_FILE) {
                completed.insert(id);
            }
        }
        for id in seen.difference(&completed) {
            if let Err(e) = self
                .storage
                .delete_prefix(&checkpoint_dir(&self.job_id, *id))
            {
                tracing::warn!(
                    checkpoint = id,
                    "cannot remove an incomplete checkpoint: {e}"
                );
            }
        }
        if let Some(highest) = seen.iter().next_back() {
            self.next_id = self.next_id.max(highest + 1);
        }
        // Completed checkpoints newer than the restored one are ones the restore
        // skipped as damaged: they can never be restored, and must not take a
        // retention place from a good one.
        let restored = self.retained.back().copied();
        let mut retained: Vec<CheckpointId> = Vec::new();
        for id in completed {
            if restored.is_some_and(|r| id > r) {
                tracing::warn!(
                    checkpoint = id,
                    "deleting a checkpoint the restore skipped as damaged"
                );
                if let Err(e) = self
                    .storage
                    .delete_prefix(&checkpoint_dir(&self.job_id, id))
                {
                    tracing::warn!(checkpoint = id, "cannot delete it: {e}");
                }
            } else {
                retained.push(id);
            }
        }
        for id in self.retained.drain(..) {
            if !retained.contains(&id) {
                retained.push(id);
            }
        }
        retained.sort_unstable();
        self.retained = retained.into();
        self.enforce_retention();
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn completed(&self) -> &[CheckpointStats] {
        &self.completed
    }

    pub fn failed_count(&self) -> u64 {
        self.failed
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// When the next periodic checkpoint is due (`None` if one must finish first).
    pub fn next_trigger_at(&self, now: Instant) -> Option<Instant> {
        if self.pending.len() >= self.settings.max_concurrent {
            return None;
        }
        let by_interval = self
            .last_trigger
            .map_or(now, |t| t + self.settings.interval);
        let by_pause = self
            .last_finished
            .map_or(now, |t| t + self.settings.min_pause);
        Some(by_interval.max(by_pause))
    }

    /// Starts checkpoint n now, regardless of the interval (the final checkpoint
    /// of a bounded job, or a savepoint). `None` while too many are in flight.
    pub fn trigger_now(&mut self, kind: SnapshotKind, now: Instant) -> Option<CoordinatorAction> {
        if self.pending.len() >= self.settings.max_concurrent {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Some(now);
        self.pending.insert(
            id,
            Pending {
                kind,
                started: now,
                acks: HashMap::new(),
            },
        );
        Some(CoordinatorAction::Trigger { id, kind })
    }

    /// Periodic work: start a due checkpoint, abort timed-out ones.
    pub fn tick(&mut self, now: Instant) -> Vec<CoordinatorAction> {
        let mut actions = self.tick_timeouts(now);
        if self.next_trigger_at(now).is_some_and(|at| at <= now) {
            actions.extend(self.trigger_now(SnapshotKind::Checkpoint, now));
        }
        actions
    }

    /// Aborts checkpoints that ran out of time.
    pub fn tick_timeouts(&mut self, now: Instant) -> Vec<CoordinatorAction> {
        let mut actions = Vec::new();
        let expired: Vec<CheckpointId> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) >= self.settings.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            actions.extend(self.abort(
                id,
                format!("not complete after {:?}", self.settings.timeout),
                now,
            ));
        }
        actions
    }

    /// A task acknowledged; completes the checkpoint when it was the last.
    pub fn on_ack(&mut self, ack: TaskAck, now: Instant) -> Vec<CoordinatorAction> {
        let Some(pending) = self.pending.get_mut(&ack.id) else {
            // A late ack of an aborted checkpoint: its task wrote files after the
            // abort removed the directory; remove them too.
            if !self.retained.contains(&ack.id)
                && let Err(e) = self
                    .storage
                    .delete_prefix(&checkpoint_dir(&self.job_id, ack.id))
            {
                tracing::warn!(
                    checkpoint = ack.id,
                    "cannot remove files of an aborted checkpoint: {e}"
                );
            }
            return Vec::new();
        };
        pending.acks.insert(ack.task, ack.clone());
        if pending.acks.len() < self.tasks {
            return Vec::new();
        }
        let Some(pending) = self.pending.remove(&ack.id) else {
            return Vec::new();
        };
        match self.finalize(ack.id, &pending) {
            Ok(stats) => {
                let mut stats = stats;
                stats.duration = now.duration_since(pending.started);
                self.completed.push(stats);
                self.consecutive_failures = 0;
                self.last_finished = Some(now);
                let mut actions = vec![CoordinatorAction::Complete { id: ack.id }];
                self.retained.push_back(ack.id);
                // Older pending checkpoints can no longer matter.
                let older: Vec<CheckpointId> =
                    self.pending.range(..ack.id).map(|(id, _)| *id).collect();
                for id in older {
                    actions.extend(self.abort(
                        id,
                        format!("subsumed by checkpoint {}", ack.id),
                        now,
                    ));
                }
                self.enforce_retention();
                actions
            }
            Err(reason) => {
                self.pending.insert(ack.id, pending);
                self.abort(ack.id, reason, now)
            }
        }
    }

    /// A task could not take its part of checkpoint `id`.
    pub fn on_decline(
        &mut self,
        id: CheckpointId,
        reason: String,
        now: Instant,
    ) -> Vec<CoordinatorAction> {
        if self.pending.contains_key(&id) {
            self.abort(id, reason, now)
        } else {
            Vec::new()
        }
    }

    fn abort(&mut self, id: CheckpointId, reason: String, now: Instant) -> Vec<CoordinatorAction> {
        if self.pending.remove(&id).is_none() {
            return Vec::new();
        }
        tracing::warn!(checkpoint = id, "checkpoint aborted: {reason}");
        self.failed += 1;
        self.consecutive_failures += 1;
        self.last_finished = Some(now);
        if let Err(e) = self
            .storage
            .delete_prefix(&checkpoint_dir(&self.job_id, id))
        {
            tracing::warn!(
                checkpoint = id,
                "could not remove files of aborted checkpoint: {e}"
            );
        }
        let mut actions = vec![CoordinatorAction::Abort {
            id,
            reason: reason.clone(),
        }];
        if self.consecutive_failures > self.settings.tolerable_failures {
            actions.push(CoordinatorAction::FailJob {
                reason: format!(
                    "{} consecutive checkpoints failed (tolerated: {}); last: checkpoint {id}: {reason}",
                    self.consecutive_failures, self.settings.tolerable_failures
                ),
            });
        }
        actions
    }

    fn finalize(&mut self, id: CheckpointId, pending: &Pending) -> Result<CheckpointStats, String> {
        let mut operators: Vec<OperatorSnapshot> = Vec::new();
        let (mut bytes, mut sync_pause_max, mut alignment_max) =
            (0, Duration::ZERO, Duration::ZERO);
        let mut acks: Vec<&TaskAck> = pending.acks.values().collect();
        acks.sort_by_key(|a| a.task);
        for ack in acks {
            bytes += ack.bytes;
            sync_pause_max = sync_pause_max.max(ack.sync_pause);
            alignment_max = alignment_max.max(ack.alignment);
            for (uid, name, subtask) in &ack.operators {
                let index = match operators.iter().position(|o| &o.uid == uid) {
                    Some(i) => i,
                    None => {
                        operators.push(OperatorSnapshot {
                            uid: uid.clone(),
                            name: name.clone(),
                            parallelism: self.parallelism,
                            subtasks: Vec::new(),
                        });
                        operators.len() - 1
                    }
                };
                operators[index].subtasks.push(subtask.clone());
            }
        }
        for operator in &mut operators {
            operator.subtasks.sort_by_key(|s| s.subtask);
        }
        let metadata = CheckpointMetadata {
            job_id: self.job_id.clone(),
            checkpoint_id: id,
            kind: pending.kind,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            max_parallelism: self.max_parallelism,
            operators,
        };
        let encoded = metadata.encode().map_err(|e| e.to_string())?;
        // Pair assertion: the metadata reads back as what we meant to write.
        match CheckpointMetadata::decode("(new metadata)", &encoded) {
            Ok(decoded) if decoded == metadata => {}
            _ => return Err("metadata does not read back identically".into()),
        }
        self.storage
            .put_if_absent(&metadata_path(&self.job_id, id), encoded)
            .map_err(|e| format!("writing metadata: {e}"))?;
        Ok(CheckpointStats {
            id,
            kind: pending.kind,
            duration: Duration::ZERO,
            bytes,
            sync_pause_max,
            alignment_max,
        })
    }

    /// The job stops: abort whatever is in flight (its files are removed).
    pub fn abort_all(&mut self, reason: &str, now: Instant) {
        let ids: Vec<CheckpointId> = self.pending.keys().copied().collect();
        for id in ids {
            self.abort(id, reason.to_owned(), now);
        }
    }

    fn enforce_retention(&mut self) {
        let retain = self.settings.retain.max(1);
        while self.retained.len() > retain {
            let Some(old) = self.retained.pop_front() else {
                break;
            };
            // Metadata first: a half-deleted checkpoint must never look complete.
            let metadata = metadata_path(&self.job_id, old);
            let result = self.storage.delete(&metadata).and_then(|()| {
                self.storage
                    .delete_prefix(&checkpoint_dir(&self.job_id, old))
            });
            if let Err(e) = result {
                tracing::warn!(checkpoint = old, "could not delete old checkpoint: {e}");
            }
        }
    }
}
