//! Native files and the files incremental checkpoints share.
//!
//! The coordinator counts references to shared files across the retained
//! checkpoints. What is held to account: a shared file is deleted only when no
//! retained checkpoint references it, and every shared file no retained
//! checkpoint references is gone once nothing is in flight (or, for what
//! crashed runs left, once the job starts again); a checkpoint that references
//! a file retention already deleted does not complete. The tests play tasks
//! whose backends are fakes: they keep a few "SST files" on local disk, drop
//! and add some with every checkpoint, upload them with `upload_native` and
//! reuse what completed checkpoints stored, as the RocksDB backend does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowstate_checkpoint::coordinator::{
    Coordinator, CoordinatorAction, CoordinatorSettings, ExistingCheckpoints, Now, TaskAck,
};
use flowstate_checkpoint::layout::{metadata_path, shared_dir, shared_file_path};
use flowstate_checkpoint::metadata::{
    CheckpointMetadata, FileRef, NativeFileRef, NativeStateHandle, SnapshotKind, SubtaskSnapshot,
};
use flowstate_checkpoint::native_files::{StorageFetcher, upload_native};
use flowstate_checkpoint::restore::{completed_checkpoints, load, load_latest_of};
use flowstate_checkpoint::storage::{SharedStorage, open_storage};
use flowstate_checkpoint::{CheckpointError, CheckpointId};
use flowstate_state::{
    FileFetcher, KeyGroupRange, NativeFile, NativeRestore, NativeSnapshot, StoredFile,
    UploadReceipt,
};

#[path = "support/driver.rs"]
mod driver;
use driver::drive;

const MAX_PARALLELISM: u32 = 8;
const UID: &str = "native-op";
const TIMEOUT: Duration = Duration::from_secs(30);

fn unique_memory() -> SharedStorage {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    open_storage(&format!("memory://shared-state-{}-{n}", std::process::id())).unwrap()
}

/// A temporary directory, in memory where there is one: the fetcher fsyncs
/// every file it writes, which on a disk makes the model test slow.
fn local_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn settings(retain: usize) -> CoordinatorSettings {
    CoordinatorSettings {
        interval: Some(Duration::from_secs(1)),
        timeout: TIMEOUT,
        min_pause: Duration::ZERO,
        max_concurrent: 1,
        tolerable_failures: u32::MAX,
        retain,
        ..CoordinatorSettings::default()
    }
}

fn range_of(task: usize, parallelism: usize) -> KeyGroupRange {
    KeyGroupRange::for_operator(task as u32, parallelism as u32, MAX_PARALLELISM)
}

fn native_ack(id: CheckpointId, task: usize, handle: NativeStateHandle, bytes: u64) -> TaskAck {
    TaskAck {
        id,
        task,
        operators: vec![(
            UID.into(),
            "Native".into(),
            SubtaskSnapshot {
                subtask: task as u32,
                keyed: None,
                native: Some(handle),
                lists: Vec::new(),
                channels: None,
            },
        )],
        bytes,
        sync_pause: Duration::ZERO,
        alignment: Duration::ZERO,
        unaligned: false,
        persisted_bytes: 0,
    }
}

// ---------------------------------------------------------------------------
// A fake native backend: files on local disk, reused as the RocksDB one does.

/// A snapshot in flight: the stored files it reused, and its receipt.
type InFlight = (Vec<(String, StoredFile)>, Arc<UploadReceipt>);

struct FakeBackend {
    task: usize,
    parallelism: usize,
    dir: PathBuf,
    /// The database's current files, `name -> content`.
    live: BTreeMap<String, Vec<u8>>,
    next_file: u64,
    /// Shareable files a completed checkpoint stored, reusable by the next.
    confirmed: BTreeMap<String, StoredFile>,
    /// Snapshots in flight: what they reused and their receipt.
    pending: BTreeMap<CheckpointId, InFlight>,
    /// Completions heard late (after the next snapshot).
    deferred: Vec<CheckpointId>,
    /// The files of every snapshot, to compare a restore with.
    history: BTreeMap<CheckpointId, BTreeMap<String, Vec<u8>>>,
}

impl FakeBackend {
    fn new(task: usize, parallelism: usize, dir: PathBuf) -> Self {
        Self {
            task,
            parallelism,
            dir,
            live: BTreeMap::new(),
            next_file: 1,
            confirmed: BTreeMap::new(),
            pending: BTreeMap::new(),
            deferred: Vec::new(),
            history: BTreeMap::new(),
        }
    }

    fn add_sst(&mut self, rng: &mut fastrand::Rng) -> String {
        let name = format!("{:06}.sst", self.next_file);
        self.next_file += 1;
        let mut content = format!("{}:{name}:", self.task).into_bytes();
        content.extend((0..rng.usize(1..64)).map(|_| rng.u8(..)));
        self.live.insert(name.clone(), content);
        name
    }

