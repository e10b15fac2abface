//! Exchanges: the end of a pipeline that sends records to the tasks of one
//! downstream edge.
//!
//! Owns: routing ([`Router`]: forward, rebalance, by key group), cutting
//! batches per target channel ([`Batching`]: at a size, or after the buffer
//! timeout), sending them with barriers, watermarks and end of input in band,
//! and holding what a full channel did not take (*pending*: the task takes no
//! new input until it is sent, which is how backpressure reaches producers).
//! Must not touch: the stages before it (`pipeline`), the task's head or
//! inbox (`task`), or how edges were planned (`plan`, `wiring`).

use std::collections::VecDeque;
use std::sync::Arc;

use flowstate_checkpoint::BarrierAlignment;
use flowstate_state::{KeyGroup, operator_index_for_key_group};

use crate::channel::{ChannelSender, SendError};
use crate::error::TaskError;
use crate::message::{Barrier, Message, Watermark, WatermarkStatus};
use crate::metrics::{QueueSample, TaskMetrics};
use crate::partitioning::KeyGroupFn;
use crate::pipeline::{OperatorPart, Pipeline};
/// How an exchange picks the channel of each record.
pub enum Router<T> {
    /// Every record to the single channel.
    Forward,
    /// Whole batches round-robin over the channels.
    Rebalance { next: usize },
    /// Each record to the instance owning its key group.
    Hash {
        key_group: KeyGroupFn<T>,
        max_parallelism: u32,
        /// The key groups of the batch being routed (scratch, reused).
        groups: Vec<KeyGroup>,
    },
}

struct Target<T> {
    sender: ChannelSender<T>,
    buffer: Vec<T>,
    /// When (the task clock's ms) the first record went into `buffer`, as
    /// seen at the end of that push; [`NOT_BUFFERING`] after a cut.
    buffered_since_ms: i64,
    pending: VecDeque<Message<T>>,
    /// A watermark that arrived while `buffer` held records: it goes out
    /// right behind them when the buffer is cut (so watermarks never split
    /// batches, and never overtake the records before them). Only set while
    /// `buffer` is not empty.
    held: Option<Watermark>,
}

impl<T> Target<T> {
    /// Queues `watermark` behind everything pending, replacing a watermark
    /// still waiting at the end of the queue (it only grows).
    fn queue_watermark(&mut self, watermark: Watermark) {
        if let Some(Message::Watermark(last)) = self.pending.back_mut() {
            *last = (*last).max(watermark);
        } else {
            self.pending.push_back(Message::Watermark(watermark));
        }
    }
}

/// `Target::buffered_since_ms` of a target whose partial batch has no age yet.
const NOT_BUFFERING: i64 = i64::MIN;

/// How an exchange cuts batches: at `size` records, or once the oldest
/// record in a partial batch waited `timeout_ms` on `clock`
/// ([`crate::config::BUFFER_TIMEOUT_MS`]).
#[derive(Clone)]
pub struct Batching {
    pub size: usize,
    /// `None`: no timeout (see [`crate::ExecutionConfig::buffer_timeout_ms`]).
    pub timeout_ms: Option<i64>,
    pub clock: flowstate_state::SharedClock,
}

/// The end of a pipeline that sends records to the tasks of one downstream edge.
pub struct ExchangeOutput<T> {
    task: Arc<str>,
    router: Router<T>,
    targets: Vec<Target<T>>,
    batch_size: usize,
    /// Cut partial batches older than `timeout_ms` (read once per push).
    timeout: Option<(i64, flowstate_state::SharedClock)>,
    /// The task's metrics: records sent (added once per batch).
    metrics: Option<Arc<TaskMetrics>>,
    /// The last send left messages pending (a channel was full).
    blocked: bool,
}

impl<T: Send> ExchangeOutput<T> {
    pub fn new(
        task: &str,
        router: Router<T>,
        senders: Vec<ChannelSender<T>>,
        batch_size: usize,
    ) -> Self {
        assert!(
            !senders.is_empty(),
            "an exchange needs at least one channel"
        );
        let targets = senders
            .into_iter()
            .map(|sender| Target {
                sender,
                buffer: Vec::new(),
                buffered_since_ms: NOT_BUFFERING,
                pending: VecDeque::new(),
                held: None,
            })
            .collect();
        Self {
            task: task.into(),
            router,
            targets,
            batch_size,
            timeout: None,
            metrics: None,
            blocked: false,
        }
    }

    /// Batches of `batching.size`, and partial batches cut once their oldest
    /// record waited `batching.timeout_ms`.
    pub fn with_batching(
        task: &str,
        router: Router<T>,
        senders: Vec<ChannelSender<T>>,
        batching: Batching,
    ) -> Self {
        let mut exchange = Self::new(task, router, senders, batching.size);
        exchange.timeout = batching.timeout_ms.map(|ms| (ms, batching.clock));
        exchange
    }

    /// Cuts every partial batch whose first record waited `timeout_ms`, and
    /// starts the wait of those that got their first record in this push.
    /// Once per push (one clock read), not per record.
    fn cut_stale(&mut self) {
        let Some((timeout_ms, clock)) = &self.timeout else {
            return;
        };
        let batch_size = self.batch_size;
        let now_ms = clock.now_ms();
        for target in &mut self.targets {
            if target.buffer.is_empty() {
                continue;
            }
            if target.buffered_since_ms == NOT_BUFFERING {
                target.buffered_since_ms = now_ms;
            } else if now_ms.saturating_sub(target.buffered_since_ms) >= *timeout_ms {
                Self::cut(target, batch_size);
            }
        }
    }

