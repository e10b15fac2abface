//! Channel state files: the in-flight records of an unaligned checkpoint, one
//! sealed file (`FSCS`) per task instance, sectioned by input edge and key
//! group and indexed by the [`ChannelStateHandle`] in the metadata, so that a
//! restore at another parallelism reads only the sections it takes. The bytes
//! are those of docs/savepoint-format.md, section 10.
//!
//! Owns: writing a file from what a task recorded
//! ([`write_channel_state_file`]), verifying one before anything of it is used
//! ([`verify_channel_file`], in bounded memory: a chunk at a time), and
//! reading its sections back checked against that verification
//! ([`VerifiedChannelFile::read_section`]). Records stay encoded: decoding
//! them needs the record type, which is the runtime's.
//! Must not touch: record types, channels or tasks.

use flowstate_state::KeyGroup;

use crate::CheckpointError;
use crate::format::{CHANNEL_STATE_MAGIC, check_streamed_seal, read_verify_chunk};
use crate::keyed_file::check_stored_size;
use crate::metadata::{
    ChannelInputState, ChannelSection, ChannelStateHandle, EdgePartitioning, FileRef,
};
use crate::storage::{CheckpointStorage, StorageError};

/// Version of the channel state file format this build writes and the newest
/// it reads.
pub const CHANNEL_FILE_VERSION: u32 = 1;
/// Largest channel state file a reader accepts (1 GiB of sections, the
/// header and the trailer), checked with the storage's size before reading.
pub const CHANNEL_STATE_BYTES_MAX: u64 = (1 << 30) + 12;
/// Most records one framed batch may hold (the wire format's
/// `BATCH_RECORDS_MAX`, docs/wire-format.md §1).
pub const BATCH_RECORDS_MAX: u32 = 1 << 24;
/// The payload kind of a batch message (docs/wire-format.md §1); the only
/// kind channel state holds.
pub const BATCH_KIND: u8 = 0;

const HEADER_BYTES: u64 = 8;
const TRAILER_BYTES: u64 = 4;
/// `u32 payload_len` in front of every batch.
const FRAME_BYTES: u64 = 4;
/// `u8 kind | u32 n` at the start of every payload.
const PAYLOAD_HEADER_BYTES: u64 = 5;
/// Bytes read at a time while verifying a file.
const VERIFY_CHUNK_BYTES: u64 = 4 << 20;

/// What a task instance recorded, to be written as a channel state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStateContents {
    /// The instance's key-group range `[start, end)`.
    pub key_group_start: KeyGroup,
    pub key_group_end: KeyGroup,
    /// In index order: edge ascending.
    pub inputs: Vec<InputContents>,
}

/// The recorded sections of one input edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputContents {
    pub edge: u32,
    pub from_uid: String,
    pub partitioning: EdgePartitioning,
    pub record_type: String,
    /// Hash: one per key group with records, key group ascending; rebalance:
    /// exactly one, without a key group.
    pub sections: Vec<SectionContents>,
}

/// One section: framed batches ([`frame_batch`]) one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionContents {
    pub key_group: Option<KeyGroup>,
    pub framed: Vec<u8>,
}

/// Appends `payload` (a wire batch message: `u8 0 | u32 n | n records`) to
/// `out` as a framed batch: `u32 payload_len | payload`.
pub fn frame_batch(payload: &[u8], out: &mut Vec<u8>) -> Result<(), CheckpointError> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        CheckpointError::Invalid(format!(
            "a batch payload of {} bytes does not fit a channel state frame",
            payload.len()
        ))
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Where `section` of an input lies, for messages: `edge 0 key group 5` or
/// `edge 1`.
fn section_name(edge: u32, key_group: Option<KeyGroup>) -> String {
    match key_group {
        Some(g) => format!("edge {edge} key group {g}"),
        None => format!("edge {edge}"),
    }
}

/// Checks framed batches fed a piece at a time (a section may arrive in
/// several chunks): each frame's `payload_len` lies inside the section and
/// holds at least the payload header, each payload is a batch (kind 0) of
/// 1 ..= [`BATCH_RECORDS_MAX`] records. Counts batches and records (from the
/// headers; records are not decoded). Never allocates what the bytes claim.
struct FrameParser {
    /// Byte offset of the section in the file (for messages).
    start: u64,
    /// Bytes of the section.
    length: u64,
    /// Bytes of the section consumed so far.
    at: u64,
    /// The frame and payload header being assembled.
    header: [u8; 9],
    filled: usize,
    /// Bytes of the current payload after its header still to skip.
    skip: u64,
    batches: u64,
    records: u64,
    error: Option<String>,
}

