//! Helpers of the transport's tests: transports on 127.0.0.1:0, channels of
//! `(String, u64)` records driven by the test thread, polling with generous
//! deadlines (never a sleep for correctness), and a raw TCP peer.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_network::{Hello, REPLY_LEN, Reply, TcpTransport, VERSION};
use flowstate_runtime::WireCodec;
use flowstate_runtime::channel::{ChannelReceiver, ChannelSender, SendError, Signal};
use flowstate_runtime::message::Message;
use flowstate_runtime::remote::{ChannelId, Transport, inbound, outbound};

pub type Rec = (String, u64);

/// How long anything may take before a test gives up (generous: the machine
/// is shared and may be loaded).
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Processes 0 and 1, each the other's peer.
pub fn pair() -> (TcpTransport, TcpTransport) {
    let t0 = TcpTransport::bind(0, localhost(), []).unwrap();
    let t1 = TcpTransport::bind(1, localhost(), [(0, t0.local_addr())]).unwrap();
    t0.set_peer(1, t1.local_addr());
    (t0, t1)
}

/// Process 0, its own peer (at its listener, without being told).
pub fn loopback() -> TcpTransport {
    TcpTransport::bind(0, localhost(), []).unwrap()
}

pub fn id(attempt: u32, producer: u32, consumer: u32) -> ChannelId {
    ChannelId {
        attempt,
        node: 3,
        edge: 0,
        producer,
        consumer,
    }
}

/// The consumer's end of `id` on `consumer` (producer in `producer_process`).
pub fn inbound_end(
    consumer: &TcpTransport,
    id: ChannelId,
    producer_process: u32,
    capacity: usize,
) -> ChannelReceiver<Rec> {
    let (end, rx) = inbound(
        WireCodec::new(),
        capacity,
        consumer
            .inbound_signal(id, producer_process, capacity)
            .unwrap(),
        Signal::new(),
    );
    consumer
        .register_inbound(id, producer_process, end)
        .unwrap();
    rx
}

/// The producer's end of `id` on `producer` (consumer in `consumer_process`).
pub fn outbound_end(
    producer: &TcpTransport,
    id: ChannelId,
    consumer_process: u32,
    capacity: usize,
) -> ChannelSender<Rec> {
    let (tx, end) = outbound(
        WireCodec::new(),
        capacity,
        Signal::new(),
        producer.outbound_signal(id, consumer_process).unwrap(),
    );
    producer
        .register_outbound(id, consumer_process, end)
        .unwrap();
    tx
}

/// A channel from `producer` to `consumer`, consumer's end registered first.
pub fn channel(
    producer: &TcpTransport,
    consumer: &TcpTransport,
    id: ChannelId,
    out_capacity: usize,
    in_capacity: usize,
) -> (ChannelSender<Rec>, ChannelReceiver<Rec>) {
    let rx = inbound_end(consumer, id, producer.process(), in_capacity);
    let tx = outbound_end(producer, id, consumer.process(), out_capacity);
    (tx, rx)
}

/// Polls `f` until it answers, or fails the test after [`DEADLINE`].
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub fn batch(from: u64, n: u64) -> Message<Rec> {
    Message::Batch((from..from + n).map(|i| (format!("k{i}"), i)).collect())
}

/// Sends `message`, waiting while the channel is full.
pub fn send(tx: &ChannelSender<Rec>, message: Message<Rec>) {
    let mut message = Some(message);
    eventually("room in the channel", || {
        match tx.try_send(message.take().unwrap()) {
            Ok(()) => Some(()),
            Err(SendError::Full(m)) => {
                message = Some(m);
                None
            }
            Err(SendError::Disconnected) => panic!("the consumer is gone"),
        }
    })
}

/// The next message.
pub fn recv(rx: &ChannelReceiver<Rec>) -> Message<Rec> {
    eventually("a message", || rx.try_recv().expect("the producer is gone"))
}

/// Waits until the channel says its sender is gone, with nothing before.
pub fn recv_disconnected(rx: &ChannelReceiver<Rec>) {
    eventually("the sender gone", || match rx.try_recv() {
        Err(_) => Some(()),
        Ok(None) => None,
        Ok(Some(m)) => panic!("a message where the end was expected: {m:?}"),
    })
}

/// Sends until the channel says its receiver is gone (messages may be
/// accepted before); returns how many were accepted.
pub fn send_until_disconnected(tx: &ChannelSender<Rec>) -> usize {
    let mut sent = 0;
    eventually("the receiver gone", || match tx.try_send(batch(0, 1)) {
        Ok(()) => {
            sent += 1;
            None
        }
        Err(SendError::Full(_)) => None,
        Err(SendError::Disconnected) => Some(sent),
    })
}

pub fn same(a: &Message<Rec>, b: &Message<Rec>) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// A raw TCP peer: the test writes and reads the protocol's bytes itself.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(to: SocketAddr) -> Self {
        let stream = TcpStream::connect(to).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self { stream }
    }

    /// Connects and completes the handshake as process `from`.
    pub fn handshake(to: &TcpTransport, from: u32) -> Self {
        let mut raw = Self::connect(to.local_addr());
        raw.write(
            &Hello {
                version: VERSION,
                from,
                to: to.process(),
                token: 0,
            }
            .encode(),
        );
        let mut reply = [0; REPLY_LEN];
        raw.stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            Reply::decode(&reply).unwrap(),
            Reply {
                version: VERSION,
                status: 0,
                process: to.process()
            }
        );
        raw
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame that is not a heartbeat, its length field included
    /// (heartbeats come whenever the transport has written nothing for its
    /// heartbeat interval: a loaded machine may slip one in anywhere).
    pub fn read_frame(&mut self) -> Vec<u8> {
        loop {
            let frame = self.read_any_frame();
            if frame != heartbeat_frame() {
                return frame;
            }
        }
    }

    /// The next frame, heartbeats included, its length field included.
    pub fn read_any_frame(&mut self) -> Vec<u8> {
        let mut len = [0; 4];
        self.stream.read_exact(&mut len).unwrap();
        let mut frame = vec![0; u32::from_le_bytes(len) as usize];
        self.stream.read_exact(&mut frame).unwrap();
        [len.to_vec(), frame].concat()
    }

    /// Whether the other side closed the connection (reads until it does,
    /// within the read timeout; frames before it are skipped).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    );
                }
            }
        }
    }
}

/// The bytes of a frame: length, kind, channel id, payload.
pub fn frame(kind: u8, id: ChannelId, payload: &[u8]) -> Vec<u8> {
    let mut out = ((21 + payload.len()) as u32).to_le_bytes().to_vec();
    out.push(kind);
    for word in [id.attempt, id.node, id.edge, id.producer, id.consumer] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// The bytes of a heartbeat frame (docs/wire-format.md §2): kind 3, a zero
/// channel id, no payload.
pub fn heartbeat_frame() -> Vec<u8> {
    let mut out = vec![21, 0, 0, 0, 3];
    out.extend_from_slice(&[0; 20]);
    out
}

/// The payload of `message` (docs/wire-format.md §1).
pub fn payload(message: &Message<Rec>) -> Vec<u8> {
    let mut out = Vec::new();
    WireCodec::<Rec>::new()
        .encode_message(message, &mut out)
        .unwrap();
    out
}

pub fn shared(t: TcpTransport) -> Arc<TcpTransport> {
    Arc::new(t)
}
