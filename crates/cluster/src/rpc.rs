//! The control connection between the job manager and its task managers:
//! gRPC over HTTP/2 (tonic), one bidirectional stream per task manager
//! (`flowstate.control.Control/Session`), its frames the serde types of
//! [`frame`] in JSON. Described in docs/control-plane.md.
//!
//! The callers are synchronous threads: [`ControlServer`] (the job manager)
//! and [`ControlClient`] (a task manager) each run a small tokio runtime of
//! their own (one worker thread) and talk to their caller through
//! crossbeam channels and non-blocking `send`s. Never call `bind`,
//! `connect` or drop them from inside an async context.
//!
//! Heartbeats: each side sends [`frame::JmFrame::Heartbeat`] /
//! [`frame::TmFrame::Heartbeat`] when it has sent nothing else for
//! `heartbeat_interval`; a side that receives no frame at all for
//! `heartbeat_timeout` drops the connection as lost. Queues are bounded
//! (`queue_capacity`): a full send queue drops the connection as lost (the
//! peer does not read), a message that waits longer than
//! `heartbeat_timeout` for room in the caller's event queue drops it too
//! (the caller does not read); a `Lost` event is never dropped (it waits
//! for room: each connection holds at most one pending event).
//!
//! Owns: the gRPC service, its codec and frames, heartbeats, loss
//! detection, the queues between the callers and the connections. Must not
//! touch: the protocol's messages (`crate::protocol`) or what they mean
//! (the job manager's and task manager's logic), the data plane.

pub mod codec;
pub mod frame;

mod client;
mod server;

pub use client::{ClientEvent, ControlClient};
pub use server::{ControlServer, ServerEvent};

/// The service stubs tonic-build generated from build.rs: the client
/// (`grpc::control_client::ControlClient`) and the server trait
/// (`grpc::control_server::Control`). Public for tests and tools that
/// speak the protocol frame by frame; [`ControlServer`] and
/// [`ControlClient`] are the API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod grpc {
    include!(concat!(env!("OUT_DIR"), "/flowstate.control.Control.rs"));
}

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::codegen::tokio_stream::Stream;

/// Timing and limits of a control connection; both sides should use the
/// same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// A side that has sent nothing for this long sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// A side that has received nothing for this long drops the connection
    /// as lost. Also the deadline for the registration's first frame and
    /// its answer, and for a message to find room in the event queue.
    pub heartbeat_timeout: Duration,
    /// The largest frame (one gRPC message: the JSON of one frame) either
    /// side sends or accepts; a larger one fails the connection.
    pub message_bytes_max: usize,
    /// The capacity of every queue, in frames: each connection's send
    /// queue and the event queue handed to the caller.
    pub queue_capacity: usize,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            message_bytes_max: 64 << 20,
            queue_capacity: 1024,
        }
    }
}

impl ControlSettings {
    fn validate(&self) -> Result<(), ControlError> {
        let fail = |why: &str| Err(ControlError::Settings(format!("{why}: {self:?}")));
        if self.heartbeat_interval.is_zero() {
            return fail("the heartbeat interval must not be zero");
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return fail("the heartbeat timeout must be longer than the interval");
        }
        if self.message_bytes_max < 1024 {
            return fail("the message size limit must be at least 1 KiB");
        }
        if self.queue_capacity < 2 {
            return fail("the queue capacity must be at least 2");
        }
        Ok(())
    }
}

/// What the control connection's API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control settings: {0}")]
    Settings(String),
    #[error("cannot start the control connection's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid job manager address {addr:?}: {detail}")]
    Address { addr: String, detail: String },
    #[error("cannot reach the job manager at {addr} within {timeout:?}: {detail}")]
    Connect {
        addr: String,
        timeout: Duration,
        detail: String,
    },
    #[error("the job manager refused this task manager: {reason}")]
    Refused { reason: String },
    #[error("registration with the job manager failed: {0}")]
    Handshake(String),
    #[error("task manager {0} is not connected")]
    NotConnected(u32),
    #[error("the control connection is lost")]
    Lost,
    #[error("the send queue is full ({capacity} frames): the connection is dropped as lost")]
    QueueFull { capacity: usize },
}