impl FrameParser {
    fn new(start: u64, length: u64) -> Self {
        Self {
            start,
            length,
            at: 0,
            header: [0; 9],
            filled: 0,
            skip: 0,
            batches: 0,
            records: 0,
            error: None,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                self.at += n;
                bytes = bytes.get(n as usize..).unwrap_or_default();
                continue;
            }
            // The frame length first (checked alone), then the payload header.
            let target = if self.filled < FRAME_BYTES as usize {
                FRAME_BYTES as usize
            } else {
                self.header.len()
            };
            let n = (target - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == FRAME_BYTES as usize {
                // The frame's length is known: it must fit what is left.
                let frame_at = self.start + self.at;
                let len = u64::from(u32::from_le_bytes([
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                ]));
                let left = self.length - self.at - FRAME_BYTES;
                if len < PAYLOAD_HEADER_BYTES || len > left {
                    self.error = Some(format!(
                        "batch {} at byte {frame_at}: payload_len {len} (between \
                         {PAYLOAD_HEADER_BYTES} and the {left} bytes left in the section)",
                        self.batches
                    ));
                }
            }
            if self.filled == self.header.len() {
                let frame_at = self.start + self.at;
                let len = u64::from(u32::from_le_bytes([
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                ]));
                let kind = self.header[4];
                let count = u32::from_le_bytes([
                    self.header[5],
                    self.header[6],
                    self.header[7],
                    self.header[8],
                ]);
                if kind != BATCH_KIND {
                    self.error = Some(format!(
                        "batch {} at byte {frame_at}: payload kind {kind}, only batches \
                         (kind {BATCH_KIND}) are channel state",
                        self.batches
                    ));
                } else if count == 0 || count > BATCH_RECORDS_MAX {
                    self.error = Some(format!(
                        "batch {} at byte {frame_at}: {count} records (a batch holds 1 to \
                         {BATCH_RECORDS_MAX})",
                        self.batches
                    ));
                }
                self.batches += 1;
                self.records += u64::from(count);
                self.at += FRAME_BYTES + PAYLOAD_HEADER_BYTES;
                self.skip = len - PAYLOAD_HEADER_BYTES;
                self.filled = 0;
            }
        }
    }

    /// The batches and records of the whole section.
    fn finish(self) -> Result<(u64, u64), String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.filled != 0 || self.skip != 0 || self.at != self.length {
            return Err(format!(
                "the section ends at byte {} inside a framed batch",
                self.start + self.length
            ));
        }
        if self.batches == 0 {
            return Err("the section holds no batch".into());
        }
        Ok((self.batches, self.records))
    }
}

