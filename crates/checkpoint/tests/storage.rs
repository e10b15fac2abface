//! One conformance suite for every checkpoint storage: a local directory,
//! process memory and S3.
//!
//! The S3 run needs a server: `eval "$(scripts/s3-server.sh)"` starts one and
//! sets `FLOWSTATE_TEST_S3_URL` (e.g. `s3://flowstate-test/ci`) and the `AWS_*`
//! variables. Without `FLOWSTATE_TEST_S3_URL` the S3 test says loudly that it is
//! skipped and passes, unless `FLOWSTATE_REQUIRE_S3=1` (set by CI), which makes it
//! fail instead. Each run writes under its own `run-...` prefix below that URL
//! and deletes what it wrote.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flowstate_checkpoint::storage::{CheckpointStorage, SharedStorage, StorageError, open_storage};

fn sorted(paths: Vec<String>) -> Vec<String> {
    paths
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What writers racing for the same new object with `put_if_absent` may see.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CreateRace {
    /// Exactly one writer succeeds (local files, memory, AWS S3).
    Exclusive,
    /// At least one succeeds and readers see one writer's complete object; more
    /// than one may succeed (s3s-fs checks, then writes).
    AllOrNothing,
}

/// What every storage must do. Expects an empty storage and leaves it empty.
fn conformance(storage: &dyn CheckpointStorage, race: CreateRace) {
    let name = storage.describe();
    assert!(
        storage.list("").unwrap().is_empty(),
        "{name}: the suite needs an empty storage"
    );

    // put / get round trip, including an empty and a larger object.
    storage
        .put("job/chk-1/op-0.keyed", b"task state".to_vec())
        .unwrap();
    assert_eq!(storage.get("job/chk-1/op-0.keyed").unwrap(), b"task state");
    storage.put("job/chk-1/empty", Vec::new()).unwrap();
    assert_eq!(storage.get("job/chk-1/empty").unwrap(), b"");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    storage.put("job/chk-1/big", big.clone()).unwrap();
    assert_eq!(storage.get("job/chk-1/big").unwrap(), big);

    // put replaces.
    storage
        .put("job/chk-1/op-0.keyed", b"task state v2".to_vec())
        .unwrap();
    assert_eq!(
        storage.get("job/chk-1/op-0.keyed").unwrap(),
        b"task state v2"
    );

    // put_if_absent writes once, then refuses and keeps the first content.
    storage
        .put_if_absent("job/chk-1/_metadata", b"first".to_vec())
        .unwrap();
    match storage.put_if_absent("job/chk-1/_metadata", b"second".to_vec()) {
        Err(StorageError::AlreadyExists { path, .. }) => assert_eq!(path, "job/chk-1/_metadata"),
        other => panic!("{name}: second put_if_absent gave {other:?}"),
    }
    assert_eq!(storage.get("job/chk-1/_metadata").unwrap(), b"first");
    // ... also over an object written by put.
    assert!(matches!(
        storage.put_if_absent("job/chk-1/op-0.keyed", b"x".to_vec()),
        Err(StorageError::AlreadyExists { .. })
    ));
    assert_eq!(
        storage.get("job/chk-1/op-0.keyed").unwrap(),
        b"task state v2"
    );

    // size without reading: present, empty, missing.
    assert_eq!(
        storage.size("job/chk-1/op-0.keyed").unwrap(),
        Some(13),
        "{name}"
    );
    assert_eq!(storage.size("job/chk-1/empty").unwrap(), Some(0), "{name}");
    assert_eq!(
        storage.size("job/chk-1/big").unwrap(),
        Some(big.len() as u64),
        "{name}"
    );
    assert_eq!(storage.size("job/chk-1/missing").unwrap(), None, "{name}");

    // get of a missing object.
    match storage.get("job/chk-1/missing") {
        Err(StorageError::NotFound { path, .. }) => assert_eq!(path, "job/chk-1/missing"),
        other => panic!("{name}: get of a missing object gave {other:?}"),
    }
    assert!(matches!(
        storage.get("nothing/here/at/all"),
        Err(StorageError::NotFound { .. })
    ));

    // list is recursive and relative to the storage root; a prefix is a directory.
    storage
        .put("job/chk-10/_metadata", b"m10".to_vec())
        .unwrap();
    storage
        .put("job/shared/a/b/c.sst", b"deep".to_vec())
        .unwrap();
    storage
        .put("other-job/chk-1/_metadata", b"m".to_vec())
        .unwrap();
    let everything = vec![
        "job/chk-1/_metadata",
        "job/chk-1/big",
        "job/chk-1/empty",
        "job/chk-1/op-0.keyed",
        "job/chk-10/_metadata",
        "job/shared/a/b/c.sst",
        "other-job/chk-1/_metadata",
    ];
    assert_eq!(sorted(storage.list("").unwrap()), everything, "{name}");
    let chk1 = vec![
        "job/chk-1/_metadata",
        "job/chk-1/big",
        "job/chk-1/empty",
        "job/chk-1/op-0.keyed",
    ];
    assert_eq!(sorted(storage.list("job/chk-1/").unwrap()), chk1, "{name}");
    assert_eq!(
        sorted(storage.list("job/chk-1").unwrap()),
        chk1,
        "{name}: a prefix is a directory, chk-10 is not under chk-1"
    );
    assert_eq!(
        sorted(storage.list("job/shared").unwrap()),
        vec!["job/shared/a/b/c.sst"],
        "{name}"
    );
    assert!(storage.list("no-such-job/").unwrap().is_empty(), "{name}");

    // get_range: exactly the bytes asked for; a range beyond the end is an
    // error, never a shorter answer.
    assert_eq!(
        storage.get_range("job/chk-1/big", 1000, 5000).unwrap(),
        big[1000..6000],
        "{name}"
    );
    assert_eq!(
        storage
            .get_range("job/chk-1/big", big.len() as u64 - 7, 7)
            .unwrap(),
        big[big.len() - 7..],
        "{name}"
    );
    assert!(
        storage
            .get_range("job/chk-1/big", big.len() as u64 - 7, 8)
            .is_err(),
        "{name}: a range past the end"
    );
    assert!(
        storage
            .get_range("job/chk-1/big", big.len() as u64 + 1, 1)
            .is_err(),
        "{name}: a range after the end"
    );
    assert!(matches!(
        storage.get_range("job/chk-1/missing", 0, 1),
        Err(StorageError::NotFound { .. })
    ));

    // put_streaming: pieces of any size make one object, published whole at
    // finish; small objects and objects of several parts alike.
    let parts_big: Vec<u8> = (0..(2 * flowstate_checkpoint::storage::STREAM_PART_BYTES + 12_345)
        as u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 24) as u8)
        .collect();
    for (path, content) in [
        ("stream/small", b"a small streamed object".to_vec()),
        ("stream/empty", Vec::new()),
        ("stream/parts", parts_big.clone()),
    ] {
        let mut writer = storage.put_streaming(path).unwrap();
        let mut rest = content.as_slice();
        let mut piece = 1;
        while !rest.is_empty() {
            let n = piece.min(rest.len());
            writer.write(&rest[..n]).unwrap();
            rest = &rest[n..];
            piece = piece * 7 + 3;
        }
        assert_eq!(
            storage.size(path).unwrap(),
            None,
            "{name}: {path} visible before finish"
        );
        writer.finish().unwrap();
        assert_eq!(storage.get(path).unwrap(), content, "{name}: {path}");
    }
    // It replaces an object, like put.
    let mut writer = storage.put_streaming("stream/small").unwrap();
    writer.write(b"replaced").unwrap();
    writer.finish().unwrap();
    assert_eq!(storage.get("stream/small").unwrap(), b"replaced");
    // Aborted or dropped (small or of several parts): nothing is published and
    // nothing is left behind.
    for abort in [true, false] {
        for size in [100, parts_big.len()] {
            let mut writer = storage.put_streaming("stream/aborted").unwrap();
            writer.write(&parts_big[..size]).unwrap();
            if abort {
                writer.abort();
            } else {
                drop(writer);
            }
            assert_eq!(storage.size("stream/aborted").unwrap(), None, "{name}");
        }
    }
    // Local staging files are removed in the background when dropped: poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut listed = sorted(storage.list("stream").unwrap());
        listed.retain(|p| !p.starts_with("stream/aborted#"));
        let done = listed == ["stream/empty", "stream/parts", "stream/small"];
        if done && storage.list("stream").unwrap().len() == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: left behind after aborts: {:?}",
            storage.list("stream").unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    storage.delete_prefix("stream").unwrap();

    // delete: one object; a missing object is fine.
    storage.delete("job/chk-1/empty").unwrap();
    assert!(matches!(
        storage.get("job/chk-1/empty"),
        Err(StorageError::NotFound { .. })
    ));
    storage.delete("job/chk-1/empty").unwrap();
    storage.delete("never/was/here").unwrap();

    // delete_prefix: everything under a directory, nothing beside it.
    storage.delete_prefix("job/chk-1/").unwrap();
    assert_eq!(
        sorted(storage.list("").unwrap()),
        vec![
            "job/chk-10/_metadata",
            "job/shared/a/b/c.sst",
            "other-job/chk-1/_metadata"
        ],
        "{name}"
    );
    storage.delete_prefix("job/chk-1/").unwrap();
    storage.delete_prefix("no-such-job/").unwrap();
    // Deleted metadata can be published again.
    storage
        .put_if_absent("job/chk-1/_metadata", b"again".to_vec())
        .unwrap();
    assert_eq!(storage.get("job/chk-1/_metadata").unwrap(), b"again");

    // Concurrent puts, gets and lists from several threads.
    const THREADS: usize = 8;
    const PER_THREAD: usize = 12;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let path = format!("conc/chk-{t}/file-{i}");
                    let bytes = format!("{t}:{i}").repeat(100 + i).into_bytes();
                    storage.put(&path, bytes.clone()).unwrap();
                    assert_eq!(storage.get(&path).unwrap(), bytes);
                    if i % 4 == 0 {
                        storage.list(&format!("conc/chk-{t}")).unwrap();
                    }
                }
            });
        }
    });
    let listed = storage.list("conc").unwrap();
    assert_eq!(listed.len(), THREADS * PER_THREAD, "{name}");
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            assert_eq!(
                storage.get(&format!("conc/chk-{t}/file-{i}")).unwrap(),
                format!("{t}:{i}").repeat(100 + i).into_bytes()
            );
        }
    }

    // Racing put_if_absent: exactly one writer wins and its content stays.
    let winners: Vec<usize> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    match storage.put_if_absent("race/_metadata", vec![t as u8; 1000]) {
                        Ok(()) => Some(t),
                        Err(StorageError::AlreadyExists { .. }) => None,
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        racers
            .into_iter()
            .filter_map(|r| r.join().unwrap())
            .collect()
    });
    let content = storage.get("race/_metadata").unwrap();
    match race {
        CreateRace::Exclusive => {
            assert_eq!(
                winners.len(),
                1,
                "{name}: racing put_if_absent winners {winners:?}"
            );
            assert_eq!(content, vec![winners[0] as u8; 1000], "{name}");
        }
        CreateRace::AllOrNothing => {
            assert!(
                !winners.is_empty(),
                "{name}: no racing put_if_absent succeeded"
            );
            assert!(
                winners.iter().any(|&t| content == vec![t as u8; 1000]),
                "{name}: a mixed or foreign object after the race"
            );
            if winners.len() > 1 {
                eprintln!(
                    "note: {name}: {} of {THREADS} racing put_if_absent calls succeeded (not exclusive on this server)",
                    winners.len()
                );
            }
        }
    }
    // Once the race is over, a late writer is refused.
    assert!(matches!(
        storage.put_if_absent("race/_metadata", b"late".to_vec()),
        Err(StorageError::AlreadyExists { .. })
    ));

    // Clean up and leave the storage empty.
    storage.delete_prefix("").unwrap();
    assert!(
        storage.list("").unwrap().is_empty(),
        "{name}: not empty after delete_prefix(\"\")"
    );
}

