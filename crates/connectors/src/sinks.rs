//! Simple sinks: collect into memory, count, print.

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flowstate_runtime::{Data, Sink, SinkWriter, SubtaskInfo, UserError};

/// Collects every record into a shared vector (tests).
pub struct CollectSink<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> CollectSink<T> {
    /// The sink and the handle that reads what it collected.
    pub fn new() -> (Self, Arc<Mutex<Vec<T>>>) {
        let items = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                items: Arc::clone(&items),
            },
            items,
        )
    }
}

impl<T: Data> Sink<T> for CollectSink<T> {
    fn create_writer(&self, _subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(CollectWriter {
            items: Arc::clone(&self.items),
            local: Vec::new(),
        }))
    }
}

struct CollectWriter<T> {
    items: Arc<Mutex<Vec<T>>>,
    local: Vec<T>,
}

impl<T: Data> SinkWriter<T> for CollectWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        self.local.append(batch);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        let mut items = self
            .items
            .lock()
            .map_err(|_| "collect sink lock poisoned")?;
        items.append(&mut self.local);
        Ok(())
    }
}

/// Counts records and drops them.
pub struct CountingSink {
    count: Arc<AtomicU64>,
}

impl CountingSink {
    pub fn new() -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            Self {
                count: Arc::clone(&count),
            },
            count,
        )
    }
}

impl<T: Data> Sink<T> for CountingSink {
    fn create_writer(&self, _subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(CountingWriter {
            count: Arc::clone(&self.count),
        }))
    }
}

struct CountingWriter {
    count: Arc<AtomicU64>,
}

impl<T: Data> SinkWriter<T> for CountingWriter {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

/// Prints each record on its own line to standard output.
pub struct StdoutSink;

impl<T: Data + Display> Sink<T> for StdoutSink {
    fn create_writer(&self, _subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(StdoutWriter))
    }
}

struct StdoutWriter;

impl<T: Data + Display> SinkWriter<T> for StdoutWriter {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        // One lock per batch, so lines of one batch are never interleaved.
        let mut out = std::io::stdout().lock();
        for record in batch.drain(..) {
            writeln!(out, "{record}")?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        std::io::stdout().flush()?;
        Ok(())
    }
}
