//! How documents are stored: their convex-JSON text.

use nimbus_storage::StorageError;
use nimbus_types::{Document, Object, Value};

use crate::error::EngineError;

pub(crate) fn serialize_document(doc: &Document) -> Vec<u8> {
    nimbus_types::json::encode_object_text(doc).into_bytes()
}

pub(crate) fn decode_document(body: &[u8]) -> Result<Object, EngineError> {
    let corrupted = |detail: String| {
        EngineError::Storage(StorageError::Corrupted {
            namespace: String::new(),
            detail,
        })
    };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| corrupted(format!("document JSON: {e}")))?;
    match nimbus_types::json::decode(&json).map_err(|e| corrupted(e.to_string()))? {
        Value::Object(fields) => Ok(fields),
        other => Err(corrupted(format!("document is a {}", other.type_name()))),
    }
}