#[test]
fn local_directory_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints"); // created by open_storage
    let storage = open_storage(root.to_str().unwrap()).unwrap();
    assert_eq!(storage.describe(), format!("file://{}", root.display()));
    conformance(storage.as_ref(), CreateRace::Exclusive);
    // Objects are plain files under the directory; deletes leave no empty directories.
    storage.put("job/chk-1/_metadata", b"m".to_vec()).unwrap();
    assert_eq!(
        std::fs::read(root.join("job/chk-1/_metadata")).unwrap(),
        b"m"
    );
    storage.delete_prefix("job/").unwrap();
    assert!(!root.join("job").exists());
}

/// Issue 11 (1): a link inside a checkpoint directory must never make
/// retention or cleanup delete, or restore read, what it points to.
#[test]
fn local_directory_never_follows_symbolic_links() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkpoints");
    let outside = dir.path().join("precious");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("a.txt"), b"keep me").unwrap();
    std::fs::write(outside.join("sub/b.txt"), b"keep me too").unwrap();
    let storage = open_storage(root.to_str().unwrap()).unwrap();
    storage
        .put("job/chk-5/op-0.keyed", b"state".to_vec())
        .unwrap();
    symlink(&outside, root.join("job/chk-5/dir-link")).unwrap();
    symlink(outside.join("a.txt"), root.join("job/chk-5/file-link")).unwrap();
    symlink(&outside, root.join("job/chk-6")).unwrap();

    // Listing reports the links themselves, never what lies behind them.
    let listed = sorted(storage.list("job").unwrap());
    assert_eq!(
        listed,
        vec![
            "job/chk-5/dir-link".to_owned(),
            "job/chk-5/file-link".to_owned(),
            "job/chk-5/op-0.keyed".to_owned(),
            "job/chk-6".to_owned(),
        ]
    );
    // A prefix that is a link lists as that one entry (so that deleting the
    // prefix removes the link), never as the directory it points to.
    assert_eq!(
        storage.list("job/chk-6").unwrap(),
        vec!["job/chk-6".to_owned()]
    );

    // Reading, sizing or writing through a link is refused, naming it.
    for path in [
        "job/chk-5/file-link",
        "job/chk-6/a.txt",
        "job/chk-5/dir-link/a.txt",
    ] {
        match storage.get(path) {
            Err(StorageError::Refused {
                path: named,
                reason,
                ..
            }) => {
                assert_eq!(named, path);
                assert!(reason.contains("symbolic link"), "{reason}");
            }
            other => panic!("get {path}: {other:?}"),
        }
        assert!(matches!(
            storage.size(path),
            Err(StorageError::Refused { .. })
        ));
        assert!(storage.local_path(path).is_none(), "{path}");
    }
    assert!(matches!(
        storage.put("job/chk-6/new", b"x".to_vec()),
        Err(StorageError::Refused { .. })
    ));
    assert!(!outside.join("new").exists());
    // The same for a streamed write (its own code path for local directories).
    assert!(matches!(
        storage.put_streaming("job/chk-6/new").map(drop),
        Err(StorageError::Refused { .. })
    ));
    assert!(!outside.join("new").exists());
    // Streaming onto a link replaces the link, never writes its target.
    let before = std::fs::read(outside.join("a.txt")).unwrap();
    let mut writer = storage.put_streaming("job/chk-5/file-link").unwrap();
    writer.write(b"new content").unwrap();
    writer.finish().unwrap();
    assert_eq!(std::fs::read(outside.join("a.txt")).unwrap(), before);
    assert!(
        std::fs::symlink_metadata(root.join("job/chk-5/file-link"))
            .unwrap()
            .file_type()
            .is_file()
    );

    // A FIFO is refused instead of blocking the reader.
    let fifo = root.join("job/chk-5/pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    assert!(matches!(
        storage.get("job/chk-5/pipe"),
        Err(StorageError::Refused { .. })
    ));

    // Deleting the checkpoints (as retention does) removes the links, not
    // their targets.
    storage.delete_prefix("job/chk-5").unwrap();
    storage.delete_prefix("job/chk-6").unwrap();
    assert!(!root.join("job").exists(), "emptied directories remain");
    assert_eq!(std::fs::read(outside.join("a.txt")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(outside.join("sub/b.txt")).unwrap(),
        b"keep me too"
    );

    // Single deletes too.
    symlink(&outside, root.join("link")).unwrap();
    storage.delete("link").unwrap();
    assert!(std::fs::symlink_metadata(root.join("link")).is_err());
    assert!(outside.join("a.txt").exists());
}

