//! Whole-job deterministic simulation: the test of record for fault tolerance.
//!
//! A seed fixes everything: the job's shape, the schedule (which task steps,
//! which snapshot upload runs, which message the coordinator takes next),
//! virtual time, and the faults (task failures, process crashes, a crash
//! right after a checkpoint's metadata was written, storage writes that fail
//! or tear, reads that fail, uploads that hang past the timeout, lost
//! acknowledgements, restarts at another parallelism, a slow keyed consumer
//! that backs the channels up) and the checkpoint alignment (aligned,
//! unaligned, aligned until a timeout of virtual time; sometimes an
//! in-flight limit small enough to decline). The job is real (see
//! [`scenario`]); the runtime runs it through
//! [`flowstate_runtime::simulation`] on this one thread. After every run an
//! independent checker reads the published output.
//!
//! Owns: the scheduler's choices and the fault plan. Must not touch: the
//! runtime's internals (it drives an attempt only through the simulation
//! API) or real time.

pub mod faults;
pub mod scenario;
pub mod storage;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate::StreamEnvironment;
use flowstate::runtime::checkpoint::{
    AlignmentPolicy, CoordinatorSettings, DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX, Now,
};
use flowstate::runtime::control::SnapshotStatus;
use flowstate::runtime::simulation::{
    Actor, EventKind, Restart, SimulatedAttempt, load_for_restart,
};
use flowstate::runtime::{CheckpointingConfig, ExecutionConfig, Guarantee, JobError, RestoreFrom};

use flowstate::state::memory_store::MemoryStoreFactory;
use flowstate::state::{ManualClock, StateBackendConfig};

use crate::faults::{FaultPlan, FaultPoint};
use crate::scenario::{Shape, Variant, WindowShape};
use crate::storage::SimStorage;
use crate::trace::Fnv;

/// The stretch of a slow consumer, in scheduler steps
/// ([`FaultPoint::SlowConsumer`]), and the chance (1 in this) that a keyed
/// task is picked in it at all.
const SLOW_CONSUMER_STEPS: std::ops::Range<u64> = 200..3_000;
const SLOW_CONSUMER_PICK: u32 = 16;

/// Scheduler steps one seed may take before it counts as stuck.
pub const STEPS_MAX: u64 = 2_000_000;
/// Virtual time one seed may take before it counts as stuck.
pub const VIRTUAL_TIME_MAX: Duration = Duration::from_secs(3600);
/// Attempts in a row that fail before running (a restore that keeps failing)
/// after which the job gives up, as a restart strategy would.
pub const FAILED_STARTS_MAX: u32 = 8;
/// The job's id in the simulated storage.
pub const JOB_ID: &str = "sim-job";

/// How a seed's job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It ran to the end: all output must be there, exactly once.
    Finished,
    /// It stopped safely with an error a user must act on (the newest
    /// checkpoint is damaged and falling back would publish output twice;
    /// a restore kept failing). Output so far must be free of duplicates.
    Stopped(String),
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub seed: u64,
    pub ending: Ending,
    /// What the checker (or the harness) found wrong; `None` is a pass.
    pub violation: Option<String>,
    pub trace: u64,
    pub fired: std::collections::BTreeMap<FaultPoint, u64>,
    pub attempts: u32,
    pub steps: u64,
    pub checkpoints: u64,
    /// Why each failed attempt ended, in order.
    pub restarts: Vec<String>,
    /// Keyed state on the serialising backend (else the heap backend).
    pub serialized_state: bool,
    /// The seed's checkpoint alignment (see [`Setup::draw`]).
    pub alignment: AlignmentPolicy,
    /// Completed checkpoints that were unaligned, and the in-flight bytes
    /// they persisted (from the checkpoint history of every attempt).
    pub unaligned_checkpoints: u64,
    pub persisted_bytes: u64,
    /// Snapshots tasks declined (any reason; with unaligned checkpoints
    /// mostly the in-flight limit).
    pub declines: u64,
    /// Scheduler picks in a slow-consumer stretch that passed over a
    /// runnable keyed task.
    pub keyed_passed_over: u64,
}

/// One seed's job shape and settings, drawn from the seed.
struct Setup {
    shape: Shape,
    /// The heap backend, or the serialising backend (RocksDB's code path)
    /// over the in-memory reference store.
    serialized_state: bool,
    parallelism: u32,
    batch_size: usize,
    channel_capacity: usize,
    settings: CoordinatorSettings,
    budget: u32,
}

