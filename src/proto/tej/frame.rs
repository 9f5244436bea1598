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
//! ([`Event::FileData`] borrows the caller's input); only a file entry header (at most
//! [`MAX_ENTRY_HEADER`] bytes) or the message (at most `max_message`) is copied when it is
//! split across reads.
//!
//! ```text
//!          10-byte header           L, name, F          F bytes
//!  Header ───FrameStart───> Entry ───FileStart───> Data ───FileData*──> FileEnd ─┐
//!    ^            │ N = 0     ^                     (F = 0 skips Data)         │
//!    │            │           └───────────── more files ───────────────────────┤
//!    │            v                                                            │
//!    │         Message <───────────────────── last file ───────────────────────┘
//!    │            │ M and M bytes
//!    │            v
//!    └─FrameEnd── End                 any limit or status error: Failed (for good)
//! ```

use std::fmt;

use crate::names::accept_exact;

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
    let len = HEADER_LEN
        + files
            .iter()
            .map(|(n, d)| 10 + n.len() + d.len())
            .sum::<usize>()
        + MESSAGE_LEN_LEN
        + message.len();
    let mut out = Vec::with_capacity(len);
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
    /// `FrameEnd` is due.
    End,
    /// After an error: every call repeats it.
    Failed(FrameError),
}

/// Outcome of gathering one field that may be split across calls.
enum Gather<'a> {
    /// The whole field, and how many bytes of this call's input it took.
    Done { taken: usize, field: &'a [u8] },
    /// All of this call's input went into the stash (this many bytes); more is needed.
    Partial(usize),
}

/// Collects a field whose total length `need` computes from its prefix (the prefix is never
/// shorter than the last answer unless the answer is final). Borrows from `buf` when the field
/// is whole there, else copies exactly the missing bytes into `stash`.
fn gather<'a>(
    stash: &'a mut Vec<u8>,
    spent: &mut bool,
    buf: &'a [u8],
    need: impl Fn(&[u8]) -> Result<usize, FrameError>,
) -> Result<Gather<'a>, FrameError> {
    if stash.is_empty() {
        let n = need(buf)?;
        if buf.len() >= n {
            return Ok(Gather::Done {
                taken: n,
                field: &buf[..n],
            });
        }
    }
    let mut taken = 0;
    loop {
        let n = need(stash)?;
        if stash.len() >= n {
            *spent = true;
            return Ok(Gather::Done {
                taken,
                field: &stash[..n],
            });
        }
        if taken == buf.len() {
            return Ok(Gather::Partial(taken));
        }
        let k = (n - stash.len()).min(buf.len() - taken);
        stash.extend_from_slice(&buf[taken..taken + k]);
        taken += k;
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Length of an entry header (L, name, F) given its first bytes.
fn entry_need(p: &[u8]) -> Result<usize, FrameError> {
    Ok(match p {
        [hi, lo, ..] => 2 + usize::from(u16::from_be_bytes([*hi, *lo])) + 8,
        _ => 2,
    })
}

/// Incremental decoder over a byte stream of back-to-back frames (see the module doc).
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// The start of a field split across calls: at most [`MAX_ENTRY_HEADER`] bytes, or 8 plus
    /// `max_message` for the message.
    stash: Vec<u8>,
    /// The stash holds a field already returned in an event; clear it on the next call.
    stash_spent: bool,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            state: State::Header,
            stash: Vec::new(),
            stash_spent: false,
        }
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
                let need = entry_need(self.held()).unwrap_or(2) as u64;
                need.saturating_sub(held).saturating_add(tail(index, files))
            }
            State::Data { index, files, left } => left.saturating_add(tail(index, files)),
            State::FileEnd { index, files } => tail(index, files),
            State::Message => {
                let h = self.held();
                if h.len() < MESSAGE_LEN_LEN {
                    MESSAGE_LEN_LEN as u64 - held
                } else {
                    be_u64(h).saturating_add(MESSAGE_LEN_LEN as u64) - held
                }
            }
            State::End => 0,
        };
        Some(n)
    }

    fn held(&self) -> &[u8] {
        if self.stash_spent {
            &[]
        } else {
            &self.stash
        }
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
        if self.stash_spent {
            self.stash.clear();
            self.stash_spent = false;
            // A big message may have grown the stash; do not keep it for the connection's life.
            if self.stash.capacity() > MAX_ENTRY_HEADER {
                self.stash = Vec::new();
            }
        }
        let Self {
            limits,
            state,
            stash,
            stash_spent,
        } = self;
        let limits = *limits;
        match *state {
            State::Failed(e) => (0, Err(e)),
            State::Header => {
                // The status byte and (in strict mode) the version are checked the moment they
                // arrive: a frame without the top bit cannot be resynchronised from.
                let peek = |i: usize| stash.get(i).or_else(|| buf.get(i - stash.len().min(i)));
                if let Some(&b) = peek(0) {
                    if b & STATUS_TOP_BIT == 0 {
                        return fail(state, FrameError::BadFrame(b));
                    }
                }
                if let Some(&v) = peek(1) {
                    if limits.strict_version && v != VERSION {
                        return fail(state, FrameError::BadVersion(v));
                    }
                }
                let (taken, h) = match gather(stash, stash_spent, buf, |_| Ok(HEADER_LEN)) {
                    Ok(Gather::Done { taken, field }) => (taken, field),
                    Ok(Gather::Partial(n)) => return (n, Ok(None)),
                    Err(e) => return fail(state, e),
                };
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
                let (taken, e) = match gather(stash, stash_spent, buf, entry_need) {
                    Ok(Gather::Done { taken, field }) => (taken, field),
                    Ok(Gather::Partial(n)) => return (n, Ok(None)),
                    Err(e) => return fail(state, e),
                };
                let name = &e[2..e.len() - 8];
                let size = be_u64(&e[e.len() - 8..]);
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
            State::Message => {
                let max = limits.max_message;
                let need = |p: &[u8]| {
                    if p.len() < MESSAGE_LEN_LEN {
                        return Ok(MESSAGE_LEN_LEN);
                    }
                    let size = be_u64(p);
                    match usize::try_from(size) {
                        Ok(m) if size <= max => Ok(MESSAGE_LEN_LEN + m),
                        _ => Err(FrameError::MessageTooLarge { size, max }),
                    }
                };
                let (taken, m) = match gather(stash, stash_spent, buf, need) {
                    Ok(Gather::Done { taken, field }) => (taken, field),
                    Ok(Gather::Partial(n)) => return (n, Ok(None)),
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

/// Stops decoding for good.
fn fail<'a>(state: &mut State, e: FrameError) -> (usize, Result<Option<Event<'a>>, FrameError>) {
    *state = State::Failed(e);
    (0, Err(e))
}
