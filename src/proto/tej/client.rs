//! TEJ client machines, one per operation (tej.md section 3): [`Sender`] (`tej send`: one
//! deliver frame, then the acknowledgement), [`Getter`] (`tej get`: a request, its answer checked
//! against the manifest) and [`Lister`] (`tej list`: listing pages until `next` is null).
//!
//! Each says what to write ([`Transmit`]) and judges what arrives; none touches a socket, a file
//! or a clock. File bytes never pass through them: a sender is told "write `len` bytes of file
//! `index` now" and the driver streams them from disk, hashing as it goes, then reports the
//! SHA-256 back ([`Sender::file_sent`]); a getter says "this range of your input is data of the
//! current file" ([`GetEvent::FileData`]) and the driver writes it to an ingest temporary, then
//! reports its SHA-256 ([`Getter::file_received`]). The machines hold only frame headers and
//! messages (bounded by [`Limits`]).
//!
//! ```text
//! Sender:  Header ─► ( FileHeader i ─► FileBody i ─file_sent─► )* ─► Message ─written─┐
//!          status 0: AwaitAck ─ack matches─► Confirmed        status 1..127: Unconfirmed
//!                     ├─ack differs─► Mismatch   ├─status 3─► Refused
//!                     ├─ping / other frames─► (keep waiting)
//!                     └─ack_timeout or EOF─► Unconfirmed
//!          a write fails: AwaitAck (briefly) for the error frame that explains it
//! Getter:  Request ─► Awaiting ─status 0─► files ─FrameEnd─► manifest checked ─► Verified
//!                        │ (pings, other statuses: skipped) │ └─ mismatch ─► Err(Mismatch)
//!                        │                                  └─ a file not asked for, or an
//!                        │                   unsafe or dot name, at its header ─► Err(Unrequested
//!                        │                                                     | UnsafeName)
//!                        └─status 3─► Err(Peer)
//! Lister:  Request(after) ─► Awaiting ─status 6─► page checked ─next─► Request(next)
//!                                 │                        └─null─► Done(entries)
//!                                 └─status 3─► Err(Peer)
//! ```
//!
//! A sender's [`Transmit::Bytes`] hold what goes before the next file's data: the frame header
//! with the first file's header, then each next file's header, then M and the message (the
//! whole frame at once when it carries no file).
//!
//! Out of scope: sockets, timeouts other than the acknowledgement wait, reading and hashing
//! files, ingest temporaries and where files land (the driver).
//!
//! A send of one file and its acknowledgement:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ferry::proto::tej::client::{SendOutcome, Sender, Transmit};
//! use ferry::proto::tej::frame::frame;
//!
//! let now = Instant::now();
//! let mut s = Sender::new(0, vec![("a.txt".into(), 4)], b"", Duration::from_secs(60));
//! assert_eq!(
//!     s.poll_transmit(),
//!     Some(Transmit::Bytes(b"\x80\x01\0\0\0\0\0\0\0\x01\0\x05a.txt\0\0\0\0\0\0\0\x04"))
//! );
//! assert_eq!(s.poll_transmit(), Some(Transmit::File { index: 0, len: 4 }));
//! let sha = "63c1dd951ffedf6f7fd968ad4efa39b8ed584f162f46e715114ee184f8de9201"; // "AAAA"
//! s.file_sent(0, sha);
//! assert_eq!(s.poll_transmit(), Some(Transmit::Bytes(b"\0\0\0\0\0\0\0\0")));
//! s.handle_written(now);
//! let ack = format!(r#"{{"files":[{{"name":"a.txt","size":4,"sha256":"{sha}","stored_as":"a.txt"}}],"message_bytes":0}}"#);
//! let reply = frame(1, &[], ack.as_bytes());
//! let step = s.handle_input(&reply).unwrap();
//! assert_eq!(step.consumed, reply.len());
//! assert!(matches!(s.outcome(), Some(SendOutcome::Confirmed { .. })));
//! ```

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::frame::{
    put_file_header, put_frame_header, put_message, status, Decoder, Event as Decoded, FrameError,
    Limits,
};
use super::messages::{
    check_ack, AckVerdict, GetRequest, ListRequest, Listing, Manifest, ManifestEntry,
};
use crate::names;
use crate::wire::hex;

