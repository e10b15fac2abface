//! The JSON-lines source: records of a type `T` (serde), one JSON object per
//! line, from a file or every visible regular file of a directory, with event
//! time and a watermark per file.
//!
//! Every file is a split: the files (sorted by path) are dealt to the
//! instances (`file % parallelism == instance`); a reader reads its files in
//! turn, a batch from each, so they advance together in event time, and its
//! watermark is the minimum over its unfinished files' watermarks (each
//! file's own bounded-out-of-orderness generator): a file far ahead never
//! makes another's records late. Blank lines are skipped; a line that is not
//! UTF-8 or not a `T` fails the job with the file and line number.
//!
//! The snapshot records a position (byte offset, line, finished) for every
//! file of the instance (`json-positions`, `Union`: every instance sees all
//! of them, so a restore at another parallelism deals the files again and
//! never reads a finished one twice) and the input's canonical path
//! (`json-input`); a restore refuses another input or a position in a file
//! that is no longer there or shorter. Files added since are read from the
//! start.
//!
//! Owns reading and positions only; what the records mean is the job's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{
    Barrier, Data, Source, SourcePoll, SourceReader, SplitWatermarks, SubtaskInfo, UserError,
    Watermark, WatermarkStrategy,
};
use flowstate_state::RedistributionMode;
use serde::de::DeserializeOwned;

use super::source::MAX_LINE_BYTES;
use crate::{ConnectorError, list_state};

/// Name of the list state with one position per file.
pub const JSON_POSITIONS_STATE: &str = "json-positions";
/// Name of the list state recording the input (one element per instance).
pub const JSON_INPUT_STATE: &str = "json-input";

/// Read buffer of one open input file (lines are cut from it in place).
const READ_BUFFER_BYTES: usize = 1 << 18;

/// Turns one line (surrounding ASCII whitespace trimmed, never blank) into a
/// record, or says why it is not one (the source adds file and line).
///
/// A decoder of a [`JsonLinesSource`] must accept exactly the lines that
/// `serde_json` accepts as a `T` and give the same record, except that it may
/// leave out what its reader never looks at (e.g. a field the job does not
/// read, left empty): the format contract is JSON lines either way. It is
/// called per record, statically (the source is generic over it).
pub trait LineDecoder<T>: Clone + Send + Sync + 'static {
    fn decode(&self, line: &[u8]) -> Result<T, String>;
}

/// The default decoder: `serde_json` into `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SerdeJson;

impl<T: DeserializeOwned> LineDecoder<T> for SerdeJson {
    #[inline]
    fn decode(&self, line: &[u8]) -> Result<T, String> {
        serde_json::from_slice(line).map_err(|e| e.to_string())
    }
}

/// Records of type `T` from JSON-lines files, decoded by `D`.
pub struct JsonLinesSource<T, D = SerdeJson> {
    root: PathBuf,
    files: Arc<Vec<PathBuf>>,
    strategy: WatermarkStrategy<T>,
    rate_per_s: Option<u64>,
    decoder: D,
    records_read: RecordsRead,
    _records: PhantomData<fn() -> T>,
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> ConnectorError + '_ {
    move |source| ConnectorError::Read {
        path: path.display().to_string(),
        source,
    }
}

impl<T: Data + DeserializeOwned> JsonLinesSource<T> {
    /// `path` is a regular file, or a directory whose visible regular files
    /// are read; `strategy` gives each record's event time and each file's
    /// watermark generator. Lines are decoded by `serde_json`.
    pub fn new(
        path: impl AsRef<Path>,
        strategy: WatermarkStrategy<T>,
    ) -> Result<Self, ConnectorError> {
        Self::with_decoder(path, strategy, SerdeJson)
    }
}

