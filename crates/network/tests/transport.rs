//! The TCP transport between two processes (two transports in this test
//! process) and within one (a transport that is its own peer): order, credit
//! and backpressure, closing, damaged bytes, lost connections, ended attempts.

mod common;

use common::*;
use flowstate_network::{Hello, REPLY_LEN, Reply, TcpTransport, VERSION};
use flowstate_runtime::WireCodec;
use flowstate_runtime::channel::{
    BarrierAnnouncements, ChannelReceiver, ChannelSender, SendError, Signal,
};
use flowstate_runtime::message::{
    Barrier, BarrierAlignment, BarrierKind, Message, Watermark, WatermarkStatus,
};
use flowstate_runtime::remote::{
    Transport, TransportError, inbound_with_announcements, outbound_with_announcements,
};
use std::io::Read;

/// What every producer of the order test sends, `n` the channel's number.
fn script(n: u64) -> Vec<Message<Rec>> {
    let mut messages = vec![Message::WatermarkStatus(WatermarkStatus::Active)];
    for i in 0..120u64 {
        messages.push(batch(n * 1_000_000 + i * 10, 1 + i % 7));
        if i % 40 == 39 {
            // Every alignment crosses the wire.
            let alignment = match i / 40 {
                0 => BarrierAlignment::Aligned,
                1 => BarrierAlignment::Unaligned,
                _ => BarrierAlignment::AlignedUntil {
                    deadline_unix_ms: i,
                },
            };
            messages.push(Message::Barrier(Barrier {
                id: i,
                kind: BarrierKind::Checkpoint,
                alignment,
            }));
        }
        if i % 10 == 0 {
            messages.push(Message::Watermark(Watermark(i as i64)));
        }
    }
    messages.push(Message::EndOfInput);
    messages
}

/// Drives every channel from the test thread: sends what fits, takes what
/// arrived, until every consumer has its whole script and then sees its
/// sender gone.
fn run_scripts(channels: Vec<(ChannelSender<Rec>, ChannelReceiver<Rec>)>) {
    struct Run {
        tx: Option<ChannelSender<Rec>>,
        rx: ChannelReceiver<Rec>,
        to_send: std::collections::VecDeque<Message<Rec>>,
        expected: Vec<Message<Rec>>,
        received: usize,
        done: bool,
    }
    let mut runs: Vec<Run> = channels
        .into_iter()
        .enumerate()
        .map(|(n, (tx, rx))| Run {
            tx: Some(tx),
            rx,
            to_send: script(n as u64).into(),
            expected: script(n as u64),
            received: 0,
            done: false,
        })
        .collect();
    eventually("every script across", || {
        for run in &mut runs {
            while let Some(message) = run.to_send.pop_front() {
                match run.tx.as_ref().unwrap().try_send(message) {
                    Ok(()) => {}
                    Err(SendError::Full(m)) => {
                        run.to_send.push_front(m);
                        break;
                    }
                    Err(SendError::Disconnected) => panic!("a consumer is gone"),
                }
            }
            if run.to_send.is_empty() {
                // The producer ends after its end of input.
                run.tx = None;
            }
            loop {
                match run.rx.try_recv() {
                    Ok(Some(m)) => {
                        assert!(
                            same(&m, &run.expected[run.received]),
                            "message {} is {m:?}, expected {:?}",
                            run.received,
                            run.expected[run.received]
                        );
                        run.received += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        assert_eq!(run.received, run.expected.len(), "closed early");
                        run.done = true;
                        break;
                    }
                }
            }
        }
        runs.iter().all(|r| r.done).then_some(())
    });
}

#[test]
fn messages_cross_in_order_on_many_channels_between_two_processes() {
    let (t0, t1) = pair();
    let mut channels = Vec::new();
    for p in 0..2 {
        for c in 0..2 {
            channels.push(channel(&t0, &t1, id(1, p, c), 4, 3));
        }
    }
    // And the other way on the same pair of processes.
    channels.push(channel(&t1, &t0, id(1, 2, 0), 2, 2));
    run_scripts(channels);
    assert_eq!(t0.failure(1), None);
    assert_eq!(t1.failure(1), None);
}

#[test]
fn messages_cross_in_order_through_a_process_that_is_its_own_peer() {
    let t = loopback();
    let channels = (0..3).map(|c| channel(&t, &t, id(1, 0, c), 3, 2)).collect();
    run_scripts(channels);
    assert_eq!(t.failure(1), None);
}

