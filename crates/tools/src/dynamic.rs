//! Decoding canonical snapshot entries without the Rust types, driven by the
//! recorded type names: what offline tools (`flowstate state dump`) use to
//! read a checkpoint or savepoint of a job they cannot link.
//!
//! Owns: parsing recorded type names (declared names of format version 2,
//! `std::any::type_name` output of version 1) into a [`Shape`] (primitives,
//! `String`, `Vec`, `VecDeque`, sets, `Option`, `Result`, `Box`, maps, fixed
//! arrays and tuples of them), decoding the durable encoding of entries
//! ([`flowstate_state::codec`], whose serde `Deserializer` needs the Rust types) by its
//! rules into a [`Value`], and the entry layout of each state
//! kind ([`EntryLayout`]). A user struct cannot be decoded: its field layout is
//! not recorded, and the error says so, naming the type.
//!
//! Must not touch: files, storage or the typed tables. It reads payload bytes
//! handed to it and never allocates more than the bytes it is given can hold
//! (lengths are checked against the remaining bytes, nesting is bounded).
//!
//! The encoding's rules as read here (see [`flowstate_state::codec`]): `bool` one byte 0/1;
//! integers fixed width (`usize`/`isize` as 8 bytes, 128-bit ones as 16);
//! floats their IEEE bits; `char` its UTF-8 bytes (no length); strings and
//! sequences (`Vec`, sets, slices) a `u64` length then the bytes or elements;
//! maps a `u64` count then key, value pairs; `Option` a `u8` tag (0 none, 1
//! some) then the value; enums (`Result`) a `u32` variant index then the
//! payload; tuples, fixed arrays and `()` their elements one after another
//! with no length.

use std::borrow::Cow;
use std::fmt;

use flowstate_state::descriptor::StateKind;

/// Deepest nesting of types accepted (`Vec<Vec<...>>`).
pub const MAX_TYPE_DEPTH: usize = 32;
/// Fixed arrays up to this length are flattened like tuples (one CSV column
/// per element); longer ones are treated as sequences.
pub const MAX_FLATTENED_ARRAY: usize = 16;
/// A sequence of zero-sized elements (`Vec<()>`) longer than this is refused
/// (its length cannot be checked against the bytes).
const MAX_ZERO_SIZED_ELEMENTS: u64 = 1 << 16;

const SUPPORTED: &str = "only primitives (bool, integers, floats, char), String, Vec, Option, Result, Box, maps, sets, arrays and tuples of them are supported";

/// Why a type cannot be decoded, or bytes do not decode as their type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DynamicError {
    /// A type (or a part of it) this module cannot decode without the Rust type.
    #[error("cannot decode values of type `{type_name}`: {SUPPORTED}")]
    UnsupportedType { type_name: String },
    /// The type name does not parse.
    #[error("cannot read the type name `{type_name}`: {reason}")]
    InvalidTypeName { type_name: String, reason: String },
    /// The snapshot does not record the key type (metadata written before the
    /// key type was recorded).
    #[error(
        "the snapshot does not record the key type (it was written by an older flowstate): keys cannot be decoded"
    )]
    UnknownKeyType,
    /// The bytes do not decode as the recorded type.
    #[error("cannot decode {what} as `{type_name}` at byte {offset}: {reason}")]
    Decode {
        what: &'static str,
        type_name: String,
        offset: usize,
        reason: String,
    },
}

/// The decodable structure of a type, resolved from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Unit,
    Bool,
    U8,
    U16,
    U32,
    U64,
    U128,
    I8,
    I16,
    I32,
    I64,
    I128,
    F32,
    F64,
    Char,
    String,
    /// `u64` length, then the elements (`Vec`, `VecDeque`, sets, long arrays
    /// are not: see `Array`).
    Seq(Box<Shape>),
    /// A fixed array: its elements with no length.
    Array(Box<Shape>, usize),
    Option(Box<Shape>),
    Result(Box<Shape>, Box<Shape>),
    Map(Box<Shape>, Box<Shape>),
    Tuple(Vec<Shape>),
}

