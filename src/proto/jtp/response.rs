//! JTP responses (jtp.md 2.5-2.9): the server's encoders and the client's incremental decoder.
//!
//! Encoders append to a `Vec<u8>`; packet data is never passed through them (the driver sends it
//! straight from the mapped file after [`put_packet_header`]).
//!
//! The decoder checks the framing a client must check (jtp.md 5.2 rule 7): magics, counts against
//! [`ResponseLimits`], packet flag bits, and that `JTPD` ids are a subsequence of the request. It
//! never buffers packet data ([`Event::Data`] borrows the caller's input). Frames are read with
//! [`crate::wire::Cursor`]: a header frame whole in the input is parsed in place, and only one
//! split across reads is copied, into a [`crate::wire::Stash`] of at most [`MAX_HEADER_FRAME`]
//! bytes that takes no byte past the frame.
//!
//! `JTPE` is recognised wherever a frame starts with a magic: between responses (also before any
//! request), instead of an expected response, between packets and during WATCH. Between catalog
//! entries it cannot be told apart from an entry whose id starts with `4a545045`, so there it is
//! read as an entry; jtp.md's servers never send one there.
//!
//! ```text
//!             JTPL n                   (n entries)
//!   Ready ──────────────> Entries ───────────────────────────────> End ──ResponseEnd──> Ready
//!     │   JTPD/B/G n       header       (Length bytes)               ^
//!     ├─────────────> Packets ──────> Data ──────> PacketEnd ──(last)┘
//!     │                ^  │ JTPC          └───(more)──> Packets
//!     │                │  └──────────────────────────────────────────────Cancelled──> Ready
//!     │ expect(Watch)  └── (Length 0 goes straight to PacketEnd)
//!     └──────────────> Watching ──JTPW──> Watching ──JTPC──> Ready
//!   JTPE at any frame boundary: Closed.  Framing error: Failed.
//! ```

use std::collections::VecDeque;
use std::fmt;

use super::wire::{
    get_varint, put_varint, WireError, FLAGS_RESERVED, MAGIC_BATCH, MAGIC_CANCEL, MAGIC_ERROR,
    MAGIC_GET, MAGIC_LIST, MAGIC_LIST_AND_GET, MAGIC_WATCH,
};
use crate::wire::{hex, Cursor, FieldTooLong, Gathered, Stash};

/// The longest frame the decoder ever has to hold whole: a `JTPW` event with a 65,535-byte
/// name (magic 4, id 8, flags 1, NameLen 2, name, Size varint 5). Entries and `JTPE` are shorter.
pub const MAX_HEADER_FRAME: usize = 4 + 8 + 1 + 2 + u16::MAX as usize + 5;

/// Appends `JTPL` and its count.
pub fn put_list_header(count: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC_LIST);
    put_varint(count, out);
}

/// Appends `id | flags | NameLen | name | Size` (the body of a catalog entry or a `JTPW`).
///
/// The catalog never holds names over 65,535 bytes (jtp.md 3.10); should one reach this
/// function anyway it is cut at a char boundary rather than breaking the framing.
pub fn put_entry(id: u64, flags: u8, name: &str, size: u32, out: &mut Vec<u8>) {
    debug_assert!(
        name.len() <= usize::from(u16::MAX),
        "names over 65,535 bytes are not served"
    );
    out.extend_from_slice(&id.to_be_bytes());
    out.push(flags);
    put_str16(name, out);
    put_varint(size, out);
}

/// Appends a packets header: `JTPD` with a one-byte M, or `JTPB`/`JTPG` with a varint count.
///
/// # Panics
/// On `JTPD` with `count` above 255, or a magic that does not start a run of packets.
pub fn put_packets_header(magic: [u8; 4], count: u32, out: &mut Vec<u8>) {
    if magic == MAGIC_GET {
        put_get_header(
            u8::try_from(count).expect("JTPD carries at most 255 packets"),
            out,
        );
    } else {
        assert!(
            magic == MAGIC_BATCH || magic == MAGIC_LIST_AND_GET,
            "not a packets magic"
        );
        out.extend_from_slice(&magic);
        put_varint(count, out);
    }
}

/// Appends `JTPD` and M.
pub fn put_get_header(m: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC_GET);
    out.push(m);
}