    /// Counts the records sent into the task's `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<TaskMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    #[inline]
    fn cut(target: &mut Target<T>, batch_size: usize) {
        target.buffered_since_ms = NOT_BUFFERING;
        let full = std::mem::replace(&mut target.buffer, Vec::with_capacity(batch_size));
        target.pending.push_back(Message::Batch(full));
        if let Some(watermark) = target.held.take() {
            target.queue_watermark(watermark);
        }
    }

    fn send_pending(&mut self) -> Result<bool, TaskError> {
        let mut all_sent = true;
        for target in &mut self.targets {
            while let Some(message) = target.pending.pop_front() {
                match target.sender.try_send(message) {
                    Ok(()) => {}
                    Err(SendError::Full(message)) => {
                        target.pending.push_front(message);
                        all_sent = false;
                        break;
                    }
                    Err(SendError::Disconnected) => {
                        return Err(TaskError::OutputClosed {
                            task: self.task.to_string(),
                        });
                    }
                }
            }
        }
        self.blocked = !all_sent;
        Ok(all_sent)
    }
}

impl<T: Send> Pipeline<T> for ExchangeOutput<T> {
    #[inline]
    fn push(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        let batch_size = self.batch_size;
        if let Some(metrics) = &self.metrics {
            metrics.add_records_out(batch.len());
        }

        match &mut self.router {
            Router::Forward => {
                let target = &mut self.targets[0];
                if target.buffer.is_empty() && batch.len() >= batch_size {
                    target
                        .pending
                        .push_back(Message::Batch(std::mem::take(batch)));
                } else {
                    target.buffer.append(batch);
                    if target.buffer.len() >= batch_size {
                        Self::cut(target, batch_size);
                    }
                }
            }
            Router::Rebalance { next } => {
                let n = self.targets.len();
                let target = &mut self.targets[*next];
                *next = (*next + 1) % n;
                target.buffer.append(batch);
                if target.buffer.len() >= batch_size {
                    Self::cut(target, batch_size);
                }
            }
            Router::Hash { .. } if self.targets.len() == 1 => {
                // One consumer instance owns every key group: no need to look.
                let target = &mut self.targets[0];
                target.buffer.append(batch);
                if target.buffer.len() >= batch_size {
                    Self::cut(target, batch_size);
                }
            }
            Router::Hash {
                key_group,
                max_parallelism,
                groups,
            } => {
                let parallelism = self.targets.len() as u32;
                let max_parallelism = *max_parallelism;
                groups.clear();
                key_group.key_groups(batch, groups);
                for (record, &group) in batch.drain(..).zip(groups.iter()) {
                    let index = operator_index_for_key_group(group, parallelism, max_parallelism);
                    let target = &mut self.targets[index as usize];
                    target.buffer.push(record);
                    if target.buffer.len() >= batch_size {
                        Self::cut(target, batch_size);
                    }
                }
            }
        }
        self.cut_stale();
        self.send_pending().map(drop)
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        for target in &mut self.targets {
            if !target.buffer.is_empty() {
                Self::cut(target, 0);
            }
            target.pending.push_back(Message::EndOfInput);
        }
        self.send_pending().map(drop)
    }

    fn flush(&mut self, partial: bool) -> Result<bool, TaskError> {
        if partial {
            for target in &mut self.targets {
                if !target.buffer.is_empty() {
                    Self::cut(target, 0);
                }
            }
        }
        self.send_pending()
    }

    fn snapshot(
        &mut self,
        _barrier: Barrier,
        _parts: &mut Vec<OperatorPart>,
    ) -> Result<(), TaskError> {
        Ok(())
    }

    fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        // An unaligned barrier is announced to every consumer before it is
        // queued: the consumer may snapshot and read ahead at once instead
        // of after what is queued in front of the barrier.
        if barrier.alignment != BarrierAlignment::Aligned {
            for target in &self.targets {
                target.sender.announce(barrier);
            }
        }
        for target in &mut self.targets {
            if !target.buffer.is_empty() {
                Self::cut(target, 0);
            }
            target.pending.push_back(Message::Barrier(barrier));
        }
        self.send_pending().map(drop)
    }

    fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        // To every channel, whatever the router: each consumer instance
        // takes the minimum over its channels.
        for target in &mut self.targets {
            if target.buffer.is_empty() {
                target.queue_watermark(watermark);
            } else {
                target.held = Some(watermark);
            }
        }
        self.send_pending().map(drop)
    }

    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        // To every channel, behind the records before it (a partly filled
        // buffer is cut: a status changes rarely). A status still waiting
        // at the end of a pending queue is replaced: only the newest counts.
        for target in &mut self.targets {
            if !target.buffer.is_empty() {
                Self::cut(target, 0);
            }
            if let Some(Message::WatermarkStatus(last)) = target.pending.back_mut() {
                *last = status;
            } else {
                target.pending.push_back(Message::WatermarkStatus(status));
            }
        }
        self.send_pending().map(drop)
    }

    fn notify_complete(&mut self, _checkpoint_id: u64) -> Result<(), TaskError> {
        Ok(())
    }

    fn notify_aborted(&mut self, _checkpoint_id: u64) -> Result<(), TaskError> {
        Ok(())
    }

    fn sample(&mut self, queues: &mut QueueSample) {
        for target in &self.targets {
            queues.output += target.sender.len() as u64;
            queues.output_capacity += target.sender.capacity() as u64;
        }
    }

    #[inline]
    fn blocked(&self) -> bool {
        self.blocked
    }
}
