//! The checkpoint coordinator as a pure state machine, and restore's choice of
//! checkpoint.
//!
//! The coordinator does no I/O with tasks: these tests play the runtime. They
//! trigger checkpoints with a clock of their own, `put` the task files an
//! uploader would write, acknowledge or decline, and look at what the storage
//! holds afterwards (through a wrapper that records every write and delete).
//!
//! What is held to account (issue 3, "Retention and cleanup" and "Recovery"):
//! `_metadata` is written only once every task acknowledged, last, and with
//! create-if-absent; checkpoint ids only grow; `retain N` keeps exactly the
//! newest N completed checkpoints; aborted (declined, timed-out, subsumed)
//! checkpoints' files are deleted; too many consecutive failures fail the job;
//! late acknowledgements are ignored; no file of a retained checkpoint is ever
//! deleted. `restore::load_latest` picks the newest checkpoint that verifies,
//! falls back when it is damaged and names the damaged file when all are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate_checkpoint::coordinator::{
    AlignmentPolicy, BarrierAlignment, COMPLETED_STATS_MAX, Coordinator, CoordinatorAction,
    CoordinatorSettings, Deletion, ExistingCheckpoints, Now, SavepointRequest, Store, TaskAck,
};
use flowstate_checkpoint::format::{KEYED_MAGIC, METADATA_MAGIC, seal};
use flowstate_checkpoint::keyed_file::KEYED_FILE_VERSION;
use flowstate_checkpoint::layout::{
    checkpoint_dir, keyed_state_path, metadata_path, savepoint_keyed_path,
};
use flowstate_checkpoint::metadata::{
    CheckpointMetadata, FileRef, KeyGroupEntry, KeyedStateHandle, OperatorListState, SnapshotKind,
    SubtaskSnapshot,
};
use flowstate_checkpoint::restore::{
    completed_checkpoints, load, load_latest, load_latest_of, open_snapshot,
};
use flowstate_checkpoint::storage::{CheckpointStorage, SharedStorage, StorageError, open_storage};
use flowstate_checkpoint::{CheckpointError, CheckpointId};
use flowstate_state::{KeyGroupRange, RedistributionMode};

#[path = "support/driver.rs"]
mod driver;
use driver::drive;

const MAX_PARALLELISM: u32 = 8;
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(30);
const KEYED_UID: &str = "count";
const SOURCE_UID: &str = "source";

// ---------------------------------------------------------------------------
// A storage that records what was written and deleted.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put(String),
    PutIfAbsent(String),
    Delete(String),
    DeletePrefix(String),
}

struct Recording {
    inner: SharedStorage,
    log: Mutex<Vec<Op>>,
}

impl Recording {
    fn log(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }

    fn record(&self, op: Op) {
        self.log.lock().unwrap().push(op);
    }
}

impl CheckpointStorage for Recording {
    fn describe(&self) -> String {
        format!("recording {}", self.inner.describe())
    }
    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.record(Op::Put(path.to_owned()));
        self.inner.put(path, bytes)
    }
    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.record(Op::PutIfAbsent(path.to_owned()));
        self.inner.put_if_absent(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        self.inner.get(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.record(Op::Delete(path.to_owned()));
        self.inner.delete(path)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        self.record(Op::DeletePrefix(prefix.to_owned()));
        self.inner.delete_prefix(prefix)
    }
}

/// A memory storage no other test uses.
fn unique_memory() -> SharedStorage {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    open_storage(&format!(
        "memory://coordinator-test-{}-{n}",
        std::process::id()
    ))
    .unwrap()
}

// ---------------------------------------------------------------------------
// Task files and acknowledgements, as an uploader would produce them.

/// Writes the keyed state file of `task` for checkpoint `id` (key groups of
/// instance `task` of `parallelism`, one section per key group) and returns
/// the snapshot an uploader would acknowledge with.
fn write_task_file(
    storage: &dyn CheckpointStorage,
    job: &str,
    id: CheckpointId,
    task: usize,
    parallelism: u32,
) -> SubtaskSnapshot {
    let range = KeyGroupRange::for_operator(task as u32, parallelism, MAX_PARALLELISM);
    let mut payload = Vec::new();
    let mut groups = Vec::new();
    for g in range.iter() {
        let section = format!("{job}/{id}/{task}/g{g};").into_bytes();
        groups.push(KeyGroupEntry {
            key_group: g,
            offset: 8 + payload.len() as u64,
            length: section.len() as u64,
            entries: 1,
        });
        payload.extend_from_slice(&section);
    }
    let sealed = seal(KEYED_MAGIC, KEYED_FILE_VERSION, &payload);
    let crc32c = u32::from_le_bytes(sealed[sealed.len() - 4..].try_into().unwrap());
    let path = keyed_state_path(job, id, KEYED_UID, task as u32);
    let size = sealed.len() as u64;
    storage.put(&path, sealed).unwrap();
    SubtaskSnapshot {
        subtask: task as u32,
        keyed: Some(KeyedStateHandle {
            file: FileRef { path, size, crc32c },
            key_group_start: range.start,
            key_group_end: range.end,
            groups,
            key_type: String::new(),
        }),
        native: None,
        lists: vec![OperatorListState {
            name: "positions".into(),
            mode: RedistributionMode::Split,
            elements: vec![format!("{id}:{task}").into_bytes()],
        }],
        channels: None,
    }
}

fn ack(id: CheckpointId, task: usize, snapshot: SubtaskSnapshot) -> TaskAck {
    // As the upload threads count them: the keyed file and the list elements.
    let lists: u64 = snapshot
        .lists
        .iter()
        .flat_map(|l| &l.elements)
        .map(|e| e.len() as u64)
        .sum();
    let bytes = snapshot.keyed.as_ref().map_or(0, |k| k.file.size) + lists;
    TaskAck {
        id,
        task,
        operators: vec![(KEYED_UID.into(), "Count and sum".into(), snapshot)],
        bytes,
        sync_pause: Duration::from_micros(10 + task as u64),
        alignment: Duration::ZERO,
        unaligned: false,
        persisted_bytes: 0,
    }
}

fn settings(retain: usize, tolerable_failures: u32, max_concurrent: usize) -> CoordinatorSettings {
    CoordinatorSettings {
        interval: Some(INTERVAL),
        timeout: TIMEOUT,
        min_pause: Duration::ZERO,
        max_concurrent,
        tolerable_failures,
        retain,
        alignment: AlignmentPolicy::Aligned,
    }
}

// ---------------------------------------------------------------------------
// The test's stand-in for the runtime.

struct Harness {
    recording: Arc<Recording>,
    storage: SharedStorage,
    job: String,
    tasks: usize,
    coordinator: Coordinator,
    /// When the coordinator started; the test's clock runs from here.
    t0: Now,
    clock: Duration,
    /// Files written per checkpoint, with their content.
    written: BTreeMap<CheckpointId, BTreeMap<String, Vec<u8>>>,
}

impl Harness {
    fn new(job: &str, settings: CoordinatorSettings, tasks: usize) -> Self {
        Self::on(unique_memory(), job, settings, tasks, None)
    }

    fn on(
        inner: SharedStorage,
        job: &str,
        settings: CoordinatorSettings,
        tasks: usize,
        restored: Option<CheckpointId>,
    ) -> Self {
        let recording = Arc::new(Recording {
            inner,
            log: Mutex::new(Vec::new()),
        });
        let storage: SharedStorage = recording.clone();
        // Real wall-clock time as the start, so that what this job records
        // compares with other jobs' times; from there on, time is invented.
        let t0 = Now::system();
        // The driver reads what earlier runs left; without checkpoints, nothing.
        let existing = if settings.periodic() {
            ExistingCheckpoints::read(storage.as_ref(), job, restored)
        } else {
            ExistingCheckpoints::default()
        };
        let coordinator = Coordinator::new(
            job,
            settings,
            tasks,
            tasks as u32,
            MAX_PARALLELISM,
            restored,
            existing,
            t0,
        );
        let mut h = Self {
            recording,
            storage,
            job: job.to_owned(),
            tasks,
            coordinator,
            t0,
            clock: Duration::ZERO,
            written: BTreeMap::new(),
        };
        // What adoption decided comes first in the first answer (too early
        // for a trigger).
        assert_eq!(h.tick(t0), Vec::new());
        h
    }

    fn now(&self) -> Now {
        self.t0 + self.clock
    }

    fn advance(&mut self, by: Duration) -> Now {
        self.clock += by;
        self.now()
    }

    /// Carries out the storage effects among `actions` (feeding metadata
    /// writes back) and returns the rest.
    fn drive(&mut self, actions: Vec<CoordinatorAction>, now: Now) -> Vec<CoordinatorAction> {
        drive(&mut self.coordinator, &self.storage, actions, now)
    }

    fn tick(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.tick(now);
        self.drive(actions, now)
    }

    fn tick_timeouts(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.tick_timeouts(now);
        self.drive(actions, now)
    }

    fn on_ack(&mut self, ack: TaskAck, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.on_ack(ack, now);
        self.drive(actions, now)
    }

    fn on_decline(&mut self, id: CheckpointId, reason: String, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.on_decline(id, reason, now);
        self.drive(actions, now)
    }

    fn request_savepoint(
        &mut self,
        savepoint: SavepointRequest,
        now: Now,
    ) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.request_savepoint(savepoint, now);
        self.drive(actions, now)
    }

    fn on_sources_exhausted(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.on_sources_exhausted(now);
        self.drive(actions, now)
    }

    fn on_job_stopped(&mut self, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.on_job_stopped(now);
        self.drive(actions, now)
    }

    fn abort_all(&mut self, reason: &str, now: Now) -> Vec<CoordinatorAction> {
        let actions = self.coordinator.abort_all(reason, now);
        self.drive(actions, now)
    }

    /// Lets an interval pass and expects the tick to trigger a checkpoint.
    fn trigger(&mut self) -> CheckpointId {
        let now = self.advance(INTERVAL);
        let actions = self.tick(now);
        match actions.as_slice() {
            [
                CoordinatorAction::Trigger {
                    id,
                    kind: SnapshotKind::Checkpoint,
                    ..
                },
            ] => *id,
            other => panic!("expected one Trigger, got {other:?}"),
        }
    }

    /// What task `task` uploads for checkpoint `id`.
    fn upload(&mut self, id: CheckpointId, task: usize) -> SubtaskSnapshot {
        let snapshot = write_task_file(
            self.storage.as_ref(),
            &self.job,
            id,
            task,
            self.tasks as u32,
        );
        let path = snapshot.keyed.as_ref().unwrap().file.path.clone();
        let bytes = self.storage.get(&path).unwrap();
        self.written.entry(id).or_default().insert(path, bytes);
        snapshot
    }

    fn upload_and_ack(&mut self, id: CheckpointId, task: usize) -> Vec<CoordinatorAction> {
        let snapshot = self.upload(id, task);
        let now = self.advance(Duration::from_millis(1));
        self.on_ack(ack(id, task, snapshot), now)
    }

    /// Triggers a checkpoint and has every task acknowledge it; expects it to
    /// complete with the last acknowledgement.
    fn complete_one(&mut self) -> CheckpointId {
        let id = self.trigger();
        for task in 0..self.tasks {
            let actions = self.upload_and_ack(id, task);
            if task + 1 < self.tasks {
                assert!(actions.is_empty(), "ack {task} of {id}: {actions:?}");
            } else {
                assert!(
                    actions.first().is_some_and(|a| is_complete(a, id)),
                    "the last ack completes checkpoint {id}: {actions:?}"
                );
            }
        }
        id
    }

    fn decline(&mut self, id: CheckpointId) -> Vec<CoordinatorAction> {
        let now = self.advance(Duration::from_millis(1));
        self.on_decline(id, "test declines".into(), now)
    }

    fn all_files(&self) -> BTreeSet<String> {
        self.storage.list("").unwrap().into_iter().collect()
    }

    /// Ids of this job's checkpoints that have a `_metadata`.
    fn completed_ids(&self) -> Vec<CheckpointId> {
        let mut ids: Vec<CheckpointId> = completed_checkpoints(self.storage.as_ref())
            .unwrap()
            .into_iter()
            .filter(|(job, _, _)| *job == self.job)
            .map(|(_, id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Panics unless every file written for checkpoint `id`, and its metadata,
    /// is still there with its content, and the checkpoint verifies.
    fn assert_intact(&self, id: CheckpointId) {
        for (path, bytes) in self.written.get(&id).into_iter().flatten() {
            match self.storage.get(path) {
                Ok(now) => assert_eq!(&now, bytes, "{path} changed"),
                Err(e) => panic!("file {path} of retained checkpoint {id} is gone: {e}"),
            }
        }
        let loaded = load(&self.storage, &format!("{}/chk-{id}", self.job))
            .unwrap_or_else(|e| panic!("retained checkpoint {id} does not load: {e}"));
        assert_eq!(loaded.id(), id);
    }

    /// Panics unless nothing of checkpoint `id` is left in storage.
    fn assert_gone(&self, id: CheckpointId) {
        let left = self
            .storage
            .list(&format!("{}/chk-{id}/", self.job))
            .unwrap();
        assert!(
            left.is_empty(),
            "files of checkpoint {id} should be deleted: {left:?}"
        );
    }

    fn metadata_ops(&self, id: CheckpointId) -> Vec<Op> {
        let path = metadata_path(&self.job, id);
        self.recording
            .log()
            .into_iter()
            .filter(|op| match op {
                Op::Put(p) | Op::PutIfAbsent(p) | Op::Delete(p) => *p == path,
                Op::DeletePrefix(_) => false,
            })
            .collect()
    }
}

fn is_complete(action: &CoordinatorAction, of: CheckpointId) -> bool {
    matches!(action, CoordinatorAction::Complete { id, .. } if *id == of)
}

/// Panics unless `actions` is exactly the completion of `id`.
fn assert_only_complete(actions: &[CoordinatorAction], id: CheckpointId) {
    assert!(
        matches!(actions, [a] if is_complete(a, id)),
        "expected only the completion of {id}: {actions:?}"
    );
}

fn is_abort(action: &CoordinatorAction, of: CheckpointId) -> bool {
    matches!(action, CoordinatorAction::Abort { id, .. } if *id == of)
}

fn has_fail_job(actions: &[CoordinatorAction]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, CoordinatorAction::FailJob { .. }))
}

