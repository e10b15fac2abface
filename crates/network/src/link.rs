//! What the transport knows about one peer in one direction, whatever
//! connection is up: the channels registered for it, credit, the channels
//! woken since the writer last looked, and the current connection.
//!
//! A [`Link`] is `Out` (this process produces, the peer consumes: we dial,
//! send messages and close frames, read credit and close frames) or `In` (the
//! peer produces: it dials us, we read messages and close frames, send credit
//! and close frames). A process that is its own peer has both, over one real
//! TCP connection. Links live as long as the transport; connections come and
//! go under them, each numbered by a *generation*: a channel is attached to
//! the connection that was up when it registered (or the next one), and is
//! closed when that connection is lost.
//!
//! Owns: the per-link channel tables, credit accounting (what an `In` link
//! announced and has not yet received, what an `Out` link may still send,
//! credit kept for channels not registered yet), and turning frames into
//! effects on channels ([`LinkState::on_frame`]) and channels into frames
//! ([`LinkState::fill`]). Must not touch: sockets or tasks (`transport`), or
//! the bytes of frames (`frame`).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use flowstate_runtime::remote::{
    ChannelId, DeliverError, InboundChannel, OutboundChannel, Outgoing, TransportError,
};
use tokio::sync::Notify;

use crate::frame::{Frame, FrameKind, FrameWriter};

/// Which way a link's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dir {
    /// We produce, the peer consumes.
    Out,
    /// The peer produces, we consume.
    In,
}

/// Why a connection ended.
#[derive(Debug, Clone)]
pub(crate) enum Loss {
    /// The socket failed or the peer closed it.
    Io(String),
    /// The peer broke the protocol; not specific to one channel.
    Protocol(String),
    /// Bytes for one channel that are not what the protocol allows.
    Corrupt { channel: ChannelId, cause: String },
}

impl Loss {
    /// The error recorded for `attempt`, one of whose channels the loss of a
    /// connection with `peer` closed.
    pub(crate) fn error_for(&self, attempt: u32, peer: u32) -> TransportError {
        match self {
            Loss::Corrupt { channel, cause } if channel.attempt == attempt => {
                TransportError::Corrupt {
                    channel: *channel,
                    cause: cause.clone(),
                }
            }
            Loss::Corrupt { channel, cause } => TransportError::ConnectionLost {
                process: peer,
                cause: format!("closed after damaged bytes on channel {channel}: {cause}"),
            },
            Loss::Io(cause) => TransportError::ConnectionLost {
                process: peer,
                cause: cause.clone(),
            },
            Loss::Protocol(cause) => TransportError::ConnectionLost {
                process: peer,
                cause: format!("a protocol error: {cause}"),
            },
        }
    }
}

/// A producer's end, on an `Out` link.
pub(crate) struct OutSlot {
    pub ch: Box<dyn OutboundChannel>,
    /// Messages the consumer's side has room for and we have not sent.
    pub credit: u32,
    /// The connection the channel is attached to (0: none yet).
    pub generation: u64,
}

/// A consumer's end, on an `In` link.
pub(crate) struct InSlot {
    pub ch: Box<dyn InboundChannel>,
    /// Credit announced and not yet used by a message.
    pub announced: usize,
    pub generation: u64,
}

/// What an `Out` link heard about a channel before it was registered.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pending {
    pub credit: u32,
    /// The consumer is gone already.
    pub closed: bool,
}

/// The current connection of a link.
pub(crate) struct Conn {
    pub generation: u64,
    pub task: tokio::task::AbortHandle,
}

/// Limits, and what the transport's shared state answers for a link.
pub(crate) trait Context {
    fn is_ended(&self, attempt: u32) -> bool;
    fn fail(&self, attempt: u32, error: TransportError);
    fn max_frame_len(&self) -> usize;
    fn max_pending_credit(&self) -> usize;
    /// A message of `bytes` (its frame) was written / read.
    fn count_sent(&self, _bytes: usize) {}
    fn count_received(&self, _bytes: usize) {}
    /// An announce frame was written / read.
    fn count_announcement_sent(&self) {}
    fn count_announcement_received(&self) {}
}

