//! In-memory pairs: ferry's client machines against the server machine over byte buffers, with
//! fake drivers and a fake transfer registry (F13-F16, F18-F20, F23, F29-F33).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::client::{ClientConfig, PullClient, PushClient};
use super::connection::{Event, Input};
use super::crc::{crc32c, Crc32c};
use super::frame::{Compress, Geometry};
use super::http::{Refusal, DEFAULT_PATH};
use super::messages::{
    Checksum, ErrorCode, ErrorMsg, Have, Header, Message, PullReply, PullRequest, PullTarget,
    TransferId, DEFAULT_RECONNECT_BYTES,
};
use super::plan::{AckOutcome, SendPlan};
use super::schedule::Limits;
use super::server::{check_connections, ServerConfig, ServerConnection};
use super::zstd_chunk::{ChunkCompressor, ChunkInflater};

const TID: &str = "3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10";

fn sha(data: &[u8]) -> Checksum {
    Checksum(Sha256::digest(data).into())
}

fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

fn client_cfg() -> ClientConfig {
    ClientConfig {
        host: "127.0.0.1:5423".into(),
        path: DEFAULT_PATH.into(),
        key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
        limits: Limits::default(),
    }
}

/// The server side's transfer registry, as the ingest seam will hold it (one `.part`, a bit and
/// a CRC per chunk, durable after a sync).
struct FakeTransfer {
    header: Header,
    part: Vec<u8>,
    held: Vec<Option<u32>>,
    durable: Vec<bool>,
    writing: HashMap<u32, usize>,
    connections: u32,
    verifications: u32,
    completed: Option<String>,
}

impl FakeTransfer {
    fn new(header: &Header) -> FakeTransfer {
        FakeTransfer {
            header: header.clone(),
            part: vec![0; header.full_size as usize],
            held: vec![None; header.full_chunk as usize],
            durable: vec![false; header.full_chunk as usize],
            writing: HashMap::new(),
            connections: 0,
            verifications: 0,
            completed: None,
        }
    }

    fn all_held(&self) -> bool {
        self.held.iter().all(Option::is_some)
    }

    fn have(&self) -> Have {
        Have::from_chunks((0..self.held.len() as u32).filter(|&i| self.durable[i as usize]))
    }

    /// fdatasync: every held chunk is durable; returns those of `chunks` with their CRCs.
    fn sync(&mut self, chunks: &[u32]) -> Vec<(u32, u32)> {
        for (i, h) in self.held.iter().enumerate() {
            self.durable[i] = h.is_some();
        }
        chunks
            .iter()
            .filter_map(|&c| self.held[c as usize].map(|crc| (c, crc)))
            .collect()
    }
}

/// One chunk being written by a server connection.
struct Writing {
    chunk: u32,
    discard: bool,
    crc: Crc32c,
    written: usize,
}

/// A server connection with its fake driver.
struct ServerSide {
    m: ServerConnection,
    id: usize,
    writing: Option<Writing>,
    inflater: ChunkInflater,
    events: Vec<Event>,
    joined: bool,
}

impl ServerSide {
    fn new(now: Instant, id: usize) -> ServerSide {
        ServerSide {
            m: ServerConnection::new(now, ServerConfig::default()),
            id,
            writing: None,
            inflater: ChunkInflater::new().unwrap(),
            events: Vec::new(),
            joined: false,
        }
    }

    /// Feeds `input` whole, acting on every payload and event as a driver would.
    fn feed(&mut self, now: Instant, input: &[u8], t: &mut Option<FakeTransfer>) {
        let mut pos = 0;
        loop {
            let Input { consumed, payload } = self.m.handle_input(now, &input[pos..]);
            pos += consumed;
            if let Some(p) = payload {
                self.payload(p.chunk, p.offset, p.bytes, t.as_mut().unwrap());
            }
            let mut any = false;
            while let Some(ev) = self.m.poll_event() {
                any = true;
                self.event(now, ev, t);
            }
            if consumed == 0 && payload.is_none() && !any {
                break;
            }
        }
        assert!(
            pos == input.len() || self.m.is_finished() || input.is_empty(),
            "all input taken"
        );
    }

    fn payload(&mut self, chunk: u32, offset: u32, bytes: &[u8], t: &mut FakeTransfer) {
        let w = self.writing.as_mut().expect("payload inside a chunk");
        assert_eq!(w.chunk, chunk);
        if w.discard {
            return;
        }
        let g = t.header.geometry();
        let base = g.offset(chunk) as usize;
        match t.header.compress {
            Compress::None => {
                assert_eq!(offset as usize, w.written);
                t.part[base + w.written..base + w.written + bytes.len()].copy_from_slice(bytes);
                w.crc.update(bytes);
                w.written += bytes.len();
            }
            Compress::Zstd => {
                let mut buf = [0u8; 1000];
                let mut input = bytes;
                loop {
                    let (used, n) = match self.inflater.decompress(input, &mut buf) {
                        Ok(x) => x,
                        Err(e) => {
                            self.writing = None;
                            t.writing.remove(&chunk);
                            self.m.chunk_failed(chunk, &e.to_string());
                            return;
                        }
                    };
                    t.part[base + w.written..base + w.written + n].copy_from_slice(&buf[..n]);
                    w.crc.update(&buf[..n]);
                    w.written += n;
                    input = &input[used..];
                    if used == 0 && n == 0 {
                        break;
                    }
                }
            }
        }
    }