#[test]
fn file_url_and_relative_path_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b");
    let by_url = open_storage(&format!("file://{}", root.display())).unwrap();
    by_url.put_if_absent("x/_metadata", b"1".to_vec()).unwrap();
    let by_path = open_storage(root.to_str().unwrap()).unwrap();
    assert_eq!(by_path.get("x/_metadata").unwrap(), b"1");
    // A relative path is resolved against the current directory.
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(&root, &cwd);
    let by_relative = open_storage(&relative).unwrap();
    assert_eq!(by_relative.get("x/_metadata").unwrap(), b"1");
    assert!(
        by_relative.describe().starts_with("file:///"),
        "{}",
        by_relative.describe()
    );
}

/// `target` relative to `base` (both absolute), with `..` steps.
fn pathdiff(target: &std::path::Path, base: &std::path::Path) -> String {
    let target: Vec<_> = target.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = target.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); base.len() - common];
    parts.extend(
        target[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[test]
fn memory_conformance_and_sharing_by_name() {
    let storage = open_storage("memory://conformance").unwrap();
    assert_eq!(storage.describe(), "memory://conformance");
    conformance(storage.as_ref(), CreateRace::Exclusive);

    // Same name, same objects (a job restarted in the same process finds them).
    let a = open_storage("memory://shared-by-name").unwrap();
    a.put_if_absent("job/chk-1/_metadata", b"m".to_vec())
        .unwrap();
    let b = open_storage("memory://shared-by-name/").unwrap();
    assert_eq!(b.get("job/chk-1/_metadata").unwrap(), b"m");
    // Another name, other objects.
    let c = open_storage("memory://another-name").unwrap();
    assert!(c.list("").unwrap().is_empty());
    // `memory://` is one shared default store.
    open_storage("memory://")
        .unwrap()
        .put("default-check", b"d".to_vec())
        .unwrap();
    assert_eq!(
        open_storage("memory://")
            .unwrap()
            .get("default-check")
            .unwrap(),
        b"d"
    );
    open_storage("memory://")
        .unwrap()
        .delete("default-check")
        .unwrap();
}

#[test]
fn invalid_urls_name_the_url_and_what_is_accepted() {
    for url in ["ftp://host/dir", "s3://", "file://not/absolute", ""] {
        let err = open_storage(url)
            .err()
            .unwrap_or_else(|| panic!("{url:?} was accepted"));
        let message = err.to_string();
        assert!(
            matches!(err, StorageError::InvalidUrl { .. }),
            "{url:?}: {message}"
        );
        assert!(message.contains(&format!("'{url}'")), "{message}");
        assert!(
            message.contains("memory://") && message.contains("s3://bucket"),
            "{message}"
        );
    }
}

/// A prefix no other run uses: `<FLOWSTATE_TEST_S3_URL>/run-<time>-<pid>-<n>`.
fn unique_s3_url(base: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}/run-{nanos:x}-{}",
        base.trim_end_matches('/'),
        std::process::id()
    )
}