// ---------------------------------------------------------------------------
// Completion.

/// `_metadata` appears only when the last task acknowledged, after every task
/// file, and it is written with create-if-absent (never a plain put). Repeated
/// acknowledgements of one task do not count twice.
#[test]
fn metadata_is_written_last_with_put_if_absent_once_every_task_acked() {
    let mut h = Harness::new("job-a", settings(1, 3, 1), 3);
    let id = h.trigger();
    assert_eq!(id, 1, "checkpoint ids start at 1");
    let meta = metadata_path(&h.job, id);

    let snapshots: Vec<SubtaskSnapshot> = (0..3).map(|t| h.upload(id, t)).collect();
    let now = h.advance(Duration::from_millis(5));
    assert!(h.on_ack(ack(id, 0, snapshots[0].clone()), now).is_empty());
    assert!(
        h.on_ack(ack(id, 0, snapshots[0].clone()), now).is_empty(),
        "a repeated ack of task 0 must not count as another task"
    );
    assert!(h.on_ack(ack(id, 2, snapshots[2].clone()), now).is_empty());
    assert!(
        matches!(h.storage.get(&meta), Err(StorageError::NotFound { .. })),
        "_metadata must not exist before every task acknowledged"
    );
    assert!(h.coordinator.completed().is_empty());
    assert_eq!(h.coordinator.in_flight(), 1);

    let now = h.advance(INTERVAL);
    let actions = h.on_ack(ack(id, 1, snapshots[1].clone()), now);
    assert_only_complete(&actions, id);
    assert_eq!(h.coordinator.in_flight(), 0);

    // Written once, with put_if_absent, after every task file.
    assert_eq!(h.metadata_ops(id), vec![Op::PutIfAbsent(meta.clone())]);
    let log = h.recording.log();
    let meta_at = log
        .iter()
        .position(|op| *op == Op::PutIfAbsent(meta.clone()))
        .unwrap();
    for path in h.written[&id].keys() {
        let file_at = log
            .iter()
            .position(|op| *op == Op::Put(path.clone()))
            .unwrap();
        assert!(file_at < meta_at, "{path} written after _metadata");
    }

    // What the metadata says.
    let loaded = load(&h.storage, &format!("job-a/chk-{id}")).unwrap();
    let m = &loaded.metadata;
    assert_eq!(
        (
            m.job_id.as_str(),
            m.checkpoint_id,
            m.kind,
            m.max_parallelism
        ),
        ("job-a", id, SnapshotKind::Checkpoint, MAX_PARALLELISM)
    );
    assert_eq!(m.operators.len(), 1);
    let op = &m.operators[0];
    assert_eq!((op.uid.as_str(), op.parallelism), (KEYED_UID, 3));
    assert_eq!(
        op.subtasks, snapshots,
        "subtask snapshots in subtask order, as acknowledged"
    );

    let stats = h.coordinator.completed();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].id, id);
    // The keyed files and the list elements, as the tasks acknowledged them.
    assert_eq!(
        stats[0].bytes,
        snapshots
            .iter()
            .map(|s| {
                let lists: u64 = s
                    .lists
                    .iter()
                    .flat_map(|l| &l.elements)
                    .map(|e| e.len() as u64)
                    .sum();
                s.keyed.as_ref().unwrap().file.size + lists
            })
            .sum::<u64>()
    );
    assert_eq!(stats[0].sync_pause_max, Duration::from_micros(12));
    h.assert_intact(id);
}

/// If a `_metadata` already exists for the id, the coordinator does not
/// overwrite it and does not report the checkpoint complete.
#[test]
fn an_existing_metadata_is_never_overwritten() {
    let mut h = Harness::new("job-a", settings(1, 3, 1), 2);
    let meta = metadata_path(&h.job, 1);
    h.storage
        .put_if_absent(&meta, b"someone else's".to_vec())
        .unwrap();
    let id = h.trigger();
    assert_eq!(id, 1);
    assert!(h.upload_and_ack(id, 0).is_empty());
    let actions = h.upload_and_ack(id, 1);
    assert!(
        !actions.iter().any(|a| is_complete(a, id)),
        "completed although its metadata could not be written: {actions:?}"
    );
    assert!(actions.iter().any(|a| is_abort(a, id)), "{actions:?}");
    assert!(
        !h.metadata_ops(id).contains(&Op::Put(meta.clone())),
        "_metadata must only be written with put_if_absent"
    );
    // The next one completes normally.
    let next = h.complete_one();
    assert_eq!(next, 2);
    h.assert_intact(next);
}

/// Ids only grow: across declines, timeouts and completions, and after a
/// restore they continue after the restored checkpoint's.
#[test]
fn checkpoint_ids_only_grow_and_continue_after_a_restore() {
    let inner = unique_memory();
    let mut h = Harness::on(Arc::clone(&inner), "job-a", settings(1, 10, 1), 2, None);
    let mut ids = Vec::new();

    let declined = h.trigger();
    ids.push(declined);
    let actions = h.decline(declined);
    assert!(is_abort(&actions[0], declined), "{actions:?}");

    let timed_out = h.trigger();
    ids.push(timed_out);
    assert!(h.upload_and_ack(timed_out, 0).is_empty());
    let now = h.advance(TIMEOUT);
    let actions = h.tick_timeouts(now);
    assert!(is_abort(&actions[0], timed_out), "{actions:?}");

    for _ in 0..3 {
        ids.push(h.complete_one());
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must strictly increase: {ids:?}"
    );
    assert_eq!(ids[0], 1);
    let last = *ids.last().unwrap();
    assert_eq!(h.completed_ids(), vec![last]);

    // A new coordinator of the same job, restored from `last`.
    let mut restored = Harness::on(inner, "job-a", settings(1, 10, 1), 2, Some(last));
    restored.written = h.written.clone();
    let next = restored.complete_one();
    assert_eq!(next, last + 1, "ids continue after the restored checkpoint");
    // The restored checkpoint stays retained until a newer one replaced it.
    assert_eq!(restored.completed_ids(), vec![next]);
    restored.assert_gone(last);
    restored.assert_intact(next);
}

/// No checkpoint starts before the interval passed, nor while one is in
/// flight (one in flight by default).
#[test]
fn triggers_respect_the_interval_and_one_in_flight() {
    let mut h = Harness::new("job-a", settings(1, 3, 1), 1);
    let now = h.advance(INTERVAL / 2);
    assert!(h.tick(now).is_empty(), "triggered too early");
    let id = h.trigger();
    let now = h.advance(INTERVAL * 5);
    assert!(
        h.tick(now).is_empty(),
        "a second checkpoint started while {id} is in flight"
    );
    assert_eq!(h.coordinator.next_trigger_at(now), None);
    assert!(
        h.coordinator
            .trigger_now(SnapshotKind::Checkpoint, now)
            .is_none()
    );
    let actions = h.upload_and_ack(id, 0);
    assert_only_complete(&actions, id);
    assert!(h.coordinator.next_trigger_at(h.now()).is_some());
}

// ---------------------------------------------------------------------------
// Retention.

/// `retain N` keeps exactly the newest N completed checkpoints, whole, and
/// deletes everything of older ones.
#[test]
fn retain_n_keeps_exactly_the_newest_n_completed_checkpoints() {
    for retain in 1..=3usize {
        let mut h = Harness::new(&format!("job-r{retain}"), settings(retain, 3, 1), 2);
        for k in 1..=7u64 {
            let id = h.complete_one();
            assert_eq!(id, k);
            let first_kept = (k + 1).saturating_sub(retain as u64).max(1);
            let expected: Vec<u64> = (first_kept..=k).collect();
            assert_eq!(
                h.completed_ids(),
                expected,
                "retain {retain}, after checkpoint {k}"
            );
            for kept in first_kept..=k {
                h.assert_intact(kept);
            }
            for old in 1..first_kept {
                h.assert_gone(old);
            }
        }
        // Nothing else lies around.
        let expected_files: BTreeSet<String> = (8 - retain as u64..=7)
            .flat_map(|id| {
                let mut files: Vec<String> = h.written[&id].keys().cloned().collect();
                files.push(metadata_path(&h.job, id));
                files
            })
            .collect();
        assert_eq!(h.all_files(), expected_files, "retain {retain}");
        // Metadata of an old checkpoint goes before its files: a half-deleted
        // checkpoint must never look complete.
        let log = h.recording.log();
        let meta_deleted = log
            .iter()
            .position(|op| *op == Op::Delete(metadata_path(&h.job, 1)))
            .expect("metadata of checkpoint 1 deleted");
        let files_deleted = log
            .iter()
            .position(|op| matches!(op, Op::DeletePrefix(p) if p.contains("/chk-1/")))
            .expect("files of checkpoint 1 deleted");
        assert!(meta_deleted < files_deleted);
    }
}

/// Checkpoint ids that share a prefix (1, 10, 11, 12) are different
/// directories: deleting checkpoint 1 or 2 never touches 10, 11 or 12. On a
/// local directory and in memory.
#[test]
fn retention_never_deletes_a_file_of_a_retained_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let local = open_storage(tmp.path().to_str().unwrap()).unwrap();
    for inner in [local, unique_memory()] {
        let name = inner.describe();
        let mut h = Harness::on(inner, "job-p", settings(10, 3, 1), 3, None);
        for _ in 0..12 {
            h.complete_one();
        }
        assert_eq!(h.completed_ids(), (3..=12).collect::<Vec<_>>(), "{name}");
        for id in 3..=12 {
            h.assert_intact(id);
        }
        h.assert_gone(1);
        h.assert_gone(2);
        // Abort one in flight, then stop: retained ones stay.
        let id = h.trigger();
        h.upload_and_ack(id, 0);
        let now = h.advance(Duration::from_millis(1));
        h.abort_all("job stops", now);
        h.assert_gone(id);
        for id in 3..=12 {
            h.assert_intact(id);
        }
    }
}

