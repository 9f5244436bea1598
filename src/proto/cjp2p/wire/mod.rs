//! CJP2P datagram codec (cjp2p.md sections 2, 3 and 5): a datagram is one JSON array of
//! single-key objects. No I/O, no state.
//!
//! Decoding has two stages so that one bad element never costs the others: a cheap nesting
//! pre-check and `serde_json` into borrowed raw elements, then each element on its own into a
//! [`Message`]. Elements that fail (unknown type, several keys, wrong field types, negative or
//! fractional integers, bad ids) become [`Message::Unknown`] or are counted as bad and skipped.
//! Encoding writes compact JSON with the keys in the order the reference sends them, and
//! [`DatagramBuilder`] appends encoded elements while checking a byte limit, so that a reply can
//! be split over several datagrams.
//!
//! ```text
//! [{"PleaseSendContent":{"id":"<64 hex>","length":4096,"offset":0}},
//!  {"AlwaysReturned":{"cookie":"3d7f40e6"}}]
//! [{"Content":{"id":"<64 hex>","offset":0,"base64":"<standard, padded>","eof":67108864}}]
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::transport::canonical_addr;

/// A content id: the SHA-256 of the whole content (64 lowercase hex on the wire).
pub type Id = [u8; 32];

/// Deepest nesting of arrays and objects accepted in a datagram (the outer array counts).
pub const MAX_DEPTH: usize = 128;
/// Most elements of one datagram that are looked at; the rest are ignored.
pub const MAX_ELEMENTS: usize = 64;
/// Largest peer offer (`PleaseAlwaysReturnThisMessage` payload) ferry stores and echoes.
pub const MAX_OFFER: usize = 256;
/// Most list entries (`Peers`, `MaybeTheyHaveSome`, `ContentList`) kept from one element.
pub const MAX_LIST_ENTRIES: usize = 256;

/// Strict standard-alphabet base64 with canonical `=` padding and no trailing bits (SIMD:
/// about 9 GB/s here against 2.5 for the scalar `base64` crate, and Content is mostly base64).
const B64: base64_simd::Base64 = base64_simd::STANDARD;

/// Why a whole datagram was dropped (cjp2p.md section 2). Small and `Copy`: nothing is replied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramError {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not JSON, or JSON that is not an array.
    NotArray,
}

impl fmt::Display for DatagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatagramError::NotUtf8 => f.write_str("cjp2p datagram: not utf-8"),
            DatagramError::TooDeep => {
                write!(f, "cjp2p datagram: nested deeper than {MAX_DEPTH}")
            }
            DatagramError::NotArray => f.write_str("cjp2p datagram: not a json array"),
        }
    }
}

impl std::error::Error for DatagramError {}

/// One message of a datagram. Raw payloads (`String`s of valid JSON) are kept byte for byte so
/// they can be echoed.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// An offer: the payload the sender wants echoed (any JSON; ferry's own is `{"cookie":S}`).
    PleaseAlwaysReturnThisMessage(String),
    /// An echo of an offer.
    AlwaysReturned(String),
    PleaseSendPeers,
    /// Entries parsed one by one; bad ones are skipped. Normalised (IPv4-mapped to IPv4).
    Peers(Vec<SocketAddr>),
    /// RTT probe; the payload is echoed verbatim.
    PleaseReturnThisMessage(String),
    ReturnedMessage(String),
    PleaseSendContent {
        id: Id,
        offset: u64,
        length: u64,
    },
    /// `eof` is the total length of the content (absent means "more follows" to the reference).
    Content {
        id: Id,
        offset: u64,
        data: Vec<u8>,
        eof: Option<u64>,
    },
    MaybeTheyHaveSome {
        id: Id,
        peers: Vec<SocketAddr>,
    },
    PleaseListContent,
    /// `[id, size]` entries; bad entries skipped.
    ContentList(Vec<(Id, u64)>),
    /// Ferry extension (section 3.7).
    FerryHello {
        version: u64,
        max_length: u64,
    },
    /// A well-formed single-key object of a type ferry does not handle.
    Unknown,
}

