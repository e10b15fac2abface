//! Channel messages as bytes, for channels whose two ends run in different
//! processes (`remote`).
//!
//! Records are encoded with `flowstate_state::codec`, the same documented
//! encoding as keys and values in snapshots, so a record type needs nothing
//! but serde's derives: the [`Wire`] bound, which the API asks of the record
//! type of every exchange edge (`key_by`, `rebalance`, `connect`). Local
//! channels never encode: a batch moves as a `Vec`. `docs/wire-format.md`
//! documents the bytes of a message ("message payload") byte for byte; the
//! golden-bytes tests below pin them.
//!
//! Owns: [`Wire`], [`WireCodec`] (the encode and decode functions of one
//! record type, captured where the type is known to be `Wire` so that the plan
//! can use them without knowing the type), and the payload of a channel
//! message ([`WireCodec::encode_message`], [`WireCodec::decode_message`]).
//! Must not touch: sockets, frame headers, credit (the transport's), or
//! which channels are remote (`plan`).
//!
//! Nothing decoded is trusted: an unknown kind, a record count beyond
//! [`BATCH_RECORDS_MAX`] or beyond what the bytes can hold, a damaged record
//! or trailing bytes are typed errors, never a panic or an allocation the
//! bytes do not pay for.

use flowstate_state::codec::{self, CodecError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::{Barrier, BarrierAlignment, BarrierKind, Message, Watermark, WatermarkStatus};

/// A record type that can cross a process boundary: serde's derives are
/// enough. Implemented for every such type.
pub trait Wire: Serialize + DeserializeOwned + crate::Data {}
impl<T: Serialize + DeserializeOwned + crate::Data> Wire for T {}

/// Most records one batch message may hold (a damaged or hostile count is
/// refused before anything is decoded). Batches are cut at the configured
/// batch size, far below this.
pub const BATCH_RECORDS_MAX: u32 = 1 << 24;

/// The first byte of a message payload: what the message is.
pub mod kind {
    pub const BATCH: u8 = 0;
    pub const BARRIER: u8 = 1;
    pub const WATERMARK: u8 = 2;
    pub const WATERMARK_STATUS: u8 = 3;
    pub const END_OF_INPUT: u8 = 4;
}

/// Why bytes are not a message, or a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("an empty message")]
    Empty,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("unknown barrier kind {0}")]
    UnknownBarrierKind(u8),
    #[error("unknown barrier alignment {0}")]
    UnknownAlignment(u8),
    #[error(
        "an announcement of an aligned barrier (only barriers that do not align are announced)"
    )]
    AlignedAnnouncement,
    #[error("unknown watermark status {0}")]
    UnknownWatermarkStatus(u8),
    #[error("a batch of {0} records (a batch holds 1 to {BATCH_RECORDS_MAX})")]
    BatchCount(u32),
    #[error("record {index} of a batch of {count}: {source}")]
    Record {
        index: u32,
        count: u32,
        source: CodecError,
    },
    #[error("the message ends {needed} bytes too early")]
    Truncated { needed: usize },
    #[error("{0} bytes after the message")]
    TrailingBytes(usize),
    #[error("a record cannot be encoded: {0}")]
    Encode(CodecError),
}

/// How records of one type become bytes and back: two functions captured
/// where the type is known to be [`Wire`], each over a whole batch (one
/// indirect call per batch, the per-record loop compiled for the type).
pub struct WireCodec<T> {
    encode: fn(&[T], &mut Vec<u8>) -> Result<(), CodecError>,
    decode: DecodeRecords<T>,
}

/// Decodes `count` records from the front of the bytes into the vector:
/// the bytes used, or the index of the record that did not decode and why.
type DecodeRecords<T> = fn(&[u8], u32, &mut Vec<T>) -> Result<usize, (u32, CodecError)>;

impl<T> Clone for WireCodec<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for WireCodec<T> {}

impl<T: Wire> WireCodec<T> {
    pub fn new() -> Self {
        Self {
            encode: |records, out| records.iter().try_for_each(|r| codec::encode_into(r, out)),
            decode: |bytes, count, records| {
                let mut used = 0;
                for index in 0..count {
                    let (record, n) =
                        codec::decode_prefix(&bytes[used..]).map_err(|e| (index, e))?;
                    used += n;
                    records.push(record);
                }
                Ok(used)
            },
        }
    }
}

