//! Operator (non-keyed) state: named lists of values owned by one parallel
//! instance, such as a source's split positions or a sink's pending files.
//!
//! Each list declares how it is redistributed when parallelism changes:
//! [`RedistributionMode::Split`] deals the elements of all instances out among the
//! new instances; [`RedistributionMode::Union`] gives every new instance all of them.

use std::any::{Any, TypeId};
use std::marker::PhantomData;

use crate::StateValue;
use crate::error::StateError;
use crate::state_type::state_type_name;

/// How an operator list state is redistributed on rescale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RedistributionMode {
    /// Elements are divided among the new instances.
    Split,
    /// Every new instance receives every element.
    Union,
}

/// A declared operator list state.
#[derive(Debug)]
pub struct OperatorListHandle<V> {
    index: usize,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for OperatorListHandle<V> {
    fn clone(&self) -> Self {
        Self {
            index: self.index,
            _value: PhantomData,
        }
    }
}

struct OperatorList {
    name: String,
    mode: RedistributionMode,
    /// The declared name of the element type ([`crate::StateType`]).
    type_name: String,
    /// The element's Rust type: one declared name given to two Rust types
    /// must not hand out a handle of the wrong type.
    type_id: TypeId,
    values: Box<dyn Any + Send>,
}

/// The operator state of one parallel instance.
#[derive(Default)]
pub struct OperatorStateStore {
    lists: Vec<OperatorList>,
}

impl OperatorStateStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares (or looks up) a list state named `name`.
    pub fn list_state<V: StateValue>(
        &mut self,
        name: &str,
        mode: RedistributionMode,
    ) -> Result<OperatorListHandle<V>, StateError> {
        let type_name = state_type_name::<V>();
        let type_id = TypeId::of::<V>();
        if let Some(index) = self.lists.iter().position(|l| l.name == name) {
            let existing = &self.lists[index];
            if existing.mode != mode
                || existing.type_name != type_name
                || existing.type_id != type_id
            {
                return Err(StateError::IncompatibleDeclaration {
                    name: name.to_owned(),
                    existing: format!("{:?} list of {}", existing.mode, existing.type_name),
                    requested: format!("{mode:?} list of {type_name}"),
                });
            }
            return Ok(OperatorListHandle {
                index,
                _value: PhantomData,
            });
        }
        self.lists.push(OperatorList {
            name: name.to_owned(),
            mode,
            type_name,
            type_id,
            values: Box::new(Vec::<V>::new()),
        });
        Ok(OperatorListHandle {
            index: self.lists.len() - 1,
            _value: PhantomData,
        })
    }

    /// The list behind `handle`.
    pub fn list<V: StateValue>(&mut self, handle: &OperatorListHandle<V>) -> &mut Vec<V> {
        match self.lists[handle.index].values.downcast_mut::<Vec<V>>() {
            Some(list) => list,
            None => panic!("operator state handle used with another operator's state store"),
        }
    }

    /// Names and modes of the declared lists.
    pub fn declared(&self) -> impl Iterator<Item = (&str, RedistributionMode)> {
        self.lists.iter().map(|l| (l.name.as_str(), l.mode))
    }
}