#[test]
fn credit_that_arrives_before_the_producer_registers_is_kept() {
    let (t0, t1) = pair();
    // Consumers first: their credit reaches process 0 when its first
    // channel dials, before the other channel's producer end is registered.
    let rx_a = inbound_end(&t1, id(1, 0, 0), 0, 2);
    let rx_b = inbound_end(&t1, id(1, 0, 1), 0, 2);
    let tx_a = outbound_end(&t0, id(1, 0, 0), 1, 2);
    send(&tx_a, batch(0, 1));
    assert!(same(&recv(&rx_a), &batch(0, 1)));
    let tx_b = outbound_end(&t0, id(1, 0, 1), 1, 2);
    for i in 0..10 {
        send(&tx_b, batch(i, 1));
        assert!(same(&recv(&rx_b), &batch(i, 1)));
    }
}

/// Sends while messages are accepted until `expected_total` were, failing
/// the test if ever more are.
fn fill(tx: &ChannelSender<Rec>, expected_total: usize, sent: &mut usize) {
    eventually("the channel to fill up", || {
        loop {
            match tx.try_send(batch(*sent as u64, 1)) {
                Ok(()) => *sent += 1,
                Err(SendError::Full(_)) => break,
                Err(SendError::Disconnected) => panic!("the consumer is gone"),
            }
        }
        assert!(
            *sent <= expected_total,
            "{} messages accepted, credit allows {expected_total}",
            *sent
        );
        (*sent == expected_total).then_some(())
    });
}

#[test]
fn a_consumer_that_takes_nothing_backpressures_its_producer_and_only_it() {
    let (t0, t1) = pair();
    let (out_cap, in_cap) = (3, 5);
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), out_cap, in_cap);
    let mut sent = 0;
    fill(&tx, out_cap + in_cap, &mut sent);
    eventually("the consumer's inbox full", || {
        (rx.len() == in_cap).then_some(())
    });

    // Another channel on the same connection keeps flowing meanwhile.
    let (tx2, rx2) = channel(&t0, &t1, id(1, 1, 0), 1, 1);
    for i in 0..50 {
        send(&tx2, batch(i, 2));
        assert!(same(&recv(&rx2), &batch(i, 2)));
    }

    // Still full: no message beyond the credit was taken.
    for _ in 0..100 {
        assert!(matches!(tx.try_send(batch(0, 1)), Err(SendError::Full(_))));
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    assert_eq!(rx.len(), in_cap);

    // The consumer takes k: the producer can send k more, then it is full.
    let k = 4;
    for i in 0..k {
        assert!(same(&recv(&rx), &batch(i as u64, 1)));
    }
    fill(&tx, out_cap + in_cap + k, &mut sent);
    for i in k..sent {
        assert!(same(&recv(&rx), &batch(i as u64, 1)));
    }
    assert_eq!(t0.failure(1), None);
    assert_eq!(t1.failure(1), None);
}

#[test]
fn an_announcement_crosses_without_credit_ahead_of_the_backlog() {
    let (t0, t1) = pair();
    let ch = id(1, 0, 0);
    let (out_cap, in_cap) = (3, 5);
    let board = BarrierAnnouncements::new();
    let consumer = Signal::new();
    let (end, rx) = inbound_with_announcements(
        WireCodec::<Rec>::new(),
        in_cap,
        t1.inbound_signal(ch, 0, in_cap).unwrap(),
        consumer.clone(),
        Some(board.clone()),
    );
    t1.register_inbound(ch, 0, end).unwrap();
    let (tx, end) = outbound_with_announcements(
        WireCodec::new(),
        out_cap,
        Signal::new(),
        t0.outbound_signal(ch, 1).unwrap(),
        true,
    );
    t0.register_outbound(ch, 1, end).unwrap();
    // The consumer takes nothing: its inbox fills, the credit is spent, the
    // outbound channel fills behind it.
    let mut sent = 0;
    fill(&tx, out_cap + in_cap, &mut sent);
    eventually("the consumer's inbox full", || {
        (rx.len() == in_cap).then_some(())
    });
    consumer.take_woken();

    // The producer announces barrier 9 (it would queue it next): the notice
    // reaches the consumer's board with no credit given and nothing taken.
    let barrier = Barrier::checkpoint(9).with_alignment(BarrierAlignment::Unaligned);
    assert!(tx.announce(barrier));
    assert_eq!(
        eventually("the announcement", || board.take_newer_than(0)),
        barrier
    );
    assert!(consumer.take_woken(), "the consumer is woken by the notice");
    assert_eq!(rx.len(), in_cap);
    assert!(matches!(tx.try_send(batch(0, 1)), Err(SendError::Full(_))));

    // The backlog, then the barrier in band; no late notice follows it.
    assert!(same(&recv(&rx), &batch(0, 1)));
    send(&tx, Message::Barrier(barrier));
    for i in 1..sent {
        assert!(same(&recv(&rx), &batch(i as u64, 1)));
    }
    assert!(same(&recv(&rx), &Message::Barrier(barrier)));
    assert_eq!(board.take_newer_than(0), None);
    // One announce frame each way, counted apart from the messages.
    assert_eq!(t0.stats().announcements_sent, 1);
    assert_eq!(t1.stats().announcements_received, 1);
    assert_eq!(t0.stats().messages_sent, sent as u64 + 1);
    assert_eq!(t0.failure(1), None);
    assert_eq!(t1.failure(1), None);
}