    fn event(&mut self, now: Instant, ev: Event, t: &mut Option<FakeTransfer>) {
        self.events.push(ev.clone());
        match ev {
            Event::PushHeader(h) => {
                let tr = t.get_or_insert_with(|| FakeTransfer::new(&h));
                if let Err(e) = super::server::check_parameters(&tr.header, &h) {
                    return self.m.refuse(e);
                }
                if let Err(e) = check_connections(tr.connections, 8) {
                    return self.m.refuse(e);
                }
                tr.connections += 1;
                self.joined = true;
                self.m.accept_push(now, tr.have(), 8);
            }
            Event::ChunkStart { chunk, .. } => {
                let tr = t.as_mut().unwrap();
                let discard = tr.writing.get(&chunk).is_some_and(|&c| c != self.id);
                if !discard {
                    // The bit is cleared before a replacement starts (4.1).
                    tr.held[chunk as usize] = None;
                    tr.durable[chunk as usize] = false;
                    tr.writing.insert(chunk, self.id);
                    self.inflater.begin(tr.header.geometry().len(chunk));
                }
                self.writing = Some(Writing {
                    chunk,
                    discard,
                    crc: Crc32c::new(),
                    written: 0,
                });
            }
            Event::ChunkEnd { chunk } => {
                let tr = t.as_mut().unwrap();
                let Some(w) = self.writing.take() else { return };
                if w.discard {
                    return;
                }
                tr.writing.remove(&chunk);
                if tr.header.compress == Compress::Zstd {
                    if let Err(e) = self.inflater.finish() {
                        return self.m.chunk_failed(chunk, &e.to_string());
                    }
                }
                assert_eq!(w.written as u32, tr.header.geometry().len(chunk));
                tr.held[chunk as usize] = Some(w.crc.value());
                let all = tr.all_held();
                self.m.chunk_stored(now, chunk, all);
            }
            Event::ChunkAborted { chunk } => {
                let tr = t.as_mut().unwrap();
                if tr.writing.get(&chunk) == Some(&self.id) {
                    tr.writing.remove(&chunk);
                }
                self.writing = None;
            }
            Event::AckDue(chunks) => {
                let durable = t.as_mut().unwrap().sync(&chunks);
                self.m.ack(&durable);
            }
            Event::FinReceived(chunks) => {
                let tr = t.as_mut().unwrap();
                let durable = tr.sync(&chunks);
                let all = tr.all_held();
                self.m.answer_fin(now, &durable, all);
            }
            Event::Verify => {
                let tr = t.as_mut().unwrap();
                if tr.completed.is_none() {
                    tr.verifications += 1;
                    if sha(&tr.part) != tr.header.checksum {
                        return self.m.fail(ErrorMsg::new(
                            ErrorCode::ChecksumMismatch,
                            "sha-256 differs",
                        ));
                    }
                    tr.completed = Some(tr.header.file_name.clone());
                }
                let name = tr.completed.clone().unwrap();
                self.m.complete(&name, tr.header.checksum);
            }
            _ => {}
        }
    }

    fn close(&mut self, t: &mut Option<FakeTransfer>) {
        if self.joined {
            if let Some(tr) = t.as_mut() {
                tr.connections -= 1;
            }
            self.joined = false;
        }
    }
}

/// A push connection with its fake driver.
struct PushSide {
    m: PushClient,
    events: Vec<Event>,
    chunks_sent: Vec<u32>,
}

impl PushSide {
    fn new(now: Instant, header: &Header) -> PushSide {
        PushSide {
            m: PushClient::new(now, &client_cfg(), header.clone()),
            events: Vec::new(),
            chunks_sent: Vec::new(),
        }
    }

    /// Everything this side wants to send now: transmits, and chunks taken from the plan.
    /// `tamper` may change a chunk's payload on the wire.
    fn produce(
        &mut self,
        now: Instant,
        plan: &mut SendPlan,
        src: &[u8],
        header: &Header,
        tamper: &mut dyn FnMut(u32, &mut Vec<u8>),
        zstd: &mut ChunkCompressor,
    ) -> Vec<u8> {
        let mut wire = Vec::new();
        loop {
            if let Some(t) = self.m.poll_transmit() {
                wire.extend_from_slice(&t);
            }
            let Some(c) = self.m.poll_send(now, plan) else {
                if let Some(t) = self.m.poll_transmit() {
                    wire.extend_from_slice(&t);
                }
                return wire;
            };
            let bytes = &src[c.offset as usize..c.offset as usize + c.len as usize];
            let crc = crc32c(bytes);
            let mut payload = match header.compress {
                Compress::None => bytes.to_vec(),
                Compress::Zstd => {
                    let mut out = Vec::new();
                    zstd.compress(bytes, &mut out).unwrap();
                    out
                }
            };
            tamper(c.chunk, &mut payload);
            wire.extend_from_slice(&self.m.begin_chunk(c.chunk, payload.len() as u32));
            wire.extend_from_slice(&payload);
            plan.sent(c.chunk, crc);
            self.chunks_sent.push(c.chunk);
        }
    }

