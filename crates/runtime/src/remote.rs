//! Channels whose producer and consumer run in different processes, as the
//! runtime sees them: a local channel at each end, and a [`Transport`] that
//! moves the messages between the two as bytes.
//!
//! A remote channel is two bounded local channels and the network between
//! them. The producer task sends into an ordinary [`ChannelSender`] (the
//! *outbound* channel); the transport takes its messages through an
//! [`OutboundChannel`] (encoded by `wire`) and sends them to the consumer's
//! process, where an [`InboundChannel`] decodes them into the consumer task's
//! ordinary [`ChannelReceiver`]. Tasks, the input gate, the aligner and the
//! exchange do not know that a channel is remote: backpressure is a full
//! outbound channel, exactly as locally, because the transport takes a message
//! from it only against *credit*, the free slots the consumer's side has
//! announced ([`InboundChannel::free_slots`]), so nothing it sends ever waits
//! on the receiving side and one slow channel never blocks a connection.
//!
//! Notices of unaligned barriers (the local channels' `BarrierAnnouncements`)
//! cross too, ahead of the data and without credit: the producer posts on the
//! outbound channel's own board ([`outbound_with_announcements`]), the
//! transport sends it first ([`OutboundChannel::next_announcement`]), and the
//! consumer's side posts it on the consumer task's board
//! ([`InboundChannel::announce`], [`inbound_with_announcements`]).
//!
//! Owns: [`ChannelId`], the transport's view of the two ends
//! ([`OutboundChannel`], [`InboundChannel`], made by [`outbound`] and
//! [`inbound`]), the [`Transport`] trait and [`NetworkPlacement`] (which
//! subtasks run where). Must not touch: sockets, frames, credit accounting
//! (the transport's, in `flowstate-network`), or planning (`plan` decides
//! which channels are remote).

use std::sync::Arc;

use crate::channel::{
    BarrierAnnouncements, ChannelReceiver, ChannelSender, SendError, Signal,
    channel_with_announcements,
};
use crate::message::Message;
use crate::wire::{self, WireCodec, WireError};

/// One channel of one attempt, named the same in every process (every
/// process builds the same plan): the consumer node and its input edge, and
/// the producer and consumer subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    /// The attempt the channel belongs to (messages of an older attempt are
    /// dropped by the transport).
    pub attempt: u32,
    /// The consuming node (its index in the job graph).
    pub node: u32,
    /// The index of the edge among the consuming node's inputs.
    pub edge: u32,
    pub producer: u32,
    pub consumer: u32,
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "attempt {} node {} edge {} subtask {} -> {}",
            self.attempt, self.node, self.edge, self.producer, self.consumer
        )
    }
}

/// What the transport found when it asked an outbound channel for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// Nothing waiting.
    Empty,
    /// One message's payload was appended.
    Message,
    /// The producer is gone and everything it sent has been taken.
    Closed,
}

/// The producer's end of a remote channel, as the transport sees it.
pub trait OutboundChannel: Send {
    /// Takes the next message the producer sent, if any, and appends its
    /// payload (docs/wire-format.md) to `out`. The transport calls it only
    /// with credit for one message.
    fn next_message(&mut self, out: &mut Vec<u8>) -> Result<Outgoing, WireError>;
    /// Takes the newest barrier the producer announced and has not been
    /// sent (or overtaken by its in-band barrier), if any, and appends it as
    /// an announce frame's payload (docs/wire-format.md §2.2) to `out`. The
    /// transport asks before it sends messages, and without credit: a notice
    /// is a hint of one barrier, never a message the consumer must hold.
    fn next_announcement(&mut self, _out: &mut Vec<u8>) -> bool {
        false
    }
}

/// Why an inbound message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The bytes are not a message of the channel's type.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The sender sent more than the credit it was given.
    #[error("a message beyond the credit given (the consumer's inbox is full)")]
    NoCredit,
    /// The consumer task is gone (it ended or failed).
    #[error("the consumer is gone")]
    ConsumerGone,
}

/// The consumer's end of a remote channel, as the transport sees it.
pub trait InboundChannel: Send {
    /// Decodes one message payload and hands it to the consumer task.
    fn deliver(&mut self, payload: &[u8]) -> Result<(), DeliverError>;
    /// Decodes the payload of an announce frame and posts the barrier on the
    /// consumer task's notice board, waking it (nothing if the consumer
    /// aligns in band). Needs no credit: the board holds one barrier.
    fn announce(&mut self, payload: &[u8]) -> Result<(), DeliverError>;
    /// Messages the consumer's inbox has room for now (the transport
    /// announces these as credit, less what it announced and has not yet
    /// received).
    fn free_slots(&self) -> usize;
    /// Messages the consumer's inbox holds at most.
    fn capacity(&self) -> usize;
}

