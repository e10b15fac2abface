//! Text files in and out, and what their snapshots may name.
//!
//! [`TextLinesSource`] reads the lines of a file or of every visible regular
//! file of a directory; the files are sorted by path and dealt to instances
//! (`file % parallelism == instance`). A line that is not UTF-8 fails the job
//! with the file and line number. Only regular files are read: an input that is
//! a FIFO, a socket or a device is refused when the source is created, directory
//! entries that are not regular files (symlinks included) are skipped, and a file
//! is opened without blocking and checked again on the open handle, so a file
//! swapped for a FIFO cannot block a worker thread.
//!
//! The source's snapshot records its input and a position for every file it
//! owns, finished ones included (`file-positions`, `Union`: every instance sees
//! every position, so a restore can tell a file added since from a finished one
//! and deal the files again at another parallelism). On restore, a position must
//! name a file of this run's input, the recorded input must be this run's, and a
//! file must not be shorter than its position; files of the input that no
//! position names are new and are read from the start.
//!
//! [`FileSink`] writes one line per record. Data goes to hidden in-progress files
//! (`.part-*.inprogress`); a file is published under its final name
//! (`part-<run>-<instance>-<n>`) by an atomic rename only once it is complete and
//! synced, so a reader of the directory never sees a partial file. The names a
//! restored snapshot asks it to rename must be plain names of its own pattern.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{
    Barrier, Data, PreparedCommit, Sink, SinkWriter, Source, SourcePoll, SourceReader, SubtaskInfo,
    UserError,
};
use flowstate_state::RedistributionMode;

use crate::{ConnectorError, list_state};

/// Longest accepted line, in bytes (a limit on everything: a file without line
/// breaks must not exhaust memory).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Read buffer of one open input file.
const READ_BUFFER_BYTES: usize = 1 << 16;

/// Lines of text files.
pub struct TextLinesSource {
    input: Input,
    /// The files to read, sorted: `input.root` itself or its visible regular
    /// files, as listed when the source was created.
    files: Arc<Vec<PathBuf>>,
}

/// The input of a text source, resolved once when the source is created.
#[derive(Debug, Clone)]
struct Input {
    /// Canonical (symlinks resolved): what snapshots record.
    root: PathBuf,
    /// As given, made absolute without resolving anything: how snapshots of
    /// earlier versions named the files.
    given: PathBuf,
    is_dir: bool,
}

impl Input {
    /// The file of this input that `path` (from a snapshot) names, in canonical
    /// form; `None` if it names anything else. Decided on the path's text alone:
    /// a path with `..` is refused, not resolved.
    fn owned(&self, path: &Path) -> Option<PathBuf> {
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return None;
        }
        let absolute = std::path::absolute(path).ok()?;
        if self.is_dir {
            let name = absolute.file_name()?;
            let parent = absolute.parent()?;
            let visible = !name.to_string_lossy().starts_with('.');
            (visible && (parent == self.root || parent == self.given)).then(|| self.root.join(name))
        } else {
            (absolute == self.root || absolute == self.given).then(|| self.root.clone())
        }
    }
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> ConnectorError + '_ {
    move |source| ConnectorError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// What kind of file `file_type` is, for an error message.
fn describe(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_socket() {
            return "socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "device";
        }
    }
    if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

