//! CJP2P datagram codec (cjp2p.md sections 2, 3 and 5): a datagram is one JSON array of
//! single-key objects. No I/O, no state.
//!
//! Decoding has two stages so that one bad element never costs the others: a cheap nesting
//! pre-check and `serde_json` into borrowed raw elements, then each element on its own into a
//! [`Message`]. Elements that fail (unknown type, several keys, wrong field types, negative or
//! fractional integers, bad ids) become [`Message::Unknown`] or are counted as bad and skipped.
//! Encoding (`encode`) writes compact JSON with the keys in the order the reference sends them,
//! and [`DatagramBuilder`] appends encoded elements while checking a byte limit, so that a reply
//! can be split over several datagrams. `fast` parses the bulk `Content` datagrams without
//! serde.
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

mod encode;
mod fast;

pub use encode::{content_encoded_len, content_fit, encode_content, DatagramBuilder, ListParts};

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

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn one(data: &str) -> Vec<Message> {
        parse_datagram(data.as_bytes()).unwrap().messages
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
        // (The fast path may take that one: the depth check itself, strings with escapes too.)
        assert_eq!(check_depth(s.as_bytes()), Ok(()));
        let escaped = format!("[\"\\\"{}\"]", "{".repeat(500));
        assert_eq!(check_depth(escaped.as_bytes()), Ok(()));
        assert_eq!(check_depth(deep.as_bytes()), Err(DatagramError::TooDeep));
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
