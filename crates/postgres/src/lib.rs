//! An exactly-once PostgreSQL sink for flowstate.
//!
//! [`PostgresSink`] writes records as rows of one table, in upsert mode (the
//! latest row per key) or append mode, by two-phase commit with PostgreSQL's own
//! `PREPARE TRANSACTION` / `COMMIT PREPARED`: rows since the last barrier are
//! prepared at the barrier under a name derived from job, operator uid, instance
//! and checkpoint ([`names`]), and committed when the checkpoint completes. The
//! server needs `max_prepared_transactions` > 0.
//!
//! This crate owns the sink, its row values ([`SqlValue`]), the names of its
//! prepared transactions and its errors. It reaches the runtime only through the
//! `Sink` / `SinkWriter` traits and `SubtaskInfo`; it must not touch the runtime,
//! the checkpoint format or other connectors. A broken connection fails the task
//! (no silent retry that could lose the open transaction's rows): the restart
//! strategy restores the latest checkpoint and new writers reconnect.

mod error;
pub mod names;
mod sink;
mod value;

pub use error::PostgresError;
pub use sink::{
    DEFAULT_BUFFER_ROWS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCK_TIMEOUT, Mode, PENDING_STATE,
    PostgresSink, RowFn,
};
pub use value::SqlValue;
