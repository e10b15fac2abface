use super::*;
use crate::metadata::{CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskSnapshot};
use crate::storage::{SharedStorage, open_storage};
use flowstate_state::KeyGroupRange;

fn memory(name: &str) -> SharedStorage {
    open_storage(&format!(
        "memory://channel-file-{name}-{}",
        std::process::id()
    ))
    .unwrap()
}

/// A wire batch payload of `(u64, u64)` records in the `state::codec`
/// encoding.
fn payload(records: &[(u64, u64)]) -> Vec<u8> {
    let mut out = vec![BATCH_KIND];
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for record in records {
        flowstate_state::codec::encode_into(record, &mut out).unwrap();
    }
    out
}

fn framed(batches: &[&[(u64, u64)]]) -> Vec<u8> {
    let mut out = Vec::new();
    for batch in batches {
        frame_batch(&payload(batch), &mut out).unwrap();
    }
    out
}

/// The example of docs/savepoint-format.md section 10: edge 0 (hash) of
/// `count-and-sum` instance 0, key group 5, records `(7, 100)`, `(7, 101)`.
fn example() -> ChannelStateContents {
    ChannelStateContents {
        key_group_start: 0,
        key_group_end: 64,
        inputs: vec![InputContents {
            edge: 0,
            from_uid: "w-generator".into(),
            partitioning: EdgePartitioning::Hash,
            record_type: "(u64, u64)".into(),
            sections: vec![SectionContents {
                key_group: Some(5),
                framed: framed(&[&[(7, 100), (7, 101)]]),
            }],
        }],
    }
}

const EXAMPLE_PATH: &str = "job-1/chk-7/count-and-sum-0.channels";