impl<T: Wire> Default for WireCodec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> WireCodec<T> {
    /// Appends the encoding of every record of `records` (the records of a
    /// batch message, without its header).
    pub(crate) fn encode_records(&self, records: &[T], out: &mut Vec<u8>) -> Result<(), WireError> {
        (self.encode)(records, out).map_err(WireError::Encode)
    }

    /// Appends the payload of `message` to `out` (docs/wire-format.md).
    pub fn encode_message(&self, message: &Message<T>, out: &mut Vec<u8>) -> Result<(), WireError> {
        match message {
            Message::Batch(records) => {
                let count = u32::try_from(records.len())
                    .ok()
                    .filter(|&n| (1..=BATCH_RECORDS_MAX).contains(&n))
                    .ok_or(WireError::BatchCount(
                        u32::try_from(records.len()).unwrap_or(u32::MAX),
                    ))?;
                out.push(kind::BATCH);
                out.extend_from_slice(&count.to_le_bytes());
                (self.encode)(records, out).map_err(WireError::Encode)?;
            }
            Message::Barrier(barrier) => {
                out.push(kind::BARRIER);
                encode_barrier(barrier, out);
            }
            Message::Watermark(watermark) => {
                out.push(kind::WATERMARK);
                out.extend_from_slice(&watermark.0.to_le_bytes());
            }
            Message::WatermarkStatus(status) => {
                out.push(kind::WATERMARK_STATUS);
                out.push(match status {
                    WatermarkStatus::Idle => 0,
                    WatermarkStatus::Active => 1,
                });
            }
            Message::EndOfInput => out.push(kind::END_OF_INPUT),
        }
        Ok(())
    }

    /// The message `payload` holds; every byte of it must belong to the message.
    pub fn decode_message(&self, payload: &[u8]) -> Result<Message<T>, WireError> {
        let (&first, mut rest) = payload.split_first().ok_or(WireError::Empty)?;
        let message = match first {
            kind::BATCH => {
                let count = u32::from_le_bytes(take(&mut rest)?);
                if count == 0 || count > BATCH_RECORDS_MAX {
                    return Err(WireError::BatchCount(count));
                }
                // Never reserve more than the bytes could hold (one byte per
                // record at the least for any type that is not zero-sized).
                let mut records = Vec::with_capacity((count as usize).min(rest.len().max(1)));
                let used =
                    (self.decode)(rest, count, &mut records).map_err(|(index, source)| {
                        WireError::Record {
                            index,
                            count,
                            source,
                        }
                    })?;
                rest = &rest[used..];
                Message::Batch(records)
            }
            kind::BARRIER => Message::Barrier(decode_barrier(&mut rest)?),
            kind::WATERMARK => Message::Watermark(Watermark(i64::from_le_bytes(take(&mut rest)?))),
            kind::WATERMARK_STATUS => {
                let [s] = take::<1>(&mut rest)?;
                Message::WatermarkStatus(match s {
                    0 => WatermarkStatus::Idle,
                    1 => WatermarkStatus::Active,
                    other => return Err(WireError::UnknownWatermarkStatus(other)),
                })
            }
            kind::END_OF_INPUT => Message::EndOfInput,
            other => return Err(WireError::UnknownKind(other)),
        };
        if !rest.is_empty() {
            return Err(WireError::TrailingBytes(rest.len()));
        }
        Ok(message)
    }
}

/// The next `N` bytes of `rest`.
fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], WireError> {
    let Some((head, tail)) = rest.split_first_chunk::<N>() else {
        return Err(WireError::Truncated {
            needed: N - rest.len(),
        });
    };
    *rest = tail;
    Ok(*head)
}

/// Appends `barrier` as a barrier message carries it after its kind byte
/// (docs/wire-format.md §1): `u64` id, `u8` barrier kind, `u8` alignment,
/// and for aligned-until its `u64` deadline.
fn encode_barrier(barrier: &Barrier, out: &mut Vec<u8>) {
    out.extend_from_slice(&barrier.id.to_le_bytes());
    out.push(match barrier.kind {
        BarrierKind::Checkpoint => 0,
        BarrierKind::Savepoint => 1,
        BarrierKind::StopWithSavepoint => 2,
        BarrierKind::StopWithCheckpoint => 3,
    });
    match barrier.alignment {
        BarrierAlignment::Aligned => out.push(0),
        BarrierAlignment::Unaligned => out.push(1),
        BarrierAlignment::AlignedUntil { deadline_unix_ms } => {
            out.push(2);
            out.extend_from_slice(&deadline_unix_ms.to_le_bytes());
        }
    }
}

