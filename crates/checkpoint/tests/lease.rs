//! The job lease on every storage: a local directory, process memory and S3
//! (a conditional-put lease there).
//!
//! The S3 run needs a server, as in `tests/storage.rs`: `eval
//! "$(scripts/s3-server.sh)"` sets `FLOWSTATE_TEST_S3_URL` and the `AWS_*`
//! variables. Without it the S3 test says loudly that it is skipped and
//! passes, unless `FLOWSTATE_REQUIRE_S3=1`. It writes under its own prefix and
//! deletes what it wrote. Time is injected: nothing here waits.

use std::sync::{Arc, Barrier};
use std::time::{SystemTime, UNIX_EPOCH};

use flowstate_checkpoint::lease::{
    Acquired, Lease, LeaseError, LeaseOwner, LeaseSettings, Liveness, ProcessProbe, lease_path,
};
use flowstate_checkpoint::storage::{SharedStorage, open_storage};

const T0: u64 = 1_700_000_000_000;
const JOB: &str = "job-lease";

/// Only the TTL decides (owners of this test are not processes).
struct NoProbe;
impl ProcessProbe for NoProbe {
    fn liveness(&self, _: &LeaseOwner) -> Liveness {
        Liveness::Unknown
    }
}

fn owner(pid: u32, nonce: &str) -> LeaseOwner {
    LeaseOwner {
        host: "test-host".into(),
        pid,
        nonce: nonce.into(),
        process_start: None,
        boot_id: None,
        pid_namespace: None,
    }
}

fn acquire(
    storage: &SharedStorage,
    who: LeaseOwner,
    take_over: bool,
    now: u64,
) -> Result<Acquired, LeaseError> {
    let settings = LeaseSettings {
        take_over,
        ..LeaseSettings::default()
    };
    Lease::acquire(Arc::clone(storage), JOB, who, &settings, &NoProbe, now)
}

fn sorted_files(storage: &SharedStorage) -> Vec<String> {
    let mut paths = storage.list("").unwrap();
    paths.sort();
    paths
}

/// What every storage must do with leases. Expects an empty storage and
/// leaves it empty. `exclusive_create`: racing `put_if_absent`s let exactly
/// one writer succeed (not so on s3s-fs).
fn lease_rules(storage: &SharedStorage, exclusive_create: bool) {
    let name = storage.describe();
    assert!(sorted_files(storage).is_empty(), "{name} is not empty");

    // Acquire, refuse a second run naming the owner, renew.
    let mut first = acquire(storage, owner(1, "aaaa"), false, T0).unwrap().lease;
    assert_eq!(first.path(), lease_path(JOB, 1));
    let err = acquire(storage, owner(2, "bbbb"), false, T0 + 1_000).unwrap_err();
    assert!(
        err.to_string().contains("pid 1 on host test-host"),
        "{name}: {err}"
    );
    first.renew(T0 + 20_000).unwrap();
    assert!(matches!(
        acquire(storage, owner(2, "bbbb"), false, T0 + 50_000),
        Err(LeaseError::Held { .. })
    ));

    // Stale by TTL: taken over with a conditional create of generation 2,
    // the old generation deleted, the old owner fenced.
    let second = acquire(storage, owner(2, "bbbb"), false, T0 + 50_001).unwrap();
    assert_eq!(second.replaced.as_ref().unwrap().0.owner.pid, 1);
    assert_eq!(sorted_files(storage), vec![lease_path(JOB, 2)]);
    assert!(matches!(
        first.renew(T0 + 50_002),
        Err(LeaseError::Lost { .. })
    ));
    first.release().unwrap();
    assert_eq!(sorted_files(storage), vec![lease_path(JOB, 2)]);

    // Explicit take-over of a live lease.
    let third = acquire(storage, owner(3, "cccc"), true, T0 + 50_003).unwrap();
    assert_eq!(third.lease.record().generation, 3);
    assert!(second.lease.verify_held().is_err());
    second.lease.release().unwrap();

    if exclusive_create {
        // Two contenders for generation 4 of a stale lease: exactly one wins.
        let now = T0 + 200_000;
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [4u32, 5]
            .into_iter()
            .map(|pid| {
                let (storage, start) = (Arc::clone(storage), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    acquire(&storage, owner(pid, &format!("race{pid}")), false, now)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
        assert_eq!(winners.len(), 1, "{name}");
        third.lease.release().unwrap();
        for winner in winners {
            winner.lease.release().unwrap();
        }
    } else {
        third.lease.release().unwrap();
    }
    // Released: the directory is free.
    assert!(sorted_files(storage).is_empty(), "{name}");
    let again = acquire(storage, owner(6, "ffff"), false, T0 + 300_000).unwrap();
    assert!(again.replaced.is_none());
    again.lease.release().unwrap();
    assert!(sorted_files(storage).is_empty(), "{name}");
}

#[test]
fn local_directory_lease() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_storage(dir.path().to_str().unwrap()).unwrap();
    lease_rules(&storage, true);
}

#[test]
fn memory_lease() {
    let storage = open_storage(&format!("memory://lease-test-{}", std::process::id())).unwrap();
    lease_rules(&storage, true);
}

#[test]
fn s3_conditional_put_lease() {
    let required = std::env::var("FLOWSTATE_REQUIRE_S3").is_ok_and(|v| v == "1");
    let Some(base) = std::env::var("FLOWSTATE_TEST_S3_URL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            !required,
            "FLOWSTATE_REQUIRE_S3=1 but FLOWSTATE_TEST_S3_URL is not set: start a server with \
             `eval \"$(scripts/s3-server.sh)\"`"
        );
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! SKIPPED s3_conditional_put_lease: FLOWSTATE_TEST_S3_URL is not set.    !!!");
        eprintln!(
            "!!! Run `eval \"$(scripts/s3-server.sh)\"` first to test S3 storage for real. !!!"
        );
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!(
        "{}/lease-{nanos:x}-{}",
        base.trim_end_matches('/'),
        std::process::id()
    );
    let storage: SharedStorage = open_storage(&url).unwrap_or_else(|e| panic!("{e}"));

    // Clean up even if the test fails.
    struct Cleanup(SharedStorage);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Err(e) = self.0.delete_prefix("") {
                eprintln!("cleaning up {} failed: {e}", self.0.describe());
            }
        }
    }
    let _cleanup = Cleanup(Arc::clone(&storage));

    // s3s-fs (CI) does not make racing creates exclusive; a server that does
    // (AWS S3) can be held to it with FLOWSTATE_TEST_S3_EXCLUSIVE_CREATE=1.
    let exclusive = std::env::var("FLOWSTATE_TEST_S3_EXCLUSIVE_CREATE").is_ok_and(|v| v == "1");
    lease_rules(&storage, exclusive);
}