    fn feed(&mut self, now: Instant, input: &[u8], plan: &mut SendPlan) {
        let mut pos = 0;
        while pos < input.len() {
            let n = self.m.handle_input(now, &input[pos..]);
            pos += n;
            let mut any = false;
            while let Some(ev) = self.m.poll_event() {
                any = true;
                self.event(ev, plan);
            }
            if n == 0 && !any {
                break;
            }
        }
        while let Some(ev) = self.m.poll_event() {
            self.event(ev, plan);
        }
    }

    fn event(&mut self, ev: Event, plan: &mut SendPlan) {
        match &ev {
            Event::PushAccepted { have, .. } => plan.merge_have(have),
            Event::Acked(entries) => {
                for &(c, crc) in entries {
                    let o = plan.ack(c, crc);
                    assert_ne!(o, AckOutcome::OutOfRange);
                }
            }
            _ => {}
        }
        self.events.push(ev);
    }

    fn completed(&self) -> Option<(String, Checksum)> {
        self.events.iter().find_map(|e| match e {
            Event::Complete {
                file_name,
                checksum,
            } => Some((file_name.clone(), *checksum)),
            _ => None,
        })
    }
}

struct Run {
    server_events: Vec<Event>,
    client_events: Vec<Event>,
    chunks_sent: Vec<u32>,
    transfer: Option<FakeTransfer>,
    steps: usize,
}

/// Runs one push over `conns` connections until every connection is finished. `cut` splits the
/// client's bytes into pieces of that size on the way to the server.
fn push(
    src: &[u8],
    header: &Header,
    conns: usize,
    cut: usize,
    tamper: &mut dyn FnMut(u32, &mut Vec<u8>),
) -> Run {
    let mut now = Instant::now();
    let mut plan = SendPlan::new(header.full_chunk, &Have::new());
    let mut transfer: Option<FakeTransfer> = None;
    let mut zstd = ChunkCompressor::new(3).unwrap();
    let mut pairs: Vec<(PushSide, ServerSide)> = (0..conns)
        .map(|i| (PushSide::new(now, header), ServerSide::new(now, i)))
        .collect();
    let mut steps = 0;
    while pairs
        .iter()
        .any(|(c, s)| !c.m.is_finished() || !s.m.is_finished())
    {
        steps += 1;
        assert!(steps < 100_000, "no progress");
        for (c, s) in pairs.iter_mut() {
            let wire = c.produce(now, &mut plan, src, header, tamper, &mut zstd);
            for piece in wire.chunks(cut.max(1)) {
                s.feed(now, piece, &mut transfer);
            }
            if wire.is_empty() {
                s.feed(now, &[], &mut transfer);
            }
            if let Some(back) = s.m.poll_transmit() {
                c.feed(now, &back, &mut plan);
            }
            if s.m.is_finished() && s.m.poll_transmit().is_none() {
                s.close(&mut transfer);
                if !c.m.is_finished() {
                    c.m.handle_eof(now);
                    while let Some(ev) = c.m.poll_event() {
                        c.event(ev, &mut plan);
                    }
                }
            }
            if c.m.is_finished() {
                plan.release(c.m.in_flight());
            }
        }
        // Let the Ack timers run.
        now += Duration::from_millis(50);
        for (c, s) in pairs.iter_mut() {
            s.m.handle_timeout(now);
            while let Some(ev) = s.m.poll_event() {
                s.event(now, ev, &mut transfer);
            }
            c.m.handle_timeout(now);
        }
    }
    let mut run = Run {
        server_events: Vec::new(),
        client_events: Vec::new(),
        chunks_sent: Vec::new(),
        transfer,
        steps,
    };
    for (c, s) in pairs {
        run.server_events.extend(s.events);
        run.client_events.extend(c.events.clone());
        run.chunks_sent.extend(c.chunks_sent.iter().copied());
        if let Some(done) = c.completed() {
            assert_eq!(done.1, header.checksum);
        }
    }
    run
}