    /// Compacts a little (drops some SST files, writes new ones) and takes a
    /// native snapshot: files hard-linked into a directory of their own.
    fn snapshot(&mut self, id: CheckpointId, rng: &mut fastrand::Rng) -> NativeSnapshot {
        let ssts: Vec<String> = self
            .live
            .keys()
            .filter(|n| n.ends_with(".sst"))
            .cloned()
            .collect();
        for name in ssts {
            if rng.u8(0..10) < 3 {
                self.live.remove(&name);
            }
        }
        for _ in 0..rng.usize(1..=2) {
            self.add_sst(rng);
        }
        self.live
            .insert("CURRENT".into(), format!("MANIFEST-{id}").into_bytes());
        self.history.insert(id, self.live.clone());
        let dir = self.dir.join(format!("chk-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        let mut reused = Vec::new();
        for (name, content) in &self.live {
            let local = dir.join(name);
            std::fs::write(&local, content).unwrap();
            let shareable = name.ends_with(".sst");
            let stored = self
                .confirmed
                .get(name)
                .filter(|s| shareable && s.size == content.len() as u64)
                .cloned();
            if let Some(stored) = &stored {
                reused.push((name.clone(), stored.clone()));
            }
            files.push(NativeFile {
                name: name.clone(),
                local,
                size: content.len() as u64,
                stored,
                shareable,
            });
        }
        let receipt = Arc::new(UploadReceipt::default());
        self.pending.insert(id, (reused, Arc::clone(&receipt)));
        for heard in std::mem::take(&mut self.deferred) {
            self.complete(heard);
        }
        NativeSnapshot {
            prepare: None,
            backend: "fake".into(),
            range: range_of(self.task, self.parallelism),
            checkpoint_id: id,
            states: Vec::new(),
            files,
            receipt,
            guard: Box::new(()),
        }
    }

    fn complete(&mut self, id: CheckpointId) {
        if let Some((reused, receipt)) = self.pending.remove(&id) {
            self.confirmed = reused.into_iter().chain(receipt.take()).collect();
        }
        self.pending.retain(|&p, _| p > id);
    }

    fn abort(&mut self, id: CheckpointId) {
        self.pending.remove(&id);
    }

    /// Restores from `restores` (this instance's own old state) into a new
    /// directory, fetching every file.
    fn restore(&mut self, restores: &[NativeRestore], restored: CheckpointId, dir: PathBuf) {
        assert_eq!(restores.len(), 1, "same parallelism: one old instance");
        let restore = &restores[0];
        assert_eq!(restore.range, range_of(self.task, self.parallelism));
        self.dir = dir;
        let db = self.dir.join("db");
        let mut live = BTreeMap::new();
        for (name, stored) in &restore.files {
            let to = db.join(name);
            restore.fetcher.fetch(stored, &to, false).unwrap();
            live.insert(name.clone(), std::fs::read(&to).unwrap());
        }
        assert_eq!(
            Some(&live),
            self.history.get(&restored),
            "task {}: restored files differ from checkpoint {restored}'s",
            self.task
        );
        self.live = live;
        self.confirmed = if restore.reusable {
            restore
                .files
                .iter()
                .filter(|(name, _)| name.ends_with(".sst"))
                .cloned()
                .collect()
        } else {
            BTreeMap::new()
        };
        self.pending.clear();
        self.deferred.clear();
    }
}

// ---------------------------------------------------------------------------
// The invariants, read from storage.

/// Every file a completed checkpoint of `job` references exists with its
/// recorded size and checksum; nothing under `shared/` is unreferenced; no
/// directory of a checkpoint that did not complete is left. Returns the
/// completed ids.
fn assert_invariants(storage: &SharedStorage, job: &str, context: &str) -> Vec<CheckpointId> {
    let mut referenced = BTreeSet::new();
    let mut completed = Vec::new();
    for (_, id, path) in completed_checkpoints(storage.as_ref())
        .unwrap()
        .into_iter()
        .filter(|(j, _, _)| j == job)
    {
        let loaded = load(storage, &path)
            .unwrap_or_else(|e| panic!("{context}: retained checkpoint {id} does not load: {e}"));
        for file in loaded.metadata.native_files() {
            let bytes = storage
                .get(&file.file.path)
                .unwrap_or_else(|e| panic!("{context}: checkpoint {id} lost a file: {e}"));
            assert_eq!(
                crc32c::crc32c(&bytes),
                file.file.crc32c,
                "{context}: {} changed",
                file.file.path
            );
            referenced.insert(file.file.path.clone());
        }
        completed.push(id);
    }
    for path in storage.list(&shared_dir(job)).unwrap() {
        assert!(
            referenced.contains(&path),
            "{context}: shared file {path} is referenced by no retained checkpoint \
             (retained: {completed:?})"
        );
    }
    for path in storage.list(&format!("{job}/")).unwrap() {
        if let Some(id) = path
            .strip_prefix(&format!("{job}/chk-"))
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.parse::<CheckpointId>().ok())
        {
            assert!(
                completed.contains(&id),
                "{context}: {path} belongs to checkpoint {id}, which did not complete"
            );
        }
    }
    completed.sort_unstable();
    completed
}

// ---------------------------------------------------------------------------
// The model: a job of fake backends driven through random checkpoint fates.

struct Job {
    storage: SharedStorage,
    job: String,
    retain: usize,
    tasks: usize,
    coordinator: Coordinator,
    backends: Vec<FakeBackend>,
    tmp: tempfile::TempDir,
    t0: Now,
    clock: Duration,
    rng: fastrand::Rng,
    restarts: u64,
    /// Checkpoints aborted because a task referenced a deleted shared file.
    stale_references: usize,
    completions: usize,
}

impl Job {
    fn new(seed: u64, retain: usize, tasks: usize) -> Self {
        let storage = unique_memory();
        let job = format!("job-{seed}");
        let tmp = local_tempdir();
        let t0 = Now::system();
        let coordinator = Coordinator::new(
            &job,
            settings(retain),
            tasks,
            tasks as u32,
            MAX_PARALLELISM,
            None,
            ExistingCheckpoints::read(storage.as_ref(), &job, None),
            t0,
        );
        let backends = (0..tasks)
            .map(|t| FakeBackend::new(t, tasks, tmp.path().join(format!("run-0-task-{t}"))))
            .collect();
        Self {
            storage,
            job,
            retain,
            tasks,
            coordinator,
            backends,
            tmp,
            t0,
            clock: Duration::ZERO,
            rng: fastrand::Rng::with_seed(seed),
            restarts: 0,
            stale_references: 0,
            completions: 0,
        }
    }

