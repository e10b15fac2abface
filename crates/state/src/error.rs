//! Errors of state access and declaration.

use thiserror::Error;

/// An error raised by a state backend or by declaring state.
#[derive(Debug, Error)]
pub enum StateError {
    /// A state name was declared twice with different kinds or types.
    #[error(
        "state '{name}' is already declared as {existing}; it cannot be declared again as {requested}"
    )]
    IncompatibleDeclaration {
        name: String,
        existing: String,
        requested: String,
    },
    /// A state in a snapshot records other types than its declaration
    /// names: restoring it would misread its bytes.
    #[error(
        "state '{state}': the snapshot holds {kind} state of type '{recorded}'; it cannot be restored as type '{requested}'"
    )]
    RestoredTypeMismatch {
        state: String,
        kind: crate::StateKind,
        /// The type names the snapshot recorded (a declared name, or a
        /// version-1 `std::any::type_name` behind the legacy prefix).
        recorded: String,
        /// The declared type names of the declaration.
        requested: String,
    },
    /// A state in a snapshot was stored with TTL and is declared without, or
    /// the other way round: its bytes differ (every TTL'd value carries a
    /// timestamp), and flowstate does not migrate them.
    #[error(
        "state '{state}': the snapshot holds it {recorded_ttl}, the declaration asks for it {requested_ttl} (recorded type '{recorded}', declared '{requested}'); TTL cannot be added to or removed from restored state: keep the declaration's TTL as it was, or give the state a new name"
    )]
    TtlMismatch {
        state: String,
        /// "with TTL" or "without TTL".
        recorded_ttl: &'static str,
        requested_ttl: &'static str,
        recorded: String,
        requested: String,
    },
    /// A declared type name that snapshots cannot record unambiguously.
    #[error("state '{state}': invalid declared type name '{type_name}': {reason}")]
    InvalidTypeName {
        state: String,
        type_name: String,
        reason: &'static str,
    },
    /// A key was routed to an instance that does not own its key group: a routing bug
    /// or a state restored into the wrong range.
    #[error("key group {key_group} is outside the range {range} owned by this instance")]
    KeyGroupOutOfRange { key_group: u32, range: String },
    /// State could not be encoded or decoded.
    #[error("state '{state}': cannot {action}: {reason}")]
    Codec {
        state: String,
        action: &'static str,
        reason: String,
    },
    /// Snapshot bytes do not have the expected structure.
    #[error("corrupt keyed state snapshot: {0}")]
    CorruptSnapshot(String),
    /// A state name is empty or too long.
    #[error("invalid state name '{name}': {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The storage under a backend failed (a RocksDB error, a full disk).
    #[error("{backend} state backend: cannot {action}: {reason}")]
    Backend {
        backend: &'static str,
        action: String,
        reason: String,
    },
    /// An operation this backend or build does not offer.
    #[error("{0}")]
    Unsupported(String),
}
