//! The HTTP/1.1 Upgrade handshake that opens every FastDP connection (fastdp.md 2.2, F1-F4, F32).
//!
//! Server side: [`HeadParser`] reads the request head incrementally (split anywhere, at most
//! [`MAX_HEAD`] bytes including the final empty line) and never consumes a byte past it, so what
//! follows stays the start of the FastDP stream. [`switching_protocols`] and [`Refusal::response`]
//! are the exact replies. Client side: [`put_request`] and [`ResponseParser`], which fails at the
//! first sign of trouble (end of stream, another status) instead of waiting.
//!
//! ```text
//! GET <path> HTTP/1.1\r\n
//! Host: <host>:<port>\r\n
//! Upgrade: fastdp\r\n                    value in any case
//! Connection: Upgrade\r\n                list holding the token "upgrade", any case
//! Sec-FastDP-Key: <1..128 visible ASCII>\r\n
//! Sec-FastDP-Version: 1.2.0\r\n          (1.1.0 from cli.py senders)
//! \r\n
//! ```
//!
//! Header names match in any case; reply header names are spelled exactly as above because
//! older clients compare them case-sensitively. Out of scope: timeouts (the 10 s head deadline is
//! the machine's), sockets, and any HTTP beyond this one exchange.

use std::fmt;

/// Largest request or response head, final empty line included.
pub const MAX_HEAD: usize = 8192;
/// Default request path.
pub const DEFAULT_PATH: &str = "/fastdp-endpoint";
/// Longest `Sec-FastDP-Key` accepted.
pub const MAX_KEY: usize = 128;

/// The protocol versions a handshake can settle on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `1.1.0`, spoken by `cli.py` senders (fastdp.md 1.2).
    V110,
    /// `1.2.0`, the full protocol.
    V120,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V110 => "1.1.0",
            Version::V120 => "1.2.0",
        }
    }
}

/// Progress of an incremental parse ("need more" is not an error, STYLE 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// The head is not complete yet; feed more bytes.
    Partial,
    Complete(T),
}

/// A request the server accepts: answer with [`switching_protocols`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-FastDP-Key`, echoed verbatim.
    pub key: String,
    pub version: Version,
}

/// Why a request head is refused; each has one exact response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed request or header line, another method or HTTP version, a bad key, a missing
    /// `upgrade` connection token, a repeated FastDP header, or a head over 8,192 bytes.
    BadRequest(BadRequest),
    /// Another path.
    NotFound,
    /// The head did not arrive within the deadline (decided by the caller's clock).
    RequestTimeout,
    /// No `Upgrade: fastdp`, or a version missing, `1.0.0`, unknown, or `1.1.0` while 1.1.0 is
    /// switched off.
    UpgradeRequired,
    /// The server is at its connection limit (decided by the caller).
    ServiceUnavailable,
}

/// The detail of a `400`, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRequest {
    RequestLine,
    Method,
    HttpVersion,
    HeaderLine,
    NotAscii,
    HeadTooLarge,
    KeyMissing,
    KeyInvalid,
    NoUpgradeToken,
    Repeated(&'static str),
}

impl Refusal {
    /// The complete response: `Connection: close`, `Content-Length: 0`; the 426 also names the
    /// upgrade and the version ferry speaks (exactly 115 bytes).
    pub fn response(self) -> &'static [u8] {
        match self {
            Refusal::BadRequest(_) => {
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Refusal::NotFound => {
                b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Refusal::RequestTimeout => {
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Refusal::UpgradeRequired => {
                b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: fastdp\r\nConnection: close\r\nSec-FastDP-Version: 1.2.0\r\nContent-Length: 0\r\n\r\n"
            }
            Refusal::ServiceUnavailable => {
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
        }
    }

    /// The status code.
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::NotFound => 404,
            Refusal::RequestTimeout => 408,
            Refusal::UpgradeRequired => 426,
            Refusal::ServiceUnavailable => 503,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadRequest(why) => {
                let why = match why {
                    BadRequest::RequestLine => "malformed request line",
                    BadRequest::Method => "method is not GET",
                    BadRequest::HttpVersion => "HTTP version is not HTTP/1.1",
                    BadRequest::HeaderLine => "malformed header line",
                    BadRequest::NotAscii => "byte outside printable ASCII",
                    BadRequest::HeadTooLarge => "request head over 8192 bytes",
                    BadRequest::KeyMissing => "Sec-FastDP-Key missing",
                    BadRequest::KeyInvalid => "Sec-FastDP-Key empty, too long or not visible ASCII",
                    BadRequest::NoUpgradeToken => "Connection lacks the upgrade token",
                    BadRequest::Repeated(name) => {
                        return write!(f, "fastdp handshake: 400: {name} repeated")
                    }
                };
                write!(f, "fastdp handshake: 400: {why}")
            }
            Refusal::NotFound => f.write_str("fastdp handshake: 404: another path"),
            Refusal::RequestTimeout => {
                f.write_str("fastdp handshake: 408: head not complete in time")
            }
            Refusal::UpgradeRequired => {
                f.write_str("fastdp handshake: 426: no fastdp upgrade or an unsupported version")
            }
            Refusal::ServiceUnavailable => f.write_str("fastdp handshake: 503: server busy"),
        }
    }
}

impl std::error::Error for Refusal {}

/// What the server accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRules {
    /// The request path (default [`DEFAULT_PATH`]).
    pub path: String,
    /// Accept `Sec-FastDP-Version: 1.1.0` (setting `accept_v110`, default on).
    pub accept_v110: bool,
}