/// A local channel of `capacity` messages whose consumer is the transport:
/// the producer task's sender, and the transport's end.
pub fn outbound<T: Send + 'static>(
    codec: WireCodec<T>,
    capacity: usize,
    producer: Arc<Signal>,
    transport: Arc<Signal>,
) -> (ChannelSender<T>, Box<dyn OutboundChannel>) {
    outbound_with_announcements(codec, capacity, producer, transport, false)
}

/// An [`outbound`] channel whose consumer may take unaligned snapshots
/// (`announcing`): the producer's [`ChannelSender::announce`] posts on a
/// board of the channel's own and wakes the transport, which sends the
/// notice ahead of the channel's messages
/// ([`OutboundChannel::next_announcement`]).
pub fn outbound_with_announcements<T: Send + 'static>(
    codec: WireCodec<T>,
    capacity: usize,
    producer: Arc<Signal>,
    transport: Arc<Signal>,
    announcing: bool,
) -> (ChannelSender<T>, Box<dyn OutboundChannel>) {
    let board = announcing.then(BarrierAnnouncements::new);
    let (tx, rx) = channel_with_announcements(capacity, producer, transport, board.clone());
    (tx, Box::new(OutboundEnd { rx, codec, board }))
}

/// A local channel of `capacity` messages whose producer is the transport:
/// the transport's end, and the consumer task's receiver.
pub fn inbound<T: Send + 'static>(
    codec: WireCodec<T>,
    capacity: usize,
    transport: Arc<Signal>,
    consumer: Arc<Signal>,
) -> (Box<dyn InboundChannel>, ChannelReceiver<T>) {
    inbound_with_announcements(codec, capacity, transport, consumer, None)
}

/// An [`inbound`] channel whose consumer task may take unaligned snapshots:
/// announce frames for it are posted on `announcements`, the consumer's
/// notice board (shared with its other channels).
pub fn inbound_with_announcements<T: Send + 'static>(
    codec: WireCodec<T>,
    capacity: usize,
    transport: Arc<Signal>,
    consumer: Arc<Signal>,
    announcements: Option<Arc<BarrierAnnouncements>>,
) -> (Box<dyn InboundChannel>, ChannelReceiver<T>) {
    let (tx, rx) = channel_with_announcements(capacity, transport, consumer, announcements);
    (Box::new(InboundEnd { tx, codec }), rx)
}

struct OutboundEnd<T> {
    rx: ChannelReceiver<T>,
    codec: WireCodec<T>,
    /// Where the producer posts the barriers it announces (`None`: the
    /// consumer aligns in band).
    board: Option<Arc<BarrierAnnouncements>>,
}

impl<T: Send> OutboundChannel for OutboundEnd<T> {
    fn next_message(&mut self, out: &mut Vec<u8>) -> Result<Outgoing, WireError> {
        match self.rx.try_recv() {
            Ok(Some(message)) => {
                if let (Message::Barrier(barrier), Some(board)) = (&message, &self.board) {
                    // Its notice, if not sent yet, would now follow it.
                    board.withdraw_up_to(barrier.id);
                }
                self.codec.encode_message(&message, out)?;
                Ok(Outgoing::Message)
            }
            Ok(None) => Ok(Outgoing::Empty),
            Err(_) => Ok(Outgoing::Closed),
        }
    }

    fn next_announcement(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(barrier) = self.board.as_ref().and_then(|b| b.take_newer_than(0)) else {
            return false;
        };
        // Producers announce only barriers that do not align; an aligned
        // one is dropped rather than sent as a notice.
        wire::encode_announcement(&barrier, out).is_ok()
    }
}

struct InboundEnd<T> {
    tx: ChannelSender<T>,
    codec: WireCodec<T>,
}

impl<T: Send> InboundChannel for InboundEnd<T> {
    fn deliver(&mut self, payload: &[u8]) -> Result<(), DeliverError> {
        let message = self.codec.decode_message(payload)?;
        match self.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(DeliverError::NoCredit),
            Err(SendError::Disconnected) => Err(DeliverError::ConsumerGone),
        }
    }

    fn announce(&mut self, payload: &[u8]) -> Result<(), DeliverError> {
        let barrier = wire::decode_announcement(payload)?;
        self.tx.announce(barrier);
        Ok(())
    }

    fn free_slots(&self) -> usize {
        self.tx.capacity().saturating_sub(self.tx.len())
    }

    fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

