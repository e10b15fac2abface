//! Snapshots of keyed state as bytes, by key group.
//!
//! The synchronous part of a snapshot is [`crate::KeyedStateBackend::snapshot`]:
//! it freezes every table (O(key groups) for the heap backend) and returns a
//! [`KeyedStateSnapshot`] that another thread serialises key group by key group
//! while processing goes on. Restore hands the same bytes back
//! ([`RestoredKeyedState`]); a state's bytes are decoded when the state is
//! declared, because only then are its Rust types known.
//!
//! Key-group section layout (all integers little-endian):
//! `u32 states`, then per state: `u16 name_len, name, u8 kind, u16 types_len,
//! types, u64 payload_len, payload`; a payload is `u64 entries` followed by the
//! entries, each the key then the value in the durable encoding
//! ([`crate::codec`]).
//!
//! Version 2 of the layout (keyed files `FSKS` version 2) records declared type
//! names ([`crate::StateType`]) in `types`; version 1 recorded
//! `std::any::type_name` strings. The bytes are otherwise the same. Sections
//! handed to [`crate::KeyedStateBackend::restore`] are version 2: a reader of
//! a version-1 file passes each section through [`section_from_v1`] first,
//! which turns its names into legacy names ([`crate::state_type::legacy`]).

use crate::descriptor::{StateKind, StateSignature};
use crate::error::StateError;
use crate::key_group::{KeyGroup, KeyGroupRange};

/// Largest single length decoded (see [`crate::codec`]).
pub use crate::codec::DECODE_BYTES_MAX;

/// A frozen table, serialisable one key group at a time from any thread.
pub trait TableSnapshot: Send + Sync {
    /// Appends the payload of `key_group` (entry count, then entries) to `out`;
    /// returns the entry count.
    fn write_key_group(&self, key_group: KeyGroup, out: &mut Vec<u8>) -> Result<u64, StateError>;

    /// Like [`Self::write_key_group`], for a writer that writes each key group
    /// once: the snapshot may then let go of what it holds of the group
    /// (the heap backend frees its encoded bytes or hands its map back), and
    /// writing the group again may fail. Called between [`Self::begin_write`]
    /// and [`Self::end_write`] ([`KeyedStateSnapshot::writer`]).
    fn take_key_group(&self, key_group: KeyGroup, out: &mut Vec<u8>) -> Result<u64, StateError> {
        self.write_key_group(key_group, out)
    }

    /// A writer begins to take key groups. While one is at work, the heap
    /// backend's table may wait for it to take groups before encoding more
    /// of them itself (a budget on the bytes held, see `heap/frozen.rs`); the
    /// writer must therefore never wait for the table's owner.
    fn begin_write(&self) {}

    /// The writer of [`Self::begin_write`] is done (or gave up).
    fn end_write(&self) {}
}

/// A consistent view of all keyed state of one operator instance.
pub struct KeyedStateSnapshot {
    pub range: KeyGroupRange,
    /// The key type's declared name ([`crate::state_type_name`]), recorded in
    /// the checkpoint metadata so that offline tools can decode the keys.
    /// Sections record only the value types.
    pub key_type: String,
    pub states: Vec<(StateSignature, Box<dyn TableSnapshot>)>,
}

fn kind_code(kind: StateKind) -> u8 {
    match kind {
        StateKind::Value => 0,
        StateKind::List => 1,
        StateKind::Map => 2,
        StateKind::Reducing => 3,
        StateKind::Aggregating => 4,
    }
}

fn kind_of(code: u8) -> Option<StateKind> {
    Some(match code {
        0 => StateKind::Value,
        1 => StateKind::List,
        2 => StateKind::Map,
        3 => StateKind::Reducing,
        4 => StateKind::Aggregating,
        _ => return None,
    })
}

impl KeyedStateSnapshot {
    /// Appends the section of `key_group` (every state's entries) to `out`;
    /// returns the entries over all states.
    pub fn write_key_group(
        &self,
        key_group: KeyGroup,
        out: &mut Vec<u8>,
    ) -> Result<u64, StateError> {
        self.write_section_with(out, &mut |table, out| table.write_key_group(key_group, out))
    }

