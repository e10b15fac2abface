//! The state-semantics suite of `flowstate-state` (one source, shared with the
//! heap and memory-store runs) on the RocksDB backend, full and incremental,
//! with the default write-back cache, a cache of a few entries (it spills
//! all the time, and reads go through frozen layers) and no cache.

#[macro_use]
#[path = "../../state/tests/semantics/suite.rs"]
mod suite;

use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};

fn rocksdb(incremental: bool) -> suite::Harness {
    with_cache(incremental, flowstate_state_rocksdb::DEFAULT_CACHE_BYTES)
}

fn with_cache(incremental: bool, cache_bytes: u64) -> suite::Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = RocksDbOptions {
        incremental,
        cache_bytes,
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

/// About four entries of the suite's states.
const TINY_CACHE_BYTES: u64 = 400;

mod rocksdb_tiny_cache_full {
    semantics_suite!(super::with_cache(false, super::TINY_CACHE_BYTES));
}

mod rocksdb_tiny_cache_incremental {
    semantics_suite!(super::with_cache(true, super::TINY_CACHE_BYTES));
}

mod rocksdb_no_cache {
    semantics_suite!(super::with_cache(false, 0));
}
