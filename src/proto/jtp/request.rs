//! JTP requests (jtp.md 2.4): the client's encoder and the server's incremental decoder.
//!
//! The decoder takes the connection's unread input and consumes exactly one request's bytes,
//! never more, so pipelined requests stay with the caller (jtp.md 3.3, J16, J24). It keeps
//! partial state between calls: a BATCH of 1,000,000 ids may arrive in any number of pieces
//! while memory grows only with the ids received (J9, J10). Checks run in the order the spec
//! fixes: RequestFlags bits 1-7 first, then the type, then the body (J4).
//!
//! Whole ids are read straight from the input with [`crate::wire::Cursor`]; an id or HaveCount
//! varint cut by the end of a read waits in an 8-byte [`crate::wire::Stash`].
//!
//! ```text
//! Header ──type──> Flags ──GET──> GetCount ──> GetIds ──> (Request)
//!                    │ └─BATCH──> HaveCount ─> HaveIds ─> (Request)
//!                    └──LIST / CANCEL / WATCH / LIST_AND_GET ──> (Request)
//! ```

use std::fmt;

use super::response::error_frame;
use super::wire::{get_varint, put_varint, varint_need, WireError};
use crate::wire::{Cursor, FieldTooLong, Gathered, Stash};

/// Request types (the first header byte).
pub const TYPE_GET_BY_ID: u8 = 0x00;
pub const TYPE_LIST: u8 = 0x01;
pub const TYPE_BATCH: u8 = 0x02;
pub const TYPE_CANCEL: u8 = 0x03;
pub const TYPE_WATCH: u8 = 0x04;
pub const TYPE_LIST_AND_GET: u8 = 0x05;

/// RequestFlags bit 0.
pub const FLAG_KEEP_ALIVE: u8 = 0x01;

/// Ids preallocated at most, whatever count the wire announces (jtp.md 5.2 rule 5).
const MAX_PREALLOC_IDS: usize = 4096;
/// The longest field split across reads: an id (a HaveCount varint is at most 5 bytes).
const MAX_FIELD: usize = 8;

/// What kind of request, without its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    GetById,
    List,
    Batch,
    Cancel,
    Watch,
    ListAndGet,
}

/// One decoded (or to be encoded) request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `00`: at most 255 ids, answered in request order.
    GetById { keep_alive: bool, ids: Vec<u64> },
    /// `01`.
    List { keep_alive: bool },
    /// `02`: the ids the client already holds.
    Batch { keep_alive: bool, have: Vec<u64> },
    /// `03 00` (`03 01` is accepted too: the bit is ignored).
    Cancel,
    /// `04 00` (`04 01` is accepted too; keep-alive is implied).
    Watch,
    /// `05`.
    ListAndGet { keep_alive: bool },
}

impl Request {
    /// Appends the request's bytes. ferry sends CANCEL and WATCH as `03 00` and `04 00` (J22).
    ///
    /// # Panics
    /// If a `GetById` holds more than 255 ids (Count is a u8; callers chunk by 255).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let flags = |keep_alive: bool| if keep_alive { FLAG_KEEP_ALIVE } else { 0 };
        match self {
            Request::GetById { keep_alive, ids } => {
                let n = u8::try_from(ids.len()).expect("GET_BY_ID carries at most 255 ids");
                out.extend_from_slice(&[TYPE_GET_BY_ID, flags(*keep_alive), n]);
                for id in ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            Request::List { keep_alive } => out.extend_from_slice(&[TYPE_LIST, flags(*keep_alive)]),
            Request::Batch { keep_alive, have } => {
                out.extend_from_slice(&[TYPE_BATCH, flags(*keep_alive)]);
                // More than u32::MAX ids cannot be expressed; the server caps far lower anyway.
                let n = u32::try_from(have.len()).expect("BATCH carries at most u32::MAX ids");
                put_varint(n, out);
                for id in have {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            Request::Cancel => out.extend_from_slice(&[TYPE_CANCEL, 0]),
            Request::Watch => out.extend_from_slice(&[TYPE_WATCH, 0]),
            Request::ListAndGet { keep_alive } => {
                out.extend_from_slice(&[TYPE_LIST_AND_GET, flags(*keep_alive)])
            }
        }
    }

    /// The request's keep-alive bit; CANCEL and WATCH count as keep-alive.
    pub fn keep_alive(&self) -> bool {
        match self {
            Request::GetById { keep_alive, .. }
            | Request::List { keep_alive }
            | Request::Batch { keep_alive, .. }
            | Request::ListAndGet { keep_alive } => *keep_alive,
            Request::Cancel | Request::Watch => true,
        }
    }

    pub fn kind(&self) -> RequestKind {
        match self {
            Request::GetById { .. } => RequestKind::GetById,
            Request::List { .. } => RequestKind::List,
            Request::Batch { .. } => RequestKind::Batch,
            Request::Cancel => RequestKind::Cancel,
            Request::Watch => RequestKind::Watch,
            Request::ListAndGet { .. } => RequestKind::ListAndGet,
        }
    }
}

/// Bounds on what a request may announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest BATCH HaveCount accepted (default 1,000,000); above it: JTPE 2, no id read.
    pub max_have: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_have: 1_000_000,
        }
    }
}

