//! What every FastDP connection machine shares: the [`Event`]s a driver acts on, the
//! [`Input`] a `handle_input` call returns, and the two halves of a 1.2.0 connection after its
//! header (the data receiver and the data sender, used by both the server and the clients).
//!
//! Data receiver (server in push, client in pull):
//!
//! ```text
//!            chunk frames (ChunkStart, payload slices, ChunkEnd; AckDue as scheduled)
//!          ┌────┐
//!          ▼    │    FIN: FinReceived            answer_fin, all held: Verify
//!      Receiving ─────────────────► AnswerFin ───────────────────────────► Verifying ──complete──► Done
//!          │                            │ answer_fin, not all held                │ keepalive Ack
//!          │ bad frame, timeout: Error  └──────────────────────► Done            │ every 10 s
//!          └──────────────────────────────────────────────────► Done ◄──fail─────┘
//! ```
//!
//! Data sender (client in push, server in pull):
//!
//! ```text
//!          poll_send: next chunk from the plan; Ack: Acked
//!          ┌────┐
//!          ▼    │   plan complete: final FIN          Complete
//!       Sending ──────────────────────────► FinSent ────────────► Done
//!          │    ReconnectBytes / Reconnect,   ▲   │ recycle FIN: own chunks all acked, or EOF:
//!          │    more to send: recycle FIN ────┘   └──────────────────────────────► Done (Recycle)
//!          └── Error, timeout, EOF ──────────────────────────────────────────────► Done
//! ```

use std::collections::VecDeque;
use std::time::Instant;

use super::frame::{
    chunk_header, put_control, put_jmsg, ChunkDecoder, ChunkEvent, Geometry, JmsgReader, FIN,
};
use super::http::Refusal;
use super::messages::{
    parse_message, put_acks, Checksum, ErrorCode, ErrorMsg, Have, Header, Message, PullReply,
    PullRequest, V110Header,
};
use super::plan::SendPlan;
use super::schedule::{AckSchedule, InputClock, Limits};
use super::v110::V110Error;

/// What a machine asks its driver to do or to know. Each variant names the call that answers it,
/// if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Server: the handshake was refused; the response is queued. Close after sending it.
    Refused(Refusal),
    /// Server: a valid 1.2.0 push header. Look the transfer up (parameter-mismatch, too-large,
    /// no-space, too-many-connections...), then `accept_push` or `refuse`.
    PushHeader(Header),
    /// Server: a valid pull request. Find the entry, then `accept_pull` or `refuse`.
    PullRequest(PullRequest),
    /// Server: a valid 1.1.0 header. Check size and space, then `accept_v110` or `refuse_v110`.
    V110Header(V110Header),
    /// Client push: the server accepted the header. Merge `have` into the plan.
    PushAccepted { have: Have, max_connections: u32 },
    /// Client pull: the server's parameters. Set the `.part` up (or check it against a resume).
    PullAccepted(PullReply),
    /// Receiver: chunk `chunk` begins with `len` payload bytes (compressed if Zstd). The driver
    /// claims the chunk (or decides to discard this copy, when another connection writes it).
    ChunkStart { chunk: u32, len: u32 },
    /// Receiver: every payload byte of `chunk` was handed out. Finish it (decompression end,
    /// length, CRC-32C), then `chunk_stored` or `chunk_failed`.
    ChunkEnd { chunk: u32 },
    /// Receiver: the stream ended or failed inside `chunk`'s payload: it stays missing (F15).
    ChunkAborted { chunk: u32 },
    /// Receiver: time to acknowledge these chunks stored on this connection. Make them durable
    /// (fdatasync, state), then call `ack` with those now durable and their current CRCs.
    AckDue(Vec<u32>),
    /// Receiver: a FIN; same as `AckDue`, then `answer_fin` (with whether every chunk of the
    /// transfer is held).
    FinReceived(Vec<u32>),
    /// Receiver: every chunk is held and a FIN was answered. Verify the whole file (once per
    /// transfer), commit, then `complete` or `fail`; call `handle_timeout` meanwhile so the
    /// keepalive Acks go out (F30).
    Verify,
    /// Server 1.1.0: every chunk is in. Verify the SHA-256, decode, commit, then `v110_done`.
    V110Received,
    /// Sender: the receiver acknowledged these `(chunk, crc32c)`; apply them to the plan.
    Acked(Vec<(u32, u32)>),
    /// Sender: the connection was recycled (its FIN answered); reconnect with the same header.
    Recycle,
    /// Transfer complete: the server's (push) or client's (pull) final name and checksum.
    Complete {
        file_name: String,
        checksum: Checksum,
    },
    /// This side ended the connection on this error (sent to the peer when the protocol has a
    /// way to say it). Close after sending what is queued.
    Failed(ErrorMsg),
    /// 1.1.0: this `ERROR:` line is queued; close after sending it.
    V110Failed(V110Error),
    /// The peer sent this Error (JMSG or control frame); the connection is over.
    PeerError(ErrorMsg),
    /// The peer closed the connection (`clean`: between frames, or where a close was due).
    PeerClosed { clean: bool },
}