    /// The writer that writes each key group once, releasing what the
    /// snapshot holds of it as it goes: how checkpoint storage writes a
    /// snapshot (the snapshot's memory shrinks as the file grows).
    pub fn writer(&self) -> SnapshotWriter<'_> {
        for (_, table) in &self.states {
            table.begin_write();
        }
        SnapshotWriter { snapshot: self }
    }

    /// A section's states, each payload written by `payload`.
    fn write_section_with(
        &self,
        out: &mut Vec<u8>,
        payload: &mut PayloadFn<'_>,
    ) -> Result<u64, StateError> {
        let mut entries = 0;
        out.extend_from_slice(&(self.states.len() as u32).to_le_bytes());
        for (signature, table) in &self.states {
            write_state_header(out, &signature.name, signature.kind, &signature.types);
            let length_at = out.len();
            out.extend_from_slice(&0u64.to_le_bytes());
            entries += payload(table.as_ref(), out)?;
            let payload_len = (out.len() - length_at - 8) as u64;
            out[length_at..length_at + 8].copy_from_slice(&payload_len.to_le_bytes());
        }
        Ok(entries)
    }
}

/// Writes one table's payload of a key group (see `write_section_with`).
type PayloadFn<'a> = dyn FnMut(&dyn TableSnapshot, &mut Vec<u8>) -> Result<u64, StateError> + 'a;

/// The writer of a [`KeyedStateSnapshot`] that writes each key group once
/// ([`KeyedStateSnapshot::writer`]): between its creation and its drop the
/// heap backend's tables may wait for it (see [`TableSnapshot::begin_write`]),
/// so the thread holding it must not write to the snapshotted state.
pub struct SnapshotWriter<'a> {
    snapshot: &'a KeyedStateSnapshot,
}

impl SnapshotWriter<'_> {
    /// Appends the section of `key_group` to `out` (the bytes of
    /// [`KeyedStateSnapshot::write_key_group`]) and lets the snapshot release
    /// what it holds of the group; returns the entries over all states.
    pub fn take_key_group(
        &self,
        key_group: KeyGroup,
        out: &mut Vec<u8>,
    ) -> Result<u64, StateError> {
        self.snapshot
            .write_section_with(out, &mut |table, out| table.take_key_group(key_group, out))
    }
}

impl Drop for SnapshotWriter<'_> {
    fn drop(&mut self) {
        for (_, table) in &self.snapshot.states {
            table.end_write();
        }
    }
}

/// The version of the key-group section layout this build writes: 2, with
/// declared type names.
pub const SECTION_VERSION: u32 = 2;

/// Appends a state's `name_len, name, kind, types_len, types` (`types` cut at
/// 65,535 bytes).
fn write_state_header(out: &mut Vec<u8>, name: &str, kind: StateKind, types: &str) {
    let name = name.as_bytes();
    let types = types.as_bytes();
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.push(kind_code(kind));
    let types_len = types.len().min(u16::MAX as usize);
    out.extend_from_slice(&(types_len as u16).to_le_bytes());
    out.extend_from_slice(&types[..types_len]);
}

/// The reader of version-1 sections: rewrites a section of a version-1 keyed
/// file (type names as `std::any::type_name` strings) as a version-2 section
/// whose type names are the corresponding legacy names
/// ([`crate::state_type::legacy`]); names and payloads are unchanged. A
/// legacy name matches only a declaration with that `std::any::type_name`,
/// which is what version 1 checked.
pub fn section_from_v1(key_group: KeyGroup, bytes: &[u8]) -> Result<Vec<u8>, StateError> {
    let states = read_section(key_group, bytes)?;
    let mut out = Vec::with_capacity(bytes.len() + states.len() * 8);
    out.extend_from_slice(&(states.len() as u32).to_le_bytes());
    for state in &states {
        let types = crate::state_type::legacy(&state.types);
        write_state_header(&mut out, state.name, state.kind, &types);
        out.extend_from_slice(&(state.payload.len() as u64).to_le_bytes());
        out.extend_from_slice(state.payload);
    }
    Ok(out)
}

