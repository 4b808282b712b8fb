//! Primitive MQTT data types: integers, variable byte integers, strings, binary data.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// The largest value a variable byte integer can carry (four bytes).
pub const MAX_VARINT: u32 = 268_435_455;

/// Reads fields from the body of one packet whose length is already known,
/// so that running out of bytes is a malformed packet, never a short read.
pub struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub fn new(bytes: Bytes) -> Self {
        Reader { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.bytes.is_empty() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.bytes.len() < 2 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.bytes.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.get_u32())
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for shift in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * shift);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVarInt)
    }

    pub fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.split_to(len))
    }

    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        utf8_string(&raw)
    }

    /// A string shared from the start: a PUBLISH topic goes on to every subscriber, so it is
    /// allocated once, here.
    pub fn shared_string(&mut self) -> Result<std::sync::Arc<str>, DecodeError> {
        let raw = self.binary()?;
        Ok(std::sync::Arc::from(checked_utf8(&raw)?))
    }

    /// The rest of the packet, used for PUBLISH payloads.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    /// A sub-reader over the next `len` bytes (a property block).
    pub fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(len)?))
    }
}

/// Validates an MQTT UTF-8 string: well-formed and free of U+0000.
pub fn utf8_string(raw: &[u8]) -> Result<String, DecodeError> {
    checked_utf8(raw).map(str::to_owned)
}

/// `raw` as an MQTT UTF-8 string: valid UTF-8 without U+0000.
fn checked_utf8(raw: &[u8]) -> Result<&str, DecodeError> {
    let text = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
    if text.contains('\0') {
        return Err(DecodeError::InvalidUtf8);
    }
    Ok(text)
}

pub fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint(buf: &mut BytesMut, mut value: u32) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

pub fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    // Callers bound lengths to u16 before encoding (EncodeError::FieldTooLong).
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

pub fn put_string(buf: &mut BytesMut, text: &str) {
    put_binary(buf, text.as_bytes());
}
