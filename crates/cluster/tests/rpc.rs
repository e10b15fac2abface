//! The control connection (`flowstate_cluster::rpc`) between real sockets on
//! loopback: registration, order, loss (closed, stalled, full), garbage,
//! re-registration. Deadlines are generous and only bound a wait; short
//! heartbeat settings appear only where the test is about loss detection.

use bytes::{Buf, BufMut};
use flowstate_checkpoint::coordinator::TaskAck;
use flowstate_checkpoint::{OperatorListState, SubtaskSnapshot};
use flowstate_cluster::protocol::{
    Deployment, PROTOCOL_VERSION, Registration, ToJobManager, ToTaskManager,
};
use flowstate_cluster::rpc::frame::{JmFrame, TmFrame};
use flowstate_cluster::rpc::grpc::control_server::{Control, ControlServer as GrpcServer};
use flowstate_cluster::rpc::{
    ClientEvent, ControlClient, ControlError, ControlServer, ControlSettings, ServerEvent,
};
use flowstate_runtime::control_plane::TaskEvent;
use flowstate_runtime::distributed::RestoreRef;
use flowstate_state::RedistributionMode;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::tokio_stream::{self, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Bounds every wait; never reached when the behaviour is right.
const DEADLINE: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Long heartbeat timeouts: a loaded machine never loses a connection by
/// accident in the tests that are not about timeouts.
fn calm() -> ControlSettings {
    ControlSettings {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(60),
        ..ControlSettings::default()
    }
}

/// Short heartbeats, for the tests about loss by silence.
fn quick() -> ControlSettings {
    ControlSettings {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(800),
        ..ControlSettings::default()
    }
}

fn registration(process: Option<u32>, plan: &str) -> Registration {
    Registration {
        protocol_version: PROTOCOL_VERSION,
        process,
        plan: plan.into(),
        data_address: "127.0.0.1:7000".into(),
        workers: 2,
    }
}

/// Admits every registration of plan "p": the index it asks for, else the
/// next of a counter.
fn admit_plan_p() -> impl Fn(&Registration) -> Result<u32, String> + Send + Sync + 'static {
    let next = AtomicU32::new(0);
    move |registration: &Registration| {
        if registration.plan != "p" {
            return Err(format!(
                "plan fingerprint {} is not the job manager's p",
                registration.plan
            ));
        }
        Ok(registration
            .process
            .unwrap_or_else(|| next.fetch_add(1, Ordering::SeqCst)))
    }
}

fn connect(
    server: &ControlServer,
    registration: Registration,
    settings: ControlSettings,
) -> (ControlClient, crossbeam_channel::Receiver<ClientEvent>) {
    ControlClient::connect(
        &server.local_addr().to_string(),
        registration,
        settings,
        DEADLINE,
    )
    .expect("connect")
}

fn next<T>(events: &crossbeam_channel::Receiver<T>) -> T {
    events
        .recv_timeout(DEADLINE)
        .expect("an event within the deadline")
}

fn expect_registered(events: &crossbeam_channel::Receiver<ServerEvent>) -> u32 {
    match next(events) {
        ServerEvent::Registered { process, .. } => process,
        other => panic!("expected Registered, got {other:?}"),
    }
}

fn expect_lost(events: &crossbeam_channel::Receiver<ServerEvent>) -> (u32, String) {
    match next(events) {
        ServerEvent::Lost { process, cause } => (process, cause),
        other => panic!("expected Lost, got {other:?}"),
    }
}

fn expect_client_lost(events: &crossbeam_channel::Receiver<ClientEvent>) -> String {
    loop {
        match next(events) {
            ClientEvent::Lost { cause } => return cause,
            ClientEvent::Message(_) => {}
        }
    }
}

