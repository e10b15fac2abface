//! A running job's hold on its checkpoint directory: the lease
//! ([`flowstate_checkpoint::lease`]) is acquired as soon as the job id is
//! known, before anything writes to the job's directory, renewed on a thread
//! of its own (`flowstate-lease`) for as long as the job runs, restarts
//! included, and released when the job ends in any way (dropping the
//! [`HeldLease`]).
//!
//! Losing the lease (another run took it over, or it could not be renewed
//! before it lapsed) cancels the job through the callback it was given; the
//! supervisor then ends the job with [`HeldLease::lost`]'s error instead of
//! restarting it.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{RecvTimeoutError, Sender};
use flowstate_checkpoint::CheckpointId;
use flowstate_checkpoint::coordinator::unix_ms_now;
use flowstate_checkpoint::layout::parse_metadata_path;
use flowstate_checkpoint::lease::{Lease, LeaseError, LeaseOwner, LeaseSettings, LocalProcesses};
use flowstate_checkpoint::restore::LoadedCheckpoint;
use flowstate_checkpoint::storage::SharedStorage;

use crate::error::JobError;

/// The lease of a running job; released on drop.
pub(crate) struct HeldLease {
    /// Dropped to stop the renewal thread at once.
    stop: Option<Sender<()>>,
    renewal: Option<JoinHandle<Lease>>,
    lost: Arc<Mutex<Option<LeaseError>>>,
}

impl HeldLease {
    /// Acquires the lease of `job_id` in `storage` now, and starts renewing
    /// it. `on_lost` is called once, from the renewal thread, if the lease is
    /// lost.
    pub(crate) fn acquire(
        storage: &SharedStorage,
        job_id: &str,
        settings: &LeaseSettings,
        on_lost: Box<dyn Fn() + Send>,
    ) -> Result<Self, JobError> {
        let acquired = Lease::acquire(
            Arc::clone(storage),
            job_id,
            LeaseOwner::this_process(),
            settings,
            &LocalProcesses::new(),
            unix_ms_now(),
        )?;
        let lease = acquired.lease;
        if let Some((previous, why)) = &acquired.replaced {
            tracing::warn!(
                job_id,
                "took over the lease of job {job_id} from {} ({why})",
                previous.owner.describe()
            );
        }
        tracing::debug!(
            job_id,
            "holding lease {} (generation {})",
            lease.path(),
            lease.record().generation
        );
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let lost = Arc::new(Mutex::new(None));
        let (renew_interval, thread_lost) = (settings.renew_interval, Arc::clone(&lost));
        let spawned = std::thread::Builder::new()
            .name("flowstate-lease".into())
            .spawn(move || {
                let mut lease = lease;
                // Any message or the sender's drop ends the wait early: the
                // job ended.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(renew_interval) {
                    if let Some(error) = renew_once(&mut lease, unix_ms_now()) {
                        tracing::error!("{error}");
                        *thread_lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                        on_lost();
                        break;
                    }
                }
                lease
            });
        match spawned {
            Ok(renewal) => Ok(Self {
                stop: Some(stop),
                renewal: Some(renewal),
                lost,
            }),
            // The closure (and the lease in it) is gone: the lease file stays
            // until it lapses or its dead owner is noticed.
            Err(e) => Err(JobError::Spawn(e)),
        }
    }

    /// Why the job lost its lease, once it has.
    pub(crate) fn lost(&self) -> Option<JobError> {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(JobError::Lease)
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        let Some(lease) = self.renewal.take().and_then(|t| t.join().ok()) else {
            return;
        };
        let path = lease.path().to_owned();
        if let Err(e) = lease.release() {
            tracing::warn!(
                "cannot release the lease {path} ({e}); the next run of this job takes it over \
                 once it lapses, or at once on this machine"
            );
        }
    }
}

/// A completed checkpoint of `job_id` newer than `restored` that the restore
/// did not skip: one that completed after the restore chose its checkpoint
/// and before this run held the lease (the run that held it until then
/// finished or died meanwhile). Restoring the older one would delete it and
/// publish its output again.
pub(crate) fn newer_than_restored(
    storage: &SharedStorage,
    job_id: &str,
    restored: &LoadedCheckpoint,
) -> Result<Option<CheckpointId>, JobError> {
    let restored_id = parse_metadata_path(&restored.metadata_path)
        .filter(|(job, _)| job == job_id)
        .map_or(0, |(_, id)| id);
    let skipped = |id: CheckpointId| {
        restored
            .skipped
            .iter()
            .any(|s| s.job == job_id && !s.pointer && s.checkpoint_id == id)
    };
    let paths = storage
        .list(&format!("{job_id}/"))
        .map_err(flowstate_checkpoint::CheckpointError::from)?;
    Ok(paths
        .iter()
        .filter_map(|path| parse_metadata_path(path))
        .filter(|(job, id)| job == job_id && *id > restored_id && !skipped(*id))
        .map(|(_, id)| id)
        .max())
}

