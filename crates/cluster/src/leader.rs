//! High availability of the job manager: leader election through etcd
//! (docs/high-availability.md), and the task managers' side of it.
//!
//! Keys of a job's HA id `ID` (`--ha-id`):
//! - `/flowstate/ID/leader`: the leader's control address, attached to the
//!   leader's etcd lease: it disappears when the leader's lease expires
//!   (the leader died or lost etcd) or is revoked (it ended).
//! - `/flowstate/ID/job`: the job id in checkpoint storage, written by the
//!   first leader of a job; a successor resumes that job.
//! - `/flowstate/ID/finished`: the job id of a job that finished; the
//!   standby then has nothing to take over.
//!
//! A [`Candidate`] grants itself a lease (kept alive by a thread from then
//! on) and campaigns: a transaction creates the leader key attached to its
//! lease only where the key does not exist; the loser polls and tries again
//! once the key is gone. The winner is [`Leader`] until its lease is lost:
//! a keep-alive that says the lease expired, or none answered for a whole
//! TTL. Then `on_lost` runs at once (the caller stops acting as leader);
//! etcd has deleted the key, or will when the TTL runs out, and a standby
//! takes over. Writes of the job's keys are guarded by the leader's lease in
//! the same transaction, so a deposed leader cannot write them.
//!
//! Owns: the election, the keys' meaning, [`run_task_manager_ha`]. Must not
//! touch: the job (the caller starts and stops it), checkpoint storage and
//! its lease (the runtime's), the wire to etcd ([`crate::etcd`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowstate_runtime::{ExecutionConfig, JobGraph};

use crate::etcd::{Etcd, EtcdError};
use crate::taskmanager::{TaskManagerError, TaskManagerOptions, run_task_manager_registered};

/// Why an election or a follower failed.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("this job manager's etcd lease was lost: {0}")]
    LeaseLost(String),
    #[error("HA id {0:?}: use letters, digits, '-', '_' and '.' only")]
    Id(String),
    #[error("no job manager was published under {key} in etcd within {waited:?}")]
    NoLeader { key: String, waited: Duration },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    TaskManager(#[from] TaskManagerError),
}

/// Where and how a job's election runs.
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// The etcd endpoint (`http://HOST:PORT`).
    pub etcd: String,
    /// The job's HA id: its keys are under `/flowstate/ID/`.
    pub id: String,
    /// The leader lease's TTL: how long after a leader's death a standby
    /// takes over at most (plus `poll`).
    pub ttl: Duration,
    /// How often a standby (or a task manager) looks at the leader key.
    pub poll: Duration,
    /// Longest one call to etcd may take.
    pub request_timeout: Duration,
}

impl HaSettings {
    /// The defaults: a 5 s TTL, polls every 250 ms, calls of at most 2 s.
    pub fn new(etcd: impl Into<String>, id: impl Into<String>) -> Result<Self, HaError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(HaError::Id(id));
        }
        Ok(Self {
            etcd: etcd.into(),
            id,
            ttl: Duration::from_secs(5),
            poll: Duration::from_millis(250),
            request_timeout: Duration::from_secs(2),
        })
    }

    pub fn key(&self, name: &str) -> String {
        format!("/flowstate/{}/{name}", self.id)
    }

    pub fn leader_key(&self) -> String {
        self.key("leader")
    }

    fn client(&self) -> Result<Etcd, HaError> {
        Ok(Etcd::new(&self.etcd, self.request_timeout)?)
    }
}

/// Called once when a leader's lease is lost, with the cause.
pub type OnLost = Box<dyn FnOnce(String) + Send>;

