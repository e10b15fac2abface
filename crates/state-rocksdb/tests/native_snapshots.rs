//! Native (incremental) snapshots of the RocksDB backend, end to end through
//! checkpoint storage: what is uploaded, what is reused, and that a restore at
//! the same or another parallelism gives back exactly the state.

use std::collections::HashMap;
use std::sync::Arc;

use flowstate_checkpoint::metadata::NativeStateHandle;
use flowstate_checkpoint::native_files::{native_restore, upload_native};
use flowstate_checkpoint::storage::{SharedStorage, open_storage};
use flowstate_state::{
    BackendInstance, BackendSnapshot, KeyGroupRange, KeyScope, KeyedStateBackend,
    ListStateDescriptor, MapStateDescriptor, RestoredKeyedState, SnapshotRequest,
    StateBackendConfig, ValueStateDescriptor, create_keyed_backend, key_group_of,
};
use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};

const MAXP: u32 = 128;

struct Fixture {
    _dir: tempfile::TempDir,
    storage: SharedStorage,
    config: StateBackendConfig,
}

fn fixture(incremental: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = open_storage(&dir.path().join("ck").display().to_string()).expect("storage");
    let options = RocksDbOptions {
        incremental,
        ..RocksDbOptions::new(dir.path().join("state"))
    };
    Fixture {
        config: StateBackendConfig::Store(RocksDbFactory::new(options)),
        storage,
        _dir: dir,
    }
}

impl Fixture {
    fn backend(&self, subtask: u32, range: KeyGroupRange) -> Box<dyn KeyedStateBackend<u64>> {
        let instance = BackendInstance {
            job_id: "job".into(),
            operator_uid: "count".into(),
            subtask,
            range,
            max_parallelism: MAXP,
            clock: flowstate_state::system_clock(),
        };
        create_keyed_backend::<u64>(&self.config, &instance).expect("open backend")
    }

    /// Takes and uploads a native snapshot; returns the handle and the bytes
    /// uploaded, and tells the backend the checkpoint completed.
    fn checkpoint(
        &self,
        backend: &mut dyn KeyedStateBackend<u64>,
        subtask: u32,
        id: u64,
    ) -> (NativeStateHandle, u64) {
        let snapshot = backend
            .snapshot(SnapshotRequest {
                checkpoint_id: id,
                canonical: false,
            })
            .expect("snapshot");
        let BackendSnapshot::Native(native) = snapshot else {
            panic!("an incremental rocksdb backend snapshots natively");
        };
        let (handle, uploaded) =
            upload_native(self.storage.as_ref(), "job", "count", subtask, &native).expect("upload");
        drop(native);
        backend.notify_checkpoint_complete(id);
        (handle, uploaded)
    }

    fn restore(
        &self,
        subtask: u32,
        range: KeyGroupRange,
        handles: &[&NativeStateHandle],
    ) -> Box<dyn KeyedStateBackend<u64>> {
        let mut backend = self.backend(subtask, range);
        let native = handles
            .iter()
            .map(|h| native_restore(Arc::clone(&self.storage), h, true))
            .collect();
        backend
            .restore(RestoredKeyedState {
                groups: Vec::new(),
                native,
                streams: Vec::new(),
            })
            .expect("restore");
        backend
    }
}

fn put_values(backend: &mut dyn KeyedStateBackend<u64>, keys: impl Iterator<Item = u64>, add: u64) {
    let values = backend
        .value_state(&ValueStateDescriptor::<u64>::new("sum"))
        .expect("declare");
    for key in keys {
        let group = key_group_of(&key, MAXP);
        KeyScope::new(backend, &key, group)
            .value(&values)
            .set(key * 10 + add)
            .expect("set");
    }
}

fn read_values(backend: &mut dyn KeyedStateBackend<u64>) -> HashMap<u64, u64> {
    let values = backend
        .value_state(&ValueStateDescriptor::<u64>::new("sum"))
        .expect("declare");
    let mut all = HashMap::new();
    backend
        .for_each_value(&values, |k, v| {
            assert!(all.insert(*k, *v).is_none(), "key {k} visited twice");
        })
        .expect("scan");
    all
}

/// The acceptance test: with 1,000,000 keys checkpointed, a checkpoint
/// after updating 1% of them uploads under 10% of a full checkpoint's bytes.
#[test]
fn a_checkpoint_after_touching_one_percent_uploads_under_ten_percent() {
    let f = fixture(true);
    let range = KeyGroupRange::new(0, MAXP);
    let mut backend = f.backend(0, range);
    const KEYS: u64 = 1_000_000;
    put_values(backend.as_mut(), 0..KEYS, 0);
    let (first, full_bytes) = f.checkpoint(backend.as_mut(), 0, 1);
    assert!(
        full_bytes > 1_000_000,
        "a full checkpoint of 1M keys: {full_bytes} bytes"
    );

    put_values(backend.as_mut(), (0..KEYS).step_by(100), 1);
    let (second, incremental_bytes) = f.checkpoint(backend.as_mut(), 0, 2);
    let ratio = incremental_bytes as f64 / full_bytes as f64;
    eprintln!(
        "full {full_bytes} bytes, after touching 1%: {incremental_bytes} bytes ({:.2}%)",
        ratio * 100.0
    );
    assert!(
        ratio < 0.10,
        "incremental checkpoint uploaded {incremental_bytes} of {full_bytes} bytes"
    );
    // The second checkpoint references the first one's SST files.
    let reused = second
        .files
        .iter()
        .filter(|f| first.files.iter().any(|g| g.file.path == f.file.path))
        .count();
    assert!(
        reused > 0,
        "no file of checkpoint 1 is reused by checkpoint 2"
    );

    // Restoring checkpoint 2 gives the updated state exactly.
    drop(backend);
    let mut restored = f.restore(0, range, &[&second]);
    let state = read_values(restored.as_mut());
    assert_eq!(state.len() as u64, KEYS);
    for (key, value) in state {
        let expected = key * 10 + u64::from(key % 100 == 0);
        assert_eq!(value, expected, "key {key}");
    }
}