impl<T: Data, D: LineDecoder<T>> JsonLinesSource<T, D> {
    /// [`JsonLinesSource::new`] with lines decoded by `decoder`.
    pub fn with_decoder(
        path: impl AsRef<Path>,
        strategy: WatermarkStrategy<T>,
        decoder: D,
    ) -> Result<Self, ConnectorError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConnectorError::MissingInput {
                path: path.display().to_string(),
            },
            _ => ConnectorError::Read {
                path: path.display().to_string(),
                source,
            },
        })?;
        let root = std::fs::canonicalize(path).map_err(read_error(path))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&root).map_err(read_error(path))? {
                let entry = entry.map_err(read_error(path))?;
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if !hidden && entry.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(root.join(entry.file_name()));
                }
            }
            files.sort();
            files
        } else if meta.is_file() {
            vec![root.clone()]
        } else {
            return Err(ConnectorError::NotRegular {
                path: path.display().to_string(),
                kind: "special file",
            });
        };
        let files = Arc::new(files);
        Ok(Self {
            root,
            records_read: RecordsRead {
                files: Arc::clone(&files),
                finished: Default::default(),
            },
            files,
            strategy,
            rate_per_s: None,
            decoder,
            _records: PhantomData,
        })
    }

    /// Throttles all instances together to `rate_per_s` records per second
    /// (each instance reads `rate_per_s / parallelism`).
    pub fn with_rate(mut self, rate_per_s: u64) -> Result<Self, ConnectorError> {
        if rate_per_s == 0 {
            return Err(ConnectorError::Config(
                "rate must be at least 1 record/s".into(),
            ));
        }
        self.rate_per_s = Some(rate_per_s);
        Ok(self)
    }

    /// The files this source reads (canonical paths, sorted).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The records its readers read, per file, shared with them.
    pub fn records_read(&self) -> RecordsRead {
        self.records_read.clone()
    }

    /// The number of non-blank lines of all files (records, if every line
    /// is one), read now.
    pub fn count_lines(&self) -> Result<u64, ConnectorError> {
        let mut total = 0;
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        for path in self.files.iter() {
            let mut file = File::open(path).map_err(read_error(path))?;
            // Whether the line read so far (in earlier reads) has a
            // non-whitespace byte.
            let mut filled = false;
            loop {
                let n = read_some(&mut file, &mut buf).map_err(read_error(path))?;
                if n == 0 {
                    break;
                }
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', &buf[..n]) {
                    // Most lines start with a non-blank byte: one look.
                    if filled || !is_blank(&buf[start..end]) {
                        total += 1;
                    }
                    filled = false;
                    start = end + 1;
                }
                filled = filled || !is_blank(&buf[start..n]);
            }
            if filled {
                total += 1;
            }
        }
        Ok(total)
    }

    fn restored_error(
        subtask: &SubtaskInfo,
        field: &'static str,
        value: String,
        problem: &str,
    ) -> ConnectorError {
        ConnectorError::RestoredState {
            uid: subtask.uid.clone(),
            state: JSON_POSITIONS_STATE.to_owned(),
            field,
            value,
            problem: problem.to_owned(),
        }
    }

    /// This instance's positions: its share of every file known (listed
    /// now or recorded), recorded positions kept.
    fn positions(&self, subtask: &SubtaskInfo) -> Result<Vec<FilePosition>, ConnectorError> {
        let recorded = list_state::decode::<FilePosition>(subtask, JSON_POSITIONS_STATE)?;
        let inputs = list_state::decode::<PathBuf>(subtask, JSON_INPUT_STATE)?;
        if let Some(input) = inputs.iter().flatten().find(|i| **i != self.root) {
            return Err(ConnectorError::InputChanged {
                uid: subtask.uid.clone(),
                state: JSON_INPUT_STATE.to_owned(),
                recorded: input.display().to_string(),
                current: self.root.display().to_string(),
            });
        }
        let mut known: BTreeMap<PathBuf, FilePosition> = BTreeMap::new();
        for position in recorded.into_iter().flatten() {
            if !self.files.contains(&position.path) {
                if position.done {
                    // Finished, then removed: nothing is lost.
                    continue;
                }
                return Err(Self::restored_error(
                    subtask,
                    "path",
                    position.path.display().to_string(),
                    "was being read but is no longer a file of the input",
                ));
            }
            let path = position.path.clone();
            if known.insert(path.clone(), position).is_some() {
                return Err(Self::restored_error(
                    subtask,
                    "path",
                    path.display().to_string(),
                    "is recorded twice",
                ));
            }
        }
        Ok(self
            .files
            .iter()
            .enumerate()
            .filter(|(j, _)| *j as u32 % subtask.parallelism == subtask.index)
            .map(|(_, path)| {
                known.remove(path).unwrap_or_else(|| FilePosition {
                    path: path.clone(),
                    offset: 0,
                    line: 0,
                    done: false,
                    records: Some(0),
                })
            })
            .collect())
    }
}

