//! `window-count` (workload WT) gives the brief's reference results at every
//! parallelism and max-parallelism, on the heap backend, the serialising
//! backend over the reference store and (feature `rocksdb`) RocksDB; its
//! output, read back from the committed files, has every (key, window)
//! exactly once with its true count and sum.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowstate::StreamEnvironment;
use flowstate::runtime::ExecutionConfig;
use flowstate::state::StateBackendConfig;
use flowstate::state::memory_store::MemoryStoreFactory;
use flowstate_jobs::window_count::{WindowCountParams, build};
use flowstate_jobs::window_workload::{WindowWorkload, reference_checksum, reference_windows};

fn run(
    records: u64,
    parallelism: u32,
    max_parallelism: u32,
    backend: StateBackendConfig,
) -> String {
    let config = ExecutionConfig {
        max_parallelism,
        state_backend: backend,
        ..ExecutionConfig::with_parallelism(parallelism)
    };
    let env = StreamEnvironment::new(config);
    let params = WindowCountParams {
        workload: WindowWorkload {
            records,
            ..WindowWorkload::default()
        },
        splits: 7,
        ..WindowCountParams::default()
    };
    let job = build(&env, &params).expect("build window-count");
    env.execute().expect("window-count runs");
    job.result_line()
}

#[test]
fn the_reference_result_for_a_million_records() {
    assert_eq!(
        run(1_000_000, 2, 128, StateBackendConfig::Heap),
        "RESULT records=1000000 windows=163176 checksum=7365e7d30e9d5c8e"
    );
}

#[test]
fn the_same_result_at_every_parallelism_and_max_parallelism() {
    let records = 150_000;
    let expected = reference_checksum(&WindowWorkload {
        records,
        ..WindowWorkload::default()
    })
    .result_line();
    for (parallelism, max_parallelism) in [(1, 1), (1, 128), (2, 4), (3, 128), (3, 7)] {
        assert_eq!(
            run(
                records,
                parallelism,
                max_parallelism,
                StateBackendConfig::Heap
            ),
            expected,
            "heap, p={parallelism}, max={max_parallelism}"
        );
        assert_eq!(
            run(
                records,
                parallelism,
                max_parallelism,
                StateBackendConfig::Store(Arc::new(MemoryStoreFactory))
            ),
            expected,
            "serialising backend, p={parallelism}, max={max_parallelism}"
        );
    }
}

#[cfg(feature = "rocksdb")]
#[test]
fn the_same_result_on_rocksdb() {
    use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};
    let records = 150_000;
    let expected = reference_checksum(&WindowWorkload {
        records,
        ..WindowWorkload::default()
    })
    .result_line();
    for parallelism in [1, 3] {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend =
            StateBackendConfig::Store(RocksDbFactory::new(RocksDbOptions::new(dir.path())));
        assert_eq!(
            run(records, parallelism, 128, backend),
            expected,
            "p={parallelism}"
        );
    }
}

#[test]
fn the_committed_output_has_every_window_once_with_its_true_count_and_sum() {
    let records = 120_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(2));
    let workload = WindowWorkload {
        records,
        ..WindowWorkload::default()
    };
    let params = WindowCountParams {
        workload,
        output: Some(out.clone()),
        splits: 5,
        ..WindowCountParams::default()
    };
    build(&env, &params).expect("build");
    env.execute().expect("runs");
    let mut seen: BTreeMap<(u64, i64), (u64, u64)> = BTreeMap::new();
    for entry in std::fs::read_dir(&out).expect("output dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "in-progress file left: {name}");
        for line in std::fs::read_to_string(entry.path()).expect("read").lines() {
            let f: Vec<i64> = line.split(',').map(|x| x.parse().expect(line)).collect();
            let previous = seen.insert((f[0] as u64, f[1]), (f[2] as u64, f[3] as u64));
            assert!(previous.is_none(), "window output twice: {line}");
        }
    }
    let expected: BTreeMap<_, _> = reference_windows(&workload).into_iter().collect();
    assert_eq!(seen.len(), expected.len());
    assert!(seen == expected, "window results differ from the reference");
}