/// A builder for the runtime of one side: one worker thread for the
/// connections, timers and I/O.
fn runtime(name: &str) -> Result<tokio::runtime::Runtime, ControlError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_io()
        .enable_time()
        .build()
        .map_err(ControlError::Runtime)
}

/// Shuts a side's runtime down: its tasks (connections, timers) are
/// dropped, which closes their sockets. Waits for the worker thread unless
/// called from an async context (where blocking would panic).
fn shut_down(runtime: tokio::runtime::Runtime) {
    if tokio::runtime::Handle::try_current().is_ok() {
        runtime.shutdown_background();
    } else {
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// The client's outgoing stream: a request stream yields frames, not
/// results; an error status ends it.
struct Frames<F>(Outgoing<F>);

impl<F: Clone + Unpin> Stream for Frames<F> {
    type Item = F;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.and_then(Result::ok))
    }
}

/// A description of a stream's error status for a `Lost` cause.
fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// How a side ends its outgoing stream.
enum Stop {
    /// Send what is queued, then end (after a refusal).
    Drain,
    /// End now, with this error status for the peer if any.
    Now(Option<String>),
}

/// The outgoing half of a stream: the frames queued by the caller, and a
/// heartbeat whenever none was sent for the interval; ends on [`Stop`] or
/// when its stop sender is dropped (the connection's task ended).
struct Outgoing<F> {
    queue: mpsc::Receiver<F>,
    stop: Option<oneshot::Receiver<Stop>>,
    heartbeat: tokio::time::Interval,
    heartbeat_frame: F,
    draining: bool,
    ended: bool,
}

impl<F: Clone> Outgoing<F> {
    /// Must be called inside the side's runtime (the interval's timer).
    fn new(
        queue: mpsc::Receiver<F>,
        stop: oneshot::Receiver<Stop>,
        interval: Duration,
        heartbeat_frame: F,
    ) -> Self {
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Outgoing {
            queue,
            stop: Some(stop),
            heartbeat,
            heartbeat_frame,
            draining: false,
            ended: false,
        }
    }
}

impl<F: Clone + Unpin> Stream for Outgoing<F> {
    type Item = Result<F, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(stop) = this.stop.as_mut() {
            match Pin::new(stop).poll(cx) {
                Poll::Ready(Ok(Stop::Drain)) => {
                    this.stop = None;
                    this.draining = true;
                }
                Poll::Ready(Ok(Stop::Now(status))) => {
                    this.ended = true;
                    return Poll::Ready(status.map(|cause| Err(Status::aborted(cause))));
                }
                Poll::Ready(Err(_)) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
        }
        match this.queue.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                this.heartbeat.reset();
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if !this.draining && this.heartbeat.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(this.heartbeat_frame.clone())));
        }
        Poll::Pending
    }
}

/// Puts `event` into the caller's bounded event queue without blocking the
/// runtime's thread: retries while the queue is full, for at most `limit`
/// (`None`: until it fits). `Err` when the limit passed; a queue whose
/// receiver is gone takes everything (nobody listens).
async fn deliver<T>(
    events: &crossbeam_channel::Sender<T>,
    mut event: T,
    limit: Option<Duration>,
) -> Result<(), ()> {
    let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let mut pause = Duration::from_millis(1);
    loop {
        match events.try_send(event) {
            Ok(()) | Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Full(back)) => event = back,
        }
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            return Err(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Waits until a connection is closed, and says why.
async fn cause_of(closed: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
    match closed.wait_for(Option::is_some).await {
        Ok(cause) => cause.clone().unwrap_or_default(),
        Err(_) => "shutting down".into(),
    }
}

/// Sets the cause a connection closes with, unless one is set already.
fn close(close: &tokio::sync::watch::Sender<Option<String>>, cause: impl FnOnce() -> String) {
    close.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(cause());
            true
        } else {
            false
        }
    });
}