    fn now(&mut self) -> Now {
        self.clock += Duration::from_millis(1);
        self.t0 + self.clock
    }

    fn trigger(&mut self) -> CheckpointId {
        let now = self.now();
        match self.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
            Some(CoordinatorAction::Trigger { id, .. }) => id,
            other => panic!("expected a trigger, got {other:?}"),
        }
    }

    /// Task `task` snapshots and uploads checkpoint `id`; returns its ack.
    fn upload(&mut self, id: CheckpointId, task: usize) -> TaskAck {
        let snapshot = self.backends[task].snapshot(id, &mut self.rng);
        let (handle, bytes) = upload_native(
            self.storage.as_ref(),
            &self.job,
            UID,
            task as u32,
            &snapshot,
        )
        .unwrap();
        native_ack(id, task, handle, bytes)
    }

    fn ack(&mut self, ack: TaskAck) -> Vec<CoordinatorAction> {
        let now = self.now();
        let actions = self.coordinator.on_ack(ack, now);
        let actions = drive(&mut self.coordinator, &self.storage, actions, now);
        self.carry_out(&actions);
        actions
    }

    /// What the runtime does with the coordinator's answers: tell the tasks.
    fn carry_out(&mut self, actions: &[CoordinatorAction]) {
        for action in actions {
            match action {
                CoordinatorAction::Complete { id, .. } => {
                    self.completions += 1;
                    for backend in &mut self.backends {
                        // Some tasks hear of it only after their next snapshot.
                        if self.rng.u8(0..10) < 3 {
                            backend.deferred.push(*id);
                        } else {
                            backend.complete(*id);
                        }
                    }
                }
                CoordinatorAction::Abort { id, reason, .. } => {
                    if reason.contains("no retained checkpoint references") {
                        self.stale_references += 1;
                    }
                    for backend in &mut self.backends {
                        backend.abort(*id);
                    }
                }
                _ => {}
            }
        }
    }

    fn decline(&mut self, id: CheckpointId) {
        let now = self.now();
        let actions = self.coordinator.on_decline(id, "test declines".into(), now);
        let actions = drive(&mut self.coordinator, &self.storage, actions, now);
        assert!(
            matches!(actions.first(), Some(CoordinatorAction::Abort { id: a, .. }) if *a == id),
            "{actions:?}"
        );
        self.carry_out(&actions);
    }

    /// Every task acknowledges: completes, or aborts for a stale reference.
    fn all_ack(&mut self, id: CheckpointId) {
        for task in 0..self.tasks {
            let ack = self.upload(id, task);
            let actions = self.ack(ack);
            if task + 1 < self.tasks {
                assert!(actions.is_empty(), "{actions:?}");
            } else {
                assert!(
                    matches!(
                        actions.first(),
                        Some(CoordinatorAction::Complete { .. } | CoordinatorAction::Abort { .. })
                    ),
                    "{actions:?}"
                );
            }
        }
    }

    /// Some tasks acknowledge, then one declines (it failed before uploading).
    fn decline_midway(&mut self, id: CheckpointId) {
        let acking = self.rng.usize(0..self.tasks);
        for task in 0..acking {
            let ack = self.upload(id, task);
            assert!(self.ack(ack).is_empty());
        }
        self.decline(id);
    }

    /// A task's upload finishes after the checkpoint was aborted (timed out):
    /// it acknowledges late.
    fn late_ack(&mut self, id: CheckpointId) {
        let slow = self.upload(id, self.tasks - 1);
        for task in 0..self.tasks - 1 {
            let ack = self.upload(id, task);
            assert!(self.ack(ack).is_empty());
        }
        self.clock += TIMEOUT;
        let now = self.now();
        let actions = self.coordinator.tick_timeouts(now);
        let actions = drive(&mut self.coordinator, &self.storage, actions, now);
        self.carry_out(&actions);
        assert!(self.ack(slow).is_empty(), "a late ack does nothing");
    }

    /// The process dies with a checkpoint in flight (files uploaded, some
    /// acknowledged, no metadata), then the job starts again from its latest
    /// checkpoint.
    fn crash_and_restart(&mut self, id: CheckpointId) {
        for task in 0..self.tasks {
            let ack = self.upload(id, task);
            if task + 1 < self.tasks {
                assert!(self.ack(ack).is_empty());
            }
        }
        self.restarts += 1;
        let restored = load_latest_of(&self.storage, Some(&self.job)).unwrap();
        let restored_id = restored.as_ref().map(|r| r.id());
        self.coordinator = Coordinator::new(
            &self.job,
            settings(self.retain),
            self.tasks,
            self.tasks as u32,
            MAX_PARALLELISM,
            restored_id,
            ExistingCheckpoints::read(self.storage.as_ref(), &self.job, restored_id),
            self.t0 + self.clock,
        );
        // What adoption decided comes first in the first answer.
        let now = self.t0 + self.clock;
        let startup = self.coordinator.tick(now);
        assert!(drive(&mut self.coordinator, &self.storage, startup, now).is_empty());
        for task in 0..self.tasks {
            let dir = self
                .tmp
                .path()
                .join(format!("run-{}-task-{task}", self.restarts));
            let backend = &mut self.backends[task];
            match &restored {
                Some(loaded) => {
                    let state = loaded
                        .keyed_state(UID, range_of(task, self.tasks), &self.job)
                        .unwrap();
                    assert!(state.groups.is_empty() && state.streams.is_empty());
                    backend.restore(&state.native, loaded.id(), dir);
                }
                None => {
                    let next_file = backend.next_file;
                    *backend = FakeBackend::new(task, self.tasks, dir);
                    backend.next_file = next_file;
                }
            }
        }
    }

