//! filestorage machine targets: the server connection with a fake store behind it, and the
//! `put`, `query` and `fetch` client machines with a fake server in front of them. Peer bytes
//! are raw or well-formed messages (with tokens minted for the key, chunk ids and lengths of the
//! batch) so that the fuzzer reaches every state; answers and their timing come from the input.
//!
//! Server: a write only ever lands inside a file of the batch the store authenticated, at
//! `n * chunk-size`, with exactly the chunk's length; at most `window` writes wait; every
//! reply is a RESPONSE that parses, within LEN's limit, echoing the ids of the requests in their
//! order (nil for an unreadable one); `complete` only for a file the store completed.
//!
//! Clients: chunks read only inside the ranges the server said were missing; at most `window`
//! TRANSFERs unanswered; a file complete only on the server's word with its store id; `Done`
//! only when every file is; query pages followed with `after`; fetched bytes in order, inside
//! the file, `Done` only once the end arrived.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Script;
use crate::proto::filestorage::client::{
    FetchClient, FetchConfig, FetchEvent, Put, PutConfig, PutEvent, QueryClient, QueryConfig,
    QueryEvent,
};
use crate::proto::filestorage::frame::{put_frame, Decoded, FrameDecoder, Framing, MAX_LEN};
use crate::proto::filestorage::ids::{chunk_id, store_id, MessageIds, Uuid};
use crate::proto::filestorage::json::{
    encode_authentication, encode_error, encode_fetch, encode_ok, encode_ok_auth,
    encode_ok_complete, encode_ok_fetch, encode_ok_query, encode_query, encode_transfer,
    parse_request, parse_response, read_message_id, utype, ChunkRange, FileSpec, MessageId,
    QueryResult, Request, ResponseBody,
};
use crate::proto::filestorage::reason::{Code, Reason};
use crate::proto::filestorage::server::{
    Answer, AnswerError, Connection, Event, FetchData, ServerConfig, Ticket, WriteOutcome,
};
use crate::proto::filestorage::store::index::QueryPage;
use crate::proto::filestorage::store::missing::{chunk_count, chunk_len, MissingSet};
use crate::proto::filestorage::token::{mint, JwtKey};
use crate::proto::filestorage::Limits;

const KEY: &[u8] = b"secret-key";
const UNIX_NOW: i64 = 1_750_000_000;

fn token(s: &mut Script<'_>) -> String {
    let key = JwtKey::new(KEY).expect("a key");
    match s.u8() % 8 {
        0 => "not.a.token".into(),
        1 => mint(&key, 7, "karchnu", Some(1)),
        n => mint(&key, u32::from(n), "karchnu", None),
    }
}

fn uuid(b: u8) -> Uuid {
    Uuid([b | 1; 16])
}

/// Byte `k` of chunk `n` of file `file`.
fn chunk_data(file: u32, n: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|k| (u64::from(file) * 7 + n * 13 + k) as u8)
        .collect()
}

/// A batch of one to three files, as the client describes it.
fn files(s: &mut Script<'_>) -> Vec<FileSpec> {
    (0..1 + s.u8() % 3)
        .map(|i| FileSpec {
            name: format!("f{i}.txt"),
            size: u64::from(s.u16()),
            sha256: None,
        })
        .collect()
}

/// The batch the fake store authenticated last.
struct Batch {
    fid: Uuid,
    uid: u32,
    sizes: Vec<u64>,
    chunk_size: u32,
    missing: MissingSet,
}

/// What an event left for the driver to answer.
enum Owed {
    Auth(Uuid, u32, Vec<u64>, u32),
    Write(u32, u64),
    Query,
    Fetch(u64),
}

