//! Ferry's JSON conventions on top of TEJ (tej.md section 3): the messages of acknowledgement
//! (status 1), error (3), request (4), request answer (0), list request (5) and listing (6), and
//! the error codes of 3.3. No I/O.
//!
//! Messages are compact UTF-8 JSON objects with keys in the order of the spec (the field order
//! below); readers accept any key order and ignore unknown keys. Every parser takes a bounded
//! slice (the decoder already capped the message at `max_message`).
//!
//! ```text
//! ack      {"files":[entry,...],"message_bytes":M}
//!   entry  {"name":..,"size":N,"sha256":..,"stored_as":..|null[,"error":..][,"name_hex":..]}
//! error    {"error":"<code>","detail":"<text>"[,"files":[..]][,"missing":[..]]}
//! request  {"get":["<name or sha256>",...]}
//! answer   {"files":[{"name":..,"size":N,"sha256":..}]}
//! list     empty, or {"after":"<path>","limit":N}
//! listing  {"files":[{"name":..,"size":N,"sha256":..}],"next":"<path>"|null}
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::frame::{frame, status};

/// Error codes of tej.md 3.3 (and `bad-name` for acknowledgement entries, section 5).
pub mod code {
    pub const BAD_FRAME: &str = "bad-frame";
    pub const TOO_MANY_FILES: &str = "too-many-files";
    pub const TOO_LARGE: &str = "too-large";
    pub const NO_SPACE: &str = "no-space";
    pub const TIMEOUT: &str = "timeout";
    pub const TRUNCATED: &str = "truncated";
    pub const BUSY: &str = "busy";
    pub const BAD_REQUEST: &str = "bad-request";
    pub const NOT_FOUND: &str = "not-found";
    pub const AMBIGUOUS: &str = "ambiguous";
    pub const INTERNAL: &str = "internal";
    /// Not an error frame code: the `error` of an acknowledgement entry whose name was refused.
    pub const BAD_NAME: &str = "bad-name";

    /// Every code an error frame may carry.
    pub const ALL: [&str; 11] = [
        BAD_FRAME,
        TOO_MANY_FILES,
        TOO_LARGE,
        NO_SPACE,
        TIMEOUT,
        TRUNCATED,
        BUSY,
        BAD_REQUEST,
        NOT_FOUND,
        AMBIGUOUS,
        INTERNAL,
    ];
}

/// Default and largest page of a listing (tej.md 3.4).
pub const MAX_LIST_LIMIT: u64 = 10_000;

/// A status 4 or 5 message that is not the JSON described; answered with `bad-request`, the
/// connection stays open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest {
    /// Free text for the error frame's `detail`.
    pub detail: String,
}

impl BadRequest {
    fn from_json_error(what: &str, e: serde_json::Error) -> BadRequest {
        BadRequest {
            detail: format!("{what}: {e}"),
        }
    }

    /// The status-3 frame answering it.
    pub fn to_frame(&self) -> Vec<u8> {
        error_frame(code::BAD_REQUEST, &self.detail)
    }
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tej message: {}", self.detail)
    }
}

impl std::error::Error for BadRequest {}

/// Parses a message that must be JSON, hence UTF-8. serde_json's `from_slice` does not check the
/// UTF-8 of strings it skips (unknown keys), so it alone would take a message that is not JSON;
/// `check_ack`'s `Value` parse refuses it, and every reader here must agree with it.
fn from_json<T: serde::de::DeserializeOwned>(message: &[u8]) -> Result<T, serde_json::Error> {
    let text = std::str::from_utf8(message)
        .map_err(|_| <serde_json::Error as serde::de::Error>::custom("message is not UTF-8"))?;
    serde_json::from_str(text)
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings and integers: serialisation cannot fail.
    serde_json::to_vec(v).expect("tej messages serialise")
}

use crate::wire::hex::encode as hex;

/// One file of an acknowledgement (tej.md 3.1), in frame order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckEntry {
    /// The name as received (U+FFFD replacements if it was not UTF-8; see `name_hex`).
    #[serde(default)]
    pub name: String,
    /// F.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes received.
    pub sha256: String,
    /// Catalog path now serving the file, or `null` if it was not stored.
    #[serde(default)]
    pub stored_as: Option<String>,
    /// Why it was not stored (`bad-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The raw name bytes in hex, only for a name that was not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
}

