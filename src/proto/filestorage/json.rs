//! The JSON of filestorage messages (spec 2.2, 4, 6): a checked parse, the typed messages, and
//! encoders that write compact JSON with keys in the order of the spec's examples.
//!
//! # Parsing
//! [`parse_object`] builds a [`Value`] tree with `serde_json` doing the tokenizing (UTF-8,
//! escapes, surrogates, numbers, trailing bytes) and a visitor of ours adding what
//! `serde_json::Value` does not do: a duplicate key anywhere is an error (serde_json's `Value`
//! silently keeps the last one), nesting is at most [`MAX_DEPTH`] (the top object is depth 1),
//! and numbers keep their kind, so `1002.0`, `1e3` and integers beyond 64 bits are never read as
//! integers. Strings without escapes borrow from the input, so a TRANSFER's 87 KB of base64 is
//! not copied. Trailing JSON whitespace after the object is accepted (receivers accept any
//! whitespace); any other trailing byte is refused.
//!
//! Memory: the tree of one frame (at most 99,991 bytes of JSON) has at most one node per two
//! input bytes, a few MB at worst, and lives only while its frame is handled. Duplicate keys are
//! found by sorting, so a 20,000-key object costs `n log n`, not `n^2`.
//!
//! The typed readers ([`parse_request`], [`parse_response`]) then apply the spec's shapes:
//! missing key, wrong JSON type, integer outside 0..2^53-1 (or narrower), bad UUID text, nil
//! `message-id`/`fid` are all [`Malformed`]; unknown keys are ignored. UUID strings must be
//! written literally (36 characters, no escapes), which lets `message-id` be echoed byte for
//! byte.
//!
//! # Encoding
//! The `encode_*` functions append one message's JSON (no frame) to a buffer; every frame of
//! spec 4.5 and 6 is reproduced by them byte for byte (tests below, S1).

use super::base64;
use super::ids::{Uuid, UUID_TEXT_LEN};
use super::reason::Reason;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Deepest nesting accepted; the top-level object is depth 1 (spec 2.2).
pub const MAX_DEPTH: usize = 32;
/// Largest integer accepted anywhere: 2^53 - 1, exact in every JSON parser (spec 2.2).
pub const MAX_INT: u64 = (1 << 53) - 1;

/// User message types (spec 2.1).
pub mod utype {
    pub const AUTHENTICATION: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const TRANSFER: u8 = 3;
    pub const QUERY: u8 = 4;
    pub const FETCH: u8 = 5;
}

/// A JSON value as the checked parser keeps it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer written without fraction or exponent.
    Int(u64),
    /// A negative integer.
    NegInt(i64),
    /// A number with a fraction or exponent, or an integer beyond 64 bits.
    Float,
    Str(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Object(Object<'a>),
}

/// A JSON object whose keys are known to be distinct.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Object<'a> {
    entries: Vec<(Cow<'a, str>, Value<'a>)>,
}

/// JSON that is not acceptable at all (before any message shape is looked at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// serde_json refused it: bad syntax, bad UTF-8, a lone surrogate, trailing bytes...
    Syntax,
    /// One object has the same key twice.
    DuplicateKey,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The top-level value is not an object.
    NotObject,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonError::Syntax => "json: invalid",
            JsonError::DuplicateKey => "json: duplicate key",
            JsonError::TooDeep => "json: nesting deeper than 32",
            JsonError::NotObject => "json: not an object",
        })
    }
}

impl std::error::Error for JsonError {}

const DUPLICATE: &str = "duplicate key";
const TOO_DEEP: &str = "nesting too deep";

struct ValueSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Int(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Value::Int(u),
            Err(_) => Value::NegInt(v),
        })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value<'de>, E> {
        Ok(Value::Float)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom(TOO_DEEP));
        }
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed { depth })? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom(TOO_DEEP));
        }
        let mut entries = Vec::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let v = map.next_value_seed(ValueSeed { depth })?;
            entries.push((k, v));
        }
        if has_duplicate(&entries) {
            return Err(de::Error::custom(DUPLICATE));
        }
        Ok(Value::Object(Object { entries }))
    }
}

