//! PackStream, the value encoding of Bolt: just the subset that HELLO, LOGON, ROUTE, RUN and
//! PULL and their replies use (null, booleans, integers, floats, strings, bytes, lists, maps
//! and structures). Hand-written because no maintained Rust crate can send ROUTE over
//! Bolt 5.x (docs/routing.md, "Bolt client"); kept small and separate from the IO in `bolt`.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    Struct { tag: u8, fields: Vec<Value> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackStreamError {
    #[error("the message ended in the middle of a value (a truncated or corrupt Bolt message)")]
    Truncated,
    #[error("unknown PackStream marker 0x{0:02X} (not a Bolt server, or an unsupported type)")]
    UnknownMarker(u8),
    #[error("a PackStream map key is not a string")]
    NonStringKey,
    #[error("a PackStream string is not valid UTF-8")]
    InvalidUtf8,
    #[error("a value is too large to encode ({0} items or bytes)")]
    TooLarge(usize),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    #[error("a PackStream message holds more than {0} values (far more than any reply Memgraph sends to these queries); a broken or hostile server?")]
    TooManyValues(usize),
}

impl Value {
    pub fn map<I, K>(entries: I) -> Self
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(text: impl Into<String>) -> Self {
        Value::String(text.into())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// `map[key]`, or None when this is not a map or has no such key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map().and_then(|m| m.get(key))
    }

    /// A short human form for tables and messages (strings unquoted).
    pub fn display(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bytes(b) => format!("<{} bytes>", b.len()),
            Value::String(s) => s.clone(),
            Value::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(Value::display)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Map(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{k}: {}", v.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Struct { tag, fields } => format!(
                "Struct(0x{tag:02X}, {})",
                Value::List(fields.clone()).display()
            ),
        }
    }
}

fn size_header(
    out: &mut Vec<u8>,
    len: usize,
    tiny: Option<u8>,
    markers: [u8; 3],
) -> Result<(), PackStreamError> {
    match (tiny, len) {
        (Some(base), 0..=15) => out.push(base | len as u8),
        (_, 0..=0xFF) => out.extend([markers[0], len as u8]),
        (_, 0x100..=0xFFFF) => {
            out.push(markers[1]);
            out.extend((len as u16).to_be_bytes());
        }
        (_, _) if len <= u32::MAX as usize => {
            out.push(markers[2]);
            out.extend((len as u32).to_be_bytes());
        }
        _ => return Err(PackStreamError::TooLarge(len)),
    }
    Ok(())
}

pub fn encode(value: &Value, out: &mut Vec<u8>) -> Result<(), PackStreamError> {
    match value {
        Value::Null => out.push(0xC0),
        Value::Bool(false) => out.push(0xC2),
        Value::Bool(true) => out.push(0xC3),
        Value::Int(n) => {
            let n = *n;
            if (-16..=127).contains(&n) {
                out.push(n as i8 as u8);
            } else if i8::try_from(n).is_ok() {
                out.extend([0xC8, n as i8 as u8]);
            } else if let Ok(v) = i16::try_from(n) {
                out.push(0xC9);
                out.extend(v.to_be_bytes());
            } else if let Ok(v) = i32::try_from(n) {
                out.push(0xCA);
                out.extend(v.to_be_bytes());
            } else {
                out.push(0xCB);
                out.extend(n.to_be_bytes());
            }
        }
        Value::Float(f) => {
            out.push(0xC1);
            out.extend(f.to_be_bytes());
        }
        Value::Bytes(b) => {
            size_header(out, b.len(), None, [0xCC, 0xCD, 0xCE])?;
            out.extend(b);
        }
        Value::String(s) => {
            size_header(out, s.len(), Some(0x80), [0xD0, 0xD1, 0xD2])?;
            out.extend(s.as_bytes());
        }
        Value::List(items) => {
            size_header(out, items.len(), Some(0x90), [0xD4, 0xD5, 0xD6])?;
            for item in items {
                encode(item, out)?;
            }
        }
        Value::Map(m) => {
            size_header(out, m.len(), Some(0xA0), [0xD8, 0xD9, 0xDA])?;
            for (k, v) in m {
                encode(&Value::String(k.clone()), out)?;
                encode(v, out)?;
            }
        }
        Value::Struct { tag, fields } => {
            if fields.len() > 15 {
                return Err(PackStreamError::TooLarge(fields.len()));
            }
            out.push(0xB0 | fields.len() as u8);
            out.push(*tag);
            for field in fields {
                encode(field, out)?;
            }
        }
    }
    Ok(())
}

