//! At-most-once read-ahead reservations: where a source may resume without
//! emitting again anything it emitted before a failure.
//!
//! In `--mode at-most-once` a source task emits records only once the position
//! *after* them is durable here, so a restart resumes every source from its
//! newest reservation instead of from the checkpoint's position (the records
//! in between are lost, never replayed). The runtime writes and reads them
//! (`flowstate_runtime::reservation`); this module owns the layout, the file
//! format and the rules that decide whether a set of reservations may be
//! used. The whole design is in `docs/at-most-once.md`.
//!
//! Layout, per job, under `<job>/_reservations/`:
//! - `<epoch>/_epoch`: the marker of one *epoch* (one attempt of the job,
//!   in-process restart or new process): written with `put_if_absent` after
//!   the first reservation of every source subtask of that attempt, before
//!   any of its tasks runs. An epoch directory without it is ignored: its
//!   attempt emitted nothing.
//! - `<epoch>/<uid>/<subtask>`: the newest reservation of one source
//!   subtask (`<uid>` escaped by [`escape_segment`]), replaced in place (a
//!   put is atomic: staging file and rename, or one object PUT).
//!
//! Both are sealed ([`crate::format`]: magic, version, CRC-32C) JSON. The
//! newest marked epoch is the truth: it is complete by construction, and
//! every file it names must be there and valid, or the restore is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format::{seal, unseal};
use crate::layout::escape_segment;
use crate::restore::deal_operator_lists;
use crate::storage::CheckpointStorage;
use crate::{CheckpointError, OperatorListState};

/// Magic of a reservation file.
pub const RESERVATION_MAGIC: [u8; 4] = *b"FSRV";
/// Magic of an epoch marker.
pub const EPOCH_MAGIC: [u8; 4] = *b"FSRE";
/// Format version of both files.
pub const RESERVATION_VERSION: u32 = 1;
/// Name of an epoch's marker file.
pub const EPOCH_FILE: &str = "_epoch";
/// Largest reservation or marker file read back (checked before reading).
pub const RESERVATION_BYTES_MAX: u64 = 64 << 20;
/// Most source operators an epoch may name.
pub const EPOCH_SOURCES_MAX: usize = 10_000;

/// `<job>/_reservations/`: every epoch of the job.
pub fn reservations_dir(job_id: &str) -> String {
    format!("{job_id}/_reservations/")
}

/// `<job>/_reservations/<epoch>/`.
pub fn epoch_dir(job_id: &str, epoch: u64) -> String {
    format!("{job_id}/_reservations/{epoch}/")
}

/// `<job>/_reservations/<epoch>/_epoch`.
pub fn epoch_marker_path(job_id: &str, epoch: u64) -> String {
    format!("{}{EPOCH_FILE}", epoch_dir(job_id, epoch))
}

/// `<job>/_reservations/<epoch>/<escaped uid>/<subtask>`.
pub fn reservation_path(job_id: &str, epoch: u64, uid: &str, subtask: u32) -> String {
    format!(
        "{}{}/{subtask}",
        epoch_dir(job_id, epoch),
        escape_segment(uid)
    )
}

/// The position of one source subtask after everything it may have emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub job: String,
    pub epoch: u64,
    pub uid: String,
    pub subtask: u32,
    /// The parallelism of the attempt that wrote it.
    pub parallelism: u32,
    /// Grows with every reservation of this subtask within the epoch (the
    /// first, written before the attempt started, is 0).
    pub seq: u64,
    /// The reader's list state, as `SourceReader::snapshot` gives it.
    pub lists: Vec<OperatorListState>,
}

/// The marker that makes an epoch exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMarker {
    pub job: String,
    pub epoch: u64,
    pub parallelism: u32,
    /// Uids of every source operator of the attempt: each has one
    /// reservation per subtask `0..parallelism`.
    pub sources: Vec<String>,
    /// The checkpoint the attempt restored (for people; not a rule).
    pub restored_checkpoint: Option<u64>,
    pub created_unix_ms: u64,
}

