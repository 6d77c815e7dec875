//! JSON encoding of stored records, shared by both backends.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

/// Encodes a record; `what` names it in the (unlikely) error.
pub(crate) fn to_json(what: &str, value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Corrupt {
        key: what.to_owned(),
        source,
    })
}

/// Decodes a stored record; `what` names it when the store holds something unreadable.
pub(crate) fn from_json<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        key: what.to_owned(),
        source,
    })
}
