//! [`TcpTransport`]: the runtime's [`Transport`] over TCP, with a small tokio
//! runtime of its own.
//!
//! One connection per ordered pair of processes (producer's process ->
//! consumer's process), dialed by the producer's side when it registers its
//! first channel to that peer, carries every channel between the two:
//! message and close frames one way, credit and close frames back. Each
//! connection is one task whose reader and writer run side by side; the
//! writer is woken through the channels' signals ([`Link::wake`]) and
//! batches every frame that is ready into one `write`. The writer sends a
//! heartbeat frame after `heartbeat_interval` without writing; the reader
//! declares the connection lost after `heartbeat_timeout` without reading a
//! byte (a peer that died without a FIN, a proxy or network that stopped
//! forwarding), which closes its channels as any lost connection does.
//!
//! Owns: the runtime and its tasks (listener, dialers, connections), the
//! handshake, the peers' addresses, the links, ended attempts and recorded
//! failures. Must not touch: the runtime's channels beyond the
//! `OutboundChannel`/`InboundChannel` ends it is given, or planning (which
//! channels are remote is the plan's business).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use flowstate_runtime::channel::Signal;
use flowstate_runtime::remote::{
    ChannelId, InboundChannel, OutboundChannel, Transport, TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_util::codec::Decoder;

use crate::frame::{
    DEFAULT_MAX_FRAME_LEN, Frame, FrameWriter, HELLO_LEN, Hello, REPLY_LEN, Reply, Status, VERSION,
    frame_codec,
};
use crate::link::{Conn, Context, Dir, FLUSH_AT, InSlot, Link, Loss, OutSlot, lock};

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the network runtime did not start: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "a heartbeat timeout of {timeout:?} is not longer than the heartbeat interval {interval:?}"
    )]
    Heartbeat {
        interval: Duration,
        timeout: Duration,
    },
}

/// Settings of a [`TcpTransport`]; [`TcpTransport::builder`].
#[derive(Debug, Clone)]
pub struct TcpTransportBuilder {
    process: u32,
    listen: SocketAddr,
    peers: HashMap<u32, SocketAddr>,
    token: u64,
    worker_threads: usize,
    max_frame_len: usize,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    sweep_interval: Duration,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    max_channels_per_link: usize,
    max_pending_credit: usize,
    max_links: usize,
    max_connections: usize,
}

impl TcpTransportBuilder {
    /// A peer: process `process` listens on `addr`.
    pub fn peer(mut self, process: u32, addr: SocketAddr) -> Self {
        self.peers.insert(process, addr);
        self
    }

    /// The cluster's token: connections between processes with different
    /// tokens are refused (another cluster or job). Default 0.
    pub fn token(mut self, token: u64) -> Self {
        self.token = token;
        self
    }