    fn step(&mut self) {
        let id = self.trigger();
        match self.rng.u8(0..20) {
            0..=13 => self.all_ack(id),
            14..=15 => self.decline_midway(id),
            16..=17 => self.late_ack(id),
            _ => self.crash_and_restart(id),
        }
    }
}

/// The model test: many seeded runs of about a dozen checkpoints, with
/// retention 1 to 3, where each checkpoint reuses some files of earlier ones
/// and uploads new ones, and checkpoints complete, are declined midway, time
/// out with a late acknowledgement, or die with the process. After every
/// step, every file a retained checkpoint references is in storage, intact,
/// and no shared file is left that no retained checkpoint references.
#[test]
fn shared_files_live_exactly_as_long_as_a_retained_checkpoint_references_them() {
    let (mut stale, mut restarts, mut completions) = (0, 0, 0);
    for seed in 0..40u64 {
        let retain = 1 + (seed % 3) as usize;
        let tasks = 1 + (seed % 2) as usize;
        let mut job = Job::new(seed, retain, tasks);
        for step in 0..12 {
            job.step();
            let context = format!("seed {seed}, retain {retain}, step {step}");
            let retained = assert_invariants(&job.storage, &job.job, &context);
            assert!(retained.len() <= retain, "{context}: {retained:?}");
        }
        stale += job.stale_references;
        restarts += job.restarts;
        completions += job.completions;
    }
    // The runs went through every kind of step, including the race the
    // validation exists for.
    assert!(completions > 200, "{completions} completions");
    assert!(restarts > 20, "{restarts} restarts");
    assert!(stale > 0, "no checkpoint referenced a deleted file");
}

/// Retain 2, ten checkpoints, one task: each checkpoint keeps the files of
/// the one before but one, and adds one. Deterministic companion of the model.
#[test]
fn retention_of_two_keeps_every_referenced_file_and_nothing_else() {
    let mut job = Job::new(1_000, 2, 1);
    for step in 0..10 {
        let id = job.trigger();
        job.all_ack(id);
        let retained = assert_invariants(&job.storage, &job.job, &format!("step {step}"));
        assert_eq!(retained.len(), (step + 1).min(2), "{retained:?}");
    }
    assert_eq!(job.completions, 10);
}

// ---------------------------------------------------------------------------
// Hand-built acknowledgements for the deterministic cases.

/// A stand-in for one task: puts files at their layout paths and builds the
/// handles an uploader would acknowledge with.
struct Hand {
    storage: SharedStorage,
    job: String,
    coordinator: Coordinator,
    t0: Now,
    clock: Duration,
}

impl Hand {
    fn new(job: &str, retain: usize) -> Self {
        Self::on(unique_memory(), job, retain, 1, None)
    }

    /// A coordinator (a new run of the job) expecting `tasks` acknowledgements.
    fn on(
        storage: SharedStorage,
        job: &str,
        retain: usize,
        tasks: usize,
        restored: Option<CheckpointId>,
    ) -> Self {
        let t0 = Now::system();
        let coordinator = Coordinator::new(
            job,
            settings(retain),
            tasks,
            tasks as u32,
            MAX_PARALLELISM,
            restored,
            ExistingCheckpoints::read(storage.as_ref(), job, restored),
            t0,
        );
        // What adoption decided comes first in the first answer.
        let mut coordinator = coordinator;
        let startup = coordinator.tick(t0);
        assert!(drive(&mut coordinator, &storage, startup, t0).is_empty());
        Self {
            storage,
            job: job.into(),
            coordinator,
            t0,
            clock: Duration::ZERO,
        }
    }

    fn now(&mut self) -> Now {
        self.clock += Duration::from_millis(1);
        self.t0 + self.clock
    }

    fn trigger(&mut self) -> CheckpointId {
        let now = self.now();
        match self.coordinator.trigger_now(SnapshotKind::Checkpoint, now) {
            Some(CoordinatorAction::Trigger { id, .. }) => id,
            other => panic!("{other:?}"),
        }
    }

    /// Uploads `name` as a new shared file of checkpoint `id`.
    fn new_file(&self, id: CheckpointId, name: &str) -> NativeFileRef {
        let path = shared_file_path(&self.job, UID, 0, id, name);
        let bytes = format!("{path} content").into_bytes();
        let file = FileRef {
            path: path.clone(),
            size: bytes.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
        };
        self.storage.put(&path, bytes).unwrap();
        NativeFileRef {
            name: name.into(),
            file,
            shared: true,
            uploaded_by: id,
        }
    }

    /// References a file an earlier checkpoint uploaded.
    fn reuse(file: &NativeFileRef) -> NativeFileRef {
        NativeFileRef {
            uploaded_by: 0,
            ..file.clone()
        }
    }

    fn ack(&mut self, id: CheckpointId, files: Vec<NativeFileRef>) -> Vec<CoordinatorAction> {
        let handle = NativeStateHandle {
            backend: "fake".into(),
            key_group_start: 0,
            key_group_end: MAX_PARALLELISM,
            states: Vec::new(),
            files,
        };
        let now = self.now();
        let actions = self.coordinator.on_ack(native_ack(id, 0, handle, 0), now);
        drive(&mut self.coordinator, &self.storage, actions, now)
    }