fn corrupt(path: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn valid_parallelism(p: u32) -> bool {
    (1..=flowstate_state::MAX_PARALLELISM_LIMIT).contains(&p)
}

/// Sealed bytes of `reservation`, read back before they are returned.
pub fn encode_reservation(reservation: &Reservation) -> Result<Vec<u8>, CheckpointError> {
    let path = reservation_path(
        &reservation.job,
        reservation.epoch,
        &reservation.uid,
        reservation.subtask,
    );
    let json =
        serde_json::to_vec(reservation).map_err(|e| CheckpointError::Invalid(e.to_string()))?;
    let sealed = seal(RESERVATION_MAGIC, RESERVATION_VERSION, &json);
    if decode_reservation(&path, &sealed)? != *reservation {
        return Err(CheckpointError::Invalid(format!(
            "reservation {path} does not read back identically"
        )));
    }
    Ok(sealed)
}

/// A reservation file's contents, checked: seal, JSON, and that what it says
/// about itself (job, epoch, uid, subtask) is where it was found.
pub fn decode_reservation(path: &str, bytes: &[u8]) -> Result<Reservation, CheckpointError> {
    let (_, json) = unseal(RESERVATION_MAGIC, RESERVATION_VERSION, path, bytes)?;
    let r: Reservation = serde_json::from_slice(json).map_err(|e| corrupt(path, e.to_string()))?;
    if !valid_parallelism(r.parallelism) || r.subtask >= r.parallelism {
        return Err(corrupt(
            path,
            format!(
                "subtask {} of parallelism {} is out of range",
                r.subtask, r.parallelism
            ),
        ));
    }
    if reservation_path(&r.job, r.epoch, &r.uid, r.subtask) != path {
        return Err(corrupt(
            path,
            format!(
                "it holds the reservation of job {} epoch {} source '{}' subtask {}, \
                 which belongs elsewhere",
                r.job, r.epoch, r.uid, r.subtask
            ),
        ));
    }
    Ok(r)
}

/// Sealed bytes of `marker`, read back before they are returned.
pub fn encode_marker(marker: &EpochMarker) -> Result<Vec<u8>, CheckpointError> {
    let path = epoch_marker_path(&marker.job, marker.epoch);
    let json = serde_json::to_vec(marker).map_err(|e| CheckpointError::Invalid(e.to_string()))?;
    let sealed = seal(EPOCH_MAGIC, RESERVATION_VERSION, &json);
    if decode_marker(&path, &sealed)? != *marker {
        return Err(CheckpointError::Invalid(format!(
            "epoch marker {path} does not read back identically"
        )));
    }
    Ok(sealed)
}

/// An epoch marker's contents, checked like [`decode_reservation`].
pub fn decode_marker(path: &str, bytes: &[u8]) -> Result<EpochMarker, CheckpointError> {
    let (_, json) = unseal(EPOCH_MAGIC, RESERVATION_VERSION, path, bytes)?;
    let m: EpochMarker = serde_json::from_slice(json).map_err(|e| corrupt(path, e.to_string()))?;
    if !valid_parallelism(m.parallelism) {
        return Err(corrupt(
            path,
            format!("parallelism {} is out of range", m.parallelism),
        ));
    }
    if m.sources.len() > EPOCH_SOURCES_MAX {
        return Err(corrupt(
            path,
            format!("{} sources, more than {EPOCH_SOURCES_MAX}", m.sources.len()),
        ));
    }
    let mut uids: Vec<&String> = m.sources.iter().collect();
    uids.sort();
    uids.dedup();
    if uids.len() != m.sources.len() || m.sources.iter().any(String::is_empty) {
        return Err(corrupt(path, "a source uid is empty or named twice"));
    }
    if epoch_marker_path(&m.job, m.epoch) != path {
        return Err(corrupt(
            path,
            format!(
                "it marks job {} epoch {}, which belongs elsewhere",
                m.job, m.epoch
            ),
        ));
    }
    Ok(m)
}

/// Reads `path`, refusing a missing file or one larger than
/// [`RESERVATION_BYTES_MAX`] before reading it.
fn read_bounded(storage: &dyn CheckpointStorage, path: &str) -> Result<Vec<u8>, CheckpointError> {
    match storage.size(path)? {
        None => Err(corrupt(path, "missing")),
        Some(size) if size > RESERVATION_BYTES_MAX => Err(corrupt(
            path,
            format!("{size} bytes, more than {RESERVATION_BYTES_MAX}"),
        )),
        Some(_) => Ok(storage.get(path)?),
    }
}

/// Writes one reservation (replacing the subtask's previous one).
pub fn write_reservation(
    storage: &dyn CheckpointStorage,
    reservation: &Reservation,
) -> Result<(), CheckpointError> {
    let bytes = encode_reservation(reservation)?;
    let path = reservation_path(
        &reservation.job,
        reservation.epoch,
        &reservation.uid,
        reservation.subtask,
    );
    storage.put(&path, bytes)?;
    Ok(())
}

/// Writes an epoch's marker, once: an existing one is an error (two runs of
/// one job, which the lease should have prevented).
pub fn write_marker(
    storage: &dyn CheckpointStorage,
    marker: &EpochMarker,
) -> Result<(), CheckpointError> {
    let bytes = encode_marker(marker)?;
    storage.put_if_absent(&epoch_marker_path(&marker.job, marker.epoch), bytes)?;
    Ok(())
}

/// The epochs found under `<job>/_reservations/`, and whether each has its
/// marker. Paths that are not `<epoch>/...` with a canonical decimal epoch
/// are ignored (never deleted, never read).
pub fn list_epochs(
    storage: &dyn CheckpointStorage,
    job_id: &str,
) -> Result<BTreeMap<u64, bool>, CheckpointError> {
    let prefix = reservations_dir(job_id);
    let mut epochs = BTreeMap::new();
    for path in storage.list(&prefix)? {
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        let Some((segment, tail)) = rest.split_once('/') else {
            continue;
        };
        let Ok(epoch) = segment.parse::<u64>() else {
            continue;
        };
        if epoch.to_string() != segment {
            continue;
        }
        let marked = epochs.entry(epoch).or_insert(false);
        *marked |= tail == EPOCH_FILE;
    }
    Ok(epochs)
}

/// Every source position of one epoch: per source uid, the lists of every
/// subtask of the attempt that wrote them.
#[derive(Debug, Clone)]
pub struct ReservedPositions {
    pub epoch: u64,
    pub parallelism: u32,
    pub sources: BTreeMap<String, Vec<Vec<OperatorListState>>>,
}

impl ReservedPositions {
    /// The lists of source `uid` for instance `index` of `parallelism`,
    /// dealt out like a checkpoint's ([`deal_operator_lists`]); `None` if
    /// the epoch has no such source.
    pub fn operator_lists(
        &self,
        uid: &str,
        index: u32,
        parallelism: u32,
    ) -> Option<Vec<OperatorListState>> {
        let subtasks = self.sources.get(uid)?;
        Some(deal_operator_lists(
            subtasks.iter().flatten(),
            index,
            parallelism,
        ))
    }
}

/// The positions of the newest marked epoch of `job_id`, if there is one.
///
/// Refuses (naming the file) when a file the marker implies is missing,
/// damaged, or does not match the marker: the positions of that subtask are
/// then unknown, and taking the checkpoint's instead could emit again what
/// it already emitted.
pub fn load_newest(
    storage: &dyn CheckpointStorage,
    job_id: &str,
) -> Result<Option<ReservedPositions>, CheckpointError> {
    let epochs = list_epochs(storage, job_id)?;
    let Some((&epoch, _)) = epochs.iter().rev().find(|(_, marked)| **marked) else {
        return Ok(None);
    };
    let refuse = |path: &str, e: CheckpointError| {
        CheckpointError::Invalid(format!(
            "at-most-once: cannot read the read-ahead reservations of job {job_id} \
             (epoch {epoch}): {path}: {e}. Without them the sources' positions are \
             unknown, and resuming from the checkpoint's would emit records again. \
             Restore the file, or resume in another --mode (which replays from the \
             checkpoint) knowingly"
        ))
    };
    let marker_path = epoch_marker_path(job_id, epoch);
    let marker = read_bounded(storage, &marker_path)
        .and_then(|bytes| decode_marker(&marker_path, &bytes))
        .map_err(|e| refuse(&marker_path, e))?;
    let mut sources = BTreeMap::new();
    for uid in &marker.sources {
        let mut subtasks = Vec::with_capacity(marker.parallelism as usize);
        for subtask in 0..marker.parallelism {
            let path = reservation_path(job_id, epoch, uid, subtask);
            let reservation = read_bounded(storage, &path)
                .and_then(|bytes| decode_reservation(&path, &bytes))
                .map_err(|e| refuse(&path, e))?;
            if reservation.parallelism != marker.parallelism {
                return Err(refuse(
                    &path,
                    corrupt(
                        &path,
                        format!(
                            "written at parallelism {}, its epoch has {}",
                            reservation.parallelism, marker.parallelism
                        ),
                    ),
                ));
            }
            subtasks.push(reservation.lists);
        }
        sources.insert(uid.clone(), subtasks);
    }
    Ok(Some(ReservedPositions {
        epoch,
        parallelism: marker.parallelism,
        sources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::open_storage;
    use flowstate_state::RedistributionMode;

    fn reservation(epoch: u64, uid: &str, subtask: u32, parallelism: u32) -> Reservation {
        Reservation {
            job: "job-1".into(),
            epoch,
            uid: uid.into(),
            subtask,
            parallelism,
            seq: 3,
            lists: vec![OperatorListState {
                name: "splits".into(),
                mode: RedistributionMode::Split,
                elements: vec![vec![subtask as u8; 3]],
            }],
        }
    }

    fn marker(epoch: u64, parallelism: u32) -> EpochMarker {
        EpochMarker {
            job: "job-1".into(),
            epoch,
            parallelism,
            sources: vec!["src/a".into()],
            restored_checkpoint: Some(4),
            created_unix_ms: 1,
        }
    }

    #[test]
    fn every_damage_is_detected_and_a_misplaced_file_is_refused() {
        let r = reservation(2, "src/a", 1, 2);
        let sealed = encode_reservation(&r).unwrap();
        let path = reservation_path("job-1", 2, "src/a", 1);
        assert_eq!(path, "job-1/_reservations/2/src~2fa/1");
        assert_eq!(decode_reservation(&path, &sealed).unwrap(), r);
        for i in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 0x10;
            assert!(decode_reservation(&path, &damaged).is_err(), "flip at {i}");
        }
        let elsewhere = reservation_path("job-1", 2, "src/a", 0);
        assert!(decode_reservation(&elsewhere, &sealed).is_err());
        let bad = Reservation {
            subtask: 2,
            ..r.clone()
        };
        assert!(
            encode_reservation(&bad).is_err(),
            "subtask beyond parallelism"
        );
    }

    #[test]
    fn the_newest_marked_epoch_is_read_and_an_incomplete_one_is_refused() {
        let storage =
            open_storage(&format!("memory://reservations-{}", std::process::id())).unwrap();
        assert!(load_newest(storage.as_ref(), "job-1").unwrap().is_none());
        for subtask in 0..2 {
            write_reservation(storage.as_ref(), &reservation(1, "src/a", subtask, 2)).unwrap();
        }
        write_marker(storage.as_ref(), &marker(1, 2)).unwrap();
        assert!(
            write_marker(storage.as_ref(), &marker(1, 2)).is_err(),
            "once"
        );
        // Epoch 2 started but never got its marker: ignored.
        write_reservation(storage.as_ref(), &reservation(2, "src/a", 0, 3)).unwrap();
        let loaded = load_newest(storage.as_ref(), "job-1").unwrap().unwrap();
        assert_eq!((loaded.epoch, loaded.parallelism), (1, 2));
        // Dealt out at parallelism 1: both subtasks' elements.
        let lists = loaded.operator_lists("src/a", 0, 1).unwrap();
        assert_eq!(lists[0].elements, vec![vec![0u8; 3], vec![1u8; 3]]);
        assert!(loaded.operator_lists("other", 0, 1).is_none());
        assert_eq!(
            list_epochs(storage.as_ref(), "job-1").unwrap(),
            BTreeMap::from([(1, true), (2, false)])
        );
        // A marked epoch with a missing subtask is refused, naming the file.
        write_marker(storage.as_ref(), &marker(2, 3)).unwrap();
        let error = load_newest(storage.as_ref(), "job-1")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("job-1/_reservations/2/src~2fa/1") && error.contains("missing"),
            "{error}"
        );
    }
}