/// The barrier at the front of `rest` (as [`encode_barrier`] writes it).
fn decode_barrier(rest: &mut &[u8]) -> Result<Barrier, WireError> {
    let id = u64::from_le_bytes(take(rest)?);
    let [k] = take::<1>(rest)?;
    let kind = match k {
        0 => BarrierKind::Checkpoint,
        1 => BarrierKind::Savepoint,
        2 => BarrierKind::StopWithSavepoint,
        3 => BarrierKind::StopWithCheckpoint,
        other => return Err(WireError::UnknownBarrierKind(other)),
    };
    let [a] = take::<1>(rest)?;
    let alignment = match a {
        0 => BarrierAlignment::Aligned,
        1 => BarrierAlignment::Unaligned,
        2 => BarrierAlignment::AlignedUntil {
            deadline_unix_ms: u64::from_le_bytes(take(rest)?),
        },
        other => return Err(WireError::UnknownAlignment(other)),
    };
    Ok(Barrier {
        id,
        kind,
        alignment,
    })
}

/// Appends the payload of an announce frame (docs/wire-format.md §2.2):
/// the barrier as a barrier message encodes it, without the message's kind
/// byte. Only barriers that do not align are announced.
pub fn encode_announcement(barrier: &Barrier, out: &mut Vec<u8>) -> Result<(), WireError> {
    if barrier.alignment == BarrierAlignment::Aligned {
        return Err(WireError::AlignedAnnouncement);
    }
    encode_barrier(barrier, out);
    Ok(())
}