/// An acknowledgement of a few MB of JSON: larger than tonic's default
/// 4 MiB message limit, within the settings' 64 MiB.
fn big_ack(task: usize) -> TaskEvent {
    let elements = (0..2000u32)
        .map(|i| (0..1024u32).map(|j| ((i * 7 + j) % 251) as u8).collect())
        .collect();
    TaskEvent::Ack(TaskAck {
        id: 7,
        task,
        operators: vec![(
            "uid-1".into(),
            "window".into(),
            SubtaskSnapshot {
                subtask: task as u32,
                keyed: None,
                native: None,
                lists: vec![OperatorListState {
                    name: "offsets".into(),
                    mode: RedistributionMode::Union,
                    elements,
                }],
                channels: None,
            },
        )],
        bytes: 2000 * 1024,
        sync_pause: Duration::from_millis(3),
        alignment: Duration::from_millis(5),
        unaligned: false,
        persisted_bytes: 0,
    })
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn two_task_managers_exchange_messages_in_order() {
    let (server, events) = ControlServer::bind(any_port(), calm(), admit_plan_p()).unwrap();
    let (a, a_events) = connect(&server, registration(None, "p"), calm());
    assert_eq!(expect_registered(&events), 0);
    let (b, b_events) = connect(&server, registration(None, "p"), calm());
    assert_eq!(expect_registered(&events), 1);
    assert_eq!((a.process(), b.process()), (0, 1));

    const N: u32 = 300;
    let ack = big_ack(4);
    for attempt in 0..N {
        for client in [&a, &b] {
            client
                .send(ToJobManager::PartEnded {
                    attempt,
                    failure: Some(format!("from {}", client.process())),
                })
                .unwrap();
            if attempt == N / 2 {
                client
                    .send(ToJobManager::Task {
                        attempt,
                        event: ack.clone(),
                    })
                    .unwrap();
            }
        }
    }
    let mut seen = [0u32; 2];
    let mut acks = [false; 2];
    while seen != [N, N] {
        match next(&events) {
            ServerEvent::Message { process, message } => {
                let p = process as usize;
                match message {
                    ToJobManager::PartEnded { attempt, failure } => {
                        assert_eq!(attempt, seen[p], "order of process {process}");
                        assert_eq!(failure, Some(format!("from {process}")));
                        seen[p] += 1;
                    }
                    ToJobManager::Task { attempt, event } => {
                        assert_eq!(attempt, N / 2);
                        assert_eq!(seen[p], N / 2 + 1, "the ack comes after its attempt");
                        assert_eq!(json(&event), json(&ack));
                        acks[p] = true;
                    }
                    other @ ToJobManager::Progress { .. } => panic!("not sent: {other:?}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acks, [true, true]);

    // The other direction, each client seeing only its own messages.
    for attempt in 0..N {
        for process in [0, 1] {
            let message = if attempt == N / 2 {
                ToTaskManager::Deploy(Deployment {
                    attempt,
                    job_id: format!("job-{process}"),
                    subtask_process: vec![0, 1, process],
                    data_addresses: vec![(0, "a:1".into()), (1, "b:2".into())],
                    restore: Some(RestoreRef::JobStorage {
                        metadata_path: "x".repeat(100_000),
                    }),
                })
            } else {
                ToTaskManager::Cancel { attempt }
            };
            server.send(process, message).unwrap();
        }
    }
    for (process, client_events) in [(0u32, &a_events), (1, &b_events)] {
        for attempt in 0..N {
            match next(client_events) {
                ClientEvent::Message(ToTaskManager::Cancel { attempt: got }) => {
                    assert_ne!(attempt, N / 2);
                    assert_eq!(got, attempt);
                }
                ClientEvent::Message(ToTaskManager::Deploy(deployment)) => {
                    assert_eq!(attempt, N / 2);
                    assert_eq!(deployment.job_id, format!("job-{process}"));
                    assert_eq!(
                        deployment.restore,
                        Some(RestoreRef::JobStorage {
                            metadata_path: "x".repeat(100_000)
                        })
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(matches!(
        server.send(9, ToTaskManager::Shutdown),
        Err(ControlError::NotConnected(9))
    ));
}

#[test]
fn a_refused_registration_returns_the_reason_and_no_event() {
    let (server, events) = ControlServer::bind(any_port(), calm(), admit_plan_p()).unwrap();
    let refused = ControlClient::connect(
        &server.local_addr().to_string(),
        registration(None, "other-plan"),
        calm(),
        DEADLINE,
    );
    match refused {
        Err(ControlError::Refused { reason }) => {
            assert!(reason.contains("other-plan"), "{reason}");
        }
        Err(e) => panic!("expected Refused, got {e}"),
        Ok(_) => panic!("expected Refused, got accepted"),
    }
    // The first event the server reports is the next (good) registration's.
    let (_good, _good_events) = connect(&server, registration(None, "p"), calm());
    assert_eq!(expect_registered(&events), 0);
    assert!(events.is_empty());
}

#[test]
fn a_dropped_client_or_server_is_lost_for_the_other_side() {
    let (server, events) = ControlServer::bind(any_port(), calm(), admit_plan_p()).unwrap();
    let (a, _a_events) = connect(&server, registration(Some(5), "p"), calm());
    let (b, b_events) = connect(&server, registration(Some(6), "p"), calm());
    assert_eq!(expect_registered(&events), 5);
    assert_eq!(expect_registered(&events), 6);
    drop(a);
    let (process, cause) = expect_lost(&events);
    assert_eq!(process, 5, "{cause}");
    assert!(matches!(
        server.send(5, ToTaskManager::Shutdown),
        Err(ControlError::NotConnected(5))
    ));
    // b is still there.
    server
        .send(6, ToTaskManager::Cancel { attempt: 1 })
        .unwrap();
    assert!(matches!(
        next(&b_events),
        ClientEvent::Message(ToTaskManager::Cancel { attempt: 1 })
    ));
    drop(server);
    let cause = expect_client_lost(&b_events);
    assert!(!cause.is_empty());
    // Once lost, sending fails instead of queueing into the void.
    let deadline = Instant::now() + DEADLINE;
    while b
        .send(ToJobManager::PartEnded {
            attempt: 0,
            failure: None,
        })
        .is_ok()
    {
        assert!(Instant::now() < deadline, "send still succeeds after Lost");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn disconnect_and_re_registration_of_the_same_index() {
    let (server, events) = ControlServer::bind(any_port(), calm(), admit_plan_p()).unwrap();
    let (_a, a_events) = connect(&server, registration(Some(3), "p"), calm());
    assert_eq!(expect_registered(&events), 3);
    server.disconnect(3);
    let (process, cause) = expect_lost(&events);
    assert_eq!(process, 3);
    assert!(cause.contains("disconnected"), "{cause}");
    assert!(!expect_client_lost(&a_events).is_empty());

    // A restarted worker asks for index 3 again.
    let (again, again_events) = connect(&server, registration(Some(3), "p"), calm());
    assert_eq!(again.process(), 3);
    assert_eq!(expect_registered(&events), 3);
    again
        .send(ToJobManager::PartEnded {
            attempt: 8,
            failure: None,
        })
        .unwrap();
    match next(&events) {
        ServerEvent::Message {
            process: 3,
            message: ToJobManager::PartEnded { attempt: 8, .. },
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    server.send(3, ToTaskManager::Shutdown).unwrap();
    assert!(matches!(
        next(&again_events),
        ClientEvent::Message(ToTaskManager::Shutdown)
    ));

    // A third registration of 3 while it is alive, accepted by `admit`:
    // the older connection's Lost comes before the new Registered.
    let (_third, _third_events) = connect(&server, registration(Some(3), "p"), calm());
    let (process, cause) = expect_lost(&events);
    assert_eq!(process, 3);
    assert!(cause.contains("replaced"), "{cause}");
    assert_eq!(expect_registered(&events), 3);
    assert!(expect_client_lost(&again_events).contains("replaced"));
}

/// A tokio runtime for the tests' raw peers.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Bytes as they are: for peers that send what no `ControlClient` would.
#[derive(Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Opens a Session stream to `addr` sending `frames` (raw bytes) and then
/// nothing, never ending; returns the stream of the server's frames.
async fn raw_session(addr: SocketAddr, frames: Vec<Vec<u8>>) -> Result<Streaming<Vec<u8>>, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let outgoing = tokio_stream::iter(frames).chain(tokio_stream::pending());
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/flowstate.control.Control/Session");
    grpc.streaming(Request::new(outgoing), path, RawCodec)
        .await
        .map(Response::into_inner)
}

fn frame_bytes(frame: &TmFrame) -> Vec<u8> {
    serde_json::to_vec(frame).unwrap()
}

#[test]
fn a_silent_task_manager_is_lost_after_the_timeout() {
    let (server, events) = ControlServer::bind(any_port(), quick(), admit_plan_p()).unwrap();
    let runtime = tokio_runtime();
    let addr = server.local_addr();
    // Registers, then sends nothing (no heartbeats) and keeps the stream open.
    let mut inbound = runtime
        .block_on(raw_session(
            addr,
            vec![frame_bytes(&TmFrame::Register(registration(Some(2), "p")))],
        ))
        .unwrap();
    let first = runtime.block_on(inbound.message()).unwrap().unwrap();
    assert!(matches!(
        serde_json::from_slice(&first).unwrap(),
        JmFrame::Message(ToTaskManager::Accepted { process: 2 })
    ));
    assert_eq!(expect_registered(&events), 2);
    let (process, cause) = expect_lost(&events);
    assert_eq!(process, 2);
    assert!(cause.contains("no frame"), "{cause}");
    // The server ended the stream: its reader sees the end, not a hang.
    let ended = runtime.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            loop {
                match inbound.message().await {
                    Ok(Some(_heartbeat)) => {}
                    Ok(None) => return "end".to_string(),
                    Err(status) => return status.message().to_string(),
                }
            }
        })
        .await
    });
    assert!(ended.expect("the stream ends").contains("no frame"));
    drop(inbound);
    drop(runtime);
}

/// A job manager that accepts and then says nothing, holding the stream.
#[derive(Clone)]
struct SilentJobManager;

#[tonic::async_trait]
impl Control for SilentJobManager {
    type SessionStream = std::pin::Pin<Box<dyn Stream<Item = Result<JmFrame, Status>> + Send>>;

    async fn session(
        &self,
        request: Request<Streaming<TmFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        // Keep reading (and dropping) the task manager's frames.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let accepted = JmFrame::Message(ToTaskManager::Accepted { process: 4 });
        Ok(Response::new(Box::pin(
            tokio_stream::iter(vec![Ok(accepted)]).chain(tokio_stream::pending()),
        )))
    }
}

#[test]
fn a_silent_job_manager_is_lost_after_the_timeout() {
    let runtime = tokio_runtime();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(any_port()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(tonic::transport::Server::builder().serve_with_incoming(
        GrpcServer::new(SilentJobManager),
        tonic::transport::server::TcpIncoming::from(listener),
    ));
    let (client, client_events) = ControlClient::connect(
        &addr.to_string(),
        registration(None, "p"),
        quick(),
        DEADLINE,
    )
    .unwrap();
    assert_eq!(client.process(), 4);
    let cause = expect_client_lost(&client_events);
    assert!(cause.contains("no frame"), "{cause}");
    drop(client);
    drop(runtime);
}

#[test]
fn garbage_never_registers_and_the_server_keeps_serving() {
    let (server, events) = ControlServer::bind(any_port(), calm(), admit_plan_p()).unwrap();
    let addr = server.local_addr();

    // Not HTTP/2 at all: the server closes the socket.
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage \x16\x03\x01")
        .unwrap();
    let mut sink = Vec::new();
    let _ = socket.read_to_end(&mut sink);

    let runtime = tokio_runtime();
    // gRPC, but the first frame is not JSON: the stream fails, no event.
    let first_not_json = runtime.block_on(async {
        let mut inbound = raw_session(addr, vec![b"{not json".to_vec()]).await?;
        tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .expect("an answer")
    });
    assert!(!matches!(first_not_json, Ok(Some(_))), "{first_not_json:?}");
    // JSON, but not a registration first.
    let not_register = runtime.block_on(async {
        let mut inbound = raw_session(addr, vec![frame_bytes(&TmFrame::Heartbeat)]).await?;
        tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .expect("an answer")
    });
    assert!(!matches!(not_register, Ok(Some(_))), "{not_register:?}");

    // Registered, then a frame that is not JSON: Lost (not a panic).
    let mut broken = runtime
        .block_on(raw_session(
            addr,
            vec![
                frame_bytes(&TmFrame::Register(registration(Some(7), "p"))),
                b"\xff\x00 not json".to_vec(),
            ],
        ))
        .unwrap();
    assert_eq!(expect_registered(&events), 7);
    let (process, cause) = expect_lost(&events);
    assert_eq!(process, 7);
    assert!(cause.contains("decode"), "{cause}");
    drop(broken.message());

    // The server still serves a well-behaved task manager.
    let (client, _client_events) = connect(&server, registration(None, "p"), calm());
    assert_eq!(expect_registered(&events), client.process());
    client
        .send(ToJobManager::PartEnded {
            attempt: 1,
            failure: None,
        })
        .unwrap();
    assert!(matches!(
        next(&events),
        ServerEvent::Message {
            message: ToJobManager::PartEnded { attempt: 1, .. },
            ..
        }
    ));
    drop(runtime);
}

#[test]
fn a_full_send_queue_drops_the_connection_as_lost() {
    let settings = ControlSettings {
        queue_capacity: 4,
        ..calm()
    };
    let (server, events) =
        ControlServer::bind(any_port(), settings.clone(), admit_plan_p()).unwrap();
    // The task manager's owner never reads its events: its event queue fills,
    // then the HTTP/2 windows, then the server's send queue.
    let (client, client_events) = connect(&server, registration(None, "p"), settings);
    let process = expect_registered(&events);
    let mut sent = 0u32;
    let full = loop {
        match server.send(process, ToTaskManager::Cancel { attempt: sent }) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10_000_000, "the send queue never filled");
    };
    assert!(
        matches!(full, ControlError::QueueFull { capacity: 4 }),
        "{full}"
    );
    let (lost, cause) = expect_lost(&events);
    assert_eq!(lost, process);
    assert!(cause.contains("send queue is full"), "{cause}");
    // The client's messages came in order up to the loss, then Lost.
    let mut expected = 0;
    loop {
        match next(&client_events) {
            ClientEvent::Message(ToTaskManager::Cancel { attempt }) => {
                assert_eq!(attempt, expected);
                expected += 1;
            }
            ClientEvent::Message(other) => panic!("unexpected {other:?}"),
            ClientEvent::Lost { .. } => break,
        }
    }
    assert!(expected <= sent);
    drop(client);
}

#[test]
fn heartbeats_keep_an_idle_connection_alive() {
    // Idle for longer than the timeout; only heartbeats cross. A failure
    // here needs both sides' runtimes stalled for 3 s (60 heartbeats).
    let settings = ControlSettings {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_secs(3),
        ..ControlSettings::default()
    };
    let (server, events) =
        ControlServer::bind(any_port(), settings.clone(), admit_plan_p()).unwrap();
    let (client, client_events) = connect(&server, registration(None, "p"), settings);
    let process = expect_registered(&events);
    std::thread::sleep(Duration::from_secs(4));
    assert!(events.is_empty(), "{:?}", events.try_recv());
    assert!(client_events.is_empty(), "{:?}", client_events.try_recv());
    client
        .send(ToJobManager::PartEnded {
            attempt: 2,
            failure: None,
        })
        .unwrap();
    assert!(matches!(
        next(&events),
        ServerEvent::Message { process: p, .. } if p == process
    ));
    server.send(process, ToTaskManager::Shutdown).unwrap();
    assert!(matches!(
        next(&client_events),
        ClientEvent::Message(ToTaskManager::Shutdown)
    ));
}

#[test]
fn a_frame_over_the_size_limit_loses_the_connection() {
    let settings = ControlSettings {
        message_bytes_max: 64 << 10,
        ..calm()
    };
    let (server, events) =
        ControlServer::bind(any_port(), settings.clone(), admit_plan_p()).unwrap();

    // Job manager → task manager.
    let (_a, a_events) = connect(&server, registration(None, "p"), settings.clone());
    let a = expect_registered(&events);
    let deployment = Deployment {
        attempt: 0,
        job_id: "j".into(),
        subtask_process: vec![0],
        data_addresses: vec![],
        restore: Some(RestoreRef::JobStorage {
            metadata_path: "x".repeat(100 << 10),
        }),
    };
    server.send(a, ToTaskManager::Deploy(deployment)).unwrap();
    assert!(!expect_client_lost(&a_events).is_empty());
    assert_eq!(expect_lost(&events).0, a);

    // Task manager → job manager.
    let (b_client, b_events) = connect(&server, registration(None, "p"), settings);
    let b = expect_registered(&events);
    b_client
        .send(ToJobManager::PartEnded {
            attempt: 0,
            failure: Some("y".repeat(100 << 10)),
        })
        .unwrap();
    let (process, cause) = expect_lost(&events);
    assert_eq!(process, b, "{cause}");
    assert!(!expect_client_lost(&b_events).is_empty());
}
