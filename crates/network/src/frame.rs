//! The bytes of the transport protocol (docs/wire-format.md §2): the
//! handshake a connection opens with and the frames that follow it.
//!
//! Owns: the handshake ([`Hello`], [`Reply`]), the frame header and the five
//! frame kinds ([`Frame`], [`FrameKind`]), how frames are written
//! ([`FrameWriter`]) and parsed ([`Frame::parse`], after
//! [`frame_codec`] cut them), and the limits on what is read. Must not touch:
//! the payload of a message or announce frame (`flowstate_runtime::wire`
//! owns them; they are carried here as opaque bytes), sockets, or credit
//! accounting (`link`).
//!
//! Nothing parsed is trusted: a short frame, an unknown kind, a credit frame
//! of the wrong size are typed errors, never a panic; a frame longer than the
//! limit is refused by the codec before anything is allocated for it.

use flowstate_runtime::remote::ChannelId;
use tokio_util::codec::LengthDelimitedCodec;

/// The first bytes a dialer sends, and an acceptor answers with.
pub const MAGIC: [u8; 4] = *b"FLWS";
/// The protocol version this crate speaks. 2: heartbeat frames (version 1
/// had none; a version-1 peer would take one for damaged bytes, so the
/// handshake refuses it instead). 3: a barrier message carries its
/// alignment (docs/wire-format.md §1), which a version-2 peer would read
/// as trailing bytes, and announce frames (kind 4), which it would take for
/// an unknown kind.
pub const VERSION: u16 = 3;
/// Bytes of a [`Hello`].
pub const HELLO_LEN: usize = 24;
/// Bytes of a [`Reply`].
pub const REPLY_LEN: usize = 12;
/// Bytes of a frame's length field.
pub const LENGTH_LEN: usize = 4;
/// Bytes of a frame header after its length: kind and channel id.
pub const HEADER_LEN: usize = 1 + 5 * 4;
/// The longest frame (the length field's value: header and payload) by
/// default: 64 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 << 20;

/// What a frame is (its first byte after the length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Producer to consumer: one message payload (`wire`), in the order the
    /// producer sent it.
    Message = 0,
    /// Consumer to producer: `u32` more messages the consumer's inbox has
    /// room for.
    Credit = 1,
    /// Producer to consumer: the producer is gone and everything it sent came
    /// before. Consumer to producer: the consumer is gone.
    Close = 2,
    /// Either way, no channel (its id is all zeros) and no payload: the
    /// sender is alive. Sent when a side has written nothing else for the
    /// heartbeat interval; a side that reads nothing at all for the
    /// heartbeat timeout declares the connection lost.
    Heartbeat = 3,
    /// Producer to consumer, outside credit and ahead of the channel's
    /// messages: a barrier that does not align is on its way in the channel
    /// (payload: the barrier, `flowstate_runtime::wire::encode_announcement`),
    /// so the consumer may snapshot before the messages queued in front of
    /// it arrive.
    Announce = 4,
}

/// The channel id of a heartbeat frame: all zeros.
pub const HEARTBEAT_CHANNEL: ChannelId = ChannelId {
    attempt: 0,
    node: 0,
    edge: 0,
    producer: 0,
    consumer: 0,
};

/// One parsed frame; a message's payload borrows from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Message {
        channel: ChannelId,
        payload: &'a [u8],
    },
    Credit {
        channel: ChannelId,
        count: u32,
    },
    Close {
        channel: ChannelId,
    },
    Heartbeat,
    Announce {
        channel: ChannelId,
        payload: &'a [u8],
    },
}

/// Why bytes are not a frame or a handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes (a frame holds at least {HEADER_LEN})")]
    Short(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("a credit frame with {0} payload bytes (it holds a u32)")]
    CreditLen(usize),
    #[error("a credit frame of 0 messages")]
    ZeroCredit,
    #[error("a close frame with {0} payload bytes (it holds none)")]
    CloseLen(usize),
    #[error("a heartbeat frame with {0} payload bytes (it holds none)")]
    HeartbeatLen(usize),
    #[error("a heartbeat frame for channel {0} (its channel id is all zeros)")]
    HeartbeatChannel(ChannelId),
    #[error("not a flowstate connection (magic {0:02x?})")]
    Magic([u8; 4]),
}

