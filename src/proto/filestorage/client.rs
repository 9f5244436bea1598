//! filestorage client machines (spec 4.4, 6): [`Put`] for `ferry filestorage put`, [`QueryClient`]
//! and [`FetchClient`]. Pure: RESPONSE bytes in, request bytes and events out; the driver reads
//! file bytes, writes fetched bytes, owns the socket and its timeouts, and reconnects.
//!
//! ```text
//! Put:
//!   new / handle_disconnect ──► AUTHENTICATION sent ──Ok(missing, more)──► Sending
//!        ▲                              │ Error ─► Failed                   │
//!        │                              ▼                                   │ ReadChunk events,
//!        │                            Failed                                │ send_chunk, Oks
//!        └── all answered and (more, or a file not yet seen complete) ◄─────┤
//!                                     all answered, every file complete ───►  Done
//! ```
//!
//! Only an Ok counts as delivery. After a drop the driver reconnects and calls
//! [`Put::handle_disconnect`]: the machine sends AUTHENTICATION again with the same `fid` and a
//! new `message-id`, and sends exactly the ranges in the new `missing`. At most `window`
//! TRANSFERs (the smaller of the client's and the server's) are unanswered or being read.

use super::base64;
use super::frame::{finish_frame, start_frame, Decoded, FrameDecoder, Framing};
use super::ids::{chunk_id, store_id, MessageIds, Uuid};
use super::json::{
    encode_authentication, encode_fetch, encode_query, encode_transfer, parse_response, utype,
    ChunkRange, FileSpec, MessageId, OkFields, QueryResult, ResponseBody, MIN_CHUNK_SIZE,
};
use super::store::missing::{chunk_count, chunk_len};
use std::collections::VecDeque;
use std::fmt;

/// Why a client machine stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The server answered Error; `reason` is its text (match on
    /// [`Code::of_reason`](super::reason::Code::of_reason)).
    Refused {
        request: &'static str,
        reason: String,
    },
    /// The server broke the protocol (a reply out of order, a missing key, a bad frame...).
    Protocol(&'static str),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Refused { request, reason } => {
                write!(f, "filestorage: {request} refused: {reason}")
            }
            ClientError::Protocol(what) => {
                write!(f, "filestorage: server broke the protocol: {what}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// Reads RESPONSE frames: a server sends nothing else.
#[derive(Debug)]
struct Replies {
    decoder: FrameDecoder,
}

impl Replies {
    fn new() -> Replies {
        Replies {
            decoder: FrameDecoder::new(false),
        }
    }

    /// The next whole reply's JSON, `Ok(None)` when more bytes are needed.
    fn next(&mut self) -> Result<Option<&[u8]>, ClientError> {
        match self.decoder.next_frame() {
            Err(_) => Err(ClientError::Protocol("frame length")),
            Ok(None) => Ok(None),
            Ok(Some(Decoded::PeerClosing)) => Err(ClientError::Protocol("frame")),
            Ok(Some(Decoded::Frame(f))) if f.utype != utype::RESPONSE => {
                Err(ClientError::Protocol("not a RESPONSE"))
            }
            Ok(Some(Decoded::Frame(f))) => Ok(Some(f.json)),
        }
    }
}

/// Checks that `json` answers `expected` and returns its Ok fields, or the refusal.
fn answer<'a>(
    json: &'a [u8],
    expected: &MessageId,
    request: &'static str,
) -> Result<OkFields<'a>, ClientError> {
    let r = parse_response(json).map_err(|_| ClientError::Protocol("bad RESPONSE"))?;
    if r.message_id != *expected {
        return Err(ClientError::Protocol("reply to another message"));
    }
    match r.body {
        ResponseBody::Ok(f) => Ok(f),
        ResponseBody::Error(reason) => Err(ClientError::Refused { request, reason }),
    }
}

fn frame_with(out: &mut Vec<u8>, ut: u8, encode: impl FnOnce(&mut Vec<u8>)) {
    let at = start_frame(out, Framing::Current, ut);
    encode(out);
    finish_frame(out, Framing::Current, at);
}

/// What `ferry filestorage put` sends.
#[derive(Clone, Debug)]
pub struct PutConfig {
    pub token: String,
    pub files: Vec<FileSpec>,
    pub tags: Vec<String>,
    /// See [`client_fid`](super::ids::client_fid).
    pub fid: Uuid,
    /// `chunk-size` to ask for; `None` leaves the key out (the server's default, 1000).
    pub chunk_size: Option<u32>,
    /// Most TRANSFERs to leave unanswered (the server's `window` caps it).
    pub window: u32,
}

