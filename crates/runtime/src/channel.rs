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
//! Owns: [`channel`], its two ends and [`Signal`]. Must not touch: what the
//! messages mean (tasks and pipelines decide) or the checkpoint control plane.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::message::Message;

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
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (
        ChannelSender {
            inner: tx,
            consumer,
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
