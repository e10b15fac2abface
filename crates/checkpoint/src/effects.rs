//! The storage side of a coordinator's driver: what it reads before the
//! coordinator starts, and how it carries out the storage effects the
//! coordinator answers with (`WriteMetadata`, `Delete`).
//!
//! The [`Coordinator`](crate::Coordinator) itself does no storage I/O: it
//! decides what is written and deleted, and when; these functions only
//! execute. A driver (the runtime's coordinator thread, a test, a
//! simulation) calls them on whatever thread it likes and feeds the outcome
//! of a metadata write back with `Coordinator::on_metadata_written`.

use std::collections::BTreeSet;

use crate::coordinator::{Deletion, ExistingCheckpoints, References};
use crate::layout::{metadata_path, parse_metadata_path};
use crate::metadata::read_metadata;
use crate::storage::{CheckpointStorage, StorageError};
use crate::{CheckpointError, CheckpointId};

impl ExistingCheckpoints {
    /// Reads what earlier runs of job `job_id` left in `storage`: the
    /// listing of `<job id>/`, and the shared files referenced by each
    /// checkpoint with a `_metadata` there, and by `restored` (if it is one
    /// of the job's). Failures become facts (the coordinator then deletes
    /// less), never errors.
    pub fn read(
        storage: &dyn CheckpointStorage,
        job_id: &str,
        restored: Option<CheckpointId>,
    ) -> Self {
        let listing = storage
            .list(&format!("{job_id}/"))
            .map_err(|e| e.to_string());
        let mut ids: BTreeSet<CheckpointId> = restored.into_iter().collect();
        if let Ok(paths) = &listing {
            ids.extend(
                paths
                    .iter()
                    .filter_map(|p| parse_metadata_path(p))
                    .filter(|(job, _)| job == job_id)
                    .map(|(_, id)| id),
            );
        }
        let mut references = References::new();
        for id in ids {
            match read_metadata(storage, &metadata_path(job_id, id)) {
                Ok(metadata) => {
                    let paths = metadata.shared_paths().map(str::to_owned).collect();
                    references.insert(id, Ok(paths));
                }
                // No metadata under this job (the restored checkpoint of
                // another job): it references none of this job's files.
                Err(CheckpointError::Storage(StorageError::NotFound { .. })) => {}
                Err(e) => {
                    references.insert(id, Err(e.to_string()));
                }
            }
        }
        Self {
            listing,
            references,
        }
    }
}

/// Carries out a `WriteMetadata`: create-if-absent in `storage` (the
/// checkpoint storage or a savepoint's directory), then, for a stop, the
/// job's restore pointer in `checkpoints`. The result (of both) goes back to
/// the coordinator (`on_metadata_written`).
pub fn write_metadata(
    storage: &dyn CheckpointStorage,
    path: &str,
    bytes: Vec<u8>,
    then_restore_pointer: Option<(&dyn CheckpointStorage, &crate::StopPointer)>,
) -> Result<(), String> {
    storage
        .put_if_absent(path, bytes)
        .map_err(|e| e.to_string())?;
    if let Some((checkpoints, stop)) = then_restore_pointer {
        crate::restore::write_restore_pointer(checkpoints, &stop.job_id, &stop.pointer).map_err(
            |e| format!("recording the stop's savepoint as the job's restore pointer: {e}"),
        )?;
    }
    Ok(())
}

/// Carries out a `Delete` of `what` (of snapshot `id`, if any) in `storage`.
/// A failure is logged, never fatal; for a [`Deletion::Checkpoint`] whose
/// metadata cannot be deleted, nothing else of it is.
pub fn delete(storage: &dyn CheckpointStorage, id: Option<CheckpointId>, what: &Deletion) {
    match what {
        Deletion::File(path) => {
            if let Err(e) = storage.delete(path) {
                tracing::warn!(checkpoint = id, "cannot delete {path}: {e}");
            }
        }
        Deletion::Prefix(prefix) => {
            if let Err(e) = storage.delete_prefix(prefix) {
                tracing::warn!(
                    checkpoint = id,
                    "cannot delete the files under '{prefix}' of {}: {e}",
                    storage.describe()
                );
            }
        }
        Deletion::Checkpoint {
            metadata,
            dir,
            shared,
        } => {
            // Metadata first: a half-deleted checkpoint must never look
            // complete.
            if let Err(e) = storage.delete(metadata) {
                // It still looks complete, so its files stay; the next start
                // adopts it again.
                tracing::warn!(checkpoint = id, "could not delete old checkpoint: {e}");
                return;
            }
            if let Err(e) = storage.delete_prefix(dir) {
                tracing::warn!(checkpoint = id, "could not delete old checkpoint: {e}");
            }
            for path in shared {
                if let Err(e) = storage.delete(path) {
                    tracing::warn!(checkpoint = id, "cannot delete shared file {path}: {e}");
                }
            }
        }
    }
}