/// The barrier an announce frame's `payload` announces; every byte must
/// belong to it, and an aligned barrier is an error (nobody announces one).
pub fn decode_announcement(payload: &[u8]) -> Result<Barrier, WireError> {
    let mut rest = payload;
    let barrier = decode_barrier(&mut rest)?;
    if barrier.alignment == BarrierAlignment::Aligned {
        return Err(WireError::AlignedAnnouncement);
    }
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(barrier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Wire + PartialEq + std::fmt::Debug>(message: Message<T>) -> Vec<u8> {
        let codec = WireCodec::<T>::new();
        let mut bytes = Vec::new();
        codec.encode_message(&message, &mut bytes).unwrap();
        let back = codec.decode_message(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{message:?}"));
        bytes
    }

    /// The bytes docs/wire-format.md shows: changing them is a format change.
    #[test]
    fn message_payloads_have_the_documented_bytes() {
        let batch = roundtrip(Message::Batch(vec![
            ("a".to_owned(), 7u64),
            ("bc".to_owned(), 1),
        ]));
        assert_eq!(
            batch,
            [
                vec![0, 2, 0, 0, 0],
                vec![1, 0, 0, 0, 0, 0, 0, 0, b'a', 7, 0, 0, 0, 0, 0, 0, 0],
                vec![2, 0, 0, 0, 0, 0, 0, 0, b'b', b'c', 1, 0, 0, 0, 0, 0, 0, 0],
            ]
            .concat()
        );
        assert_eq!(
            roundtrip::<u8>(Message::Barrier(Barrier {
                id: 258,
                kind: BarrierKind::StopWithCheckpoint,
                alignment: BarrierAlignment::Aligned,
            })),
            [1, 2, 1, 0, 0, 0, 0, 0, 0, 3, 0]
        );
        assert_eq!(
            roundtrip::<u8>(Message::Barrier(Barrier::savepoint(1))),
            [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        assert_eq!(
            roundtrip::<u8>(Message::Barrier(
                Barrier::checkpoint(7).with_alignment(BarrierAlignment::Unaligned)
            )),
            [1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            roundtrip::<u8>(Message::Barrier(Barrier::checkpoint(7).with_alignment(
                BarrierAlignment::AlignedUntil {
                    deadline_unix_ms: 0x0102
                }
            ))),
            [1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            roundtrip::<u8>(Message::Watermark(Watermark(-2))),
            [2, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            roundtrip::<u8>(Message::WatermarkStatus(WatermarkStatus::Idle)),
            [3, 0]
        );
        assert_eq!(
            roundtrip::<u8>(Message::WatermarkStatus(WatermarkStatus::Active)),
            [3, 1]
        );
        assert_eq!(roundtrip::<u8>(Message::EndOfInput), [4]);
    }

    #[test]
    fn damaged_payloads_are_typed_errors() {
        let codec = WireCodec::<u32>::new();
        let decode = |bytes: &[u8]| codec.decode_message(bytes).map(|_| ()).unwrap_err();
        assert_eq!(decode(&[]), WireError::Empty);
        assert_eq!(decode(&[9]), WireError::UnknownKind(9));
        assert_eq!(decode(&[0, 0, 0, 0, 0]), WireError::BatchCount(0));
        assert_eq!(
            decode(&[0, 0xff, 0xff, 0xff, 0xff]),
            WireError::BatchCount(u32::MAX)
        );
        // A count the bytes cannot hold: an error at the first missing record,
        // not an allocation of the claimed size.
        assert!(matches!(
            decode(&[0, 0, 0, 0, 1, 1, 0, 0, 0]),
            WireError::Record {
                index: 1,
                count: BATCH_RECORDS_MAX,
                ..
            }
        ));
        assert_eq!(decode(&[0, 1, 0]), WireError::Truncated { needed: 2 });
        assert_eq!(
            decode(&[0, 1, 0, 0, 0, 1, 0, 0, 0, 9]),
            WireError::TrailingBytes(1)
        );
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0]),
            WireError::UnknownBarrierKind(4)
        );
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3]),
            WireError::UnknownAlignment(3)
        );
        // A barrier of protocol version 2 (no alignment byte).
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            WireError::Truncated { needed: 1 }
        );
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1]),
            WireError::Truncated { needed: 7 }
        );
        assert_eq!(decode(&[3, 2]), WireError::UnknownWatermarkStatus(2));
        assert_eq!(decode(&[4, 0]), WireError::TrailingBytes(1));
        assert_eq!(decode(&[2, 1]), WireError::Truncated { needed: 7 });
    }

    /// docs/wire-format.md §2.2 shows these bytes (the payload of an
    /// announce frame): changing them is a protocol change.
    #[test]
    fn announcements_have_the_documented_bytes() {
        let announce = |barrier: Barrier| {
            let mut out = Vec::new();
            encode_announcement(&barrier, &mut out).unwrap();
            assert_eq!(decode_announcement(&out), Ok(barrier));
            out
        };
        assert_eq!(
            announce(Barrier::checkpoint(7).with_alignment(BarrierAlignment::Unaligned)),
            [7, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            announce(
                Barrier::checkpoint(258).with_alignment(BarrierAlignment::AlignedUntil {
                    deadline_unix_ms: 0x0102
                })
            ),
            [2, 1, 0, 0, 0, 0, 0, 0, 0, 2, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        let mut out = Vec::new();
        assert_eq!(
            encode_announcement(&Barrier::checkpoint(7), &mut out),
            Err(WireError::AlignedAnnouncement)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn damaged_announcements_are_typed_errors() {
        assert_eq!(
            decode_announcement(&[]),
            Err(WireError::Truncated { needed: 8 })
        );
        assert_eq!(
            decode_announcement(&[7, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Truncated { needed: 1 })
        );
        assert_eq!(
            decode_announcement(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::AlignedAnnouncement)
        );
        assert_eq!(
            decode_announcement(&[7, 0, 0, 0, 0, 0, 0, 0, 4, 1]),
            Err(WireError::UnknownBarrierKind(4))
        );
        assert_eq!(
            decode_announcement(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 3]),
            Err(WireError::UnknownAlignment(3))
        );
        assert_eq!(
            decode_announcement(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1]),
            Err(WireError::Truncated { needed: 7 })
        );
        assert_eq!(
            decode_announcement(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(WireError::TrailingBytes(1))
        );
        // A barrier message's payload (with its kind byte) is not one.
        assert!(decode_announcement(&[1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn an_empty_batch_is_not_encoded() {
        let mut out = Vec::new();
        assert_eq!(
            WireCodec::<u8>::new().encode_message(&Message::Batch(Vec::new()), &mut out),
            Err(WireError::BatchCount(0))
        );
    }

    #[test]
    fn a_hostile_count_of_zero_sized_records_is_refused() {
        let codec = WireCodec::<()>::new();
        assert_eq!(
            codec
                .decode_message(&[0, 0, 0, 0, 2])
                .map(|_| ())
                .unwrap_err(),
            WireError::BatchCount(1 << 25)
        );
        // Within the limit, a batch of units decodes (they have no bytes).
        match codec.decode_message(&[0, 3, 0, 0, 0]) {
            Ok(Message::Batch(units)) => assert_eq!(units.len(), 3),
            other => panic!("{other:?}"),
        }
    }
}