/// A decoded datagram: its messages in array order, at most [`MAX_ELEMENTS`] looked at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Datagram {
    pub messages: Vec<Message>,
    /// Elements skipped because they did not parse (not counting unknown types).
    pub bad_elements: usize,
    /// Elements beyond [`MAX_ELEMENTS`], not looked at.
    pub ignored_elements: usize,
}

mod fast;

/// Decode a datagram. Never panics; bad elements are skipped and counted. `Content` datagrams of
/// the compact shape ferry and the reference send take a fast path that gives the same result
/// (see `fast`).
pub fn parse_datagram(data: &[u8]) -> Result<Datagram, DatagramError> {
    match fast::parse(data) {
        Some(dg) => Ok(dg),
        None => general_parse(data),
    }
}

/// [`parse_datagram`] without the fast path.
fn general_parse(data: &[u8]) -> Result<Datagram, DatagramError> {
    let text = std::str::from_utf8(data).map_err(|_| DatagramError::NotUtf8)?;
    check_depth(text.as_bytes())?;
    let raw: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| DatagramError::NotArray)?;
    let mut out = Datagram {
        ignored_elements: raw.len().saturating_sub(MAX_ELEMENTS),
        ..Datagram::default()
    };
    for el in raw.into_iter().take(MAX_ELEMENTS) {
        match parse_element(el) {
            Some(m) => out.messages.push(m),
            None => out.bad_elements += 1,
        }
    }
    Ok(out)
}

/// Reject nesting deeper than [`MAX_DEPTH`] before any allocation-heavy parsing. Brackets
/// inside strings do not count; malformed JSON is left for `serde_json` to refuse.
fn check_depth(bytes: &[u8]) -> Result<(), DatagramError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // Skip a whole string in one vectorised scan (memchr2): a Content datagram is almost
            // all base64 text, and a byte-at-a-time loop over it cost more than decoding it.
            b'"' => {
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                        Some(k) if bytes[i + k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k;
                            break;
                        }
                        None => return Ok(()),
                    }
                    if i >= bytes.len() {
                        return Ok(());
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(DatagramError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// An object with exactly one key; its value kept raw.
struct OneKey<'a> {
    key: String,
    value: &'a RawValue,
}

impl<'de> Deserialize<'de> for OneKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de> Visitor<'de> for V<'de> {
            type Value = OneKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with one key")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OneKey<'de>, A::Error> {
                let Some(key) = m.next_key::<String>()? else {
                    return Err(de::Error::custom("empty object"));
                };
                let value: &'de RawValue = m.next_value()?;
                if m.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("several keys"));
                }
                Ok(OneKey { key, value })
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct Empty {}

#[derive(Deserialize)]
struct SendContentP<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    length: u64,
    offset: u64,
}

#[derive(Deserialize)]
struct ContentP<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    offset: u64,
    #[serde(borrow)]
    base64: Cow<'a, str>,
    eof: Option<u64>,
}

#[derive(Deserialize)]
struct PeersP<'a> {
    #[serde(borrow)]
    peers: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct MaybeP<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    peers: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ListP<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct HelloP {
    version: u64,
    max_length: u64,
}

#[derive(Deserialize)]
struct CookieP<'a> {
    #[serde(borrow)]
    cookie: Cow<'a, str>,
}

fn payload<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// The payload must be a JSON object (spec 2); raw payloads are kept only then.
fn raw_object(raw: &RawValue) -> Option<String> {
    raw.get().starts_with('{').then(|| raw.get().to_owned())
}

