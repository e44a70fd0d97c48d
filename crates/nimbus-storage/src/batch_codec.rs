//! A [`WriteBatch`] as bytes, for a journal record: written once, read back after a crash
//! to apply the batch to the namespace it was meant for.
//!
//! Layout (integers LEB128 unless said otherwise, byte strings as a length then the
//! bytes): a version byte (1); `ts` (u64 little-endian); the documents (count, then each:
//! the 20-byte ID of [`encode_document_id`], the table number, a flag byte 0 = removed /
//! 1 = body follows, the body); the index writes (count, then each a kind byte: 0 insert
//! (index, key, 20-byte ID), 1 delete (index, key), 2 drop (index), 3 drop a chunk (index,
//! max entries)); the globals (count, then name and a flag byte and value like a body);
//! the receipts (count, then key and body); and `expire_receipts_before` (flag byte, then
//! u64 little-endian). Nothing may follow.

use nimbus_types::{wire, TableNumber, Timestamp};

use crate::{
    decode_document_id, encode_document_id, DocumentWrite, IndexNumber, IndexWrite, Receipt,
    StorageError, WriteBatch,
};

const VERSION: u8 = 1;

/// Encodes `batch`.
pub fn encode_batch(batch: &WriteBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch_size_hint(batch));
    out.push(VERSION);
    out.extend_from_slice(&batch.ts.0.to_le_bytes());
    put_len(&mut out, batch.documents.len());
    for write in &batch.documents {
        out.extend_from_slice(&encode_document_id(&write.id));
        put_u64(&mut out, u64::from(write.table.0));
        put_optional(&mut out, write.body.as_deref());
    }
    put_len(&mut out, batch.indexes.len());
    for write in &batch.indexes {
        match write {
            IndexWrite::Insert { index, key, id } => {
                out.push(0);
                put_u64(&mut out, u64::from(index.0));
                put_bytes(&mut out, key);
                out.extend_from_slice(&encode_document_id(id));
            }
            IndexWrite::Delete { index, key } => {
                out.push(1);
                put_u64(&mut out, u64::from(index.0));
                put_bytes(&mut out, key);
            }
            IndexWrite::DropIndex { index } => {
                out.push(2);
                put_u64(&mut out, u64::from(index.0));
            }
            IndexWrite::DropIndexChunk { index, max_entries } => {
                out.push(3);
                put_u64(&mut out, u64::from(index.0));
                put_u64(&mut out, *max_entries as u64);
            }
        }
    }
    put_len(&mut out, batch.globals.len());
    for (name, value) in &batch.globals {
        put_bytes(&mut out, name.as_bytes());
        put_optional(&mut out, value.as_deref());
    }
    put_len(&mut out, batch.receipts.len());
    for receipt in &batch.receipts {
        put_bytes(&mut out, &receipt.key);
        put_bytes(&mut out, &receipt.body);
    }
    match batch.expire_receipts_before {
        None => out.push(0),
        Some(ts) => {
            out.push(1);
            out.extend_from_slice(&ts.0.to_le_bytes());
        }
    }
    out
}

/// Decodes what [`encode_batch`] wrote; anything else is [`StorageError::Corrupted`].
pub fn decode_batch(bytes: &[u8]) -> Result<WriteBatch, StorageError> {
    let mut r = Reader {
        wire: wire::Reader::new(bytes),
    };
    let version = r.byte()?;
    if version != VERSION {
        return Err(r.error(format!("batch encoding version {version}")));
    }
    let mut batch = WriteBatch {
        ts: Timestamp(r.u64_le()?),
        ..WriteBatch::default()
    };
    let count = r.len(21)?;
    batch.documents.reserve(count);
    for _ in 0..count {
        let id = r.id()?;
        let table = TableNumber(r.u32()?);
        let body = r.optional()?;
        batch.documents.push(DocumentWrite { id, table, body });
    }
    let count = r.len(2)?;
    batch.indexes.reserve(count);
    for _ in 0..count {
        let kind = r.byte()?;
        let index = IndexNumber(r.u32()?);
        batch.indexes.push(match kind {
            0 => IndexWrite::Insert {
                index,
                key: r.bytes()?.to_vec(),
                id: r.id()?,
            },
            1 => IndexWrite::Delete {
                index,
                key: r.bytes()?.to_vec(),
            },
            2 => IndexWrite::DropIndex { index },
            3 => IndexWrite::DropIndexChunk {
                index,
                max_entries: usize::try_from(r.u64()?)
                    .map_err(|_| r.error("chunk size out of range".into()))?,
            },
            other => return Err(r.error(format!("index write kind {other}"))),
        });
    }
    let count = r.len(2)?;
    for _ in 0..count {
        let name = std::str::from_utf8(r.bytes()?)
            .map_err(|_| r.error("global name is not UTF-8".into()))?
            .to_string();
        let value = r.optional()?;
        batch.globals.push((name, value));
    }
    let count = r.len(2)?;
    for _ in 0..count {
        let key = r.bytes()?.to_vec();
        let body = r.bytes()?.to_vec();
        batch.receipts.push(Receipt { key, body });
    }
    batch.expire_receipts_before = match r.byte()? {
        0 => None,
        1 => Some(Timestamp(r.u64_le()?)),
        other => return Err(r.error(format!("expiry flag {other}"))),
    };
    if !r.wire.is_at_end() {
        return Err(r.error(format!(
            "{} bytes after the batch",
            bytes.len() - r.wire.pos()
        )));
    }
    Ok(batch)
}