/// A script for the server. Ops: raw bytes, AUTHENTICATION, TRANSFER, QUERY, FETCH, answer the
/// oldest owed event, answer the newest, a clock step, EOF, a legacy close.
pub fn filestorage_server_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let legacy = s.bool();
    let limits = Limits {
        window: 1 + u32::from(s.u8() % 8),
        max_errors: 8,
        ..Limits::default()
    };
    let framing = if legacy && s.bool() {
        Framing::Legacy
    } else {
        Framing::Current
    };
    let key = JwtKey::new(KEY).expect("a key");
    let config = Arc::new(ServerConfig {
        key,
        legacy_ipc: legacy,
        limits,
    });
    let mut now = Instant::now();
    let mut conn = Connection::new(config, now, UNIX_NOW);
    // The fake store and what the driver promised.
    let (mut pending, mut held) = (None::<Batch>, HashSet::<(Uuid, u32, u64)>::new());
    let (mut active, mut owed) = (None::<Batch>, VecDeque::<(Ticket, Owed)>::new());
    // Replies expected, by ticket: the id echoed, and `complete` when the store completed.
    let (mut shadow, mut ids) = ((FrameDecoder::new(legacy), false), Vec::<MessageId>::new());
    let (mut replies, mut seen, mut completes) = (FrameDecoder::new(legacy), 0usize, Vec::new());
    let (mut mid, mut eof, mut raw) = (0u64, false, false);
    let mut next_mid = || {
        mid += 1;
        MessageId::from_uuid(Uuid((u128::from(mid) | 1 << 100).to_be_bytes()))
    };
    while !s.is_empty() {
        let mut json = Vec::new();
        let ut = match s.u8() % 10 {
            0 => {
                raw = true;
                feed(&mut conn, &mut shadow, &mut ids, s.chunk(), now, eof, false);
                0
            }
            1 => {
                let (m, t, f) = (next_mid(), token(&mut s), files(&mut s));
                let cs = if s.bool() {
                    Some(1000 + u32::from(s.u16()))
                } else {
                    None
                };
                encode_authentication(&mut json, &m, &t, &f, &uuid(s.u8()), &["work".into()], cs);
                utype::AUTHENTICATION
            }
            2 => {
                let Some(b) = active.as_ref() else { continue };
                let file = u32::from(s.u8()) % b.sizes.len() as u32;
                let size = b.sizes[file as usize];
                let n = u64::from(s.u8()) % chunk_count(size, b.chunk_size).max(1);
                let mut len = chunk_len(size, b.chunk_size, n).unwrap_or(0);
                let mut chunk = chunk_id(&b.fid, u64::from(file), n);
                match s.u8() % 16 {
                    0 => len += 1,
                    1 => chunk = uuid(3),
                    _ => {}
                }
                let m = next_mid();
                encode_transfer(
                    &mut json,
                    &m,
                    &chunk,
                    &chunk_data(file, n, len),
                    u64::from(file),
                    n,
                );
                utype::TRANSFER
            }
            3 => {
                let (m, t) = (next_mid(), token(&mut s));
                encode_query(&mut json, &m, &t, &["work".into()], None, None);
                utype::QUERY
            }
            4 => {
                let (m, t) = (next_mid(), token(&mut s));
                encode_fetch(
                    &mut json,
                    &m,
                    &t,
                    &uuid(s.u8()),
                    u64::from(s.u16()),
                    u64::from(s.u32()),
                );
                utype::FETCH
            }
            5 | 6 => {
                let o = if s.u8() % 2 == 0 {
                    owed.pop_front()
                } else {
                    owed.pop_back()
                };
                if let Some((t, o)) = o {
                    answer(
                        &mut conn,
                        &mut s,
                        t,
                        o,
                        &mut pending,
                        &mut active,
                        &mut held,
                        &mut completes,
                    );
                }
                0
            }
            7 => {
                now += Duration::from_secs(u64::from(s.u16()));
                conn.handle_timeout(now);
                0
            }
            8 => {
                conn.handle_eof();
                eof = true;
                0
            }
            _ => {
                feed(&mut conn, &mut shadow, &mut ids, &[0], now, eof, true);
                0
            }
        };
        if ut != 0 {
            let mut frame = Vec::new();
            put_frame(&mut frame, framing, ut, &json);
            feed(&mut conn, &mut shadow, &mut ids, &frame, now, eof, true);
        }
        // Drain the events, answering some at once as a fast store would.
        loop {
            let room = conn.input_room();
            assert!(room <= 6 + MAX_LEN as usize, "room for more than a frame");
            assert!(
                conn.writes_waiting() <= limits.window as usize,
                "writes past the window"
            );
            let (t, o) = match conn.poll_event() {
                None => break,
                Some(Event::Authenticate { ticket, call }) => {
                    assert!((1000..=65_536).contains(&call.chunk_size) && call.login == "karchnu");
                    let sizes = call.files.iter().map(|f| f.size).collect();
                    (
                        ticket,
                        Owed::Auth(call.fid, call.uid, sizes, call.chunk_size),
                    )
                }
                Some(Event::Write { ticket, write: w }) => {
                    let b = active
                        .as_ref()
                        .expect("a write before an authenticated batch");
                    assert_eq!(w.fid, b.fid, "a write into another batch");
                    assert_eq!(w.uid, b.uid, "a write for another user");
                    let size = *b
                        .sizes
                        .get(w.file as usize)
                        .expect("a write outside the batch");
                    let due = chunk_len(size, b.chunk_size, w.n).expect("a write past the file");
                    assert_eq!(
                        w.offset,
                        w.n * u64::from(b.chunk_size),
                        "a write at another offset"
                    );
                    assert_eq!(w.data.len() as u64, due, "a write of another length");
                    if !raw {
                        assert_eq!(
                            w.data,
                            chunk_data(w.file, w.n, due),
                            "a write of other bytes"
                        );
                    }
                    (ticket, Owed::Write(w.file, w.n))
                }
                Some(Event::Query { ticket, call }) => {
                    assert!(call.limit <= limits.max_results);
                    (ticket, Owed::Query)
                }
                Some(Event::Fetch { ticket, call }) => {
                    assert!(call.max_fetch <= limits.max_fetch);
                    (ticket, Owed::Fetch(call.length.min(call.max_fetch)))
                }
            };
            if s.u8() % 4 == 0 {
                owed.push_back((t, o));
            } else {
                answer(
                    &mut conn,
                    &mut s,
                    t,
                    o,
                    &mut pending,
                    &mut active,
                    &mut held,
                    &mut completes,
                );
            }
        }
        let mut out = Vec::new();
        conn.poll_transmit(&mut out);
        replies.extend(&out);
        while let Some(f) = replies.next_frame().expect("a reply frame out of bounds") {
            let Decoded::Frame(f) = f else {
                panic!("the server sent a legacy close")
            };
            assert_eq!(f.utype, utype::RESPONSE, "a reply that is not a RESPONSE");
            let r = parse_response(f.json).expect("a reply that does not parse");
            assert_eq!(
                Some(&r.message_id),
                ids.get(seen),
                "reply {seen} echoes another id"
            );
            if let ResponseBody::Ok(ok) = &r.body {
                let want = completes
                    .iter()
                    .find(|&&(t, ..)| t == seen as u64)
                    .map(|&(_, f, id)| (f, id));
                assert_eq!(
                    ok.complete.zip(ok.id),
                    want,
                    "complete without the store's word"
                );
            }
            seen += 1;
        }
        if conn.is_finished() {
            assert!(conn.poll_event().is_none(), "an event after the end");
        }
    }
}

