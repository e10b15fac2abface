//! One owner per job directory: the lease.
//!
//! Owns: the lease files `<job id>/_lease/<generation>` — which run holds a
//! job's checkpoint directory (host, pid, process start, a random nonce),
//! since when and until when — and the rules to acquire, renew, fence, take
//! over and release them. Two runs of one job id (two `--restore latest` on
//! one directory) abort each other's checkpoints, delete files the other's
//! completed checkpoints need and publish the same output twice; a run that
//! holds its job's lease is the only one writing there.
//!
//! Must not touch: threads or clocks. The caller passes the time in
//! (`now_unix_ms`, wall-clock milliseconds, because lease files are compared
//! across processes and hosts) and renews on its own schedule
//! ([`LeaseSettings::renew_interval`]); the runtime owns the renewal thread.
//!
//! # Generations
//!
//! [`CheckpointStorage`] has an atomic create-if-absent (`put_if_absent`: a
//! hard link on a local directory, `If-None-Match: *` on S3) but no
//! compare-and-swap of an existing object, so ownership changes by creating a
//! new file: generation `g + 1` beside `g`. The owner is the writer of the
//! highest generation. Only the owner rewrites its own file (`put`), to renew
//! it; nobody else ever writes an existing generation.
//!
//! # Rules
//!
//! - **Acquire** (`now`): list `<job>/_lease/`; let `g` be the highest
//!   generation (file names of exactly [`GENERATION_DIGITS`] digits; anything
//!   else there is ignored).
//!   - No generation: create generation 1 with `put_if_absent`.
//!   - `g` is *live*: refused, [`LeaseError::Held`] naming the owner, when it
//!     was acquired and last renewed, and when it lapses.
//!   - `g` is *stale* — `now` is past its last renewal plus its TTL (the TTL
//!     written in it, i.e. the owner's promise), or its owner was a process of
//!     this machine that no longer exists ([`Liveness::Dead`]) — or the caller
//!     takes it over explicitly ([`LeaseSettings::take_over`]): create `g + 1`
//!     with `put_if_absent`.
//!   - Losing the create race (`AlreadyExists`) or a file vanishing between
//!     list and read starts over, at most [`ACQUIRE_ROUNDS_MAX`] times: of
//!     two contenders for `g + 1` exactly one wins, and the other then finds
//!     the winner's live lease and is refused.
//!   - The winner reads its file back and compares it with what it sealed
//!     (also the check against a server whose conditional create is not
//!     exclusive), then deletes the generations below its own (dead owners').
//! - **Renew** (`now`, every [`LeaseSettings::renew_interval`]): check that
//!   the owner's own file still holds its record and that no higher
//!   generation exists (fencing), rewrite its file with the new renewal time
//!   (`put`), read it back, check for a higher generation again. A failed
//!   check is [`LeaseError::Lost`]: the job must stop.
//! - **Fencing**: [`Lease::verify_held`] is the same check without a write,
//!   for a caller that wants it before a step that publishes something.
//! - **Release** (when the job ends in any way): delete the lower generations
//!   (leftovers), then its own file — only files whose record is its own, so
//!   a run that lost the lease never deletes its successor's.
//!
//! # Limits
//!
//! A lease excludes a second run only as well as clocks and storage allow:
//! staleness by TTL compares the contender's clock with the owner's renewal
//! time (clocks must agree to well within the TTL); a run that lost its lease
//! while paused (stopped, swapped out, a storage call hanging past the TTL)
//! notices at its next renewal, and until then may still complete a
//! checkpoint. Dead-process detection needs Linux's `/proc` and the same boot
//! and pid namespace; elsewhere only the TTL frees a lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::CheckpointError;
use crate::format::{seal, unseal};
use crate::storage::{SharedStorage, StorageError};

/// The directory of a job's lease files, beside its `chk-<n>` directories.
pub const LEASE_DIR: &str = "_lease";
/// Magic of a lease file.
pub const LEASE_MAGIC: [u8; 4] = *b"FSLS";
/// Version of the lease format this build writes and the newest it reads.
pub const LEASE_VERSION: u32 = 1;
/// Largest lease file a reader accepts, checked before it is read (a record
/// is a few hundred bytes).
pub const LEASE_FILE_BYTES_MAX: u64 = 64 << 10;
/// Digits of a generation's file name: zero-padded, so that names sort as
/// numbers, and wide enough for any `u64`.
pub const GENERATION_DIGITS: usize = 20;
/// How long a lease stays live after its last renewal, by default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// How often the owner renews, by default: two renewals may fail before the
/// lease lapses.
pub const DEFAULT_LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Longest accepted TTL: a day.
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Rounds of list, read and create before acquiring gives up with
/// [`LeaseError::Contended`]: each round lost means another run changed the
/// lease meanwhile.
pub const ACQUIRE_ROUNDS_MAX: usize = 8;
/// Longest host name recorded (Linux allows 64 bytes).
const HOST_BYTES_MAX: usize = 255;