/// A process that resumes a job (`--restore latest` after a crash or a
/// restart) continues that job's retention: with `retain 2`, the checkpoints
/// the earlier process retained count, and once newer ones completed only the
/// newest 2 remain. Likewise what a crashed process left half-done (files of
/// an in-flight checkpoint, without `_metadata`) does not stay for ever, and
/// ids never go back.
#[test]
fn a_resumed_job_keeps_exactly_retain_checkpoints() {
    let inner = unique_memory();
    let mut first = Harness::on(Arc::clone(&inner), "job-c", settings(2, 3, 1), 2, None);
    for _ in 0..4 {
        first.complete_one();
    }
    assert_eq!(first.completed_ids(), vec![3, 4]);
    // Killed while checkpoint 5 was being uploaded.
    let in_flight = first.trigger();
    assert_eq!(in_flight, 5);
    first.upload(in_flight, 0);

    // The next process restores 4 and continues the job.
    let mut second = Harness::on(inner, "job-c", settings(2, 3, 1), 2, Some(4));
    second.written = first.written.clone();
    let ids: Vec<CheckpointId> = (0..3).map(|_| second.complete_one()).collect();
    assert!(ids[0] > 4, "ids continue after the restored one: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let newest_two = ids[1..].to_vec();
    assert_eq!(
        second.completed_ids(),
        newest_two,
        "retain 2 must hold across processes"
    );
    for id in &newest_two {
        second.assert_intact(*id);
    }
    for old in 1..=5 {
        if !ids.contains(&old) {
            second.assert_gone(old);
        }
    }
    let stray: Vec<String> = second
        .all_files()
        .into_iter()
        .filter(|p| {
            !newest_two
                .iter()
                .any(|id| p.starts_with(&format!("job-c/chk-{id}/")))
        })
        .collect();
    assert!(stray.is_empty(), "left behind: {stray:?}");
}

/// Restore fell back from a damaged newest checkpoint to an older one. The
/// resumed job's retention must not keep the damaged checkpoint in place of
/// the good one it restored: with `retain 2`, after the next checkpoint both
/// retained checkpoints must be restorable.
#[test]
fn a_resumed_job_does_not_retain_a_damaged_checkpoint_over_the_restored_one() {
    let inner = unique_memory();
    let mut first = Harness::on(Arc::clone(&inner), "job-b", settings(2, 3, 1), 2, None);
    for _ in 0..3 {
        first.complete_one();
    }
    assert_eq!(first.completed_ids(), vec![2, 3]);
    let s = &first.storage;
    // chk-3 is damaged: restore falls back to chk-2 and the job resumes from it.
    flip_byte(s.as_ref(), &keyed_state_path("job-b", 3, KEYED_UID, 0));
    assert_eq!(latest_id(s), Some(2));

    let mut second = Harness::on(inner, "job-b", settings(2, 3, 1), 2, Some(2));
    second.written = first.written.clone();
    let next = second.complete_one();
    let restorable: Vec<CheckpointId> = second
        .completed_ids()
        .into_iter()
        .filter(|id| load(&second.storage, &format!("job-b/chk-{id}")).is_ok())
        .collect();
    assert_eq!(
        restorable,
        vec![2, next],
        "retain 2: the restored checkpoint and the new one must both stay restorable"
    );
}

/// Issue 11 (4): the restore skipped two newer checkpoints, one proved
/// damaged (a flipped byte) and one written by a newer flowstate (an unknown
/// format version). The resumed job deletes only the damaged one: a
/// downgrade must never destroy a checkpoint it merely cannot read.
#[test]
fn a_resumed_job_deletes_only_checkpoints_proved_damaged() {
    let inner = unique_memory();
    let mut first = Harness::on(Arc::clone(&inner), "job-v", settings(3, 3, 1), 2, None);
    for _ in 0..3 {
        first.complete_one();
    }
    assert_eq!(first.completed_ids(), vec![1, 2, 3]);
    let s = Arc::clone(&first.storage);
    flip_byte(s.as_ref(), &keyed_state_path("job-v", 2, KEYED_UID, 0));
    let newer = {
        let path = metadata_path("job-v", 3);
        let bytes = s.get(&path).unwrap();
        let payload = &bytes[8..bytes.len() - 4];
        let resealed = seal(METADATA_MAGIC, 99, payload);
        s.put(&path, resealed.clone()).unwrap();
        resealed
    };

    let loaded = load_latest_of(&s, Some("job-v")).unwrap().unwrap();
    assert_eq!(loaded.id(), 1);
    let skipped: Vec<(CheckpointId, bool)> = loaded
        .skipped
        .iter()
        .map(|k| (k.checkpoint_id, k.damaged))
        .collect();
    assert_eq!(skipped, vec![(3, false), (2, true)], "{:?}", loaded.skipped);
    let damaged: BTreeSet<CheckpointId> = loaded
        .skipped
        .iter()
        .filter(|k| k.damaged)
        .map(|k| k.checkpoint_id)
        .collect();

    let now = Now::system();
    let mut resumed = Coordinator::after_restore(
        "job-v",
        settings(3, 3, 1),
        2,
        2,
        MAX_PARALLELISM,
        Some(1),
        ExistingCheckpoints::read(s.as_ref(), "job-v", Some(1)),
        &damaged,
        now,
    );
    // What adoption decided comes with the first answer.
    let actions = resumed.tick(now);
    assert!(
        actions.iter().all(CoordinatorAction::is_storage_effect),
        "{actions:?}"
    );
    assert!(drive(&mut resumed, &s, actions, now).is_empty());
    assert_eq!(
        s.get(&metadata_path("job-v", 3)).unwrap(),
        newer,
        "the checkpoint of a newer version was touched"
    );
    assert!(
        s.get(&keyed_state_path("job-v", 3, KEYED_UID, 0)).is_ok(),
        "the checkpoint of a newer version lost a file"
    );
    assert!(
        s.list("job-v/chk-2").unwrap().is_empty(),
        "the damaged checkpoint is still there"
    );
    assert!(
        load(&s, "job-v/chk-1").is_ok(),
        "the restored checkpoint is gone"
    );
}

/// A job restored from another job's checkpoint (`--restore PATH` starts a new
/// job id) must not delete that job's files when its own retention moves on.
#[test]
fn retention_never_deletes_the_checkpoint_of_another_job_it_was_restored_from() {
    let inner = unique_memory();
    let mut old = Harness::on(Arc::clone(&inner), "job-old", settings(1, 3, 1), 2, None);
    for _ in 0..5 {
        old.complete_one();
    }
    old.assert_intact(5);

    let mut new = Harness::on(inner, "job-new", settings(1, 3, 1), 2, Some(5));
    for _ in 0..3 {
        new.complete_one();
    }
    assert_eq!(new.completed_ids(), vec![8]);
    old.assert_intact(5);
}

// ---------------------------------------------------------------------------
// Aborts.

/// A declined checkpoint is aborted and its files are deleted; completed ones
/// stay. A decline of an id that is not in flight changes nothing.
#[test]
fn a_declined_checkpoint_is_aborted_and_its_files_deleted() {
    let mut h = Harness::new("job-d", settings(1, 3, 1), 3);
    let kept = h.complete_one();

    let id = h.trigger();
    assert!(h.upload_and_ack(id, 0).is_empty());
    h.upload(id, 1); // written, then the task declines
    let actions = h.decline(id);
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(is_abort(&actions[0], id), "{actions:?}");
    h.assert_gone(id);
    assert!(
        h.metadata_ops(id).is_empty(),
        "no metadata for an aborted one"
    );
    h.assert_intact(kept);
    assert_eq!(h.coordinator.failed_count(), 1);

    // Declining something not in flight (completed, aborted, future) is ignored.
    for unknown in [kept, id, id + 5] {
        assert!(h.decline(unknown).is_empty());
    }
    h.assert_intact(kept);
    assert_eq!(h.completed_ids(), vec![kept]);
    // And the next checkpoint proceeds.
    let next = h.complete_one();
    assert_eq!(h.completed_ids(), vec![next]);
}

/// A checkpoint not complete within the timeout is aborted and its files are
/// deleted.
#[test]
fn a_timed_out_checkpoint_is_aborted_and_its_files_deleted() {
    let mut h = Harness::new("job-t", settings(2, 3, 1), 2);
    let kept = h.complete_one();
    let id = h.trigger();
    assert!(h.upload_and_ack(id, 0).is_empty());
    h.upload(id, 1); // uploaded but never acknowledged

    let almost = h.advance(TIMEOUT - Duration::from_millis(10));
    assert!(
        h.tick_timeouts(almost).is_empty(),
        "aborted before the timeout"
    );
    let now = h.advance(Duration::from_millis(20));
    let actions = h.tick(now);
    assert!(
        actions.iter().any(|a| is_abort(a, id)),
        "not aborted after the timeout: {actions:?}"
    );
    h.assert_gone(id);
    h.assert_intact(kept);
    assert_eq!(h.completed_ids(), vec![kept]);
}

/// With two in flight, completing the newer one aborts (subsumes) the older
/// one and deletes its files, never the newer one's.
#[test]
fn a_subsumed_checkpoint_is_aborted_without_touching_the_newer_one() {
    let mut h = Harness::new("job-s", settings(1, 3, 2), 2);
    let now = h.advance(INTERVAL);
    let first = match h.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
        Some(CoordinatorAction::Trigger { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    let second = match h.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
        Some(CoordinatorAction::Trigger { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    assert!(second > first);
    assert!(h.upload_and_ack(first, 0).is_empty());
    let late_snapshot = h.upload(first, 1);
    assert!(h.upload_and_ack(second, 0).is_empty());
    let actions = h.upload_and_ack(second, 1);
    assert!(is_complete(&actions[0], second), "{actions:?}");
    assert!(
        actions.iter().any(|a| is_abort(a, first)),
        "the older checkpoint is subsumed: {actions:?}"
    );
    h.assert_gone(first);
    h.assert_intact(second);
    // Its last ack arrives late: ignored.
    let now = h.advance(Duration::from_millis(1));
    assert!(h.on_ack(ack(first, 1, late_snapshot), now).is_empty());
    assert_eq!(h.completed_ids(), vec![second]);
}

/// A checkpoint subsumed by a newer completed one is no failure of
/// checkpointing: with no failure tolerated and two in flight, acks arriving
/// out of order must not fail the job (found by the whole-job simulation,
/// seed 47).
#[test]
fn a_subsumed_checkpoint_does_not_count_as_a_failure() {
    let mut h = Harness::new("job-sub", settings(1, 0, 2), 1);
    let now = h.advance(INTERVAL);
    let first = match h.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
        Some(CoordinatorAction::Trigger { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    let second = match h.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
        Some(CoordinatorAction::Trigger { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    let actions = h.upload_and_ack(second, 0);
    assert!(is_complete(&actions[0], second), "{actions:?}");
    assert!(actions.iter().any(|a| is_abort(a, first)), "{actions:?}");
    assert!(
        !has_fail_job(&actions),
        "a subsumed checkpoint failed the job: {actions:?}"
    );
    // And the count is not carried to the next real failure: one failure,
    // none tolerated, is what fails the job.
    let now = h.advance(INTERVAL);
    let third = match h.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
        Some(CoordinatorAction::Trigger { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    let actions = h.coordinator.on_decline(third, "declined".into(), now);
    assert!(has_fail_job(&actions), "{actions:?}");
}

/// More consecutive failures than tolerated fail the job; a completed
/// checkpoint resets the count.
#[test]
fn exceeding_tolerable_failures_fails_the_job() {
    // Tolerate 2: the third consecutive failure fails the job.
    let mut h = Harness::new("job-f", settings(1, 2, 1), 2);
    for n in 1..=3 {
        let id = h.trigger();
        let actions = h.decline(id);
        assert!(is_abort(&actions[0], id));
        assert_eq!(
            has_fail_job(&actions),
            n == 3,
            "failure {n} of tolerated 2: {actions:?}"
        );
    }

    // A success in between resets the count; timeouts count like declines.
    let mut h = Harness::new("job-g", settings(1, 2, 1), 2);
    for _ in 0..2 {
        let id = h.trigger();
        assert!(!has_fail_job(&h.decline(id)));
    }
    h.complete_one();
    for n in 1..=3 {
        let id = h.trigger();
        let now = h.advance(TIMEOUT);
        let actions = h.tick_timeouts(now);
        assert!(is_abort(&actions[0], id), "{actions:?}");
        assert_eq!(has_fail_job(&actions), n == 3, "{actions:?}");
    }

    // Tolerate 0: the first failure fails the job.
    let mut h = Harness::new("job-z", settings(1, 0, 1), 1);
    let id = h.trigger();
    assert!(has_fail_job(&h.decline(id)));
}

/// Acknowledgements of an aborted checkpoint that arrive late are ignored:
/// it never completes, no metadata is written, and later checkpoints proceed.
#[test]
fn a_late_ack_of_an_aborted_checkpoint_is_ignored() {
    let mut h = Harness::new("job-l", settings(1, 3, 1), 3);
    let id = h.trigger();
    assert!(h.upload_and_ack(id, 0).is_empty());
    let now = h.advance(TIMEOUT);
    assert!(is_abort(&h.tick_timeouts(now)[0], id));
    for task in [1, 2, 0] {
        let actions = h.upload_and_ack(id, task);
        assert!(actions.is_empty(), "late ack of task {task}: {actions:?}");
    }
    assert!(h.metadata_ops(id).is_empty(), "metadata of an aborted one");
    assert!(h.completed_ids().is_empty());
    assert!(h.coordinator.completed().is_empty());
    let next = h.complete_one();
    assert!(next > id);
    assert_eq!(h.completed_ids(), vec![next]);
    h.assert_intact(next);
}

/// The files a slow uploader writes after its checkpoint was aborted (it then
/// acknowledges late) are files of an aborted checkpoint: they must not stay
/// in storage for ever.
#[test]
fn files_of_a_late_ack_of_an_aborted_checkpoint_are_removed() {
    let mut h = Harness::new("job-m", settings(1, 3, 1), 2);
    let id = h.trigger();
    assert!(h.upload_and_ack(id, 0).is_empty());
    let now = h.advance(TIMEOUT);
    assert!(is_abort(&h.tick_timeouts(now)[0], id));
    // Task 1's uploader was still writing: its file lands after the abort.
    assert!(h.upload_and_ack(id, 1).is_empty());
    let kept = h.complete_one();
    h.assert_intact(kept);
    h.assert_gone(id);
}

// ---------------------------------------------------------------------------
// Restore: which checkpoint, and what it gives back.

/// Flips one byte in the middle of `path`.
fn flip_byte(storage: &dyn CheckpointStorage, path: &str) {
    let mut bytes = storage.get(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    storage.put(path, bytes).unwrap();
}

fn truncate(storage: &dyn CheckpointStorage, path: &str) {
    let mut bytes = storage.get(path).unwrap();
    bytes.truncate(bytes.len() - 3);
    storage.put(path, bytes).unwrap();
}

fn latest_id(storage: &SharedStorage) -> Option<CheckpointId> {
    load_latest(storage)
        .unwrap_or_else(|e| panic!("load_latest failed: {e}"))
        .map(|c| c.id())
}

#[test]
fn load_latest_with_nothing_to_restore_is_none() {
    let storage = unique_memory();
    assert!(load_latest(&storage).unwrap().is_none());
    // Files without a `_metadata` are not a checkpoint.
    write_task_file(storage.as_ref(), "job-x", 1, 0, 1);
    assert!(load_latest(&storage).unwrap().is_none());
}

/// The newest checkpoint that verifies is restored; a damaged, truncated,
/// incomplete or unreadable newest one makes restore fall back to the next
/// older one; when all are damaged, the error names the damaged file.
#[test]
fn load_latest_picks_the_newest_verifiable_checkpoint_and_falls_back() {
    let mut h = Harness::new("job-q", settings(5, 3, 1), 2);
    for _ in 0..11 {
        h.complete_one();
    }
    let storage = Arc::clone(&h.storage);
    let s = &storage;
    // Numeric, not textual, order: 11 is newer than 9.
    assert_eq!(h.completed_ids(), vec![7, 8, 9, 10, 11]);
    assert_eq!(latest_id(s), Some(11));

    // A checkpoint in flight (files, no metadata) is not a candidate.
    write_task_file(s.as_ref(), "job-q", 12, 0, 2);
    assert_eq!(latest_id(s), Some(11));

    let file_of = |id: CheckpointId, task: u32| keyed_state_path("job-q", id, KEYED_UID, task);

    flip_byte(s.as_ref(), &file_of(11, 1));
    assert_eq!(latest_id(s), Some(10), "flipped byte in a task file");
    let err = load(s, "job-q/chk-11").err().expect("damaged chk-11 loads");
    assert!(
        matches!(&err, CheckpointError::Corrupt { path, .. } if *path == file_of(11, 1)),
        "{err}"
    );

    truncate(s.as_ref(), &file_of(10, 0));
    assert_eq!(latest_id(s), Some(9), "truncated task file");
    let err = load(s, "job-q/chk-10/").err().unwrap().to_string();
    assert!(err.contains(&file_of(10, 0)), "{err}");

    s.delete(&file_of(9, 1)).unwrap();
    assert_eq!(latest_id(s), Some(8), "missing task file");
    let err = load(s, "job-q/chk-9").err().unwrap().to_string();
    assert!(err.contains(&file_of(9, 1)), "{err}");

    flip_byte(s.as_ref(), &metadata_path("job-q", 8));
    assert_eq!(latest_id(s), Some(7), "flipped byte in _metadata");
    let err = load(s, &metadata_path("job-q", 8))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&metadata_path("job-q", 8)), "{err}");

    // A metadata of a format version this build does not know.
    let newer = load(s, "job-q/chk-7").unwrap().metadata;
    let json = serde_json::to_vec(&newer).unwrap();
    s.delete(&metadata_path("job-q", 7)).unwrap();
    s.put_if_absent(&metadata_path("job-q", 7), seal(METADATA_MAGIC, 99, &json))
        .unwrap();
    let err = load(s, "job-q/chk-7").err().unwrap();
    assert!(
        matches!(&err, CheckpointError::UnsupportedVersion { found: 99, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&metadata_path("job-q", 7)),
        "{err}"
    );

    // Every one damaged: an error naming the damage of the newest.
    match load_latest(s) {
        Ok(found) => panic!(
            "restored {:?} although every checkpoint is damaged",
            found.map(|c| c.id())
        ),
        Err(e) => assert!(e.to_string().contains(&file_of(11, 1)), "{e}"),
    }
}

/// Within one job a higher id is always the newer checkpoint (ids only grow),
/// whatever the wall clock said when it was written: after the clock stepped
/// back, restoring the older one would replay records whose output the newer
/// one already committed (duplicates in exactly-once output).
#[test]
fn load_latest_within_a_job_goes_by_id_not_by_wall_clock() {
    let mut h = Harness::new("job-w", settings(2, 3, 1), 2);
    h.complete_one();
    let newer = h.complete_one();
    let older = newer - 1;
    let s = &h.storage;
    let older_created = load(s, &format!("job-w/chk-{older}"))
        .unwrap()
        .metadata
        .created_unix_ms;
    // chk-`newer` was written after the clock stepped back by 5 seconds.
    let mut metadata = load(s, &format!("job-w/chk-{newer}")).unwrap().metadata;
    metadata.created_unix_ms = older_created - 5_000;
    let path = metadata_path("job-w", newer);
    s.delete(&path).unwrap();
    s.put_if_absent(&path, metadata.encode().unwrap()).unwrap();
    assert_eq!(latest_id(s), Some(newer));
}

/// A metadata truncated to nothing, or to a part of itself, is refused.
#[test]
fn load_detects_a_truncated_metadata() {
    let mut h = Harness::new("job-u", settings(2, 3, 1), 1);
    h.complete_one();
    h.complete_one();
    let s = &h.storage;
    let meta = metadata_path("job-u", 2);
    let full = s.get(&meta).unwrap();
    for len in [0, 4, 11, full.len() / 2, full.len() - 1] {
        s.delete(&meta).unwrap();
        s.put_if_absent(&meta, full[..len].to_vec()).unwrap();
        let err = load(s, "job-u/chk-2")
            .err()
            .expect("truncated metadata loads");
        assert!(err.to_string().contains(&meta), "{len} bytes: {err}");
        assert_eq!(latest_id(s), Some(1), "{len} bytes");
    }
}

/// Key groups of a checkpoint taken at parallelism 2 are dealt to 3 (and 1)
/// new instances by range, each exactly once; split lists are dealt so that
/// every element lands on exactly one new instance; union lists go whole to
/// every instance.
#[test]
fn a_loaded_checkpoint_deals_state_out_to_another_parallelism() {
    let storage = unique_memory();
    let job = "job-scale";
    let mut coordinator = Coordinator::new(
        job,
        settings(1, 3, 1),
        2,
        2,
        MAX_PARALLELISM,
        None,
        ExistingCheckpoints::default(),
        Now::system(),
    );
    let now = Now::system();
    let id = match coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
        Some(CoordinatorAction::Trigger { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    let mut all_positions = Vec::new();
    for task in 0..2usize {
        let keyed = write_task_file(storage.as_ref(), job, id, task, 2);
        let positions: Vec<Vec<u8>> = (0..(3 + task))
            .map(|i| format!("split-{task}-{i}").into_bytes())
            .collect();
        all_positions.extend(positions.clone());
        let source = SubtaskSnapshot {
            subtask: task as u32,
            keyed: None,
            native: None,
            lists: vec![
                OperatorListState {
                    name: "positions".into(),
                    mode: RedistributionMode::Split,
                    elements: positions,
                },
                OperatorListState {
                    name: "everyone".into(),
                    mode: RedistributionMode::Union,
                    elements: vec![format!("union-{task}").into_bytes()],
                },
            ],
            channels: None,
        };
        let mut a = ack(id, task, keyed);
        a.operators
            .push((SOURCE_UID.into(), "Source".into(), source));
        let actions = coordinator.on_ack(a, now);
        let actions = drive(&mut coordinator, &storage, actions, now);
        assert_eq!(actions.is_empty(), task == 0, "{actions:?}");
    }
    let loaded = load_latest(&storage).unwrap().unwrap();
    assert_eq!(loaded.id(), id);
    assert!(loaded.has_operator(KEYED_UID) && loaded.has_operator(SOURCE_UID));
    assert!(!loaded.has_operator("nobody"));

    for parallelism in [1u32, 2, 3, 5] {
        let mut groups_seen = Vec::new();
        let mut positions_seen = Vec::new();
        for index in 0..parallelism {
            let range = KeyGroupRange::for_operator(index, parallelism, MAX_PARALLELISM);
            let restored = loaded.keyed_state(KEYED_UID, range, job).unwrap();
            for (g, bytes) in &restored.collect_groups().unwrap() {
                assert!(range.contains(*g), "group {g} outside {range}");
                let owner = (0..2u32)
                    .find(|t| KeyGroupRange::for_operator(*t, 2, MAX_PARALLELISM).contains(*g))
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(bytes),
                    format!("{job}/{id}/{owner}/g{g};")
                );
                groups_seen.push(*g);
            }
            let lists = loaded.operator_lists(SOURCE_UID, index, parallelism);
            let split = lists.iter().find(|l| l.name == "positions").unwrap();
            positions_seen.extend(split.elements.clone());
            let union = lists.iter().find(|l| l.name == "everyone").unwrap();
            assert_eq!(
                union.elements,
                vec![b"union-0".to_vec(), b"union-1".to_vec()],
                "union lists go whole to every instance"
            );
        }
        groups_seen.sort_unstable();
        assert_eq!(
            groups_seen,
            (0..MAX_PARALLELISM).collect::<Vec<_>>(),
            "parallelism {parallelism}: every key group exactly once"
        );
        positions_seen.sort();
        let mut expected = all_positions.clone();
        expected.sort();
        assert_eq!(
            positions_seen, expected,
            "parallelism {parallelism}: every split position exactly once"
        );
    }
}

/// The metadata a coordinator writes decodes to what a reader expects, and
/// its own encoding is stable (decode(encode(m)) == m).
#[test]
fn metadata_round_trips() {
    let mut h = Harness::new("job-rt", settings(1, 3, 1), 2);
    let id = h.complete_one();
    let bytes = h.storage.get(&metadata_path("job-rt", id)).unwrap();
    let decoded = CheckpointMetadata::decode("m", &bytes).unwrap();
    let again = CheckpointMetadata::decode("m", &decoded.encode().unwrap()).unwrap();
    assert_eq!(decoded, again);
    assert_eq!(decoded.state_bytes(), h.coordinator.completed()[0].bytes);
}

/// A checkpoint's full size counts everything its tasks wrote: with operator
/// list state (held in the metadata, counted in the tasks' bytes) the full
/// size is not smaller than the bytes written (issue 15: `full_size_bytes`
/// was smaller than `size_bytes`, the list state missing from it).
#[test]
fn full_size_is_never_smaller_than_what_a_checkpoint_wrote() {
    let mut h = Harness::new("job-full", settings(1, 3, 1), 2);
    h.complete_one();
    let stats = &h.coordinator.completed()[0];
    let lists: u64 = (0..2)
        .map(|task| format!("{}:{task}", stats.id).len() as u64)
        .sum();
    assert!(lists > 0);
    assert!(
        stats.full_bytes >= stats.bytes,
        "full size {} smaller than the {} bytes written",
        stats.full_bytes,
        stats.bytes
    );
    // A full (not incremental) checkpoint wrote all of its state.
    assert_eq!(stats.full_bytes, stats.bytes);
}

// ---------------------------------------------------------------------------
// Savepoints (issue 5): their own directory, never retained, relocatable.

/// Writes what task `task` uploads for savepoint `id` into `target`, as the
/// upload threads do: at `state/<uid>/<subtask>.keyed`, relative to it.
fn write_savepoint_file(
    target: &dyn CheckpointStorage,
    id: CheckpointId,
    task: usize,
    parallelism: u32,
) -> SubtaskSnapshot {
    let scratch = unique_memory();
    let mut snapshot = write_task_file(scratch.as_ref(), "sp", id, task, parallelism);
    let keyed = snapshot.keyed.as_mut().unwrap();
    let bytes = scratch.get(&keyed.file.path).unwrap();
    keyed.file.path = savepoint_keyed_path(KEYED_UID, task as u32);
    target.put(&keyed.file.path, bytes).unwrap();
    snapshot
}

fn savepoint_request(target: &SharedStorage, stop: bool) -> SavepointRequest {
    SavepointRequest {
        request: format!("request {}", target.describe()),
        target: Arc::clone(target),
        stop,
        location: stop.then(|| target.describe()),
    }
}

impl Harness {
    fn savepoint(&mut self, target: &SharedStorage) -> CheckpointId {
        self.request(target, false)
    }

    /// Requests a savepoint (`stop`: stop-with-savepoint) and expects it to
    /// start at once; its request is named after the target.
    fn request(&mut self, target: &SharedStorage, stop: bool) -> CheckpointId {
        let now = self.advance(Duration::from_millis(1));
        let request = savepoint_request(target, stop);
        match self.request_savepoint(request.clone(), now).as_slice() {
            [CoordinatorAction::TriggerSavepoint { id, savepoint }] if *savepoint == request => *id,
            other => panic!("expected a savepoint trigger, got {other:?}"),
        }
    }

    fn ack_savepoint(
        &mut self,
        target: &SharedStorage,
        id: CheckpointId,
        task: usize,
    ) -> Vec<CoordinatorAction> {
        let snapshot = write_savepoint_file(target.as_ref(), id, task, self.tasks as u32);
        let now = self.advance(Duration::from_millis(1));
        self.on_ack(ack(id, task, snapshot), now)
    }
}

#[test]
fn a_savepoint_goes_to_its_own_directory_is_never_retained_and_can_be_moved() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("savepoint-a");
    let target = open_storage(location.to_str().unwrap()).unwrap();
    let mut h = Harness::new("job-s", settings(1, 3, 1), 2);
    let first = h.complete_one();
    let id = h.savepoint(&target);
    assert!(h.coordinator.is_pending_savepoint(id));
    assert!(h.ack_savepoint(&target, id, 0).is_empty());
    let actions = h.ack_savepoint(&target, id, 1);
    assert_only_complete(&actions, id);
    assert!(!h.coordinator.is_pending_savepoint(id));

    // Nothing of it in checkpoint storage; the retained checkpoint is untouched.
    assert!(
        h.all_files()
            .iter()
            .all(|p| !p.contains(&format!("chk-{id}"))),
        "{:?}",
        h.all_files()
    );
    assert_eq!(h.completed_ids(), vec![first]);
    h.assert_intact(first);
    // Retention over later checkpoints never touches it.
    let later = [h.complete_one(), h.complete_one()];
    assert_eq!(h.completed_ids(), vec![later[1]]);

    // Moved elsewhere, it still loads: every path is relative to it.
    let moved = dir.path().join("elsewhere").join("savepoint-b");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&location, &moved).unwrap();
    let opened = open_snapshot(moved.to_str().unwrap()).unwrap();
    let loaded = load(&opened.storage, &opened.metadata_path).unwrap();
    assert_eq!(loaded.id(), id);
    assert_eq!(loaded.metadata.kind, SnapshotKind::Savepoint);
    for subtask in &loaded.metadata.operators[0].subtasks {
        let path = &subtask.keyed.as_ref().unwrap().file.path;
        assert!(path.starts_with("state/"), "{path} is not relative");
    }
    // Dealt out to three instances, every key group arrives exactly once.
    let mut groups = Vec::new();
    for index in 0..3 {
        let range = KeyGroupRange::for_operator(index, 3, MAX_PARALLELISM);
        let keyed = loaded.keyed_state(KEYED_UID, range, "other-job").unwrap();
        groups.extend(keyed.collect_groups().unwrap().iter().map(|(g, _)| *g));
    }
    groups.sort_unstable();
    assert_eq!(groups, (0..MAX_PARALLELISM).collect::<Vec<_>>());
}

#[test]
fn a_failed_savepoint_is_deleted_and_does_not_count_towards_failing_the_job() {
    let target = unique_memory();
    // Not a single checkpoint failure is tolerated.
    let mut h = Harness::new("job-f", settings(1, 0, 1), 2);
    let id = h.savepoint(&target);
    assert!(h.ack_savepoint(&target, id, 0).is_empty());
    let actions = h.decline(id);
    assert!(is_abort(&actions[0], id), "{actions:?}");
    assert!(!has_fail_job(&actions), "{actions:?}");
    assert!(target.list("").unwrap().is_empty(), "its files are deleted");
    // A late acknowledgement's files are removed too.
    assert!(h.ack_savepoint(&target, id, 1).is_empty());
    assert!(
        target.list("").unwrap().is_empty(),
        "late files are deleted"
    );
    // Checkpoints go on.
    let next = h.complete_one();
    assert_eq!(h.completed_ids(), vec![next]);
}

#[test]
fn a_savepoint_with_native_files_is_refused() {
    use flowstate_checkpoint::metadata::{NativeFileRef, NativeStateHandle};
    let target = unique_memory();
    let mut h = Harness::new("job-n", settings(1, 3, 1), 1);
    let id = h.savepoint(&target);
    let mut snapshot = write_savepoint_file(target.as_ref(), id, 0, 1);
    snapshot.keyed = None;
    snapshot.native = Some(NativeStateHandle {
        backend: "rocksdb".into(),
        key_group_start: 0,
        key_group_end: MAX_PARALLELISM,
        states: Vec::new(),
        files: vec![NativeFileRef {
            name: "000001.sst".into(),
            file: FileRef {
                path: "job-n/shared/x/1-000001.sst".into(),
                size: 1,
                crc32c: 0,
            },
            shared: true,
            uploaded_by: id,
        }],
    });
    let now = h.advance(Duration::from_millis(1));
    let actions = h.on_ack(ack(id, 0, snapshot), now);
    match actions.as_slice() {
        [
            CoordinatorAction::Abort {
                id: aborted,
                reason,
                request: Some(_),
            },
        ] => {
            assert_eq!(*aborted, id);
            assert!(reason.contains("canonical"), "{reason}");
        }
        other => panic!("expected the savepoint to abort: {other:?}"),
    }
    assert!(target.get("_metadata").is_err());
}

/// A job restored from a savepoint records a restore pointer: until its first
/// checkpoint, `load_latest` resumes from that savepoint (continuing the new
/// job), not from the older checkpoints of the job the savepoint came from;
/// once the new job has a checkpoint, that wins; a pointer to a savepoint that
/// is gone falls back to the older checkpoints.
#[test]
fn load_latest_follows_a_restore_pointer_until_the_job_has_a_checkpoint() {
    use flowstate_checkpoint::restore::{RestorePointer, write_restore_pointer};
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("sp").join("savepoint-x");
    let target = open_storage(location.to_str().unwrap()).unwrap();
    let storage = unique_memory();
    let mut a = Harness::on(Arc::clone(&storage), "job-a", settings(2, 3, 1), 1, None);
    a.complete_one();
    let savepoint = a.savepoint(&target);
    assert_only_complete(&a.ack_savepoint(&target, savepoint, 0), savepoint);
    let later = a.complete_one();
    assert_eq!(load_latest(&storage).unwrap().unwrap().id(), later);

    // Written after job A's checkpoints, on the test's clock.
    let now_ms = a.now().unix_ms;
    write_restore_pointer(
        storage.as_ref(),
        "job-b",
        &RestorePointer {
            storage_path: None,
            location: Some(location.display().to_string()),
            checkpoint_id: savepoint,
            created_unix_ms: now_ms + 1000,
        },
    )
    .unwrap();
    let loaded = load_latest(&storage).unwrap().unwrap();
    assert_eq!(loaded.id(), savepoint);
    assert_eq!(loaded.continues_job, "job-b");
    assert_eq!(loaded.metadata.kind, SnapshotKind::Savepoint);
    // The job's own restarts find it too.
    let own = load_latest_of(&storage, Some("job-b")).unwrap().unwrap();
    assert_eq!(own.id(), savepoint);

    // Gone: fall back to job A's newest checkpoint.
    std::fs::rename(&location, dir.path().join("moved")).unwrap();
    let fallback = load_latest(&storage).unwrap().unwrap();
    assert_eq!(
        (fallback.id(), fallback.continues_job.as_str()),
        (later, "job-a")
    );
    std::fs::rename(dir.path().join("moved"), &location).unwrap();

    // Job B's first checkpoint supersedes its pointer.
    let mut b = Harness::on(
        Arc::clone(&storage),
        "job-b",
        settings(1, 3, 1),
        1,
        Some(savepoint),
    );
    // In a real run the job's checkpoints come after its pointer: B's clock
    // starts behind A's (which ran ahead on virtual time), so catch it up.
    let behind = (now_ms + 1000 + 1).saturating_sub(b.now().unix_ms);
    b.advance(Duration::from_millis(behind));
    let first = b.complete_one();
    let loaded = load_latest(&storage).unwrap().unwrap();
    assert_eq!(
        (loaded.id(), loaded.continues_job.as_str()),
        (first, "job-b")
    );
    assert_eq!(loaded.metadata.kind, SnapshotKind::Checkpoint);

    // A pointer written after every checkpoint of the job (a stop with a
    // savepoint) comes first: the stop published output beyond them.
    let stopped_ms = b.advance(Duration::from_secs(1)).unix_ms;
    write_restore_pointer(
        storage.as_ref(),
        "job-b",
        &RestorePointer {
            storage_path: None,
            location: Some(location.display().to_string()),
            checkpoint_id: savepoint,
            created_unix_ms: stopped_ms,
        },
    )
    .unwrap();
    let loaded = load_latest(&storage).unwrap().unwrap();
    assert_eq!(
        (loaded.id(), loaded.continues_job.as_str()),
        (savepoint, "job-b")
    );
    assert_eq!(loaded.metadata.kind, SnapshotKind::Savepoint);
}

/// A stop-with-savepoint's pointer comes first even when the wall clock
/// stepped back between the job's last checkpoint and the stop: the
/// savepoint's id is above every checkpoint's (found by the whole-job
/// simulation, where checkpoints carry virtual time).
#[test]
fn a_stop_pointer_comes_first_even_when_the_clock_stepped_back() {
    use flowstate_checkpoint::restore::{RestorePointer, write_restore_pointer};
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("sp").join("savepoint-stop");
    let target = open_storage(location.to_str().unwrap()).unwrap();
    let storage = unique_memory();
    let mut h = Harness::on(Arc::clone(&storage), "job-c", settings(2, 3, 1), 1, None);
    h.complete_one();
    let last = h.complete_one();
    let savepoint = h.savepoint(&target);
    assert!(savepoint > last);
    assert_only_complete(&h.ack_savepoint(&target, savepoint, 0), savepoint);
    let last_created = load(&storage, &format!("job-c/chk-{last}"))
        .unwrap()
        .metadata
        .created_unix_ms;
    write_restore_pointer(
        storage.as_ref(),
        "job-c",
        &RestorePointer {
            storage_path: None,
            location: Some(location.display().to_string()),
            checkpoint_id: savepoint,
            // The clock stepped back by ten seconds before the stop.
            created_unix_ms: last_created - 10_000,
        },
    )
    .unwrap();
    let loaded = load_latest(&storage).unwrap().unwrap();
    assert_eq!(
        (loaded.id(), loaded.metadata.kind),
        (savepoint, SnapshotKind::Savepoint)
    );
}

/// Without periodic checkpoints (`--checkpoint-interval off`) the coordinator
/// takes savepoints on request and nothing else: no tick ever triggers a
/// checkpoint, nor does `trigger_now`, and the checkpoint storage is neither
/// written nor cleaned (what an earlier run left there stays: this job holds
/// no lease on it).
#[test]
fn without_periodic_checkpoints_only_savepoints_are_taken_and_checkpoint_storage_is_untouched() {
    let inner = unique_memory();
    // Left by an earlier run of the job: an incomplete checkpoint and a
    // shared file no checkpoint references, both deleted by a periodic
    // coordinator's adoption.
    let leftovers = ["job-off/chk-5/count-0.keyed", "job-off/shared/x-0/5-y"];
    for path in leftovers {
        inner.put(path, b"left".to_vec()).unwrap();
    }
    let off = CoordinatorSettings {
        interval: None,
        ..settings(1, 3, 1)
    };
    assert!(!off.periodic());
    let mut h = Harness::on(inner, "job-off", off, 2, Some(7));
    assert!(!h.coordinator.is_periodic());

    for _ in 0..3 {
        let now = h.advance(Duration::from_secs(24 * 3600));
        assert_eq!(h.coordinator.next_trigger_at(now), None);
        assert!(h.tick(now).is_empty());
        assert_eq!(
            h.coordinator.trigger_now(SnapshotKind::Checkpoint, now),
            None
        );
    }

    // A savepoint still works, with an id after the restored one.
    let target = unique_memory();
    let id = h.savepoint(&target);
    assert_eq!(id, 8, "ids continue after the restored snapshot");
    let now = h.advance(Duration::from_millis(1));
    assert!(
        h.tick(now).is_empty(),
        "nothing else starts while it is in flight"
    );
    assert!(h.ack_savepoint(&target, id, 0).is_empty());
    assert_only_complete(&h.ack_savepoint(&target, id, 1), id);
    assert!(
        target
            .get(flowstate_checkpoint::layout::METADATA_FILE)
            .is_ok()
    );
    // A second one, after it.
    let second_target = unique_memory();
    let second = h.savepoint(&second_target);
    assert!(second > id);

    assert_eq!(
        h.recording.log(),
        Vec::new(),
        "nothing written to or deleted from checkpoint storage"
    );
    assert_eq!(
        h.all_files(),
        leftovers
            .iter()
            .map(|p| (*p).to_owned())
            .collect::<BTreeSet<_>>()
    );
}

// ---------------------------------------------------------------------------
// The end of a bounded job, the savepoint queue, figures and history: all
// decided by the coordinator, driven here with invented time.

fn is_trigger(action: &CoordinatorAction) -> Option<CheckpointId> {
    match action {
        CoordinatorAction::Trigger {
            id,
            kind: SnapshotKind::Checkpoint,
            ..
        } => Some(*id),
        _ => None,
    }
}

impl Harness {
    /// Every task acknowledges `id`; returns the last acknowledgement's actions.
    fn ack_all(&mut self, id: CheckpointId) -> Vec<CoordinatorAction> {
        let mut last = Vec::new();
        for task in 0..self.tasks {
            last = self.upload_and_ack(id, task);
        }
        last
    }

    fn exhausted(&mut self) -> Vec<CoordinatorAction> {
        let now = self.advance(Duration::from_millis(1));
        self.on_sources_exhausted(now)
    }
}

/// Once every source is exhausted, periodic checkpoints stop and the final
/// checkpoint starts at once (nothing in flight); its completion notifies the
/// tasks and then ends the sources' output; nothing is triggered afterwards.
#[test]
fn the_final_checkpoint_follows_exhaustion_and_then_the_sources_finish() {
    let mut h = Harness::new("job-end", settings(1, 3, 1), 2);
    h.complete_one();
    let actions = h.exhausted();
    let [action] = actions.as_slice() else {
        panic!("expected the final checkpoint: {actions:?}");
    };
    let last = is_trigger(action).expect("a checkpoint trigger");
    let now = h.advance(INTERVAL * 10);
    assert!(
        h.tick(now).is_empty(),
        "nothing else while the final checkpoint is in flight"
    );
    assert_eq!(h.coordinator.next_trigger_at(now), None);
    let actions = h.ack_all(last);
    match actions.as_slice() {
        [
            CoordinatorAction::Complete {
                id,
                notify_tasks: true,
                request: None,
                ..
            },
            CoordinatorAction::FinishSources,
        ] => assert_eq!(*id, last),
        other => panic!("expected Complete then FinishSources: {other:?}"),
    }
    assert!(h.coordinator.sources_finished());
    h.assert_intact(last);
    for _ in 0..3 {
        let now = h.advance(INTERVAL * 10);
        assert!(h.tick(now).is_empty(), "triggered after the end");
    }
    // A savepoint asked for now is never taken.
    let target = unique_memory();
    let now = h.advance(Duration::from_millis(1));
    match h
        .request_savepoint(savepoint_request(&target, false), now)
        .as_slice()
    {
        [CoordinatorAction::SavepointDropped { reason, .. }] => {
            assert!(reason.contains("finishing"), "{reason}")
        }
        other => panic!("expected the request dropped: {other:?}"),
    }
}

/// Exhaustion while a periodic checkpoint is in flight: the final one waits
/// for it, and starts with the completion (not with a later tick).
#[test]
fn the_final_checkpoint_waits_for_the_checkpoint_in_flight() {
    let mut h = Harness::new("job-end-wait", settings(1, 3, 1), 1);
    let running = h.trigger();
    assert!(h.exhausted().is_empty(), "{running} is still in flight");
    let actions = h.upload_and_ack(running, 0);
    assert!(is_complete(&actions[0], running), "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, CoordinatorAction::FinishSources)),
        "a checkpoint triggered before exhaustion is not the final one: {actions:?}"
    );
    let last = actions
        .iter()
        .find_map(is_trigger)
        .expect("the final checkpoint follows the completion");
    assert!(last > running);
    let actions = h.ack_all(last);
    assert!(matches!(
        actions.as_slice(),
        [
            CoordinatorAction::Complete { .. },
            CoordinatorAction::FinishSources
        ]
    ));
}

/// Exhaustion while a savepoint is in flight: the final checkpoint waits for
/// the savepoint, whose completion notifies no task and does not end the job.
#[test]
fn exhaustion_while_a_savepoint_is_in_flight_waits_for_it() {
    let mut h = Harness::new("job-end-sp", settings(1, 3, 1), 1);
    let target = unique_memory();
    let savepoint = h.savepoint(&target);
    assert!(h.exhausted().is_empty(), "the savepoint is in flight");
    let actions = h.ack_savepoint(&target, savepoint, 0);
    let last = match actions.as_slice() {
        [
            CoordinatorAction::Complete {
                id,
                notify_tasks: false,
                request: Some(request),
                ..
            },
            trigger,
        ] => {
            assert_eq!(*id, savepoint);
            assert_eq!(*request, savepoint_request(&target, false).request);
            is_trigger(trigger).expect("then the final checkpoint")
        }
        other => panic!("expected the savepoint, then the final checkpoint: {other:?}"),
    };
    let actions = h.ack_all(last);
    assert!(matches!(
        actions.as_slice(),
        [
            CoordinatorAction::Complete { .. },
            CoordinatorAction::FinishSources
        ]
    ));
}

/// A savepoint requested while a checkpoint is in flight waits for it (one
/// waits at most), and starts when it completes.
#[test]
fn a_savepoint_request_waits_for_the_snapshot_in_flight() {
    let mut h = Harness::new("job-queue", settings(1, 3, 1), 1);
    let running = h.trigger();
    let target = unique_memory();
    let now = h.advance(Duration::from_millis(1));
    assert!(
        h.request_savepoint(savepoint_request(&target, false), now)
            .is_empty()
    );
    let other = unique_memory();
    assert!(matches!(
        h.request_savepoint(savepoint_request(&other, false), now)
            .as_slice(),
        [CoordinatorAction::SavepointDropped { .. }]
    ));
    let actions = h.upload_and_ack(running, 0);
    assert!(is_complete(&actions[0], running), "{actions:?}");
    assert!(
        matches!(&actions[1..], [CoordinatorAction::TriggerSavepoint { savepoint, .. }]
            if *savepoint == savepoint_request(&target, false)),
        "{actions:?}"
    );
}

/// Without periodic checkpoints there is no final checkpoint: exhaustion
/// ends the sources' output at once, and nothing is written to checkpoint
/// storage.
#[test]
fn without_checkpoints_exhaustion_finishes_the_sources_at_once() {
    let off = CoordinatorSettings {
        interval: None,
        ..settings(1, 3, 1)
    };
    let mut h = Harness::new("job-off-end", off, 2);
    assert_eq!(h.exhausted(), vec![CoordinatorAction::FinishSources]);
    assert!(h.coordinator.sources_finished());
    let now = h.advance(INTERVAL * 10);
    assert!(h.tick(now).is_empty());
    assert_eq!(h.recording.log(), Vec::new());
}

/// Without periodic checkpoints, exhaustion while a stop-with-savepoint is
/// in flight: the sources finish when it completes (once, not twice).
#[test]
fn without_checkpoints_exhaustion_waits_for_the_savepoint_in_flight() {
    let off = CoordinatorSettings {
        interval: None,
        ..settings(1, 3, 1)
    };
    let mut h = Harness::new("job-off-sp", off, 1);
    let target = unique_memory();
    let id = h.savepoint(&target);
    assert!(h.exhausted().is_empty(), "the savepoint is in flight");
    let actions = h.ack_savepoint(&target, id, 0);
    match actions.as_slice() {
        [
            CoordinatorAction::Complete {
                notify_tasks: false,
                ..
            },
            CoordinatorAction::FinishSources,
        ] => {}
        other => panic!("expected the savepoint, then the end: {other:?}"),
    }
}

/// A failed final checkpoint is taken again (and counts as a failure);
/// too many in a row fail the job, as for any checkpoint.
#[test]
fn a_failed_final_checkpoint_is_taken_again() {
    let mut h = Harness::new("job-end-fail", settings(1, 1, 1), 1);
    let actions = h.exhausted();
    let first = is_trigger(&actions[0]).expect("the final checkpoint");
    let actions = h.decline(first);
    assert!(is_abort(&actions[0], first), "{actions:?}");
    assert!(!has_fail_job(&actions));
    let again = actions
        .iter()
        .find_map(is_trigger)
        .expect("the final checkpoint again, at once");
    assert!(again > first);
    // A timeout too.
    let now = h.advance(TIMEOUT);
    let actions = h.tick(now);
    assert!(is_abort(&actions[0], again), "{actions:?}");
    assert!(
        has_fail_job(&actions),
        "2 failures, 1 tolerated: {actions:?}"
    );
    let third = actions
        .iter()
        .find_map(is_trigger)
        .expect("taken again until the job is failed");
    assert!(!h.coordinator.sources_finished());
    let actions = h.ack_all(third);
    assert!(matches!(
        actions.as_slice(),
        [
            CoordinatorAction::Complete { .. },
            CoordinatorAction::FinishSources
        ]
    ));
}

/// Stop-with-savepoint: its completion notifies every task (sinks commit)
/// and ends the sources' output; a failed one resumes them first.
#[test]
fn a_stop_with_savepoint_finishes_the_sources_and_a_failed_one_resumes_them() {
    let mut h = Harness::new("job-stop", settings(1, 3, 1), 1);
    let failing = unique_memory();
    let id = h.request(&failing, true);
    let actions = h.decline(id);
    match actions.as_slice() {
        [
            CoordinatorAction::ResumeSources,
            CoordinatorAction::Abort {
                id: aborted,
                request: Some(_),
                ..
            },
        ] => assert_eq!(*aborted, id),
        other => panic!("expected Resume, then the abort: {other:?}"),
    }
    assert!(!h.coordinator.sources_finished());

    let target = unique_memory();
    let id = h.request(&target, true);
    let actions = h.ack_savepoint(&target, id, 0);
    match actions.as_slice() {
        [
            CoordinatorAction::Complete {
                id: done,
                notify_tasks: true,
                request: Some(_),
                ..
            },
            CoordinatorAction::FinishSources,
        ] => assert_eq!(*done, id),
        other => panic!("expected Complete, then the end: {other:?}"),
    }
    assert!(h.coordinator.sources_finished());
}

/// `Complete` carries the figures of the checkpoint: the same as recorded,
/// with its duration and trigger time on the given clocks.
#[test]
fn complete_carries_the_checkpoints_figures() {
    let mut h = Harness::new("job-stats", settings(1, 3, 1), 2);
    let id = h.trigger();
    let triggered = h.now();
    h.upload_and_ack(id, 0);
    let actions = h.upload_and_ack(id, 1);
    let CoordinatorAction::Complete { stats, .. } = &actions[0] else {
        panic!("{actions:?}");
    };
    assert_eq!(stats.id, id);
    assert_eq!(stats.kind, SnapshotKind::Checkpoint);
    assert_eq!(stats.trigger_unix_ms, triggered.unix_ms);
    assert_eq!(stats.duration, Duration::from_millis(2));
    assert_eq!(stats.tasks.len(), 2);
    assert_eq!(stats.sync_pause_max, Duration::from_micros(11));
    assert_eq!(Some(stats), h.coordinator.completed().last());
    let metadata =
        flowstate_checkpoint::read_metadata(h.storage.as_ref(), &metadata_path(&h.job, id))
            .unwrap();
    assert_eq!(metadata.created_unix_ms, h.now().unix_ms);
}

/// The figures kept are bounded; the count is not.
#[test]
fn completed_history_is_bounded() {
    let mut h = Harness::new("job-history", settings(1, 3, 1), 1);
    let total = COMPLETED_STATS_MAX + 5;
    let mut last = 0;
    for _ in 0..total {
        last = h.complete_one();
    }
    let kept = h.coordinator.completed();
    assert_eq!(kept.len(), COMPLETED_STATS_MAX);
    assert_eq!(kept.last().map(|s| s.id), Some(last));
    assert_eq!(
        kept.first().map(|s| s.id),
        Some(last - COMPLETED_STATS_MAX as u64 + 1)
    );
    assert_eq!(h.coordinator.completed_count(), total as u64);
}

/// When a stop ends the job, a request still waiting is answered as dropped.
#[test]
fn a_waiting_request_is_dropped_when_the_job_stops() {
    let mut h = Harness::new("job-stopped", settings(1, 3, 1), 1);
    let running = h.trigger();
    let target = unique_memory();
    let now = h.advance(Duration::from_millis(1));
    assert!(
        h.request_savepoint(savepoint_request(&target, true), now)
            .is_empty()
    );
    let now = h.advance(Duration::from_millis(1));
    let actions = h.on_job_stopped(now);
    assert!(
        matches!(actions.as_slice(), [CoordinatorAction::SavepointDropped { request, .. }]
            if *request == savepoint_request(&target, true).request),
        "{actions:?}"
    );
    h.assert_gone(running);
}

// ---------------------------------------------------------------------------
// Storage effects (issue 12): the coordinator writes and deletes nothing
// itself. These tests hold a metadata write back, fail it, or let it land
// late, and look at what the coordinator answers, on invented time.

/// A `WriteMetadata` held back by the test.
struct HeldWrite {
    id: CheckpointId,
    store: Store,
    path: String,
    bytes: Vec<u8>,
}

impl Harness {
    /// Every task uploads and acknowledges `id`, straight to the coordinator
    /// (nothing is carried out); returns the answer to the last ack.
    fn ack_all_raw(&mut self, id: CheckpointId) -> Vec<CoordinatorAction> {
        let mut last = Vec::new();
        for task in 0..self.tasks {
            let snapshot = self.upload(id, task);
            let now = self.advance(Duration::from_millis(1));
            last = self.coordinator.on_ack(ack(id, task, snapshot), now);
            if task + 1 < self.tasks {
                assert!(last.is_empty(), "{last:?}");
            }
        }
        last
    }

    /// Carries out a held write in `storage` and reports the outcome;
    /// returns what the coordinator answers, not carried out.
    fn land(&mut self, write: HeldWrite, target: &SharedStorage) -> Vec<CoordinatorAction> {
        let result = target
            .put_if_absent(&write.path, write.bytes)
            .map_err(|e| e.to_string());
        let now = self.advance(Duration::from_millis(1));
        self.coordinator.on_metadata_written(write.id, result, now)
    }

    /// Reports a failed write of `id` (nothing was written); returns the answer.
    fn fail_write(&mut self, id: CheckpointId) -> Vec<CoordinatorAction> {
        let now = self.advance(Duration::from_millis(1));
        self.coordinator
            .on_metadata_written(id, Err("injected write failure".into()), now)
    }
}

/// The answer must be exactly one metadata write; returns it.
fn the_write(actions: Vec<CoordinatorAction>) -> HeldWrite {
    match <[CoordinatorAction; 1]>::try_from(actions) {
        Ok(
            [
                CoordinatorAction::WriteMetadata {
                    id,
                    store,
                    path,
                    bytes,
                    ..
                },
            ],
        ) => HeldWrite {
            id,
            store,
            path,
            bytes,
        },
        Err(other) => panic!("expected only a metadata write: {other:?}"),
        Ok(other) => panic!("expected only a metadata write: {other:?}"),
    }
}

fn deletes(actions: &[CoordinatorAction]) -> Vec<(Option<CheckpointId>, Deletion)> {
    actions
        .iter()
        .filter_map(|a| match a {
            CoordinatorAction::Delete { id, what, .. } => Some((*id, what.clone())),
            _ => None,
        })
        .collect()
}

fn touches(deletion: &Deletion, id: CheckpointId) -> bool {
    let dir = format!("/chk-{id}");
    match deletion {
        Deletion::File(p) | Deletion::Prefix(p) => p.contains(&dir),
        Deletion::Checkpoint {
            metadata, dir: d, ..
        } => metadata.contains(&dir) || d.contains(&dir),
    }
}

/// The last ack answers with the `_metadata` write, nothing else: the
/// checkpoint is in flight (persisting) until the driver reports the write,
/// and only then complete; nothing is triggered in between.
#[test]
fn a_checkpoint_completes_only_after_its_metadata_write_succeeded() {
    let mut h = Harness::new("job-w1", settings(1, 3, 1), 2);
    let id = h.trigger();
    let write = the_write(h.ack_all_raw(id));
    assert_eq!(write.id, id);
    assert_eq!(write.store, Store::Checkpoints);
    assert_eq!(write.path, metadata_path(&h.job, id));
    assert!(
        h.recording
            .log()
            .iter()
            .all(|op| !matches!(op, Op::PutIfAbsent(_)))
    );
    assert!(
        h.completed_ids().is_empty(),
        "the coordinator wrote nothing itself"
    );
    assert_eq!(
        (h.coordinator.in_flight(), h.coordinator.persisting()),
        (1, 1)
    );
    assert!(h.coordinator.completed().is_empty());

    // Time passes (less than the timeout): nothing completes, nothing starts.
    let now = h.advance(INTERVAL * 3);
    assert_eq!(h.coordinator.next_trigger_at(now), None);
    assert!(h.coordinator.tick(now).is_empty());

    let bytes = write.bytes.clone();
    let storage = Arc::clone(&h.storage);
    let actions = h.land(write, &storage);
    assert_only_complete(&actions, id);
    assert_eq!(h.coordinator.persisting(), 0);
    assert_eq!(h.completed_ids(), vec![id]);
    assert_eq!(h.storage.get(&metadata_path(&h.job, id)).unwrap(), bytes);
    h.assert_intact(id);
    let stats = &h.coordinator.completed()[0];
    assert_eq!(stats.duration, Duration::from_millis(2 + 3000 + 1));
}

/// A failed metadata write aborts the checkpoint like any failure (counted,
/// tolerated up to the limit): no `Complete` for it, its files go, and the
/// checkpoint before it stays.
#[test]
fn a_failed_metadata_write_aborts_and_nothing_is_committed() {
    let mut h = Harness::new("job-w2", settings(1, 0, 1), 2);
    let kept = h.complete_one();
    let id = h.trigger();
    let write = the_write(h.ack_all_raw(id));
    assert_eq!(write.id, id);
    let actions = h.fail_write(id);
    assert!(!actions.iter().any(|a| is_complete(a, id)), "{actions:?}");
    assert!(
        matches!(actions.iter().find(|a| is_abort(a, id)),
            Some(CoordinatorAction::Abort { reason, .. }) if reason.contains("injected write failure")),
        "{actions:?}"
    );
    assert!(has_fail_job(&actions), "0 failures tolerated: {actions:?}");
    assert_eq!(
        deletes(&actions),
        vec![(Some(id), Deletion::Prefix(checkpoint_dir(&h.job, id)))],
        "its directory, and nothing of {kept}"
    );
    let now = h.now();
    assert!(h.drive(actions, now).iter().all(|a| !is_complete(a, id)));
    h.assert_gone(id);
    h.assert_intact(kept);
    assert_eq!(h.completed_ids(), vec![kept]);
    assert_eq!(h.coordinator.failed_count(), 1);
    assert_eq!(h.coordinator.in_flight(), 0);
    // A late report of the same write changes nothing.
    assert!(h.fail_write(id).is_empty());
}

/// Retention deletes nothing while the newer checkpoint's write is
/// outstanding (nor when it fails); they come with its completion, after
/// `Complete`, metadata first.
#[test]
fn retention_deletes_come_only_after_the_newer_checkpoint_completed() {
    let mut h = Harness::new("job-w3", settings(1, 3, 1), 1);
    let old = h.complete_one();

    // A newer one whose write fails: the old one stays, untouched.
    let failing = h.trigger();
    let _ = the_write(h.ack_all_raw(failing));
    let actions = h.fail_write(failing);
    assert!(
        deletes(&actions).iter().all(|(_, d)| !touches(d, old)),
        "{actions:?}"
    );
    let now = h.now();
    h.drive(actions, now);
    h.assert_intact(old);

    // A newer one that completes: nothing of the old one before its write
    // succeeded, then the old one goes.
    let newer = h.trigger();
    let write = the_write(h.ack_all_raw(newer));
    h.assert_intact(old);
    let storage = Arc::clone(&h.storage);
    let actions = h.land(write, &storage);
    let complete_at = actions.iter().position(|a| is_complete(a, newer)).unwrap();
    let delete_at = actions
        .iter()
        .position(|a| matches!(a, CoordinatorAction::Delete { id: Some(i), .. } if *i == old))
        .unwrap();
    assert!(complete_at < delete_at, "{actions:?}");
    assert_eq!(
        deletes(&actions),
        vec![(
            Some(old),
            Deletion::Checkpoint {
                metadata: metadata_path(&h.job, old),
                dir: checkpoint_dir(&h.job, old),
                shared: Vec::new(),
            }
        )]
    );
    let now = h.now();
    h.drive(actions, now);
    h.assert_gone(old);
    h.assert_intact(newer);
    assert_eq!(h.completed_ids(), vec![newer]);
}

/// Two in flight: the newer one completes while the older one's write is
/// outstanding. The older one is aborted (subsumed) but its files stay
/// until the outcome of its write is known: it goes once the write landed
/// (metadata first) or failed; it never completes.
#[test]
fn a_newer_checkpoint_completing_while_an_older_write_is_outstanding() {
    for lands in [true, false] {
        let mut h = Harness::new("job-w4", settings(1, 3, 2), 1);
        let now = h.advance(INTERVAL);
        let first = match h.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
            Some(CoordinatorAction::Trigger { id, .. }) => id,
            other => panic!("{other:?}"),
        };
        let second = match h.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
            Some(CoordinatorAction::Trigger { id, .. }) => id,
            other => panic!("{other:?}"),
        };
        let held = the_write(h.ack_all_raw(first));
        let newer = the_write(h.ack_all_raw(second));
        assert_eq!(h.coordinator.persisting(), 2);
        let storage = Arc::clone(&h.storage);
        let actions = h.land(newer, &storage);
        assert!(is_complete(&actions[0], second), "{actions:?}");
        assert!(
            actions.iter().any(|a| is_abort(a, first)),
            "subsumed: {actions:?}"
        );
        assert!(
            deletes(&actions).iter().all(|(_, d)| !touches(d, first)),
            "{first}'s write is outstanding: its files must stay: {actions:?}"
        );
        assert_eq!(h.coordinator.in_doubt(), vec![first]);
        let now = h.now();
        h.drive(actions, now);
        assert_eq!(h.written[&first].len(), 1);
        for path in h.written[&first].keys() {
            assert!(h.storage.get(path).is_ok(), "{path} went too early");
        }

        let actions = if lands {
            h.land(held, &storage)
        } else {
            h.fail_write(first)
        };
        assert!(
            !actions.iter().any(|a| is_complete(a, first)),
            "{actions:?}"
        );
        let expected = if lands {
            Deletion::Checkpoint {
                metadata: metadata_path(&h.job, first),
                dir: checkpoint_dir(&h.job, first),
                shared: Vec::new(),
            }
        } else {
            Deletion::Prefix(checkpoint_dir(&h.job, first))
        };
        assert_eq!(deletes(&actions), vec![(Some(first), expected)]);
        let now = h.now();
        assert!(h.drive(actions, now).is_empty());
        h.assert_gone(first);
        h.assert_intact(second);
        assert_eq!(h.completed_ids(), vec![second]);
        assert!(h.coordinator.in_doubt().is_empty());
        assert_eq!(
            h.coordinator
                .completed()
                .iter()
                .map(|s| s.id)
                .collect::<Vec<_>>(),
            vec![second]
        );
    }
}

/// A timeout while the write is outstanding aborts the checkpoint (and
/// counts) but deletes nothing: the write may land. If it does, the
/// checkpoint is restorable and stays until a newer one completed; if it
/// fails, its files go at once.
#[test]
fn a_timeout_while_persisting_keeps_the_files_until_the_outcome_allows() {
    // The write lands after the abort.
    let mut h = Harness::new("job-w5", settings(1, 3, 1), 2);
    let kept = h.complete_one();
    let id = h.trigger();
    let held = the_write(h.ack_all_raw(id));
    let now = h.advance(TIMEOUT);
    let actions = h.coordinator.tick_timeouts(now);
    match actions.as_slice() {
        [
            CoordinatorAction::Abort {
                id: aborted,
                reason,
                request: None,
            },
        ] => {
            assert_eq!(*aborted, id);
            assert!(reason.contains("metadata write is outstanding"), "{reason}");
        }
        other => panic!("expected only the abort, no delete: {other:?}"),
    }
    assert_eq!(h.coordinator.failed_count(), 1);
    assert_eq!(h.coordinator.in_flight(), 0);
    assert_eq!(h.coordinator.in_doubt(), vec![id]);
    let storage = Arc::clone(&h.storage);
    assert!(h.land(held, &storage).is_empty());
    // A restore would take it: nothing of it may go.
    assert_eq!(latest_id(&h.storage), Some(id));
    h.assert_intact(id);
    h.assert_intact(kept);
    // Nor does the next trigger, nor its acks, delete it.
    let next = h.trigger();
    let write = the_write(h.ack_all_raw(next));
    h.assert_intact(id);
    let actions = h.land(write, &storage);
    assert!(is_complete(&actions[0], next), "{actions:?}");
    let deleted: Vec<Option<CheckpointId>> =
        deletes(&actions).into_iter().map(|(i, _)| i).collect();
    assert_eq!(deleted, vec![Some(id), Some(kept)], "{actions:?}");
    let now = h.now();
    h.drive(actions, now);
    h.assert_gone(id);
    h.assert_gone(kept);
    assert_eq!(h.completed_ids(), vec![next]);

    // The write fails after the abort: its files go then.
    let mut h = Harness::new("job-w6", settings(1, 3, 1), 1);
    let id = h.trigger();
    let _held = the_write(h.ack_all_raw(id));
    let now = h.advance(TIMEOUT);
    assert!(deletes(&h.coordinator.tick_timeouts(now)).is_empty());
    let actions = h.fail_write(id);
    assert_eq!(
        deletes(&actions),
        vec![(Some(id), Deletion::Prefix(checkpoint_dir(&h.job, id)))]
    );
    let now = h.now();
    assert!(h.drive(actions, now).is_empty());
    h.assert_gone(id);
    assert!(h.coordinator.in_doubt().is_empty());
}

/// The job stops while a write is outstanding: nothing of that checkpoint is
/// deleted. The next run adopts it if its metadata got there, and removes it
/// as incomplete if not.
#[test]
fn a_job_stop_while_persisting_leaves_the_checkpoint_to_the_next_run() {
    for landed in [true, false] {
        let inner = unique_memory();
        let mut h = Harness::on(Arc::clone(&inner), "job-w7", settings(1, 3, 1), 1, None);
        let kept = h.complete_one();
        let id = h.trigger();
        let held = the_write(h.ack_all_raw(id));
        let now = h.advance(Duration::from_millis(1));
        let actions = h.coordinator.on_job_stopped(now);
        assert!(
            actions.is_empty(),
            "no abort to the tasks, no delete: {actions:?}"
        );
        if landed {
            inner.put_if_absent(&held.path, held.bytes).unwrap();
        }
        // The next run restores the newest checkpoint, as the runtime does.
        let restored = latest_id(&inner);
        assert_eq!(restored, Some(if landed { id } else { kept }));
        let mut next = Harness::on(inner, "job-w7", settings(1, 3, 1), 1, restored);
        next.written = h.written.clone();
        if landed {
            // Adopted as completed: it is the newest, retention keeps it.
            assert_eq!(next.completed_ids(), vec![id]);
            next.assert_intact(id);
        } else {
            next.assert_gone(id);
            next.assert_intact(kept);
        }
    }
}

/// A savepoint's `_metadata` goes to its own directory, never to the
/// checkpoint storage; it completes with the write. A failed write aborts it
/// and removes its directory.
#[test]
fn a_savepoints_metadata_goes_to_its_target() {
    let mut h = Harness::new("job-w8", settings(1, 3, 1), 1);
    let target = unique_memory();
    let id = h.savepoint(&target);
    let snapshot = write_savepoint_file(target.as_ref(), id, 0, 1);
    let now = h.advance(Duration::from_millis(1));
    let write = the_write(h.coordinator.on_ack(ack(id, 0, snapshot), now));
    assert_eq!(write.store, Store::Savepoint(Arc::clone(&target)));
    assert_eq!(write.path, flowstate_checkpoint::layout::METADATA_FILE);
    assert!(
        h.coordinator.is_pending_savepoint(id),
        "in flight until written"
    );
    let actions = h.land(write, &target);
    assert!(
        matches!(actions.as_slice(), [CoordinatorAction::Complete { id: done, request: Some(_), .. }] if *done == id),
        "{actions:?}"
    );
    let opened = load(&target, flowstate_checkpoint::layout::METADATA_FILE).unwrap();
    assert_eq!(opened.id(), id);
    assert_eq!(
        h.recording.log(),
        Vec::new(),
        "nothing in checkpoint storage"
    );

    // A failed write: aborted, answered, its directory removed.
    let failing = unique_memory();
    let id = h.request(&failing, true);
    let snapshot = write_savepoint_file(failing.as_ref(), id, 0, 1);
    let now = h.advance(Duration::from_millis(1));
    let _ = the_write(h.coordinator.on_ack(ack(id, 0, snapshot), now));
    let actions = h.fail_write(id);
    assert_eq!(
        actions[0],
        CoordinatorAction::Delete {
            id: Some(id),
            store: Store::Savepoint(Arc::clone(&failing)),
            what: Deletion::Prefix(String::new()),
        }
    );
    let now = h.now();
    let rest = h.drive(actions, now);
    assert!(
        matches!(
            rest.as_slice(),
            [
                CoordinatorAction::ResumeSources,
                CoordinatorAction::Abort {
                    request: Some(_),
                    ..
                }
            ]
        ),
        "{rest:?}"
    );
    assert!(failing.list("").unwrap().is_empty());
    assert!(!h.coordinator.sources_finished());
}

/// A stop-with-savepoint of a job with periodic checkpoints writes the job's
/// restore pointer with its `_metadata`, before any sink may commit: if the
/// pointer cannot be written, the stop fails (the sources read on, nothing
/// commits), since `--restore latest` would otherwise resume from an older
/// checkpoint and publish the stop's output again (found by the whole-job
/// simulation). A savepoint that does not stop leaves no pointer.
#[test]
fn a_stop_with_savepoint_completes_only_once_its_restore_pointer_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = open_storage(dir.path().join("sp-stop").to_str().unwrap()).unwrap();
    let mut h = Harness::new("job-p", settings(2, 3, 1), 1);
    h.complete_one();

    let plain = h.request(&target, false);
    let snapshot = write_savepoint_file(target.as_ref(), plain, 0, 1);
    let now = h.advance(Duration::from_millis(1));
    match h
        .coordinator
        .on_ack(ack(plain, 0, snapshot), now)
        .as_slice()
    {
        [
            CoordinatorAction::WriteMetadata {
                then_restore_pointer: None,
                ..
            },
        ] => {}
        other => panic!("a plain savepoint's write, without pointer: {other:?}"),
    }
    let now = h.advance(Duration::from_millis(1));
    h.coordinator
        .on_metadata_written(plain, Err("gone".into()), now);

    let target = open_storage(dir.path().join("sp-stop-2").to_str().unwrap()).unwrap();
    let stop = h.request(&target, true);
    let snapshot = write_savepoint_file(target.as_ref(), stop, 0, 1);
    let now = h.advance(Duration::from_millis(1));
    match h.coordinator.on_ack(ack(stop, 0, snapshot), now).as_slice() {
        [
            CoordinatorAction::WriteMetadata {
                then_restore_pointer: Some(pointer),
                ..
            },
        ] => {
            assert_eq!(pointer.job_id, "job-p");
            assert_eq!(pointer.pointer.checkpoint_id, stop);
            assert_eq!(pointer.pointer.location, Some(target.describe()));
        }
        other => panic!("a stop's write, with its pointer: {other:?}"),
    }
    let now = h.advance(Duration::from_millis(1));
    let answer =
        h.coordinator
            .on_metadata_written(stop, Err("recording the pointer failed".into()), now);
    assert!(
        !answer.iter().any(|a| is_complete(a, stop)),
        "nothing may commit: {answer:?}"
    );
    assert!(
        answer
            .iter()
            .any(|a| matches!(a, CoordinatorAction::ResumeSources)),
        "the sources read on: {answer:?}"
    );
}

/// A restore pointer is never passed over: one that does not decode is a
/// damaged candidate before the job's checkpoints (so restoring them is a
/// fallback, which the runtime refuses where it would publish twice), and
/// one whose read fails fails the load (found by the whole-job simulation:
/// the pointer of a stop was silently ignored and `latest` resumed from an
/// older checkpoint).
#[test]
fn a_restore_pointer_that_cannot_be_read_is_never_silently_passed_over() {
    use flowstate_checkpoint::restore::{
        RESTORE_POINTER_FILE, RestorePointer, write_restore_pointer,
    };
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("sp").join("savepoint-d");
    let target = open_storage(location.to_str().unwrap()).unwrap();
    let storage = unique_memory();
    let mut h = Harness::on(Arc::clone(&storage), "job-d", settings(2, 3, 1), 1, None);
    let last = h.complete_one();
    let stop = h.savepoint(&target);
    assert_only_complete(&h.ack_savepoint(&target, stop, 0), stop);
    write_restore_pointer(
        storage.as_ref(),
        "job-d",
        &RestorePointer {
            storage_path: None,
            location: Some(location.display().to_string()),
            checkpoint_id: stop,
            created_unix_ms: h.now().unix_ms,
        },
    )
    .unwrap();
    assert_eq!(load_latest(&storage).unwrap().unwrap().id(), stop);

    let pointer = format!("job-d/{RESTORE_POINTER_FILE}");
    flip_byte(storage.as_ref(), &pointer);
    let fallback = load_latest(&storage).unwrap().unwrap();
    assert_eq!(fallback.id(), last);
    let skipped = fallback.skipped.first().expect("the pointer was skipped");
    assert!(skipped.pointer && skipped.damaged, "{skipped:?}");
    assert!(skipped.path.contains(RESTORE_POINTER_FILE), "{skipped:?}");

    // A pointer whose read fails: the whole load fails (and is retried).
    let failing: SharedStorage = Arc::new(FailingReads {
        inner: Arc::clone(&storage),
        path: pointer.clone(),
    });
    let err = load_latest(&failing).err().expect("the load must fail");
    assert!(err.to_string().contains("injected"), "{err}");
}

/// A storage whose reads of one path fail.
struct FailingReads {
    inner: SharedStorage,
    path: String,
}

impl CheckpointStorage for FailingReads {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put(path, bytes)
    }
    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put_if_absent(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        if path == self.path {
            return Err(StorageError::Io {
                storage: self.describe(),
                operation: "read",
                path: path.into(),
                reason: "injected read failure".into(),
            });
        }
        self.inner.get(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.inner.delete(path)
    }
}

/// A checkpoint whose file cannot be read right now (an I/O error, not
/// damage) fails the load instead of falling back to an older checkpoint:
/// a fallback would replay, or with committing sinks be refused and stop
/// the job over a passing error (found by the whole-job simulation).
#[test]
fn a_read_error_fails_the_load_instead_of_falling_back() {
    let mut h = Harness::new("job-io", settings(2, 3, 1), 1);
    h.complete_one();
    let newest = h.complete_one();
    let storage = Arc::clone(&h.storage);
    let failing: SharedStorage = Arc::new(FailingReads {
        inner: Arc::clone(&storage),
        path: metadata_path("job-io", newest),
    });
    let err = load_latest(&failing).err().expect("no fallback");
    assert!(err.to_string().contains("injected read failure"), "{err}");
    // Readable again: the newest is restored.
    assert_eq!(load_latest(&storage).unwrap().unwrap().id(), newest);
}

// ---------------------------------------------------------------------------
// Stop-with-checkpoint (graceful shutdown).

impl Harness {
    fn request_stop(&mut self) -> Vec<CoordinatorAction> {
        let now = self.advance(Duration::from_millis(1));
        let actions = self.coordinator.request_stop_with_checkpoint(now);
        self.drive(actions, now)
    }
}

/// A stop waits for the checkpoint in flight, triggers no periodic one, and
/// then takes an ordinary checkpoint into the checkpoint storage whose
/// completion notifies the tasks and ends the sources' output.
#[test]
fn a_stop_with_checkpoint_follows_the_checkpoint_in_flight_and_finishes_the_sources() {
    let mut h = Harness::new("job-stop-chk", settings(1, 3, 1), 1);
    let running = h.trigger();
    assert_eq!(h.request_stop(), Vec::new(), "one is in flight");
    assert!(h.coordinator.is_stopping());
    // No periodic checkpoint any more, however long it waits.
    let now = h.advance(INTERVAL * 3);
    assert_eq!(h.tick(now), Vec::new());
    let actions = h.upload_and_ack(running, 0);
    let stop = match actions.as_slice() {
        [
            CoordinatorAction::Complete { id, .. },
            CoordinatorAction::TriggerStopWithCheckpoint { id: stop },
        ] if *id == running => *stop,
        other => panic!("expected the completion, then the stop's trigger: {other:?}"),
    };
    assert!(stop > running);
    let actions = h.upload_and_ack(stop, 0);
    assert!(
        matches!(
            actions.as_slice(),
            [
                CoordinatorAction::Complete {
                    id,
                    notify_tasks: true,
                    request: None,
                    ..
                },
                CoordinatorAction::FinishSources,
            ] if *id == stop
        ),
        "expected Complete (tasks notified), then the end: {actions:?}"
    );
    assert!(h.coordinator.sources_finished());
    assert!(!h.coordinator.is_stopping());
    // An ordinary checkpoint of the job, retained in its storage: what a
    // restore of the job's latest checkpoint takes.
    assert_eq!(h.completed_ids(), vec![stop]);
    h.assert_intact(stop);
    let now = h.advance(INTERVAL * 3);
    assert_eq!(
        h.tick(now),
        Vec::new(),
        "nothing is triggered after the stop"
    );
}

/// A failed stop resumes the sources before its abort and is tried again.
#[test]
fn a_failed_stop_with_checkpoint_resumes_the_sources_and_is_tried_again() {
    let mut h = Harness::new("job-stop-retry", settings(1, 3, 1), 1);
    let first = match h.request_stop().as_slice() {
        [CoordinatorAction::TriggerStopWithCheckpoint { id }] => *id,
        other => panic!("expected the stop's trigger at once: {other:?}"),
    };
    let actions = h.decline(first);
    let second = match actions.as_slice() {
        [
            CoordinatorAction::ResumeSources,
            CoordinatorAction::Abort {
                id, request: None, ..
            },
            CoordinatorAction::TriggerStopWithCheckpoint { id: again },
        ] if *id == first => *again,
        other => panic!("expected Resume, the abort, then the stop again: {other:?}"),
    };
    assert!(!h.coordinator.sources_finished());
    let actions = h.upload_and_ack(second, 0);
    assert!(
        matches!(actions.last(), Some(CoordinatorAction::FinishSources)),
        "{actions:?}"
    );
    assert_eq!(h.completed_ids(), vec![second]);
}

/// A waiting savepoint goes before the stop; asking twice stops once.
#[test]
fn a_waiting_savepoint_goes_before_the_stop_with_checkpoint() {
    let mut h = Harness::new("job-stop-sp", settings(1, 3, 1), 1);
    let running = h.trigger();
    let target = unique_memory();
    let now = h.advance(Duration::from_millis(1));
    assert!(
        h.request_savepoint(savepoint_request(&target, false), now)
            .is_empty()
    );
    assert_eq!(h.request_stop(), Vec::new());
    assert_eq!(h.request_stop(), Vec::new());
    let actions = h.upload_and_ack(running, 0);
    assert!(
        matches!(
            actions.as_slice(),
            [
                CoordinatorAction::Complete { .. },
                CoordinatorAction::TriggerSavepoint { .. }
            ]
        ),
        "the savepoint first: {actions:?}"
    );
}

/// Without periodic checkpoints nothing may be written to the checkpoint
/// storage: the request is ignored (the caller stops the job another way).
/// Once the sources are exhausted the final checkpoint ends the job anyway.
#[test]
fn a_stop_with_checkpoint_is_ignored_without_checkpoints_or_after_the_input() {
    let mut off = settings(1, 3, 1);
    off.interval = None;
    let mut h = Harness::new("job-stop-off", off, 1);
    assert_eq!(h.request_stop(), Vec::new());
    assert!(!h.coordinator.is_stopping());

    let mut h = Harness::new("job-stop-exhausted", settings(1, 3, 1), 1);
    let now = h.advance(Duration::from_millis(1));
    let actions = h.on_sources_exhausted(now);
    assert!(
        matches!(actions.as_slice(), [CoordinatorAction::Trigger { .. }]),
        "the final checkpoint: {actions:?}"
    );
    assert_eq!(h.request_stop(), Vec::new());
    assert!(!h.coordinator.is_stopping());
}

/// A storage whose first listing does not show the newest checkpoint yet and
/// where the older one's `_metadata` is gone once listed: what a
/// restore sees while a live run of the job completes a checkpoint and drops
/// the previous one (`retain 1`).
struct RaceStorage {
    inner: SharedStorage,
    hidden_once: std::sync::Mutex<Option<String>>,
    /// Deleted (by the live run) after the first listing.
    gone: String,
}

impl CheckpointStorage for RaceStorage {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put(path, bytes)
    }
    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put_if_absent(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        if path == self.gone {
            return Err(StorageError::NotFound {
                storage: self.describe(),
                path: path.to_owned(),
            });
        }
        self.inner.get(path)
    }
    fn size(&self, path: &str) -> Result<Option<u64>, StorageError> {
        self.inner.size(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut listed = self.inner.list(prefix)?;
        if let Some(hidden) = self.hidden_once.lock().unwrap().take() {
            listed.retain(|p| !p.starts_with(&hidden));
        }
        Ok(listed)
    }
    fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.inner.delete(path)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        self.inner.delete_prefix(prefix)
    }
}

/// The bug: `--restore latest` beside a live run of the job failed with
/// "'<job>/chk-2/_metadata' does not exist" (the run had just dropped it)
/// instead of restoring the newer checkpoint (and then being refused by the
/// live run's lease). A vanished `_metadata` is listed again, not skipped.
#[test]
fn load_latest_lists_again_when_the_newest_vanished_while_it_was_read() {
    let mut h = Harness::new("job-r", settings(5, 3, 1), 2);
    h.complete_one();
    h.complete_one();
    assert_eq!(h.completed_ids(), vec![1, 2]);
    let racing: SharedStorage = Arc::new(RaceStorage {
        inner: Arc::clone(&h.storage),
        hidden_once: std::sync::Mutex::new(Some("job-r/chk-2".into())),
        gone: metadata_path("job-r", 1),
    });
    let loaded = load_latest_of(&racing, Some("job-r"))
        .expect("restores")
        .expect("a checkpoint");
    assert_eq!(loaded.id(), 2);
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
}

/// The alignment of a trigger's barriers (issue 18): the policy's for a
/// periodic checkpoint (unaligned, or aligned until trigger time plus the
/// aligned timeout), always aligned for the final checkpoint of a bounded
/// job (savepoints and stops carry no alignment: aligned by construction).
#[test]
fn periodic_checkpoints_align_by_the_policy_and_the_final_one_is_aligned() {
    fn alignment(action: &CoordinatorAction) -> BarrierAlignment {
        match action {
            CoordinatorAction::Trigger { alignment, .. } => *alignment,
            other => panic!("expected a Trigger, got {other:?}"),
        }
    }
    let trigger = |h: &mut Harness| {
        let now = h.advance(INTERVAL);
        let actions = h.tick(now);
        assert_eq!(actions.len(), 1, "{actions:?}");
        (now, actions[0].clone())
    };
    // The default: aligned.
    let mut h = Harness::new("align-default", settings(1, 3, 1), 1);
    let (_, action) = trigger(&mut h);
    assert_eq!(alignment(&action), BarrierAlignment::Aligned);
    // Unaligned from the start.
    let mut unaligned = settings(1, 3, 1);
    unaligned.alignment = AlignmentPolicy::Unaligned {
        aligned_timeout: Duration::ZERO,
        inflight_bytes_max: 1 << 20,
    };
    let mut h = Harness::new("align-unaligned", unaligned, 1);
    let (_, action) = trigger(&mut h);
    assert_eq!(alignment(&action), BarrierAlignment::Unaligned);
    // Aligned until trigger time + 250 ms; the final checkpoint aligned.
    let mut timeout = settings(1, 3, 1);
    timeout.alignment = AlignmentPolicy::Unaligned {
        aligned_timeout: Duration::from_millis(250),
        inflight_bytes_max: 1 << 20,
    };
    let mut h = Harness::new("align-timeout", timeout, 1);
    let (now, action) = trigger(&mut h);
    assert_eq!(
        alignment(&action),
        BarrierAlignment::AlignedUntil {
            deadline_unix_ms: now.unix_ms + 250
        }
    );
    let id = is_trigger(&action).expect("a checkpoint");
    h.ack_all(id);
    let actions = h.exhausted();
    let [last] = actions.as_slice() else {
        panic!("expected the final checkpoint: {actions:?}");
    };
    assert_eq!(alignment(last), BarrierAlignment::Aligned);
}