/// The lease's keeper thread and what it shares.
struct Keeper {
    stop: Arc<AtomicBool>,
    lost: Arc<Mutex<LostState>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct LostState {
    cause: Option<String>,
    on_lost: Option<OnLost>,
}

impl LostState {
    fn lose(&mut self, cause: String) {
        if self.cause.is_none() {
            tracing::error!("the etcd lease of this job manager was lost: {cause}");
            self.cause = Some(cause.clone());
            if let Some(on_lost) = self.on_lost.take() {
                on_lost(cause);
            }
        }
    }
}

fn lock(state: &Mutex<LostState>) -> std::sync::MutexGuard<'_, LostState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job manager that holds an etcd lease and may campaign with it.
pub struct Candidate {
    settings: HaSettings,
    etcd: Arc<Etcd>,
    lease: i64,
    /// The store's revision when the lease was granted.
    since_revision: i64,
    keeper: Keeper,
    /// Revoke the lease when dropped (not after [`Leader::abandon`]).
    revoke: bool,
}

impl Candidate {
    /// Grants this candidate's lease and keeps it alive from now on.
    pub fn new(settings: HaSettings) -> Result<Self, HaError> {
        let etcd = Arc::new(settings.client()?);
        let ttl_secs = i64::try_from(settings.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let (lease, since_revision) = etcd.grant(ttl_secs)?;
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(Mutex::new(LostState::default()));
        let thread = {
            let (etcd, stop, lost) = (Arc::clone(&etcd), Arc::clone(&stop), Arc::clone(&lost));
            let ttl = settings.ttl.max(Duration::from_secs(1));
            std::thread::Builder::new()
                .name("flowstate-ha-lease".into())
                .spawn(move || keep_alive(&etcd, lease, ttl, &stop, &lost))
                .map_err(HaError::Thread)?
        };
        Ok(Self {
            settings,
            etcd,
            lease,
            since_revision,
            keeper: Keeper {
                stop,
                lost,
                thread: Some(thread),
            },
            revoke: true,
        })
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Waits until this candidate is the leader, publishing `address` in
    /// the leader key. `on_lost` runs (once, on the keeper's thread) if the
    /// lease is lost from now on; a lease lost while waiting ends the wait
    /// with [`HaError::LeaseLost`] instead.
    pub fn campaign(self, address: &str, on_lost: OnLost) -> Result<Leader, HaError> {
        let key = self.settings.leader_key();
        let mut shown: Option<String> = None;
        loop {
            if let Some(cause) = lock(&self.keeper.lost).cause.clone() {
                return Err(HaError::LeaseLost(cause));
            }
            match self.etcd.create(&key, address, self.lease) {
                Ok(None) => break,
                Ok(Some(leader)) => {
                    if shown.as_deref() != Some(leader.value.as_str()) {
                        tracing::info!(
                            "standby: the job manager at {} leads job {}; waiting for its \
                             key {key} to go",
                            leader.value,
                            self.settings.id
                        );
                        shown = Some(leader.value);
                    }
                }
                // etcd unreachable for a moment: the lease's keeper decides
                // when that is too long.
                Err(e) => tracing::warn!("standby: campaigning for {key}: {e}"),
            }
            std::thread::sleep(self.settings.poll);
        }
        {
            let mut lost = lock(&self.keeper.lost);
            if let Some(cause) = lost.cause.clone() {
                return Err(HaError::LeaseLost(cause));
            }
            lost.on_lost = Some(on_lost);
        }
        tracing::info!(
            "elected leader of job {} (etcd lease {:x}), published at {key}: {address}",
            self.settings.id,
            self.lease
        );
        Ok(Leader { candidate: self })
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.keeper.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.keeper.thread.take() {
            let _ = thread.join();
        }
        // The leader key goes with the lease: a standby takes over at once.
        if !self.revoke {
            return;
        }
        if let Err(e) = self.etcd.revoke(self.lease) {
            tracing::debug!("revoking etcd lease {:x}: {e}", self.lease);
        }
    }
}

/// The keeper: a keep-alive every third of the TTL. The lease is lost when
/// etcd says it expired, or, without waiting for etcd, a fifth of the TTL
/// before it may expire: its life is counted from when the last successful
/// keep-alive was *sent* (etcd renewed it later than that), so a leader cut
/// off from etcd gives up before a standby can be elected.
fn keep_alive(etcd: &Etcd, lease: i64, ttl: Duration, stop: &AtomicBool, lost: &Mutex<LostState>) {
    let every = ttl / 3;
    let margin = ttl / 5;
    // Granted before the keeper started: its life began earlier still.
    let mut valid_until = Instant::now() + ttl;
    let mut next = Instant::now() + every;
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now + margin >= valid_until {
            lock(lost).lose(format!(
                "etcd lease {lease:x} was not renewed within {:?} of its expiry{}",
                margin,
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!(": {last_error}")
                }
            ));
            return;
        }
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next = now + every;
        let sent = Instant::now();
        match etcd.keep_alive(lease) {
            Ok(left) if left > 0 => {
                let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
                valid_until = sent + left.min(ttl);
                last_error.clear();
            }
            Ok(_) => {
                lock(lost).lose(format!("etcd lease {lease:x} expired"));
                return;
            }
            Err(e) => {
                tracing::warn!("keeping etcd lease {lease:x} alive: {e}");
                last_error = e.to_string();
            }
        }
    }
}

/// What the leader is to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// No job of this HA id is running: start a new one (and publish its id).
    New,
    /// A previous leader ran job `0`: resume it from its latest checkpoint.
    Resume(String),
    /// The job this candidate stood by for (`0`) finished while it waited.
    Finished(String),
}

/// The elected job manager of a job.
pub struct Leader {
    candidate: Candidate,
}

impl Leader {
    pub fn lease(&self) -> i64 {
        self.candidate.lease
    }

    /// Whether the lease was lost (this process is no longer the leader).
    pub fn lost(&self) -> Option<String> {
        lock(&self.candidate.keeper.lost).cause.clone()
    }

    /// What to run: decided from the job's keys (see [`Standing`]).
    pub fn standing(&self) -> Result<Standing, HaError> {
        let etcd = &self.candidate.etcd;
        let settings = &self.candidate.settings;
        let job = etcd.get(&settings.key("job"))?;
        let finished = etcd.get(&settings.key("finished"))?;
        Ok(match (job, finished) {
            (Some(job), Some(finished)) if ended(&job, &finished) => {
                if finished.mod_revision > self.candidate.since_revision {
                    Standing::Finished(job.value)
                } else {
                    // Finished before this candidate started: a new run.
                    Standing::New
                }
            }
            (Some(job), _) => Standing::Resume(job.value),
            (None, _) => Standing::New,
        })
    }