/// Whether `bytes` are all ASCII whitespace (as `trim_ascii` trims).
#[inline]
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// `read`, retried when interrupted.
fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// How far a file has been read: the byte offset after the last line read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FilePosition {
    path: PathBuf,
    offset: u64,
    line: u64,
    done: bool,
    /// Records read from the file so far (its non-blank lines before
    /// `offset`); `None` when restored from a snapshot of a version that
    /// did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    records: Option<u64>,
}

/// The number of records read from each file of a [`JsonLinesSource`], as
/// its readers report them when a file is finished (including files
/// finished before a restore): after a run that read everything, the
/// number of records in the input without reading it again.
#[derive(Debug, Clone, Default)]
pub struct RecordsRead {
    files: Arc<Vec<PathBuf>>,
    finished: Arc<std::sync::Mutex<BTreeMap<PathBuf, Option<u64>>>>,
}

impl RecordsRead {
    fn finished(&self, position: &FilePosition) {
        if let Ok(mut finished) = self.finished.lock() {
            finished.insert(position.path.clone(), position.records);
        }
    }

    /// The records of all files, if every file of the source was finished
    /// and its count is known (`None` otherwise: e.g. a file not read to
    /// its end, or one finished under a snapshot without counts).
    pub fn total(&self) -> Option<u64> {
        let finished = self.finished.lock().ok()?;
        self.files
            .iter()
            .map(|f| finished.get(f).copied().flatten())
            .sum()
    }
}

impl<T: Data, D: LineDecoder<T>> Source<T> for JsonLinesSource<T, D> {
    fn create_reader(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SourceReader<T>>, UserError> {
        let files = self.positions(subtask)?;
        let mut watermarks =
            SplitWatermarks::new(self.strategy.clone(), Arc::clone(&subtask.clock));
        for (i, file) in files.iter().enumerate() {
            if file.done {
                self.records_read.finished(file);
            } else {
                watermarks.add_split(&i);
            }
        }
        let open = files.iter().map(|_| None).collect();
        Ok(Box::new(JsonLinesReader {
            root: self.root.clone(),
            files,
            open,
            current: 0,
            watermarks,
            decoder: self.decoder.clone(),
            records_read: self.records_read.clone(),
            rate_per_s: self
                .rate_per_s
                .map(|r| (r / u64::from(subtask.parallelism)).max(1)),
            started: None,
            emitted: 0,
            _records: PhantomData,
        }))
    }
}

struct JsonLinesReader<T, D> {
    root: PathBuf,
    files: Vec<FilePosition>,
    /// The open handle of each file being read.
    open: Vec<Option<LineReader>>,
    /// The file read next.
    current: usize,
    watermarks: SplitWatermarks<usize, T>,
    decoder: D,
    records_read: RecordsRead,
    /// This instance's share of the throttle.
    rate_per_s: Option<u64>,
    started: Option<Instant>,
    emitted: u64,
    _records: PhantomData<fn() -> T>,
}

fn open_at(position: &FilePosition) -> Result<LineReader, ConnectorError> {
    let path = &position.path;
    let mut file = File::open(path).map_err(read_error(path))?;
    let meta = file.metadata().map_err(read_error(path))?;
    if !meta.is_file() {
        return Err(ConnectorError::NotRegular {
            path: path.display().to_string(),
            kind: "special file",
        });
    }
    if meta.len() < position.offset {
        return Err(ConnectorError::FileShrunk {
            path: path.display().to_string(),
            size: meta.len(),
            offset: position.offset,
            line: position.line,
        });
    }
    file.seek(SeekFrom::Start(position.offset))
        .map_err(read_error(path))?;
    Ok(LineReader {
        file,
        buf: vec![0; READ_BUFFER_BYTES],
        start: 0,
        end: 0,
        eof: false,
    })
}

/// An open file cut into lines in its own buffer: a line is handed out as a
/// slice of the buffer (no copy, no allocation), found with `memchr`.
struct LineReader {
    file: File,
    buf: Vec<u8>,
    /// `buf[start..end]` is read but not yet handed out.
    start: usize,
    end: usize,
    eof: bool,
}

/// The next line of a [`LineReader`].
enum NextLine {
    /// `buf[start..start + len]` (without its line break), and the bytes it
    /// takes in the file (with it).
    Line {
        start: usize,
        len: usize,
        bytes: u64,
    },
    /// A line longer than [`MAX_LINE_BYTES`].
    TooLong,
    End,
}

impl LineReader {
    fn next_line(&mut self) -> std::io::Result<NextLine> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(at) = memchr::memchr(b'\n', pending) {
                let start = self.start;
                self.start += at + 1;
                return Ok(if at > MAX_LINE_BYTES {
                    NextLine::TooLong
                } else {
                    NextLine::Line {
                        start,
                        len: at,
                        bytes: at as u64 + 1,
                    }
                });
            }
            if pending.len() > MAX_LINE_BYTES {
                return Ok(NextLine::TooLong);
            }
            if self.eof {
                if pending.is_empty() {
                    return Ok(NextLine::End);
                }
                // The last line, without a line break.
                let (start, len) = (self.start, pending.len());
                self.start = self.end;
                return Ok(NextLine::Line {
                    start,
                    len,
                    bytes: len as u64,
                });
            }
            // Keep the partial line, make room after it, read more.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(MAX_LINE_BYTES + 2);
                self.buf.resize(grown.max(self.end + 1), 0);
            }
            let n = read_some(&mut self.file, &mut self.buf[self.end..])?;
            self.end += n;
            self.eof = n == 0;
        }
    }
}

