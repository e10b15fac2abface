//! Generating watermarks: how event time is read from records and how far it
//! is trusted. Used by sources (per split, [`SplitWatermarks`]) and by the
//! operator that assigns timestamps and watermarks in the middle of a stream
//! ([`TimestampsAndWatermarks`]).
//!
//! A [`WatermarkStrategy`] is a timestamp assigner (`Fn(&T) -> i64`, event
//! time in milliseconds), the kind of generator (bounded out-of-orderness,
//! monotonous, or a user's own [`WatermarkGenerator`]) and an optional
//! idleness timeout. Generators are asked for their watermark once per batch
//! (after a source's poll, after an operator's batch), never per record.
//!
//! Idleness: with `with_idleness(ms)` a split that produced nothing for `ms`
//! of processing time (the job's clock) no longer holds its reader's
//! watermark back. When every split still open is idle (or the reader owns
//! none), the reader is idle ([`SplitWatermarks::is_idle`]): its watermark
//! stays where it was and its task sends `WatermarkStatus::Idle` downstream,
//! where the channel is left out of every minimum until the reader produces
//! again (`Active`, then records and watermarks as before). Without idleness
//! nothing is ever idle, and a quiet split holds everything back.
//!
//! Owns: the strategy, the generators, the per-split combination and the
//! assigner operator. Must not touch: channels, tasks or how a watermark
//! travels (that is `pipeline` and `task`).

use std::sync::Arc;

use flowstate_state::SharedClock;

use crate::error::UserError;
use crate::message::Watermark;
use crate::operator::Operator;

/// A user's watermark generator (Flink's `WatermarkGenerator`): sees every
/// record with its timestamp and says, once per batch, how far event time
/// has come.
pub trait WatermarkGenerator<T>: Send {
    /// A record with event time `timestamp` was read.
    fn on_event(&mut self, record: &T, timestamp: i64);
    /// The watermark now (asked after every batch or poll, and when the
    /// input is idle); `None` while nothing can be said yet.
    fn on_periodic_emit(&mut self) -> Option<Watermark>;
}

/// Watermark = the largest timestamp seen − `max_delay_ms` − 1 (Flink's
/// `BoundedOutOfOrdernessWatermarks`): a record up to `max_delay_ms` older
/// than the newest one seen is not late.
#[derive(Debug, Clone, Copy)]
pub struct BoundedOutOfOrderness {
    max_delay_ms: i64,
    max_timestamp: Option<i64>,
}

impl BoundedOutOfOrderness {
    pub fn new(max_delay_ms: i64) -> Self {
        Self {
            max_delay_ms: max_delay_ms.max(0),
            max_timestamp: None,
        }
    }

    #[inline]
    pub fn observe(&mut self, timestamp: i64) {
        self.max_timestamp = Some(self.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
    }

    pub fn current(&self) -> Option<Watermark> {
        self.max_timestamp
            .map(|m| Watermark(m.saturating_sub(self.max_delay_ms).saturating_sub(1)))
    }
}

impl<T> WatermarkGenerator<T> for BoundedOutOfOrderness {
    fn on_event(&mut self, _record: &T, timestamp: i64) {
        self.observe(timestamp);
    }
    fn on_periodic_emit(&mut self) -> Option<Watermark> {
        self.current()
    }
}

/// Creates a user's generator (one per split, one per operator instance).
pub type GeneratorFactory<T> = Arc<dyn Fn() -> Box<dyn WatermarkGenerator<T>> + Send + Sync>;

enum Kind<T> {
    Bounded(i64),
    Custom(GeneratorFactory<T>),
}

impl<T> Clone for Kind<T> {
    fn clone(&self) -> Self {
        match self {
            Kind::Bounded(d) => Kind::Bounded(*d),
            Kind::Custom(f) => Kind::Custom(Arc::clone(f)),
        }
    }
}

/// How a stream's event time is read and its watermarks made.
pub struct WatermarkStrategy<T> {
    assigner: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
    kind: Kind<T>,
    idleness_ms: Option<i64>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        Self {
            assigner: Arc::clone(&self.assigner),
            kind: self.kind.clone(),
            idleness_ms: self.idleness_ms,
        }
    }
}

impl<T> std::fmt::Debug for WatermarkStrategy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Bounded(d) => format!("bounded out-of-orderness {d} ms"),
            Kind::Custom(_) => "custom generator".to_owned(),
        };
        f.debug_struct("WatermarkStrategy")
            .field("kind", &kind)
            .field("idleness_ms", &self.idleness_ms)
            .finish()
    }
}