/// Why the transport refused a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no process {0} in the cluster")]
    UnknownProcess(u32),
    #[error("channel {0} is registered twice")]
    Duplicate(ChannelId),
    #[error("the network is down: {0}")]
    Down(String),
    /// Bytes from another process that are not what the protocol allows
    /// (a frame that does not parse, a message that does not decode).
    #[error("a damaged message on channel {channel}: {cause}")]
    Corrupt { channel: ChannelId, cause: String },
    #[error("the connection with process {process} was lost: {cause}")]
    ConnectionLost { process: u32, cause: String },
}

/// Moves the messages of remote channels between processes. One per
/// process; channels are registered per attempt by the plan, and dropped by
/// [`Transport::end_attempt`].
///
/// A transport must: send a channel's messages in the order the producer sent
/// them; take a message from an [`OutboundChannel`] only against credit the
/// consumer's side announced; send a channel's announcements without credit,
/// ahead of the messages it sends with them, and hand them to
/// [`InboundChannel::announce`]; deliver messages of a registered inbound channel
/// only to it; close a channel's consumer end (drop it: the consumer task sees
/// its sender gone) when the producer end is closed, the connection is lost or
/// bytes arrive that do not decode; close a producer end when its consumer end
/// is gone; never panic on what it reads.
pub trait Transport: Send + Sync {
    /// The signal the producer of outbound channel `id` (consumer in process
    /// `consumer_process`) wakes the transport with when it sent a message.
    fn outbound_signal(
        &self,
        id: ChannelId,
        consumer_process: u32,
    ) -> Result<Arc<Signal>, TransportError>;
    /// The signal the consumer of inbound channel `id` (of `capacity`
    /// messages; producer in process `producer_process`) wakes the transport
    /// with when it took a message and freed a slot. The transport may act on
    /// every n-th wake only (credit in batches), n at most `capacity`/2, so
    /// that a producer with no credit always gets more.
    fn inbound_signal(
        &self,
        id: ChannelId,
        producer_process: u32,
        capacity: usize,
    ) -> Result<Arc<Signal>, TransportError>;
    /// The producer's end of channel `id`, whose consumer runs in process
    /// `consumer_process`.
    fn register_outbound(
        &self,
        id: ChannelId,
        consumer_process: u32,
        channel: Box<dyn OutboundChannel>,
    ) -> Result<(), TransportError>;
    /// The consumer's end of channel `id`, whose producer runs in process
    /// `producer_process`.
    fn register_inbound(
        &self,
        id: ChannelId,
        producer_process: u32,
        channel: Box<dyn InboundChannel>,
    ) -> Result<(), TransportError>;
    /// Drops every channel of `attempt` (its tasks are gone).
    fn end_attempt(&self, attempt: u32);
    /// The first error that closed a channel of `attempt` (bytes that do not
    /// decode, a lost connection), if any: the attempt's failure names it
    /// rather than the closed channel it caused.
    fn failure(&self, attempt: u32) -> Option<TransportError>;
}

/// Where the subtasks of a job run when it spans processes, and the
/// transport between them.
#[derive(Clone)]
pub struct NetworkPlacement {
    pub transport: Arc<dyn Transport>,
    /// The process this plan is built in.
    pub process: u32,
    /// The process of each subtask index: subtask `i` of every operator runs
    /// in process `subtask_process[i]` (slot sharing: a pipeline instance
    /// stays in one process, so forward edges never cross processes).
    pub subtask_process: Vec<u32>,
    /// Every channel of a hash or rebalance edge goes through the transport,
    /// also between subtasks of one process (tests and measurements of the
    /// network path in one process).
    pub all_exchanges_remote: bool,
}

impl NetworkPlacement {
    /// One process, every exchange through `transport` (to itself).
    pub fn loopback(transport: Arc<dyn Transport>, parallelism: u32) -> Self {
        Self {
            transport,
            process: 0,
            subtask_process: vec![0; parallelism as usize],
            all_exchanges_remote: true,
        }
    }

    /// The process subtask `index` runs in.
    pub fn process_of(&self, index: u32) -> u32 {
        self.subtask_process
            .get(index as usize)
            .copied()
            .unwrap_or(self.process)
    }

    /// Whether subtask `index` runs in this process.
    pub fn is_local(&self, index: u32) -> bool {
        self.process_of(index) == self.process
    }

    /// Whether the channel from `producer` to `consumer` of a non-forward
    /// edge goes through the transport.
    pub fn is_remote(&self, producer: u32, consumer: u32) -> bool {
        self.all_exchanges_remote || self.process_of(producer) != self.process_of(consumer)
    }
}

