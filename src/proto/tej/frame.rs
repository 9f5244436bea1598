//! TEJ frames (tej.md 1.2-1.4, 4.2, 5): encoders for each piece of a frame and an incremental
//! decoder over a byte stream of back-to-back frames. No I/O.
//!
//! Encoders append to a `Vec<u8>`; file data never passes through them: the driver writes
//! [`put_frame_header`], then per file [`put_file_header`] followed by the file's bytes straight
//! from the mapping or the disk, then [`put_message`]. [`frame`] builds a whole small frame.
//!
//! The decoder checks every length against [`Limits`] *before* the bytes it guards are taken:
//! the status byte as soon as it arrives, N right after the 10-byte header, F right after the
//! name and size fields, M right after its 8 bytes. File data is never buffered
//! ([`Event::FileData`] borrows the caller's input); only a header, a file entry header (at most
//! [`MAX_ENTRY_HEADER`] bytes) or the message (at most `max_message`) is copied, into the
//! decoder's [`Stash`], when it is split across reads.
//!
//! ```text
//!            FrameStart            FileStart               FileData*
//!  Header ──(10 bytes)──> Entry ──(L, name, F)──> Data ──(F bytes)──> FileEnd ──┐
//!   ^  │                   ^                      (F = 0: straight to FileEnd)  │
//!   │  │ N = 0             └───────────────── more files ────────────────────────┤
//!   │  v                                                                         │
//!   │ Message <───────────────────────────── last file ──────────────────────────┘
//!   │  │ Message (M, then M bytes)
//!   │  v
//!   └─ End: FrameEnd               a limit or status error: Failed, for good
//! ```

use std::fmt;

use crate::names::accept_exact;
use crate::wire::{Cursor, FieldTooLong, Gathered, Stash};

/// Highest custom status ferry's API accepts (bits 6..0 of the status byte).
pub const MAX_STATUS: u8 = 127;
/// The protocol version ferry writes.
pub const VERSION: u8 = 1;
/// Status byte, version and N.
pub const HEADER_LEN: usize = 10;
/// Bit 7 of the status byte, set on every valid frame.
pub const STATUS_TOP_BIT: u8 = 0x80;
/// Longest file entry header the decoder may have to hold whole: L, a 65,535-byte name, F.
pub const MAX_ENTRY_HEADER: usize = 2 + u16::MAX as usize + 8;
/// Length of the message length field.
const MESSAGE_LEN_LEN: usize = 8;

/// Custom statuses with a meaning in ferry's conventions (tej.md section 3).
pub mod status {
    /// Files to store, from either side (also the answer to a request).
    pub const DELIVER: u8 = 0;
    /// Acknowledgement of a deliver frame.
    pub const ACK: u8 = 1;
    /// Keep-alive; never answered.
    pub const PING: u8 = 2;
    /// Error, message `{"error":..,"detail":..}`.
    pub const ERROR: u8 = 3;
    /// Request for catalog files, message `{"get":[..]}`.
    pub const REQUEST: u8 = 4;
    /// List request, message empty or `{"after":..,"limit":..}`.
    pub const LIST: u8 = 5;
    /// One page of the catalog listing.
    pub const LISTING: u8 = 6;
}

/// Appends the 10-byte frame header: status byte (top bit set), version 1, N.
///
/// # Panics
/// If `status` is over [`MAX_STATUS`] (a caller bug: tej-protoc would OR it into the byte).
pub fn put_frame_header(status: u8, files: u64, out: &mut Vec<u8>) {
    put_frame_header_with_version(status, VERSION, files, out);
}

/// Like [`put_frame_header`] with any version byte. Ferry's own frames always use
/// [`put_frame_header`]; this exists for tests and interop checks (tej.md 1.3).
///
/// # Panics
/// If `status` is over [`MAX_STATUS`].
pub fn put_frame_header_with_version(status: u8, version: u8, files: u64, out: &mut Vec<u8>) {
    assert!(
        status <= MAX_STATUS,
        "tej custom status {status} is over 127"
    );
    out.push(STATUS_TOP_BIT | status);
    out.push(version);
    out.extend_from_slice(&files.to_be_bytes());
}

