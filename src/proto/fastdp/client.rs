//! Ferry's FastDP 1.2.0 clients as pure state machines: [`PushClient`] (the data sender of an
//! upload, one per connection, all sharing one [`SendPlan`]) and [`PullClient`] (the data
//! receiver of a download).
//!
//! ```text
//!              101 read whole (F4)        reply Header               (push: data sender,
//!   Handshake ─────────────────► Reply ───────────────────► Transfer   pull: data receiver,
//!       │ EOF, other status,       │ Error, bad reply                   see `connection`)
//!       │ no key echo: Failed      │ EOF: PeerClosed
//!       └────────────► Closed ◄────┘
//! ```
//!
//! Nothing FastDP is sent before the whole 101 has been read and checked; EOF or another status
//! fails at once, never a busy loop. Retrying is the driver's: [`Backoff`](super::schedule::Backoff)
//! gives the delays, and an Error with a final code ends the TransferId (F31).

use std::time::Instant;

use super::connection::{Event, Input, Io, Receiver, SendChunk, Sender, SenderRole};
use super::frame::{put_jmsg, ChunkDecoder, JmsgReader, Rules};
use super::http::{put_request, ResponseError, ResponseParser, Status, Version};
use super::messages::{
    parse_message, Checksum, ErrorCode, ErrorMsg, Header, Message, PullReply, PullRequest,
    ReplyHeader,
};
use super::plan::SendPlan;
use super::schedule::{InputClock, Limits};

/// Where and how a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// `host:port` for the `Host` header.
    pub host: String,
    /// Request path (default `/fastdp-endpoint`).
    pub path: String,
    /// `Sec-FastDP-Key` ([`key_from_random`](super::http::key_from_random)).
    pub key: String,
    pub limits: Limits,
}

/// The handshake and reply phases both clients share.
#[derive(Debug)]
enum Opening {
    Handshake(ResponseParser),
    Reply(JmsgReader),
}

impl Opening {
    fn start(now: Instant, cfg: &ClientConfig, io: &mut Io) -> (Opening, InputClock) {
        put_request(&cfg.host, &cfg.path, &cfg.key, Version::V120, &mut io.out);
        (
            Opening::Handshake(ResponseParser::new(&cfg.key, Version::V120)),
            InputClock::new(now),
        )
    }
}

/// What the opening phase produced.
enum Opened {
    /// Need more input.
    Partial(usize),
    /// The 101 is in: send the header now.
    Upgraded(usize),
    /// The reply JMSG body.
    Reply(usize, Vec<u8>),
    /// The error, and the handshake's own failure when that is what failed.
    Failed(usize, ErrorMsg, Option<ResponseError>),
}

fn open_input(opening: &mut Opening, input: &[u8]) -> Opened {
    match opening {
        Opening::Handshake(p) => {
            let (n, st) = p.feed(input);
            match st {
                Status::Partial => Opened::Partial(n),
                Status::Complete(Ok(())) => {
                    *opening = Opening::Reply(JmsgReader::new());
                    Opened::Upgraded(n)
                }
                Status::Complete(Err(e)) => Opened::Failed(
                    n,
                    ErrorMsg::new(ErrorCode::Internal, e.to_string()),
                    Some(e),
                ),
            }
        }
        Opening::Reply(r) => {
            let n = r.feed(input);
            match r.next_message() {
                Ok(None) => Opened::Partial(n),
                Ok(Some(body)) => Opened::Reply(n, body.to_vec()),
                Err(e) => Opened::Failed(
                    n,
                    ErrorMsg::new(ErrorCode::Internal, format!("reply: {e}")),
                    None,
                ),
            }
        }
    }
}

fn open_eof(opening: &Opening) -> (Event, Option<ResponseError>) {
    match opening {
        Opening::Handshake(p) => {
            let e = p.eof();
            (
                Event::Failed(ErrorMsg::new(ErrorCode::Internal, e.to_string())),
                Some(e),
            )
        }
        Opening::Reply(_) => (Event::PeerClosed { clean: false }, None),
    }
}