impl TextLinesSource {
    /// `path` is a regular file, or a directory whose visible regular files are
    /// read in name order. Anything else (a FIFO, a socket, a device) is refused:
    /// opening it could block.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConnectorError::MissingInput {
                path: shown.clone(),
            },
            _ => ConnectorError::Read {
                path: shown.clone(),
                source,
            },
        })?;
        if !meta.is_dir() && !meta.is_file() {
            return Err(ConnectorError::NotRegular {
                path: shown,
                kind: describe(meta.file_type()),
            });
        }
        let input = Input {
            root: std::fs::canonicalize(path).map_err(read_error(path))?,
            given: std::path::absolute(path).map_err(read_error(path))?,
            is_dir: meta.is_dir(),
        };
        let files = if input.is_dir {
            let mut files = Vec::new();
            let entries = std::fs::read_dir(&input.root).map_err(read_error(path))?;
            for entry in entries {
                let entry = entry.map_err(read_error(path))?;
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                // The entry's own type (a symlink is not followed): only
                // regular files are read, everything else is skipped.
                let regular = entry.file_type().is_ok_and(|t| t.is_file());
                if regular && !hidden {
                    files.push(input.root.join(entry.file_name()));
                }
            }
            files.sort();
            files
        } else {
            vec![input.root.clone()]
        };
        Ok(Self {
            input,
            files: Arc::new(files),
        })
    }

    /// The files this source reads (canonical paths).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// An error about `value` of field `field` of restored list `state`.
    fn restored_error(
        subtask: &SubtaskInfo,
        state: &str,
        field: &'static str,
        value: impl Display,
        problem: impl Into<String>,
    ) -> ConnectorError {
        ConnectorError::RestoredState {
            uid: subtask.uid.clone(),
            state: state.to_owned(),
            field,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// `position.path` as a file of this input, or an error naming it.
    fn owned_position(
        &self,
        subtask: &SubtaskInfo,
        mut position: FilePosition,
    ) -> Result<FilePosition, ConnectorError> {
        match self.input.owned(&position.path) {
            Some(path) => {
                position.path = path;
                Ok(position)
            }
            None => Err(Self::restored_error(
                subtask,
                FILE_POSITIONS_STATE,
                "path",
                position.path.display(),
                format!("is not a file of the input '{}'", self.input.root.display()),
            )),
        }
    }

    /// This instance's files after a restore of the current format: every
    /// instance sees every position and takes its share of all files known.
    fn resume(
        &self,
        subtask: &SubtaskInfo,
        mode: RedistributionMode,
        positions: Vec<FilePosition>,
        inputs: Vec<RecordedInput>,
    ) -> Result<Vec<FilePosition>, ConnectorError> {
        let Some(recorded) = inputs.first() else {
            return Err(Self::restored_error(
                subtask,
                INPUT_STATE,
                "input",
                "",
                "is missing: the state is damaged",
            ));
        };
        if let Some(other) = inputs.iter().find(|i| i.input != recorded.input) {
            return Err(Self::restored_error(
                subtask,
                INPUT_STATE,
                "input",
                other.input.display(),
                format!(
                    "differs from '{}', recorded by another instance",
                    recorded.input.display()
                ),
            ));
        }
        if recorded.input != self.input.root {
            return Err(ConnectorError::InputChanged {
                uid: subtask.uid.clone(),
                state: INPUT_STATE.to_owned(),
                recorded: recorded.input.display().to_string(),
                current: self.input.root.display().to_string(),
            });
        }
        if mode != RedistributionMode::Union {
            // Dealt in shares, an instance could not tell a file another
            // instance finished from a new one, and would read it again.
            return Err(Self::restored_error(
                subtask,
                FILE_POSITIONS_STATE,
                "mode",
                format!("{mode:?}"),
                "is not Union, which this state needs",
            ));
        }
        let mut known = BTreeMap::new();
        for position in positions {
            let position = self.owned_position(subtask, position)?;
            let path = position.path.clone();
            if known.insert(path.clone(), position).is_some() {
                return Err(Self::restored_error(
                    subtask,
                    FILE_POSITIONS_STATE,
                    "path",
                    path.display(),
                    "is recorded twice",
                ));
            }
        }
        let listed: BTreeSet<&PathBuf> = self.files.iter().collect();
        let all: BTreeSet<PathBuf> = self.files.iter().chain(known.keys()).cloned().collect();
        let mut mine = Vec::new();
        for (_, path) in all
            .into_iter()
            .enumerate()
            .filter(|(j, _)| *j as u32 % subtask.parallelism == subtask.index)
        {
            let present = listed.contains(&path);
            let position = match known.remove(&path) {
                // New since the snapshot: read it from the start.
                None => FilePosition::start(path),
                Some(mut position) if present && position.done => {
                    // Finished before: read on if it grew, refuse if it shrank.
                    let size = std::fs::symlink_metadata(&path)
                        .map_err(read_error(&path))?
                        .len();
                    if size < position.offset {
                        return Err(position.shrunk(size));
                    }
                    position.done = size == position.offset;
                    position
                }
                Some(position) if present || position.done => position,
                Some(position) => {
                    return Err(Self::restored_error(
                        subtask,
                        FILE_POSITIONS_STATE,
                        "path",
                        path.display(),
                        format!(
                            "was being read (byte {}, line {}) but is no longer a file of \
                             the input: its remaining lines would be lost",
                            position.offset, position.line
                        ),
                    ));
                }
            };
            mine.push(position);
        }
        Ok(mine)
    }
}

/// Name of the text source's operator list state: one position per file.
pub const FILE_POSITIONS_STATE: &str = "file-positions";

/// Name of the text source's operator list state recording its input (one
/// element per instance, all equal).
pub const INPUT_STATE: &str = "text-input";

/// How far a file has been read: the byte offset after the last line emitted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FilePosition {
    path: PathBuf,
    offset: u64,
    line: u64,
    /// Read to its end. (Absent from snapshots of earlier versions, which
    /// dropped finished files instead: see [`TextLinesReader::legacy`].)
    #[serde(default)]
    done: bool,
}

