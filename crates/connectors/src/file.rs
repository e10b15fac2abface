//! Text files in and out.
//!
//! [`TextLinesSource`] reads the lines of a file or of every visible file of a
//! directory; files are dealt to instances (`file % parallelism == instance`). A
//! line that is not UTF-8 fails the job with the file and line number.
//!
//! [`FileSink`] writes one line per record. Data goes to hidden in-progress files
//! (`.part-*.inprogress`); a file is published under its final name
//! (`part-<run>-<instance>-<n>`) by an atomic rename only once it is complete and
//! synced, so a reader of the directory never sees a partial file.

use std::fmt::Display;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{
    Data, Sink, SinkWriter, Source, SourcePoll, SourceReader, SubtaskInfo, UserError,
};
use flowstate_state::RedistributionMode;

use crate::{ConnectorError, list_state};

/// Longest accepted line, in bytes (a limit on everything: a file without line
/// breaks must not exhaust memory).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Lines of text files.
pub struct TextLinesSource {
    files: Arc<Vec<PathBuf>>,
}

impl TextLinesSource {
    /// `path` is a file, or a directory whose visible regular files are read in
    /// name order.
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
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            let entries = std::fs::read_dir(path).map_err(|source| ConnectorError::Read {
                path: shown.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| ConnectorError::Read {
                    path: shown.clone(),
                    source,
                })?;
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
                if is_file && !hidden {
                    files.push(entry.path());
                }
            }
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        Ok(Self {
            files: Arc::new(files),
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// Name of the text source's operator list state: one position per file.
pub const FILE_POSITIONS_STATE: &str = "file-positions";

/// How far a file has been read: the byte offset after the last line emitted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FilePosition {
    path: PathBuf,
    offset: u64,
    line: u64,
}

impl Source<String> for TextLinesSource {
    fn create_reader(
        &self,
        subtask: &SubtaskInfo,
    ) -> Result<Box<dyn SourceReader<String>>, UserError> {
        // Positions from a checkpoint arrive already dealt out to this instance.
        let positions = match list_state::decode::<FilePosition>(subtask, FILE_POSITIONS_STATE)? {
            Some(restored) => restored.into(),
            None => self
                .files
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % subtask.parallelism == subtask.index)
                .map(|(_, f)| FilePosition {
                    path: f.clone(),
                    offset: 0,
                    line: 0,
                })
                .collect(),
        };
        Ok(Box::new(TextLinesReader {
            positions,
            open: None,
            line_buf: Vec::new(),
        }))
    }
}

struct OpenFile {
    path: String,
    reader: BufReader<File>,
}

/// Reads the files of `positions` in order; the first is the one being read.
struct TextLinesReader {
    positions: std::collections::VecDeque<FilePosition>,
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
        let Some(position) = self.positions.front_mut() else {
            return Ok(SourcePoll::Finished);
        };
        if self.open.is_none() {
            let shown = position.path.display().to_string();
            let read_error = |source| ConnectorError::Read {
                path: shown.clone(),
                source,
            };
            let mut file = File::open(&position.path).map_err(read_error)?;
            if position.offset > 0 {
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(position.offset))
                    .map_err(read_error)?;
            }
            self.open = Some(OpenFile {
                path: shown,
                reader: BufReader::with_capacity(1 << 16, file),
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(SourcePoll::Ready);
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
                self.open = None;
                self.positions.pop_front();
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

    fn snapshot(&mut self) -> Result<Vec<OperatorListState>, UserError> {
        list_state::encode(
            FILE_POSITIONS_STATE,
            RedistributionMode::Split,
            &self.positions,
        )
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
        if name.starts_with(".part-") && name.ends_with(".inprogress") && !known.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(|e| write_error(&entry.path(), e))?;
        }
    }
    sync_dir(dir)
}

impl<T: Data + Display> Sink<T> for FileSink {
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
            recover(&self.dir, restored)?;
        }
        Ok(Box::new(FileWriter {
            dir: self.dir.clone(),
            prefix: format!("part-{}-{generation}-{}", self.run, subtask.index),
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

struct FileWriter {
    dir: PathBuf,
    prefix: String,
    part_bytes_max: u64,
    next_part: u64,
    current: Option<InProgress>,
    /// Closed, synced part files not yet published.
    pending: Vec<PendingFile>,
    line: String,
}

fn write_error(path: &Path, source: std::io::Error) -> ConnectorError {
    ConnectorError::Write {
        path: path.display().to_string(),
        source,
    }
}

impl FileWriter {
    fn open_part(&mut self) -> Result<&mut InProgress, ConnectorError> {
        if self.current.is_none() {
            let visible = format!("{}-{}", self.prefix, self.next_part);
            self.next_part += 1;
            let hidden = format!(".{visible}.inprogress");
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

    /// Flushes, syncs and closes the in-progress file; it becomes pending.
    fn close_part(&mut self) -> Result<(), ConnectorError> {
        if let Some(mut part) = self.current.take() {
            let path = self.dir.join(&part.hidden);
            part.out.flush().map_err(|e| write_error(&path, e))?;
            part.out
                .get_ref()
                .sync_all()
                .map_err(|e| write_error(&path, e))?;
            self.pending.push(PendingFile {
                hidden: part.hidden,
                visible: part.visible,
                checkpoint: u64::MAX,
            });
        }
        Ok(())
    }

    /// Publishes pending files recorded by checkpoints up to `checkpoint`.
    fn publish_up_to(&mut self, checkpoint: u64) -> Result<(), ConnectorError> {
        let (ready, waiting): (Vec<PendingFile>, Vec<PendingFile>) = self
            .pending
            .drain(..)
            .partition(|p| p.checkpoint <= checkpoint);
        self.pending = waiting;
        for file in &ready {
            publish(&self.dir, file)?;
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
                self.close_part()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        self.close_part()?;
        for file in &mut self.pending {
            file.checkpoint = 0;
        }
        self.publish_up_to(0)?;
        Ok(())
    }

    fn prepare_commit(&mut self, checkpoint_id: u64) -> Result<Vec<OperatorListState>, UserError> {
        self.close_part()?;
        for file in &mut self.pending {
            file.checkpoint = file.checkpoint.min(checkpoint_id);
        }
        list_state::encode(PENDING_STATE, RedistributionMode::Union, &self.pending)
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
        let state = reader.snapshot().unwrap();
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