fn parse_element(el: &RawValue) -> Option<Message> {
    let OneKey { key, value } = serde_json::from_str(el.get()).ok()?;
    Some(match key.as_str() {
        "PleaseAlwaysReturnThisMessage" => {
            Message::PleaseAlwaysReturnThisMessage(value.get().to_owned())
        }
        "AlwaysReturned" => Message::AlwaysReturned(value.get().to_owned()),
        "PleaseSendPeers" => {
            payload::<Empty>(value)?;
            Message::PleaseSendPeers
        }
        "PleaseListContent" => {
            payload::<Empty>(value)?;
            Message::PleaseListContent
        }
        "Peers" => Message::Peers(addr_list(&payload::<PeersP>(value)?.peers)),
        "PleaseReturnThisMessage" => Message::PleaseReturnThisMessage(raw_object(value)?),
        "ReturnedMessage" => Message::ReturnedMessage(raw_object(value)?),
        "PleaseSendContent" => {
            let p: SendContentP = payload(value)?;
            Message::PleaseSendContent {
                id: parse_id(&p.id)?,
                offset: p.offset,
                length: p.length,
            }
        }
        "Content" => {
            let p: ContentP = payload(value)?;
            Message::Content {
                id: parse_id(&p.id)?,
                offset: p.offset,
                data: B64.decode_to_vec(p.base64.as_bytes()).ok()?,
                eof: p.eof,
            }
        }
        "MaybeTheyHaveSome" => {
            let p: MaybeP = payload(value)?;
            Message::MaybeTheyHaveSome {
                id: parse_id(&p.id)?,
                peers: addr_list(&p.peers),
            }
        }
        "ContentList" => {
            let p: ListP = payload(value)?;
            let results = p
                .results
                .iter()
                .filter_map(|r| {
                    let (id, size): (Cow<str>, u64) = payload(r)?;
                    Some((parse_id(&id)?, size))
                })
                .take(MAX_LIST_ENTRIES)
                .collect();
            Message::ContentList(results)
        }
        "FerryHello" => {
            let p: HelloP = payload(value)?;
            Message::FerryHello {
                version: p.version,
                max_length: p.max_length,
            }
        }
        _ => Message::Unknown,
    })
}

fn addr_list(raw: &[&RawValue]) -> Vec<SocketAddr> {
    raw.iter()
        .filter_map(|r| parse_addr(&payload::<Cow<str>>(r)?))
        .take(MAX_LIST_ENTRIES)
        .collect()
}

/// The `cookie` string of a `{"cookie":S}` payload (the only shape the reference uses).
pub fn cookie_of(raw: &str) -> Option<Cow<'_, str>> {
    serde_json::from_str::<CookieP>(raw).ok().map(|p| p.cookie)
}

/// A `{"cookie":S}` payload as raw JSON (S is escaped as needed).
pub fn cookie_payload(cookie: &str) -> String {
    let mut s = String::from("{\"cookie\":");
    s.push_str(&serde_json::Value::from(cookie).to_string());
    s.push('}');
    s
}

/// Parse an id: exactly 64 characters of `[0-9a-f]` (spec 5). Anything else is not an id.
pub fn parse_id(s: &str) -> Option<Id> {
    crate::wire::hex::parse_sha256(s)
}

/// An id as 64 lowercase hex characters.
pub fn id_hex(id: &Id) -> String {
    crate::wire::hex::encode(id)
}

/// Strict `ip:port`: dotted IPv4 or bracketed IPv6 with a decimal port; no host names, zone ids,
/// signs or spaces. IPv4-mapped IPv6 becomes IPv4 (spec 2, [`canonical_addr`]).
pub fn parse_addr(s: &str) -> Option<SocketAddr> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, b'.' | b':' | b'[' | b']'));
    if !ok {
        return None;
    }
    let addr: SocketAddr = s.parse().ok()?;
    // Rust's parser already rejects leading zeros in IPv4 octets; check the port has no
    // leading zeros either, so printing gives back the same text.
    let port = s.rsplit(':').next()?;
    if port.len() > 1 && port.starts_with('0') {
        return None;
    }
    Some(canonical_addr(addr))
}

