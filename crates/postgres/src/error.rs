//! The sink's errors: every message names the server (`host:port`) or the table
//! it concerns, never the password.

use thiserror::Error;

/// What can go wrong in the PostgreSQL sink.
#[derive(Debug, Error)]
pub enum PostgresError {
    /// The sink's settings are invalid (URL, columns, key columns).
    #[error("invalid PostgreSQL sink configuration: {0}")]
    Config(String),
    /// The server cannot be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    /// The table does not exist (or is not a table).
    #[error("table '{table}' does not exist in the PostgreSQL database at {endpoint}")]
    MissingTable { table: String, endpoint: String },
    /// Columns the sink writes are not in the table.
    #[error("table '{table}' has no column {missing:?} (its columns: {present:?})")]
    MissingColumns {
        table: String,
        missing: Vec<String>,
        present: Vec<String>,
    },
    /// Upsert mode needs a unique index on exactly the key columns.
    #[error(
        "table '{table}' has no unique index or constraint on exactly the key columns {keys:?}: \
         upsert (INSERT ... ON CONFLICT) needs one"
    )]
    NoUniqueKey { table: String, keys: Vec<String> },
    /// The row mapping returned the wrong number of values.
    #[error("a row for table '{table}' has {got} values; the sink writes {expected} columns")]
    RowWidth {
        table: String,
        got: usize,
        expected: usize,
    },
    /// A statement failed (the connection broke, a constraint, a type mismatch, ...).
    #[error("PostgreSQL at {endpoint}, table '{table}': {action} failed: {detail}")]
    Statement {
        endpoint: String,
        table: String,
        action: String,
        detail: String,
    },
    /// A row lock could not be taken within the lock timeout: another
    /// transaction (often a prepared one of another sink instance or job)
    /// holds the row.
    #[error(
        "PostgreSQL at {endpoint}, table '{table}': {action} waited longer than the lock timeout \
         for a row held by another transaction ({detail}); in upsert mode every key must reach \
         one sink instance (key the stream by the key columns), and a table belongs to one job"
    )]
    LockTimeout {
        endpoint: String,
        table: String,
        action: String,
        detail: String,
    },
    /// An earlier deferred prepare of the writer failed (or never ran): its
    /// transaction's rows are lost to this attempt, so no later checkpoint
    /// may complete and the task fails, to restart from an older checkpoint.
    #[error(
        "table '{table}': an earlier PREPARE TRANSACTION of this writer failed or never ran \
         ({detail}); restarting from the last completed checkpoint"
    )]
    PrepareFailed { table: String, detail: String },
    /// The sink's restored operator state cannot be decoded.
    #[error("restored '{state}' state of '{operator}' is damaged: {detail}")]
    DamagedState {
        state: String,
        operator: String,
        detail: String,
    },
}

/// The whole message of a client error: its kind and the server's message
/// (the client's `Display` shows only the kind).
pub(crate) fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
