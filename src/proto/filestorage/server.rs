//! One filestorage server connection as a pure state machine: frames in, one RESPONSE per
//! request out in request order, and events for what only the driver can do (look up and change
//! the store, write chunk bytes, read file bytes).
//!
//! ```text
//!                     handle_input / poll_event
//!   ┌──────────────────────────────────────────────────────────────────┐
//!   │                                                                  │
//!   ▼        pure reply (Error, replayed checks...) queued in order    │
//! Open ──frame──┬──────────────────────────────────────────────────────┤
//!   │  ▲        ├─ TRANSFER passes 4.3 steps 1-3 ─► Event::Write ──────┘
//!   │  │        │     (decoding goes on while < window writes wait; the driver answers each
//!   │  │        │      with handle_answer once durable, possibly several at once)
//!   │  │        └─ AUTHENTICATION / QUERY / FETCH passes the token ─► Event::* ─► Waiting
//!   │  └──────────────── handle_answer (reply queued in order) ──────────────────┘
//!   │
//!   ├─ LEN out of bounds / legacy T other than 0-2 ─► nil-id reply queued last ─► Closing
//!   ├─ 64th consecutive Error sent, or `internal` sent ─────────────────────────► Closed
//!   ├─ EOF / legacy T=0 ─► Draining: buffered frames served, owed replies sent ─► Closed
//!   └─ handle_timeout past the deadline (idle between frames, io mid-frame) ───► Closed
//! ```
//!
//! Replies leave in request order whatever order the driver answers in: each request takes a
//! slot in a queue, and [`Connection::poll_transmit`] hands out the ready prefix. TRANSFER's
//! decoded bytes live in the machine's one scratch buffer and are lent to the driver in
//! [`Event::Write`] (written at once, synced later), so the only transformation of bulk data is
//! the base64 decode, into a buffer reused for every chunk.
//!
//! Driver loop: feed what [`Connection::input_room`] allows with `handle_input`; drain
//! `poll_event`, acting on each event (answers may come at once or later); when `poll_event`
//! gives `None` while writes wait, make them durable and answer them before waiting for more
//! input (the client's window may be full); write what `poll_transmit` gives; stop when
//! `is_finished`. The machine never reads a clock: time comes in `handle_input` and
//! `handle_timeout`.
//!
//! Out of scope: sockets, the tcpd preamble, TLS, files, fsync, locks, quotas (see
//! [`super::store`] for the pure parts the driver uses to answer).

use super::base64;
use super::frame::{finish_frame, nil_reply, start_frame, Decoded, FrameDecoder, Framing};
use super::ids::{chunk_id, Uuid};
use super::json::{
    encode_error, encode_ok, encode_ok_auth, encode_ok_complete, encode_ok_fetch, encode_ok_query,
    parse_request, read_message_id, utype, MessageId, Request,
};
use super::reason::{Code, Reason};
use super::store::auth::AuthCall;
use super::store::index::QueryPage;
use super::store::missing::{chunk_len, MissingSet};
use super::store::names::checked_tag_set;
use super::token::{self, Claims, JwtKey, TokenError};
use super::Limits;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Identifies the request an event belongs to; pass it back with the answer.
pub type Ticket = u64;

/// What every connection of one server shares.
#[derive(Debug)]
pub struct ServerConfig {
    pub key: JwtKey,
    /// Also accept the legacy C frame (spec 2.3, `--legacy-ipc`).
    pub legacy_ipc: bool,
    pub limits: Limits,
}

/// "Write these bytes at `offset` of file `file` of batch `fid`" (spec 4.3 steps 4-6). The
/// driver skips a chunk already held (Ok, first copy kept), else writes the bytes, records the
/// chunk held, and answers [`Answer::Write`] once both are durable; completing the file when
/// this was its last missing chunk.
#[derive(Debug, PartialEq, Eq)]
pub struct ChunkWrite<'a> {
    pub fid: Uuid,
    /// The uid that authenticated the batch.
    pub uid: u32,
    pub file: u32,
    pub n: u64,
    /// `n * chunk-size`.
    pub offset: u64,
    /// The decoded chunk, exactly its due length.
    pub data: &'a [u8],
}

/// QUERY after its token and tags passed: evaluate with
/// [`Index::query`](super::store::index::Index::query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryCall {
    pub uid: u32,
    /// The tag set (checked, sorted, no duplicates).
    pub tags: Vec<String>,
    pub name: Option<String>,
    pub after: Option<Uuid>,
    /// Results to return at most ([`Limits::max_results`]).
    pub limit: usize,
}