impl<'a> Frame<'a> {
    /// The channel the frame belongs to (none for a heartbeat).
    pub fn channel(&self) -> Option<ChannelId> {
        match *self {
            Frame::Message { channel, .. }
            | Frame::Credit { channel, .. }
            | Frame::Close { channel }
            | Frame::Announce { channel, .. } => Some(channel),
            Frame::Heartbeat => None,
        }
    }

    /// The frame in `bytes` (one frame as [`frame_codec`] cut it: without its
    /// length field).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Short(bytes.len()));
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        let word = |i: usize| {
            let at = 1 + 4 * i;
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let channel = ChannelId {
            attempt: word(0),
            node: word(1),
            edge: word(2),
            producer: word(3),
            consumer: word(4),
        };
        match header[0] {
            k if k == FrameKind::Message as u8 => Ok(Frame::Message { channel, payload }),
            k if k == FrameKind::Credit as u8 => {
                let count: [u8; 4] = payload
                    .try_into()
                    .map_err(|_| FrameError::CreditLen(payload.len()))?;
                match u32::from_le_bytes(count) {
                    0 => Err(FrameError::ZeroCredit),
                    count => Ok(Frame::Credit { channel, count }),
                }
            }
            k if k == FrameKind::Close as u8 => {
                if payload.is_empty() {
                    Ok(Frame::Close { channel })
                } else {
                    Err(FrameError::CloseLen(payload.len()))
                }
            }
            k if k == FrameKind::Heartbeat as u8 => {
                if !payload.is_empty() {
                    Err(FrameError::HeartbeatLen(payload.len()))
                } else if channel != HEARTBEAT_CHANNEL {
                    Err(FrameError::HeartbeatChannel(channel))
                } else {
                    Ok(Frame::Heartbeat)
                }
            }
            k if k == FrameKind::Announce as u8 => Ok(Frame::Announce { channel, payload }),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// The codec that cuts the byte stream after the handshake into frames: a
/// `u32` little-endian length, then that many bytes (at most
/// `max_frame_len`; a longer length is an error before any allocation).
pub fn frame_codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .little_endian()
        .max_frame_length(max_frame_len)
        .new_codec()
}

/// Appends frames to a write buffer in place (the same bytes
/// [`frame_codec`] reads), so that a message payload is encoded straight into
/// the buffer many frames share before one `write`.
#[derive(Debug, Default)]
pub struct FrameWriter {
    pub buf: Vec<u8>,
}

impl FrameWriter {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Starts a frame; returns where it starts, for [`FrameWriter::finish`]
    /// or [`FrameWriter::abandon`]. Its payload is appended to `self.buf`.
    pub fn begin(&mut self, kind: FrameKind, channel: ChannelId) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; LENGTH_LEN]);
        self.buf.push(kind as u8);
        for word in [
            channel.attempt,
            channel.node,
            channel.edge,
            channel.producer,
            channel.consumer,
        ] {
            self.buf.extend_from_slice(&word.to_le_bytes());
        }
        start
    }

    /// Ends the frame begun at `start`, writing its length; refuses (and
    /// removes it) a frame over `max_frame_len`, returning its length.
    pub fn finish(&mut self, start: usize, max_frame_len: usize) -> Result<(), usize> {
        let len = self.buf.len() - start - LENGTH_LEN;
        match u32::try_from(len) {
            Ok(len32) if len <= max_frame_len => {
                self.buf[start..start + LENGTH_LEN].copy_from_slice(&len32.to_le_bytes());
                Ok(())
            }
            _ => {
                self.abandon(start);
                Err(len)
            }
        }
    }

    /// Removes the frame begun at `start`.
    pub fn abandon(&mut self, start: usize) {
        self.buf.truncate(start);
    }

    /// Appends a whole credit frame.
    pub fn credit(&mut self, channel: ChannelId, count: u32) {
        let start = self.begin(FrameKind::Credit, channel);
        self.buf.extend_from_slice(&count.to_le_bytes());
        self.patch(start);
    }

    /// Appends a whole close frame.
    pub fn close(&mut self, channel: ChannelId) {
        let start = self.begin(FrameKind::Close, channel);
        self.patch(start);
    }

    /// Appends a whole heartbeat frame.
    pub fn heartbeat(&mut self) {
        let start = self.begin(FrameKind::Heartbeat, HEARTBEAT_CHANNEL);
        self.patch(start);
    }

    /// Writes the length of a small frame (credit, close, heartbeat) begun at `start`.
    fn patch(&mut self, start: usize) {
        let len = (self.buf.len() - start - LENGTH_LEN) as u32;
        self.buf[start..start + LENGTH_LEN].copy_from_slice(&len.to_le_bytes());
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// The dialer's first bytes: who it is and whom it means to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// The dialer's process (the producer side of every channel on the
    /// connection).
    pub from: u32,
    /// The process the dialer means to reach.
    pub to: u32,
    /// The cluster's token: both ends must have the same.
    pub token: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0; HELLO_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        // 6..8: reserved, zero.
        out[8..12].copy_from_slice(&self.from.to_le_bytes());
        out[12..16].copy_from_slice(&self.to.to_le_bytes());
        out[16..24].copy_from_slice(&self.token.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Self, FrameError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::Magic(magic));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut token = [0; 8];
        token.copy_from_slice(&bytes[16..24]);
        Ok(Self {
            version: u16::from_le_bytes([bytes[4], bytes[5]]),
            from: u32_at(8),
            to: u32_at(12),
            token: u64::from_le_bytes(token),
        })
    }
}

