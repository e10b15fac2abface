//! `Guarantee::AtMostOnce` (issue 12, item 5): after a failure the sources
//! resume after what they emitted (their read-ahead reservations), never
//! from the checkpoint's older positions, so no record reaches a sink twice;
//! some may be lost. The same failure under exactly-once still yields
//! exactly-once state.
//!
//! The source fails its task once, at the first record at or after a chosen
//! index that it reads after a checkpoint completed (so the restart restores
//! a checkpoint and the source has emitted past it). The sink publishes
//! every record at once (no transactions): it shows exactly what reached it,
//! duplicates included. Nothing depends on timing but the pace of the source.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate::runtime::checkpoint::storage::SharedStorage;
use flowstate::runtime::checkpoint::{
    CoordinatorSettings, OperatorListState, decode_list, encode_list, open_storage,
};
use flowstate::runtime::{CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom};
use flowstate::state::RedistributionMode;
use flowstate::{
    Barrier, ExecutionConfig, Sink, SinkWriter, Source, SourcePoll, SourceReader,
    StreamEnvironment, SubtaskInfo, UserError,
};

const RECORDS: u64 = 20_000;
const PARALLELISM: u32 = 2;
/// Records one reader emits per poll, at most one poll per millisecond.
const PER_POLL: usize = 50;

/// Records `i` for `0 <= i < RECORDS`, instance `j` of `p` reading
/// `j, j + p, ...`; its position (the next index) is `Split` list state.
#[derive(Clone)]
struct StrideSource {
    /// Fail once, at the first record `>= fail_at` read after a checkpoint
    /// completed (`u64::MAX`: never).
    fail_at: u64,
    failed: Arc<AtomicBool>,
    checkpointed: Arc<AtomicBool>,
    /// The index the failure happened at.
    failed_at: Arc<AtomicU64>,
    /// Stop emitting after this many records per reader (a crash test cancels
    /// the job meanwhile); `u64::MAX`: never.
    stall_after: u64,
}

impl StrideSource {
    fn new(fail_at: u64) -> Self {
        Self {
            fail_at,
            failed: Arc::new(AtomicBool::new(false)),
            checkpointed: Arc::new(AtomicBool::new(false)),
            failed_at: Arc::new(AtomicU64::new(u64::MAX)),
            stall_after: u64::MAX,
        }
    }
}

struct StrideReader {
    source: StrideSource,
    next: u64,
    step: u64,
    due: Option<Instant>,
    emitted: u64,
}

const POSITION: &str = "next";

impl Source<u64> for StrideSource {
    fn create_reader(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Box<dyn SourceReader<u64>>, UserError> {
        let restored = subtask.restored.as_ref().and_then(|r| r.list(POSITION));
        let next = match restored {
            Some(elements) => *decode_list::<u64>(POSITION, elements)?
                .first()
                .ok_or("no restored position")?,
            None => u64::from(subtask.index),
        };
        Ok(Box::new(StrideReader {
            source: self.clone(),
            next,
            step: u64::from(subtask.parallelism),
            due: None,
            emitted: 0,
        }))
    }
}

impl SourceReader<u64> for StrideReader {
    fn poll(
        &mut self,
        out: &mut Vec<u64>,
        max: usize,
        now: Instant,
    ) -> Result<SourcePoll, UserError> {
        if self.next >= RECORDS {
            return Ok(SourcePoll::Finished);
        }
        if let Some(due) = self.due.filter(|due| now < *due) {
            return Ok(SourcePoll::Pending { wake_at: Some(due) });
        }
        if self.emitted >= self.source.stall_after {
            return Ok(SourcePoll::Pending {
                wake_at: Some(now + Duration::from_millis(5)),
            });
        }
        for _ in 0..max.min(PER_POLL) {
            if self.next >= RECORDS {
                break;
            }
            if self.next >= self.source.fail_at
                && self.source.checkpointed.load(Ordering::SeqCst)
                && !self.source.failed.swap(true, Ordering::SeqCst)
            {
                self.source.failed_at.store(self.next, Ordering::SeqCst);
                return Err(format!("injected failure at record {}", self.next).into());
            }
            out.push(self.next);
            self.next += self.step;
            self.emitted += 1;
        }
        self.due = Some(now + Duration::from_millis(1));
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        Ok(vec![encode_list(
            POSITION,
            RedistributionMode::Split,
            [self.next],
        )?])
    }

    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), UserError> {
        self.source.checkpointed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Publishes every record at once into a vector shared by every attempt.
struct Published<T>(Arc<Mutex<Vec<T>>>);

impl<T: Send + 'static> Sink<T> for Published<T> {
    fn create_writer(&self, _: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(Published(Arc::clone(&self.0))))
    }
}

