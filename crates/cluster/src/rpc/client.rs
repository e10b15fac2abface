//! A task manager's side of the control connection: connects (retrying
//! until the job manager listens), registers, then forwards the job
//! manager's messages to one event queue and the caller's messages to the
//! stream, and reports the connection's loss once.
//!
//! Owns: the client's runtime, its one connection and task. Must not touch:
//! what the messages mean, reconnecting after a loss (a lost task manager
//! ends or registers anew with a new `ControlClient`).

use super::frame::{JmFrame, TmFrame};
use super::grpc::control_client::ControlClient as GrpcClient;
use super::{
    ControlError, ControlSettings, Frames, Outgoing, Stop, cause_of, close, deliver, describe,
};
use crate::protocol::{Registration, ToJobManager, ToTaskManager};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// What the client tells the task manager: the job manager's messages in
/// order, then `Lost` (once).
#[derive(Debug)]
pub enum ClientEvent {
    Message(ToTaskManager),
    /// The connection is gone (closed, timed out, a transport or decoding
    /// error, a full queue); no message follows.
    Lost {
        cause: String,
    },
}

/// A task manager's control connection: see the module and [`super`]
/// docs. Dropping it stops its runtime and closes the connection (the job
/// manager sees it lost; no `Lost` event is sent to this side).
pub struct ControlClient {
    process: u32,
    outbound: mpsc::Sender<TmFrame>,
    close: watch::Sender<Option<String>>,
    capacity: usize,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ControlClient {
    /// Connects to the job manager at `addr` (`host:port`), registers, and
    /// waits for the answer: `Ok` once accepted (see [`Self::process`]),
    /// `Err(Refused)` with the job manager's reason. Retries the TCP
    /// connection until `connect_timeout` (the job manager may start after
    /// its task managers); the answer must then come within the heartbeat
    /// timeout. Blocks the calling thread meanwhile.
    pub fn connect(
        addr: &str,
        registration: Registration,
        settings: ControlSettings,
        connect_timeout: Duration,
    ) -> Result<(ControlClient, crossbeam_channel::Receiver<ClientEvent>), ControlError> {
        settings.validate()?;
        let runtime = super::runtime("flowstate-control-client")?;
        let (outbound, queue) = mpsc::channel(settings.queue_capacity);
        let (events, receiver) = crossbeam_channel::bounded(settings.queue_capacity);
        let (close_sender, closed) = watch::channel(None);
        let (client, process, inbound, stop) = runtime.block_on(register(
            addr,
            registration,
            &settings,
            connect_timeout,
            &outbound,
            queue,
        ))?;
        runtime.spawn(run(
            client,
            inbound,
            stop,
            closed,
            events,
            settings.heartbeat_timeout,
        ));
        Ok((
            ControlClient {
                process,
                outbound,
                close: close_sender,
                capacity: settings.queue_capacity,
                runtime: Some(runtime),
            },
            receiver,
        ))
    }

    /// The process index the job manager gave this task manager.
    pub fn process(&self) -> u32 {
        self.process
    }

    /// Queues `message` for the job manager; never blocks. `Err(Lost)`
    /// once the connection is gone; `Err(QueueFull)` if the send queue is
    /// full, in which case the connection is dropped as lost (a
    /// `ClientEvent::Lost` follows).
    pub fn send(&self, message: ToJobManager) -> Result<(), ControlError> {
        match self.outbound.try_send(TmFrame::Message(message)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let capacity = self.capacity;
                close(&self.close, || {
                    format!(
                        "the send queue is full ({capacity} frames): the job manager does not read"
                    )
                });
                Err(ControlError::QueueFull { capacity })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ControlError::Lost),
        }
    }
}

impl Drop for ControlClient {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            super::shut_down(runtime);
        }
    }
}

