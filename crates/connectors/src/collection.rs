//! A bounded source over an in-memory collection (for tests and examples).

use std::sync::Arc;
use std::time::Instant;

use flowstate_runtime::{Data, Source, SourcePoll, SourceReader, SubtaskInfo, UserError};

/// Emits the items of a collection; instance `i` of `p` emits items `i, i+p, ...`.
pub struct CollectionSource<T> {
    items: Arc<Vec<T>>,
}

impl<T: Data + Sync> CollectionSource<T> {
    pub fn new(items: Vec<T>) -> Self {
        Self {
            items: Arc::new(items),
        }
    }
}

impl<T: Data + Sync> Source<T> for CollectionSource<T> {
    fn create_reader(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SourceReader<T>>, UserError> {
        Ok(Box::new(CollectionReader {
            items: Arc::clone(&self.items),
            next: subtask.index as usize,
            stride: subtask.parallelism as usize,
        }))
    }
}

struct CollectionReader<T> {
    items: Arc<Vec<T>>,
    next: usize,
    stride: usize,
}

impl<T: Data + Sync> SourceReader<T> for CollectionReader<T> {
    fn poll(
        &mut self,
        out: &mut Vec<T>,
        max: usize,
        _now: Instant,
    ) -> Result<SourcePoll, UserError> {
        if self.next >= self.items.len() {
            return Ok(SourcePoll::Finished);
        }
        for _ in 0..max {
            let Some(item) = self.items.get(self.next) else {
                break;
            };
            out.push(item.clone());
            self.next += self.stride;
        }
        Ok(SourcePoll::Ready)
    }
}