/// Whether two entries share a key: pairwise for small objects, by sorting otherwise.
fn has_duplicate(entries: &[(Cow<'_, str>, Value<'_>)]) -> bool {
    if entries.len() <= 8 {
        return entries
            .iter()
            .enumerate()
            .any(|(i, (k, _))| entries[..i].iter().any(|(j, _)| j == k));
    }
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Parses one JSON object with the checks of the module doc.
pub fn parse_object(json: &[u8]) -> Result<Object<'_>, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = ValueSeed { depth: 0 }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            let text = e.to_string();
            if text.starts_with(DUPLICATE) {
                JsonError::DuplicateKey
            } else if text.starts_with(TOO_DEEP) {
                JsonError::TooDeep
            } else {
                JsonError::Syntax
            }
        })?;
    match value {
        Value::Object(o) => Ok(o),
        _ => Err(JsonError::NotObject),
    }
}

/// A message whose shape is wrong (spec 2.2): the reply is `malformed`. `what` names the rule
/// broken, for logs and tests; it never goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The request's `message-id` when it could be read, for the reply.
    pub message_id: Option<MessageId>,
    pub what: &'static str,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed: {}", self.what)
    }
}

impl std::error::Error for Malformed {}

pub(crate) type Shape<T> = Result<T, &'static str>;

