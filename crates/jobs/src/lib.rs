//! The built-in jobs the CLI runs, defined with the public DataStream API only.
//!
//! [`workload`] holds the reference definitions of workload W (record generator,
//! checksum) that tests and benchmarks check against; [`keyed_count`] and
//! [`wordcount`] build the jobs; [`nexmark`] is the Nexmark benchmark (its
//! generator, queries and checksum). Nothing here knows about the CLI.

#[cfg(feature = "kafka")]
pub mod kafka_count;
pub mod keyed_count;
pub mod latency;
pub mod nexmark;
pub mod totals;
pub mod window_count;
pub mod window_workload;
pub mod wordcount;
pub mod workload;
