//! The fault plan of one seed: which faults may fire, how often, and how
//! many times each fired (the coverage report).
//!
//! Every decision draws from the plan's own seeded generator, on the one
//! simulation thread, so a seed fixes the faults as well as the schedule.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultPoint {
    /// A task fails between two steps: the attempt stops in order and the
    /// job restarts from its latest checkpoint in the same process.
    TaskFailure,
    /// The process dies: all memory is lost (no destructor runs), the job
    /// is started again from storage (`--restore latest`).
    ProcessCrash,
    /// The process dies right after `_metadata` of a checkpoint was written,
    /// before any task heard of the completion (the coordinator's crash at
    /// its most delicate moment).
    CrashAfterMetadata,
    /// A checkpoint storage write fails.
    StorageWriteFails,
    /// A checkpoint storage write stores half the bytes and reports success.
    StorageWriteTorn,
    /// A checkpoint storage read fails (restore, verification).
    StorageReadFails,
    /// A snapshot upload hangs past the checkpoint timeout.
    UploadHangs,
    /// A task's acknowledgement (or decline) never reaches the coordinator.
    AckLost,
    /// A restart comes back at another parallelism.
    Rescale,
    /// A user asks for a savepoint (the job goes on).
    Savepoint,
    /// A user stops the job with a savepoint, then runs it again with
    /// `--restore latest`.
    StopWithSavepoint,
    /// For a stretch of scheduler steps the keyed tasks are picked rarely:
    /// their input channels fill, producers back up and barriers queue
    /// behind data (the situation unaligned checkpoints exist for).
    SlowConsumer,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 12] = [
        FaultPoint::TaskFailure,
        FaultPoint::ProcessCrash,
        FaultPoint::CrashAfterMetadata,
        FaultPoint::StorageWriteFails,
        FaultPoint::StorageWriteTorn,
        FaultPoint::StorageReadFails,
        FaultPoint::UploadHangs,
        FaultPoint::AckLost,
        FaultPoint::Rescale,
        FaultPoint::Savepoint,
        FaultPoint::StopWithSavepoint,
        FaultPoint::SlowConsumer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::TaskFailure => "task_failure",
            FaultPoint::ProcessCrash => "process_crash",
            FaultPoint::CrashAfterMetadata => "crash_after_metadata",
            FaultPoint::StorageWriteFails => "storage_write_fails",
            FaultPoint::StorageWriteTorn => "storage_write_torn",
            FaultPoint::StorageReadFails => "storage_read_fails",
            FaultPoint::UploadHangs => "upload_hangs",
            FaultPoint::AckLost => "ack_lost",
            FaultPoint::Rescale => "rescale",
            FaultPoint::Savepoint => "savepoint",
            FaultPoint::StopWithSavepoint => "stop_with_savepoint",
            FaultPoint::SlowConsumer => "slow_consumer",
        }
    }

    /// Chance per opportunity, in parts per million, for a plan at full
    /// intensity. Tuned so that a seed sees a handful of faults, not one per
    /// checkpoint: a job must get to finish.
    fn rate_ppm(self) -> u64 {
        match self {
            FaultPoint::TaskFailure => 400,
            FaultPoint::ProcessCrash => 400,
            FaultPoint::CrashAfterMetadata => 60_000,
            FaultPoint::StorageWriteFails => 8_000,
            FaultPoint::StorageWriteTorn => 2_000,
            FaultPoint::StorageReadFails => 50_000,
            FaultPoint::UploadHangs => 10_000,
            FaultPoint::AckLost => 10_000,
            FaultPoint::Rescale => 300_000,
            FaultPoint::Savepoint => 300,
            FaultPoint::StopWithSavepoint => 300,
            FaultPoint::SlowConsumer => 1_000,
        }
    }
}

/// What a storage write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    None,
    Fail,
    Torn,
}

struct PlanState {
    rng: fastrand::Rng,
    /// Faults still allowed in this seed; none once it is spent, so that
    /// every run ends.
    budget: u32,
    fired: BTreeMap<FaultPoint, u64>,
    /// A fault that must end the process at the scheduler's next look.
    crash_requested: bool,
    /// Faults are only injected while armed (not while the harness itself
    /// reads the output, for instance).
    armed: bool,
}

/// The faults of one seed.
pub struct FaultPlan {
    state: Mutex<PlanState>,
}

impl FaultPlan {
    pub fn new(seed: u64, budget: u32) -> Self {
        Self {
            state: Mutex::new(PlanState {
                rng: fastrand::Rng::with_seed(seed ^ 0x5eed_fa17_0000_0001),
                budget,
                fired: BTreeMap::new(),
                crash_requested: false,
                armed: true,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `point` fires at this opportunity (and spends budget if so).
    pub fn fires(&self, point: FaultPoint) -> bool {
        let mut state = self.state();
        if !state.armed || state.budget == 0 {
            return false;
        }
        if state.rng.u64(..1_000_000) >= point.rate_ppm() {
            return false;
        }
        state.budget -= 1;
        *state.fired.entry(point).or_insert(0) += 1;
        true
    }

    pub fn storage_write(&self, path: &str) -> StorageFault {
        let metadata = path.ends_with("/_metadata");
        if self.fires(FaultPoint::StorageWriteFails) {
            return StorageFault::Fail;
        }
        if self.fires(FaultPoint::StorageWriteTorn) {
            return StorageFault::Torn;
        }
        if metadata && self.fires(FaultPoint::CrashAfterMetadata) {
            self.state().crash_requested = true;
        }
        StorageFault::None
    }

    pub fn storage_read(&self, _path: &str) -> bool {
        self.fires(FaultPoint::StorageReadFails)
    }

    /// Takes a pending crash request.
    pub fn take_crash_request(&self) -> bool {
        std::mem::take(&mut self.state().crash_requested)
    }

    pub fn disarm(&self) {
        self.state().armed = false;
    }

    pub fn budget_left(&self) -> u32 {
        self.state().budget
    }

    /// How often each fault point fired.
    pub fn fired(&self) -> BTreeMap<FaultPoint, u64> {
        self.state().fired.clone()
    }

    /// A draw from the plan's generator (for choices a fault implies, e.g.
    /// the parallelism of a rescale).
    pub fn draw(&self, bound: u64) -> u64 {
        self.state().rng.u64(..bound.max(1))
    }
}