/// An Error instead of a reply header is the server's word (its finality decides a retry).
fn reply_error(body: &[u8]) -> Option<ErrorMsg> {
    match parse_message(body) {
        Ok(Message::Error(e)) => Some(e),
        _ => None,
    }
}

#[derive(Debug)]
enum PushState {
    Opening(Opening),
    Sending(Box<Sender>),
    Closed,
}

/// One connection of a push (see the module doc).
#[derive(Debug)]
pub struct PushClient {
    header: Header,
    limits: Limits,
    clock: InputClock,
    state: PushState,
    io: Io,
    /// Why the handshake failed, when it did (a driver decides from it whether to retry).
    handshake: Option<ResponseError>,
}

impl PushClient {
    /// Opens a connection for `header` (the same on every connection of the transfer): the
    /// request is queued at once; the header follows the 101.
    pub fn new(now: Instant, cfg: &ClientConfig, header: Header) -> PushClient {
        let mut io = Io::default();
        let (opening, clock) = Opening::start(now, cfg, &mut io);
        PushClient {
            header,
            limits: cfg.limits,
            clock,
            state: PushState::Opening(opening),
            io,
            handshake: None,
        }
    }

    /// The handshake's failure (another status, EOF, a bad 101), once `Failed` reported it.
    pub fn handshake_failure(&self) -> Option<&ResponseError> {
        self.handshake.as_ref()
    }

    /// Feeds bytes from the server; returns how many were consumed (call again with the rest).
    pub fn handle_input(&mut self, now: Instant, input: &[u8]) -> usize {
        match &mut self.state {
            PushState::Opening(opening) => {
                if !input.is_empty() {
                    self.clock.restart(now);
                }
                match open_input(opening, input) {
                    Opened::Partial(n) => n,
                    Opened::Upgraded(n) => {
                        put_jmsg(&self.header.encode(), &mut self.io.out);
                        n
                    }
                    Opened::Reply(n, body) => {
                        self.reply(now, &body);
                        n
                    }
                    Opened::Failed(n, e, h) => {
                        self.handshake = h;
                        self.io.event(Event::Failed(e));
                        self.state = PushState::Closed;
                        n
                    }
                }
            }
            PushState::Sending(s) => s.input(now, input, &mut self.io),
            PushState::Closed => input.len(),
        }
    }

    fn reply(&mut self, now: Instant, body: &[u8]) {
        if let Some(e) = reply_error(body) {
            self.io.event(Event::PeerError(e));
            self.state = PushState::Closed;
            return;
        }
        match ReplyHeader::parse(body) {
            Ok(r) if r.header == self.header => {
                let h = &self.header;
                self.state = PushState::Sending(Box::new(Sender::new(
                    now,
                    SenderRole::Client,
                    self.limits,
                    h.geometry(),
                    h.checksum,
                    h.reconnect_bytes(),
                )));
                self.io.event(Event::PushAccepted {
                    have: r.have,
                    max_connections: r.max_connections,
                });
            }
            Ok(_) => self.fail(ErrorMsg::new(
                ErrorCode::Internal,
                "reply header does not echo the header",
            )),
            Err(e) => self.fail(ErrorMsg::new(ErrorCode::Internal, format!("reply: {e}"))),
        }
    }

    fn fail(&mut self, e: ErrorMsg) {
        self.io.event(Event::Failed(e));
        self.state = PushState::Closed;
    }

    /// The next chunk to send from the shared plan, or `None` (nothing now; FIN is queued by
    /// the machine itself when due). Returns `None` until the previous transmit was taken.
    pub fn poll_send(&mut self, now: Instant, plan: &mut SendPlan) -> Option<SendChunk> {
        match &mut self.state {
            PushState::Sending(s) => s.poll_send(now, plan, &mut self.io),
            _ => None,
        }
    }

    /// The 8 header bytes for a chunk from `poll_send` with `payload_len` bytes.
    pub fn begin_chunk(&mut self, chunk: u32, payload_len: u32) -> [u8; 8] {
        match &mut self.state {
            PushState::Sending(s) => s.begin_chunk(chunk, payload_len),
            _ => super::frame::chunk_header(chunk, payload_len),
        }
    }

