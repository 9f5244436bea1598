//! FastDP machine targets: the server connection and the push and pull clients, each run by a
//! fake driver (a transfer registry, a send plan) whose peer bytes, decisions and clock steps
//! come from the input. Peer bytes are either raw or well-formed pieces (the Upgrade head, a
//! header, a chunk of the right length...) so that the fuzzer reaches every state.
//!
//! What is checked: chunks inside the file and payload inside the chunk; Acks listing only
//! chunks the driver stored and made durable; `Verify` only once the registry holds every
//! chunk; `Complete` on the client only after its FIN and with the header's checksum; the bytes
//! a machine sends parse as whole messages within the JMSG limit; nothing is sent or reported
//! before the 101 is read; a finished machine stays finished.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Script, Spin};
use crate::proto::fastdp::client::{ClientConfig, PullClient, PushClient};
use crate::proto::fastdp::connection::{Event, Input, Payload};
use crate::proto::fastdp::crc::crc32c;
use crate::proto::fastdp::frame::{
    chunk_header, put_control, put_jmsg, Compress, Geometry, JmsgReader, FIN, MAX_JMSG,
};
use crate::proto::fastdp::http::{put_request, switching_protocols, Refusal, Version};
use crate::proto::fastdp::messages::{
    put_acks, Checksum, ErrorCode, ErrorMsg, Have, Header, Message, PullReply, PullRequest,
    PullTarget, ReplyHeader, TransferId, V110Compress, V110Header,
};
use crate::proto::fastdp::plan::SendPlan;
use crate::proto::fastdp::schedule::Limits;
use crate::proto::fastdp::server::{ServerConfig, ServerConnection};
use crate::proto::fastdp::v110::V110Error;
use crate::proto::fastdp::zstd_chunk::ChunkCompressor;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ONE_CHUNK: u32 = 4096;

fn tid() -> TransferId {
    TransferId::parse("3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10").expect("a valid id")
}

fn checksum(n: u8) -> Checksum {
    Checksum([n; 32])
}

/// Byte `k` of the fake file.
fn file_byte(k: u64) -> u8 {
    (k % 251) as u8
}

fn chunk_bytes(g: &Geometry, i: u32) -> Vec<u8> {
    (g.offset(i)..g.offset(i) + u64::from(g.len(i)))
        .map(file_byte)
        .collect()
}

/// A 1.2.0 push header of up to 16 chunks.
fn header(s: &mut Script<'_>) -> Header {
    let compress = if s.bool() {
        Compress::Zstd
    } else {
        Compress::None
    };
    let mut h = Header::new(
        ONE_CHUNK,
        u64::from(s.u16()),
        compress,
        "a.txt",
        tid(),
        checksum(1),
    )
    .expect("a small geometry");
    if s.u8() % 4 == 0 {
        h.reconnect_bytes = Some(u64::from(s.u16()));
    }
    h
}

/// Some chunks of a file of `full` chunks, as a Have.
fn have(s: &mut Script<'_>, full: u32) -> Have {
    let bits = s.u16();
    Have::from_chunks((0..full.min(16)).filter(|i| bits >> i & 1 == 1))
}

fn jmsg(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_jmsg(json, &mut out);
    out
}

/// A chunk frame of chunk `i` (a number from the script) with the payload due, compressed when
/// `zstd`; one time in eight a length one byte off.
fn chunk_frame(s: &mut Script<'_>, g: &Geometry, zstd: bool) -> Vec<u8> {
    let i = u32::from(s.u8()) % g.full_chunk().max(1);
    chunk_frame_at(s, g, i, zstd)
}

fn chunk_frame_at(s: &mut Script<'_>, g: &Geometry, i: u32, zstd: bool) -> Vec<u8> {
    let mut payload = chunk_bytes(g, i);
    if zstd {
        let mut z = Vec::new();
        ChunkCompressor::new(1)
            .expect("zstd")
            .compress(&payload, &mut z)
            .expect("compress");
        payload = z;
    }
    if s.u8() % 8 == 0 {
        payload.push(0);
    }
    let mut out = chunk_header(i, payload.len() as u32).to_vec();
    out.extend_from_slice(&payload);
    out
}