impl<T: Send> SinkWriter<T> for Published<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        self.0.lock().unwrap().append(batch);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

fn config(
    storage: SharedStorage,
    guarantee: Guarantee,
    restore: RestoreFrom,
    restart: RestartStrategy,
) -> ExecutionConfig {
    config_with(
        storage,
        guarantee,
        restore,
        restart,
        CoordinatorSettings {
            interval: Some(Duration::from_millis(10)),
            ..CoordinatorSettings::default()
        },
    )
}

fn config_with(
    storage: SharedStorage,
    guarantee: Guarantee,
    restore: RestoreFrom,
    restart: RestartStrategy,
    settings: CoordinatorSettings,
) -> ExecutionConfig {
    ExecutionConfig {
        job_name: "at-most-once-test".into(),
        checkpointing: Some(CheckpointingConfig {
            storage,
            settings,
            guarantee,
            job_id: None,
            restore,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart,
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(PARALLELISM)
    }
}

type Sums = Arc<Mutex<Vec<(u64, u64)>>>;

/// source -> published raw; source -> key_by(i % 7) -> running sum -> published.
fn build(env: &StreamEnvironment, source: StrideSource) -> (Arc<Mutex<Vec<u64>>>, Sums) {
    let raw = Arc::new(Mutex::new(Vec::new()));
    let sums = Arc::new(Mutex::new(Vec::new()));
    let records = env.from_source("Stride", source).uid("stride");
    records.sink_to("Raw", Published(Arc::clone(&raw)));
    records
        .map(|i: u64| (i % 7, i))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1 + b.1))
        .uid("sums")
        .sink_to("Sums", Published(Arc::clone(&sums)));
    (raw, sums)
}

/// Each record's number of appearances beyond the first, and how many of
/// `0..RECORDS` never appeared.
fn duplicates_and_lost(raw: &[u64]) -> (Vec<u64>, u64) {
    let mut seen = HashSet::with_capacity(raw.len());
    let duplicates: Vec<u64> = raw.iter().copied().filter(|i| !seen.insert(*i)).collect();
    assert!(raw.iter().all(|i| *i < RECORDS), "a record out of range");
    (duplicates, RECORDS - seen.len() as u64)
}

/// The final running sum of every key: its last update.
fn final_sums(sums: &[(u64, u64)]) -> BTreeMap<u64, u64> {
    sums.iter().copied().collect()
}

fn exact_sums() -> BTreeMap<u64, u64> {
    let mut exact = BTreeMap::new();
    for i in 0..RECORDS {
        *exact.entry(i % 7).or_default() += i;
    }
    exact
}

fn restart_once() -> RestartStrategy {
    RestartStrategy::fixed_delay(1, Duration::from_millis(1))
}

fn memory(name: &str) -> SharedStorage {
    open_storage(&format!(
        "memory://at-most-once-{name}-{}",
        std::process::id()
    ))
    .unwrap()
}