/// Result of one [`RequestDecoder::decode`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Every byte offered was taken into the decoder's state; more are needed.
    Partial,
    Request(Request),
}

/// What a client did wrong in a request; each maps to the JTPE the server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    ReservedFlags,
    UnknownType(u8),
    MalformedVarint,
    HaveCountTooLarge(u32),
}

impl RequestError {
    /// JTPE ErrorCode (jtp.md 2.9).
    pub fn code(&self) -> u8 {
        match self {
            RequestError::UnknownType(_) => 4,
            RequestError::ReservedFlags
            | RequestError::MalformedVarint
            | RequestError::HaveCountTooLarge(_) => 2,
        }
    }

    /// JTPE message, byte for byte as the reference sends it where it has one.
    pub fn message(&self) -> &'static str {
        match self {
            RequestError::ReservedFlags => "reserved flags set",
            RequestError::UnknownType(_) => "unknown request type",
            RequestError::MalformedVarint => "malformed varint",
            RequestError::HaveCountTooLarge(_) => "have_count too large",
        }
    }

    /// The whole JTPE frame to send before closing.
    pub fn frame(&self) -> Vec<u8> {
        error_frame(self.code(), self.message())
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::UnknownType(t) => write!(f, "jtp request: unknown request type {t:#04x}"),
            RequestError::HaveCountTooLarge(n) => {
                write!(f, "jtp request: have_count {n} too large")
            }
            other => write!(f, "jtp request: {}", other.message()),
        }
    }
}

impl std::error::Error for RequestError {}

/// The decoder gathers only ids (8 bytes) and the HaveCount varint (at most 5) in an 8-byte
/// stash, so the one field that could ever be refused as too long is a varint, and a varint
/// that long is malformed.
impl From<FieldTooLong> for RequestError {
    fn from(_: FieldTooLong) -> Self {
        RequestError::MalformedVarint
    }
}

impl From<WireError> for RequestError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::MalformedVarint => RequestError::MalformedVarint,
            WireError::ReservedFlags => RequestError::ReservedFlags,
            WireError::UnknownRequestType(t) => RequestError::UnknownType(t),
            WireError::HaveCountTooLarge(n) => RequestError::HaveCountTooLarge(n),
        }
    }
}

/// Partial state of a request whose first bytes were consumed. The start of an id or varint
/// split across reads is in the decoder's stash.
#[derive(Debug)]
enum State {
    /// Nothing consumed.
    Header,
    /// The type byte was consumed; the flags byte decides first.
    Flags {
        req_type: u8,
    },
    GetCount {
        keep_alive: bool,
    },
    HaveCount {
        keep_alive: bool,
    },
    /// Collecting `left` more ids.
    Ids {
        batch: bool,
        keep_alive: bool,
        left: u32,
        ids: Vec<u64>,
    },
}

/// Incremental server-side request decoder (see the module doc).
#[derive(Debug)]
pub struct RequestDecoder {
    limits: RequestLimits,
    state: State,
    stash: Stash,
}

impl RequestDecoder {
    pub fn new(limits: RequestLimits) -> Self {
        RequestDecoder {
            limits,
            state: State::Header,
            stash: Stash::new(MAX_FIELD),
        }
    }