/// Values one message may decode to at most. Each costs ~40 bytes however small on the
/// wire (a 16 MiB message of tiny integers would be ~0.5 GiB of `Value`s); SHOW INSTANCES of
/// a hundred instances is a few thousand.
pub const MAX_VALUES: usize = 100_000;

/// Decodes exactly one value that fills `bytes`, of at most [`MAX_VALUES`] values.
pub fn decode(bytes: &[u8]) -> Result<Value, PackStreamError> {
    let mut reader = Reader {
        bytes,
        pos: 0,
        values_left: MAX_VALUES,
    };
    let value = reader.value(0)?;
    match bytes.len() - reader.pos {
        0 => Ok(value),
        rest => Err(PackStreamError::Trailing(rest)),
    }
}

/// Deeper nesting than any Bolt reply has is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

struct Reader<'b> {
    bytes: &'b [u8],
    pos: usize,
    values_left: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], PackStreamError> {
        let end = self.pos.checked_add(n).ok_or(PackStreamError::Truncated)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(PackStreamError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, PackStreamError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], PackStreamError> {
        let mut buf = [0u8; N];
        buf.copy_from_slice(self.take(N)?);
        Ok(buf)
    }

    fn len(&mut self, width: u8) -> Result<usize, PackStreamError> {
        Ok(match width {
            1 => self.u8()? as usize,
            2 => u16::from_be_bytes(self.be()?) as usize,
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    fn string(&mut self, len: usize) -> Result<String, PackStreamError> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| PackStreamError::InvalidUtf8)
    }

    fn items(&mut self, len: usize, depth: usize) -> Result<Vec<Value>, PackStreamError> {
        // Every item takes at least one byte: a length beyond the rest is corrupt.
        if len > self.bytes.len() - self.pos {
            return Err(PackStreamError::Truncated);
        }
        (0..len).map(|_| self.value(depth + 1)).collect()
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<Value, PackStreamError> {
        if len > self.bytes.len() - self.pos {
            return Err(PackStreamError::Truncated);
        }
        let mut m = BTreeMap::new();
        for _ in 0..len {
            let Value::String(key) = self.value(depth + 1)? else {
                return Err(PackStreamError::NonStringKey);
            };
            let value = self.value(depth + 1)?;
            m.insert(key, value);
        }
        Ok(Value::Map(m))
    }

    fn value(&mut self, depth: usize) -> Result<Value, PackStreamError> {
        if depth > MAX_DEPTH {
            return Err(PackStreamError::TooLarge(depth));
        }
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or(PackStreamError::TooManyValues(MAX_VALUES))?;
        let marker = self.u8()?;
        Ok(match marker {
            0x00..=0x7F => Value::Int(marker as i64),
            0xF0..=0xFF => Value::Int(marker as i8 as i64),
            0x80..=0x8F => Value::String(self.string((marker & 0x0F) as usize)?),
            0x90..=0x9F => Value::List(self.items((marker & 0x0F) as usize, depth)?),
            0xA0..=0xAF => self.map((marker & 0x0F) as usize, depth)?,
            0xB0..=0xBF => {
                let tag = self.u8()?;
                Value::Struct {
                    tag,
                    fields: self.items((marker & 0x0F) as usize, depth)?,
                }
            }
            0xC0 => Value::Null,
            0xC1 => Value::Float(f64::from_be_bytes(self.be()?)),
            0xC2 => Value::Bool(false),
            0xC3 => Value::Bool(true),
            0xC8 => Value::Int(i8::from_be_bytes(self.be()?) as i64),
            0xC9 => Value::Int(i16::from_be_bytes(self.be()?) as i64),
            0xCA => Value::Int(i32::from_be_bytes(self.be()?) as i64),
            0xCB => Value::Int(i64::from_be_bytes(self.be()?)),
            0xCC..=0xCE => {
                let len = self.len(1 << (marker - 0xCC))?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            0xD0..=0xD2 => {
                let len = self.len(1 << (marker - 0xD0))?;
                Value::String(self.string(len)?)
            }
            0xD4..=0xD6 => {
                let len = self.len(1 << (marker - 0xD4))?;
                Value::List(self.items(len, depth)?)
            }
            0xD8..=0xDA => {
                let len = self.len(1 << (marker - 0xD8))?;
                self.map(len, depth)?
            }
            other => return Err(PackStreamError::UnknownMarker(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, &mut out).unwrap();
        out
    }

    #[test]
    fn integers_use_the_smallest_marker_the_spec_gives() {
        // Examples from the PackStream specification.
        assert_eq!(bytes(&Value::Int(1)), [0x01]);
        assert_eq!(bytes(&Value::Int(-16)), [0xF0]);
        assert_eq!(bytes(&Value::Int(-17)), [0xC8, 0xEF]);
        assert_eq!(bytes(&Value::Int(128)), [0xC9, 0x00, 0x80]);
        assert_eq!(bytes(&Value::Int(-129)), [0xC9, 0xFF, 0x7F]);
        assert_eq!(bytes(&Value::Int(32768)), [0xCA, 0x00, 0x00, 0x80, 0x00]);
        assert_eq!(
            bytes(&Value::Int(i64::MIN)),
            [0xCB, 0x80, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn strings_lists_maps_and_structs_match_the_spec() {
        assert_eq!(bytes(&Value::str("A")), [0x81, 0x41]);
        assert_eq!(bytes(&Value::str("")), [0x80]);
        let long = "x".repeat(16);
        assert_eq!(bytes(&Value::str(long.clone()))[..2], [0xD0, 16]);
        assert_eq!(
            bytes(&Value::List(vec![Value::Int(1), Value::Int(2)])),
            [0x92, 0x01, 0x02]
        );
        assert_eq!(
            bytes(&Value::map([("a", Value::Int(1))])),
            [0xA1, 0x81, 0x61, 0x01]
        );
        // HELLO with an empty map: B1 01 A0.
        assert_eq!(
            bytes(&Value::Struct {
                tag: 0x01,
                fields: vec![Value::map(Vec::<(String, Value)>::new())]
            }),
            [0xB1, 0x01, 0xA0]
        );
    }

    #[test]
    fn every_value_round_trips() {
        let value = Value::map([
            ("null", Value::Null),
            ("t", Value::Bool(true)),
            ("f", Value::Bool(false)),
            ("float", Value::Float(1.5)),
            ("big", Value::Int(1 << 40)),
            ("neg", Value::Int(-70000)),
            ("bytes", Value::Bytes(vec![1, 2, 3])),
            ("long", Value::str("y".repeat(300))),
            ("list", Value::List((0..20).map(Value::Int).collect())),
            (
                "struct",
                Value::Struct {
                    tag: 0x70,
                    fields: vec![Value::str("x")],
                },
            ),
        ]);
        assert_eq!(decode(&bytes(&value)).unwrap(), value);
    }

    #[test]
    fn a_message_of_too_many_values_is_refused_before_it_is_built() {
        // A list header of 200,000 items followed by that many one-byte integers.
        let n = 2 * MAX_VALUES;
        let mut bytes = vec![0xD6];
        bytes.extend_from_slice(&(n as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(0x01, n));
        assert_eq!(
            decode(&bytes),
            Err(PackStreamError::TooManyValues(MAX_VALUES))
        );
        // Just under the budget (the list itself is one value) decodes.
        let n = MAX_VALUES - 1;
        let mut bytes = vec![0xD6];
        bytes.extend_from_slice(&(n as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(0x01, n));
        assert_eq!(decode(&bytes).unwrap().as_list().unwrap().len(), n);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(PackStreamError::Truncated));
        assert_eq!(decode(&[0x85, b'a']), Err(PackStreamError::Truncated));
        assert_eq!(decode(&[0xC7]), Err(PackStreamError::UnknownMarker(0xC7)));
        assert_eq!(
            decode(&[0xA1, 0x01, 0x01]),
            Err(PackStreamError::NonStringKey)
        );
        assert_eq!(decode(&[0x81, 0xFF]), Err(PackStreamError::InvalidUtf8));
        assert_eq!(decode(&[0x01, 0x02]), Err(PackStreamError::Trailing(1)));
        // A huge declared length with no items behind it.
        assert_eq!(
            decode(&[0xD6, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(PackStreamError::Truncated)
        );
        // Deep nesting is refused.
        let deep = vec![0x91; 200];
        assert!(decode(&deep).is_err());
        // Every prefix of a valid message fails cleanly.
        let full = bytes(&Value::map([("k", Value::List(vec![Value::str("v"); 3]))]));
        for end in 0..full.len() {
            assert!(decode(&full[..end]).is_err());
        }
    }
}