fn error_json(s: &mut Script<'_>) -> Vec<u8> {
    let code = ErrorCode::ALL[usize::from(s.u8()) % ErrorCode::ALL.len()];
    Message::Error(ErrorMsg::new(code, s.text())).encode()
}

/// A clock step of up to 65 s, then the machine's timeout handler when it is due.
fn step(s: &mut Script<'_>, now: &mut Instant, due: Option<Instant>) -> bool {
    *now += Duration::from_millis(u64::from(s.u16()));
    due.is_some_and(|t| *now >= t)
}

/// The data receiver's fake driver: the transfer registry (which chunks are held, durable and
/// with which CRC), the chunk being written, and what it told the machine.
struct Registry {
    g: Geometry,
    held: Vec<bool>,
    /// Stored on this connection and not yet acknowledged (a chunk stored twice is listed twice).
    unacked: Vec<u32>,
    writing: Option<(u32, u32, u32)>,
    /// Every (chunk, crc) the driver declared durable.
    durable: Vec<(u32, u32)>,
    completed: bool,
}

/// What the receiver machines share, for the fake driver.
trait Receiver {
    fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool);
    fn chunk_failed(&mut self, chunk: u32, why: &str);
    fn ack(&mut self, durable: &[(u32, u32)]);
    fn answer_fin(&mut self, now: Instant, durable: &[(u32, u32)], all_held: bool);
    fn complete(&mut self, name: &str, checksum: Checksum);
    fn fail(&mut self, e: ErrorMsg);
}

macro_rules! receiver {
    ($t:ty) => {
        impl Receiver for $t {
            fn chunk_stored(&mut self, now: Instant, chunk: u32, all_held: bool) {
                <$t>::chunk_stored(self, now, chunk, all_held)
            }
            fn chunk_failed(&mut self, chunk: u32, why: &str) {
                <$t>::chunk_failed(self, chunk, why)
            }
            fn ack(&mut self, durable: &[(u32, u32)]) {
                <$t>::ack(self, durable)
            }
            fn answer_fin(&mut self, now: Instant, durable: &[(u32, u32)], all_held: bool) {
                <$t>::answer_fin(self, now, durable, all_held)
            }
            fn complete(&mut self, name: &str, checksum: Checksum) {
                <$t>::complete(self, name, checksum)
            }
            fn fail(&mut self, e: ErrorMsg) {
                <$t>::fail(self, e)
            }
        }
    };
}
receiver!(ServerConnection);
receiver!(PullClient);

impl Registry {
    fn new(g: Geometry, have: &Have) -> Registry {
        let held = (0..g.full_chunk()).map(|i| have.contains(i)).collect();
        Registry {
            g,
            held,
            unacked: vec![],
            writing: None,
            durable: vec![],
            completed: false,
        }
    }

    fn all_held(&self) -> bool {
        self.held.iter().all(|&h| h)
    }

    fn payload(&mut self, p: Payload<'_>) {
        let (chunk, len, got) = self.writing.as_mut().expect("payload outside a chunk");
        assert!(
            p.chunk == *chunk && p.offset == *got,
            "payload out of place"
        );
        assert!(
            u64::from(*got) + p.bytes.len() as u64 <= u64::from(*len),
            "payload past the chunk"
        );
        *got += p.bytes.len() as u32;
    }

    /// Takes `chunks` out of the unacknowledged ones: the (chunk, crc) now durable.
    fn take(&mut self, chunks: &[u32]) -> Vec<(u32, u32)> {
        let out: Vec<(u32, u32)> = chunks
            .iter()
            .map(|&c| {
                let at = self.unacked.iter().position(|&u| u == c);
                self.unacked
                    .remove(at.expect("an Ack for a chunk not stored here"));
                (c, crc32c(&chunk_bytes(&self.g, c)))
            })
            .collect();
        self.durable.extend_from_slice(&out);
        out
    }