/// Appends `flags | Length | id`; `len` bytes of data must follow.
pub fn put_packet_header(flags: u8, len: u32, id: u64, out: &mut Vec<u8>) {
    out.push(flags);
    put_varint(len, out);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Appends `JTPC`.
pub fn put_cancel(out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC_CANCEL);
}

/// Appends one `JTPW` event.
pub fn put_watch_event(id: u64, flags: u8, name: &str, size: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC_WATCH);
    put_entry(id, flags, name, size, out);
}

/// Appends a `JTPE` frame; a message over 65,535 bytes is cut at a char boundary.
pub fn put_error(code: u8, msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC_ERROR);
    out.push(code);
    put_str16(msg, out);
}

/// A whole `JTPE` frame.
pub fn error_frame(code: u8, msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + msg.len().min(usize::from(u16::MAX)));
    put_error(code, msg, &mut out);
    out
}

fn put_str16(s: &str, out: &mut Vec<u8>) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Bounds on what a server may announce to ferry's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Largest `JTPL` count accepted (default 10,000,000).
    pub max_list_entries: u32,
    /// Largest `JTPB`/`JTPG` count accepted (default 10,000,000).
    pub max_packets: u32,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits {
            max_list_entries: 10_000_000,
            max_packets: 10_000_000,
        }
    }
}

/// What the client expects next, given what it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    List,
    /// GET_BY_ID of these ids, in request order.
    Get {
        requested: Vec<u64>,
    },
    Batch,
    ListAndGet,
    /// WATCH: `JTPW` events until `JTPC`.
    Watch,
    /// Nothing: only `JTPC` and `JTPE` are valid.
    Idle,
}

/// One step of a response, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    ListStart {
        count: u32,
    },
    Entry {
        id: u64,
        flags: u8,
        name: &'a [u8],
        size: u32,
    },
    PacketsStart {
        magic: [u8; 4],
        count: u32,
    },
    PacketHeader {
        flags: u8,
        len: u32,
        id: u64,
    },
    /// The first `n` bytes of the buffer passed to this decode call are data of the current
    /// packet (the decoder consumed them; copy them out before the next call). Emitted until
    /// `len` bytes have been delivered; then `PacketEnd`.
    Data(&'a [u8]),
    PacketEnd,
    /// The count was reached (also right after `ListStart{0}`/`PacketsStart{0}`).
    ResponseEnd,
    /// `JTPC`: a cancelled response ends here, or a CANCEL sent between responses was answered.
    Cancelled,
    Watch {
        id: u64,
        flags: u8,
        name: &'a [u8],
        size: u32,
    },
    /// `JTPE` at a frame boundary; the decoder is closed afterwards.
    ServerError {
        code: u8,
        message: String,
    },
}

/// A framing error by the server; the client stops at the first one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    UnknownMagic([u8; 4]),
    /// `JTPL` count above `max_list_entries`.
    TooManyEntries(u32),
    /// `JTPB`/`JTPG` count above `max_packets`.
    TooManyPackets(u32),
    /// Packet flags with any of bits 4-7 set.
    ReservedPacketFlags(u8),
    /// `JTPD` with M above the N ids requested.
    MoreThanRequested {
        m: u8,
        n: usize,
    },
    /// A `JTPD` packet id out of request order or never requested.
    NotASubsequence(u64),
    MalformedVarint,
    /// A well-formed frame where it does not belong.
    Unexpected(&'static str),
    /// A packet flags byte where `JTPD` was expected: the server may speak an older JTP.
    MaybeOlderServer,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::UnknownMagic(m) => {
                write!(
                    f,
                    "jtp response: unknown magic {:02x}{:02x}{:02x}{:02x}",
                    m[0], m[1], m[2], m[3]
                )
            }
            ResponseError::TooManyEntries(n) => write!(f, "jtp response: list count {n} too large"),
            ResponseError::TooManyPackets(n) => {
                write!(f, "jtp response: packet count {n} too large")
            }
            ResponseError::ReservedPacketFlags(b) => {
                write!(f, "jtp response: reserved packet flags set ({b:#04x})")
            }
            ResponseError::MoreThanRequested { m, n } => {
                write!(f, "jtp response: {m} packets for {n} requested ids")
            }
            ResponseError::NotASubsequence(id) => {
                write!(
                    f,
                    "jtp response: packet {} was not requested at this point",
                    hex::encode_u64(*id)
                )
            }
            ResponseError::MalformedVarint => f.write_str("jtp response: malformed varint"),
            ResponseError::Unexpected(what) => write!(f, "jtp response: unexpected {what}"),
            ResponseError::MaybeOlderServer => f.write_str(
                "jtp response: packet where JTPD was expected; the server may speak an older jtp",
            ),
        }
    }
}