/// How a job holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// A lease not renewed for this long is stale and may be taken over.
    pub ttl: Duration,
    /// How often the owner renews (less than `ttl`).
    pub renew_interval: Duration,
    /// Take the lease over even from an owner that looks alive. For an
    /// operator who knows the owner is dead where this process cannot tell
    /// (another host, before its lease lapses).
    pub take_over: bool,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_LEASE_TTL,
            renew_interval: DEFAULT_LEASE_RENEW_INTERVAL,
            take_over: false,
        }
    }
}

impl LeaseSettings {
    pub fn validate(&self) -> Result<(), LeaseError> {
        if self.renew_interval.is_zero() || self.renew_interval >= self.ttl {
            return Err(LeaseError::Settings(format!(
                "the renew interval ({:?}) must be above zero and below the TTL ({:?})",
                self.renew_interval, self.ttl
            )));
        }
        if self.ttl > LEASE_TTL_MAX {
            return Err(LeaseError::Settings(format!(
                "the TTL ({:?}) exceeds {LEASE_TTL_MAX:?}",
                self.ttl
            )));
        }
        Ok(())
    }
}

/// Who holds a lease: enough to name the process to a person, to tell two
/// holders apart (the nonce: two jobs of one process differ), and, on the same
/// machine, to tell whether it still runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseOwner {
    /// The host name (for people; not used to decide anything).
    pub host: String,
    pub pid: u32,
    /// 16 hex digits, random per lease acquisition.
    pub nonce: String,
    /// The process's start, in clock ticks after boot (`/proc/<pid>/stat`
    /// field 22): a pid reused by another process has another start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id`: the same value means the same
    /// machine, same boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// `/proc/self/ns/pid` (e.g. `pid:[4026531836]`): pids compare only
    /// within one pid namespace (containers on one machine share the boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
}

impl LeaseOwner {
    /// This process, with a fresh nonce. On systems without `/proc` the
    /// start, boot and namespace are unknown (then only the TTL frees the
    /// lease of a dead owner).
    pub fn this_process() -> Self {
        let mut host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
        truncate_utf8(&mut host, HOST_BYTES_MAX);
        let pid = std::process::id();
        Self {
            host,
            pid,
            nonce: random_nonce(),
            process_start: proc_stat(&format!("/proc/{pid}/stat"))
                .ok()
                .map(|s| s.start),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.display().to_string()),
        }
    }

    /// `pid 1234 on host h`.
    pub fn describe(&self) -> String {
        format!("pid {} on host {}", self.pid, self.host)
    }
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Unique per call within a process (a counter) and across processes (the
/// standard library's randomly keyed hasher, the pid and the time). Tells
/// holders apart; it is not a secret.
fn random_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    format!("{:016x}", hasher.finish())
}

/// What one lease file says (its JSON payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub job_id: String,
    /// Equals the number in the file's name.
    pub generation: u64,
    pub owner: LeaseOwner,
    pub acquired_unix_ms: u64,
    pub renewed_unix_ms: u64,
    /// The lease is stale once `renewed_unix_ms + ttl_ms` has passed.
    pub ttl_ms: u64,
}

impl LeaseRecord {
    /// When the lease lapses unless renewed.
    pub fn expires_unix_ms(&self) -> u64 {
        self.renewed_unix_ms.saturating_add(self.ttl_ms)
    }
}

/// Whether a lease owner's process still runs, as far as this process can
/// tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// It certainly does not run; the reason, for the log.
    Dead(String),
    /// Another machine, boot or pid namespace, or no `/proc`.
    Unknown,
}

/// Tells whether a lease owner's process runs (injected, for tests).
pub trait ProcessProbe {
    fn liveness(&self, owner: &LeaseOwner) -> Liveness;
}

/// [`ProcessProbe`] over Linux's `/proc`: an owner of the same boot and pid
/// namespace as this process is dead when its pid is gone, has exited (a
/// zombie) or belongs to a process with another start time.
#[derive(Debug, Clone)]
pub struct LocalProcesses {
    boot_id: Option<String>,
    pid_namespace: Option<String>,
}

impl LocalProcesses {
    pub fn new() -> Self {
        let this = LeaseOwner::this_process();
        Self {
            boot_id: this.boot_id,
            pid_namespace: this.pid_namespace,
        }
    }
}

impl Default for LocalProcesses {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessProbe for LocalProcesses {
    fn liveness(&self, owner: &LeaseOwner) -> Liveness {
        let same_machine = owner.boot_id.is_some()
            && owner.boot_id == self.boot_id
            && owner.pid_namespace.is_some()
            && owner.pid_namespace == self.pid_namespace;
        let Some(start) = owner.process_start.filter(|_| same_machine) else {
            return Liveness::Unknown;
        };
        let pid = owner.pid;
        match proc_stat(&format!("/proc/{pid}/stat")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Liveness::Dead(format!("process {pid} no longer exists on this machine"))
            }
            Err(_) => Liveness::Unknown,
            Ok(stat) if matches!(stat.state, 'Z' | 'X' | 'x') => {
                Liveness::Dead(format!("process {pid} has exited"))
            }
            Ok(stat) if stat.start != start => Liveness::Dead(format!(
                "pid {pid} now belongs to another process (started at tick {}, the owner at \
                 tick {start})",
                stat.start
            )),
            Ok(_) => Liveness::Alive,
        }
    }
}