/// Appends L (the name's length in UTF-8 bytes), the name and F; `size` bytes of data must
/// follow.
///
/// # Panics
/// If the name is longer than 65,535 bytes (ferry never sends such names: it checks first).
pub fn put_file_header(name: &str, size: u64, out: &mut Vec<u8>) {
    let len = u16::try_from(name.len()).expect("tej file names are at most 65,535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&size.to_be_bytes());
}

/// Appends M and the message (M = 0 for no message; the field is always present).
pub fn put_message(message: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(message.len() as u64).to_be_bytes());
    out.extend_from_slice(message);
}

/// A whole frame held in memory: for replies and small frames, not for file transfers.
///
/// # Panics
/// As [`put_frame_header`] and [`put_file_header`].
pub fn frame(status: u8, files: &[(&str, &[u8])], message: &[u8]) -> Vec<u8> {
    // No capacity computed ahead: a sum used only as a hint is code no test can check (every
    // mutant of it was equivalent), and these frames are small.
    let mut out = Vec::new();
    put_frame_header(status, files.len() as u64, &mut out);
    for (name, data) in files {
        put_file_header(name, data.len() as u64, &mut out);
        out.extend_from_slice(data);
    }
    put_message(message, &mut out);
    out
}

/// Bounds on what a peer may announce (tej.md 4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most files per frame (default 10,000); more is `too-many-files`.
    pub max_files: u64,
    /// Longest acceptable name in bytes (default 255); longer names are still read whole (at
    /// most 65,535 bytes) but reported with `name_ok: false`.
    pub max_name: usize,
    /// Largest file (default 64 GiB); larger is `too-large`.
    pub max_file_size: u64,
    /// Largest message, held in memory (default 16 MiB); larger is `too-large`.
    pub max_message: u64,
    /// Reject any version byte but 1 as `bad-frame` (default false: upstream never checks it).
    pub strict_version: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 10_000,
            max_name: 255,
            max_file_size: 64 << 30,
            max_message: 16 << 20,
            strict_version: false,
        }
    }
}

/// One step through a frame, as the receiver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The header: custom status 0..=127, the version byte as sent, N.
    FrameStart { status: u8, version: u8, files: u64 },
    /// A file entry begins. `name` is the raw name bytes (up to 65,535, always read whole even
    /// when over `max_name`); `name_ok` tells whether it passes tej.md section 5 (and
    /// `max_name`): the driver stores the data only then, else it hashes and discards it
    /// (`bad-name`). `index` counts from 0.
    FileStart {
        index: u64,
        name: &'a [u8],
        name_ok: bool,
        size: u64,
    },
    /// Bytes of the current file: the first `data.len()` bytes of the buffer given to this call
    /// (consumed by the decoder). Emitted until `size` bytes were delivered; never empty.
    FileData(&'a [u8]),
    /// The current file's last byte was delivered (also right after a `FileStart` of size 0).
    FileEnd,
    /// The whole message (held in memory, at most `max_message` bytes); empty when M = 0.
    /// Emitted once per frame, after the last file.
    ///
    /// A decoder made with [`Decoder::with_streamed_messages`] holds no message: it emits the
    /// message in pieces borrowed from the input as they arrive (one or more non-empty pieces
    /// totalling M, in order), or once with an empty slice when M = 0.
    Message(&'a [u8]),
    /// The frame is complete; the next byte starts a new frame.
    FrameEnd,
}

/// What the peer did wrong; the connection ends with the error frame of [`FrameError::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A status byte without the top bit (the byte as received).
    BadFrame(u8),
    /// A version byte other than 1 in strict mode.
    BadVersion(u8),
    /// N over `max_files`.
    TooManyFiles(u64),
    /// F over `max_file_size` for the file at `index` (from 0).
    FileTooLarge { index: u64, size: u64, max: u64 },
    /// M over `max_message`.
    MessageTooLarge { size: u64, max: u64 },
}

