//! The job manager's side of the control connection: a gRPC server that
//! admits task managers, routes their messages to one event queue and the
//! job manager's messages to each connection's send queue, and reports
//! each registered connection's loss exactly once.
//!
//! Owns: the server's runtime, the table of registered connections (one
//! per process index), each connection's task. Must not touch: the
//! decision to admit (the caller's `admit`), what messages mean.

use super::frame::{JmFrame, TmFrame};
use super::grpc::control_server::{Control, ControlServer as GrpcServer};
use super::{ControlError, ControlSettings, Outgoing, Stop, cause_of, close, deliver, describe};
use crate::protocol::{Registration, ToJobManager, ToTaskManager};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

/// What the server tells the job manager, in order per connection:
/// `Registered`, its `Message`s, then `Lost` (exactly once).
#[derive(Debug)]
pub enum ServerEvent {
    /// `admit` accepted a task manager as `process`; `send` reaches it now.
    Registered {
        process: u32,
        registration: Registration,
    },
    /// A message from task manager `process`.
    Message { process: u32, message: ToJobManager },
    /// The connection of `process` is gone (closed, timed out, a transport
    /// or decoding error, `disconnect`, a full queue, or a newer
    /// registration of the same index); the index may register again.
    Lost { process: u32, cause: String },
}

/// Concurrent streams one HTTP/2 connection may open (a task manager opens
/// one; the rest is headroom, not a use).
const STREAMS_PER_CONNECTION_MAX: u32 = 4;

type Admit = dyn Fn(&Registration) -> Result<u32, String> + Send + Sync;

/// The job manager's control server: see the module and [`super`] docs.
/// Dropping it stops its runtime and closes every connection (without
/// further events; the event receiver then reports disconnection).
pub struct ControlServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    settings: ControlSettings,
    admit: Box<Admit>,
    events: crossbeam_channel::Sender<ServerEvent>,
    connections: Mutex<HashMap<u32, Connection>>,
    next_id: AtomicU64,
}

