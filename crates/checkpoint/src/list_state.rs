//! The one JSON codec of operator list state: how a connector's positions or
//! pending transactions (a Kafka partition's offset, a file's read position, a
//! prepared transaction) become the elements of an [`OperatorListState`] and
//! come back from a restore. One JSON document per element keeps them small
//! and readable in `_metadata` (`flowstate inspect` shows them).
//!
//! Owns: encoding items into a list state and decoding restored elements, with
//! errors naming the state and the element. Must not touch: where the
//! elements come from or go (the runtime hands restored lists to instances;
//! the connectors decide what their items are) and the keyed-state encoding
//! (`flowstate_state::codec`), which is another format.
//!
//! It lives here, beside [`OperatorListState`], because every crate with a
//! source or sink (connectors, kafka, postgres) already reaches this crate
//! through the runtime (`flowstate_runtime::checkpoint`).

use flowstate_state::RedistributionMode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::metadata::OperatorListState;

/// An element of an operator list state that cannot be written or read back.
#[derive(Debug, Error)]
pub enum ListStateError {
    #[error("cannot encode element {index} of list state '{state}' as JSON: {source}")]
    Encode {
        state: String,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("element {index} of list state '{state}' does not decode: {source}")]
    Decode {
        state: String,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// The list state `name` holding `items`, one JSON element each, in order.
/// Takes items by value or by reference (`&[T]`, `&Vec<T>`).
pub fn encode_list<T: Serialize>(
    name: &str,
    mode: RedistributionMode,
    items: impl IntoIterator<Item = T>,
) -> Result<OperatorListState, ListStateError> {
    let elements = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            serde_json::to_vec(&item).map_err(|source| ListStateError::Encode {
                state: name.to_owned(),
                index,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OperatorListState {
        name: name.into(),
        mode,
        elements,
    })
}

/// The items of the restored elements of list state `name`, in order. Fails
/// on the first element that is not JSON of `T`, naming it.
pub fn decode_list<T: DeserializeOwned>(
    name: &str,
    elements: &[Vec<u8>],
) -> Result<Vec<T>, ListStateError> {
    elements
        .iter()
        .enumerate()
        .map(|(index, element)| {
            serde_json::from_slice(element).map_err(|source| ListStateError::Decode {
                state: name.to_owned(),
                index,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    struct Position {
        split: u32,
        next: Option<i64>,
    }

    fn positions() -> Vec<Position> {
        vec![
            Position {
                split: 0,
                next: Some(17),
            },
            Position {
                split: 3,
                next: None,
            },
        ]
    }

    #[test]
    fn items_round_trip_by_reference_and_by_value() {
        let items = positions();
        let list = encode_list("splits", RedistributionMode::Split, &items).unwrap();
        assert_eq!(list.name, "splits");
        assert_eq!(list.mode, RedistributionMode::Split);
        // One readable JSON document per element: `_metadata` shows them.
        assert_eq!(list.elements[0], br#"{"split":0,"next":17}"#);
        assert_eq!(
            decode_list::<Position>("splits", &list.elements).unwrap(),
            items
        );

        let owned = encode_list("splits", RedistributionMode::Union, items.clone()).unwrap();
        assert_eq!(owned.elements, list.elements);
        assert_eq!(owned.mode, RedistributionMode::Union);
    }

    #[test]
    fn an_empty_list_is_a_list_with_no_elements() {
        let list =
            encode_list("pending", RedistributionMode::Union, Vec::<Position>::new()).unwrap();
        assert!(list.elements.is_empty());
        assert!(
            decode_list::<Position>("pending", &list.elements)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_element_is_named_with_its_state() {
        let mut list = encode_list("offsets", RedistributionMode::Union, positions()).unwrap();
        list.elements[1] = b"{\"split\":".to_vec();
        let error = decode_list::<Position>("offsets", &list.elements).unwrap_err();
        assert!(
            matches!(error, ListStateError::Decode { index: 1, .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("element 1 of list state 'offsets' does not decode: "),
            "{message}"
        );
        // An element of another type is refused, not misread.
        let error = decode_list::<u64>("offsets", &list.elements[..1]).unwrap_err();
        assert!(error.to_string().contains("'offsets'"), "{error}");
    }

    #[test]
    fn an_item_that_cannot_be_json_is_named_with_its_state() {
        // JSON object keys must be strings: a map keyed by tuples is refused.
        let item: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let error = encode_list("odd", RedistributionMode::Split, [&item]).unwrap_err();
        assert!(
            matches!(error, ListStateError::Encode { index: 0, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("list state 'odd'"), "{error}");
    }
}