impl FrameError {
    /// The error code of tej.md 3.3 to send back before closing.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::BadFrame(_) | FrameError::BadVersion(_) => "bad-frame",
            FrameError::TooManyFiles(_) => "too-many-files",
            FrameError::FileTooLarge { .. } | FrameError::MessageTooLarge { .. } => "too-large",
        }
    }

    /// Free text for the error frame's `detail` (files are numbered from 1 there).
    pub fn detail(&self) -> String {
        match *self {
            FrameError::BadFrame(b) => format!("status byte {b:#04x} lacks the top bit"),
            FrameError::BadVersion(v) => format!("version {v} is not 1"),
            FrameError::TooManyFiles(n) => format!("{n} files exceed max_files"),
            FrameError::FileTooLarge { index, size, max } => format!(
                "file {}: length {size} exceeds max_file_size {max}",
                index.saturating_add(1)
            ),
            FrameError::MessageTooLarge { size, max } => {
                format!("message length {size} exceeds max_message {max}")
            }
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tej frame: {}", self.detail())
    }
}

impl std::error::Error for FrameError {}

/// The decoder's stash holds the longest entry header or the longest message the limits allow,
/// and the message's length is refused first (with its exact value) when over `max_message`; so
/// only a message can be too long for the stash, and this is that refusal.
impl From<FieldTooLong> for FrameError {
    fn from(e: FieldTooLong) -> Self {
        let len = |n: usize| n.saturating_sub(MESSAGE_LEN_LEN) as u64;
        FrameError::MessageTooLarge {
            size: len(e.len),
            max: len(e.max),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames, or inside the 10-byte header (the stash holds its start).
    Header,
    /// Expecting the entry header of file `index` of `files`.
    Entry { index: u64, files: u64 },
    /// `left` bytes of file `index` still to deliver.
    Data { index: u64, files: u64, left: u64 },
    /// `FileEnd` of file `index` is due.
    FileEnd { index: u64, files: u64 },
    /// Expecting M and the message.
    Message,
    /// Streamed messages only: `left` message bytes still to deliver.
    MessageData { left: u64 },
    /// `FrameEnd` is due.
    End,
    /// After an error: every call repeats it.
    Failed(FrameError),
}

/// The big-endian u64 in `b`: the 8-byte N or F of a field the stash returned whole.
fn be_u64(b: &[u8]) -> u64 {
    b.iter().fold(0, |v, &x| v << 8 | u64::from(x))
}

/// Length of the 10-byte header, refusing a status byte without the top bit (and in strict mode
/// a version other than 1) the moment it arrives: a frame without the top bit cannot be
/// resynchronised from.
fn header_need(limits: &Limits, p: &[u8]) -> Result<usize, FrameError> {
    let mut c = Cursor::new(p);
    if let Some(b) = c.u8() {
        if b & STATUS_TOP_BIT == 0 {
            return Err(FrameError::BadFrame(b));
        }
    }
    if let Some(v) = c.u8() {
        if limits.strict_version && v != VERSION {
            return Err(FrameError::BadVersion(v));
        }
    }
    Ok(HEADER_LEN)
}

/// Length of an entry header (L, name, F) given its first bytes.
fn entry_need(p: &[u8]) -> usize {
    match Cursor::new(p).u16_be() {
        Some(l) => 2 + usize::from(l) + 8,
        None => 2,
    }
}

/// Length of M and the message given their first bytes; M over `max` is refused before any
/// message byte is taken.
fn message_need(max: u64, p: &[u8]) -> Result<usize, FrameError> {
    let Some(size) = Cursor::new(p).u64_be() else {
        return Ok(MESSAGE_LEN_LEN);
    };
    let too_large = FrameError::MessageTooLarge { size, max };
    if size > max {
        return Err(too_large);
    }
    usize::try_from(size)
        .ok()
        .and_then(|m| m.checked_add(MESSAGE_LEN_LEN))
        .ok_or(too_large)
}

/// Length of M alone (streamed messages): M over `max` is refused before any message byte.
fn message_len_need(max: u64, p: &[u8]) -> Result<usize, FrameError> {
    match Cursor::new(p).u64_be() {
        Some(size) if size > max => Err(FrameError::MessageTooLarge { size, max }),
        _ => Ok(MESSAGE_LEN_LEN),
    }
}

/// Incremental decoder over a byte stream of back-to-back frames (see the module doc).
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// Messages are handed out in pieces as they arrive instead of held whole.
    stream_messages: bool,
    /// The start of a field split across calls: at most [`MAX_ENTRY_HEADER`] bytes, or 8 plus
    /// `max_message` for the message.
    stash: Stash,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        let max_message = usize::try_from(limits.max_message).unwrap_or(usize::MAX);
        let max_field = MAX_ENTRY_HEADER.max(max_message.saturating_add(MESSAGE_LEN_LEN));
        Decoder {
            limits,
            state: State::Header,
            stream_messages: false,
            stash: Stash::new(max_field),
        }
    }