/// A slice of chunk payload: `bytes` belong at `offset` within chunk `chunk`'s payload (the
/// compressed payload when Zstd). Borrowed from the input given to `handle_input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    pub chunk: u32,
    pub offset: u32,
    pub bytes: &'a [u8],
}

/// What one `handle_input` call did: bytes consumed, and at most one payload slice. A call that
/// yields a payload queues no event; a call that queues events yields no payload, so handling
/// the payload first and then the events keeps the stream's order. Call again with the rest of
/// the input while `consumed > 0` or an event was queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Input<'a> {
    pub consumed: usize,
    pub payload: Option<Payload<'a>>,
}

impl<'a> Input<'a> {
    pub(crate) fn consumed(consumed: usize) -> Input<'a> {
        Input {
            consumed,
            payload: None,
        }
    }
}

/// A chunk the data sender must send now: original bytes `[offset, offset + len)`. Compress it
/// if Zstd, compute its CRC-32C, call `begin_chunk` for the 8 header bytes, write them and the
/// payload, and record the CRC in the plan (`SendPlan::sent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendChunk {
    pub chunk: u32,
    pub offset: u64,
    pub len: u32,
}

/// Bytes to send and events to report, shared by the halves of a machine.
#[derive(Debug, Default)]
pub(crate) struct Io {
    pub(crate) out: Vec<u8>,
    pub(crate) events: VecDeque<Event>,
}

impl Io {
    pub(crate) fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    pub(crate) fn jmsg(&mut self, json: &[u8]) {
        put_jmsg(json, &mut self.out);
    }

