//! The in-flight records of unaligned checkpoints, on the task's side:
//! [`ChannelRecorder`] encodes what one input gate takes out of its channels
//! between its task's snapshot and the in-band barriers (the channel state
//! of the checkpoint, docs/savepoint-format.md §10), and
//! [`recovered_batches`] decodes what a restored instance replays before any
//! live input.
//!
//! Records are encoded as they are recorded, on the task thread, with the
//! edge's record codec: the byte count is exact (the in-flight limit is in
//! bytes), and the upload thread only seals bytes. Records of a hash edge
//! are sectioned by key group, so that a restore at another parallelism
//! deals them to the instance owning their key group; a rebalance edge has
//! one section.
//!
//! Owns: the sectioning and framing of recorded records and the decoding of
//! restored ones. Must not touch: channels, barriers or the decision of what
//! to record (the gate and the [`crate::alignment`] tracker decide).

use std::collections::BTreeMap;

use flowstate_checkpoint::channel_file::{InputContents, SectionContents, frame_batch};
use flowstate_checkpoint::restore::RestoredChannelInput;
use flowstate_checkpoint::{CheckpointError, EdgePartitioning};
use flowstate_state::KeyGroup;

use crate::message::Message;
use crate::partitioning::KeyGroupFn;
use crate::wire::{WireCodec, WireError, kind};

/// Which input edge of the task's head a gate reads, as channel state names
/// it (and a restore checks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEdge {
    /// The edge's index among the head node's inputs.
    pub edge: u32,
    /// The producing node's uid.
    pub from_uid: String,
    pub partitioning: EdgePartitioning,
    /// `std::any::type_name` of the edge's records.
    pub record_type: String,
}

/// The records of one section, framed batch by batch.
#[derive(Default)]
struct SectionBuffer {
    /// Closed batches: `u32 payload_len | payload`, one after another.
    framed: Vec<u8>,
    /// The batch being filled: `u8 0 | u32 count | records`.
    open: Vec<u8>,
    count: u32,
}

impl SectionBuffer {
    /// Closes the open batch into `framed`.
    fn close(&mut self) -> Result<(), CheckpointError> {
        if self.count == 0 {
            return Ok(());
        }
        self.open[1..5].copy_from_slice(&self.count.to_le_bytes());
        frame_batch(&self.open, &mut self.framed)?;
        self.open.clear();
        self.count = 0;
        Ok(())
    }
}

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("encoding an in-flight record: {0}")]
    Encode(#[from] WireError),
    #[error("framing in-flight records: {0}")]
    Frame(#[from] CheckpointError),
}

/// What one gate records for the checkpoint in flight.
pub struct ChannelRecorder<T> {
    edge: RecordedEdge,
    codec: WireCodec<T>,
    /// Hash edges: the key group of each record.
    key_groups: Option<KeyGroupFn<T>>,
    scratch: Vec<KeyGroup>,
    /// Records per framed batch at most.
    batch_records_max: u32,
    sections: BTreeMap<Option<KeyGroup>, SectionBuffer>,
    /// Bytes encoded so far (records and batch headers).
    bytes: u64,
}

impl<T> ChannelRecorder<T> {
    pub fn new(
        edge: RecordedEdge,
        codec: WireCodec<T>,
        key_groups: Option<KeyGroupFn<T>>,
        batch_records_max: usize,
    ) -> Self {
        let batch_records_max = u32::try_from(batch_records_max)
            .unwrap_or(u32::MAX)
            .clamp(1, crate::wire::BATCH_RECORDS_MAX);
        Self {
            edge,
            codec,
            key_groups,
            scratch: Vec::new(),
            batch_records_max,
            sections: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Bytes recorded for the checkpoint in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records `records` (taken out of a recorded channel, in that order).
    pub fn record(&mut self, records: &[T]) -> Result<(), RecordError> {
        if records.is_empty() {
            return Ok(());
        }
        match &self.key_groups {
            None => self.append(None, records),
            Some(key_groups) => {
                let mut groups = std::mem::take(&mut self.scratch);
                groups.clear();
                key_groups.key_groups(records, &mut groups);
                let mut result = Ok(());
                for (record, &group) in records.iter().zip(&groups) {
                    result = self.append(Some(group), std::slice::from_ref(record));
                    if result.is_err() {
                        break;
                    }
                }
                self.scratch = groups;
                result
            }
        }
    }

    fn append(&mut self, key_group: Option<KeyGroup>, records: &[T]) -> Result<(), RecordError> {
        let section = self.sections.entry(key_group).or_default();
        for record in records {
            if section.count == 0 {
                section.open.push(kind::BATCH);
                section.open.extend_from_slice(&[0; 4]);
                self.bytes += 9; // frame length and batch header
            }
            let before = section.open.len();
            self.codec
                .encode_records(std::slice::from_ref(record), &mut section.open)?;
            self.bytes += (section.open.len() - before) as u64;
            section.count += 1;
            if section.count >= self.batch_records_max {
                section.close()?;
            }
        }
        Ok(())
    }

    /// Drops what was recorded (an abandoned checkpoint).
    pub fn clear(&mut self) {
        self.sections.clear();
        self.bytes = 0;
    }

    /// What was recorded, as one input of a channel state file (`None`:
    /// nothing), and starts afresh.
    pub fn take(&mut self) -> Result<Option<InputContents>, RecordError> {
        let sections = std::mem::take(&mut self.sections);
        self.bytes = 0;
        if sections.is_empty() {
            return Ok(None);
        }
        let mut contents = Vec::with_capacity(sections.len());
        for (key_group, mut section) in sections {
            section.close()?;
            contents.push(SectionContents {
                key_group,
                framed: section.framed,
            });
        }
        Ok(Some(InputContents {
            edge: self.edge.edge,
            from_uid: self.edge.from_uid.clone(),
            partitioning: self.edge.partitioning,
            record_type: self.edge.record_type.clone(),
            sections: contents,
        }))
    }
}

/// Why restored channel state cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("channel state of edge {edge} comes from '{found}', the job's edge from '{expected}'")]
    Producer {
        edge: u32,
        found: String,
        expected: String,
    },
    #[error(
        "channel state of edge {edge} is {found:?}-partitioned, the job's edge is {expected:?}"
    )]
    Partitioning {
        edge: u32,
        found: EdgePartitioning,
        expected: EdgePartitioning,
    },
    #[error(
        "channel state of edge {edge} holds records of type {found}, the job's edge {expected}"
    )]
    RecordType {
        edge: u32,
        found: String,
        expected: String,
    },
    #[error("{path}: {section}: {source}")]
    Decode {
        path: String,
        section: String,
        source: WireError,
    },
    #[error(transparent)]
    Section(#[from] CheckpointError),
}