    /// A decoder that never holds a message: [`Event::Message`] comes in pieces borrowed from
    /// the input (see there), so a peer's message costs no memory however large `max_message`
    /// is. M is still checked against `max_message` before any message byte is taken. A server
    /// that must read a message whole (a request) gathers the pieces itself, under its own
    /// bound.
    pub fn with_streamed_messages(limits: Limits) -> Decoder {
        Decoder {
            limits,
            state: State::Header,
            stream_messages: true,
            stash: Stash::new(MAX_ENTRY_HEADER),
        }
    }

    /// Whether messages come in pieces ([`Decoder::with_streamed_messages`]).
    pub fn streams_messages(&self) -> bool {
        self.stream_messages
    }

    /// The limits this decoder checks.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// True between frames (EOF here is a clean close; elsewhere it truncates a frame).
    pub fn is_between_frames(&self) -> bool {
        self.state == State::Header && self.held().is_empty()
    }

    /// True while a frame is partly read (the stall rule applies), false between frames and
    /// after an error.
    pub fn in_frame(&self) -> bool {
        !self.is_between_frames() && !matches!(self.state, State::Failed(_))
    }

    /// The fewest bytes that can complete the current frame, for the stall rule ("64 KiB or
    /// the rest of the frame"): exact once the message is reached, a lower bound before (file
    /// sizes not yet announced count as 0). `None` between frames and after an error.
    pub fn min_bytes_to_frame_end(&self) -> Option<u64> {
        let held = self.held().len() as u64;
        let tail = |index: u64, files: u64| {
            files
                .saturating_sub(index.saturating_add(1))
                .saturating_mul(10)
                .saturating_add(MESSAGE_LEN_LEN as u64)
        };
        let n = match self.state {
            State::Header if held == 0 => return None,
            State::Failed(_) => return None,
            State::Header => (HEADER_LEN as u64 - held) + MESSAGE_LEN_LEN as u64,
            State::Entry { index, files } => {
                let need = entry_need(self.held()) as u64;
                need.saturating_sub(held).saturating_add(tail(index, files))
            }
            State::Data { index, files, left } => left.saturating_add(tail(index, files)),
            State::FileEnd { index, files } => tail(index, files),
            State::Message => match Cursor::new(self.held()).u64_be() {
                None => MESSAGE_LEN_LEN as u64 - held,
                Some(m) => m
                    .saturating_add(MESSAGE_LEN_LEN as u64)
                    .saturating_sub(held),
            },
            State::MessageData { left } => left,
            State::End => 0,
        };
        Some(n)
    }

    fn held(&self) -> &[u8] {
        self.stash.held()
    }

