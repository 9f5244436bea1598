//! The small JSON toolkit FastDP's messages need: a writer that emits keys in a fixed order
//! (compact, or with Python's default `", "` and `": "` separators and ASCII escapes, for the
//! 1.1.0 test sender), and strict readers of exact integers and strings over a parsed object.
//!
//! Parsing goes through `serde_json` into raw values so that an integer is judged on its exact
//! text: digits only (no sign, fraction or exponent), at most 2^53-1 (fastdp.md 2.1).

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// Largest integer on the wire (2^53-1).
pub const MAX_INT: u64 = (1 << 53) - 1;

/// How an object is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `{"a":1,"b":"x"}`, non-ASCII as UTF-8 (ferry's 1.2.0 messages).
    Compact,
    /// `{"a": 1, "b": "x"}`, non-ASCII as `\uXXXX` (Python's `json.dumps` defaults).
    Python,
}

/// Writes one JSON object, keys in call order.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    style: Style,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>, style: Style) -> ObjectWriter<'a> {
        out.push(b'{');
        ObjectWriter {
            out,
            style,
            first: true,
        }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.extend_from_slice(match self.style {
                Style::Compact => b",",
                Style::Python => b", ",
            });
        }
        self.first = false;
        put_string(key, self.style, self.out);
        self.out.extend_from_slice(match self.style {
            Style::Compact => b":",
            Style::Python => b": ",
        });
    }

    pub fn int(&mut self, key: &str, v: u64) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(v.to_string().as_bytes());
        self
    }

    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key);
        put_string(v, self.style, self.out);
        self
    }

    /// An array of `[a,b]` pairs (Have ranges, Ack entries).
    pub fn pairs(&mut self, key: &str, pairs: impl Iterator<Item = (u64, u64)>) -> &mut Self {
        self.key(key);
        self.out.push(b'[');
        for (i, (a, b)) in pairs.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(format!("[{a},{b}]").as_bytes());
        }
        self.out.push(b']');
        self
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// A JSON string. Compact: `"` `\` and control characters escaped as serde_json does (`\n`,
/// `\u001f`...). Python: the same plus every non-ASCII character as `\uXXXX` (surrogate pairs
/// above U+FFFF), as `json.dumps(ensure_ascii=True)` writes it.
pub fn put_string(s: &str, style: Style, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c if style == Style::Python && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
                }
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Why a field could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldError {
    /// The body is not UTF-8 JSON holding one object.
    NotObject,
    Missing(&'static str),
    /// Present with the wrong JSON type, or an integer with a sign, fraction or exponent.
    Mistyped(&'static str),
    /// An integer over 2^53-1 or over the field's own limit.
    OutOfRange(&'static str),
}

/// A parsed JSON object whose values are kept as their raw text.
pub struct Object {
    fields: BTreeMap<String, Box<RawValue>>,
}

impl Object {
    /// Parses one object (any key order; unknown keys are kept and ignored by callers).
    pub fn parse(json: &[u8]) -> Result<Object, FieldError> {
        serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(json)
            .map(|fields| Object { fields })
            .map_err(|_| FieldError::NotObject)
    }

    fn raw(&self, key: &'static str) -> Result<Option<&str>, FieldError> {
        Ok(self.fields.get(key).map(|r| r.get()))
    }

    /// An optional exact integer.
    pub fn opt_int(&self, key: &'static str) -> Result<Option<u64>, FieldError> {
        match self.raw(key)? {
            None => Ok(None),
            Some(text) => exact_int(text, key).map(Some),
        }
    }

    /// A required exact integer.
    pub fn int(&self, key: &'static str) -> Result<u64, FieldError> {
        self.opt_int(key)?.ok_or(FieldError::Missing(key))
    }

    /// A required integer that must fit in `u32`.
    pub fn u32(&self, key: &'static str) -> Result<u32, FieldError> {
        u32::try_from(self.int(key)?).map_err(|_| FieldError::OutOfRange(key))
    }

    pub fn opt_str(&self, key: &'static str) -> Result<Option<String>, FieldError> {
        match self.raw(key)? {
            None => Ok(None),
            Some(text) => serde_json::from_str::<String>(text)
                .map(Some)
                .map_err(|_| FieldError::Mistyped(key)),
        }
    }

    pub fn str(&self, key: &'static str) -> Result<String, FieldError> {
        self.opt_str(key)?.ok_or(FieldError::Missing(key))
    }

    /// An optional array of `[a, b]` pairs of exact integers.
    pub fn opt_pairs(&self, key: &'static str) -> Result<Option<Vec<(u64, u64)>>, FieldError> {
        let Some(text) = self.raw(key)? else {
            return Ok(None);
        };
        let items = serde_json::from_str::<Vec<[Box<RawValue>; 2]>>(text)
            .map_err(|_| FieldError::Mistyped(key))?;
        items
            .iter()
            .map(|[a, b]| Ok((exact_int(a.get(), key)?, exact_int(b.get(), key)?)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// An integer judged on its text: `0` or digits without a leading zero, at most 2^53-1.
pub fn exact_int(text: &str, key: &'static str) -> Result<u64, FieldError> {
    let b = text.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return Err(FieldError::Mistyped(key));
    }
    if b.len() > 16 {
        return Err(FieldError::OutOfRange(key));
    }
    let v: u64 = text.parse().map_err(|_| FieldError::Mistyped(key))?;
    if v > MAX_INT {
        return Err(FieldError::OutOfRange(key));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_and_python_styles() {
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Compact);
        w.int("A", 1)
            .str("B", "x\"y\\z\n\u{1}é")
            .pairs("C", [(0u64, 2u64), (3, 4)].into_iter());
        w.end();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"A\":1,\"B\":\"x\\\"y\\\\z\\n\\u0001é\",\"C\":[[0,2],[3,4]]}"
        );
        // What serde_json writes for the same string, so peers using it agree byte for byte.
        let s = "x\"y\\z\n\u{1}é\u{7f}/";
        let mut mine = Vec::new();
        put_string(s, Style::Compact, &mut mine);
        assert_eq!(mine, serde_json::to_vec(s).unwrap());
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Python);
        w.int("OneChunk", 262_144).str("FileName", "é😀/a");
        w.end();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"OneChunk": 262144, "FileName": "\u00e9\ud83d\ude00/a"}"#
        );
    }

    #[test]
    fn integers_are_judged_on_their_text() {
        for ok in ["0", "7", "9007199254740991"] {
            assert!(exact_int(ok, "k").is_ok(), "{ok}");
        }
        for (bad, e) in [
            ("9007199254740992", FieldError::OutOfRange("k")),
            ("123456789012345678901", FieldError::OutOfRange("k")),
            ("-1", FieldError::Mistyped("k")),
            ("-0", FieldError::Mistyped("k")),
            ("+1", FieldError::Mistyped("k")),
            ("", FieldError::Mistyped("k")),
            ("1.0", FieldError::Mistyped("k")),
            ("1e3", FieldError::Mistyped("k")),
            ("01", FieldError::Mistyped("k")),
            ("\"1\"", FieldError::Mistyped("k")),
            ("true", FieldError::Mistyped("k")),
            ("null", FieldError::Mistyped("k")),
        ] {
            assert_eq!(exact_int(bad, "k"), Err(e), "{bad}");
        }
        let o = Object::parse(br#" {"a": 5 , "b":"s", "p":[[1,2]], "x":{"y":1}} "#).unwrap();
        assert_eq!(o.int("a"), Ok(5));
        assert_eq!(o.str("b").as_deref(), Ok("s"));
        assert_eq!(o.str("a"), Err(FieldError::Mistyped("a")));
        assert_eq!(o.int("b"), Err(FieldError::Mistyped("b")));
        assert_eq!(o.int("zz"), Err(FieldError::Missing("zz")));
        assert_eq!(o.opt_pairs("p"), Ok(Some(vec![(1, 2)])));
        assert_eq!(o.opt_pairs("a"), Err(FieldError::Mistyped("a")));
        for bad in [
            &b"[1]"[..],
            b"\"s\"",
            b"",
            b"{",
            b"{}x",
            b"\xff",
            b"{\"a\":1,}",
        ] {
            assert!(Object::parse(bad).is_err(), "{bad:?}");
        }
        let o = Object::parse(br#"{"p":[[1,2,3]],"q":[[1.5,2]],"r":[1,2]}"#).unwrap();
        assert!(o.opt_pairs("p").is_err());
        assert!(o.opt_pairs("q").is_err());
        assert!(o.opt_pairs("r").is_err());
    }
}