/// FETCH after its token passed: `not-found` unless `id` is visible to `uid`, then
/// [`fetch_range`](super::store::index::fetch_range) with `max_fetch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchCall {
    pub uid: u32,
    pub id: Uuid,
    pub offset: u64,
    pub length: u64,
    pub max_fetch: u64,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Decide with [`plan_authentication`](super::store::auth::plan_authentication), reserve,
    /// make the state durable, answer [`Answer::Auth`].
    Authenticate {
        ticket: Ticket,
        call: AuthCall,
    },
    Write {
        ticket: Ticket,
        write: ChunkWrite<'a>,
    },
    Query {
        ticket: Ticket,
        call: QueryCall,
    },
    Fetch {
        ticket: Ticket,
        call: FetchCall,
    },
}

/// How a chunk write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Durable (or held already): Ok.
    Stored,
    /// The file's last missing chunk: the file is complete, record and markers exist. Ok with
    /// `complete` and `id`.
    Completed { id: Uuid },
    /// `digest-mismatch`, `storage-error`...
    Failed(Reason),
}

/// A FETCH's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchData<'a> {
    pub bytes: &'a [u8],
    pub eof: bool,
}

/// The driver's answer to an event.
#[derive(Debug)]
pub enum Answer<'a> {
    /// The batch's missing set (the state's, for a new or a resumed `fid`), or why not.
    Auth(Result<&'a MissingSet, Reason>),
    Write(WriteOutcome),
    Query(Result<QueryPage, Reason>),
    Fetch(Result<FetchData<'a>, Reason>),
}

/// An answer the machine cannot use (a driver bug; the machine is unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerError {
    /// No request waits under this ticket (answered already, or the connection closed).
    UnknownTicket(Ticket),
    /// The request under this ticket wants another kind of answer.
    WrongKind(Ticket),
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerError::UnknownTicket(t) => write!(f, "filestorage: no request {t} waits"),
            AnswerError::WrongKind(t) => write!(f, "filestorage: wrong answer for request {t}"),
        }
    }
}

impl std::error::Error for AnswerError {}

/// The batch TRANSFERs are checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Active {
    fid: Uuid,
    uid: u32,
    sizes: Vec<u64>,
    chunk_size: u32,
}

#[derive(Debug)]
enum Slot {
    Ready {
        bytes: Vec<u8>,
        is_error: bool,
        closes: bool,
    },
    Auth {
        mid: MessageId,
        batch: Active,
    },
    Write {
        mid: MessageId,
        file: u32,
    },
    Query {
        mid: MessageId,
    },
    Fetch {
        mid: MessageId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Decoding frames.
    Open,
    /// An AUTHENTICATION, QUERY or FETCH waits for its answer; nothing more is decoded.
    Waiting,
    /// A framing error's reply is queued last; nothing more is decoded.
    Closing,
    Closed,
}

/// A decision waiting to become an [`Event`] (events borrow the scratch buffer, which the
/// decoding loop cannot hand out while it still runs).
enum Pending {
    Auth(Ticket, AuthCall),
    Write(Ticket, Uuid, u32, u32, u64, u64),
    Query(Ticket, QueryCall),
    Fetch(Ticket, FetchCall),
}

/// Everything but the decoder, so a frame borrowed from the decoder can be handled.
#[derive(Debug)]
struct Core {
    config: Arc<ServerConfig>,
    framing: Framing,
    state: State,
    slots: VecDeque<Slot>,
    /// Ticket of `slots[0]`.
    first: Ticket,
    /// Bytes ready to send, in order.
    out: Vec<u8>,
    active: Option<Active>,
    writes_waiting: usize,
    consecutive_errors: u32,
    scratch: Vec<u8>,
    now: Instant,
    unix_now: i64,
}

/// One server connection (see the module doc).
#[derive(Debug)]
pub struct Connection {
    decoder: FrameDecoder,
    core: Core,
    peer_eof: bool,
    /// When the frame being collected started to arrive.
    frame_started: Option<Instant>,
    /// When the connection was last between frames.
    idle_since: Instant,
}

impl Connection {
    /// A new connection at `now` (monotonic) and `unix_now` (seconds, for tokens).
    pub fn new(config: Arc<ServerConfig>, now: Instant, unix_now: i64) -> Connection {
        Connection {
            decoder: FrameDecoder::new(config.legacy_ipc),
            core: Core {
                config,
                framing: Framing::Current,
                state: State::Open,
                slots: VecDeque::new(),
                first: 0,
                out: Vec::new(),
                active: None,
                writes_waiting: 0,
                consecutive_errors: 0,
                scratch: Vec::new(),
                now,
                unix_now,
            },
            peer_eof: false,
            frame_started: None,
            idle_since: now,
        }
    }