impl std::fmt::Debug for NetworkPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPlacement")
            .field("process", &self.process)
            .field("subtask_process", &self.subtask_process)
            .field("all_exchanges_remote", &self.all_exchanges_remote)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn messages_cross_an_outbound_and_an_inbound_end_in_order() {
        let codec = WireCodec::<(String, u64)>::new();
        let (tx, mut out_end) = outbound(codec, 2, Signal::new(), Signal::new());
        let (mut in_end, rx) = inbound(codec, 2, Signal::new(), Signal::new());
        assert_eq!(in_end.free_slots(), 2);
        let mut bytes = Vec::new();
        assert_eq!(out_end.next_message(&mut bytes), Ok(Outgoing::Empty));
        assert!(tx.try_send(Message::Batch(vec![("k".into(), 1)])).is_ok());
        assert!(tx.try_send(Message::EndOfInput).is_ok());
        assert!(matches!(
            tx.try_send(Message::EndOfInput),
            Err(SendError::Full(_))
        ));
        for _ in 0..2 {
            bytes.clear();
            assert_eq!(out_end.next_message(&mut bytes), Ok(Outgoing::Message));
            in_end.deliver(&bytes).unwrap();
        }
        assert_eq!(in_end.free_slots(), 0);
        assert_eq!(in_end.deliver(&[4]), Err(DeliverError::NoCredit));
        drop(tx);
        assert_eq!(out_end.next_message(&mut bytes), Ok(Outgoing::Closed));
        assert!(matches!(
            rx.try_recv(),
            Ok(Some(Message::Batch(b))) if b == vec![("k".to_owned(), 1)]
        ));
        assert!(matches!(rx.try_recv(), Ok(Some(Message::EndOfInput))));
        assert_eq!(in_end.free_slots(), 2);
        assert!(matches!(
            in_end.deliver(&[9]),
            Err(DeliverError::Wire(WireError::UnknownKind(9)))
        ));
        drop(rx);
        assert_eq!(in_end.deliver(&[4]), Err(DeliverError::ConsumerGone));
    }

    #[test]
    fn an_announcement_crosses_ahead_of_the_messages_without_a_slot() {
        use crate::message::{Barrier, BarrierAlignment};
        let unaligned = |id| Barrier::checkpoint(id).with_alignment(BarrierAlignment::Unaligned);
        let codec = WireCodec::<u64>::new();
        let transport = Signal::new();
        let (tx, mut out_end) =
            outbound_with_announcements(codec, 1, Signal::new(), Arc::clone(&transport), true);
        let board = BarrierAnnouncements::new();
        let consumer = Signal::new();
        let (mut in_end, rx) = inbound_with_announcements(
            codec,
            1,
            Signal::new(),
            Arc::clone(&consumer),
            Some(Arc::clone(&board)),
        );
        let mut bytes = Vec::new();
        assert!(!out_end.next_announcement(&mut bytes));
        // The channel is full; the producer announces barrier 3 (it wakes the
        // transport) and keeps the barrier pending.
        assert!(tx.try_send(Message::Batch(vec![1])).is_ok());
        assert!(transport.take_woken());
        assert!(tx.announce(unaligned(3)));
        assert!(transport.take_woken());
        assert!(out_end.next_announcement(&mut bytes));
        assert!(!out_end.next_announcement(&mut Vec::new()), "sent once");
        assert_eq!(bytes, [3, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        // The consumer's inbox is full too: the notice needs no slot.
        let mut message = Vec::new();
        assert_eq!(out_end.next_message(&mut message), Ok(Outgoing::Message));
        in_end.deliver(&message).unwrap();
        assert_eq!(in_end.free_slots(), 0);
        in_end.announce(&bytes).unwrap();
        assert!(consumer.take_woken());
        assert_eq!(board.take_newer_than(0), Some(unaligned(3)));
        assert!(matches!(rx.try_recv(), Ok(Some(Message::Batch(_)))));
        // A notice whose barrier is taken before the notice is not sent.
        assert!(tx.announce(unaligned(4)));
        assert!(tx.try_send(Message::Barrier(unaligned(4))).is_ok());
        message.clear();
        assert_eq!(out_end.next_message(&mut message), Ok(Outgoing::Message));
        assert!(!out_end.next_announcement(&mut bytes));
        // Damaged or aligned notices are refused.
        assert_eq!(
            in_end.announce(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DeliverError::Wire(WireError::AlignedAnnouncement))
        );
        assert_eq!(
            in_end.announce(&[3]),
            Err(DeliverError::Wire(WireError::Truncated { needed: 7 }))
        );
        // Without boards: nothing is announced, a notice is ignored.
        let (tx, mut out_end) = outbound(codec, 1, Signal::new(), Signal::new());
        assert!(!tx.announce(unaligned(5)));
        assert!(!out_end.next_announcement(&mut bytes));
        let (mut in_end, _rx) = inbound(codec, 1, Signal::new(), Signal::new());
        assert_eq!(in_end.announce(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 1]), Ok(()));
    }
}