/// The records of `restored`, batch by batch in recorded order, decoded
/// with the job's codec for `edge` after checking that the checkpoint's
/// edge is the job's (producer, partitioning, record type).
pub fn recovered_batches<T>(
    restored: &RestoredChannelInput,
    edge: &RecordedEdge,
    codec: WireCodec<T>,
) -> Result<Vec<Vec<T>>, RecoverError> {
    if restored.from_uid != edge.from_uid {
        return Err(RecoverError::Producer {
            edge: edge.edge,
            found: restored.from_uid.clone(),
            expected: edge.from_uid.clone(),
        });
    }
    if restored.partitioning != edge.partitioning {
        return Err(RecoverError::Partitioning {
            edge: edge.edge,
            found: restored.partitioning,
            expected: edge.partitioning,
        });
    }
    if restored.record_type != edge.record_type {
        return Err(RecoverError::RecordType {
            edge: edge.edge,
            found: restored.record_type.clone(),
            expected: edge.record_type.clone(),
        });
    }
    let mut batches = Vec::new();
    for section in &restored.sections {
        let bytes = &section.section;
        for payload in bytes.payloads()? {
            let name = || match bytes.key_group {
                Some(g) => format!("edge {} key group {g}", edge.edge),
                None => format!("edge {}", edge.edge),
            };
            match codec.decode_message(payload) {
                Ok(Message::Batch(records)) => batches.push(records),
                Ok(_) => {
                    return Err(RecoverError::Decode {
                        path: bytes.path.clone(),
                        section: name(),
                        source: WireError::UnknownKind(payload.first().copied().unwrap_or(0xff)),
                    });
                }
                Err(source) => {
                    return Err(RecoverError::Decode {
                        path: bytes.path.clone(),
                        section: name(),
                        source,
                    });
                }
            }
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_checkpoint::channel_file::ChannelSectionBytes;
    use flowstate_checkpoint::restore::RestoredChannelSection;

    fn edge(partitioning: EdgePartitioning) -> RecordedEdge {
        RecordedEdge {
            edge: 0,
            from_uid: "source".into(),
            partitioning,
            record_type: std::any::type_name::<(u64, u64)>().into(),
        }
    }

    fn restored(input: &InputContents) -> RestoredChannelInput {
        RestoredChannelInput {
            edge: input.edge,
            from_uid: input.from_uid.clone(),
            partitioning: input.partitioning,
            record_type: input.record_type.clone(),
            sections: input
                .sections
                .iter()
                .map(|s| RestoredChannelSection {
                    old_subtask: 0,
                    section: ChannelSectionBytes {
                        path: "job/chk-1/op-0.channels".into(),
                        key_group: s.key_group,
                        bytes: s.framed.clone(),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn hash_records_are_sectioned_by_key_group_and_come_back_in_order_per_group() {
        let key_groups = KeyGroupFn::new(|r: &(u64, u64)| (r.0 % 4) as KeyGroup);
        let mut recorder = ChannelRecorder::new(
            edge(EdgePartitioning::Hash),
            WireCodec::new(),
            Some(key_groups),
            2,
        );
        let records: Vec<(u64, u64)> = (0..11).map(|i| (i % 3, i)).collect();
        recorder.record(&records[..5]).unwrap();
        recorder.record(&records[5..]).unwrap();
        assert!(recorder.bytes() > 11 * 16);
        let input = recorder.take().unwrap().expect("recorded");
        assert_eq!(recorder.bytes(), 0);
        let groups: Vec<_> = input.sections.iter().map(|s| s.key_group).collect();
        assert_eq!(groups, vec![Some(0), Some(1), Some(2)]);
        let batches = recovered_batches::<(u64, u64)>(
            &restored(&input),
            &edge(EdgePartitioning::Hash),
            WireCodec::new(),
        )
        .unwrap();
        assert!(
            batches.iter().all(|b| b.len() <= 2),
            "cut at the batch size"
        );
        let back: Vec<(u64, u64)> = batches.into_iter().flatten().collect();
        for key in 0..3 {
            let want: Vec<_> = records.iter().filter(|r| r.0 == key).collect();
            let got: Vec<_> = back.iter().filter(|r| r.0 == key).collect();
            assert_eq!(got, want, "key {key} in order");
        }
    }

    #[test]
    fn a_rebalance_edge_has_one_section_and_nothing_recorded_is_none() {
        let mut recorder = ChannelRecorder::<(u64, u64)>::new(
            edge(EdgePartitioning::Rebalance),
            WireCodec::new(),
            None,
            1024,
        );
        assert!(recorder.take().unwrap().is_none());
        recorder.record(&[(1, 2), (3, 4)]).unwrap();
        recorder.clear();
        assert!(recorder.take().unwrap().is_none(), "cleared");
        recorder.record(&[(1, 2), (3, 4)]).unwrap();
        let input = recorder.take().unwrap().unwrap();
        assert_eq!(input.sections.len(), 1);
        assert_eq!(input.sections[0].key_group, None);
        let batches = recovered_batches::<(u64, u64)>(
            &restored(&input),
            &edge(EdgePartitioning::Rebalance),
            WireCodec::new(),
        )
        .unwrap();
        assert_eq!(batches, vec![vec![(1, 2), (3, 4)]]);
    }

    #[test]
    fn another_producer_partitioning_or_record_type_is_refused() {
        let mut recorder = ChannelRecorder::<(u64, u64)>::new(
            edge(EdgePartitioning::Rebalance),
            WireCodec::new(),
            None,
            1024,
        );
        recorder.record(&[(1, 2)]).unwrap();
        let input = restored(&recorder.take().unwrap().unwrap());
        let mut other = edge(EdgePartitioning::Rebalance);
        other.from_uid = "elsewhere".into();
        let e = recovered_batches::<(u64, u64)>(&input, &other, WireCodec::new()).unwrap_err();
        assert!(e.to_string().contains("elsewhere"), "{e}");
        let e = recovered_batches::<(u64, u64)>(
            &input,
            &edge(EdgePartitioning::Hash),
            WireCodec::new(),
        )
        .unwrap_err();
        assert!(matches!(e, RecoverError::Partitioning { .. }), "{e}");
        let mut other = edge(EdgePartitioning::Rebalance);
        other.record_type = "u8".into();
        let e = recovered_batches::<(u64, u64)>(&input, &other, WireCodec::new()).unwrap_err();
        assert!(matches!(e, RecoverError::RecordType { .. }), "{e}");
        // Bytes that are not records of the type: named, never a panic.
        let e = recovered_batches::<String>(
            &input,
            &edge(EdgePartitioning::Rebalance),
            WireCodec::new(),
        );
        assert!(e.is_err());
    }
}