#[test]
fn the_documented_example_is_byte_for_byte() {
    let storage = memory("golden");
    let handle = write_channel_state_file(storage.as_ref(), EXAMPLE_PATH, &example()).unwrap();
    let bytes = storage.get(EXAMPLE_PATH).unwrap();
    #[rustfmt::skip]
    let mut expected: Vec<u8> = vec![
        0x46, 0x53, 0x43, 0x53, 0x01, 0x00, 0x00, 0x00,
        0x25, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x00, 0x00,
        0x07, 0, 0, 0, 0, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0,
        0x07, 0, 0, 0, 0, 0, 0, 0, 0x65, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(expected.len(), 49);
    let crc = crc32c::crc32c(&expected);
    expected.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(bytes, expected);
    assert_eq!(
        handle,
        ChannelStateHandle {
            file: FileRef {
                path: EXAMPLE_PATH.into(),
                size: 53,
                crc32c: crc,
            },
            key_group_start: 0,
            key_group_end: 64,
            inputs: vec![ChannelInputState {
                edge: 0,
                from_uid: "w-generator".into(),
                partitioning: EdgePartitioning::Hash,
                record_type: "(u64, u64)".into(),
                sections: vec![ChannelSection {
                    key_group: Some(5),
                    offset: 8,
                    length: 41,
                    batches: 1,
                    records: 2,
                }],
            }],
        }
    );
    // The metadata member, as documented (section 3.3 of the design).
    let json = serde_json::to_string(&handle).unwrap();
    assert_eq!(
        json,
        format!(
            "{{\"file\":{{\"path\":\"{EXAMPLE_PATH}\",\"size\":53,\"crc32c\":{crc}}},\
             \"key_group_start\":0,\"key_group_end\":64,\"inputs\":[{{\"edge\":0,\
             \"from_uid\":\"w-generator\",\"partitioning\":\"hash\",\"record_type\":\
             \"(u64, u64)\",\"sections\":[{{\"key_group\":5,\"offset\":8,\"length\":41,\
             \"batches\":1,\"records\":2}}]}}]}}"
        )
    );
}

#[test]
fn the_documented_example_is_the_one_in_the_docs() {
    // docs/savepoint-format.md section 10 shows the example's bytes; they
    // are the bytes written above (but for the CRC, shown as `xx`).
    let doc = include_str!("../../../../docs/savepoint-format.md");
    let section = doc
        .split("## 10. Channel state files")
        .nth(1)
        .expect("section 10");
    let start = section.find("46 53 43 53  01").expect("the example");
    let mut shown = Vec::new();
    for line in section[start..].lines() {
        if line.starts_with("```") {
            break;
        }
        for token in line.split_whitespace() {
            match u8::from_str_radix(token, 16) {
                Ok(byte) if token.len() == 2 => shown.push(byte),
                _ => break,
            }
        }
    }
    let storage = memory("golden-doc");
    write_channel_state_file(storage.as_ref(), EXAMPLE_PATH, &example()).unwrap();
    let bytes = storage.get(EXAMPLE_PATH).unwrap();
    assert_eq!(shown, bytes[..bytes.len() - 4]);
}

/// Two inputs: a hash edge with three key groups, a rebalance edge.
fn two_inputs() -> ChannelStateContents {
    ChannelStateContents {
        key_group_start: 0,
        key_group_end: 4,
        inputs: vec![
            InputContents {
                edge: 0,
                from_uid: "a".into(),
                partitioning: EdgePartitioning::Hash,
                record_type: "(u64, u64)".into(),
                sections: vec![
                    SectionContents {
                        key_group: Some(0),
                        framed: framed(&[&[(1, 1)], &[(1, 2), (1, 3)]]),
                    },
                    SectionContents {
                        key_group: Some(2),
                        framed: framed(&[&[(2, 1); 7]]),
                    },
                    SectionContents {
                        key_group: Some(3),
                        framed: framed(&[&[(3, 1)], &[(3, 2)], &[(3, 3)]]),
                    },
                ],
            },
            InputContents {
                edge: 1,
                from_uid: "b".into(),
                partitioning: EdgePartitioning::Rebalance,
                record_type: "(u64, u64)".into(),
                sections: vec![SectionContents {
                    key_group: None,
                    framed: framed(&[&[(9, 9), (9, 10)]]),
                }],
            },
        ],
    }
}

#[test]
fn a_written_file_verifies_and_reads_back_section_by_section() {
    let storage = memory("round-trip");
    let contents = two_inputs();
    let handle =
        write_channel_state_file(storage.as_ref(), "j/chk-1/x-0.channels", &contents).unwrap();
    let counts: Vec<(u64, u64)> = handle
        .inputs
        .iter()
        .flat_map(|i| &i.sections)
        .map(|s| (s.batches, s.records))
        .collect();
    assert_eq!(counts, [(2, 3), (1, 7), (3, 3), (1, 2)]);
    let verified = verify_channel_file(storage.as_ref(), &handle).unwrap();
    for (i, input) in contents.inputs.iter().enumerate() {
        for (j, section) in input.sections.iter().enumerate() {
            let read = verified.read_section(storage.as_ref(), i, j).unwrap();
            assert_eq!(read.bytes, section.framed);
            assert_eq!(read.key_group, section.key_group);
        }
    }
    let read = verified.read_section(storage.as_ref(), 0, 0).unwrap();
    assert_eq!(
        read.payloads().unwrap(),
        [&payload(&[(1, 1)])[..], &payload(&[(1, 2), (1, 3)])[..]]
    );
    assert!(verified.read_section(storage.as_ref(), 2, 0).is_err());
    assert!(verified.read_section(storage.as_ref(), 0, 3).is_err());
}

#[test]
fn a_file_larger_than_a_verify_chunk_verifies() {
    // Sections cross chunk boundaries (and frames with them).
    let storage = memory("large");
    let batch: Vec<(u64, u64)> = (0..1000).map(|i| (i, i)).collect();
    let batches: Vec<&[(u64, u64)]> = (0..300).map(|_| &batch[..]).collect();
    let contents = ChannelStateContents {
        key_group_start: 0,
        key_group_end: 2,
        inputs: vec![InputContents {
            edge: 0,
            from_uid: "a".into(),
            partitioning: EdgePartitioning::Hash,
            record_type: "(u64, u64)".into(),
            sections: vec![
                SectionContents {
                    key_group: Some(0),
                    framed: framed(&batches),
                },
                SectionContents {
                    key_group: Some(1),
                    framed: framed(&batches[..7]),
                },
            ],
        }],
    };
    let handle =
        write_channel_state_file(storage.as_ref(), "j/chk-1/x-0.channels", &contents).unwrap();
    assert!(handle.file.size > VERIFY_CHUNK_BYTES);
    verify_channel_file(storage.as_ref(), &handle).unwrap();
    assert_eq!(handle.inputs[0].sections[0].records, 300_000);
}

/// Writes `bytes` (CRC recomputed when `reseal`) and returns the error of
/// verifying them against `handle` (its size and CRC set to the bytes').
fn refused(
    storage: &dyn CheckpointStorage,
    handle: &ChannelStateHandle,
    mut bytes: Vec<u8>,
    reseal: bool,
) -> CheckpointError {
    if reseal && bytes.len() >= 4 {
        let body = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }
    let mut handle = handle.clone();
    handle.file.size = bytes.len() as u64;
    if bytes.len() >= 4 {
        handle.file.crc32c = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    }
    storage.put(&handle.file.path, bytes).unwrap();
    verify_channel_file(storage, &handle).unwrap_err()
}

fn assert_names(err: &CheckpointError, path: &str, field: &str) {
    let message = err.to_string();
    assert!(message.contains(path), "{message}");
    assert!(message.contains(field), "{message}");
}

#[test]
fn every_flipped_byte_and_every_truncation_is_refused() {
    let storage = memory("damage");
    let handle = write_channel_state_file(storage.as_ref(), EXAMPLE_PATH, &example()).unwrap();
    let good = storage.get(EXAMPLE_PATH).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        storage.put(EXAMPLE_PATH, bad).unwrap();
        let err = verify_channel_file(storage.as_ref(), &handle).unwrap_err();
        assert!(err.to_string().contains(EXAMPLE_PATH), "flip at {i}: {err}");
    }
    // Truncated: storage holds fewer bytes than recorded.
    for len in [0, 3, 11, 30, good.len() - 1] {
        storage.put(EXAMPLE_PATH, good[..len].to_vec()).unwrap();
        let err = verify_channel_file(storage.as_ref(), &handle).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Corrupt { .. }),
            "{len}: {err}"
        );
        assert_names(&err, EXAMPLE_PATH, "truncated");
    }
    // Truncated, and recorded so: the checksum (or the size) says so.
    let err = refused(
        storage.as_ref(),
        &handle,
        good[..good.len() - 5].to_vec(),
        false,
    );
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    assert_names(&err, EXAMPLE_PATH, "");
}