/// A chunk to read from the source file and hand to [`Put::send_chunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub file: u32,
    pub n: u64,
    pub offset: u64,
    pub len: u64,
}

/// What the driver must do or know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutEvent {
    /// Read `len` bytes at `offset` of file `file`, then call [`Put::send_chunk`].
    ReadChunk(ChunkRef),
    /// File `file` is stored under `id`.
    FileComplete { file: u32, id: Uuid },
    /// Every file of the batch is stored.
    Done,
    /// Stopped; the batch stays resumable with the same `fid`.
    Failed(ClientError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PutState {
    Authenticating,
    Sending,
    Done,
    Failed,
}

#[derive(Clone, Copy, Debug)]
enum Sent {
    Auth,
    Transfer { file: u32 },
}

/// The `put` machine (see the module doc).
#[derive(Debug)]
pub struct Put {
    config: PutConfig,
    ids: MessageIds,
    state: PutState,
    replies: Replies,
    out: Vec<u8>,
    events: VecDeque<PutEvent>,
    /// Requests sent and not yet answered, in order.
    in_flight: VecDeque<(MessageId, Sent)>,
    /// ReadChunk events handed out and not yet sent.
    reading: usize,
    /// The ranges of the last AUTHENTICATION reply still to send, and the next chunk of the
    /// first one.
    ranges: VecDeque<ChunkRange>,
    more: bool,
    chunk_size: u32,
    window: u32,
    complete: Vec<Option<Uuid>>,
    /// Most TRANSFERs ever unanswered at once (for tests and logs).
    peak_in_flight: usize,
}

impl Put {
    /// A machine that starts by sending AUTHENTICATION.
    pub fn new(config: PutConfig, ids: MessageIds) -> Put {
        let files = config.files.len();
        let mut p = Put {
            config,
            ids,
            state: PutState::Authenticating,
            replies: Replies::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            in_flight: VecDeque::new(),
            reading: 0,
            ranges: VecDeque::new(),
            more: false,
            chunk_size: 0,
            window: 1,
            complete: vec![None; files],
            peak_in_flight: 0,
        };
        p.send_auth();
        p
    }

    fn send_auth(&mut self) {
        let mid = MessageId::from_uuid(self.ids.next_id());
        let c = &self.config;
        frame_with(&mut self.out, utype::AUTHENTICATION, |out| {
            encode_authentication(out, &mid, &c.token, &c.files, &c.fid, &c.tags, c.chunk_size)
        });
        self.in_flight.push_back((mid, Sent::Auth));
        self.state = PutState::Authenticating;
    }

    fn fail(&mut self, e: ClientError) {
        if !matches!(self.state, PutState::Done | PutState::Failed) {
            self.state = PutState::Failed;
            self.events.push_back(PutEvent::Failed(e));
        }
    }

    /// Feeds bytes from the server.
    pub fn handle_input(&mut self, data: &[u8]) {
        if matches!(self.state, PutState::Done | PutState::Failed) {
            return;
        }
        self.replies.decoder.extend(data);
        loop {
            let json = match self.replies.next() {
                Ok(Some(j)) => j.to_vec(),
                Ok(None) => break,
                Err(e) => return self.fail(e),
            };
            if let Err(e) = self.handle_reply(&json) {
                return self.fail(e);
            }
            if matches!(self.state, PutState::Done | PutState::Failed) {
                return;
            }
        }
    }

    fn handle_reply(&mut self, json: &[u8]) -> Result<(), ClientError> {
        let Some((mid, sent)) = self.in_flight.pop_front() else {
            return Err(ClientError::Protocol("reply to nothing"));
        };
        match sent {
            Sent::Auth => {
                let f = answer(json, &mid, "authentication")?;
                self.accept_auth(f)?;
            }
            Sent::Transfer { file } => {
                let f = answer(json, &mid, "transfer")?;
                match (f.complete, f.id) {
                    (None, None) => {}
                    (Some(c), Some(id))
                        if c == u64::from(file) && id == store_id(&self.config.fid, c) =>
                    {
                        self.mark_complete(file);
                    }
                    _ => return Err(ClientError::Protocol("complete")),
                }
            }
        }
        self.maybe_next_round();
        Ok(())
    }

    fn accept_auth(&mut self, f: OkFields<'_>) -> Result<(), ClientError> {
        let (Some(missing), Some(cs), Some(window)) = (f.missing, f.chunk_size, f.window) else {
            return Err(ClientError::Protocol("authentication reply keys"));
        };
        if self.config.chunk_size.is_some_and(|want| want != cs)
            || cs < MIN_CHUNK_SIZE
            || window == 0
        {
            return Err(ClientError::Protocol("chunk-size or window"));
        }
        let files = &self.config.files;
        let valid = missing.iter().all(|r| {
            files
                .get(r.file as usize)
                .is_some_and(|f| r.first < r.end && r.end <= chunk_count(f.size, cs))
        }) && missing
            .windows(2)
            .all(|w| (w[0].file, w[0].end) <= (w[1].file, w[1].first));
        if !valid {
            return Err(ClientError::Protocol("missing ranges"));
        }
        self.more = f.more.unwrap_or(false);
        if self.more && missing.is_empty() {
            // Asking again would get the same answer forever.
            return Err(ClientError::Protocol("more without ranges"));
        }
        self.chunk_size = cs;
        self.window = window.min(self.config.window).max(1);
        if !self.more {
            // Every file without a missing range is stored.
            for i in 0..files.len() {
                if !missing.iter().any(|r| r.file as usize == i) {
                    self.mark_complete(i as u32);
                }
            }
        }
        self.ranges = missing.into();
        self.state = PutState::Sending;
        Ok(())
    }

    fn mark_complete(&mut self, file: u32) {
        let slot = &mut self.complete[file as usize];
        if slot.is_none() {
            let id = store_id(&self.config.fid, u64::from(file));
            *slot = Some(id);
            self.events.push_back(PutEvent::FileComplete { file, id });
        }
    }

    /// After the last reply of a round: done, or AUTHENTICATION again for the next ranges or
    /// to confirm files whose completion was not seen (another connection finished them).
    fn maybe_next_round(&mut self) {
        if self.state != PutState::Sending
            || !self.ranges.is_empty()
            || !self.in_flight.is_empty()
            || self.reading > 0
        {
            return;
        }
        if !self.more && self.complete.iter().all(Option::is_some) {
            self.state = PutState::Done;
            self.events.push_back(PutEvent::Done);
        } else {
            self.send_auth();
        }
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<PutEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.state != PutState::Sending
            || self.in_flight.len() + self.reading >= self.window as usize
        {
            return None;
        }
        let r = self.ranges.front_mut()?;
        let size = self.config.files[r.file as usize].size;
        let n = r.first;
        let len = chunk_len(size, self.chunk_size, n)?;
        let chunk = ChunkRef {
            file: r.file,
            n,
            offset: n * u64::from(self.chunk_size),
            len,
        };
        r.first += 1;
        if r.first >= r.end {
            self.ranges.pop_front();
        }
        self.reading += 1;
        Some(PutEvent::ReadChunk(chunk))
    }

    /// Sends the bytes of a chunk asked for by [`PutEvent::ReadChunk`]. Bytes of the wrong
    /// length (the source changed under the driver) stop the machine.
    pub fn send_chunk(&mut self, chunk: ChunkRef, data: &[u8]) {
        if self.state != PutState::Sending || self.reading == 0 {
            return;
        }
        self.reading -= 1;
        if data.len() as u64 != chunk.len {
            return self.fail(ClientError::Protocol("source file changed size"));
        }
        let mid = MessageId::from_uuid(self.ids.next_id());
        let id = chunk_id(&self.config.fid, u64::from(chunk.file), chunk.n);
        frame_with(&mut self.out, utype::TRANSFER, |out| {
            encode_transfer(out, &mid, &id, data, u64::from(chunk.file), chunk.n)
        });
        self.in_flight
            .push_back((mid, Sent::Transfer { file: chunk.file }));
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight.len());
    }

    /// Moves the bytes to send into `out` (handing over the buffer when `out` is empty).
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.append(&mut self.out);
        }
        n
    }

    /// The connection dropped (on any hop). After reconnecting, the machine starts again with
    /// AUTHENTICATION; chunks read or sent and not answered are asked for again if `missing`
    /// lists them. Nothing happens once done or failed.
    pub fn handle_disconnect(&mut self) {
        if matches!(self.state, PutState::Done | PutState::Failed) {
            return;
        }
        self.replies = Replies::new();
        self.out.clear();
        self.in_flight.clear();
        self.reading = 0;
        self.ranges.clear();
        self.send_auth();
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, PutState::Done | PutState::Failed) && self.events.is_empty()
    }

    /// Store ids of the files known complete.
    pub fn completed(&self) -> &[Option<Uuid>] {
        &self.complete
    }

    /// Whether another TRANSFER may go before a reply comes: sending, and the window not
    /// full. A driver uses it to read replies early only when that can let it send sooner.
    pub fn has_window_room(&self) -> bool {
        self.state == PutState::Sending
            && self.in_flight.len() + self.reading < self.window as usize
    }

    /// Most TRANSFERs that were unanswered at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight
    }
}

