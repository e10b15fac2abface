//! The asynchronous part of snapshots: a task's frozen state, handed over as an
//! [`UploadJob`], is written to checkpoint storage (or to a savepoint's own
//! directory) and acknowledged to the coordinator.
//!
//! Owns: [`upload_snapshot`], the whole of one job — the sinks'
//! [`DeferredPrepare`](crate::connector::DeferredPrepare)s first, then the state
//! files — as a function of its inputs that answers the `Ack` or `Decline` to
//! send; it neither blocks on a queue nor reads the clock, so a single-threaded
//! simulator may call it directly. [`upload_loop`] is the thin thread around it.
//! Must not touch: tasks, the coordinator's decisions or the job controller.

use crossbeam_channel::Receiver;
use flowstate_checkpoint::SnapshotKind;
use flowstate_checkpoint::SubtaskSnapshot;
use flowstate_checkpoint::channel_file::write_channel_state_file;
use flowstate_checkpoint::coordinator::TaskAck;
use flowstate_checkpoint::keyed_file::write_keyed_file;
use flowstate_checkpoint::layout::{channel_state_path, keyed_state_path, savepoint_keyed_path};
use flowstate_checkpoint::native_files::upload_native;
use flowstate_checkpoint::storage::SharedStorage;
use flowstate_state::BackendSnapshot;

use crate::control_plane::{
    CoordinatorEvent, CoordinatorSender, SavepointTargets, TaskEvent, UploadJob,
};
use crate::error::guarded;