#[test]
fn s3_conformance() {
    let required = std::env::var("FLOWSTATE_REQUIRE_S3").is_ok_and(|v| v == "1");
    let Some(base) = std::env::var("FLOWSTATE_TEST_S3_URL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            !required,
            "FLOWSTATE_REQUIRE_S3=1 but FLOWSTATE_TEST_S3_URL is not set: start a server with \
             `eval \"$(scripts/s3-server.sh)\"`"
        );
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! SKIPPED s3_conformance: FLOWSTATE_TEST_S3_URL is not set.              !!!");
        eprintln!(
            "!!! Run `eval \"$(scripts/s3-server.sh)\"` first to test S3 storage for real. !!!"
        );
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return;
    };
    let url = unique_s3_url(&base);
    let storage: SharedStorage = open_storage(&url).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        storage.describe().starts_with(url.as_str()),
        "{}",
        storage.describe()
    );

    // Clean up even if the suite fails.
    struct Cleanup(SharedStorage);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Err(e) = self.0.delete_prefix("") {
                eprintln!("cleaning up {} failed: {e}", self.0.describe());
            }
        }
    }
    let _cleanup = Cleanup(Arc::clone(&storage));

    // s3s-fs (CI) does not make racing creates exclusive; a server that does (AWS
    // S3) can be held to it with FLOWSTATE_TEST_S3_EXCLUSIVE_CREATE=1.
    let race = if std::env::var("FLOWSTATE_TEST_S3_EXCLUSIVE_CREATE").is_ok_and(|v| v == "1") {
        CreateRace::Exclusive
    } else {
        CreateRace::AllOrNothing
    };
    conformance(storage.as_ref(), race);

    // A checkpoint written under the prefix is restored through a second handle,
    // and stays invisible to a storage rooted beside it.
    storage
        .put("job/chk-7/op-0.keyed", b"keyed".to_vec())
        .unwrap();
    storage
        .put_if_absent("job/chk-7/_metadata", b"meta".to_vec())
        .unwrap();
    let reopened = open_storage(&url).unwrap();
    assert_eq!(
        sorted(reopened.list("").unwrap()),
        vec!["job/chk-7/_metadata", "job/chk-7/op-0.keyed"]
    );
    assert_eq!(reopened.get("job/chk-7/_metadata").unwrap(), b"meta");
    let sibling = open_storage(&format!("{url}-sibling")).unwrap();
    assert!(sibling.list("").unwrap().is_empty());
    reopened.delete_prefix("").unwrap();
    assert!(storage.list("").unwrap().is_empty());
}