/// What `ferry filestorage query` asks.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    pub token: String,
    pub tags: Vec<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryEvent {
    /// One page of results, in id order.
    Results(Vec<QueryResult>),
    Done,
    Failed(ClientError),
}

/// QUERY, following `more` with `after` until every result is in.
#[derive(Debug)]
pub struct QueryClient {
    config: QueryConfig,
    ids: MessageIds,
    replies: Replies,
    out: Vec<u8>,
    waiting: Option<MessageId>,
    events: VecDeque<QueryEvent>,
    finished: bool,
}

impl QueryClient {
    pub fn new(config: QueryConfig, ids: MessageIds) -> QueryClient {
        Self::starting(config, ids, None)
    }

    /// A listing that starts past the id `after` (spec 6 `after`): `ferry filestorage fetch`
    /// finds one id's name, size and SHA-256 by listing from just below it.
    pub fn new_after(config: QueryConfig, ids: MessageIds, after: Uuid) -> QueryClient {
        Self::starting(config, ids, Some(after))
    }

    fn starting(config: QueryConfig, ids: MessageIds, after: Option<Uuid>) -> QueryClient {
        let mut q = QueryClient {
            config,
            ids,
            replies: Replies::new(),
            out: Vec::new(),
            waiting: None,
            events: VecDeque::new(),
            finished: false,
        };
        q.send(after);
        q
    }