/// A rescale: two instances' native snapshots restored into three instances
/// (and back into one), every key exactly once with its value, across value,
/// list and map state.
#[test]
fn native_snapshots_restore_into_other_ranges() {
    let f = fixture(true);
    let old = [KeyGroupRange::new(0, 64), KeyGroupRange::new(64, MAXP)];
    let mut handles = Vec::new();
    for (subtask, range) in old.iter().enumerate() {
        let mut backend = f.backend(subtask as u32, *range);
        let keys: Vec<u64> = (0..20_000u64)
            .filter(|k| range.contains(key_group_of(k, MAXP)))
            .collect();
        put_values(backend.as_mut(), keys.iter().copied(), 0);
        let list = backend
            .list_state(&ListStateDescriptor::<String>::new("names"))
            .expect("declare");
        let map = backend
            .map_state(&MapStateDescriptor::<u32, u64>::new("seen"))
            .expect("declare");
        for key in &keys {
            let group = key_group_of(key, MAXP);
            let mut scope = KeyScope::new(backend.as_mut(), key, group);
            scope.list(&list).add(format!("a{key}")).expect("add");
            scope.list(&list).add(format!("b{key}")).expect("add");
            scope.map(&map).put((key % 7) as u32, *key).expect("put");
            scope.map(&map).put(100, 1).expect("put");
        }
        let (handle, _) = f.checkpoint(backend.as_mut(), subtask as u32, 1);
        handles.push(handle);
    }
    let all: Vec<&NativeStateHandle> = handles.iter().collect();
    for parallelism in [3u32, 1] {
        let mut seen = 0usize;
        for subtask in 0..parallelism {
            let range = KeyGroupRange::for_operator(subtask, parallelism, MAXP);
            let mut backend = f.restore(subtask, range, &all);
            let values = read_values(backend.as_mut());
            for (key, value) in &values {
                assert!(
                    range.contains(key_group_of(key, MAXP)),
                    "key {key} outside {range}"
                );
                assert_eq!(*value, key * 10);
            }
            let list = backend
                .list_state(&ListStateDescriptor::<String>::new("names"))
                .expect("declare");
            let map = backend
                .map_state(&MapStateDescriptor::<u32, u64>::new("seen"))
                .expect("declare");
            for key in values.keys() {
                let group = key_group_of(key, MAXP);
                let mut scope = KeyScope::new(backend.as_mut(), key, group);
                assert_eq!(
                    scope.list(&list).get().expect("get"),
                    &[format!("a{key}"), format!("b{key}")]
                );
                assert_eq!(
                    scope.map(&map).get(&((key % 7) as u32)).expect("get"),
                    Some(key)
                );
                assert_eq!(scope.map(&map).len().expect("len"), 2);
            }
            seen += values.len();
        }
        assert_eq!(
            seen, 20_000,
            "every key restored once at parallelism {parallelism}"
        );
    }
}

/// Without `incremental`, checkpoints are canonical key-group files that the
/// heap backend reads as well.
#[test]
fn full_snapshots_are_canonical_and_restore_into_the_heap_backend() {
    let f = fixture(false);
    let range = KeyGroupRange::new(0, MAXP);
    let mut backend = f.backend(0, range);
    put_values(backend.as_mut(), 0..5_000, 3);
    let snapshot = backend
        .snapshot(SnapshotRequest {
            checkpoint_id: 1,
            canonical: false,
        })
        .expect("snapshot");
    let BackendSnapshot::KeyGroups(snapshot) = snapshot else {
        panic!("a full rocksdb snapshot is canonical");
    };
    // Writes after the snapshot do not show in it.
    put_values(backend.as_mut(), 0..10, 99);
    let mut groups = Vec::new();
    for group in range.iter() {
        let mut bytes = Vec::new();
        snapshot.write_key_group(group, &mut bytes).expect("write");
        groups.push((group, bytes));
    }
    let mut heap = flowstate_state::heap_backend::<u64>(range, MAXP);
    heap.restore(RestoredKeyedState {
        groups,
        native: Vec::new(),
        streams: Vec::new(),
    })
    .expect("restore");
    let state = read_values(heap.as_mut());
    assert_eq!(state.len(), 5_000);
    assert!(state.iter().all(|(k, v)| *v == k * 10 + 3));
}

/// A damaged file in storage is detected when restoring, naming the file.
#[test]
fn a_damaged_native_file_fails_the_restore_naming_it() {
    let f = fixture(true);
    let range = KeyGroupRange::new(0, MAXP);
    let mut backend = f.backend(0, range);
    put_values(backend.as_mut(), 0..1_000, 0);
    let (handle, _) = f.checkpoint(backend.as_mut(), 0, 1);
    let sst = handle
        .files
        .iter()
        .find(|f| f.name.ends_with(".sst"))
        .expect("an SST file");
    let mut bytes = f.storage.get(&sst.file.path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    f.storage.put(&sst.file.path, bytes).expect("write");
    let mut other = f.backend(0, range);
    let err = other
        .restore(RestoredKeyedState {
            groups: Vec::new(),
            native: vec![native_restore(Arc::clone(&f.storage), &handle, true)],
            streams: Vec::new(),
        })
        .expect_err("a flipped byte must be detected");
    assert!(err.to_string().contains(&sst.file.path), "{err}");
}
