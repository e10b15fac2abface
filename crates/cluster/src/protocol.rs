//! The messages of the control plane: what a task manager and the job
//! manager say to each other over their control connection.
//!
//! Every process builds the same plan, so tasks are named by their index in
//! it and channels by their ids; nothing here carries code or graphs.
//! Heartbeats and the connection itself are the transport's (`rpc`), not
//! messages of this protocol.
//!
//! Owns: [`Registration`], [`ToTaskManager`], [`ToJobManager`],
//! [`Deployment`]. Must not touch: how they are sent.

use flowstate_runtime::control_plane::{TaskCommand, TaskEvent};
use flowstate_runtime::distributed::RestoreRef;
use serde::{Deserialize, Serialize};

/// The version of this protocol; a task manager of another version is
/// refused at registration.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a task manager says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub protocol_version: u32,
    /// The process index it asks for (a local cluster's children are
    /// `0..N`, and a restarted child asks for its index again); `None`: the
    /// job manager gives the lowest free one.
    pub process: Option<u32>,
    /// The fingerprint of the job graph it built
    /// (`flowstate_runtime::JobGraph::fingerprint`): it must be the job
    /// manager's.
    pub plan: String,
    /// Where its data plane (the channels from other task managers) listens.
    pub data_address: String,
    /// Its worker threads.
    pub workers: u32,
}

/// Run attempt `attempt`: which process runs each subtask index, where every
/// process's data plane listens, and the checkpoint to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub attempt: u32,
    /// The job's id (the directory of its checkpoints in the storage).
    pub job_id: String,
    /// `subtask_process[i]`: the process that runs subtask `i` of every
    /// operator.
    pub subtask_process: Vec<u32>,
    /// `(process, data address)` of every process of the attempt.
    pub data_addresses: Vec<(u32, String)>,
    /// The checkpoint or savepoint to restore (as the job manager loaded
    /// it); `None`: start empty.
    pub restore: Option<RestoreRef>,
}

/// The job manager to a task manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToTaskManager {
    /// Registration accepted: the task manager is process `process`.
    Accepted { process: u32 },
    /// Registration refused (another plan, another protocol version, the
    /// process index taken): the task manager ends with this reason.
    Refused { reason: String },
    /// Run this process's subtasks of an attempt.
    Deploy(Deployment),
    /// A checkpoint command for task `task` (its index in the plan).
    Command {
        attempt: u32,
        task: u32,
        command: TaskCommand,
    },
    /// Savepoint `id` of `attempt` goes to `location` (as `--restore` names
    /// it): sent before the savepoint's barrier is triggered.
    SavepointTarget {
        attempt: u32,
        id: u64,
        location: String,
    },
    /// Cancel this process's part of `attempt` (another part failed).
    Cancel { attempt: u32 },
    /// The job is over: end the process.
    Shutdown,
}

/// A task manager to the job manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToJobManager {
    /// A task of `attempt` acknowledged or declined a checkpoint, or a
    /// source's input ended.
    Task { attempt: u32, event: TaskEvent },
    /// This process's part of `attempt` has counted this many records read
    /// by its sources and handed to its sinks since it started (sent every
    /// second while it runs, and once more when it ends).
    Progress {
        attempt: u32,
        records_in: u64,
        records_to_sinks: u64,
    },
    /// This process's part of `attempt` ended: `failure` is `None` when
    /// every task finished, else why it failed.
    PartEnded {
        attempt: u32,
        failure: Option<String>,
    },
}
