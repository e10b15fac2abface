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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PROTOCOL_VERSION;

    /// The frames as docs/control-plane.md shows them.
    #[test]
    fn frames_are_the_documented_json() {
        let register = TmFrame::Register(Registration {
            protocol_version: PROTOCOL_VERSION,
            process: None,
            plan: "…".into(),
            data_address: "host:port".into(),
            workers: 4,
        });
        let cases = [
            (
                serde_json::to_string(&register).unwrap(),
                r#"{"Register":{"protocol_version":1,"process":null,"plan":"…","data_address":"host:port","workers":4}}"#,
            ),
            (
                serde_json::to_string(&TmFrame::Message(ToJobManager::PartEnded {
                    attempt: 0,
                    failure: None,
                }))
                .unwrap(),
                r#"{"Message":{"PartEnded":{"attempt":0,"failure":null}}}"#,
            ),
            (
                serde_json::to_string(&TmFrame::Heartbeat).unwrap(),
                r#""Heartbeat""#,
            ),
            (
                serde_json::to_string(&JmFrame::Message(ToTaskManager::Accepted { process: 0 }))
                    .unwrap(),
                r#"{"Message":{"Accepted":{"process":0}}}"#,
            ),
            (
                serde_json::to_string(&JmFrame::Message(ToTaskManager::Shutdown)).unwrap(),
                r#"{"Message":"Shutdown"}"#,
            ),
            (
                serde_json::to_string(&JmFrame::Heartbeat).unwrap(),
                r#""Heartbeat""#,
            ),
        ];
        for (got, documented) in cases {
            assert_eq!(got, documented);
        }
    }
}
