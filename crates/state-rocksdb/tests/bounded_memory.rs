//! A savepoint and a restore of RocksDB state several times larger than the
//! memory the process may use: canonical keyed files are written and read one
//! key group at a time, and the backend ingests a key group at a time, so
//! neither needs the state in memory.
//!
//! The test runs its work in a child process (this test binary again) whose
//! data segment is limited with `setrlimit(RLIMIT_DATA)`: every heap
//! allocation and private writable mapping counts, so a writer or reader that
//! holds the state in one buffer fails to allocate and the child aborts. The
//! child first checks that the limit bites (it cannot reserve the state's
//! size), so the test cannot pass for want of a limit.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowstate_checkpoint::SnapshotKind;
use flowstate_checkpoint::keyed_file::write_keyed_file;
use flowstate_checkpoint::metadata::{CheckpointMetadata, OperatorSnapshot, SubtaskSnapshot};
use flowstate_checkpoint::restore::load;
use flowstate_checkpoint::storage::open_storage;
use flowstate_state::{
    BackendInstance, BackendSnapshot, KeyGroupRange, KeyScope, KeyedStateBackend, SnapshotRequest,
    StateBackendConfig, ValueStateDescriptor, create_keyed_backend, key_group_of,
};
use flowstate_state_rocksdb::{RocksDbFactory, RocksDbOptions};

/// Key groups: 1024 keep a key group's section at 512 KiB, so what the
/// test measures is the state's size, not one section's (a reader and a
/// writer may hold a few sections at once).
const MAXP: u32 = 1024;
/// Keys, each with a value of `VALUE_BYTES`: 512 MiB of state.
const KEYS: u64 = 16_384;
const VALUE_BYTES: usize = 32 << 10;
/// The child's data segment: less than a third of the state. What the
/// process needs besides the state (two RocksDB instances, the test harness,
/// the storage runtime, address space RocksDB reserves for caches) is about
/// 90 to 110 MiB.
const LIMIT_BYTES: u64 = 160 << 20;
const CHILD: &str = "FLOWSTATE_BOUNDED_MEMORY_DIR";
const UID: &str = "blobs";

/// The value of `key`: its number, then a slice of a fixed pseudo-random
/// text that starts where the key says (so values differ, and a value
/// restored under another key is noticed).
fn value_of(key: u64, text: &str) -> String {
    let start = (key as usize * 7919) % (text.len() - VALUE_BYTES);
    let mut value = format!("{key:016x}");
    value.push_str(&text[start..start + VALUE_BYTES - 16]);
    value
}