impl std::error::Error for ResponseError {}

impl From<WireError> for ResponseError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::MalformedVarint => ResponseError::MalformedVarint,
            _ => ResponseError::Unexpected("request error in a response"),
        }
    }
}

/// Every JTP header frame fits [`MAX_HEADER_FRAME`] by its layout, so the decoder's stash never
/// refuses one; should it, the frame is longer than any JTP frame.
impl From<FieldTooLong> for ResponseError {
    fn from(_: FieldTooLong) -> Self {
        ResponseError::Unexpected("frame longer than any jtp frame")
    }
}

/// Progress through a `JTPD` request list.
#[derive(Debug)]
struct GetCheck {
    requested: Vec<u64>,
    next: usize,
}

#[derive(Debug)]
enum State {
    /// Between responses; the next expectation (if any) is the queue's front.
    Ready,
    Entries {
        left: u32,
    },
    /// At a packet boundary with `left` packets to go.
    Packets {
        left: u32,
        get: Option<GetCheck>,
    },
    Data {
        bytes_left: u32,
        left: u32,
        get: Option<GetCheck>,
    },
    PacketEnd {
        left: u32,
        get: Option<GetCheck>,
    },
    /// `ResponseEnd` is due.
    End,
    Watching,
    /// After `JTPE`: the server closes; EOF is expected.
    Closed,
    /// After a framing error: nothing more is decoded.
    Failed,
}

/// Which frames are valid where the decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    /// A frame starting with a magic (between responses, while watching).
    Magic { expect_get: bool },
    /// A packet header, `JTPC` or `JTPE`.
    Packet,
    /// A catalog entry body.
    Entry,
}

/// A parsed frame; names and messages borrow the bytes it was parsed from.
#[derive(Debug)]
enum Frame<'b> {
    Counted([u8; 4], u32),
    Cancel,
    Error(u8, &'b [u8]),
    Entry {
        id: u64,
        flags: u8,
        name: &'b [u8],
        size: u32,
    },
    Watch {
        id: u64,
        flags: u8,
        name: &'b [u8],
        size: u32,
    },
    Packet {
        flags: u8,
        len: u32,
        id: u64,
    },
}

/// The fields shared by a catalog entry and a `JTPW` event.
#[derive(Debug)]
struct EntryRef<'b> {
    id: u64,
    flags: u8,
    name: &'b [u8],
    size: u32,
}

/// A frame read from the start of some bytes, or, when they end first, how long it is at least.
enum Parse<T> {
    Done(T),
    /// The bytes are a proper prefix of a frame of at least this many bytes.
    Need(usize),
}

/// "The frame needs at least `more` bytes past what `c` has read."
fn need<T>(c: &Cursor<'_>, more: usize) -> Result<Parse<T>, ResponseError> {
    Ok(Parse::Need(c.position().saturating_add(more)))
}

/// `id | flags | NameLen | name | Size` at the cursor.
#[inline]
fn entry<'b>(c: &mut Cursor<'b>) -> Result<Parse<EntryRef<'b>>, ResponseError> {
    // Each bound counts the fixed fields still to come and one byte of Size.
    let Some(id) = c.u64_be() else {
        return need(c, 12);
    };
    let Some(flags) = c.u8() else {
        return need(c, 4);
    };
    let Some(len) = c.u16_be() else {
        return need(c, 3);
    };
    let len = usize::from(len);
    let Some(name) = c.take(len) else {
        return need(c, len + 1);
    };
    // A partial varint is all of the rest: one more byte at least.
    let Some(size) = get_varint(c)? else {
        return need(c, c.remaining() + 1);
    };
    Ok(Parse::Done(EntryRef {
        id,
        flags,
        name,
        size,
    }))
}

