//! FastDP's JSON messages (fastdp.md 2.3, 2.4, 2.8, 2.11, section 3 and 1.2): parse, validate,
//! encode. No I/O.
//!
//! Ferry writes compact JSON with keys in the order of the spec's examples, so the byte lengths
//! there are reproduced exactly; it reads any key order and ignores unknown keys. Integers are
//! exact (no sign, fraction or exponent, at most 2^53-1). Every parser takes a bounded slice (a
//! JMSG body, at most 65,536 bytes).
//!
//! ```text
//! header     {"OneChunk":N,"FullChunk":N,"FullSize":N,"DPVersion":"1.2.0","CompressType":"None"|"Zstd",
//!             "FileName":S,"TransferId":UUID,"Checksum":"sha256:<64 hex>"[,"ReconnectBytes":N][,"Mode":"Push"]}
//! reply      {"Type":"Header", the header's fields unchanged, "Have":[[a,b],...],"MaxConnections":N}
//! pull       {"Mode":"Pull","DPVersion":"1.2.0","TransferId":UUID,"FileName":S|"Sha256":HEX,
//!             "CompressType":..[,"OneChunk":N,"Checksum":..,"Have":[..]]}
//! pull reply {"Type":"Header","Mode":"Pull","OneChunk":N,"FullChunk":N,"FullSize":N,"DPVersion":"1.2.0",
//!             "CompressType":..,"FileName":S,"TransferId":UUID,"Checksum":..,"Have":[..],
//!             "MaxConnections":N,"ReconnectBytes":N}
//! Ack        {"Type":"Ack","Chunks":[[number,crc32c],...]}       at most 2,048 entries
//! Reconnect  {"Type":"Reconnect"}
//! Complete   {"Type":"Complete","FileName":S,"Checksum":..}
//! Error      {"Type":"Error","Code":CODE,"Message":S[,"Chunk":N]}
//! 1.1.0      {"OneChunk": N, "FullChunk": N, "FullSize": N, "DPVersion": "1.1.0",
//!             "CompressType": "None"|"Zstd"|"Zip"|"TarGz", "FileName": S, "Checksum": "<64 hex>"}
//! ```

use std::fmt;

use super::frame::{Compress, Geometry, MAX_FULL_CHUNK, MAX_JMSG, MAX_ONE_CHUNK, MIN_ONE_CHUNK};
use super::json::{FieldError, Object, ObjectWriter, Style};
use crate::wire::hex;

/// `DPVersion` of 1.2.0.
pub const DP_VERSION: &str = "1.2.0";
/// `DPVersion` of 1.1.0.
pub const DP_VERSION_V110: &str = "1.1.0";
/// Default `ReconnectBytes` (2.3).
pub const DEFAULT_RECONNECT_BYTES: u64 = 524_288_000;
/// Default `MaxConnections` (2.12).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;
/// Most `Have` ranges in one message (2.4).
pub const MAX_HAVE_RANGES: usize = 2048;
/// Most entries in one Ack (2.8).
pub const MAX_ACK_ENTRIES: usize = 2048;
/// Longest `Message` text ferry writes in an Error (the JMSG stays far below 64 KiB).
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Longest pull `FileName` (a catalog path).
pub const MAX_PULL_NAME: usize = 4096;
/// Longest `FileName` (4.3).
pub const MAX_NAME_BYTES: usize = 255;
/// SHA-256 of the empty file.
pub const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The chunk size policy of 1.2 (cli.py's, which ferry's client also applies to the original
/// size): up to 10 MiB 256 KiB, up to 1 GiB 1 MiB, else 4 MiB.
pub fn one_chunk_for(size: u64) -> u32 {
    if size <= 10 * 1024 * 1024 {
        262_144
    } else if size <= 1024 * 1024 * 1024 {
        1_048_576
    } else {
        4_194_304
    }
}

/// The error codes of 2.11.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadHeader,
    Version,
    UnsupportedCompression,
    BadFilename,
    ParameterMismatch,
    TooLarge,
    NotFound,
    Ambiguous,
    ChecksumMismatch,
    NoSpace,
    BadChunk,
    TooManyConnections,
    Busy,
    Timeout,
    Internal,
    /// A code this version does not know (not final).
    Unknown,
}