    /// Acts on a receiver event; false when it is not one.
    fn event<M: Receiver>(
        &mut self,
        m: &mut M,
        s: &mut Script<'_>,
        now: Instant,
        ev: &Event,
    ) -> bool {
        match ev {
            Event::ChunkStart { chunk, len } => {
                assert!(*chunk < self.g.full_chunk(), "a chunk outside the file");
                assert!(self.writing.is_none(), "a chunk inside a chunk");
                self.writing = Some((*chunk, *len, 0));
            }
            Event::ChunkEnd { chunk } => {
                let (c, len, got) = self.writing.take().expect("end outside a chunk");
                assert!(
                    *chunk == c && got == len,
                    "a chunk ended before its payload"
                );
                if s.u8() % 16 == 0 {
                    m.chunk_failed(c, "fuzz driver refused it");
                } else {
                    self.held[c as usize] = true;
                    self.unacked.push(c);
                    m.chunk_stored(now, c, self.all_held());
                }
            }
            Event::ChunkAborted { chunk } => {
                let (c, len, got) = self.writing.take().expect("abort outside a chunk");
                assert!(*chunk == c && got <= len);
            }
            Event::AckDue(chunks) => {
                let d = self.take(chunks);
                m.ack(&d);
            }
            Event::FinReceived(chunks) => {
                let d = self.take(chunks);
                m.answer_fin(now, &d, self.all_held());
            }
            Event::Verify => {
                assert!(self.all_held(), "Verify with chunks missing");
                if s.u8() % 8 == 0 {
                    m.fail(ErrorMsg::new(ErrorCode::ChecksumMismatch, "fuzz"));
                } else {
                    self.completed = true;
                    m.complete("a.txt", checksum(1));
                }
            }
            _ => return false,
        }
        true
    }

    /// The receiver's own messages, in order: Acks only of durable chunks, Complete only when
    /// the driver completed.
    fn check_sent(&self, msg: &Message) {
        match msg {
            Message::Ack(entries) => {
                for e in entries {
                    assert!(
                        self.durable.contains(e),
                        "an Ack of a chunk not made durable"
                    );
                }
            }
            Message::Complete { .. } => assert!(self.completed, "Complete without verification"),
            Message::Error(_) | Message::Reconnect => {}
        }
    }
}

/// Reads what a machine sends after its handshake: whole JMSGs within the limit.
struct Sent {
    reader: JmsgReader,
    /// The first message is a header (request, reply), not a message after it.
    first: bool,
}

impl Sent {
    fn new() -> Sent {
        Sent {
            reader: JmsgReader::new(),
            first: true,
        }
    }

    /// Every whole JMSG in `bytes`, after the first.
    fn messages(&mut self, mut bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let n = self.reader.feed(bytes);
            bytes = &bytes[n..];
            match self
                .reader
                .next_message()
                .expect("a JMSG over the limit was sent")
            {
                Some(_) if std::mem::take(&mut self.first) => {}
                Some(body) => out.push(
                    crate::proto::fastdp::messages::parse_message(body)
                        .expect("a message sent does not parse"),
                ),
                None => assert!(n > 0),
            }
        }
        out
    }
}