/// What an acceptor answers a [`Hello`] with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Accepted = 0,
    /// The acceptor does not speak the dialer's version (the reply carries
    /// the acceptor's).
    Version = 1,
    /// The acceptor is not the process the dialer meant to reach.
    WrongProcess = 2,
    /// The tokens differ: another cluster or job.
    WrongToken = 3,
}

/// The acceptor's answer: its version, the status, its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub version: u16,
    /// [`Status`] as a byte (an unknown status is a refusal too).
    pub status: u8,
    pub process: u32,
}

impl Reply {
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut out = [0; REPLY_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6] = self.status;
        // 7: reserved, zero.
        out[8..12].copy_from_slice(&self.process.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; REPLY_LEN]) -> Result<Self, FrameError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::Magic(magic));
        }
        Ok(Self {
            version: u16::from_le_bytes([bytes[4], bytes[5]]),
            status: bytes[6],
            process: u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    const ID: ChannelId = ChannelId {
        attempt: 1,
        node: 2,
        edge: 3,
        producer: 4,
        consumer: 0x0102_0304,
    };

    const ID_BYTES: [u8; 20] = [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 4, 3, 2, 1];

    /// docs/wire-format.md §2 shows these bytes: changing them is a protocol
    /// change.
    #[test]
    fn handshake_has_the_documented_bytes() {
        let hello = Hello {
            version: VERSION,
            from: 1,
            to: 2,
            token: 0x0807_0605_0403_0201,
        };
        let bytes = hello.encode();
        assert_eq!(
            bytes,
            [
                b'F', b'L', b'W', b'S', 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8
            ]
        );
        assert_eq!(Hello::decode(&bytes), Ok(hello));
        let reply = Reply {
            version: VERSION,
            status: Status::WrongToken as u8,
            process: 2,
        };
        let bytes = reply.encode();
        assert_eq!(bytes, [b'F', b'L', b'W', b'S', 3, 0, 3, 0, 2, 0, 0, 0]);
        assert_eq!(Reply::decode(&bytes), Ok(reply));
        let mut bad = hello.encode();
        bad[0] = b'G';
        assert_eq!(
            Hello::decode(&bad),
            Err(FrameError::Magic([b'G', b'L', b'W', b'S']))
        );
    }

    #[test]
    fn frames_have_the_documented_bytes() {
        let mut w = FrameWriter::default();
        let start = w.begin(FrameKind::Message, ID);
        w.buf.push(4); // end of input (wire.rs)
        w.finish(start, DEFAULT_MAX_FRAME_LEN).unwrap();
        w.credit(ID, 5);
        w.close(ID);
        w.heartbeat();
        // Checkpoint 7, unaligned (wire.rs `encode_announcement`).
        let start = w.begin(FrameKind::Announce, ID);
        w.buf.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        w.finish(start, DEFAULT_MAX_FRAME_LEN).unwrap();
        let expected = [
            vec![22, 0, 0, 0, 0],
            ID_BYTES.to_vec(),
            vec![4],
            vec![25, 0, 0, 0, 1],
            ID_BYTES.to_vec(),
            vec![5, 0, 0, 0],
            vec![21, 0, 0, 0, 2],
            ID_BYTES.to_vec(),
            vec![21, 0, 0, 0, 3],
            vec![0; 20],
            vec![31, 0, 0, 0, 4],
            ID_BYTES.to_vec(),
            vec![7, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ]
        .concat();
        assert_eq!(w.buf, expected);

        // The codec the reader uses cuts the same frames back.
        let mut codec = frame_codec(DEFAULT_MAX_FRAME_LEN);
        let mut src = BytesMut::from(&w.buf[..]);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut src).unwrap() {
            frames.push(frame);
        }
        assert!(src.is_empty());
        let parsed: Vec<_> = frames.iter().map(|f| Frame::parse(f).unwrap()).collect();
        assert_eq!(
            parsed,
            [
                Frame::Message {
                    channel: ID,
                    payload: &[4]
                },
                Frame::Credit {
                    channel: ID,
                    count: 5
                },
                Frame::Close { channel: ID },
                Frame::Heartbeat,
                Frame::Announce {
                    channel: ID,
                    payload: &[7, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                },
            ]
        );
    }

    #[test]
    fn damaged_frames_are_typed_errors() {
        assert_eq!(Frame::parse(&[0; 20]), Err(FrameError::Short(20)));
        let mut bytes = vec![9];
        bytes.extend_from_slice(&ID_BYTES);
        assert_eq!(Frame::parse(&bytes), Err(FrameError::UnknownKind(9)));
        bytes[0] = 5;
        assert_eq!(Frame::parse(&bytes), Err(FrameError::UnknownKind(5)));
        bytes[0] = FrameKind::Credit as u8;
        assert_eq!(Frame::parse(&bytes), Err(FrameError::CreditLen(0)));
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Frame::parse(&bytes), Err(FrameError::ZeroCredit));
        bytes[0] = FrameKind::Close as u8;
        assert_eq!(Frame::parse(&bytes), Err(FrameError::CloseLen(4)));
        bytes[0] = FrameKind::Heartbeat as u8;
        assert_eq!(Frame::parse(&bytes), Err(FrameError::HeartbeatLen(4)));
        bytes.truncate(HEADER_LEN);
        assert_eq!(Frame::parse(&bytes), Err(FrameError::HeartbeatChannel(ID)));
        let mut heartbeat = vec![FrameKind::Heartbeat as u8];
        heartbeat.extend_from_slice(&[0; 20]);
        assert_eq!(Frame::parse(&heartbeat), Ok(Frame::Heartbeat));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let mut codec = frame_codec(100);
        // Only the length field has arrived: 101 bytes announced.
        let mut src = BytesMut::from(&[101u8, 0, 0, 0][..]);
        assert!(codec.decode(&mut src).is_err());
        assert!(src.capacity() < 101 + LENGTH_LEN);
        let mut src = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(frame_codec(DEFAULT_MAX_FRAME_LEN).decode(&mut src).is_err());
    }

    #[test]
    fn the_writer_refuses_a_frame_over_the_limit_and_leaves_the_buffer_as_it_was() {
        let mut w = FrameWriter::default();
        w.close(ID);
        let before = w.buf.clone();
        let start = w.begin(FrameKind::Message, ID);
        w.buf.extend_from_slice(&[0; 100]);
        assert_eq!(w.finish(start, 110), Err(HEADER_LEN + 100));
        assert_eq!(w.buf, before);
    }
}