impl ErrorCode {
    /// Every known code.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadHeader,
        ErrorCode::Version,
        ErrorCode::UnsupportedCompression,
        ErrorCode::BadFilename,
        ErrorCode::ParameterMismatch,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::Ambiguous,
        ErrorCode::ChecksumMismatch,
        ErrorCode::NoSpace,
        ErrorCode::BadChunk,
        ErrorCode::TooManyConnections,
        ErrorCode::Busy,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadHeader => "bad-header",
            ErrorCode::Version => "version",
            ErrorCode::UnsupportedCompression => "unsupported-compression",
            ErrorCode::BadFilename => "bad-filename",
            ErrorCode::ParameterMismatch => "parameter-mismatch",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::ChecksumMismatch => "checksum-mismatch",
            ErrorCode::NoSpace => "no-space",
            ErrorCode::BadChunk => "bad-chunk",
            ErrorCode::TooManyConnections => "too-many-connections",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Unknown)
    }

    /// A final code ends the transfer for its TransferId: the client never retries it (F31).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ErrorCode::BadHeader
                | ErrorCode::Version
                | ErrorCode::UnsupportedCompression
                | ErrorCode::BadFilename
                | ErrorCode::ParameterMismatch
                | ErrorCode::TooLarge
                | ErrorCode::NotFound
                | ErrorCode::Ambiguous
                | ErrorCode::ChecksumMismatch
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Mode` of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Push,
    Pull,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Push => "Push",
            Mode::Pull => "Pull",
        }
    }
}

/// A TransferId: a UUID as 36 lowercase characters with hyphens.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId([u8; 36]);

impl TransferId {
    /// Accepts exactly `8-4-4-4-12` lowercase hex digits.
    pub fn parse(s: &str) -> Option<TransferId> {
        let b: [u8; 36] = s.as_bytes().try_into().ok()?;
        for (i, c) in b.iter().enumerate() {
            let ok = match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => matches!(c, b'0'..=b'9' | b'a'..=b'f'),
            };
            if !ok {
                return None;
            }
        }
        Some(TransferId(b))
    }

    /// A random (version 4) UUID from 16 random bytes the caller drew.
    pub fn from_random(mut bytes: [u8; 16]) -> TransferId {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let h = hex::encode(&bytes);
        let s = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        TransferId::parse(&s).expect("formatted as a UUID")
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransferId({})", self.as_str())
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A whole-file checksum, `"sha256:"` and 64 lowercase hex digits on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    pub fn parse(s: &str) -> Option<Checksum> {
        s.strip_prefix("sha256:")
            .and_then(hex::parse_sha256)
            .map(Checksum)
    }

    pub fn to_text(&self) -> String {
        format!("sha256:{}", hex::encode(&self.0))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// Chunk ranges held durably: half-open `[first, end)`, sorted, disjoint and merged, at most
/// [`MAX_HAVE_RANGES`] of them (beyond that the lowest are kept and the rest count as missing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    ranges: Vec<(u32, u32)>,
}

impl Have {
    pub fn new() -> Have {
        Have::default()
    }

    /// Every chunk of a transfer of `full_chunk` chunks (`[]` for an empty file).
    pub fn all(full_chunk: u32) -> Have {
        let mut h = Have::new();
        h.push_range(0, full_chunk);
        h
    }

    /// Ranges from chunk numbers in ascending order (a bitmap's set bits).
    pub fn from_chunks(chunks: impl IntoIterator<Item = u32>) -> Have {
        let mut h = Have::new();
        for c in chunks {
            if !h.push_range(c, c.saturating_add(1)) {
                break;
            }
        }
        h
    }

    /// Appends `[first, end)` at or after the last range, merging when they touch; returns
    /// false once the range limit is reached (the rest count as missing). Out-of-order input is
    /// normalised by [`normalised`](Self::normalised) instead.
    pub fn push_range(&mut self, first: u32, end: u32) -> bool {
        if first >= end {
            return true;
        }
        if let Some(last) = self.ranges.last_mut() {
            if first <= last.1 {
                last.1 = last.1.max(end);
                return true;
            }
        }
        if self.ranges.len() == MAX_HAVE_RANGES {
            return false;
        }
        self.ranges.push((first, end));
        true
    }

    /// Sorts and merges ranges in any order; empty ranges are dropped.
    pub fn normalised(mut raw: Vec<(u32, u32)>) -> Have {
        raw.sort_unstable();
        let mut h = Have::new();
        for (a, b) in raw {
            if !h.push_range(a, b) {
                break;
            }
        }
        h
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, chunk: u32) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= chunk);
        self.ranges.get(i).is_some_and(|r| r.0 <= chunk)
    }

    /// Chunks covered.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.1 - r.0)).sum()
    }

    /// True when every one of `full_chunk` chunks is covered.
    pub fn is_complete(&self, full_chunk: u32) -> bool {
        full_chunk == 0 || self.ranges == [(0, full_chunk)]
    }

    /// The end of the last range (0 when empty): must not pass FullChunk.
    pub fn end(&self) -> u32 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    /// Chunks not covered, in ascending order.
    pub fn missing(&self, full_chunk: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = 0u32;
        let mut i = 0usize;
        std::iter::from_fn(move || loop {
            if next >= full_chunk {
                return None;
            }
            match self.ranges.get(i) {
                Some(&(a, b)) if next >= a => {
                    next = next.max(b);
                    i += 1;
                }
                _ => {
                    let c = next;
                    next += 1;
                    return Some(c);
                }
            }
        })
    }

    fn from_wire(pairs: Vec<(u64, u64)>, key: &'static str) -> Result<Have, FieldError> {
        if pairs.len() > MAX_HAVE_RANGES {
            return Err(FieldError::OutOfRange(key));
        }
        let mut raw = Vec::with_capacity(pairs.len());
        for (a, b) in pairs {
            let a = u32::try_from(a).map_err(|_| FieldError::OutOfRange(key))?;
            let b = u32::try_from(b).map_err(|_| FieldError::OutOfRange(key))?;
            if a >= b {
                return Err(FieldError::OutOfRange(key));
            }
            raw.push((a, b));
        }
        Ok(Have::normalised(raw))
    }

    fn write(&self, w: &mut ObjectWriter<'_>) {
        w.pairs(
            "Have",
            self.ranges
                .iter()
                .map(|&(a, b)| (u64::from(a), u64::from(b))),
        );
    }
}

/// Why a header (or a pull request, or a reply header) is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Not an object, or a field missing, mistyped or out of range.
    Field(FieldError),
    UnknownMode(String),
    /// `DPVersion` differs from the handshake's.
    Version(String),
    UnsupportedCompression(String),
    OneChunk(u64),
    FullChunk {
        got: u64,
        expected: u64,
    },
    TransferId,
    Checksum,
    FileName,
    /// Pull: neither or both of `FileName` and `Sha256`, or a bad `Sha256`.
    PullTarget,
    /// Pull: a non-empty `Have` without `OneChunk` and `Checksum`.
    ResumeFields,
    /// A `Have` range past FullChunk.
    Have,
    /// A reply whose `Type` is not `Header`, or a pull reply without `"Mode":"Pull"`.
    NotHeader,
    MaxConnections,
}

impl From<FieldError> for HeaderError {
    fn from(e: FieldError) -> Self {
        HeaderError::Field(e)
    }
}

impl HeaderError {
    /// The code of the Error reply (2.11).
    pub fn code(&self) -> ErrorCode {
        match self {
            HeaderError::Version(_) => ErrorCode::Version,
            HeaderError::UnsupportedCompression(_) => ErrorCode::UnsupportedCompression,
            HeaderError::FileName => ErrorCode::BadFilename,
            _ => ErrorCode::BadHeader,
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Field(FieldError::NotObject) => {
                f.write_str("header: not a UTF-8 JSON object")
            }
            HeaderError::Field(FieldError::Missing(k)) => write!(f, "header: {k} missing"),
            HeaderError::Field(FieldError::Mistyped(k)) => write!(f, "header: {k} mistyped"),
            HeaderError::Field(FieldError::OutOfRange(k)) => {
                write!(f, "header: {k} out of range")
            }
            HeaderError::UnknownMode(m) => write!(f, "header: unknown Mode {m:?}"),
            HeaderError::Version(v) => {
                write!(f, "header: DPVersion {v:?} differs from the handshake")
            }
            HeaderError::UnsupportedCompression(c) => {
                write!(f, "header: CompressType {c:?} is not None or Zstd")
            }
            HeaderError::OneChunk(n) => write!(
                f,
                "header: OneChunk {n} outside {MIN_ONE_CHUNK}..{MAX_ONE_CHUNK}"
            ),
            HeaderError::FullChunk { got, expected } => {
                write!(f, "header: FullChunk {got}, expected {expected}")
            }
            HeaderError::TransferId => f.write_str("header: TransferId is not a lowercase UUID"),
            HeaderError::Checksum => {
                f.write_str("header: Checksum is not sha256: and 64 lowercase hex digits")
            }
            HeaderError::FileName => f.write_str("header: FileName is not a valid base name"),
            HeaderError::PullTarget => {
                f.write_str("header: exactly one of FileName and Sha256 is needed")
            }
            HeaderError::ResumeFields => {
                f.write_str("header: a non-empty Have needs OneChunk and Checksum")
            }
            HeaderError::Have => f.write_str("header: Have range past FullChunk"),
            HeaderError::NotHeader => f.write_str("header: reply is not a Header"),
            HeaderError::MaxConnections => f.write_str("header: MaxConnections is 0"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// The 1.2.0 push header (2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub one_chunk: u32,
    pub full_chunk: u32,
    pub full_size: u64,
    pub compress: Compress,
    pub file_name: String,
    pub transfer_id: TransferId,
    pub checksum: Checksum,
    /// As sent (echoed only when present); [`reconnect_bytes`](Self::reconnect_bytes) applies
    /// the default.
    pub reconnect_bytes: Option<u64>,
    /// As sent: `Some(Mode::Push)` when the sender wrote `"Mode":"Push"`.
    pub mode: Option<Mode>,
}

impl Header {
    /// A header for a file of `full_size` bytes (FullChunk computed).
    pub fn new(
        one_chunk: u32,
        full_size: u64,
        compress: Compress,
        file_name: &str,
        transfer_id: TransferId,
        checksum: Checksum,
    ) -> Option<Header> {
        let g = Geometry::new(one_chunk, full_size)?;
        Some(Header {
            one_chunk,
            full_chunk: g.full_chunk(),
            full_size,
            compress,
            file_name: file_name.to_owned(),
            transfer_id,
            checksum,
            reconnect_bytes: None,
            mode: None,
        })
    }

    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.one_chunk, self.full_size)
            .expect("a validated header has a valid geometry")
    }

    /// Payload bytes after which a data sender recycles (0 = never).
    pub fn reconnect_bytes(&self) -> u64 {
        self.reconnect_bytes.unwrap_or(DEFAULT_RECONNECT_BYTES)
    }

    /// True when `other` describes the same transfer: every field but `ReconnectBytes` (and
    /// the Mode spelling) equal (2.4, `parameter-mismatch`).
    pub fn same_parameters(&self, other: &Header) -> bool {
        self.one_chunk == other.one_chunk
            && self.full_chunk == other.full_chunk
            && self.full_size == other.full_size
            && self.compress == other.compress
            && self.file_name == other.file_name
            && self.transfer_id == other.transfer_id
            && self.checksum == other.checksum
    }

    fn write_fields(&self, w: &mut ObjectWriter<'_>) {
        w.int("OneChunk", self.one_chunk.into())
            .int("FullChunk", self.full_chunk.into())
            .int("FullSize", self.full_size)
            .str("DPVersion", DP_VERSION)
            .str("CompressType", self.compress.as_str())
            .str("FileName", &self.file_name)
            .str("TransferId", self.transfer_id.as_str())
            .str("Checksum", &self.checksum.to_text());
        if let Some(r) = self.reconnect_bytes {
            w.int("ReconnectBytes", r);
        }
        if let Some(m) = self.mode {
            w.str("Mode", m.as_str());
        }
    }

    /// The header's JSON (the JMSG body).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Compact);
        self.write_fields(&mut w);
        w.end();
        out
    }

    /// Reads the fields of a push header from an object (shared by the reply parser).
    fn from_object(o: &Object, mode: Option<Mode>) -> Result<Header, HeaderError> {
        let one_chunk = o.int("OneChunk")?;
        let full_chunk = o.int("FullChunk")?;
        let full_size = o.int("FullSize")?;
        let version = o.str("DPVersion")?;
        let compress = o.str("CompressType")?;
        let file_name = o.str("FileName")?;
        let transfer_id = o.str("TransferId")?;
        let checksum = o.str("Checksum")?;
        let reconnect_bytes = o.opt_int("ReconnectBytes")?;
        if version != DP_VERSION {
            return Err(HeaderError::Version(version));
        }
        let compress = parse_compress(&compress)?;
        if !(u64::from(MIN_ONE_CHUNK)..=u64::from(MAX_ONE_CHUNK)).contains(&one_chunk) {
            return Err(HeaderError::OneChunk(one_chunk));
        }
        let one_chunk = one_chunk as u32;
        let expected = full_size.div_ceil(u64::from(one_chunk));
        if full_chunk != expected || expected > u64::from(MAX_FULL_CHUNK) {
            return Err(HeaderError::FullChunk {
                got: full_chunk,
                expected,
            });
        }
        let transfer_id = TransferId::parse(&transfer_id).ok_or(HeaderError::TransferId)?;
        let checksum = Checksum::parse(&checksum).ok_or(HeaderError::Checksum)?;
        if !is_valid_file_name(&file_name) {
            return Err(HeaderError::FileName);
        }
        Ok(Header {
            one_chunk,
            full_chunk: full_chunk as u32,
            full_size,
            compress,
            file_name,
            transfer_id,
            checksum,
            reconnect_bytes,
            mode,
        })
    }
}

fn parse_compress(s: &str) -> Result<Compress, HeaderError> {
    match s {
        "None" => Ok(Compress::None),
        "Zstd" => Ok(Compress::Zstd),
        other => Err(HeaderError::UnsupportedCompression(other.to_owned())),
    }
}

/// `FileName` rules of 4.3: UTF-8, 1 to 255 bytes, no C0, DEL or C1 control, no `/` or `\`,
/// not `.`, `..` or `.ferry` in any case.
pub fn is_valid_file_name(name: &str) -> bool {
    crate::names::accept_exact(name.as_bytes(), MAX_NAME_BYTES).is_some()
}

/// The first JMSG a server receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Push(Header),
    Pull(PullRequest),
}

/// Parses and validates the client's header (push or pull, by `Mode`).
pub fn parse_request(json: &[u8]) -> Result<Request, HeaderError> {
    let o = Object::parse(json)?;
    match o.opt_str("Mode")?.as_deref() {
        None => Header::from_object(&o, None).map(Request::Push),
        Some("Push") => Header::from_object(&o, Some(Mode::Push)).map(Request::Push),
        Some("Pull") => PullRequest::from_object(&o).map(Request::Pull),
        Some(other) => Err(HeaderError::UnknownMode(other.to_owned())),
    }
}

/// The server's reply header in push (2.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    /// Every field of the client's header, unchanged.
    pub header: Header,
    pub have: Have,
    pub max_connections: u32,
}

impl ReplyHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Compact);
        w.str("Type", "Header");
        self.header.write_fields(&mut w);
        self.have.write(&mut w);
        w.int("MaxConnections", self.max_connections.into());
        w.end();
        out
    }

    /// Parses a push reply; `Error` replies are parsed by [`parse_message`].
    pub fn parse(json: &[u8]) -> Result<ReplyHeader, HeaderError> {
        let o = Object::parse(json)?;
        if o.str("Type")? != "Header" {
            return Err(HeaderError::NotHeader);
        }
        let mode = match o.opt_str("Mode")?.as_deref() {
            None => None,
            Some("Push") => Some(Mode::Push),
            Some(other) => return Err(HeaderError::UnknownMode(other.to_owned())),
        };
        let header = Header::from_object(&o, mode)?;
        let have = parse_have(&o, header.full_chunk)?;
        let max_connections = o.u32("MaxConnections")?;
        if max_connections == 0 {
            return Err(HeaderError::MaxConnections);
        }
        Ok(ReplyHeader {
            header,
            have,
            max_connections,
        })
    }
}

fn parse_have(o: &Object, full_chunk: u32) -> Result<Have, HeaderError> {
    let have = match o.opt_pairs("Have")? {
        None => Have::new(),
        Some(pairs) => Have::from_wire(pairs, "Have")?,
    };
    if have.end() > full_chunk {
        return Err(HeaderError::Have);
    }
    Ok(have)
}

/// What a pull names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullTarget {
    /// A catalog path or a base name matching one entry.
    Name(String),
    /// A SHA-256 (64 lowercase hex digits on the wire).
    Sha256([u8; 32]),
}

/// The client's pull header (section 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    pub transfer_id: TransferId,
    pub target: PullTarget,
    /// The client accepts zstd chunks.
    pub accept_zstd: bool,
    /// Ranges the client holds durably (resume).
    pub have: Have,
    /// The earlier reply's values, required with a non-empty `Have`.
    pub one_chunk: Option<u32>,
    pub checksum: Option<Checksum>,
}

impl PullRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Compact);
        w.str("Mode", "Pull")
            .str("DPVersion", DP_VERSION)
            .str("TransferId", self.transfer_id.as_str());
        match &self.target {
            PullTarget::Name(n) => w.str("FileName", n),
            PullTarget::Sha256(h) => w.str("Sha256", &hex::encode(h)),
        };
        w.str(
            "CompressType",
            if self.accept_zstd { "Zstd" } else { "None" },
        );
        if let Some(n) = self.one_chunk {
            w.int("OneChunk", n.into());
        }
        if let Some(c) = &self.checksum {
            w.str("Checksum", &c.to_text());
        }
        if !self.have.is_empty() {
            self.have.write(&mut w);
        }
        w.end();
        out
    }

    fn from_object(o: &Object) -> Result<PullRequest, HeaderError> {
        let version = o.str("DPVersion")?;
        let transfer_id = o.str("TransferId")?;
        let name = o.opt_str("FileName")?;
        let sha = o.opt_str("Sha256")?;
        let compress = o.opt_str("CompressType")?;
        let one_chunk = o.opt_int("OneChunk")?;
        let checksum = o.opt_str("Checksum")?;
        let have = match o.opt_pairs("Have")? {
            None => Have::new(),
            Some(p) => Have::from_wire(p, "Have")?,
        };
        if version != DP_VERSION {
            return Err(HeaderError::Version(version));
        }
        let transfer_id = TransferId::parse(&transfer_id).ok_or(HeaderError::TransferId)?;
        let target = match (name, sha) {
            (Some(n), None) if !n.is_empty() && n.len() <= MAX_PULL_NAME => PullTarget::Name(n),
            (None, Some(h)) => {
                PullTarget::Sha256(hex::parse_sha256(&h).ok_or(HeaderError::PullTarget)?)
            }
            _ => return Err(HeaderError::PullTarget),
        };
        let accept_zstd = match compress.as_deref() {
            None => false,
            Some(c) => parse_compress(c)? == Compress::Zstd,
        };
        let one_chunk = match one_chunk {
            None => None,
            Some(n) if (u64::from(MIN_ONE_CHUNK)..=u64::from(MAX_ONE_CHUNK)).contains(&n) => {
                Some(n as u32)
            }
            Some(n) => return Err(HeaderError::OneChunk(n)),
        };
        let checksum = match checksum {
            None => None,
            Some(c) => Some(Checksum::parse(&c).ok_or(HeaderError::Checksum)?),
        };
        if !have.is_empty() && (one_chunk.is_none() || checksum.is_none()) {
            return Err(HeaderError::ResumeFields);
        }
        Ok(PullRequest {
            transfer_id,
            target,
            accept_zstd,
            have,
            one_chunk,
            checksum,
        })
    }
}

/// The server's reply to a pull (section 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullReply {
    pub one_chunk: u32,
    pub full_chunk: u32,
    pub full_size: u64,
    pub compress: Compress,
    /// The entry's base name.
    pub file_name: String,
    pub transfer_id: TransferId,
    /// The entry's SHA-256.
    pub checksum: Checksum,
    /// The client's `Have`, normalised.
    pub have: Have,
    pub max_connections: u32,
    pub reconnect_bytes: u64,
}

impl PullReply {
    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.one_chunk, self.full_size)
            .expect("a validated reply has a valid geometry")
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Compact);
        w.str("Type", "Header")
            .str("Mode", "Pull")
            .int("OneChunk", self.one_chunk.into())
            .int("FullChunk", self.full_chunk.into())
            .int("FullSize", self.full_size)
            .str("DPVersion", DP_VERSION)
            .str("CompressType", self.compress.as_str())
            .str("FileName", &self.file_name)
            .str("TransferId", self.transfer_id.as_str())
            .str("Checksum", &self.checksum.to_text());
        self.have.write(&mut w);
        w.int("MaxConnections", self.max_connections.into())
            .int("ReconnectBytes", self.reconnect_bytes);
        w.end();
        out
    }

    pub fn parse(json: &[u8]) -> Result<PullReply, HeaderError> {
        let o = Object::parse(json)?;
        if o.str("Type")? != "Header" || o.opt_str("Mode")?.as_deref() != Some("Pull") {
            return Err(HeaderError::NotHeader);
        }
        let header = Header::from_object(&o, Some(Mode::Pull))?;
        let have = parse_have(&o, header.full_chunk)?;
        let max_connections = o.u32("MaxConnections")?;
        if max_connections == 0 {
            return Err(HeaderError::MaxConnections);
        }
        Ok(PullReply {
            one_chunk: header.one_chunk,
            full_chunk: header.full_chunk,
            full_size: header.full_size,
            compress: header.compress,
            file_name: header.file_name,
            transfer_id: header.transfer_id,
            checksum: header.checksum,
            have,
            max_connections,
            reconnect_bytes: header.reconnect_bytes.unwrap_or(DEFAULT_RECONNECT_BYTES),
        })
    }
}

/// An `Error` message (2.8), or a control frame's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    /// The code as written on the wire (kept for an unknown code).
    pub code_text: String,
    pub message: String,
    pub chunk: Option<u32>,
}

impl ErrorMsg {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
        ErrorMsg {
            code,
            code_text: code.as_str().to_owned(),
            message: message.into(),
            chunk: None,
        }
    }

    pub fn with_chunk(mut self, chunk: Option<u32>) -> ErrorMsg {
        self.chunk = chunk;
        self
    }

    pub fn is_final(&self) -> bool {
        self.code.is_final()
    }
}

impl fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code_text, self.message)?;
        if let Some(c) = self.chunk {
            write!(f, " (chunk {c})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorMsg {}

/// A message after the header (2.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `[number, crc32c]` pairs of durable chunks.
    Ack(Vec<(u32, u32)>),
    Reconnect,
    Complete {
        file_name: String,
        checksum: Checksum,
    },
    Error(ErrorMsg),
}

/// Why a message after the header is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageError {
    Field(FieldError),
    /// A `Type` that has no place here (a second `Header`, or an unknown one).
    UnexpectedType(String),
    TooManyEntries(usize),
    BadChecksum,
}

impl From<FieldError> for MessageError {
    fn from(e: FieldError) -> Self {
        MessageError::Field(e)
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Field(FieldError::NotObject) => {
                f.write_str("message: not a UTF-8 JSON object")
            }
            MessageError::Field(FieldError::Missing(k)) => write!(f, "message: {k} missing"),
            MessageError::Field(FieldError::Mistyped(k)) => write!(f, "message: {k} mistyped"),
            MessageError::Field(FieldError::OutOfRange(k)) => {
                write!(f, "message: {k} out of range")
            }
            MessageError::UnexpectedType(t) => write!(f, "message: unexpected Type {t:?}"),
            MessageError::TooManyEntries(n) => {
                write!(
                    f,
                    "message: Ack with {n} entries, at most {MAX_ACK_ENTRIES}"
                )
            }
            MessageError::BadChecksum => f.write_str("message: Complete with a malformed Checksum"),
        }
    }
}

impl std::error::Error for MessageError {}

impl Message {
    /// The message's JSON (a JMSG body, or a control frame's body for an Error).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Compact);
        match self {
            Message::Ack(entries) => {
                debug_assert!(entries.len() <= MAX_ACK_ENTRIES);
                w.str("Type", "Ack").pairs(
                    "Chunks",
                    entries.iter().map(|&(n, c)| (u64::from(n), u64::from(c))),
                );
            }
            Message::Reconnect => {
                w.str("Type", "Reconnect");
            }
            Message::Complete {
                file_name,
                checksum,
            } => {
                w.str("Type", "Complete")
                    .str("FileName", file_name)
                    .str("Checksum", &checksum.to_text());
            }
            Message::Error(e) => {
                w.str("Type", "Error")
                    .str("Code", &e.code_text)
                    .str("Message", truncate(&e.message, MAX_ERROR_MESSAGE));
                if let Some(c) = e.chunk {
                    w.int("Chunk", c.into());
                }
            }
        }
        w.end();
        debug_assert!(out.len() <= MAX_JMSG as usize);
        out
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends Ack JMSGs for `entries`, at most [`MAX_ACK_ENTRIES`] per message (one empty Ack for
/// no entries).
pub fn put_acks(entries: &[(u32, u32)], out: &mut Vec<u8>) {
    if entries.is_empty() {
        super::frame::put_jmsg(&Message::Ack(Vec::new()).encode(), out);
    }
    for part in entries.chunks(MAX_ACK_ENTRIES) {
        super::frame::put_jmsg(&Message::Ack(part.to_vec()).encode(), out);
    }
}

/// Parses a message after the header.
pub fn parse_message(json: &[u8]) -> Result<Message, MessageError> {
    let o = Object::parse(json)?;
    let ty = o.str("Type")?;
    match ty.as_str() {
        "Ack" => {
            let pairs = o
                .opt_pairs("Chunks")?
                .ok_or(FieldError::Missing("Chunks"))?;
            if pairs.len() > MAX_ACK_ENTRIES {
                return Err(MessageError::TooManyEntries(pairs.len()));
            }
            let mut entries = Vec::with_capacity(pairs.len());
            for (n, c) in pairs {
                let n = u32::try_from(n).map_err(|_| FieldError::OutOfRange("Chunks"))?;
                let c = u32::try_from(c).map_err(|_| FieldError::OutOfRange("Chunks"))?;
                entries.push((n, c));
            }
            Ok(Message::Ack(entries))
        }
        "Reconnect" => Ok(Message::Reconnect),
        "Complete" => {
            let file_name = o.str("FileName")?;
            let checksum = Checksum::parse(&o.str("Checksum")?).ok_or(MessageError::BadChecksum)?;
            Ok(Message::Complete {
                file_name,
                checksum,
            })
        }
        "Error" => {
            let code_text = o.str("Code")?;
            let message = o.opt_str("Message")?.unwrap_or_default();
            let chunk = match o.opt_int("Chunk")? {
                None => None,
                Some(c) => Some(u32::try_from(c).map_err(|_| FieldError::OutOfRange("Chunk"))?),
            };
            Ok(Message::Error(ErrorMsg {
                code: ErrorCode::parse(&code_text),
                code_text,
                message,
                chunk,
            }))
        }
        _ => Err(MessageError::UnexpectedType(ty)),
    }
}

/// `CompressType` of 1.1.0: the whole file is compressed before it is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V110Compress {
    None,
    Zstd,
    Zip,
    TarGz,
}

impl V110Compress {
    pub fn as_str(self) -> &'static str {
        match self {
            V110Compress::None => "None",
            V110Compress::Zstd => "Zstd",
            V110Compress::Zip => "Zip",
            V110Compress::TarGz => "TarGz",
        }
    }

    fn parse(s: &str) -> Option<V110Compress> {
        [
            V110Compress::None,
            V110Compress::Zstd,
            V110Compress::Zip,
            V110Compress::TarGz,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// Why a 1.1.0 header is refused: `ERROR: Bad header.` or `ERROR: Bad file name.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V110HeaderError {
    BadHeader(&'static str),
    BadFileName,
}

impl fmt::Display for V110HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V110HeaderError::BadHeader(why) => write!(f, "1.1.0 header: {why}"),
            V110HeaderError::BadFileName => f.write_str("1.1.0 header: bad FileName"),
        }
    }
}