/// Writes a key-group section holding `states` (the layout of
/// [`KeyedStateSnapshot::write_key_group`]): how a backend keeps restored
/// sections of some states only.
pub fn write_section(states: &[SectionState<'_>], out: &mut Vec<u8>) {
    out.extend_from_slice(&(states.len() as u32).to_le_bytes());
    for state in states {
        write_state_header(out, state.name, state.kind, &state.types);
        out.extend_from_slice(&(state.payload.len() as u64).to_le_bytes());
        out.extend_from_slice(state.payload);
    }
}

/// One state's payload in one key group, as read back.
#[derive(Debug, Clone)]
pub struct RestoredSection {
    pub key_group: KeyGroup,
    pub kind: StateKind,
    pub types: String,
    pub payload: Vec<u8>,
}

/// Key-group sections read one at a time, in bounded memory (a keyed state
/// file in checkpoint storage): what a restore of state larger than memory
/// reads from. Implemented by the checkpoint crate; state knows nothing of
/// storage.
pub trait SectionSource: Send + Sync + std::fmt::Debug {
    /// What is read (a file's path), for messages.
    fn describe(&self) -> String;
    /// Calls `f` with each key group's section (the version-2 layout, as
    /// [`KeyedStateSnapshot::write_key_group`] writes it), in key-group order,
    /// each verified before it is handed over; stops at the first error.
    /// Holds one section at a time.
    fn for_each_section(&self, f: &mut SectionFn<'_>) -> Result<(), StateError>;
}

/// What [`SectionSource::for_each_section`] calls: `(key group, section)`.
pub type SectionFn<'a> = dyn FnMut(KeyGroup, &[u8]) -> Result<(), StateError> + 'a;

/// Keyed state to restore: key-group sections written by
/// [`KeyedStateSnapshot::write_key_group`], for key groups of the new owner
/// (in memory, `groups`, or read one at a time from `streams`), and native
/// snapshots of earlier instances whose ranges overlap it.
#[derive(Debug, Default, Clone)]
pub struct RestoredKeyedState {
    pub groups: Vec<(KeyGroup, Vec<u8>)>,
    pub native: Vec<crate::native::NativeRestore>,
    /// Sources of sections, each read when the backend restores (the
    /// sections of key groups of the new owner only).
    pub streams: Vec<std::sync::Arc<dyn SectionSource>>,
}

impl RestoredKeyedState {
    /// Sections held in memory only.
    pub fn from_groups(groups: Vec<(KeyGroup, Vec<u8>)>) -> Self {
        Self {
            groups,
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.native.is_empty() && self.streams.is_empty()
    }

    /// Calls `f` with every section: those in memory, then those of each
    /// stream, one at a time.
    pub fn for_each_section(&self, f: &mut SectionFn<'_>) -> Result<(), StateError> {
        for (key_group, bytes) in &self.groups {
            f(*key_group, bytes)?;
        }
        for stream in &self.streams {
            stream.for_each_section(f)?;
        }
        Ok(())
    }

    /// Every section, in memory (tests and tools; a restore streams them).
    pub fn collect_groups(&self) -> Result<Vec<(KeyGroup, Vec<u8>)>, StateError> {
        let mut groups = Vec::new();
        self.for_each_section(&mut |key_group, bytes| {
            groups.push((key_group, bytes.to_vec()));
            Ok(())
        })?;
        Ok(groups)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                StateError::CorruptSnapshot(format!(
                    "section ends at byte {} but {} more were expected",
                    self.bytes.len(),
                    n
                ))
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, StateError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }
}

/// Upper bound on states in one section (matches the declaration limit).
const MAX_SECTION_STATES: u32 = crate::backend::MAX_STATES_PER_OPERATOR as u32;

/// One state's part of a key-group section, borrowed from the section's bytes
/// (what offline tools read without copying the payload).
#[derive(Debug, Clone)]
pub struct SectionState<'a> {
    pub name: &'a str,
    pub kind: StateKind,
    /// The recorded type names (see [`StateSignature::types`]): declared names
    /// in a version-2 section, `std::any::type_name` strings in a version-1
    /// one; lossy if the writer cut a name longer than 65,535 bytes inside a
    /// character.
    pub types: std::borrow::Cow<'a, str>,
    /// `u64 entries`, then the entries.
    pub payload: &'a [u8],
}

impl SectionState<'_> {
    /// The entry count at the start of the payload (`None` if it is shorter
    /// than 8 bytes).
    pub fn entries(&self) -> Option<u64> {
        self.payload
            .first_chunk::<8>()
            .map(|b| u64::from_le_bytes(*b))
    }
}

/// Splits a key-group section (as written by
/// [`KeyedStateSnapshot::write_key_group`]) into its states, borrowing the
/// bytes. Refuses a section whose structure is off (truncated, trailing bytes,
/// unknown kind), naming the key group.
pub fn read_section(
    key_group: KeyGroup,
    bytes: &[u8],
) -> Result<Vec<SectionState<'_>>, StateError> {
    let mut cursor = Cursor { bytes, at: 0 };
    let states = cursor.u32()?;
    if states > MAX_SECTION_STATES {
        return Err(StateError::CorruptSnapshot(format!(
            "key group {key_group} claims {states} states"
        )));
    }
    let mut out = Vec::with_capacity(states as usize);
    for _ in 0..states {
        let name_len = cursor.u16()? as usize;
        let name = std::str::from_utf8(cursor.take(name_len)?).map_err(|_| {
            StateError::CorruptSnapshot(format!("key group {key_group}: state name is not UTF-8"))
        })?;
        let kind_byte = cursor.take(1)?[0];
        let kind = kind_of(kind_byte).ok_or_else(|| {
            StateError::CorruptSnapshot(format!(
                "key group {key_group}: unknown state kind {kind_byte}"
            ))
        })?;
        let types_len = cursor.u16()? as usize;
        let types = String::from_utf8_lossy(cursor.take(types_len)?);
        let payload_len = cursor.u64()?;
        let payload_len = usize::try_from(payload_len).map_err(|_| {
            StateError::CorruptSnapshot(format!("key group {key_group}: payload too large"))
        })?;
        let payload = cursor.take(payload_len)?;
        out.push(SectionState {
            name,
            kind,
            types,
            payload,
        });
    }
    if cursor.at != bytes.len() {
        return Err(StateError::CorruptSnapshot(format!(
            "key group {key_group}: {} trailing bytes",
            bytes.len() - cursor.at
        )));
    }
    Ok(out)
}

