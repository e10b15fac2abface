//! The state-semantics suite of `flowstate-state` (one source, shared with the
//! heap and memory-store runs) on the RocksDB backend, full and incremental.

#[macro_use]
#[path = "../../state/tests/semantics/suite.rs"]
mod suite;

use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};

fn rocksdb(incremental: bool) -> suite::Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = RocksDbOptions {
        incremental,
        ..RocksDbOptions::new(dir.path())
    };
    suite::Harness::store(RocksDbFactory::new(options)).keeping(dir)
}

mod rocksdb_full {
    semantics_suite!(super::rocksdb(false));
}

mod rocksdb_incremental {
    semantics_suite!(super::rocksdb(true));
}
