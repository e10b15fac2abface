//! Bounded channels between tasks, and the signals that wake the worker on the
//! other side.
//!
//! A channel holds at most `capacity` messages (batches or control events). A
//! producer that finds it full keeps the message and reports itself idle; the
//! consumer wakes it after taking a message. A consumer that finds it empty goes
//! idle; the producer wakes it after sending. Wakeups go to the *worker* that runs
//! the task (`std::thread::unpark`, which remembers a wakeup that arrives before
//! the worker parks, so none is lost).
//!
//! A consumer that may take unaligned snapshots also has a notice board,
//! [`BarrierAnnouncements`], shared by the senders of all its channels: a
//! producer forwarding an unaligned barrier posts it there ahead of the
//! data queued in front of the barrier, so the consumer learns of it at
//! once instead of after the backlog.
//!
//! Owns: [`channel`], its two ends, [`Signal`] and [`BarrierAnnouncements`].
//! Must not touch: what the messages mean (tasks and pipelines decide) or the
//! checkpoint control plane.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::message::{Barrier, Message};

/// A consuming task's notice board of unaligned barriers on their way in
/// its channels (the newest only). A notice is a hint, never a position:
/// the in-band barrier still marks the cut in every channel, so a notice
/// that is late, or replaced by a newer one, changes only when the consumer
/// starts its snapshot, never what the snapshot holds.
#[derive(Debug, Default)]
pub struct BarrierAnnouncements {
    /// The id of the newest barrier posted (0: none): read without the lock
    /// once per step by the consumer.
    newest: AtomicU64,
    posted: Mutex<Option<Barrier>>,
}

impl BarrierAnnouncements {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Posts `barrier` unless a barrier as new was posted already (every
    /// producer of the consumer posts the same barrier; the first counts).
    pub fn post(&self, barrier: Barrier) {
        let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
        if barrier.id > self.newest.load(Ordering::Relaxed) {
            *posted = Some(barrier);
            self.newest.store(barrier.id, Ordering::Release);
        }
    }

    /// The posted barrier if it is newer than checkpoint `after` (taken: a
    /// barrier is handed out once).
    #[inline]
    pub fn take_newer_than(&self, after: u64) -> Option<Barrier> {
        if self.newest.load(Ordering::Acquire) <= after {
            return None;
        }
        let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
        posted.take().filter(|b| b.id > after)
    }

    /// Drops the posted barrier if it is not newer than checkpoint `upto`
    /// (its in-band barrier has gone by: the notice would only be late).
    pub fn withdraw_up_to(&self, upto: u64) {
        if self.newest.load(Ordering::Acquire) > upto {
            return;
        }
        let mut posted = self.posted.lock().unwrap_or_else(|e| e.into_inner());
        if posted.is_some_and(|b| b.id <= upto) {
            *posted = None;
        }
    }
}

/// Wakes one worker thread, or the network side of remote channels (a
/// callback). Unbound signals (the deterministic scheduler) do nothing.
#[derive(Default)]
pub struct Signal {
    thread: OnceLock<Thread>,
    /// Called by every wake of a signal that wakes no thread: how a channel
    /// end wakes the network task that serves its other end (`remote`).
    callback: Option<Box<dyn Fn() + Send + Sync>>,
    /// Set by every wake; the deterministic executor reads it to know that a
    /// step made another task runnable even when the step itself said idle.
    woken: AtomicBool,
}

impl Signal {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A signal that calls `wake` on every wake (the network side of remote
    /// channels: it must not block and should be cheap).
    pub fn with_callback(wake: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            callback: Some(Box::new(wake)),
            ..Self::default()
        })
    }