/// Does the asynchronous part of one task's snapshot: runs the sinks'
/// deferred first-phase work, writes the state of every operator (into
/// `storage` under `job_id`, or for a savepoint into its directory found in
/// `savepoints`), and returns what to tell the coordinator: an `Ack`, or a
/// `Decline` naming what failed.
pub(crate) fn upload_snapshot(
    mut job: UploadJob,
    storage: &SharedStorage,
    job_id: &str,
    savepoints: &SavepointTargets,
) -> TaskEvent {
    let id = job.barrier.id;
    let decline = |reason: String| TaskEvent::Decline {
        id,
        task: job.task,
        reason,
    };
    // Sinks' deferred first-phase I/O (fsync, flush, PREPARE) first, and
    // always, even for a snapshot declined below: what it makes durable
    // is recorded as pending by this snapshot and by every later one. The
    // acknowledgement, and so the completion and `commit`, come only
    // after it succeeded; a failure declines the snapshot.
    let mut failed = None;
    for part in &mut job.parts {
        if let Some(action) = part.deferred.take() {
            let result = guarded(&part.name, action);
            if let (Err(e), None) = (result, &failed) {
                failed = Some(format!(
                    "preparing the commit (instance {}): {e}",
                    part.subtask
                ));
            }
        }
    }
    if let Some(reason) = failed.or(job.decline.take()) {
        return decline(reason);
    }
    // A savepoint's files go to its own directory, named relative to it.
    let savepoint = match job.barrier.kind.snapshot_kind() {
        SnapshotKind::Checkpoint => None,
        SnapshotKind::Savepoint => match savepoints.get(id) {
            Some(target) => Some(target),
            None => return decline("the savepoint was aborted".into()),
        },
    };
    let mut operators = Vec::with_capacity(job.parts.len());
    let mut bytes = 0;
    for part in job.parts {
        let (mut keyed, mut native) = (None, None);
        let written = match &part.snapshot.keyed {
            Some(BackendSnapshot::KeyGroups(snapshot)) => {
                let (target, path) = match &savepoint {
                    Some(target) => (target, savepoint_keyed_path(&part.uid, part.subtask)),
                    None => (
                        storage,
                        keyed_state_path(job_id, id, &part.uid, part.subtask),
                    ),
                };
                write_keyed_file(target.as_ref(), &path, snapshot).map(|handle| {
                    bytes += handle.file.size;
                    keyed = Some(handle);
                })
            }
            Some(BackendSnapshot::Native(_)) if savepoint.is_some() => {
                return decline(format!(
                    "'{}' ({}) snapshotted a savepoint in its backend's native format; \
                     savepoints must be canonical",
                    part.name, part.subtask
                ));
            }
            Some(BackendSnapshot::Native(snapshot)) => {
                upload_native(storage.as_ref(), job_id, &part.uid, part.subtask, snapshot).map(
                    |(handle, uploaded)| {
                        bytes += uploaded;
                        native = Some(handle);
                    },
                )
            }
            None => Ok(()),
        };
        if let Err(e) = written {
            return decline(format!(
                "writing state of '{}' ({}): {e}",
                part.name, part.subtask
            ));
        }
        let lists = part.snapshot.lists;
        if keyed.is_none() && native.is_none() && lists.is_empty() {
            // A sink that only had deferred work: no state to record.
            continue;
        }
        bytes += lists
            .iter()
            .flat_map(|l| &l.elements)
            .map(|e| e.len() as u64)
            .sum::<u64>();
        operators.push((
            part.uid.to_string(),
            part.name.to_string(),
            SubtaskSnapshot {
                subtask: part.subtask,
                keyed,
                native,
                lists,
                channels: None,
            },
        ));
    }
    // In-flight records: one file per task instance, indexed under its head
    // operator (an entry of its own if the head keeps no other state).
    // Never in a savepoint: those are aligned, so nothing was recorded.
    let mut persisted_bytes = 0;
    if let Some(channels) = job.channels {
        if savepoint.is_some() {
            return decline("channel state in a savepoint (savepoints are aligned)".into());
        }
        let path = channel_state_path(job_id, id, &channels.uid, channels.subtask);
        let handle = match write_channel_state_file(storage.as_ref(), &path, &channels.contents) {
            Ok(handle) => handle,
            Err(e) => {
                return decline(format!(
                    "writing channel state of '{}' ({}): {e}",
                    channels.name, channels.subtask
                ));
            }
        };
        persisted_bytes = handle.file.size;
        bytes += persisted_bytes;
        match operators
            .iter_mut()
            .find(|(uid, _, s)| **uid == *channels.uid && s.subtask == channels.subtask)
        {
            Some((_, _, snapshot)) => snapshot.channels = Some(handle),
            None => operators.push((
                channels.uid.to_string(),
                channels.name.to_string(),
                SubtaskSnapshot {
                    subtask: channels.subtask,
                    keyed: None,
                    native: None,
                    lists: Vec::new(),
                    channels: Some(handle),
                },
            )),
        }
    }
    TaskEvent::Ack(TaskAck {
        id,
        task: job.task,
        operators,
        bytes,
        sync_pause: job.sync_pause,
        alignment: job.alignment,
        unaligned: job.unaligned,
        persisted_bytes,
    })
}

/// An upload thread: takes jobs until the queue closes and sends what
/// [`upload_snapshot`] answers to the coordinator. It stops early once the
/// coordinator no longer takes acknowledgements.
pub(crate) fn upload_loop(
    jobs: Receiver<UploadJob>,
    storage: SharedStorage,
    job_id: String,
    events: CoordinatorSender,
    savepoints: SavepointTargets,
) {
    flowstate_checkpoint::background::mark_current_thread();
    for job in jobs {
        let (metrics, submitted, sync_pause) = (job.metrics.clone(), job.submitted, job.sync_pause);
        let event = upload_snapshot(job, &storage, &job_id, &savepoints);
        if let (Some(metrics), TaskEvent::Ack(a)) = (&metrics, &event) {
            metrics.record_checkpoint(
                a.id,
                sync_pause + submitted.elapsed(),
                a.sync_pause,
                a.alignment,
                a.bytes,
            );
            metrics.record_channel_state(a.unaligned, a.persisted_bytes);
        }
        let ack = matches!(event, TaskEvent::Ack(_));
        if events.send(CoordinatorEvent::Task(event)).is_err() && ack {
            break;
        }
    }
}
