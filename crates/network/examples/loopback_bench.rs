//! Throughput of one remote channel through a transport that is its own
//! peer (real TCP over loopback): a producer thread sends batches of
//! `(u64, u64)` records, a consumer thread takes them; the transport's
//! runtime encodes, frames, writes, reads and decodes in between.
//!
//! `cargo run --release -p flowstate-network --example loopback_bench --
//! [records] [batch] [capacity] [network threads] [local|pair]`
//! (defaults 50000000 1024 16 1; `local`: the same through a plain local
//! channel, no transport, for comparison; `pair`: two transports, process 0
//! to process 1, each with its own runtime, as two processes would be).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_network::TcpTransport;
use flowstate_runtime::WireCodec;
use flowstate_runtime::channel::{ChannelReceiver, ChannelSender, SendError, Signal, channel};
use flowstate_runtime::message::Message;
use flowstate_runtime::remote::{ChannelId, Transport, inbound, outbound};

type Rec = (u64, u64);

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds of this process so far (Linux: /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn produce(tx: ChannelSender<Rec>, signal: Arc<Signal>, records: u64, batch: u64) {
    signal.bind_current();
    let mut next = 0u64;
    while next < records {
        let n = batch.min(records - next);
        let mut message = Message::Batch((next..next + n).map(|i| (i, i & 1023)).collect());
        loop {
            match tx.try_send(message) {
                Ok(()) => break,
                Err(SendError::Full(m)) => {
                    message = m;
                    std::thread::park_timeout(Duration::from_millis(10));
                }
                Err(SendError::Disconnected) => panic!("consumer gone"),
            }
        }
        next += n;
    }
    let mut message = Message::EndOfInput;
    loop {
        match tx.try_send(message) {
            Ok(()) => break,
            Err(SendError::Full(m)) => {
                message = m;
                std::thread::park_timeout(Duration::from_millis(10));
            }
            Err(SendError::Disconnected) => panic!("consumer gone"),
        }
    }
}

fn consume(rx: ChannelReceiver<Rec>, signal: Arc<Signal>) -> (u64, u64) {
    signal.bind_current();
    let (mut count, mut sum) = (0u64, 0u64);
    loop {
        match rx.try_recv() {
            Ok(Some(Message::Batch(records))) => {
                count += records.len() as u64;
                for (a, b) in records {
                    sum = sum.wrapping_add(a ^ b);
                }
            }
            Ok(Some(Message::EndOfInput)) => return (count, sum),
            Ok(Some(_)) => {}
            Ok(None) => std::thread::park_timeout(Duration::from_millis(10)),
            Err(_) => panic!("producer gone before the end of input"),
        }
    }
}

fn main() {
    let records = arg(1, 50_000_000);
    let batch = arg(2, 1024).max(1);
    let capacity = arg(3, 16).max(1) as usize;
    let threads = arg(4, 1).max(1) as usize;
    let mode = std::env::args().nth(5).unwrap_or_default();
    let local = mode == "local";
    let pair = mode == "pair";

    let producer_signal = Signal::new();
    let consumer_signal = Signal::new();
    let mut transport = None;
    let mut consumer_transport = None;
    let (tx, rx) = if local {
        channel(capacity, producer_signal.clone(), consumer_signal.clone())
    } else {
        let t = TcpTransport::builder(0, "127.0.0.1:0".parse().unwrap())
            .worker_threads(threads)
            .bind()
            .expect("bind");
        let c = if pair {
            let c = TcpTransport::builder(1, "127.0.0.1:0".parse().unwrap())
                .worker_threads(threads)
                .bind()
                .expect("bind");
            t.set_peer(1, c.local_addr());
            Some(c)
        } else {
            None
        };
        let (consumer_t, consumer_process) = match &c {
            Some(c) => (c, 1),
            None => (&t, 0),
        };
        let id = ChannelId {
            attempt: 1,
            node: 1,
            edge: 0,
            producer: 0,
            consumer: 0,
        };
        let codec = WireCodec::<Rec>::new();
        let (in_end, rx) = inbound(
            codec,
            capacity,
            consumer_t.inbound_signal(id, 0, capacity).unwrap(),
            consumer_signal.clone(),
        );
        consumer_t.register_inbound(id, 0, in_end).unwrap();
        let (tx, out_end) = outbound(
            codec,
            capacity,
            producer_signal.clone(),
            t.outbound_signal(id, consumer_process).unwrap(),
        );
        t.register_outbound(id, consumer_process, out_end).unwrap();
        transport = Some(t);
        consumer_transport = c;
        (tx, rx)
    };

    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let producer = std::thread::spawn(move || produce(tx, producer_signal, records, batch));
    let consumer = std::thread::spawn(move || consume(rx, consumer_signal));
    let (count, sum) = consumer.join().expect("consumer");
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    producer.join().expect("producer");
    assert_eq!(count, records, "records lost");
    if let Some(t) = &transport {
        assert_eq!(t.failure(1), None);
    }
    let payload_mb = (records * 16) as f64 / 1e6;
    println!(
        "mode={} records={records} batch={batch} capacity={capacity} threads={threads} \
         secs={secs:.3} records/s={:.0} MB/s={:.1} cpu_s={cpu:.2} records/cpu-s={:.0} checksum={sum:x}",
        if local {
            "local"
        } else if pair {
            "tcp-pair"
        } else {
            "tcp-loopback"
        },
        records as f64 / secs,
        payload_mb / secs,
        records as f64 / cpu.max(1e-9),
    );
    drop(transport);
    drop(consumer_transport);
}