/// Parses one frame from the start of `b`; errors come as soon as the bytes show them.
fn parse_frame(ctx: Ctx, b: &[u8]) -> Result<Parse<(Frame<'_>, usize)>, ResponseError> {
    let mut c = Cursor::new(b);
    let Some(first) = c.peek(1).map(|p| p[0]) else {
        return need(&c, 1);
    };
    let frame = match ctx {
        Ctx::Entry => match entry(&mut c)? {
            Parse::Done(EntryRef {
                id,
                flags,
                name,
                size,
            }) => Frame::Entry {
                id,
                flags,
                name,
                size,
            },
            Parse::Need(n) => return Ok(Parse::Need(n)),
        },
        Ctx::Packet if first != b'J' => {
            if first & FLAGS_RESERVED != 0 {
                return Err(ResponseError::ReservedPacketFlags(first));
            }
            c.skip(1);
            let Some(len) = get_varint(&mut c)? else {
                return need(&c, c.remaining() + 1 + 8);
            };
            let Some(id) = c.u64_be() else {
                return need(&c, 8);
            };
            Frame::Packet {
                flags: first,
                len,
                id,
            }
        }
        Ctx::Magic { expect_get: true } if first & FLAGS_RESERVED == 0 => {
            return Err(ResponseError::MaybeOlderServer)
        }
        Ctx::Packet | Ctx::Magic { .. } => {
            let Some(magic) = c.array::<4>() else {
                return need(&c, 4);
            };
            match magic {
                MAGIC_CANCEL => Frame::Cancel,
                MAGIC_ERROR => {
                    let Some(code) = c.u8() else {
                        return need(&c, 3);
                    };
                    let Some(len) = c.u16_be() else {
                        return need(&c, 2);
                    };
                    let Some(msg) = c.take(usize::from(len)) else {
                        return need(&c, usize::from(len));
                    };
                    Frame::Error(code, msg)
                }
                MAGIC_WATCH => match entry(&mut c)? {
                    Parse::Done(EntryRef {
                        id,
                        flags,
                        name,
                        size,
                    }) => Frame::Watch {
                        id,
                        flags,
                        name,
                        size,
                    },
                    Parse::Need(n) => return Ok(Parse::Need(n)),
                },
                MAGIC_GET => match c.u8() {
                    Some(m) => Frame::Counted(magic, u32::from(m)),
                    None => return need(&c, 1),
                },
                MAGIC_LIST | MAGIC_BATCH | MAGIC_LIST_AND_GET => match get_varint(&mut c)? {
                    Some(n) => Frame::Counted(magic, n),
                    None => return need(&c, c.remaining() + 1),
                },
                _ => return Err(ResponseError::UnknownMagic(magic)),
            }
        }
    };
    Ok(Parse::Done((frame, c.position())))
}

/// The length of the frame at the start of `prefix`, or the fewest bytes it can have: the
/// `need` of the decoder's stash.
fn frame_need(ctx: Ctx, prefix: &[u8]) -> Result<usize, ResponseError> {
    Ok(match parse_frame(ctx, prefix)? {
        Parse::Done((_, n)) | Parse::Need(n) => n,
    })
}

/// Incremental client-side response decoder (see the module doc).
#[derive(Debug)]
pub struct ResponseDecoder {
    limits: ResponseLimits,
    state: State,
    pending: VecDeque<Expect>,
    /// The start of a frame split across calls (at most [`MAX_HEADER_FRAME`] bytes).
    stash: Stash,
}

impl ResponseDecoder {
    pub fn new(limits: ResponseLimits) -> Self {
        ResponseDecoder {
            limits,
            state: State::Ready,
            pending: VecDeque::new(),
            stash: Stash::new(MAX_HEADER_FRAME),
        }
    }

    /// Call before each request is sent: queues what the server will answer. Requests may be
    /// pipelined; expectations are met in order. `Expect::Idle` queues nothing (only `JTPC` and
    /// `JTPE` are valid while nothing is expected). CANCEL needs no expectation: its `JTPC` is
    /// accepted between packets and between responses.
    pub fn expect(&mut self, e: Expect) {
        if e != Expect::Idle {
            self.pending.push_back(e);
        }
    }

    /// True at a frame boundary with no response in progress or expected (also after `JTPE`):
    /// EOF here is a clean end. False after a framing error.
    pub fn is_idle(&self) -> bool {
        let between = matches!(self.state, State::Ready) && self.pending.is_empty();
        (between || matches!(self.state, State::Closed)) && self.stash.held().is_empty()
    }