/// The fields of `/proc/<pid>/stat` a liveness check needs.
struct ProcStat {
    state: char,
    start: u64,
}

/// Reads `/proc/<pid>/stat`: the command name (field 2) is in parentheses and
/// may hold spaces and parentheses, so fields are counted after the last `)`:
/// field 3 is the state, field 22 the start time.
fn proc_stat(path: &str) -> std::io::Result<ProcStat> {
    let text = std::fs::read_to_string(path)?;
    let malformed = || std::io::Error::other(format!("{path}: unexpected format"));
    let (_, rest) = text.rsplit_once(')').ok_or_else(malformed)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(malformed)?;
    let start = fields
        .get(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    Ok(ProcStat { state, start })
}

/// A lease could not be acquired, or the job lost it.
#[derive(Debug, Error)]
pub enum LeaseError {
    /// Another run, alive as far as this process can tell, holds the lease.
    #[error("{}", held_message(.job_id, .storage, .path, .holder, *.now_unix_ms))]
    Held {
        job_id: String,
        storage: String,
        path: String,
        holder: Box<LeaseRecord>,
        now_unix_ms: u64,
    },
    /// The job no longer holds its lease: another run took it over (or the
    /// job could not renew it in time). The job must stop.
    #[error(
        "job {job_id} lost its lease {path}: {reason}; it stops so that only one run writes \
         its checkpoints"
    )]
    Lost {
        job_id: String,
        path: String,
        reason: String,
    },
    /// The current lease file cannot be read (damaged, or of a newer format):
    /// whether its owner runs is unknown.
    #[error(
        "job {job_id}: cannot tell whether another run holds its checkpoint directory: \
         {cause}. If no other run of this job is running, take the lease over (or delete \
         '{path}')"
    )]
    Unreadable {
        job_id: String,
        path: String,
        /// Boxed: a lease error travels in every job error.
        cause: Box<CheckpointError>,
    },
    /// Reading or writing the lease failed (the message names the storage).
    #[error("job {job_id}: its lease: {cause}")]
    Storage {
        job_id: String,
        cause: Box<StorageError>,
    },
    #[error(
        "job {job_id}: its lease changed hands {rounds} times while this run tried to acquire \
         it; another run is starting this job at the same moment"
    )]
    Contended { job_id: String, rounds: usize },
    #[error("invalid lease settings: {0}")]
    Settings(String),
    /// A record did not survive its own encoding (a bug, never data).
    #[error("lease {path}: {reason}")]
    Encoding { path: String, reason: String },
}

impl LeaseError {
    /// Whether taking the lease over explicitly would get past this error.
    pub fn can_take_over(&self) -> bool {
        matches!(
            self,
            LeaseError::Held { .. } | LeaseError::Unreadable { .. }
        )
    }
}

fn held_message(
    job_id: &str,
    storage: &str,
    path: &str,
    holder: &LeaseRecord,
    now_unix_ms: u64,
) -> String {
    let age = i128::from(now_unix_ms) - i128::from(holder.renewed_unix_ms);
    let renewed_ago = if age >= 0 {
        format!("{:.1} s ago", age as f64 / 1e3)
    } else {
        format!(
            "{:.1} s in the future by this host's clock",
            -age as f64 / 1e3
        )
    };
    format!(
        "job {job_id} is already running: its checkpoint directory's lease {path} in {storage} \
         is held by {} (acquired {}, last renewed {}, {renewed_ago}; it lapses {} s after its \
         last renewal, at {}). Two runs of one job abort each other's checkpoints and publish \
         their output twice, so this run does not start. Stop the other run; if it is dead \
         where this run cannot tell (another host), wait until its lease lapses, or take the \
         lease over",
        holder.owner.describe(),
        utc(holder.acquired_unix_ms),
        utc(holder.renewed_unix_ms),
        holder.ttl_ms / 1000,
        utc(holder.expires_unix_ms()),
    )
}

/// `2025-03-01T12:34:56.789Z`.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// `<job>/_lease/`.
pub fn lease_dir(job_id: &str) -> String {
    format!("{job_id}/{LEASE_DIR}/")
}

/// `<job>/_lease/<generation, zero-padded>`.
pub fn lease_path(job_id: &str, generation: u64) -> String {
    format!(
        "{}{generation:0width$}",
        lease_dir(job_id),
        width = GENERATION_DIGITS
    )
}