impl FilePosition {
    fn start(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            line: 0,
            done: false,
        }
    }

    fn shrunk(&self, size: u64) -> ConnectorError {
        ConnectorError::FileShrunk {
            path: self.path.display().to_string(),
            size,
            offset: self.offset,
            line: self.line,
        }
    }
}

/// The input a snapshot was taken of (its canonical path).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RecordedInput {
    input: PathBuf,
}

impl Source<String> for TextLinesSource {
    fn create_reader(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Box<dyn SourceReader<String>>, UserError> {
        let positions =
            list_state::decode_with_mode::<FilePosition>(subtask, FILE_POSITIONS_STATE)?;
        let inputs = list_state::decode::<RecordedInput>(subtask, INPUT_STATE)?;
        let (files, legacy) = match (positions, inputs) {
            (None, None) => {
                let mine = self
                    .files
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j as u32 % subtask.parallelism == subtask.index)
                    .map(|(_, f)| FilePosition::start(f.clone()))
                    .collect();
                (mine, false)
            }
            // Earlier versions recorded no input, dealt the positions in
            // shares and dropped finished files: read what is dealt, keep that
            // format (a file no position names was finished).
            (Some((mode, positions)), None) => {
                if mode != RedistributionMode::Split {
                    return Err(Self::restored_error(
                        subtask,
                        FILE_POSITIONS_STATE,
                        "mode",
                        format!("{mode:?}"),
                        format!("is not Split, and no '{INPUT_STATE}' state was restored"),
                    )
                    .into());
                }
                let mine = positions
                    .into_iter()
                    .map(|p| self.owned_position(subtask, FilePosition { done: false, ..p }))
                    .collect::<Result<Vec<_>, _>>()?;
                (mine, true)
            }
            (positions, Some(inputs)) => {
                let (mode, positions) =
                    positions.unwrap_or((RedistributionMode::Union, Vec::new()));
                (self.resume(subtask, mode, positions, inputs)?, false)
            }
        };
        Ok(Box::new(TextLinesReader {
            input: self.input.root.clone(),
            files,
            current: 0,
            legacy,
            open: None,
            line_buf: Vec::new(),
        }))
    }
}

struct OpenFile {
    path: String,
    reader: BufReader<File>,
}

/// Opens `position`'s file for reading at its offset. The open never blocks
/// (`O_NONBLOCK`; a symlink is refused, `O_NOFOLLOW`), and the opened handle
/// must be a regular file at least as long as the position: whatever was
/// checked when the source was created may have been swapped since.
fn open_at(position: &FilePosition) -> Result<OpenFile, ConnectorError> {
    let path = &position.path;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    let mut file = options.open(path).map_err(read_error(path))?;
    let meta = file.metadata().map_err(read_error(path))?;
    if !meta.is_file() {
        return Err(ConnectorError::NotRegular {
            path: path.display().to_string(),
            kind: describe(meta.file_type()),
        });
    }
    if meta.len() < position.offset {
        return Err(position.shrunk(meta.len()));
    }
    if position.offset > 0 {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(position.offset))
            .map_err(read_error(path))?;
    }
    Ok(OpenFile {
        path: path.display().to_string(),
        reader: BufReader::with_capacity(READ_BUFFER_BYTES, file),
    })
}

/// Reads its files in order; those before `current` are done.
struct TextLinesReader {
    /// The input's canonical path, recorded in every snapshot.
    input: PathBuf,
    files: Vec<FilePosition>,
    current: usize,
    /// Restored from a snapshot of an earlier version: snapshots keep that
    /// format (unfinished files only, `Split`), since finished files it did
    /// not record cannot be told from new ones.
    legacy: bool,
    open: Option<OpenFile>,
    line_buf: Vec<u8>,
}