/// Most catalog entries a [`Lister`] accepts in all.
pub const MAX_LISTED: usize = 10_000_000;
/// Longest name a getter accepts for a file it stores.
const MAX_NAME: usize = 255;

/// What to write next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// These bytes (frame and file headers, the message, a request).
    Bytes(&'a [u8]),
    /// `len` bytes of file `index` (in the order the sender was given), streamed by the driver,
    /// which then calls [`Sender::file_sent`].
    File { index: usize, len: u64 },
}

/// One call's outcome: how many input bytes were taken, and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<E> {
    pub consumed: usize,
    /// `None`: every byte offered was taken and more input is needed.
    pub event: Option<E>,
}

/// Why an operation failed, by whose fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The peer broke the frame format.
    Frame(FrameError),
    /// The peer answered with an error frame (status 3): its message, lossily.
    Peer(String),
    /// The answer does not match what was asked or sent.
    Mismatch(String),
    /// The peer closed inside a frame, or before the answer.
    Closed,
    /// The answer carries a file under a name ferry never stores (a path, a dot-file, a
    /// control character, `.ferry`): the name as sent, lossily.
    UnsafeName(String),
    /// The answer carries a file that was not asked for (another name, or more files than
    /// items): its name as sent, lossily.
    Unrequested(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Frame(e) => write!(f, "frame: {}: {}", e.code(), e.detail()),
            Error::Peer(m) => write!(f, "peer error: {m}"),
            Error::Mismatch(m) => write!(f, "mismatch: {m}"),
            Error::Closed => f.write_str("connection closed before the answer was complete"),
            // `{:?}` escapes control characters: the name comes from the peer.
            Error::UnsafeName(n) => write!(
                f,
                "refused: the server sent a file named {n:?}, which ferry never stores \
                 (a path, a dot-file or a control character); nothing was written"
            ),
            Error::Unrequested(n) => write!(
                f,
                "refused: the server sent {n:?}, which was not asked for; nothing was written"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A frame read off the connection, as the machines see it.
#[derive(Debug)]
enum Inbound {
    /// A file begins: its name (`Ok` when safe to store under, tej.md section 5; `Err` with the
    /// name as sent, lossily, when not), and its size.
    FileStart {
        name: Result<String, String>,
        size: u64,
    },
    /// This range of the input is data of the current file.
    FileData(Range<usize>),
    FileEnd,
    /// A frame is complete; [`Reader::status`] and [`Reader::message`] describe it.
    FrameEnd,
}

/// The frames arriving on a connection: status and message of the current one.
#[derive(Debug)]
struct Reader {
    decoder: Decoder,
    status: u8,
    message: Vec<u8>,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            decoder: Decoder::new(Limits::default()),
            status: 0,
            message: Vec::new(),
        }
    }

    /// Decodes until something the machines care about, or until every byte is taken.
    fn next(&mut self, input: &[u8]) -> Result<(usize, Option<Inbound>), FrameError> {
        let mut consumed = 0;
        loop {
            let (used, r) = self.decoder.decode(&input[consumed..]);
            let at = consumed;
            consumed += used;
            let inbound = match r? {
                None => return Ok((consumed, None)),
                Some(Decoded::FrameStart { status, .. }) => {
                    self.status = status;
                    self.message.clear();
                    continue;
                }
                Some(Decoded::FileStart {
                    name,
                    name_ok,
                    size,
                    ..
                }) => Inbound::FileStart {
                    name: name_ok
                        .then(|| names::accept_exact(name, MAX_NAME).map(str::to_owned))
                        .flatten()
                        .ok_or_else(|| String::from_utf8_lossy(name).into_owned()),
                    size,
                },
                Some(Decoded::FileData(d)) => Inbound::FileData(at..at + d.len()),
                Some(Decoded::FileEnd) => Inbound::FileEnd,
                Some(Decoded::Message(m)) => {
                    // At most `max_message` bytes (the decoder checked M first).
                    self.message.extend_from_slice(m);
                    continue;
                }
                Some(Decoded::FrameEnd) => Inbound::FrameEnd,
            };
            return Ok((consumed, Some(inbound)));
        }
    }

    /// The message of the frame just ended, given away.
    fn take_message(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.message)
    }

    fn is_between_frames(&self) -> bool {
        self.decoder.is_between_frames()
    }
}