/// The generation of a lease file's path, `None` for anything else in the
/// lease directory (a local store's staging file of a write in progress).
pub fn parse_lease_path(job_id: &str, path: &str) -> Option<u64> {
    let name = path.strip_prefix(&lease_dir(job_id))?;
    if name.len() != GENERATION_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Seals `record` as the lease file at `path`, and reads the result back
/// (pair assertion) before it goes to storage.
pub fn encode_lease(path: &str, record: &LeaseRecord) -> Result<Vec<u8>, LeaseError> {
    let encoding = |reason: String| LeaseError::Encoding {
        path: path.to_owned(),
        reason,
    };
    let json = serde_json::to_vec(record).map_err(|e| encoding(e.to_string()))?;
    let sealed = seal(LEASE_MAGIC, LEASE_VERSION, &json);
    if sealed.len() as u64 > LEASE_FILE_BYTES_MAX {
        return Err(encoding(format!(
            "{} bytes, more than the {LEASE_FILE_BYTES_MAX} a reader accepts",
            sealed.len()
        )));
    }
    match decode_lease(path, &sealed) {
        Ok(back) if back == *record => Ok(sealed),
        Ok(_) => Err(encoding("does not read back as written".into())),
        Err(e) => Err(encoding(format!("does not read back: {e}"))),
    }
}

/// Reads a lease file's bytes: size, seal, JSON.
pub fn decode_lease(path: &str, bytes: &[u8]) -> Result<LeaseRecord, CheckpointError> {
    if bytes.len() as u64 > LEASE_FILE_BYTES_MAX {
        return Err(CheckpointError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "{} bytes, more than a lease file may have ({LEASE_FILE_BYTES_MAX})",
                bytes.len()
            ),
        });
    }
    let (_, json) = unseal(LEASE_MAGIC, LEASE_VERSION, path, bytes)?;
    serde_json::from_slice(json).map_err(|e| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The lease of one job, held by this process.
pub struct Lease {
    storage: SharedStorage,
    path: String,
    record: LeaseRecord,
}

/// A lease just acquired, and the one it replaced.
#[derive(Debug)]
pub struct Acquired {
    pub lease: Lease,
    /// The stale or explicitly taken-over lease this one replaced, and why it
    /// could be.
    pub replaced: Option<(LeaseRecord, String)>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("storage", &self.storage.describe())
            .field("path", &self.path)
            .field("record", &self.record)
            .finish()
    }
}

/// What the acquirer decided about the current highest generation.
enum Verdict {
    Free,
    Replace(LeaseRecord, String),
    /// Unreadable, and taken over explicitly.
    ReplaceUnreadable(String),
}

