//! Liveness of a connection: heartbeats keep an idle connection up, and a
//! peer that goes silent while its socket stays open (a stalled network or
//! proxy, a host gone without a FIN) is declared lost within the heartbeat
//! timeout, closing its channels and recording why, as a dropped connection.
//! Short heartbeat settings; the assertions wait with generous deadlines
//! ("lost within 30 s", "not lost after 3 × the timeout"), never on exact
//! timing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::*;
use flowstate_network::{
    HELLO_LEN, Hello, NetworkError, Reply, Status, TcpTransport, TcpTransportBuilder, VERSION,
};
use flowstate_runtime::remote::{Transport, TransportError};

const INTERVAL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(1);

fn quick(process: u32) -> TcpTransportBuilder {
    TcpTransport::builder(process, localhost())
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(TIMEOUT)
}

/// `failure` is a lost connection with `process` whose cause names the
/// silence.
fn assert_silence(failure: Option<TransportError>, process: u32) {
    match failure {
        Some(TransportError::ConnectionLost { process: p, cause }) => {
            assert_eq!(p, process, "{cause}");
            assert!(cause.contains("heartbeat timeout"), "{cause}");
        }
        other => panic!("expected a lost connection with process {process}: {other:?}"),
    }
}

#[test]
fn a_producer_that_goes_silent_is_lost_within_the_timeout_and_its_channel_closes() {
    let t = quick(0).bind().unwrap();
    let ch = id(1, 0, 0);
    let rx = inbound_end(&t, ch, 7, 2);
    let mut raw = Raw::handshake(&t, 7);
    assert_eq!(raw.read_frame(), frame(1, ch, &2u32.to_le_bytes()));
    // The transport has nothing more to say: it heartbeats, byte for byte
    // as documented.
    assert_eq!(raw.read_any_frame(), heartbeat_frame());
    // The raw producer never writes again, and keeps its socket open.
    recv_disconnected(&rx);
    assert_silence(t.failure(1), 7);
    assert!(raw.closed_by_peer());
    // The transport goes on: other connections work.
    let (tx, rx) = channel(&t, &t, id(2, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
}

#[test]
fn a_consumer_that_goes_silent_is_lost_within_the_timeout_and_its_producer_disconnected() {
    // A raw acceptor completes the handshake as process 1, then says nothing:
    // no credit, no heartbeat.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let t = quick(0)
        .peer(1, listener.local_addr().unwrap())
        .bind()
        .unwrap();
    let tx = outbound_end(&t, id(1, 0, 0), 1, 2);
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut hello = [0; HELLO_LEN];
    stream.read_exact(&mut hello).unwrap();
    assert_eq!(Hello::decode(&hello).unwrap().to, 1);
    let reply = Reply {
        version: VERSION,
        status: Status::Accepted as u8,
        process: 1,
    };
    stream.write_all(&reply.encode()).unwrap();
    send_until_disconnected(&tx);
    assert_silence(t.failure(1), 1);
    drop(stream);
}

#[test]
fn an_idle_connection_is_kept_up_by_heartbeats() {
    let t0 = quick(0).bind().unwrap();
    let t1 = quick(1).peer(0, t0.local_addr()).bind().unwrap();
    t0.set_peer(1, t1.local_addr());
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
    // No data for three timeouts: only heartbeats cross.
    let idle = Instant::now();
    while idle.elapsed() < 3 * TIMEOUT {
        assert_eq!(t0.failure(1), None);
        assert_eq!(t1.failure(1), None);
        assert!(matches!(rx.try_recv(), Ok(None)), "the channel is open");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same connection still carries the channel.
    for i in 1..4 {
        send(&tx, batch(i, 1));
        assert!(same(&recv(&rx), &batch(i, 1)));
    }
    assert_eq!(t0.failure(1), None);
    assert_eq!(t1.failure(1), None);
}

#[test]
fn a_heartbeat_timeout_not_longer_than_the_interval_is_refused() {
    let err = TcpTransport::builder(0, localhost())
        .heartbeat_interval(Duration::from_secs(2))
        .heartbeat_timeout(Duration::from_secs(2))
        .bind()
        .unwrap_err();
    assert!(matches!(err, NetworkError::Heartbeat { .. }), "{err}");
}

#[test]
fn a_peer_of_protocol_version_1_without_heartbeats_is_refused_cleanly() {
    const { assert!(VERSION >= 2, "heartbeats came with version 2") };
    let t = loopback();
    let mut raw = Raw::connect(t.local_addr());
    raw.write(
        &Hello {
            version: 1,
            from: 7,
            to: 0,
            token: 0,
        }
        .encode(),
    );
    let mut reply = [0; flowstate_network::REPLY_LEN];
    raw.stream.read_exact(&mut reply).unwrap();
    let reply = Reply::decode(&reply).unwrap();
    assert_eq!(
        (reply.version, reply.status),
        (VERSION, Status::Version as u8)
    );
    assert!(raw.closed_by_peer());

    // And a transport that dials a version-1 acceptor closes the channel,
    // saying why.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let t = TcpTransport::builder(0, localhost())
        .peer(1, addr)
        .bind()
        .unwrap();
    let tx = outbound_end(&t, id(1, 0, 0), 1, 2);
    let (mut stream, _) = listener.accept().unwrap();
    let mut hello = [0; HELLO_LEN];
    stream.read_exact(&mut hello).unwrap();
    let old = Reply {
        version: 1,
        status: Status::Version as u8,
        process: 1,
    };
    stream.write_all(&old.encode()).unwrap();
    drop(stream);
    send_until_disconnected(&tx);
    match t.failure(1) {
        Some(TransportError::ConnectionLost { process: 1, cause }) => {
            assert!(cause.contains("version 1"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
}