pub(crate) struct Link {
    pub dir: Dir,
    pub peer: u32,
    /// Channels woken since the writer last looked (a leaf lock: the
    /// channels' signals take it, from any thread).
    ready: Mutex<HashSet<ChannelId>>,
    /// Wakes the writer of the current connection (keeps a permit: no wakeup
    /// is lost between the writer's look and its wait).
    pub notify: Notify,
    pub state: Mutex<LinkState>,
}

#[derive(Default)]
pub(crate) struct LinkState {
    pub conn: Option<Conn>,
    /// A dial is under way (`Out` links).
    pub dialing: bool,
    pub out: HashMap<ChannelId, OutSlot>,
    pub inb: HashMap<ChannelId, InSlot>,
    pub pending: HashMap<ChannelId, Pending>,
    /// Close frames to send on the current connection.
    pub control: Vec<ChannelId>,
}

/// Locks `mutex`, also when another thread panicked holding it (the state
/// stays consistent between statements that do not panic).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Frames the writer buffers before it writes (then it goes on).
pub(crate) const FLUSH_AT: usize = 256 << 10;

impl Link {
    pub(crate) fn new(dir: Dir, peer: u32) -> Self {
        Self {
            dir,
            peer,
            ready: Mutex::new(HashSet::new()),
            notify: Notify::new(),
            state: Mutex::new(LinkState::default()),
        }
    }

    /// Marks `id` ready and wakes the writer: the channel's signal (cheap, never
    /// blocks on I/O).
    pub(crate) fn wake(&self, id: ChannelId) {
        lock(&self.ready).insert(id);
        self.notify.notify_one();
    }