impl Setup {
    fn draw(rng: &mut fastrand::Rng) -> Setup {
        let interval = Duration::from_micros(rng.u64(200..5_000));
        let mut setup = Setup {
            shape: Shape {
                records: rng.u64(200..3000),
                keys: rng.u64(1..40),
                splits: rng.u32(1..7),
                window: rng.bool().then(|| WindowShape {
                    window_ms: rng.u64(20..2000),
                    disorder_ms: rng.u64(0..100),
                }),
            },
            serialized_state: rng.bool(),
            parallelism: rng.u32(1..4),
            batch_size: rng.usize(1..64),
            channel_capacity: rng.usize(1..4),
            settings: CoordinatorSettings {
                interval: Some(interval),
                timeout: Duration::from_millis(rng.u64(20..200)),
                min_pause: Duration::ZERO,
                max_concurrent: rng.usize(1..3),
                tolerable_failures: rng.u32(0..4),
                retain: rng.usize(1..4),
                // Drawn last, below.
                alignment: AlignmentPolicy::Aligned,
            },
            budget: rng.u32(0..9),
        };
        // Drawn last. Aligned, unaligned from the start, or aligned until
        // 0.1 to 5 ms of virtual time; a small in-flight limit in a quarter of
        // the unaligned seeds, so that tasks decline (and the job goes on).
        let alignment = match rng.u32(0..3) {
            0 => AlignmentPolicy::Aligned,
            mode => {
                let aligned_timeout = if mode == 1 {
                    Duration::ZERO
                } else {
                    Duration::from_micros(rng.u64(100..=5_000))
                };
                let inflight_bytes_max = if rng.u32(0..4) == 0 {
                    // Far below the CLI's minimum (1 MiB): it may decline
                    // every unaligned checkpoint, and with a few tolerable
                    // failures the job would then fail over for ever (as
                    // Flink's would): configuration, not a fault. Declines
                    // are tolerated here, so such a job still ends.
                    setup.settings.tolerable_failures = u32::MAX;
                    rng.u64(64..4_096)
                } else {
                    DEFAULT_UNALIGNED_INFLIGHT_BYTES_MAX
                };
                AlignmentPolicy::Unaligned {
                    aligned_timeout,
                    inflight_bytes_max,
                }
            }
        };
        if alignment != AlignmentPolicy::Aligned {
            // Unaligned checkpoints are one at a time.
            setup.settings.max_concurrent = 1;
        }
        setup.settings.alignment = alignment;
        setup
    }
}

/// Runs one seed of `variant`.
pub fn run_seed(seed: u64, variant: Variant) -> SeedReport {
    let mut rng = fastrand::Rng::with_seed(seed);
    let setup = Setup::draw(&mut rng);
    let plan = Arc::new(FaultPlan::new(seed, setup.budget));
    let storage = Arc::new(match variant {
        Variant::DropChannelState => SimStorage::dropping_channel_state(Arc::clone(&plan)),
        _ => SimStorage::new(Arc::clone(&plan)),
    });
    let output = output_dir(seed);
    let mut trace = Fnv::default();
    let start = Now::new(Instant::now(), 1_800_000_000_000);
    let mut run = Run {
        seed,
        clock: ManualClock::new(start.unix_ms as i64),
        rng,
        plan: Arc::clone(&plan),
        storage: Arc::clone(&storage),
        output: output.clone(),
        variant,
        setup,
        now: start,
        started: None,
        restarts: Vec::new(),
        steps: 0,
        attempts: 0,
        checkpoints: 0,
        unaligned_checkpoints: 0,
        persisted_bytes: 0,
        declines: 0,
        slow_until: 0,
        keyed_passed_over: 0,
    };
    let result = run.run(&mut trace);
    plan.disarm();
    let shape = run.setup.shape;
    let (ending, violation) = match result {
        Ok(ending) => {
            let complete = ending == Ending::Finished;
            let checked = scenario::check(&output, shape, complete);
            match checked {
                Ok(digest) => {
                    trace.write_u64(digest.lines);
                    trace.write_u64(digest.hash);
                    (ending, None)
                }
                Err(violation) => (ending, Some(violation)),
            }
        }
        Err(violation) => {
            // Stuck or broken harness: still check what was published.
            let checked = scenario::check(&output, shape, false).err();
            (
                Ending::Stopped("did not end".into()),
                Some(match checked {
                    Some(v) => format!("{violation}; and the output: {v}"),
                    None => violation,
                }),
            )
        }
    };
    trace.write_u64(storage.digest());
    if violation.is_none() {
        let _ = std::fs::remove_dir_all(&output);
    }
    SeedReport {
        seed,
        ending,
        violation,
        trace: trace.finish(),
        fired: plan.fired(),
        attempts: run.attempts,
        steps: run.steps,
        checkpoints: run.checkpoints,
        alignment: run.setup.settings.alignment,
        unaligned_checkpoints: run.unaligned_checkpoints,
        persisted_bytes: run.persisted_bytes,
        declines: run.declines,
        keyed_passed_over: run.keyed_passed_over,
        restarts: run.restarts,
        serialized_state: run.setup.serialized_state,
    }
}

