//! The restart path (issue 11, item 9): a failure to read checkpoint storage
//! while loading the checkpoint to restart from goes through the restart
//! strategy like any other failure, and what a restart reports keeps the
//! whole cause of the failure.
//!
//! Storage failures are injected deterministically by a wrapper whose
//! listing fails a set number of times once the job's operator has failed;
//! nothing depends on timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use flowstate::connectors::SequenceSource;
use flowstate::runtime::checkpoint::{
    CheckpointStorage, CoordinatorSettings, SharedStorage, StorageError, open_storage,
};
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom};
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
    ExecutionConfig {
        job_name: "restart-test".into(),
        checkpointing: Some(CheckpointingConfig {
            storage,
            settings: CoordinatorSettings {
                interval: Duration::from_millis(20),
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore: RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy {
                attempts,
                delay: Duration::from_millis(1),
                backoff_multiplier: 1.0,
                delay_max: Duration::from_millis(1),
            },
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