    /// True once any byte of the current request has been consumed: the caller then applies the
    /// body timeout instead of the idle timeout.
    pub fn is_mid_request(&self) -> bool {
        !matches!(self.state, State::Header)
    }

    /// Decodes from the start of `buf`. Returns the bytes consumed (never past the end of the
    /// request) and the outcome. On `Err` the connection answers with the error's JTPE and closes;
    /// the decoder is reset.
    pub fn decode(&mut self, buf: &[u8]) -> (usize, Result<Decoded, RequestError>) {
        let mut c = Cursor::new(buf);
        let out = self.step(&mut c);
        if !matches!(out, Ok(Decoded::Partial)) {
            self.state = State::Header;
            self.stash.clear();
        }
        (c.position(), out)
    }

    fn step(&mut self, c: &mut Cursor<'_>) -> Result<Decoded, RequestError> {
        loop {
            match &mut self.state {
                State::Header => {
                    let Some(t) = c.u8() else {
                        return Ok(Decoded::Partial);
                    };
                    self.state = State::Flags { req_type: t };
                }
                State::Flags { req_type } => {
                    let Some(flags) = c.u8() else {
                        return Ok(Decoded::Partial);
                    };
                    if flags & !FLAG_KEEP_ALIVE != 0 {
                        return Err(RequestError::ReservedFlags);
                    }
                    let keep_alive = flags & FLAG_KEEP_ALIVE != 0;
                    let req = match *req_type {
                        TYPE_GET_BY_ID => {
                            self.state = State::GetCount { keep_alive };
                            continue;
                        }
                        TYPE_BATCH => {
                            self.state = State::HaveCount { keep_alive };
                            continue;
                        }
                        TYPE_LIST => Request::List { keep_alive },
                        TYPE_CANCEL => Request::Cancel,
                        TYPE_WATCH => Request::Watch,
                        TYPE_LIST_AND_GET => Request::ListAndGet { keep_alive },
                        t => return Err(RequestError::UnknownType(t)),
                    };
                    return Ok(Decoded::Request(req));
                }
                State::GetCount { keep_alive } => {
                    let Some(n) = c.u8() else {
                        return Ok(Decoded::Partial);
                    };
                    self.state = State::Ids {
                        batch: false,
                        keep_alive: *keep_alive,
                        left: u32::from(n),
                        ids: Vec::with_capacity(usize::from(n)),
                    };
                }
                State::HaveCount { keep_alive } => {
                    let need = |p: &[u8]| varint_need(p).map_err(RequestError::from);
                    let field = match self.stash.gather(c.rest(), need)? {
                        Gathered::Whole { taken, field } => {
                            c.skip(taken);
                            field
                        }
                        Gathered::Partial => {
                            c.skip(c.remaining());
                            return Ok(Decoded::Partial);
                        }
                    };
                    // `field` is exactly one well-formed varint.
                    let Some(n) = get_varint(&mut Cursor::new(field))? else {
                        return Err(RequestError::MalformedVarint);
                    };
                    if n > self.limits.max_have {
                        return Err(RequestError::HaveCountTooLarge(n));
                    }
                    self.state = State::Ids {
                        batch: true,
                        keep_alive: *keep_alive,
                        left: n,
                        ids: Vec::with_capacity((n as usize).min(MAX_PREALLOC_IDS)),
                    };
                }
                State::Ids {
                    batch,
                    keep_alive,
                    left,
                    ids,
                } => {
                    while *left > 0 {
                        if self.stash.held().is_empty() {
                            // Whole ids straight from the input, as many as it holds.
                            while *left > 0 {
                                let Some(id) = c.u64_be() else { break };
                                ids.push(id);
                                *left -= 1;
                            }
                            if *left == 0 {
                                break;
                            }
                        }
                        // An id cut by the end of a read goes through the stash.
                        match self.stash.gather(c.rest(), |_| Ok::<_, RequestError>(8))? {
                            Gathered::Whole { taken, field } => {
                                c.skip(taken);
                                // Exactly the 8 bytes asked for.
                                ids.push(field.iter().fold(0, |v, &b| v << 8 | u64::from(b)));
                                *left -= 1;
                            }
                            Gathered::Partial => {
                                c.skip(c.remaining());
                                return Ok(Decoded::Partial);
                            }
                        }
                    }
                    let ids = std::mem::take(ids);
                    let req = if *batch {
                        Request::Batch {
                            keep_alive: *keep_alive,
                            have: ids,
                        }
                    } else {
                        Request::GetById {
                            keep_alive: *keep_alive,
                            ids,
                        }
                    };
                    return Ok(Decoded::Request(req));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec() -> RequestDecoder {
        RequestDecoder::new(RequestLimits::default())
    }

    /// Decodes one whole request from `bytes`.
    fn one(bytes: &[u8]) -> (usize, Result<Decoded, RequestError>) {
        dec().decode(bytes)
    }

    /// Feeds `chunks` in order, collecting every request (or the first error).
    fn feed_chunks(chunks: &[&[u8]]) -> Result<Vec<Request>, RequestError> {
        let mut d = dec();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut off = 0;
            while off < chunk.len() {
                let (n, r) = d.decode(&chunk[off..]);
                assert_bounded(&d);
                off += n;
                match r? {
                    Decoded::Partial => assert_eq!(off, chunk.len(), "partial leaves no bytes"),
                    Decoded::Request(req) => out.push(req),
                }
            }
        }
        assert!(!d.is_mid_request(), "transcript ends on a request boundary");
        Ok(out)
    }

    /// What the decoder holds stays within its limits: a split field within the 8-byte stash,
    /// ids preallocated up to MAX_PREALLOC_IDS and otherwise grown with the ids received.
    fn assert_bounded(d: &RequestDecoder) {
        assert!(d.stash.held().len() <= MAX_FIELD && d.stash.capacity() <= MAX_FIELD);
        if let State::Ids { ids, .. } = &d.state {
            assert!(ids.capacity() <= MAX_PREALLOC_IDS.max(2 * ids.len()));
        }
    }

    /// Feeds `input` in pieces of `chunk` bytes; the requests and the first error.
    fn run(input: &[u8], chunk: usize) -> (Vec<Request>, Option<RequestError>) {
        let mut d = dec();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            let mut off = 0;
            while off < piece.len() {
                let (n, r) = d.decode(&piece[off..]);
                assert!(n <= piece.len() - off, "consumed more than offered");
                assert_bounded(&d);
                off += n;
                match r {
                    Ok(Decoded::Partial) => assert_eq!(off, piece.len()),
                    Ok(Decoded::Request(req)) => out.push(req),
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    /// A short transcript touching every request type, for the every-pair-of-offsets test.
    fn short_transcript() -> (Vec<u8>, Vec<Request>) {
        let reqs = vec![
            Request::List { keep_alive: true },
            Request::GetById {
                keep_alive: true,
                ids: vec![0x84fe30f5845a521f, 0x0102030405060708],
            },
            Request::Batch {
                keep_alive: true,
                have: vec![0xef46db3751d8e999],
            },
            Request::Cancel,
            Request::Watch,
            Request::ListAndGet { keep_alive: false },
        ];
        let mut bytes = Vec::new();
        for r in &reqs {
            r.encode(&mut bytes);
        }
        (bytes, reqs)
    }

    fn transcript() -> (Vec<u8>, Vec<Request>) {
        let reqs = vec![
            Request::List { keep_alive: true },
            Request::GetById {
                keep_alive: true,
                ids: vec![0x84fe30f5845a521f, 7, 7],
            },
            Request::Batch {
                keep_alive: true,
                have: (0..300u64).map(|i| i * 0x0101).collect(),
            },
            Request::Cancel,
            Request::GetById {
                keep_alive: true,
                ids: vec![],
            },
            Request::Batch {
                keep_alive: true,
                have: vec![],
            },
            Request::ListAndGet { keep_alive: true },
            Request::Watch,
            Request::Cancel,
            Request::List { keep_alive: false },
        ];
        let mut bytes = Vec::new();
        for r in &reqs {
            r.encode(&mut bytes);
        }
        (bytes, reqs)
    }

    #[test]
    fn split_anywhere_gives_the_same_requests() {
        let (bytes, reqs) = transcript();
        assert_eq!(feed_chunks(&[&bytes]).unwrap(), reqs);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed_chunks(&singles).unwrap(), reqs);
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(feed_chunks(&[a, b]).unwrap(), reqs, "cut at {cut}");
        }
        for size in [3, 7, 9, 13] {
            let pieces: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(feed_chunks(&pieces).unwrap(), reqs, "chunks of {size}");
        }
    }

    #[test]
    fn split_at_every_pair_of_offsets_gives_the_same_requests() {
        let (bytes, reqs) = short_transcript();
        assert_eq!(bytes.len(), 38);
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let pieces = [&bytes[..a], &bytes[a..b], &bytes[b..]];
                assert_eq!(feed_chunks(&pieces).unwrap(), reqs, "cuts at {a} and {b}");
            }
        }
    }

    #[test]
    fn seeded_random_cuts_give_the_same_requests() {
        let (bytes, reqs) = transcript();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..300 {
            let mut cuts: Vec<usize> = (0..rng.next() % 12)
                .map(|_| (rng.next() as usize) % (bytes.len() + 1))
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                pieces.push(&bytes[prev..c]);
                prev = c;
            }
            assert_eq!(feed_chunks(&pieces).unwrap(), reqs);
        }
    }

    #[test]
    fn j16_pipelined_lists_consume_one_request_each() {
        let buf = [0x01, 0x01, 0x01, 0x00];
        let mut d = dec();
        let (n, r) = d.decode(&buf);
        assert_eq!(
            (n, r),
            (2, Ok(Decoded::Request(Request::List { keep_alive: true })))
        );
        let (n, r) = d.decode(&buf[2..]);
        assert_eq!(
            (n, r),
            (2, Ok(Decoded::Request(Request::List { keep_alive: false })))
        );
        // With a third request behind them, it is left for later: each call consumes one.
        let buf = [0x01, 0x01, 0x01, 0x00, 0x01, 0x00];
        let mut d = dec();
        assert_eq!(d.decode(&buf).0, 2);
        assert_eq!(d.decode(&buf[2..]).0, 2);
        assert!(!d.is_mid_request());
        assert_eq!(&buf[4..], [0x01, 0x00]);
        assert_eq!(
            d.decode(&buf[4..]),
            (2, Ok(Decoded::Request(Request::List { keep_alive: false })))
        );
    }

    #[test]
    fn request_byte_literals() {
        let cases: &[(&[u8], Request)] = &[
            (&[0x01, 0x00], Request::List { keep_alive: false }),
            (&[0x05, 0x01], Request::ListAndGet { keep_alive: true }),
            (
                &[0x02, 0x00, 0x00],
                Request::Batch {
                    keep_alive: false,
                    have: vec![],
                },
            ),
            (
                &[0x00, 0x00, 0x00],
                Request::GetById {
                    keep_alive: false,
                    ids: vec![],
                },
            ),
            (&[0x03, 0x00], Request::Cancel),
            (&[0x04, 0x00], Request::Watch),
            (
                &[
                    0x00, 0x01, 0x01, 0x84, 0xfe, 0x30, 0xf5, 0x84, 0x5a, 0x52, 0x1f,
                ],
                Request::GetById {
                    keep_alive: true,
                    ids: vec![0x84fe30f5845a521f],
                },
            ),
        ];
        for (bytes, req) in cases {
            let mut enc = Vec::new();
            req.encode(&mut enc);
            assert_eq!(&enc[..], *bytes);
            assert_eq!(one(bytes), (bytes.len(), Ok(Decoded::Request(req.clone()))));
        }
        assert!(Request::Cancel.keep_alive() && Request::Watch.keep_alive());
        assert!(!Request::List { keep_alive: false }.keep_alive());
    }

    #[test]
    fn j22_cancel_and_watch_ignore_the_keep_alive_bit() {
        assert_eq!(
            one(&[0x03, 0x01]),
            (2, Ok(Decoded::Request(Request::Cancel)))
        );
        assert_eq!(
            one(&[0x04, 0x01]),
            (2, Ok(Decoded::Request(Request::Watch)))
        );
        let mut enc = Vec::new();
        Request::Cancel.encode(&mut enc);
        Request::Watch.encode(&mut enc);
        assert_eq!(enc, [0x03, 0x00, 0x04, 0x00]);
    }

    #[test]
    fn j4_reserved_flags_checked_before_the_type() {
        for bytes in [
            [0x01, 0x02],
            [0x00, 0xff],
            [0xff, 0x02],
            [0x03, 0x02],
            [0x16, 0x03],
        ] {
            let (n, r) = one(&bytes);
            assert_eq!(
                (n, r),
                (2, Err(RequestError::ReservedFlags)),
                "{bytes:02x?}"
            );
        }
        assert_eq!(RequestError::ReservedFlags.code(), 2);
        assert_eq!(
            RequestError::ReservedFlags.frame(),
            b"JTPE\x02\x00\x12reserved flags set".to_vec()
        );
    }

    #[test]
    fn j5_unknown_request_types() {
        for t in [0x06, 0x07, 0xfe, 0xff] {
            assert_eq!(one(&[t, 0x00]), (2, Err(RequestError::UnknownType(t))));
        }
        let e = RequestError::UnknownType(0xfe);
        assert_eq!((e.code(), e.message()), (4, "unknown request type"));
        assert_eq!(e.frame(), b"JTPE\x04\x00\x14unknown request type".to_vec());
    }

    #[test]
    fn j2_malformed_have_count() {
        for body in [
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
            &[0x80, 0x80, 0x80, 0x80, 0x10],
            &[0x80, 0x00],
        ] {
            let mut bytes = vec![0x02, 0x00];
            bytes.extend_from_slice(body);
            assert_eq!(
                one(&bytes).1,
                Err(RequestError::MalformedVarint),
                "{bytes:02x?}"
            );
            // Byte by byte, the error comes on the deciding byte.
            let mut d = dec();
            let mut got = None;
            for b in &bytes {
                match d.decode(std::slice::from_ref(b)) {
                    (1, Ok(Decoded::Partial)) => {}
                    (_, r) => {
                        got = Some(r);
                        break;
                    }
                }
            }
            assert_eq!(got, Some(Err(RequestError::MalformedVarint)));
        }
        let e = RequestError::MalformedVarint;
        assert_eq!((e.code(), e.message()), (2, "malformed varint"));
    }

    #[test]
    fn j9_have_count_limit() {
        // 1,000,001 is refused before any id is read.
        let (n, r) = one(&[0x02, 0x00, 0xc1, 0x84, 0x3d, 0xaa, 0xbb]);
        assert_eq!((n, r), (5, Err(RequestError::HaveCountTooLarge(1_000_001))));
        let e = RequestError::HaveCountTooLarge(1_000_001);
        assert_eq!((e.code(), e.message()), (2, "have_count too large"));
        // 1,000,000 is accepted and waits for its ids.
        let mut d = dec();
        assert_eq!(
            d.decode(&[0x02, 0x00, 0xc0, 0x84, 0x3d]),
            (5, Ok(Decoded::Partial))
        );
        assert!(d.is_mid_request());
    }

    #[test]
    fn j10_million_ids_in_pieces_grow_with_input() {
        let mut d = dec();
        assert_eq!(
            d.decode(&[0x02, 0x01, 0xc0, 0x84, 0x3d]),
            (5, Ok(Decoded::Partial))
        );
        match &d.state {
            State::Ids { ids, .. } => assert!(ids.capacity() <= MAX_PREALLOC_IDS),
            s => panic!("unexpected state {s:?}"),
        }
        // 8,000,000 bytes in 64 KiB reads, the piece boundaries cutting ids.
        let id_bytes: Vec<u8> = (0..1_000_000u64).flat_map(|i| i.to_be_bytes()).collect();
        let mut last = None;
        for piece in id_bytes.chunks(65_531) {
            let (n, r) = d.decode(piece);
            assert_eq!(n, piece.len());
            last = Some(r);
        }
        match last {
            Some(Ok(Decoded::Request(Request::Batch {
                keep_alive: true,
                have,
            }))) => {
                assert_eq!(have.len(), 1_000_000);
                assert_eq!(have[999_999], 999_999);
            }
            other => panic!("{other:?}"),
        }
        assert!(!d.is_mid_request());
    }

    #[test]
    fn mid_request_tracks_the_header() {
        let mut d = dec();
        assert!(!d.is_mid_request());
        assert_eq!(d.decode(&[]), (0, Ok(Decoded::Partial)));
        assert!(!d.is_mid_request());
        assert_eq!(d.decode(&[0x00]), (1, Ok(Decoded::Partial)));
        assert!(d.is_mid_request());
        assert_eq!(d.decode(&[0x00, 0x05, 1, 2, 3]), (5, Ok(Decoded::Partial)));
        assert!(d.is_mid_request());
    }

    #[test]
    fn display_is_lowercase() {
        assert_eq!(
            RequestError::ReservedFlags.to_string(),
            "jtp request: reserved flags set"
        );
        assert_eq!(
            RequestError::HaveCountTooLarge(5).to_string(),
            "jtp request: have_count 5 too large"
        );
        assert_eq!(
            RequestError::from(WireError::MalformedVarint),
            RequestError::MalformedVarint
        );
    }

    #[test]
    fn a_field_too_long_for_the_stash_is_a_malformed_varint() {
        // Only a varint could ever be that long (ids are exactly the stash's 8 bytes).
        let e = RequestError::from(FieldTooLong { len: 9, max: 8 });
        assert_eq!((e, e.code()), (RequestError::MalformedVarint, 2));
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Every request fixture of these tests: transcripts and each error case.
    fn fixtures() -> Vec<Vec<u8>> {
        let mut all = vec![transcript().0, short_transcript().0];
        for bad in [
            &[0x01, 0x02][..],
            &[0x00, 0xff],
            &[0xfe, 0x00],
            &[0x02, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            &[0x02, 0x00, 0x80, 0x80, 0x80, 0x80, 0x10],
            &[0x02, 0x00, 0x80, 0x00],
            &[0x02, 0x00, 0xc1, 0x84, 0x3d, 0xaa, 0xbb],
            &[0x02, 0x01, 0xc0, 0x84, 0x3d, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[0x00, 0x00, 0x05, 1, 2, 3],
        ] {
            all.push(bad.to_vec());
        }
        all
    }

    #[test]
    fn j10_every_truncation_of_every_fixture_is_partial_or_an_error_within_bounds() {
        for f in fixtures() {
            let (full, full_err) = run(&f, f.len());
            for cut in 0..=f.len() {
                let part = &f[..cut];
                let whole = run(part, part.len());
                // The same however the truncated input is cut, and a prefix of the full result:
                // a truncation only ever means "need more", never a different request or error.
                // (Byte by byte is quadratic here; the long transcript gets coarser pieces.)
                let pieces = if f.len() <= 100 { [1, 3] } else { [7, 61] };
                for chunk in pieces {
                    assert_eq!(run(part, chunk), whole, "{f:02x?} cut at {cut}");
                }
                let (reqs, err) = whole;
                assert!(full.starts_with(&reqs), "{f:02x?} cut at {cut}");
                if let Some(e) = err {
                    assert_eq!((reqs.len(), Some(e)), (full.len(), full_err));
                }
            }
        }
    }

    #[test]
    fn never_panics_on_truncations_and_random_input() {
        let (bytes, _) = transcript();
        for cut in 0..=bytes.len() {
            let mut d = dec();
            let mut off = 0;
            while off < cut {
                let (n, r) = d.decode(&bytes[off..cut]);
                assert!(n <= cut - off);
                assert_bounded(&d);
                off += n;
                if r.is_err() || n == 0 {
                    break;
                }
            }
        }
        let mut rng = XorShift(0x9e3779b97f4a7c15);
        for _ in 0..10_000 {
            let len = (rng.next() % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    // Bias towards small bytes so that valid headers and varints appear.
                    let r = rng.next();
                    if r & 1 == 0 {
                        (r >> 8) as u8 & 0x07
                    } else {
                        (r >> 8) as u8
                    }
                })
                .collect();
            let mut d = dec();
            let mut off = 0;
            while off < input.len() {
                let (n, r) = d.decode(&input[off..]);
                assert!(n <= input.len() - off);
                assert_bounded(&d);
                off += n;
                if r.is_err() || n == 0 {
                    break;
                }
            }
            // Cut anywhere, random bytes decode alike.
            let whole = run(&input, input.len());
            assert_eq!(run(&input, 1 + (rng.next() % 7) as usize), whole);
        }
    }
}