/// With old code (no at-most-once mode, the restart rewinding the sources to
/// the checkpoint), every record between the checkpoint and the failure
/// reached the sink twice.
#[test]
fn a_failure_under_at_most_once_never_delivers_a_record_twice() {
    let source = StrideSource::new(RECORDS * 6 / 10);
    let env = StreamEnvironment::new(config(
        memory("task-failure"),
        Guarantee::AtMostOnce,
        RestoreFrom::Nothing,
        restart_once(),
    ));
    let (raw, sums) = build(&env, source.clone());
    let report = env.execute().expect("the job recovers and finishes");
    assert_eq!(report.restarts, 1, "the injected failure restarted the job");
    let failed_at = source.failed_at.load(Ordering::SeqCst);
    assert!(failed_at < RECORDS, "the failure happened");
    let raw = raw.lock().unwrap();
    let (duplicates, lost) = duplicates_and_lost(&raw);
    assert!(
        duplicates.is_empty(),
        "{} records reached the sink twice (first {:?})",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    // The restored state never counts a record more than once: every final
    // sum is at most the exact one.
    let exact = exact_sums();
    for (key, sum) in final_sums(&sums.lock().unwrap()) {
        assert!(sum <= exact[&key], "key {key}: {sum} > {}", exact[&key]);
    }
    eprintln!(
        "[at-most-once] failed at record {failed_at}; {} records delivered, {lost} lost, none twice",
        raw.len()
    );
}

/// The same failure under exactly-once: records are replayed from the
/// checkpoint (the raw sink, which has no transactions, sees some twice),
/// and the state counts each record exactly once.
#[test]
fn the_same_failure_under_exactly_once_is_still_exactly_once() {
    let source = StrideSource::new(RECORDS * 6 / 10);
    let env = StreamEnvironment::new(config(
        memory("exactly-once"),
        Guarantee::ExactlyOnce,
        RestoreFrom::Nothing,
        restart_once(),
    ));
    let (raw, sums) = build(&env, source.clone());
    let report = env.execute().expect("the job recovers and finishes");
    assert_eq!(report.restarts, 1);
    assert!(source.failed_at.load(Ordering::SeqCst) < RECORDS);
    assert_eq!(final_sums(&sums.lock().unwrap()), exact_sums());
    let (duplicates, lost) = duplicates_and_lost(&raw.lock().unwrap());
    assert_eq!(lost, 0, "exactly-once loses nothing");
    eprintln!(
        "[exactly-once] {} records replayed into the non-transactional sink",
        duplicates.len()
    );
}

/// A run that ends without a word (cancelled while its sources are far
/// ahead of its only checkpoint, as a killed process would be) and a new run
/// with `RestoreFrom::Latest`: the new run resumes after the reservations of
/// the old one, not from the checkpoint, so together they deliver no record
/// twice; here none is lost either, as the old run emitted all it read.
#[test]
fn a_new_run_restoring_latest_resumes_after_the_reservations() {
    let storage = memory("new-run");
    let mut stalling = StrideSource::new(u64::MAX);
    stalling.stall_after = 3_000;
    // One checkpoint early on (a reader needs 60 ms for its 3000 records),
    // then none for an hour.
    let env = StreamEnvironment::new(config_with(
        Arc::clone(&storage),
        Guarantee::AtMostOnce,
        RestoreFrom::Nothing,
        RestartStrategy::None,
        CoordinatorSettings {
            interval: Some(Duration::from_millis(10)),
            min_pause: Duration::from_secs(3600),
            ..CoordinatorSettings::default()
        },
    ));
    let (raw_first, _) = build(&env, stalling.clone());
    let job = env.start().unwrap();
    let started = Instant::now();
    // Both readers emitted all they will and a checkpoint completed.
    while raw_first.lock().unwrap().len() < 2 * 3_000
        || !stalling.checkpointed.load(Ordering::SeqCst)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run stalls too early"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    job.cancel();
    let _ = job.join();
    let first = raw_first.lock().unwrap().clone();

    let env = StreamEnvironment::new(config(
        storage,
        Guarantee::AtMostOnce,
        RestoreFrom::Latest,
        RestartStrategy::None,
    ));
    let (raw_second, _) = build(&env, StrideSource::new(u64::MAX));
    let report = env.execute().expect("the second run finishes");
    assert!(report.restored_from.is_some(), "it restored a checkpoint");
    let mut all = first.clone();
    all.extend(raw_second.lock().unwrap().iter().copied());
    let (duplicates, lost) = duplicates_and_lost(&all);
    assert!(
        duplicates.is_empty(),
        "{} records delivered by both runs (first {:?})",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    assert_eq!(lost, 0, "the first run emitted everything it read");
    eprintln!(
        "[new run] first run {} records, second {}, {lost} lost, none twice",
        first.len(),
        raw_second.lock().unwrap().len()
    );
}
