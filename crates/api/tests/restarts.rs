//! The restart path (issue 11, item 9): a failure to read checkpoint storage
//! while loading the checkpoint to restart from goes through the restart
//! strategy like any other failure, and what a restart reports keeps the
//! whole cause of the failure.
//!
//! Storage failures are injected deterministically by a wrapper whose
//! listing fails a set number of times once the job's operator has failed;
//! nothing depends on timing.
//!
//! The restart strategies (issue 12, item 4) at the level of a whole job: the
//! default forgives failures between healthy runs, `failure-rate` ends a job
//! that fails too often, `none` ends it at once, and a cancel ends the wait
//! for a restart. Time is never raced: a job that must look healthy sleeps
//! longer than the strategy's threshold before it fails (the supervisor
//! measures from before the attempt's tasks exist), and time scales are
//! shrunk (the policy's own tests cover the real defaults with invented
//! instants hours apart).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::{
    CheckpointStorage, CoordinatorSettings, SharedStorage, StorageError, open_storage,
};
use flowstate::runtime::restart::{DEFAULT_RESTART_ATTEMPTS, ExponentialDelay};
use flowstate::runtime::{
    CheckpointingConfig, Guarantee, JobError, JobStatus, RestartStrategy, RestoreFrom,
};
use flowstate::{ExecutionConfig, StreamEnvironment};

/// Memory storage whose `list` fails while `failing_lists` is above zero.
struct FlakyStorage {
    inner: SharedStorage,
    failing_lists: AtomicU32,
}

impl CheckpointStorage for FlakyStorage {
    fn describe(&self) -> String {
        format!("flaky {}", self.inner.describe())
    }
    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put(path, bytes)
    }
    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put_if_absent(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        self.inner.get(path)
    }
    fn size(&self, path: &str) -> Result<Option<u64>, StorageError> {
        self.inner.size(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let failing = self
            .failing_lists
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(StorageError::Io {
                storage: self.describe(),
                operation: "list",
                path: prefix.to_owned(),
                reason: "injected: connection reset by peer".into(),
            });
        }
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.inner.delete(path)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        self.inner.delete_prefix(prefix)
    }
}

fn config(storage: SharedStorage, attempts: u32) -> ExecutionConfig {
    config_with(
        storage,
        RestartStrategy::fixed_delay(attempts, Duration::from_millis(1)),
    )
}

fn config_with(storage: SharedStorage, restart: RestartStrategy) -> ExecutionConfig {
    ExecutionConfig {
        job_name: "restart-test".into(),
        checkpointing: Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval: Some(Duration::from_millis(20)),
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart,
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(2)
    }
}

const RECORDS: u64 = 20_000;

/// A job whose map fails once, at record 5000; `on_failure` runs just before.
fn failing_once_job(env: &StreamEnvironment, on_failure: impl Fn() + Send + Sync + 'static) {
    let failed = AtomicBool::new(false);
    let source = SequenceSource::new(RECORDS, 4, |i| i).unwrap();
    env.from_source("numbers", source)
        .uid("numbers")
        .map(move |x: u64| -> u64 {
            if x == 5000 && !failed.swap(true, Ordering::SeqCst) {
                on_failure();
                panic!("injected failure at record {x}");
            }
            x
        })
        .name("Fragile")
        .count();
}

/// With old code, the restart's log line and the controller's failure said
/// only "task '...' failed".
#[test]
fn a_restart_reports_the_whole_cause_of_the_failure() {
    let storage = open_storage(&format!("memory://restart-cause-{}", std::process::id())).unwrap();
    let env = StreamEnvironment::new(config(storage, 3));
    failing_once_job(&env, || {});
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    let report = job.join().expect("the job recovers");
    assert_eq!(report.restarts, 1);
    let failure = controller
        .failure()
        .expect("the restart recorded its cause");
    assert!(
        failure.contains("injected failure at record 5000") && failure.contains("Fragile"),
        "the cause is lost: {failure}"
    );
}