/// Feeds `bytes` to the connection (`whole`: all of them or, when there is no room, none, as a
/// client that waits would; else as many as there is room for) and to the shadow decoder that
/// lists the ids its replies must echo: every frame's readable id (nil if none), then a nil
/// reply for a framing error.
#[allow(clippy::too_many_arguments)]
fn feed(
    conn: &mut Connection,
    shadow: &mut (FrameDecoder, bool),
    ids: &mut Vec<MessageId>,
    bytes: &[u8],
    now: Instant,
    eof: bool,
    whole: bool,
) {
    let room = conn.input_room();
    if whole && bytes.len() > room {
        return;
    }
    let bytes = &bytes[..bytes.len().min(room)];
    if conn.is_finished() || eof || bytes.is_empty() {
        return;
    }
    conn.handle_input(bytes, now, UNIX_NOW);
    let (decoder, failed) = shadow;
    decoder.extend(bytes);
    while !*failed {
        match decoder.next_frame() {
            Ok(Some(Decoded::Frame(f))) => {
                ids.push(read_message_id(f.json).unwrap_or(MessageId::NIL))
            }
            Ok(Some(Decoded::PeerClosing)) | Ok(None) => break,
            Err(_) => {
                ids.push(MessageId::NIL);
                *failed = true;
            }
        }
    }
}

