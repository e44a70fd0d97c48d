//! Pagination cursors: opaque, authenticated positions in a query.
//!
//! A cursor is `<base64url of the position>.<16 hex digits of a keyed SHA-256>`. The key
//! is a per-tenant secret and the MAC covers the query's fingerprint (index, range,
//! order), so a cursor that was tampered with, comes from another tenant, or belongs to
//! another query is rejected instead of silently reading somewhere else.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::EngineError;
use crate::transaction::CursorPosition;

/// Encodes and checks cursors for one tenant.
#[derive(Clone)]
pub struct CursorCodec {
    secret: [u8; 32],
}

impl CursorCodec {
    pub fn new(secret: [u8; 32]) -> Self {
        CursorCodec { secret }
    }

    fn mac(&self, payload: &[u8], fingerprint: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret);
        hasher.update((fingerprint.len() as u64).to_be_bytes());
        hasher.update(fingerprint);
        hasher.update(payload);
        let digest = hasher.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn encode(&self, position: &CursorPosition, fingerprint: &[u8]) -> String {
        let payload = match position {
            CursorPosition::Start => vec![0u8],
            CursorPosition::End => vec![2u8],
            CursorPosition::After(key) => {
                let mut p = vec![1u8];
                p.extend_from_slice(key);
                p
            }
        };
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            self.mac(&payload, fingerprint)
        )
    }

    pub fn decode(&self, text: &str, fingerprint: &[u8]) -> Result<CursorPosition, EngineError> {
        let invalid = || {
            EngineError::User(
                "InvalidCursor: the pagination cursor is invalid or belongs to a different \
                 query; restart pagination without a cursor"
                    .to_string(),
            )
        };
        let (payload_text, mac) = text.split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_text)
            .map_err(|_| invalid())?;
        if self.mac(&payload, fingerprint) != mac {
            return Err(invalid());
        }
        match payload.split_first() {
            Some((0, [])) => Ok(CursorPosition::Start),
            Some((2, [])) => Ok(CursorPosition::End),
            Some((1, key)) => Ok(CursorPosition::After(key.to_vec())),
            _ => Err(invalid()),
        }
    }
}
