//! The exactly-once file sink: see the module docs of `file`.

use std::fmt::Display;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{Barrier, Data, PreparedCommit, Sink, SinkWriter, SubtaskInfo, UserError};
use flowstate_state::RedistributionMode;

use crate::{ConnectorError, list_state};

/// Default size at which a part file is closed and a new one started.
pub const DEFAULT_PART_BYTES_MAX: u64 = 128 << 20;

/// Name of the sink's operator list state: files written and closed but not
/// yet published.
pub const PENDING_STATE: &str = "pending-files";

/// Writes records as lines into part files of a directory; see the module docs.
///
/// Exactly-once with checkpoints (two-phase commit): at a barrier the writer
/// closes its in-progress file and records it as pending in the checkpoint; when
/// the checkpoint completes it renames the pending files to their final names.
/// After a restore, instance 0 publishes the pending files of the restored
/// checkpoint (idempotently) and deletes in-progress files no checkpoint knows:
/// their records will be produced again by the replay. An output directory
/// belongs to one job.
pub struct FileSink {
    dir: PathBuf,
    run: String,
    part_bytes_max: u64,
    /// Writers created so far: each gets its own file names, so a writer
    /// created again after a restart never reuses a published name.
    writers: std::sync::atomic::AtomicU64,
}

impl FileSink {
    /// Creates `dir` if needed.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| ConnectorError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // Sinks created in one process within one millisecond (a job built
        // again for each attempt, as the simulation does) must not share a
        // run: the second would reuse the first one's file names and
        // overwrite what it published.
        static SINKS_CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let sink = SINKS_CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self {
            dir,
            run: format!("{millis:013x}-{:08x}-{sink:x}", std::process::id()),
            part_bytes_max: DEFAULT_PART_BYTES_MAX,
            writers: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn with_part_bytes_max(mut self, bytes: u64) -> Self {
        self.part_bytes_max = bytes.max(1);
        self
    }
}

/// A closed part file waiting to be published: names relative to the directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PendingFile {
    hidden: String,
    visible: String,
    /// The checkpoint that recorded it (`u64::MAX` until one did).
    #[serde(default)]
    checkpoint: u64,
}

/// Prefix of every published part file's name.
pub(super) const PART_PREFIX: &str = "part-";
/// Prefix and suffix of an in-progress part file's name, around the published name.
const HIDDEN_PREFIX: &str = ".";
pub(super) const HIDDEN_SUFFIX: &str = ".inprogress";
/// Longest part file name accepted from a snapshot, in bytes (the usual
/// `NAME_MAX`; the sink's own names are far shorter).
pub const MAX_PART_NAME_BYTES: usize = 255;