    /// Decodes from `buf`; returns (bytes consumed, event).
    ///
    /// `Ok(None)` means every byte offered was taken (a split frame is kept inside the decoder)
    /// and more input is needed; with an empty `buf` it is (0, `Ok(None)`). Events that need no
    /// input (`PacketEnd`, `ResponseEnd`) come with 0 bytes consumed, so call again until
    /// `Ok(None)`. After an error every further call fails.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> (usize, Result<Option<Event<'a>>, ResponseError>) {
        // The stash forgets a frame it handed out when it next gathers; it never holds more than
        // MAX_HEADER_FRAME, so there is no memory to give back earlier (and packet data, the
        // hot path, does not touch it).
        // Every error path of `step` leaves the state `Failed` (the borrow of the returned
        // event prevents fixing it up here).
        self.step(buf)
    }

    fn step<'a>(&'a mut self, buf: &'a [u8]) -> (usize, Result<Option<Event<'a>>, ResponseError>) {
        // States that emit without input.
        let ctx = loop {
            match std::mem::replace(&mut self.state, State::Closed) {
                State::Ready => {
                    if self.pending.front() == Some(&Expect::Watch) {
                        self.pending.pop_front();
                        self.state = State::Watching;
                        continue;
                    }
                    let expect_get = matches!(self.pending.front(), Some(Expect::Get { .. }));
                    self.state = State::Ready;
                    break Ctx::Magic { expect_get };
                }
                State::Watching => {
                    self.state = State::Watching;
                    break Ctx::Magic { expect_get: false };
                }
                State::Entries { left } => {
                    self.state = State::Entries { left };
                    break Ctx::Entry;
                }
                State::Packets { left, get } => {
                    self.state = State::Packets { left, get };
                    break Ctx::Packet;
                }
                State::PacketEnd { left, get } => {
                    self.state = if left == 0 {
                        State::End
                    } else {
                        State::Packets { left, get }
                    };
                    return (0, Ok(Some(Event::PacketEnd)));
                }
                State::End => {
                    self.state = State::Ready;
                    return (0, Ok(Some(Event::ResponseEnd)));
                }
                State::Data {
                    bytes_left,
                    left,
                    get,
                } => {
                    if buf.is_empty() {
                        self.state = State::Data {
                            bytes_left,
                            left,
                            get,
                        };
                        return (0, Ok(None));
                    }
                    let n = buf.len().min(bytes_left as usize);
                    let bytes_left = bytes_left - n as u32;
                    self.state = if bytes_left == 0 {
                        State::PacketEnd { left, get }
                    } else {
                        State::Data {
                            bytes_left,
                            left,
                            get,
                        }
                    };
                    return (n, Ok(Some(Event::Data(&buf[..n]))));
                }
                State::Failed => {
                    self.state = State::Failed;
                    return (
                        0,
                        Err(ResponseError::Unexpected("input after a framing error")),
                    );
                }
                State::Closed => {
                    if buf.is_empty() {
                        return (0, Ok(None));
                    }
                    return (
                        0,
                        Err(ResponseError::Unexpected("bytes after the last frame")),
                    );
                }
            }
        };

        // Split borrows: the frame may borrow the stash while the state changes.
        let Self {
            limits,
            state,
            pending,
            stash,
        } = self;

        // A header frame whole in `buf` is parsed in place (the common case, parsed once); a
        // split one is gathered in the stash, which never takes a byte past the frame (packet
        // data stays in `buf`), and parsed when whole.
        let direct = match stash.held() {
            [] => match parse_frame(ctx, buf) {
                Err(e) => return fail(state, pending, e),
                Ok(Parse::Done(found)) => Some(found),
                Ok(Parse::Need(_)) => None,
            },
            _ => None,
        };
        let (frame, taken) = match direct {
            Some(found) => found,
            None => {
                let (taken, field) = match stash.gather(buf, |p| frame_need(ctx, p)) {
                    Err(e) => return fail(state, pending, e),
                    Ok(Gathered::Partial) => return (buf.len(), Ok(None)),
                    Ok(Gathered::Whole { taken, field }) => (taken, field),
                };
                match parse_frame(ctx, field) {
                    Ok(Parse::Done((frame, _))) => (frame, taken),
                    // Cannot happen: `field` is exactly the frame `frame_need` measured.
                    Ok(Parse::Need(_)) => {
                        return fail(state, pending, ResponseError::Unexpected("frame"));
                    }
                    Err(e) => return fail(state, pending, e),
                }
            }
        };

        let event = match apply(limits, state, pending, frame) {
            Ok(ev) => ev,
            Err(e) => return fail(state, pending, e),
        };
        (taken, Ok(Some(event)))
    }
}