    fn exists(&self, file: &NativeFileRef) -> bool {
        self.storage.size(&file.file.path).unwrap().is_some()
    }

    fn shared_files(&self) -> BTreeSet<String> {
        self.storage
            .list(&shared_dir(&self.job))
            .unwrap()
            .into_iter()
            .collect()
    }
}

fn paths(files: &[&NativeFileRef]) -> BTreeSet<String> {
    files.iter().map(|f| f.file.path.clone()).collect()
}

/// A declined checkpoint's new shared files are deleted, the ones it reused
/// stay; so do the files a late acknowledgement brings after the abort, and
/// the ones of checkpoints in flight when the job stops (`abort_all`).
#[test]
fn aborted_checkpoints_leave_no_unreferenced_shared_file() {
    let mut h = Hand::new("job-abort", 1);
    let one = h.trigger();
    let a = h.new_file(one, "000001.sst");
    assert!(matches!(
        h.ack(one, vec![a.clone()])[0],
        CoordinatorAction::Complete { .. }
    ));

    // From here on two tasks: task 0 acknowledges, task 1 declines.
    let mut two_tasks = Hand::on(Arc::clone(&h.storage), "job-abort", 1, 2, Some(one));
    let two = two_tasks.trigger();
    let b = two_tasks.new_file(two, "000002.sst");
    assert!(
        two_tasks
            .ack(two, vec![Hand::reuse(&a), b.clone()])
            .is_empty()
    );
    let now = two_tasks.now();
    let actions = two_tasks
        .coordinator
        .on_decline(two, "task 1 failed".into(), now);
    let actions = drive(&mut two_tasks.coordinator, &two_tasks.storage, actions, now);
    assert!(matches!(actions[0], CoordinatorAction::Abort { id, .. } if id == two));
    assert!(
        two_tasks.exists(&a),
        "the completed checkpoint's file stays"
    );
    assert!(
        !two_tasks.exists(&b),
        "the aborted checkpoint's new file goes"
    );
    assert_eq!(two_tasks.shared_files(), paths(&[&a]));

    // A late acknowledgement after the abort: its new files go too.
    let late = two_tasks.new_file(two, "000003.sst");
    assert!(
        two_tasks
            .ack(two, vec![Hand::reuse(&a), late.clone()])
            .is_empty()
    );
    assert!(!two_tasks.exists(&late));
    assert_eq!(two_tasks.shared_files(), paths(&[&a]));

    // Timed out with one acknowledgement.
    let three = two_tasks.trigger();
    let c = two_tasks.new_file(three, "000004.sst");
    assert!(
        two_tasks
            .ack(three, vec![Hand::reuse(&a), c.clone()])
            .is_empty()
    );
    two_tasks.clock += TIMEOUT;
    let now = two_tasks.now();
    let actions = two_tasks.coordinator.tick_timeouts(now);
    let actions = drive(&mut two_tasks.coordinator, &two_tasks.storage, actions, now);
    assert!(matches!(actions[0], CoordinatorAction::Abort { id, .. } if id == three));
    assert!(!two_tasks.exists(&c));

    // The job stops with a checkpoint in flight.
    let four = two_tasks.trigger();
    let d = two_tasks.new_file(four, "000005.sst");
    assert!(
        two_tasks
            .ack(four, vec![Hand::reuse(&a), d.clone()])
            .is_empty()
    );
    let now = two_tasks.now();
    let actions = two_tasks.coordinator.abort_all("job stops", now);
    assert!(drive(&mut two_tasks.coordinator, &two_tasks.storage, actions, now).is_empty());
    assert!(!two_tasks.exists(&d));
    assert_eq!(two_tasks.shared_files(), paths(&[&a]));
    assert_invariants(&two_tasks.storage, "job-abort", "after the aborts");
}

/// A new run of the job deletes the shared files no retained checkpoint
/// references (crashed and aborted checkpoints' leftovers) and keeps the
/// referenced ones; new ids never reuse a leftover's id.
#[test]
fn a_restarted_job_collects_orphaned_shared_files() {
    let mut h = Hand::new("job-restart", 2);
    let one = h.trigger();
    let a = h.new_file(one, "000001.sst");
    let b = h.new_file(one, "000002.sst");
    h.ack(one, vec![a.clone(), b.clone()]);
    let two = h.trigger();
    let c = h.new_file(two, "000003.sst");
    h.ack(two, vec![Hand::reuse(&a), c.clone()]);
    // A crashed checkpoint's uploads, and files of some other instance.
    let orphan = h.new_file(two + 5, "000009.sst");
    let foreign = shared_file_path("job-restart", "other-op", 3, 1, "000001.sst");
    h.storage.put(&foreign, b"x".to_vec()).unwrap();
    // Another job's shared files are not this job's business.
    let other_job = shared_file_path("job-other", UID, 0, 1, "000001.sst");
    h.storage.put(&other_job, b"y".to_vec()).unwrap();

    let mut again = Hand::on(Arc::clone(&h.storage), "job-restart", 2, 1, Some(two));
    assert!(!again.exists(&orphan), "orphan deleted");
    assert_eq!(again.storage.size(&foreign).unwrap(), None);
    assert_eq!(again.storage.size(&other_job).unwrap(), Some(1));
    assert_eq!(again.shared_files(), paths(&[&a, &b, &c]));
    assert_invariants(&again.storage, "job-restart", "after the restart");
    let three = again.trigger();
    assert!(
        three > two + 5,
        "ids continue after the leftovers' ({three})"
    );

    // Retention goes on counting the adopted checkpoints' references.
    again.ack(three, vec![Hand::reuse(&c)]);
    assert_eq!(again.shared_files(), paths(&[&a, &c]), "b only in chk 1");
    let four = again.trigger();
    again.ack(four, vec![Hand::reuse(&c)]);
    assert_eq!(again.shared_files(), paths(&[&c]));
    assert_invariants(&again.storage, "job-restart", "after retention");
}