/// Whether `name` is a published part file name of this sink's pattern:
/// `part-` and then ASCII letters, digits, `-` and `_` only, so it is one path
/// component and cannot leave the directory.
fn is_part_name(name: &str) -> bool {
    name.len() <= MAX_PART_NAME_BYTES
        && name.strip_prefix(PART_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The hidden in-progress name of the part file published as `visible`.
fn hidden_name(visible: &str) -> String {
    format!("{HIDDEN_PREFIX}{visible}{HIDDEN_SUFFIX}")
}

/// Checks a pending file restored from a snapshot before anything is renamed:
/// both names must be plain names of this sink's pattern, the visible one
/// matching the hidden one.
fn check_restored(subtask: &SubtaskInfo, file: &PendingFile) -> Result<(), ConnectorError> {
    let error = |field, value: &str, problem: String| ConnectorError::RestoredState {
        uid: subtask.uid.clone(),
        state: PENDING_STATE.to_owned(),
        field,
        value: value.to_owned(),
        problem,
    };
    let inner = file
        .hidden
        .strip_prefix(HIDDEN_PREFIX)
        .and_then(|n| n.strip_suffix(HIDDEN_SUFFIX))
        .filter(|n| is_part_name(n));
    let Some(inner) = inner else {
        return Err(error(
            "hidden",
            &file.hidden,
            format!(
                "is not an in-progress file name of this sink \
                 ({HIDDEN_PREFIX}{PART_PREFIX}<letters, digits, - or _>{HIDDEN_SUFFIX})"
            ),
        ));
    };
    if file.visible != inner {
        return Err(error(
            "visible",
            &file.visible,
            format!("does not match the hidden name {:?}", file.hidden),
        ));
    }
    Ok(())
}

fn publish(dir: &Path, file: &PendingFile) -> Result<(), ConnectorError> {
    let (hidden, visible) = (dir.join(&file.hidden), dir.join(&file.visible));
    match std::fs::rename(&hidden, &visible) {
        Ok(()) => Ok(()),
        // Published before (a commit repeated after a restore).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && visible.exists() => Ok(()),
        Err(e) => Err(write_error(&visible, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), ConnectorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| write_error(dir, e))
}

/// The subtask index a part file's visible name was written by
/// (`part-<run>-<generation>-<index>-<part>`), if it has that shape.
fn writer_index(visible: &str) -> Option<u32> {
    let mut fields = visible.rsplit('-');
    let _part = fields.next()?;
    fields.next()?.parse().ok()
}

/// Whether subtask `index` of `parallelism` looks after files written by
/// subtask `writer`: its own, and instance 0 those of indices the job no
/// longer has (a rescale) or of no known shape.
fn looks_after(index: u32, parallelism: u32, writer: Option<u32>) -> bool {
    match writer {
        Some(w) if w < parallelism => w == index,
        _ => index == 0,
    }
}

/// At the start of subtask `index` of `parallelism`, before it writes:
/// publishes the files the restored checkpoint committed and deletes the
/// in-progress files no checkpoint knows (of a failed attempt or a killed
/// run, whose records the replay writes again), each only among the files
/// it looks after ([`looks_after`]). So the instances of one attempt, which
/// may run in several processes and start at different moments, never touch
/// each other's files.
fn recover(
    dir: &Path,
    restored: Vec<PendingFile>,
    index: u32,
    parallelism: u32,
) -> Result<(), ConnectorError> {
    let mut known = std::collections::HashSet::new();
    for file in restored {
        if looks_after(index, parallelism, writer_index(&file.visible)) {
            publish(dir, &file)?;
        }
        known.insert(file.hidden);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ConnectorError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(visible) = name
            .strip_prefix(HIDDEN_PREFIX)
            .and_then(|n| n.strip_suffix(HIDDEN_SUFFIX))
            .filter(|n| n.starts_with(PART_PREFIX))
        else {
            continue;
        };
        if !known.contains(&name) && looks_after(index, parallelism, writer_index(visible)) {
            std::fs::remove_file(entry.path()).map_err(|e| write_error(&entry.path(), e))?;
        }
    }
    sync_dir(dir)
}

impl<T: Data + Display> Sink<T> for FileSink {
    /// Two-phase commit: output becomes visible when a checkpoint completes.
    fn commits_on_checkpoint(&self) -> bool {
        true
    }

    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        let generation = self
            .writers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Every instance receives every pending file of a restored
        // checkpoint (union state) and recovers those it looks after. An
        // output directory belongs to one job.
        let restored =
            list_state::decode::<PendingFile>(subtask, PENDING_STATE)?.unwrap_or_default();
        // Every name is checked before the first rename.
        for file in &restored {
            check_restored(subtask, file)?;
        }
        recover(&self.dir, restored, subtask.index, subtask.parallelism)?;
        Ok(Box::new(FileWriter {
            dir: self.dir.clone(),
            prefix: format!("{PART_PREFIX}{}-{generation}-{}", self.run, subtask.index),
            part_bytes_max: self.part_bytes_max,
            next_part: 0,
            current: None,
            pending: Vec::new(),
            line: String::new(),
        }))
    }
}

struct InProgress {
    hidden: String,
    visible: String,
    out: BufWriter<File>,
    bytes: u64,
}

/// Whether a closed part file's data has reached the disk. The synchronous
/// half of `prepare_commit` only closes a part (moves its handle here); the
/// flush and fsync run later, on an upload thread, before the checkpoint that
/// records the file is acknowledged.
enum Durability {
    /// Closed at a barrier: the buffer still holds its tail.
    Buffered(BufWriter<File>),
    /// Closed when it was full: written, not synced.
    Written(File),
    Synced,
    /// A flush or fsync failed. Never retried: after a failed fsync Linux may
    /// report a later one as successful although the data is lost, so every
    /// checkpoint that records this file fails, and the job eventually
    /// restarts from an older checkpoint, whose replay writes the records to
    /// a new file.
    Failed(String),
}

/// One closed part file's durability, shared by the writer and the deferred
/// actions of the checkpoints that record it. The lock is held during the
/// flush and fsync, so an action that finds the file being synced by an
/// earlier checkpoint's action waits for it: no checkpoint is acknowledged
/// before every file it records is on disk, whatever order the actions run in.
/// The writer's own thread never takes it while a checkpoint is in flight
/// (only `finish`, after the last checkpoint, does).
struct PartSync {
    path: PathBuf,
    state: Mutex<Durability>,
}

impl PartSync {
    fn ensure_synced(&self) -> Result<bool, ConnectorError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let synced = match std::mem::replace(&mut *state, Durability::Synced) {
            Durability::Synced => return Ok(false),
            Durability::Failed(reason) => {
                let error =
                    std::io::Error::other(format!("an earlier flush or fsync failed: {reason}"));
                *state = Durability::Failed(reason);
                return Err(write_error(&self.path, error));
            }
            Durability::Buffered(mut out) => out.flush().and_then(|()| out.get_ref().sync_all()),
            Durability::Written(file) => file.sync_all(),
        };
        match synced {
            Ok(()) => Ok(true),
            Err(e) => {
                *state = Durability::Failed(e.to_string());
                Err(write_error(&self.path, e))
            }
        }
    }
}

/// A closed part file not yet published.
struct Pending {
    file: PendingFile,
    sync: Arc<PartSync>,
}

struct FileWriter {
    dir: PathBuf,
    prefix: String,
    part_bytes_max: u64,
    next_part: u64,
    current: Option<InProgress>,
    /// Closed part files not yet published, oldest first.
    pending: Vec<Pending>,
    line: String,
}

fn write_error(path: &Path, source: std::io::Error) -> ConnectorError {
    ConnectorError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// Makes `files` durable: flushes and fsyncs each one not yet synced, then
/// the directory if any was (so their hidden names survive a crash too).
fn sync_files(dir: &Path, files: &[Arc<PartSync>]) -> Result<(), ConnectorError> {
    let mut any = false;
    for file in files {
        any |= file.ensure_synced()?;
    }
    if any {
        sync_dir(dir)?;
    }
    Ok(())
}

impl FileWriter {
    fn open_part(&mut self) -> Result<&mut InProgress, ConnectorError> {
        if self.current.is_none() {
            let visible = format!("{}-{}", self.prefix, self.next_part);
            self.next_part += 1;
            let hidden = hidden_name(&visible);
            let path = self.dir.join(&hidden);
            let file = File::create(&path).map_err(|e| write_error(&path, e))?;
            self.current = Some(InProgress {
                hidden,
                visible,
                out: BufWriter::with_capacity(1 << 20, file),
                bytes: 0,
            });
        }
        match self.current.as_mut() {
            Some(part) => Ok(part),
            None => unreachable!("opened just above"),
        }
    }

    /// Closes the in-progress file; it becomes pending, not yet synced. With
    /// `full` (the part reached its size) its buffer is written now, like any
    /// other write of this thread, so that a closed part holds no buffer; at a
    /// barrier even that is left to the deferred action.
    fn close_part(&mut self, full: bool) -> Result<(), ConnectorError> {
        if let Some(part) = self.current.take() {
            let path = self.dir.join(&part.hidden);
            let durability = if full {
                let file = part
                    .out
                    .into_inner()
                    .map_err(|e| write_error(&path, e.into_error()))?;
                Durability::Written(file)
            } else {
                Durability::Buffered(part.out)
            };
            self.pending.push(Pending {
                file: PendingFile {
                    hidden: part.hidden,
                    visible: part.visible,
                    checkpoint: u64::MAX,
                },
                sync: Arc::new(PartSync {
                    path,
                    state: Mutex::new(durability),
                }),
            });
        }
        Ok(())
    }

    /// The durability handles of every pending file.
    fn unpublished(&self) -> Vec<Arc<PartSync>> {
        self.pending.iter().map(|p| Arc::clone(&p.sync)).collect()
    }

    /// Publishes pending files recorded by checkpoints up to `checkpoint`.
    /// They are synced: the checkpoint that recorded them completed, so its
    /// deferred action (which syncs every file it records) succeeded.
    fn publish_up_to(&mut self, checkpoint: u64) -> Result<(), ConnectorError> {
        let (ready, waiting): (Vec<Pending>, Vec<Pending>) = self
            .pending
            .drain(..)
            .partition(|p| p.file.checkpoint <= checkpoint);
        self.pending = waiting;
        for pending in &ready {
            publish(&self.dir, &pending.file)?;
        }
        if !ready.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl<T: Data + Display> SinkWriter<T> for FileWriter {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        use std::fmt::Write as _;
        for record in batch.drain(..) {
            self.line.clear();
            writeln!(self.line, "{record}")?;
            let max = self.part_bytes_max;
            let line = std::mem::take(&mut self.line);
            let part = self.open_part()?;
            let written = part.out.write_all(line.as_bytes());
            part.bytes += line.len() as u64;
            let full = part.bytes >= max;
            let hidden = part.hidden.clone();
            self.line = line;
            written.map_err(|e| write_error(&self.dir.join(hidden), e))?;
            if full {
                self.close_part(true)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        // With checkpoints nothing is left (the final checkpoint published
        // everything); without, this is the one sync and publish, here.
        self.close_part(false)?;
        sync_files(&self.dir, &self.unpublished())?;
        for pending in &mut self.pending {
            pending.file.checkpoint = 0;
        }
        self.publish_up_to(0)?;
        Ok(())
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        let prepared = SinkWriter::<T>::prepare_commit_deferred(self, barrier)?;
        if let Some(deferred) = prepared.deferred {
            deferred()?;
        }
        Ok(prepared.state)
    }

    fn prepare_commit_deferred(&mut self, barrier: Barrier) -> Result<PreparedCommit, UserError> {
        // Any kind of barrier closes the part: a savepoint must hold every
        // record before its barrier. A savepoint's files stay pending until a
        // later checkpoint (or the stop-with-savepoint itself) completes.
        self.close_part(false)?;
        for pending in &mut self.pending {
            pending.file.checkpoint = pending.file.checkpoint.min(barrier.id);
        }
        let files: Vec<&PendingFile> = self.pending.iter().map(|p| &p.file).collect();
        let state = list_state::encode(PENDING_STATE, RedistributionMode::Union, &files)?;
        if self.pending.is_empty() {
            return Ok(PreparedCommit::done(state));
        }
        // The flush and fsync of every file this snapshot records (those of
        // an earlier snapshot whose action failed or never ran included) run
        // on an upload thread; the next part file is opened by the next write.
        let (dir, files) = (self.dir.clone(), self.unpublished());
        Ok(PreparedCommit {
            state,
            deferred: Some(Box::new(move || {
                sync_files(&dir, &files)?;
                Ok(())
            })),
        })
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.publish_up_to(checkpoint_id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"x\n").unwrap();
    }

    /// A job built again for every attempt in one process (the simulation)
    /// created sinks within one millisecond that shared their run, so the
    /// second attempt's writer 0 reused the first one's published names.
    #[test]
    fn sinks_created_at_once_in_one_process_have_distinct_runs() {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<String> = (0..8)
            .map(|_| FileSink::new(dir.path()).unwrap().run)
            .collect();
        for (i, run) in runs.iter().enumerate() {
            assert!(!runs[..i].contains(run), "run {run} twice: {runs:?}");
            assert!(is_part_name(&format!("{PART_PREFIX}{run}-0-0-0")), "{run}");
        }
    }

    #[test]
    fn a_part_file_names_its_writer() {
        assert_eq!(writer_index("part-0001a2b3c4d5e-00001b5a-1-2-0"), Some(2));
        assert_eq!(writer_index("part-x"), None);
        assert!(looks_after(2, 3, Some(2)));
        assert!(!looks_after(0, 3, Some(2)));
        // After a rescale from 4 to 2, instance 0 looks after index 3's files.
        assert!(looks_after(0, 2, Some(3)));
        assert!(!looks_after(1, 2, Some(3)));
        assert!(looks_after(0, 2, None));
    }

    /// Instances of one attempt may start at different moments (in several
    /// processes): one's recovery must not delete another's files, which it
    /// may already be writing (the bug: instance 0 deleted every in-progress
    /// file of the directory).
    #[test]
    fn recovery_touches_only_the_files_an_instance_looks_after() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = ".part-0001a2b3c4d5e-00001b5a-0-1-0.inprogress";
        let stale_own = ".part-0001a2b3c4d5e-00001b5a-0-0-3.inprogress";
        let stale_gone = ".part-0001a2b3c4d5e-00001b5a-0-7-0.inprogress";
        let pending = PendingFile {
            hidden: ".part-0001a2b3c4d5e-00001b5a-0-1-1.inprogress".into(),
            visible: "part-0001a2b3c4d5e-00001b5a-0-1-1".into(),
            checkpoint: 4,
        };
        for name in [theirs, stale_own, stale_gone, pending.hidden.as_str()] {
            touch(dir.path(), name);
        }
        recover(dir.path(), vec![pending.clone()], 0, 2).unwrap();
        let exists = |name: &str| dir.path().join(name).exists();
        assert!(exists(theirs), "instance 1's file stays");
        assert!(!exists(stale_own) && !exists(stale_gone));
        assert!(exists(&pending.hidden), "instance 1 publishes its own");
        recover(dir.path(), vec![pending.clone()], 1, 2).unwrap();
        assert!(!exists(theirs) && exists(&pending.visible));
    }
}