/// Stops decoding at the first framing error (jtp.md 5.2 rule 7).
fn fail<'a>(
    state: &mut State,
    pending: &mut VecDeque<Expect>,
    e: ResponseError,
) -> (usize, Result<Option<Event<'a>>, ResponseError>) {
    *state = State::Failed;
    pending.clear();
    (0, Err(e))
}

/// Moves the state machine over one parsed frame.
fn apply<'a>(
    limits: &ResponseLimits,
    state: &mut State,
    pending: &mut VecDeque<Expect>,
    frame: Frame<'a>,
) -> Result<Event<'a>, ResponseError> {
    let cur = std::mem::replace(state, State::Closed);
    let (next, event) = match (cur, frame) {
        (_, Frame::Error(code, msg)) => {
            pending.clear();
            let message = String::from_utf8_lossy(msg).into_owned();
            (State::Closed, Event::ServerError { code, message })
        }
        // Answers a CANCEL sent between responses (or during WATCH, or between packets).
        (State::Ready | State::Watching | State::Packets { .. }, Frame::Cancel) => {
            (State::Ready, Event::Cancelled)
        }
        (State::Ready, Frame::Counted(magic, count)) => {
            let Some(exp) = pending.pop_front() else {
                return Err(ResponseError::Unexpected(
                    "response while nothing was requested",
                ));
            };
            match (exp, magic) {
                (Expect::List, MAGIC_LIST) => {
                    if count > limits.max_list_entries {
                        return Err(ResponseError::TooManyEntries(count));
                    }
                    let next = if count == 0 {
                        State::End
                    } else {
                        State::Entries { left: count }
                    };
                    (next, Event::ListStart { count })
                }
                (Expect::Get { requested }, MAGIC_GET) => {
                    if count as usize > requested.len() {
                        let m = count as u8; // JTPD's count is one byte.
                        return Err(ResponseError::MoreThanRequested {
                            m,
                            n: requested.len(),
                        });
                    }
                    let get = Some(GetCheck { requested, next: 0 });
                    (packets(count, get), Event::PacketsStart { magic, count })
                }
                (Expect::Batch, MAGIC_BATCH) | (Expect::ListAndGet, MAGIC_LIST_AND_GET) => {
                    if count > limits.max_packets {
                        return Err(ResponseError::TooManyPackets(count));
                    }
                    (packets(count, None), Event::PacketsStart { magic, count })
                }
                _ => {
                    return Err(ResponseError::Unexpected(
                        "response of another request type",
                    ))
                }
            }
        }
        (
            State::Entries { left },
            Frame::Entry {
                id,
                flags,
                name,
                size,
            },
        ) => {
            let left = left - 1;
            let next = if left == 0 {
                State::End
            } else {
                State::Entries { left }
            };
            (
                next,
                Event::Entry {
                    id,
                    flags,
                    name,
                    size,
                },
            )
        }
        (State::Packets { left, mut get }, Frame::Packet { flags, len, id }) => {
            if let Some(g) = &mut get {
                match g.requested[g.next..].iter().position(|&r| r == id) {
                    Some(i) => g.next += i + 1,
                    None => return Err(ResponseError::NotASubsequence(id)),
                }
            }
            let left = left - 1;
            let next = if len == 0 {
                State::PacketEnd { left, get }
            } else {
                State::Data {
                    bytes_left: len,
                    left,
                    get,
                }
            };
            (next, Event::PacketHeader { flags, len, id })
        }
        (
            State::Watching,
            Frame::Watch {
                id,
                flags,
                name,
                size,
            },
        ) => (
            State::Watching,
            Event::Watch {
                id,
                flags,
                name,
                size,
            },
        ),
        (State::Packets { .. }, _) => {
            return Err(ResponseError::Unexpected("frame between packets"))
        }
        (State::Watching, _) => return Err(ResponseError::Unexpected("frame during watch")),
        (State::Ready, _) => return Err(ResponseError::Unexpected("frame between responses")),
        // parse_frame only yields entries in Entries and nothing in the other states.
        _ => return Err(ResponseError::Unexpected("frame")),
    };
    *state = next;
    Ok(event)
}

fn packets(count: u32, get: Option<GetCheck>) -> State {
    if count == 0 {
        State::End
    } else {
        State::Packets { left: count, get }
    }
}

#[cfg(test)]
mod tests;
