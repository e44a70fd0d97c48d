//! The bytes on disk: segment headers and records.
//!
//! A segment file starts with a 16-byte header: the magic `NIMBUSJ1` and the LSN of its
//! first record (little-endian `u64`). Records follow back to back:
//!
//! ```text
//! u32  body length (everything after the checksum)
//! u32  CRC-32 of the body
//! body:
//!   u64  LSN (one more than the previous record's, across segments)
//!   u64  tenant incarnation
//!   u16  tenant name length, then the name (UTF-8)
//!   ...  payload (the rest of the body)
//! ```
//!
//! All integers are little-endian. A record is valid only whole: a length running past the
//! end of the file, a checksum mismatch or an LSN out of sequence ends the valid prefix.

use crate::error::JournalError;
use crate::{Lsn, TenantKey};

pub(crate) const MAGIC: &[u8; 8] = b"NIMBUSJ1";
pub(crate) const SEGMENT_HEADER_BYTES: usize = 16;
/// Length and checksum.
pub(crate) const RECORD_PREFIX_BYTES: usize = 8;
/// LSN, incarnation and name length.
const BODY_FIXED_BYTES: usize = 8 + 8 + 2;
/// Longest tenant name a record carries.
pub const MAX_TENANT_NAME_BYTES: usize = 255;

pub(crate) fn segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&first_lsn.0.to_le_bytes());
    header
}

/// The first LSN a segment header announces; `None` when it is not a header.
pub(crate) fn parse_segment_header(bytes: &[u8]) -> Option<Lsn> {
    if bytes.len() < SEGMENT_HEADER_BYTES || &bytes[..8] != MAGIC {
        return None;
    }
    Some(Lsn(u64_at(bytes, 8)))
}

/// Bytes a record takes on disk.
pub(crate) fn record_bytes(tenant: &TenantKey, payload_len: usize) -> usize {
    RECORD_PREFIX_BYTES + BODY_FIXED_BYTES + tenant.name.len() + payload_len
}

/// Appends one record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, lsn: Lsn, tenant: &TenantKey, payload: &[u8]) {
    let body_len = BODY_FIXED_BYTES + tenant.name.len() + payload.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(&tenant.incarnation.to_le_bytes());
    out.extend_from_slice(&(tenant.name.len() as u16).to_le_bytes());
    out.extend_from_slice(tenant.name.as_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + RECORD_PREFIX_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub tenant: TenantKey,
    pub payload: Vec<u8>,
}

/// Why a scan stopped before the end of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Every byte was a whole, valid record.
    End,
    /// A record at this offset is cut short or fails its checksum.
    Torn { offset: usize, why: String },
}

/// Decodes the record at `offset` of `bytes`: the record and the offset after it, or why
/// the bytes there are not a record.
pub(crate) fn decode_record(bytes: &[u8], offset: usize) -> Result<(Record, usize), String> {
    let rest = &bytes[offset..];
    if rest.len() < RECORD_PREFIX_BYTES {
        return Err(format!("{} bytes where a record starts", rest.len()));
    }
    let body_len = u32_at(rest, 0) as usize;
    let crc = u32_at(rest, 4);
    let Some(body) = rest.get(RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES + body_len) else {
        return Err(format!(
            "record of {body_len} bytes runs past the end ({} left)",
            rest.len() - RECORD_PREFIX_BYTES
        ));
    };
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    if body.len() < BODY_FIXED_BYTES {
        return Err(format!("record body of {} bytes", body.len()));
    }
    let lsn = Lsn(u64_at(body, 0));
    let incarnation = u64_at(body, 8);
    let name_len = u16::from_le_bytes([body[16], body[17]]) as usize;
    let Some(name) = body.get(BODY_FIXED_BYTES..BODY_FIXED_BYTES + name_len) else {
        return Err(format!(
            "tenant name of {name_len} bytes runs past its record"
        ));
    };
    let name = std::str::from_utf8(name)
        .map_err(|_| "tenant name is not UTF-8".to_string())?
        .to_string();
    let payload = body[BODY_FIXED_BYTES + name_len..].to_vec();
    Ok((
        Record {
            lsn,
            tenant: TenantKey { name, incarnation },
            payload,
        },
        offset + RECORD_PREFIX_BYTES + body_len,
    ))
}

