//! The text-file source: see the module docs of `file`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{Barrier, Source, SourcePoll, SourceReader, SubtaskInfo, UserError};
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