/// Renews `lease` at `now_unix_ms`; the error if the lease is lost: taken
/// over, or not renewed before it lapsed (then another run may take it over,
/// so this one must stop as if it had).
fn renew_once(lease: &mut Lease, now_unix_ms: u64) -> Option<LeaseError> {
    match lease.renew(now_unix_ms) {
        Ok(()) => None,
        Err(lost @ LeaseError::Lost { .. }) => Some(lost),
        Err(e) if now_unix_ms >= lease.record().expires_unix_ms() => Some(LeaseError::Lost {
            job_id: lease.record().job_id.clone(),
            path: lease.path().to_owned(),
            reason: format!(
                "it could not be renewed before it lapsed ({e}); another run may hold it now"
            ),
        }),
        Err(e) => {
            tracing::warn!(
                "cannot renew the lease {} ({e}); trying again",
                lease.path()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use flowstate_checkpoint::storage::{CheckpointStorage, StorageError, open_storage};

    use super::*;

    fn memory(name: &str) -> SharedStorage {
        open_storage(&format!(
            "memory://runtime-lease-{name}-{}",
            std::process::id()
        ))
        .unwrap()
    }

    fn never() -> Box<dyn Fn() + Send> {
        Box::new(|| {})
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_is_dropped() {
        let storage = memory("second");
        let settings = LeaseSettings::default();
        let first = HeldLease::acquire(&storage, "job", &settings, never()).unwrap();
        let refused = HeldLease::acquire(&storage, "job", &settings, never()).err();
        match refused {
            Some(JobError::Lease(LeaseError::Held { .. })) => {}
            other => panic!("expected a held lease: {other:?}"),
        }
        // Another job id of the same storage is another directory.
        drop(HeldLease::acquire(&storage, "other-job", &settings, never()).unwrap());
        drop(first);
        assert!(storage.list("").unwrap().is_empty());
        drop(HeldLease::acquire(&storage, "job", &settings, never()).unwrap());
        assert!(storage.list("").unwrap().is_empty());
    }

    /// The renewal thread notices a take-over, calls back and reports it.
    /// Event-driven: the test waits for the callback, however long the
    /// renewal takes to come round.
    #[test]
    fn the_renewal_thread_reports_a_take_over() {
        let storage = memory("thread");
        let settings = LeaseSettings {
            renew_interval: std::time::Duration::from_millis(10),
            ..LeaseSettings::default()
        };
        let (called, calls) = crossbeam_channel::bounded(1);
        let held = HeldLease::acquire(
            &storage,
            "job",
            &settings,
            Box::new(move || {
                let _ = called.try_send(());
            }),
        )
        .unwrap();
        assert!(held.lost().is_none());
        let explicit = LeaseSettings {
            take_over: true,
            ..settings
        };
        let successor = Lease::acquire(
            Arc::clone(&storage),
            "job",
            LeaseOwner::this_process(),
            &explicit,
            &LocalProcesses::new(),
            unix_ms_now(),
        )
        .unwrap()
        .lease;
        calls
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the loss is reported");
        match held.lost() {
            Some(JobError::Lease(LeaseError::Lost { reason, .. })) => {
                assert!(reason.contains("generation 2"), "{reason}")
            }
            other => panic!("expected a lost lease: {other:?}"),
        }
        // Dropping the fenced holder leaves the successor's lease alone.
        drop(held);
        assert_eq!(storage.list("").unwrap(), vec![successor.path().to_owned()]);
        successor.release().unwrap();
    }

    #[test]
    fn a_lost_lease_is_reported_and_a_lapsed_one_counts_as_lost() {
        let storage = memory("lost");
        let settings = LeaseSettings::default();
        let owner = LeaseOwner::this_process();
        let probe = LocalProcesses::new();
        let now = unix_ms_now();
        let mut lease = Lease::acquire(Arc::clone(&storage), "job", owner, &settings, &probe, now)
            .unwrap()
            .lease;
        assert!(renew_once(&mut lease, now + 1).is_none());
        let explicit = LeaseSettings {
            take_over: true,
            ..settings.clone()
        };
        let other = Lease::acquire(
            Arc::clone(&storage),
            "job",
            LeaseOwner::this_process(),
            &explicit,
            &probe,
            now + 2,
        )
        .unwrap();
        assert!(matches!(
            renew_once(&mut lease, now + 3),
            Some(LeaseError::Lost { .. })
        ));
        other.lease.release().unwrap();

        // Storage failing: retried while the lease lasts, lost once it lapsed.
        struct Failing {
            inner: SharedStorage,
            fail: AtomicUsize,
        }
        impl CheckpointStorage for Failing {
            fn describe(&self) -> String {
                "failing".into()
            }
            fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
                if self.fail.load(Ordering::SeqCst) > 0 {
                    return Err(StorageError::Io {
                        storage: "failing".into(),
                        operation: "put",
                        path: path.into(),
                        reason: "injected".into(),
                    });
                }
                self.inner.put(path, bytes)
            }
            fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
                self.inner.put_if_absent(path, bytes)
            }
            fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
                self.inner.get(path)
            }
            fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
                self.inner.list(prefix)
            }
            fn delete(&self, path: &str) -> Result<(), StorageError> {
                self.inner.delete(path)
            }
        }
        let failing = Arc::new(Failing {
            inner: memory("failing"),
            fail: AtomicUsize::new(0),
        });
        let shared: SharedStorage = failing.clone();
        let mut lease = Lease::acquire(
            shared,
            "job",
            LeaseOwner::this_process(),
            &settings,
            &probe,
            now,
        )
        .unwrap()
        .lease;
        failing.fail.store(1, Ordering::SeqCst);
        let ttl = lease.record().ttl_ms;
        assert!(renew_once(&mut lease, now + ttl - 1).is_none());
        match renew_once(&mut lease, now + ttl) {
            Some(LeaseError::Lost { reason, .. }) => {
                assert!(reason.contains("before it lapsed"), "{reason}")
            }
            other => panic!("expected a lapsed lease: {other:?}"),
        }
    }
}