    pub(crate) fn take_ready(&self) -> HashSet<ChannelId> {
        std::mem::take(&mut *lock(&self.ready))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, LinkState> {
        lock(&self.state)
    }

    /// The generation of the current connection, if one is up.
    pub(crate) fn generation(state: &LinkState) -> Option<u64> {
        state.conn.as_ref().map(|c| c.generation)
    }
}

impl LinkState {
    /// Detaches the channels of connection `generation` (it is lost): drops
    /// them after recording `loss` for their attempts, and forgets what was
    /// pending on it.
    pub(crate) fn drop_generation(
        &mut self,
        generation: u64,
        loss: &Loss,
        peer: u32,
        ctx: &dyn Context,
    ) {
        // The failure is recorded before any end is dropped: whoever sees
        // its channel closed finds why in `failure(attempt)`.
        let out: Vec<ChannelId> = (self.out.iter())
            .filter(|(_, s)| s.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        let inb: Vec<ChannelId> = (self.inb.iter())
            .filter(|(_, s)| s.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        if let Loss::Corrupt { channel, .. } = loss {
            ctx.fail(channel.attempt, loss.error_for(channel.attempt, peer));
        }
        let mut attempts: Vec<u32> = out.iter().chain(&inb).map(|id| id.attempt).collect();
        attempts.sort_unstable();
        attempts.dedup();
        for attempt in attempts {
            ctx.fail(attempt, loss.error_for(attempt, peer));
        }
        for id in out {
            self.out.remove(&id);
        }
        for id in inb {
            self.inb.remove(&id);
        }
        self.pending.clear();
        self.control.clear();
    }

    /// Attaches every channel waiting for a connection to `generation`.
    pub(crate) fn attach(&mut self, generation: u64) -> Vec<ChannelId> {
        let mut woken = Vec::new();
        for (id, slot) in &mut self.out {
            if slot.generation == 0 {
                slot.generation = generation;
                woken.push(*id);
            }
        }
        for (id, slot) in &mut self.inb {
            if slot.generation == 0 {
                slot.generation = generation;
                woken.push(*id);
            }
        }
        woken
    }

    /// Drops every channel of `attempt`; returns whether close frames were
    /// queued for the peer.
    pub(crate) fn end_attempt(&mut self, attempt: u32) -> bool {
        let current = Link::generation(self);
        let control = &mut self.control;
        let mut queued = false;
        self.out.retain(|id, slot| {
            let keep = id.attempt != attempt;
            if !keep && Some(slot.generation) == current {
                control.push(*id);
                queued = true;
            }
            keep
        });
        self.inb.retain(|id, slot| {
            let keep = id.attempt != attempt;
            if !keep && Some(slot.generation) == current {
                control.push(*id);
                queued = true;
            }
            keep
        });
        self.pending.retain(|id, _| id.attempt != attempt);
        queued
    }

    /// Applies one frame read from connection `generation` of a `dir` link;
    /// returns the channels whose writer-side work it created (credit to
    /// use), or the loss that must end the connection.
    pub(crate) fn on_frame(
        &mut self,
        dir: Dir,
        generation: u64,
        frame: Frame<'_>,
        woken: &mut Vec<ChannelId>,
        ctx: &dyn Context,
    ) -> Result<(), Loss> {
        match (dir, frame) {
            (Dir::In, Frame::Message { channel, payload }) => {
                let Some(slot) = self
                    .inb
                    .get_mut(&channel)
                    .filter(|s| s.generation == generation)
                else {
                    tracing::trace!("dropped a message for channel {channel}: not registered");
                    return Ok(());
                };
                if slot.announced == 0 {
                    return Err(Loss::Corrupt {
                        channel,
                        cause: DeliverError::NoCredit.to_string(),
                    });
                }
                slot.announced -= 1;
                ctx.count_received(payload.len());
                match slot.ch.deliver(payload) {
                    Ok(()) => Ok(()),
                    Err(DeliverError::ConsumerGone) => {
                        self.inb.remove(&channel);
                        self.control.push(channel);
                        woken.push(channel);
                        Ok(())
                    }
                    Err(e @ (DeliverError::Wire(_) | DeliverError::NoCredit)) => {
                        Err(Loss::Corrupt {
                            channel,
                            cause: e.to_string(),
                        })
                    }
                }
            }
            (Dir::In, Frame::Announce { channel, payload }) => {
                // Outside credit: a notice takes no slot of the inbox (the
                // consumer's board holds the newest barrier only).
                let Some(slot) = self
                    .inb
                    .get_mut(&channel)
                    .filter(|s| s.generation == generation)
                else {
                    tracing::trace!(
                        "dropped an announcement for channel {channel}: not registered"
                    );
                    return Ok(());
                };
                ctx.count_announcement_received();
                match slot.ch.announce(payload) {
                    Ok(()) => Ok(()),
                    Err(DeliverError::ConsumerGone) => {
                        self.inb.remove(&channel);
                        self.control.push(channel);
                        woken.push(channel);
                        Ok(())
                    }
                    Err(e @ (DeliverError::Wire(_) | DeliverError::NoCredit)) => {
                        Err(Loss::Corrupt {
                            channel,
                            cause: format!("an announcement: {e}"),
                        })
                    }
                }
            }
            (Dir::In, Frame::Close { channel }) => {
                // Everything sent before it was delivered: the consumer reads
                // it, then sees its sender gone.
                if self
                    .inb
                    .get(&channel)
                    .is_some_and(|s| s.generation == generation)
                {
                    self.inb.remove(&channel);
                }
                Ok(())
            }
            (Dir::Out, Frame::Credit { channel, count }) => {
                if let Some(slot) = self
                    .out
                    .get_mut(&channel)
                    .filter(|s| s.generation == generation)
                {
                    slot.credit = slot.credit.checked_add(count).ok_or(Loss::Corrupt {
                        channel,
                        cause: "credit beyond 2^32 messages".into(),
                    })?;
                    woken.push(channel);
                    return Ok(());
                }
                self.pend(channel, ctx, |p| {
                    p.credit = p.credit.checked_add(count).ok_or(Loss::Corrupt {
                        channel,
                        cause: "credit beyond 2^32 messages".into(),
                    })?;
                    Ok(())
                })
            }
            (Dir::Out, Frame::Close { channel }) => {
                if self
                    .out
                    .get(&channel)
                    .is_some_and(|s| s.generation == generation)
                {
                    // The consumer is gone: the producer sees Disconnected.
                    self.out.remove(&channel);
                    return Ok(());
                }
                self.pend(channel, ctx, |p| {
                    p.closed = true;
                    Ok(())
                })
            }
            // The peer is alive: reading it was the point (`read_loop`).
            (_, Frame::Heartbeat) => Ok(()),
            (Dir::In, Frame::Credit { channel, .. }) => Err(Loss::Protocol(format!(
                "a credit frame from the producing side (channel {channel})"
            ))),
            (Dir::Out, Frame::Message { channel, .. }) => Err(Loss::Protocol(format!(
                "a message frame from the consuming side (channel {channel})"
            ))),
            (Dir::Out, Frame::Announce { channel, .. }) => Err(Loss::Protocol(format!(
                "an announce frame from the consuming side (channel {channel})"
            ))),
        }
    }

    /// Keeps what arrived for a channel not registered yet (bounded), unless
    /// its attempt has ended.
    fn pend(
        &mut self,
        channel: ChannelId,
        ctx: &dyn Context,
        update: impl FnOnce(&mut Pending) -> Result<(), Loss>,
    ) -> Result<(), Loss> {
        if ctx.is_ended(channel.attempt) {
            tracing::trace!("dropped a frame for channel {channel}: its attempt has ended");
            return Ok(());
        }
        if !self.pending.contains_key(&channel) && self.pending.len() >= ctx.max_pending_credit() {
            return Err(Loss::Protocol(format!(
                "credit for more than {} channels that are not registered",
                ctx.max_pending_credit()
            )));
        }
        update(self.pending.entry(channel).or_default())
    }

    /// Appends to `w` the frames the channels in `ready` (every channel if
    /// `all`) have to send on connection `generation`: announcements of every
    /// channel first (without credit), then messages against credit and
    /// close frames (`Out`); credit and close frames (`In`).
    /// Returns the channels to look at again (the buffer filled up).
    pub(crate) fn fill(
        &mut self,
        dir: Dir,
        generation: u64,
        ready: &HashSet<ChannelId>,
        all: bool,
        w: &mut FrameWriter,
        ctx: &dyn Context,
    ) -> Vec<ChannelId> {
        for id in self.control.drain(..) {
            w.close(id);
        }
        let mut again = Vec::new();
        let ids: Vec<ChannelId> = if all {
            match dir {
                Dir::Out => self.out.keys().copied().collect(),
                Dir::In => self.inb.keys().copied().collect(),
            }
        } else {
            ready.iter().copied().collect()
        };
        if dir == Dir::Out {
            // Ahead of every message in this write, whatever the credit.
            for id in &ids {
                self.send_announcement(*id, generation, w, ctx);
            }
        }
        for id in ids {
            match dir {
                Dir::Out => {
                    if w.len() >= FLUSH_AT {
                        again.push(id);
                        continue;
                    }
                    self.send_messages(id, generation, w, ctx, &mut again);
                }
                Dir::In => {
                    let Some(slot) = self.inb.get_mut(&id).filter(|s| s.generation == generation)
                    else {
                        continue;
                    };
                    let free = slot.ch.free_slots();
                    if free > slot.announced {
                        let count = u32::try_from(free - slot.announced).unwrap_or(u32::MAX);
                        w.credit(id, count);
                        slot.announced += count as usize;
                    }
                }
            }
        }
        again
    }

    /// Sends the newest barrier outbound channel `id` announced and has not
    /// sent, if any, as an announce frame: not counted against credit.
    fn send_announcement(
        &mut self,
        id: ChannelId,
        generation: u64,
        w: &mut FrameWriter,
        ctx: &dyn Context,
    ) {
        if let Some(slot) = self.out.get_mut(&id).filter(|s| s.generation == generation) {
            write_announcement(slot, id, w, ctx);
        }
    }

    /// Takes messages of outbound channel `id` against its credit; before
    /// each, a barrier announced meanwhile (it may precede the message).
    fn send_messages(
        &mut self,
        id: ChannelId,
        generation: u64,
        w: &mut FrameWriter,
        ctx: &dyn Context,
        again: &mut Vec<ChannelId>,
    ) {
        let Some(slot) = self.out.get_mut(&id).filter(|s| s.generation == generation) else {
            return;
        };
        let mut close = false;
        while slot.credit > 0 {
            if w.len() >= FLUSH_AT {
                again.push(id);
                break;
            }
            write_announcement(slot, id, w, ctx);
            let start = w.begin(FrameKind::Message, id);
            match slot.ch.next_message(&mut w.buf) {
                Ok(Outgoing::Message) => match w.finish(start, ctx.max_frame_len()) {
                    Ok(()) => {
                        slot.credit -= 1;
                        ctx.count_sent(w.len() - start);
                    }
                    Err(len) => {
                        ctx.fail(
                            id.attempt,
                            TransportError::Corrupt {
                                channel: id,
                                cause: format!(
                                    "a message of {len} bytes (frames hold at most {})",
                                    ctx.max_frame_len()
                                ),
                            },
                        );
                        close = true;
                        break;
                    }
                },
                Ok(Outgoing::Empty) => {
                    w.abandon(start);
                    break;
                }
                Ok(Outgoing::Closed) => {
                    w.abandon(start);
                    close = true;
                    break;
                }
                Err(e) => {
                    w.abandon(start);
                    ctx.fail(
                        id.attempt,
                        TransportError::Corrupt {
                            channel: id,
                            cause: format!("the producer's message cannot be encoded: {e}"),
                        },
                    );
                    close = true;
                    break;
                }
            }
        }
        if close {
            self.out.remove(&id);
            w.close(id);
        }
    }
}

/// Appends the announce frame of the barrier `slot`'s producer announced
/// and has not sent, if any.
fn write_announcement(slot: &mut OutSlot, id: ChannelId, w: &mut FrameWriter, ctx: &dyn Context) {
    let start = w.begin(FrameKind::Announce, id);
    if !slot.ch.next_announcement(&mut w.buf) {
        w.abandon(start);
        return;
    }
    // A barrier is a few bytes, within any frame limit a transport accepts;
    // a frame over it is dropped (a notice is a hint, the barrier follows).
    if w.finish(start, ctx.max_frame_len()).is_ok() {
        ctx.count_announcement_sent();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use flowstate_runtime::WireCodec;
    use flowstate_runtime::channel::Signal;
    use flowstate_runtime::message::Message;
    use flowstate_runtime::remote::{inbound, outbound};

    use super::*;

    #[derive(Default)]
    struct Ctx {
        ended: Vec<u32>,
        failures: RefCell<BTreeMap<u32, TransportError>>,
    }

    impl Context for Ctx {
        fn is_ended(&self, attempt: u32) -> bool {
            self.ended.contains(&attempt)
        }
        fn fail(&self, attempt: u32, error: TransportError) {
            self.failures.borrow_mut().entry(attempt).or_insert(error);
        }
        fn max_frame_len(&self) -> usize {
            1000
        }
        fn max_pending_credit(&self) -> usize {
            2
        }
    }

    fn id(attempt: u32, consumer: u32) -> ChannelId {
        ChannelId {
            attempt,
            node: 1,
            edge: 0,
            producer: 0,
            consumer,
        }
    }

    fn credit(channel: ChannelId, count: u32) -> Frame<'static> {
        Frame::Credit { channel, count }
    }

    #[test]
    fn credit_for_unregistered_channels_is_kept_bounded_and_dropped_for_ended_attempts() {
        let ctx = Ctx {
            ended: vec![9],
            ..Ctx::default()
        };
        let mut st = LinkState::default();
        let mut woken = Vec::new();
        st.on_frame(Dir::Out, 1, credit(id(1, 0), 2), &mut woken, &ctx)
            .unwrap();
        st.on_frame(Dir::Out, 1, credit(id(1, 0), 3), &mut woken, &ctx)
            .unwrap();
        st.on_frame(Dir::Out, 1, credit(id(1, 1), 1), &mut woken, &ctx)
            .unwrap();
        // An ended attempt's credit is dropped, and takes no room.
        st.on_frame(Dir::Out, 1, credit(id(9, 0), 1), &mut woken, &ctx)
            .unwrap();
        assert_eq!(st.pending.len(), 2);
        assert_eq!(st.pending[&id(1, 0)].credit, 5);
        // A third channel: over the bound, the connection must end.
        assert!(matches!(
            st.on_frame(Dir::Out, 1, credit(id(1, 2), 1), &mut woken, &ctx),
            Err(Loss::Protocol(_))
        ));
        assert!(woken.is_empty());
        assert!(!st.end_attempt(1));
        assert!(st.pending.is_empty());
    }

    #[test]
    fn frames_in_the_wrong_direction_and_credit_overflow_end_the_connection() {
        let ctx = Ctx::default();
        let mut st = LinkState::default();
        let mut woken = Vec::new();
        assert!(matches!(
            st.on_frame(Dir::In, 1, credit(id(1, 0), 1), &mut woken, &ctx),
            Err(Loss::Protocol(_))
        ));
        let message = Frame::Message {
            channel: id(1, 0),
            payload: &[4],
        };
        assert!(matches!(
            st.on_frame(Dir::Out, 1, message, &mut woken, &ctx),
            Err(Loss::Protocol(_))
        ));
        let (_tx, end) = outbound::<u64>(WireCodec::new(), 1, Signal::new(), Signal::new());
        st.out.insert(
            id(1, 0),
            OutSlot {
                ch: end,
                credit: u32::MAX,
                generation: 1,
            },
        );
        assert!(matches!(
            st.on_frame(Dir::Out, 1, credit(id(1, 0), 1), &mut woken, &ctx),
            Err(Loss::Corrupt { .. })
        ));
    }

    /// The frames in `bytes` (a writer's buffer): kind and payload.
    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let frame = Frame::parse(&rest[4..4 + len]).unwrap();
            let payload = match frame {
                Frame::Message { payload, .. } | Frame::Announce { payload, .. } => payload,
                _ => &[],
            };
            out.push((rest[4], payload.to_vec()));
            rest = &rest[4 + len..];
        }
        out
    }