impl std::error::Error for V110HeaderError {}

/// The only header of a 1.1.0 exchange (fastdp.md 1.2): sizes are of the **compressed** stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V110Header {
    pub one_chunk: u32,
    pub full_chunk: u32,
    pub full_size: u64,
    pub compress: V110Compress,
    pub file_name: String,
    /// SHA-256 of the compressed stream (bare hex on the wire).
    pub checksum: [u8; 32],
}

impl V110Header {
    /// The header cli.py would send for a compressed stream of `full_size` bytes.
    pub fn new(
        full_size: u64,
        compress: V110Compress,
        file_name: &str,
        checksum: [u8; 32],
    ) -> V110Header {
        let one_chunk = one_chunk_for(full_size);
        V110Header {
            one_chunk,
            full_chunk: full_size.div_ceil(u64::from(one_chunk)) as u32,
            full_size,
            compress,
            file_name: file_name.to_owned(),
            checksum,
        }
    }

    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.one_chunk, self.full_size)
            .expect("a validated header has a valid geometry")
    }

    /// The JSON as Python's `json.dumps` writes it (separators `", "` and `": "`, non-ASCII
    /// escaped), for a test sender that must match cli.py byte for byte.
    pub fn encode_python(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ObjectWriter::new(&mut out, Style::Python);
        w.int("OneChunk", self.one_chunk.into())
            .int("FullChunk", self.full_chunk.into())
            .int("FullSize", self.full_size)
            .str("DPVersion", DP_VERSION_V110)
            .str("CompressType", self.compress.as_str())
            .str("FileName", &self.file_name)
            .str("Checksum", &hex::encode(&self.checksum));
        w.end();
        out
    }

    /// Parses and validates (all seven fields, types, ranges, FullChunk, name, checksum).
    pub fn parse(json: &[u8]) -> Result<V110Header, V110HeaderError> {
        use V110HeaderError::BadHeader;
        let o = Object::parse(json).map_err(|_| BadHeader("not a JSON object"))?;
        let field = |e: FieldError| match e {
            FieldError::Missing(_) => BadHeader("field missing"),
            FieldError::OutOfRange(_) => BadHeader("integer out of range"),
            _ => BadHeader("field mistyped"),
        };
        let one_chunk = o.int("OneChunk").map_err(field)?;
        let full_chunk = o.int("FullChunk").map_err(field)?;
        let full_size = o.int("FullSize").map_err(field)?;
        let version = o.str("DPVersion").map_err(field)?;
        let compress = o.str("CompressType").map_err(field)?;
        let file_name = o.str("FileName").map_err(field)?;
        let checksum = o.str("Checksum").map_err(field)?;
        if version != DP_VERSION_V110 {
            return Err(BadHeader("DPVersion is not 1.1.0"));
        }
        let compress = V110Compress::parse(&compress).ok_or(BadHeader("unknown CompressType"))?;
        if !(1..=u64::from(MAX_ONE_CHUNK)).contains(&one_chunk) {
            return Err(BadHeader("OneChunk out of range"));
        }
        let expected = full_size.div_ceil(one_chunk);
        if full_chunk != expected || expected > u64::from(MAX_FULL_CHUNK) {
            return Err(BadHeader("wrong FullChunk"));
        }
        let checksum =
            parse_hex_any_case(&checksum).ok_or(BadHeader("Checksum is not 64 hex digits"))?;
        if !is_valid_file_name(&file_name) {
            return Err(V110HeaderError::BadFileName);
        }
        Ok(V110Header {
            one_chunk: one_chunk as u32,
            full_chunk: full_chunk as u32,
            full_size,
            compress,
            file_name,
            checksum,
        })
    }
}

fn parse_hex_any_case(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    hex::parse_sha256(&s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