/// A registered connection, as the table holds it.
struct Connection {
    id: u64,
    outbound: mpsc::Sender<JmFrame>,
    /// Set to the cause to make the connection's task end.
    close: watch::Sender<Option<String>>,
    /// Becomes true when the task has reported `Lost` and left the table.
    done: watch::Receiver<bool>,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<u32, Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ControlServer {
    /// Listens on `addr` (port 0: any free port, see [`Self::local_addr`]).
    /// `admit` decides each registration: `Ok(process index)` or
    /// `Err(reason)`, sent back as `ToTaskManager::Refused` before the
    /// stream is closed. It runs on the server's thread: it must be quick
    /// and must not wait for the event receiver. Accepting an index whose
    /// connection is still alive replaces that connection (its `Lost`
    /// comes before the new `Registered`).
    pub fn bind(
        addr: SocketAddr,
        settings: ControlSettings,
        admit: impl Fn(&Registration) -> Result<u32, String> + Send + Sync + 'static,
    ) -> Result<(ControlServer, crossbeam_channel::Receiver<ServerEvent>), ControlError> {
        settings.validate()?;
        let runtime = super::runtime("flowstate-control-server")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|source| ControlError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ControlError::Bind { addr, source })?;
        let (events, receiver) = crossbeam_channel::bounded(settings.queue_capacity);
        let shared = Arc::new(Shared {
            settings,
            admit: Box::new(admit),
            events,
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let limit = shared.settings.message_bytes_max;
        let service = GrpcServer::new(Service {
            shared: shared.clone(),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let keepalive = shared.settings.heartbeat_interval;
        let keepalive_timeout = shared.settings.heartbeat_timeout;
        runtime.spawn(async move {
            // HTTP/2 pings close connections whose peer is gone (the
            // heartbeats end the stream; this frees the socket too). A task
            // manager needs one stream per connection: a few at most.
            let served = tonic::transport::Server::builder()
                .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
                .http2_keepalive_interval(Some(keepalive))
                .http2_keepalive_timeout(Some(keepalive_timeout))
                .serve_with_incoming(service, incoming)
                .await;
            if let Err(e) = served {
                tracing::error!("the control server stopped: {e}");
            }
        });
        Ok((
            ControlServer {
                shared,
                local_addr,
                runtime: Some(runtime),
            },
            receiver,
        ))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues `message` for task manager `process`; never blocks.
    /// `Err(NotConnected)` if it is not registered (or its connection is
    /// closing); `Err(QueueFull)` if its send queue is full, in which case
    /// the connection is dropped as lost (a `Lost` event follows).
    pub fn send(&self, process: u32, message: ToTaskManager) -> Result<(), ControlError> {
        let connections = self.shared.connections();
        let connection = connections
            .get(&process)
            .ok_or(ControlError::NotConnected(process))?;
        match connection.outbound.try_send(JmFrame::Message(message)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let capacity = self.shared.settings.queue_capacity;
                close(&connection.close, || {
                    format!("its send queue is full ({capacity} frames): it does not read")
                });
                Err(ControlError::QueueFull { capacity })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ControlError::NotConnected(process)),
        }
    }

    /// Closes the connection of `process`, if it has one: a
    /// `ServerEvent::Lost` follows.
    pub fn disconnect(&self, process: u32) {
        if let Some(connection) = self.shared.connections().get(&process) {
            close(&connection.close, || {
                "disconnected by the job manager".into()
            });
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            super::shut_down(runtime);
        }
    }
}

#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Control for Service {
    type SessionStream = Outgoing<JmFrame>;

    async fn session(
        &self,
        request: Request<Streaming<TmFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let settings = &self.shared.settings;
        let (outbound, queue) = mpsc::channel(settings.queue_capacity);
        let (stop, stopped) = oneshot::channel();
        let outgoing = Outgoing::new(
            queue,
            stopped,
            settings.heartbeat_interval,
            JmFrame::Heartbeat,
        );
        tokio::spawn(session(
            self.shared.clone(),
            request.into_inner(),
            outbound,
            stop,
        ));
        Ok(Response::new(outgoing))
    }
}

/// One stream's life: registration, admission, taking the index, the
/// messages, the loss.
async fn session(
    shared: Arc<Shared>,
    mut inbound: Streaming<TmFrame>,
    outbound: mpsc::Sender<JmFrame>,
    stop: oneshot::Sender<Stop>,
) {
    let timeout = shared.settings.heartbeat_timeout;
    let registration = match tokio::time::timeout(timeout, inbound.message()).await {
        Ok(Ok(Some(TmFrame::Register(registration)))) => registration,
        Ok(Ok(Some(_))) => {
            tracing::debug!("control stream refused: its first frame is not a registration");
            let _ = stop.send(Stop::Now(Some("the first frame must be Register".into())));
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(status)) => {
            tracing::debug!("control stream failed before registering: {status}");
            return;
        }
        Err(_) => {
            let _ = stop.send(Stop::Now(Some(format!(
                "no registration within {timeout:?}"
            ))));
            return;
        }
    };
    let process = match (shared.admit)(&registration) {
        Ok(process) => process,
        Err(reason) => {
            tracing::info!(
                "task manager at {} refused: {reason}",
                registration.data_address
            );
            let _ = outbound.try_send(JmFrame::Message(ToTaskManager::Refused { reason }));
            let _ = stop.send(Stop::Drain);
            return;
        }
    };

    // Take the index: an older connection of it ends first (and reports
    // its loss), so that its `Lost` precedes this `Registered`.
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (close_sender, mut closed) = watch::channel(None);
    let (done, done_receiver) = watch::channel(false);
    let mut close_sender = Some(close_sender);
    loop {
        let older = {
            let mut connections = shared.connections();
            match connections.get(&process) {
                Some(older) => {
                    close(&older.close, || {
                        format!("replaced by a new registration of process {process}")
                    });
                    older.done.clone()
                }
                None => {
                    // The queue is new and empty: `Accepted` goes first.
                    let _ =
                        outbound.try_send(JmFrame::Message(ToTaskManager::Accepted { process }));
                    if let Some(close) = close_sender.take() {
                        connections.insert(
                            process,
                            Connection {
                                id,
                                outbound: outbound.clone(),
                                close,
                                done: done_receiver.clone(),
                            },
                        );
                    }
                    break;
                }
            }
        };
        let mut older = older;
        let _ = older.wait_for(|done| *done).await;
    }
    drop(outbound);
    let _ = deliver(
        &shared.events,
        ServerEvent::Registered {
            process,
            registration,
        },
        None,
    )
    .await;

    let cause = run(&shared, process, &mut inbound, &mut closed).await;
    // Also the normal end of a job (the task manager left when told to):
    // the job manager says when a loss matters.
    tracing::info!("control connection of task manager {process} ended: {cause}");
    let _ = stop.send(Stop::Now(Some(cause.clone())));
    drop(inbound);
    let _ = deliver(&shared.events, ServerEvent::Lost { process, cause }, None).await;
    {
        let mut connections = shared.connections();
        if connections.get(&process).is_some_and(|c| c.id == id) {
            connections.remove(&process);
        }
    }
    let _ = done.send(true);
}

/// Reads a registered connection's frames until it ends; returns why.
async fn run(
    shared: &Shared,
    process: u32,
    inbound: &mut Streaming<TmFrame>,
    closed: &mut watch::Receiver<Option<String>>,
) -> String {
    let timeout = shared.settings.heartbeat_timeout;
    let mut deadline = Instant::now() + timeout;
    loop {
        tokio::select! {
            biased;
            cause = cause_of(closed) => return cause,
            frame = inbound.message() => match frame {
                Ok(Some(TmFrame::Heartbeat)) => deadline = Instant::now() + timeout,
                Ok(Some(TmFrame::Message(message))) => {
                    let event = ServerEvent::Message { process, message };
                    if deliver(&shared.events, event, Some(timeout)).await.is_err() {
                        return format!("the job manager took no event for {timeout:?}");
                    }
                    // Time spent waiting for the job manager is not the peer's.
                    deadline = Instant::now() + timeout;
                }
                Ok(Some(TmFrame::Register(_))) => {
                    return "a second Register on the same stream".into();
                }
                Ok(None) => return "the task manager closed the connection".into(),
                Err(status) => return describe(&status),
            },
            () = tokio::time::sleep_until(deadline) => {
                return format!("no frame from the task manager for {timeout:?}");
            }
        }
    }
}
