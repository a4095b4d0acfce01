//! Untyped JSON documents that keep what an edit does not touch, and JSON
//! Pointers (RFC 6901) to edit them.
//!
//! See [`JsonDocument`] and docs/json.md.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

/// See [`JsonDocument::MAX_DEPTH`].
pub(crate) const MAX_DEPTH: usize = 127;

/// An error of a [`JsonPointer`] or a [`JsonDocument`] edit: bad input. The
/// document is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// The pointer is not an RFC 6901 JSON Pointer.
    #[error("invalid JSON Pointer {pointer:?}: {reason}")]
    InvalidPointer {
        /// The pointer as given.
        pointer: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A token that addresses an array is not an index: RFC 6901 allows `0`
    /// or digits without a leading zero (and `-`, past the end, in `set`).
    #[error("invalid array index {token:?} in {pointer:?}: an index is 0 or digits without a leading zero (RFC 6901){}", if *.append_allowed { ", or - to append" } else { "" })]
    InvalidIndex {
        /// The pointer.
        pointer: String,
        /// The offending token.
        token: String,
        /// Whether `-` (append) would have been accepted here.
        append_allowed: bool,
    },
    /// An array index past the end.
    #[error("array index {index} out of range (length {len}) in {pointer:?}")]
    OutOfRange {
        /// The pointer.
        pointer: String,
        /// The index.
        index: usize,
        /// The array's length.
        len: usize,
    },
    /// The pointer goes through a scalar.
    #[error("cannot descend into {found} at {token:?} in {pointer:?}")]
    NotAContainer {
        /// The pointer.
        pointer: String,
        /// The token that would descend.
        token: String,
        /// What is there: "a string", "a number", ...
        found: &'static str,
    },
    /// The text is not one JSON value (or has a duplicate key, or nests
    /// deeper than [`JsonDocument::MAX_DEPTH`]).
    #[error("{reason}")]
    InvalidJson {
        /// `serde_json`'s message or lockstore's.
        reason: String,
    },
    /// The edit would nest the document deeper than [`JsonDocument::MAX_DEPTH`].
    #[error("setting {pointer:?} would nest the document {depth} levels deep; the limit is {limit} (what a JSON reader of lockstore reads back)")]
    TooDeep {
        /// The pointer.
        pointer: String,
        /// The depth the document would have.
        depth: usize,
        /// [`JsonDocument::MAX_DEPTH`].
        limit: usize,
    },
    /// `incr` on something that is not a number (or null / missing).
    #[error("value at {pointer:?} is {found}, not a number")]
    NotANumber {
        /// The pointer.
        pointer: String,
        /// What is there.
        found: &'static str,
    },
    /// `incr` whose result is not representable: an integer outside
    /// `-2^63 ..= 2^64-1` (what `serde_json` reads as an integer) or a float
    /// that overflows.
    #[error("cannot add {by} to {value} at {pointer:?}: the result leaves the range of a JSON integer lockstore writes (-9223372036854775808 ..= 18446744073709551615, exact) or of a finite float")]
    Overflow {
        /// The pointer.
        pointer: String,
        /// The number's text.
        value: String,
        /// The increment.
        by: i64,
    },
}