    /// Decodes from `buf`; returns (bytes consumed, event).
    ///
    /// `Ok(None)` means every byte offered was taken (a split field is kept inside the decoder)
    /// and more input is needed; with an empty `buf` it is (0, `Ok(None)`) unless an event
    /// needing no input is due. `FileEnd` and `FrameEnd` come with 0 bytes consumed, so call
    /// again until `Ok(None)`. On an error the count is 0 and every further call repeats the
    /// error: answer with its code and close.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> (usize, Result<Option<Event<'a>>, FrameError>) {
        // Forget the field last handed out now rather than at the next gather: a big message
        // must not stay allocated while the connection idles.
        self.stash.recycle();
        let Self {
            limits,
            state,
            stream_messages,
            stash,
        } = self;
        let limits = *limits;
        match *state {
            State::Failed(e) => (0, Err(e)),
            State::Header => {
                let (taken, h) = match stash.gather(buf, |p| header_need(&limits, p)) {
                    Ok(Gathered::Whole { taken, field }) => (taken, field),
                    Ok(Gathered::Partial) => return (buf.len(), Ok(None)),
                    Err(e) => return fail(state, e),
                };
                // `h` is the whole header, HEADER_LEN bytes.
                let files = be_u64(&h[2..]);
                if files > limits.max_files {
                    return fail(state, FrameError::TooManyFiles(files));
                }
                *state = if files == 0 {
                    State::Message
                } else {
                    State::Entry { index: 0, files }
                };
                let ev = Event::FrameStart {
                    status: h[0] & !STATUS_TOP_BIT,
                    version: h[1],
                    files,
                };
                (taken, Ok(Some(ev)))
            }
            State::Entry { index, files } => {
                let (taken, e) = match stash.gather(buf, |p| Ok(entry_need(p))) {
                    Ok(Gathered::Whole { taken, field }) => (taken, field),
                    Ok(Gathered::Partial) => return (buf.len(), Ok(None)),
                    Err(e) => return fail(state, e),
                };
                // `e` is the whole entry header: L, L name bytes, F.
                let (name, size) = e[2..].split_at(e.len() - 10);
                let size = be_u64(size);
                if size > limits.max_file_size {
                    let max = limits.max_file_size;
                    return fail(state, FrameError::FileTooLarge { index, size, max });
                }
                *state = if size == 0 {
                    State::FileEnd { index, files }
                } else {
                    State::Data {
                        index,
                        files,
                        left: size,
                    }
                };
                let name_ok = accept_exact(name, limits.max_name).is_some();
                let ev = Event::FileStart {
                    index,
                    name,
                    name_ok,
                    size,
                };
                (taken, Ok(Some(ev)))
            }
            State::Data { index, files, left } => {
                if buf.is_empty() {
                    return (0, Ok(None));
                }
                // `left` may exceed usize on 32-bit targets; the min is taken in u64.
                let n = (buf.len() as u64).min(left) as usize;
                let left = left - n as u64;
                *state = if left == 0 {
                    State::FileEnd { index, files }
                } else {
                    State::Data { index, files, left }
                };
                (n, Ok(Some(Event::FileData(&buf[..n]))))
            }
            State::FileEnd { index, files } => {
                let next = index + 1;
                *state = if next < files {
                    State::Entry { index: next, files }
                } else {
                    State::Message
                };
                (0, Ok(Some(Event::FileEnd)))
            }
            State::Message if *stream_messages => {
                let max = limits.max_message;
                let (taken, m) = match stash.gather(buf, |p| message_len_need(max, p)) {
                    Ok(Gathered::Whole { taken, field }) => (taken, field),
                    Ok(Gathered::Partial) => return (buf.len(), Ok(None)),
                    Err(e) => return fail(state, e),
                };
                // `m` is M, 8 bytes, already checked against `max_message`.
                let left = be_u64(m);
                if left == 0 {
                    *state = State::End;
                    return (taken, Ok(Some(Event::Message(&[]))));
                }
                *state = State::MessageData { left };
                let (n, ev) = message_piece(state, &buf[taken..], left);
                (taken + n, ev)
            }
            State::MessageData { left } => message_piece(state, buf, left),
            State::Message => {
                let max = limits.max_message;
                let (taken, m) = match stash.gather(buf, |p| message_need(max, p)) {
                    Ok(Gathered::Whole { taken, field }) => (taken, field),
                    Ok(Gathered::Partial) => return (buf.len(), Ok(None)),
                    Err(e) => return fail(state, e),
                };
                *state = State::End;
                (taken, Ok(Some(Event::Message(&m[MESSAGE_LEN_LEN..]))))
            }
            State::End => {
                *state = State::Header;
                (0, Ok(Some(Event::FrameEnd)))
            }
        }
    }
}