    /// Bytes the driver may read and feed now: up to one whole frame beyond what is buffered,
    /// nothing while decoding is paused (an answer is awaited, the window is full, or the
    /// connection is ending).
    pub fn input_room(&self) -> usize {
        if self.peer_eof || !self.core.may_decode() {
            return 0;
        }
        // The largest legacy frame is one byte longer than the largest current one.
        const WHOLE: usize = 6 + super::frame::LEGACY_MAX_JSON as usize;
        WHOLE.saturating_sub(self.decoder.buffered())
    }

    /// Feeds bytes read from the peer at `now` / `unix_now`.
    pub fn handle_input(&mut self, data: &[u8], now: Instant, unix_now: i64) {
        self.core.now = now;
        self.core.unix_now = unix_now;
        if self.core.state == State::Closed || self.peer_eof || data.is_empty() {
            return;
        }
        if self.decoder.is_between_frames() {
            self.frame_started = Some(now);
        }
        self.decoder.extend(data);
        if let Some(f) = self.decoder.framing() {
            self.core.framing = f;
        }
    }

    /// The peer closed its sending side. Whole frames already received are still served, a
    /// partial one is dropped without a reply; the connection ends (seen by `poll_event`) once
    /// every owed reply is handed out.
    pub fn handle_eof(&mut self) {
        self.peer_eof = true;
        self.frame_started = None;
    }

    /// The next thing the driver must do, or `None` (then answer waiting writes, transmit,
    /// and read more).
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let pending = loop {
            if !self.core.may_decode() {
                break None;
            }
            match self.decoder.next_frame() {
                Err(e) => {
                    self.core.close_with_nil_reply(e.code());
                    break None;
                }
                Ok(None) => {
                    if self.decoder.is_between_frames() {
                        self.frame_started = None;
                        self.idle_since = self.core.now;
                    }
                    self.core.finish_if_drained(self.peer_eof);
                    break None;
                }
                Ok(Some(Decoded::PeerClosing)) => {
                    self.peer_eof = true;
                    self.core.finish_if_drained(true);
                    break None;
                }
                Ok(Some(Decoded::Frame(f))) => {
                    if let Some(p) = self.core.handle_frame(f.utype, f.json) {
                        break Some(p);
                    }
                }
            }
        };
        let core = &mut self.core;
        pending.map(move |p| match p {
            Pending::Auth(ticket, call) => Event::Authenticate { ticket, call },
            Pending::Write(ticket, fid, uid, file, n, offset) => Event::Write {
                ticket,
                write: ChunkWrite {
                    fid,
                    uid,
                    file,
                    n,
                    offset,
                    data: &core.scratch,
                },
            },
            Pending::Query(ticket, call) => Event::Query { ticket, call },
            Pending::Fetch(ticket, call) => Event::Fetch { ticket, call },
        })
    }

    /// The driver's answer to the event of `ticket`.
    pub fn handle_answer(&mut self, ticket: Ticket, answer: Answer<'_>) -> Result<(), AnswerError> {
        self.core.handle_answer(ticket, answer)
    }

