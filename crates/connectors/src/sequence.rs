//! A replayable, rescalable generator of records `f(i)` for `0 <= i < records`.
//!
//! The index range is cut into a fixed number of splits, each with its own
//! position (the next index); splits are dealt to the parallel instances
//! (`split % parallelism == instance`), so positions stay meaningful when the
//! parallelism changes. An optional rate throttles the total output.
//!
//! With event time ([`SequenceSource::with_event_time`]) every split has its
//! own watermark generator, the reader's watermark is the minimum over its
//! unfinished splits ([`SplitWatermarks`]), and the reader takes one batch
//! from each of its splits in turn, so all of them advance together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{
    Barrier, Data, Source, SourcePoll, SourceReader, SplitWatermarks, SubtaskInfo, UserError,
    Watermark, WatermarkStrategy,
};
use flowstate_state::RedistributionMode;

use crate::{ConnectorError, list_state};

/// Default number of splits.
pub const DEFAULT_SPLITS: u32 = 128;

/// Name of the operator list state holding the split positions.
pub const SPLITS_STATE: &str = "splits";

/// One split: the half-open index range `[next, end)` still to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitPosition {
    pub split: u32,
    pub next: u64,
    pub end: u64,
}

/// Generates `f(i)` for every index.
pub struct SequenceSource<T> {
    records: u64,
    splits: u32,
    rate_per_s: Option<u64>,
    make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    event_time: Option<WatermarkStrategy<T>>,
}

impl<T: Data> SequenceSource<T> {
    pub fn new(
        records: u64,
        splits: u32,
        make: impl Fn(u64) -> T + Send + Sync + 'static,
    ) -> Result<Self, ConnectorError> {
        if splits == 0 {
            return Err(ConnectorError::Config(
                "a sequence needs at least one split".into(),
            ));
        }
        Ok(Self {
            records,
            splits,
            rate_per_s: None,
            make: Arc::new(make),
            event_time: None,
        })
    }

    /// Records carry event time: `strategy` reads each generated record's
    /// timestamp, and every split has its own generator; the reader reports
    /// the minimum over its unfinished (and, with idleness, active) splits
    /// and reads its splits in turn, a batch from each.
    pub fn with_event_time(mut self, strategy: WatermarkStrategy<T>) -> Self {
        self.event_time = Some(strategy);
        self
    }

    /// Throttles all instances together to `rate_per_s` records per second.
    pub fn with_rate(mut self, rate_per_s: u64) -> Result<Self, ConnectorError> {
        if rate_per_s == 0 {
            return Err(ConnectorError::Config(
                "rate must be at least 1 record/s".into(),
            ));
        }
        self.rate_per_s = Some(rate_per_s);
        Ok(self)
    }

    /// The initial position of split `split`.
    pub fn split_range(&self, split: u32) -> SplitPosition {
        let n = u128::from(self.records);
        let s = u128::from(self.splits);
        let start = (n * u128::from(split) / s) as u64;
        let end = (n * (u128::from(split) + 1) / s) as u64;
        SplitPosition {
            split,
            next: start,
            end,
        }
    }
}

impl<T: Data> Source<T> for SequenceSource<T> {
    fn create_reader(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SourceReader<T>>, UserError> {
        // Positions from a checkpoint arrive already dealt out to this instance.
        let splits = match list_state::decode::<SplitPosition>(subtask, SPLITS_STATE)? {
            Some(restored) => restored,
            None => (0..self.splits)
                .filter(|s| s % subtask.parallelism == subtask.index)
                .map(|s| self.split_range(s))
                .collect(),
        };
        let rate_per_s = self
            .rate_per_s
            .map(|r| (r / u64::from(subtask.parallelism)).max(1));
        let event_time = self.event_time.as_ref().map(|strategy| {
            let mut watermarks = SplitWatermarks::new(strategy.clone(), Arc::clone(&subtask.clock));
            for split in splits.iter().filter(|s| s.next < s.end) {
                watermarks.add_split(&split.split);
            }
            watermarks
        });
        Ok(Box::new(SequenceReader {
            splits,
            event_time,
            current: 0,
            make: Arc::clone(&self.make),
            rate_per_s,
            started: None,
            emitted: 0,
        }))
    }
}

struct SequenceReader<T> {
    splits: Vec<SplitPosition>,
    /// Per-split watermarks, with event time.
    event_time: Option<SplitWatermarks<u32, T>>,
    /// The split read next (without event time: until it is finished).
    current: usize,
    make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    rate_per_s: Option<u64>,
    started: Option<Instant>,
    emitted: u64,
}

impl<T: Data> SourceReader<T> for SequenceReader<T> {
    fn poll(
        &mut self,
        out: &mut Vec<T>,
        max: usize,
        now: Instant,
    ) -> Result<SourcePoll, UserError> {
        let n = self.splits.len();
        let Some(index) = (0..n)
            .map(|k| (self.current + k) % n)
            .find(|&i| self.splits[i].next < self.splits[i].end)
        else {
            return Ok(SourcePoll::Finished);
        };
        self.current = index;
        let mut budget = max as u64;
        if let Some(rate) = self.rate_per_s {
            let started = *self.started.get_or_insert(now);
            let allowed = (now.duration_since(started).as_secs_f64() * rate as f64) as u64 + 1;
            if allowed <= self.emitted {
                let due =
                    started + Duration::from_secs_f64((self.emitted + 1) as f64 / rate as f64);
                return Ok(SourcePoll::Pending { wake_at: Some(due) });
            }
            budget = budget.min(allowed - self.emitted);
        }
        let split = &mut self.splits[index];
        let end = split.end.min(split.next + budget);
        let make = &*self.make;
        let first = out.len();
        out.extend((split.next..end).map(make));
        self.emitted += end - split.next;
        split.next = end;
        if let Some(watermarks) = self.event_time.as_mut() {
            watermarks.on_batch(&split.split, &out[first..]);
            if split.next >= split.end {
                watermarks.finish_split(&split.split);
            }
            // Each split in turn, so they advance together.
            self.current = (index + 1) % n;
        }
        Ok(SourcePoll::Ready)
    }

