//! Document IDs.
//!
//! Layout (the same shape as Convex's, so IDs look familiar): bytes =
//! VInt(table number) ‖ 16 internal bytes ‖ 2-byte footer, written as lowercase Crockford
//! base32. New IDs' internal bytes are a 6-byte creation time then 10 random bytes
//! ([`DocumentId::new_time_ordered`]); older IDs are 16 random bytes, and both decode alike. The footer is a Fletcher-16 checksum of the preceding bytes XOR a per-tenant
//! salt, so an ID minted by one tenant fails validation in another (and if the 1 in 65,536
//! collision happens, the random part still names no document there): cross-tenant reads
//! are impossible by construction.

use std::fmt;

use crate::error::TypesError;

/// A table's number inside one tenant. User tables start at 1 (0 is never allocated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableNumber(pub u32);

/// A document's identity: its table and 16 bytes (see [`DocumentId::new_time_ordered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocumentId {
    pub table: TableNumber,
    pub internal: [u8; 16],
}

impl DocumentId {
    /// A new ID: the first 6 internal bytes are the creation time in milliseconds
    /// (big-endian), the other 10 are random. Storage keeps documents and the `by_id` index
    /// in ID order, so time-ordered IDs put new documents next to each other: a group
    /// commit of many inserts dirties a few pages at the right edge of each B-tree instead
    /// of one random page per document. 80 random bits keep IDs unique and unguessable
    /// enough to be no easier to forge than to look up (IDs are not secrets in Convex
    /// either; the creation time is a visible field anyway).
    pub fn new_time_ordered(table: TableNumber, creation_ms: u64, random: [u8; 10]) -> Self {
        let mut internal = [0u8; 16];
        internal[..6].copy_from_slice(&creation_ms.to_be_bytes()[2..]);
        internal[6..].copy_from_slice(&random);
        DocumentId { table, internal }
    }
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Longest ID text: 5 VInt bytes + 16 + 2 = 23 bytes → 37 base32 characters.
const MAX_ID_TEXT_LEN: usize = 37;

/// Encodes and validates IDs for one tenant.
#[derive(Debug, Clone, Copy)]
pub struct IdCodec {
    salt: u16,
}

impl IdCodec {
    /// `salt` is chosen at random when the tenant is created and kept in its namespace.
    pub fn new(salt: u16) -> Self {
        IdCodec { salt }
    }

    pub fn encode(&self, id: DocumentId) -> String {
        let mut bytes = Vec::with_capacity(23);
        let mut n = id.table.0;
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                bytes.push(low);
                break;
            }
            bytes.push(low | 0x80);
        }
        bytes.extend_from_slice(&id.internal);
        let footer = fletcher16(&bytes) ^ self.salt;
        bytes.extend_from_slice(&footer.to_le_bytes());
        base32_encode(&bytes)
    }

    /// Parses an ID of this tenant; any other string is [`TypesError::InvalidId`].
    pub fn decode(&self, text: &str) -> Result<DocumentId, TypesError> {
        let invalid = || TypesError::InvalidId(text.chars().take(64).collect());
        if text.len() < 30 || text.len() > MAX_ID_TEXT_LEN {
            return Err(invalid());
        }
        let bytes = base32_decode(text).ok_or_else(invalid)?;
        if bytes.len() < 19 {
            return Err(invalid());
        }
        let (body, footer) = bytes.split_at(bytes.len() - 2);
        let footer = u16::from_le_bytes([footer[0], footer[1]]);
        if fletcher16(body) ^ self.salt != footer {
            return Err(invalid());
        }
        let mut table: u32 = 0;
        let mut shift = 0;
        let mut pos = 0;
        loop {
            let byte = *body.get(pos).ok_or_else(invalid)?;
            pos += 1;
            table |= u32::from(byte & 0x7f)
                .checked_shl(shift)
                .ok_or_else(invalid)?;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err(invalid());
            }
        }
        let internal: [u8; 16] = body[pos..].try_into().map_err(|_| invalid())?;
        // Reject non-canonical spellings so each document has exactly one ID text.
        let id = DocumentId {
            table: TableNumber(table),
            internal,
        };
        if self.encode(id) != text {
            return Err(invalid());
        }
        Ok(id)
    }
}

impl fmt::Display for TableNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn fletcher16(bytes: &[u8]) -> u16 {
    let (mut a, mut b) = (0u16, 0u16);
    for byte in bytes {
        a = (a + u16::from(*byte)) % 255;
        b = (b + a) % 255;
    }
    (b << 8) | a
}

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|a| *a == c)? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tenant_salt() {
        let a = IdCodec::new(0x1234);
        let b = IdCodec::new(0x4321);
        for table in [1, 127, 128, 16_383, 16_384, 1_000_000] {
            let id = DocumentId {
                table: TableNumber(table),
                internal: [7; 16],
            };
            let text = a.encode(id);
            assert_eq!(a.decode(&text), Ok(id));
            assert!(
                b.decode(&text).is_err(),
                "an ID must not validate in another tenant"
            );
        }
        let short = a.encode(DocumentId {
            table: TableNumber(1),
            internal: [0; 16],
        });
        assert_eq!(short.len(), 31);
    }

    #[test]
    fn new_ids_sort_by_creation_time() {
        let table = TableNumber(3);
        let earlier = DocumentId::new_time_ordered(table, 1_764_000_000_000, [0xff; 10]);
        let later = DocumentId::new_time_ordered(table, 1_764_000_000_001, [0; 10]);
        assert!(earlier < later, "the time prefix decides the order");
        assert_eq!(&later.internal[6..], &[0; 10]);
        let codec = IdCodec::new(5);
        assert_eq!(codec.decode(&codec.encode(later)), Ok(later));
    }

    #[test]
    fn rejects_garbage() {
        let codec = IdCodec::new(9);
        for bad in [
            "",
            "abc",
            "ILOU0000000000000000000000000000",
            &"z".repeat(31),
        ] {
            assert!(codec.decode(bad).is_err(), "{bad}");
        }
    }
}