    #[test]
    fn an_announcement_is_sent_without_credit_ahead_of_the_messages() {
        use flowstate_runtime::channel::BarrierAnnouncements;
        use flowstate_runtime::message::{Barrier, BarrierAlignment};
        use flowstate_runtime::remote::{inbound_with_announcements, outbound_with_announcements};
        let ctx = Ctx::default();
        let unaligned = |id| Barrier::checkpoint(id).with_alignment(BarrierAlignment::Unaligned);
        let ch = id(1, 0);
        let ready: HashSet<ChannelId> = [ch].into();

        // Producer side: no credit, one batch queued, then barrier 3 is
        // announced and queued behind it.
        let mut out = LinkState::default();
        let (tx, end) = outbound_with_announcements::<u64>(
            WireCodec::new(),
            4,
            Signal::new(),
            Signal::new(),
            true,
        );
        out.out.insert(
            ch,
            OutSlot {
                ch: end,
                credit: 0,
                generation: 1,
            },
        );
        assert!(tx.try_send(Message::Batch(vec![1])).is_ok());
        assert!(tx.announce(unaligned(3)));
        assert!(tx.try_send(Message::Barrier(unaligned(3))).is_ok());
        let mut w = FrameWriter::default();
        out.fill(Dir::Out, 1, &ready, false, &mut w, &ctx);
        let announce = vec![3, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            frames(&w.buf),
            [(FrameKind::Announce as u8, announce.clone())]
        );
        // Once: a second look sends nothing (still no credit).
        w.clear();
        out.fill(Dir::Out, 1, &ready, true, &mut w, &ctx);
        assert!(w.is_empty());
        // Credit: the messages follow, the notice is not repeated.
        let mut woken = Vec::new();
        out.on_frame(Dir::Out, 1, credit(ch, 5), &mut woken, &ctx)
            .unwrap();
        out.fill(Dir::Out, 1, &ready, false, &mut w, &ctx);
        let kinds: Vec<u8> = frames(&w.buf).iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [FrameKind::Message as u8; 2]);

