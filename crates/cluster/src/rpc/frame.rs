//! The frames of the control stream: the envelope around the protocol's
//! messages plus the transport's own frames (registration and heartbeats).
//! Each frame is one gRPC message, JSON-encoded by [`super::codec`]; the
//! format is documented in docs/control-plane.md.
//!
//! Owns: [`TmFrame`], [`JmFrame`]. Must not touch: the messages themselves
//! (`crate::protocol`'s) or how frames are queued and timed (the server's
//! and the client's).

use crate::protocol::{Registration, ToJobManager, ToTaskManager};
use serde::{Deserialize, Serialize};

/// A task manager's frame to the job manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TmFrame {
    /// The first frame of every stream, and only the first.
    Register(Registration),
    /// A message of the protocol.
    Message(ToJobManager),
    /// Sent when the task manager has had nothing else to send for the
    /// heartbeat interval.
    Heartbeat,
}

/// The job manager's frame to a task manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JmFrame {
    /// A message of the protocol; the first one answers the registration
    /// (`ToTaskManager::Accepted` or `ToTaskManager::Refused`).
    Message(ToTaskManager),
    /// Sent when the job manager has had nothing else to send for the
    /// heartbeat interval.
    Heartbeat,
}