// ---------------------------------------------------------------------------------------------
// tej send

/// How a send ended (tej.md 3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// An acknowledgement matched every file sent.
    Confirmed { reply: Vec<u8> },
    /// An acknowledgement that does not confirm (`why` says which file and how).
    Mismatch { why: String, reply: Vec<u8> },
    /// An error frame (status 3).
    Refused { reply: Vec<u8> },
    /// No acknowledgement in time, the peer closed, or the status asks for none (1..127).
    Unconfirmed,
}

impl SendOutcome {
    /// `confirmed`, `mismatch`, `refused` or `unconfirmed`.
    pub fn word(&self) -> &'static str {
        match self {
            SendOutcome::Confirmed { .. } => "confirmed",
            SendOutcome::Mismatch { .. } => "mismatch",
            SendOutcome::Refused { .. } => "refused",
            SendOutcome::Unconfirmed => "unconfirmed",
        }
    }

    /// The reply message that decided it, if any.
    pub fn reply(&self) -> Option<&[u8]> {
        match self {
            SendOutcome::Confirmed { reply }
            | SendOutcome::Mismatch { reply, .. }
            | SendOutcome::Refused { reply } => Some(reply),
            SendOutcome::Unconfirmed => None,
        }
    }
}

/// What a sender saw while waiting that decided nothing (for `-v` logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendEvent {
    /// A frame that is not the acknowledgement (a greeting, an application's message): its
    /// status and the start of its message.
    Ignored { status: u8, message: Vec<u8> },
    /// The outcome is known ([`Sender::outcome`]).
    Finished,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendState {
    /// The frame header (with the first file's header) is due.
    Header,
    /// File `i`'s header is due (`i` > 0).
    FileHeader(usize),
    /// File `i`'s data is due, then [`Sender::file_sent`].
    FileBody(usize),
    /// Waiting for [`Sender::file_sent`] of file `i`.
    FileSending(usize),
    /// Everything handed out; waiting for [`Sender::handle_written`].
    Writing,
    /// Waiting for the acknowledgement until the deadline.
    AwaitAck {
        deadline: Instant,
    },
    Done,
}

/// `tej send`: one frame of files and a message, then (status 0) the acknowledgement.
#[derive(Debug)]
pub struct Sender {
    status: u8,
    files: Vec<(String, u64)>,
    /// Lowercase hex SHA-256 of each file as sent.
    sent: Vec<String>,
    message: Vec<u8>,
    ack_timeout: Duration,
    state: SendState,
    out: Vec<u8>,
    reader: Reader,
    outcome: Option<SendOutcome>,
}

impl Sender {
    /// A frame of `files` (`(name, size)`, names of at most 65,535 bytes: the driver checks)
    /// with custom `status` (0..=127) and `message`; the acknowledgement is awaited for
    /// `ack_timeout` once the frame is written.
    ///
    /// # Panics
    /// On a status over 127 or a name over 65,535 bytes (caller bugs).
    pub fn new(
        status: u8,
        files: Vec<(String, u64)>,
        message: &[u8],
        ack_timeout: Duration,
    ) -> Sender {
        assert!(status <= 127, "tej custom status {status} is over 127");
        assert!(files.iter().all(|(n, _)| n.len() <= usize::from(u16::MAX)));
        Sender {
            status,
            sent: Vec::with_capacity(files.len()),
            files,
            message: message.to_vec(),
            ack_timeout,
            state: SendState::Header,
            out: Vec::new(),
            reader: Reader::new(),
            outcome: None,
        }
    }

