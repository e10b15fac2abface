//! A user-written source: generated page views, implementing flowstate's
//! `Source` / `SourceReader` traits directly.
//!
//! - **Splits.** The views are cut into `splits` splits: split `s` emits views
//!   `s`, `s + splits`, `s + 2 * splits`, ... (so every split walks the whole
//!   event-time range at the same pace). Split `s` goes to instance
//!   `s % parallelism`.
//! - **Positions in checkpoints.** Each split's next view is operator list
//!   state (`positions`, one JSON element per split) with `Split`
//!   redistribution: after a restore, at any parallelism, every split is read
//!   by exactly one instance from where the checkpoint left it.
//! - **Event time.** A split's timestamps never decrease, so a split's
//!   watermark is the time of its next view minus 1 ms; the reader's is the
//!   minimum over its unfinished splits. No view is ever late.

use std::time::{Duration, Instant};

use flowstate::runtime::checkpoint::{OperatorListState, decode_list, encode_list};
use flowstate::state::RedistributionMode;
use flowstate::{Barrier, Source, SourcePoll, SourceReader, SubtaskInfo, UserError, Watermark};

use crate::{PageView, Views};

/// The list state holding the split positions.
pub const POSITIONS_STATE: &str = "positions";

/// Views a reader takes from one split before it turns to the next.
const VIEWS_PER_TURN: u64 = 64;

/// One split's position: the next view it emits is `next * splits + split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitPosition {
    pub split: u32,
    pub next: u64,
}

/// The page-view source.
#[derive(Debug, Clone)]
pub struct PageViewSource {
    pub views: Views,
    pub splits: u32,
    /// Views per second of processing time over all instances; `None`: as
    /// fast as possible.
    pub rate_per_s: Option<u64>,
}

impl Source<PageView> for PageViewSource {
    fn create_reader(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Box<dyn SourceReader<PageView>>, UserError> {
        if self.splits == 0 {
            return Err("the page-view source needs at least one split".into());
        }
        // Restored: the positions dealt to this instance; else the initial ones.
        let splits = match subtask
            .restored
            .as_ref()
            .and_then(|r| r.list(POSITIONS_STATE))
        {
            Some(elements) => decode_list::<SplitPosition>(POSITIONS_STATE, elements)?,
            None => (0..self.splits)
                .filter(|s| s % subtask.parallelism == subtask.index)
                .map(|split| SplitPosition { split, next: 0 })
                .collect(),
        };
        Ok(Box::new(PageViewReader {
            views: self.views,
            total_splits: u64::from(self.splits),
            splits,
            turn: 0,
            rate_per_s: self
                .rate_per_s
                .map(|r| (r / u64::from(subtask.parallelism)).max(1)),
            started: None,
            emitted: 0,
        }))
    }
}

struct PageViewReader {
    views: Views,
    total_splits: u64,
    splits: Vec<SplitPosition>,
    /// The split read next.
    turn: usize,
    rate_per_s: Option<u64>,
    started: Option<Instant>,
    emitted: u64,
}

impl PageViewReader {
    /// The id of `split`'s next view, if it has one.
    fn next_id(&self, split: &SplitPosition) -> Option<u64> {
        let id = split.next * self.total_splits + u64::from(split.split);
        (id < self.views.count).then_some(id)
    }
}

impl SourceReader<PageView> for PageViewReader {
    fn poll(
        &mut self,
        out: &mut Vec<PageView>,
        max: usize,
        now: Instant,
    ) -> Result<SourcePoll, UserError> {
        let n = self.splits.len();
        let Some(index) = (0..n)
            .map(|k| (self.turn + k) % n)
            .find(|&i| self.next_id(&self.splits[i]).is_some())
        else {
            return Ok(SourcePoll::Finished);
        };
        let mut budget = (max as u64).min(VIEWS_PER_TURN);
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
        for _ in 0..budget {
            let Some(id) = self.next_id(&self.splits[index]) else {
                break;
            };
            out.push(self.views.view(id));
            self.splits[index].next += 1;
            self.emitted += 1;
        }
        self.turn = (index + 1) % n;
        Ok(SourcePoll::Ready)
    }

    /// The minimum over unfinished splits of (next view's time - 1).
    fn watermark(&mut self) -> Option<Watermark> {
        self.splits
            .iter()
            .filter_map(|s| self.next_id(s))
            .map(|id| self.views.view(id).timestamp_ms - 1)
            .min()
            .map(Watermark)
    }

    fn snapshot(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        Ok(vec![encode_list(
            POSITIONS_STATE,
            RedistributionMode::Split,
            &self.splits,
        )?])
    }
}