        // Consumer side: no credit announced, the inbox full; the notice is
        // posted on the consumer's board and wakes it.
        let mut inb = LinkState::default();
        let board = BarrierAnnouncements::new();
        let consumer = Signal::new();
        let (end, rx) = inbound_with_announcements::<u64>(
            WireCodec::new(),
            1,
            Signal::new(),
            consumer.clone(),
            Some(board.clone()),
        );
        inb.inb.insert(
            ch,
            InSlot {
                ch: end,
                announced: 0,
                generation: 1,
            },
        );
        let frame = Frame::Announce {
            channel: ch,
            payload: &announce,
        };
        inb.on_frame(Dir::In, 1, frame, &mut woken, &ctx).unwrap();
        assert!(consumer.take_woken());
        assert_eq!(board.take_newer_than(0), Some(unaligned(3)));
        assert!(rx.is_empty());
        // Damaged: the channel's bytes are corrupt. Wrong way: a protocol error.
        let damaged = Frame::Announce {
            channel: ch,
            payload: &[3, 0],
        };
        assert!(matches!(
            inb.on_frame(Dir::In, 1, damaged, &mut woken, &ctx),
            Err(Loss::Corrupt { channel, .. }) if channel == ch
        ));
        assert!(matches!(
            out.on_frame(Dir::Out, 1, frame, &mut woken, &ctx),
            Err(Loss::Protocol(_))
        ));
        // For a channel not registered (or of another connection): dropped.
        inb.on_frame(Dir::In, 2, frame, &mut woken, &ctx).unwrap();
    }