impl<T> WatermarkStrategy<T> {
    /// Records may arrive up to `max_delay_ms` out of order: the watermark is
    /// the largest timestamp seen − `max_delay_ms` − 1.
    pub fn bounded_out_of_orderness(
        max_delay_ms: i64,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            assigner: Arc::new(timestamp),
            kind: Kind::Bounded(max_delay_ms.max(0)),
            idleness_ms: None,
        }
    }

    /// Timestamps never decrease (bounded out-of-orderness 0).
    pub fn monotonous(timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        Self::bounded_out_of_orderness(0, timestamp)
    }

    /// A user's own generator, created once per split or operator instance.
    pub fn with_generator(
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
        generator: impl Fn() -> Box<dyn WatermarkGenerator<T>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            assigner: Arc::new(timestamp),
            kind: Kind::Custom(Arc::new(generator)),
            idleness_ms: None,
        }
    }

    /// A split that produced nothing for `idleness_ms` of processing time
    /// (the job's clock) no longer holds the watermark back, until it
    /// produces again.
    pub fn with_idleness(mut self, idleness_ms: i64) -> Self {
        self.idleness_ms = Some(idleness_ms.max(0));
        self
    }

    pub fn idleness_ms(&self) -> Option<i64> {
        self.idleness_ms
    }

    /// The event time of `record`.
    #[inline]
    pub fn timestamp(&self, record: &T) -> i64 {
        (self.assigner)(record)
    }

    /// A fresh generator (one per split, one per operator instance).
    pub fn create_generator(&self) -> Generator<T> {
        match &self.kind {
            Kind::Bounded(d) => Generator::Bounded(BoundedOutOfOrderness::new(*d)),
            Kind::Custom(f) => Generator::Custom(f()),
        }
    }
}

/// A generator instance: the built-in one without a virtual call per record,
/// or a user's.
pub enum Generator<T> {
    Bounded(BoundedOutOfOrderness),
    Custom(Box<dyn WatermarkGenerator<T>>),
}

impl<T> Generator<T> {
    #[inline]
    pub fn on_event(&mut self, record: &T, timestamp: i64) {
        match self {
            Generator::Bounded(b) => b.observe(timestamp),
            Generator::Custom(g) => g.on_event(record, timestamp),
        }
    }

    pub fn current(&mut self) -> Option<Watermark> {
        match self {
            Generator::Bounded(b) => b.current(),
            Generator::Custom(g) => g.on_periodic_emit(),
        }
    }

    /// Feeds every record of `records` with the event time at the same
    /// index of `timestamps` (given by the reader, e.g. a Kafka record's
    /// timestamp, instead of a strategy's assigner).
    #[inline]
    pub fn on_batch_with_timestamps(&mut self, records: &[T], timestamps: &[i64]) {
        debug_assert_eq!(records.len(), timestamps.len());
        match self {
            Generator::Bounded(b) => {
                for &t in timestamps {
                    b.observe(t);
                }
            }
            Generator::Custom(g) => {
                for (r, &t) in records.iter().zip(timestamps) {
                    g.on_event(r, t);
                }
            }
        }
    }

    /// Feeds every record of `records` (timestamps from `strategy`).
    #[inline]
    pub fn on_batch(&mut self, strategy: &WatermarkStrategy<T>, records: &[T]) {
        match self {
            Generator::Bounded(b) => {
                for r in records {
                    b.observe(strategy.timestamp(r));
                }
            }
            Generator::Custom(g) => {
                for r in records {
                    g.on_event(r, strategy.timestamp(r));
                }
            }
        }
    }
}

struct SplitState<S, T> {
    split: S,
    generator: Generator<T>,
    /// Processing time (the job's clock) of the split's last record, or of
    /// its registration.
    last_active_ms: i64,
    finished: bool,
}

/// Per-split watermarks of one source reader (Flink's per-partition
/// watermarking): every split has its own generator, and the reader's
/// watermark is the minimum over its splits that are neither finished nor
/// idle. So a split far ahead never makes another split's records late. A
/// split without a watermark yet (nothing read) holds everything back, unless
/// it is idle. When every split still open is idle, the watermark stays
/// where it was and the reader is idle ([`SplitWatermarks::is_idle`]): its
/// task tells downstream not to wait for it (`WatermarkStatus::Idle`) until a
/// split produces again.
pub struct SplitWatermarks<S, T> {
    strategy: WatermarkStrategy<T>,
    clock: SharedClock,
    splits: Vec<SplitState<S, T>>,
    /// Processing time of the reader's last record or split added (or of
    /// its creation): a reader with no open split is idle after the
    /// idleness from then.
    last_active_ms: i64,
    /// The index of the last split looked up (readers feed a split a batch
    /// at a time).
    last: usize,
}