/// Connects, opens the stream with the registration as its first frame and
/// reads the answer.
async fn register(
    addr: &str,
    registration: Registration,
    settings: &ControlSettings,
    connect_timeout: Duration,
    outbound: &mpsc::Sender<TmFrame>,
    queue: mpsc::Receiver<TmFrame>,
) -> Result<
    (
        GrpcClient<Channel>,
        u32,
        Streaming<JmFrame>,
        oneshot::Sender<Stop>,
    ),
    ControlError,
> {
    let timeout = settings.heartbeat_timeout;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ControlError::Address {
            addr: addr.into(),
            detail: e.to_string(),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    let deadline = Instant::now() + connect_timeout;
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) if Instant::now() >= deadline => {
                return Err(ControlError::Connect {
                    addr: addr.into(),
                    timeout: connect_timeout,
                    detail: error_chain(&e),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut client = GrpcClient::new(channel)
        .max_decoding_message_size(settings.message_bytes_max)
        .max_encoding_message_size(settings.message_bytes_max);
    outbound
        .try_send(TmFrame::Register(registration))
        .map_err(|_| ControlError::Handshake("the send queue is closed".into()))?;
    let (stop, stopped) = oneshot::channel();
    let outgoing = Outgoing::new(
        queue,
        stopped,
        settings.heartbeat_interval,
        TmFrame::Heartbeat,
    );
    let handshake = async {
        let mut inbound = client
            .session(Frames(outgoing))
            .await
            .map_err(|status| ControlError::Handshake(describe(&status)))?
            .into_inner();
        loop {
            match inbound.message().await {
                Ok(Some(JmFrame::Heartbeat)) => {}
                Ok(Some(JmFrame::Message(ToTaskManager::Accepted { process }))) => {
                    return Ok((process, inbound));
                }
                Ok(Some(JmFrame::Message(ToTaskManager::Refused { reason }))) => {
                    return Err(ControlError::Refused { reason });
                }
                Ok(Some(JmFrame::Message(_))) => {
                    return Err(ControlError::Handshake(
                        "the job manager's first message is not Accepted or Refused".into(),
                    ));
                }
                Ok(None) => {
                    return Err(ControlError::Handshake(
                        "the job manager closed the stream without an answer".into(),
                    ));
                }
                Err(status) => return Err(ControlError::Handshake(describe(&status))),
            }
        }
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok((process, inbound))) => Ok((client, process, inbound, stop)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ControlError::Handshake(format!(
            "no answer to the registration within {timeout:?}"
        ))),
    }
}

/// Reads the job manager's frames until the connection ends, then ends the
/// outgoing stream and reports `Lost`. Holds the client (and so the
/// HTTP/2 connection) for as long.
async fn run(
    client: GrpcClient<Channel>,
    mut inbound: Streaming<JmFrame>,
    stop: oneshot::Sender<Stop>,
    mut closed: watch::Receiver<Option<String>>,
    events: crossbeam_channel::Sender<ClientEvent>,
    timeout: Duration,
) {
    let mut deadline = Instant::now() + timeout;
    let cause = loop {
        tokio::select! {
            biased;
            cause = cause_of(&mut closed) => break cause,
            frame = inbound.message() => match frame {
                Ok(Some(JmFrame::Heartbeat)) => deadline = Instant::now() + timeout,
                Ok(Some(JmFrame::Message(message))) => {
                    if deliver(&events, ClientEvent::Message(message), Some(timeout)).await.is_err() {
                        break format!("the task manager took no event for {timeout:?}");
                    }
                    deadline = Instant::now() + timeout;
                }
                Ok(None) => break "the job manager closed the connection".into(),
                Err(status) => break describe(&status),
            },
            () = tokio::time::sleep_until(deadline) => {
                break format!("no frame from the job manager for {timeout:?}");
            }
        }
    };
    tracing::info!("control connection lost: {cause}");
    let _ = stop.send(Stop::Now(None));
    drop(inbound);
    drop(client);
    let _ = deliver(&events, ClientEvent::Lost { cause }, None).await;
}

/// An error and its sources on one line (tonic's transport errors say
/// little at the top).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
