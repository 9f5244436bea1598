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
mod tests {
    use super::*;
    use crate::proto::filestorage::reason::Code;
    use crate::proto::filestorage::testdata::{notes, FID, NOTES_SHA, TOKEN_A};

    fn mid(n: u8) -> MessageId {
        MessageId::parse(format!("1a2b3c4d-0000-4000-8000-00000000000{n}").as_bytes()).unwrap()
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    fn parse(utype: u8, json: &str) -> Result<Request<'_>, Malformed> {
        parse_request(utype, json.as_bytes(), 1024).expect("a request type")
    }

    fn malformed(utype: u8, json: &str) -> Malformed {
        parse(utype, json).expect_err(json)
    }

    const AUTH_45: &str = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.GnkyHuzPedHnropirz_AgZxD7DCUjou1uaiRujhBpCo","files":[{"name":"notes.txt","size":2500,"sha256":"ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29"}],"fid":"0b6e3c1e-2f4d-4a7b-8c9d-112233445566","tags":["work","2024"]}"#;

    fn notes_spec(with_sha: bool) -> FileSpec {
        FileSpec {
            name: "notes.txt".into(),
            size: 2500,
            sha256: with_sha.then(|| crate::wire::hex::parse_sha256(NOTES_SHA).unwrap()),
        }
    }