impl SourceReader<String> for TextLinesReader {
    fn poll(
        &mut self,
        out: &mut Vec<String>,
        max: usize,
        _now: Instant,
    ) -> Result<SourcePoll, UserError> {
        while self.files.get(self.current).is_some_and(|p| p.done) {
            self.current += 1;
        }
        let Some(position) = self.files.get_mut(self.current) else {
            return Ok(SourcePoll::Finished);
        };
        let open = match &mut self.open {
            Some(open) => open,
            None => self.open.insert(open_at(position)?),
        };
        for _ in 0..max {
            self.line_buf.clear();
            let n = std::io::Read::take(&mut open.reader, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut self.line_buf)
                .map_err(|source| ConnectorError::Read {
                    path: open.path.clone(),
                    source,
                })?;
            if n == 0 {
                position.done = true;
                self.open = None;
                self.current += 1;
                break;
            }
            position.offset += n as u64;
            position.line += 1;
            if self.line_buf.len() > MAX_LINE_BYTES {
                return Err(ConnectorError::Config(format!(
                    "'{}' line {}: longer than {MAX_LINE_BYTES} bytes",
                    open.path, position.line
                ))
                .into());
            }
            if self.line_buf.last() == Some(&b'\n') {
                self.line_buf.pop();
                if self.line_buf.last() == Some(&b'\r') {
                    self.line_buf.pop();
                }
            }
            match std::str::from_utf8(&self.line_buf) {
                Ok(line) => out.push(line.to_owned()),
                Err(e) => {
                    return Err(ConnectorError::InvalidUtf8 {
                        path: open.path.clone(),
                        line: position.line,
                        byte_offset: e.valid_up_to(),
                    }
                    .into());
                }
            }
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        if self.legacy {
            return list_state::encode(
                FILE_POSITIONS_STATE,
                RedistributionMode::Split,
                self.files.iter().filter(|p| !p.done),
            );
        }
        let mut lists =
            list_state::encode(FILE_POSITIONS_STATE, RedistributionMode::Union, &self.files)?;
        lists.extend(list_state::encode(
            INPUT_STATE,
            RedistributionMode::Union,
            [&RecordedInput {
                input: self.input.clone(),
            }],
        )?);
        Ok(lists)
    }
}

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
        Ok(Self {
            dir,
            run: format!("{millis:013x}-{:08x}", std::process::id()),
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
const PART_PREFIX: &str = "part-";
/// Prefix and suffix of an in-progress part file's name, around the published name.
const HIDDEN_PREFIX: &str = ".";
const HIDDEN_SUFFIX: &str = ".inprogress";
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

/// After a restore: publish what the restored checkpoint committed, delete
/// in-progress files it does not know.
fn recover(dir: &Path, restored: Vec<PendingFile>) -> Result<(), ConnectorError> {
    let mut known = std::collections::HashSet::new();
    for file in restored {
        publish(dir, &file)?;
        known.insert(file.hidden);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ConnectorError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let in_progress = name
            .strip_prefix(HIDDEN_PREFIX)
            .is_some_and(|n| n.starts_with(PART_PREFIX) && n.ends_with(HIDDEN_SUFFIX));
        if in_progress && !known.contains(&name) {
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
        if subtask.index == 0 {
            // Writers are all created before any of them writes, so instance 0
            // cleans up first: it publishes the pending files of a restored
            // checkpoint (every instance receives all of them: union state) and
            // deletes every in-progress file no checkpoint knows: files of a
            // failed attempt or of a killed run, whose records the replay writes
            // again. An output directory belongs to one job.
            let restored =
                list_state::decode::<PendingFile>(subtask, PENDING_STATE)?.unwrap_or_default();
            // Every name is checked before the first rename.
            for file in &restored {
                check_restored(subtask, file)?;
            }
            recover(&self.dir, restored)?;
        }
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

    fn info() -> SubtaskInfo {
        SubtaskInfo::new("t", 0, 1, 128)
    }

    fn read_all(source: &TextLinesSource) -> Result<Vec<String>, UserError> {
        let mut reader = source.create_reader(&info())?;
        let mut out = Vec::new();
        while reader.poll(&mut out, 7, Instant::now())? != SourcePoll::Finished {}
        Ok(out)
    }

    #[test]
    fn reads_lines_of_a_directory_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "three\r\nfour").unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "no").unwrap();
        let source = TextLinesSource::new(dir.path()).unwrap();
        assert_eq!(read_all(&source).unwrap(), ["one", "two", "three", "four"]);
    }

    #[test]
    fn missing_input_names_the_path() {
        let err = TextLinesSource::new("/no/such/dir/input.txt")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "input path '/no/such/dir/input.txt' does not exist"
        );
    }

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        std::fs::write(&path, b"fine\nalso fine\nbro\xffken\n").unwrap();
        let source = TextLinesSource::new(&path).unwrap();
        let err = read_all(&source).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "'{}' line 3: not valid UTF-8 (byte 3 of the line)",
                path.display()
            )
        );
    }

    #[test]
    fn sink_publishes_only_complete_parts() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path()).unwrap().with_part_bytes_max(10);
        let mut writer = Sink::<u32>::create_writer(&sink, &info()).unwrap();
        writer
            .write_batch(&mut vec![1u32, 22, 333, 4444, 55555])
            .unwrap();
        let visible = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            v.sort();
            v
        };
        assert!(
            visible(dir.path()).is_empty(),
            "nothing is visible before finish"
        );
        writer.finish().unwrap();
        let names = visible(dir.path());
        assert_eq!(names.len(), 2);
        let text: String = names
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        assert_eq!(text, "1\n22\n333\n4444\n55555\n");
    }

    fn hidden_contents(dir: &Path) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(HIDDEN_SUFFIX))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    #[test]
    fn sink_prepare_defers_the_flush_and_fsync_and_commits_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path()).unwrap();
        let mut writer = Sink::<u32>::create_writer(&sink, &info()).unwrap();
        writer.write_batch(&mut vec![1u32, 2, 3]).unwrap();
        let prepared = writer
            .prepare_commit_deferred(Barrier::checkpoint(1))
            .unwrap();
        assert_eq!(prepared.state[0].elements.len(), 1, "the file is pending");
        // The synchronous half only closed the part: its data is still in the
        // buffer the deferred action flushes and syncs.
        assert_eq!(hidden_contents(dir.path()), [""]);
        // The task goes on writing (into a new part) meanwhile.
        writer.write_batch(&mut vec![4u32]).unwrap();
        (prepared.deferred.expect("an fsync to defer"))().unwrap();
        assert_eq!(hidden_contents(dir.path()), ["1\n2\n3\n", ""]);
        writer.commit(1).unwrap();
        let published: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(PART_PREFIX))
            .collect();
        assert_eq!(published.len(), 1);
        let text = std::fs::read_to_string(dir.path().join(&published[0])).unwrap();
        assert_eq!(text, "1\n2\n3\n");
    }

    #[test]
    fn sink_action_syncs_the_files_of_an_earlier_action_that_never_ran() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path()).unwrap();
        let mut writer = Sink::<u32>::create_writer(&sink, &info()).unwrap();
        writer.write_batch(&mut vec![1u32]).unwrap();
        let first = writer
            .prepare_commit_deferred(Barrier::checkpoint(1))
            .unwrap();
        drop(first.deferred); // e.g. the upload queue was full: never run
        writer.write_batch(&mut vec![2u32]).unwrap();
        let second = writer
            .prepare_commit_deferred(Barrier::checkpoint(2))
            .unwrap();
        assert_eq!(second.state[0].elements.len(), 2);
        assert_eq!(hidden_contents(dir.path()), ["", ""]);
        (second.deferred.unwrap())().unwrap();
        assert_eq!(hidden_contents(dir.path()), ["1\n", "2\n"]);
    }

    #[test]
    fn text_source_resumes_from_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
        std::fs::write(dir.path().join("a.txt"), lines[..6].join("\n") + "\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), lines[6..].join("\r\n")).unwrap();
        let source = TextLinesSource::new(dir.path()).unwrap();
        let mut reader = source.create_reader(&info()).unwrap();
        let mut seen = Vec::new();
        reader.poll(&mut seen, 4, Instant::now()).unwrap();
        let state = reader.snapshot(Barrier::checkpoint(1)).unwrap();
        reader.poll(&mut seen, 4, Instant::now()).unwrap(); // read after the snapshot: replayed below
        let mut subtask = info();
        subtask.restored = Some(std::sync::Arc::new(flowstate_runtime::RestoredState {
            keyed: Default::default(),
            lists: state,
        }));
        let mut restored = source.create_reader(&subtask).unwrap();
        seen.truncate(4);
        while restored.poll(&mut seen, 3, Instant::now()).unwrap() != SourcePoll::Finished {}
        assert_eq!(seen, lines);
    }
}