    #[test]
    fn credit_is_free_slots_less_what_is_outstanding() {
        let ctx = Ctx::default();
        let mut st = LinkState::default();
        let (end, rx) = inbound::<u64>(WireCodec::new(), 3, Signal::new(), Signal::new());
        let ch = id(1, 0);
        st.inb.insert(
            ch,
            InSlot {
                ch: end,
                announced: 0,
                generation: 0,
            },
        );
        assert_eq!(st.attach(7), vec![ch]);
        let ready: HashSet<ChannelId> = [ch].into();
        let mut w = FrameWriter::default();
        st.fill(Dir::In, 7, &ready, false, &mut w, &ctx);
        let mut expected = FrameWriter::default();
        expected.credit(ch, 3);
        assert_eq!(w.buf, expected.buf);
        // Nothing new: no frame.
        w.clear();
        st.fill(Dir::In, 7, &ready, true, &mut w, &ctx);
        assert!(w.is_empty());
        // Two messages use two credits; the consumer takes one: one more.
        let mut woken = Vec::new();
        for _ in 0..2 {
            let frame = Frame::Message {
                channel: ch,
                payload: &[4],
            };
            st.on_frame(Dir::In, 7, frame, &mut woken, &ctx).unwrap();
        }
        assert!(matches!(rx.try_recv(), Ok(Some(Message::EndOfInput))));
        st.fill(Dir::In, 7, &ready, false, &mut w, &ctx);
        let mut expected = FrameWriter::default();
        expected.credit(ch, 1);
        assert_eq!(w.buf, expected.buf);
        // A connection that is not the channel's is ignored.
        w.clear();
        assert!(rx.try_recv().unwrap().is_some());
        st.fill(Dir::In, 8, &ready, true, &mut w, &ctx);
        assert!(w.is_empty());
        // The connection is lost: the channel closes, the failure first.
        st.drop_generation(7, &Loss::Io("reset".into()), 5, &ctx);
        assert!(st.inb.is_empty());
        assert!(rx.try_recv().is_err());
        assert_eq!(
            ctx.failures.borrow().get(&1),
            Some(&TransportError::ConnectionLost {
                process: 5,
                cause: "reset".into()
            })
        );
    }
}