impl AckEntry {
    /// An entry for a received file: `name` and `name_hex` are derived from the raw name bytes.
    pub fn new(
        raw_name: &[u8],
        size: u64,
        sha256: String,
        stored_as: Option<String>,
        error: Option<&str>,
    ) -> AckEntry {
        let (name, name_hex) = match std::str::from_utf8(raw_name) {
            Ok(s) => (s.to_owned(), None),
            Err(_) => (
                String::from_utf8_lossy(raw_name).into_owned(),
                Some(hex(raw_name)),
            ),
        };
        AckEntry {
            name,
            size,
            sha256,
            stored_as,
            error: error.map(str::to_owned),
            name_hex,
        }
    }
}

/// The acknowledgement of a deliver frame (status 1, tej.md 3.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub files: Vec<AckEntry>,
    /// M of the acknowledged frame.
    #[serde(default)]
    pub message_bytes: u64,
}

impl Ack {
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Lenient: any key order, unknown keys ignored, `name`, `stored_as` and `message_bytes`
    /// optional (a missing `stored_as` reads as `None`; use [`check_ack`] to tell it from
    /// `null`). `None` if the message is not an object with a `files` array of entries with
    /// `size` and `sha256`.
    pub fn from_json(message: &[u8]) -> Option<Ack> {
        from_json(message).ok()
    }

    /// The whole status-1 frame.
    pub fn to_frame(&self) -> Vec<u8> {
        frame(status::ACK, &[], &self.to_json())
    }
}

/// How a sender reads a reply to its deliver frame (tej.md 3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckVerdict {
    /// Not an acknowledgement of the frame sent (a greeting, another application's message):
    /// hand it to the application and keep waiting.
    NotAnAck,
    /// Every entry matches the size and SHA-256 sent, and none has `"stored_as":null`.
    Confirmed,
    /// An acknowledgement that does not confirm: a mismatch or a file not stored (the text says
    /// which). The transfer failed.
    Rejected(String),
}

/// Judges a reply message (of any status but 2 and 3) against the files sent, as
/// `(size, lowercase hex sha256)` in frame order (tej.md 3.2).
///
/// It is an acknowledgement when it is a JSON object whose `files` array has one object per file
/// sent, each with an integer `size` and a string `sha256`. Plain TEJ applications may answer
/// with such a summary without `stored_as`: a missing `stored_as` does not count as `null`.
pub fn check_ack(message: &[u8], sent: &[(u64, &str)]) -> AckVerdict {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(message) else {
        return AckVerdict::NotAnAck;
    };
    let Some(Value::Array(files)) = obj.get("files") else {
        return AckVerdict::NotAnAck;
    };
    if files.len() != sent.len() {
        return AckVerdict::NotAnAck;
    }
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let (Some(size), Some(sha)) = (
            f.get("size").and_then(Value::as_u64),
            f.get("sha256").and_then(Value::as_str),
        ) else {
            return AckVerdict::NotAnAck;
        };
        entries.push((size, sha, f.get("stored_as")));
    }
    for (i, ((size, sha, stored_as), (sent_size, sent_sha))) in entries.iter().zip(sent).enumerate()
    {
        let n = i + 1;
        if size != sent_size {
            return AckVerdict::Rejected(format!("file {n}: size {size}, sent {sent_size}"));
        }
        if !sha.eq_ignore_ascii_case(sent_sha) {
            return AckVerdict::Rejected(format!("file {n}: sha256 {sha}, sent {sent_sha}"));
        }
        if let Some(Value::Null) = stored_as {
            let why = files[i]
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return AckVerdict::Rejected(format!("file {n}: not stored ({why})"));
        }
    }
    AckVerdict::Confirmed
}

/// The message of an error frame (status 3, tej.md 3.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// One of [`code::ALL`].
    pub error: String,
    #[serde(default)]
    pub detail: String,
    /// Entries for files stored before the error, as in an acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<AckEntry>>,
    /// The items of a request that were not found (`not-found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<String>>,
}

impl ErrorMsg {
    pub fn new(code: &str, detail: &str) -> ErrorMsg {
        ErrorMsg {
            error: code.to_owned(),
            detail: detail.to_owned(),
            files: None,
            missing: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Lenient (any key order, unknown keys ignored); `None` without a string `error`.
    pub fn from_json(message: &[u8]) -> Option<ErrorMsg> {
        from_json(message).ok()
    }

    /// The whole status-3 frame.
    pub fn to_frame(&self) -> Vec<u8> {
        frame(status::ERROR, &[], &self.to_json())
    }
}

/// A status-3 frame with message `{"error":code,"detail":detail}`.
pub fn error_frame(code: &str, detail: &str) -> Vec<u8> {
    ErrorMsg::new(code, detail).to_frame()
}

/// A request for catalog files (status 4): each item a SHA-256, a catalog path or a base name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    pub get: Vec<String>,
}

impl GetRequest {
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Any key order, unknown keys ignored; anything but an object with a `get` array of strings
    /// (`{"get":"a"}`, invalid JSON) is a [`BadRequest`].
    pub fn from_json(message: &[u8]) -> Result<GetRequest, BadRequest> {
        from_json(message).map_err(|e| BadRequest::from_json_error("request", e))
    }