    #[test]
    fn s1_encoders_reproduce_every_json_of_4_5_and_6() {
        let fid: Uuid = FID.parse().unwrap();
        let tags = vec!["work".to_string(), "2024".to_string()];
        let mut out = Vec::new();
        encode_authentication(
            &mut out,
            &mid(1),
            TOKEN_A,
            &[notes_spec(true)],
            &fid,
            &tags,
            None,
        );
        assert_eq!(text(&out), AUTH_45);
        assert_eq!(out.len(), 372);
        out.clear();
        encode_authentication(
            &mut out,
            &mid(1),
            TOKEN_A,
            &[notes_spec(false)],
            &fid,
            &tags,
            None,
        );
        assert_eq!(out.len(), 296, "without sha256 (LEN 00 00 01 29)");

        out.clear();
        let all = [ChunkRange {
            file: 0,
            first: 0,
            end: 3,
        }];
        encode_ok_auth(&mut out, &mid(1), &all, false, 1000, 32);
        assert_eq!(
            text(&out),
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0,3]],"chunk-size":1000,"window":32}"#
        );
        assert_eq!(out.len(), 119);

        let data = notes();
        let ids = [
            "d85e0a50-7da3-591d-88ef-fd94e7421ed5",
            "ae972e88-9fac-5a70-85bf-4e8c43db00f7",
            "d86b6cad-0fe2-52df-b666-7796d2299707",
        ];
        let edges = [
            ("AAECAwQF", "5OXm5w=="),
            ("6Onq6+zt", "zM3Ozw=="),
            ("0NHS09TV", "v8DBwsM="),
        ];
        for n in 0..3u64 {
            out.clear();
            let chunk = &data[n as usize * 1000..(n as usize * 1000 + 1000).min(2500)];
            encode_transfer(
                &mut out,
                &mid(2 + n as u8),
                &ids[n as usize].parse().unwrap(),
                chunk,
                0,
                n,
            );
            assert_eq!(out.len(), [1461, 1461, 793][n as usize]);
            assert_eq!(out.len(), transfer_json_len(chunk.len(), 0, n));
            let t = text(&out);
            let head = format!(
                r#"{{"message-id":"1a2b3c4d-0000-4000-8000-00000000000{}","chunk":"{}","data":"{}"#,
                2 + n,
                ids[n as usize],
                edges[n as usize].0
            );
            assert!(t.starts_with(&head), "{t}");
            let tail = format!(r#"{}","file":0,"n":{n}}}"#, edges[n as usize].1);
            assert!(t.ends_with(&tail), "{t}");
        }
        out.clear();
        encode_ok(&mut out, &mid(2));
        assert_eq!(
            text(&out),
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","response":"Ok"}"#
        );
        assert_eq!(out.len(), 69);
        out.clear();
        encode_ok_complete(
            &mut out,
            &mid(4),
            0,
            &"e96bc64c-adca-5bcc-a054-20301277daef".parse().unwrap(),
        );
        assert_eq!(
            text(&out),
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000004","response":"Ok","complete":0,"id":"e96bc64c-adca-5bcc-a054-20301277daef"}"#
        );
        assert_eq!(out.len(), 126);
        out.clear();
        encode_error(
            &mut out,
            &mid(9),
            &Reason::with_detail(Code::QuotaExceeded, "bytes"),
        );
        assert_eq!(
            text(&out),
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000009","response":"Error","reason":"quota-exceeded: bytes"}"#
        );
        assert_eq!(out.len(), 0x6a - 1);
        out.clear();
        encode_error(&mut out, &MessageId::NIL, &Code::TooLarge.into());
        assert_eq!(
            text(&out),
            r#"{"message-id":"00000000-0000-0000-0000-000000000000","response":"Error","reason":"too-large"}"#
        );
        assert_eq!(out.len(), 93);

        // Section 6.
        out.clear();
        encode_query(&mut out, &mid(5), TOKEN_A, &["work".into()], None, None);
        assert_eq!(
            text(&out),
            format!(
                r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","token":"{TOKEN_A}","tags":["work"]}}"#
            )
        );
        assert_eq!(out.len(), 201);
        out.clear();
        let result = QueryResult {
            id: "e96bc64c-adca-5bcc-a054-20301277daef".parse().unwrap(),
            name: "notes.txt".into(),
            size: 2500,
            sha256: crate::wire::hex::parse_sha256(NOTES_SHA).unwrap(),
            tags: vec!["2024".into(), "work".into()],
        };
        assert_eq!(
            encode_ok_query(&mut out, &mid(5), &[result], false, 99_991),
            1
        );
        assert_eq!(
            text(&out),
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","response":"Ok","results":[{"id":"e96bc64c-adca-5bcc-a054-20301277daef","name":"notes.txt","size":2500,"sha256":"ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29","tags":["2024","work"]}],"more":false}"#
        );
        assert_eq!(out.len(), 270);
        out.clear();
        encode_fetch(
            &mut out,
            &mid(6),
            TOKEN_A,
            &"e96bc64c-adca-5bcc-a054-20301277daef".parse().unwrap(),
            2496,
            1000,
        );
        assert_eq!(
            text(&out),
            format!(
                r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","token":"{TOKEN_A}","id":"e96bc64c-adca-5bcc-a054-20301277daef","offset":2496,"length":1000}}"#
            )
        );
        assert_eq!(out.len(), 257);
        out.clear();
        encode_ok_fetch(&mut out, &mid(6), &[0xc0, 0xc1, 0xc2, 0xc3], true);
        assert_eq!(
            text(&out),
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","response":"Ok","data":"wMHCww==","eof":true}"#
        );
        assert_eq!(out.len(), 98);
    }

    #[test]
    fn largest_messages_have_the_lengths_of_the_spec() {
        // TRANSFER of 65,536 bytes, file 1023, a 13-digit n: LEN 87,525 (spec 4.4).
        assert_eq!(
            transfer_json_len(65_536, 1023, 1_000_000_000_000) + 1,
            87_525
        );
        let mut out = Vec::new();
        encode_transfer(
            &mut out,
            &mid(1),
            &Uuid::NIL,
            &[7u8; 65_536],
            1023,
            1_000_000_000_000,
        );
        assert_eq!(out.len() + 1, 87_525);
        // FETCH reply of 65,536 bytes: LEN 87,476 (spec 6).
        out.clear();
        encode_ok_fetch(&mut out, &mid(1), &[0u8; 65_536], false);
        assert_eq!(out.len() + 1, 87_476);
    }

    #[test]
    fn s5_requests_parse_and_unknown_keys_are_ignored() {
        let Request::Authentication(a) = parse(1, AUTH_45).unwrap() else {
            panic!()
        };
        assert_eq!(a.message_id, mid(1));
        assert_eq!(a.token, TOKEN_A);
        assert_eq!(a.files, vec![notes_spec(true)]);
        assert_eq!(a.fid.to_string(), FID);
        assert_eq!(a.tags, ["work", "2024"]);
        assert_eq!(a.chunk_size, None);
        // Any order, whitespace, unknown keys of any type, upper-case UUIDs.
        let j = r#" { "zz" : {"a":[1,2,{"b":null}]}, "tags":[], "fid":"0B6E3C1E-2F4D-4A7B-8C9D-112233445566",
            "chunk-size": 65536, "files":[{"size":0,"name":"e","x":1.5}], "token":"t",
            "message-id":"1A2B3C4D-0000-4000-8000-00000000000F" } "#;
        let Request::Authentication(a) = parse(1, j).unwrap() else {
            panic!()
        };
        assert_eq!(
            a.message_id.as_bytes(),
            b"1A2B3C4D-0000-4000-8000-00000000000F",
            "kept as sent"
        );
        assert_eq!(a.fid.to_string(), FID);
        assert_eq!(a.chunk_size, Some(65_536));
        assert_eq!(a.files[0].size, 0);

        let t = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","chunk":"d85e0a50-7da3-591d-88ef-fd94e7421ed5","data":"QQ==","file":0,"n":9007199254740991}"#;
        let Request::Transfer(t) = parse(3, t).unwrap() else {
            panic!()
        };
        assert!(
            matches!(t.data, Cow::Borrowed("QQ==")),
            "data is not copied"
        );
        assert_eq!(t.n, MAX_INT);

        let q = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","token":"t","tags":["a"],"name":"n\u00e9","after":"e96bc64c-adca-5bcc-a054-20301277daef"}"#;
        let Request::Query(q) = parse(4, q).unwrap() else {
            panic!()
        };
        assert_eq!(q.name.as_deref(), Some("n\u{e9}"));
        assert!(q.after.is_some());
        let f = r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","token":"t","id":"e96bc64c-adca-5bcc-a054-20301277daef","offset":0,"length":0}"#;
        let Request::Fetch(f) = parse(5, f).unwrap() else {
            panic!()
        };
        assert_eq!(
            (f.offset, f.length),
            (0, 0),
            "range rules are FETCH's, not the shape's"
        );
        assert!(parse_request(2, b"{}", 1024).is_none());
        assert!(parse_request(0, b"garbage", 1024).is_none());
    }

    const M: &str = r#""message-id":"1a2b3c4d-0000-4000-8000-000000000007""#;

    #[test]
    fn s5_every_shape_error_is_malformed_with_the_id_when_readable() {
        let auth = |rest: &str| format!("{{{M},{rest}}}");
        let files = r#""files":[{"name":"a","size":1}]"#;
        let ok_rest = format!(r#""token":"t",{files},"fid":"{FID}","tags":[]"#);
        assert!(parse(1, &auth(&ok_rest)).is_ok());
        let cases = [
            // Missing keys.
            format!(r#"{files},"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t","fid":"{FID}","tags":[]"#),
            format!(r#""token":"t",{files},"tags":[]"#),
            format!(r#""token":"t",{files},"fid":"{FID}""#),
            format!(r#""token":"t","files":[{{"size":1}}],"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t","files":[{{"name":"a"}}],"fid":"{FID}","tags":[]"#),
            // Wrong types.
            format!(r#""token":1,{files},"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t","files":{{}},"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t","files":["a"],"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t",{files},"fid":"{FID}","tags":"a""#),
            format!(r#""token":"t",{files},"fid":"{FID}","tags":[1]"#),
            format!(r#""token":"t",{files},"fid":"{FID}","tags":[null]"#),
            format!(r#""token":"t","files":[{{"name":"a","size":"1"}}],"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t","files":[{{"name":["a"],"size":1}}],"fid":"{FID}","tags":[]"#),
            // Numbers: fraction, exponent, negative, past 2^53-1, past u64.
            format!(r#""token":"t","files":[{{"name":"a","size":1.0}}],"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t","files":[{{"name":"a","size":1e3}}],"fid":"{FID}","tags":[]"#),
            format!(r#""token":"t","files":[{{"name":"a","size":-1}}],"fid":"{FID}","tags":[]"#),
            format!(
                r#""token":"t","files":[{{"name":"a","size":9007199254740992}}],"fid":"{FID}","tags":[]"#
            ),
            format!(
                r#""token":"t","files":[{{"name":"a","size":18446744073709551616}}],"fid":"{FID}","tags":[]"#
            ),
            // Files count, sha256 text, chunk-size range, UUIDs.
            format!(r#""token":"t","files":[],"fid":"{FID}","tags":[]"#),
            format!(
                r#""token":"t","files":[{{"name":"a","size":1,"sha256":"{}"}}],"fid":"{FID}","tags":[]"#,
                NOTES_SHA.to_uppercase()
            ),
            format!(
                r#""token":"t","files":[{{"name":"a","size":1,"sha256":"{}"}}],"fid":"{FID}","tags":[]"#,
                &NOTES_SHA[1..]
            ),
            format!(
                r#""token":"t","files":[{{"name":"a","size":1,"sha256":null}}],"fid":"{FID}","tags":[]"#
            ),
            format!(r#"{ok_rest},"chunk-size":999"#),
            format!(r#"{ok_rest},"chunk-size":65537"#),
            format!(r#"{ok_rest},"chunk-size":"1000""#),
            format!(
                r#""token":"t",{files},"fid":"00000000-0000-0000-0000-000000000000","tags":[]"#
            ),
            format!(r#""token":"t",{files},"fid":"0b6e3c1e2f4d4a7b8c9d112233445566","tags":[]"#),
            format!(
                r#""token":"t",{files},"fid":"0b6e3c1e-2f4d-4a7b-8c9d-11223344556\u0036","tags":[]"#
            ),
            // A duplicate key, known or not, at any level.
            format!(r#"{ok_rest},"token":"u""#),
            format!(r#"{ok_rest},"x":1,"x":1"#),
            format!(
                r#""token":"t","files":[{{"name":"a","size":1,"size":1}}],"fid":"{FID}","tags":[]"#
            ),
            format!(r#"{ok_rest},"x":{{"a":{{"b":1,"b":2}}}}"#),
            format!(r#"{ok_rest},"x":{{"a":1,"\u0061":2}}"#),
        ];
        for rest in &cases {
            let m = malformed(1, &auth(rest));
            assert_eq!(m.message_id, Some(mid(7)), "{rest}: {}", m.what);
        }
        let files_1025 = format!(
            r#""token":"t","files":[{}],"fid":"{FID}","tags":[]"#,
            vec![r#"{"name":"a","size":1}"#; 1025].join(",")
        );
        assert_eq!(malformed(1, &auth(&files_1025)).what, "files count");
        let files_1024 = files_1025.replacen(r#"{"name":"a","size":1},"#, "", 1);
        assert!(parse(1, &auth(&files_1024)).is_ok());

        // TRANSFER: data as an array (the seed read literally), missing n, out of range.
        let t = |rest: &str| format!(r#"{{{M},"chunk":"{FID}",{rest}}}"#);
        assert!(parse(3, &t(r#""data":"","file":0,"n":0"#)).is_ok());
        for rest in [
            r#""data":[1,2],"file":0,"n":0"#,
            r#""data":"","file":0"#,
            r#""data":"","file":-1,"n":0"#,
            r#""data":"","file":0,"n":0.5"#,
            r#""data":null,"file":0,"n":0"#,
        ] {
            assert_eq!(malformed(3, &t(rest)).message_id, Some(mid(7)), "{rest}");
        }
        // QUERY and FETCH.
        for (ut, j) in [
            (4, format!(r#"{{{M},"token":"t"}}"#)),
            (4, format!(r#"{{{M},"token":"t","tags":[],"name":1}}"#)),
            (4, format!(r#"{{{M},"token":"t","tags":[],"after":"x"}}"#)),
            (5, format!(r#"{{{M},"token":"t","id":"{FID}","offset":0}}"#)),
            (
                5,
                format!(r#"{{{M},"token":"t","id":"{FID}","offset":0,"length":1e2}}"#),
            ),
            (5, format!(r#"{{{M},"id":"{FID}","offset":0,"length":1}}"#)),
        ] {
            assert_eq!(malformed(ut, &j).message_id, Some(mid(7)), "{j}");
        }
    }

    #[test]
    fn s5_unreadable_message_id_gives_none() {
        for j in [
            "",
            "{",
            "[]",
            "\"x\"",
            "{}",
            r#"{"message-id":"00000000-0000-0000-0000-000000000000"}"#,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-00000000000"}"#,
            r#"{"message-id":1}"#,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000007","message-id":"1a2b3c4d-0000-4000-8000-000000000007"}"#,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-00000000000\u0037"}"#,
            "\u{feff}{}",
        ] {
            assert_eq!(malformed(1, j).message_id, None, "{j:?}");
            assert_eq!(read_message_id(j.as_bytes()), None);
        }
        let ok = format!("{{{M}}}");
        assert_eq!(read_message_id(ok.as_bytes()), Some(mid(7)));
        // Invalid UTF-8 inside a string, and trailing bytes.
        let mut bad = format!("{{{M},\"token\":\"").into_bytes();
        bad.extend_from_slice(&[0xff, b'"', b'}']);
        assert_eq!(parse_object(&bad), Err(JsonError::Syntax));
        let trailing = format!("{{{M}}}x");
        assert_eq!(parse_object(trailing.as_bytes()), Err(JsonError::Syntax));
        assert_eq!(
            parse_object(format!("{{{M}}} \n").as_bytes()).map(|o| o.len()),
            Ok(1)
        );
        assert_eq!(
            parse_object(format!("{{{M}}}{{}}").as_bytes()),
            Err(JsonError::Syntax)
        );
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotObject));
        assert_eq!(parse_object(br#"{"a":"\ud800"}"#), Err(JsonError::Syntax));
    }

    #[test]
    fn nesting_of_32_is_accepted_and_33_refused() {
        let nest = |depth: usize| {
            format!(
                "{{\"x\":{}1{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert!(parse_object(nest(32).as_bytes()).is_ok());
        assert_eq!(parse_object(nest(33).as_bytes()), Err(JsonError::TooDeep));
        assert_eq!(parse_object(nest(200).as_bytes()), Err(JsonError::TooDeep));
        let objs = |depth: usize| {
            format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth)).replace(":}", ":1}")
        };
        assert!(parse_object(objs(32).as_bytes()).is_ok());
        assert_eq!(parse_object(objs(33).as_bytes()), Err(JsonError::TooDeep));
        let mut deep = nest(33).into_bytes();
        deep.splice(1..1, format!("{M},").into_bytes());
        let m = malformed(1, std::str::from_utf8(&deep).unwrap());
        assert_eq!((m.message_id, m.what), (Some(mid(7)), "nesting"));
    }

    #[test]
    fn duplicates_in_large_objects_are_found_by_sorting() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("\"k{i}\":0")).collect();
        let j = format!("{{{}}}", keys.join(","));
        assert_eq!(parse_object(j.as_bytes()).map(|o| o.len()), Ok(20_000));
        let j = format!("{{{},\"k19999\":1}}", keys.join(","));
        assert_eq!(parse_object(j.as_bytes()), Err(JsonError::DuplicateKey));
        let o = parse_object(br#"{"b":1,"a":true}"#).unwrap();
        assert_eq!(o.keys().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(o.get("a"), Some(&Value::Bool(true)));
        assert!(!o.is_empty());
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0,3],[2,5,9]],"more":true,"chunk-size":1000,"window":32}"#).unwrap();
        assert_eq!(r.message_id, mid(1));
        let ResponseBody::Ok(f) = r.body else {
            panic!()
        };
        assert_eq!(
            f.missing.unwrap(),
            [
                ChunkRange {
                    file: 0,
                    first: 0,
                    end: 3
                },
                ChunkRange {
                    file: 2,
                    first: 5,
                    end: 9
                }
            ]
        );
        assert_eq!(
            (f.more, f.chunk_size, f.window),
            (Some(true), Some(1000), Some(32))
        );
        let r = parse_response(br#"{"message-id":"00000000-0000-0000-0000-000000000000","response":"Error","reason":"too-large"}"#).unwrap();
        assert_eq!(r.message_id, MessageId::NIL);
        assert_eq!(r.body, ResponseBody::Error("too-large".into()));
        let mut out = Vec::new();
        let res = QueryResult {
            id: Uuid::NIL,
            name: "a\"b".into(),
            size: 1,
            sha256: [1; 32],
            tags: vec!["public".into()],
        };
        encode_ok_query(&mut out, &mid(3), &[res.clone(), res.clone()], true, 99_991);
        let r = parse_response(&out).unwrap();
        let ResponseBody::Ok(f) = r.body else {
            panic!()
        };
        assert_eq!(f.results.unwrap(), [res.clone(), res]);
        assert_eq!(f.more, Some(true));
        for bad in [
            &br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","reason":"x"}"#[..],
            br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"ok"}"#,
            br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Error"}"#,
            br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0]]}"#,
            br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","eof":1}"#,
            br#"{"response":"Ok"}"#,
        ] {
            assert!(parse_response(bad).is_err(), "{}", text(bad));
        }
    }

    #[test]
    fn query_reply_stops_before_the_frame_limit() {
        let big = QueryResult {
            id: Uuid::NIL,
            name: "\"".repeat(255),
            size: MAX_INT,
            sha256: [0xab; 32],
            tags: (0..32).map(|i| format!("{i:0>64}")).collect(),
        };
        let results = vec![big; 256];
        let mut out = Vec::new();
        let sent = encode_ok_query(&mut out, &mid(1), &results, false, 99_991);
        assert!(sent > 10 && sent < 256, "{sent}");
        assert!(out.len() <= 99_991, "{}", out.len());
        assert!(out.ends_with(b"],\"more\":true}"));
        let ResponseBody::Ok(f) = parse_response(&out).unwrap().body else {
            panic!()
        };
        assert_eq!(f.results.unwrap().len(), sent);
        // Appended after bytes already in the buffer (replies queued before it), the limit
        // counts only this reply's JSON: the same results go in.
        let mut queued = vec![0u8; 50_000];
        let again = encode_ok_query(&mut queued, &mid(1), &results, false, 99_991);
        assert_eq!((again, &queued[50_000..]), (sent, &out[..]));
        out.clear();
        assert_eq!(encode_ok_query(&mut out, &mid(1), &[], false, 99_991), 0);
        assert!(out.ends_with(b"\"results\":[],\"more\":false}"));
    }

    #[test]
    fn never_panics_on_truncations_and_random_bytes() {
        let fixtures: Vec<Vec<u8>> = vec![
            AUTH_45.as_bytes().to_vec(),
            br#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","chunk":"d85e0a50-7da3-591d-88ef-fd94e7421ed5","data":"QQ==","file":0,"n":1}"#.to_vec(),
            br#"{"a":[1,-2,3.5,"\u00e9\n",true,false,null,{"b":{}}]}"#.to_vec(),
        ];
        for f in &fixtures {
            for cut in 0..=f.len() {
                for ut in 0..6 {
                    let _ = parse_request(ut, &f[..cut], 1024);
                }
                let _ = parse_response(&f[..cut]);
            }
        }
        let mut x = 0xdead_beef_cafe_f00du64;
        let alphabet = b"{}[]\":,0123456789-.eE+truefalsn\\u ab\x00\xff";
        for round in 0..20_000 {
            let len = (round % 64) + 1;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse_request(1 + (round % 5) as u8, &bytes, 1024);
            let _ = parse_response(&bytes);
        }
    }

    #[test]
    fn transfer_fast_path_agrees_with_the_strict_parser() {
        let mid = r#""message-id":"1a2b3c4d-0000-4000-8000-000000000002""#;
        let chunk = r#""chunk":"d85e0a50-7da3-591d-88ef-fd94e7421ed5""#;
        let cases = [
            format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0}}"#),
            format!(r#"{{"data":"AAECAw==",{mid},{chunk},"file":0,"n":0}}"#),
            format!(r#"{{{mid},"x":{{"data":"QUJD"}},{chunk},"data":"AAECAw==","file":0,"n":0}}"#),
            format!(r#"{{{mid},"x":"\"data\":\"QUJD",{chunk},"data":"AAECAw==","file":0,"n":0}}"#),
            format!(r#"{{{mid},{chunk},"data":"AAECAw==","data":"AAECAw==","file":0,"n":0}}"#),
            format!(r#"{{{mid},{chunk},"data":"AA\nECAw==","file":0,"n":0}}"#),
            format!(r#"{{{mid},{chunk},"data" : "AAECAw==","file":0,"n":0}}"#),
            format!(r#"{{{mid},{chunk},"data":"QR==","file":0,"n":0}}"#),
            format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0}} x"#),
            format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0.5}}"#),
            format!(r#"{{{mid},{chunk},"data":"AAECAw==","file":0}}"#),
            format!(r#"{{{mid},{chunk},"data":"","file":0,"n":0}}"#),
            format!(r#"[{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0}}]"#),
            format!(
                r#"{{{mid},{chunk},"data":"AAECAw==","file":0,"n":0,"y":{}{}}}"#,
                "[".repeat(40),
                "]".repeat(40)
            ),
        ];
        let mut fast_taken = 0;
        for json in &cases {
            let full = parse_full(utype::TRANSFER, json.as_bytes(), 1024);
            let whole = parse_request(utype::TRANSFER, json.as_bytes(), 1024).unwrap();
            assert_eq!(whole, full, "{json}");
            if let Some(t) = transfer_fast(json.as_bytes()) {
                fast_taken += 1;
                assert_eq!(Ok(Request::Transfer(t)), full, "{json}");
            }
        }
        assert_eq!(
            fast_taken, 5,
            "the compact well-formed cases take the fast path"
        );
        // Truncations never panic and agree too.
        let json = cases[0].as_bytes();
        for cut in 0..json.len() {
            let j = &json[..cut];
            assert_eq!(
                parse_request(utype::TRANSFER, j, 1024).unwrap(),
                parse_full(utype::TRANSFER, j, 1024)
            );
        }
    }

    #[test]
    fn fetch_reply_fast_path_agrees_with_the_strict_parser() {
        let mid = r#""message-id":"1a2b3c4d-0000-4000-8000-000000000006""#;
        let cases = [
            format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","eof":true}}"#),
            format!(r#"{{"data":"wMHCww==",{mid},"response":"Ok","eof":false}}"#),
            format!(r#"{{{mid},"response":"Ok","data":"","eof":true}}"#),
            format!(r#"{{{mid},"response":"Error","reason":"not-found","data":"QUJD"}}"#),
            format!(
                r#"{{{mid},"response":"Ok","x":{{"data":"QUJD"}},"data":"wMHCww==","eof":true}}"#
            ),
            format!(
                r#"{{{mid},"response":"Ok","x":"\"data\":\"QUJD","data":"wMHCww==","eof":true}}"#
            ),
            format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","data":"wMHCww==","eof":true}}"#),
            format!(r#"{{{mid},"response":"Ok","data":"wMHC\nww==","eof":true}}"#),
            format!(r#"{{{mid},"response":"Ok","data":"QR==","eof":true}}"#),
            format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","eof":true}} x"#),
            format!(r#"{{{mid},"response":"Ok","data":"wMHCww==","eof":1}}"#),
            format!(r#"{{{mid},"response":"Ok","reason":"x","data":"wMHCww==","eof":true}}"#),
            r#"{"message-id":"00000000-0000-0000-0000-000000000000","response":"Ok","data":"QUJD"}"#
                .to_string(),
            format!(r#"[{{{mid},"response":"Ok","data":"wMHCww==","eof":true}}]"#),
        ];
        let mut fast_taken = 0;
        for json in &cases {
            let full = response_full(json.as_bytes());
            assert_eq!(parse_response(json.as_bytes()), full, "{json}");
            if let Some(r) = response_fast(json.as_bytes()) {
                fast_taken += 1;
                assert_eq!(Ok(r), full, "{json}");
            }
        }
        assert_eq!(
            fast_taken, 7,
            "the well-formed single-data cases take the fast path"
        );
        let ok = parse_response(cases[0].as_bytes()).unwrap();
        let ResponseBody::Ok(f) = ok.body else {
            panic!("not Ok");
        };
        assert_eq!(f.data.as_deref(), Some("wMHCww=="));
        assert!(
            matches!(f.data, Some(Cow::Borrowed(_))),
            "data borrowed, not copied"
        );
        // Truncations never panic and agree too.
        let json = cases[0].as_bytes();
        for cut in 0..json.len() {
            assert_eq!(parse_response(&json[..cut]), response_full(&json[..cut]));
        }
    }
}