    /// Publishes the id of the job this leader runs (while it leads).
    pub fn publish_job(&self, job_id: &str) -> Result<(), HaError> {
        self.guarded_put("job", job_id)
    }

    /// Records that job `job_id` finished: a standby then ends too.
    pub fn finished(&self, job_id: &str) -> Result<(), HaError> {
        self.guarded_put("finished", job_id)
    }

    fn guarded_put(&self, name: &str, value: &str) -> Result<(), HaError> {
        let settings = &self.candidate.settings;
        let written = self.candidate.etcd.put_guarded(
            &settings.leader_key(),
            self.candidate.lease,
            &settings.key(name),
            value,
        )?;
        if written {
            Ok(())
        } else {
            Err(HaError::LeaseLost(format!(
                "{} is no longer attached to this job manager's lease",
                settings.leader_key()
            )))
        }
    }

    /// Steps down: the lease is revoked, the leader key deleted at once.
    pub fn resign(self) {
        drop(self);
    }

    /// Stops keeping the lease alive without revoking it, as a crash of
    /// this process would: the key goes when the lease's TTL runs out.
    pub fn abandon(mut self) {
        self.candidate.revoke = false;
    }
}

/// Waits (at most `wait`) for a leader key: the leader's address and the
/// key's creation revision.
pub fn wait_for_leader(
    etcd: &Etcd,
    settings: &HaSettings,
    wait: Duration,
) -> Result<(String, i64), HaError> {
    let key = settings.leader_key();
    let deadline = Instant::now() + wait;
    loop {
        match etcd.get(&key) {
            Ok(Some(leader)) => return Ok((leader.value, leader.create_revision)),
            Ok(None) => {}
            Err(e) => tracing::warn!("reading {key}: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(HaError::NoLeader { key, waited: wait });
        }
        std::thread::sleep(settings.poll);
    }
}

/// Whether the job's leader recorded that the job ended (the `finished`
/// key names the job of the `job` key).
pub fn job_ended(etcd: &Etcd, settings: &HaSettings) -> bool {
    match (
        etcd.get(&settings.key("job")),
        etcd.get(&settings.key("finished")),
    ) {
        (Ok(Some(job)), Ok(Some(finished))) => ended(&job, &finished),
        _ => false,
    }
}

/// Whether the `finished` key records the end of the run the `job` key
/// names: the same job, recorded after the job was last published. A job
/// continued with the same id (`--restore latest` after a stop) publishes
/// `job` again: it runs, though an older `finished` names the same id.
fn ended(job: &crate::etcd::KeyValue, finished: &crate::etcd::KeyValue) -> bool {
    finished.value == job.value && finished.mod_revision > job.mod_revision
}

/// A task manager of a job with a standby job manager: registers with the
/// leader published in etcd, and when its control connection is lost (its
/// part was cancelled) looks for the leader again, at most `wait` each time,
/// and registers with the process index it had. Ends when a job manager
/// says the job is over.
pub fn run_task_manager_ha(
    graph: &JobGraph,
    config: &ExecutionConfig,
    options: &TaskManagerOptions,
    settings: &HaSettings,
    wait: Duration,
) -> Result<(), HaError> {
    let etcd = settings.client()?;
    let mut options = options.clone();
    // Each try to reach a published address is short: the address may be a
    // dead leader's until its lease expires.
    options.connect_timeout = options.connect_timeout.min(Duration::from_secs(2));
    let index = Mutex::new(options.process);
    let mut deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (address, _) = wait_for_leader(&etcd, settings, left)?;
        options.jobmanager = address.clone();
        options.process = *index.lock().unwrap_or_else(|e| e.into_inner());
        let registered = |process: u32| {
            *index.lock().unwrap_or_else(|e| e.into_inner()) = Some(process);
        };
        match run_task_manager_registered(graph, config, &options, &registered) {
            Ok(()) => return Ok(()),
            Err(TaskManagerError::JobManagerLost(_)) if job_ended(&etcd, settings) => {
                // The leader ended the job and went before its word reached us.
                tracing::info!("the job ended (recorded in etcd)");
                return Ok(());
            }
            Err(TaskManagerError::JobManagerLost(cause)) => {
                tracing::warn!(
                    "the job manager at {address} was lost ({cause}); looking for the \
                     leader under {} (at most {wait:?})",
                    settings.leader_key()
                );
                deadline = Instant::now() + wait;
            }
            Err(TaskManagerError::Control(e)) => {
                if Instant::now() >= deadline {
                    return Err(TaskManagerError::Control(e).into());
                }
                tracing::info!("cannot register with the job manager at {address} yet: {e}");
                std::thread::sleep(settings.poll);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
