//! Benchmark of the RocksDB backend's native snapshots (release build):
//!
//! 1. incremental checkpoint bytes against a full checkpoint, with `KEYS` keys
//!    checkpointed and then `TOUCH_PERCENT` of them updated;
//! 2. restore time of that state against the read bandwidth of the same files,
//!    measured in the same run.
//!
//! `cargo bench -p flowstate-state-rocksdb --bench native_snapshots`
//! (env: `KEYS`, default 10,000,000; `VALUE_BYTES`, default 100; `TOUCH_PERCENT`,
//! default 1; `BENCH_DIR`, default a temp dir). Prints one `RESULT` line per figure.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use flowstate_checkpoint::metadata::NativeStateHandle;
use flowstate_checkpoint::native_files::{native_restore, upload_native};
use flowstate_checkpoint::storage::open_storage;
use flowstate_state::{
    BackendInstance, BackendSnapshot, KeyGroupRange, KeyScope, KeyedStateBackend,
    RestoredKeyedState, SnapshotRequest, StateBackendConfig, ValueStateDescriptor,
    create_keyed_backend, key_group_of,
};
use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};

const MAXP: u32 = 128;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A value of `len` bytes that lz4 cannot shrink much (state size is what the
/// restore figure is about).
fn value_of(key: u64, round: u64, len: usize) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn instance(range: KeyGroupRange) -> BackendInstance {
    BackendInstance {
        job_id: "bench".into(),
        operator_uid: "state".into(),
        subtask: 0,
        range,
        max_parallelism: MAXP,
        clock: flowstate_state::system_clock(),
    }
}

fn write(
    backend: &mut dyn KeyedStateBackend<u64>,
    keys: impl Iterator<Item = u64>,
    round: u64,
    len: usize,
) {
    let state = backend
        .value_state(&ValueStateDescriptor::<Vec<u8>>::new("payload"))
        .expect("declare");
    for key in keys {
        let group = key_group_of(&key, MAXP);
        KeyScope::new(backend, &key, group)
            .value(&state)
            .set(value_of(key, round, len))
            .expect("set");
    }
}

fn checkpoint(
    backend: &mut dyn KeyedStateBackend<u64>,
    storage: &dyn flowstate_checkpoint::storage::CheckpointStorage,
    id: u64,
) -> (NativeStateHandle, u64, f64) {
    let started = Instant::now();
    let BackendSnapshot::Native(native) = backend
        .snapshot(SnapshotRequest {
            checkpoint_id: id,
            canonical: false,
        })
        .expect("snapshot")
    else {
        panic!("incremental snapshots are native");
    };
    let sync_ms = started.elapsed().as_secs_f64() * 1e3;
    let (handle, uploaded) = upload_native(storage, "bench", "state", 0, &native).expect("upload");
    drop(native);
    backend.notify_checkpoint_complete(id);
    (handle, uploaded, sync_ms)
}

/// Empties the page cache so that reads come from the disk (needs root; says
/// whether it worked).
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let keys = env_u64("KEYS", 10_000_000);
    let value_bytes = env_u64("VALUE_BYTES", 100) as usize;
    let touch_percent = env_u64("TOUCH_PERCENT", 1).max(1);
    let root = match std::env::var("BENCH_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir),
        Err(_) => tempfile::tempdir(),
    }
    .expect("temp dir");
    let ck_dir = root.path().join("ck");
    let storage = open_storage(&ck_dir.display().to_string()).expect("storage");
    let config = StateBackendConfig::Store(RocksDbFactory::new(RocksDbOptions {
        incremental: true,
        ..RocksDbOptions::new(root.path().join("state"))
    }));
    let range = KeyGroupRange::new(0, MAXP);
    let mut backend = create_keyed_backend::<u64>(&config, &instance(range)).expect("backend");

    let started = Instant::now();
    write(backend.as_mut(), 0..keys, 0, value_bytes);
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "loaded {keys} keys of {value_bytes}-byte values in {load_s:.1}s ({:.2}M puts/s)",
        keys as f64 / load_s / 1e6
    );
    let (_, full_bytes, full_sync_ms) = checkpoint(backend.as_mut(), storage.as_ref(), 1);
    // The bulk load leaves compactions running; they rewrite files that later
    // checkpoints upload although no key changed. Checkpoints without writes
    // show that churn; the 1% figure is taken once it has settled (at most 20
    // checkpoints, 2 s apart), as in a job that has been running a while.
    let mut id = 1;
    let mut churn_bytes = 0;
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_secs(2));
        id += 1;
        let (_, uploaded, _) = checkpoint(backend.as_mut(), storage.as_ref(), id);
        churn_bytes += uploaded;
        println!("checkpoint {id} without writes uploaded {uploaded} bytes (compaction)");
        if uploaded < full_bytes / 1000 {
            break;
        }
    }
    let step = (100 / touch_percent) as usize;
    write(backend.as_mut(), (0..keys).step_by(step), 1, value_bytes);
    id += 1;
    let (handle, incremental_bytes, incremental_sync_ms) =
        checkpoint(backend.as_mut(), storage.as_ref(), id);
    let total_bytes: u64 = handle.files.iter().map(|f| f.file.size).sum();
    println!(
        "RESULT incremental keys={keys} touched={touch_percent}% full_bytes={full_bytes} incremental_bytes={incremental_bytes} ratio={:.2}% checkpoint_total_bytes={total_bytes} sync_ms_full={full_sync_ms:.0} sync_ms_incremental={incremental_sync_ms:.0} compaction_churn_bytes={churn_bytes} settle_checkpoints={}",
        incremental_bytes as f64 / full_bytes as f64 * 100.0,
        id - 2
    );
    drop(backend);

    // Read bandwidth of the very files a restore reads, then the restore, both
    // from a cold page cache when the machine lets us empty it.
    let cold = drop_caches();
    let started = Instant::now();
    let mut buffer = vec![0u8; 8 << 20];
    let mut read_bytes = 0u64;
    for file in &handle.files {
        let mut f = std::fs::File::open(ck_dir.join(&file.file.path)).expect("open");
        loop {
            let n = f.read(&mut buffer).expect("read");
            if n == 0 {
                break;
            }
            read_bytes += n as u64;
        }
    }
    let read_s = started.elapsed().as_secs_f64();
    let read_mb_s = read_bytes as f64 / read_s / 1e6;

    drop_caches();
    let started = Instant::now();
    let mut restored = create_keyed_backend::<u64>(&config, &instance(range)).expect("backend");
    restored
        .restore(RestoredKeyedState {
            groups: Vec::new(),
            native: vec![native_restore(Arc::clone(&storage), &handle, true)],
            streams: Vec::new(),
        })
        .expect("restore");
    let restore_s = started.elapsed().as_secs_f64();
    let restore_mb_s = total_bytes as f64 / restore_s / 1e6;
    // Pair check: the restored state answers.
    let state = restored
        .value_state(&ValueStateDescriptor::<Vec<u8>>::new("payload"))
        .expect("declare");
    for key in [0, keys / 2, keys - 1] {
        let group = key_group_of(&key, MAXP);
        let round = u64::from((key as usize).is_multiple_of(step));
        let value = KeyScope::new(restored.as_mut(), &key, group)
            .value(&state)
            .get()
            .expect("get")
            .cloned();
        assert_eq!(value, Some(value_of(key, round, value_bytes)), "key {key}");
    }
    println!(
        "RESULT restore cold_cache={cold} bytes={total_bytes} restore_s={restore_s:.2} restore_mb_s={restore_mb_s:.0} read_bytes={read_bytes} read_s={read_s:.2} read_mb_s={read_mb_s:.0} ratio={:.2}",
        restore_mb_s / read_mb_s
    );
}
