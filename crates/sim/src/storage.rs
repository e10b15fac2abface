//! Checkpoint storage for the simulation: an ordered in-memory map that
//! survives a simulated process crash (it stands for the durable store), with
//! faults injected on the fault plan's orders.
//!
//! Owns: the simulated durable bytes. Must not touch: the scheduler (it only
//! asks the [`FaultPlan`] whether an operation fails).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flowstate_checkpoint::CheckpointMetadata;
use flowstate_checkpoint::storage::{CheckpointStorage, StorageError};

use crate::faults::{FaultPlan, StorageFault};

/// The simulated durable store.
pub struct SimStorage {
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    faults: Arc<FaultPlan>,
    /// The broken variant `drop-channel-state`: every checkpoint's metadata
    /// is stored without its channel state (see [`SimStorage::dropping_channel_state`]).
    drop_channel_state: bool,
}

const DESCRIPTION: &str = "sim://checkpoints";

impl SimStorage {
    pub fn new(faults: Arc<FaultPlan>) -> Self {
        Self {
            files: Mutex::new(BTreeMap::new()),
            faults,
            drop_channel_state: false,
        }
    }

    /// A store that loses the channel state of unaligned checkpoints: each
    /// `_metadata` is stored as if no instance had recorded in-flight
    /// records (version 2, no `channels`), so a restore replays none of
    /// them. The `.channels` files stay (orphans); what the simulation must
    /// notice is the records lost.
    pub fn dropping_channel_state(faults: Arc<FaultPlan>) -> Self {
        Self {
            drop_channel_state: true,
            ..Self::new(faults)
        }
    }

    /// `bytes` of `path` as the store keeps them.
    fn kept(&self, path: &str, bytes: Vec<u8>) -> Vec<u8> {
        if !self.drop_channel_state || !path.ends_with("/_metadata") {
            return bytes;
        }
        let Ok(mut metadata) = CheckpointMetadata::decode(path, &bytes) else {
            return bytes;
        };
        if !metadata.has_channel_state() {
            return bytes;
        }
        for subtask in metadata.operators.iter_mut().flat_map(|o| &mut o.subtasks) {
            subtask.channels = None;
        }
        metadata.encode().unwrap_or(bytes)
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn io(operation: &'static str, path: &str, reason: &str) -> StorageError {
        StorageError::Io {
            storage: DESCRIPTION.into(),
            operation,
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Every path and the size of every state file, in order: part of the
    /// trace. A `_metadata`'s size is left out: it records measured
    /// durations (pauses, alignment), real time that decides nothing.
    pub fn digest(&self) -> u64 {
        let mut hash = crate::trace::Fnv::default();
        for (path, bytes) in self.files().iter() {
            hash.write(path.as_bytes());
            if !path.ends_with("/_metadata") {
                hash.write(&(bytes.len() as u64).to_le_bytes());
            }
        }
        hash.finish()
    }

    /// Writes `bytes` at `path` unless a fault intervenes. A torn write
    /// stores a prefix and reports success: storage that lies, which the
    /// checksums of the durable format must catch on every read.
    fn write(
        &self,
        operation: &'static str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        let bytes = self.kept(path, bytes);
        match self.faults.storage_write(path) {
            StorageFault::None => {
                self.files().insert(path.to_owned(), bytes);
                Ok(())
            }
            StorageFault::Fail => Err(Self::io(operation, path, "injected write failure")),
            StorageFault::Torn => {
                let cut = bytes.len() / 2;
                self.files().insert(path.to_owned(), bytes[..cut].to_vec());
                Ok(())
            }
        }
    }
}

impl CheckpointStorage for SimStorage {
    fn describe(&self) -> String {
        DESCRIPTION.into()
    }

    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.write("write", path, bytes)
    }

    fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        if self.files().contains_key(path) {
            return Err(StorageError::AlreadyExists {
                storage: DESCRIPTION.into(),
                path: path.into(),
            });
        }
        self.write("write", path, bytes)
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        if self.faults.storage_read(path) {
            return Err(Self::io("read", path, "injected read failure"));
        }
        self.files()
            .get(path)
            .cloned()
            .ok_or_else(|| StorageError::NotFound {
                storage: DESCRIPTION.into(),
                path: path.into(),
            })
    }

    fn size(&self, path: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.files().get(path).map(|b| b.len() as u64))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let dir = prefix.trim_end_matches('/');
        let files = self.files();
        Ok(files
            .keys()
            .filter(|p| dir.is_empty() || p.strip_prefix(dir).is_some_and(|r| r.starts_with('/')))
            .cloned()
            .collect())
    }

    fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.files().remove(path);
        Ok(())
    }
}