    /// Moves the replies ready to send into `out` (handing over the buffer when `out` is empty,
    /// so nothing is copied); returns how many bytes were added.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.core.out.len();
        if out.is_empty() {
            std::mem::swap(out, &mut self.core.out);
        } else {
            out.append(&mut self.core.out);
        }
        n
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called: `io_timeout` after a frame
    /// started, `idle_timeout` after the last frame, none while the server owes a reply.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.core.state == State::Closed || !self.core.slots.is_empty() || self.peer_eof {
            return None;
        }
        let limits = &self.core.config.limits;
        match self.frame_started {
            Some(t) if !self.decoder.is_between_frames() => Some(t + limits.io_timeout),
            _ => Some(self.idle_since + limits.idle_timeout),
        }
    }

    /// Closes the connection, without a reply, when `now` is past [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.now = now;
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.close();
        }
    }

    /// Ends the connection at once (timeouts, transport errors, shutdown): nothing more is sent.
    pub fn close(&mut self) {
        self.core.state = State::Closed;
        self.core.slots.clear();
        self.core.out.clear();
    }

    /// True once the connection has ended and every byte to send was handed out.
    pub fn is_finished(&self) -> bool {
        self.core.state == State::Closed && self.core.out.is_empty()
    }

    /// The `fid` TRANSFERs are currently checked against, if any (the driver keeps that
    /// transfer from retention while it is active, spec 7.4).
    pub fn active_fid(&self) -> Option<Uuid> {
        self.core.active.as_ref().map(|a| a.fid)
    }

    /// True between frames with no reply owed: the connection waits for its client's next
    /// request (a server shutting down may end it without cutting anything short).
    pub fn is_idle(&self) -> bool {
        self.decoder.is_between_frames() && self.core.slots.is_empty() && self.core.out.is_empty()
    }

    /// The connection's framing once known.
    pub fn framing(&self) -> Option<Framing> {
        self.decoder.framing()
    }

    /// Writes waiting for their durable answer.
    pub fn writes_waiting(&self) -> usize {
        self.core.writes_waiting
    }
}

impl Core {
    fn limits(&self) -> &Limits {
        &self.config.limits
    }

    fn may_decode(&self) -> bool {
        self.state == State::Open
            && self.writes_waiting < self.limits().window as usize
            && self.slots.len() < self.limits().max_pending
    }

    fn next_ticket(&self) -> Ticket {
        self.first + self.slots.len() as u64
    }

    fn finish_if_drained(&mut self, peer_eof: bool) {
        if peer_eof && self.slots.is_empty() && self.state != State::Closing {
            self.state = State::Closed;
        }
    }

    fn close_with_nil_reply(&mut self, code: Code) {
        let mut bytes = Vec::new();
        nil_reply(&mut bytes, self.framing, code);
        self.slots.push_back(Slot::Ready {
            bytes,
            is_error: true,
            closes: true,
        });
        self.state = State::Closing;
        self.flush();
    }

    /// Queues a reply made by `encode` (JSON only) for a new request, writing it straight to the
    /// output when nothing is owed before it.
    fn reply_now(&mut self, is_error: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        let ticket = self.next_ticket();
        // A placeholder that `fill` replaces (or pops, when it is first in line).
        self.slots.push_back(Slot::Ready {
            bytes: Vec::new(),
            is_error,
            closes: false,
        });
        self.fill(ticket, is_error, encode);
    }

    /// Turns the slot of `ticket` into its reply.
    fn fill(&mut self, ticket: Ticket, is_error: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        let idx = (ticket - self.first) as usize;
        let closes = false;
        if idx == 0 {
            let at = start_frame(&mut self.out, self.framing, utype::RESPONSE);
            encode(&mut self.out);
            finish_frame(&mut self.out, self.framing, at);
            self.slots.pop_front();
            self.first += 1;
            self.count(is_error, closes);
        } else {
            let mut bytes = Vec::new();
            let at = start_frame(&mut bytes, self.framing, utype::RESPONSE);
            encode(&mut bytes);
            finish_frame(&mut bytes, self.framing, at);
            self.slots[idx] = Slot::Ready {
                bytes,
                is_error,
                closes,
            };
        }
        self.flush();
    }

    /// Counts a reply handed to the output; closes after the last allowed consecutive Error.
    fn count(&mut self, is_error: bool, closes: bool) {
        if is_error {
            self.consecutive_errors += 1;
        } else {
            self.consecutive_errors = 0;
        }
        if closes || self.consecutive_errors >= self.limits().max_errors {
            self.state = State::Closed;
            self.slots.clear();
        }
    }

    /// Hands the ready prefix of the queue to the output.
    fn flush(&mut self) {
        while matches!(self.slots.front(), Some(Slot::Ready { .. })) {
            if let Some(Slot::Ready {
                bytes,
                is_error,
                closes,
            }) = self.slots.pop_front()
            {
                self.first += 1;
                self.out.extend_from_slice(&bytes);
                self.count(is_error, closes);
            }
        }
    }

    /// Queues an Error reply decided by the machine itself (never a code that closes: those
    /// come from framing errors and the driver).
    fn error(&mut self, mid: MessageId, reason: Reason) {
        debug_assert!(!reason.code.closes());
        self.reply_now(true, |out| encode_error(out, &mid, &reason));
    }