    /// What to write next; `None` while a file is being streamed, once the frame is out, and
    /// when done.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        self.out.clear();
        match self.state {
            SendState::Header => {
                put_frame_header(self.status, self.files.len() as u64, &mut self.out);
                self.after_header(0);
                Some(Transmit::Bytes(&self.out))
            }
            SendState::FileHeader(i) => {
                self.after_header(i);
                Some(Transmit::Bytes(&self.out))
            }
            SendState::FileBody(i) => {
                self.state = SendState::FileSending(i);
                Some(Transmit::File {
                    index: i,
                    len: self.files[i].1,
                })
            }
            SendState::FileSending(_)
            | SendState::Writing
            | SendState::AwaitAck { .. }
            | SendState::Done => None,
        }
    }

    /// Appends file `i`'s header, or the message after the last file, and moves on.
    fn after_header(&mut self, i: usize) {
        match self.files.get(i) {
            Some((name, size)) => {
                put_file_header(name, *size, &mut self.out);
                self.state = SendState::FileBody(i);
            }
            None => {
                put_message(&self.message, &mut self.out);
                self.state = SendState::Writing;
            }
        }
    }

    /// File `index` went out whole; `sha256` is the lowercase hex SHA-256 of the bytes written.
    pub fn file_sent(&mut self, index: usize, sha256: &str) {
        if self.state == SendState::FileSending(index) {
            self.sent.push(sha256.to_owned());
            self.state = SendState::FileHeader(index + 1);
        }
    }

    /// The files as sent: `(name, size, sha256)`.
    pub fn sent(&self) -> impl Iterator<Item = (&str, u64, &str)> {
        self.files
            .iter()
            .zip(&self.sent)
            .map(|((n, s), h)| (n.as_str(), *s, h.as_str()))
    }

    /// The whole frame is written and flushed at `now`: the acknowledgement wait starts (a
    /// status other than 0 expects none and is done).
    pub fn handle_written(&mut self, now: Instant) {
        if self.state != SendState::Writing {
            return;
        }
        if self.status == status::DELIVER {
            self.state = SendState::AwaitAck {
                deadline: now + self.ack_timeout,
            };
        } else {
            self.finish(SendOutcome::Unconfirmed);
        }
    }

    /// Writing the frame failed (the peer closed or reset the connection): a peer that refuses
    /// a frame sends its error frame first, so replies are judged for `wait` before giving up.
    /// Only an error frame or an acknowledgement decides anything then.
    pub fn handle_write_failed(&mut self, now: Instant, wait: Duration) {
        if self.is_sending() {
            self.state = SendState::AwaitAck {
                deadline: now + wait,
            };
        }
    }

    /// When the acknowledgement wait ends.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            SendState::AwaitAck { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// The wait is over once `now` passes the deadline: unconfirmed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let SendState::AwaitAck { deadline } = self.state {
            if now >= deadline {
                self.finish(SendOutcome::Unconfirmed);
            }
        }
    }

    /// Frames from the peer. Only while waiting for the acknowledgement are they judged; files
    /// they carry are skipped.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<Step<SendEvent>, Error> {
        let mut consumed = 0;
        loop {
            let (used, ev) = self.reader.next(&input[consumed..]).map_err(Error::Frame)?;
            consumed += used;
            match ev {
                None => {
                    return Ok(Step {
                        consumed,
                        event: None,
                    })
                }
                Some(Inbound::FrameEnd) => {
                    if let Some(event) = self.judge() {
                        return Ok(Step {
                            consumed,
                            event: Some(event),
                        });
                    }
                }
                Some(Inbound::FileStart { .. } | Inbound::FileData(_) | Inbound::FileEnd) => {}
            }
        }
    }

    /// A whole frame arrived (tej.md 3.2).
    fn judge(&mut self) -> Option<SendEvent> {
        if !matches!(self.state, SendState::AwaitAck { .. }) {
            return None;
        }
        let status = self.reader.status;
        match status {
            status::PING => None,
            status::ERROR => {
                let reply = self.reader.take_message();
                self.finish(SendOutcome::Refused { reply });
                Some(SendEvent::Finished)
            }
            _ => {
                let sent: Vec<(u64, &str)> = self
                    .files
                    .iter()
                    .zip(&self.sent)
                    .map(|((_, size), sha)| (*size, sha.as_str()))
                    .collect();
                match check_ack(&self.reader.message, &sent) {
                    AckVerdict::Confirmed => {
                        let reply = self.reader.take_message();
                        self.finish(SendOutcome::Confirmed { reply });
                        Some(SendEvent::Finished)
                    }
                    AckVerdict::Rejected(why) => {
                        let reply = self.reader.take_message();
                        self.finish(SendOutcome::Mismatch { why, reply });
                        Some(SendEvent::Finished)
                    }
                    AckVerdict::NotAnAck => {
                        let m = &self.reader.message;
                        Some(SendEvent::Ignored {
                            status,
                            message: m[..m.len().min(200)].to_vec(),
                        })
                    }
                }
            }
        }
    }

    /// The peer closed: between frames, an acknowledgement never came; inside one, an error.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        if !self.reader.is_between_frames() {
            return Err(Error::Closed);
        }
        if !matches!(self.state, SendState::Done) {
            self.finish(SendOutcome::Unconfirmed);
        }
        Ok(())
    }

    fn finish(&mut self, outcome: SendOutcome) {
        self.state = SendState::Done;
        self.outcome = Some(outcome);
    }

    /// True once the frame is out and the reply is judged (or none is expected).
    pub fn is_finished(&self) -> bool {
        self.state == SendState::Done
    }

    /// Whether the frame is still being handed out (before [`handle_written`](Self::handle_written)).
    pub fn is_sending(&self) -> bool {
        !matches!(self.state, SendState::AwaitAck { .. } | SendState::Done)
    }

    pub fn outcome(&self) -> Option<&SendOutcome> {
        self.outcome.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// tej get

/// What a getter asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetEvent {
    /// File `index` of the answer begins: open a temporary for its `size` bytes.
    FileStart { index: usize, size: u64 },
    /// This range of the input given to this call is data of the current file.
    FileData(Range<usize>),
    /// The current file is complete: call [`Getter::file_received`] with its SHA-256.
    FileEnd,
    /// The answer matches its manifest: commit the temporaries, in order, under these names
    /// (entries as the manifest gives them).
    Verified(Vec<ManifestEntry>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GetState {
    /// The request is due.
    Request,
    /// Waiting for the answer (frames other than 0 and 3 are skipped).
    Awaiting,
    /// Inside the answer (a status-0 frame).
    Receiving,
    Done,
}

/// One file of the answer as received.
#[derive(Debug)]
struct Received {
    name: String,
    size: u64,
    sha256: Option<String>,
}

/// What one requested item allows the answer to carry at its position (tej.md 3.4: files in
/// request order, under their base names).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wanted {
    /// A SHA-256 id (64 lowercase hex): any safe name, but these bytes.
    Sha256(String),
    /// A name or catalog path: the file comes under this base name.
    Name(String),
}

impl Wanted {
    fn of(item: &str) -> Wanted {
        if item.len() == 64 && item.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Wanted::Sha256(item.to_owned())
        } else {
            let base = item.rsplit('/').next().unwrap_or(item);
            Wanted::Name(base.to_owned())
        }
    }
}

