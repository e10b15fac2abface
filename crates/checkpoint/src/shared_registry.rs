//! Reference counts of the shared native files (`<job>/shared/...`) of one
//! job, across its *retained completed* checkpoints (and those whose
//! `_metadata` is being written or may exist). Bookkeeping only: the
//! coordinator asks it which files may go, and answers with the deletes.
//!
//! **Invariant** (kept by the coordinator with this registry): a shared file is
//! deleted only when no retained checkpoint references it; and every shared
//! file that no retained checkpoint references is deleted at the latest when
//! the job next starts (`Coordinator::new` has the orphans of crashed and
//! aborted checkpoints collected). The one exception is deliberate: while a retained
//! checkpoint's metadata cannot be read, its references are unknown and
//! nothing shared is deleted at all (the registry is *incomplete*), because a
//! file it might need must never go; what that leaves behind is collected at a
//! later start at which every retained checkpoint's metadata reads.
//!
//! How the coordinator uses it:
//! - a checkpoint is registered (+1 per distinct path) when its `_metadata`
//!   write is issued, so before it completes and retention runs: a file it
//!   shares with the checkpoint retention is about to discard never reaches
//!   zero, even while its write is outstanding; it stays registered while it
//!   is retained or its metadata may exist (an aborted checkpoint in doubt);
//! - before a checkpoint completes, every shared file it references but did
//!   not upload itself must be registered; otherwise retention has already
//!   deleted it (a task reused a file it had not yet heard was discarded) and
//!   the checkpoint is aborted;
//! - retention releases a discarded checkpoint (−1 per path) and deletes the
//!   paths that reach zero;
//! - an aborted checkpoint's acknowledged shared files that are not registered
//!   are deleted (only ones it uploaded itself while the registry is
//!   incomplete).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::CheckpointId;

/// Shared paths of the retained checkpoints, and how many reference each.
#[derive(Debug, Default)]
pub(crate) struct SharedRegistry {
    counts: HashMap<String, usize>,
    /// Distinct shared paths of every registered checkpoint.
    by_checkpoint: BTreeMap<CheckpointId, BTreeSet<String>>,
    /// Retained checkpoints whose references could not be read.
    unknown: BTreeSet<CheckpointId>,
    /// Checkpoints of the job may exist that the coordinator does not know of
    /// (their listing failed): deletions stay off for this run.
    blind: bool,
}

impl SharedRegistry {
    /// Registers the shared paths of retained checkpoint `id` (a path listed
    /// twice, by two instances that reuse one file, counts once).
    pub(crate) fn register<'a>(&mut self, id: CheckpointId, paths: impl Iterator<Item = &'a str>) {
        let paths: BTreeSet<String> = paths.map(str::to_owned).collect();
        for path in &paths {
            *self.counts.entry(path.clone()).or_default() += 1;
        }
        if let Some(earlier) = self.by_checkpoint.insert(id, paths) {
            // Registering twice would count twice: undo the earlier one.
            self.decrement(earlier);
        }
    }

    /// Retained checkpoint `id` references files nobody can tell.
    pub(crate) fn mark_unknown(&mut self, id: CheckpointId) {
        self.unknown.insert(id);
    }

    /// Earlier checkpoints of the job could not even be listed.
    pub(crate) fn mark_blind(&mut self) {
        self.blind = true;
    }

    /// Checkpoint `id` is no longer retained: returns the paths no retained
    /// checkpoint references any more.
    pub(crate) fn release(&mut self, id: CheckpointId) -> Vec<String> {
        self.unknown.remove(&id);
        match self.by_checkpoint.remove(&id) {
            Some(paths) => self.decrement(paths),
            None => Vec::new(),
        }
    }

    fn decrement(&mut self, paths: BTreeSet<String>) -> Vec<String> {
        let mut unreferenced = Vec::new();
        for path in paths {
            if let Some(count) = self.counts.get_mut(&path) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&path);
                    unreferenced.push(path);
                }
            }
        }
        unreferenced
    }

    /// Whether a retained checkpoint references `path`.
    pub(crate) fn is_registered(&self, path: &str) -> bool {
        self.counts.contains_key(path)
    }

    /// Whether the references of every retained checkpoint are known, so an
    /// unregistered shared file is certainly unreferenced.
    pub(crate) fn is_complete(&self) -> bool {
        self.unknown.is_empty() && !self.blind
    }

    /// Why [`is_complete`](Self::is_complete) is false, for messages.
    pub(crate) fn incompleteness(&self) -> String {
        if self.blind {
            "earlier checkpoints could not be listed".into()
        } else {
            format!(
                "the metadata of retained checkpoint(s) {:?} could not be read",
                self.unknown
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_retained_checkpoints() {
        let mut registry = SharedRegistry::default();
        registry.register(1, ["a", "b", "b"].into_iter());
        registry.register(2, ["b", "c"].into_iter());
        assert!(registry.is_registered("a") && registry.is_registered("c"));
        assert_eq!(registry.release(1), vec!["a".to_owned()]);
        assert!(registry.is_registered("b"), "checkpoint 2 still holds b");
        assert_eq!(registry.release(2), vec!["b".to_owned(), "c".to_owned()]);
        assert!(
            registry.release(2).is_empty(),
            "releasing twice is harmless"
        );
        assert!(registry.counts.is_empty());
    }

    #[test]
    fn registering_again_does_not_count_twice() {
        let mut registry = SharedRegistry::default();
        registry.register(1, ["a", "b"].into_iter());
        registry.register(1, ["b"].into_iter());
        assert!(!registry.is_registered("a"));
        assert_eq!(registry.release(1), vec!["b".to_owned()]);
    }

    #[test]
    fn unknown_references_make_it_incomplete_until_released() {
        let mut registry = SharedRegistry::default();
        assert!(registry.is_complete());
        registry.mark_unknown(3);
        assert!(!registry.is_complete());
        assert!(registry.incompleteness().contains('3'));
        registry.release(3);
        assert!(registry.is_complete());
        registry.mark_blind();
        assert!(!registry.is_complete());
    }
}