    /// The whole status-4 frame.
    pub fn to_frame(&self) -> Vec<u8> {
        frame(status::REQUEST, &[], &self.to_json())
    }
}

/// A list request (status 5); an empty message means the first page with the default limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// Start after this catalog path (byte order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Page size; see [`ListRequest::page_limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl ListRequest {
    /// Empty for the defaults (as `ferry_list_request`), else the compact object.
    pub fn to_json(&self) -> Vec<u8> {
        if self.after.is_none() && self.limit.is_none() {
            return Vec::new();
        }
        to_json(self)
    }

    /// An empty message (or only whitespace) gives the defaults; otherwise an object whose
    /// `after` is a string or null and `limit` a non-negative integer or null.
    pub fn from_json(message: &[u8]) -> Result<ListRequest, BadRequest> {
        if message.iter().all(u8::is_ascii_whitespace) {
            return Ok(ListRequest::default());
        }
        from_json(message).map_err(|e| BadRequest::from_json_error("list request", e))
    }

    /// The page size to serve: `limit` capped at [`MAX_LIST_LIMIT`], at least 1 (a page of 0
    /// entries would send a client paging for ever), [`MAX_LIST_LIMIT`] when absent.
    pub fn page_limit(&self) -> u64 {
        self.limit
            .unwrap_or(MAX_LIST_LIMIT)
            .clamp(1, MAX_LIST_LIMIT)
    }

    /// The whole status-5 frame.
    pub fn to_frame(&self) -> Vec<u8> {
        frame(status::LIST, &[], &self.to_json())
    }
}

/// One catalog file in a request answer's manifest or a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256 (the catalog's id).
    pub sha256: String,
}

/// The message of a request answer (status 0 answering status 4): one entry per file, in
/// request order, under the names the files are sent with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<ManifestEntry>,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Lenient (any key order, unknown keys ignored).
    pub fn from_json(message: &[u8]) -> Option<Manifest> {
        from_json(message).ok()
    }
}

/// One page of the catalog (status 6): entries in byte order of path; `next` is the last path
/// of a full page (ask again with `after: next`), else `null`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub files: Vec<ManifestEntry>,
    /// Always serialised, as `null` on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

impl Listing {
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Lenient (any key order, unknown keys ignored, missing `next` reads as `null`).
    pub fn from_json(message: &[u8]) -> Option<Listing> {
        from_json(message).ok()
    }