#[test]
fn bad_magic_crc_version_and_recorded_crc_are_refused() {
    let storage = memory("seal");
    let handle = write_channel_state_file(storage.as_ref(), EXAMPLE_PATH, &example()).unwrap();
    let good = storage.get(EXAMPLE_PATH).unwrap();
    let mut magic = good.clone();
    magic[..4].copy_from_slice(b"FSKS");
    let err = refused(storage.as_ref(), &handle, magic, true);
    assert_names(&err, EXAMPLE_PATH, "wrong magic");

    let mut crc = good.clone();
    let last = crc.len() - 1;
    crc[last] ^= 1;
    storage.put(EXAMPLE_PATH, crc).unwrap();
    let err = verify_channel_file(storage.as_ref(), &handle).unwrap_err();
    assert_names(&err, EXAMPLE_PATH, "checksum mismatch");

    let mut version = good.clone();
    version[4] = 2;
    let err = refused(storage.as_ref(), &handle, version, true);
    assert!(
        matches!(
            err,
            CheckpointError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );

    // Sealed well, but not the file the checkpoint recorded.
    storage.put(EXAMPLE_PATH, good.clone()).unwrap();
    let mut other = handle.clone();
    other.file.crc32c ^= 1;
    let err = verify_channel_file(storage.as_ref(), &other).unwrap_err();
    assert_names(&err, EXAMPLE_PATH, "file.crc32c");
}

#[test]
fn sizes_beyond_the_limit_are_refused_before_reading() {
    let storage = memory("limit");
    let handle = write_channel_state_file(storage.as_ref(), EXAMPLE_PATH, &example()).unwrap();
    let mut huge = handle.clone();
    huge.file.size = CHANNEL_STATE_BYTES_MAX + 1;
    let err = verify_channel_file(storage.as_ref(), &huge).unwrap_err();
    assert_names(&err, EXAMPLE_PATH, "file.size");
    // Storage holds more than recorded (replaced by a larger file).
    let mut longer = storage.get(EXAMPLE_PATH).unwrap();
    longer.extend_from_slice(&[0; 100]);
    storage.put(EXAMPLE_PATH, longer).unwrap();
    let err = verify_channel_file(storage.as_ref(), &handle).unwrap_err();
    assert_names(&err, EXAMPLE_PATH, "the checkpoint recorded 53");
}

#[test]
fn an_index_that_does_not_tile_the_file_is_refused() {
    let storage = memory("tiling");
    let path = "j/chk-1/x-0.channels";
    let handle = write_channel_state_file(storage.as_ref(), path, &two_inputs()).unwrap();
    verify_channel_file(storage.as_ref(), &handle).unwrap();
    // Overlapping: the second section starts inside the first.
    let mut overlapping = handle.clone();
    overlapping.inputs[0].sections[1].offset -= 1;
    let err = verify_channel_file(storage.as_ref(), &overlapping).unwrap_err();
    assert_names(&err, path, "edge 0 key group 2: offset");
    assert!(err.to_string().contains("overlapping or gapped"), "{err}");
    // Gapped.
    let mut gapped = handle.clone();
    gapped.inputs[1].sections[0].offset += 1;
    let err = verify_channel_file(storage.as_ref(), &gapped).unwrap_err();
    assert_names(&err, path, "section edge 1: offset");
    // Not in index order.
    let mut reordered = handle.clone();
    reordered.inputs.swap(0, 1);
    let err = verify_channel_file(storage.as_ref(), &reordered).unwrap_err();
    assert_names(&err, path, "inputs[1] (edge 0)");
    // A section past the end.
    let mut long = handle.clone();
    long.inputs[1].sections[0].length = u64::MAX - 10;
    let err = verify_channel_file(storage.as_ref(), &long).unwrap_err();
    assert_names(&err, path, "lies outside the file");
    // Sections that end before the trailer.
    let mut short = handle.clone();
    short.inputs[1].sections[0].length -= 1;
    let err = verify_channel_file(storage.as_ref(), &short).unwrap_err();
    assert_names(&err, path, "the sections end at byte");
    // Counts other than recorded.
    let mut counts = handle.clone();
    counts.inputs[0].sections[1].records = 8;
    let err = verify_channel_file(storage.as_ref(), &counts).unwrap_err();
    assert_names(
        &err,
        path,
        "section edge 0 key group 2: 1 batches and 7 records",
    );
}

#[test]
fn a_section_outside_the_key_group_range_is_refused() {
    let storage = memory("range");
    let path = "j/chk-1/x-0.channels";
    let handle = write_channel_state_file(storage.as_ref(), path, &two_inputs()).unwrap();
    let mut outside = handle.clone();
    outside.inputs[0].sections[2].key_group = Some(4);
    let err = verify_channel_file(storage.as_ref(), &outside).unwrap_err();
    assert_names(&err, path, "key_group 4 lies outside the range 0..4");
    let mut unordered = handle.clone();
    unordered.inputs[0].sections[1].key_group = Some(0);
    let err = verify_channel_file(storage.as_ref(), &unordered).unwrap_err();
    assert_names(&err, path, "key_group 0 is not after");
    let mut keyless = handle.clone();
    keyless.inputs[0].sections[0].key_group = None;
    let err = verify_channel_file(storage.as_ref(), &keyless).unwrap_err();
    assert_names(&err, path, "a hash section without key_group");
    let mut keyed = handle;
    keyed.inputs[1].sections[0].key_group = Some(1);
    let err = verify_channel_file(storage.as_ref(), &keyed).unwrap_err();
    assert_names(&err, path, "a rebalance edge has exactly one section");
    // The writer refuses what a reader would.
    let mut contents = two_inputs();
    contents.inputs[0].sections[2].key_group = Some(9);
    let err =
        write_channel_state_file(storage.as_ref(), "j/chk-1/y-0.channels", &contents).unwrap_err();
    assert!(err.to_string().contains("key_group 9"), "{err}");
    assert!(storage.size("j/chk-1/y-0.channels").unwrap().is_none());
}

/// One hash section at key group 0 holding `framed`, sealed, with an index
/// recording `batches` and `records`.
fn crafted(framed: &[u8], batches: u64, records: u64) -> (ChannelStateHandle, Vec<u8>) {
    let mut bytes = crate::format::begin_sealed(CHANNEL_STATE_MAGIC, CHANNEL_FILE_VERSION);
    bytes.extend_from_slice(framed);
    crate::format::finish_sealed(&mut bytes);
    let handle = ChannelStateHandle {
        file: FileRef {
            path: "j/chk-1/crafted-0.channels".into(),
            size: bytes.len() as u64,
            crc32c: 0,
        },
        key_group_start: 0,
        key_group_end: 1,
        inputs: vec![ChannelInputState {
            edge: 0,
            from_uid: "a".into(),
            partitioning: EdgePartitioning::Hash,
            record_type: "u64".into(),
            sections: vec![ChannelSection {
                key_group: Some(0),
                offset: 8,
                length: framed.len() as u64,
                batches,
                records,
            }],
        }],
    };
    (handle, bytes)
}

#[test]
fn hostile_batches_are_refused_naming_the_section() {
    let storage = memory("batches");
    let path = "j/chk-1/crafted-0.channels";
    // A batch claiming 2^30 records (in 5 bytes of payload).
    let mut huge = Vec::new();
    frame_batch(&[0, 0, 0, 0, 0x40], &mut huge).unwrap();
    let (handle, bytes) = crafted(&huge, 1, 1 << 30);
    let err = refused(storage.as_ref(), &handle, bytes, false);
    assert_names(
        &err,
        path,
        "section edge 0 key group 0: batch 0 at byte 8: 1073741824 records",
    );
    // A batch of no records.
    let mut empty = Vec::new();
    frame_batch(&[0, 0, 0, 0, 0], &mut empty).unwrap();
    let (handle, bytes) = crafted(&empty, 1, 1);
    let err = refused(storage.as_ref(), &handle, bytes, false);
    assert_names(&err, path, ": 0 records");
    // A barrier (kind 1) where only batches belong.
    let mut barrier = framed(&[&[(1, 1)]]);
    let mut kind = Vec::new();
    frame_batch(&[1, 7, 0, 0, 0, 0, 0, 0, 0, 0], &mut kind).unwrap();
    barrier.extend_from_slice(&kind);
    let (handle, bytes) = crafted(&barrier, 2, 2);
    let err = refused(storage.as_ref(), &handle, bytes, false);
    assert_names(&err, path, "batch 1 at byte 33: payload kind 1");
    // A payload_len past the section.
    let mut past = framed(&[&[(1, 1)]]);
    past[0] += 1;
    let (handle, bytes) = crafted(&past, 1, 1);
    let err = refused(storage.as_ref(), &handle, bytes, false);
    assert_names(&err, path, "payload_len 22");
    // A payload_len too short for the payload header.
    let (handle, bytes) = crafted(&[4, 0, 0, 0, 0, 1, 0, 0, 0], 1, 1);
    let err = refused(storage.as_ref(), &handle, bytes, false);
    assert_names(&err, path, "payload_len 4");
    // Trailing bytes after the last batch, inside the section.
    let mut trailing = framed(&[&[(1, 1)]]);
    trailing.extend_from_slice(&[0; 10]);
    let (handle, bytes) = crafted(&trailing, 1, 1);
    let err = refused(storage.as_ref(), &handle, bytes, false);
    assert_names(&err, path, "payload_len 0");
    // And the writer refuses to write any of them.
    let contents = ChannelStateContents {
        key_group_start: 0,
        key_group_end: 1,
        inputs: vec![InputContents {
            edge: 0,
            from_uid: "a".into(),
            partitioning: EdgePartitioning::Hash,
            record_type: "u64".into(),
            sections: vec![SectionContents {
                key_group: Some(0),
                framed: barrier,
            }],
        }],
    };
    let err =
        write_channel_state_file(storage.as_ref(), "j/chk-1/w-0.channels", &contents).unwrap_err();
    assert!(err.to_string().contains("payload kind 1"), "{err}");
}

// --- metadata version 3 -------------------------------------------------

fn metadata_with(channels: Option<ChannelStateHandle>) -> CheckpointMetadata {
    CheckpointMetadata {
        job_id: "job-1".into(),
        checkpoint_id: 7,
        kind: SnapshotKind::Checkpoint,
        created_unix_ms: 1,
        max_parallelism: 128,
        operators: vec![OperatorSnapshot {
            uid: "count-and-sum".into(),
            name: "Count and sum".into(),
            parallelism: 2,
            subtasks: vec![SubtaskSnapshot {
                subtask: 0,
                keyed: None,
                native: None,
                lists: Vec::new(),
                channels,
            }],
        }],
        job: None,
    }
}

fn example_handle(storage: &dyn CheckpointStorage) -> ChannelStateHandle {
    write_channel_state_file(storage, EXAMPLE_PATH, &example()).unwrap()
}

#[test]
fn metadata_is_version_3_only_with_channel_state() {
    let storage = memory("metadata-version");
    let without = metadata_with(None).encode().unwrap();
    assert_eq!(&without[..8], b"FSMD\x02\x00\x00\x00");
    assert!(!String::from_utf8_lossy(&without).contains("channels"));
    let with = metadata_with(Some(example_handle(storage.as_ref())));
    let encoded = with.encode().unwrap();
    assert_eq!(&encoded[..8], b"FSMD\x03\x00\x00\x00");
    assert_eq!(CheckpointMetadata::decode("m", &encoded).unwrap(), with);
    // Version 3 without channels reads too.
    let json = &without[8..without.len() - 4];
    let v3 = crate::format::seal(crate::format::METADATA_MAGIC, 3, json);
    assert_eq!(
        CheckpointMetadata::decode("m", &v3).unwrap(),
        metadata_with(None)
    );
}

#[test]
fn channels_in_version_2_metadata_are_refused() {
    let storage = memory("metadata-v2");
    let with = metadata_with(Some(example_handle(storage.as_ref())));
    let encoded = with.encode().unwrap();
    let json = &encoded[8..encoded.len() - 4];
    for version in [1, 2] {
        let old = crate::format::seal(crate::format::METADATA_MAGIC, version, json);
        let err = CheckpointMetadata::decode("job-1/chk-7/_metadata", &old).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert_names(&err, "job-1/chk-7/_metadata", "subtask 0: channels");
    }
}

#[test]
fn metadata_structure_of_channel_state_is_checked() {
    let storage = memory("metadata-structure");
    let handle = example_handle(storage.as_ref());
    let decode = |metadata: &CheckpointMetadata| {
        CheckpointMetadata::decode("job-1/chk-7/_metadata", &metadata.encode().unwrap())
    };
    let mut savepoint = metadata_with(Some(handle.clone()));
    savepoint.kind = SnapshotKind::Savepoint;
    let err = decode(&savepoint).unwrap_err();
    assert_names(
        &err,
        "_metadata",
        "channels: a savepoint holds channel state",
    );

    let mut range = handle.clone();
    range.key_group_end = 63;
    let err = decode(&metadata_with(Some(range))).unwrap_err();
    assert_names(
        &err,
        "_metadata",
        "is not the range 0..64 of subtask 0 of 2",
    );

    let mut elsewhere = handle.clone();
    elsewhere.file.path = "job-1/chk-6/count-and-sum-0.channels".into();
    let err = decode(&metadata_with(Some(elsewhere))).unwrap_err();
    assert_names(&err, "_metadata", "outside the checkpoint's directory");

    let mut outside = handle.clone();
    outside.inputs[0].sections[0].key_group = Some(64);
    let err = decode(&metadata_with(Some(outside))).unwrap_err();
    assert_names(
        &err,
        "_metadata",
        "key_group 64 lies outside the range 0..64",
    );

    let mut overlap = handle.clone();
    overlap.inputs[0].sections.push(ChannelSection {
        key_group: Some(6),
        offset: 20,
        length: 0,
        batches: 0,
        records: 0,
    });
    let err = decode(&metadata_with(Some(overlap))).unwrap_err();
    assert_names(&err, "_metadata", "section edge 0 key group 6");

    // Two instances that disagree about an edge.
    let mut two = metadata_with(Some(handle.clone()));
    let mut second = handle.clone();
    second.key_group_start = 64;
    second.key_group_end = 128;
    second.file.path = "job-1/chk-7/count-and-sum-1.channels".into();
    second.inputs[0].sections[0].key_group = Some(70);
    second.inputs[0].record_type = "u64".into();
    two.operators[0].subtasks.push(SubtaskSnapshot {
        subtask: 1,
        channels: Some(second),
        ..SubtaskSnapshot::default()
    });
    let err = decode(&two).unwrap_err();
    assert_names(&err, "_metadata", "differ from another subtask's");
}

// --- dealing out on restore ---------------------------------------------

/// A hash input (edge 0) with one batch per key group, key `g` in group
/// `g`, and a rebalance input (edge 1) with one batch naming the subtask.
fn recorded(subtask: u32, range: KeyGroupRange) -> ChannelStateContents {
    ChannelStateContents {
        key_group_start: range.start,
        key_group_end: range.end,
        inputs: vec![
            InputContents {
                edge: 0,
                from_uid: "source".into(),
                partitioning: EdgePartitioning::Hash,
                record_type: "(u64, u64)".into(),
                sections: range
                    .iter()
                    .map(|g| SectionContents {
                        key_group: Some(g),
                        framed: framed(&[&[(u64::from(g), u64::from(subtask))]]),
                    })
                    .collect(),
            },
            InputContents {
                edge: 1,
                from_uid: "other".into(),
                partitioning: EdgePartitioning::Rebalance,
                record_type: "(u64, u64)".into(),
                sections: vec![SectionContents {
                    key_group: None,
                    framed: framed(&[&[(1000, u64::from(subtask))]]),
                }],
            },
        ],
    }
}

#[test]
fn channel_state_is_dealt_by_key_group_and_by_old_instance() {
    let storage = memory("deal");
    let (m, p) = (8u32, 3u32);
    let mut metadata = metadata_with(None);
    metadata.max_parallelism = m;
    metadata.operators[0].parallelism = p;
    metadata.operators[0].subtasks.clear();
    for subtask in 0..p {
        let range = KeyGroupRange::for_operator(subtask, p, m);
        let path = crate::layout::channel_state_path("job-1", 7, "count-and-sum", subtask);
        let handle =
            write_channel_state_file(storage.as_ref(), &path, &recorded(subtask, range)).unwrap();
        metadata.operators[0].subtasks.push(SubtaskSnapshot {
            subtask,
            channels: Some(handle),
            ..SubtaskSnapshot::default()
        });
    }
    storage
        .put_if_absent("job-1/chk-7/_metadata", metadata.encode().unwrap())
        .unwrap();
    let loaded = crate::restore::load(&storage, "job-1/chk-7").unwrap();
    let records = |input: &crate::restore::RestoredChannelInput| -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for section in &input.sections {
            for payload in section.section.payloads().unwrap() {
                let n = u32::from_le_bytes(payload[1..5].try_into().unwrap());
                for r in 0..n as usize {
                    let at = 5 + 16 * r;
                    out.push(flowstate_state::codec::decode_exact(&payload[at..at + 16]).unwrap());
                }
            }
        }
        out
    };
    for q in [1u32, 2, 3, 5] {
        let mut hash_seen = Vec::new();
        let mut rebalance_seen = Vec::new();
        for index in 0..q {
            let range = KeyGroupRange::for_operator(index, q, m);
            let hash = loaded
                .channel_state("count-and-sum", 0, index, q, range)
                .unwrap()
                .unwrap();
            assert_eq!(hash.partitioning, EdgePartitioning::Hash);
            assert_eq!(hash.from_uid, "source");
            for (key, old) in records(&hash) {
                assert!(range.contains(key as u32), "q={q}: key {key} at {index}");
                assert_eq!(
                    old as u32,
                    (key as u32) * p / m,
                    "recorded by the old owner"
                );
                hash_seen.push(key);
            }
            let rebalance = loaded
                .channel_state("count-and-sum", 1, index, q, range)
                .unwrap();
            let rebalance = rebalance.map(|r| records(&r)).unwrap_or_default();
            for (_, old) in rebalance {
                assert_eq!(old as u32 % q, index, "old {old} at new {index} of {q}");
                rebalance_seen.push(old);
            }
        }
        hash_seen.sort_unstable();
        assert_eq!(hash_seen, (0..u64::from(m)).collect::<Vec<_>>(), "q={q}");
        rebalance_seen.sort_unstable();
        assert_eq!(rebalance_seen, [0, 1, 2], "q={q}");
    }
    assert!(
        loaded
            .channel_state("count-and-sum", 2, 0, 1, KeyGroupRange::new(0, m))
            .unwrap()
            .is_none()
    );
    assert!(
        loaded
            .channel_state("nope", 0, 0, 1, KeyGroupRange::new(0, m))
            .unwrap()
            .is_none()
    );

    // A channel file damaged after the checkpoint: the load refuses it,
    // naming the file.
    let path = crate::layout::channel_state_path("job-1", 7, "count-and-sum", 1);
    let mut bytes = storage.get(&path).unwrap();
    bytes[12] ^= 1;
    storage.put(&path, bytes).unwrap();
    let err = crate::restore::load(&storage, "job-1/chk-7").err().unwrap();
    assert!(crate::restore::is_provably_damaged(&err), "{err}");
    assert_names(&err, &path, "checksum mismatch");
}
