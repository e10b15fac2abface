//! A savepoint with pending event-time and processing-time timers and open
//! session windows, restored at another parallelism on the other backend,
//! with RocksDB: the scenario of `crates/api/tests/common/timed_savepoint.rs`
//! (whose heap and in-memory-store variants run in `crates/api/tests/savepoints.rs`).
//!
//! `cargo test -p flowstate-jobs --features rocksdb --test savepoint_timers`

#![cfg(feature = "rocksdb")]

#[path = "../../api/tests/common/timed_savepoint.rs"]
mod timed_savepoint;

use flowstate::state::StateBackendConfig;
use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};

/// RocksDB in `dir`; incremental checkpoints (a savepoint is still written in
/// the canonical key-group format).
fn rocksdb(dir: &std::path::Path) -> StateBackendConfig {
    StateBackendConfig::Store(RocksDbFactory::new(RocksDbOptions {
        incremental: true,
        ..RocksDbOptions::new(dir)
    }))
}

#[test]
fn timers_and_open_sessions_restore_from_heap_at_2_to_rocksdb_at_3() {
    let dir = tempfile::tempdir().unwrap();
    timed_savepoint::stop_and_restore((StateBackendConfig::Heap, 2), (rocksdb(dir.path()), 3));
}

#[test]
fn timers_and_open_sessions_restore_from_rocksdb_at_3_to_heap_at_1() {
    let dir = tempfile::tempdir().unwrap();
    timed_savepoint::stop_and_restore((rocksdb(dir.path()), 3), (StateBackendConfig::Heap, 1));
}