impl Lease {
    /// Acquires the lease of `job_id` for `owner` at `now_unix_ms` (see the
    /// module's rules). `probe` tells whether an owner on this machine still
    /// runs.
    pub fn acquire(
        storage: SharedStorage,
        job_id: &str,
        owner: LeaseOwner,
        settings: &LeaseSettings,
        probe: &dyn ProcessProbe,
        now_unix_ms: u64,
    ) -> Result<Acquired, LeaseError> {
        settings.validate()?;
        let ttl_ms = u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX);
        for _ in 0..ACQUIRE_ROUNDS_MAX {
            let generations = list_generations(&storage, job_id)?;
            let highest = generations.last().copied();
            let verdict = match highest {
                None => Verdict::Free,
                Some(generation) => {
                    let path = lease_path(job_id, generation);
                    match read_lease(&storage, job_id, &path, generation) {
                        // Released between the list and the read: look again.
                        Ok(None) => continue,
                        Ok(Some(record)) => match stale_because(&record, now_unix_ms, probe) {
                            Some(reason) => Verdict::Replace(record, reason),
                            None if settings.take_over => {
                                Verdict::Replace(record, "taken over explicitly".into())
                            }
                            None => {
                                return Err(LeaseError::Held {
                                    job_id: job_id.to_owned(),
                                    storage: storage.describe(),
                                    path,
                                    holder: Box::new(record),
                                    now_unix_ms,
                                });
                            }
                        },
                        Err(LeaseError::Unreadable { cause, .. }) if settings.take_over => {
                            Verdict::ReplaceUnreadable(format!(
                                "taken over explicitly from an unreadable lease ({cause})"
                            ))
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let generation = match highest {
                None => 1,
                Some(g) => g.checked_add(1).ok_or_else(|| LeaseError::Encoding {
                    path: lease_path(job_id, g),
                    reason: "the generation cannot grow any more".into(),
                })?,
            };
            let record = LeaseRecord {
                job_id: job_id.to_owned(),
                generation,
                owner: owner.clone(),
                acquired_unix_ms: now_unix_ms,
                renewed_unix_ms: now_unix_ms,
                ttl_ms,
            };
            let path = lease_path(job_id, generation);
            let sealed = encode_lease(&path, &record)?;
            match storage.put_if_absent(&path, sealed) {
                Ok(()) => {}
                // Another run created this generation first: its lease is
                // live, which the next round finds.
                Err(StorageError::AlreadyExists { .. }) => continue,
                Err(source) => return Err(storage_error(job_id, source)),
            }
            // Read back what was created: on a server whose conditional
            // create is not exclusive, a racing writer may have replaced it.
            match read_lease(&storage, job_id, &path, generation)? {
                Some(back) if back == record => {}
                _ => continue,
            }
            let lease = Lease {
                storage,
                path,
                record,
            };
            lease.delete_below(&generations);
            let replaced = match verdict {
                Verdict::Free => None,
                Verdict::Replace(record, reason) => Some((record, reason)),
                Verdict::ReplaceUnreadable(reason) => {
                    tracing::warn!(job_id, "{reason}");
                    None
                }
            };
            return Ok(Acquired { lease, replaced });
        }
        Err(LeaseError::Contended {
            job_id: job_id.to_owned(),
            rounds: ACQUIRE_ROUNDS_MAX,
        })
    }

    /// The lease file's path in storage.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the lease file says (as last written).
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Renews the lease at `now_unix_ms` (see the module's rules).
    /// [`LeaseError::Lost`] means another run holds it now; any other error
    /// is the storage's, and the lease stays valid until
    /// [`LeaseRecord::expires_unix_ms`] of [`Lease::record`].
    pub fn renew(&mut self, now_unix_ms: u64) -> Result<(), LeaseError> {
        self.verify_held()?;
        let record = LeaseRecord {
            // A clock stepping back never shortens the lease it promised.
            renewed_unix_ms: now_unix_ms.max(self.record.renewed_unix_ms),
            ..self.record.clone()
        };
        let sealed = encode_lease(&self.path, &record)?;
        self.storage
            .put(&self.path, sealed)
            .map_err(|source| storage_error(&self.record.job_id, source))?;
        match read_lease(
            &self.storage,
            &self.record.job_id,
            &self.path,
            record.generation,
        )? {
            Some(back) if back == record => {}
            Some(other) => {
                return Err(self.lost(format!(
                    "its file was replaced while it was renewed, by {}",
                    other.owner.describe()
                )));
            }
            None => return Err(self.lost("its file vanished while it was renewed".into())),
        }
        self.record = record;
        // A run that took over while this one wrote sees the higher
        // generation; so must this one.
        self.verify_no_higher()
    }

    /// Fencing without a write: the lease file still holds this run's record
    /// and no higher generation exists.
    pub fn verify_held(&self) -> Result<(), LeaseError> {
        // The higher generation first: it names the run that took over.
        self.verify_no_higher()?;
        let job_id = &self.record.job_id;
        match read_lease(&self.storage, job_id, &self.path, self.record.generation)? {
            None => Err(self.lost(
                "its file was deleted, by a run that took the lease over (and has ended)".into(),
            )),
            Some(current) if current.owner != self.record.owner => Err(self.lost(format!(
                "its file now belongs to {}",
                current.owner.describe()
            ))),
            Some(_) => Ok(()),
        }
    }

    fn verify_no_higher(&self) -> Result<(), LeaseError> {
        let job_id = &self.record.job_id;
        let Some(&higher) = list_generations(&self.storage, job_id)?
            .iter()
            .rev()
            .find(|&&g| g > self.record.generation)
        else {
            return Ok(());
        };
        let path = lease_path(job_id, higher);
        let by = match read_lease(&self.storage, job_id, &path, higher) {
            Ok(Some(record)) => record.owner.describe(),
            Ok(None) => "a run that has since released it".to_owned(),
            Err(e) => format!("an unreadable lease ({e})"),
        };
        Err(self.lost(format!("generation {higher} ({path}) was taken by {by}")))
    }

    fn lost(&self, reason: String) -> LeaseError {
        LeaseError::Lost {
            job_id: self.record.job_id.clone(),
            path: self.path.clone(),
            reason,
        }
    }

    /// Deletes the lease files of older generations (owners that are gone).
    /// Best effort: a leftover is harmless, the highest generation decides.
    fn delete_below(&self, generations: &[u64]) {
        for &g in generations.iter().filter(|&&g| g < self.record.generation) {
            let path = lease_path(&self.record.job_id, g);
            if let Err(e) = self.storage.delete(&path) {
                tracing::warn!(
                    job_id = self.record.job_id.as_str(),
                    "cannot delete the old lease {path}: {e}"
                );
            }
        }
    }

    /// Gives the lease up: deletes older generations, then this run's own
    /// file — only if it still holds this run's record.
    pub fn release(self) -> Result<(), LeaseError> {
        let job_id = &self.record.job_id;
        match read_lease(&self.storage, job_id, &self.path, self.record.generation) {
            Ok(Some(current)) if current.owner == self.record.owner => {}
            // Taken over, deleted or damaged: nothing of this run's to delete.
            Ok(_) | Err(LeaseError::Unreadable { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let generations = list_generations(&self.storage, job_id)?;
        if generations.iter().all(|&g| g <= self.record.generation) {
            // Still the owner: the leftovers below go first, so that the
            // directory is never without an owner while another run could
            // mistake a leftover for one.
            self.delete_below(&generations);
        }
        self.storage
            .delete(&self.path)
            .map_err(|source| storage_error(job_id, source))
    }
}

/// Why `record`'s lease may be replaced at `now_unix_ms`, `None` while it is
/// live.
fn stale_because(
    record: &LeaseRecord,
    now_unix_ms: u64,
    probe: &dyn ProcessProbe,
) -> Option<String> {
    if now_unix_ms > record.expires_unix_ms() {
        return Some(format!(
            "not renewed for {:.1} s, more than its TTL of {} s",
            now_unix_ms.saturating_sub(record.renewed_unix_ms) as f64 / 1e3,
            record.ttl_ms / 1000
        ));
    }
    match probe.liveness(&record.owner) {
        Liveness::Dead(reason) => Some(reason),
        Liveness::Alive | Liveness::Unknown => None,
    }
}

fn storage_error(job_id: &str, cause: StorageError) -> LeaseError {
    LeaseError::Storage {
        job_id: job_id.to_owned(),
        cause: Box::new(cause),
    }
}

/// The generations in `<job>/_lease/`, ascending.
fn list_generations(storage: &SharedStorage, job_id: &str) -> Result<Vec<u64>, LeaseError> {
    let mut generations: Vec<u64> = storage
        .list(&lease_dir(job_id))
        .map_err(|source| storage_error(job_id, source))?
        .iter()
        .filter_map(|path| parse_lease_path(job_id, path))
        .collect();
    generations.sort_unstable();
    generations.dedup();
    Ok(generations)
}

/// Reads lease file `path` (generation `generation`); `None` if it does not
/// exist. The size is checked before the read, and the record must name the
/// job and generation of its path (a copied file does not count).
fn read_lease(
    storage: &SharedStorage,
    job_id: &str,
    path: &str,
    generation: u64,
) -> Result<Option<LeaseRecord>, LeaseError> {
    let unreadable = |source: CheckpointError| LeaseError::Unreadable {
        job_id: job_id.to_owned(),
        path: path.to_owned(),
        cause: Box::new(source),
    };
    match storage.size(path) {
        Ok(None) => return Ok(None),
        Ok(Some(size)) if size > LEASE_FILE_BYTES_MAX => {
            return Err(unreadable(CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "{size} bytes, more than a lease file may have ({LEASE_FILE_BYTES_MAX})"
                ),
            }));
        }
        Ok(Some(_)) => {}
        Err(source) => return Err(storage_error(job_id, source)),
    }
    let bytes = match storage.get(path) {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(storage_error(job_id, source)),
    };
    // decode_lease checks the size again: the file may have been replaced
    // between the two calls.
    let record = decode_lease(path, &bytes).map_err(unreadable)?;
    if record.job_id != job_id || record.generation != generation {
        return Err(unreadable(CheckpointError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "it names job {} generation {}, not its own path's",
                record.job_id, record.generation
            ),
        }));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::storage::open_storage;

    const T0: u64 = 1_700_000_000_000;

    /// A probe that knows nothing: only the TTL decides.
    struct NoProbe;
    impl ProcessProbe for NoProbe {
        fn liveness(&self, _: &LeaseOwner) -> Liveness {
            Liveness::Unknown
        }
    }

    fn memory(test: &str) -> SharedStorage {
        open_storage(&format!(
            "memory://lease-{test}-{}-{}",
            std::process::id(),
            random_nonce()
        ))
        .unwrap()
    }

    fn owner(pid: u32) -> LeaseOwner {
        LeaseOwner {
            host: "host-a".into(),
            pid,
            nonce: random_nonce(),
            process_start: None,
            boot_id: None,
            pid_namespace: None,
        }
    }

    fn settings() -> LeaseSettings {
        LeaseSettings::default()
    }

    fn acquire(storage: &SharedStorage, who: LeaseOwner, now: u64) -> Result<Acquired, LeaseError> {
        Lease::acquire(
            Arc::clone(storage),
            "job-1",
            who,
            &settings(),
            &NoProbe,
            now,
        )
    }

    fn files(storage: &SharedStorage) -> Vec<String> {
        let mut paths = storage.list("").unwrap();
        paths.sort();
        paths
    }

    #[test]
    fn acquire_writes_generation_one_and_a_second_run_is_refused_naming_the_owner() {
        let storage = memory("refused");
        let first = acquire(&storage, owner(111), T0).unwrap();
        assert!(first.replaced.is_none());
        assert_eq!(first.lease.path(), "job-1/_lease/00000000000000000001");
        assert_eq!(files(&storage), vec![first.lease.path().to_owned()]);
        let bytes = storage.get(first.lease.path()).unwrap();
        assert_eq!(&bytes[..4], b"FSLS");
        assert_eq!(
            decode_lease(first.lease.path(), &bytes).unwrap(),
            *first.lease.record()
        );

        let err = acquire(&storage, owner(222), T0 + 5_000).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LeaseError::Held { .. }), "{err:?}");
        assert!(err.can_take_over());
        for part in [
            "job job-1 is already running",
            "job-1/_lease/00000000000000000001",
            "pid 111 on host host-a",
            "2023-11-14T22:13:20.000Z",
            "5.0 s ago",
            "lapses 30 s after",
            "take the lease over",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        // The refused run wrote nothing.
        assert_eq!(files(&storage), vec![first.lease.path().to_owned()]);
    }

    #[test]
    fn a_released_lease_frees_the_directory() {
        let storage = memory("released");
        let first = acquire(&storage, owner(1), T0).unwrap();
        first.lease.release().unwrap();
        assert!(files(&storage).is_empty());
        let second = acquire(&storage, owner(2), T0 + 1).unwrap();
        assert!(second.replaced.is_none());
        assert_eq!(second.lease.record().generation, 1);
        second.lease.release().unwrap();
        assert!(files(&storage).is_empty());
    }

    #[test]
    fn stale_by_ttl_with_injected_time() {
        let storage = memory("ttl");
        let mut first = acquire(&storage, owner(1), T0).unwrap().lease;
        // Renewed at T0 + 10 s: live until T0 + 40 s.
        first.renew(T0 + 10_000).unwrap();
        assert_eq!(first.record().renewed_unix_ms, T0 + 10_000);
        assert!(matches!(
            acquire(&storage, owner(2), T0 + 40_000),
            Err(LeaseError::Held { .. })
        ));
        let taken = acquire(&storage, owner(2), T0 + 40_001).unwrap();
        let (old, why) = taken.replaced.as_ref().unwrap();
        assert_eq!(old.owner.pid, 1);
        assert!(why.contains("more than its TTL of 30 s"), "{why}");
        assert_eq!(taken.lease.record().generation, 2);
        // The dead owner's generation was cleaned up.
        assert_eq!(files(&storage), vec![taken.lease.path().to_owned()]);
        // The old owner is fenced, and releasing deletes nothing of the new one's.
        assert!(matches!(
            first.renew(T0 + 41_000),
            Err(LeaseError::Lost { .. })
        ));
        first.release().unwrap();
        assert_eq!(files(&storage), vec![taken.lease.path().to_owned()]);
    }

    #[test]
    fn a_clock_stepping_back_never_shortens_a_renewal() {
        let storage = memory("clock");
        let mut lease = acquire(&storage, owner(1), T0).unwrap().lease;
        lease.renew(T0 + 20_000).unwrap();
        lease.renew(T0 + 5_000).unwrap();
        assert_eq!(lease.record().renewed_unix_ms, T0 + 20_000);
    }

    #[test]
    fn an_owner_whose_process_is_dead_on_this_machine_is_replaced_at_once() {
        let storage = memory("dead");
        let probe = LocalProcesses::new();
        let this = LeaseOwner::this_process();
        if this.process_start.is_none() || this.boot_id.is_none() {
            eprintln!("no /proc: dead-process detection is not available here");
            return;
        }
        // A pid that certainly ran and is gone: a child, waited for.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = LeaseOwner {
            pid: dead_pid,
            ..this.clone()
        };
        assert!(matches!(probe.liveness(&dead), Liveness::Dead(_)));
        // A pid reused by another process: this process's pid, another start.
        let reused = LeaseOwner {
            process_start: this.process_start.map(|s| s + 1),
            ..this.clone()
        };
        assert!(matches!(probe.liveness(&reused), Liveness::Dead(_)));
        // Another boot or pid namespace: unknown, the TTL decides.
        let elsewhere = LeaseOwner {
            boot_id: Some("another-boot".into()),
            ..dead.clone()
        };
        assert_eq!(probe.liveness(&elsewhere), Liveness::Unknown);
        assert_eq!(probe.liveness(&this), Liveness::Alive);

        let s = settings();
        let job = "job-1";
        Lease::acquire(Arc::clone(&storage), job, dead, &s, &probe, T0).unwrap();
        let taken =
            Lease::acquire(Arc::clone(&storage), job, this.clone(), &s, &probe, T0 + 1).unwrap();
        let (_, why) = taken.replaced.unwrap();
        assert!(why.contains("no longer exists"), "{why}");

        // A live owner of this machine (this very process, another job
        // instance): refused, even though nothing else tells them apart.
        let other_instance = LeaseOwner {
            nonce: random_nonce(),
            ..this
        };
        let refused = Lease::acquire(
            Arc::clone(&storage),
            job,
            other_instance,
            &s,
            &probe,
            T0 + 2,
        );
        assert!(matches!(refused, Err(LeaseError::Held { .. })));
    }

    #[test]
    fn two_contenders_for_the_next_generation_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let local = open_storage(dir.path().to_str().unwrap()).unwrap();
        for (round, storage) in [memory("race"), local].into_iter().enumerate() {
            // A stale lease (never renewed) for the contenders to replace.
            let _stale = acquire(&storage, owner(1), T0).unwrap().lease;
            let now = T0 + 60_000;
            let start = Arc::new(Barrier::new(2));
            let contenders: Vec<_> = [2u32, 3]
                .into_iter()
                .map(|pid| {
                    let (storage, start) = (Arc::clone(&storage), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        acquire(&storage, owner(pid), now)
                    })
                })
                .collect();
            let results: Vec<_> = contenders.into_iter().map(|t| t.join().unwrap()).collect();
            let winners: Vec<&Acquired> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            let winner = winners[0].lease.record();
            assert_eq!(winner.generation, 2);
            let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
            match loser {
                LeaseError::Held { holder, .. } => assert_eq!(holder.owner, winner.owner),
                other => panic!("round {round}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_fenced_owner_detects_a_higher_generation() {
        let storage = memory("fenced");
        let mut first = acquire(&storage, owner(1), T0).unwrap().lease;
        let explicit = LeaseSettings {
            take_over: true,
            ..settings()
        };
        // A live lease taken over explicitly (an operator who knows better).
        let second = Lease::acquire(
            Arc::clone(&storage),
            "job-1",
            owner(2),
            &explicit,
            &NoProbe,
            T0 + 1,
        )
        .unwrap();
        assert_eq!(second.replaced.as_ref().unwrap().1, "taken over explicitly");
        let err = first.verify_held().unwrap_err();
        assert!(matches!(err, LeaseError::Lost { .. }), "{err:?}");
        let err = first.renew(T0 + 2).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("job job-1 lost its lease job-1/_lease/00000000000000000001"),
            "{text}"
        );
        assert!(text.contains("pid 2 on host host-a"), "{text}");
        // The fenced renewal wrote nothing: the new owner's file is the only one.
        assert_eq!(files(&storage), vec![second.lease.path().to_owned()]);

        // A higher generation that appears while the owner renews (its old
        // file still there, as if the cleanup had not run yet).
        let mut third = second.lease;
        third.renew(T0 + 3).unwrap();
        let intruder = LeaseRecord {
            generation: 3,
            owner: owner(3),
            ..third.record().clone()
        };
        let path = lease_path("job-1", 3);
        storage
            .put_if_absent(&path, encode_lease(&path, &intruder).unwrap())
            .unwrap();
        assert!(matches!(third.renew(T0 + 4), Err(LeaseError::Lost { .. })));
    }

    #[test]
    fn damaged_oversized_and_misplaced_lease_files_are_refused_not_ignored() {
        let storage = memory("damaged");
        let path = lease_path("job-1", 1);
        storage
            .put(&path, b"FSLS\x01\0\0\0{}garbage".to_vec())
            .unwrap();
        let err = acquire(&storage, owner(2), T0).unwrap_err();
        assert!(matches!(err, LeaseError::Unreadable { .. }), "{err:?}");
        assert!(err.to_string().contains(&path), "{err}");

        storage
            .put(&path, vec![b' '; LEASE_FILE_BYTES_MAX as usize + 1])
            .unwrap();
        let err = acquire(&storage, owner(2), T0).unwrap_err();
        assert!(
            err.to_string().contains("more than a lease file may have"),
            "{err}"
        );

        // A valid record copied from generation 7 into generation 1.
        let copied = LeaseRecord {
            job_id: "job-1".into(),
            generation: 7,
            owner: owner(1),
            acquired_unix_ms: T0,
            renewed_unix_ms: T0,
            ttl_ms: 30_000,
        };
        storage
            .put(
                &path,
                encode_lease(&lease_path("job-1", 7), &copied).unwrap(),
            )
            .unwrap();
        let err = acquire(&storage, owner(2), T0).unwrap_err();
        assert!(err.to_string().contains("not its own path's"), "{err}");

        // An operator may take an unreadable lease over.
        let explicit = LeaseSettings {
            take_over: true,
            ..settings()
        };
        let taken = Lease::acquire(
            Arc::clone(&storage),
            "job-1",
            owner(2),
            &explicit,
            &NoProbe,
            T0,
        )
        .unwrap();
        assert_eq!(taken.lease.record().generation, 2);
        assert_eq!(files(&storage), vec![taken.lease.path().to_owned()]);
    }

    #[test]
    fn other_files_in_the_lease_directory_are_not_generations() {
        assert_eq!(
            parse_lease_path("j", "j/_lease/00000000000000000042"),
            Some(42)
        );
        assert_eq!(parse_lease_path("j", "j/_lease/42"), None);
        assert_eq!(
            parse_lease_path("j", "j/_lease/00000000000000000042#1"),
            None
        );
        assert_eq!(parse_lease_path("j", "k/_lease/00000000000000000042"), None);
        assert_eq!(lease_path("j", u64::MAX), "j/_lease/18446744073709551615");
        assert_eq!(
            crate::layout::parse_metadata_path(&lease_path("j", 1)),
            None,
            "a lease file is never a checkpoint"
        );
    }

    #[test]
    fn settings_are_checked() {
        let bad = LeaseSettings {
            ttl: Duration::from_secs(5),
            renew_interval: Duration::from_secs(5),
            take_over: false,
        };
        assert!(matches!(bad.validate(), Err(LeaseError::Settings(_))));
        assert!(settings().validate().is_ok());
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(T0), "2023-11-14T22:13:20.000Z");
    }
}