impl<'a> Object<'a> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys in input order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    pub(crate) fn req(&self, key: &'static str) -> Shape<&Value<'a>> {
        self.get(key).ok_or(key)
    }

    pub(crate) fn str(&self, key: &'static str) -> Shape<&Cow<'a, str>> {
        as_str(self.req(key)?).ok_or(key)
    }

    pub(crate) fn opt_str(&self, key: &'static str) -> Shape<Option<&Cow<'a, str>>> {
        self.get(key).map(|v| as_str(v).ok_or(key)).transpose()
    }

    pub(crate) fn int(&self, key: &'static str, max: u64) -> Shape<u64> {
        as_int(self.req(key)?, max).ok_or(key)
    }

    pub(crate) fn opt_int(&self, key: &'static str, max: u64) -> Shape<Option<u64>> {
        self.get(key).map(|v| as_int(v, max).ok_or(key)).transpose()
    }

    pub(crate) fn opt_bool(&self, key: &'static str) -> Shape<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(key),
        }
    }

    pub(crate) fn uuid(&self, key: &'static str) -> Shape<Uuid> {
        as_uuid(self.req(key)?).ok_or(key)
    }

    pub(crate) fn opt_uuid(&self, key: &'static str) -> Shape<Option<Uuid>> {
        self.get(key).map(|v| as_uuid(v).ok_or(key)).transpose()
    }

    pub(crate) fn array(&self, key: &'static str) -> Shape<&[Value<'a>]> {
        match self.req(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(key),
        }
    }

    pub(crate) fn strings(&self, key: &'static str) -> Shape<Vec<String>> {
        self.array(key)?
            .iter()
            .map(|v| as_str(v).map(|s| s.to_string()).ok_or(key))
            .collect()
    }

    fn message_id(&self) -> Shape<MessageId> {
        match self.get("message-id") {
            Some(Value::Str(Cow::Borrowed(s))) => MessageId::parse(s.as_bytes()),
            _ => None,
        }
        .ok_or("message-id")
    }
}

pub(crate) fn as_str<'v, 'a>(v: &'v Value<'a>) -> Option<&'v Cow<'a, str>> {
    match v {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

pub(crate) fn as_int(v: &Value<'_>, max: u64) -> Option<u64> {
    match *v {
        Value::Int(i) if i <= max => Some(i),
        _ => None,
    }
}

/// A UUID string written literally (an escaped one is refused, see the module doc).
fn as_uuid(v: &Value<'_>) -> Option<Uuid> {
    match v {
        Value::Str(Cow::Borrowed(s)) => Uuid::parse(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn sha256_text(s: &str) -> Option<[u8; 32]> {
    crate::wire::hex::parse_sha256(s)
}

/// A `message-id` exactly as the peer wrote it (36 ASCII bytes, either hex case), so the reply
/// echoes it byte for byte; never nil.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId([u8; UUID_TEXT_LEN]);

impl MessageId {
    /// The nil id of replies to requests whose id cannot be read (spec 2.1). Only ever sent.
    pub const NIL: MessageId = MessageId(*b"00000000-0000-0000-0000-000000000000");

    /// The text of a valid, non-nil UUID.
    pub fn parse(text: &[u8]) -> Option<MessageId> {
        let id = Uuid::parse(text)?;
        if id.is_nil() {
            return None;
        }
        let mut raw = [0u8; UUID_TEXT_LEN];
        raw.copy_from_slice(text);
        Some(MessageId(raw))
    }

    /// A fresh id in the lowercase form senders write.
    pub fn from_uuid(id: Uuid) -> MessageId {
        MessageId(id.to_text())
    }

    pub fn as_bytes(&self) -> &[u8; UUID_TEXT_LEN] {
        &self.0
    }

    pub fn uuid(&self) -> Uuid {
        Uuid::parse(&self.0).unwrap_or(Uuid::NIL)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// One file of an AUTHENTICATION (spec 4.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileSpec {
    pub name: String,
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
}

/// AUTHENTICATION (type 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authentication<'a> {
    pub message_id: MessageId,
    pub token: Cow<'a, str>,
    pub files: Vec<FileSpec>,
    pub fid: Uuid,
    /// As sent: order and duplicates kept, so `bad-tag` can name an index.
    pub tags: Vec<String>,
    /// `chunk-size` if the client named one (already within 1000..65,536).
    pub chunk_size: Option<u32>,
}

/// TRANSFER (type 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer<'a> {
    pub message_id: MessageId,
    pub chunk: Uuid,
    /// The base64 text, not yet checked (that is `bad-data`, not `malformed`).
    pub data: Cow<'a, str>,
    pub file: u64,
    pub n: u64,
}

/// QUERY (type 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub message_id: MessageId,
    pub token: Cow<'a, str>,
    pub tags: Vec<String>,
    pub name: Option<String>,
    pub after: Option<Uuid>,
}

/// FETCH (type 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch<'a> {
    pub message_id: MessageId,
    pub token: Cow<'a, str>,
    pub id: Uuid,
    pub offset: u64,
    pub length: u64,
}

/// A client message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Authentication(Authentication<'a>),
    Transfer(Transfer<'a>),
    Query(Query<'a>),
    Fetch(Fetch<'a>),
}

impl Request<'_> {
    pub fn message_id(&self) -> MessageId {
        match self {
            Request::Authentication(m) => m.message_id,
            Request::Transfer(m) => m.message_id,
            Request::Query(m) => m.message_id,
            Request::Fetch(m) => m.message_id,
        }
    }
}

/// Smallest and largest `chunk-size` (spec 4.2).
pub const MIN_CHUNK_SIZE: u32 = 1000;
pub const MAX_CHUNK_SIZE: u32 = 65_536;

/// The readable `message-id` of a JSON body, if any: for the reply to a request that is
/// otherwise refused (unknown type, malformed). A body refused for a duplicate key, its depth
/// or bytes after the object still has a readable id when it starts with a whole object whose
/// top level holds exactly one literal `message-id`.
pub fn read_message_id(json: &[u8]) -> Option<MessageId> {
    match parse_object(json) {
        Ok(obj) => obj.message_id().ok(),
        Err(JsonError::NotObject) => None,
        Err(_) => lenient_message_id(json),
    }
}

/// The top-level `message-id` of the object at the start of `json`, other keys not looked at;
/// serde's derive refuses a second `message-id`.
fn lenient_message_id(json: &[u8]) -> Option<MessageId> {
    #[derive(serde::Deserialize)]
    struct OnlyId<'a> {
        #[serde(rename = "message-id", borrow)]
        message_id: Option<&'a str>,
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let only = <OnlyId<'_> as serde::Deserialize>::deserialize(&mut de).ok()?;
    MessageId::parse(only.message_id?.as_bytes())
}

/// Reads a client message of type `utype` (1, 3, 4 or 5) with at most `max_files` files.
/// `None` for any other type: that is `unknown-type`, not a shape error.
pub fn parse_request(
    utype: u8,
    json: &[u8],
    max_files: usize,
) -> Option<Result<Request<'_>, Malformed>> {
    if !matches!(
        utype,
        utype::AUTHENTICATION | utype::TRANSFER | utype::QUERY | utype::FETCH
    ) {
        return None;
    }
    if utype == utype::TRANSFER {
        if let Some(t) = transfer_fast(json) {
            return Some(Ok(Request::Transfer(t)));
        }
    }
    Some(parse_full(utype, json, max_files))
}

/// [`parse_request`] through the strict parser alone.
fn parse_full(utype: u8, json: &[u8], max_files: usize) -> Result<Request<'_>, Malformed> {
    let obj = match parse_object(json) {
        Ok(o) => o,
        Err(e) => {
            let what = match e {
                JsonError::Syntax => "json syntax",
                JsonError::DuplicateKey => "duplicate key",
                JsonError::TooDeep => "nesting",
                JsonError::NotObject => "not an object",
            };
            return Err(Malformed {
                message_id: read_message_id(json),
                what,
            });
        }
    };
    let message_id = match obj.message_id() {
        Ok(id) => id,
        Err(what) => {
            return Err(Malformed {
                message_id: None,
                what,
            })
        }
    };
    let shaped = match utype {
        utype::AUTHENTICATION => {
            auth_shape(&obj, message_id, max_files).map(Request::Authentication)
        }
        utype::TRANSFER => transfer_shape(&obj, message_id).map(Request::Transfer),
        utype::QUERY => query_shape(&obj, message_id).map(Request::Query),
        _ => fetch_shape(&obj, message_id).map(Request::Fetch),
    };
    shaped.map_err(|what| Malformed {
        message_id: Some(message_id),
        what,
    })
}

fn token<'a>(obj: &Object<'a>) -> Shape<Cow<'a, str>> {
    obj.str("token").cloned()
}

