//! The TEJ server connection as a pure state machine (tej.md sections 3, 4 and 6): bytes and the
//! current time in; storage steps, replies, timeouts and log events out. No socket, file, thread
//! or clock is touched here: the driver (`driver::tej::server`) does what the machine says.
//!
//! Policy, per status of a received frame (tej.md 3):
//!
//! | status | files | message | reply |
//! |---|---|---|---|
//! | 0 deliver | stored | first 200 bytes kept for the log | one acknowledgement (status 1) |
//! | 2 ping | discarded | discarded | none; resets the idle timer only |
//! | 4 request | discarded | held whole (server-wide budget) | the files (status 0) or an error |
//! | 5 list | discarded | held whole (server-wide budget) | one listing page (status 6) |
//! | 1, 3, 6 | discarded | discarded | none (ferry never answers a reply) |
//! | 7..127 | stored | first 200 bytes kept for the log | none (the status is the peer's) |
//!
//! A file is stored only when its name passes tej.md 5 and does not start with `.` (the catalog
//! serves no dot names, so storing one would acknowledge a file nobody can fetch); otherwise its
//! data is hashed and discarded and its acknowledgement entry says `bad-name`.
//!
//! File data never passes through the machine as a copy: [`Step::Write`] borrows the caller's
//! input, and a request answer is [`Transmit::File`] ("send this catalog file"), which the
//! driver moves from the mapping to the socket.
//!
//! ```text
//!                   first byte                       FrameEnd: reply decided
//!   Between ──────────────────────► InFrame ───────────────────────────────► Between
//!   (idle 120 s; pings reset it;      │  FileStart (stored): Step::Open ──► file_opened
//!    no frame but pings for 600 s:    │  FileData (stored):  Step::Write
//!    timeout)                         │  FileEnd (stored):   Step::Commit ─► file_committed
//!      │                              │  (stall rule: 64 KiB or the frame's end per 30 s)
//!      │ EOF: Closed                  │
//!      ▼                              ▼ frame error, timeout, EOF, refused file
//!   Closed ◄──────────────── error frame queued (tej.md 3.3), then Closed
//! ```
//!
//! The driver loop: feed input with [`Connection::handle_input`] until it returns `None`,
//! answering each [`Step`] (the storage calls are synchronous: `Open` is answered by
//! [`Connection::file_opened`] before anything else, `Commit` by
//! [`Connection::file_committed`]); send whatever [`Connection::poll_transmit`] gives; read with
//! the deadline of [`Connection::poll_timeout`] and call [`Connection::handle_timeout`] when it
//! passes, [`Connection::handle_eof`] at end of stream. Once [`Connection::is_finished`], drop
//! any open file (its temporary goes), send the last transmits and close.
//!
//! Out of scope: sockets, ingest (reserving space, temporaries, hashing of stored files,
//! publishing), catalog snapshots and the opening of catalog files (a [`Lookup`] does that).
//!
//! An acknowledged deliver frame, byte for byte (`file_only` in, `ferry_ack_file_only` out):
//!
//! ```
//! use std::time::Instant;
//! use ferry::proto::tej::server::{Config, Connection, Lookup, Resolved, Step, Stored, Transmit};
//! use ferry::proto::tej::messages::ManifestEntry;
//!
//! struct NoCatalog;
//! impl Lookup for NoCatalog {
//!     type File = ();
//!     fn resolve(&mut self, _item: &str) -> Resolved<()> { Resolved::Missing }
//!     fn page(&mut self, _after: &str, _limit: usize) -> Vec<ManifestEntry> { Vec::new() }
//! }
//!
//! let now = Instant::now();
//! let mut c = Connection::<()>::new(Config::default(), now);
//! let input = b"\x80\x01\0\0\0\0\0\0\0\x01\0\x05a.txt\0\0\0\0\0\0\0\x04AAAA\0\0\0\0\0\0\0\0";
//! let mut pos = 0;
//! let mut written = Vec::new();
//! loop {
//!     let (n, step) = c.handle_input(now, &input[pos..], &mut NoCatalog);
//!     pos += n;
//!     match step {
//!         None => break,
//!         Some(Step::Open { name, size }) => {
//!             assert_eq!((name, size), ("a.txt", 4));
//!             c.file_opened(Ok(()));
//!         }
//!         Some(Step::Write(data)) => written.extend_from_slice(data),
//!         Some(Step::Commit) => c.file_committed(Ok(Stored {
//!             stored_as: "a.txt".into(),
//!             sha256: "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201".into(),
//!         })),
//!     }
//! }
//! assert_eq!((pos, written.as_slice()), (37, &b"AAAA"[..]));
//! let Some(Transmit::Bytes(ack)) = c.poll_transmit() else { panic!("no ack") };
//! assert_eq!(&ack[..18], b"\x81\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x97");
//! assert_eq!(ack.len(), 169);
//! assert!(c.poll_transmit().is_none() && !c.is_finished());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use super::frame::{self, status, Decoder, Event as Decoded, FrameError, Limits};
use super::messages::{
    code, Ack, AckEntry, ErrorMsg, ListRequest, Listing, Manifest, ManifestEntry,
};
use crate::proto::budget::{Grant, MemoryBudget};
use crate::wire::hex::encode as hex;

