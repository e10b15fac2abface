//! The keyed state files of a committed version-1 savepoint (written when
//! bincode 2 defined the entry encoding; see `crates/cli/tests/v1_savepoint.rs`
//! for how it was taken) restore into both backends through today's codec,
//! with the values `flowstate state dump` printed when it was written.
//!
//! This reads the files directly (no checkpoint crate): a keyed file is
//! `FSKS`, `u32 version`, the key-group sections of its range in order, and a
//! CRC-32C (docs/savepoint-format.md, sections 2 and 4).

use std::collections::BTreeMap;
use std::path::PathBuf;

use flowstate_state::memory_store::MemoryStore;
use flowstate_state::serialized::SerializedKeyedStateBackend;
use flowstate_state::snapshot::{read_section, section_from_v1};
use flowstate_state::{
    KeyGroup, KeyGroupRange, KeyScope, KeyedStateBackend, RestoredKeyedState, StateError,
    ValueStateDescriptor, heap_backend, key_group_of,
};

/// The savepoint's key groups, and its subtasks' ranges.
const MAX_PARALLELISM: u32 = 8;
const RANGES: [(u32, u32); 2] = [(0, 4), (4, 8)];
const KEYS: u64 = 50;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../cli/tests/fixtures")
        .join(path)
}

/// The sections of one keyed file, one per key group of `range`.
fn sections(subtask: usize, (start, end): (u32, u32)) -> Vec<(KeyGroup, Vec<u8>)> {
    let path = fixture(&format!(
        "v1-savepoint-keyed-count/state/count-and-sum/{subtask}.keyed"
    ));
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[..4], b"FSKS");
    assert_eq!(file[4..8], 1u32.to_le_bytes(), "a version-1 file");
    let mut rest = &file[8..file.len() - 4];
    let mut out = Vec::new();
    for group in start..end {
        // A section's length is found by walking it: u32 states, then per
        // state u16 name_len, name, u8 kind, u16 types_len, types, u64
        // payload_len, payload.
        let states = u32::from_le_bytes(rest[..4].try_into().unwrap());
        let mut at = 4;
        for _ in 0..states {
            at += 2 + u16::from_le_bytes([rest[at], rest[at + 1]]) as usize + 1;
            at += 2 + u16::from_le_bytes([rest[at], rest[at + 1]]) as usize;
            at += 8 + u64::from_le_bytes(rest[at..at + 8].try_into().unwrap()) as usize;
        }
        let (section, tail) = rest.split_at(at);
        let states = read_section(group, section).unwrap();
        assert!(
            states.iter().all(|s| s.types == "(u64, u64)"),
            "Rust type names"
        );
        // The reader of version-1 sections: the names become legacy names,
        // which match the declaration's `std::any::type_name`.
        out.push((group, section_from_v1(group, section).unwrap()));
        rest = tail;
    }
    assert!(rest.is_empty(), "{} bytes after the sections", rest.len());
    out
}

/// key -> (count, sum) as the bincode-based `flowstate state dump` printed it.
fn dumped() -> BTreeMap<u64, (u64, u64)> {
    let text = std::fs::read_to_string(fixture("v1-savepoint-keyed-count.dump.csv")).unwrap();
    text.lines()
        .filter(|line| !line.starts_with("key,"))
        .map(|line| {
            let f: Vec<u64> = line.split(',').map(|f| f.parse().unwrap()).collect();
            (f[0], (f[1], f[2]))
        })
        .collect()
}

fn restored_values(
    mut backend: Box<dyn KeyedStateBackend<u64>>,
    range: KeyGroupRange,
    groups: Vec<(KeyGroup, Vec<u8>)>,
) -> BTreeMap<u64, (u64, u64)> {
    backend
        .restore(RestoredKeyedState {
            groups,
            native: Vec::new(),
            streams: Vec::new(),
        })
        .unwrap();
    let handle = backend
        .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
        .unwrap();
    let mut values = BTreeMap::new();
    for key in (0..KEYS).filter(|k| range.contains(key_group_of(k, MAX_PARALLELISM))) {
        let group = key_group_of(&key, MAX_PARALLELISM);
        if let Some(value) = KeyScope::new(backend.as_mut(), &key, group)
            .value(&handle)
            .get()
            .unwrap()
        {
            values.insert(key, *value);
        }
    }
    values
}

#[test]
fn v1_keyed_files_restore_into_both_backends_unchanged() {
    let mut heap = BTreeMap::new();
    let mut serialized = BTreeMap::new();
    for (subtask, &(start, end)) in RANGES.iter().enumerate() {
        let range = KeyGroupRange::new(start, end);
        let groups = sections(subtask, (start, end));
        heap.extend(restored_values(
            heap_backend(range, MAX_PARALLELISM),
            range,
            groups.clone(),
        ));
        let store = Box::new(SerializedKeyedStateBackend::new(
            Box::new(MemoryStore::default()),
            range,
            MAX_PARALLELISM,
        ));
        serialized.extend(restored_values(store, range, groups));
    }
    let expected = dumped();
    assert_eq!(expected.len() as u64, KEYS);
    assert_eq!(heap, expected);
    assert_eq!(serialized, expected);
}

#[test]
fn v1_sections_match_only_the_same_rust_type() {
    let range = KeyGroupRange::new(RANGES[0].0, RANGES[0].1);
    let mut backend = heap_backend::<u64>(range, MAX_PARALLELISM);
    backend
        .restore(RestoredKeyedState {
            groups: sections(0, RANGES[0]),
            native: Vec::new(),
            streams: Vec::new(),
        })
        .unwrap();
    // Same shape, other Rust type: version 1 refused it, so does this reader.
    let err = backend
        .value_state(&ValueStateDescriptor::<(i64, u64)>::new("count-sum"))
        .unwrap_err();
    match &err {
        StateError::RestoredTypeMismatch {
            state,
            recorded,
            requested,
            ..
        } => {
            assert_eq!(state, "count-sum");
            assert_eq!(recorded, "~rust:(u64, u64)");
            assert_eq!(requested, "tuple<i64,u64>");
        }
        other => panic!("expected RestoredTypeMismatch, got {other}"),
    }
    assert!(err.to_string().contains("'~rust:(u64, u64)'"), "{err}");
    // The refused declaration left the state waiting for a correct one.
    backend
        .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
        .unwrap();
}