/// A script for the server connection. Ops: raw bytes, the Upgrade head (1.2.0 or 1.1.0), a
/// push header, a pull request, a 1.1.0 header, a chunk, FIN, an Ack (pull), a control frame,
/// a clock step, EOF, Reconnect, send chunks (pull).
pub fn fastdp_server_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let mut now = Instant::now();
    let mut m = ServerConnection::new(now, ServerConfig::default());
    let (mut reg, mut plan, mut g) = (None::<Registry>, None::<(SendPlan, Geometry, bool)>, None);
    let (mut v110, mut zstd, mut sent, mut out_head) =
        (None::<(Geometry, u32)>, false, Sent::new(), Vec::new());
    while !s.is_empty() {
        let bytes = match s.u8() % 13 {
            0 => s.chunk().to_vec(),
            1 => {
                let mut h = Vec::new();
                let v = if s.bool() {
                    Version::V110
                } else {
                    Version::V120
                };
                put_request("127.0.0.1:5423", "/fastdp-endpoint", KEY, v, &mut h);
                h
            }
            2 => jmsg(&header(&mut s).encode()),
            3 => jmsg(&pull_request(&mut s).encode()),
            4 => {
                let h = V110Header::new(u64::from(s.u16()), V110Compress::None, "a.txt", [7; 32]);
                jmsg(&h.encode_python())
            }
            5 => match (g, v110) {
                (Some(g), _) => chunk_frame(&mut s, &g, zstd),
                (None, Some((vg, next))) if s.bool() => chunk_frame_at(&mut s, &vg, next, false),
                (None, Some((vg, _))) => chunk_frame(&mut s, &vg, false),
                (None, None) => Vec::new(),
            },
            6 => FIN.to_vec(),
            7 => {
                let mut out = Vec::new();
                let entries: Vec<(u32, u32)> = (0..s.u8() % 4)
                    .map(|_| (u32::from(s.u8() % 20), s.u32()))
                    .collect();
                put_acks(&entries, &mut out);
                out
            }
            8 => {
                let mut out = Vec::new();
                put_control(&error_json(&mut s), &mut out);
                out
            }
            9 => {
                if step(&mut s, &mut now, m.poll_timeout()) {
                    m.handle_timeout(now);
                }
                Vec::new()
            }
            10 => {
                m.handle_eof(now);
                Vec::new()
            }
            11 => {
                m.request_reconnect();
                Vec::new()
            }
            _ => {
                if let Some((plan, g, z)) = plan.as_mut() {
                    for _ in 0..s.u8() % 4 {
                        let Some(c) = m.poll_send(now, plan) else {
                            break;
                        };
                        assert!(
                            c.chunk < g.full_chunk()
                                && c.offset == g.offset(c.chunk)
                                && c.len == g.len(c.chunk)
                        );
                        let data = chunk_bytes(g, c.chunk);
                        let n = if *z {
                            crate::proto::fastdp::frame::bound(c.len) / 2
                        } else {
                            c.len
                        };
                        let _ = m.begin_chunk(c.chunk, n);
                        plan.sent(c.chunk, crc32c(&data));
                    }
                }
                Vec::new()
            }
        };
        let (mut rest, mut spin) = (&bytes[..], Spin::default());
        loop {
            let before = m.is_finished();
            let Input { consumed, payload } = m.handle_input(now, rest);
            assert!(consumed <= rest.len());
            assert!(
                !before || consumed == rest.len(),
                "a finished machine reads on"
            );
            rest = &rest[consumed..];
            if let Some(p) = payload {
                if let Some(r) = reg.as_mut() {
                    r.payload(p);
                } else {
                    let (_, next) = v110.as_ref().expect("payload before a transfer");
                    assert_eq!(p.chunk + 1, *next, "1.1.0 payload of another chunk");
                }
            }
            let mut events = 0;
            while let Some(ev) = m.poll_event() {
                events += 1;
                if let Some(r) = reg.as_mut() {
                    if r.event(&mut m, &mut s, now, &ev) {
                        continue;
                    }
                }
                match ev {
                    Event::PushHeader(h) => {
                        if s.u8() % 8 == 0 {
                            m.refuse(ErrorMsg::new(ErrorCode::Busy, "fuzz"));
                        } else {
                            let have = have(&mut s, h.full_chunk);
                            zstd = h.compress == Compress::Zstd;
                            g = Some(h.geometry());
                            reg = Some(Registry::new(h.geometry(), &have));
                            m.accept_push(now, have, 8);
                        }
                    }
                    Event::PullRequest(p) => {
                        let full_size = u64::from(s.u16());
                        let z = p.accept_zstd && s.bool();
                        let reply = PullReply {
                            one_chunk: ONE_CHUNK,
                            full_chunk: full_size.div_ceil(u64::from(ONE_CHUNK)) as u32,
                            full_size,
                            compress: if z { Compress::Zstd } else { Compress::None },
                            file_name: "a.txt".into(),
                            transfer_id: p.transfer_id,
                            checksum: checksum(1),
                            have: Have::new(),
                            max_connections: 8,
                            reconnect_bytes: u64::from(s.u16()),
                        };
                        plan = Some((
                            SendPlan::new(reply.full_chunk, &reply.have),
                            reply.geometry(),
                            z,
                        ));
                        m.accept_pull(now, &reply);
                    }
                    Event::V110Header(h) => {
                        if s.u8() % 8 == 0 {
                            m.refuse_v110(V110Error::FileTooLarge);
                        } else {
                            v110 = Some((h.geometry(), 0));
                            g = None;
                            m.accept_v110(now);
                        }
                    }
                    Event::ChunkStart { chunk, len } => {
                        let (vg, next) = v110.as_mut().expect("a chunk outside a transfer");
                        assert!(
                            chunk == *next && len == vg.len(chunk),
                            "1.1.0 chunk out of order"
                        );
                        *next += 1;
                    }
                    Event::ChunkEnd { .. } | Event::ChunkAborted { .. } => {
                        assert!(v110.is_some(), "a chunk outside a transfer")
                    }
                    Event::V110Received => {
                        let (vg, next) = v110.expect("1.1.0 received before its header");
                        assert_eq!(next, vg.full_chunk(), "1.1.0 received with chunks missing");
                        m.v110_done(if s.bool() {
                            Ok(())
                        } else {
                            Err(V110Error::ChecksumMismatch)
                        });
                    }
                    Event::Acked(entries) => {
                        let (plan, g, _) = plan.as_mut().expect("Acked outside a pull");
                        for (c, crc) in entries {
                            assert!(c < g.full_chunk(), "an Ack outside the file was taken");
                            plan.ack(c, crc);
                        }
                    }
                    Event::Recycle => {
                        let (plan, ..) = plan.as_mut().expect("Recycle outside a pull");
                        plan.release(m.in_flight());
                    }
                    Event::Complete { .. }
                    | Event::PushAccepted { .. }
                    | Event::PullAccepted(_) => {
                        panic!("a client event from the server: {ev:?}")
                    }
                    Event::Verify | Event::AckDue(_) | Event::FinReceived(_) => {
                        panic!("a receiver event outside a push: {ev:?}")
                    }
                    Event::Refused(_) | Event::Failed(_) | Event::V110Failed(_) => {}
                    Event::PeerError(_) | Event::PeerClosed { .. } => {}
                }
            }
            while let Some(out) = m.poll_transmit() {
                server_sent(
                    &out,
                    &mut out_head,
                    &mut sent,
                    reg.as_ref(),
                    plan.is_some(),
                    v110.is_some(),
                );
            }
            spin.step("fastdp server", consumed);
            if consumed == 0 && events == 0 {
                break;
            }
        }
    }
}