fn auth_shape<'a>(
    obj: &Object<'a>,
    message_id: MessageId,
    max_files: usize,
) -> Shape<Authentication<'a>> {
    let token = token(obj)?;
    let list = obj.array("files")?;
    if list.is_empty() || list.len() > max_files {
        return Err("files count");
    }
    let files = file_specs(list)?;
    let fid = obj.uuid("fid")?;
    if fid.is_nil() {
        return Err("fid");
    }
    let tags = obj.strings("tags")?;
    let chunk_size = match obj.opt_int("chunk-size", MAX_INT)? {
        None => None,
        Some(c) if (u64::from(MIN_CHUNK_SIZE)..=u64::from(MAX_CHUNK_SIZE)).contains(&c) => {
            Some(c as u32)
        }
        Some(_) => return Err("chunk-size"),
    };
    Ok(Authentication {
        message_id,
        token,
        files,
        fid,
        tags,
        chunk_size,
    })
}

/// The `files` of an AUTHENTICATION (or of `state.json`): `{name, size, sha256?}` objects.
pub(crate) fn file_specs(list: &[Value<'_>]) -> Shape<Vec<FileSpec>> {
    list.iter()
        .map(|v| {
            let Value::Object(f) = v else {
                return Err("files[]");
            };
            let sha256 = match f.opt_str("sha256")? {
                None => None,
                Some(s) => Some(sha256_text(s).ok_or("sha256")?),
            };
            Ok(FileSpec {
                name: f.str("name")?.to_string(),
                size: f.int("size", MAX_INT)?,
                sha256,
            })
        })
        .collect()
}

fn transfer_shape<'a>(obj: &Object<'a>, message_id: MessageId) -> Shape<Transfer<'a>> {
    Ok(Transfer {
        message_id,
        chunk: obj.uuid("chunk")?,
        data: obj.str("data")?.clone(),
        file: obj.int("file", MAX_INT)?,
        n: obj.int("n", MAX_INT)?,
    })
}

/// TRANSFER without running the JSON parser over its `data`: see [`lift_data`]. When any of
/// its conditions fails, `None` sends the message to the full parse, which also decides every
/// error. The data string is 95% of a TRANSFER, and the parser's byte-wise string scan was a
/// seventh of the server's time per GiB.
fn transfer_fast(json: &[u8]) -> Option<Transfer<'_>> {
    let (data, rest) = lift_data(json)?;
    let obj = parse_object(&rest).ok()?;
    let message_id = obj.message_id().ok()?;
    let t = transfer_shape(&obj, message_id).ok()?;
    Some(Transfer {
        message_id: t.message_id,
        chunk: t.chunk,
        data: Cow::Borrowed(data),
        file: t.file,
        n: t.n,
    })
}