/// The fake store's answer to one event.
#[allow(clippy::too_many_arguments)]
fn answer(
    conn: &mut Connection,
    s: &mut Script<'_>,
    ticket: Ticket,
    owed: Owed,
    pending: &mut Option<Batch>,
    active: &mut Option<Batch>,
    held: &mut HashSet<(Uuid, u32, u64)>,
    completes: &mut Vec<(u64, u64, Uuid)>,
) {
    let refuse = s.u8() % 8 == 0;
    let r = match owed {
        Owed::Auth(fid, uid, sizes, chunk_size) => {
            let counts: Vec<u64> = sizes.iter().map(|&z| chunk_count(z, chunk_size)).collect();
            let mut missing = MissingSet::all(&counts);
            for &(f, file, n) in held.iter() {
                if f == fid {
                    missing.remove(file as usize, n);
                }
            }
            *pending = Some(Batch {
                fid,
                uid,
                sizes,
                chunk_size,
                missing,
            });
            if refuse {
                *active = None;
                conn.handle_answer(ticket, Answer::Auth(Err(Reason::new(Code::FidConflict))))
            } else {
                *active = pending.take();
                let m = &active.as_ref().expect("just set").missing;
                conn.handle_answer(ticket, Answer::Auth(Ok(m)))
            }
        }
        Owed::Write(file, n) => {
            let outcome = match active.as_mut() {
                _ if refuse => WriteOutcome::Failed(Reason::new(Code::StorageError)),
                Some(b) => {
                    held.insert((b.fid, file, n));
                    b.missing.remove(file as usize, n);
                    if b.missing.is_file_complete(file as usize) {
                        let id = store_id(&b.fid, u64::from(file));
                        completes.push((ticket, u64::from(file), id));
                        WriteOutcome::Completed { id }
                    } else {
                        WriteOutcome::Stored
                    }
                }
                None => WriteOutcome::Stored,
            };
            conn.handle_answer(ticket, Answer::Write(outcome))
        }
        Owed::Query => {
            let page = QueryPage {
                results: Vec::new(),
                more: false,
            };
            conn.handle_answer(
                ticket,
                Answer::Query(if refuse {
                    Err(Code::NotFound.into())
                } else {
                    Ok(page)
                }),
            )
        }
        Owed::Fetch(len) => {
            let bytes = vec![7u8; len.min(65_536) as usize];
            let data = FetchData {
                bytes: &bytes,
                eof: s.bool(),
            };
            conn.handle_answer(
                ticket,
                Answer::Fetch(if refuse {
                    Err(Code::NotFound.into())
                } else {
                    Ok(data)
                }),
            )
        }
    };
    // Only a ticket the machine forgot (it closed) is refused.
    if let Err(e) = r {
        assert!(
            matches!(e, AnswerError::UnknownTicket(_)),
            "answer refused: {e}"
        );
    }
    assert!(
        conn.handle_answer(ticket, Answer::Write(WriteOutcome::Stored))
            .is_err(),
        "answered twice"
    );
}

/// `mode (put, query, fetch) | config | ops`. Ops: raw bytes, answer the oldest request
/// (Ok shaped from the input, or Error), disconnect (put).
pub fn filestorage_client_machines(data: &[u8]) {
    let mut s = Script::new(data);
    match s.u8() % 3 {
        0 => put(&mut s),
        1 => query(&mut s),
        _ => fetch(&mut s),
    }
}

fn ids() -> MessageIds {
    MessageIds::sequential(uuid(0x1a))
}

fn reply(json: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    put_frame(&mut f, Framing::Current, utype::RESPONSE, json);
    f
}

/// The requests a client sent, in order, read back from its bytes.
struct Sent {
    decoder: FrameDecoder,
    requests: VecDeque<(MessageId, u8, Vec<u8>)>,
}