/// Splits a key-group section into its states: `(name, section)`.
pub(crate) fn parse_section(
    key_group: KeyGroup,
    bytes: &[u8],
) -> Result<Vec<(String, RestoredSection)>, StateError> {
    Ok(read_section(key_group, bytes)?
        .into_iter()
        .map(|state| {
            (
                state.name.to_owned(),
                RestoredSection {
                    key_group,
                    kind: state.kind,
                    types: state.types.into_owned(),
                    payload: state.payload.to_vec(),
                },
            )
        })
        .collect())
}

/// Encodes the entries of one key group: `u64 count`, then `(key, value)` pairs.
pub(crate) fn encode_entries<'e, K, S>(
    state: &str,
    entries: impl ExactSizeIterator<Item = (&'e K, &'e S)>,
    out: &mut Vec<u8>,
) -> Result<(), StateError>
where
    K: serde::Serialize + 'e,
    S: serde::Serialize + 'e,
{
    let codec_error = |e: crate::codec::CodecError| StateError::Codec {
        state: state.to_owned(),
        action: "encode",
        reason: e.to_string(),
    };
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, value) in entries {
        crate::codec::encode_into(key, out).map_err(codec_error)?;
        crate::codec::encode_into(value, out).map_err(codec_error)?;
    }
    Ok(())
}