/// The wire text of an address: `a.b.c.d:p` or `[v6]:p`.
pub fn addr_text(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn push_str_field(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// The three list messages, encoded as prefix, entries and suffix so that a list can be cut to
/// the entries that fit ([`DatagramBuilder::push_list`]).
pub struct ListParts {
    pub prefix: Vec<u8>,
    pub entries: Vec<Vec<u8>>,
    pub suffix: &'static [u8],
}

impl ListParts {
    pub fn peers(peers: &[SocketAddr]) -> ListParts {
        ListParts {
            prefix: b"{\"Peers\":{\"peers\":[".to_vec(),
            entries: peers.iter().map(addr_entry).collect(),
            suffix: b"]}}",
        }
    }

    pub fn maybe(id: &Id, peers: &[SocketAddr]) -> ListParts {
        let mut prefix = b"{\"MaybeTheyHaveSome\":{\"id\":".to_vec();
        push_str_field(&mut prefix, &id_hex(id));
        prefix.extend_from_slice(b",\"peers\":[");
        ListParts {
            prefix,
            entries: peers.iter().map(addr_entry).collect(),
            suffix: b"]}}",
        }
    }

    pub fn content_list(results: &[(Id, u64)]) -> ListParts {
        let entries = results
            .iter()
            .map(|(id, size)| {
                let mut e = b"[".to_vec();
                push_str_field(&mut e, &id_hex(id));
                e.extend_from_slice(format!(",{size}]").as_bytes());
                e
            })
            .collect();
        ListParts {
            prefix: b"{\"ContentList\":{\"results\":[".to_vec(),
            entries,
            suffix: b"]}}",
        }
    }

    /// Encoded length with the first `n` entries.
    pub fn len_with(&self, n: usize) -> usize {
        let entries: usize = self.entries[..n].iter().map(Vec::len).sum();
        self.prefix.len() + entries + n.saturating_sub(1) + self.suffix.len()
    }

    /// Encoding with the first `n` entries.
    pub fn encode_with(&self, n: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        for (i, e) in self.entries[..n].iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e);
        }
        out.extend_from_slice(self.suffix);
    }
}

fn addr_entry(a: &SocketAddr) -> Vec<u8> {
    let mut e = Vec::new();
    push_str_field(&mut e, &addr_text(a));
    e
}

impl Message {
    /// Append the compact JSON of this element.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let raw = |out: &mut Vec<u8>, name: &str, r: &str| {
            out.extend_from_slice(b"{\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(r.as_bytes());
            out.push(b'}');
        };
        match self {
            Message::PleaseAlwaysReturnThisMessage(r) => {
                raw(out, "PleaseAlwaysReturnThisMessage", r)
            }
            Message::AlwaysReturned(r) => raw(out, "AlwaysReturned", r),
            Message::PleaseSendPeers => out.extend_from_slice(b"{\"PleaseSendPeers\":{}}"),
            Message::Peers(p) => ListParts::peers(p).encode_with(p.len(), out),
            Message::PleaseReturnThisMessage(r) => raw(out, "PleaseReturnThisMessage", r),
            Message::ReturnedMessage(r) => raw(out, "ReturnedMessage", r),
            Message::PleaseSendContent { id, offset, length } => {
                out.extend_from_slice(b"{\"PleaseSendContent\":{\"id\":");
                push_str_field(out, &id_hex(id));
                out.extend_from_slice(
                    format!(",\"length\":{length},\"offset\":{offset}}}}}").as_bytes(),
                );
            }
            Message::Content {
                id,
                offset,
                data,
                eof,
            } => encode_content(id, *offset, data, *eof, out),
            Message::MaybeTheyHaveSome { id, peers } => {
                ListParts::maybe(id, peers).encode_with(peers.len(), out)
            }
            Message::PleaseListContent => out.extend_from_slice(b"{\"PleaseListContent\":{}}"),
            Message::ContentList(r) => ListParts::content_list(r).encode_with(r.len(), out),
            Message::FerryHello {
                version,
                max_length,
            } => out.extend_from_slice(
                format!("{{\"FerryHello\":{{\"version\":{version},\"max_length\":{max_length}}}}}")
                    .as_bytes(),
            ),
            Message::Unknown => {}
        }
    }

    /// Whether this message asks the receiver for an answer (content, a list, peers, an echo).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::PleaseSendContent { .. }
                | Message::PleaseListContent
                | Message::PleaseSendPeers
                | Message::PleaseReturnThisMessage(_)
        )
    }

    /// Length of [`Message::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            // {"PleaseSendContent":{"id":"<64>","length":L,"offset":O}}: the request of every
            // block, measured without encoding it.
            Message::PleaseSendContent { offset, length, .. } => {
                115 + digits(*length) + digits(*offset)
            }
            Message::Content {
                id,
                offset,
                data,
                eof,
            } => content_encoded_len(id, *offset, data.len(), *eof),
            _ => {
                let mut v = Vec::new();
                self.encode(&mut v);
                v.len()
            }
        }
    }
}