#[test]
fn a_producer_dropped_without_end_of_input_closes_the_channel_after_its_messages() {
    let (t0, t1) = pair();
    // Out and in capacity: all of them are sent before the consumer takes any.
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), 3, 4);
    for i in 0..7 {
        send(&tx, batch(i, 3));
    }
    drop(tx);
    for i in 0..7 {
        assert!(same(&recv(&rx), &batch(i, 3)));
    }
    recv_disconnected(&rx);
    assert_eq!(t1.failure(1), None);
}

#[test]
fn a_dropped_consumer_disconnects_its_producer() {
    let (t0, t1) = pair();
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
    drop(rx);
    send_until_disconnected(&tx);
    assert_eq!(t0.failure(1), None);
    assert_eq!(t1.failure(1), None);
}

#[test]
fn a_lost_connection_closes_the_channels_on_both_sides() {
    // The consumer's process goes away: the producer sees Disconnected.
    let (t0, t1) = pair();
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
    drop(t1);
    send_until_disconnected(&tx);
    assert!(matches!(
        t0.failure(1),
        Some(TransportError::ConnectionLost { process: 1, .. })
    ));
    drop(rx);

    // The producer's process goes away: the consumer gets what arrived,
    // then sees Disconnected.
    let (t0, t1) = pair();
    let (tx, rx) = channel(&t0, &t1, id(2, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
    drop(t0);
    recv_disconnected(&rx);
    assert!(matches!(
        t1.failure(2),
        Some(TransportError::ConnectionLost { process: 0, .. })
    ));
    drop(tx);
}

#[test]
fn after_a_lost_connection_a_later_registration_dials_again() {
    let (t0, t1) = pair();
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
    drop(t1);
    send_until_disconnected(&tx);
    // Process 1 comes back elsewhere.
    let t1 = TcpTransport::bind(1, localhost(), [(0, t0.local_addr())]).unwrap();
    t0.set_peer(1, t1.local_addr());
    let (tx, rx) = channel(&t0, &t1, id(2, 0, 0), 2, 2);
    for i in 0..5 {
        send(&tx, batch(i, 1));
        assert!(same(&recv(&rx), &batch(i, 1)));
    }
    assert_eq!(t0.failure(2), None);
}

#[test]
fn a_peer_with_another_token_is_refused_and_the_channel_closed() {
    let t1 = TcpTransport::builder(1, localhost())
        .token(2)
        .bind()
        .unwrap();
    let t0 = TcpTransport::builder(0, localhost())
        .token(1)
        .peer(1, t1.local_addr())
        .bind()
        .unwrap();
    let tx = outbound_end(&t0, id(1, 0, 0), 1, 2);
    send_until_disconnected(&tx);
    match t0.failure(1) {
        Some(TransportError::ConnectionLost { process: 1, cause }) => {
            assert!(cause.contains("token"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn end_attempt_drops_its_channels_and_ignores_its_later_frames() {
    // Producer side: the producer sees Disconnected, the consumer too (a
    // close frame).
    let (t0, t1) = pair();
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), 2, 2);
    let (tx_other, rx_other) = channel(&t0, &t1, id(2, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
    t0.end_attempt(1);
    send_until_disconnected(&tx);
    recv_disconnected(&rx);
    // The other attempt is untouched.
    send(&tx_other, batch(1, 1));
    assert!(same(&recv(&rx_other), &batch(1, 1)));
    assert!(matches!(
        t0.register_outbound(id(1, 0, 1), 1, {
            let (_, end) = flowstate_runtime::remote::outbound::<Rec>(
                flowstate_runtime::WireCodec::new(),
                1,
                flowstate_runtime::channel::Signal::new(),
                flowstate_runtime::channel::Signal::new(),
            );
            end
        }),
        Err(TransportError::Down(_))
    ));

    // Consumer side, with a raw producer: late frames of the ended attempt
    // are ignored, the connection stays up for the next attempt.
    let t = loopback();
    let ended = id(5, 0, 0);
    let rx = inbound_end(&t, ended, 7, 2);
    let mut raw = Raw::handshake(&t, 7);
    assert_eq!(raw.read_frame(), frame(1, ended, &2u32.to_le_bytes()));
    t.end_attempt(5);
    recv_disconnected(&rx);
    // The consumer side tells the producer the channel is gone.
    assert_eq!(raw.read_frame(), frame(2, ended, &[]));
    raw.write(&frame(0, ended, &payload(&batch(0, 1))));
    raw.write(&frame(2, ended, &[]));
    let next = id(6, 0, 0);
    let rx = inbound_end(&t, next, 7, 2);
    assert_eq!(raw.read_frame(), frame(1, next, &2u32.to_le_bytes()));
    raw.write(&frame(0, next, &payload(&batch(9, 2))));
    assert!(same(&recv(&rx), &batch(9, 2)));
    assert_eq!(t.failure(5), None);
    assert_eq!(t.failure(6), None);
}

/// A registered inbound channel of process `t` fed by a raw producer
/// (process 7) that has its credit.
fn raw_producer(t: &TcpTransport, attempt: u32, capacity: usize) -> (Raw, ChannelReceiver<Rec>) {
    let ch = id(attempt, 0, 0);
    let rx = inbound_end(t, ch, 7, capacity);
    let mut raw = Raw::handshake(t, 7);
    // The credit frame, byte for byte (docs/wire-format.md §2).
    assert_eq!(
        raw.read_frame(),
        frame(1, ch, &(capacity as u32).to_le_bytes())
    );
    (raw, rx)
}

/// The transport still works after the garbage.
fn still_works(t: &TcpTransport) {
    let (tx, rx) = channel(t, t, id(99, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
}

#[test]
fn garbage_instead_of_a_handshake_is_refused() {
    let t = loopback();
    let mut raw = Raw::connect(t.local_addr());
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(raw.closed_by_peer());
    // A handshake for another process is refused with a status.
    let mut raw = Raw::connect(t.local_addr());
    raw.write(
        &Hello {
            version: VERSION,
            from: 7,
            to: 3,
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
            status: 2,
            process: 0
        }
    );
    assert!(raw.closed_by_peer());
    still_works(&t);
}

#[test]
fn a_frame_over_the_length_limit_closes_the_connection_and_its_channels() {
    let t = loopback();
    let (mut raw, rx) = raw_producer(&t, 1, 2);
    raw.write(&u32::MAX.to_le_bytes());
    assert!(raw.closed_by_peer());
    recv_disconnected(&rx);
    match t.failure(1) {
        Some(TransportError::ConnectionLost { process: 7, cause }) => {
            assert!(cause.contains("does not parse"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
    still_works(&t);
}

#[test]
fn a_frame_that_does_not_parse_closes_the_connection_and_its_channels() {
    let t = loopback();
    let (mut raw, rx) = raw_producer(&t, 1, 2);
    raw.write(&[3, 0, 0, 0, 0, 1, 2]);
    assert!(raw.closed_by_peer());
    recv_disconnected(&rx);
    match t.failure(1) {
        Some(TransportError::ConnectionLost { process: 7, cause }) => {
            assert!(cause.contains("a frame of 3 bytes"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
    // A credit frame from the producing side is a protocol error too.
    let (mut raw, rx) = raw_producer(&t, 2, 2);
    raw.write(&frame(1, id(2, 0, 0), &1u32.to_le_bytes()));
    assert!(raw.closed_by_peer());
    recv_disconnected(&rx);
    assert!(matches!(
        t.failure(2),
        Some(TransportError::ConnectionLost { process: 7, .. })
    ));
    still_works(&t);
}

#[test]
fn a_message_that_does_not_decode_fails_its_channel() {
    let t = loopback();
    let (mut raw, rx) = raw_producer(&t, 1, 2);
    let ch = id(1, 0, 0);
    raw.write(&frame(0, ch, &payload(&batch(0, 2))));
    raw.write(&frame(0, ch, &[9]));
    assert!(raw.closed_by_peer());
    // What came before the damage is delivered, then the channel is closed.
    assert!(same(&recv(&rx), &batch(0, 2)));
    recv_disconnected(&rx);
    match t.failure(1) {
        Some(TransportError::Corrupt { channel, cause }) => {
            assert_eq!(channel, ch);
            assert!(cause.contains("unknown message kind 9"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    still_works(&t);
}

#[test]
fn an_announcement_that_does_not_decode_fails_its_channel() {
    let t = loopback();
    let (mut raw, rx) = raw_producer(&t, 1, 2);
    let ch = id(1, 0, 0);
    raw.write(&frame(0, ch, &payload(&batch(0, 2))));
    // An announcement needs no credit: more of them than credit are fine.
    for _ in 0..3 {
        raw.write(&frame(4, ch, &[7, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
    // An aligned barrier is never announced.
    raw.write(&frame(4, ch, &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert!(raw.closed_by_peer());
    assert!(same(&recv(&rx), &batch(0, 2)));
    recv_disconnected(&rx);
    match t.failure(1) {
        Some(TransportError::Corrupt { channel, cause }) => {
            assert_eq!(channel, ch);
            assert!(cause.contains("an announcement"), "{cause}");
            assert!(cause.contains("aligned barrier"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    // Truncated bytes too.
    let (mut raw, rx) = raw_producer(&t, 2, 2);
    raw.write(&frame(4, id(2, 0, 0), &[7, 0, 0]));
    assert!(raw.closed_by_peer());
    recv_disconnected(&rx);
    assert!(matches!(
        t.failure(2),
        Some(TransportError::Corrupt { cause, .. }) if cause.contains("too early")
    ));
    still_works(&t);
}

#[test]
fn a_message_beyond_the_credit_fails_its_channel() {
    let t = loopback();
    let (mut raw, rx) = raw_producer(&t, 1, 2);
    let ch = id(1, 0, 0);
    for i in 0..3 {
        raw.write(&frame(0, ch, &payload(&batch(i, 1))));
    }
    assert!(raw.closed_by_peer());
    assert!(same(&recv(&rx), &batch(0, 1)));
    assert!(same(&recv(&rx), &batch(1, 1)));
    recv_disconnected(&rx);
    match t.failure(1) {
        Some(TransportError::Corrupt { channel, cause }) => {
            assert_eq!(channel, ch);
            assert!(cause.contains("beyond the credit"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn registrations_are_checked() {
    let (t0, _t1) = pair();
    let _tx = outbound_end(&t0, id(1, 0, 0), 1, 2);
    let (_, end) = flowstate_runtime::remote::outbound::<Rec>(
        flowstate_runtime::WireCodec::new(),
        1,
        flowstate_runtime::channel::Signal::new(),
        flowstate_runtime::channel::Signal::new(),
    );
    assert_eq!(
        t0.register_outbound(id(1, 0, 0), 1, end),
        Err(TransportError::Duplicate(id(1, 0, 0)))
    );
    let (_, end) = flowstate_runtime::remote::outbound::<Rec>(
        flowstate_runtime::WireCodec::new(),
        1,
        flowstate_runtime::channel::Signal::new(),
        flowstate_runtime::channel::Signal::new(),
    );
    assert_eq!(
        t0.register_outbound(id(1, 0, 1), 42, end),
        Err(TransportError::UnknownProcess(42))
    );
}

#[test]
fn a_message_over_the_frame_limit_fails_its_channel_on_the_producer_side() {
    let t1 = TcpTransport::bind(1, localhost(), []).unwrap();
    let t0 = TcpTransport::builder(0, localhost())
        .max_frame_len(100)
        .peer(1, t1.local_addr())
        .bind()
        .unwrap();
    let (tx, rx) = channel(&t0, &t1, id(1, 0, 0), 2, 2);
    send(&tx, batch(0, 1));
    assert!(same(&recv(&rx), &batch(0, 1)));
    // 20 records of about 18 bytes: over 100.
    send(&tx, batch(0, 20));
    send_until_disconnected(&tx);
    // The consumer is told the producer is gone.
    recv_disconnected(&rx);
    match t0.failure(1) {
        Some(TransportError::Corrupt { channel, cause }) => {
            assert_eq!(channel, id(1, 0, 0));
            assert!(cause.contains("frames hold at most 100"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_handshake_of_another_version_is_refused_with_ours() {
    let t = loopback();
    let mut raw = Raw::connect(t.local_addr());
    raw.write(
        &Hello {
            version: VERSION + 1,
            from: 7,
            to: 0,
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
            status: 1,
            process: 0
        }
    );
    assert!(raw.closed_by_peer());
    still_works(&t);
}