/// Checks what the server sends: one whole response head first (101 or a refusal), then JMSGs
/// (push: a reply, Acks, Complete, Error) or 1.1.0 lines or, in a pull, the chunk stream's own
/// frames.
fn server_sent(
    out: &[u8],
    head: &mut Vec<u8>,
    sent: &mut Sent,
    reg: Option<&Registry>,
    pull: bool,
    v110: bool,
) {
    let mut out = out;
    if !head.ends_with(b"\r\n\r\n") {
        let end = memchr::memmem::find(out, b"\r\n\r\n").map_or(out.len(), |i| i + 4);
        head.extend_from_slice(&out[..end]);
        out = &out[end..];
        let refusals = [
            Refusal::NotFound,
            Refusal::RequestTimeout,
            Refusal::UpgradeRequired,
            Refusal::ServiceUnavailable,
            Refusal::BadRequest(crate::proto::fastdp::http::BadRequest::HeaderLine),
        ];
        // The 101 echoes whatever key the request had, and its version.
        let mut ok = Vec::new();
        switching_protocols("", Version::V120, &mut ok);
        let (ok_start, _) = ok.split_at(ok.len() - 31);
        let known = |h: &[u8]| {
            refusals.iter().any(|r| r.response() == h)
                || h.starts_with(ok_start)
                    && (h.ends_with(b"\r\nSec-FastDP-Version: 1.2.0\r\n\r\n")
                        || h.ends_with(b"\r\nSec-FastDP-Version: 1.1.0\r\n\r\n"))
        };
        assert!(
            !head.ends_with(b"\r\n\r\n") || known(head),
            "an unknown response head"
        );
    }
    let v110 = v110 || head.ends_with(b"Sec-FastDP-Version: 1.1.0\r\n\r\n");
    if out.is_empty() || v110 || pull {
        // 1.1.0 replies are bare lines; a pull's chunk stream is the driver's.
        return;
    }
    for msg in sent.messages(out) {
        if let Some(r) = reg {
            r.check_sent(&msg);
        }
    }
}

