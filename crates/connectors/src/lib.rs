//! Connectors: the sources and sinks jobs read from and write to.
//!
//! Each implements the runtime's `Source`/`Sink` traits and nothing else: a
//! connector knows nothing of the CLI, the API builder or state backends.

pub mod collection;
pub mod file;
mod list_state;
pub mod sequence;
pub mod sinks;

pub use collection::CollectionSource;
pub use file::{FileSink, TextLinesSource};
pub use sequence::SequenceSource;
pub use sinks::{CollectSink, CountingSink, StdoutSink};

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
}