impl Default for RequestRules {
    fn default() -> Self {
        RequestRules {
            path: DEFAULT_PATH.to_owned(),
            accept_v110: true,
        }
    }
}

/// Finds the end of a head ("\r\n\r\n") in `buf`, searching from `from`; returns the length of
/// the head including the terminator.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    memchr::memmem::find(&buf[start..], b"\r\n\r\n").map(|i| start + i + 4)
}

/// Collects one head of at most [`MAX_HEAD`] bytes, never consuming past its end.
#[derive(Debug, Default)]
struct HeadBuffer {
    buf: Vec<u8>,
    done: bool,
}

enum Collected<'a> {
    Partial,
    Head(&'a [u8]),
    TooLarge,
}

impl HeadBuffer {
    /// Takes bytes up to the end of the head; returns how many were consumed.
    fn feed(&mut self, input: &[u8]) -> (usize, Collected<'_>) {
        if self.done {
            return (0, Collected::Head(&self.buf));
        }
        let before = self.buf.len();
        let room = MAX_HEAD - before;
        let take = input.len().min(room);
        self.buf.extend_from_slice(&input[..take]);
        match head_end(&self.buf, before) {
            Some(end) => {
                self.buf.truncate(end);
                self.done = true;
                (end - before, Collected::Head(&self.buf))
            }
            None if self.buf.len() >= MAX_HEAD => (take, Collected::TooLarge),
            None => (take, Collected::Partial),
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Splits a head (terminator included) into its first line and header lines; `Err` for a byte
/// outside printable ASCII and horizontal tab, a lone CR or LF, or a folded line.
/// A header line split into name and trimmed value.
type HeaderField<'a> = (&'a [u8], &'a [u8]);

fn lines(head: &[u8]) -> Result<(&[u8], Vec<HeaderField<'_>>), BadRequest> {
    // Without the final "\n\r\n" every line, the last included, ends in "\r".
    let body = &head[..head.len() - 3];
    let mut out = Vec::new();
    let mut first: Option<&[u8]> = None;
    for line in body.split(|&b| b == b'\n') {
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err(match first {
                None => BadRequest::RequestLine,
                Some(_) => BadRequest::HeaderLine,
            });
        };
        if line
            .iter()
            .any(|&b| b != b'\t' && !(0x20..0x7f).contains(&b))
        {
            return Err(BadRequest::NotAscii);
        }
        if first.is_none() {
            first = Some(line);
            continue;
        }
        out.push(split_header(line)?);
    }
    Ok((first.unwrap_or(b""), out))
}

/// `name: value` with the value trimmed of spaces and tabs. The name is an HTTP token.
fn split_header(line: &[u8]) -> Result<(&[u8], &[u8]), BadRequest> {
    let colon = memchr::memchr(b':', line).ok_or(BadRequest::HeaderLine)?;
    let name = &line[..colon];
    let is_tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(is_tchar) {
        return Err(BadRequest::HeaderLine);
    }
    Ok((name, trim(&line[colon + 1..])))
}

fn trim(v: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// Looks up a header that may appear at most once.
fn single<'a>(
    headers: &[(&'a [u8], &'a [u8])],
    name: &'static str,
) -> Result<Option<&'a [u8]>, BadRequest> {
    let mut found = None;
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(name.as_bytes()) {
            if found.is_some() {
                return Err(BadRequest::Repeated(name));
            }
            found = Some(*v);
        }
    }
    Ok(found)
}

fn has_upgrade_token(headers: &[(&[u8], &[u8])]) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"))
}