fn pull_request(s: &mut Script<'_>) -> PullRequest {
    PullRequest {
        transfer_id: tid(),
        target: PullTarget::Name("a.txt".into()),
        accept_zstd: s.bool(),
        have: Have::new(),
        one_chunk: None,
        checksum: None,
    }
}

fn client_cfg() -> ClientConfig {
    ClientConfig {
        host: "127.0.0.1:5423".into(),
        path: "/fastdp-endpoint".into(),
        key: KEY.into(),
        limits: Limits::default(),
    }
}

/// `header | ops`. Ops (server to client): raw bytes, the 101, a refusal, the reply header (the
/// header echoed or not), an Ack (right or wrong CRC), Reconnect, Complete (right or wrong
/// checksum), an Error, a clock step, EOF, send chunks.
pub fn fastdp_push_client_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let mut now = Instant::now();
    let h = header(&mut s);
    let g = h.geometry();
    let mut m = PushClient::new(now, &client_cfg(), h.clone());
    let mut plan = SendPlan::new(h.full_chunk, &Have::new());
    let (mut upgraded, mut fin_sent, mut sent) = (false, false, Sent::new());
    let request = m.poll_transmit().expect("the request at once");
    assert!(
        request.starts_with(b"GET /fastdp-endpoint HTTP/1.1\r\n") && request.ends_with(b"\r\n\r\n")
    );
    // What the client read while opening: the 101 is whole once its head is.
    let mut opening: Vec<u8> = Vec::new();
    let mut crcs: HashMap<u32, u32> = HashMap::new();
    while !s.is_empty() {
        let bytes = match s.u8() % 11 {
            0 => s.chunk().to_vec(),
            1 => {
                let mut out = Vec::new();
                switching_protocols(KEY, Version::V120, &mut out);
                out
            }
            2 => Refusal::UpgradeRequired.response().to_vec(),
            3 => {
                let mut header = h.clone();
                if s.u8() % 8 == 0 {
                    header.file_name = "b.txt".into();
                }
                let r = ReplyHeader {
                    have: have(&mut s, h.full_chunk),
                    header,
                    max_connections: 1 + u32::from(s.u8()),
                };
                jmsg(&r.encode())
            }
            4 => {
                let entries: Vec<(u32, u32)> = (0..s.u8() % 4)
                    .map(|_| {
                        let c = u32::from(s.u8()) % (h.full_chunk + 1);
                        (
                            c,
                            if s.bool() {
                                crcs.get(&c).copied().unwrap_or(0)
                            } else {
                                s.u32()
                            },
                        )
                    })
                    .collect();
                let mut out = Vec::new();
                put_acks(&entries, &mut out);
                out
            }
            5 => jmsg(&Message::Reconnect.encode()),
            6 => jmsg(
                &Message::Complete {
                    file_name: "a.txt".into(),
                    checksum: checksum(s.u8() % 2),
                }
                .encode(),
            ),
            7 => jmsg(&error_json(&mut s)),
            8 => {
                if step(&mut s, &mut now, m.poll_timeout()) {
                    m.handle_timeout(now);
                }
                Vec::new()
            }
            9 => {
                m.handle_eof(now);
                Vec::new()
            }
            _ => {
                for _ in 0..s.u8() % 4 {
                    let Some(c) = m.poll_send(now, &mut plan) else {
                        break;
                    };
                    assert!(upgraded, "a chunk before the 101");
                    assert!(
                        c.chunk < g.full_chunk()
                            && c.offset == g.offset(c.chunk)
                            && c.len == g.len(c.chunk)
                    );
                    let data = chunk_bytes(&g, c.chunk);
                    let head = m.begin_chunk(c.chunk, c.len);
                    assert_eq!(head, chunk_header(c.chunk, c.len));
                    let crc = crc32c(&data);
                    crcs.insert(c.chunk, crc);
                    plan.sent(c.chunk, crc);
                }
                Vec::new()
            }
        };
        let (mut rest, mut spin) = (&bytes[..], Spin::default());
        loop {
            let finished = m.is_finished();
            let n = m.handle_input(now, rest);
            assert!(n <= rest.len() && (!finished || n == rest.len()));
            if !upgraded && opening.len() < 2 * crate::proto::fastdp::http::MAX_HEAD {
                opening.extend_from_slice(&rest[..n]);
                upgraded = opening.starts_with(b"HTTP/1.1 101 ")
                    && memchr::memmem::find(&opening, b"\r\n\r\n").is_some();
            }
            rest = &rest[n..];
            let mut events = 0;
            while let Some(ev) = m.poll_event() {
                events += 1;
                match ev {
                    Event::PushAccepted {
                        have,
                        max_connections,
                    } => {
                        assert!(max_connections > 0 && have.end() <= h.full_chunk);
                        plan.merge_have(&have);
                    }
                    Event::Acked(entries) => {
                        for (c, crc) in entries {
                            assert!(c < h.full_chunk, "an Ack outside the file was taken");
                            plan.ack(c, crc);
                        }
                    }
                    Event::Recycle => plan.release(m.in_flight()),
                    Event::Complete { checksum, .. } => {
                        assert!(fin_sent, "Complete before the FIN");
                        assert_eq!(checksum, h.checksum, "Complete with another checksum");
                    }
                    Event::Failed(_) | Event::PeerError(_) | Event::PeerClosed { .. } => {}
                    other => panic!("not a push client event: {other:?}"),
                }
            }
            while let Some(out) = m.poll_transmit() {
                assert!(upgraded || m.is_finished(), "sent before the 101 was read");
                if out.starts_with(&FIN[..4]) && out.len() == FIN.len() {
                    fin_sent = true;
                } else if out.starts_with(&[0xff, 0xff, 0xff, 0xfe]) {
                    assert!(out.len() <= 8 + MAX_JMSG as usize, "control frame too long");
                } else {
                    let _ = sent.messages(&out);
                }
            }
            spin.step("fastdp push client", n);
            if n == 0 && events == 0 {
                break;
            }
        }
    }
}