    /// Threads of the transport's runtime (default 1).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n.max(1);
        self
    }

    /// The longest frame read or written (default 64 MiB); a longer one read
    /// is a protocol error, a longer message to send fails its channel.
    pub fn max_frame_len(mut self, n: usize) -> Self {
        self.max_frame_len = n.clamp(crate::frame::HEADER_LEN + 4, u32::MAX as usize);
        self
    }

    /// How long a dial may take, retries included (default 10 s); then the
    /// channels waiting for it are closed.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How often every channel is looked at even if none woke the
    /// transport (default 100 ms): a producer dropped without a last message
    /// wakes nobody, the sweep finds its channel closed.
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.sweep_interval = d.max(Duration::from_millis(1));
        self
    }

    /// How long a side of a connection may write nothing before it sends a
    /// heartbeat frame (default 1 s; at least 1 ms).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d.max(Duration::from_millis(1));
        self
    }

    /// How long a side of a connection may read nothing (no frame, not even
    /// a heartbeat) before it declares the connection lost (default 5 s;
    /// must be longer than the heartbeat interval, or [`bind`] refuses):
    /// its channels close and their attempts fail with
    /// `TransportError::ConnectionLost`, as when the connection drops.
    ///
    /// [`bind`]: TcpTransportBuilder::bind
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }

    /// Binds the listener and starts the runtime.
    pub fn bind(self) -> Result<TcpTransport, NetworkError> {
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(NetworkError::Heartbeat {
                interval: self.heartbeat_interval,
                timeout: self.heartbeat_timeout,
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.worker_threads)
            .thread_name(format!("flowstate-net-{}", self.process))
            .enable_io()
            .enable_time()
            .build()
            .map_err(NetworkError::Runtime)?;
        let listen = self.listen;
        let listener = runtime
            .block_on(async { TcpListener::bind(listen).await })
            .map_err(|source| NetworkError::Listen {
                addr: listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| NetworkError::Listen {
                addr: listen,
                source,
            })?;
        // A process is its own peer at its listener unless told otherwise.
        let mut peers = self.peers.clone();
        let mut own = local_addr;
        if own.ip().is_unspecified() {
            own.set_ip(match own {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        peers.entry(self.process).or_insert(own);
        let shared = Arc::new(Shared {
            process: AtomicU32::new(self.process),
            handle: runtime.handle().clone(),
            peers: Mutex::new(peers),
            links: Mutex::new(HashMap::new()),
            ended: Mutex::new(BTreeSet::new()),
            failures: Mutex::new(BTreeMap::new()),
            next_generation: AtomicU64::new(1),
            accepted: AtomicUsize::new(0),
            sent: Counters::default(),
            received: Counters::default(),
            settings: self,
        });
        runtime.spawn(accept_loop(shared.clone(), listener));
        tracing::debug!(
            "process {}: transport listening on {local_addr}",
            shared.process()
        );
        Ok(TcpTransport {
            shared,
            local_addr,
            runtime: Some(runtime),
        })
    }
}

/// Ended attempts and failures remembered at most (the oldest are forgotten).
const REMEMBERED_ATTEMPTS: usize = 4096;

struct Shared {
    /// This process's index: set at bind, or later when a task manager
    /// learns it at registration ([`TcpTransport::set_process`]).
    process: AtomicU32,
    settings: TcpTransportBuilder,
    handle: Handle,
    peers: Mutex<HashMap<u32, SocketAddr>>,
    links: Mutex<HashMap<(Dir, u32), Arc<Link>>>,
    ended: Mutex<BTreeSet<u32>>,
    failures: Mutex<BTreeMap<u32, TransportError>>,
    next_generation: AtomicU64,
    /// Accepted connections alive (bounded by `max_connections`).
    accepted: AtomicUsize,
    sent: Counters,
    received: Counters,
}

/// Messages and their bytes, counted since the transport started.
#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
    announcements: AtomicU64,
}

/// What a transport has moved since it started: channel messages (batches,
/// barriers, watermarks, ends of input) and their bytes (sent: whole frames;
/// received: message payloads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    /// Announce frames (notices of unaligned barriers, outside credit):
    /// not counted as messages or in the bytes above.
    pub announcements_sent: u64,
    pub announcements_received: u64,
}

impl Context for Shared {
    fn is_ended(&self, attempt: u32) -> bool {
        lock(&self.ended).contains(&attempt)
    }

    fn fail(&self, attempt: u32, error: TransportError) {
        let mut failures = lock(&self.failures);
        if failures.contains_key(&attempt) {
            return;
        }
        tracing::warn!("process {}: attempt {attempt}: {error}", self.process());
        failures.insert(attempt, error);
        while failures.len() > REMEMBERED_ATTEMPTS {
            failures.pop_first();
        }
    }

    fn max_frame_len(&self) -> usize {
        self.settings.max_frame_len
    }

    fn count_sent(&self, bytes: usize) {
        self.sent.messages.fetch_add(1, Ordering::Relaxed);
        self.sent.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_received(&self, bytes: usize) {
        self.received.messages.fetch_add(1, Ordering::Relaxed);
        self.received
            .bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_announcement_sent(&self) {
        self.sent.announcements.fetch_add(1, Ordering::Relaxed);
    }

    fn count_announcement_received(&self) {
        self.received.announcements.fetch_add(1, Ordering::Relaxed);
    }

    fn max_pending_credit(&self) -> usize {
        self.settings.max_pending_credit
    }
}

impl Shared {
    fn process(&self) -> u32 {
        self.process.load(Ordering::Relaxed)
    }

    fn link(&self, dir: Dir, peer: u32) -> Result<Arc<Link>, TransportError> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(&(dir, peer)) {
            return Ok(link.clone());
        }
        if links.len() >= self.settings.max_links {
            return Err(TransportError::Down(format!(
                "links with more than {} processes",
                self.settings.max_links / 2
            )));
        }
        let link = Arc::new(Link::new(dir, peer));
        links.insert((dir, peer), link.clone());
        Ok(link)
    }

    fn all_links(&self) -> Vec<Arc<Link>> {
        lock(&self.links).values().cloned().collect()
    }

    /// Makes `stream` the connection of `link` (replacing one that is up:
    /// its channels are closed) and starts its task.
    fn attach(self: &Arc<Self>, link: &Arc<Link>, stream: TcpStream, guard: Option<AcceptGuard>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut state = link.state();
        if let Some(old) = state.conn.take() {
            old.task.abort();
            state.drop_generation(
                old.generation,
                &Loss::Io("replaced by a new connection from the same process".into()),
                link.peer,
                &**self,
            );
        }
        state.dialing = false;
        let woken = state.attach(generation);
        let task = self
            .handle
            .spawn(run_connection(
                self.clone(),
                link.clone(),
                generation,
                stream,
                guard,
            ))
            .abort_handle();
        state.conn = Some(Conn { generation, task });
        drop(state);
        tracing::debug!(
            "process {}: connection {generation} {:?} process {} up",
            self.process(),
            link.dir,
            link.peer
        );
        for id in woken {
            link.wake(id);
        }
    }

    /// Connection `generation` of `link` ended: its channels are closed.
    fn lose(&self, link: &Link, generation: u64, loss: Loss) {
        let mut state = link.state();
        if Link::generation(&state) != Some(generation) {
            return;
        }
        state.conn = None;
        tracing::debug!(
            "process {}: connection {generation} {:?} process {} ended: {loss:?}",
            self.process(),
            link.dir,
            link.peer
        );
        state.drop_generation(generation, &loss, link.peer, self);
    }

    /// The dial of `link` failed: the channels waiting for it are closed.
    fn dial_failed(&self, link: &Link, cause: String) {
        let mut state = link.state();
        state.dialing = false;
        if state.conn.is_some() {
            return;
        }
        tracing::warn!(
            "process {}: cannot connect to process {}: {cause}",
            self.process(),
            link.peer
        );
        state.drop_generation(0, &Loss::Io(cause), link.peer, self);
    }
}

/// The TCP transport of one process.
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("process", &self.shared.process())
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl TcpTransport {
    /// Settings for process `process` listening on `listen` (port 0: any).
    pub fn builder(process: u32, listen: SocketAddr) -> TcpTransportBuilder {
        TcpTransportBuilder {
            process,
            listen,
            peers: HashMap::new(),
            token: 0,
            worker_threads: 1,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_millis(100),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            max_channels_per_link: 1 << 16,
            max_pending_credit: 1 << 16,
            max_links: 4096,
            max_connections: 1024,
        }
    }

    /// The transport of process `process` listening on `listen`, with
    /// default settings and `peers` (more with [`TcpTransport::set_peer`]).
    /// The process itself is a peer at its own listener unless `peers` says
    /// otherwise (channels to itself cross a real TCP connection).
    pub fn bind(
        process: u32,
        listen: SocketAddr,
        peers: impl IntoIterator<Item = (u32, SocketAddr)>,
    ) -> Result<Self, NetworkError> {
        let mut builder = Self::builder(process, listen);
        builder.peers.extend(peers);
        builder.bind()
    }

    /// Where this transport listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn process(&self) -> u32 {
        self.shared.process()
    }

    /// What this transport has moved since it started.
    pub fn stats(&self) -> NetworkStats {
        let (sent, received) = (&self.shared.sent, &self.shared.received);
        NetworkStats {
            messages_sent: sent.messages.load(Ordering::Relaxed),
            bytes_sent: sent.bytes.load(Ordering::Relaxed),
            messages_received: received.messages.load(Ordering::Relaxed),
            bytes_received: received.bytes.load(Ordering::Relaxed),
            announcements_sent: sent.announcements.load(Ordering::Relaxed),
            announcements_received: received.announcements.load(Ordering::Relaxed),
        }
    }

    /// This transport is process `process` from now on (a task manager learns
    /// its index when the job manager admits it, after binding): connections
    /// made from now on say so, and the process is its own peer under it.
    /// Call it before registering channels.
    pub fn set_process(&self, process: u32) {
        let old = self.shared.process.swap(process, Ordering::SeqCst);
        let mut peers = lock(&self.shared.peers);
        if let Some(own) = peers.get(&old).copied()
            && own == self.own_addr()
        {
            peers.remove(&old);
            peers.insert(process, own);
        }
    }

    /// The address this process reaches its own listener at.
    fn own_addr(&self) -> SocketAddr {
        let mut own = self.local_addr;
        if own.ip().is_unspecified() {
            own.set_ip(match own {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        own
    }

    /// Process `process` listens on `addr` (learned at registration); used by
    /// the next dial to it.
    pub fn set_peer(&self, process: u32, addr: SocketAddr) {
        lock(&self.shared.peers).insert(process, addr);
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for link in self.shared.all_links() {
            let mut state = link.state();
            if let Some(conn) = state.conn.take() {
                conn.task.abort();
            }
            // Dropping the ends: producers and consumers see Disconnected.
            state.out.clear();
            state.inb.clear();
            state.pending.clear();
            state.control.clear();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How many messages an inbound channel of `capacity` takes per credit
/// announcement: a quarter of it (at most half, so a producer that spent all
/// its credit always gets more), at least 1. Fewer wakes of the writer and
/// credit frames than one per message, as TCP delays window updates.
fn credit_batch(capacity: usize) -> usize {
    (capacity / 4).clamp(1, 64)
}

impl Transport for TcpTransport {
    fn outbound_signal(
        &self,
        id: ChannelId,
        consumer_process: u32,
    ) -> Result<Arc<Signal>, TransportError> {
        let out = self.shared.link(Dir::Out, consumer_process)?;
        Ok(Signal::with_callback(move || out.wake(id)))
    }

    fn inbound_signal(
        &self,
        id: ChannelId,
        producer_process: u32,
        capacity: usize,
    ) -> Result<Arc<Signal>, TransportError> {
        let inb = self.shared.link(Dir::In, producer_process)?;
        // Credit in batches: one wake (and one credit frame) per `every`
        // messages taken, not per message. A producer without credit has
        // `capacity` messages outstanding, whose taking wakes at least once.
        let every = credit_batch(capacity);
        let taken = AtomicUsize::new(0);
        Ok(Signal::with_callback(move || {
            if (taken.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every) {
                inb.wake(id);
            }
        }))
    }

    fn register_outbound(
        &self,
        id: ChannelId,
        consumer_process: u32,
        channel: Box<dyn OutboundChannel>,
    ) -> Result<(), TransportError> {
        let shared = &self.shared;
        if !lock(&shared.peers).contains_key(&consumer_process) {
            return Err(TransportError::UnknownProcess(consumer_process));
        }
        if shared.is_ended(id.attempt) {
            return Err(TransportError::Down(format!(
                "attempt {} has ended",
                id.attempt
            )));
        }
        let link = shared.link(Dir::Out, consumer_process)?;
        let mut state = link.state();
        if state.out.contains_key(&id) {
            return Err(TransportError::Duplicate(id));
        }
        if state.out.len() >= shared.settings.max_channels_per_link {
            return Err(TransportError::Down(format!(
                "more than {} channels to process {consumer_process}",
                shared.settings.max_channels_per_link
            )));
        }
        let pending = state.pending.remove(&id).unwrap_or_default();
        if pending.closed {
            // The consumer is gone already: drop the end (the producer sees
            // Disconnected).
            return Ok(());
        }
        let generation = Link::generation(&state).unwrap_or(0);
        state.out.insert(
            id,
            OutSlot {
                ch: channel,
                credit: pending.credit,
                generation,
            },
        );
        if state.conn.is_none() && !state.dialing {
            state.dialing = true;
            shared.handle.spawn(dial(shared.clone(), link.clone()));
        }
        drop(state);
        link.wake(id);
        Ok(())
    }

    fn register_inbound(
        &self,
        id: ChannelId,
        producer_process: u32,
        channel: Box<dyn InboundChannel>,
    ) -> Result<(), TransportError> {
        let shared = &self.shared;
        if shared.is_ended(id.attempt) {
            return Err(TransportError::Down(format!(
                "attempt {} has ended",
                id.attempt
            )));
        }
        let link = shared.link(Dir::In, producer_process)?;
        let mut state = link.state();
        if state.inb.contains_key(&id) {
            return Err(TransportError::Duplicate(id));
        }
        if state.inb.len() >= shared.settings.max_channels_per_link {
            return Err(TransportError::Down(format!(
                "more than {} channels from process {producer_process}",
                shared.settings.max_channels_per_link
            )));
        }
        // Attached to the connection that is up, or to the next one the
        // producer's process dials; its credit is announced then.
        let generation = Link::generation(&state).unwrap_or(0);
        state.inb.insert(
            id,
            InSlot {
                ch: channel,
                announced: 0,
                generation,
            },
        );
        drop(state);
        link.wake(id);
        Ok(())
    }

    fn end_attempt(&self, attempt: u32) {
        {
            let mut ended = lock(&self.shared.ended);
            ended.insert(attempt);
            while ended.len() > REMEMBERED_ATTEMPTS {
                ended.pop_first();
            }
        }
        for link in self.shared.all_links() {
            let queued = link.state().end_attempt(attempt);
            if queued {
                link.notify.notify_one();
            }
        }
    }

    fn failure(&self, attempt: u32) -> Option<TransportError> {
        lock(&self.shared.failures).get(&attempt).cloned()
    }
}

/// Counts an accepted connection while it lives.
struct AcceptGuard(Arc<Shared>);

impl Drop for AcceptGuard {
    fn drop(&mut self) {
        self.0.accepted.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if shared.accepted.fetch_add(1, Ordering::Relaxed)
                    >= shared.settings.max_connections
                {
                    shared.accepted.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(
                        "process {}: refused a connection from {addr}: {} connections open",
                        shared.process(),
                        shared.settings.max_connections
                    );
                    continue;
                }
                let guard = AcceptGuard(shared.clone());
                tokio::spawn(accept(shared.clone(), stream, addr, guard));
            }
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!("process {}: accept failed: {e}", shared.process());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The acceptor's side of the handshake, then the connection.
async fn accept(shared: Arc<Shared>, mut stream: TcpStream, addr: SocketAddr, guard: AcceptGuard) {
    let _ = stream.set_nodelay(true);
    let mut bytes = [0; HELLO_LEN];
    match tokio::time::timeout(
        shared.settings.handshake_timeout,
        stream.read_exact(&mut bytes),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(
                "process {}: a connection from {addr} closed in its handshake: {e}",
                shared.process()
            );
            return;
        }
        Err(_) => {
            tracing::warn!("process {}: no handshake from {addr}", shared.process());
            return;
        }
    }
    let hello = match Hello::decode(&bytes) {
        Ok(hello) => hello,
        Err(e) => {
            tracing::warn!(
                "process {}: refused a connection from {addr}: {e}",
                shared.process()
            );
            return;
        }
    };
    let status = if hello.version != VERSION {
        Status::Version
    } else if hello.to != shared.process() {
        Status::WrongProcess
    } else if hello.token != shared.settings.token {
        Status::WrongToken
    } else {
        Status::Accepted
    };
    let reply = Reply {
        version: VERSION,
        status: status as u8,
        process: shared.process(),
    };
    if status != Status::Accepted {
        tracing::warn!(
            "process {}: refused a connection from {addr} (process {}, version {}): {status:?}",
            shared.process(),
            hello.from,
            hello.version
        );
        let _ = stream.write_all(&reply.encode()).await;
        return;
    }
    let link = match shared.link(Dir::In, hello.from) {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(
                "process {}: refused a connection from {addr}: {e}",
                shared.process()
            );
            return;
        }
    };
    if let Err(e) = stream.write_all(&reply.encode()).await {
        tracing::debug!(
            "process {}: a connection from {addr} closed in its handshake: {e}",
            shared.process()
        );
        return;
    }
    shared.attach(&link, stream, Some(guard));
}

/// Dials the peer of `link` (retrying until the connect timeout), then
/// attaches the connection.
async fn dial(shared: Arc<Shared>, link: Arc<Link>) {
    let peer = link.peer;
    let Some(addr) = lock(&shared.peers).get(&peer).copied() else {
        shared.dial_failed(&link, format!("no address for process {peer}"));
        return;
    };
    let result = tokio::time::timeout(shared.settings.connect_timeout, async {
        let mut backoff = Duration::from_millis(5);
        let mut stream = loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(e) => {
                    tracing::debug!(
                        "process {}: connect to {addr}: {e}; retrying",
                        shared.process()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let hello = Hello {
            version: VERSION,
            from: shared.process(),
            to: peer,
            token: shared.settings.token,
        };
        stream
            .write_all(&hello.encode())
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        let mut bytes = [0; REPLY_LEN];
        stream
            .read_exact(&mut bytes)
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        let reply = Reply::decode(&bytes).map_err(|e| format!("handshake with {addr}: {e}"))?;
        if reply.status != Status::Accepted as u8 {
            let why = match reply.status {
                s if s == Status::Version as u8 => {
                    format!(
                        "it speaks protocol version {}, not {VERSION}",
                        reply.version
                    )
                }
                s if s == Status::WrongProcess as u8 => {
                    format!("it is process {}, not {peer}", reply.process)
                }
                s if s == Status::WrongToken as u8 => {
                    "it belongs to another cluster (token mismatch)".to_owned()
                }
                other => format!("status {other}"),
            };
            return Err(format!("{addr} refused the connection: {why}"));
        }
        if reply.process != peer {
            return Err(format!("{addr} is process {}, not {peer}", reply.process));
        }
        Ok(stream)
    })
    .await;
    match result {
        Ok(Ok(stream)) => shared.attach(&link, stream, None),
        Ok(Err(cause)) => shared.dial_failed(&link, cause),
        Err(_) => shared.dial_failed(
            &link,
            format!(
                "no connection to {addr} within {:?}",
                shared.settings.connect_timeout
            ),
        ),
    }
}

/// One connection: its reader and writer side by side until either ends;
/// then its channels are closed.
async fn run_connection(
    shared: Arc<Shared>,
    link: Arc<Link>,
    generation: u64,
    stream: TcpStream,
    _guard: Option<AcceptGuard>,
) {
    let (rd, wr) = stream.into_split();
    let loss = tokio::select! {
        loss = read_loop(&shared, &link, generation, rd) => loss,
        loss = write_loop(&shared, &link, generation, wr) => loss,
    };
    shared.lose(&link, generation, loss);
}

/// Frames handled under one lock of the link at most.
const FRAMES_PER_LOCK: usize = 256;
/// The read buffer is topped up to this much free room before a read.
const READ_CHUNK: usize = 256 << 10;

async fn read_loop(shared: &Shared, link: &Link, generation: u64, mut rd: OwnedReadHalf) -> Loss {
    let mut codec = frame_codec(shared.settings.max_frame_len);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut frames = Vec::with_capacity(FRAMES_PER_LOCK);
    let mut woken = Vec::new();
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    frames.push(frame);
                    if frames.len() == FRAMES_PER_LOCK {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Loss::Protocol(format!(
                        "a frame that does not parse (frames hold at most {} bytes): {e}",
                        shared.settings.max_frame_len
                    ));
                }
            }
        }
        if !frames.is_empty() {
            {
                let mut state = link.state();
                for bytes in &frames {
                    let frame = match Frame::parse(bytes) {
                        Ok(frame) => frame,
                        Err(e) => {
                            return Loss::Protocol(format!("a frame that does not parse: {e}"));
                        }
                    };
                    if let Err(loss) =
                        state.on_frame(link.dir, generation, frame, &mut woken, shared)
                    {
                        return loss;
                    }
                }
            }
            frames.clear();
            for id in woken.drain(..) {
                link.wake(id);
            }
            continue;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let timeout = shared.settings.heartbeat_timeout;
        match tokio::time::timeout(timeout, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Loss::Io("the connection was closed".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Loss::Io(e.to_string()),
            Err(_) => {
                return Loss::Io(format!(
                    "nothing read from process {} for {timeout:?}, not even a heartbeat \
                     (heartbeat timeout): the connection stalled",
                    link.peer
                ));
            }
        }
    }
}

async fn write_loop(shared: &Shared, link: &Link, generation: u64, mut wr: OwnedWriteHalf) -> Loss {
    let mut w = FrameWriter::with_capacity(FLUSH_AT + (64 << 10));
    let mut sweep = tokio::time::interval(shared.settings.sweep_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all = true;
    let interval = shared.settings.heartbeat_interval;
    let mut last_write = tokio::time::Instant::now();
    loop {
        let again = {
            let ready: HashSet<ChannelId> = link.take_ready();
            let mut state = link.state();
            if Link::generation(&state) != Some(generation) {
                return Loss::Io("superseded".into());
            }
            state.fill(link.dir, generation, &ready, all, &mut w, shared)
        };
        all = false;
        if w.is_empty() && last_write.elapsed() >= interval {
            // Nothing else written for a while: tell the peer we are alive.
            w.heartbeat();
        }
        if !w.is_empty() {
            if let Err(e) = wr.write_all(&w.buf).await {
                return Loss::Io(e.to_string());
            }
            w.clear();
            last_write = tokio::time::Instant::now();
        }
        if !again.is_empty() {
            for id in again {
                link.wake(id);
            }
            continue;
        }
        tokio::select! {
            _ = link.notify.notified() => {}
            _ = sweep.tick() => all = true,
            _ = tokio::time::sleep_until(last_write + interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::credit_batch;

    #[test]
    fn credit_batches_leave_a_producer_without_credit_able_to_get_more() {
        for capacity in 1..=1024 {
            let every = credit_batch(capacity);
            assert!(every >= 1);
            // The `capacity` messages outstanding of a producer with no
            // credit left wake the writer at least once when taken.
            assert!(every <= capacity.div_ceil(2).max(1), "capacity {capacity}");
        }
        assert_eq!(credit_batch(16), 4);
    }
}