/// Judges a complete request head (terminator included).
pub fn parse_request(head: &[u8], rules: &RequestRules) -> Result<Upgrade, Refusal> {
    let bad = Refusal::BadRequest;
    let (first, headers) = lines(head).map_err(bad)?;
    let mut parts = first.split(|&b| b == b' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(BadRequest::RequestLine));
    };
    if method.is_empty() || path.is_empty() || version.is_empty() {
        return Err(bad(BadRequest::RequestLine));
    }
    if method != b"GET" {
        return Err(bad(BadRequest::Method));
    }
    if version != b"HTTP/1.1" {
        return Err(bad(BadRequest::HttpVersion));
    }
    let upgrade = single(&headers, "Upgrade").map_err(bad)?;
    let fastdp_version = single(&headers, "Sec-FastDP-Version").map_err(bad)?;
    let key = single(&headers, "Sec-FastDP-Key").map_err(bad)?;
    if path != rules.path.as_bytes() {
        return Err(Refusal::NotFound);
    }
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case(b"fastdp")) {
        return Err(Refusal::UpgradeRequired);
    }
    let version = match fastdp_version {
        Some(b"1.2.0") => Version::V120,
        Some(b"1.1.0") if rules.accept_v110 => Version::V110,
        _ => return Err(Refusal::UpgradeRequired),
    };
    if !has_upgrade_token(&headers) {
        return Err(bad(BadRequest::NoUpgradeToken));
    }
    let key = key.ok_or(bad(BadRequest::KeyMissing))?;
    if key.is_empty() || key.len() > MAX_KEY || !key.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(bad(BadRequest::KeyInvalid));
    }
    Ok(Upgrade {
        // Checked above to be visible ASCII.
        key: String::from_utf8_lossy(key).into_owned(),
        version,
    })
}

/// Incremental reader of one request head.
#[derive(Debug, Default)]
pub struct HeadParser {
    head: HeadBuffer,
}

impl HeadParser {
    pub fn new() -> HeadParser {
        HeadParser::default()
    }

    /// Feeds bytes; returns how many were consumed (never past the head) and the verdict once
    /// the head is complete or too large.
    pub fn feed(
        &mut self,
        input: &[u8],
        rules: &RequestRules,
    ) -> (usize, Status<Result<Upgrade, Refusal>>) {
        let (n, c) = self.head.feed(input);
        let status = match c {
            Collected::Partial => Status::Partial,
            Collected::TooLarge => {
                Status::Complete(Err(Refusal::BadRequest(BadRequest::HeadTooLarge)))
            }
            Collected::Head(head) => Status::Complete(parse_request(head, rules)),
        };
        (n, status)
    }

    /// True before the first byte: a close here is no request at all (nothing to answer).
    pub fn is_empty(&self) -> bool {
        self.head.is_empty()
    }
}

/// The success reply, with the client's key verbatim and the version agreed.
pub fn switching_protocols(key: &str, version: Version, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\nSec-FastDP-Version: ");
    out.extend_from_slice(version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// The client's request. `host` is `host:port` as the `Host` header wants it.
pub fn put_request(host: &str, path: &str, key: &str, version: Version, out: &mut Vec<u8>) {
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: ",
        key,
        "\r\nSec-FastDP-Version: ",
        version.as_str(),
        "\r\n\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// A fresh `Sec-FastDP-Key`: base64 of 16 random bytes the caller drew.
pub fn key_from_random(bytes: [u8; 16]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

/// Why the client's handshake failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The stream ended before the head was complete (`status` if the status line had arrived).
    Eof { status: Option<u16> },
    /// Another status than 101 (`426`, `503`...), with its reason phrase.
    Status { code: u16, reason: String },
    /// The head is not HTTP/1.1 as expected, or over 8,192 bytes.
    Malformed(&'static str),
    /// A 101 without `Upgrade: fastdp`.
    NoUpgrade,
    /// The key was not echoed verbatim.
    KeyMismatch,
    /// The server agreed on another version than the one asked for (or none).
    VersionMismatch { got: Option<String> },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Eof { status: None } => {
                f.write_str("fastdp handshake: connection closed before the response")
            }
            ResponseError::Eof { status: Some(s) } => {
                write!(
                    f,
                    "fastdp handshake: connection closed inside a {s} response"
                )
            }
            ResponseError::Status { code, reason } => {
                write!(f, "fastdp handshake: server answered {code} {reason}")
            }
            ResponseError::Malformed(why) => {
                write!(f, "fastdp handshake: malformed response: {why}")
            }
            ResponseError::NoUpgrade => {
                f.write_str("fastdp handshake: 101 without Upgrade: fastdp")
            }
            ResponseError::KeyMismatch => {
                f.write_str("fastdp handshake: Sec-FastDP-Key not echoed")
            }
            ResponseError::VersionMismatch { got } => write!(
                f,
                "fastdp handshake: server agreed on version {}",
                got.as_deref().unwrap_or("(none)")
            ),
        }
    }
}

impl std::error::Error for ResponseError {}

/// Parses `HTTP/1.1 <code> <reason>`.
fn status_line(line: &[u8]) -> Result<(u16, String), ResponseError> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .ok_or(ResponseError::Malformed("status line is not HTTP/1.1"))?;
    let (code, reason) = match rest.get(3) {
        Some(b' ') => (&rest[..3], &rest[4..]),
        None if rest.len() == 3 => (rest, &b""[..]),
        _ => return Err(ResponseError::Malformed("status code")),
    };
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(ResponseError::Malformed("status code"));
    }
    let code = code.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
    Ok((code, String::from_utf8_lossy(reason).into_owned()))
}