    /// Makes this signal wake the calling thread.
    pub fn bind_current(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    #[inline]
    pub fn wake(&self) {
        match self.thread.get() {
            Some(thread) => thread.unpark(),
            None => match &self.callback {
                Some(wake) => wake(),
                None => self.woken.store(true, Ordering::Relaxed),
            },
        }
    }

    /// Whether a wake happened since the last call (unbound signals only).
    pub fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("thread", &self.thread.get().map(|t| t.id()))
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

/// Sending end of a channel.
pub struct ChannelSender<T> {
    inner: Sender<Message<T>>,
    consumer: Arc<Signal>,
    /// The consumer's notice board, if it may take unaligned snapshots.
    announcements: Option<Arc<BarrierAnnouncements>>,
}

/// Receiving end of a channel.
pub struct ChannelReceiver<T> {
    inner: Receiver<Message<T>>,
    producer: Arc<Signal>,
}

/// Why a send did not happen.
pub enum SendError<T> {
    /// The channel is full; the message is handed back.
    Full(Message<T>),
    /// The receiver is gone (its task ended or failed).
    Disconnected,
}

/// The sender is gone without having sent `EndOfInput`.
#[derive(Debug)]
pub struct Disconnected;

/// Creates a channel of `capacity` messages between a producer running on the
/// worker of `producer` and a consumer on the worker of `consumer`.
pub fn channel<T>(
    capacity: usize,
    producer: Arc<Signal>,
    consumer: Arc<Signal>,
) -> (ChannelSender<T>, ChannelReceiver<T>) {
    channel_with_announcements(capacity, producer, consumer, None)
}

/// A [`channel`] whose sender posts unaligned barriers on the consumer's
/// notice board `announcements` (see [`ChannelSender::announce`]).
pub fn channel_with_announcements<T>(
    capacity: usize,
    producer: Arc<Signal>,
    consumer: Arc<Signal>,
    announcements: Option<Arc<BarrierAnnouncements>>,
) -> (ChannelSender<T>, ChannelReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (
        ChannelSender {
            inner: tx,
            consumer,
            announcements,
        },
        ChannelReceiver {
            inner: rx,
            producer,
        },
    )
}

impl<T> ChannelSender<T> {
    #[inline]
    pub fn try_send(&self, message: Message<T>) -> Result<(), SendError<T>> {
        match self.inner.try_send(message) {
            Ok(()) => {
                self.consumer.wake();
                Ok(())
            }
            Err(TrySendError::Full(message)) => Err(SendError::Full(message)),
            Err(TrySendError::Disconnected(_)) => Err(SendError::Disconnected),
        }
    }

    /// Tells the consumer, ahead of the data queued in front of it, that
    /// `barrier` is on its way, and wakes it. False if the consumer has no
    /// notice board (it aligns in band). The sender of a channel whose
    /// consumer is the transport (`remote::outbound_with_announcements`)
    /// posts on the transport's board for the channel and wakes the
    /// transport, which sends the notice ahead of the channel's messages.
    pub fn announce(&self, barrier: Barrier) -> bool {
        let Some(board) = &self.announcements else {
            return false;
        };
        board.post(barrier);
        self.consumer.wake();
        true
    }

    /// Messages waiting in the channel.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Messages the channel holds at most.
    pub fn capacity(&self) -> usize {
        self.inner.capacity().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl<T> ChannelReceiver<T> {
    /// Messages waiting in the channel (metrics: sampled, never per message).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Messages the channel holds at most.
    pub fn capacity(&self) -> usize {
        self.inner.capacity().unwrap_or(0)
    }

    /// The next message, `Ok(None)` if the channel is empty for now.
    #[inline]
    pub fn try_recv(&self) -> Result<Option<Message<T>>, Disconnected> {
        match self.inner.try_recv() {
            Ok(message) => {
                self.producer.wake();
                Ok(Some(message))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Disconnected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_checkpoint::BarrierAlignment;

    fn unaligned(id: u64) -> Barrier {
        Barrier::checkpoint(id).with_alignment(BarrierAlignment::Unaligned)
    }

    #[test]
    fn a_board_hands_out_the_newest_barrier_once() {
        let board = BarrierAnnouncements::new();
        assert_eq!(board.take_newer_than(0), None);
        board.post(unaligned(3));
        board.post(unaligned(3)); // a second producer's notice of the same barrier
        board.post(unaligned(2)); // older: ignored
        assert_eq!(board.take_newer_than(0), Some(unaligned(3)));
        assert_eq!(board.take_newer_than(0), None);
        board.post(unaligned(3));
        assert_eq!(board.take_newer_than(0), None, "3 was handed out already");
        board.post(unaligned(4));
        assert_eq!(board.take_newer_than(4), None, "the consumer is past 4");
        board.post(unaligned(5));
        board.withdraw_up_to(4);
        board.withdraw_up_to(5);
        assert_eq!(board.take_newer_than(0), None, "5 was withdrawn");
        board.post(unaligned(6));
        board.withdraw_up_to(5);
        assert_eq!(board.take_newer_than(0), Some(unaligned(6)), "6 is newer");
    }

    #[test]
    fn announce_wakes_the_consumer_only_with_a_board() {
        let consumer = Signal::new();
        let (tx, _rx) = channel::<u32>(2, Signal::new(), Arc::clone(&consumer));
        assert!(!tx.announce(unaligned(1)));
        assert!(!consumer.take_woken());
        let board = BarrierAnnouncements::new();
        let (tx, _rx) = channel_with_announcements::<u32>(
            2,
            Signal::new(),
            Arc::clone(&consumer),
            Some(Arc::clone(&board)),
        );
        assert!(tx.announce(unaligned(1)));
        assert!(consumer.take_woken());
        assert_eq!(board.take_newer_than(0), Some(unaligned(1)));
    }
}