    fn send(&mut self, after: Option<Uuid>) {
        let mid = MessageId::from_uuid(self.ids.next_id());
        let c = &self.config;
        frame_with(&mut self.out, utype::QUERY, |out| {
            encode_query(
                out,
                &mid,
                &c.token,
                &c.tags,
                c.name.as_deref(),
                after.as_ref(),
            )
        });
        self.waiting = Some(mid);
    }

    fn stop(&mut self, e: QueryEvent) {
        self.finished = true;
        self.waiting = None;
        self.events.push_back(e);
    }

    pub fn handle_input(&mut self, data: &[u8]) {
        if self.finished {
            return;
        }
        self.replies.decoder.extend(data);
        while !self.finished {
            let json = match self.replies.next() {
                Ok(Some(j)) => j.to_vec(),
                Ok(None) => return,
                Err(e) => return self.stop(QueryEvent::Failed(e)),
            };
            let Some(mid) = self.waiting.take() else {
                return self.stop(QueryEvent::Failed(ClientError::Protocol(
                    "reply to nothing",
                )));
            };
            let f = match answer(&json, &mid, "query") {
                Ok(f) => f,
                Err(e) => return self.stop(QueryEvent::Failed(e)),
            };
            let (Some(results), Some(more)) = (f.results, f.more) else {
                return self.stop(QueryEvent::Failed(ClientError::Protocol(
                    "query reply keys",
                )));
            };
            let last = results.last().map(|r| r.id);
            self.events.push_back(QueryEvent::Results(results));
            match (more, last) {
                (false, _) => self.stop(QueryEvent::Done),
                (true, Some(after)) => self.send(Some(after)),
                (true, None) => self.stop(QueryEvent::Failed(ClientError::Protocol(
                    "more without results",
                ))),
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<QueryEvent> {
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        out.append(&mut self.out);
        n
    }

    pub fn is_finished(&self) -> bool {
        self.finished && self.events.is_empty()
    }
}

/// What `ferry filestorage fetch` asks.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    pub token: String,
    pub id: Uuid,
    /// The size from a QUERY result: FETCHes are then pipelined `window` deep. Unknown, they go
    /// one at a time until `eof`.
    pub size: Option<u64>,
    /// First byte wanted.
    pub start: u64,
    /// Bytes per FETCH (1..=65,536).
    pub length: u64,
    pub window: u32,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchEvent<'a> {
    /// Bytes at `offset` of the file, in order.
    Data {
        offset: u64,
        bytes: &'a [u8],
    },
    /// Every byte from `start` to the end arrived.
    Done,
    Failed(ClientError),
}

/// FETCH, pipelined when the size is known.
#[derive(Debug)]
pub struct FetchClient {
    config: FetchConfig,
    ids: MessageIds,
    replies: Replies,
    out: Vec<u8>,
    /// (message-id, offset) of FETCHes sent, in order.
    in_flight: VecDeque<(MessageId, u64)>,
    /// Next offset to ask for, `None` once the end has been asked for.
    next: Option<u64>,
    scratch: Vec<u8>,
    finished: bool,
    /// `Done` is owed after the last `Data`.
    done_pending: bool,
}

impl FetchClient {
    pub fn new(config: FetchConfig, ids: MessageIds) -> FetchClient {
        let length = config.length.clamp(1, 65_536);
        let mut f = FetchClient {
            next: Some(config.start),
            config: FetchConfig { length, ..config },
            ids,
            replies: Replies::new(),
            out: Vec::new(),
            in_flight: VecDeque::new(),
            scratch: Vec::new(),
            finished: false,
            done_pending: false,
        };
        f.fill_window();
        f
    }

    fn fill_window(&mut self) {
        let depth = match self.config.size {
            Some(_) => self.config.window.max(1) as usize,
            None => 1,
        };
        while self.in_flight.len() < depth {
            let Some(offset) = self.next else {
                return;
            };
            let mid = MessageId::from_uuid(self.ids.next_id());
            let c = &self.config;
            frame_with(&mut self.out, utype::FETCH, |out| {
                encode_fetch(out, &mid, &c.token, &c.id, offset, c.length)
            });
            self.in_flight.push_back((mid, offset));
            self.next = match self.config.size {
                Some(size) => offset.checked_add(self.config.length).filter(|&o| o < size),
                None => None,
            };
        }
    }

    pub fn handle_input(&mut self, data: &[u8]) {
        if !self.finished {
            self.replies.decoder.extend(data);
        }
    }

    /// The next event; each [`FetchEvent::Data`] lends bytes decoded from one reply.
    pub fn poll_event(&mut self) -> Option<FetchEvent<'_>> {
        if self.finished {
            return std::mem::take(&mut self.done_pending).then_some(FetchEvent::Done);
        }
        match self.step() {
            Ok(None) => None,
            Ok(Some((offset, eof))) => {
                if eof {
                    self.finished = true;
                    self.done_pending = true;
                } else {
                    self.fill_window();
                }
                Some(FetchEvent::Data {
                    offset,
                    bytes: &self.scratch,
                })
            }
            Err(e) => {
                self.finished = true;
                Some(FetchEvent::Failed(e))
            }
        }
    }

    /// Decodes the next reply into the scratch buffer (its JSON is read in place, not copied):
    /// its offset and whether it was the last.
    fn step(&mut self) -> Result<Option<(u64, bool)>, ClientError> {
        let FetchClient {
            config,
            replies,
            in_flight,
            next,
            scratch,
            ..
        } = self;
        let Some(json) = replies.next()? else {
            return Ok(None);
        };
        let (mid, offset) = in_flight
            .pop_front()
            .ok_or(ClientError::Protocol("reply to nothing"))?;
        let f = answer(json, &mid, "fetch")?;
        let (Some(data), Some(eof)) = (f.data, f.eof) else {
            return Err(ClientError::Protocol("fetch reply keys"));
        };
        scratch.clear();
        base64::decode_append(data.as_bytes(), scratch)
            .map_err(|_| ClientError::Protocol("fetch data"))?;
        let got = scratch.len() as u64;
        match config.size {
            Some(size) => {
                let due = config.length.min(size.saturating_sub(offset));
                if got != due || eof != (offset.saturating_add(got) == size) {
                    return Err(ClientError::Protocol("fetch length"));
                }
            }
            None if !eof && got != config.length => {
                return Err(ClientError::Protocol("fetch length"))
            }
            None if !eof => {
                *next = Some(
                    offset
                        .checked_add(got)
                        .ok_or(ClientError::Protocol("fetch offset"))?,
                )
            }
            None => {}
        }
        if eof {
            *next = None;
            in_flight.clear();
        }
        Ok(Some((offset, eof)))
    }

    /// True once `Done` or `Failed` was handed out.
    pub fn is_finished(&self) -> bool {
        self.finished && !self.done_pending
    }

    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        out.append(&mut self.out);
        n
    }
}

#[cfg(test)]
mod tests;