/// The next piece of a streamed message: up to `left` bytes of `buf`.
fn message_piece<'a>(
    state: &mut State,
    buf: &'a [u8],
    left: u64,
) -> (usize, Result<Option<Event<'a>>, FrameError>) {
    if buf.is_empty() {
        return (0, Ok(None));
    }
    let n = (buf.len() as u64).min(left) as usize;
    let left = left - n as u64;
    *state = if left == 0 {
        State::End
    } else {
        State::MessageData { left }
    };
    (n, Ok(Some(Event::Message(&buf[..n]))))
}

/// Stops decoding for good.
fn fail<'a>(state: &mut State, e: FrameError) -> (usize, Result<Option<Event<'a>>, FrameError>) {
    *state = State::Failed(e);
    (0, Err(e))
}

/// The byte vectors of `specs/vectors/tej/` (manifest.json and ferry_manifest.json), embedded so
/// the tests need nothing outside the crate. Names are the raw bytes; data is known by SHA-256.
#[cfg(test)]
pub(crate) mod vectors {
    pub struct VFile {
        pub name: &'static [u8],
        pub size: u64,
        pub sha256: &'static str,
    }
    pub struct VFrame {
        pub offset: usize,
        pub length: usize,
        pub status: u8,
        pub version: u8,
        pub files: &'static [VFile],
        pub message: &'static [u8],
    }
    pub struct Vector {
        pub name: &'static str,
        pub hex: &'static str,
        /// Empty for `BUGGY_nonascii_name` (unparseable).
        pub frames: &'static [VFrame],
    }

