//! The server side of one FastDP connection as a pure state machine.
//!
//! ```text
//!                 head ok: 101                   header JMSG
//!   Handshake ──────────────────► Header ─────────────────────► Deciding
//!       │ bad head: 400/404/426       │ bad header: Error (1.1.0: ERROR line)   │
//!       │ 10 s: 408                   │ 10 s: timeout                           │
//!       └──► Closed ◄─────────────────┘                                         │
//!                                  ┌──────────────┬──────────────┬──────────────┤
//!                      accept_push │  accept_pull │  accept_v110 │      refuse* │
//!                                  ▼              ▼              ▼              ▼
//!                         Push (receiver)  Pull (sender)   V110: chunks 0..n,  Closed
//!                         see connection   see connection  V110Received,
//!                                                          v110_done: reply line
//! ```
//!
//! The machine owns no transfer state: whether chunks are durable, which CRC is held, whether
//! the transfer is complete, how many connections it has, all live in the shared registry the
//! driver keeps, and come in through the decision and report methods ([`Event`] names which one
//! answers each event). Timeouts (F29, F30) come from [`handle_timeout`](ServerConnection::handle_timeout)
//! with the time the driver read.

use std::time::Instant;

use super::connection::{Event, Input, Io, Payload, Receiver, SendChunk, Sender, SenderRole};
use super::frame::{ChunkDecoder, ChunkEvent, JmsgReader, Rules};
use super::http::{switching_protocols, HeadParser, Refusal, RequestRules, Status, Version};
use super::messages::{
    parse_request, Checksum, ErrorCode, ErrorMsg, Have, Header, Message, PullReply, ReplyHeader,
    Request, V110Header, V110HeaderError,
};
use super::plan::SendPlan;
use super::schedule::{InputClock, Limits};
use super::v110::{V110Error, SUCCESS};

/// The server's settings for one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    pub rules: RequestRules,
    pub limits: Limits,
}

/// `too-many-connections` (F16): a transfer with `open` connections already, at most
/// `max_connections`, takes no more. The driver counts; this is the rule and the message.
pub fn check_connections(open: u32, max_connections: u32) -> Result<(), ErrorMsg> {
    if open < max_connections {
        Ok(())
    } else {
        Err(ErrorMsg::new(
            ErrorCode::TooManyConnections,
            format!("transfer already has {open} connections, at most {max_connections}"),
        ))
    }
}

/// `parameter-mismatch` (F17): a known TransferId must come with the same parameters.
pub fn check_parameters(stored: &Header, header: &Header) -> Result<(), ErrorMsg> {
    if stored.same_parameters(header) {
        Ok(())
    } else {
        Err(ErrorMsg::new(
            ErrorCode::ParameterMismatch,
            "TransferId known with other parameters",
        ))
    }
}

#[derive(Debug)]
enum Pending {
    Push(Header),
    Pull,
    V110(V110Header),
}

#[derive(Debug)]
struct V110Receiving {
    decoder: ChunkDecoder,
    clock: InputClock,
    /// Every chunk is in and `V110Received` was reported.
    received: bool,
}

#[derive(Debug)]
enum State {
    Handshake {
        parser: HeadParser,
        deadline: Instant,
    },
    Header {
        version: Version,
        reader: JmsgReader,
        deadline: Instant,
    },
    Deciding(Pending),
    Push(Receiver),
    Pull(Sender),
    V110(V110Receiving),
    Closed,
}

/// One server connection (see the module doc).
#[derive(Debug)]
pub struct ServerConnection {
    cfg: ServerConfig,
    state: State,
    io: Io,
}

impl ServerConnection {
    /// A connection accepted at `now`: the head must be complete by `now + head_timeout`.
    pub fn new(now: Instant, cfg: ServerConfig) -> ServerConnection {
        let deadline = now + cfg.limits.head_timeout;
        ServerConnection {
            cfg,
            state: State::Handshake {
                parser: HeadParser::new(),
                deadline,
            },
            io: Io::default(),
        }
    }

