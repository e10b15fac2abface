//! Semantics of every keyed state type, of declarations, of snapshots and
//! restores, through the public API of `flowstate-state`: the behaviour suite
//! (`semantics/suite.rs`) once per backend, and operator state.
//!
//! The suite runs here on the heap backend and on the serialising backend
//! over the in-memory store; `flowstate-state-rocksdb` runs the same suite on
//! RocksDB.

#[macro_use]
#[path = "semantics/suite.rs"]
mod suite;

mod heap {
    semantics_suite!(Harness::heap());
}

mod memory_store {
    use std::sync::Arc;

    use flowstate_state::memory_store::MemoryStoreFactory;

    semantics_suite!(Harness::store(Arc::new(MemoryStoreFactory)));
}

use flowstate_state::{OperatorStateStore, RedistributionMode};
use suite::assert_incompatible;

#[test]
fn operator_list_state_declare_and_use() {
    let mut store = OperatorStateStore::new();
    let offsets = store
        .list_state::<u64>("offsets", RedistributionMode::Split)
        .unwrap();
    let names = store
        .list_state::<String>("names", RedistributionMode::Union)
        .unwrap();

    assert!(store.list(&offsets).is_empty());
    store.list(&offsets).extend([1, 2, 3]);
    store.list(&names).push("a".into());
    assert_eq!(*store.list(&offsets), vec![1, 2, 3]);
    assert_eq!(*store.list(&names), vec!["a".to_string()]);

    // Same declaration: same list.
    let again = store
        .list_state::<u64>("offsets", RedistributionMode::Split)
        .unwrap();
    store.list(&again).push(4);
    assert_eq!(
        *store.list(&offsets),
        vec![1, 2, 3, 4],
        "a second declaration reaches the same list"
    );

    // Other mode or other type: refused.
    assert_incompatible(
        store.list_state::<u64>("offsets", RedistributionMode::Union),
        "offsets",
    );
    assert_incompatible(
        store.list_state::<u32>("offsets", RedistributionMode::Split),
        "offsets",
    );

    let declared: Vec<(String, RedistributionMode)> =
        store.declared().map(|(n, m)| (n.to_owned(), m)).collect();
    assert_eq!(
        declared,
        vec![
            ("offsets".to_string(), RedistributionMode::Split),
            ("names".to_string(), RedistributionMode::Union),
        ],
        "refused declarations add no list"
    );

    store.list(&offsets).clear();
    assert!(store.list(&again).is_empty());
    assert_eq!(store.list(&names).len(), 1, "lists are independent");
}