/// Where a seed's job writes: memory-backed when the machine has it (the
/// file sink fsyncs every checkpoint; on a disk that is most of a seed's time).
fn output_dir(seed: u64) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let root = match std::env::var_os("FLOWSTATE_SIM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    };
    // Unique per run: runs of one seed may overlap in a process (tests).
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("flowstate-sim-{}-{seed}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Run {
    seed: u64,
    clock: Arc<ManualClock>,
    rng: fastrand::Rng,
    plan: Arc<FaultPlan>,
    storage: Arc<SimStorage>,
    output: PathBuf,
    variant: Variant,
    setup: Setup,
    now: Now,
    started: Option<Instant>,
    restarts: Vec<String>,
    steps: u64,
    attempts: u32,
    checkpoints: u64,
    unaligned_checkpoints: u64,
    persisted_bytes: u64,
    declines: u64,
    /// Keyed tasks are picked rarely until this step (a slow consumer).
    slow_until: u64,
    keyed_passed_over: u64,
}

/// Why an attempt ended.
enum AttemptEnd {
    Finished,
    /// Restart in this process from the job's latest checkpoint.
    Failed(String),
    /// Start again from storage.
    Crashed,
    /// Stopped with a savepoint: run again with `--restore latest`.
    Stopped,
}

impl Run {
    fn config(&self, parallelism: u32) -> ExecutionConfig {
        let storage: flowstate::runtime::checkpoint::storage::SharedStorage =
            Arc::clone(&self.storage) as _;
        ExecutionConfig {
            job_name: "simulation".into(),
            parallelism,
            max_parallelism: 8,
            batch_size: self.setup.batch_size,
            channel_capacity: self.setup.channel_capacity,
            workers: 1,
            state_backend: if self.setup.serialized_state {
                StateBackendConfig::Store(Arc::new(MemoryStoreFactory))
            } else {
                StateBackendConfig::Heap
            },
            checkpointing: Some(CheckpointingConfig {
                storage,
                settings: self.setup.settings.clone(),
                guarantee: Guarantee::ExactlyOnce,
                job_id: Some(JOB_ID.into()),
                restore: RestoreFrom::Nothing,
                allow_non_restored_state: false,
                allow_fallback_duplicates: false,
                restart: Default::default(),
                // Savepoints go to this process's memory, a store per seed.
                savepoint_dir: Some(format!(
                    "memory://{}",
                    self.output.file_name().map_or_else(
                        || format!("flowstate-sim-{}", self.seed),
                        |n| { n.to_string_lossy().into_owned() }
                    )
                )),
            }),
            // Processing time is virtual too (idleness, processing-time
            // timers, TTL): the scheduler moves this clock with `now`.
            clock: Arc::clone(&self.clock) as _,
            ..ExecutionConfig::default()
        }
    }

    fn run(&mut self, trace: &mut Fnv) -> Result<Ending, String> {
        self.started = Some(self.now.instant);
        let mut parallelism = self.setup.parallelism;
        let mut restart = Restart::Fresh;
        let mut failed_starts = 0;
        loop {
            self.attempts += 1;
            if self.attempts > 1 && self.plan.fires(FaultPoint::Rescale) {
                parallelism = 1 + self.plan.draw(3) as u32;
            }
            trace.write_u64(0xa77e);
            trace.write_u64(u64::from(parallelism));
            let config = self.config(parallelism);
            let env = StreamEnvironment::new(config.clone());
            // Each attempt builds its file sink again in this process: the
            // sink's run names differ per sink created (`FileSink::new`), so
            // an attempt never reuses a published file's name.
            scenario::build(&env, self.setup.shape, &self.output, self.variant)
                .map_err(|e| format!("building the job: {e:#}"))?;
            let graph = env.take_job_graph();
            let started = load_for_restart(&config, &graph, JOB_ID, restart).and_then(|restored| {
                trace.write_u64(restored.as_ref().map_or(0, |r| r.id()));
                if std::env::var_os("FLOWSTATE_SIM_DEBUG").is_some() {
                    eprintln!(
                        "attempt {}: restoring {:?}",
                        self.attempts,
                        restored.as_ref().map(|r| &r.metadata_path)
                    );
                }
                SimulatedAttempt::start(&graph, &config, JOB_ID, restored, self.now)
            });
            let attempt = match started {
                Ok(attempt) => {
                    failed_starts = 0;
                    attempt
                }
                Err(JobError::FallbackRefused { .. }) | Err(JobError::Restore(_))
                    if failed_starts >= FAILED_STARTS_MAX =>
                {
                    return Ok(Ending::Stopped("restore kept failing".into()));
                }
                Err(e @ JobError::FallbackRefused { .. }) => {
                    return Ok(Ending::Stopped(e.to_string()));
                }
                Err(e) => {
                    self.restarts.push(format!("start failed: {e}"));
                    failed_starts += 1;
                    if failed_starts > FAILED_STARTS_MAX {
                        return Ok(Ending::Stopped(format!("restore kept failing: {e}")));
                    }
                    // Tried again as the restart strategy would.
                    trace.write_u64(0xfa11);
                    continue;
                }
            };
            let controller = Arc::clone(attempt.controller());
            let end = self.drive(attempt, trace);
            // Coverage: the attempt's completed unaligned checkpoints.
            for record in controller.checkpoint_history().entries {
                if record.status == SnapshotStatus::Completed && record.unaligned {
                    self.unaligned_checkpoints += 1;
                    self.persisted_bytes += record.persisted_bytes;
                }
            }
            match end? {
                AttemptEnd::Finished => return Ok(Ending::Finished),
                AttemptEnd::Failed(reason) => {
                    self.restarts.push(reason);
                    restart = Restart::AfterFailure;
                }
                AttemptEnd::Crashed => {
                    self.restarts.push("process crash".into());
                    restart = Restart::AfterCrash;
                }
                AttemptEnd::Stopped => {
                    self.restarts.push("stopped with a savepoint".into());
                    restart = Restart::AfterCrash;
                }
            }
        }
    }

    fn advance(&mut self, by: Duration) -> Result<(), String> {
        self.now = self.now + by;
        self.clock.set_ms(self.now.unix_ms as i64);
        let elapsed = self
            .now
            .instant
            .saturating_duration_since(self.started.unwrap_or(self.now.instant));
        if elapsed > VIRTUAL_TIME_MAX {
            return Err(format!("no end after {elapsed:?} of virtual time"));
        }
        Ok(())
    }

    /// Runs one attempt until it finishes, fails or crashes.
    fn drive(
        &mut self,
        mut attempt: SimulatedAttempt,
        trace: &mut Fnv,
    ) -> Result<AttemptEnd, String> {
        loop {
            self.steps += 1;
            if self.steps > STEPS_MAX {
                return Err(format!("no end after {STEPS_MAX} steps"));
            }
            if attempt.finished() {
                let stopped = attempt.controller().stopped_with_savepoint();
                self.checkpoints += attempt.stop(self.now);
                if stopped.is_some() {
                    trace.write_u64(0x5709);
                    return Ok(AttemptEnd::Stopped);
                }
                trace.write_u64(0xd0e);
                return Ok(AttemptEnd::Finished);
            }
            if let Some(reason) = attempt.failure() {
                self.checkpoints += attempt.stop(self.now);
                trace.write_u64(0xf1);
                return Ok(AttemptEnd::Failed(reason));
            }
            if self.plan.take_crash_request() || self.plan.fires(FaultPoint::ProcessCrash) {
                self.checkpoints += attempt.completed_checkpoints();
                attempt.crash();
                trace.write_u64(0xc4a5);
                return Ok(AttemptEnd::Crashed);
            }
            if self.plan.fires(FaultPoint::TaskFailure) {
                self.checkpoints += attempt.stop(self.now);
                trace.write_u64(0xf2);
                return Ok(AttemptEnd::Failed("injected task failure".into()));
            }
            // What a user asks through the HTTP API (refusals, e.g. while
            // another savepoint is in progress, are the API's answer).
            for (point, stop) in [
                (FaultPoint::Savepoint, false),
                (FaultPoint::StopWithSavepoint, true),
            ] {
                if self.plan.fires(point) {
                    let accepted = attempt.controller().trigger_savepoint(None, stop).is_ok();
                    trace.write_u64(0x5a0 + u64::from(stop) * 2 + u64::from(accepted));
                }
            }
            let actors = attempt.actors(self.now);
            if actors.is_empty() {
                // Nothing can move: time must.
                let wait = attempt
                    .next_wakeup(self.now)
                    .map(|at| at.saturating_duration_since(self.now.instant))
                    .unwrap_or(Duration::from_millis(10))
                    .clamp(Duration::from_micros(10), Duration::from_millis(10));
                self.advance(wait)?;
                attempt.tick(self.now);
                trace.write_u64(0x7);
                continue;
            }
            if self.steps >= self.slow_until && self.plan.fires(FaultPoint::SlowConsumer) {
                self.slow_until = self.steps + self.rng.u64(SLOW_CONSUMER_STEPS);
                trace.write_u64(0x510c);
            }
            let slow = self.steps < self.slow_until && self.rng.u32(..SLOW_CONSUMER_PICK) != 0;
            let fast: Vec<Actor> = if slow {
                actors
                    .iter()
                    .copied()
                    .filter(|a| !matches!(a, Actor::Task(t) if is_keyed(attempt.task_name(*t))))
                    .collect()
            } else {
                Vec::new()
            };
            if !fast.is_empty() && fast.len() < actors.len() {
                self.keyed_passed_over += 1;
            }
            let actor = if fast.is_empty() {
                actors[self.rng.usize(..actors.len())]
            } else {
                fast[self.rng.usize(..fast.len())]
            };
            match actor {
                Actor::Task(task) => {
                    trace.write_u64(0x100 + task as u64);
                    if let Err(e) = attempt.step_task(task) {
                        self.checkpoints += attempt.stop(self.now);
                        trace.write_u64(0xf3);
                        return Ok(AttemptEnd::Failed(e.to_string()));
                    }
                }
                Actor::Upload(index) => {
                    trace.write_u64(0x200 + index as u64);
                    if self.plan.fires(FaultPoint::UploadHangs) {
                        let hang = self.setup.settings.timeout + Duration::from_millis(5);
                        attempt.hold_upload(index, self.now.instant + hang);
                    } else {
                        attempt.run_upload(index);
                    }
                }
                Actor::Event(index) => {
                    let kind = attempt.event_kind(index);
                    trace.write_u64(0x300 + index as u64);
                    let losable = matches!(kind, EventKind::Ack { .. } | EventKind::Decline { .. });
                    if losable && self.plan.fires(FaultPoint::AckLost) {
                        attempt.lose_event(index);
                        trace.write_u64(0x10e);
                    } else {
                        self.declines += u64::from(matches!(kind, EventKind::Decline { .. }));
                        attempt.deliver_event(index, self.now);
                    }
                }
            }
            let step = Duration::from_micros(self.rng.u64(0..40));
            self.advance(step)?;
            attempt.tick(self.now);
        }
    }
}

/// A task that runs the keyed operator (the count or the window, see
/// [`scenario::build`]): the consumer of the exchange.
fn is_keyed(task_name: &str) -> bool {
    task_name.contains("Count per key") || task_name.contains("Window")
}

/// A summary line over many seeds.
pub fn summary_line(reports: &[SeedReport]) -> String {
    let failures = reports.iter().filter(|r| r.violation.is_some()).count();
    let stopped = reports
        .iter()
        .filter(|r| matches!(r.ending, Ending::Stopped(_)))
        .count();
    let mut fired = std::collections::BTreeMap::new();
    for report in reports {
        for (point, n) in &report.fired {
            *fired.entry(*point).or_insert(0u64) += n;
        }
    }
    let faults: Vec<String> = FaultPoint::ALL
        .iter()
        .map(|p| format!("{}={}", p.name(), fired.get(p).copied().unwrap_or(0)))
        .collect();
    let checkpoints: u64 = reports.iter().map(|r| r.checkpoints).sum();
    let attempts: u64 = reports.iter().map(|r| u64::from(r.attempts)).sum();
    let serialized = reports.iter().filter(|r| r.serialized_state).count();
    let unaligned_seeds = reports
        .iter()
        .filter(|r| r.alignment != AlignmentPolicy::Aligned)
        .count();
    let unaligned: u64 = reports.iter().map(|r| r.unaligned_checkpoints).sum();
    let persisted: u64 = reports.iter().map(|r| r.persisted_bytes).sum();
    let declines: u64 = reports.iter().map(|r| r.declines).sum();
    format!(
        "SIMULATION seeds={} failures={failures} stopped_safely={stopped} attempts={attempts} \
         checkpoints={checkpoints} heap_backend={} serialized_backend={serialized} \
         unaligned_seeds={unaligned_seeds} unaligned={unaligned} persisted_bytes={persisted} \
         declined={declines} {}",
        reports.len(),
        reports.len() - serialized,
        faults.join(" ")
    )
}