/// Splits a TRANSFER or a FETCH reply into its top-level `data` string and the rest of the
/// object with `data` emptied, without the JSON parser's byte-wise scan of the string: the
/// top-level `"data":"` is found by a scan of what precedes it (usually ~100 bytes), the
/// string's end with `memchr`, and a SIMD check that it holds only canonical base64. Each of
/// those conditions makes a parse of the rest, with the string put back, exactly the full
/// parse's (emptying a string of base64 characters changes neither validity nor structure);
/// `None` when one fails.
fn lift_data(json: &[u8]) -> Option<(&str, Vec<u8>)> {
    const KEY: &[u8] = b"\"data\":\"";
    let start = top_level_key(json, KEY)? + KEY.len();
    let end = start + memchr::memchr2(b'"', b'\\', &json[start..])?;
    if json[end] != b'"' {
        return None;
    }
    let data = &json[start..end];
    base64_simd::STANDARD.check(data).ok()?;
    let data = std::str::from_utf8(data).ok()?;
    let mut rest = Vec::with_capacity(json.len() - data.len());
    rest.extend_from_slice(&json[..start]);
    rest.extend_from_slice(&json[end..]);
    Some((data, rest))
}

/// Where `key` (which starts with `"`) begins at the top level of the object in `json`,
/// outside any string: a scan that stops there.
fn top_level_key(json: &[u8], key: &[u8]) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &c) in json.iter().enumerate() {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' if depth == 1 && json[i..].starts_with(key) => return Some(i),
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    None
}

fn query_shape<'a>(obj: &Object<'a>, message_id: MessageId) -> Shape<Query<'a>> {
    Ok(Query {
        message_id,
        token: token(obj)?,
        tags: obj.strings("tags")?,
        name: obj.opt_str("name")?.map(|s| s.to_string()),
        after: obj.opt_uuid("after")?,
    })
}

fn fetch_shape<'a>(obj: &Object<'a>, message_id: MessageId) -> Shape<Fetch<'a>> {
    Ok(Fetch {
        message_id,
        token: token(obj)?,
        id: obj.uuid("id")?,
        offset: obj.int("offset", MAX_INT)?,
        length: obj.int("length", MAX_INT)?,
    })
}

/// One entry of a QUERY reply (spec 6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryResult {
    pub id: Uuid,
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Sorted, no duplicates.
    pub tags: Vec<String>,
}

/// A half-open range of chunk numbers of one file: `[file, first, end]` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkRange {
    pub file: u32,
    pub first: u64,
    pub end: u64,
}

/// A RESPONSE (type 2) as a client reads it: which optional keys are required depends on the
/// request it answers, which the client machine knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub message_id: MessageId,
    pub body: ResponseBody<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody<'a> {
    Ok(OkFields<'a>),
    Error(String),
}

/// The keys an Ok may carry (spec 4.2, 4.3, 6), each checked for its type when present.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OkFields<'a> {
    pub missing: Option<Vec<ChunkRange>>,
    pub more: Option<bool>,
    pub chunk_size: Option<u32>,
    pub window: Option<u32>,
    pub complete: Option<u64>,
    pub id: Option<Uuid>,
    pub results: Option<Vec<QueryResult>>,
    pub data: Option<Cow<'a, str>>,
    pub eof: Option<bool>,
}

/// Reads a RESPONSE body. Unlike a request, a nil `message-id` is accepted (the server's reply
/// to an unreadable request).
///
/// A FETCH reply's `data` (nearly all of its bytes) skips the JSON parser's string scan as a
/// TRANSFER's does (`lift_data`); the result is the strict parse's either way.
pub fn parse_response(json: &[u8]) -> Result<Response<'_>, Malformed> {
    if let Some(r) = response_fast(json) {
        return Ok(r);
    }
    response_full(json)
}

