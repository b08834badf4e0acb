//! The protobuf wire format, just enough to walk an ONNX `ModelProto` and append fields to it.
//!
//! Fields are read as borrowed byte ranges, so a model is parsed without copying its weights, and a
//! message is rewritten by copying its fields verbatim and appending new ones (repeated fields keep
//! their order; protobuf parsers accept fields in any order).
use std::fmt;

/// One field's value, borrowed from the message (fixed-width values are skipped: ONNX's
/// structure never needs them).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

/// What is wrong with a malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) type WireResult<T> = std::result::Result<T, WireError>;

/// A field of a message: its number, value, and the exact bytes it occupies (tag included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    pub raw: &'a [u8],
}

impl<'a> Field<'a> {
    pub fn bytes(&self) -> WireResult<&'a [u8]> {
        match self.value {
            Value::Bytes(b) => Ok(b),
            _ => Err(WireError(format!(
                "field {} is not length-delimited",
                self.number
            ))),
        }
    }

    pub fn string(&self) -> WireResult<&'a str> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| WireError(format!("field {} is not UTF-8", self.number)))
    }

    pub fn varint(&self) -> WireResult<u64> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(WireError(format!("field {} is not a varint", self.number))),
        }
    }
}

/// Iterates over the fields of one message.
pub(crate) struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

pub(crate) fn fields(data: &[u8]) -> Fields<'_> {
    Fields { data, pos: 0 }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> WireResult<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .data
                .get(self.pos)
                .ok_or_else(|| WireError("message ends inside a varint".into()))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, len: usize) -> WireResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| WireError("field runs past the end of its message".into()))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn field(&mut self) -> WireResult<Field<'a>> {
        let start = self.pos;
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| WireError(format!("invalid field number in tag {tag}")))?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| WireError("field length overflows".into()))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            other => {
                return Err(WireError(format!(
                    "unsupported wire type {other} (field {number})"
                )))
            }
        };
        Ok(Field {
            number,
            value,
            raw: &self.data[start..self.pos],
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = WireResult<Field<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.data.len() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // Stop after the first error: the rest of the message cannot be framed.
            self.pos = self.data.len();
        }
        Some(field)
    }
}

/// Reads the int64s of a repeated field that may be packed (one length-delimited run) or not.
pub(crate) fn push_int64s(field: &Field<'_>, out: &mut Vec<i64>) -> WireResult<()> {
    match field.value {
        // Two's complement: negative int64s are encoded as 10-byte varints.
        Value::Varint(v) => out.push(v as i64),
        Value::Bytes(b) => {
            let mut packed = Fields { data: b, pos: 0 };
            while packed.pos < b.len() {
                out.push(packed.varint()? as i64);
            }
        }
        _ => {
            return Err(WireError(format!(
                "field {} is not an int64 list",
                field.number
            )))
        }
    }
    Ok(())
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn put_varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    put_varint(out, u64::from(number) << 3);
    put_varint(out, value);
}

pub(crate) fn put_bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let mut msg = Vec::new();
        put_varint_field(&mut msg, 1, 300);
        put_bytes_field(&mut msg, 2, b"abc");
        put_varint_field(&mut msg, 3, (-5i64) as u64);
        let parsed: Vec<Field<'_>> = fields(&msg).collect::<WireResult<_>>().expect("valid");
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].varint(), Ok(300));
        assert_eq!(parsed[1].string(), Ok("abc"));
        let mut ints = Vec::new();
        push_int64s(&parsed[2], &mut ints).expect("int");
        assert_eq!(ints, [-5]);
        let raw: Vec<u8> = parsed.iter().flat_map(|f| f.raw.iter().copied()).collect();
        assert_eq!(raw, msg, "raw spans cover the message exactly");
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let mut msg = Vec::new();
        put_bytes_field(&mut msg, 2, b"abcdef");
        for cut in 0..msg.len() {
            let result: WireResult<Vec<_>> = fields(&msg[..cut]).collect();
            assert!(cut == 0 || result.is_err(), "cut at {cut} must fail");
        }
        assert!(fields(&[0x80; 11]).next().is_some_and(|f| f.is_err()));
        assert!(
            fields(&[0x03]).next().is_some_and(|f| f.is_err()),
            "group wire type"
        );
    }
}
