//! Cancel stops a job within a bounded time: a task blocked where it never
//! sees the cancel flag (user code, a system call) makes `join` return
//! `CancelTimeout` naming it once the cancellation timeout has passed, instead
//! of waiting for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use flowstate_runtime::{
    ExecutionConfig, JobError, JobGraph, Partitioning, Sink, SinkWriter, Source, SourcePoll,
    SourceReader, SubtaskInfo, UserError, start_job,
};

/// Instance 0 blocks in its first poll (ignoring cancel) until released;
/// the other instances finish at once.
struct BlockingSource {
    entered: Mutex<mpsc::Sender<()>>,
    release: Arc<AtomicBool>,
}

struct BlockingReader {
    blocks: bool,
    entered: mpsc::Sender<()>,
    release: Arc<AtomicBool>,
}

impl Source<u64> for BlockingSource {
    fn create_reader(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(BlockingReader {
            blocks: subtask.index == 0,
            entered: self.entered.lock().map_err(|_| "poisoned")?.clone(),
            release: Arc::clone(&self.release),
        }))
    }
}

impl SourceReader<u64> for BlockingReader {
    fn poll(&mut self, _: &mut Vec<u64>, _: usize, _: Instant) -> Result<SourcePoll, UserError> {
        if self.blocks {
            let _ = self.entered.send(());
            // Like a blocking open() of a FIFO: deaf to cancel.
            while !self.release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(SourcePoll::Finished)
    }
}

/// A source that never ends but polls without blocking: cancel reaches it.
struct EndlessSource;

impl Source<u64> for EndlessSource {
    fn create_reader(&self, _: &SubtaskInfo) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        Ok(Box::new(EndlessReader))
    }
}

struct EndlessReader;

impl SourceReader<u64> for EndlessReader {
    fn poll(&mut self, out: &mut Vec<u64>, _: usize, _: Instant) -> Result<SourcePoll, UserError> {
        out.push(1);
        Ok(SourcePoll::Ready)
    }
}

struct Discard;

impl Sink<u64> for Discard {
    fn create_writer(&self, _: &SubtaskInfo) -> Result<Box<dyn SinkWriter<u64>>, UserError> {
        Ok(Box::new(Discard))
    }
}

impl SinkWriter<u64> for Discard {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), UserError> {
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

fn graph(source: Arc<dyn Source<u64>>) -> JobGraph {
    let mut graph = JobGraph::new();
    let node = graph.add_source("Source: Test", source);
    graph.add_sink(
        "Sink: Discard",
        (node, Partitioning::Forward),
        Arc::new(Discard),
    );
    graph
}

#[test]
fn a_task_deaf_to_cancel_makes_join_return_after_the_timeout_naming_it() {
    let (entered_tx, entered) = mpsc::channel();
    let release = Arc::new(AtomicBool::new(false));
    let source = BlockingSource {
        entered: Mutex::new(entered_tx),
        release: Arc::clone(&release),
    };
    let timeout = Duration::from_millis(200);
    let config = ExecutionConfig {
        cancellation_timeout: timeout,
        ..ExecutionConfig::with_parallelism(2)
    };
    let job = start_job(graph(Arc::new(source)), &config).unwrap();
    entered.recv().expect("instance 0 polls");
    job.cancel();
    let cancelled_at = Instant::now();
    let result = job.join();
    let waited = cancelled_at.elapsed();
    release.store(true, Ordering::SeqCst);
    match result {
        Err(JobError::CancelTimeout {
            timeout: reported,
            running,
        }) => {
            assert_eq!(reported, timeout);
            assert_eq!(running, ["task 'Source: Test -> Sink: Discard (1/2)'"]);
            assert!(waited >= timeout, "join gave up after {waited:?}");
            let message = JobError::CancelTimeout { timeout, running }.to_string();
            assert!(
                message.contains("did not stop within 200ms")
                    && message.contains("Source: Test -> Sink: Discard (1/2)"),
                "{message}"
            );
        }
        other => panic!("expected a cancel timeout, got {other:?}"),
    }
}

#[test]
fn a_job_that_sees_cancel_ends_cancelled() {
    // The default timeout (30 s) is far longer than a cooperative stop takes.
    let job = start_job(
        graph(Arc::new(EndlessSource)),
        &ExecutionConfig::with_parallelism(2),
    )
    .unwrap();
    job.cancel();
    assert!(matches!(job.join(), Err(JobError::Cancelled)));
}

#[test]
fn a_zero_cancellation_timeout_is_refused() {
    let config = ExecutionConfig {
        cancellation_timeout: Duration::ZERO,
        ..ExecutionConfig::default()
    };
    assert!(config.validate().is_err());
}
