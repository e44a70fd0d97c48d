//! The pieces of Nimbus's compact binary encodings (resident documents in the engine,
//! journaled batches in storage): LEB128 integers, length-prefixed byte strings, and a
//! reader that checks every length against the bytes left, so corrupt input is an error
//! naming its offset, never a panic or an allocation sized by a corrupt count.

/// Appends `n` as LEB128 (at most 10 bytes).
pub fn write_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends the length of `bytes` as LEB128, then the bytes.
pub fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    write_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Bytes that are not what the reader was asked for: where, and what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    pub at: usize,
    pub what: &'static str,
}

/// Reads an encoding front to back.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// The offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn is_at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub fn error(&self, what: &'static str) -> WireError {
        WireError { at: self.pos, what }
    }

    pub fn byte(&mut self) -> Result<u8, WireError> {
        let byte = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.error("truncated"))?;
        self.pos += 1;
        Ok(byte)
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error("a length runs past the end"))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    /// Eight bytes as a little-endian `u64`.
    pub fn u64_le(&mut self) -> Result<u64, WireError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.error("varint overflows 64 bits"));
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    /// A count of items each at least `min_item_bytes` long: never more than the bytes left
    /// could hold, so a corrupt count never sizes an allocation.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, WireError> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.pos) / min_item_bytes.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(self.error("a count exceeds the bytes left")),
        }
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.count(1)?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_byte_strings_round_trip_and_refuse_damage() {
        let values = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        let mut out = Vec::new();
        for v in values {
            write_varint(v, &mut out);
        }
        write_bytes(b"abc", &mut out);
        out.extend_from_slice(&7u64.to_le_bytes());
        let mut r = Reader::new(&out);
        for v in values {
            assert_eq!(r.varint(), Ok(v));
        }
        assert_eq!(r.bytes(), Ok(&b"abc"[..]));
        assert_eq!(r.u64_le(), Ok(7));
        assert!(r.is_at_end());
        assert_eq!(r.byte().map_err(|e| e.what), Err("truncated"));

        // Eleven continuation bytes, or a tenth byte past 64 bits.
        let long = [0x80u8; 11];
        assert_eq!(
            Reader::new(&long).varint().map_err(|e| e.what),
            Err("varint longer than 10 bytes")
        );
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            Reader::new(&over).varint().map_err(|e| e.what),
            Err("varint overflows 64 bits")
        );
        // A count past what is left, a length past the end.
        let mut counted = Vec::new();
        write_varint(5, &mut counted);
        counted.extend_from_slice(&[0; 9]);
        assert_eq!(
            Reader::new(&counted).count(2).map_err(|e| (e.at, e.what)),
            Err((1, "a count exceeds the bytes left"))
        );
        assert_eq!(Reader::new(&counted).count(1), Ok(5));
        assert_eq!(
            Reader::new(&[1, 2]).take(3).map_err(|e| e.what),
            Err("a length runs past the end")
        );
    }
}