/// A JSON Pointer (RFC 6901): `""` is the whole document, `/a/0/b` a nested
/// member; `~1` and `~0` escape `/` and `~`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    /// Parses `text`.
    ///
    /// Errors: [`DocumentError::InvalidPointer`] (does not start with `/`,
    /// `~` not followed by `0` or `1`).
    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        let bad = |reason| DocumentError::InvalidPointer {
            pointer: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Ok(JsonPointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(bad("must be empty or start with '/'"));
        };
        let tokens = rest
            .split('/')
            .map(|t| {
                let b = t.as_bytes();
                let ok = b
                    .iter()
                    .enumerate()
                    .all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')));
                if ok {
                    Ok(t.replace("~1", "/").replace("~0", "~"))
                } else {
                    Err(bad("'~' must be followed by 0 or 1"))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(JsonPointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The pointer's text, as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The unescaped reference tokens.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// An array index token (RFC 6901: `0`, or digits without a leading zero).
    fn index(&self, token: &str, append_allowed: bool) -> Result<usize, DocumentError> {
        let b = token.as_bytes();
        let digits =
            !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1);
        digits
            .then(|| token.parse::<usize>().ok())
            .flatten()
            .ok_or_else(|| DocumentError::InvalidIndex {
                pointer: self.text.clone(),
                token: token.to_string(),
                append_allowed,
            })
    }
}

impl FromStr for JsonPointer {
    type Err = DocumentError;
    fn from_str(s: &str) -> Result<Self, DocumentError> {
        JsonPointer::parse(s)
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One value: a scalar as its text, or a container of values.
#[derive(Clone, Debug)]
enum Node {
    /// `null`, `true`, `false`, a number or a string, as written.
    Scalar(Box<RawValue>),
    Array(Vec<Node>),
    /// Members in file order; keys are unique.
    Object(Vec<(String, Node)>),
}

/// A [`JsonDocument`] split one level ([`JsonDocument::into_parts`]).
#[cfg(feature = "sqlite")]
pub(crate) enum Parts {
    Object(Vec<(String, JsonDocument)>),
    Array(Vec<JsonDocument>),
    Scalar(&'static str),
}

/// The text of a JSON literal lockstore produces itself.
fn literal(text: String) -> Node {
    // Only called with `null` and formatted numbers, which are valid JSON.
    match RawValue::from_string(text) {
        Ok(r) => Node::Scalar(r),
        Err(_) => Node::null(),
    }
}

impl Node {
    fn null() -> Node {
        // SAFETY-free: `from_string` validates; "null" always passes.
        Node::Scalar(RawValue::from_string("null".to_string()).unwrap_or_else(|_| unreachable!()))
    }

    fn is_null(&self) -> bool {
        matches!(self, Node::Scalar(r) if r.get() == "null")
    }

    fn kind(&self) -> &'static str {
        match self {
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
            Node::Scalar(r) => match r.get().as_bytes().first() {
                Some(b'n') => "null",
                Some(b't' | b'f') => "a boolean",
                Some(b'"') => "a string",
                _ => "a number",
            },
        }
    }

    /// Arrays/objects on the deepest path (a scalar is 0).
    fn depth(&self) -> usize {
        match self {
            Node::Scalar(_) => 0,
            Node::Array(a) => 1 + a.iter().map(Node::depth).max().unwrap_or(0),
            Node::Object(m) => 1 + m.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Scalar(r) => r.serialize(s),
            Node::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Node::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// An object's members as written, values unparsed.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0).min(4096));
                while let Some(k) = m.next_key::<String>()? {
                    out.push((k, m.next_value::<Box<RawValue>>()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Escapes a key as a pointer token.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Builds the node of `raw`, which sits under `level` arrays/objects at
/// pointer `at`: checks nesting, duplicate keys and number range.
fn parse_node(raw: Box<RawValue>, at: &str, level: usize) -> Result<Node, String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{' | b'[') if level >= MAX_DEPTH => Err(format!(
            "the document nests deeper than {MAX_DEPTH} levels (at {at:?})"
        )),
        Some(b'{') => {
            let Members(members) =
                serde_json::from_str(text).map_err(|e| format!("at {at:?}: {e}"))?;
            {
                let mut seen = HashSet::with_capacity(members.len());
                if let Some((k, _)) = members.iter().find(|(k, _)| !seen.insert(k.as_str())) {
                    return Err(format!("duplicate key {k:?} in the object at {at:?}"));
                }
            }
            let mut out = Vec::with_capacity(members.len());
            for (k, v) in members {
                let child = format!("{at}/{}", escape(&k));
                let node = parse_node(v, &child, level + 1)?;
                out.push((k, node));
            }
            Ok(Node::Object(out))
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> =
                serde_json::from_str(text).map_err(|e| format!("at {at:?}: {e}"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.into_iter().enumerate() {
                out.push(parse_node(v, &format!("{at}/{i}"), level + 1)?);
            }
            Ok(Node::Array(out))
        }
        Some(b'-' | b'0'..=b'9') => {
            // The raw reader checks the syntax only; `Number` also refuses
            // what no f64 holds (`1e400`), as every serde_json reader does.
            serde_json::from_str::<serde_json::Number>(text)
                .map_err(|e| format!("number {text} at {at:?}: {e}"))?;
            Ok(Node::Scalar(raw))
        }
        _ => Ok(Node::Scalar(raw)),
    }
}

/// An untyped JSON document that keeps the text of its values and the order
/// of its members.
///
/// [`JsonDocument`] is the document type of `lockstore json` (use it as
/// `JsonStore<JsonDocument>`). Unlike `serde_json::Value` (without the
/// `arbitrary_precision` and `preserve_order` features, which lockstore does
/// not turn on because feature unification would change `serde_json` for every
/// crate in an adopter's build):
///
/// - every number, string, `true`/`false`/`null` keeps its exact text
///   (`123456789012345678901234567890` and `9007199254740993.0` are not rounded
///   to an `f64`; `"\u00e9"` keeps its escape) — each is held as a
///   `serde_json::value::RawValue`;
/// - object members keep their order, and new members are appended;
/// - an object with a duplicate key does not decode (the error names the key
///   and the pointer of the object): a `Value` would silently keep the last one;
/// - a number that does not fit an `f64` (`1e400`) does not decode, as with
///   `Value`;
/// - nesting is limited to [`JsonDocument::MAX_DEPTH`] arrays/objects, what `serde_json`'s
///   reader accepts: [`JsonDocument::set`] and [`JsonDocument::incr`] refuse an
///   edit that would go deeper, so every document written can be read back.
///
/// The document is re-serialized through `serde_json`'s pretty printer, so the
/// layout (indentation, spaces) is lockstore's; only the values' text is kept.
/// Decoding re-reads each object and array once per level above it (a
/// document of `n` bytes nested `d` deep costs `O(n·d)`, `d ≤` [`JsonDocument::MAX_DEPTH`]).
///
/// `Default` is `null` (a missing file). It (de)serializes only through
/// `serde_json` (its scalars are `RawValue`s); decoding errors name the pointer
/// of the offending value and become [`crate::Error::Corrupt`] in a
/// [`crate::JsonStore`]. In a versioned store the document is the envelope
/// object, `"version"` included (the save writes the envelope's version).
///
/// ```
/// use lockstore::{JsonDocument, JsonPointer};
/// let mut d = JsonDocument::parse(r#"{"id": 123456789012345678901234567890, "b": 1.50}"#)?;
/// d.set(&JsonPointer::parse("/a")?, JsonDocument::parse("true")?)?;
/// assert_eq!(d.to_string(), r#"{"id":123456789012345678901234567890,"b":1.50,"a":true}"#);
/// assert!(JsonDocument::parse(r#"{"k": 1, "k": 2}"#).is_err());
/// # Ok::<_, lockstore::DocumentError>(())
/// ```
#[derive(Clone, Debug)]
pub struct JsonDocument {
    root: Node,
}

impl Default for JsonDocument {
    fn default() -> Self {
        JsonDocument { root: Node::null() }
    }
}

impl<'de> Deserialize<'de> for JsonDocument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        parse_node(raw, "", 0)
            .map(|root| JsonDocument { root })
            .map_err(de::Error::custom)
    }
}

impl Serialize for JsonDocument {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.root.serialize(s)
    }
}

impl FromStr for JsonDocument {
    type Err = DocumentError;
    fn from_str(s: &str) -> Result<Self, DocumentError> {
        JsonDocument::parse(s)
    }
}

impl fmt::Display for JsonDocument {
    /// Compact JSON; `{:#}` pretty (2-space) JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = if f.alternate() {
            serde_json::to_string_pretty(&self.root)
        } else {
            serde_json::to_string(&self.root)
        };
        f.write_str(&text.map_err(|_| fmt::Error)?)
    }
}

impl JsonDocument {
    /// The deepest nesting of arrays and objects a document may have: the
    /// top-level object or array counts 1, a scalar 0. `serde_json`'s reader
    /// refuses a 128th level ("recursion limit exceeded"), so this is the
    /// limit of every lockstore reader (`JsonStore<T>` for any `T`); a
    /// `JsonStore` refuses to save a deeper document too.
    pub const MAX_DEPTH: usize = MAX_DEPTH;

    /// Parses one JSON value (surrounding whitespace allowed).
    ///
    /// Errors: [`DocumentError::InvalidJson`] with `serde_json`'s message
    /// (e.g. "trailing comma at line 1 column 15"), a duplicate key, a number
    /// out of range, or nesting deeper than [`JsonDocument::MAX_DEPTH`].
    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        serde_json::from_str(text).map_err(|e| DocumentError::InvalidJson {
            reason: e.to_string(),
        })
    }

    /// A JSON string holding `text` as is.
    pub fn string(text: &str) -> Self {
        let quoted = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string());
        JsonDocument {
            root: literal(quoted),
        }
    }

    /// The document split one level: an object's members (in order), an
    /// array's items, or the kind of a scalar ("null", "a string", ...).
    /// Used by `Collection::import_json`, which must keep each record's text.
    #[cfg(feature = "sqlite")]
    pub(crate) fn into_parts(self) -> Parts {
        match self.root {
            Node::Object(m) => Parts::Object(
                m.into_iter()
                    .map(|(k, root)| (k, JsonDocument { root }))
                    .collect(),
            ),
            Node::Array(a) => {
                Parts::Array(a.into_iter().map(|root| JsonDocument { root }).collect())
            }
            scalar => Parts::Scalar(scalar.kind()),
        }
    }

    /// A scalar's JSON text as written (`"abc"` with its quotes, `12`,
    /// `true`); `None` for an object or array.
    #[cfg(feature = "sqlite")]
    pub(crate) fn scalar_text(&self) -> Option<&str> {
        match &self.root {
            Node::Scalar(r) => Some(r.get()),
            _ => None,
        }
    }

    /// Whether the document is `null` (also: a missing file).
    pub fn is_null(&self) -> bool {
        self.root.is_null()
    }

    /// Arrays/objects on the document's deepest path (a scalar is 0).
    pub fn depth(&self) -> usize {
        self.root.depth()
    }

    /// The value at `ptr`, cloned; `None` when the path is missing or goes
    /// through a scalar.
    ///
    /// Errors: [`DocumentError::InvalidIndex`] (a token that addresses an
    /// array is not an RFC 6901 index, e.g. `01`).
    pub fn get(&self, ptr: &JsonPointer) -> Result<Option<JsonDocument>, DocumentError> {
        let mut cur = &self.root;
        for t in &ptr.tokens {
            let next = match cur {
                Node::Object(m) => m.iter().find(|(k, _)| k == t).map(|(_, v)| v),
                Node::Array(a) => a.get(ptr.index(t, false)?),
                Node::Scalar(_) => None,
            };
            match next {
                Some(n) => cur = n,
                None => return Ok(None),
            }
        }
        Ok(Some(JsonDocument { root: cur.clone() }))
    }

    /// Checks that `ptr` can be set: the existing node there, or `None` if it
    /// will be created (missing members and `null`s become objects, `-`
    /// appends to an array).
    fn settable(&self, ptr: &JsonPointer) -> Result<Option<&Node>, DocumentError> {
        let mut cur = &self.root;
        for t in &ptr.tokens {
            let next = match cur {
                n if n.is_null() => None,
                Node::Object(m) => m.iter().find(|(k, _)| k == t).map(|(_, v)| v),
                Node::Array(_) if t == "-" => None,
                Node::Array(a) => {
                    let i = ptr.index(t, true)?;
                    Some(a.get(i).ok_or_else(|| DocumentError::OutOfRange {
                        pointer: ptr.text.clone(),
                        index: i,
                        len: a.len(),
                    })?)
                }
                other => {
                    return Err(DocumentError::NotAContainer {
                        pointer: ptr.text.clone(),
                        token: t.clone(),
                        found: other.kind(),
                    })
                }
            };
            match next {
                Some(n) => cur = n,
                // Everything below is created.
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The slot at `ptr`, creating what is missing; only after `settable`.
    fn slot_mut(&mut self, ptr: &JsonPointer) -> &mut Node {
        let mut cur = &mut self.root;
        for t in &ptr.tokens {
            if cur.is_null() {
                *cur = Node::Object(Vec::new());
            }
            cur = match cur {
                Node::Object(m) => {
                    let i = match m.iter().position(|(k, _)| k == t) {
                        Some(i) => i,
                        None => {
                            m.push((t.clone(), Node::null()));
                            m.len() - 1
                        }
                    };
                    &mut m[i].1
                }
                Node::Array(a) => {
                    let i = if t == "-" {
                        a.push(Node::null());
                        a.len() - 1
                    } else {
                        // Checked by `settable`.
                        ptr.index(t, true).unwrap_or(a.len() - 1)
                    };
                    &mut a[i]
                }
                // `settable` refused scalars; replacing keeps this total.
                scalar => {
                    *scalar = Node::Object(vec![(t.clone(), Node::null())]);
                    match scalar {
                        Node::Object(m) => &mut m[0].1,
                        _ => unreachable!(),
                    }
                }
            };
        }
        cur
    }

    fn check_depth(&self, ptr: &JsonPointer, value_depth: usize) -> Result<(), DocumentError> {
        // The slot sits under one array/object per token.
        let depth = ptr.tokens.len() + value_depth;
        if depth > MAX_DEPTH {
            return Err(DocumentError::TooDeep {
                pointer: ptr.text.clone(),
                depth,
                limit: MAX_DEPTH,
            });
        }
        Ok(())
    }

    /// Sets the value at `ptr` to `value`, creating missing parent objects
    /// (and turning `null`s on the way into objects); `-` appends to an
    /// array. Members keep their place; a new member is appended.
    ///
    /// Errors (the document is unchanged): [`DocumentError::TooDeep`],
    /// [`DocumentError::NotAContainer`], [`DocumentError::InvalidIndex`],
    /// [`DocumentError::OutOfRange`].
    pub fn set(&mut self, ptr: &JsonPointer, value: JsonDocument) -> Result<(), DocumentError> {
        self.check_depth(ptr, value.depth())?;
        self.settable(ptr)?;
        *self.slot_mut(ptr) = value.root;
        Ok(())
    }

    /// Deletes the value at `ptr` (the whole document: it becomes `null`).
    /// Returns whether something was removed (a missing path is a no-op).
    ///
    /// Errors: [`DocumentError::InvalidIndex`].
    pub fn delete(&mut self, ptr: &JsonPointer) -> Result<bool, DocumentError> {
        let Some((last, parent)) = ptr.tokens.split_last() else {
            let had = !self.root.is_null();
            self.root = Node::null();
            return Ok(had);
        };
        let mut cur = &mut self.root;
        for t in parent {
            let next = match cur {
                Node::Object(m) => m.iter_mut().find(|(k, _)| k == t).map(|(_, v)| v),
                Node::Array(a) => {
                    let i = ptr.index(t, false)?;
                    a.get_mut(i)
                }
                Node::Scalar(_) => None,
            };
            match next {
                Some(n) => cur = n,
                None => return Ok(false),
            }
        }
        match cur {
            Node::Object(m) => match m.iter().position(|(k, _)| k == last) {
                Some(i) => {
                    m.remove(i);
                    Ok(true)
                }
                None => Ok(false),
            },
            Node::Array(a) => {
                let i = ptr.index(last, false)?;
                if i < a.len() {
                    a.remove(i);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Node::Scalar(_) => Ok(false),
        }
    }

    /// Adds `by` to the number at `ptr` (missing or `null` count as 0, and
    /// missing parents are created as in [`JsonDocument::set`]); returns the
    /// new number. An integer (no fraction, no exponent) stays an exact
    /// integer; a float is added as an `f64`.
    ///
    /// Errors (the document is unchanged): [`DocumentError::NotANumber`],
    /// [`DocumentError::Overflow`] (naming the value and the pointer), and
    /// those of [`JsonDocument::set`].
    pub fn incr(&mut self, ptr: &JsonPointer, by: i64) -> Result<JsonDocument, DocumentError> {
        self.check_depth(ptr, 0)?;
        let new = match self.settable(ptr)? {
            None => by.to_string(),
            Some(n) if n.is_null() => by.to_string(),
            Some(Node::Scalar(r)) if n_is_number(r) => add(r.get(), by, ptr)?,
            Some(other) => {
                return Err(DocumentError::NotANumber {
                    pointer: ptr.text.clone(),
                    found: other.kind(),
                })
            }
        };
        let node = literal(new);
        *self.slot_mut(ptr) = node.clone();
        Ok(JsonDocument { root: node })
    }
}

fn n_is_number(r: &RawValue) -> bool {
    matches!(r.get().as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// `text + by`: exact for integers within `i64::MIN ..= u64::MAX`, `f64` for
/// floats.
fn add(text: &str, by: i64, ptr: &JsonPointer) -> Result<String, DocumentError> {
    let overflow = || DocumentError::Overflow {
        pointer: ptr.text.clone(),
        value: text.to_string(),
        by,
    };
    if !text.contains(['.', 'e', 'E']) {
        let v: i128 = text.parse().map_err(|_| overflow())?;
        let r = v.checked_add(i128::from(by)).ok_or_else(overflow)?;
        if r < i128::from(i64::MIN) || r > i128::from(u64::MAX) {
            return Err(overflow());
        }
        return Ok(r.to_string());
    }
    let v: f64 = text.parse().map_err(|_| overflow())?;
    let r = v + by as f64;
    serde_json::Number::from_f64(r)
        .filter(|_| r.is_finite())
        .map(|n| n.to_string())
        .ok_or_else(overflow)
}

/// The envelope of a versioned store: `{"version": N, ...members of the
/// document}` from the document's JSON text (an object), its own `version`
/// member (which a `Value` or `JsonDocument` read from an envelope carries)
/// replaced rather than written twice. Values keep their text.
pub(crate) fn envelope(doc_json: &str, version: u64) -> Result<JsonDocument, String> {
    let doc = JsonDocument::parse(doc_json).map_err(|e| e.to_string())?;
    let Node::Object(members) = doc.root else {
        return Err(format!(
            "a versioned document must be an object, not {}",
            doc.root.kind()
        ));
    };
    let mut out = Vec::with_capacity(members.len() + 1);
    out.push(("version".to_string(), literal(version.to_string())));
    out.extend(members.into_iter().filter(|(k, _)| k != "version"));
    Ok(JsonDocument {
        root: Node::Object(out),
    })
}

/// The deepest nesting of arrays/objects in JSON text (0 for a scalar); the
/// text is assumed to be valid JSON (strings are skipped with their escapes).
pub(crate) fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> JsonPointer {
        JsonPointer::parse(s).unwrap()
    }

    #[test]
    fn pointer_tokens() {
        assert!(p("").tokens().is_empty());
        assert_eq!(p("/a~1b/c~0d").tokens(), ["a/b", "c~d"]);
        assert!(JsonPointer::parse("a").is_err());
        assert!(JsonPointer::parse("/a~2").is_err());
        assert!(JsonPointer::parse("/a~").is_err());
    }

    #[test]
    fn set_creates_parents_and_incr_checks_type() {
        let mut d = JsonDocument::default();
        d.set(&p("/a/b"), JsonDocument::parse("1").unwrap())
            .unwrap();
        assert_eq!(d.to_string(), r#"{"a":{"b":1}}"#);
        let mut s = JsonDocument::parse(r#"{"x":"s"}"#).unwrap();
        assert!(matches!(
            s.incr(&p("/x"), 1),
            Err(DocumentError::NotANumber { .. })
        ));
        assert_eq!(d.incr(&p("/a/b"), 3).unwrap().to_string(), "4");
        assert!(d.delete(&p("/a/b")).unwrap());
        assert_eq!(d.to_string(), r#"{"a":{}}"#);
    }

    #[test]
    fn incr_integers_exact_floats_as_f64() {
        let mut d =
            JsonDocument::parse(r#"{"i": -0, "f": 1.5, "e": 1e2, "u": 18446744073709551614}"#)
                .unwrap();
        assert_eq!(d.incr(&p("/i"), -1).unwrap().to_string(), "-1");
        assert_eq!(d.incr(&p("/f"), 1).unwrap().to_string(), "2.5");
        assert_eq!(d.incr(&p("/e"), 1).unwrap().to_string(), "101.0");
        assert_eq!(
            d.incr(&p("/u"), 1).unwrap().to_string(),
            "18446744073709551615"
        );
        let before = d.to_string();
        assert!(matches!(
            d.incr(&p("/u"), 1),
            Err(DocumentError::Overflow { .. })
        ));
        assert_eq!(d.to_string(), before);
    }

    #[test]
    fn failed_edits_leave_the_document_alone() {
        let mut d = JsonDocument::parse(r#"{"a": [1], "s": "x"}"#).unwrap();
        let before = d.to_string();
        for ptr in ["/a/5/x", "/a/01", "/s/x/y", "/n/m/s/x"] {
            let _ = d.set(&p(ptr), JsonDocument::parse("1").unwrap());
        }
        assert!(d.set(&p("/s/x"), JsonDocument::default()).is_err());
        assert!(d.set(&p("/a/01"), JsonDocument::default()).is_err());
        let e = d.delete(&p("/a/01")).unwrap_err();
        assert!(e.to_string().contains("\"01\""), "{e}");
        // "/n/m/s/x" creates parents: the only edit that succeeded.
        assert_eq!(
            d.to_string(),
            before.replace('}', r#","n":{"m":{"s":{"x":1}}}}"#)
        );
    }

    #[test]
    fn nesting_depth_counts_containers_outside_strings() {
        assert_eq!(nesting_depth(b"1"), 0);
        assert_eq!(nesting_depth(br#"{"a":[{"b":"[[[\"{"}]}"#), 3);
    }
}