/// The client's reader of the server's response head.
#[derive(Debug)]
pub struct ResponseParser {
    head: HeadBuffer,
    key: String,
    version: Version,
}

impl ResponseParser {
    /// Expects the echo of `key` and agreement on `version`.
    pub fn new(key: &str, version: Version) -> ResponseParser {
        ResponseParser {
            head: HeadBuffer::default(),
            key: key.to_owned(),
            version,
        }
    }

    /// Feeds bytes; consumes at most up to the end of the head (what follows belongs to the
    /// FastDP stream). `Complete(Ok(()))` means the whole 101 has been read and checked.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Status<Result<(), ResponseError>>) {
        let (n, c) = self.head.feed(input);
        let verdict = match c {
            Collected::Partial => None,
            Collected::TooLarge => Some(Err(ResponseError::Malformed("head over 8192 bytes"))),
            Collected::Head(head) => Some(judge_response(head, &self.key, self.version)),
        };
        // A complete status line that is not 101 fails at once, and decides first whether the
        // rest of the head came in the same read or not: the verdict never depends on where
        // the reads ended.
        let status = match self.early_status() {
            Some(Err(e)) => Status::Complete(Err(e)),
            _ => verdict.map_or(Status::Partial, Status::Complete),
        };
        (n, status)
    }

    /// The stream ended: always a failure unless the head was complete.
    pub fn eof(&self) -> ResponseError {
        let status = self.early_status().and_then(|r| r.ok());
        match self.early_status() {
            Some(Err(e @ ResponseError::Status { .. })) => e,
            _ => ResponseError::Eof { status },
        }
    }

    /// The status line if it is complete: `Ok(code)` for 101, else the failure.
    fn early_status(&self) -> Option<Result<u16, ResponseError>> {
        let buf = &self.head.buf;
        let end = memchr::memmem::find(buf, b"\r\n")?;
        Some(status_line(&buf[..end]).and_then(|(code, reason)| {
            if code == 101 {
                Ok(code)
            } else {
                Err(ResponseError::Status { code, reason })
            }
        }))
    }
}

