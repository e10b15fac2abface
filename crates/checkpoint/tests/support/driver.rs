//! A tiny coordinator driver for the tests: it carries out the storage
//! effects the coordinator answers with, as the runtime's driver does, and
//! hands every other action back to the test.

use std::collections::VecDeque;

use flowstate_checkpoint::coordinator::{Coordinator, CoordinatorAction, Now};
use flowstate_checkpoint::effects;
use flowstate_checkpoint::storage::SharedStorage;

/// Carries out, in order, the `WriteMetadata` and `Delete` actions among
/// `actions` against `storage` (the job's checkpoint storage) or a
/// savepoint's target; the outcome of every metadata write goes back to
/// `coordinator` at `now`, and what it answers is carried out in its place.
/// Returns every other action, in order.
pub fn drive(
    coordinator: &mut Coordinator,
    storage: &SharedStorage,
    actions: Vec<CoordinatorAction>,
    now: Now,
) -> Vec<CoordinatorAction> {
    let mut queue: VecDeque<CoordinatorAction> = actions.into();
    let mut rest = Vec::new();
    while let Some(action) = queue.pop_front() {
        match action {
            CoordinatorAction::WriteMetadata {
                id,
                store,
                path,
                bytes,
                then_restore_pointer,
            } => {
                let result = effects::write_metadata(
                    store.resolve(storage).as_ref(),
                    &path,
                    bytes,
                    then_restore_pointer
                        .as_ref()
                        .map(|stop| (storage.as_ref(), stop)),
                );
                let answer = coordinator.on_metadata_written(id, result, now);
                for next in answer.into_iter().rev() {
                    queue.push_front(next);
                }
            }
            CoordinatorAction::Delete { id, store, what } => {
                effects::delete(store.resolve(storage).as_ref(), id, &what)
            }
            other => rest.push(other),
        }
    }
    rest
}