impl Sent {
    fn new() -> Sent {
        Sent {
            decoder: FrameDecoder::new(false),
            requests: VecDeque::new(),
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        self.decoder.extend(bytes);
        while let Some(Decoded::Frame(f)) = self
            .decoder
            .next_frame()
            .expect("a client frame out of bounds")
        {
            let req = parse_request(f.utype, f.json, 1024).expect("a client sent an unknown type");
            let req = req.expect("a client's request does not parse");
            self.requests
                .push_back((req.message_id(), f.utype, f.json.to_vec()));
        }
    }
}

fn put(s: &mut Script<'_>) {
    let files = files(s);
    let window = 1 + u32::from(s.u8() % 8);
    let chunk_size = if s.bool() {
        Some(1000 + u32::from(s.u16() % 4000))
    } else {
        None
    };
    let fid = uuid(s.u8());
    let config = PutConfig {
        token: "t".into(),
        files: files.clone(),
        tags: vec!["work".into()],
        fid,
        chunk_size,
        window,
    };
    let mut m = Put::new(config, ids());
    let mut sent = Sent::new();
    // The last AUTHENTICATION reply's chunk size and ranges, and the chunks read since.
    let (mut cs, mut ranges, mut read) = (0u32, Vec::<ChunkRange>::new(), HashSet::new());
    // Raw bytes may hold replies the fake server does not know of: its word is unknown then.
    let (mut complete, mut done, mut raw) = (vec![false; files.len()], false, false);
    loop {
        let mut out = Vec::new();
        m.poll_transmit(&mut out);
        sent.read(&out);
        assert!(
            m.peak_in_flight() <= window as usize,
            "TRANSFERs past the window"
        );
        while let Some(ev) = m.poll_event() {
            match ev {
                PutEvent::ReadChunk(c) => {
                    let size = files[c.file as usize].size;
                    assert_eq!(
                        Some(c.len),
                        chunk_len(size, cs, c.n),
                        "a read of another length"
                    );
                    assert_eq!(c.offset, c.n * u64::from(cs), "a read at another offset");
                    let inside = ranges
                        .iter()
                        .any(|r| r.file == c.file && (r.first..r.end).contains(&c.n));
                    assert!(
                        raw || (inside && read.insert((c.file, c.n))),
                        "a chunk not missing, or read twice"
                    );
                    let len = c.len + u64::from(s.u8() % 32 == 0);
                    m.send_chunk(c, &chunk_data(c.file, c.n, len));
                }
                PutEvent::FileComplete { file, id } => {
                    assert_eq!(id, store_id(&fid, u64::from(file)));
                    assert!(
                        raw || complete[file as usize],
                        "complete without the server's word"
                    );
                }
                PutEvent::Done => {
                    assert!(
                        raw || complete.iter().all(|&c| c),
                        "done with files not stored"
                    );
                    done = true;
                }
                PutEvent::Failed(_) => {}
            }
        }
        if s.is_empty() {
            break;
        }
        let bytes = match s.u8() % 4 {
            0 => {
                raw = true;
                s.chunk().to_vec()
            }
            1 => {
                m.handle_disconnect();
                sent = Sent::new();
                Vec::new()
            }
            _ => {
                let Some((mid, ut, _)) = sent.requests.pop_front() else {
                    continue;
                };
                let mut json = Vec::new();
                if s.u8() % 8 == 0 {
                    encode_error(&mut json, &mid, &Reason::new(Code::QuotaExceeded));
                } else if ut == utype::AUTHENTICATION {
                    let c = chunk_size.unwrap_or(1000);
                    let mut miss = Vec::new();
                    for (i, f) in files.iter().enumerate() {
                        let nb = chunk_count(f.size, c);
                        if nb > 0 && s.u8() % 4 != 0 {
                            let first = u64::from(s.u8()) % nb;
                            miss.push(ChunkRange {
                                file: i as u32,
                                first,
                                end: nb.min(first + 1 + u64::from(s.u8() % 8)),
                            });
                        }
                    }
                    let more = s.u8() % 4 == 0;
                    if !more {
                        // The files left out are stored, on the server's word.
                        for (i, c) in complete.iter_mut().enumerate() {
                            *c |= !miss.iter().any(|r| r.file as usize == i);
                        }
                    }
                    encode_ok_auth(&mut json, &mid, &miss, more, c, 1 + u32::from(s.u8() % 8));
                    if !more || !miss.is_empty() {
                        (cs, ranges) = (c, miss);
                        read.clear();
                    }
                } else {
                    let file = u32::from(s.u8()) % files.len() as u32;
                    if s.u8() % 4 == 0 {
                        complete[file as usize] = true;
                        encode_ok_complete(
                            &mut json,
                            &mid,
                            u64::from(file),
                            &store_id(&fid, u64::from(file)),
                        );
                    } else {
                        encode_ok(&mut json, &mid);
                    }
                }
                reply(&json)
            }
        };
        m.handle_input(&bytes);
        if done {
            assert!(
                m.is_finished() && m.poll_event().is_none(),
                "events after Done"
            );
        }
    }
}

fn query(s: &mut Script<'_>) {
    let config = QueryConfig {
        token: "t".into(),
        tags: vec!["work".into()],
        name: None,
    };
    let mut m = QueryClient::new(config, ids());
    let (mut sent, mut last, mut done) = (Sent::new(), None::<Uuid>, false);
    loop {
        while let Some(ev) = m.poll_event() {
            match ev {
                QueryEvent::Results(rs) => last = rs.last().map(|r| r.id).or(last),
                QueryEvent::Done => done = true,
                QueryEvent::Failed(_) => {}
            }
        }
        let mut out = Vec::new();
        m.poll_transmit(&mut out);
        let before = sent.requests.len();
        sent.read(&out);
        for (_, _, json) in sent.requests.iter().skip(before) {
            let Some(Ok(Request::Query(q))) = parse_request(utype::QUERY, json, 1) else {
                panic!("a query client sent something else")
            };
            assert_eq!(
                q.after, last,
                "the next page does not follow the last result"
            );
        }
        if s.is_empty() {
            break;
        }
        let bytes = if s.u8() % 4 == 0 {
            s.chunk().to_vec()
        } else {
            let Some((mid, ..)) = sent.requests.pop_front() else {
                continue;
            };
            let results: Vec<QueryResult> = (0..s.u8() % 3)
                .map(|_| QueryResult {
                    id: uuid(s.u8()),
                    name: "a".into(),
                    size: 1,
                    sha256: [0; 32],
                    tags: vec![],
                })
                .collect();
            let mut json = Vec::new();
            encode_ok_query(&mut json, &mid, &results, s.bool(), MAX_LEN as usize);
            reply(&json)
        };
        m.handle_input(&bytes);
        if done {
            assert!(m.poll_event().is_none(), "events after Done");
        }
    }
}

fn fetch(s: &mut Script<'_>) {
    let size = s.bool().then(|| u64::from(s.u16()));
    let start = u64::from(s.u16()) % size.map_or(u64::MAX, |z| z + 1);
    let length = 1 + u64::from(s.u16());
    let config = FetchConfig {
        token: "t".into(),
        id: uuid(9),
        size,
        start,
        length,
        window: 1 + u32::from(s.u8() % 4),
    };
    let mut m = FetchClient::new(config, ids());
    let (mut sent, mut next, mut done) = (Sent::new(), start, false);
    loop {
        let mut out = Vec::new();
        m.poll_transmit(&mut out);
        sent.read(&out);
        while let Some(ev) = m.poll_event() {
            assert!(!done, "an event after Done");
            match ev {
                FetchEvent::Data { offset, bytes } => {
                    assert_eq!(offset, next, "bytes out of order");
                    next += bytes.len() as u64;
                    assert!(size.is_none_or(|z| next <= z), "bytes past the end");
                }
                FetchEvent::Done => {
                    assert!(size.is_none_or(|z| next == z), "done before the end");
                    done = true;
                }
                FetchEvent::Failed(_) => {}
            }
        }
        if s.is_empty() {
            break;
        }
        let bytes = if s.u8() % 4 == 0 {
            s.chunk().to_vec()
        } else {
            let Some((mid, _, json)) = sent.requests.pop_front() else {
                continue;
            };
            let Some(Ok(Request::Fetch(f))) = parse_request(utype::FETCH, &json, 1) else {
                panic!("a fetch client sent something else")
            };
            let due = match size {
                Some(z) => f.length.min(z.saturating_sub(f.offset)),
                None => f.length.min(u64::from(s.u16())),
            };
            let len = due + u64::from(s.u8() % 16 == 0);
            let eof = match size {
                Some(z) => f.offset + len >= z,
                None => len < f.length,
            } ^ (s.u8() % 16 == 0);
            let mut json = Vec::new();
            encode_ok_fetch(&mut json, &mid, &vec![5u8; len as usize], eof);
            reply(&json)
        };
        m.handle_input(&bytes);
    }
}