/// Judges a complete response head (terminator included).
fn judge_response(head: &[u8], key: &str, want: Version) -> Result<(), ResponseError> {
    {
        let (first, headers) = lines(head).map_err(|_| ResponseError::Malformed("header line"))?;
        let (code, reason) = status_line(first)?;
        if code != 101 {
            return Err(ResponseError::Status { code, reason });
        }
        let get = |name: &'static str| {
            single(&headers, name).map_err(|_| ResponseError::Malformed("repeated header"))
        };
        if !get("Upgrade")?.is_some_and(|u| u.eq_ignore_ascii_case(b"fastdp")) {
            return Err(ResponseError::NoUpgrade);
        }
        let version = get("Sec-FastDP-Version")?;
        if version != Some(want.as_str().as_bytes()) {
            return Err(ResponseError::VersionMismatch {
                got: version.map(|v| String::from_utf8_lossy(v).into_owned()),
            });
        }
        if get("Sec-FastDP-Key")? != Some(key.as_bytes()) {
            return Err(ResponseError::KeyMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ_120: &[u8] = b"GET /fastdp-endpoint HTTP/1.1\r\nHost: 127.0.0.1:5423\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: 1.2.0\r\n\r\n";
    const RESP_120: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: 1.2.0\r\n\r\n";
    const REQ_110: &[u8] = b"GET /fastdp-endpoint HTTP/1.1\r\nHost: 127.0.0.1:5423\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: some-random-key\r\nSec-FastDP-Version: 1.1.0\r\n\r\n";
    const RESP_110: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: some-random-key\r\nSec-FastDP-Version: 1.1.0\r\n\r\n";

    fn judge(req: &[u8]) -> Result<Upgrade, Refusal> {
        judge_with(req, &RequestRules::default())
    }

    fn judge_with(req: &[u8], rules: &RequestRules) -> Result<Upgrade, Refusal> {
        let mut p = HeadParser::new();
        match p.feed(req, rules) {
            (n, Status::Complete(r)) => {
                assert!(n <= req.len());
                r
            }
            (_, Status::Partial) => panic!("head incomplete"),
        }
    }

    fn bad(req: &str) -> Refusal {
        judge(req.as_bytes()).unwrap_err()
    }

    fn req(lines: &[&str]) -> String {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n\r\n");
        s
    }

    const OK_LINES: [&str; 6] = [
        "GET /fastdp-endpoint HTTP/1.1",
        "Host: h:1",
        "Upgrade: fastdp",
        "Connection: Upgrade",
        "Sec-FastDP-Key: k",
        "Sec-FastDP-Version: 1.2.0",
    ];

    fn with_line(i: usize, line: &str) -> String {
        let mut l = OK_LINES.to_vec();
        l[i] = line;
        req(&l)
    }

    fn without_line(i: usize) -> String {
        let mut l = OK_LINES.to_vec();
        l.remove(i);
        req(&l)
    }

    #[test]
    fn f1_accepts_the_spec_request_and_answers_the_exact_101() {
        let up = judge(REQ_120).unwrap();
        assert_eq!(
            up,
            Upgrade {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                version: Version::V120
            }
        );
        let mut out = Vec::new();
        switching_protocols(&up.key, up.version, &mut out);
        assert_eq!(out, RESP_120);
        let mut r = Vec::new();
        put_request(
            "127.0.0.1:5423",
            DEFAULT_PATH,
            "dGhlIHNhbXBsZSBub25jZQ==",
            Version::V120,
            &mut r,
        );
        assert_eq!(r, REQ_120);
        assert_eq!(
            key_from_random(*b"the sample nonce"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
    }

    #[test]
    fn f1_header_names_in_any_case_and_upgrade_value_in_any_case() {
        let r = "get /fastdp-endpoint HTTP/1.1\r\n";
        assert_eq!(
            bad(&(r.to_owned() + "\r\n")),
            Refusal::BadRequest(BadRequest::Method)
        );
        let s = req(&[
            "GET /fastdp-endpoint HTTP/1.1",
            "host: h",
            "UPGRADE: FastDP",
            "connection: keep-alive, UPGRADE",
            "sec-fastdp-key:   some-random-key  ",
            "SEC-FASTDP-VERSION:1.2.0",
        ]);
        assert_eq!(judge(s.as_bytes()).unwrap().key, "some-random-key");
    }

    #[test]
    fn f32_v110_accepted_with_its_own_101_unless_switched_off() {
        let up = judge(REQ_110).unwrap();
        assert_eq!(up.version, Version::V110);
        let mut out = Vec::new();
        switching_protocols(&up.key, up.version, &mut out);
        assert_eq!(out, RESP_110);
        assert!(out.ends_with(b"Sec-FastDP-Version: 1.1.0\r\n\r\n"));
        let off = RequestRules {
            accept_v110: false,
            ..RequestRules::default()
        };
        assert_eq!(judge_with(REQ_110, &off), Err(Refusal::UpgradeRequired));
    }

    #[test]
    fn f2_versions_and_upgrade_give_426_with_exact_bytes() {
        let r426 = Refusal::UpgradeRequired.response();
        assert_eq!(r426.len(), 115);
        assert_eq!(
            r426,
            &b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: fastdp\r\nConnection: close\r\nSec-FastDP-Version: 1.2.0\r\nContent-Length: 0\r\n\r\n"[..]
        );
        for v in ["1.0.0", "2.0.0", "1.2", "", "1.2.0 "] {
            let line = format!("Sec-FastDP-Version: {v}");
            let expect = if v == "1.2.0 " {
                Ok(())
            } else {
                Err(Refusal::UpgradeRequired)
            };
            assert_eq!(
                judge(with_line(5, &line).as_bytes()).map(|_| ()),
                expect,
                "{v:?}"
            );
        }
        assert_eq!(bad(&without_line(5)), Refusal::UpgradeRequired);
        assert_eq!(bad(&without_line(2)), Refusal::UpgradeRequired);
        assert_eq!(
            bad(&with_line(2, "Upgrade: websocket")),
            Refusal::UpgradeRequired
        );
        // The README's 1.0.0 example sends an empty key: still a 426, not a 400.
        let readme = "GET /fastdp-endpoint HTTP/1.1\r\nHost: example.com\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key:\r\nSec-FastDP-Version: 1.0.0\r\n\r\n";
        assert_eq!(bad(readme), Refusal::UpgradeRequired);
    }

    #[test]
    fn f3_malformed_heads_get_400_and_other_paths_404() {
        use BadRequest::*;
        let b = Refusal::BadRequest;
        assert_eq!(
            bad(&with_line(0, "POST /fastdp-endpoint HTTP/1.1")),
            b(Method)
        );
        assert_eq!(
            bad(&with_line(0, "GET /fastdp-endpoint HTTP/1.0")),
            b(HttpVersion)
        );
        assert_eq!(
            bad(&with_line(0, "GET  /fastdp-endpoint HTTP/1.1")),
            b(RequestLine)
        );
        assert_eq!(bad(&with_line(0, "GET /fastdp-endpoint")), b(RequestLine));
        assert_eq!(bad(&with_line(0, "GET /x HTTP/1.1")), Refusal::NotFound);
        assert_eq!(bad(&with_line(1, "Host h")), b(HeaderLine));
        assert_eq!(bad(&with_line(1, " Host: h")), b(HeaderLine));
        assert_eq!(bad(&with_line(1, "Ho st: h")), b(HeaderLine));
        assert_eq!(bad(&with_line(1, "Host: h\u{e9}")), b(NotAscii));
        assert_eq!(bad(&with_line(1, "Host: a\rb")), b(NotAscii));
        assert_eq!(
            bad(&with_line(3, "Connection: keep-alive")),
            b(NoUpgradeToken)
        );
        assert_eq!(bad(&without_line(3)), b(NoUpgradeToken));
        assert_eq!(bad(&without_line(4)), b(KeyMissing));
        assert_eq!(bad(&with_line(4, "Sec-FastDP-Key:")), b(KeyInvalid));
        assert_eq!(bad(&with_line(4, "Sec-FastDP-Key: a b")), b(KeyInvalid));
        let long = format!("Sec-FastDP-Key: {}", "k".repeat(129));
        assert_eq!(bad(&with_line(4, &long)), b(KeyInvalid));
        let max = format!("Sec-FastDP-Key: {}", "k".repeat(128));
        assert_eq!(judge(with_line(4, &max).as_bytes()).unwrap().key.len(), 128);
        let twice = with_line(1, "Sec-FastDP-Key: other");
        assert_eq!(bad(&twice), b(Repeated("Sec-FastDP-Key")));
        // The README server's habit: the request line taken as a header. Ferry parses it as a
        // request line; a bare LF is not a line end.
        assert_eq!(
            bad("GET /fastdp-endpoint HTTP/1.1\nHost: h\r\n\r\n"),
            b(RequestLine)
        );
        // Each refusal is a complete response with Connection: close.
        for r in [
            b(Method),
            Refusal::NotFound,
            Refusal::RequestTimeout,
            Refusal::UpgradeRequired,
            Refusal::ServiceUnavailable,
        ] {
            let text = std::str::from_utf8(r.response()).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {} ", r.status())));
            assert!(
                text.ends_with("Connection: close\r\nContent-Length: 0\r\n\r\n")
                    || r.status() == 426
            );
            assert!(!r.to_string().is_empty());
        }
        assert_eq!(
            Refusal::ServiceUnavailable.response(),
            &b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                [..]
        );
    }

    /// A request line with an empty method, path or version is malformed as a line, whatever
    /// the other two parts say.
    #[test]
    fn f3_request_lines_with_an_empty_part() {
        let rest = &REQ_120[REQ_120.iter().position(|&b| b == b'\r').unwrap()..];
        for first in [
            &b" /fastdp-endpoint HTTP/1.1"[..],
            b"GET  HTTP/1.1",
            b"GET /fastdp-endpoint ",
        ] {
            let req = [first, rest].concat();
            assert_eq!(
                judge(&req),
                Err(Refusal::BadRequest(BadRequest::RequestLine)),
                "{}",
                String::from_utf8_lossy(first)
            );
        }
    }

    #[test]
    fn status_lines_with_and_without_a_reason() {
        assert_eq!(status_line(b"HTTP/1.1 101"), Ok((101, String::new())));
        assert_eq!(
            status_line(b"HTTP/1.1 101 Switching Protocols"),
            Ok((101, "Switching Protocols".into()))
        );
        for bad in [
            &b"HTTP/1.1 10"[..],
            b"HTTP/1.1 1011",
            b"HTTP/1.1 1x1",
            b"HTTP/1.0 101",
        ] {
            assert!(
                status_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn f3_head_over_8192_bytes_is_refused_without_reading_past_it() {
        let filler = format!("X-Pad: {}", "p".repeat(9000));
        let big = with_line(1, &filler);
        let mut p = HeadParser::new();
        let (n, st) = p.feed(big.as_bytes(), &RequestRules::default());
        assert_eq!(n, MAX_HEAD);
        assert_eq!(
            st,
            Status::Complete(Err(Refusal::BadRequest(BadRequest::HeadTooLarge)))
        );
        // In two pieces: the second is read only up to the 8,192th byte.
        let mut p = HeadParser::new();
        let (n, st) = p.feed(&big.as_bytes()[..100], &RequestRules::default());
        assert_eq!((n, st), (100, Status::Partial));
        let (n, st) = p.feed(&big.as_bytes()[100..], &RequestRules::default());
        assert_eq!(n, MAX_HEAD - 100);
        assert_eq!(
            st,
            Status::Complete(Err(Refusal::BadRequest(BadRequest::HeadTooLarge)))
        );
        // Exactly 8,192 bytes with the final empty line is accepted.
        let base = req(&OK_LINES).len();
        let pad = format!("X: {}", "p".repeat(MAX_HEAD - base - 5));
        let mut lines = OK_LINES.to_vec();
        lines.push(&pad);
        let exact = req(&lines);
        assert_eq!(exact.len(), MAX_HEAD);
        assert!(judge(exact.as_bytes()).is_ok());
    }

    #[test]
    fn f3_bytes_after_the_head_are_left_as_stream_start() {
        let mut input = REQ_120.to_vec();
        input.extend_from_slice(b"\0\0\0\xf2{\"OneChunk\"");
        let mut p = HeadParser::new();
        let (n, st) = p.feed(&input, &RequestRules::default());
        assert_eq!(n, REQ_120.len());
        assert!(matches!(st, Status::Complete(Ok(_))));
    }

    #[test]
    fn request_split_anywhere_gives_the_same_verdict() {
        for req in [REQ_120, REQ_110, bad_input()] {
            let want = judge(req);
            for cut in 0..=req.len() {
                let mut p = HeadParser::new();
                let rules = RequestRules::default();
                let (n, st) = p.feed(&req[..cut], &rules);
                assert_eq!(n, cut);
                let got = match st {
                    Status::Complete(r) => r,
                    Status::Partial => match p.feed(&req[cut..], &rules) {
                        (m, Status::Complete(r)) => {
                            assert_eq!(cut + m, req.len());
                            r
                        }
                        (_, Status::Partial) => panic!("partial at {cut}"),
                    },
                };
                assert_eq!(got, want, "cut at {cut}");
            }
            // Byte by byte.
            let mut p = HeadParser::new();
            let mut verdict = None;
            for (i, b) in req.iter().enumerate() {
                let (n, st) = p.feed(std::slice::from_ref(b), &RequestRules::default());
                assert_eq!(n, 1);
                if let Status::Complete(r) = st {
                    assert_eq!(i + 1, req.len());
                    verdict = Some(r);
                }
            }
            assert_eq!(verdict, Some(want));
        }
    }

    fn bad_input() -> &'static [u8] {
        b"GET /other HTTP/1.1\r\nUpgrade: fastdp\r\n\r\n"
    }

    #[test]
    fn f4_client_accepts_the_101_and_leaves_the_rest() {
        let mut input = RESP_120.to_vec();
        input.extend_from_slice(b"\0\0\x01\x1f");
        for cut in 0..=RESP_120.len() {
            let mut p = ResponseParser::new("dGhlIHNhbXBsZSBub25jZQ==", Version::V120);
            let (n, st) = p.feed(&input[..cut]);
            assert_eq!(n, cut);
            if cut < RESP_120.len() {
                assert_eq!(st, Status::Partial, "cut {cut}");
                let (m, st) = p.feed(&input[cut..]);
                assert_eq!(cut + m, RESP_120.len());
                assert_eq!(st, Status::Complete(Ok(())));
            } else {
                assert_eq!(st, Status::Complete(Ok(())));
            }
        }
    }

    #[test]
    fn f4_client_fails_on_eof_or_another_status_without_waiting() {
        let mut p = ResponseParser::new("k", Version::V120);
        assert_eq!(p.eof(), ResponseError::Eof { status: None });
        let (_, st) = p.feed(b"HTTP/1.1 101 Swi");
        assert_eq!(st, Status::Partial);
        assert_eq!(p.eof(), ResponseError::Eof { status: None });
        let (_, st) = p.feed(b"tching Protocols\r\nUpgrade: fa");
        assert_eq!(st, Status::Partial);
        assert_eq!(p.eof(), ResponseError::Eof { status: Some(101) });
        // A 426 fails as soon as its status line is in, before the rest of the head.
        let mut p = ResponseParser::new("k", Version::V120);
        let (_, st) = p.feed(b"HTTP/1.1 426 Upgrade Required\r\nUpg");
        let e = ResponseError::Status {
            code: 426,
            reason: "Upgrade Required".into(),
        };
        assert_eq!(st, Status::Complete(Err(e.clone())));
        assert_eq!(p.eof(), e);
        assert_eq!(
            e.to_string(),
            "fastdp handshake: server answered 426 Upgrade Required"
        );
        let mut p = ResponseParser::new("k", Version::V120);
        let (_, st) = p.feed(Refusal::ServiceUnavailable.response());
        assert!(matches!(
            st,
            Status::Complete(Err(ResponseError::Status { code: 503, .. }))
        ));
        // cli.py's peer habit of a bare "RECONNECT" or garbage: malformed at the first line end.
        let mut p = ResponseParser::new("k", Version::V120);
        let (_, st) = p.feed(b"RECONNECT\r\n");
        assert_eq!(
            st,
            Status::Complete(Err(ResponseError::Malformed("status line is not HTTP/1.1")))
        );
        let mut p = ResponseParser::new("k", Version::V120);
        let (n, st) = p.feed(&[b'x'; 9000]);
        assert_eq!(n, MAX_HEAD);
        assert!(matches!(
            st,
            Status::Complete(Err(ResponseError::Malformed(_)))
        ));
    }

    /// Found by fuzzing (fastdp_http_head): a bad status line followed by a malformed header
    /// line failed on the status line when the reads ended inside the head, and on the header
    /// line when the whole head came in one read.
    #[test]
    fn response_verdict_does_not_depend_on_where_reads_end() {
        for head in [
            &b"HTTP/1.1 426 Upgrade Required\r\nCo\x03nnecti\xa3n: close\r\n\r\n"[..],
            b"HTTP/1.1 4 c\r\n26 Upgrade Required\r\nConnection: close\r\n\r\n",
        ] {
            let whole = ResponseParser::new("k", Version::V120).feed(head).1;
            assert!(matches!(whole, Status::Complete(Err(_))), "{whole:?}");
            for cut in 1..head.len() {
                let mut p = ResponseParser::new("k", Version::V120);
                let st = match p.feed(&head[..cut]) {
                    (_, Status::Partial) => p.feed(&head[cut..]).1,
                    (_, st) => st,
                };
                assert_eq!(st, whole, "cut at {cut}");
            }
        }
        // Over 8,192 bytes with a bad status line: the status line, not the size.
        let mut big = b"HTTP/1.1 503 Busy\r\n".to_vec();
        big.resize(9000, b'x');
        let st = ResponseParser::new("k", Version::V120).feed(&big).1;
        assert!(matches!(
            st,
            Status::Complete(Err(ResponseError::Status { code: 503, .. }))
        ));
    }

    #[test]
    fn f4_client_checks_upgrade_version_and_key_echo() {
        let check = |resp: &[u8], key: &str, v: Version| {
            let mut p = ResponseParser::new(key, v);
            match p.feed(resp) {
                (_, Status::Complete(r)) => r,
                _ => panic!("partial"),
            }
        };
        let k = "dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(check(RESP_120, k, Version::V120), Ok(()));
        assert_eq!(
            check(RESP_120, "other", Version::V120),
            Err(ResponseError::KeyMismatch)
        );
        assert_eq!(
            check(RESP_120, k, Version::V110),
            Err(ResponseError::VersionMismatch {
                got: Some("1.2.0".into())
            })
        );
        let no_up = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(
            check(no_up, k, Version::V120),
            Err(ResponseError::NoUpgrade)
        );
        assert_eq!(check(RESP_110, "some-random-key", Version::V110), Ok(()));
    }

    #[test]
    fn never_panics_on_truncations_and_random_bytes() {
        let rules = RequestRules::default();
        for fixture in [REQ_120, REQ_110, RESP_120] {
            for cut in 0..fixture.len() {
                let _ = HeadParser::new().feed(&fixture[..cut], &rules);
                let mut with_end = fixture[..cut].to_vec();
                with_end.extend_from_slice(b"\r\n\r\n");
                let _ = HeadParser::new().feed(&with_end, &rules);
                let mut r = ResponseParser::new("k", Version::V120);
                let _ = r.feed(&with_end);
                let _ = r.eof();
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..3000 {
            let len = (round % 300) + 4;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let alphabet = b"\r\n: GETHP/1.2.0fastdpUpgradeConnection,\t\x7f\x80";
                    if round % 2 == 0 {
                        alphabet[(x % alphabet.len() as u64) as usize]
                    } else {
                        x as u8
                    }
                })
                .collect();
            bytes.extend_from_slice(b"\r\n\r\n");
            let _ = HeadParser::new().feed(&bytes, &rules);
            let mut r = ResponseParser::new("k", Version::V120);
            let _ = r.feed(&bytes);
            let _ = r.eof();
        }
    }
}