/// With old code, the job failed at once with the storage error.
#[test]
fn storage_errors_while_loading_for_a_restart_go_through_the_restart_strategy() {
    let flaky = Arc::new(FlakyStorage {
        inner: open_storage(&format!("memory://restart-flaky-{}", std::process::id())).unwrap(),
        failing_lists: AtomicU32::new(0),
    });
    let env = StreamEnvironment::new(config(flaky.clone(), 5));
    let failing = Arc::clone(&flaky);
    failing_once_job(&env, move || {
        failing.failing_lists.store(2, Ordering::SeqCst)
    });
    let job = env.start().unwrap();
    let controller = Arc::clone(job.controller());
    let report = job
        .join()
        .expect("the job recovers once storage answers again");
    // The operator's failure, then two failed loads of the checkpoint.
    assert_eq!(report.restarts, 3);
    assert_eq!(flaky.failing_lists.load(Ordering::SeqCst), 0);
    let failure = controller.failure().unwrap_or_default();
    assert!(
        failure.contains("connection reset by peer"),
        "the last restart's cause: {failure}"
    );

    // More failed loads than attempts: the job fails, naming the storage error.
    let flaky = Arc::new(FlakyStorage {
        inner: open_storage(&format!("memory://restart-flaky-2-{}", std::process::id())).unwrap(),
        failing_lists: AtomicU32::new(0),
    });
    let env = StreamEnvironment::new(config(flaky.clone(), 2));
    let failing = Arc::clone(&flaky);
    failing_once_job(&env, move || {
        failing.failing_lists.store(100, Ordering::SeqCst)
    });
    let error = env.execute().expect_err("the restarts run out");
    assert!(
        error.to_string().contains("connection reset by peer"),
        "{error}"
    );
}

/// An error and all its sources, as the restart's log line shows them.
fn chain(error: &JobError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn memory(name: &str) -> SharedStorage {
    open_storage(&format!("memory://restart-{name}-{}", std::process::id())).unwrap()
}

/// One instance of every operator: each attempt's first record is the one
/// that fails, so attempts and failures correspond one to one.
fn single(config: ExecutionConfig) -> ExecutionConfig {
    ExecutionConfig {
        parallelism: 1,
        workers: 1,
        ..config
    }
}

/// A job whose map, while `failures` remain, runs healthily for `healthy`
/// (it sleeps: the attempt has been running at least that long) and then
/// fails, once per attempt. Returns the failures left.
fn failing_after_healthy_runs(
    env: &StreamEnvironment,
    failures: u32,
    healthy: Duration,
) -> Arc<AtomicU32> {
    let left = Arc::new(AtomicU32::new(failures));
    let failing = Arc::clone(&left);
    let source = SequenceSource::new(RECORDS, 4, |i| i).unwrap();
    env.from_source("numbers", source)
        .uid("numbers")
        .map(move |x: u64| -> u64 {
            if failing.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(healthy);
                failing.fetch_sub(1, Ordering::SeqCst);
                panic!("injected failure after a healthy run, at record {x}");
            }
            x
        })
        .name("Fragile")
        .count();
    left
}

/// Healthy running before each failure of the job-level tests; the reset
/// threshold of their strategy equals it.
const HEALTHY: Duration = Duration::from_millis(150);

/// The default strategy's semantics (exponential delay, its attempts, reset
/// after a healthy run) on a shrunk time scale: `HEALTHY` stands for the
/// minute of the default threshold, a millisecond for its delays.
fn default_strategy_scaled() -> RestartStrategy {
    let RestartStrategy::ExponentialDelay(default) = RestartStrategy::default() else {
        panic!("the default restart strategy is not exponential-delay");
    };
    RestartStrategy::ExponentialDelay(ExponentialDelay {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        reset_after: HEALTHY,
        ..default
    })
}

/// A job that keeps failing, each time after a healthy run, keeps running
/// under the default strategy: twice as many failures as its attempts. With
/// old code (3 attempts over the job's whole life, never reset) the fourth
/// failure ended the job.
#[test]
fn under_the_default_a_job_that_fails_after_healthy_runs_keeps_running() {
    let failures = 2 * DEFAULT_RESTART_ATTEMPTS + 1;
    let env = StreamEnvironment::new(single(config_with(
        memory("healthy"),
        default_strategy_scaled(),
    )));
    let left = failing_after_healthy_runs(&env, failures, HEALTHY);
    let report = env
        .execute()
        .expect("a job with healthy runs between its failures keeps running");
    assert_eq!(report.restarts, u64::from(failures));
    assert_eq!(left.load(Ordering::SeqCst), 0);
}