/// Bytes of a deliver or application frame's message kept for the log.
pub const LOG_MESSAGE_BYTES: usize = 200;
/// Default of [`Config::held_messages`]: request and list messages held at once by all
/// connections of a server.
pub const DEFAULT_HELD_MESSAGES: u64 = 64 << 20;
/// Default of [`Config::max_idle_life`].
pub const DEFAULT_MAX_IDLE_LIFE: Duration = Duration::from_secs(600);

/// The machine's settings (tej.md 4.2). One per server; connections clone it (the budget is
/// shared by the clones).
#[derive(Clone, Debug)]
pub struct Config {
    /// What a frame may announce.
    pub limits: Limits,
    /// Silence allowed between frames; any byte (a ping too) restarts it. Default 120 s.
    pub idle_timeout: Duration,
    /// Stall rule: a frame must advance by `stall_bytes` (or end) within each window. Default
    /// 30 s.
    pub stall_window: Duration,
    /// Default 64 KiB.
    pub stall_bytes: u64,
    /// Longest a connection may go without a frame that does something (deliver, request, list,
    /// application status): pings, acknowledgements, errors and listings never extend it, so a
    /// peer cannot hold a connection for ever by pinging. Default 600 s.
    pub max_idle_life: Duration,
    /// Request and list messages (statuses 4 and 5) are held whole until their frame ends;
    /// every connection of a server draws them from this one budget (default 64 MiB). A message
    /// the budget cannot cover gets `busy` and a close. Other messages are never held.
    pub held_messages: MemoryBudget,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(120),
            stall_window: Duration::from_secs(30),
            stall_bytes: 64 * 1024,
            max_idle_life: DEFAULT_MAX_IDLE_LIFE,
            held_messages: MemoryBudget::new(DEFAULT_HELD_MESSAGES),
        }
    }
}

/// A request item resolved against the catalog (tej.md 3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved<F> {
    /// The file to send: `file` is the driver's handle (an open mapping, say); `name` is the
    /// name it goes out under, `size` the bytes that will be sent, `sha256` its catalog id in
    /// lowercase hex.
    Found {
        file: F,
        name: String,
        size: u64,
        sha256: String,
    },
    /// Nothing by that SHA-256, path or name (or it can no longer be opened).
    Missing,
    /// A base name that names several files.
    Ambiguous,
}

