//! Connectors: the sources and sinks jobs read from and write to.
//!
//! Each implements the runtime's `Source`/`Sink` traits and nothing else: a
//! connector knows nothing of the CLI, the API builder or state backends.

pub mod collection;
pub mod file;
mod list_state;
pub mod sequence;
pub mod sinks;
pub mod throttle;

pub use collection::CollectionSource;
pub use file::{FileSink, TextLinesSource};
pub use sequence::SequenceSource;
pub use sinks::{CollectSink, CountingSink, StdoutSink};
pub use throttle::ThrottledSink;

use thiserror::Error;

/// A connector cannot be set up or cannot go on.
#[derive(Debug, Error)]
pub enum ConnectorError {
    #[error("input path '{path}' does not exist")]
    MissingInput { path: String },
    #[error("cannot read '{path}'")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}' line {line}: not valid UTF-8 (byte {byte_offset} of the line)")]
    InvalidUtf8 {
        path: String,
        line: u64,
        byte_offset: usize,
    },
    #[error("cannot write '{path}'")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid connector setting: {0}")]
    Config(String),
    /// An input that is not a regular file or a directory (a FIFO, a socket,
    /// a device): reading it could block a worker thread for good.
    #[error("input path '{path}' is a {kind}, not a regular file or a directory")]
    NotRegular { path: String, kind: &'static str },
    /// A name or path restored from a snapshot is not one this connector owns.
    #[error("restored state '{state}' of operator '{uid}': {field} {value:?} {problem}")]
    RestoredState {
        uid: String,
        state: String,
        field: &'static str,
        value: String,
        problem: String,
    },
    /// The snapshot was taken of another input than this run reads.
    #[error(
        "restored state '{state}' of operator '{uid}' was taken reading '{recorded}', \
         but this run reads '{current}': restore with the same input, or start without \
         the snapshot"
    )]
    InputChanged {
        uid: String,
        state: String,
        recorded: String,
        current: String,
    },
    /// A file is shorter than the position a snapshot recorded in it.
    #[error(
        "'{path}' is {size} bytes, shorter than the position restored from the snapshot \
         (byte {offset}, line {line}): it was changed or truncated since"
    )]
    FileShrunk {
        path: String,
        size: u64,
        offset: u64,
        line: u64,
    },
    /// A line of a JSON-lines input is not a record of the expected shape.
    #[error("'{path}' line {line}: {message}")]
    InvalidRecord {
        path: String,
        line: u64,
        message: String,
    },
}