/// While a retained checkpoint's metadata cannot be read, nothing shared is
/// deleted (it might need it); a later start with readable metadata collects.
#[test]
fn unreadable_metadata_stops_every_shared_deletion() {
    let mut h = Hand::new("job-blind", 2);
    let one = h.trigger();
    let a = h.new_file(one, "000001.sst");
    h.ack(one, vec![a.clone()]);
    let two = h.trigger();
    let b = h.new_file(two, "000002.sst");
    h.ack(two, vec![b.clone()]);
    let orphan = h.new_file(two + 1, "000003.sst");
    // Damage checkpoint 1's metadata (it stays retained: older than the restored).
    let meta = metadata_path("job-blind", one);
    let mut bytes = h.storage.get(&meta).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    h.storage.put(&meta, bytes).unwrap();

    let mut again = Hand::on(Arc::clone(&h.storage), "job-blind", 2, 1, Some(two));
    assert!(
        again.exists(&orphan),
        "not collected while references are unknown"
    );
    assert!(again.exists(&a) && again.exists(&b));
    // Retention discards checkpoint 1 (unknown), then 2: b had one reference.
    let three = again.trigger();
    let c = again.new_file(three, "000004.sst");
    again.ack(three, vec![c.clone()]);
    assert!(
        again.exists(&a),
        "a checkpoint of unknown references kept its files"
    );
    let four = again.trigger();
    again.ack(four, vec![Hand::reuse(&c)]);
    assert!(!again.exists(&b), "known again: b's last reference went");

    let restarted = Hand::on(Arc::clone(&h.storage), "job-blind", 2, 1, Some(four));
    assert!(!restarted.exists(&a) && !restarted.exists(&orphan));
    assert_eq!(restarted.shared_files(), paths(&[&c]));
    assert_invariants(&restarted.storage, "job-blind", "after the restart");
}

/// A checkpoint that references a shared file retention already deleted (the
/// task had not yet heard that a newer checkpoint replaced the file's last
/// reference) is aborted, naming the file; nothing of the retained one goes.
#[test]
fn referencing_a_discarded_shared_file_aborts_the_checkpoint() {
    let mut h = Hand::new("job-stale", 1);
    let one = h.trigger();
    let a = h.new_file(one, "000001.sst");
    h.ack(one, vec![a.clone()]);
    let two = h.trigger();
    let b = h.new_file(two, "000002.sst");
    h.ack(two, vec![b.clone()]);
    assert!(!h.exists(&a), "retain 1: a went with checkpoint 1");

    let three = h.trigger();
    let c = h.new_file(three, "000003.sst");
    let actions = h.ack(three, vec![Hand::reuse(&a), Hand::reuse(&b), c.clone()]);
    match &actions[..] {
        [CoordinatorAction::Abort { id, reason, .. }] => {
            assert_eq!(*id, three);
            assert!(reason.contains(&a.file.path), "{reason}");
        }
        other => panic!("expected an abort, got {other:?}"),
    }
    assert!(!h.exists(&c), "the aborted checkpoint's upload is removed");
    assert!(h.exists(&b), "the retained checkpoint keeps its file");
    assert_eq!(
        h.storage.size(&metadata_path("job-stale", three)).unwrap(),
        None
    );
    assert_eq!(
        assert_invariants(&h.storage, "job-stale", "after"),
        vec![two]
    );

    // The next one, which uploads the file again, completes.
    let four = h.trigger();
    let again = h.new_file(four, "000001.sst");
    let actions = h.ack(four, vec![again, Hand::reuse(&b)]);
    assert!(
        matches!(actions[0], CoordinatorAction::Complete { id, .. } if id == four),
        "{actions:?}"
    );
}

// ---------------------------------------------------------------------------
// upload_native and StorageFetcher on real files.

fn write(dir: &Path, name: &str, content: &[u8]) -> NativeFile {
    let local = dir.join(name);
    std::fs::write(&local, content).unwrap();
    NativeFile {
        name: name.into(),
        local,
        size: content.len() as u64,
        stored: None,
        shareable: name.ends_with(".sst"),
    }
}

fn snapshot_of(id: CheckpointId, files: Vec<NativeFile>) -> NativeSnapshot {
    NativeSnapshot {
        prepare: None,
        backend: "fake".into(),
        range: KeyGroupRange::new(0, MAX_PARALLELISM),
        checkpoint_id: id,
        states: Vec::new(),
        files,
        receipt: Arc::new(UploadReceipt::default()),
        guard: Box::new(()),
    }
}

fn stored(file: &NativeFileRef) -> StoredFile {
    StoredFile {
        path: file.file.path.clone(),
        size: file.file.size,
        crc32c: file.file.crc32c,
    }
}

