//! The network data plane of a job that spans processes: remote channels
//! over TCP ([`TcpTransport`], the runtime's `remote::Transport`).
//!
//! Every channel between two processes travels on one TCP connection per
//! ordered pair of processes, in frames (`frame`, docs/wire-format.md §2)
//! whose message payloads are the runtime's (`flowstate_runtime::wire`,
//! §1). Flow control is credit-based, as Flink's: the consumer's process
//! announces per channel how many messages its inbox has room for, and the
//! producer's process takes a message from the producer's outbound channel
//! only against that credit. A full consumer therefore never blocks the
//! connection for the other channels, and backpressure crosses the network as
//! a full outbound channel (`SendError::Full`), exactly as locally.
//!
//! Liveness: each side of a connection sends a heartbeat frame when it has
//! written nothing for the heartbeat interval, and declares the connection
//! lost when it has read nothing for the heartbeat timeout, so a connection
//! that stalls (packets stop, the socket stays open) closes its channels and
//! fails their attempts as a dropped one does.
//!
//! Owns: sockets, the handshake and frames, credit accounting, connections
//! and their failures. Must not touch: the runtime's plan (which channels are
//! remote), tasks, or the bytes of a message payload.

mod frame;
mod link;
mod transport;

pub use frame::{
    DEFAULT_MAX_FRAME_LEN, Frame, FrameError, FrameKind, FrameWriter, HEADER_LEN,
    HEARTBEAT_CHANNEL, HELLO_LEN, Hello, LENGTH_LEN, MAGIC, REPLY_LEN, Reply, Status, VERSION,
    frame_codec,
};
pub use transport::{NetworkError, NetworkStats, TcpTransport, TcpTransportBuilder};