fn batch_size_hint(batch: &WriteBatch) -> usize {
    let documents: usize = batch
        .documents
        .iter()
        .map(|d| 32 + d.body.as_ref().map_or(0, Vec::len))
        .sum();
    documents + batch.indexes.len() * 48
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    wire::write_varint(n, out);
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    wire::write_varint(n as u64, out);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    wire::write_bytes(bytes, out);
}

fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
    }
}

/// [`wire::Reader`] with this codec's errors and its few composite reads.
struct Reader<'a> {
    wire: wire::Reader<'a>,
}

fn wire_error(e: wire::WireError) -> StorageError {
    corrupted(e.at, e.what)
}

fn corrupted(at: usize, detail: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupted {
        namespace: String::new(),
        detail: format!("journaled batch at byte {at}: {detail}"),
    }
}

impl<'a> Reader<'a> {
    fn error(&self, detail: String) -> StorageError {
        corrupted(self.wire.pos(), detail)
    }

    fn byte(&mut self) -> Result<u8, StorageError> {
        self.wire.byte().map_err(wire_error)
    }

    fn u64_le(&mut self) -> Result<u64, StorageError> {
        self.wire.u64_le().map_err(wire_error)
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        self.wire.varint().map_err(wire_error)
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        let n = self.u64()?;
        u32::try_from(n).map_err(|_| self.error(format!("{n} does not fit 32 bits")))
    }

    /// A count of items, each at least `min_item_bytes` long.
    fn len(&mut self, min_item_bytes: usize) -> Result<usize, StorageError> {
        self.wire.count(min_item_bytes).map_err(wire_error)
    }

    fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        self.wire.bytes().map_err(wire_error)
    }

    fn optional(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?.to_vec())),
            other => Err(self.error(format!("presence flag {other}"))),
        }
    }

    fn id(&mut self) -> Result<nimbus_types::DocumentId, StorageError> {
        let bytes = self.wire.take(20).map_err(wire_error)?;
        decode_document_id(bytes).ok_or_else(|| self.error("document ID".into()))
    }
}

#[cfg(test)]
mod tests {
    use nimbus_types::DocumentId;

    use super::*;

    fn id(n: u8) -> DocumentId {
        DocumentId {
            table: TableNumber(10_000 + u32::from(n)),
            internal: [n; 16],
        }
    }

    fn sample() -> WriteBatch {
        WriteBatch {
            ts: Timestamp(u64::MAX - 3),
            documents: vec![
                DocumentWrite {
                    id: id(1),
                    table: TableNumber(10_001),
                    body: Some(br#"{"a":1}"#.to_vec()),
                },
                DocumentWrite {
                    id: id(2),
                    table: TableNumber(u32::MAX),
                    body: None,
                },
                DocumentWrite {
                    id: id(3),
                    table: TableNumber(0),
                    body: Some(Vec::new()),
                },
            ],
            indexes: vec![
                IndexWrite::Insert {
                    index: IndexNumber(7),
                    key: vec![0, 255, 1],
                    id: id(1),
                },
                IndexWrite::Delete {
                    index: IndexNumber(u32::MAX),
                    key: Vec::new(),
                },
                IndexWrite::DropIndex {
                    index: IndexNumber(0),
                },
                IndexWrite::DropIndexChunk {
                    index: IndexNumber(3),
                    max_entries: 4096,
                },
            ],
            globals: vec![
                ("catalog".into(), Some(vec![1, 2, 3])),
                ("gone".into(), None),
                ("é".into(), Some(Vec::new())),
            ],
            receipts: vec![Receipt {
                key: b"session|1".to_vec(),
                body: b"{}".to_vec(),
            }],
            expire_receipts_before: Some(Timestamp(5)),
        }
    }

    #[test]
    fn batches_round_trip() {
        for batch in [sample(), WriteBatch::default()] {
            let bytes = encode_batch(&batch);
            assert_eq!(decode_batch(&bytes).ok(), Some(batch));
        }
    }

    #[test]
    fn damaged_bytes_are_refused_without_panicking() {
        let bytes = encode_batch(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_batch(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err());
        // Any byte changed decodes to an error or to some batch, never a panic.
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let _ = decode_batch(&damaged);
            }
        }
        // A huge count is refused before anything is reserved.
        let mut huge = vec![VERSION];
        huge.extend_from_slice(&1u64.to_le_bytes());
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode_batch(&huge).is_err());
    }
}