/// What the machine asks of a catalog. The driver implements it over a snapshot (and opens the
/// files it resolves); tests implement it over a list.
pub trait Lookup {
    /// The driver's handle on a file to send.
    type File;
    /// One request item: 64 lowercase hex digits (a SHA-256), an exact catalog path, or a base
    /// name matching exactly one entry. Must cost O(log catalog).
    fn resolve(&mut self, item: &str) -> Resolved<Self::File>;
    /// Up to `limit` catalog files after path `after` (`""`: from the first), in byte order of
    /// path. Must cost O(limit + log catalog).
    fn page(&mut self, after: &str, limit: usize) -> Vec<ManifestEntry>;
}

/// A file the driver stored (answer to [`Step::Commit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The catalog path now serving it (its final name).
    pub stored_as: String,
    /// Lowercase hex SHA-256 of the bytes received.
    pub sha256: String,
}

/// Why the driver could not store a file; the connection ends with this error frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The file does not fit (free space minus the reserve, or what this peer may reserve):
    /// `no-space`.
    NoSpace(String),
    /// A local I/O failure: `internal`.
    Internal(String),
}

impl StoreError {
    fn code(&self) -> &'static str {
        match self {
            StoreError::NoSpace(_) => code::NO_SPACE,
            StoreError::Internal(_) => code::INTERNAL,
        }
    }

    fn detail(&self) -> &str {
        match self {
            StoreError::NoSpace(d) | StoreError::Internal(d) => d,
        }
    }
}

/// What the driver must do now with the input just fed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A file to store begins: reserve its space and open its temporary, then call
    /// [`Connection::file_opened`]. `name` passed tej.md 5 and has no leading dot.
    Open { name: &'a str, size: u64 },
    /// Bytes of the open file, borrowed from the input: write them (on failure call
    /// [`Connection::file_failed`]).
    Write(&'a [u8]),
    /// The open file's last byte was written: verify, commit and publish it, then call
    /// [`Connection::file_committed`].
    Commit,
}

/// Bytes to send, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<F> {
    /// Write these bytes (a reply frame, or a part of one).
    Bytes(Vec<u8>),
    /// Write `len` bytes of this catalog file from `offset`, straight from its mapping. If the
    /// file no longer holds them, close the connection at once: the frame cannot be finished.
    File { file: F, offset: u64, len: u64 },
}

/// What happened, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A frame began (pings are not reported).
    Frame { status: u8, version: u8, files: u64 },
    /// The message of a deliver or application frame: its length and first
    /// [`LOG_MESSAGE_BYTES`] bytes (the rest was never held).
    Message { len: u64, head: Vec<u8> },
    /// A file's data was read and discarded (`bad-name`, or a status that stores nothing).
    Discarded { name: Vec<u8>, size: u64 },
    /// An application frame (7..127) ended: files stored, not acknowledged.
    Application { status: u8, stored: usize },
    /// The connection ends: the error frame sent (`code`), or `None` for a clean end of stream.
    Closed {
        code: Option<&'static str>,
        detail: String,
    },
}

/// Which deadline [`Connection::poll_timeout`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    Idle,
    Stall,
    Life,
}

/// The file being received.
#[derive(Debug)]
struct FileState {
    raw_name: Vec<u8>,
    size: u64,
    /// Stored: the name it is stored under, and whether the driver opened it.
    store: Option<String>,
    /// Hash of discarded data whose acknowledgement entry needs it (status 0, bad names).
    discard: Option<Sha256>,
    name_ok: bool,
}

/// The frame being received.
#[derive(Debug)]
struct FrameState {
    status: u8,
    entries: Vec<AckEntry>,
    stored: usize,
    file: Option<FileState>,
    /// Statuses 4 and 5: the message, held whole under `grant`.
    held: Vec<u8>,
    grant: Option<Grant>,
    /// Other statuses: M so far and the first bytes, for the log.
    message_len: u64,
    head: Vec<u8>,
}

impl FrameState {
    fn stores(&self) -> bool {
        self.status == status::DELIVER || self.status > status::LISTING
    }

