//! Connector positions and pending transactions as operator list state: one
//! JSON element per split, file or pending file (small, readable in `_metadata`).
//!
//! The codec itself is `flowstate_checkpoint::list_state` (shared with the
//! Kafka and PostgreSQL connectors); this module adds what the connectors of
//! this crate need around it: the restored list of an instance, and errors as
//! [`ConnectorError`] naming the operator.

use flowstate_runtime::checkpoint::{OperatorListState, decode_list, encode_list};
use flowstate_runtime::{SubtaskInfo, UserError};
use flowstate_state::RedistributionMode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ConnectorError;

/// The list state `name` holding `items`.
pub(crate) fn encode<T: Serialize>(
    name: &str,
    mode: RedistributionMode,
    items: impl IntoIterator<Item = T>,
) -> Result<Vec<OperatorListState>, UserError> {
    Ok(vec![encode_list(name, mode, items)?])
}

/// The restored elements of list state `name` for this instance, `None` if the
/// instance was not restored (or the checkpoint has no such list).
pub(crate) fn decode<T: DeserializeOwned>(
    subtask: &SubtaskInfo,
    name: &str,
) -> Result<Option<Vec<T>>, ConnectorError> {
    Ok(decode_with_mode(subtask, name)?.map(|(_, elements)| elements))
}

/// Like [`decode`], with the redistribution mode the snapshot recorded for the
/// list (which says how the elements were dealt to this instance).
pub(crate) fn decode_with_mode<T: DeserializeOwned>(
    subtask: &SubtaskInfo,
    name: &str,
) -> Result<Option<(RedistributionMode, Vec<T>)>, ConnectorError> {
    let Some(list) = subtask
        .restored
        .as_ref()
        .and_then(|r| r.lists.iter().find(|l| l.name == name))
    else {
        return Ok(None);
    };
    decode_list(name, &list.elements)
        .map(|elements| Some((list.mode, elements)))
        .map_err(|e| {
            ConnectorError::Config(format!(
                "restored state of operator '{}' is damaged: {e}",
                subtask.uid
            ))
        })
}