/// Checks the index against the recorded size: inputs with unique edges in
/// ascending order, each with at least one section; hash sections with a key
/// group inside `[key_group_start, key_group_end)`, strictly ascending;
/// rebalance inputs with exactly one section and no key group; sections
/// back to back in index order from byte 8 to 4 bytes before the end, each
/// with at least one batch and as many records, long enough for its
/// batches. Nothing in the index is used as a size before this. Errors name
/// the field.
pub(crate) fn check_index(handle: &ChannelStateHandle) -> Result<(), String> {
    let size = handle.file.size;
    if size > CHANNEL_STATE_BYTES_MAX {
        return Err(format!(
            "file.size: {size} bytes, more than the limit of {CHANNEL_STATE_BYTES_MAX}"
        ));
    }
    if size < HEADER_BYTES + TRAILER_BYTES {
        return Err(format!("file.size: {size} bytes is too small"));
    }
    let (start, end) = (handle.key_group_start, handle.key_group_end);
    if start > end {
        return Err(format!(
            "key_group_start {start} is after key_group_end {end}"
        ));
    }
    if handle.inputs.is_empty() {
        return Err("inputs: none (a file is written only for recorded records)".into());
    }
    let body_end = size - TRAILER_BYTES;
    let mut at = HEADER_BYTES;
    let mut previous_edge = None;
    for (i, input) in handle.inputs.iter().enumerate() {
        let edge = input.edge;
        let field = |what: String| format!("inputs[{i}] (edge {edge}): {what}");
        if previous_edge.is_some_and(|p| p >= edge) {
            return Err(field(
                "edges are not unique and ascending in the index".into(),
            ));
        }
        previous_edge = Some(edge);
        if input.sections.is_empty() {
            return Err(field("sections: none".into()));
        }
        match input.partitioning {
            EdgePartitioning::Rebalance => {
                if input.sections.len() != 1 || input.sections[0].key_group.is_some() {
                    return Err(field(
                        "sections: a rebalance edge has exactly one section, without key_group"
                            .into(),
                    ));
                }
            }
            EdgePartitioning::Hash => {
                let mut previous = None;
                for section in &input.sections {
                    let Some(g) = section.key_group else {
                        return Err(field("sections: a hash section without key_group".into()));
                    };
                    if g < start || g >= end {
                        return Err(field(format!(
                            "sections: key_group {g} lies outside the range {start}..{end}"
                        )));
                    }
                    if previous.is_some_and(|p| p >= g) {
                        return Err(field(format!(
                            "sections: key_group {g} is not after the key group before it"
                        )));
                    }
                    previous = Some(g);
                }
            }
        }
    }
    for input in &handle.inputs {
        for section in &input.sections {
            let name = section_name(input.edge, section.key_group);
            if section.offset != at {
                return Err(format!(
                    "section {name}: offset {} where the sections before end at {at} \
                     (overlapping or gapped)",
                    section.offset
                ));
            }
            if section.batches == 0 || section.records < section.batches {
                return Err(format!(
                    "section {name}: {} batches and {} records (at least one batch, at least \
                     one record per batch)",
                    section.batches, section.records
                ));
            }
            let smallest = section
                .batches
                .checked_mul(FRAME_BYTES + PAYLOAD_HEADER_BYTES);
            if smallest.is_none_or(|n| section.length < n) {
                return Err(format!(
                    "section {name}: length {} cannot hold {} batches",
                    section.length, section.batches
                ));
            }
            at = at
                .checked_add(section.length)
                .filter(|&e| e <= body_end)
                .ok_or_else(|| {
                    format!(
                        "section {name}: offset {} length {} lies outside the file's {} bytes \
                         of sections",
                        section.offset,
                        section.length,
                        body_end - HEADER_BYTES
                    )
                })?;
        }
    }
    if at != body_end {
        return Err(format!(
            "the sections end at byte {at}, the file's trailer starts at {body_end}"
        ));
    }
    Ok(())
}

/// Writes what a task recorded as the channel state file `path`, through
/// the storage's streaming put, computing the CRC-32C as the bytes go out
/// (like [`crate::keyed_file::write_keyed_file`]). Every section is checked
/// first with the reader's parser (pair assertion): nothing is written that
/// a reader would refuse. Returns the handle for the metadata.
pub fn write_channel_state_file(
    storage: &dyn CheckpointStorage,
    path: &str,
    contents: &ChannelStateContents,
) -> Result<ChannelStateHandle, CheckpointError> {
    let invalid =
        |reason: String| CheckpointError::Invalid(format!("channel state '{path}': {reason}"));
    let mut inputs = Vec::with_capacity(contents.inputs.len());
    let mut offset = HEADER_BYTES;
    for input in &contents.inputs {
        let mut sections = Vec::with_capacity(input.sections.len());
        for section in &input.sections {
            let length = section.framed.len() as u64;
            let mut parser = FrameParser::new(offset, length);
            parser.feed(&section.framed);
            let (batches, records) = parser.finish().map_err(|e| {
                invalid(format!(
                    "section {}: {e}",
                    section_name(input.edge, section.key_group)
                ))
            })?;
            sections.push(ChannelSection {
                key_group: section.key_group,
                offset,
                length,
                batches,
                records,
            });
            offset += length;
        }
        inputs.push(ChannelInputState {
            edge: input.edge,
            from_uid: input.from_uid.clone(),
            partitioning: input.partitioning,
            record_type: input.record_type.clone(),
            sections,
        });
    }
    let mut handle = ChannelStateHandle {
        file: FileRef {
            path: path.to_owned(),
            size: offset + TRAILER_BYTES,
            crc32c: 0,
        },
        key_group_start: contents.key_group_start,
        key_group_end: contents.key_group_end,
        inputs,
    };
    check_index(&handle).map_err(invalid)?;
    let mut writer = storage.put_streaming(path)?;
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    header.extend_from_slice(&CHANNEL_STATE_MAGIC);
    header.extend_from_slice(&CHANNEL_FILE_VERSION.to_le_bytes());
    let mut crc = crc32c::crc32c(&header);
    writer.write(&header)?;
    for section in contents.inputs.iter().flat_map(|i| &i.sections) {
        crc = crc32c::crc32c_append(crc, &section.framed);
        writer.write(&section.framed)?;
    }
    writer.write(&crc.to_le_bytes())?;
    writer.finish()?;
    handle.file.crc32c = crc;
    Ok(handle)
}