impl<S: PartialEq + Clone, T> SplitWatermarks<S, T> {
    /// `clock` is the job's processing-time clock (`SubtaskInfo::clock`),
    /// for idleness.
    pub fn new(strategy: WatermarkStrategy<T>, clock: SharedClock) -> Self {
        let mut watermarks = Self {
            strategy,
            clock,
            splits: Vec::new(),
            last_active_ms: 0,
            last: 0,
        };
        watermarks.last_active_ms = watermarks.now_ms();
        watermarks
    }

    pub fn strategy(&self) -> &WatermarkStrategy<T> {
        &self.strategy
    }

    fn now_ms(&self) -> i64 {
        if self.strategy.idleness_ms.is_some() {
            self.clock.now_ms()
        } else {
            0
        }
    }

    fn index(&mut self, split: &S) -> usize {
        if self
            .splits
            .get(self.last)
            .is_some_and(|s| s.split == *split)
        {
            return self.last;
        }
        let index = match self.splits.iter().position(|s| s.split == *split) {
            Some(i) => i,
            None => {
                let now = self.now_ms();
                self.last_active_ms = now;
                self.splits.push(SplitState {
                    split: split.clone(),
                    generator: self.strategy.create_generator(),
                    last_active_ms: now,
                    finished: false,
                });
                self.splits.len() - 1
            }
        };
        self.last = index;
        index
    }

    /// The reader owns `split` (from now, for idleness); it holds the
    /// watermark back until it has one, is idle or is finished.
    pub fn add_split(&mut self, split: &S) {
        self.index(split);
    }

    /// `records` were read from `split` (which is added if unknown).
    pub fn on_batch(&mut self, split: &S, records: &[T]) {
        if records.is_empty() {
            return;
        }
        let now = self.now_ms();
        let i = self.index(split);
        let state = &mut self.splits[i];
        state.generator.on_batch(&self.strategy, records);
        state.last_active_ms = now;
        self.last_active_ms = now;
    }

    /// `records` were read from `split` (added if unknown) with the event
    /// times `timestamps` (one per record, same order), which the reader
    /// knows without the strategy's assigner (the Kafka source's record
    /// timestamps); the assigner is not called.
    pub fn on_batch_with_timestamps(&mut self, split: &S, records: &[T], timestamps: &[i64]) {
        if records.is_empty() {
            return;
        }
        let now = self.now_ms();
        let i = self.index(split);
        let state = &mut self.splits[i];
        state
            .generator
            .on_batch_with_timestamps(records, timestamps);
        state.last_active_ms = now;
        self.last_active_ms = now;
    }

    /// `split` has no more records: it no longer holds the watermark back.
    pub fn finish_split(&mut self, split: &S) {
        let i = self.index(split);
        self.splits[i].finished = true;
    }

    /// `split` is no longer this reader's.
    pub fn remove_split(&mut self, split: &S) {
        self.splits.retain(|s| s.split != *split);
        self.last = 0;
    }

    /// With idleness (`WatermarkStrategy::with_idleness`): every split still
    /// open has produced nothing for the idleness, and neither has the
    /// reader (so a reader without any open split, e.g. one that owns no
    /// split of an unbounded source, is idle once the idleness passed since
    /// it was created, as Flink's source operator without splits). Then
    /// [`SplitWatermarks::current`] says nothing and the reader's task sends
    /// `WatermarkStatus::Idle`. Without idleness, never.
    pub fn is_idle(&self) -> bool {
        let Some(idleness) = self.strategy.idleness_ms else {
            return false;
        };
        let now = self.clock.now_ms();
        let idle_since = |last: i64| now.saturating_sub(last) >= idleness;
        idle_since(self.last_active_ms)
            && self
                .splits
                .iter()
                .all(|s| s.finished || idle_since(s.last_active_ms))
    }

    /// The minimum over the splits that are neither finished nor idle;
    /// `None` while one of them has no watermark yet, or when none is left.
    pub fn current(&mut self) -> Option<Watermark> {
        let now = self.now_ms();
        let idleness = self.strategy.idleness_ms;
        let mut min: Option<Watermark> = None;
        for state in &mut self.splits {
            if state.finished {
                continue;
            }
            if idleness.is_some_and(|ms| now.saturating_sub(state.last_active_ms) >= ms) {
                continue;
            }
            let w = state.generator.current()?;
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        min
    }
}

/// The operator behind `DataStream::assign_timestamps_and_watermarks`: passes
/// records on unchanged and makes its output's watermarks from them with its
/// own generator, replacing whatever watermarks came from upstream (only the
/// end of input, [`Watermark::MAX`], is passed on), as Flink's
/// `TimestampsAndWatermarksOperator`. Idleness is not applied here (the
/// operator detects none itself); an idle status from upstream passes
/// through it.
pub struct TimestampsAndWatermarks<T> {
    strategy: WatermarkStrategy<T>,
    generator: Generator<T>,
}

impl<T> TimestampsAndWatermarks<T> {
    pub fn new(strategy: WatermarkStrategy<T>) -> Self {
        let generator = strategy.create_generator();
        Self {
            strategy,
            generator,
        }
    }
}

impl<T: Send> Operator<T, T> for TimestampsAndWatermarks<T> {
    fn process_batch(&mut self, input: &mut Vec<T>, output: &mut Vec<T>) -> Result<(), UserError> {
        self.generator.on_batch(&self.strategy, input);
        output.append(input);
        Ok(())
    }