    /// Chunks sent here and not yet acknowledged (give them back with `SendPlan::release`
    /// when the connection ends).
    pub fn in_flight(&self) -> &[u32] {
        match &self.state {
            PushState::Sending(s) => s.in_flight(),
            _ => &[],
        }
    }

    /// Sends a control frame `Error` (e.g. `internal`, "source file changed") and closes.
    pub fn abort(&mut self, e: ErrorMsg) {
        if let PushState::Sending(_) = self.state {
            super::frame::put_control(&Message::Error(e.clone()).encode(), &mut self.io.out);
        }
        self.fail(e);
    }

    pub fn handle_eof(&mut self, _now: Instant) {
        match &mut self.state {
            PushState::Opening(o) => {
                let (ev, h) = open_eof(o);
                self.handshake = h;
                self.io.event(ev);
                self.state = PushState::Closed;
            }
            PushState::Sending(s) => s.eof(&mut self.io),
            PushState::Closed => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            PushState::Opening(_) if now >= self.clock.deadline(&self.limits) => {
                self.fail(ErrorMsg::new(ErrorCode::Timeout, "server silent"))
            }
            PushState::Sending(s) => s.handle_timeout(now, &mut self.io),
            _ => {}
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            PushState::Opening(_) => Some(self.clock.deadline(&self.limits)),
            PushState::Sending(s) => s.poll_timeout(),
            PushState::Closed => None,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.io.take_out()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    /// Send what is queued, then close.
    pub fn is_finished(&self) -> bool {
        match &self.state {
            PushState::Closed => true,
            PushState::Sending(s) => s.is_done(),
            PushState::Opening(_) => false,
        }
    }
}

#[derive(Debug)]
enum PullState {
    Opening(Opening),
    Receiving(Box<Receiver>),
    Closed,
}

/// One connection of a pull (see the module doc).
#[derive(Debug)]
pub struct PullClient {
    request: PullRequest,
    limits: Limits,
    clock: InputClock,
    state: PullState,
    io: Io,
    /// Why the handshake failed, when it did.
    handshake: Option<ResponseError>,
}

impl PullClient {
    /// Opens a connection for `request` (the same TransferId on every connection; `have`,
    /// `one_chunk` and `checksum` from the `.part` when resuming).
    pub fn new(now: Instant, cfg: &ClientConfig, request: PullRequest) -> PullClient {
        let mut io = Io::default();
        let (opening, clock) = Opening::start(now, cfg, &mut io);
        PullClient {
            request,
            limits: cfg.limits,
            clock,
            state: PullState::Opening(opening),
            io,
            handshake: None,
        }
    }

    /// The handshake's failure (another status, EOF, a bad 101), once `Failed` reported it.
    pub fn handshake_failure(&self) -> Option<&ResponseError> {
        self.handshake.as_ref()
    }

    /// Feeds bytes from the server (see [`Input`] for the calling pattern).
    pub fn handle_input<'a>(&mut self, now: Instant, input: &'a [u8]) -> Input<'a> {
        match &mut self.state {
            PullState::Opening(opening) => {
                if !input.is_empty() {
                    self.clock.restart(now);
                }
                let n = match open_input(opening, input) {
                    Opened::Partial(n) => n,
                    Opened::Upgraded(n) => {
                        put_jmsg(&self.request.encode(), &mut self.io.out);
                        n
                    }
                    Opened::Reply(n, body) => {
                        self.reply(now, &body);
                        n
                    }
                    Opened::Failed(n, e, h) => {
                        self.handshake = h;
                        self.io.event(Event::Failed(e));
                        self.state = PullState::Closed;
                        n
                    }
                };
                Input::consumed(n)
            }
            PullState::Receiving(r) => r.input(now, input, &mut self.io),
            PullState::Closed => Input::consumed(input.len()),
        }
    }