/// The same failures under `fixed-delay` with the same attempts end the job:
/// the reset is what keeps it alive.
#[test]
fn fixed_delay_ends_the_same_job_after_its_attempts() {
    let attempts = DEFAULT_RESTART_ATTEMPTS;
    let env = StreamEnvironment::new(single(config_with(
        memory("fixed"),
        RestartStrategy::fixed_delay(attempts, Duration::from_millis(1)),
    )));
    let left = failing_after_healthy_runs(&env, 2 * attempts + 1, HEALTHY);
    let job = env.start().unwrap();
    let metrics = Arc::clone(job.metrics());
    let error = job.join().expect_err("fixed-delay never forgives");
    assert!(chain(&error).contains("injected failure"), "{error}");
    assert_eq!(metrics.restarts(), u64::from(attempts));
    // The first failure and the attempts' failures; the rest never came.
    assert_eq!(
        left.load(Ordering::SeqCst),
        2 * attempts + 1 - (attempts + 1)
    );
}

/// `failure-rate` ends a job that fails more often than it tolerates: three
/// failures an hour, and this job fails at every attempt.
#[test]
fn failure_rate_ends_a_job_that_fails_too_often() {
    let env = StreamEnvironment::new(single(config_with(
        memory("rate-exceeded"),
        RestartStrategy::failure_rate(3, Duration::from_secs(3600), Duration::from_millis(1)),
    )));
    let left = failing_after_healthy_runs(&env, u32::MAX, Duration::ZERO);
    let job = env.start().unwrap();
    let (metrics, controller) = (Arc::clone(job.metrics()), Arc::clone(job.controller()));
    let error = job
        .join()
        .expect_err("the fourth failure within the hour ends the job");
    assert!(chain(&error).contains("injected failure"), "{error}");
    assert_eq!(metrics.restarts(), 3);
    assert_eq!(u32::MAX - left.load(Ordering::SeqCst), 4);
    assert_eq!(controller.status(), JobStatus::Failed);
    // Every failure is recorded, with its cause and time, for the HTTP API's
    // exceptions: three restarts, then the one that ended the job.
    let failures = controller.failures();
    let restarted: Vec<bool> = failures.iter().map(|f| f.restarted).collect();
    assert_eq!(restarted, [true, true, true, false], "{failures:?}");
    for failure in &failures {
        assert!(failure.message.contains("injected failure"), "{failure:?}");
        assert!(failure.unix_ms >= controller.start_unix_ms(), "{failure:?}");
    }
    assert!(failures.windows(2).all(|w| w[0].unix_ms <= w[1].unix_ms));
}

/// ... while failures further apart than its interval never add up: at most
/// one per `HEALTHY / 3`, and each comes `HEALTHY` after the previous one.
#[test]
fn failure_rate_keeps_a_job_whose_failures_are_spread_out() {
    let env = StreamEnvironment::new(single(config_with(
        memory("rate-spread"),
        RestartStrategy::failure_rate(1, HEALTHY / 3, Duration::from_millis(1)),
    )));
    failing_after_healthy_runs(&env, 4, HEALTHY);
    let report = env
        .execute()
        .expect("one failure per interval is tolerated");
    assert_eq!(report.restarts, 4);
}

#[test]
fn none_ends_the_job_at_its_first_failure() {
    let env = StreamEnvironment::new(config_with(memory("none"), RestartStrategy::None));
    failing_once_job(&env, || {});
    let job = env.start().unwrap();
    let metrics = Arc::clone(job.metrics());
    let error = job.join().expect_err("no restarts");
    assert!(chain(&error).contains("injected failure"), "{error}");
    assert_eq!(metrics.restarts(), 0);
}

/// A cancel during the delay before a restart ends the job at once. With
/// old code the supervisor slept through it: `join` gave up after the
/// cancellation timeout with `CancelTimeout` naming the supervisor.
#[test]
fn a_cancel_ends_the_wait_for_a_restart() {
    let env = StreamEnvironment::new(config_with(
        memory("cancel-delay"),
        RestartStrategy::fixed_delay(1, Duration::from_secs(3600)),
    ));
    failing_once_job(&env, || {});
    let job = env.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while job.controller().status() != JobStatus::Restarting {
        assert!(
            Instant::now() < deadline && !job.is_finished(),
            "the job never waited for a restart"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    job.cancel();
    match job.join() {
        Err(JobError::Cancelled) => {}
        other => panic!("expected the cancel to end the job: {other:?}"),
    }
}