    fn check_token(&self, token: &str) -> Result<Claims, Reason> {
        token::verify(
            token.as_bytes(),
            &self.config.key,
            self.unix_now,
            self.limits().token,
        )
        .map_err(|e| match e {
            TokenError::Invalid(_) => Reason::new(Code::InvalidToken),
            TokenError::Expired => Reason::new(Code::TokenExpired),
        })
    }

    /// Handles one frame: a reply queued, or a decision for the driver.
    fn handle_frame(&mut self, ut: u8, json: &[u8]) -> Option<Pending> {
        let max_files = self.limits().max_batch_files;
        let req = match parse_request(ut, json, max_files) {
            None => {
                let mid = read_message_id(json).unwrap_or(MessageId::NIL);
                self.error(mid, Reason::new(Code::UnknownType));
                return None;
            }
            Some(Err(m)) => {
                if ut == utype::AUTHENTICATION {
                    self.active = None;
                }
                self.error(
                    m.message_id.unwrap_or(MessageId::NIL),
                    Code::Malformed.into(),
                );
                return None;
            }
            Some(Ok(r)) => r,
        };
        let ticket = self.next_ticket();
        match req {
            Request::Authentication(a) => {
                // Whatever the outcome, the earlier active transfer is replaced.
                self.active = None;
                let claims = match self.check_token(&a.token) {
                    Ok(c) => c,
                    Err(r) => {
                        self.error(a.message_id, r);
                        return None;
                    }
                };
                let chunk_size = a.chunk_size.unwrap_or(self.limits().default_chunk_size);
                let batch = Active {
                    fid: a.fid,
                    uid: claims.uid,
                    sizes: a.files.iter().map(|f| f.size).collect(),
                    chunk_size,
                };
                self.slots.push_back(Slot::Auth {
                    mid: a.message_id,
                    batch,
                });
                self.state = State::Waiting;
                Some(Pending::Auth(
                    ticket,
                    AuthCall {
                        uid: claims.uid,
                        login: claims.login,
                        fid: a.fid,
                        files: a.files,
                        tags: a.tags,
                        chunk_size,
                    },
                ))
            }
            Request::Transfer(t) => {
                let Some(active) = &self.active else {
                    self.error(t.message_id, Code::NotAuthenticated.into());
                    return None;
                };
                let size = usize::try_from(t.file)
                    .ok()
                    .and_then(|i| active.sizes.get(i).copied());
                let due = size.and_then(|s| chunk_len(s, active.chunk_size, t.n));
                let Some(due) = due.filter(|_| t.chunk == chunk_id(&active.fid, t.file, t.n))
                else {
                    self.error(t.message_id, Code::BadChunk.into());
                    return None;
                };
                let (fid, uid, cs) = (active.fid, active.uid, active.chunk_size);
                let bad_data = Reason::with_detail(Code::BadData, due);
                if base64::decoded_len(t.data.as_bytes()) != Ok(due as usize) {
                    self.error(t.message_id, bad_data);
                    return None;
                }
                self.scratch.clear();
                if base64::decode_append(t.data.as_bytes(), &mut self.scratch).is_err() {
                    self.error(t.message_id, bad_data);
                    return None;
                }
                let file = t.file as u32;
                self.slots.push_back(Slot::Write {
                    mid: t.message_id,
                    file,
                });
                self.writes_waiting += 1;
                Some(Pending::Write(
                    ticket,
                    fid,
                    uid,
                    file,
                    t.n,
                    t.n * u64::from(cs),
                ))
            }
            Request::Query(q) => {
                let claims = match self.check_token(&q.token) {
                    Ok(c) => c,
                    Err(r) => {
                        self.error(q.message_id, r);
                        return None;
                    }
                };
                let tags = match checked_tag_set(&q.tags, self.limits().max_tags) {
                    Ok(t) => t,
                    Err(r) => {
                        self.error(q.message_id, r);
                        return None;
                    }
                };
                self.slots.push_back(Slot::Query { mid: q.message_id });
                self.state = State::Waiting;
                Some(Pending::Query(
                    ticket,
                    QueryCall {
                        uid: claims.uid,
                        tags,
                        name: q.name,
                        after: q.after,
                        limit: self.limits().max_results,
                    },
                ))
            }
            Request::Fetch(f) => {
                let claims = match self.check_token(&f.token) {
                    Ok(c) => c,
                    Err(r) => {
                        self.error(f.message_id, r);
                        return None;
                    }
                };
                self.slots.push_back(Slot::Fetch { mid: f.message_id });
                self.state = State::Waiting;
                Some(Pending::Fetch(
                    ticket,
                    FetchCall {
                        uid: claims.uid,
                        id: f.id,
                        offset: f.offset,
                        length: f.length,
                        max_fetch: self.limits().max_fetch,
                    },
                ))
            }
        }
    }

