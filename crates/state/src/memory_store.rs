//! An in-memory [`KvStore`]: ordered maps behind a lock. It is the reference
//! implementation of the store contract, so the serialising layer is tested
//! (and usable) without RocksDB. Snapshots copy the maps, so it suits tests and
//! small state, not production.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{BackendKind, SnapshotRequest};
use crate::error::StateError;
use crate::native::NativeRestore;
use crate::serialized::{
    BackendInstance, KvBatch, KvColumn, KvStore, KvStoreFactory, KvView, ScanFn, StoreSnapshot,
};

type Column = BTreeMap<Vec<u8>, Vec<u8>>;
type Columns = Arc<Mutex<HashMap<String, Column>>>;

fn lock(columns: &Columns) -> Result<MutexGuard<'_, HashMap<String, Column>>, StateError> {
    columns.lock().map_err(|_| StateError::Backend {
        backend: "memory",
        action: "lock the store".into(),
        reason: "a thread panicked while holding it".into(),
    })
}

fn scan_map(map: &Column, start: &[u8], end: &[u8], f: &mut ScanFn<'_>) -> Result<(), StateError> {
    for (k, v) in map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))) {
        if !f(k, v)? {
            break;
        }
    }
    Ok(())
}

/// Opens [`MemoryStore`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryStoreFactory;

impl KvStoreFactory for MemoryStoreFactory {
    fn kind(&self) -> BackendKind {
        // Behaves as the serialising backend it stands in for.
        BackendKind::RocksDb
    }

    fn open(&self, _instance: &BackendInstance) -> Result<Box<dyn KvStore>, StateError> {
        Ok(Box::new(MemoryStore::default()))
    }
}

/// Columns of ordered byte maps.
#[derive(Default)]
pub struct MemoryStore {
    columns: Columns,
}

struct MemoryColumn {
    columns: Columns,
    name: String,
}

impl MemoryColumn {
    fn with<T>(&self, f: impl FnOnce(&mut Column) -> T) -> Result<T, StateError> {
        let mut columns = lock(&self.columns)?;
        Ok(f(columns.entry(self.name.clone()).or_default()))
    }
}

impl KvColumn for MemoryColumn {
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        self.with(|c| match c.get(key) {
            Some(v) => {
                out.clear();
                out.extend_from_slice(v);
                true
            }
            None => false,
        })
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.with(|c| {
            c.insert(key.to_vec(), value.to_vec());
        })
    }

    fn append(&self, key: &[u8], bytes: &[u8]) -> Result<(), StateError> {
        self.with(|c| c.entry(key.to_vec()).or_default().extend_from_slice(bytes))
    }

    fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        self.with(|c| {
            c.remove(key);
        })
    }

    fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<(), StateError> {
        self.with(|c| {
            let doomed: Vec<Vec<u8>> = c
                .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                c.remove(&k);
            }
        })
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut ScanFn<'_>) -> Result<(), StateError> {
        // Copy the range first: `f` may not run under the lock.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self.with(|c| {
            c.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })?;
        for (k, v) in &entries {
            if !f(k, v)? {
                break;
            }
        }
        Ok(())
    }

    fn write_batch(&self, batch: &KvBatch) -> Result<(), StateError> {
        self.with(|c| {
            for (k, v) in batch.iter() {
                c.insert(k.to_vec(), v.to_vec());
            }
        })
    }
}

struct MemoryView {
    columns: HashMap<String, Column>,
}

impl KvView for MemoryView {
    fn scan(
        &self,
        column: &str,
        start: &[u8],
        end: &[u8],
        f: &mut ScanFn<'_>,
    ) -> Result<(), StateError> {
        match self.columns.get(column) {
            Some(map) => scan_map(map, start, end, f),
            None => Ok(()),
        }
    }
}

impl KvStore for MemoryStore {
    fn kind(&self) -> BackendKind {
        BackendKind::RocksDb
    }

    /// Exact, by walking the column: this store is for tests and small state.
    fn column_stats(&self, column: &str) -> Option<(u64, u64)> {
        let columns = lock(&self.columns).ok()?;
        let column = columns.get(column)?;
        let bytes = column.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Some((column.len() as u64, bytes))
    }

    fn open_column(&mut self, name: &str) -> Result<Box<dyn KvColumn>, StateError> {
        lock(&self.columns)?.entry(name.to_owned()).or_default();
        Ok(Box::new(MemoryColumn {
            columns: Arc::clone(&self.columns),
            name: name.to_owned(),
        }))
    }

    fn snapshot(&mut self, _request: SnapshotRequest) -> Result<StoreSnapshot, StateError> {
        let columns = lock(&self.columns)?.clone();
        Ok(StoreSnapshot::View(Arc::new(MemoryView { columns })))
    }

    fn restore_native(&mut self, restores: &[NativeRestore]) -> Result<(), StateError> {
        match restores.first() {
            None => Ok(()),
            Some(r) => Err(StateError::Unsupported(format!(
                "the memory store cannot restore native {} files",
                r.backend
            ))),
        }
    }
}
