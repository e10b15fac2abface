//! Offline tools over snapshots, for people: reading a checkpoint or savepoint
//! without running the job that wrote it (`flowstate inspect`, `flowstate
//! state dump`, `flowstate verify`).
//!
//! Owns: the summary, the file-by-file verification and the streaming dump of a
//! snapshot ([`inspect`]), and the decoding of canonical entries from the type
//! names a snapshot records, without the Rust types ([`dynamic`]).
//!
//! Must not touch: anything that writes to a snapshot, and anything the engine
//! runs. The rules a restore relies on stay in the core crates: the structural
//! checks of metadata (`flowstate_checkpoint::validate`, run by
//! `CheckpointMetadata::decode`), the bounded metadata reader
//! (`flowstate_checkpoint::read_metadata`), the sealed file format and the
//! keyed-file checks (`flowstate_checkpoint::keyed_file`), and the durable
//! encoding (`flowstate_state::codec`). This crate only calls them, so what
//! `verify` accepts is what a restore accepts. Nothing in the engine depends
//! on this crate.

pub mod dynamic;
pub mod inspect;

pub use dynamic::{DynamicError, EntryLayout, Row, Shape, Value};
pub use inspect::{
    DumpSink, DumpStats, FileCheck, FileRole, InspectError, SnapshotSummary, VerifyReport,
    csv_header, csv_line, dump_state, json_line, summarize, verify,
};