fn header_for(src: &[u8], one_chunk: u32, compress: Compress) -> Header {
    Header::new(
        one_chunk,
        src.len() as u64,
        compress,
        "data.bin",
        TransferId::parse(TID).unwrap(),
        sha(src),
    )
    .unwrap()
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

#[test]
fn push_of_a_multi_chunk_file_completes_byte_identical() {
    let src = data(10 * 4096 + 123, 1);
    for (compress, cut) in [
        (Compress::None, 100_000),
        (Compress::None, 7),
        (Compress::Zstd, 1000),
    ] {
        let h = header_for(&src, 4096, compress);
        let run = push(&src, &h, 1, cut, &mut |_, _| {});
        let t = run.transfer.unwrap();
        assert_eq!(t.part, src, "{compress:?} cut {cut}");
        assert_eq!(t.verifications, 1);
        assert_eq!(
            count(&run.client_events, |e| matches!(e, Event::Complete { .. })),
            1
        );
        let mut sent = run.chunks_sent.clone();
        sent.sort_unstable();
        assert_eq!(sent, (0..11).collect::<Vec<_>>(), "each chunk once");
        assert!(run.steps < 1000);
    }
}

#[test]
fn f13_acks_list_only_durable_chunks_and_arrive_before_the_fin_answer() {
    let src = data(70 * 4096, 2);
    let h = header_for(&src, 4096, Compress::None);
    let run = push(&src, &h, 1, 1 << 20, &mut |_, _| {});
    // 70 chunks in one go: an Ack at 64, the rest as soon as every chunk is held.
    let dues: Vec<usize> = run
        .server_events
        .iter()
        .filter_map(|e| match e {
            Event::AckDue(c) => Some(c.len()),
            _ => None,
        })
        .collect();
    assert_eq!(dues, [64, 6]);
    let acked: usize = run
        .client_events
        .iter()
        .map(|e| match e {
            Event::Acked(a) => a.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(acked, 70);
    let fin = run
        .server_events
        .iter()
        .position(|e| matches!(e, Event::FinReceived(_)))
        .unwrap();
    assert!(
        run.server_events[..fin]
            .iter()
            .filter(|e| matches!(e, Event::AckDue(_)))
            .count()
            == 2
    );
    assert!(run.transfer.unwrap().durable.iter().all(|d| *d));
}

#[test]
fn f14_a_chunk_corrupted_on_the_wire_is_repaired_before_the_whole_file_check() {
    let src = data(6 * 4096, 3);
    for compress in [Compress::None, Compress::Zstd] {
        let h = header_for(&src, 4096, compress);
        let mut corrupted = 0;
        let mut tamper = |chunk: u32, payload: &mut Vec<u8>| {
            if chunk == 2 && corrupted == 0 {
                corrupted += 1;
                if compress == Compress::None {
                    payload[100] ^= 0x55;
                } else {
                    // Same length, different content: a valid frame of other bytes.
                    let mut other = data(4096, 99);
                    other[0] = 1;
                    let mut z = ChunkCompressor::new(3).unwrap();
                    z.compress(&other, payload).unwrap();
                }
            }
        };
        let run = push(&src, &h, 1, 4000, &mut tamper);
        assert_eq!(corrupted, 1);
        assert_eq!(
            run.chunks_sent.iter().filter(|c| **c == 2).count(),
            2,
            "re-sent once"
        );
        let t = run.transfer.unwrap();
        assert_eq!(t.part, src);
        assert_eq!(t.verifications, 1, "no checksum-mismatch on the way");
        assert_eq!(
            count(&run.client_events, |e| matches!(e, Event::Complete { .. })),
            1
        );
    }
}

/// One push connection and its server through the Upgrade and the header: (server, client,
/// the plan of `chunks` chunks, the server's transfer).
fn handshake(
    now: Instant,
    h: &Header,
    chunks: u32,
) -> (ServerSide, PushSide, SendPlan, Option<FakeTransfer>) {
    let mut t: Option<FakeTransfer> = None;
    let mut s = ServerSide::new(now, 0);
    let mut c = PushSide::new(now, h);
    let mut plan = SendPlan::new(chunks, &Have::new());
    let hello = c.m.poll_transmit().unwrap();
    s.feed(now, &hello, &mut t);
    c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
    let hdr = c.m.poll_transmit().unwrap();
    s.feed(now, &hdr, &mut t);
    c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
    (s, c, plan, t)
}

/// A push connection's chunks sent and not acknowledged are what `in_flight` hands back to
/// the shared plan when the connection ends, so that another connection sends them again
/// (mutation sample G: an empty list stayed green; the chunks would have stayed "in flight"
/// in the plan, and the transfer would never complete).
#[test]
fn f16_a_cut_connection_gives_its_unacknowledged_chunks_back_to_the_plan() {
    let src = data(3 * 4096, 5);
    let h = header_for(&src, 4096, Compress::None);
    let now = Instant::now();
    let (_s, mut c, mut plan, _t) = handshake(now, &h, 3);
    let mut zstd = ChunkCompressor::new(3).unwrap();
    let _wire = c.produce(now, &mut plan, &src, &h, &mut |_, _| {}, &mut zstd);
    assert_eq!(c.chunks_sent, [0, 1, 2]);
    assert!(!plan.has_unsent());
    // The connection is cut before any Ack.
    let mut in_flight = c.m.in_flight().to_vec();
    in_flight.sort_unstable();
    assert_eq!(in_flight, [0, 1, 2]);
    plan.release(c.m.in_flight());
    assert!(plan.has_unsent(), "the chunks go back to the plan");
    assert_eq!(plan.take_next(), Some(0));
}

#[test]
fn f15_duplicates_are_not_errors_and_a_cut_off_copy_leaves_the_chunk_missing() {
    let src = data(3 * 4096, 4);
    let h = header_for(&src, 4096, Compress::None);
    let now = Instant::now();
    let (mut s, c, _plan, mut t) = handshake(now, &h, 3);
    assert!(matches!(c.events.last(), Some(Event::PushAccepted { .. })));
    // Chunk 1 twice (the second copy different), then half of chunk 0.
    let frame = |n: u32, body: &[u8]| {
        [&super::frame::chunk_header(n, body.len() as u32)[..], body].concat()
    };
    s.feed(now, &frame(1, &src[4096..8192]), &mut t);
    let mut other = src[4096..8192].to_vec();
    other[0] ^= 1;
    s.feed(now, &frame(1, &other), &mut t);
    let tr = t.as_ref().unwrap();
    assert_eq!(
        tr.held[1],
        Some(crc32c(&other)),
        "the latest complete copy wins"
    );
    let half = frame(0, &src[..4096]);
    s.feed(now, &half[..2000], &mut t);
    s.m.handle_eof(now);
    while let Some(ev) = s.m.poll_event() {
        s.event(now, ev, &mut t);
    }
    assert!(s.events.contains(&Event::ChunkAborted { chunk: 0 }));
    assert!(s.events.contains(&Event::PeerClosed { clean: false }));
    assert!(!s.events.iter().any(|e| matches!(e, Event::Failed(_))));
    let tr = t.as_ref().unwrap();
    assert_eq!(tr.held[0], None, "cut off mid-payload: missing");
    assert!(tr.writing.is_empty());
}

#[test]
fn f16_a_ninth_connection_of_one_transfer_gets_too_many_connections() {
    let src = data(2 * 4096, 5);
    let h = header_for(&src, 4096, Compress::None);
    let now = Instant::now();
    let mut t: Option<FakeTransfer> = None;
    let mut plan = SendPlan::new(2, &Have::new());
    let mut open = Vec::new();
    for i in 0..9 {
        let mut s = ServerSide::new(now, i);
        let mut c = PushSide::new(now, &h);
        s.feed(now, &c.m.poll_transmit().unwrap(), &mut t);
        c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
        s.feed(now, &c.m.poll_transmit().unwrap(), &mut t);
        c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
        open.push((c, s));
    }
    for (c, s) in &open[..8] {
        assert!(matches!(
            c.events.last(),
            Some(Event::PushAccepted {
                max_connections: 8,
                ..
            })
        ));
        assert!(!s.m.is_finished());
    }
    let (c9, s9) = &open[8];
    assert!(s9.m.is_finished());
    let Some(Event::PeerError(e)) = c9.events.last() else {
        panic!("{:?}", c9.events)
    };
    assert_eq!(e.code, ErrorCode::TooManyConnections);
    assert!(!e.is_final(), "the client may retry later");
    assert_eq!(t.unwrap().connections, 8);
    assert!(check_connections(7, 8).is_ok());
}

#[test]
fn f17_same_transfer_id_with_other_parameters_is_refused() {
    let src = data(4096, 6);
    let h = header_for(&src, 4096, Compress::None);
    let mut other = h.clone();
    other.file_name = "other.bin".into();
    let now = Instant::now();
    let mut t = Some(FakeTransfer::new(&h));
    let mut s = ServerSide::new(now, 0);
    let mut c = PushSide::new(now, &other);
    let mut plan = SendPlan::new(1, &Have::new());
    s.feed(now, &c.m.poll_transmit().unwrap(), &mut t);
    c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
    s.feed(now, &c.m.poll_transmit().unwrap(), &mut t);
    c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
    let Some(Event::PeerError(e)) = c.events.last() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::ParameterMismatch);
    assert!(e.is_final());
    assert!(c.m.is_finished() && s.m.is_finished());
}

#[test]
fn f19_a_checksum_mismatch_is_final() {
    let src = data(2 * 4096, 7);
    let mut h = header_for(&src, 4096, Compress::None);
    h.checksum = Checksum([7; 32]);
    let run = push(&src, &h, 1, 1 << 20, &mut |_, _| {});
    let e = run
        .client_events
        .iter()
        .find_map(|e| match e {
            Event::PeerError(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
    assert!(e.is_final());
    assert!(run.transfer.unwrap().completed.is_none());
}

#[test]
fn f20_the_empty_file_completes_with_fin_empty_ack_and_complete() {
    let h = header_for(b"", 262_144, Compress::None);
    assert_eq!(h.full_chunk, 0);
    assert_eq!(
        h.checksum.to_text(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let run = push(b"", &h, 1, 100, &mut |_, _| {});
    assert!(run.server_events.contains(&Event::FinReceived(vec![])));
    assert!(run.client_events.contains(&Event::Acked(vec![])));
    assert_eq!(
        count(&run.client_events, |e| matches!(e, Event::Complete { .. })),
        1
    );
    assert!(run.chunks_sent.is_empty());
}

#[test]
fn f16_several_connections_share_one_plan_and_one_part() {
    let src = data(40 * 4096 + 5, 8);
    let h = header_for(&src, 4096, Compress::None);
    let run = push(&src, &h, 4, 3000, &mut |_, _| {});
    let t = run.transfer.unwrap();
    assert_eq!(t.part, src);
    assert_eq!(t.verifications, 1, "verified once per transfer");
    assert_eq!(run.chunks_sent.len(), 41, "no chunk sent twice");
    assert_eq!(
        count(&run.client_events, |e| matches!(e, Event::Complete { .. })),
        4,
        "Complete on every connection that sent FIN"
    );
}

#[test]
fn f23_recycle_after_reconnect_bytes_loses_no_data() {
    let src = data(10 * 4096, 9);
    let mut h = header_for(&src, 4096, Compress::None);
    h.reconnect_bytes = Some(3 * 4096);
    let mut now = Instant::now();
    let mut plan = SendPlan::new(h.full_chunk, &Have::new());
    let mut t: Option<FakeTransfer> = None;
    let mut z = ChunkCompressor::new(3).unwrap();
    let mut recycles = 0;
    let mut done = false;
    for round in 0..10 {
        let mut c = PushSide::new(now, &h);
        let mut s = ServerSide::new(now, round);
        for _ in 0..200 {
            let wire = c.produce(now, &mut plan, &src, &h, &mut |_, _| {}, &mut z);
            s.feed(now, &wire, &mut t);
            if let Some(b) = s.m.poll_transmit() {
                c.feed(now, &b, &mut plan);
            }
            now += Duration::from_millis(100);
            s.m.handle_timeout(now);
            while let Some(ev) = s.m.poll_event() {
                s.event(now, ev, &mut t);
            }
            if s.m.is_finished() && !c.m.is_finished() {
                if let Some(b) = s.m.poll_transmit() {
                    c.feed(now, &b, &mut plan);
                }
                c.m.handle_eof(now);
                while let Some(ev) = c.m.poll_event() {
                    c.event(ev, &mut plan);
                }
            }
            if c.m.is_finished() {
                break;
            }
        }
        s.close(&mut t);
        plan.release(c.m.in_flight());
        assert!(
            c.chunks_sent.len() <= 3,
            "at most ReconnectBytes per connection"
        );
        if c.events.contains(&Event::Recycle) {
            recycles += 1;
            // The server answered the recycle FIN with an Ack and ended the connection.
            assert!(s.events.iter().any(|e| matches!(e, Event::FinReceived(_))));
        }
        if c.completed().is_some() {
            done = true;
            break;
        }
    }
    assert!(done);
    assert_eq!(recycles, 3);
    assert_eq!(t.unwrap().part, src);
}

#[test]
fn f23_a_reconnect_message_recycles_the_connection() {
    let src = data(8 * 4096, 10);
    let h = header_for(&src, 4096, Compress::None);
    let now = Instant::now();
    let mut plan = SendPlan::new(h.full_chunk, &Have::new());
    let mut t: Option<FakeTransfer> = None;
    let mut z = ChunkCompressor::new(3).unwrap();
    let mut c = PushSide::new(now, &h);
    let mut s = ServerSide::new(now, 0);
    s.feed(now, &c.m.poll_transmit().unwrap(), &mut t);
    c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
    s.feed(now, &c.m.poll_transmit().unwrap(), &mut t);
    s.m.request_reconnect();
    c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
    let wire = c.produce(now, &mut plan, &src, &h, &mut |_, _| {}, &mut z);
    assert_eq!(wire, super::frame::FIN, "recycled before sending anything");
    s.feed(now, &wire, &mut t);
    c.feed(now, &s.m.poll_transmit().unwrap(), &mut plan);
    assert!(s.m.is_finished());
    c.m.handle_eof(now);
    c.feed(now, &[], &mut plan);
    assert!(c.events.contains(&Event::Recycle));
}

#[test]
fn f29_silent_and_trickling_peers_get_timeout_and_a_close() {
    let src = data(4 * 4096, 11);
    let h = header_for(&src, 4096, Compress::None);
    let t0 = Instant::now();
    let open = |t: &mut Option<FakeTransfer>| {
        let mut s = ServerSide::new(t0, 0);
        let mut c = PushSide::new(t0, &h);
        let mut plan = SendPlan::new(4, &Have::new());
        s.feed(t0, &c.m.poll_transmit().unwrap(), t);
        c.feed(t0, &s.m.poll_transmit().unwrap(), &mut plan);
        s.feed(t0, &c.m.poll_transmit().unwrap(), t);
        s.m.poll_transmit().unwrap();
        s
    };
    // Silent: 60 s between frames.
    let mut t = None;
    let mut s = open(&mut t);
    assert_eq!(s.m.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    s.m.handle_timeout(t0 + Duration::from_secs(59));
    assert!(!s.m.is_finished());
    s.m.handle_timeout(t0 + Duration::from_secs(60));
    let out = s.m.poll_transmit().unwrap();
    assert!(std::str::from_utf8(&out[4..])
        .unwrap()
        .contains(r#""Code":"timeout""#));
    assert!(s.m.is_finished(), "the close follows the Error (F31)");
    // Trickling: one byte per second inside a chunk.
    let mut t = None;
    let mut s = open(&mut t);
    let frame = [&super::frame::chunk_header(0, 4096)[..], &src[..4096]].concat();
    let mut now = t0;
    for b in &frame[..29] {
        now += Duration::from_secs(1);
        s.feed(now, std::slice::from_ref(b), &mut t);
        s.m.handle_timeout(now);
    }
    assert!(!s.m.is_finished());
    for b in &frame[29..40] {
        now += Duration::from_secs(1);
        s.feed(now, std::slice::from_ref(b), &mut t);
        s.m.handle_timeout(now);
    }
    assert!(
        s.m.is_finished(),
        "under 64 KiB (or the frame's rest) in 30 s"
    );
    s.feed(now, &[], &mut t);
    assert!(s.events.contains(&Event::ChunkAborted { chunk: 0 }));
    assert_eq!(t.unwrap().held[0], None);
}

/// A server connection whose push of `data` (in `chunk`-byte chunks) was accepted at `t0`,
/// holding nothing, its reply taken.
fn accepted_push(t0: Instant, data: &[u8], chunk: u32) -> ServerConnection {
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    let mut c = PushClient::new(t0, &client_cfg(), header_for(data, chunk, Compress::None));
    let req = c.poll_transmit().unwrap();
    assert_eq!(m.handle_input(t0, &req).consumed, req.len());
    let back = m.poll_transmit().unwrap();
    assert_eq!(c.handle_input(t0, &back), back.len());
    let hdr = c.poll_transmit().unwrap();
    let mut pos = 0;
    while pos < hdr.len() {
        pos += m.handle_input(t0, &hdr[pos..]).consumed;
    }
    assert!(matches!(m.poll_event(), Some(Event::PushHeader(_))));
    m.accept_push(t0, Have::new(), 8);
    m.poll_transmit().unwrap();
    m
}

#[test]
fn f30_keepalive_acks_every_10_s_while_verifying() {
    let t0 = Instant::now();
    let mut m = accepted_push(t0, b"", 4096);
    m.handle_input(t0, &super::frame::FIN);
    assert_eq!(m.poll_event(), Some(Event::FinReceived(vec![])));
    m.answer_fin(t0, &[], true);
    assert_eq!(m.poll_event(), Some(Event::Verify));
    let ack = b"\0\0\0\x1a{\"Type\":\"Ack\",\"Chunks\":[]}";
    assert_eq!(m.poll_transmit().unwrap(), ack);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    m.handle_timeout(t0 + Duration::from_secs(9));
    assert_eq!(m.poll_transmit(), None);
    for i in 1..=3 {
        m.handle_timeout(t0 + Duration::from_secs(10 * i));
        assert_eq!(m.poll_transmit().unwrap(), ack, "keepalive {i}");
    }
    // A verification that took 35 s in one go: one keepalive, then every 10 s from now.
    m.handle_timeout(t0 + Duration::from_secs(65));
    assert_eq!(m.poll_transmit().unwrap(), ack);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(75)));
    // A tick 3 s late keeps the 10 s rhythm: the next one is still at 85 s.
    m.handle_timeout(t0 + Duration::from_secs(78));
    assert_eq!(m.poll_transmit().unwrap(), ack);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(85)));
    m.complete("e", Checksum(super::messages::EMPTY_SHA256));
    assert!(m.is_finished());
}

/// A push receiver: an empty Ack answer sends nothing; EOF between frames is a clean close
/// that ends the connection.
#[test]
fn f13_f31_push_receiver_empty_ack_and_eof_between_frames() {
    let t0 = Instant::now();
    let mut m = accepted_push(t0, &data(8192, 3), 4096);
    m.ack(&[]);
    assert_eq!(m.poll_transmit(), None, "no empty Ack while receiving");
    m.handle_eof(t0);
    assert_eq!(m.poll_event(), Some(Event::PeerClosed { clean: true }));
    assert!(m.is_finished());
    m.ack(&[(0, 1)]);
    assert_eq!(m.poll_transmit(), None, "nothing after the close");
}

/// A stored chunk is acknowledged within `ack_delay` (250 ms) even when nothing else arrives:
/// the receiver's next deadline is the Ack's while none is outstanding, and only the read
/// deadline while one is (F13; a mutant that swapped the two was not caught before).
#[test]
fn f13_a_stored_chunk_sets_the_ack_deadline_unless_an_ack_is_outstanding() {
    let t0 = Instant::now();
    let data = vec![7u8; 3 * 4096];
    let mut m = accepted_push(t0, &data, 4096);
    let read_deadline = m.poll_timeout().unwrap();
    let delay = ServerConfig::default().limits.ack_delay;
    assert!(read_deadline > t0 + delay);
    m.chunk_stored(t0, 0, false);
    assert_eq!(
        m.poll_event(),
        None,
        "one chunk of three: the Ack waits for its batch"
    );
    assert_eq!(m.poll_timeout(), Some(t0 + delay));
    m.handle_timeout(t0 + delay);
    assert_eq!(m.poll_event(), Some(Event::AckDue(vec![0])));
    // The Ack is outstanding (the driver is making chunk 0 durable): another stored chunk does
    // not bring the Ack's deadline back until it is answered.
    m.chunk_stored(t0 + delay, 1, false);
    assert_eq!(m.poll_timeout(), Some(read_deadline));
    m.ack(&[(0, crc32c(&data[..4096]))]);
    assert!(m.poll_transmit().is_some(), "the Ack of chunk 0");
    assert_eq!(m.poll_timeout(), Some(t0 + delay * 2));
}

/// F31: a push chunk whose payload the driver finds bad (a zstd frame breaking 2.6) gets
/// bad-chunk naming it, and the close.
#[test]
fn f31_a_chunk_the_driver_finds_bad_gets_bad_chunk() {
    let t0 = Instant::now();
    let mut m = accepted_push(t0, &data(8192, 2), 4096);
    m.chunk_failed(1, "zstd: corrupted block");
    let out = m.poll_transmit().unwrap();
    assert_eq!(
        &out[4..],
        br#"{"Type":"Error","Code":"bad-chunk","Message":"chunk 1: zstd: corrupted block","Chunk":1}"#
    );
    assert!(m.is_finished());
}

/// F31: the driver fails a push in the middle of a chunk (its disk is full): the chunk is
/// reported aborted, the Error goes out, and a second failure adds nothing.
#[test]
fn f31_a_driver_failure_mid_chunk_aborts_the_chunk_and_says_so_once() {
    let t0 = Instant::now();
    let mut m = accepted_push(t0, &data(8192, 2), 4096);
    let mut part = super::frame::chunk_header(0, 4096).to_vec();
    part.extend_from_slice(&[7; 100]);
    let mut pos = 0;
    while pos < part.len() {
        pos += m.handle_input(t0, &part[pos..]).consumed;
    }
    while m.poll_event().is_some() {}
    m.fail(ErrorMsg::new(ErrorCode::NoSpace, "disk full"));
    assert_eq!(m.poll_event(), Some(Event::ChunkAborted { chunk: 0 }));
    assert!(matches!(m.poll_event(), Some(Event::Failed(e)) if e.code == ErrorCode::NoSpace));
    let out = m.poll_transmit().unwrap();
    assert!(String::from_utf8_lossy(&out).contains(r#""Code":"no-space""#));
    assert!(m.is_finished());
    // Refused before any transfer, then failed again: one Error only.
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    m.refuse(ErrorMsg::new(ErrorCode::Busy, "later"));
    assert!(m.poll_transmit().is_some());
    assert!(matches!(m.poll_event(), Some(Event::Failed(_))));
    m.fail(ErrorMsg::new(ErrorCode::Internal, "again"));
    assert_eq!(m.poll_transmit(), None);
    assert_eq!(m.poll_event(), None);
}

#[test]
fn f31_every_error_is_followed_by_a_close() {
    let t0 = Instant::now();
    let h = header_for(&data(10 * 4096, 1), 4096, Compress::None);
    let bad_inputs: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 0],                    // JMSG length 0
        vec![0, 1, 0, 1],                    // JMSG over 65,536
        b"\0\0\0\x02[]".to_vec(),            // not an object
        [&[0, 0, 0, 2][..], b"{}"].concat(), // fields missing
    ];
    for bad in bad_inputs {
        let mut m = ServerConnection::new(t0, ServerConfig::default());
        let mut c = PushClient::new(t0, &client_cfg(), h.clone());
        m.handle_input(t0, &c.poll_transmit().unwrap());
        m.poll_transmit().unwrap();
        m.handle_input(t0, &bad);
        let out = m.poll_transmit().unwrap();
        assert!(
            String::from_utf8_lossy(&out).contains(r#""Code":"bad-header""#),
            "{bad:?}"
        );
        assert!(m.is_finished());
        let Some(Event::Failed(e)) = m.poll_event() else {
            panic!()
        };
        assert!(e.is_final());
        assert_eq!(
            m.handle_input(t0, b"more").consumed,
            4,
            "dropped after the close"
        );
        assert_eq!(m.poll_transmit(), None);
    }
    // A bad chunk header: bad-chunk, not final, before any payload byte.
    let mut m = ServerConnection::new(t0, ServerConfig::default());
    let mut c = PushClient::new(t0, &client_cfg(), h.clone());
    m.handle_input(t0, &c.poll_transmit().unwrap());
    m.poll_transmit();
    let hdr = {
        let mut v = Vec::new();
        super::frame::put_jmsg(&h.encode(), &mut v);
        v
    };
    let mut pos = 0;
    while pos < hdr.len() {
        pos += m.handle_input(t0, &hdr[pos..]).consumed;
    }
    m.poll_event();
    m.accept_push(t0, Have::new(), 8);
    m.poll_transmit();
    let r = m.handle_input(t0, b"\0\0\0\x07\0\0\x13\x88xxxx");
    assert_eq!(r.consumed, 8);
    let out = m.poll_transmit().unwrap();
    assert_eq!(
        &out[4..],
        br#"{"Type":"Error","Code":"bad-chunk","Message":"chunk 7: payload length 5000, expected 4096","Chunk":7}"#,
        "the 2.8 example"
    );
    assert!(m.is_finished());
}

mod handshake;
mod pull;
mod split;
mod v110;