/// A channel state file read once and found whole: size, seal, version,
/// checksum, index and every framed batch hold. Remembers each section's
/// CRC-32C so that reading a section again
/// ([`VerifiedChannelFile::read_section`]) checks it before anyone uses it.
#[derive(Debug, Clone)]
pub struct VerifiedChannelFile {
    pub handle: ChannelStateHandle,
    /// CRC-32C of each section, inputs in index order, then their sections.
    section_crcs: Vec<Vec<u32>>,
}

/// Reads the channel state file `handle` names once, in chunks (bounded
/// memory), and verifies it: the size in storage (as recorded, at most
/// [`CHANNEL_STATE_BYTES_MAX`]), magic, checksum, version, the recorded
/// checksum, the index ([`check_index`]) and, in every section, the framed
/// batches (payload lengths tiling the section, kind 0, 1 ..= 2^24 records,
/// the recorded `batches` and `records`). Errors name the file and the field.
pub fn verify_channel_file(
    storage: &dyn CheckpointStorage,
    handle: &ChannelStateHandle,
) -> Result<VerifiedChannelFile, CheckpointError> {
    let file = &handle.file;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: file.path.clone(),
        reason,
    };
    if file.size > CHANNEL_STATE_BYTES_MAX {
        return Err(corrupt(format!(
            "file.size: {} bytes, more than the limit of {CHANNEL_STATE_BYTES_MAX} for channel \
             state",
            file.size
        )));
    }
    check_stored_size(storage, file)?;
    let size = file.size;
    if size < HEADER_BYTES + TRAILER_BYTES {
        return Err(corrupt(format!(
            "only {size} bytes, shorter than any valid file (truncated?)"
        )));
    }
    let index = check_index(handle);
    // Section boundaries and their parsers, when the index holds.
    let mut bounds: Vec<(usize, usize, u64, u64)> = Vec::new();
    if index.is_ok() {
        for (i, input) in handle.inputs.iter().enumerate() {
            for (j, section) in input.sections.iter().enumerate() {
                bounds.push((i, j, section.offset, section.offset + section.length));
            }
        }
    }
    let mut parsers: Vec<FrameParser> = bounds
        .iter()
        .map(|&(_, _, start, end)| FrameParser::new(start, end - start))
        .collect();
    let mut crcs = vec![0u32; bounds.len()];
    let body_end = size - TRAILER_BYTES;
    let mut whole = 0u32;
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    let mut trailer = Vec::with_capacity(TRAILER_BYTES as usize);
    let mut section = 0usize;
    let mut at = 0u64;
    while at < size {
        let len = VERIFY_CHUNK_BYTES.min(size - at);
        let chunk = read_verify_chunk(storage, &file.path, at, len, size, corrupt)?;
        if chunk.len() as u64 != len {
            return Err(corrupt(format!(
                "a read of {len} bytes at {at} returned {} (changed while read?)",
                chunk.len()
            )));
        }
        let chunk_end = at + len;
        let body = &chunk[..(body_end.min(chunk_end).saturating_sub(at)) as usize];
        whole = crc32c::crc32c_append(whole, body);
        if at < HEADER_BYTES {
            let n = (HEADER_BYTES - at).min(len) as usize;
            header.extend_from_slice(&chunk[..n]);
        }
        if chunk_end > body_end {
            let from = body_end.saturating_sub(at) as usize;
            trailer.extend_from_slice(&chunk[from..]);
        }
        // The sections tile [8, body_end) (the index holds, or there are none).
        let mut pos = at.max(HEADER_BYTES);
        while section < bounds.len() && pos < chunk_end.min(body_end) {
            let (_, _, _, end) = bounds[section];
            let piece_end = end.min(chunk_end);
            let slice = &chunk[(pos - at) as usize..(piece_end - at) as usize];
            crcs[section] = crc32c::crc32c_append(crcs[section], slice);
            parsers[section].feed(slice);
            pos = piece_end;
            if piece_end == end {
                section += 1;
            }
        }
        at = chunk_end;
    }
    check_streamed_seal(
        CHANNEL_STATE_MAGIC,
        CHANNEL_FILE_VERSION,
        file,
        &header,
        &trailer,
        whole,
    )?;
    index.map_err(corrupt)?;
    let mut section_crcs: Vec<Vec<u32>> = handle
        .inputs
        .iter()
        .map(|i| Vec::with_capacity(i.sections.len()))
        .collect();
    for ((&(i, j, _, _), parser), crc) in bounds.iter().zip(parsers).zip(crcs) {
        let input = &handle.inputs[i];
        let recorded = &input.sections[j];
        let name = section_name(input.edge, recorded.key_group);
        let (batches, records) = parser
            .finish()
            .map_err(|e| corrupt(format!("section {name}: {e}")))?;
        if (batches, records) != (recorded.batches, recorded.records) {
            return Err(corrupt(format!(
                "section {name}: {batches} batches and {records} records, the index records \
                 {} and {}",
                recorded.batches, recorded.records
            )));
        }
        section_crcs[i].push(crc);
    }
    Ok(VerifiedChannelFile {
        handle: handle.clone(),
        section_crcs,
    })
}