    /// Feeds bytes read from the peer (see [`Input`] for the calling pattern).
    pub fn handle_input<'a>(&mut self, now: Instant, input: &'a [u8]) -> Input<'a> {
        match &mut self.state {
            State::Handshake { parser, .. } => {
                let (n, status) = parser.feed(input, &self.cfg.rules);
                match status {
                    Status::Partial => {}
                    Status::Complete(Ok(up)) => {
                        switching_protocols(&up.key, up.version, &mut self.io.out);
                        self.state = State::Header {
                            version: up.version,
                            reader: JmsgReader::new(),
                            deadline: now + self.cfg.limits.header_timeout,
                        };
                    }
                    Status::Complete(Err(refusal)) => self.refuse_head(refusal),
                }
                Input::consumed(n)
            }
            State::Header {
                version, reader, ..
            } => {
                let version = *version;
                let n = reader.feed(input);
                match reader.next_message() {
                    Ok(None) => {}
                    Ok(Some(body)) => {
                        let body = body.to_vec();
                        self.header(version, &body);
                    }
                    Err(e) => match version {
                        Version::V110 => self.fail_v110(V110Error::BadHeader),
                        Version::V120 => self
                            .fail_jmsg(ErrorMsg::new(ErrorCode::BadHeader, format!("header: {e}"))),
                    },
                }
                Input::consumed(n)
            }
            State::Deciding(_) => Input::consumed(0),
            State::Push(r) => r.input(now, input, &mut self.io),
            State::Pull(s) => Input::consumed(s.input(now, input, &mut self.io)),
            State::V110(v) => {
                if v.received {
                    return Input::consumed(input.len());
                }
                let (n, r) = v.decoder.decode(input);
                v.clock
                    .input(now, n, v.decoder.frame_remaining(), &self.cfg.limits);
                let mut out = Input::consumed(n);
                match r {
                    Ok(None) => {}
                    Ok(Some(ChunkEvent::Start { chunk, len })) => {
                        self.io.event(Event::ChunkStart { chunk, len })
                    }
                    Ok(Some(ChunkEvent::Payload {
                        chunk,
                        offset,
                        bytes,
                    })) => {
                        out.payload = Some(Payload {
                            chunk,
                            offset,
                            bytes,
                        })
                    }
                    Ok(Some(ChunkEvent::End { chunk })) => {
                        self.io.event(Event::ChunkEnd { chunk });
                        if v.decoder.is_v110_done() {
                            v.received = true;
                            self.io.event(Event::V110Received);
                        }
                    }
                    // 1.1.0 rules yield neither FIN nor control frames.
                    Ok(Some(ChunkEvent::Fin | ChunkEvent::Control(_))) | Err(_) => {
                        self.fail_v110(V110Error::MalformedChunkHeader)
                    }
                }
                out
            }
            State::Closed => Input::consumed(input.len()),
        }
    }

    fn refuse_head(&mut self, refusal: Refusal) {
        self.io.out.extend_from_slice(refusal.response());
        self.io.event(Event::Refused(refusal));
        self.state = State::Closed;
    }

    fn header(&mut self, version: Version, body: &[u8]) {
        match version {
            Version::V110 => match V110Header::parse(body) {
                Ok(h) => {
                    self.io.event(Event::V110Header(h.clone()));
                    self.state = State::Deciding(Pending::V110(h));
                }
                Err(V110HeaderError::BadFileName) => self.fail_v110(V110Error::BadFileName),
                Err(V110HeaderError::BadHeader(_)) => self.fail_v110(V110Error::BadHeader),
            },
            Version::V120 => match parse_request(body) {
                Ok(Request::Push(h)) => {
                    self.io.event(Event::PushHeader(h.clone()));
                    self.state = State::Deciding(Pending::Push(h));
                }
                Ok(Request::Pull(p)) => {
                    self.io.event(Event::PullRequest(p));
                    self.state = State::Deciding(Pending::Pull);
                }
                Err(e) => self.fail_jmsg(ErrorMsg::new(e.code(), e.to_string())),
            },
        }
    }

    /// Queues an Error JMSG and closes (header phase, push receiver, refusals).
    fn fail_jmsg(&mut self, e: ErrorMsg) {
        self.io.jmsg(&Message::Error(e.clone()).encode());
        self.io.event(Event::Failed(e));
        self.state = State::Closed;
    }

    fn fail_v110(&mut self, e: V110Error) {
        if let State::V110(v) = &self.state {
            if let Some(chunk) = v.decoder.current_chunk() {
                self.io.event(Event::ChunkAborted { chunk });
            }
        }
        self.io.out.extend_from_slice(e.line());
        self.io.event(Event::V110Failed(e));
        self.state = State::Closed;
    }

    /// Accepts a push header: the reply echoes it with `have` (durable ranges of this
    /// TransferId, `[]` if new) and `max_connections`; then chunks are received.
    pub fn accept_push(&mut self, now: Instant, have: Have, max_connections: u32) {
        let State::Deciding(Pending::Push(header)) = &self.state else {
            return;
        };
        let reply = ReplyHeader {
            header: header.clone(),
            have,
            max_connections,
        };
        self.io.jmsg(&reply.encode());
        let rules = Rules::V120 {
            geometry: header.geometry(),
            compress: header.compress,
        };
        self.state = State::Push(Receiver::new(
            now,
            self.cfg.limits,
            ChunkDecoder::new(rules),
        ));
    }

    /// Accepts a pull: sends `reply` and becomes the data sender.
    pub fn accept_pull(&mut self, now: Instant, reply: &PullReply) {
        if !matches!(self.state, State::Deciding(Pending::Pull)) {
            return;
        }
        self.io.jmsg(&reply.encode());
        self.state = State::Pull(Sender::new(
            now,
            SenderRole::Server,
            self.cfg.limits,
            reply.geometry(),
            reply.checksum,
            reply.reconnect_bytes,
        ));
    }

    /// Accepts a 1.1.0 header: chunks 0, 1, 2... follow, with no reply before the last.
    pub fn accept_v110(&mut self, now: Instant) {
        let State::Deciding(Pending::V110(h)) = &self.state else {
            return;
        };
        let decoder = ChunkDecoder::new(Rules::V110 {
            geometry: h.geometry(),
        });
        let received = decoder.is_v110_done();
        self.state = State::V110(V110Receiving {
            decoder,
            clock: InputClock::new(now),
            received,
        });
        if received {
            self.io.event(Event::V110Received);
        }
    }

    /// Refuses the header just reported (or fails a 1.2.0 connection at any point): Error JMSG
    /// (a control frame in pull, where the server is the data sender), then close.
    pub fn refuse(&mut self, e: ErrorMsg) {
        self.fail(e);
    }

    /// Refuses a 1.1.0 header or transfer with its `ERROR:` line.
    pub fn refuse_v110(&mut self, e: V110Error) {
        self.fail_v110(e);
    }

    /// Ends the connection with `e` (F31: the close follows).
    pub fn fail(&mut self, e: ErrorMsg) {
        match &mut self.state {
            State::Push(r) => r.fail_with(e, &mut self.io),
            State::Pull(s) => s.fail(e, &mut self.io),
            State::Closed => {}
            _ => self.fail_jmsg(e),
        }
    }

    /// 1.1.0: the outcome of verification, decoding and commit; the reply line goes out.
    pub fn v110_done(&mut self, result: Result<(), V110Error>) {
        if !matches!(&self.state, State::V110(v) if v.received) {
            return;
        }
        match result {
            Ok(()) => {
                self.io.out.extend_from_slice(SUCCESS);
                self.state = State::Closed;
            }
            Err(e) => self.fail_v110(e),
        }
    }

    /// Push: chunk `chunk` is written whole with its length checked (not yet durable);
    /// `all_held` says the transfer now holds every chunk.
    pub fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool) {
        if let State::Push(r) = &mut self.state {
            r.chunk_stored(now, chunk, all_held, &mut self.io);
        }
    }

    /// Push: chunk `chunk`'s payload was bad (a zstd frame breaking 2.6): `bad-chunk`, close.
    /// 1.1.0: the driver failed to store it: use `refuse_v110`.
    pub fn chunk_failed(&mut self, chunk: u32, why: &str) {
        let e = ErrorMsg::new(ErrorCode::BadChunk, format!("chunk {chunk}: {why}"))
            .with_chunk(Some(chunk));
        self.fail(e);
    }

    /// Push: answers `AckDue` with the chunks now durable and their CRCs.
    pub fn ack(&mut self, durable: &[(u32, u32)]) {
        if let State::Push(r) = &mut self.state {
            r.ack(durable, &mut self.io);
        }
    }

    /// Push: answers `FinReceived`.
    pub fn answer_fin(&mut self, now: Instant, durable: &[(u32, u32)], all_held: bool) {
        if let State::Push(r) = &mut self.state {
            r.answer_fin(now, durable, all_held, &mut self.io);
        }
    }

    /// Push: the file is verified and committed as `file_name` (F18).
    pub fn complete(&mut self, file_name: &str, checksum: Checksum) {
        if let State::Push(r) = &mut self.state {
            r.complete(file_name, checksum, &mut self.io);
        }
    }

    /// Push: asks the sender to recycle this connection (advisory).
    pub fn request_reconnect(&mut self) {
        if matches!(&self.state, State::Push(r) if !r.is_done() && !r.is_verifying()) {
            self.io.jmsg(&Message::Reconnect.encode());
        }
    }

    /// Pull: the next chunk to send, taken from the transfer's plan; `None` while bytes are
    /// queued for sending, while waiting for Acks, and after FIN (which it queues itself).
    pub fn poll_send(&mut self, now: Instant, plan: &mut SendPlan) -> Option<SendChunk> {
        match &mut self.state {
            State::Pull(s) => s.poll_send(now, plan, &mut self.io),
            _ => None,
        }
    }

    /// Pull: the 8 header bytes for a chunk from `poll_send` with `payload_len` bytes.
    pub fn begin_chunk(&mut self, chunk: u32, payload_len: u32) -> [u8; 8] {
        match &mut self.state {
            State::Pull(s) => s.begin_chunk(chunk, payload_len),
            _ => super::frame::chunk_header(chunk, payload_len),
        }
    }

    /// Pull: chunks sent on this connection and not yet acknowledged; when it ends, give them
    /// back to the plan (`SendPlan::release`).
    pub fn in_flight(&self) -> &[u32] {
        match &self.state {
            State::Pull(s) => s.in_flight(),
            _ => &[],
        }
    }

    /// The peer closed its side.
    pub fn handle_eof(&mut self, _now: Instant) {
        match &mut self.state {
            State::Handshake { parser, .. } => {
                if !parser.is_empty() {
                    // A partial head: still answer, as the spec wants every refusal complete.
                    self.refuse_head(Refusal::BadRequest(super::http::BadRequest::RequestLine));
                } else {
                    self.io.event(Event::PeerClosed { clean: true });
                    self.state = State::Closed;
                }
            }
            State::Header {
                version, reader, ..
            } => {
                let clean = reader.is_between_frames();
                match version {
                    Version::V110 if !clean => self.fail_v110(V110Error::BadHeader),
                    _ => {
                        self.io.event(Event::PeerClosed { clean });
                        self.state = State::Closed;
                    }
                }
            }
            State::Deciding(_) => self.io.event(Event::PeerClosed { clean: true }),
            State::Push(r) => r.eof(&mut self.io),
            State::Pull(s) => s.eof(&mut self.io),
            State::V110(v) => {
                if !v.received {
                    self.fail_v110(V110Error::IncompleteChunkData);
                }
                // Received: cli.py closes after its last write; the reply is still attempted.
            }
            State::Closed => {}
        }
    }

    /// Fires whatever deadline has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Handshake { deadline, .. } if now >= *deadline => {
                self.refuse_head(Refusal::RequestTimeout)
            }
            State::Header {
                deadline, version, ..
            } if now >= *deadline => match version {
                Version::V110 => self.fail_v110(V110Error::Timeout),
                Version::V120 => self.fail_jmsg(ErrorMsg::new(
                    ErrorCode::Timeout,
                    "header not complete in time",
                )),
            },
            State::Push(r) => r.handle_timeout(now, &mut self.io),
            State::Pull(s) => s.handle_timeout(now, &mut self.io),
            State::V110(v) if !v.received && now >= v.clock.deadline(&self.cfg.limits) => {
                self.fail_v110(V110Error::Timeout)
            }
            _ => {}
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshake { deadline, .. } | State::Header { deadline, .. } => Some(*deadline),
            State::Push(r) => r.poll_timeout(),
            State::Pull(s) => s.poll_timeout(),
            State::V110(v) if !v.received => Some(v.clock.deadline(&self.cfg.limits)),
            _ => None,
        }
    }

    /// Bytes to send, if any (the 101, replies, Acks, chunk-stream control; never payload).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.io.take_out()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    /// True when the connection is over: send what `poll_transmit` still holds, then close.
    pub fn is_finished(&self) -> bool {
        match &self.state {
            State::Closed => true,
            State::Push(r) => r.is_done(),
            State::Pull(s) => s.is_done(),
            _ => false,
        }
    }
}