/// Reads the records of one segment's bytes (header included), expecting LSNs from the
/// header's on; calls `visit` with each record and the offset just after it. Returns the
/// header's first LSN and why the scan stopped.
pub(crate) fn scan_segment(
    bytes: &[u8],
    mut visit: impl FnMut(Record, usize),
) -> Result<(Lsn, Stop), JournalError> {
    let first = parse_segment_header(bytes)
        .ok_or_else(|| JournalError::Corrupted("a segment has no valid header".into()))?;
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected = first;
    while offset < bytes.len() {
        match decode_record(bytes, offset) {
            Ok((record, next)) => {
                if record.lsn != expected {
                    return Ok((
                        first,
                        Stop::Torn {
                            offset,
                            why: format!("LSN {} where {} was due", record.lsn.0, expected.0),
                        },
                    ));
                }
                expected = Lsn(expected.0 + 1);
                visit(record, next);
                offset = next;
            }
            Err(why) => return Ok((first, Stop::Torn { offset, why })),
        }
    }
    Ok((first, Stop::End))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantKey {
        TenantKey {
            name: name.into(),
            incarnation: 7,
        }
    }

    #[test]
    fn records_round_trip_and_every_cut_is_refused() {
        let mut bytes = segment_header(Lsn(5)).to_vec();
        encode_record(&mut bytes, Lsn(5), &tenant("a"), b"first");
        encode_record(&mut bytes, Lsn(6), &tenant("bb"), b"");
        let whole = bytes.len();
        let mut seen = Vec::new();
        let (first, stop) =
            scan_segment(&bytes, |r, _| seen.push(r)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, Lsn(5));
        assert_eq!(stop, Stop::End);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].payload, b"first");
        assert_eq!(seen[1].tenant, tenant("bb"));
        assert_eq!(
            record_bytes(&tenant("a"), 5) + record_bytes(&tenant("bb"), 0) + SEGMENT_HEADER_BYTES,
            whole
        );

        // Any prefix is whole records and then, unless cut at a record's end, a torn rest;
        // never a wrong record.
        let first_end = SEGMENT_HEADER_BYTES + record_bytes(&tenant("a"), 5);
        for cut in SEGMENT_HEADER_BYTES..whole {
            let mut count = 0;
            let (_, stop) =
                scan_segment(&bytes[..cut], |_, _| count += 1).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(count, usize::from(cut >= first_end), "cut {cut}");
            let at_boundary = cut == SEGMENT_HEADER_BYTES || cut == first_end;
            assert_eq!(stop == Stop::End, at_boundary, "cut {cut}");
        }
        // Any flipped bit in a record is caught.
        for at in SEGMENT_HEADER_BYTES..whole {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let mut count = 0;
            let (_, stop) =
                scan_segment(&damaged, |_, _| count += 1).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                count < 2 && matches!(stop, Stop::Torn { .. }),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn a_gap_in_lsns_ends_the_valid_prefix() {
        let mut bytes = segment_header(Lsn(1)).to_vec();
        encode_record(&mut bytes, Lsn(1), &tenant("a"), b"x");
        encode_record(&mut bytes, Lsn(3), &tenant("a"), b"y");
        let mut count = 0;
        let (_, stop) = scan_segment(&bytes, |_, _| count += 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count, 1);
        assert!(matches!(stop, Stop::Torn { why, .. } if why.contains("LSN 3")));
    }

    #[test]
    fn a_file_without_header_is_corrupt() {
        assert!(scan_segment(b"garbage garbage garbage", |_, _| {}).is_err());
    }
}