impl VerifiedChannelFile {
    /// The framed batches of section `section` of input `input` (indices in
    /// the handle), read from storage and checked against the checksum the
    /// verification saw.
    pub fn read_section(
        &self,
        storage: &dyn CheckpointStorage,
        input: usize,
        section: usize,
    ) -> Result<ChannelSectionBytes, CheckpointError> {
        let path = &self.handle.file.path;
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (Some(state), Some(&expected)) = (
            self.handle.inputs.get(input),
            self.section_crcs.get(input).and_then(|c| c.get(section)),
        ) else {
            return Err(corrupt(format!("no section {section} of input {input}")));
        };
        let Some(entry) = state.sections.get(section) else {
            return Err(corrupt(format!("no section {section} of input {input}")));
        };
        let name = section_name(state.edge, entry.key_group);
        let bytes = storage
            .get_range(path, entry.offset, entry.length)
            .map_err(|e| match e {
                StorageError::NotFound { .. } => corrupt("missing".into()),
                other => CheckpointError::Storage(other),
            })?;
        let crc = crc32c::crc32c(&bytes);
        if crc != expected || bytes.len() as u64 != entry.length {
            return Err(corrupt(format!(
                "section {name}: checksum {crc:08x}, {expected:08x} when the file was verified \
                 (changed since?)"
            )));
        }
        Ok(ChannelSectionBytes {
            path: path.clone(),
            key_group: entry.key_group,
            bytes,
        })
    }
}

/// One verified section's framed batches, still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSectionBytes {
    /// The file it was read from (for messages).
    pub path: String,
    pub key_group: Option<KeyGroup>,
    /// `u32 payload_len | payload` one after another.
    pub bytes: Vec<u8>,
}

impl ChannelSectionBytes {
    /// The payload of every framed batch, in order: each a wire batch
    /// message (`u8 0 | u32 n | n records`, docs/wire-format.md §1) for the
    /// edge's record codec.
    pub fn payloads(&self) -> Result<Vec<&[u8]>, CheckpointError> {
        let mut out = Vec::new();
        let mut rest = self.bytes.as_slice();
        while !rest.is_empty() {
            let len = rest
                .get(..FRAME_BYTES as usize)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let payload = len.and_then(|len| rest.get(4..4 + len));
            let Some(payload) = payload else {
                return Err(CheckpointError::Corrupt {
                    path: self.path.clone(),
                    reason: format!(
                        "section {}: a framed batch runs past the section",
                        self.key_group.map_or_else(
                            || "of a rebalance edge".into(),
                            |g| format!("of key group {g}")
                        )
                    ),
                });
            };
            out.push(payload);
            rest = &rest[4 + payload.len()..];
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