impl<T: Data, D: LineDecoder<T>> SourceReader<T> for JsonLinesReader<T, D> {
    fn poll(
        &mut self,
        out: &mut Vec<T>,
        max: usize,
        now: Instant,
    ) -> Result<SourcePoll, UserError> {
        let n = self.files.len();
        let Some(index) = (0..n)
            .map(|k| (self.current + k) % n)
            .find(|&i| !self.files[i].done)
        else {
            return Ok(SourcePoll::Finished);
        };
        let mut max = max;
        if let Some(rate) = self.rate_per_s {
            let started = *self.started.get_or_insert(now);
            let allowed = (now.duration_since(started).as_secs_f64() * rate as f64) as u64 + 1;
            if allowed <= self.emitted {
                let due =
                    started + std::time::Duration::from_secs_f64(self.emitted as f64 / rate as f64);
                return Ok(SourcePoll::Pending { wake_at: Some(due) });
            }
            max = max.min(usize::try_from(allowed - self.emitted).unwrap_or(usize::MAX));
        }
        let position = &mut self.files[index];
        let reader = match &mut self.open[index] {
            Some(reader) => reader,
            slot => slot.insert(open_at(position)?),
        };
        let first = out.len();
        while out.len() - first < max {
            let next = reader.next_line().map_err(read_error(&position.path))?;
            let invalid = |line: u64, message: String| ConnectorError::InvalidRecord {
                path: position.path.display().to_string(),
                line,
                message,
            };
            let (start, len) = match next {
                NextLine::End => {
                    position.done = true;
                    self.open[index] = None;
                    break;
                }
                NextLine::TooLong => {
                    return Err(invalid(
                        position.line + 1,
                        format!("longer than {MAX_LINE_BYTES} bytes"),
                    )
                    .into());
                }
                NextLine::Line { start, len, bytes } => {
                    position.offset += bytes;
                    position.line += 1;
                    (start, len)
                }
            };
            let line = reader.buf[start..start + len].trim_ascii();
            if line.is_empty() {
                continue;
            }
            let record = self
                .decoder
                .decode(line)
                .map_err(|e| invalid(position.line, e))?;
            out.push(record);
        }
        let read = (out.len() - first) as u64;
        self.emitted += read;
        if let Some(records) = position.records.as_mut() {
            *records += read;
        }
        self.watermarks.on_batch(&index, &out[first..]);
        if position.done {
            self.watermarks.finish_split(&index);
            self.records_read.finished(position);
        }
        self.current = (index + 1) % n;
        Ok(SourcePoll::Ready)
    }

    fn watermark(&mut self) -> Option<Watermark> {
        self.watermarks.current()
    }

    fn is_idle(&mut self) -> bool {
        self.watermarks.is_idle()
    }