fn text() -> String {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..2 * VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

fn backend(dir: &std::path::Path, name: &str) -> Box<dyn KeyedStateBackend<u64>> {
    let options = RocksDbOptions {
        block_cache_bytes: 8 << 20,
        write_buffer_bytes: 8 << 20,
        cache_bytes: 8 << 20,
        ..RocksDbOptions::new(dir.join(name))
    };
    let instance = BackendInstance {
        job_id: "job".into(),
        operator_uid: UID.into(),
        subtask: 0,
        range: KeyGroupRange::new(0, MAXP),
        max_parallelism: MAXP,
        clock: flowstate_state::system_clock(),
    };
    let config = StateBackendConfig::Store(RocksDbFactory::new(options));
    create_keyed_backend::<u64>(&config, &instance).expect("open backend")
}

/// A `/proc/self/status` figure in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The largest `VmData` seen so far, sampled by a thread every few ms.
static PEAK_DATA_KIB: AtomicU64 = AtomicU64::new(0);

/// Peak resident and data figures, for the log.
fn memory_figures() -> String {
    format!(
        "peak RSS {} MiB, peak data {} MiB (sampled), data now {} MiB",
        status_kib("VmHWM") >> 10,
        PEAK_DATA_KIB.load(Ordering::Relaxed) >> 10,
        status_kib("VmData") >> 10
    )
}

/// The child: fills a RocksDB backend, writes a savepoint of it, restores the
/// savepoint into a fresh backend and checks every key, all under the limit.
fn child(dir: &std::path::Path) {
    let limit = libc::rlimit {
        rlim_cur: LIMIT_BYTES,
        rlim_max: LIMIT_BYTES,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) }, 0);
    let state_bytes = KEYS * VALUE_BYTES as u64;
    assert!(
        Vec::<u8>::new()
            .try_reserve_exact(state_bytes as usize)
            .is_err(),
        "the limit does not bite: {state_bytes} bytes could be reserved"
    );

    std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(|| {
            loop {
                PEAK_DATA_KIB.fetch_max(status_kib("VmData"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .expect("sampler");
    let text = text();
    let descriptor = ValueStateDescriptor::<String>::new("blob");
    {
        let mut source = backend(dir, "source");
        let state = source.value_state(&descriptor).expect("declare");
        for key in 0..KEYS {
            KeyScope::new(source.as_mut(), &key, key_group_of(&key, MAXP))
                .value(&state)
                .set(value_of(key, &text))
                .expect("write");
        }
        let BackendSnapshot::KeyGroups(snapshot) = source
            .snapshot(SnapshotRequest {
                checkpoint_id: 1,
                canonical: true,
            })
            .expect("snapshot")
        else {
            panic!("a savepoint is canonical");
        };
        let storage = open_storage(&dir.join("savepoint").display().to_string()).expect("storage");
        let handle = write_keyed_file(storage.as_ref(), "state/blobs/0.keyed", &snapshot)
            .expect("write the keyed file");
        assert!(handle.file.size > state_bytes, "{} bytes", handle.file.size);
        let metadata = CheckpointMetadata {
            job_id: "job".into(),
            checkpoint_id: 1,
            kind: SnapshotKind::Savepoint,
            created_unix_ms: 0,
            max_parallelism: MAXP,
            operators: vec![OperatorSnapshot {
                uid: UID.into(),
                name: UID.into(),
                parallelism: 1,
                subtasks: vec![SubtaskSnapshot {
                    subtask: 0,
                    keyed: Some(handle),
                    native: None,
                    lists: Vec::new(),
                    channels: None,
                }],
            }],
            job: None,
        };
        storage
            .put_if_absent("_metadata", metadata.encode().expect("encode"))
            .expect("publish");
        eprintln!("savepoint written: {}", memory_figures());
    }

    let storage = open_storage(&dir.join("savepoint").display().to_string()).expect("storage");
    eprintln!("before load: {}", memory_figures());
    let loaded = load(&storage, "_metadata").expect("load the savepoint");
    let restored = loaded
        .keyed_state(UID, KeyGroupRange::new(0, MAXP), "other-job")
        .expect("keyed state");
    let mut target = backend(dir, "target");
    target.restore(restored).expect("restore");
    eprintln!("restored: {}", memory_figures());
    let state = target.value_state(&descriptor).expect("declare restored");
    assert!(target.unclaimed_restored_states().is_empty());
    let mut seen = 0u64;
    for key in 0..KEYS {
        let mut scope = KeyScope::new(target.as_mut(), &key, key_group_of(&key, MAXP));
        let value = scope.value(&state).get().expect("read");
        assert!(
            value.is_some_and(|v| *v == value_of(key, &text)),
            "key {key} restored wrongly"
        );
        seen += 1;
    }
    assert_eq!(seen, KEYS);
    eprintln!("restored and checked: {}", memory_figures());
}

#[test]
fn a_savepoint_and_a_restore_of_state_three_times_the_memory_limit() {
    if let Some(dir) = std::env::var_os(CHILD) {
        child(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "a_savepoint_and_a_restore_of_state_three_times_the_memory_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the child");
    // A generous deadline (the child takes about 15 s in a debug build): a
    // child that fails to allocate inside RocksDB may hang instead of dying.
    let deadline = Instant::now() + Duration::from_secs(600);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("child output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("child stdout:\n{stdout}\nchild stderr:\n{stderr}");
    assert!(
        output.status.success(),
        "the child failed ({}) under a {} MiB data limit",
        output.status,
        LIMIT_BYTES >> 20
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run the test"
    );
}