/// Append a `Content` element carrying `data`.
pub fn encode_content(id: &Id, offset: u64, data: &[u8], eof: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"Content\":{\"id\":");
    push_str_field(out, &id_hex(id));
    out.extend_from_slice(b",\"offset\":");
    push_u64(out, offset);
    out.extend_from_slice(b",\"base64\":\"");
    let start = out.len();
    out.resize(start + base64_len(data.len()), 0);
    // The buffer has exactly the encoded length (`encode` panics if it were short).
    let written = B64
        .encode(data, base64_simd::Out::from_slice(&mut out[start..]))
        .len();
    debug_assert_eq!(start + written, out.len());
    out.push(b'"');
    if let Some(eof) = eof {
        out.extend_from_slice(b",\"eof\":");
        push_u64(out, eof);
    }
    out.extend_from_slice(b"}}");
}

/// Appends the decimal digits of `n` (no allocation: this runs for every block sent).
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Encoded length of a `Content` element with `data_len` bytes of data.
pub fn content_encoded_len(_id: &Id, offset: u64, data_len: usize, eof: Option<u64>) -> usize {
    // {"Content":{"id":"<64>","offset":N,"base64":"<b64>","eof":E}}
    18 + 64
        + 11
        + digits(offset)
        + 11
        + base64_len(data_len)
        + 1
        + eof.map_or(0, |e| 7 + digits(e))
        + 2
}

/// Most data bytes a `Content` element may carry and still be at most `room` bytes long.
pub fn content_fit(id: &Id, offset: u64, eof: Option<u64>, room: usize) -> Option<usize> {
    let base = content_encoded_len(id, offset, 0, eof);
    (room >= base).then(|| (room - base) / 4 * 3)
}

/// Builds one datagram element by element within a byte limit.
#[derive(Debug)]
pub struct DatagramBuilder {
    buf: Vec<u8>,
    limit: usize,
    elements: usize,
}