    pub(crate) fn take_out(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvState {
    Receiving,
    AnswerFin,
    Verifying { next_keepalive: Instant },
    Done,
}

/// The data receiver half (see the module doc).
#[derive(Debug)]
pub(crate) struct Receiver {
    limits: Limits,
    decoder: ChunkDecoder,
    clock: InputClock,
    acks: AckSchedule,
    /// An `AckDue` is out and not answered yet.
    ack_outstanding: bool,
    state: RecvState,
}

impl Receiver {
    pub(crate) fn new(now: Instant, limits: Limits, decoder: ChunkDecoder) -> Receiver {
        Receiver {
            limits,
            decoder,
            clock: InputClock::new(now),
            acks: AckSchedule::default(),
            ack_outstanding: false,
            state: RecvState::Receiving,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == RecvState::Done
    }

    pub(crate) fn is_verifying(&self) -> bool {
        matches!(self.state, RecvState::Verifying { .. })
    }

    pub(crate) fn input<'a>(&mut self, now: Instant, input: &'a [u8], io: &mut Io) -> Input<'a> {
        if self.state != RecvState::Receiving {
            // Nothing may follow a FIN; whatever does is read and dropped.
            return Input::consumed(input.len());
        }
        let (n, r) = self.decoder.decode(input);
        self.clock
            .input(now, n, self.decoder.frame_remaining(), &self.limits);
        match r {
            Ok(None) => Input::consumed(n),
            Ok(Some(ChunkEvent::Start { chunk, len })) => {
                io.event(Event::ChunkStart { chunk, len });
                Input::consumed(n)
            }
            Ok(Some(ChunkEvent::Payload {
                chunk,
                offset,
                bytes,
            })) => Input {
                consumed: n,
                payload: Some(Payload {
                    chunk,
                    offset,
                    bytes,
                }),
            },
            Ok(Some(ChunkEvent::End { chunk })) => {
                io.event(Event::ChunkEnd { chunk });
                Input::consumed(n)
            }
            Ok(Some(ChunkEvent::Fin)) => {
                self.state = RecvState::AnswerFin;
                self.ack_outstanding = false;
                io.event(Event::FinReceived(self.acks.take()));
                Input::consumed(n)
            }
            Ok(Some(ChunkEvent::Control(body))) => {
                self.state = RecvState::Done;
                match parse_message(&body) {
                    Ok(Message::Error(e)) => io.event(Event::PeerError(e)),
                    _ => self.fail_with(
                        ErrorMsg::new(ErrorCode::BadChunk, "malformed control frame"),
                        io,
                    ),
                }
                Input::consumed(n)
            }
            Err(e) => {
                self.fail_with(
                    ErrorMsg::new(ErrorCode::BadChunk, e.to_string()).with_chunk(e.chunk()),
                    io,
                );
                Input::consumed(n)
            }
        }
    }

    /// The driver finished chunk `chunk` (written, length checked, CRC known). `all_held`: the
    /// transfer now holds every chunk.
    pub(crate) fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool, io: &mut Io) {
        if self.state == RecvState::Receiving {
            self.acks.stored(now, chunk, all_held);
            self.maybe_ack(now, io);
        }
    }

    fn maybe_ack(&mut self, now: Instant, io: &mut Io) {
        if !self.ack_outstanding && self.acks.is_due(now, &self.limits) {
            self.ack_outstanding = true;
            io.event(Event::AckDue(self.acks.take()));
        }
    }

    /// Answers an `AckDue` with the durable chunks and their CRCs.
    pub(crate) fn ack(&mut self, durable: &[(u32, u32)], io: &mut Io) {
        self.ack_outstanding = false;
        // Still before the FIN's own answer, so the order of Acks holds.
        let open = matches!(self.state, RecvState::Receiving | RecvState::AnswerFin);
        if open && !durable.is_empty() {
            put_acks(durable, &mut io.out);
        }
    }

    /// Answers a `FinReceived`.
    pub(crate) fn answer_fin(
        &mut self,
        now: Instant,
        durable: &[(u32, u32)],
        all_held: bool,
        io: &mut Io,
    ) {
        if self.state != RecvState::AnswerFin {
            return;
        }
        put_acks(durable, &mut io.out);
        if all_held {
            self.state = RecvState::Verifying {
                next_keepalive: now + self.limits.keepalive,
            };
            io.event(Event::Verify);
        } else {
            self.state = RecvState::Done;
        }
    }

    /// Verification and commit succeeded: `Complete` goes out and the connection is done.
    pub(crate) fn complete(&mut self, file_name: &str, checksum: Checksum, io: &mut Io) {
        if self.is_verifying() {
            io.jmsg(
                &Message::Complete {
                    file_name: file_name.to_owned(),
                    checksum,
                }
                .encode(),
            );
            self.state = RecvState::Done;
        }
    }

    /// Ends the connection with an Error JMSG.
    pub(crate) fn fail_with(&mut self, e: ErrorMsg, io: &mut Io) {
        if let Some(chunk) = self.decoder.current_chunk() {
            io.event(Event::ChunkAborted { chunk });
        }
        io.jmsg(&Message::Error(e.clone()).encode());
        io.event(Event::Failed(e));
        self.state = RecvState::Done;
    }