    fn handle_answer(&mut self, ticket: Ticket, answer: Answer<'_>) -> Result<(), AnswerError> {
        let idx = ticket
            .checked_sub(self.first)
            .map(|i| i as usize)
            .filter(|&i| i < self.slots.len())
            .ok_or(AnswerError::UnknownTicket(ticket))?;
        let (max_ranges, window) = (self.limits().max_ranges, self.limits().window);
        match (&self.slots[idx], answer) {
            (Slot::Auth { mid, batch }, Answer::Auth(result)) => {
                let (mid, batch) = (*mid, batch.clone());
                self.state = State::Open;
                match result {
                    Ok(missing) => {
                        let (page, more) = missing.page(max_ranges);
                        let chunk_size = batch.chunk_size;
                        self.active = Some(batch);
                        self.fill(ticket, false, |out| {
                            encode_ok_auth(out, &mid, &page, more, chunk_size, window)
                        });
                    }
                    Err(reason) => {
                        self.active = None;
                        self.fill_error(ticket, mid, reason);
                    }
                }
            }
            (Slot::Write { mid, file }, Answer::Write(outcome)) => {
                let (mid, file) = (*mid, *file);
                self.writes_waiting -= 1;
                match outcome {
                    WriteOutcome::Stored => self.fill(ticket, false, |out| encode_ok(out, &mid)),
                    WriteOutcome::Completed { id } => self.fill(ticket, false, |out| {
                        encode_ok_complete(out, &mid, u64::from(file), &id)
                    }),
                    WriteOutcome::Failed(reason) => self.fill_error(ticket, mid, reason),
                }
            }
            (Slot::Query { mid }, Answer::Query(result)) => {
                let mid = *mid;
                self.state = State::Open;
                match result {
                    Ok(page) => {
                        // The reply stops early rather than push LEN past the frame limit.
                        let max_json = super::frame::MAX_LEN as usize - 1;
                        self.fill(ticket, false, |out| {
                            let start = out.len();
                            encode_ok_query(out, &mid, &page.results, page.more, max_json);
                            debug_assert!(out.len() - start <= max_json);
                        });
                    }
                    Err(reason) => self.fill_error(ticket, mid, reason),
                }
            }
            (Slot::Fetch { mid }, Answer::Fetch(result)) => {
                let mid = *mid;
                self.state = State::Open;
                match result {
                    Ok(data) if data.bytes.len() as u64 <= self.limits().max_fetch => {
                        self.fill(ticket, false, |out| {
                            encode_ok_fetch(out, &mid, data.bytes, data.eof)
                        })
                    }
                    // More bytes than FETCH allows would break the frame limit: a driver bug.
                    Ok(_) => self.fill_error(ticket, mid, Code::Internal.into()),
                    Err(reason) => self.fill_error(ticket, mid, reason),
                }
            }
            _ => return Err(AnswerError::WrongKind(ticket)),
        }
        Ok(())
    }

    fn fill_error(&mut self, ticket: Ticket, mid: MessageId, reason: Reason) {
        let closes = reason.code.closes();
        let idx = (ticket - self.first) as usize;
        if closes {
            // `internal`: the reply goes out after those owed before it, then the end.
            let mut bytes = Vec::new();
            let at = start_frame(&mut bytes, self.framing, utype::RESPONSE);
            encode_error(&mut bytes, &mid, &reason);
            finish_frame(&mut bytes, self.framing, at);
            self.slots[idx] = Slot::Ready {
                bytes,
                is_error: true,
                closes: true,
            };
            self.slots.truncate(idx + 1);
            self.state = State::Closing;
            self.flush();
            return;
        }
        self.fill(ticket, true, |out| encode_error(out, &mid, &reason));
    }
}

#[cfg(test)]
impl ServerConfig {
    /// A copy to change limits in tests.
    pub(crate) fn clone_for_test(&self) -> ServerConfig {
        ServerConfig {
            key: self.key.clone(),
            legacy_ipc: self.legacy_ipc,
            limits: self.limits,
        }
    }
}

#[cfg(test)]
mod input_tests;
#[cfg(test)]
pub(crate) mod tests;