    fn snapshot(&mut self, _barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        let mut lists =
            list_state::encode(JSON_POSITIONS_STATE, RedistributionMode::Union, &self.files)?;
        lists.extend(list_state::encode(
            JSON_INPUT_STATE,
            RedistributionMode::Union,
            [&self.root],
        )?);
        Ok(lists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
    struct Reading {
        at: i64,
        value: u64,
    }

    fn strategy() -> WatermarkStrategy<Reading> {
        WatermarkStrategy::bounded_out_of_orderness(0, |r: &Reading| r.at)
    }

    fn info(index: u32, parallelism: u32) -> SubtaskInfo {
        SubtaskInfo::new("json", index, parallelism, 128)
    }

    fn drain(
        reader: &mut dyn SourceReader<Reading>,
        max: usize,
    ) -> Result<Vec<Reading>, UserError> {
        let mut out = Vec::new();
        while reader.poll(&mut out, max, Instant::now())? != SourcePoll::Finished {}
        Ok(out)
    }

    fn write(dir: &Path, name: &str, readings: impl IntoIterator<Item = (i64, u64)>) {
        let text: String = readings
            .into_iter()
            .map(|(at, value)| format!("{{\"at\":{at},\"value\":{value}}}\n"))
            .collect();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_every_record_once_at_any_parallelism_and_counts_lines() {
        let dir = tempfile::tempdir().unwrap();
        for f in 0..5 {
            write(
                dir.path(),
                &format!("part-{f}"),
                (0..37).map(|i| (i, f * 100 + i as u64)),
            );
        }
        std::fs::write(dir.path().join(".hidden"), "not json").unwrap();
        let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
        assert_eq!(source.count_lines().unwrap(), 185);
        for parallelism in [1, 2, 3] {
            let mut all: Vec<u64> = Vec::new();
            for index in 0..parallelism {
                let mut reader = source.create_reader(&info(index, parallelism)).unwrap();
                all.extend(drain(reader.as_mut(), 10).unwrap().iter().map(|r| r.value));
            }
            all.sort_unstable();
            let expected: Vec<u64> = (0..5)
                .flat_map(|f| (0..37).map(move |i| f * 100 + i))
                .collect();
            assert_eq!(all, expected, "parallelism {parallelism}");
        }
    }

    /// File a is far ahead of file b: the watermark never passes a record
    /// of b still to be read (per-file watermarks, the minimum over files).
    #[test]
    fn the_watermark_never_makes_the_file_behind_late() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", (0..100).map(|i| (1_000_000 + i, 0)));
        write(dir.path(), "b", (0..100).map(|i| (i, 1)));
        let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
        let mut reader = source.create_reader(&info(0, 1)).unwrap();
        let mut seen = Vec::new();
        let mut watermarks = Vec::new();
        loop {
            let poll = reader.poll(&mut seen, 10, Instant::now()).unwrap();
            if let Some(w) = reader.watermark() {
                let read_of_b = seen.iter().filter(|r| r.value == 1).count() as i64;
                // b's next record has time `read_of_b`.
                assert!(
                    read_of_b == 100 || w.0 < read_of_b,
                    "{w:?} after {read_of_b} of b"
                );
                watermarks.push(w.0);
            }
            if poll == SourcePoll::Finished {
                break;
            }
        }
        assert_eq!(seen.len(), 200);
        assert!(watermarks.len() >= 5, "{watermarks:?}");
    }

    /// The throttle is computed from the `now` each poll is given: no sleeping, no timing.
    #[test]
    fn the_throttle_lets_through_the_rate_times_the_time_since_the_first_poll() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", (0..100).map(|i| (i, i as u64)));
        let source = JsonLinesSource::new(dir.path(), strategy())
            .unwrap()
            .with_rate(20)
            .unwrap();
        // Two instances: 10 records/s each; instance 0 has the only file.
        let mut reader = source.create_reader(&info(0, 2)).unwrap();
        let t0 = Instant::now();
        let mut out = Vec::new();
        assert_eq!(reader.poll(&mut out, 50, t0).unwrap(), SourcePoll::Ready);
        assert_eq!(out.len(), 1);
        let due = match reader.poll(&mut out, 50, t0).unwrap() {
            SourcePoll::Pending { wake_at: Some(due) } => due,
            other => panic!("{other:?}"),
        };
        assert_eq!(due, t0 + std::time::Duration::from_millis(100));
        reader
            .poll(&mut out, 50, t0 + std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(out.len(), 11);
        assert!(
            JsonLinesSource::new(dir.path(), strategy())
                .unwrap()
                .with_rate(0)
                .is_err()
        );
    }

    #[test]
    fn a_bad_line_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("events.json"),
            "{\"at\":1,\"value\":2}\n\n{\"at\":2,\"value\":\"x\"}\n",
        )
        .unwrap();
        let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
        let mut reader = source.create_reader(&info(0, 1)).unwrap();
        let error = drain(reader.as_mut(), 100).unwrap_err().to_string();
        assert!(
            error.contains("events.json' line 3: invalid type"),
            "{error}"
        );
    }

