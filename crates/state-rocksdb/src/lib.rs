//! The RocksDB keyed state backend (work in progress).