/// `request | ops`. Ops (server to client): raw bytes, the 101, the pull reply (matching or
/// not), a chunk, FIN, a control Error, a clock step, EOF.
pub fn fastdp_pull_client_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let mut now = Instant::now();
    let req = pull_request(&mut s);
    let mut m = PullClient::new(now, &client_cfg(), req.clone());
    let (mut reg, mut zstd, mut sent, mut upgraded) = (None::<Registry>, false, Sent::new(), false);
    let request = m.poll_transmit().expect("the request at once");
    assert!(
        request.starts_with(b"GET /fastdp-endpoint HTTP/1.1\r\n") && request.ends_with(b"\r\n\r\n")
    );
    let mut opening: Vec<u8> = Vec::new();
    while !s.is_empty() {
        let bytes = match s.u8() % 8 {
            0 => s.chunk().to_vec(),
            1 => {
                let mut out = Vec::new();
                switching_protocols(KEY, Version::V120, &mut out);
                out
            }
            2 => {
                let full_size = u64::from(s.u16());
                let reply = PullReply {
                    one_chunk: ONE_CHUNK,
                    full_chunk: full_size.div_ceil(u64::from(ONE_CHUNK)) as u32,
                    full_size,
                    compress: if s.bool() {
                        Compress::Zstd
                    } else {
                        Compress::None
                    },
                    file_name: "a.txt".into(),
                    transfer_id: if s.u8() % 8 == 0 {
                        TransferId::from_random([1; 16])
                    } else {
                        req.transfer_id
                    },
                    checksum: checksum(1),
                    have: Have::new(),
                    max_connections: 8,
                    reconnect_bytes: 1 << 20,
                };
                jmsg(&reply.encode())
            }
            3 => reg
                .as_ref()
                .map(|r| chunk_frame(&mut s, &r.g, zstd))
                .unwrap_or_default(),
            4 => FIN.to_vec(),
            5 => {
                let mut out = Vec::new();
                put_control(&error_json(&mut s), &mut out);
                out
            }
            6 => {
                if step(&mut s, &mut now, m.poll_timeout()) {
                    m.handle_timeout(now);
                }
                Vec::new()
            }
            _ => {
                m.handle_eof(now);
                Vec::new()
            }
        };
        let (mut rest, mut spin) = (&bytes[..], Spin::default());
        loop {
            let finished = m.is_finished();
            let Input { consumed, payload } = m.handle_input(now, rest);
            assert!(consumed <= rest.len() && (!finished || consumed == rest.len()));
            if !upgraded && opening.len() < 2 * crate::proto::fastdp::http::MAX_HEAD {
                opening.extend_from_slice(&rest[..consumed]);
                upgraded = opening.starts_with(b"HTTP/1.1 101 ")
                    && memchr::memmem::find(&opening, b"\r\n\r\n").is_some();
            }
            rest = &rest[consumed..];
            if let Some(p) = payload {
                reg.as_mut().expect("payload before the reply").payload(p);
            }
            let mut events = 0;
            while let Some(ev) = m.poll_event() {
                events += 1;
                if let Some(r) = reg.as_mut() {
                    if r.event(&mut m, &mut s, now, &ev) {
                        continue;
                    }
                }
                match ev {
                    Event::PullAccepted(reply) => {
                        assert!(reg.is_none(), "accepted twice");
                        assert!(reply.transfer_id == req.transfer_id && reply.have == req.have);
                        assert!(req.accept_zstd || reply.compress == Compress::None);
                        zstd = reply.compress == Compress::Zstd;
                        reg = Some(Registry::new(reply.geometry(), &reply.have));
                    }
                    Event::Failed(_) | Event::PeerError(_) | Event::PeerClosed { .. } => {}
                    other => panic!("not a pull client event: {other:?}"),
                }
            }
            while let Some(out) = m.poll_transmit() {
                assert!(upgraded, "sent before the 101 was read");
                for msg in sent.messages(&out) {
                    if let Some(r) = reg.as_ref() {
                        r.check_sent(&msg);
                    }
                }
            }
            spin.step("fastdp pull client", consumed);
            if consumed == 0 && events == 0 {
                break;
            }
        }
    }
}