impl Shape {
    /// Resolves a recorded type name: a declared name
    /// (`flowstate_state::StateType`, format version 2: `tuple<u64,string>`),
    /// a `std::any::type_name` string (format version 1: `(u64,
    /// alloc::string::String)`), or such a string behind the legacy prefix
    /// (`flowstate_state::state_type::LEGACY_PREFIX`).
    pub fn parse(type_name: &str) -> Result<Shape, DynamicError> {
        let trimmed = type_name.trim();
        let text = trimmed
            .strip_prefix(flowstate_state::state_type::LEGACY_PREFIX)
            .unwrap_or(trimmed);
        resolve(text, 0).map_err(|e| match e {
            // Name the whole type too when only a part of it is the problem.
            DynamicError::InvalidTypeName { reason, .. } => DynamicError::InvalidTypeName {
                type_name: type_name.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Least bytes one value of this shape takes.
    fn min_size(&self) -> usize {
        match self {
            Shape::Unit => 0,
            Shape::Bool | Shape::U8 | Shape::I8 | Shape::Char | Shape::Option(_) => 1,
            Shape::U16 | Shape::I16 => 2,
            Shape::U32 | Shape::I32 | Shape::F32 | Shape::Result(..) => 4,
            Shape::U64 | Shape::I64 | Shape::F64 => 8,
            Shape::String | Shape::Seq(_) | Shape::Map(..) => 8,
            Shape::U128 | Shape::I128 => 16,
            Shape::Array(element, n) => element.min_size().saturating_mul(*n),
            Shape::Tuple(elements) => elements.iter().map(Shape::min_size).sum(),
        }
    }

    /// The CSV column names of a value of this shape under `prefix`: tuples
    /// and short fixed arrays are flattened (`value.0`, `value.1`, nested
    /// `value.0.1`); everything else is one column. Matches [`Value::flatten`].
    pub fn columns(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.columns_into(prefix, &mut out);
        out
    }

    fn columns_into(&self, prefix: &str, out: &mut Vec<String>) {
        match self {
            Shape::Tuple(elements) if !elements.is_empty() => {
                for (i, element) in elements.iter().enumerate() {
                    element.columns_into(&format!("{prefix}.{i}"), out);
                }
            }
            Shape::Array(element, n) if *n > 0 && *n <= MAX_FLATTENED_ARRAY => {
                for i in 0..*n {
                    element.columns_into(&format!("{prefix}.{i}"), out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    /// Decodes one value at the start of `bytes`; returns it and the bytes used.
    pub fn decode(&self, bytes: &[u8]) -> Result<(Value, usize), DecodeFailure> {
        let mut reader = Reader { bytes, at: 0 };
        let value = reader.value(self, 0)?;
        Ok((value, reader.at))
    }
}

/// Where and why bytes did not decode (turned into [`DynamicError::Decode`]
/// by the caller, who knows what was decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

// ---------------------------------------------------------------------------
// Type names.

fn invalid(type_name: &str, reason: impl Into<String>) -> DynamicError {
    DynamicError::InvalidTypeName {
        type_name: type_name.to_owned(),
        reason: reason.into(),
    }
}

fn unsupported(type_name: &str) -> DynamicError {
    DynamicError::UnsupportedType {
        type_name: type_name.to_owned(),
    }
}

/// Splits `text` at the commas outside brackets (`()`, `<>`, `[]`); a `->`
/// is not a bracket. An empty last part (a trailing comma) is dropped.
pub fn split_top_level(text: &str) -> Result<Vec<&str>, DynamicError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' | b'<' | b'[' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b')' | b'>' | b']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| invalid(text, "unbalanced brackets"))?;
            }
            b',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(invalid(text, "unbalanced brackets"));
    }
    let last = text[start..].trim();
    if !last.is_empty() {
        parts.push(last);
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(invalid(text, "an empty element"));
    }
    Ok(parts)
}

/// The elements of a tuple type name: `(A, B, ..)` (`std::any::type_name`,
/// also behind the legacy prefix) or `tuple<A,B,..>` (a declared name);
/// `None` if `text` is not one tuple.
pub fn tuple_elements(text: &str) -> Result<Option<Vec<&str>>, DynamicError> {
    let text = text.trim();
    let text = text
        .strip_prefix(flowstate_state::state_type::LEGACY_PREFIX)
        .unwrap_or(text);
    if let Some(inner) = text.strip_prefix("tuple")
        && let Some(inner) = enclosed(inner, '<', '>')
    {
        return split_top_level(inner).map(Some);
    }
    match enclosed(text, '(', ')') {
        Some(inner) => split_top_level(inner).map(Some),
        None => Ok(None),
    }
}

/// `inner` if `text` is `open inner close` with `close` matching `open`.
fn enclosed(text: &str, open: char, close: char) -> Option<&str> {
    let inner = text.strip_prefix(open)?.strip_suffix(close)?;
    // The first bracket must close at the very end: `(a) -> (b)` is not enclosed.
    let mut depth = 1usize;
    let bytes = inner.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' | b'<' | b'[' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b')' | b'>' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    Some(inner)
}

/// The standard-library type a path names, if it is one this module knows:
/// the last segment, when the path is bare or starts in `std`, `core`,
/// `alloc` or `hashbrown`.
fn known_path(path: &str) -> Option<&str> {
    let mut segments = path.split("::");
    let first = segments.next()?;
    let last = path.rsplit("::").next()?;
    let bare = !path.contains("::");
    (bare || matches!(first, "std" | "core" | "alloc" | "hashbrown")).then_some(last)
}

fn resolve(text: &str, depth: usize) -> Result<Shape, DynamicError> {
    if depth > MAX_TYPE_DEPTH {
        return Err(invalid(
            text,
            format!("nested deeper than {MAX_TYPE_DEPTH} levels"),
        ));
    }
    let text = text.trim();
    let next = |t: &str| resolve(t, depth + 1);
    if let Some(inner) = enclosed(text, '(', ')') {
        let elements = split_top_level(inner)?;
        if elements.is_empty() {
            return Ok(Shape::Unit);
        }
        return Ok(Shape::Tuple(
            elements.into_iter().map(next).collect::<Result<_, _>>()?,
        ));
    }
    if let Some(inner) = enclosed(text, '[', ']') {
        let mut depth_here = 0usize;
        let mut split = None;
        for (i, b) in inner.bytes().enumerate() {
            match b {
                b'(' | b'<' | b'[' => depth_here += 1,
                b')' | b'>' | b']' => depth_here = depth_here.saturating_sub(1),
                b';' if depth_here == 0 => split = Some(i),
                _ => {}
            }
        }
        return match split {
            Some(i) => {
                let element = next(&inner[..i])?;
                let len: usize = inner[i + 1..]
                    .trim()
                    .parse()
                    .map_err(|_| invalid(text, "the array length is not a number"))?;
                Ok(Shape::Array(Box::new(element), len))
            }
            // A slice, reachable only behind `Box<[T]>`: serialised as a sequence.
            None => Ok(Shape::Seq(Box::new(next(inner)?))),
        };
    }
    if text.starts_with('&') || text.starts_with('*') || text.starts_with("dyn ") {
        return Err(unsupported(text));
    }
    let (path, args) = match text.find('<') {
        Some(open) => {
            let inner = text[open + 1..]
                .strip_suffix('>')
                .ok_or_else(|| invalid(text, "generic arguments do not end the name"))?;
            (&text[..open], split_top_level(inner)?)
        }
        None => (text, Vec::new()),
    };
    if path.is_empty() || path.contains(|c: char| c.is_whitespace() || "()[];,".contains(c)) {
        return Err(unsupported(text));
    }
    let Some(name) = known_path(path) else {
        return Err(unsupported(text));
    };
    let arg = |i: usize| -> Result<Shape, DynamicError> {
        match args.get(i) {
            Some(a) => next(a),
            None => Err(invalid(
                text,
                format!("`{name}` needs {} type arguments", i + 1),
            )),
        }
    };
    let shape = match (name, args.len()) {
        ("bool", 0) => Shape::Bool,
        ("u8", 0) => Shape::U8,
        ("u16", 0) => Shape::U16,
        ("u32", 0) => Shape::U32,
        ("u64" | "usize", 0) => Shape::U64,
        ("u128", 0) => Shape::U128,
        ("i8", 0) => Shape::I8,
        ("i16", 0) => Shape::I16,
        ("i32", 0) => Shape::I32,
        ("i64" | "isize", 0) => Shape::I64,
        ("i128", 0) => Shape::I128,
        ("f32", 0) => Shape::F32,
        ("f64", 0) => Shape::F64,
        ("char", 0) => Shape::Char,
        ("String", 0) => Shape::String,
        ("Vec" | "VecDeque" | "HashSet" | "BTreeSet" | "LinkedList" | "BinaryHeap", 1..=3) => {
            Shape::Seq(Box::new(arg(0)?))
        }
        ("Option", 1) => Shape::Option(Box::new(arg(0)?)),
        ("Result", 2) => Shape::Result(Box::new(arg(0)?), Box::new(arg(1)?)),
        ("Box", 1) => arg(0)?,
        ("HashMap" | "BTreeMap", 2..=4) => Shape::Map(Box::new(arg(0)?), Box::new(arg(1)?)),
        // Declared names (format version 2, `flowstate_state::StateType`).
        ("unit", 0) => Shape::Unit,
        ("string", 0) => Shape::String,
        ("list" | "set", 1) => Shape::Seq(Box::new(arg(0)?)),
        ("option", 1) => Shape::Option(Box::new(arg(0)?)),
        ("result", 2) => Shape::Result(Box::new(arg(0)?), Box::new(arg(1)?)),
        ("map", 2) => Shape::Map(Box::new(arg(0)?), Box::new(arg(1)?)),
        // A TTL'd value (`flowstate_state::TtlValue`): its last-access
        // timestamp (ms), then the value.
        ("ttl", 1) => Shape::Tuple(vec![Shape::I64, arg(0)?]),
        ("tuple", 1..) => Shape::Tuple((0..args.len()).map(arg).collect::<Result<_, _>>()?),
        ("array", 2) => {
            let len: usize = args[1]
                .parse()
                .map_err(|_| invalid(text, "the array length is not a number"))?;
            Shape::Array(Box::new(arg(0)?), len)
        }
        _ => return Err(unsupported(text)),
    };
    Ok(shape)
}

// ---------------------------------------------------------------------------
// Values.

/// A decoded value. Serialises (serde) like the Rust value would with
/// `serde_json`: unit and `None` as null, tuples and sequences as arrays,
/// `Result` as `{"Ok": ..}` / `{"Err": ..}`, maps as objects when every key is
/// a string and as arrays of `[key, value]` pairs otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Unit,
    Bool(bool),
    /// Every unsigned integer up to 64 bits.
    U64(u64),
    /// Every signed integer up to 64 bits.
    I64(i64),
    U128(u128),
    I128(i128),
    F32(f32),
    F64(f64),
    Char(char),
    String(String),
    Option(Option<Box<Value>>),
    Result(Result<Box<Value>, Box<Value>>),
    /// A sequence or a long fixed array.
    Seq(Vec<Value>),
    /// A tuple or a short fixed array (flattened into CSV columns).
    Tuple(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The CSV leaves of this value, in the order of [`Shape::columns`]:
    /// tuples (and short arrays) are flattened, everything else is one leaf.
    pub fn flatten<'a>(&'a self, out: &mut Vec<&'a Value>) {
        match self {
            Value::Tuple(elements) if !elements.is_empty() => {
                for element in elements {
                    element.flatten(out);
                }
            }
            other => out.push(other),
        }
    }

    /// The text of a scalar leaf as a CSV cell (unquoted): numbers, `true` /
    /// `false`, characters and strings as they are, unit and `None` empty,
    /// `Some(x)` as `x`. `None` (the Rust one) for composite values, which a
    /// caller renders as JSON text.
    pub fn scalar_text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Value::Unit | Value::Option(None) => Cow::Borrowed(""),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::U64(n) => Cow::Owned(n.to_string()),
            Value::I64(n) => Cow::Owned(n.to_string()),
            Value::U128(n) => Cow::Owned(n.to_string()),
            Value::I128(n) => Cow::Owned(n.to_string()),
            Value::F32(n) => Cow::Owned(n.to_string()),
            Value::F64(n) => Cow::Owned(n.to_string()),
            Value::Char(c) => Cow::Owned(c.to_string()),
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Option(Some(inner)) => return inner.scalar_text(),
            Value::Tuple(elements) if elements.is_empty() => Cow::Borrowed(""),
            Value::Result(_) | Value::Seq(_) | Value::Tuple(_) | Value::Map(_) => return None,
        })
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Unit | Value::Option(None) => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::U64(n) => serializer.serialize_u64(*n),
            Value::I64(n) => serializer.serialize_i64(*n),
            Value::U128(n) => serializer.serialize_u128(*n),
            Value::I128(n) => serializer.serialize_i128(*n),
            Value::F32(n) => serializer.serialize_f32(*n),
            Value::F64(n) => serializer.serialize_f64(*n),
            Value::Char(c) => serializer.serialize_char(*c),
            Value::String(s) => serializer.serialize_str(s),
            Value::Option(Some(inner)) => inner.serialize(serializer),
            Value::Result(result) => {
                let mut map = serializer.serialize_map(Some(1))?;
                match result {
                    Ok(v) => map.serialize_entry("Ok", v)?,
                    Err(e) => map.serialize_entry("Err", e)?,
                }
                map.end()
            }
            Value::Seq(elements) | Value::Tuple(elements) => {
                let mut seq = serializer.serialize_seq(Some(elements.len()))?;
                for element in elements {
                    seq.serialize_element(element)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                if entries.iter().all(|(k, _)| matches!(k, Value::String(_))) {
                    let mut map = serializer.serialize_map(Some(entries.len()))?;
                    for (k, v) in entries {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                } else {
                    let mut seq = serializer.serialize_seq(Some(entries.len()))?;
                    for (k, v) in entries {
                        seq.serialize_element(&(k, v))?;
                    }
                    seq.end()
                }
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn fail(&self, reason: impl Into<String>) -> DecodeFailure {
        DecodeFailure {
            offset: self.at,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeFailure> {
        let remaining = self.bytes.len() - self.at;
        if n > remaining {
            return Err(self.fail(format!(
                "{n} bytes needed, {remaining} left (truncated or wrong type?)"
            )));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeFailure> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, DecodeFailure> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length prefix, checked against what the remaining bytes can hold.
    fn length(&mut self, element_min: usize) -> Result<usize, DecodeFailure> {
        let at = self.at;
        let n = self.u64()?;
        let remaining = (self.bytes.len() - self.at) as u64;
        let limit = if element_min == 0 {
            MAX_ZERO_SIZED_ELEMENTS
        } else {
            remaining / element_min as u64
        };
        if n > limit {
            return Err(DecodeFailure {
                offset: at,
                reason: format!(
                    "a length of {n} cannot fit in the {remaining} bytes left (damaged or wrong type?)"
                ),
            });
        }
        usize::try_from(n).map_err(|_| self.fail("length too large"))
    }

    fn value(&mut self, shape: &Shape, depth: usize) -> Result<Value, DecodeFailure> {
        if depth > MAX_TYPE_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        Ok(match shape {
            Shape::Unit => Value::Unit,
            Shape::Bool => match self.take(1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => {
                    self.at -= 1;
                    return Err(self.fail(format!("{other} is not a bool (0 or 1)")));
                }
            },
            Shape::U8 => Value::U64(u64::from(self.take(1)?[0])),
            Shape::U16 => Value::U64(u64::from(u16::from_le_bytes(self.array()?))),
            Shape::U32 => Value::U64(u64::from(u32::from_le_bytes(self.array()?))),
            Shape::U64 => Value::U64(self.u64()?),
            Shape::U128 => Value::U128(u128::from_le_bytes(self.array()?)),
            Shape::I8 => Value::I64(i64::from(i8::from_le_bytes(self.array()?))),
            Shape::I16 => Value::I64(i64::from(i16::from_le_bytes(self.array()?))),
            Shape::I32 => Value::I64(i64::from(i32::from_le_bytes(self.array()?))),
            Shape::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            Shape::I128 => Value::I128(i128::from_le_bytes(self.array()?)),
            Shape::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            Shape::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            Shape::Char => {
                let first = *self
                    .bytes
                    .get(self.at)
                    .ok_or_else(|| self.fail("a char needed, no bytes left"))?;
                let width = match first {
                    0x00..=0x7f => 1,
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf7 => 4,
                    _ => return Err(self.fail(format!("{first:#04x} does not start a char"))),
                };
                let at = self.at;
                let bytes = self.take(width)?;
                let c = std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.chars().next())
                    .ok_or_else(|| DecodeFailure {
                        offset: at,
                        reason: "not a UTF-8 char".into(),
                    })?;
                Value::Char(c)
            }
            Shape::String => {
                let n = self.length(1)?;
                let at = self.at;
                let bytes = self.take(n)?;
                let s = std::str::from_utf8(bytes).map_err(|e| DecodeFailure {
                    offset: at,
                    reason: format!("string is not UTF-8: {e}"),
                })?;
                Value::String(s.to_owned())
            }
            Shape::Seq(element) => {
                let n = self.length(element.min_size())?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.value(element, depth + 1)?);
                }
                Value::Seq(out)
            }
            Shape::Array(element, n) => {
                let needed = element.min_size().saturating_mul(*n);
                if needed > self.bytes.len() - self.at
                    || (element.min_size() == 0 && *n as u64 > MAX_ZERO_SIZED_ELEMENTS)
                {
                    return Err(self.fail(format!(
                        "an array of {n} elements cannot fit in the {} bytes left",
                        self.bytes.len() - self.at
                    )));
                }
                let mut out = Vec::with_capacity((*n).min(self.bytes.len() - self.at + 1));
                for _ in 0..*n {
                    out.push(self.value(element, depth + 1)?);
                }
                if *n > MAX_FLATTENED_ARRAY {
                    Value::Seq(out)
                } else {
                    Value::Tuple(out)
                }
            }
            Shape::Option(inner) => match self.take(1)?[0] {
                0 => Value::Option(None),
                1 => Value::Option(Some(Box::new(self.value(inner, depth + 1)?))),
                other => {
                    self.at -= 1;
                    return Err(self.fail(format!("{other} is not an option tag (0 or 1)")));
                }
            },
            Shape::Result(ok, err) => {
                let at = self.at;
                match u32::from_le_bytes(self.array()?) {
                    0 => Value::Result(Ok(Box::new(self.value(ok, depth + 1)?))),
                    1 => Value::Result(Err(Box::new(self.value(err, depth + 1)?))),
                    other => {
                        return Err(DecodeFailure {
                            offset: at,
                            reason: format!("{other} is not a Result variant (0 or 1)"),
                        });
                    }
                }
            }
            Shape::Map(key, value) => {
                let n = self.length(key.min_size() + value.min_size())?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.value(key, depth + 1)?;
                    let v = self.value(value, depth + 1)?;
                    out.push((k, v));
                }
                Value::Map(out)
            }
            Shape::Tuple(elements) => Value::Tuple(
                elements
                    .iter()
                    .map(|e| self.value(e, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

// ---------------------------------------------------------------------------
// Entries of a state kind.

/// How the entries of one state are laid out in a key-group payload
/// (`u64 entries`, then per entry `enc(K)` followed by):
///
/// | kind | recorded types | after the key |
/// |---|---|---|
/// | value, reducing | `V` | `enc(V)` |
/// | aggregating | `(I, Acc, O)` | `enc(Acc)` |
/// | list | `V` | `u64 n`, then `n` × `enc(V)` (a `Vec<V>`) |
/// | map | `(UK, UV)` | `u64 n`, then `n` × `enc(UK) enc(UV)` (a map) |
#[derive(Debug, Clone)]
pub struct EntryLayout {
    pub kind: StateKind,
    pub key_type: String,
    /// The decoded type of a row's value (`V`, `Acc` or `UV`), as recorded.
    pub value_type: String,
    /// The map's user key type (`UK`), for map state.
    pub user_key_type: Option<String>,
    key: Shape,
    user_key: Option<Shape>,
    value: Shape,
}

/// One row of a dump: a key's value; for list state one element (with its
/// index in the list); for map state one map entry (with its user key).
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub key: &'a Value,
    /// The element's position, for list state.
    pub index: Option<u64>,
    /// The map entry's key, for map state.
    pub user_key: Option<Value>,
    pub value: Value,
}

impl EntryLayout {
    /// The layout of a state of `kind` with recorded `types`, keyed by
    /// `key_type` (empty if the snapshot did not record it).
    pub fn new(kind: StateKind, key_type: &str, types: &str) -> Result<Self, DynamicError> {
        if key_type.trim().is_empty() {
            return Err(DynamicError::UnknownKeyType);
        }
        let key = Shape::parse(key_type)?;
        let element = |i: usize, arity: usize| -> Result<String, DynamicError> {
            match tuple_elements(types)? {
                Some(elements) if elements.len() == arity => Ok(elements[i].to_owned()),
                _ => Err(DynamicError::InvalidTypeName {
                    type_name: types.to_owned(),
                    reason: format!("{kind} state records a tuple of {arity} types"),
                }),
            }
        };
        let (user_key_type, value_type) = match kind {
            StateKind::Value | StateKind::Reducing | StateKind::List => (None, types.to_owned()),
            StateKind::Aggregating => (None, element(1, 3)?),
            StateKind::Map => (Some(element(0, 2)?), element(1, 2)?),
        };
        let user_key = user_key_type.as_deref().map(Shape::parse).transpose()?;
        let value = Shape::parse(&value_type)?;
        Ok(Self {
            kind,
            key_type: key_type.to_owned(),
            value_type,
            user_key_type,
            key,
            user_key,
            value,
        })
    }

    /// CSV header: `key` columns, then `index` (list) or `user_key` columns
    /// (map), then `value` columns; tuples flattened (see [`Shape::columns`]).
    pub fn columns(&self) -> Vec<String> {
        let mut out = self.key.columns("key");
        match self.kind {
            StateKind::List => out.push("index".into()),
            StateKind::Map => {
                if let Some(user_key) = &self.user_key {
                    out.extend(user_key.columns("user_key"));
                }
            }
            _ => {}
        }
        out.extend(self.value.columns("value"));
        out
    }

    fn decode_error(
        &self,
        what: &'static str,
        type_name: &str,
        base: usize,
        failure: DecodeFailure,
    ) -> DynamicError {
        DynamicError::Decode {
            what,
            type_name: type_name.to_owned(),
            offset: base + failure.offset,
            reason: failure.reason,
        }
    }

    /// Decodes every entry of `payload` (one state's payload in one key group)
    /// and calls `f` per row; returns the number of entries (keys).
    pub fn for_each_row<E: From<DynamicError>>(
        &self,
        payload: &[u8],
        mut f: impl FnMut(Row<'_>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut reader = Reader {
            bytes: payload,
            at: 0,
        };
        let entries = reader
            .length(self.key.min_size().max(1))
            .map_err(|e| self.decode_error("the entry count", "u64", 0, e))?;
        for _ in 0..entries {
            let key = reader
                .value(&self.key, 0)
                .map_err(|e| self.decode_error("a key", &self.key_type, 0, e))?;
            match self.kind {
                StateKind::Value | StateKind::Reducing | StateKind::Aggregating => {
                    let value = reader
                        .value(&self.value, 0)
                        .map_err(|e| self.decode_error("a value", &self.value_type, 0, e))?;
                    f(Row {
                        key: &key,
                        index: None,
                        user_key: None,
                        value,
                    })?;
                }
                StateKind::List => {
                    let n = reader
                        .length(self.value.min_size())
                        .map_err(|e| self.decode_error("a list length", "u64", 0, e))?;
                    for index in 0..n {
                        let value = reader.value(&self.value, 0).map_err(|e| {
                            self.decode_error("a list element", &self.value_type, 0, e)
                        })?;
                        f(Row {
                            key: &key,
                            index: Some(index as u64),
                            user_key: None,
                            value,
                        })?;
                    }
                }
                StateKind::Map => {
                    let user_key_shape = self.user_key.as_ref().unwrap_or(&Shape::Unit);
                    let user_key_type = self.user_key_type.as_deref().unwrap_or("()");
                    let n = reader
                        .length(user_key_shape.min_size() + self.value.min_size())
                        .map_err(|e| self.decode_error("a map length", "u64", 0, e))?;
                    for _ in 0..n {
                        let user_key = reader
                            .value(user_key_shape, 0)
                            .map_err(|e| self.decode_error("a map key", user_key_type, 0, e))?;
                        let value = reader.value(&self.value, 0).map_err(|e| {
                            self.decode_error("a map value", &self.value_type, 0, e)
                        })?;
                        f(Row {
                            key: &key,
                            index: None,
                            user_key: Some(user_key),
                            value,
                        })?;
                    }
                }
            }
        }
        if reader.at != payload.len() {
            return Err(DynamicError::Decode {
                what: "the payload",
                type_name: self.value_type.clone(),
                offset: reader.at,
                reason: format!(
                    "{} bytes after the last entry (wrong type?)",
                    payload.len() - reader.at
                ),
            }
            .into());
        }
        Ok(entries as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_state::snapshot::read_section;
    use flowstate_state::{
        AggregateFunction, AggregatingStateDescriptor, BackendSnapshot, KeyGroupRange, KeyScope,
        KeyedStateBackend, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor,
        SnapshotRequest, ValueStateDescriptor, heap_backend, key_group_of,
    };
    use std::any::type_name;
    use std::collections::{BTreeMap, HashMap};

    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        flowstate_state::codec::encode_to_vec(value).unwrap()
    }

    #[test]
    fn declared_and_legacy_names_resolve_like_rust_type_names() {
        use flowstate_state::state_type_name;
        fn same<T: flowstate_state::StateType + ?Sized>() {
            let declared = state_type_name::<T>();
            assert_eq!(
                Shape::parse(&declared).unwrap(),
                Shape::parse(type_name::<T>()).unwrap(),
                "{declared}"
            );
            let legacy = flowstate_state::state_type::legacy(type_name::<T>());
            assert_eq!(
                Shape::parse(&legacy).unwrap(),
                Shape::parse(type_name::<T>()).unwrap(),
                "{legacy}"
            );
        }
        same::<u64>();
        same::<()>();
        same::<String>();
        same::<(u64, u64)>();
        same::<Vec<Option<(i32, String)>>>();
        same::<BTreeMap<String, Vec<u8>>>();
        same::<Result<u8, String>>();
        same::<[u16; 3]>();
        same::<Box<(char,)>>();
        assert_eq!(
            tuple_elements("tuple<string,map<u8,u8>>").unwrap(),
            Some(vec!["string", "map<u8,u8>"])
        );
        assert_eq!(
            tuple_elements("~rust:(u64, alloc::string::String)").unwrap(),
            Some(vec!["u64", "alloc::string::String"])
        );
    }

    /// Encodes `value` with the snapshot codec and decodes it by its type name.
    fn round_trip<T: serde::Serialize>(value: &T) -> Value {
        let shape =
            Shape::parse(type_name::<T>()).unwrap_or_else(|e| panic!("{}: {e}", type_name::<T>()));
        let bytes = encode(value);
        let (decoded, used) = shape.decode(&bytes).unwrap();
        assert_eq!(used, bytes.len(), "{}", type_name::<T>());
        decoded
    }

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn primitives_round_trip() {
        assert_eq!(round_trip(&true), Value::Bool(true));
        assert_eq!(round_trip(&false), Value::Bool(false));
        assert_eq!(round_trip(&200u8), Value::U64(200));
        assert_eq!(round_trip(&65_000u16), Value::U64(65_000));
        assert_eq!(round_trip(&4_000_000_000u32), Value::U64(4_000_000_000));
        assert_eq!(round_trip(&u64::MAX), Value::U64(u64::MAX));
        assert_eq!(round_trip(&usize::MAX), Value::U64(usize::MAX as u64));
        assert_eq!(round_trip(&u128::MAX), Value::U128(u128::MAX));
        assert_eq!(round_trip(&-100i8), Value::I64(-100));
        assert_eq!(round_trip(&-30_000i16), Value::I64(-30_000));
        assert_eq!(round_trip(&i32::MIN), Value::I64(i32::MIN as i64));
        assert_eq!(round_trip(&i64::MIN), Value::I64(i64::MIN));
        assert_eq!(round_trip(&-5isize), Value::I64(-5));
        assert_eq!(round_trip(&i128::MIN), Value::I128(i128::MIN));
        assert_eq!(round_trip(&1.5f32), Value::F32(1.5));
        assert_eq!(round_trip(&-2.25e300f64), Value::F64(-2.25e300));
        for c in ['a', 'é', '€', '😀'] {
            assert_eq!(round_trip(&c), Value::Char(c));
        }
        assert_eq!(round_trip(&()), Value::Unit);
    }

    #[test]
    fn containers_round_trip() {
        assert_eq!(round_trip(&String::from("héllo")), s("héllo"));
        assert_eq!(
            round_trip(&vec![1u8, 2, 255]),
            Value::Seq(vec![Value::U64(1), Value::U64(2), Value::U64(255)])
        );
        assert_eq!(
            round_trip(&Some(-3i32)),
            Value::Option(Some(Box::new(Value::I64(-3))))
        );
        assert_eq!(round_trip(&None::<i32>), Value::Option(None));
        assert_eq!(
            round_trip(&(7u64, String::from("x"), (true, 'z'))),
            Value::Tuple(vec![
                Value::U64(7),
                s("x"),
                Value::Tuple(vec![Value::Bool(true), Value::Char('z')])
            ])
        );
        assert_eq!(
            round_trip(&[1u8, 2, 3, 4]),
            Value::Tuple(vec![
                Value::U64(1),
                Value::U64(2),
                Value::U64(3),
                Value::U64(4)
            ])
        );
        let long = [9u16; 20];
        assert_eq!(round_trip(&long), Value::Seq(vec![Value::U64(9); 20]));
        assert_eq!(
            round_trip(&vec![Some(vec![String::from("a")]), None]),
            Value::Seq(vec![
                Value::Option(Some(Box::new(Value::Seq(vec![s("a")])))),
                Value::Option(None)
            ])
        );
        let ok: Result<u32, String> = Ok(4);
        let err: Result<u32, String> = Err("no".into());
        assert_eq!(round_trip(&ok), Value::Result(Ok(Box::new(Value::U64(4)))));
        assert_eq!(round_trip(&err), Value::Result(Err(Box::new(s("no")))));
        assert_eq!(round_trip(&Box::new(5u8)), Value::U64(5));
        let btree: BTreeMap<String, u64> = [("a".into(), 1), ("b".into(), 2)].into();
        assert_eq!(
            round_trip(&btree),
            Value::Map(vec![(s("a"), Value::U64(1)), (s("b"), Value::U64(2))])
        );
        let hash: HashMap<u32, bool> = [(3, true)].into();
        assert_eq!(
            round_trip(&hash),
            Value::Map(vec![(Value::U64(3), Value::Bool(true))])
        );
        let hashbrown: flowstate_state::heap::GroupMap<u8, u8> = [(1, 2)].into_iter().collect();
        assert_eq!(
            round_trip(&hashbrown),
            Value::Map(vec![(Value::U64(1), Value::U64(2))])
        );
        let set: std::collections::BTreeSet<i8> = [-1, 1].into();
        assert_eq!(
            round_trip(&set),
            Value::Seq(vec![Value::I64(-1), Value::I64(1)])
        );
        let boxed: Box<[u16]> = vec![1, 2].into_boxed_slice();
        assert_eq!(
            round_trip(&boxed),
            Value::Seq(vec![Value::U64(1), Value::U64(2)])
        );
        assert_eq!(round_trip(&(5u8,)), Value::Tuple(vec![Value::U64(5)]));
    }

    #[test]
    fn unsupported_types_are_named() {
        #[derive(serde::Serialize)]
        struct Foo {
            a: u64,
        }
        let name = type_name::<Foo>();
        let err = Shape::parse(name).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot decode values of type `{name}`: only primitives (bool, integers, floats, char), String, Vec, Option, Result, Box, maps, sets, arrays and tuples of them are supported"
            )
        );
        // The innermost unsupported part is named.
        let err = Shape::parse(type_name::<(u64, Vec<Foo>)>()).unwrap_err();
        assert_eq!(
            err,
            DynamicError::UnsupportedType {
                type_name: name.to_owned()
            }
        );
        for name in [
            "&str",
            "&[u8]",
            "my_crate::Foo",
            "core::time::Duration",
            "dyn Fn()",
        ] {
            assert!(
                matches!(
                    Shape::parse(name),
                    Err(DynamicError::UnsupportedType { .. })
                ),
                "{name}"
            );
        }
        for name in ["(u64", "Vec<u64", "[u8; x]", "alloc::vec::Vec<>", "(,)"] {
            assert!(Shape::parse(name).is_err(), "{name}");
        }
        let deep = format!("{}u8{}", "Vec<".repeat(40), ">".repeat(40));
        assert!(matches!(
            Shape::parse(&deep),
            Err(DynamicError::InvalidTypeName { .. })
        ));
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics_or_huge_allocations() {
        let shape = Shape::parse(type_name::<Vec<String>>()).unwrap();
        let bytes = encode(&vec![String::from("abc"), String::from("de")]);
        for len in 0..bytes.len() {
            assert!(shape.decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        // A huge length is refused before anything is allocated.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        let err = shape.decode(&huge).unwrap_err();
        assert!(err.reason.contains("cannot fit"), "{err}");
        assert!(Shape::Bool.decode(&[2]).is_err());
        assert!(Shape::Option(Box::new(Shape::U8)).decode(&[7, 0]).is_err());
        assert!(Shape::Char.decode(&[0xff]).is_err());
        assert!(Shape::Char.decode(&[0xc3]).is_err());
        assert!(
            Shape::String
                .decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff])
                .is_err()
        );
        let units = Shape::parse("alloc::vec::Vec<()>").unwrap();
        assert!(units.decode(&u64::MAX.to_le_bytes()).is_err());
        assert_eq!(
            units.decode(&3u64.to_le_bytes()).unwrap().0,
            Value::Seq(vec![Value::Unit; 3])
        );
        // Every flipped byte of a small entry either decodes or fails cleanly.
        let bytes = encode(&(Some('é'), vec![1.5f64], String::from("x")));
        let shape = Shape::parse(type_name::<(Option<char>, Vec<f64>, String)>()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                let _ = shape.decode(&damaged);
            }
        }
    }

    #[test]
    fn columns_and_flattening_agree() {
        let shape = Shape::parse("(u64, (alloc::string::String, [u8; 2]), core::option::Option<i32>, alloc::vec::Vec<u8>)").unwrap();
        assert_eq!(
            shape.columns("value"),
            [
                "value.0",
                "value.1.0",
                "value.1.1.0",
                "value.1.1.1",
                "value.2",
                "value.3"
            ]
        );
        let (value, _) = shape
            .decode(&encode(&(
                1u64,
                (String::from("a,b"), [3u8, 4]),
                None::<i32>,
                vec![5u8],
            )))
            .unwrap();
        let mut leaves = Vec::new();
        value.flatten(&mut leaves);
        let cells: Vec<Option<String>> = leaves
            .iter()
            .map(|v| v.scalar_text().map(|c| c.into_owned()))
            .collect();
        assert_eq!(
            cells,
            [
                Some("1".into()),
                Some("a,b".into()),
                Some("3".into()),
                Some("4".into()),
                Some(String::new()),
                None
            ]
        );
        assert_eq!(Shape::U64.columns("key"), ["key"]);
        assert_eq!(Shape::Unit.columns("value"), ["value"]);
    }

    struct Average;
    impl AggregateFunction<u32, (u64, u64), f64> for Average {
        fn create_accumulator(&self) -> (u64, u64) {
            (0, 0)
        }
        fn add(&self, accumulator: &mut (u64, u64), input: u32) {
            accumulator.0 += u64::from(input);
            accumulator.1 += 1;
        }
        fn result(&self, accumulator: &(u64, u64)) -> f64 {
            accumulator.0 as f64 / accumulator.1 as f64
        }
    }

    /// Every state kind, snapshotted by the heap backend, decoded by type name
    /// only, equals what was written.
    #[test]
    fn every_state_kind_of_a_real_snapshot_decodes() {
        let m = 8;
        let mut backend: Box<dyn KeyedStateBackend<(u32, String)>> =
            heap_backend(KeyGroupRange::new(0, m), m);
        let value = backend
            .value_state(&ValueStateDescriptor::<(u64, u64)>::new("value"))
            .unwrap();
        let list = backend
            .list_state(&ListStateDescriptor::<Option<String>>::new("list"))
            .unwrap();
        let map = backend
            .map_state(&MapStateDescriptor::<String, i64>::new("map"))
            .unwrap();
        let reducing = backend
            .reducing_state(&ReducingStateDescriptor::<u64>::new("reducing", |a, b| {
                a + b
            }))
            .unwrap();
        let aggregating = backend
            .aggregating_state(&AggregatingStateDescriptor::new("aggregating", Average))
            .unwrap();
        let keys: Vec<(u32, String)> = (0..60u32).map(|i| (i, format!("k{i}"))).collect();
        for key in &keys {
            let i = u64::from(key.0);
            let g = key_group_of(key, m);
            let mut scope = KeyScope::new(backend.as_mut(), key, g);
            scope.value(&value).set((i, i * i)).unwrap();
            for e in 0..(i % 4) {
                let element = (e % 2 == 0).then(|| format!("e{e}"));
                scope.list(&list).add(element).unwrap();
            }
            for e in 0..(i % 3) {
                scope
                    .map(&map)
                    .put(format!("u{e}"), -(i as i64) * e as i64)
                    .unwrap();
            }
            scope.reducing(&reducing).add(i).unwrap();
            scope.reducing(&reducing).add(1).unwrap();
            scope.aggregating(&aggregating).add(key.0).unwrap();
            scope.aggregating(&aggregating).add(1).unwrap();
        }
        let snapshot = match backend
            .snapshot(SnapshotRequest {
                checkpoint_id: 1,
                canonical: true,
            })
            .unwrap()
        {
            BackendSnapshot::KeyGroups(snapshot) => snapshot,
            BackendSnapshot::Native(_) => panic!("heap snapshots are canonical"),
        };
        assert_eq!(snapshot.key_type, "tuple<u32,string>");

        // Rows per state: (key number, rendered row).
        let mut rows: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
        for g in snapshot.range.iter() {
            let mut bytes = Vec::new();
            snapshot.write_key_group(g, &mut bytes).unwrap();
            for state in read_section(g, &bytes).unwrap() {
                let layout =
                    EntryLayout::new(state.kind, &snapshot.key_type, &state.types).unwrap();
                let name: &'static str = match state.name {
                    "value" => "value",
                    "list" => "list",
                    "map" => "map",
                    "reducing" => "reducing",
                    "aggregating" => "aggregating",
                    other => panic!("unexpected state {other}"),
                };
                let entries = layout
                    .for_each_row::<DynamicError>(state.payload, |row| {
                        let Value::Tuple(key) = row.key else {
                            panic!("key {:?}", row.key)
                        };
                        let Value::U64(number) = key[0] else {
                            panic!("key {key:?}")
                        };
                        assert_eq!(key[1], s(&format!("k{number}")));
                        rows.entry(name).or_default().push((
                            number,
                            format!("{:?}|{:?}|{:?}", row.index, row.user_key, row.value),
                        ));
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(Some(entries), state.entries());
            }
        }
        let mut expected: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
        for i in 0..60u64 {
            let mut push = |state, index: Option<u64>, user_key: Option<Value>, value: Value| {
                expected
                    .entry(state)
                    .or_default()
                    .push((i, format!("{index:?}|{user_key:?}|{value:?}")))
            };
            push(
                "value",
                None,
                None,
                Value::Tuple(vec![Value::U64(i), Value::U64(i * i)]),
            );
            for e in 0..(i % 4) {
                let element = if e % 2 == 0 {
                    Value::Option(Some(Box::new(s(&format!("e{e}")))))
                } else {
                    Value::Option(None)
                };
                push("list", Some(e), None, element);
            }
            for e in 0..(i % 3) {
                push(
                    "map",
                    None,
                    Some(s(&format!("u{e}"))),
                    Value::I64(-(i as i64) * e as i64),
                );
            }
            push("reducing", None, None, Value::U64(i + 1));
            push(
                "aggregating",
                None,
                None,
                Value::Tuple(vec![Value::U64(i + 1), Value::U64(2)]),
            );
        }
        for rows in rows.values_mut().chain(expected.values_mut()) {
            rows.sort();
        }
        assert_eq!(rows, expected);
    }

    #[test]
    fn layouts_name_their_columns_and_refuse_unknown_keys() {
        let layout =
            EntryLayout::new(StateKind::Map, "u64", "(alloc::string::String, (u8, bool))").unwrap();
        assert_eq!(layout.columns(), ["key", "user_key", "value.0", "value.1"]);
        let layout = EntryLayout::new(StateKind::List, "(u64, u64)", "f64").unwrap();
        assert_eq!(layout.columns(), ["key.0", "key.1", "index", "value"]);
        let layout = EntryLayout::new(
            StateKind::Aggregating,
            "u64",
            "(my::Input, (u64, u64), my::Output)",
        )
        .unwrap();
        assert_eq!(layout.value_type, "(u64, u64)");
        assert_eq!(
            EntryLayout::new(StateKind::Value, "", "u64").unwrap_err(),
            DynamicError::UnknownKeyType
        );
        assert!(EntryLayout::new(StateKind::Map, "u64", "u64").is_err());
    }

    /// The worked example of `docs/savepoint-format.md`, section 6.
    #[test]
    fn the_documented_example_section_is_what_a_snapshot_writes() {
        let m = 4;
        let mut backend: Box<dyn KeyedStateBackend<u64>> =
            heap_backend(KeyGroupRange::new(0, m), m);
        let state = backend
            .value_state(&ValueStateDescriptor::<(u64, u64)>::new("count-sum"))
            .unwrap();
        let key = 17u64;
        let group = key_group_of(&key, m);
        KeyScope::new(backend.as_mut(), &key, group)
            .value(&state)
            .set((3, 51))
            .unwrap();
        let BackendSnapshot::KeyGroups(snapshot) = backend
            .snapshot(SnapshotRequest {
                checkpoint_id: 1,
                canonical: true,
            })
            .unwrap()
        else {
            panic!("heap snapshots are canonical")
        };
        let mut bytes = Vec::new();
        snapshot.write_key_group(group, &mut bytes).unwrap();
        let mut expected = vec![1, 0, 0, 0, 9, 0];
        expected.extend_from_slice(b"count-sum");
        expected.extend_from_slice(&[0, 14, 0]);
        expected.extend_from_slice(b"tuple<u64,u64>");
        expected.extend_from_slice(&32u64.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        for word in [17u64, 3, 51] {
            expected.extend_from_slice(&word.to_le_bytes());
        }
        assert_eq!(bytes, expected);
    }
}