/// Reused files are referenced, not uploaded; the receipt lists exactly the
/// new shareable files; every file fetches back byte for byte; a flipped byte
/// or a truncation in storage makes the fetch fail naming the path.
#[test]
fn upload_and_fetch_round_trip() {
    let storage = unique_memory();
    let tmp = tempfile::tempdir().unwrap();
    let job = "job-files";
    let first_dir = tmp.path().join("chk-1");
    std::fs::create_dir_all(&first_dir).unwrap();
    let first = snapshot_of(
        1,
        vec![
            write(&first_dir, "000001.sst", &[1; 100]),
            write(&first_dir, "000002.sst", &[2; 50]),
            write(&first_dir, "CURRENT", b"MANIFEST-000003\n"),
        ],
    );
    let (handle, bytes) = upload_native(storage.as_ref(), job, UID, 0, &first).unwrap();
    assert_eq!(bytes, 100 + 50 + 16);
    let receipt: BTreeMap<String, StoredFile> = first.receipt.take().into_iter().collect();
    assert_eq!(
        receipt.keys().collect::<Vec<_>>(),
        vec!["000001.sst", "000002.sst"]
    );
    let current = &handle.files[2];
    assert!(!current.shared && current.file.path.starts_with(&format!("{job}/chk-1/")));
    for file in &handle.files[..2] {
        assert!(file.shared && file.uploaded_by == 1);
        assert_eq!(receipt[&file.name], stored(file));
    }

    // Checkpoint 2 keeps 000002.sst, adds 000004.sst.
    let second_dir = tmp.path().join("chk-2");
    std::fs::create_dir_all(&second_dir).unwrap();
    let mut kept = write(&second_dir, "000002.sst", &[2; 50]);
    kept.stored = Some(receipt["000002.sst"].clone());
    let second = snapshot_of(
        2,
        vec![
            kept,
            write(&second_dir, "000004.sst", &[4; 70]),
            write(&second_dir, "CURRENT", b"MANIFEST-000005\n"),
        ],
    );
    let (handle, bytes) = upload_native(storage.as_ref(), job, UID, 0, &second).unwrap();
    assert_eq!(bytes, 70 + 16, "only new files are uploaded");
    let receipt = second.receipt.take();
    assert_eq!(receipt.len(), 1);
    assert_eq!(receipt[0].0, "000004.sst");
    let reused = &handle.files[0];
    assert_eq!(
        (reused.shared, reused.uploaded_by, &reused.file.path),
        (true, 0, &shared_file_path(job, UID, 0, 1, "000002.sst"))
    );

    // Every file fetches back, copied or (immutable, from a local directory)
    // linked.
    let fetcher = StorageFetcher::new(Arc::clone(&storage));
    let restore_dir = tmp.path().join("restore");
    for immutable in [false, true] {
        for file in &handle.files {
            let to = restore_dir.join(format!("db-{immutable}")).join(&file.name);
            fetcher.fetch(&stored(file), &to, immutable).unwrap();
            let original = std::fs::read(second_dir.join(&file.name)).unwrap();
            assert_eq!(std::fs::read(&to).unwrap(), original, "{}", file.name);
        }
    }

    // Damage in storage is reported with the path, on both paths.
    let target = &handle.files[1];
    let path = &target.file.path;
    let good = storage.get(path).unwrap();
    for immutable in [false, true] {
        let to = restore_dir.join(format!("x-{immutable}"));
        let mut flipped = good.clone();
        flipped[10] ^= 0x01;
        storage.put(path, flipped).unwrap();
        let err = fetcher
            .fetch(&stored(target), &to, immutable)
            .unwrap_err()
            .to_string();
        assert!(err.contains(path) && err.contains("checksum"), "{err}");
        storage.put(path, good[..good.len() - 1].to_vec()).unwrap();
        let err = fetcher
            .fetch(&stored(target), &to, immutable)
            .unwrap_err()
            .to_string();
        assert!(err.contains(path) && err.contains("69 bytes"), "{err}");
        storage.delete(path).unwrap();
        let err = fetcher
            .fetch(&stored(target), &to, immutable)
            .unwrap_err()
            .to_string();
        assert!(err.contains(path), "{err}");
        assert!(
            !to.exists(),
            "nothing is left at {} after a failed fetch",
            to.display()
        );
    }
}