    /// Lines longer than the read buffer, lines cut by its end, CRLF, blank
    /// and whitespace-only lines (also across the buffer's end) and a last
    /// line without a break: every record once, counted alike, offsets
    /// right (a restore from a snapshot mid-file reads the rest).
    #[test]
    fn lines_across_the_read_buffer_are_read_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        let mut expected = Vec::new();
        for i in 0..3_000u64 {
            // Pad some records past the buffer (and one to several buffers).
            let pad = match i % 500 {
                7 => READ_BUFFER_BYTES + 3,
                250 if i == 250 => 3 * READ_BUFFER_BYTES,
                _ => (i as usize * 37) % 300,
            };
            text.push_str(&format!(
                "{{\"at\":{i},\"value\":{i},\"pad\":\"{}\"}}",
                "x".repeat(pad)
            ));
            text.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
            if i % 400 == 0 {
                text.push_str("\n   \t\n");
            }
            if i == 1_000 {
                text.push_str(&" ".repeat(READ_BUFFER_BYTES + 10));
                text.push('\n');
            }
            expected.push(i);
        }
        text.push_str("{\"at\":3000,\"value\":3000}");
        expected.push(3_000);
        std::fs::write(dir.path().join("f"), &text).unwrap();
        let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
        assert_eq!(source.count_lines().unwrap(), expected.len() as u64);
        let mut reader = source.create_reader(&info(0, 1)).unwrap();
        let values: Vec<u64> = drain(reader.as_mut(), 64)
            .unwrap()
            .iter()
            .map(|r| r.value)
            .collect();
        assert_eq!(values, expected);
        // Stop after 1 234 records, snapshot, restore: the rest, once.
        let mut reader = source.create_reader(&info(0, 1)).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 1_234 {
            let left = 1_234 - seen.len();
            reader.poll(&mut seen, left, Instant::now()).unwrap();
        }
        let lists = reader.snapshot(Barrier::checkpoint(1)).unwrap();
        let mut subtask = info(0, 1);
        subtask.restored = Some(Arc::new(flowstate_runtime::RestoredState {
            keyed: Default::default(),
            lists,
        }));
        let mut restored = source.create_reader(&subtask).unwrap();
        seen.extend(drain(restored.as_mut(), 100).unwrap());
        let values: Vec<u64> = seen.iter().map(|r| r.value).collect();
        assert_eq!(values, expected);
    }

    /// The records read per file add up to the records of the input once
    /// every file is finished, across a snapshot and a rescale; a position
    /// restored without a count (an earlier version's) leaves it unknown.
    #[test]
    fn records_read_counts_every_record_once_across_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        for f in 0..4u64 {
            let mut text = String::new();
            for i in 0..(20 + f * 7) {
                text.push_str(&format!("{{\"at\":{i},\"value\":{i}}}\n"));
                if i % 5 == 0 {
                    text.push_str(" \n");
                }
            }
            std::fs::write(dir.path().join(format!("f{f}")), text).unwrap();
        }
        let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
        let lines = source.count_lines().unwrap();
        assert_eq!(lines, 20 + 27 + 34 + 41);
        let read = source.records_read();
        let mut lists: Vec<OperatorListState> = Vec::new();
        for index in 0..2 {
            let mut reader = source.create_reader(&info(index, 2)).unwrap();
            for _ in 0..9 {
                reader.poll(&mut Vec::new(), 7, Instant::now()).unwrap();
            }
            lists.extend(reader.snapshot(Barrier::checkpoint(1)).unwrap());
        }
        assert_eq!(read.total(), None, "not every file is finished");
        let mut merged: BTreeMap<String, OperatorListState> = BTreeMap::new();
        for list in lists {
            merged
                .entry(list.name.clone())
                .and_modify(|m| m.elements.extend(list.elements.clone()))
                .or_insert(list);
        }
        let restore = |lists: Vec<OperatorListState>| {
            // A new source (a new process): nothing reported yet.
            let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
            let read = source.records_read();
            for index in 0..3 {
                let mut subtask = info(index, 3);
                subtask.restored = Some(Arc::new(flowstate_runtime::RestoredState {
                    keyed: Default::default(),
                    lists: lists.clone(),
                }));
                let mut reader = source.create_reader(&subtask).unwrap();
                drain(reader.as_mut(), 5).unwrap();
            }
            read.total()
        };
        let lists: Vec<OperatorListState> = merged.values().cloned().collect();
        assert_eq!(restore(lists.clone()), Some(lines));
        // The same snapshot as an earlier version wrote it: no counts.
        let old: Vec<OperatorListState> = lists
            .into_iter()
            .map(|mut list| {
                if list.name == JSON_POSITIONS_STATE {
                    let positions: Vec<FilePosition> =
                        flowstate_runtime::checkpoint::decode_list(&list.name, &list.elements)
                            .unwrap();
                    let old = positions
                        .into_iter()
                        .map(|p| FilePosition { records: None, ..p });
                    list = flowstate_runtime::checkpoint::encode_list(&list.name, list.mode, old)
                        .unwrap();
                }
                list
            })
            .collect();
        assert_eq!(restore(old), None);
    }

    #[test]
    fn count_lines_skips_blank_lines_wherever_they_are() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "\n \n1\n\t2 \n\n  3").unwrap();
        std::fs::write(dir.path().join("b"), "x\r\n\r\n").unwrap();
        std::fs::write(dir.path().join("c"), "").unwrap();
        std::fs::write(dir.path().join("d"), "   ").unwrap();
        let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
        assert_eq!(source.count_lines().unwrap(), 4);
    }

    /// A decoder of its own: called with the trimmed line; its error is
    /// reported with file and line.
    #[test]
    fn a_custom_decoder_gets_each_trimmed_line() {
        #[derive(Clone)]
        struct Digits;
        impl LineDecoder<Reading> for Digits {
            fn decode(&self, line: &[u8]) -> Result<Reading, String> {
                let text = std::str::from_utf8(line).map_err(|e| e.to_string())?;
                let value = text
                    .parse()
                    .map_err(|_| format!("not a number: '{text}'"))?;
                Ok(Reading { at: 0, value })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.txt"), " 1\n22 \r\n\n333\nx4\n").unwrap();
        let source = JsonLinesSource::with_decoder(dir.path(), strategy(), Digits).unwrap();
        let mut reader = source.create_reader(&info(0, 1)).unwrap();
        let mut out = Vec::new();
        let error = loop {
            match reader.poll(&mut out, 10, Instant::now()) {
                Ok(SourcePoll::Finished) => panic!("read past a bad line"),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        assert_eq!(
            out.iter().map(|r| r.value).collect::<Vec<_>>(),
            [1, 22, 333]
        );
        assert!(
            error.ends_with("n.txt' line 5: not a number: 'x4'"),
            "{error}"
        );
    }

    #[test]
    fn positions_survive_a_snapshot_and_a_rescale() {
        let dir = tempfile::tempdir().unwrap();
        for f in 0..4 {
            write(
                dir.path(),
                &format!("f{f}"),
                (0..50).map(|i| (i, f * 1000 + i as u64)),
            );
        }
        let source = JsonLinesSource::new(dir.path(), strategy()).unwrap();
        let mut seen = Vec::new();
        let mut lists: Vec<OperatorListState> = Vec::new();
        for index in 0..2 {
            let mut reader = source.create_reader(&info(index, 2)).unwrap();
            for _ in 0..5 {
                reader.poll(&mut seen, 7, Instant::now()).unwrap();
            }
            lists.extend(reader.snapshot(Barrier::checkpoint(1)).unwrap());
        }
        // Union: every instance of the restore sees every element.
        let mut merged: BTreeMap<String, OperatorListState> = BTreeMap::new();
        for list in lists {
            merged
                .entry(list.name.clone())
                .and_modify(|m| m.elements.extend(list.elements.clone()))
                .or_insert(list);
        }
        for index in 0..3 {
            let mut subtask = info(index, 3);
            subtask.restored = Some(Arc::new(flowstate_runtime::RestoredState {
                keyed: Default::default(),
                lists: merged.values().cloned().collect(),
            }));
            let mut reader = source.create_reader(&subtask).unwrap();
            seen.extend(drain(reader.as_mut(), 7).unwrap());
        }
        let mut values: Vec<u64> = seen.iter().map(|r| r.value).collect();
        values.sort_unstable();
        let expected: Vec<u64> = (0..4)
            .flat_map(|f| (0..50).map(move |i| f * 1000 + i))
            .collect();
        assert_eq!(values, expected);
    }
}