/// Decodes a payload written by [`encode_entries`], calling `f` per entry.
pub(crate) fn decode_entries<K, S>(
    state: &str,
    payload: &[u8],
    mut f: impl FnMut(K, S),
) -> Result<(), StateError>
where
    K: serde::de::DeserializeOwned,
    S: serde::de::DeserializeOwned,
{
    let corrupt = |reason: String| StateError::Codec {
        state: state.to_owned(),
        action: "decode",
        reason,
    };
    if payload.len() < 8 {
        return Err(corrupt("payload shorter than its entry count".into()));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&payload[..8]);
    let count = u64::from_le_bytes(count);
    let mut at = 8;
    for _ in 0..count {
        let (key, used): (K, usize) =
            crate::codec::decode_prefix(&payload[at..]).map_err(|e| corrupt(e.to_string()))?;
        at += used;
        let (value, used): (S, usize) =
            crate::codec::decode_prefix(&payload[at..]).map_err(|e| corrupt(e.to_string()))?;
        at += used;
        f(key, value);
    }
    if at != payload.len() {
        return Err(corrupt(format!(
            "{} bytes after the last entry",
            payload.len() - at
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BackendSnapshot, KeyScope, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor,
        SnapshotRequest, ValueStateDescriptor, heap_backend, key_group_of,
    };

    fn canonical(backend: &mut dyn KeyedStateBackend<u64>) -> KeyedStateSnapshot {
        let request = SnapshotRequest {
            checkpoint_id: 1,
            canonical: true,
        };
        match backend.snapshot(request).unwrap() {
            BackendSnapshot::KeyGroups(snapshot) => snapshot,
            BackendSnapshot::Native(_) => panic!("the heap backend snapshots canonically"),
        }
    }

    fn write_all(snapshot: &KeyedStateSnapshot) -> Vec<(KeyGroup, Vec<u8>)> {
        snapshot
            .range
            .iter()
            .map(|g| {
                let mut bytes = Vec::new();
                snapshot.write_key_group(g, &mut bytes).unwrap();
                (g, bytes)
            })
            .collect()
    }

    #[test]
    fn snapshot_restores_every_state_into_new_ranges() {
        let m = 16;
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, m), m);
        let value = backend
            .value_state(&ValueStateDescriptor::<(u64, String)>::new("v"))
            .unwrap();
        let list = backend
            .list_state(&ListStateDescriptor::<u32>::new("l"))
            .unwrap();
        let map = backend
            .map_state(&MapStateDescriptor::<String, i64>::new("m"))
            .unwrap();
        for key in 0..500u64 {
            let g = key_group_of(&key, m);
            let mut scope = KeyScope::new(backend.as_mut(), &key, g);
            scope
                .value(&value)
                .set((key * 3, format!("k{key}")))
                .unwrap();
            scope.list(&list).add(key as u32).unwrap();
            scope.list(&list).add(7).unwrap();
            scope
                .map(&map)
                .put(format!("x{key}"), -(key as i64))
                .unwrap();
        }
        let snapshot = canonical(backend.as_mut());
        // Writes after the snapshot must not show up in it.
        let key = 1u64;
        KeyScope::new(backend.as_mut(), &key, key_group_of(&key, m))
            .value(&value)
            .set((0, "changed".into()))
            .unwrap();
        let sections = write_all(&snapshot);

        // Restore into two instances owning halves of the key groups.
        for (start, end) in [(0, 8), (8, 16)] {
            let range = KeyGroupRange::new(start, end);
            let mut restored: Box<dyn KeyedStateBackend<u64>> = heap_backend(range, m);
            let groups = sections
                .iter()
                .filter(|(g, _)| range.contains(*g))
                .cloned()
                .collect();
            restored
                .restore(RestoredKeyedState {
                    groups,
                    native: Vec::new(),
                    streams: Vec::new(),
                })
                .unwrap();
            assert_eq!(restored.unclaimed_restored_states(), ["l", "m", "v"]);
            let value = restored
                .value_state(&ValueStateDescriptor::<(u64, String)>::new("v"))
                .unwrap();
            let list = restored
                .list_state(&ListStateDescriptor::<u32>::new("l"))
                .unwrap();
            let map = restored
                .map_state(&MapStateDescriptor::<String, i64>::new("m"))
                .unwrap();
            assert!(restored.unclaimed_restored_states().is_empty());
            for key in (0..500u64).filter(|k| range.contains(key_group_of(k, m))) {
                let mut scope = KeyScope::new(restored.as_mut(), &key, key_group_of(&key, m));
                assert_eq!(
                    scope.value(&value).get().unwrap(),
                    Some(&(key * 3, format!("k{key}")))
                );
                assert_eq!(scope.list(&list).get().unwrap(), &[key as u32, 7]);
                assert_eq!(
                    scope.map(&map).get(&format!("x{key}")).unwrap(),
                    Some(&-(key as i64))
                );
            }
        }
    }

    /// Two user types with one encoding (a `u64`) but different declared names.
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Clicks(u64);
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Views(u64);
    crate::state_type!(Clicks => "test.Clicks", Views => "test.Views");

    #[test]
    fn a_state_restores_only_under_its_declared_name() {
        let m = 4;
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, m), m);
        let clicks = backend
            .value_state(&ValueStateDescriptor::<Clicks>::new("per-user"))
            .unwrap();
        let list = backend
            .list_state(&ListStateDescriptor::<Clicks>::new("history"))
            .unwrap();
        for key in 0..10u64 {
            let mut scope = KeyScope::new(backend.as_mut(), &key, key_group_of(&key, m));
            scope.value(&clicks).set(Clicks(key)).unwrap();
            scope.list(&list).add(Clicks(key)).unwrap();
        }
        let snapshot = canonical(backend.as_mut());
        assert_eq!(snapshot.key_type, "u64");
        let sections = write_all(&snapshot);
        let states = read_section(0, &sections[0].1).unwrap();
        let recorded: Vec<(&str, &str)> =
            states.iter().map(|s| (s.name, s.types.as_ref())).collect();
        assert_eq!(
            recorded,
            [("per-user", "test.Clicks"), ("history", "test.Clicks")]
        );

        let restored = || {
            let mut other: Box<dyn KeyedStateBackend<u64>> =
                heap_backend(KeyGroupRange::new(0, m), m);
            other
                .restore(RestoredKeyedState {
                    groups: sections.clone(),
                    native: Vec::new(),
                    streams: Vec::new(),
                })
                .unwrap();
            other
        };
        // Same bytes, another declared name: refused, naming both.
        let mut other = restored();
        let err = other
            .value_state(&ValueStateDescriptor::<Views>::new("per-user"))
            .unwrap_err();
        match &err {
            StateError::RestoredTypeMismatch {
                state,
                kind,
                recorded,
                requested,
            } => {
                assert_eq!(
                    (state.as_str(), *kind, recorded.as_str(), requested.as_str()),
                    ("per-user", StateKind::Value, "test.Clicks", "test.Views")
                );
            }
            other => panic!("expected RestoredTypeMismatch, got {other}"),
        }
        assert_eq!(
            err.to_string(),
            "state 'per-user': the snapshot holds value state of type 'test.Clicks'; it cannot be restored as type 'test.Views'"
        );
        let err = other
            .list_state(&ListStateDescriptor::<Views>::new("history"))
            .unwrap_err();
        assert!(
            matches!(&err, StateError::RestoredTypeMismatch { state, .. } if state == "history"),
            "{err}"
        );
        // The declared name restores, under any Rust path of the type.
        let value = other
            .value_state(&ValueStateDescriptor::<Clicks>::new("per-user"))
            .unwrap();
        let key = 3u64;
        let mut scope = KeyScope::new(other.as_mut(), &key, key_group_of(&key, m));
        assert_eq!(scope.value(&value).get().unwrap().map(|c| c.0), Some(3));
    }

    #[test]
    fn one_declared_name_for_two_rust_types_is_refused() {
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        struct Imposter(u64);
        crate::state_type!(Imposter => "test.Clicks");
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, 1), 1);
        backend
            .value_state(&ValueStateDescriptor::<Clicks>::new("v"))
            .unwrap();
        let err = backend
            .value_state(&ValueStateDescriptor::<Imposter>::new("v"))
            .unwrap_err();
        assert!(
            matches!(&err, StateError::IncompatibleDeclaration { name, .. } if name == "v"),
            "{err}"
        );
        assert!(err.to_string().contains("Imposter"), "{err}");
    }

    #[test]
    fn v1_sections_read_as_legacy_names() {
        // A version-1 section: `(u64, u64)` in `std::any::type_name` spelling.
        let mut v1 = Vec::new();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&9u16.to_le_bytes());
        v1.extend_from_slice(b"count-sum");
        v1.push(0);
        v1.extend_from_slice(&10u16.to_le_bytes());
        v1.extend_from_slice(b"(u64, u64)");
        v1.extend_from_slice(&8u64.to_le_bytes());
        v1.extend_from_slice(&0u64.to_le_bytes());
        let v2 = section_from_v1(5, &v1).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&9u16.to_le_bytes());
        expected.extend_from_slice(b"count-sum");
        expected.push(0);
        expected.extend_from_slice(&16u16.to_le_bytes());
        expected.extend_from_slice(b"~rust:(u64, u64)");
        expected.extend_from_slice(&8u64.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(v2, expected);
        // It matches the declaration whose Rust type name it is, and no other.
        let signature = StateSignature::new::<(u64, u64)>("count-sum", StateKind::Value);
        assert!(signature.matches_recorded("~rust:(u64, u64)"));
        assert!(!signature.matches_recorded("(u64, u64)"));
        assert!(signature.matches_recorded("tuple<u64,u64>"));
        let other = StateSignature::new::<(u64, i64)>("count-sum", StateKind::Value);
        assert!(!other.matches_recorded("~rust:(u64, u64)"));
        // A signature read from a snapshot knows no Rust type: nothing legacy matches.
        let read = StateSignature {
            rust_types: "",
            ..signature
        };
        assert!(!read.matches_recorded("~rust:"));
    }

    #[test]
    fn restore_refuses_a_changed_type_and_damaged_bytes() {
        let m = 4;
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, m), m);
        let value = backend
            .value_state(&ValueStateDescriptor::<u64>::new("v"))
            .unwrap();
        for key in 0..20u64 {
            KeyScope::new(backend.as_mut(), &key, key_group_of(&key, m))
                .value(&value)
                .set(key)
                .unwrap();
        }
        let sections = write_all(&canonical(backend.as_mut()));

        let mut other: Box<dyn KeyedStateBackend<u64>> = heap_backend(KeyGroupRange::new(0, m), m);
        other
            .restore(RestoredKeyedState {
                groups: sections.clone(),
                native: Vec::new(),
                streams: Vec::new(),
            })
            .unwrap();
        let err = other
            .value_state(&ValueStateDescriptor::<String>::new("v"))
            .err()
            .unwrap();
        assert!(
            matches!(
                &err,
                StateError::RestoredTypeMismatch { state, kind: StateKind::Value, recorded, requested }
                    if state == "v" && recorded == "u64" && requested == "string"
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "state 'v': the snapshot holds value state of type 'u64'; it cannot be restored as type 'string'"
        );

        let mut truncated = sections.clone();
        let last = truncated[1].1.len() - 3;
        truncated[1].1.truncate(last);
        let mut other: Box<dyn KeyedStateBackend<u64>> = heap_backend(KeyGroupRange::new(0, m), m);
        assert!(
            other
                .restore(RestoredKeyedState {
                    groups: truncated,
                    native: Vec::new(),
                    streams: Vec::new(),
                })
                .is_err()
        );
    }
}