/// `tej get`: one request (status 4), its answer streamed into the driver's temporaries and
/// verified against the manifest before anything is committed (tej.md 3.4, T31).
///
/// Only what was asked for is accepted (the JTP client's rule too): file `i` of the answer must
/// carry item `i`'s base name (any name for a SHA-256 item, whose bytes the manifest then
/// pins), and no name that is unsafe or starts with a dot is ever accepted. A file that breaks
/// this fails the get at its header, before the driver writes any byte of it.
#[derive(Debug)]
pub struct Getter {
    request: Vec<u8>,
    wanted: Vec<Wanted>,
    state: GetState,
    reader: Reader,
    files: Vec<Received>,
}

impl Getter {
    /// Asks for `items` (names, catalog paths or SHA-256 ids).
    pub fn new(items: &[String]) -> Getter {
        Getter {
            request: GetRequest {
                get: items.to_vec(),
            }
            .to_frame(),
            wanted: items.iter().map(|i| Wanted::of(i)).collect(),
            state: GetState::Request,
            reader: Reader::new(),
            files: Vec::new(),
        }
    }

    /// The request, once.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        if self.state != GetState::Request {
            return None;
        }
        self.state = GetState::Awaiting;
        Some(Transmit::Bytes(&self.request))
    }

    /// The current file's bytes hashed to `sha256` (raw digest).
    pub fn file_received(&mut self, sha256: [u8; 32]) {
        if let Some(f) = self.files.last_mut() {
            f.sha256 = Some(hex::encode(&sha256));
        }
    }

    pub fn handle_input(&mut self, input: &[u8]) -> Result<Step<GetEvent>, Error> {
        let mut consumed = 0;
        loop {
            let (used, ev) = self.reader.next(&input[consumed..]).map_err(Error::Frame)?;
            consumed += used;
            let Some(ev) = ev else {
                return Ok(Step {
                    consumed,
                    event: None,
                });
            };
            if self.state == GetState::Awaiting && self.reader.status == status::DELIVER {
                self.state = GetState::Receiving;
                self.files.clear();
            }
            // Files of frames that are not the answer are skipped.
            let receiving = self.state == GetState::Receiving;
            let event = match ev {
                Inbound::FileStart { name, size } if receiving => {
                    let name = match self.admit(name) {
                        Ok(name) => name,
                        Err(e) => {
                            self.state = GetState::Done;
                            return Err(e);
                        }
                    };
                    self.files.push(Received {
                        name,
                        size,
                        sha256: None,
                    });
                    Some(GetEvent::FileStart {
                        index: self.files.len() - 1,
                        size,
                    })
                }
                Inbound::FileData(r) if receiving => Some(GetEvent::FileData(r)),
                Inbound::FileEnd if receiving => Some(GetEvent::FileEnd),
                Inbound::FrameEnd => self.frame_end()?,
                Inbound::FileStart { .. } | Inbound::FileData(_) | Inbound::FileEnd => None,
            };
            if let Some(event) = event {
                return Ok(Step {
                    consumed,
                    event: Some(event),
                });
            }
        }
    }

    /// The next file of the answer may be stored only under a safe name that is not a dot-file
    /// and only if it is what the next item asked for.
    fn admit(&self, name: Result<String, String>) -> Result<String, Error> {
        let name = match name {
            Ok(n) if !n.starts_with('.') => n,
            Ok(n) | Err(n) => return Err(Error::UnsafeName(n)),
        };
        match self.wanted.get(self.files.len()) {
            Some(Wanted::Sha256(_)) => Ok(name),
            Some(Wanted::Name(want)) if *want == name => Ok(name),
            Some(Wanted::Name(_)) | None => Err(Error::Unrequested(name)),
        }
    }

    fn frame_end(&mut self) -> Result<Option<GetEvent>, Error> {
        match (self.state, self.reader.status) {
            (GetState::Receiving, _) => {
                self.state = GetState::Done;
                let verified = self.verify()?;
                Ok(Some(GetEvent::Verified(verified)))
            }
            (GetState::Awaiting, status::ERROR) => {
                self.state = GetState::Done;
                Err(Error::Peer(
                    String::from_utf8_lossy(&self.reader.message).into_owned(),
                ))
            }
            // Pings and frames meant for an application are not the answer.
            _ => Ok(None),
        }
    }

    /// Every file against the manifest, before any is committed.
    fn verify(&mut self) -> Result<Vec<ManifestEntry>, Error> {
        let manifest = Manifest::from_json(&self.reader.message)
            .ok_or_else(|| Error::Mismatch("the answer carries no manifest".into()))?;
        if manifest.files.len() != self.files.len() {
            return Err(Error::Mismatch(format!(
                "{} files received, manifest lists {}",
                self.files.len(),
                manifest.files.len()
            )));
        }
        for ((got, m), want) in self.files.iter().zip(&manifest.files).zip(&self.wanted) {
            if got.name != m.name
                || got.size != m.size
                || got.sha256.as_deref() != Some(m.sha256.as_str())
            {
                // `got.name` passed `admit`: safe to show, unlike the manifest's.
                return Err(Error::Mismatch(format!(
                    "{}: received bytes do not match the manifest",
                    got.name
                )));
            }
            if let Wanted::Sha256(id) = want {
                if *id != m.sha256 {
                    return Err(Error::Unrequested(m.name.clone()));
                }
            }
        }
        Ok(manifest.files)
    }

    /// The peer closed: before the answer was complete, that is an error.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        if self.state == GetState::Done {
            return Ok(());
        }
        self.state = GetState::Done;
        Err(Error::Closed)
    }

    pub fn is_finished(&self) -> bool {
        self.state == GetState::Done
    }
}