    /// The whole status-6 frame.
    pub fn to_frame(&self) -> Vec<u8> {
        frame(status::LISTING, &[], &self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::vectors::{bytes, VECTORS};
    use super::super::frame::{
        frame, put_frame_header_with_version, put_message, Decoder, Event, Limits,
    };
    use super::*;

    const SHA_AAAA: &str = "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201";

    fn a_txt() -> ManifestEntry {
        ManifestEntry {
            name: "a.txt".into(),
            size: 4,
            sha256: SHA_AAAA.into(),
        }
    }

    fn ack_file_only() -> Ack {
        Ack {
            files: vec![AckEntry::new(
                b"a.txt",
                4,
                SHA_AAAA.into(),
                Some("a.txt".into()),
                None,
            )],
            message_bytes: 0,
        }
    }

    /// Message bytes of a single frame with no files.
    fn message_of(f: &[u8]) -> Vec<u8> {
        let mut dec = Decoder::new(Limits::default());
        let mut pos = 0;
        loop {
            let (n, ev) = dec.decode(&f[pos..]);
            pos += n;
            match ev.unwrap().unwrap() {
                Event::Message(m) => {
                    let m = m.to_vec();
                    assert_eq!(dec.decode(&f[pos..]), (0, Ok(Some(Event::FrameEnd))));
                    assert_eq!(pos, f.len());
                    return m;
                }
                Event::FileStart { .. } | Event::FileData(_) => panic!("files in a reply"),
                _ => {}
            }
        }
    }

    /// Every vector but `BUGGY_nonascii_name`, built from ferry's encoders.
    fn encode(name: &str) -> Vec<u8> {
        match name {
            "empty" => frame(0, &[], b""),
            "ping" => frame(status::PING, &[], b""),
            "message_hello" => frame(0, &[], b"hello"),
            "file_only" => frame(0, &[("a.txt", b"AAAA")], b""),
            "two_files_and_message" => frame(
                5,
                &[("small.txt", b"hello tej\n"), ("empty.bin", b"")],
                b"msg",
            ),
            "status_127_version_0" => {
                let mut out = Vec::new();
                put_frame_header_with_version(127, 0, 0, &mut out);
                put_message(b"x", &mut out);
                out
            }
            "empty_name" => frame(0, &[("", b"data")], b""),
            "concat_file_ping_message" => {
                [encode("file_only"), encode("ping"), encode("message_hello")].concat()
            }
            "ferry_ack_file_only" => ack_file_only().to_frame(),
            "ferry_error_too_large" => error_frame(
                code::TOO_LARGE,
                "file 1: length 8358680908399640576 exceeds max_file_size 68719476736",
            ),
            "ferry_request_get" => GetRequest {
                get: vec!["a.txt".into()],
            }
            .to_frame(),
            "ferry_request_answer" => {
                let manifest = Manifest {
                    files: vec![a_txt()],
                };
                frame(status::DELIVER, &[("a.txt", b"AAAA")], &manifest.to_json())
            }
            "ferry_list_request" => ListRequest::default().to_frame(),
            "ferry_listing" => Listing {
                files: vec![a_txt()],
                next: None,
            }
            .to_frame(),
            other => panic!("no encoding for vector {other}"),
        }
    }

    #[test]
    fn t1_every_vector_reencodes_byte_for_byte() {
        for v in VECTORS {
            if v.name == "BUGGY_nonascii_name" {
                continue;
            }
            let want = bytes(v.name);
            let got = encode(v.name);
            if v.name == "ferry_error_too_large" {
                // `detail` is free text: compare the status, the code and the key order.
                assert_eq!(got[..2], want[..2]);
                let (g, w) = (message_of(&got), message_of(&want));
                let (g, w) = (
                    ErrorMsg::from_json(&g).unwrap(),
                    ErrorMsg::from_json(&w).unwrap(),
                );
                assert_eq!(g.error, w.error);
                assert_eq!((g.files, g.missing), (None, None));
                assert!(ErrorMsg::new("too-large", "x")
                    .to_json()
                    .starts_with(br#"{"error":"too-large","detail":"#));
                // ferry's own wording happens to be the vector's.
                assert_eq!(got, want);
                continue;
            }
            assert_eq!(got, want, "{}", v.name);
        }
    }

    #[test]
    fn t1_messages_parse_back() {
        let ack = message_of(&bytes("ferry_ack_file_only"));
        assert_eq!(Ack::from_json(&ack), Some(ack_file_only()));
        let get = message_of(&bytes("ferry_request_get"));
        assert_eq!(GetRequest::from_json(&get).unwrap().get, ["a.txt"]);
        let list = message_of(&bytes("ferry_list_request"));
        assert_eq!(ListRequest::from_json(&list), Ok(ListRequest::default()));
        let listing = message_of(&bytes("ferry_listing"));
        assert_eq!(
            Listing::from_json(&listing),
            Some(Listing {
                files: vec![a_txt()],
                next: None
            })
        );
    }

    #[test]
    fn ack_entries_for_refused_and_non_utf8_names() {
        let e = AckEntry::new(b"\xff\xfe", 3, "ab".into(), None, Some(code::BAD_NAME));
        assert_eq!(e.name, "\u{fffd}\u{fffd}");
        let ack = Ack {
            files: vec![e],
            message_bytes: 5,
        };
        assert_eq!(
            ack.to_json(),
            r#"{"files":[{"name":"��","size":3,"sha256":"ab","stored_as":null,"error":"bad-name","name_hex":"fffe"}],"message_bytes":5}"#
                .as_bytes()
        );
        assert_eq!(Ack::from_json(&ack.to_json()), Some(ack));
    }

    #[test]
    fn readers_accept_any_key_order_and_ignore_unknown_keys() {
        let ack = br#"{"x":1,"message_bytes":0,"files":[{"stored_as":"a.txt","sha256":"63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201","extra":[1],"size":4,"name":"a.txt"}]}"#;
        assert_eq!(Ack::from_json(ack), Some(ack_file_only()));
        // A plain TEJ application's summary: no name, stored_as or message_bytes.
        let summary = br#"{"files":[{"size":4,"sha256":"aa"}]}"#;
        let a = Ack::from_json(summary).unwrap();
        assert_eq!((a.files[0].size, a.files[0].stored_as.clone()), (4, None));
        assert_eq!(Ack::from_json(b"Test 123"), None);
        assert_eq!(Ack::from_json(br#"{"files":"x"}"#), None);

        let err =
            ErrorMsg::from_json(br#"{"missing":["b"],"detail":"d","error":"not-found","z":0}"#)
                .unwrap();
        assert_eq!(err.error, code::NOT_FOUND);
        assert_eq!(err.missing, Some(vec!["b".to_string()]));
        assert_eq!(ErrorMsg::from_json(br#"{"detail":"d"}"#), None);

        let get = GetRequest::from_json(br#"{"v":2,"get":["a","b"]}"#).unwrap();
        assert_eq!(get.get, ["a", "b"]);
        let m = Manifest::from_json(br#"{"files":[{"sha256":"63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201","size":4,"name":"a.txt"}]}"#);
        assert_eq!(
            m,
            Some(Manifest {
                files: vec![a_txt()]
            })
        );
        assert_eq!(
            Listing::from_json(br#"{"next":"a.txt","files":[]}"#)
                .unwrap()
                .next
                .as_deref(),
            Some("a.txt")
        );
        assert_eq!(Listing::from_json(br#"{"files":[]}"#).unwrap().next, None);
    }

    #[test]
    fn bad_request_for_malformed_requests() {
        for bad in [
            &br#"{"get":"a"}"#[..],
            b"{",
            b"",
            b"[]",
            br#"{"get":[1]}"#,
            br#"{"got":["a"]}"#,
            b"\xff",
        ] {
            let e = GetRequest::from_json(bad).unwrap_err();
            assert!(e.to_string().starts_with("tej message: request: "), "{e}");
            let f = e.to_frame();
            assert_eq!(f[0], 0x83);
            let msg = ErrorMsg::from_json(&message_of(&f)).unwrap();
            assert_eq!(msg.error, code::BAD_REQUEST);
        }
        for bad in [
            &br#"{"after":5}"#[..],
            br#"{"limit":-1}"#,
            br#"{"limit":"x"}"#,
            b"nope",
        ] {
            assert!(ListRequest::from_json(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_requests_and_page_limits() {
        assert_eq!(ListRequest::from_json(b""), Ok(ListRequest::default()));
        assert_eq!(ListRequest::from_json(b" \n"), Ok(ListRequest::default()));
        let r = ListRequest {
            after: Some("a/b.txt".into()),
            limit: Some(5),
        };
        assert_eq!(r.to_json(), br#"{"after":"a/b.txt","limit":5}"#.to_vec());
        assert_eq!(ListRequest::from_json(&r.to_json()), Ok(r.clone()));
        assert_eq!(
            ListRequest::from_json(br#"{"limit":7,"after":null}"#),
            Ok(ListRequest {
                after: None,
                limit: Some(7)
            })
        );
        assert_eq!(r.page_limit(), 5);
        assert_eq!(ListRequest::default().page_limit(), MAX_LIST_LIMIT);
        let big = ListRequest {
            limit: Some(u64::MAX),
            ..ListRequest::default()
        };
        assert_eq!(big.page_limit(), MAX_LIST_LIMIT);
        let zero = ListRequest {
            limit: Some(0),
            ..ListRequest::default()
        };
        assert_eq!(zero.page_limit(), 1);
        let listing = Listing {
            files: vec![],
            next: Some("z".into()),
        };
        assert_eq!(listing.to_json(), br#"{"files":[],"next":"z"}"#.to_vec());
    }

    #[test]
    fn t30_error_frames_are_status_3_with_a_known_code() {
        for c in code::ALL {
            let f = error_frame(c, "why");
            assert_eq!(&f[..2], [0x83, 0x01]);
            let msg = ErrorMsg::from_json(&message_of(&f)).unwrap();
            assert_eq!(msg.error, c);
            assert_eq!(msg.detail, "why");
        }
        let not_found = ErrorMsg {
            missing: Some(vec!["b.txt".into()]),
            ..ErrorMsg::new(code::NOT_FOUND, "1 item not found")
        };
        assert_eq!(
            not_found.to_json(),
            br#"{"error":"not-found","detail":"1 item not found","missing":["b.txt"]}"#.to_vec()
        );
        let partial = ErrorMsg {
            files: Some(ack_file_only().files),
            ..ErrorMsg::new(code::TRUNCATED, "eof in file 2")
        };
        let json = partial.to_json();
        assert!(json.starts_with(
            br#"{"error":"truncated","detail":"eof in file 2","files":[{"name":"a.txt""#
        ));
        assert_eq!(ErrorMsg::from_json(&json), Some(partial));
        // Decoder errors map onto codes of the list.
        use super::super::frame::FrameError;
        for e in [
            FrameError::BadFrame(0),
            FrameError::BadVersion(0),
            FrameError::TooManyFiles(1),
            FrameError::FileTooLarge {
                index: 0,
                size: 1,
                max: 0,
            },
            FrameError::MessageTooLarge { size: 1, max: 0 },
        ] {
            assert!(code::ALL.contains(&e.code()), "{e}");
        }
    }

    #[test]
    fn t11_check_ack_confirms_only_exact_matches() {
        let sent = [(4, SHA_AAAA)];
        let ack = ack_file_only().to_json();
        assert_eq!(check_ack(&ack, &sent), AckVerdict::Confirmed);
        // Upper-case hex and a summary without stored_as (plain TEJ application) confirm.
        let summary = format!(
            r#"{{"files":[{{"size":4,"sha256":"{}"}}]}}"#,
            SHA_AAAA.to_uppercase()
        );
        assert_eq!(check_ack(summary.as_bytes(), &sent), AckVerdict::Confirmed);
        // Mismatches and refusals are failures.
        let wrong_size = br#"{"files":[{"size":5,"sha256":"63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201"}]}"#;
        assert!(matches!(
            check_ack(wrong_size, &sent),
            AckVerdict::Rejected(_)
        ));
        let wrong_sha = br#"{"files":[{"size":4,"sha256":"00"}]}"#;
        assert!(matches!(
            check_ack(wrong_sha, &sent),
            AckVerdict::Rejected(_)
        ));
        let refused = Ack {
            files: vec![AckEntry::new(
                b"a.txt",
                4,
                SHA_AAAA.into(),
                None,
                Some(code::BAD_NAME),
            )],
            message_bytes: 0,
        };
        assert_eq!(
            check_ack(&refused.to_json(), &sent),
            AckVerdict::Rejected("file 1: not stored (bad-name)".into())
        );
        // Anything else goes to the application and waiting goes on.
        for other in [
            &b"Test 123"[..],
            b"",
            b"{}",
            br#"{"files":[]}"#,
            br#"{"files":[{"size":4}]}"#,
            br#"{"files":[{"size":"4","sha256":"x"}]}"#,
            br#"[1,2]"#,
        ] {
            assert_eq!(check_ack(other, &sent), AckVerdict::NotAnAck, "{other:?}");
        }
        // Two files: the count must match, then each entry by position.
        let two = [(4, SHA_AAAA), (0, "e3b0")];
        assert_eq!(check_ack(&ack, &two), AckVerdict::NotAnAck);
    }

    /// Found by fuzzing (tej_frame): a message with a non-UTF-8 byte in a string under an
    /// unknown key parsed as an [`Ack`] (serde_json skips such strings unchecked) while
    /// `check_ack` saw no acknowledgement in it. Not UTF-8 is not JSON, for every reader.
    #[test]
    fn a_message_that_is_not_utf8_parses_as_nothing() {
        let m = b"{\"files\":[{\"Mame\":\"a.t\xf8t\",\"size\":4,\"sha256\":\"63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201\",\"stored_as\":\"a.txt\"}],\"message_bytes\":0}";
        assert_eq!(check_ack(m, &[(4, SHA_AAAA)]), AckVerdict::NotAnAck);
        assert_eq!(Ack::from_json(m), None);
        assert_eq!(Manifest::from_json(b"{\"files\":[],\"x\":\"\xff\"}"), None);
        assert_eq!(Listing::from_json(b"{\"files\":[],\"x\":\"\xff\"}"), None);
        assert_eq!(
            ErrorMsg::from_json(b"{\"error\":\"busy\",\"x\":\"\xff\"}"),
            None
        );
        let e = GetRequest::from_json(b"{\"get\":[],\"x\":\"\xff\"}").unwrap_err();
        assert_eq!(e.detail, "request: message is not UTF-8");
        assert!(ListRequest::from_json(b"{\"x\":\"\xff\"}").is_err());
    }
}