impl DatagramBuilder {
    pub fn new(limit: usize) -> DatagramBuilder {
        DatagramBuilder {
            buf: vec![b'['],
            limit,
            elements: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Raise or lower the limit (a datagram with `Content` may use `content_max`).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Length of the finished datagram as it stands.
    pub fn len(&self) -> usize {
        self.buf.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        self.elements == 0
    }

    pub fn elements(&self) -> usize {
        self.elements
    }

    /// Longest element that still fits (separator and closing bracket accounted for).
    pub fn room(&self) -> usize {
        self.limit
            .saturating_sub(self.len() + usize::from(self.elements > 0))
    }

    /// Append an encoded element if it fits.
    pub fn try_push_encoded(&mut self, el: &[u8]) -> bool {
        if el.len() > self.room() {
            return false;
        }
        if self.elements > 0 {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(el);
        self.elements += 1;
        true
    }

    /// Append a message if it fits. [`Message::Unknown`] has no encoding and is refused.
    pub fn try_push(&mut self, msg: &Message) -> bool {
        if matches!(msg, Message::Unknown) || msg.encoded_len() > self.room() {
            return false;
        }
        let mut el = Vec::new();
        msg.encode(&mut el);
        self.try_push_encoded(&el)
    }

    /// Append as many leading entries of a list as fit (all of them if the list is empty).
    /// Returns the number of entries written, or `None` if not even the empty list fits or a
    /// non-empty list fits with no entry.
    pub fn push_list(&mut self, list: &ListParts) -> Option<usize> {
        let room = self.room();
        let mut n = 0;
        while n < list.entries.len() && list.len_with(n + 1) <= room {
            n += 1;
        }
        if list.len_with(n) > room || (n == 0 && !list.entries.is_empty()) {
            return None;
        }
        let mut el = Vec::new();
        list.encode_with(n, &mut el);
        self.try_push_encoded(&el);
        Some(n)
    }

    /// Append a `Content` element if it fits.
    pub fn push_content(&mut self, id: &Id, offset: u64, data: &[u8], eof: Option<u64>) -> bool {
        if content_encoded_len(id, offset, data.len(), eof) > self.room() {
            return false;
        }
        if self.elements > 0 {
            self.buf.push(b',');
        }
        encode_content(id, offset, data, eof, &mut self.buf);
        self.elements += 1;
        true
    }

    /// The datagram bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b']');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn one(data: &str) -> Vec<Message> {
        parse_datagram(data.as_bytes()).unwrap().messages
    }

    fn enc(m: &Message) -> String {
        let mut v = Vec::new();
        m.encode(&mut v);
        assert_eq!(v.len(), m.encoded_len());
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn c3_bad_elements_skipped_rest_handled() {
        let d = format!(
            r#"[1,{{}},{{"PleaseSendPeers":{{}},"X":{{}}}},{{"PleaseSendContent":{{"id":"{ID}","length":"16","offset":0}}}},
            {{"PleaseSendContent":{{"id":"{ID}","length":-1,"offset":0}}}},
            {{"PleaseSendContent":{{"id":"{ID}","length":1e30,"offset":0}}}},
            {{"PleaseSendContent":{{"id":"{ID}","length":1.5,"offset":0}}}},
            {{"PleaseSendContent":{{"id":"{ID}","offset":0}}}},
            {{"PleaseSendContent":{{"id":"{ID}","length":18446744073709551616,"offset":0}}}},
            {{"PleaseSendContent":{{"offset":7,"extra":[1,2],"length":4096,"id":"{ID}"}}}},
            {{"PleaseSendPeers":{{}}}}]"#
        );
        let dg = parse_datagram(d.as_bytes()).unwrap();
        assert_eq!(dg.bad_elements, 9);
        assert_eq!(dg.messages.len(), 2);
        assert_eq!(
            dg.messages[0],
            Message::PleaseSendContent {
                id: parse_id(ID).unwrap(),
                offset: 7,
                length: 4096
            }
        );
        assert_eq!(dg.messages[1], Message::PleaseSendPeers);
    }

    #[test]
    fn c4_not_utf8_not_array_too_deep() {
        assert_eq!(parse_datagram(b"[\xff]"), Err(DatagramError::NotUtf8));
        assert_eq!(parse_datagram(b"{}"), Err(DatagramError::NotArray));
        assert_eq!(parse_datagram(b"[1,"), Err(DatagramError::NotArray));
        assert_eq!(parse_datagram(b""), Err(DatagramError::NotArray));
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert_eq!(parse_datagram(deep.as_bytes()), Err(DatagramError::TooDeep));
        let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(parse_datagram(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let s = format!("[\"{}\"]", "[".repeat(500));
        assert!(parse_datagram(s.as_bytes()).is_ok());
        assert!(DatagramError::TooDeep
            .to_string()
            .starts_with("cjp2p datagram: "));
    }

    #[test]
    fn c5_unknown_types_and_fields() {
        let m =
            one(r#"[{"SignedMessage":{"a":1}},{"PleaseSendPeers":{"x":[1]}},{"Forwarded":{}}]"#);
        assert_eq!(
            m,
            vec![Message::Unknown, Message::PleaseSendPeers, Message::Unknown]
        );
    }

    #[test]
    fn at_most_64_elements() {
        let d = format!("[{}]", vec![r#"{"PleaseSendPeers":{}}"#; 70].join(","));
        let dg = parse_datagram(d.as_bytes()).unwrap();
        assert_eq!(dg.messages.len(), 64);
        assert_eq!(dg.ignored_elements, 6);
    }

    #[test]
    fn c22_id_grammar() {
        assert!(parse_id(ID).is_some());
        for bad in [
            &ID.to_uppercase(),
            &ID[1..],
            &format!("{ID}0"),
            "../x",
            ".hidden",
            &format!("blake3/../../{}", &ID[..50]),
            "a\\b",
            &format!("{}\0", &ID[..63]),
            &format!("/{}", &ID[..63]),
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        assert_eq!(id_hex(&parse_id(ID).unwrap()), ID);
        let d = r#"[{"PleaseSendContent":{"id":"../x","length":1,"offset":0}}]"#;
        assert_eq!(parse_datagram(d.as_bytes()).unwrap().bad_elements, 1);
    }

    #[test]
    fn c18_strict_addresses() {
        for (s, v) in [
            ("203.0.113.7:24254", "203.0.113.7:24254"),
            ("[2001:db8::1]:24254", "[2001:db8::1]:24254"),
            ("[::ffff:1.2.3.4]:5", "1.2.3.4:5"),
            ("[::1]:9", "[::1]:9"),
        ] {
            assert_eq!(addr_text(&parse_addr(s).unwrap()), v);
        }
        for bad in [
            "::1:24254",
            "localhost:1",
            "1.2.3.4",
            "01.2.3.4:5",
            "1.2.3.4:+5",
            "1.2.3.4:05",
            "[fe80::1%2]:5",
            " 1.2.3.4:5",
            "1.2.3.4:65536",
            "[::1]",
        ] {
            assert_eq!(parse_addr(bad), None, "{bad:?}");
        }
        let m = one(r#"[{"Peers":{"peers":["1.2.3.4:5",7,"::1:24254","[::1]:6"]}}]"#);
        assert_eq!(
            m,
            vec![Message::Peers(vec![
                "1.2.3.4:5".parse().unwrap(),
                "[::1]:6".parse().unwrap()
            ])]
        );
    }

    #[test]
    fn content_roundtrip_and_strict_base64() {
        let id = parse_id(ID).unwrap();
        let m = Message::Content {
            id,
            offset: 0,
            data: b"hi".to_vec(),
            eof: Some(2),
        };
        let s = enc(&m);
        assert_eq!(
            s,
            format!(r#"{{"Content":{{"id":"{ID}","offset":0,"base64":"aGk=","eof":2}}}}"#)
        );
        assert_eq!(one(&format!("[{s}]")), vec![m]);
        for bad in ["aGk", "aGk==", "aGl=", "a-k=", "aG k="] {
            let d =
                format!(r#"[{{"Content":{{"id":"{ID}","offset":0,"base64":"{bad}","eof":2}}}}]"#);
            assert_eq!(
                parse_datagram(d.as_bytes()).unwrap().bad_elements,
                1,
                "{bad}"
            );
        }
        let empty = Message::Content {
            id,
            offset: 5,
            data: vec![],
            eof: Some(5),
        };
        assert!(enc(&empty).contains(r#""base64":"","eof":5"#));
        assert_eq!(content_fit(&id, 0, Some(2), s.len()), Some(3));
        // Every tail length and the block sizes in use, through the vectorised paths.
        for n in (0..130).chain([4096, 32767, 32768, 40960]) {
            let data: Vec<u8> = (0..n).map(|i| (i * 151 + i / 3) as u8).collect();
            let m = Message::Content {
                id,
                offset: 4096,
                data,
                eof: Some(1 << 40),
            };
            assert_eq!(one(&format!("[{}]", enc(&m))), vec![m], "{n}");
        }
    }

    #[test]
    fn encode_shapes() {
        let id = parse_id(ID).unwrap();
        let offer = cookie_payload("3d7f40e6");
        assert_eq!(
            enc(&Message::PleaseAlwaysReturnThisMessage(offer.clone())).len(),
            55
        );
        assert_eq!(
            enc(&Message::AlwaysReturned(offer)),
            r#"{"AlwaysReturned":{"cookie":"3d7f40e6"}}"#
        );
        assert_eq!(
            enc(&Message::FerryHello {
                version: 1,
                max_length: 40960
            })
            .len(),
            47
        );
        assert_eq!(
            enc(&Message::PleaseSendContent {
                id,
                offset: 0,
                length: 4096
            }),
            format!(r#"{{"PleaseSendContent":{{"id":"{ID}","length":4096,"offset":0}}}}"#)
        );
        let l = Message::ContentList(vec![(id, 8)]);
        assert_eq!(
            enc(&l),
            format!(r#"{{"ContentList":{{"results":[["{ID}",8]]}}}}"#)
        );
        assert_eq!(one(&format!("[{}]", enc(&l))), vec![l]);
        let mh = Message::MaybeTheyHaveSome {
            id,
            peers: vec!["1.2.3.4:5".parse().unwrap()],
        };
        assert_eq!(one(&format!("[{}]", enc(&mh))), vec![mh]);
        assert_eq!(enc(&Message::Peers(vec![])), r#"{"Peers":{"peers":[]}}"#);
    }

    #[test]
    fn request_length_is_computed_exactly() {
        let id = parse_id(ID).unwrap();
        for (offset, length) in [
            (0, 0),
            (0, 4096),
            (9, 10),
            (1 << 40, 40960),
            (u64::MAX, u64::MAX),
        ] {
            let m = Message::PleaseSendContent { id, offset, length };
            let mut v = Vec::new();
            m.encode(&mut v);
            assert_eq!(m.encoded_len(), v.len(), "{offset} {length}");
        }
        let mut v = Vec::new();
        for n in [0u64, 7, 10, 99, 100, 4096, u64::MAX] {
            v.clear();
            push_u64(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }

    #[test]
    fn builder_limits_and_lists() {
        let mut b = DatagramBuilder::new(30);
        assert!(!b.try_push(&Message::Unknown));
        assert!(b.try_push(&Message::PleaseSendPeers));
        assert!(!b.try_push(&Message::PleaseSendPeers));
        assert_eq!(b.finish(), br#"[{"PleaseSendPeers":{}}]"#.to_vec());
        let peers: Vec<SocketAddr> = (1..=50)
            .map(|i| format!("10.0.0.{i}:1").parse().unwrap())
            .collect();
        let mut b = DatagramBuilder::new(200);
        let n = b.push_list(&ListParts::peers(&peers)).unwrap();
        assert!(n > 0 && n < 50);
        let out = b.finish();
        assert!(out.len() <= 200);
        let got = one(std::str::from_utf8(&out).unwrap());
        assert!(matches!(&got[0], Message::Peers(p) if p.len() == n));
        let mut b = DatagramBuilder::new(20);
        assert_eq!(b.push_list(&ListParts::peers(&peers)), None);
    }

    #[test]
    fn no_panic_on_truncations_and_random_bytes() {
        let fixtures = [
            format!(r#"[{{"PleaseSendContent":{{"id":"{ID}","length":4096,"offset":0}}}},{{"AlwaysReturned":{{"cookie":"3d7f40e6"}}}}]"#),
            format!(r#"[{{"Content":{{"id":"{ID}","offset":0,"base64":"aGk=","eof":2}}}}]"#),
            r#"[{"Peers":{"peers":["1.2.3.4:5","[::1]:6"]}},{"PleaseReturnThisMessage":{"cookie":"0.1"}}]"#.to_string(),
            format!(r#"[{{"ContentList":{{"results":[["{ID}",8]]}}}},{{"FerryHello":{{"version":1,"max_length":40960}}}}]"#),
        ];
        for f in &fixtures {
            for i in 0..=f.len() {
                let _ = parse_datagram(&f.as_bytes()[..i]);
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = br#"[]{}",:0123456789abcdef-.eE\ ntrulsPeCoAR"#;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            let mut d = Vec::with_capacity(len);
            let mut y = x;
            for _ in 0..len {
                y = y
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let c = (y >> 33) as usize;
                d.push(if c % 4 == 0 {
                    (c >> 8) as u8
                } else {
                    alphabet[(c >> 8) % alphabet.len()]
                });
            }
            let _ = parse_datagram(&d);
        }
    }
}