    fn reply(&mut self, now: Instant, body: &[u8]) {
        if let Some(e) = reply_error(body) {
            self.io.event(Event::PeerError(e));
            self.state = PullState::Closed;
            return;
        }
        let r = match PullReply::parse(body) {
            Ok(r) => r,
            Err(e) => {
                return self.fail_local(ErrorMsg::new(ErrorCode::Internal, format!("reply: {e}")))
            }
        };
        let q = &self.request;
        let why = if r.transfer_id != q.transfer_id {
            Some("another TransferId")
        } else if r.have != q.have {
            Some("another Have")
        } else if q.one_chunk.is_some_and(|n| n != r.one_chunk)
            || q.checksum.is_some_and(|c| c != r.checksum)
        {
            Some("other parameters than the resumed transfer")
        } else if r.compress == super::frame::Compress::Zstd && !q.accept_zstd {
            Some("Zstd chunks not asked for")
        } else {
            None
        };
        if let Some(why) = why {
            return self.fail_local(ErrorMsg::new(ErrorCode::Internal, format!("reply: {why}")));
        }
        let rules = Rules::V120 {
            geometry: r.geometry(),
            compress: r.compress,
        };
        self.state = PullState::Receiving(Box::new(Receiver::new(
            now,
            self.limits,
            ChunkDecoder::new(rules),
        )));
        self.io.event(Event::PullAccepted(r));
    }

    fn fail_local(&mut self, e: ErrorMsg) {
        self.io.event(Event::Failed(e));
        self.state = PullState::Closed;
    }

    /// Chunk `chunk` is written whole with its length checked; `all_held`: the download now
    /// holds every chunk.
    pub fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool) {
        if let PullState::Receiving(r) = &mut self.state {
            r.chunk_stored(now, chunk, all_held, &mut self.io);
        }
    }

    /// Chunk `chunk`'s payload was bad: Error `bad-chunk` to the server, then close.
    pub fn chunk_failed(&mut self, chunk: u32, why: &str) {
        let e = ErrorMsg::new(ErrorCode::BadChunk, format!("chunk {chunk}: {why}"))
            .with_chunk(Some(chunk));
        self.fail(e);
    }

    /// Answers `AckDue`.
    pub fn ack(&mut self, durable: &[(u32, u32)]) {
        if let PullState::Receiving(r) = &mut self.state {
            r.ack(durable, &mut self.io);
        }
    }

    /// Answers `FinReceived`.
    pub fn answer_fin(&mut self, now: Instant, durable: &[(u32, u32)], all_held: bool) {
        if let PullState::Receiving(r) = &mut self.state {
            r.answer_fin(now, durable, all_held, &mut self.io);
        }
    }

    /// The download verified and committed as `file_name`: `Complete`, then close.
    pub fn complete(&mut self, file_name: &str, checksum: Checksum) {
        if let PullState::Receiving(r) = &mut self.state {
            r.complete(file_name, checksum, &mut self.io);
        }
    }

    /// Ends the connection with an Error JMSG (`checksum-mismatch` after a failed
    /// verification: delete the partial file and start over with a new TransferId).
    pub fn fail(&mut self, e: ErrorMsg) {
        match &mut self.state {
            PullState::Receiving(r) => r.fail_with(e, &mut self.io),
            _ => self.fail_local(e),
        }
    }

    pub fn handle_eof(&mut self, _now: Instant) {
        match &mut self.state {
            PullState::Opening(o) => {
                let (ev, h) = open_eof(o);
                self.handshake = h;
                self.io.event(ev);
                self.state = PullState::Closed;
            }
            PullState::Receiving(r) => r.eof(&mut self.io),
            PullState::Closed => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            PullState::Opening(_) if now >= self.clock.deadline(&self.limits) => {
                self.fail_local(ErrorMsg::new(ErrorCode::Timeout, "server silent"))
            }
            PullState::Receiving(r) => r.handle_timeout(now, &mut self.io),
            _ => {}
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            PullState::Opening(_) => Some(self.clock.deadline(&self.limits)),
            PullState::Receiving(r) => r.poll_timeout(),
            PullState::Closed => None,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.io.take_out()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    pub fn is_finished(&self) -> bool {
        match &self.state {
            PullState::Closed => true,
            PullState::Receiving(r) => r.is_done(),
            PullState::Opening(_) => false,
        }
    }
}
