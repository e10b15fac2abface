//! Connector positions and pending transactions as operator list state: one
//! JSON element per split, file or pending file (small, readable in `_metadata`).

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{SubtaskInfo, UserError};
use flowstate_state::RedistributionMode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ConnectorError;

/// The list state `name` holding `items`.
pub(crate) fn encode<'a, T: Serialize + 'a>(
    name: &str,
    mode: RedistributionMode,
    items: impl IntoIterator<Item = &'a T>,
) -> Result<Vec<OperatorListState>, UserError> {
    let elements = items
        .into_iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![OperatorListState {
        name: name.into(),
        mode,
        elements,
    }])
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
    list.elements
        .iter()
        .map(|e| serde_json::from_slice(e))
        .collect::<Result<Vec<T>, _>>()
        .map(|elements| Some((list.mode, elements)))
        .map_err(|e| {
            ConnectorError::Config(format!(
                "restored state '{name}' of operator '{}' is damaged: {e}",
                subtask.uid
            ))
        })
}