    pub(crate) fn eof(&mut self, io: &mut Io) {
        if self.state == RecvState::Done {
            return;
        }
        if let Some(chunk) = self.decoder.current_chunk() {
            io.event(Event::ChunkAborted { chunk });
        }
        let clean = self.state != RecvState::Receiving || self.decoder.is_between_frames();
        io.event(Event::PeerClosed { clean });
        if !self.is_verifying() {
            // A verification under way still commits; only its reply has nowhere to go.
            self.state = RecvState::Done;
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, io: &mut Io) {
        match self.state {
            RecvState::Receiving => {
                if now >= self.clock.deadline(&self.limits) {
                    self.fail_with(
                        ErrorMsg::new(ErrorCode::Timeout, "peer too slow or silent"),
                        io,
                    );
                    return;
                }
                self.maybe_ack(now, io);
            }
            RecvState::Verifying { next_keepalive } if now >= next_keepalive => {
                put_acks(&[], &mut io.out);
                let mut next = next_keepalive + self.limits.keepalive;
                if next <= now {
                    next = now + self.limits.keepalive;
                }
                self.state = RecvState::Verifying {
                    next_keepalive: next,
                };
            }
            _ => {}
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            RecvState::Receiving => {
                let mut t = self.clock.deadline(&self.limits);
                if !self.ack_outstanding {
                    if let Some(a) = self.acks.deadline(&self.limits) {
                        t = t.min(a);
                    }
                }
                Some(t)
            }
            RecvState::Verifying { next_keepalive } => Some(next_keepalive),
            RecvState::AnswerFin | RecvState::Done => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendState {
    Sending,
    FinSent { is_final: bool },
    Done,
}

/// Which side the data sender is, for how it reports its own errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SenderRole {
    /// ferry's push client: local errors just close (the client retries).
    Client,
    /// The server in pull: local errors go out as a control frame, then a close.
    Server,
}

/// The data sender half (see the module doc).
#[derive(Debug)]
pub(crate) struct Sender {
    role: SenderRole,
    limits: Limits,
    geometry: Geometry,
    checksum: Checksum,
    reconnect_bytes: u64,
    sent_bytes: u64,
    reconnect_asked: bool,
    in_flight: Vec<u32>,
    /// The last `poll_send` found nothing to send: silence from the peer now counts.
    starved: bool,
    jmsg: JmsgReader,
    clock: InputClock,
    state: SendState,
}

impl Sender {
    pub(crate) fn new(
        now: Instant,
        role: SenderRole,
        limits: Limits,
        geometry: Geometry,
        checksum: Checksum,
        reconnect_bytes: u64,
    ) -> Sender {
        Sender {
            role,
            limits,
            geometry,
            checksum,
            reconnect_bytes,
            sent_bytes: 0,
            reconnect_asked: false,
            in_flight: Vec::new(),
            starved: false,
            jmsg: JmsgReader::new(),
            clock: InputClock::new(now),
            state: SendState::Sending,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == SendState::Done
    }

    pub(crate) fn in_flight(&self) -> &[u32] {
        &self.in_flight
    }

    pub(crate) fn poll_send(
        &mut self,
        now: Instant,
        plan: &mut SendPlan,
        io: &mut Io,
    ) -> Option<SendChunk> {
        if self.state != SendState::Sending || !io.out.is_empty() {
            return None;
        }
        if plan.is_complete() {
            io.out.extend_from_slice(&FIN);
            self.state = SendState::FinSent { is_final: true };
            self.clock.restart(now);
            return None;
        }
        let recycle = self.reconnect_asked
            || (self.reconnect_bytes > 0 && self.sent_bytes >= self.reconnect_bytes);
        if recycle {
            // Never recycle with nothing left to send: wait for the Acks, then the final FIN
            // (so CRC repair always comes before the whole-file check).
            if plan.has_unsent() {
                io.out.extend_from_slice(&FIN);
                self.state = SendState::FinSent { is_final: false };
                self.clock.restart(now);
            } else {
                self.starve(now);
            }
            return None;
        }
        match plan.take_next() {
            Some(chunk) => {
                self.starved = false;
                self.in_flight.push(chunk);
                Some(SendChunk {
                    chunk,
                    offset: self.geometry.offset(chunk),
                    len: self.geometry.len(chunk),
                })
            }
            None => {
                self.starve(now);
                None
            }
        }
    }

    fn starve(&mut self, now: Instant) {
        if !self.starved {
            self.starved = true;
            self.clock.restart(now);
        }
    }

    /// The 8 header bytes of a chunk about to be sent with `payload_len` bytes.
    pub(crate) fn begin_chunk(&mut self, chunk: u32, payload_len: u32) -> [u8; 8] {
        self.sent_bytes += u64::from(payload_len);
        chunk_header(chunk, payload_len)
    }

    pub(crate) fn input(&mut self, now: Instant, input: &[u8], io: &mut Io) -> usize {
        if self.state == SendState::Done {
            return input.len();
        }
        let n = self.jmsg.feed(input);
        if n > 0 {
            self.clock.restart(now);
        }
        let body = match self.jmsg.next_message() {
            Ok(None) => return n,
            Ok(Some(body)) => parse_message(body),
            Err(e) => {
                self.fail(
                    ErrorMsg::new(ErrorCode::BadHeader, format!("message: {e}")),
                    io,
                );
                return n;
            }
        };
        match body {
            Ok(Message::Ack(entries)) => {
                if let Some(&(c, _)) = entries
                    .iter()
                    .find(|(c, _)| *c >= self.geometry.full_chunk())
                {
                    let e = ErrorMsg::new(ErrorCode::BadHeader, format!("Ack of chunk {c}"));
                    self.fail(e, io);
                    return n;
                }
                self.in_flight
                    .retain(|c| !entries.iter().any(|(a, _)| a == c));
                io.event(Event::Acked(entries));
                if self.state == (SendState::FinSent { is_final: false })
                    && self.in_flight.is_empty()
                {
                    self.state = SendState::Done;
                    io.event(Event::Recycle);
                }
            }
            Ok(Message::Reconnect) => {
                if self.role == SenderRole::Client {
                    self.reconnect_asked = true;
                }
            }
            Ok(Message::Complete {
                file_name,
                checksum,
            }) => {
                if self.state == SendState::Sending {
                    self.fail(
                        ErrorMsg::new(ErrorCode::BadHeader, "Complete before FIN"),
                        io,
                    );
                } else if checksum != self.checksum {
                    self.fail(
                        ErrorMsg::new(
                            ErrorCode::ChecksumMismatch,
                            "Complete with another checksum",
                        ),
                        io,
                    );
                } else {
                    self.state = SendState::Done;
                    io.event(Event::Complete {
                        file_name,
                        checksum,
                    });
                }
            }
            Ok(Message::Error(e)) => {
                self.state = SendState::Done;
                io.event(Event::PeerError(e));
            }
            Err(e) => self.fail(ErrorMsg::new(ErrorCode::BadHeader, e.to_string()), io),
        }
        n
    }

    /// Ends the connection; the server also says why in a control frame.
    pub(crate) fn fail(&mut self, e: ErrorMsg, io: &mut Io) {
        if self.role == SenderRole::Server {
            put_control(&Message::Error(e.clone()).encode(), &mut io.out);
        }
        io.event(Event::Failed(e));
        self.state = SendState::Done;
    }

    pub(crate) fn eof(&mut self, io: &mut Io) {
        match self.state {
            SendState::Done => return,
            SendState::FinSent { is_final: false } => io.event(Event::Recycle),
            SendState::FinSent { is_final: true } | SendState::Sending => {
                io.event(Event::PeerClosed { clean: false })
            }
        }
        self.state = SendState::Done;
    }

    fn waits_for_peer(&self) -> bool {
        matches!(self.state, SendState::FinSent { .. })
            || (self.state == SendState::Sending && self.starved)
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, io: &mut Io) {
        if self.waits_for_peer() && now >= self.clock.deadline(&self.limits) {
            self.fail(ErrorMsg::new(ErrorCode::Timeout, "peer silent"), io);
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.waits_for_peer()
            .then(|| self.clock.deadline(&self.limits))
    }
}