    fn holds_message(&self) -> bool {
        matches!(self.status, status::REQUEST | status::LIST)
    }

    /// Frames that do something: only these extend the connection's idle life.
    fn is_active(&self) -> bool {
        !matches!(
            self.status,
            status::ACK | status::PING | status::ERROR | status::LISTING
        )
    }
}

/// A driver answer the machine waits for before it reads on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Open,
    Commit,
}

/// What [`Connection::handle_input`] found in one decoder event, before it is turned into a
/// [`Step`]: ranges of the input instead of borrows of the decoder.
enum Found {
    Nothing,
    Open,
    Write(usize, usize),
    Commit,
}

/// One TEJ server connection (see the module doc).
pub struct Connection<F> {
    cfg: Config,
    decoder: Decoder,
    frame: Option<FrameState>,
    awaiting: Option<Awaiting>,
    transmits: VecDeque<Transmit<F>>,
    events: VecDeque<Event>,
    finished: bool,
    /// Last byte received (idle rule).
    last_input: Instant,
    /// End of the last active frame, or the connection's start (idle life).
    life_start: Instant,
    /// Stall rule: start of the current window and bytes of the frame in it.
    window_start: Instant,
    window_bytes: u64,
}

impl<F> fmt::Debug for Connection<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("frame", &self.frame.as_ref().map(|fr| fr.status))
            .field("awaiting", &self.awaiting)
            .field("transmits", &self.transmits.len())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<F> Connection<F> {
    /// A connection accepted at `now`.
    pub fn new(cfg: Config, now: Instant) -> Connection<F> {
        Connection {
            decoder: Decoder::with_streamed_messages(cfg.limits),
            cfg,
            frame: None,
            awaiting: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            finished: false,
            last_input: now,
            life_start: now,
            window_start: now,
            window_bytes: 0,
        }
    }

    /// True once the connection must end: send the remaining transmits and close (after
    /// dropping any open file).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// True while a stored file is open in the driver (between a successful `Open` and its
    /// `Commit` answer).
    pub fn has_open_file(&self) -> bool {
        self.frame
            .as_ref()
            .and_then(|fr| fr.file.as_ref())
            .is_some_and(|f| f.store.is_some() && self.awaiting != Some(Awaiting::Open))
    }

    /// True between frames: a read may wait with the idle deadline, and shutdown may close.
    pub fn is_between_frames(&self) -> bool {
        self.frame.is_none() && self.decoder.is_between_frames()
    }

    /// True while the data of a stored file is flowing (the driver may use a larger read buffer).
    pub fn is_storing(&self) -> bool {
        self.has_open_file()
    }

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<F>> {
        self.transmits.pop_front()
    }

    /// The next event for the log.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called if no input came; `None`
    /// once finished or while a storage answer is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline().map(|(at, _)| at)
    }

    fn deadline(&self) -> Option<(Instant, Deadline)> {
        if self.finished || self.awaiting.is_some() {
            return None;
        }
        let life = (self.life_start + self.cfg.max_idle_life, Deadline::Life);
        let (at, which) = match &self.frame {
            None if self.decoder.is_between_frames() => {
                let idle = (self.last_input + self.cfg.idle_timeout, Deadline::Idle);
                if life.0 < idle.0 {
                    life
                } else {
                    idle
                }
            }
            fr => {
                let stall = (self.window_start + self.cfg.stall_window, Deadline::Stall);
                // Inside a ping (or another frame that does nothing) the idle life runs on.
                if fr.as_ref().is_some_and(|fr| !fr.is_active()) && life.0 < stall.0 {
                    life
                } else {
                    stall
                }
            }
        };
        Some((at, which))
    }

    /// Ends the connection with `timeout` if its deadline has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((at, which)) = self.deadline() else {
            return;
        };
        if now < at {
            return;
        }
        let detail = match which {
            Deadline::Idle => format!(
                "idle between frames for {} s",
                self.cfg.idle_timeout.as_secs()
            ),
            Deadline::Stall => format!(
                "frame stalled: less than {} bytes in {} s",
                self.cfg.stall_bytes,
                self.cfg.stall_window.as_secs()
            ),
            Deadline::Life => format!(
                "no frame but pings and replies for {} s",
                self.cfg.max_idle_life.as_secs()
            ),
        };
        self.fail(code::TIMEOUT, detail);
    }

    /// The peer closed its sending side: a clean end between frames, `truncated` inside one.
    pub fn handle_eof(&mut self) {
        if self.finished {
            return;
        }
        if self.is_between_frames() {
            self.finished = true;
            self.events.push_back(Event::Closed {
                code: None,
                detail: "end of stream".into(),
            });
        } else {
            self.fail(code::TRUNCATED, "end of stream inside a frame".into());
        }
    }

    /// The answer to [`Step::Open`]: the file is open, or it cannot be stored (the connection
    /// then ends with that error).
    pub fn file_opened(&mut self, r: Result<(), StoreError>) {
        debug_assert_eq!(self.awaiting, Some(Awaiting::Open), "no file to open");
        self.awaiting = None;
        if let Err(e) = r {
            self.fail(e.code(), e.detail().to_owned());
        }
    }

    /// A [`Step::Write`] failed: the connection ends with that error (the driver drops the
    /// file, and with it its temporary).
    pub fn file_failed(&mut self, e: StoreError) {
        self.fail(e.code(), e.detail().to_owned());
    }

    /// The answer to [`Step::Commit`]: where the file is served now, or why it could not be.
    pub fn file_committed(&mut self, r: Result<Stored, StoreError>) {
        debug_assert_eq!(self.awaiting, Some(Awaiting::Commit), "no file to commit");
        self.awaiting = None;
        let Some(fr) = self.frame.as_mut() else {
            return;
        };
        let Some(f) = fr.file.take() else {
            return;
        };
        match r {
            Ok(s) => {
                fr.stored += 1;
                fr.entries.push(AckEntry::new(
                    &f.raw_name,
                    f.size,
                    s.sha256,
                    Some(s.stored_as),
                    None,
                ));
            }
            Err(e) => self.fail(e.code(), e.detail().to_owned()),
        }
    }

    /// Feeds received bytes; returns how many were taken and the next [`Step`] for the driver,
    /// or `None` once every byte is taken (or the connection is finished, or an answer to the
    /// last step is still due). Call again with the rest until `None`.
    pub fn handle_input<'a, L>(
        &'a mut self,
        now: Instant,
        input: &'a [u8],
        lookup: &mut L,
    ) -> (usize, Option<Step<'a>>)
    where
        L: Lookup<File = F>,
    {
        if self.finished || self.awaiting.is_some() {
            debug_assert!(self.finished, "handle_input before the storage answer");
            return (0, None);
        }
        if !input.is_empty() {
            self.last_input = now;
        }
        let mut pos = 0;
        loop {
            let between = self.decoder.is_between_frames();
            let (n, r) = self.decoder.decode(&input[pos..]);
            let at = pos;
            pos += n;
            // The stall rule counts every byte of a frame; the first byte of a frame starts
            // its first window.
            if n > 0 {
                if between {
                    self.window_start = now;
                    self.window_bytes = 0;
                }
                self.window_bytes += n as u64;
                if self.window_bytes >= self.cfg.stall_bytes {
                    self.window_start = now;
                    self.window_bytes = 0;
                }
            }
            // Turn the event into something that no longer borrows the decoder.
            let ev = match r {
                Ok(None) => return (pos, None),
                Err(e) => {
                    self.frame_error(&e);
                    return (pos, None);
                }
                Ok(Some(ev)) => ev,
            };
            let found = match ev {
                Decoded::FrameStart {
                    status,
                    version,
                    files,
                } => {
                    self.frame_start(status, version, files);
                    Found::Nothing
                }
                Decoded::FileStart {
                    name,
                    name_ok,
                    size,
                    ..
                } => {
                    let name = name.to_vec();
                    self.file_start(name, name_ok, size)
                }
                // The data is the last `len` bytes taken, so it is sliced from the input.
                Decoded::FileData(d) => {
                    let len = d.len();
                    self.file_data(&input[pos - len..pos], at)
                }
                Decoded::FileEnd => self.file_end(),
                Decoded::Message(m) => {
                    let len = m.len();
                    self.message(&input[pos - len..pos]);
                    Found::Nothing
                }
                Decoded::FrameEnd => {
                    self.frame_end(now, lookup);
                    Found::Nothing
                }
            };
            if self.finished {
                return (pos, None);
            }
            match found {
                Found::Nothing => {}
                Found::Open => {
                    self.awaiting = Some(Awaiting::Open);
                    let (name, size) = self
                        .frame
                        .as_ref()
                        .and_then(|fr| fr.file.as_ref())
                        .and_then(|f| f.store.as_deref().map(|n| (n, f.size)))
                        .expect("a file to open");
                    return (pos, Some(Step::Open { name, size }));
                }
                Found::Write(a, b) => return (pos, Some(Step::Write(&input[a..b]))),
                Found::Commit => {
                    self.awaiting = Some(Awaiting::Commit);
                    return (pos, Some(Step::Commit));
                }
            }
        }
    }

    fn frame_start(&mut self, status: u8, version: u8, files: u64) {
        if status != status::PING {
            self.events.push_back(Event::Frame {
                status,
                version,
                files,
            });
        }
        self.frame = Some(FrameState {
            status,
            entries: Vec::new(),
            stored: 0,
            file: None,
            held: Vec::new(),
            grant: None,
            message_len: 0,
            head: Vec::new(),
        });
    }

    fn file_start(&mut self, raw_name: Vec<u8>, name_ok: bool, size: u64) -> Found {
        let Some(fr) = self.frame.as_mut() else {
            return Found::Nothing;
        };
        // Dot names pass tej.md 5 but are never served (module doc): bad names here.
        let name_ok = name_ok && raw_name.first() != Some(&b'.');
        let store = (fr.stores() && name_ok)
            .then(|| std::str::from_utf8(&raw_name).ok().map(str::to_owned))
            .flatten();
        // Only a deliver frame's acknowledgement reports the hash of a discarded file.
        let discard = (store.is_none() && fr.status == status::DELIVER).then(Sha256::new);
        let opens = store.is_some();
        fr.file = Some(FileState {
            raw_name,
            size,
            store,
            discard,
            name_ok,
        });
        if opens {
            Found::Open
        } else {
            Found::Nothing
        }
    }

    fn file_data(&mut self, data: &[u8], at: usize) -> Found {
        let Some(f) = self.frame.as_mut().and_then(|fr| fr.file.as_mut()) else {
            return Found::Nothing;
        };
        if f.store.is_some() {
            return Found::Write(at, at + data.len());
        }
        if let Some(h) = f.discard.as_mut() {
            h.update(data);
        }
        Found::Nothing
    }

    fn file_end(&mut self) -> Found {
        let Some(fr) = self.frame.as_mut() else {
            return Found::Nothing;
        };
        let Some(f) = fr.file.as_ref() else {
            return Found::Nothing;
        };
        if f.store.is_some() {
            return Found::Commit;
        }
        let f = fr.file.take().expect("checked above");
        self.events.push_back(Event::Discarded {
            name: f.raw_name.clone(),
            size: f.size,
        });
        if let Some(h) = f.discard {
            let error = (!f.name_ok).then_some(code::BAD_NAME);
            fr.entries.push(AckEntry::new(
                &f.raw_name,
                f.size,
                hex(&h.finalize()),
                None,
                error,
            ));
        }
        Found::Nothing
    }

    fn message(&mut self, piece: &[u8]) {
        let Some(fr) = self.frame.as_mut() else {
            return;
        };
        if fr.holds_message() {
            if piece.is_empty() {
                return;
            }
            if fr.grant.is_none() {
                // The first piece: M is this piece and what is still to come.
                let rest = self.decoder.min_bytes_to_frame_end().unwrap_or(0);
                let total = (piece.len() as u64).saturating_add(rest);
                match self.cfg.held_messages.try_grant(total) {
                    Some(g) => {
                        // `total` is at most max_message (the decoder checked M).
                        fr.held.reserve_exact(usize::try_from(total).unwrap_or(0));
                        fr.grant = Some(g);
                    }
                    None => {
                        let detail = format!(
                            "server busy: a request message of {total} bytes does not fit the {} bytes held for requests",
                            self.cfg.held_messages.max()
                        );
                        self.fail(code::BUSY, detail);
                        return;
                    }
                }
            }
            fr.held.extend_from_slice(piece);
        } else {
            fr.message_len += piece.len() as u64;
            let room = LOG_MESSAGE_BYTES.saturating_sub(fr.head.len());
            if room > 0 && fr.status != status::PING {
                fr.head.extend_from_slice(&piece[..piece.len().min(room)]);
            }
        }
    }

    fn frame_end<L: Lookup<File = F>>(&mut self, now: Instant, lookup: &mut L) {
        let Some(fr) = self.frame.take() else {
            return;
        };
        if fr.is_active() {
            self.life_start = now;
        }
        if fr.stores() && fr.message_len > 0 {
            self.events.push_back(Event::Message {
                len: fr.message_len,
                head: fr.head.clone(),
            });
        }
        match fr.status {
            status::DELIVER => {
                let ack = Ack {
                    files: fr.entries,
                    message_bytes: fr.message_len,
                };
                self.transmits.push_back(Transmit::Bytes(ack.to_frame()));
            }
            status::REQUEST => self.answer_request(&fr.held, lookup),
            status::LIST => self.answer_list(&fr.held, lookup),
            s if s > status::LISTING => self.events.push_back(Event::Application {
                status: s,
                stored: fr.stored,
            }),
            // Ping, acknowledgement, error, listing: never answered.
            _ => {}
        }
        // `fr.grant` goes here: the held message is no longer needed.
    }

    /// Status 4: one deliver frame with the files in request order (the data as
    /// [`Transmit::File`]), or `not-found` / `ambiguous` / `bad-request`; the connection stays
    /// open.
    fn answer_request<L: Lookup<File = F>>(&mut self, message: &[u8], lookup: &mut L) {
        let max = usize::try_from(self.cfg.limits.max_files).unwrap_or(usize::MAX);
        let items = match parse_request(message, max) {
            Ok(items) => items,
            Err(detail) => return self.reply_error(code::BAD_REQUEST, detail, None),
        };
        let mut found = Vec::with_capacity(items.len());
        let (mut missing, mut ambiguous) = (Vec::new(), Vec::new());
        for item in items {
            match lookup.resolve(&item) {
                Resolved::Found {
                    file,
                    name,
                    size,
                    sha256,
                } => found.push((file, ManifestEntry { name, size, sha256 })),
                Resolved::Missing => missing.push(item),
                Resolved::Ambiguous => ambiguous.push(item),
            }
        }
        let asked = found.len() + missing.len() + ambiguous.len();
        if !missing.is_empty() {
            let detail = format!("{} of {asked} items not found", missing.len());
            return self.reply_error(code::NOT_FOUND, detail, Some(missing));
        }
        if !ambiguous.is_empty() {
            let shown: Vec<&str> = ambiguous.iter().take(10).map(String::as_str).collect();
            let more = ambiguous.len() - shown.len();
            let detail = match more {
                0 => format!("each names several files: {}", shown.join(", ")),
                n => format!(
                    "each names several files: {} and {n} more",
                    shown.join(", ")
                ),
            };
            return self.reply_error(code::AMBIGUOUS, detail, None);
        }
        let mut out = Vec::new();
        frame::put_frame_header(status::DELIVER, found.len() as u64, &mut out);
        let mut manifest = Manifest {
            files: Vec::with_capacity(found.len()),
        };
        for (file, entry) in found {
            frame::put_file_header(&entry.name, entry.size, &mut out);
            self.transmits
                .push_back(Transmit::Bytes(std::mem::take(&mut out)));
            self.transmits.push_back(Transmit::File {
                file,
                offset: 0,
                len: entry.size,
            });
            manifest.files.push(entry);
        }
        frame::put_message(&manifest.to_json(), &mut out);
        self.transmits.push_back(Transmit::Bytes(out));
    }

    /// Status 5: one listing page in path order after `after`; `next` is the last path of a
    /// full page.
    fn answer_list<L: Lookup<File = F>>(&mut self, message: &[u8], lookup: &mut L) {
        let req = match ListRequest::from_json(message) {
            Ok(r) => r,
            Err(e) => return self.reply_error(code::BAD_REQUEST, e.detail, None),
        };
        let limit = req.page_limit() as usize;
        let files = lookup.page(req.after.as_deref().unwrap_or(""), limit);
        let next = (files.len() >= limit)
            .then(|| files.last().map(|e| e.name.clone()))
            .flatten();
        let listing = Listing { files, next };
        self.transmits
            .push_back(Transmit::Bytes(listing.to_frame()));
    }

    /// An error frame that keeps the connection open.
    fn reply_error(&mut self, code: &'static str, detail: String, missing: Option<Vec<String>>) {
        let mut msg = ErrorMsg::new(code, &detail);
        msg.missing = missing;
        self.transmits.push_back(Transmit::Bytes(msg.to_frame()));
    }

    fn frame_error(&mut self, e: &FrameError) {
        self.fail(e.code(), e.detail());
    }

    /// Queues the error frame (with the entries of files this frame already stored) and ends
    /// the connection.
    fn fail(&mut self, code: &'static str, detail: String) {
        if self.finished {
            return;
        }
        let mut msg = ErrorMsg::new(code, &detail);
        if let Some(fr) = self.frame.take() {
            if fr.status == status::DELIVER && !fr.entries.is_empty() {
                msg.files = Some(fr.entries);
            }
        }
        self.transmits.push_back(Transmit::Bytes(msg.to_frame()));
        self.events.push_back(Event::Closed {
            code: Some(code),
            detail,
        });
        self.finished = true;
        self.awaiting = None;
    }
}

/// The items of a request message (`{"get":[...]}`, any key order, unknown keys ignored),
/// refusing more than `max` items as soon as the one past it is read: the cap holds before the
/// rest of the message is parsed. The error is the `detail` of `bad-request`.
pub fn parse_request(message: &[u8], max: usize) -> Result<Vec<String>, String> {
    let mut de = serde_json::Deserializer::from_slice(message);
    let items = de::Deserializer::deserialize_map(&mut de, RequestVisitor { max })
        .and_then(|items| de.end().map(|()| items))
        .map_err(|e| format!("request: {e}"))?;
    Ok(items)
}

struct RequestVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a \"get\" array of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
        let mut get = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "get" {
                if get.is_some() {
                    return Err(de::Error::duplicate_field("get"));
                }
                get = Some(map.next_value_seed(ItemsSeed { max: self.max })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        get.ok_or_else(|| de::Error::missing_field("get"))
    }
}

struct ItemsSeed {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = Vec<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            if items.len() == self.max {
                return Err(de::Error::custom(format_args!(
                    "more than {} items",
                    self.max
                )));
            }
            items.push(item);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests;