    fn generates_watermarks(&self) -> bool {
        true
    }

    fn output_watermark(&mut self) -> Option<Watermark> {
        self.generator.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_state::ManualClock;

    #[test]
    fn bounded_out_of_orderness_is_max_minus_delay_minus_one() {
        let strategy = WatermarkStrategy::bounded_out_of_orderness(10, |t: &i64| *t);
        let mut g = strategy.create_generator();
        assert_eq!(g.current(), None);
        g.on_batch(&strategy, &[100, 50, 120, 90]);
        assert_eq!(g.current(), Some(Watermark(109)));
        let mut m = WatermarkStrategy::monotonous(|t: &i64| *t).create_generator();
        m.on_event(&5, 5);
        assert_eq!(m.current(), Some(Watermark(4)));
    }

    #[test]
    fn split_minimum_idleness_and_finished_splits() {
        let clock = ManualClock::new(1_000);
        let strategy = WatermarkStrategy::bounded_out_of_orderness(0, |t: &i64| *t);
        let mut held = SplitWatermarks::new(strategy.clone(), clock.clone());
        let mut idle = SplitWatermarks::new(strategy.with_idleness(500), clock.clone());
        for w in [&mut held, &mut idle] {
            w.add_split(&0u32);
            w.add_split(&1u32);
            w.on_batch(&0, &[1_000, 2_000]);
            // Split 1 has nothing yet: it holds everything back.
            assert_eq!(w.current(), None);
        }
        clock.advance_ms(499);
        assert_eq!(idle.current(), None);
        // Split 0 goes on producing; split 1 still nothing.
        idle.on_batch(&0, &[1_500]);
        held.on_batch(&0, &[1_500]);
        clock.advance_ms(1);
        // Split 1 produced nothing for 500 ms: idle, split 0 alone counts.
        assert_eq!(idle.current(), Some(Watermark(1_999)));
        assert_eq!(held.current(), None);
        // Split 1 far behind: the minimum is its watermark.
        for w in [&mut held, &mut idle] {
            w.on_batch(&1, &[10]);
            assert_eq!(w.current(), Some(Watermark(9)));
            w.finish_split(&1);
            assert_eq!(w.current(), Some(Watermark(1_999)));
        }
    }

    #[test]
    fn a_reader_is_idle_when_every_open_split_is() {
        let clock = ManualClock::new(0);
        let strategy = WatermarkStrategy::monotonous(|t: &i64| *t);
        let mut w = SplitWatermarks::new(strategy.clone().with_idleness(100), clock.clone());
        // No split at all: idle once the idleness passed since creation.
        assert!(!w.is_idle());
        clock.advance_ms(100);
        assert!(w.is_idle());
        w.add_split(&0u32);
        w.add_split(&1u32);
        assert!(!w.is_idle());
        w.on_batch(&0, &[5]);
        clock.advance_ms(60);
        w.on_batch(&1, &[7]);
        clock.advance_ms(40);
        // Split 0 idle, split 1 not.
        assert!(!w.is_idle());
        assert_eq!(w.current(), Some(Watermark(6)));
        clock.advance_ms(60);
        assert!(w.is_idle());
        assert_eq!(w.current(), None);
        // A finished split does not keep it active.
        w.on_batch(&1, &[9]);
        w.finish_split(&1);
        assert!(!w.is_idle());
        clock.advance_ms(100);
        assert!(w.is_idle());
        // Without idleness, never.
        let mut held = SplitWatermarks::new(strategy, clock.clone());
        held.add_split(&0u32);
        clock.advance_ms(1_000_000);
        assert!(!held.is_idle());
    }

    #[test]
    fn timestamps_given_by_the_reader_bypass_the_assigner() {
        let strategy =
            WatermarkStrategy::bounded_out_of_orderness(5, |_: &&str| panic!("assigner called"));
        let mut w = SplitWatermarks::new(strategy, ManualClock::new(0));
        w.add_split(&0u32);
        w.on_batch_with_timestamps(&0, &["a", "b"], &[100, 90]);
        assert_eq!(w.current(), Some(Watermark(94)));
        // An empty batch neither registers nor feeds anything.
        w.on_batch_with_timestamps(&1, &[], &[]);
        assert_eq!(w.current(), Some(Watermark(94)));
    }
}