    fn watermark(&mut self) -> Option<Watermark> {
        self.event_time.as_mut()?.current()
    }

    /// Every unfinished split idle (with the strategy's idleness): a
    /// throttled reader whose splits wait their turn longer than that.
    fn is_idle(&mut self) -> bool {
        self.event_time.as_ref().is_some_and(|w| w.is_idle())
    }

    fn snapshot(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        list_state::encode(SPLITS_STATE, RedistributionMode::Split, &self.splits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(index: u32, parallelism: u32) -> SubtaskInfo {
        SubtaskInfo::new("seq", index, parallelism, 128)
    }

    #[test]
    fn every_index_is_emitted_once_across_instances() {
        for parallelism in [1, 2, 3, 5] {
            let source = SequenceSource::new(10_007, 16, |i| i).unwrap();
            let mut all = Vec::new();
            for index in 0..parallelism {
                let mut reader = source.create_reader(&info(index, parallelism)).unwrap();
                loop {
                    match reader.poll(&mut all, 100, Instant::now()).unwrap() {
                        SourcePoll::Finished => break,
                        _ => continue,
                    }
                }
            }
            all.sort_unstable();
            assert_eq!(
                all,
                (0..10_007).collect::<Vec<u64>>(),
                "parallelism {parallelism}"
            );
        }
    }

    /// Split 0 (indexes 0..500) is far ahead in event time of split 1
    /// (500..1000). Per-split watermarks: the reader's watermark never passes
    /// a timestamp it has still to emit, so no record of the split behind is
    /// late; at the end the minimum is the last split's.
    #[test]
    fn per_split_watermark_never_makes_the_split_behind_late() {
        let ts = |i: &u64| {
            if *i < 500 {
                1_000_000 + *i as i64
            } else {
                *i as i64
            }
        };
        let strategy = WatermarkStrategy::bounded_out_of_orderness(0, ts);
        let source = SequenceSource::new(1_000, 2, |i| i)
            .unwrap()
            .with_event_time(strategy);
        let mut reader = source.create_reader(&info(0, 1)).unwrap();
        let mut emitted = Vec::new();
        let mut watermarks = Vec::new();
        loop {
            let mut batch = Vec::new();
            let poll = reader.poll(&mut batch, 100, Instant::now()).unwrap();
            emitted.extend(batch);
            if let Some(w) = reader.watermark() {
                let unread = (0..1_000u64).filter(|i| !emitted.contains(i));
                for i in unread {
                    assert!(ts(&i) > w.0, "record {i} (ts {}) late at {w:?}", ts(&i));
                }
                watermarks.push(w);
            }
            if poll == SourcePoll::Finished {
                break;
            }
        }
        assert_eq!(emitted.len(), 1_000);
        // Both splits advanced in turn: the watermark grew while reading.
        assert!(watermarks.len() >= 8, "{watermarks:?}");
        assert!(watermarks.windows(2).all(|w| w[0] <= w[1]));
        // Nothing until split 1 produced (it held the minimum back), then
        // split 1's. A single generator would have been at 1_000_099 after
        // split 0's first batch, and every record of split 1 late.
        assert_eq!(watermarks.first(), Some(&Watermark(598)));
        assert!(watermarks.iter().all(|w| w.0 < 1_000), "{watermarks:?}");
    }

    #[test]
    fn positions_survive_a_snapshot_and_a_rescale() {
        let source = SequenceSource::new(5_000, 8, |i| i).unwrap();
        let mut seen = Vec::new();
        let mut lists = Vec::new();
        for index in 0..2 {
            let mut reader = source.create_reader(&info(index, 2)).unwrap();
            for _ in 0..3 {
                reader.poll(&mut seen, 100, Instant::now()).unwrap();
            }
            lists.extend(reader.snapshot(Barrier::checkpoint(1)).unwrap());
        }
        // Restore at parallelism 3: the split positions dealt out round-robin.
        let elements: Vec<Vec<u8>> = lists.into_iter().flat_map(|l| l.elements).collect();
        for index in 0..3u32 {
            let mine = elements
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % 3 == index)
                .map(|(_, e)| e.clone());
            let restored = flowstate_runtime::RestoredState {
                keyed: Default::default(),
                lists: vec![OperatorListState {
                    name: SPLITS_STATE.into(),
                    mode: RedistributionMode::Split,
                    elements: mine.collect(),
                }],
            };
            let mut subtask = info(index, 3);
            subtask.restored = Some(std::sync::Arc::new(restored));
            let mut reader = source.create_reader(&subtask).unwrap();
            while reader.poll(&mut seen, 100, Instant::now()).unwrap() != SourcePoll::Finished {}
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..5_000).collect::<Vec<u64>>());
    }
}