/// [`parse_response`] with the `data` string lifted out first; `None` leaves every decision,
/// errors included, to the strict parse.
fn response_fast(json: &[u8]) -> Option<Response<'_>> {
    let (data, rest) = lift_data(json)?;
    let r = response_full(&rest).ok()?;
    let body = match r.body {
        // Every other field is owned; only `data` borrows, now from `json`.
        ResponseBody::Ok(ok) => ResponseBody::Ok(OkFields {
            missing: ok.missing,
            more: ok.more,
            chunk_size: ok.chunk_size,
            window: ok.window,
            complete: ok.complete,
            id: ok.id,
            results: ok.results,
            data: Some(Cow::Borrowed(data)),
            eof: ok.eof,
        }),
        ResponseBody::Error(reason) => ResponseBody::Error(reason),
    };
    Some(Response {
        message_id: r.message_id,
        body,
    })
}

/// [`parse_response`] through the strict parser alone.
fn response_full(json: &[u8]) -> Result<Response<'_>, Malformed> {
    let bad = |message_id, what| Malformed { message_id, what };
    let obj = parse_object(json).map_err(|_| bad(None, "json"))?;
    let message_id = match obj.get("message-id") {
        Some(Value::Str(Cow::Borrowed(s))) if s.as_bytes() == MessageId::NIL.as_bytes() => {
            MessageId::NIL
        }
        _ => obj.message_id().map_err(|w| bad(None, w))?,
    };
    let body = response_shape(&obj).map_err(|w| bad(Some(message_id), w))?;
    Ok(Response { message_id, body })
}

fn response_shape<'a>(obj: &Object<'a>) -> Shape<ResponseBody<'a>> {
    match obj.str("response")?.as_ref() {
        "Error" => Ok(ResponseBody::Error(obj.str("reason")?.to_string())),
        "Ok" => {
            if obj.get("reason").is_some() {
                return Err("reason on Ok");
            }
            let missing = match obj.get("missing") {
                None => None,
                Some(Value::Array(list)) => Some(
                    list.iter()
                        .map(|r| match r {
                            Value::Array(t) if t.len() == 3 => {
                                let file = as_int(&t[0], u64::from(u32::MAX)).ok_or("missing")?;
                                let first = as_int(&t[1], MAX_INT).ok_or("missing")?;
                                let end = as_int(&t[2], MAX_INT).ok_or("missing")?;
                                Ok(ChunkRange {
                                    file: file as u32,
                                    first,
                                    end,
                                })
                            }
                            _ => Err("missing"),
                        })
                        .collect::<Shape<Vec<_>>>()?,
                ),
                Some(_) => return Err("missing"),
            };
            let results = match obj.get("results") {
                None => None,
                Some(Value::Array(list)) => Some(
                    list.iter()
                        .map(|r| {
                            let Value::Object(o) = r else {
                                return Err("results[]");
                            };
                            Ok(QueryResult {
                                id: o.uuid("id")?,
                                name: o.str("name")?.to_string(),
                                size: o.int("size", MAX_INT)?,
                                sha256: sha256_text(o.str("sha256")?).ok_or("sha256")?,
                                tags: o.strings("tags")?,
                            })
                        })
                        .collect::<Shape<Vec<_>>>()?,
                ),
                Some(_) => return Err("results"),
            };
            Ok(ResponseBody::Ok(OkFields {
                missing,
                more: obj.opt_bool("more")?,
                chunk_size: obj
                    .opt_int("chunk-size", u64::from(MAX_CHUNK_SIZE))?
                    .map(|c| c as u32),
                window: obj.opt_int("window", 1 << 16)?.map(|w| w as u32),
                complete: obj.opt_int("complete", MAX_INT)?,
                id: obj.opt_uuid("id")?,
                results,
                data: obj.opt_str("data")?.cloned(),
                eof: obj.opt_bool("eof")?,
            }))
        }
        _ => Err("response"),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders: compact JSON, keys in the order of the spec's examples.

/// Appends `s` as a JSON string (serde_json's escaping: `"`, `\` and control characters).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(crate) fn put_uuid(out: &mut Vec<u8>, id: &Uuid) {
    out.push(b'"');
    out.extend_from_slice(&id.to_text());
    out.push(b'"');
}

pub(crate) fn put_uint(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut n = v;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

fn put_head(out: &mut Vec<u8>, mid: &MessageId) {
    out.extend_from_slice(b"{\"message-id\":\"");
    out.extend_from_slice(mid.as_bytes());
    out.push(b'"');
}

pub(crate) fn put_tags<S: AsRef<str>>(out: &mut Vec<u8>, tags: &[S]) {
    out.push(b'[');
    for (i, t) in tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put_str(out, t.as_ref());
    }
    out.push(b']');
}