// ---------------------------------------------------------------------------------------------
// tej list

#[derive(Clone, Debug, PartialEq, Eq)]
enum ListState {
    /// A request for the page after this path is due.
    Request(Option<String>),
    /// Waiting for the page after this path.
    Awaiting(Option<String>),
    Done,
}

/// `tej list`: listing pages (status 5 / 6) until `next` is null, each checked to move
/// forward so a broken server cannot page for ever.
#[derive(Debug)]
pub struct Lister {
    state: ListState,
    reader: Reader,
    entries: Vec<ManifestEntry>,
    out: Vec<u8>,
    /// Most entries taken in all ([`MAX_LISTED`]; smaller in tests).
    max_listed: usize,
}

impl Default for Lister {
    fn default() -> Self {
        Lister::new()
    }
}

impl Lister {
    pub fn new() -> Lister {
        Lister {
            state: ListState::Request(None),
            reader: Reader::new(),
            entries: Vec::new(),
            out: Vec::new(),
            max_listed: MAX_LISTED,
        }
    }

    /// The next page's request, when one is due.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        let ListState::Request(after) = &self.state else {
            return None;
        };
        let after = after.clone();
        self.out = ListRequest {
            after: after.clone(),
            limit: None,
        }
        .to_frame();
        self.state = ListState::Awaiting(after);
        Some(Transmit::Bytes(&self.out))
    }

    /// Frames from the peer; `Some(())` once the last page arrived ([`entries`](Self::entries)).
    pub fn handle_input(&mut self, input: &[u8]) -> Result<Step<()>, Error> {
        let mut consumed = 0;
        loop {
            let (used, ev) = self.reader.next(&input[consumed..]).map_err(Error::Frame)?;
            consumed += used;
            match ev {
                None => {
                    return Ok(Step {
                        consumed,
                        event: None,
                    })
                }
                Some(Inbound::FrameEnd) => {
                    if self.page()? {
                        return Ok(Step {
                            consumed,
                            event: Some(()),
                        });
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Judges a whole frame; true when the listing is complete.
    fn page(&mut self) -> Result<bool, Error> {
        let ListState::Awaiting(after) = &self.state else {
            return Ok(false);
        };
        match self.reader.status {
            status::LISTING => {}
            status::ERROR => {
                return Err(Error::Peer(
                    String::from_utf8_lossy(&self.reader.message).into_owned(),
                ))
            }
            _ => return Ok(false),
        }
        let page = Listing::from_json(&self.reader.message)
            .ok_or_else(|| Error::Mismatch("listing is not JSON".into()))?;
        self.entries.extend(page.files);
        if self.entries.len() > self.max_listed {
            return Err(Error::Mismatch(format!(
                "listing goes past {} entries",
                self.max_listed
            )));
        }
        match page.next {
            Some(n) if after.as_ref().is_none_or(|a| n.as_bytes() > a.as_bytes()) => {
                self.state = ListState::Request(Some(n));
                Ok(false)
            }
            Some(n) => Err(Error::Mismatch(format!(
                "listing page {n:?} does not move past {after:?}"
            ))),
            None => {
                self.state = ListState::Done;
                Ok(true)
            }
        }
    }

    /// The peer closed before the last page.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        match self.state {
            ListState::Done => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.state == ListState::Done
    }

    /// Every entry listed so far, in the order received.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<ManifestEntry> {
        self.entries
    }
}

#[cfg(test)]
mod tests;
