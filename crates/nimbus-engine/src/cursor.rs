//! Pagination cursors: opaque, authenticated positions in a query.
//!
//! A cursor is `<base64url of the position>.<base64url of an HMAC-SHA256>`. The key is a
//! per-tenant secret and the MAC covers the query's fingerprint (index, range, order), so a
//! cursor that was tampered with, comes from another tenant, or belongs to another query is
//! rejected instead of silently reading somewhere else. The whole 32-byte MAC is checked,
//! in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::EngineError;
use crate::transaction::CursorPosition;

type HmacSha256 = Hmac<Sha256>;

/// Encodes and checks cursors for one tenant.
#[derive(Clone)]
pub struct CursorCodec {
    secret: [u8; 32],
}

impl CursorCodec {
    pub fn new(secret: [u8; 32]) -> Self {
        CursorCodec { secret }
    }

    fn mac(&self, payload: &[u8], fingerprint: &[u8]) -> HmacSha256 {
        // A 32-byte key is always a valid HMAC key; the fallback is never taken.
        let mut mac = HmacSha256::new_from_slice(&self.secret)
            .unwrap_or_else(|_| HmacSha256::new(&Default::default()));
        mac.update(&(fingerprint.len() as u64).to_be_bytes());
        mac.update(fingerprint);
        mac.update(payload);
        mac
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
        let tag = self.mac(&payload, fingerprint).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
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
        let (payload_text, tag_text) = text.split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_text)
            .map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag_text).map_err(|_| invalid())?;
        // `verify_slice` compares the full tag in constant time, and refuses a short one.
        self.mac(&payload, fingerprint)
            .verify_slice(&tag)
            .map_err(|_| invalid())?;
        match payload.split_first() {
            Some((0, [])) => Ok(CursorPosition::Start),
            Some((2, [])) => Ok(CursorPosition::End),
            Some((1, key)) => Ok(CursorPosition::After(key.to_vec())),
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_any_change_is_refused() {
        let codec = CursorCodec::new([7; 32]);
        let position = CursorPosition::After(b"key".to_vec());
        let cursor = codec.encode(&position, b"query");
        assert_eq!(codec.decode(&cursor, b"query").ok(), Some(position));
        // Another query, another tenant, a truncated or altered MAC: all refused.
        assert!(codec.decode(&cursor, b"other query").is_err());
        assert!(CursorCodec::new([8; 32]).decode(&cursor, b"query").is_err());
        let (payload, tag) = cursor.split_once('.').unwrap_or_default();
        assert_eq!(tag.len(), 43, "the whole 32-byte MAC travels");
        let short = format!("{payload}.{}", &tag[..11]);
        assert!(
            codec.decode(&short, b"query").is_err(),
            "a 64-bit prefix is not enough"
        );
        let mut flipped = tag.as_bytes().to_vec();
        flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
        let altered = format!("{payload}.{}", String::from_utf8_lossy(&flipped));
        assert!(codec.decode(&altered, b"query").is_err());
    }
}