    #[rustfmt::skip]
    pub const VECTORS: &[Vector] = &[
        Vector { name: "empty", hex: "800100000000000000000000000000000000", frames: &[VFrame { offset: 0, length: 18, status: 0, version: 1, files: &[], message: b"" }] },
        Vector { name: "ping", hex: "820100000000000000000000000000000000", frames: &[VFrame { offset: 0, length: 18, status: 2, version: 1, files: &[], message: b"" }] },
        Vector { name: "message_hello", hex: "80010000000000000000000000000000000568656c6c6f", frames: &[VFrame { offset: 0, length: 23, status: 0, version: 1, files: &[], message: b"hello" }] },
        Vector { name: "file_only", hex: "800100000000000000010005612e7478740000000000000004414141410000000000000000", frames: &[VFrame { offset: 0, length: 37, status: 0, version: 1, files: &[VFile { name: b"a.txt", size: 4, sha256: "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201" }], message: b"" }] },
        Vector { name: "two_files_and_message", hex: "850100000000000000020009736d616c6c2e747874000000000000000a68656c6c6f2074656a0a0009656d7074792e62696e000000000000000000000000000000036d7367", frames: &[VFrame { offset: 0, length: 69, status: 5, version: 1, files: &[VFile { name: b"small.txt", size: 10, sha256: "e2b55c8ad85869458179570355abea2234dd3596aacae4e4063eec27139b99c9" }, VFile { name: b"empty.bin", size: 0, sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" }], message: b"msg" }] },
        Vector { name: "status_127_version_0", hex: "ff000000000000000000000000000000000178", frames: &[VFrame { offset: 0, length: 19, status: 127, version: 0, files: &[], message: b"x" }] },
        Vector { name: "empty_name", hex: "8001000000000000000100000000000000000004646174610000000000000000", frames: &[VFrame { offset: 0, length: 32, status: 0, version: 1, files: &[VFile { name: b"", size: 4, sha256: "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7" }], message: b"" }] },
        Vector { name: "BUGGY_nonascii_name", hex: "800100000000000000010005c3a92e747874000000000000000258590000000000000000", frames: &[] },
        Vector { name: "ferry_ack_file_only", hex: "8101000000000000000000000000000000977b2266696c6573223a5b7b226e616d65223a22612e747874222c2273697a65223a342c22736861323536223a2236336331646439353166666564663666376664393638616434656661333962386564353834663136326634366537313531313465653138346638646539323031222c2273746f7265645f6173223a22612e747874227d5d2c226d6573736167655f6279746573223a307d", frames: &[VFrame { offset: 0, length: 169, status: 1, version: 1, files: &[], message: b"{\"files\":[{\"name\":\"a.txt\",\"size\":4,\"sha256\":\"63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201\",\"stored_as\":\"a.txt\"}],\"message_bytes\":0}" }] },
        Vector { name: "ferry_error_too_large", hex: "8301000000000000000000000000000000657b226572726f72223a22746f6f2d6c61726765222c2264657461696c223a2266696c6520313a206c656e67746820383335383638303930383339393634303537362065786365656473206d61785f66696c655f73697a65203638373139343736373336227d", frames: &[VFrame { offset: 0, length: 119, status: 3, version: 1, files: &[], message: b"{\"error\":\"too-large\",\"detail\":\"file 1: length 8358680908399640576 exceeds max_file_size 68719476736\"}" }] },
        Vector { name: "ferry_request_get", hex: "8401000000000000000000000000000000117b22676574223a5b22612e747874225d7d", frames: &[VFrame { offset: 0, length: 35, status: 4, version: 1, files: &[], message: b"{\"get\":[\"a.txt\"]}" }] },
        Vector { name: "ferry_request_answer", hex: "800100000000000000010005612e74787400000000000000044141414100000000000000717b2266696c6573223a5b7b226e616d65223a22612e747874222c2273697a65223a342c22736861323536223a2236336331646439353166666564663666376664393638616434656661333962386564353834663136326634366537313531313465653138346638646539323031227d5d7d", frames: &[VFrame { offset: 0, length: 150, status: 0, version: 1, files: &[VFile { name: b"a.txt", size: 4, sha256: "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201" }], message: b"{\"files\":[{\"name\":\"a.txt\",\"size\":4,\"sha256\":\"63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201\"}]}" }] },
        Vector { name: "ferry_list_request", hex: "850100000000000000000000000000000000", frames: &[VFrame { offset: 0, length: 18, status: 5, version: 1, files: &[], message: b"" }] },
        Vector { name: "ferry_listing", hex: "86010000000000000000000000000000007d7b2266696c6573223a5b7b226e616d65223a22612e747874222c2273697a65223a342c22736861323536223a2236336331646439353166666564663666376664393638616434656661333962386564353834663136326634366537313531313465653138346638646539323031227d5d2c226e657874223a6e756c6c7d", frames: &[VFrame { offset: 0, length: 143, status: 6, version: 1, files: &[], message: b"{\"files\":[{\"name\":\"a.txt\",\"size\":4,\"sha256\":\"63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201\"}],\"next\":null}" }] },
        Vector { name: "concat_file_ping_message", hex: "800100000000000000010005612e747874000000000000000441414141000000000000000082010000000000000000000000000000000080010000000000000000000000000000000568656c6c6f", frames: &[VFrame { offset: 0, length: 37, status: 0, version: 1, files: &[VFile { name: b"a.txt", size: 4, sha256: "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201" }], message: b"" }, VFrame { offset: 37, length: 18, status: 2, version: 1, files: &[], message: b"" }, VFrame { offset: 55, length: 23, status: 0, version: 1, files: &[], message: b"hello" }] },
    ];

    pub fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    pub fn get(name: &str) -> &'static Vector {
        VECTORS.iter().find(|v| v.name == name).unwrap()
    }

    pub fn bytes(name: &str) -> Vec<u8> {
        unhex(get(name).hex)
    }
}

#[cfg(test)]
mod tests;