/// A local file that is not what the snapshot listed fails the upload naming
/// the file, removes what the upload already wrote to `shared/`, and leaves
/// the receipt empty; so does a reuse claim that cannot be true.
#[test]
fn a_failed_upload_names_the_file_and_cleans_up() {
    let storage = unique_memory();
    let tmp = tempfile::tempdir().unwrap();
    let job = "job-fail";
    let mut changed = write(tmp.path(), "000002.sst", &[2; 10]);
    changed.size = 11;
    let snapshot = snapshot_of(3, vec![write(tmp.path(), "000001.sst", &[1; 10]), changed]);
    let err = upload_native(storage.as_ref(), job, UID, 0, &snapshot).unwrap_err();
    assert!(matches!(err, CheckpointError::LocalFile { .. }), "{err}");
    assert!(err.to_string().contains("000002.sst"), "{err}");
    assert!(storage.list(&shared_dir(job)).unwrap().is_empty());
    assert!(snapshot.receipt.take().is_empty());

    let mut missing = write(tmp.path(), "000005.sst", &[5; 10]);
    missing.local = tmp.path().join("gone.sst");
    let err = upload_native(
        storage.as_ref(),
        job,
        UID,
        0,
        &snapshot_of(4, vec![missing]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("gone.sst"), "{err}");

    let mut foreign = write(tmp.path(), "000006.sst", &[6; 10]);
    foreign.stored = Some(StoredFile {
        path: shared_file_path("another-job", UID, 0, 1, "000006.sst"),
        size: 10,
        crc32c: 0,
    });
    let err = upload_native(
        storage.as_ref(),
        job,
        UID,
        0,
        &snapshot_of(5, vec![foreign]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a shared file of job job-fail"), "{err}");
}

/// Restore: `load` refuses a checkpoint whose native file is missing or has
/// another size, naming the path, so `load_latest_of` falls back to an older
/// one; `keyed_state` hands out the native state of every overlapping old
/// instance, reusable only by the job that wrote it.
#[test]
fn restore_checks_native_files_and_deals_them_out() {
    let storage = unique_memory();
    let job = "job-restore";
    let mut coordinator = Coordinator::new(
        job,
        settings(3),
        2,
        2,
        MAX_PARALLELISM,
        None,
        ExistingCheckpoints::default(),
        Now::system(),
    );
    let mut handles = BTreeMap::new();
    for id in 1..=2 {
        let now = Now::system();
        assert!(
            coordinator
                .trigger_now(SnapshotKind::Checkpoint, now)
                .is_some()
        );
        for task in 0..2 {
            let tmp = tempfile::tempdir().unwrap();
            let mut snapshot = snapshot_of(
                id,
                vec![
                    write(tmp.path(), &format!("00000{id}.sst"), &[id as u8; 40]),
                    write(tmp.path(), "CURRENT", b"MANIFEST\n"),
                ],
            );
            snapshot.range = range_of(task, 2);
            let (handle, bytes) =
                upload_native(storage.as_ref(), job, UID, task as u32, &snapshot).unwrap();
            handles.insert((id, task), handle.clone());
            let actions = coordinator.on_ack(native_ack(id, task, handle, bytes), now);
            drive(&mut coordinator, &storage, actions, now);
        }
    }
    assert_eq!(assert_invariants(&storage, job, "setup"), vec![1, 2]);
    let loaded = load(&storage, &format!("{job}/chk-2")).unwrap();
    assert_eq!(loaded.metadata.state_bytes(), 2 * (40 + 9));

    // Dealt out: one old instance each at parallelism 2, both at 1.
    let own = loaded.keyed_state(UID, range_of(0, 2), job).unwrap();
    assert_eq!(own.native.len(), 1);
    assert!(own.native[0].reusable);
    assert_eq!(own.native[0].range, range_of(0, 2));
    let names: Vec<&str> = own.native[0]
        .files
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, vec!["000002.sst", "CURRENT"]);
    let whole = loaded
        .keyed_state(UID, KeyGroupRange::new(0, MAX_PARALLELISM), "another-job")
        .unwrap();
    assert_eq!(whole.native.len(), 2);
    assert!(
        whole.native.iter().all(|r| !r.reusable),
        "another job re-uploads"
    );
    assert!(
        loaded
            .keyed_state("nobody", range_of(0, 1), job)
            .unwrap()
            .is_empty()
    );

    // A missing native file: checkpoint 2 does not load, 1 does.
    let sst = &handles[&(2, 1)].files[0].file;
    let bytes = storage.get(&sst.path).unwrap();
    storage.delete(&sst.path).unwrap();
    match load(&storage, &format!("{job}/chk-2")) {
        Err(CheckpointError::Corrupt { path, reason }) => {
            assert_eq!(path, sst.path);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!(
            "expected a corrupt checkpoint, got {:?}",
            other.map(|l| l.id())
        ),
    }
    let latest = load_latest_of(&storage, Some(job)).unwrap().unwrap();
    assert_eq!(latest.id(), 1, "falls back past the damaged checkpoint");
    // A file of another size: the same.
    storage.put(&sst.path, bytes[1..].to_vec()).unwrap();
    let err = load(&storage, &format!("{job}/chk-2"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&sst.path) && err.contains("39 bytes"), "{err}");
    storage.put(&sst.path, bytes).unwrap();
    assert_eq!(
        load_latest_of(&storage, Some(job)).unwrap().unwrap().id(),
        2
    );
}

/// Metadata without native state reads and writes as before the field
/// existed; with it, it round-trips.
#[test]
fn native_metadata_is_additive() {
    let old = r#"{"job_id":"j","checkpoint_id":3,"kind":"checkpoint","created_unix_ms":1,
        "max_parallelism":8,"operators":[{"uid":"u","name":"n","parallelism":1,
        "subtasks":[{"subtask":0,"keyed":null,"lists":[]}]}]}"#;
    let metadata: CheckpointMetadata = serde_json::from_str(old).unwrap();
    assert_eq!(metadata.operators[0].subtasks[0].native, None);
    let json = serde_json::to_string(&metadata).unwrap();
    assert!(!json.contains("native"), "{json}");

    let mut with = metadata.clone();
    with.operators[0].subtasks[0].native = Some(NativeStateHandle {
        backend: "rocksdb".into(),
        key_group_start: 0,
        key_group_end: 8,
        states: Vec::new(),
        files: vec![NativeFileRef {
            name: "000001.sst".into(),
            file: FileRef {
                path: "j/shared/u-0/3-000001.sst".into(),
                size: 5,
                crc32c: 7,
            },
            shared: true,
            uploaded_by: 3,
        }],
    });
    let decoded = CheckpointMetadata::decode("m", &with.encode().unwrap()).unwrap();
    assert_eq!(decoded, with);
    assert_eq!(
        decoded.shared_paths().collect::<Vec<_>>(),
        vec!["j/shared/u-0/3-000001.sst"]
    );
    assert_eq!(decoded.state_bytes(), 5);
}