/// AUTHENTICATION: `message-id`, `token`, `files` (`name`, `size`, `sha256`?), `fid`, `tags`,
/// `chunk-size`?.
pub fn encode_authentication(
    out: &mut Vec<u8>,
    mid: &MessageId,
    token: &str,
    files: &[FileSpec],
    fid: &Uuid,
    tags: &[String],
    chunk_size: Option<u32>,
) {
    put_head(out, mid);
    out.extend_from_slice(b",\"token\":");
    put_str(out, token);
    out.extend_from_slice(b",\"files\":");
    put_files(out, files);
    out.extend_from_slice(b",\"fid\":");
    put_uuid(out, fid);
    out.extend_from_slice(b",\"tags\":");
    put_tags(out, tags);
    if let Some(c) = chunk_size {
        out.extend_from_slice(b",\"chunk-size\":");
        put_uint(out, u64::from(c));
    }
    out.push(b'}');
}

/// `[{"name":…,"size":…,"sha256":…?},…]`.
pub(crate) fn put_files(out: &mut Vec<u8>, files: &[FileSpec]) {
    out.push(b'[');
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        put_str(out, &f.name);
        out.extend_from_slice(b",\"size\":");
        put_uint(out, f.size);
        if let Some(h) = &f.sha256 {
            out.extend_from_slice(b",\"sha256\":\"");
            out.extend_from_slice(crate::wire::hex::encode(h).as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// JSON bytes of a TRANSFER carrying `data_len` bytes, without building it.
pub fn transfer_json_len(data_len: usize, file: u64, n: u64) -> usize {
    let digits = |v: u64| v.checked_ilog10().map_or(1, |l| l as usize + 1);
    // {"message-id":"<36>","chunk":"<36>","data":"<b64>","file":F,"n":N}
    15 + 36 + 11 + 36 + 10 + base64::encoded_len(data_len) + 9 + digits(file) + 5 + digits(n) + 1
}

/// TRANSFER: `message-id`, `chunk`, `data` (base64 of `data`), `file`, `n`.
pub fn encode_transfer(
    out: &mut Vec<u8>,
    mid: &MessageId,
    chunk: &Uuid,
    data: &[u8],
    file: u64,
    n: u64,
) {
    put_head(out, mid);
    out.extend_from_slice(b",\"chunk\":");
    put_uuid(out, chunk);
    out.extend_from_slice(b",\"data\":\"");
    base64::encode_append(data, out);
    out.extend_from_slice(b"\",\"file\":");
    put_uint(out, file);
    out.extend_from_slice(b",\"n\":");
    put_uint(out, n);
    out.push(b'}');
}

/// QUERY: `message-id`, `token`, `tags`, `name`?, `after`?.
pub fn encode_query(
    out: &mut Vec<u8>,
    mid: &MessageId,
    token: &str,
    tags: &[String],
    name: Option<&str>,
    after: Option<&Uuid>,
) {
    put_head(out, mid);
    out.extend_from_slice(b",\"token\":");
    put_str(out, token);
    out.extend_from_slice(b",\"tags\":");
    put_tags(out, tags);
    if let Some(n) = name {
        out.extend_from_slice(b",\"name\":");
        put_str(out, n);
    }
    if let Some(a) = after {
        out.extend_from_slice(b",\"after\":");
        put_uuid(out, a);
    }
    out.push(b'}');
}

/// FETCH: `message-id`, `token`, `id`, `offset`, `length`.
pub fn encode_fetch(
    out: &mut Vec<u8>,
    mid: &MessageId,
    token: &str,
    id: &Uuid,
    offset: u64,
    length: u64,
) {
    put_head(out, mid);
    out.extend_from_slice(b",\"token\":");
    put_str(out, token);
    out.extend_from_slice(b",\"id\":");
    put_uuid(out, id);
    out.extend_from_slice(b",\"offset\":");
    put_uint(out, offset);
    out.extend_from_slice(b",\"length\":");
    put_uint(out, length);
    out.push(b'}');
}

/// Plain Ok: `{"message-id":…,"response":"Ok"}`.
pub fn encode_ok(out: &mut Vec<u8>, mid: &MessageId) {
    put_head(out, mid);
    out.extend_from_slice(b",\"response\":\"Ok\"}");
}

/// Error: `{"message-id":…,"response":"Error","reason":…}`.
pub fn encode_error(out: &mut Vec<u8>, mid: &MessageId, reason: &Reason) {
    put_head(out, mid);
    out.extend_from_slice(b",\"response\":\"Error\",\"reason\":");
    put_str(out, &reason.to_string());
    out.push(b'}');
}

/// Ok to AUTHENTICATION: `missing`, `more` (only when true), `chunk-size`, `window`.
pub fn encode_ok_auth(
    out: &mut Vec<u8>,
    mid: &MessageId,
    missing: &[ChunkRange],
    more: bool,
    chunk_size: u32,
    window: u32,
) {
    put_head(out, mid);
    out.extend_from_slice(b",\"response\":\"Ok\",\"missing\":[");
    for (i, r) in missing.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        put_uint(out, u64::from(r.file));
        out.push(b',');
        put_uint(out, r.first);
        out.push(b',');
        put_uint(out, r.end);
        out.push(b']');
    }
    out.push(b']');
    if more {
        out.extend_from_slice(b",\"more\":true");
    }
    out.extend_from_slice(b",\"chunk-size\":");
    put_uint(out, u64::from(chunk_size));
    out.extend_from_slice(b",\"window\":");
    put_uint(out, u64::from(window));
    out.push(b'}');
}

/// Ok to the TRANSFER that completed file `file`: `complete`, `id`.
pub fn encode_ok_complete(out: &mut Vec<u8>, mid: &MessageId, file: u64, id: &Uuid) {
    put_head(out, mid);
    out.extend_from_slice(b",\"response\":\"Ok\",\"complete\":");
    put_uint(out, file);
    out.extend_from_slice(b",\"id\":");
    put_uuid(out, id);
    out.push(b'}');
}

/// One QUERY result object.
pub fn encode_query_result(out: &mut Vec<u8>, r: &QueryResult) {
    out.extend_from_slice(b"{\"id\":");
    put_uuid(out, &r.id);
    out.extend_from_slice(b",\"name\":");
    put_str(out, &r.name);
    out.extend_from_slice(b",\"size\":");
    put_uint(out, r.size);
    out.extend_from_slice(b",\"sha256\":\"");
    out.extend_from_slice(crate::wire::hex::encode(&r.sha256).as_bytes());
    out.extend_from_slice(b"\",\"tags\":");
    put_tags(out, &r.tags);
    out.push(b'}');
}

/// Ok to QUERY: `results`, `more`. Results are added while the JSON stays within `max_json`
/// bytes; returns how many went in. `more` is true when `more_after` is, or when a result had to
/// be left out for size (the client then continues after the last id it got).
pub fn encode_ok_query(
    out: &mut Vec<u8>,
    mid: &MessageId,
    results: &[QueryResult],
    more_after: bool,
    max_json: usize,
) -> usize {
    const TAIL_MORE: &[u8] = b"],\"more\":false}";
    let start = out.len();
    put_head(out, mid);
    out.extend_from_slice(b",\"response\":\"Ok\",\"results\":[");
    let mut sent = 0;
    for (i, r) in results.iter().enumerate() {
        let before = out.len();
        if i > 0 {
            out.push(b',');
        }
        encode_query_result(out, r);
        if out.len() - start + TAIL_MORE.len() > max_json {
            out.truncate(before);
            break;
        }
        sent += 1;
    }
    let more = more_after || sent < results.len();
    out.extend_from_slice(if more { b"],\"more\":true}" } else { TAIL_MORE });
    sent
}

/// Ok to FETCH: `data` (base64 of `data`), `eof`.
pub fn encode_ok_fetch(out: &mut Vec<u8>, mid: &MessageId, data: &[u8], eof: bool) {
    put_head(out, mid);
    out.extend_from_slice(b",\"response\":\"Ok\",\"data\":\"");
    base64::encode_append(data, out);
    out.extend_from_slice(if eof {
        b"\",\"eof\":true}"
    } else {
        b"\",\"eof\":false}"
    });
}

#[cfg(test)]
mod tests;
