//! FastDP codec targets: the Upgrade heads, JMSG and the messages it carries, the chunk stream,
//! zstd per chunk and the 1.1.0 whole-file decoders.

use super::alloc::Meter;
use super::{check_prefix, check_split, cuts, prefixes, Log, Script, Spin};
use crate::proto::fastdp::frame::{
    bound, chunk_header, put_control, ChunkDecoder, ChunkEvent, Compress, Geometry, JmsgReader,
    Rules, FIN, MAX_JMSG, MIN_JMSG,
};
use crate::proto::fastdp::http::{
    parse_request, put_request, switching_protocols, HeadParser, RequestRules, ResponseParser,
    Status, Version, MAX_HEAD, MAX_KEY,
};
use crate::proto::fastdp::messages::{
    parse_message, parse_request as parse_header, Message, PullReply, ReplyHeader, Request,
    V110Compress, V110Header, MAX_ERROR_MESSAGE,
};
use crate::proto::fastdp::v110::Decoder as V110Decoder;
use crate::proto::fastdp::zstd_chunk::{
    parse_frame_header, ChunkCompressor, ChunkInflater, MAX_WINDOW,
};

/// The key the response parser expects (fastdp.md 2.13).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// `seed | mode | v110 | bytes`. Mode 0: a request head; 1: a response head; 2: a request built
/// from host, path and key chunks, which must be accepted when they are clean.
pub fn fastdp_http_head(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let mode = s.u8() % 3;
    let version = if s.bool() {
        Version::V110
    } else {
        Version::V120
    };
    let rules = RequestRules::default();
    if mode == 2 {
        let (host, path, key) = (s.text(), s.text(), s.text());
        let mut req = Vec::new();
        put_request(&host, &path, &key, version, &mut req);
        let (n, st) = HeadParser::new().feed(
            &req,
            &RequestRules {
                path: path.clone(),
                ..rules
            },
        );
        let clean = |t: &str, visible: bool| {
            t.bytes()
                .all(|b| (0x21..0x7f).contains(&b) || (!visible && b == b' '))
        };
        let key_ok = !key.is_empty() && key.len() <= MAX_KEY && clean(&key, true);
        if !path.is_empty() && clean(&path, true) && clean(&host, false) && key_ok {
            let ok = Status::Complete(Ok(crate::proto::fastdp::http::Upgrade { key, version }));
            assert_eq!((n, st), (req.len(), ok), "a clean request was refused");
        }
        return;
    }
    let input = s.rest();
    let run = |bytes: &[u8], ends: &[usize]| head(mode == 0, version, bytes, ends);
    let whole = run(input, &[input.len()]);
    check_split("fastdp head", &whole, &run(input, &cuts(seed, input.len())));
    for at in prefixes(seed, input.len()) {
        check_prefix("fastdp head", at, &run(&input[..at], &[at]), &whole);
    }
}

fn head(request: bool, version: Version, input: &[u8], ends: &[usize]) -> Log {
    let rules = RequestRules::default();
    let (mut req, mut resp) = (HeadParser::new(), ResponseParser::new(KEY, version));
    let (mut log, mut pos) = (Log::default(), 0);
    for &end in ends {
        let (n, verdict) = if request {
            match req.feed(&input[pos..end], &rules) {
                (n, Status::Partial) => (n, None),
                (n, Status::Complete(r)) => (n, Some(format!("{r:?}"))),
            }
        } else {
            match resp.feed(&input[pos..end]) {
                (n, Status::Partial) => (n, None),
                (n, Status::Complete(r)) => (n, Some(format!("{r:?}"))),
            }
        };
        assert!(
            n <= end - pos && pos + n <= MAX_HEAD,
            "consumed past the input or the head"
        );
        pos += n;
        let ends_head = input[..pos].ends_with(b"\r\n\r\n");
        let Some(verdict) = verdict else {
            let whole_head = memchr::memmem::find(&input[..pos], b"\r\n\r\n").is_some();
            assert!(
                pos == end && !whole_head,
                "partial with bytes left or a whole head"
            );
            continue;
        };
        assert!(
            ends_head || pos == MAX_HEAD || !request,
            "a verdict before the head's end"
        );
        if ends_head && request {
            assert!(
                memchr::memmem::find(&input[..pos - 1], b"\r\n\r\n").is_none(),
                "past the head"
            );
            let judged = parse_request(&input[..pos], &rules);
            assert_eq!(
                verdict,
                format!("{judged:?}"),
                "parsed alone, the head is judged otherwise"
            );
            if let Ok(up) = judged {
                let mut ok = Vec::new();
                switching_protocols(&up.key, up.version, &mut ok);
                let r = ResponseParser::new(&up.key, up.version).feed(&ok);
                assert_eq!(
                    r,
                    (ok.len(), Status::Complete(Ok(()))),
                    "our 101 is refused"
                );
            }
        }
        // A response fails at its status line, as soon as it is whole: where depends on the
        // reads, the verdict does not.
        let ok = verdict.starts_with("Ok");
        log.event(((request || ok).then_some(pos), verdict));
        break;
    }
    log
}

/// `seed | JMSG stream`: each message through every parser of fastdp.md 2.7-2.11, each value
/// parsed re-encoding to itself.
pub fn fastdp_jmsg(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let input = s.rest();
    let whole = jmsgs(input, &[input.len()], true);
    check_split(
        "jmsg",
        &whole,
        &jmsgs(input, &cuts(seed, input.len()), false),
    );
    for at in prefixes(seed, input.len()) {
        check_prefix("jmsg", at, &jmsgs(&input[..at], &[at], false), &whole);
    }
}

/// Reads the JMSGs of `input` fed up to each of `ends`; `parse`: each one through every parser.
fn jmsgs(input: &[u8], ends: &[usize], parse: bool) -> Log {
    let mut r = JmsgReader::new();
    let (mut log, mut pos, mut meter) = (Log::default(), 0, Meter::default());
    for &end in ends {
        loop {
            assert!(
                r.wanted() <= 4 + MAX_JMSG as usize,
                "wants more than a JMSG"
            );
            meter.enter();
            let n = r.feed(&input[pos..end]);
            meter.leave();
            pos += n;
            match r.next_message() {
                Ok(Some(body)) => {
                    assert!((MIN_JMSG..=MAX_JMSG).contains(&(body.len() as u32)));
                    log.event(body);
                    if parse {
                        messages(body);
                    }
                }
                Ok(None) if pos == end => break,
                Ok(None) => assert!(n > 0, "a JMSG reader that takes nothing"),
                Err(e) => {
                    log.error(e);
                    meter.check("jmsg reader", 2 * (4 + MAX_JMSG as usize) + 64);
                    return log;
                }
            }
        }
    }
    meter.check("jmsg reader", 2 * (4 + MAX_JMSG as usize) + 64);
    log
}

/// Every parser on one body; each value parsed round-trips through its encoder.
fn messages(body: &[u8]) {
    if let Ok(m) = parse_message(body) {
        let again = parse_message(&m.encode()).expect("an encoded message parses");
        let m = match m {
            Message::Error(mut e) if e.message.len() > MAX_ERROR_MESSAGE => {
                // The encoder cuts long messages, at a char boundary.
                let mut end = MAX_ERROR_MESSAGE;
                while !e.message.is_char_boundary(end) {
                    end -= 1;
                }
                e.message.truncate(end);
                Message::Error(e)
            }
            m => m,
        };
        assert_eq!(again, m, "message round trip");
    }
    match parse_header(body) {
        Ok(Request::Push(h)) => {
            assert_eq!(
                parse_header(&h.encode()),
                Ok(Request::Push(h)),
                "header round trip"
            )
        }
        Ok(Request::Pull(p)) => {
            assert_eq!(
                parse_header(&p.encode()),
                Ok(Request::Pull(p)),
                "pull round trip"
            )
        }
        Err(_) => {}
    }
    if let Ok(r) = ReplyHeader::parse(body) {
        assert_eq!(ReplyHeader::parse(&r.encode()), Ok(r), "reply round trip");
    }
    if let Ok(r) = PullReply::parse(body) {
        assert_eq!(
            PullReply::parse(&r.encode()),
            Ok(r),
            "pull reply round trip"
        );
    }
    if let Ok(h) = V110Header::parse(body) {
        assert_eq!(
            V110Header::parse(&h.encode_python()),
            Ok(h),
            "1.1.0 header round trip"
        );
    }
}

/// `seed | rules (0 None, 1 Zstd, 2 1.1.0) | OneChunk-1 | FullSize (2 bytes) | chunk stream`.
pub fn fastdp_chunk_stream(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let rule = s.u8() % 3;
    let g = Geometry::new(u32::from(s.u8()) + 1, u64::from(s.u16())).expect("small geometry");
    let rules = match rule {
        0 => Rules::V120 {
            geometry: g,
            compress: Compress::None,
        },
        1 => Rules::V120 {
            geometry: g,
            compress: Compress::Zstd,
        },
        _ => Rules::V110 { geometry: g },
    };
    let input = s.rest();
    let (whole, events) = chunks(rules, input, &[input.len()]);
    check_split(
        "chunk stream",
        &whole,
        &chunks(rules, input, &cuts(seed, input.len())).0,
    );
    for at in prefixes(seed, input.len()) {
        check_prefix(
            "chunk stream",
            at,
            &chunks(rules, &input[..at], &[at]).0,
            &whole,
        );
    }
    // The events re-encoded are the bytes they came from, and decode to themselves.
    let mut bytes = Vec::new();
    for e in &events {
        match e {
            Chunk::Start(i, n) => bytes.extend_from_slice(&chunk_header(*i, *n)),
            Chunk::Payload(b) => bytes.extend_from_slice(b),
            Chunk::Fin => bytes.extend_from_slice(&FIN),
            Chunk::Control(b) => put_control(b, &mut bytes),
        }
    }
    assert!(input.starts_with(&bytes), "events re-encode to other bytes");
    let mut log = whole;
    if log.has_error() {
        log.items.pop();
    }
    assert_eq!(
        chunks(rules, &bytes, &[bytes.len()]).0,
        log,
        "events re-encoded"
    );
}

enum Chunk {
    Start(u32, u32),
    Payload(Vec<u8>),
    Fin,
    Control(Vec<u8>),
}

fn chunks(rules: Rules, input: &[u8], ends: &[usize]) -> (Log, Vec<Chunk>) {
    let (g, v110) = match rules {
        Rules::V120 { geometry, .. } => (geometry, false),
        Rules::V110 { geometry } => (geometry, true),
    };
    let mut d = ChunkDecoder::new(rules);
    let (mut log, mut out, mut meter, mut spin) =
        (Log::default(), vec![], Meter::default(), Spin::default());
    let (mut pos, mut current, mut next, mut controls) = (0, None::<(u32, u32, u32)>, 0u32, 0);
    let mut promises: Vec<(usize, u64)> = Vec::new();
    'feed: for &end in ends {
        loop {
            if let Some(left) = d.frame_remaining() {
                promises.push((pos, left));
            }
            meter.enter();
            let (n, r) = d.decode(&input[pos..end]);
            meter.leave();
            assert!(n <= end - pos, "consumed past the input");
            let at = pos;
            pos += n;
            let ev = match r {
                Ok(None) if n == 0 => break,
                Ok(None) => continue,
                Ok(Some(ev)) => {
                    spin.step("chunk stream", n);
                    ev
                }
                Err(e) => {
                    log.error(e);
                    break 'feed;
                }
            };
            match ev {
                ChunkEvent::Start { chunk, len } => {
                    assert!(
                        chunk < g.full_chunk() && current.is_none(),
                        "chunk outside the file"
                    );
                    let due = g.len(chunk);
                    match rules {
                        Rules::V120 {
                            compress: Compress::Zstd,
                            ..
                        } => {
                            assert!((1..=bound(due)).contains(&len), "zstd payload length")
                        }
                        _ => assert_eq!(len, due, "payload length"),
                    }
                    if v110 {
                        assert_eq!(chunk, next, "1.1.0 out of order");
                        next += 1;
                    }
                    assert_eq!(d.current_chunk(), Some(chunk));
                    current = Some((chunk, len, 0));
                    out.push(Chunk::Start(chunk, len));
                    log.event(ev);
                }
                ChunkEvent::Payload {
                    chunk,
                    offset,
                    bytes,
                } => {
                    let (c, len, done) = current.as_mut().expect("payload outside a chunk");
                    assert!(chunk == *c && offset == *done, "payload out of place");
                    assert!(bytes.as_ptr() == input[at..].as_ptr() && bytes.len() == n);
                    assert!(
                        !bytes.is_empty() && offset + bytes.len() as u32 <= *len,
                        "past len"
                    );
                    *done += bytes.len() as u32;
                    log.data(bytes);
                    match out.last_mut() {
                        Some(Chunk::Payload(v)) => v.extend_from_slice(bytes),
                        _ => out.push(Chunk::Payload(bytes.to_vec())),
                    }
                }
                ChunkEvent::End { chunk } => {
                    let (c, len, done) = current.take().expect("end outside a chunk");
                    assert!(chunk == c && done == len, "chunk ended early");
                    log.event(ev);
                    check_promises(&mut promises, pos);
                }
                ChunkEvent::Fin | ChunkEvent::Control(_) => {
                    assert!(
                        !v110 && current.is_none(),
                        "FIN or control in 1.1.0 or a chunk"
                    );
                    if let ChunkEvent::Control(b) = &ev {
                        assert!((1..=MAX_JMSG as usize).contains(&b.len()), "control length");
                        out.push(Chunk::Control(b.clone()));
                        controls += 1;
                    } else {
                        out.push(Chunk::Fin);
                    }
                    log.event(ev);
                    check_promises(&mut promises, pos);
                }
            }
        }
    }
    assert_eq!(
        d.is_v110_done(),
        v110 && next == g.full_chunk() && current.is_none() && !log.has_error()
    );
    // Payload is never buffered; only a control body is, and each is handed out.
    meter.check("chunk decoder", (controls + 1) * 2 * MAX_JMSG as usize + 64);
    (log, out)
}

/// Every "bytes left in the frame" said since the frame began is at most what was left.
fn check_promises(promises: &mut Vec<(usize, u64)>, end: usize) {
    for &(p, left) in promises.iter() {
        assert!(
            left <= (end - p) as u64,
            "frame_remaining {left} at {p}, frame ended at {end}"
        );
    }
    promises.clear();
}

/// `seed | mode | ...`. Mode 0: `len(i) (2 bytes) | out buffer | payload` inflated whole, in
/// pieces, into buffers of any size. Mode 1: `level | chunk` compressed, checked against
/// bound(len(i)) and the header rules, and inflated back.
pub fn fastdp_zstd_chunk(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    if s.u8() % 2 == 1 {
        let level = i32::from(s.u8() % 4);
        let chunk = s.rest();
        let mut payload = Vec::new();
        ChunkCompressor::new(level)
            .unwrap()
            .compress(chunk, &mut payload)
            .unwrap();
        assert!(
            payload.len() <= bound(chunk.len() as u32) as usize,
            "over bound(len(i))"
        );
        let h = parse_frame_header(&payload)
            .unwrap()
            .expect("a whole header");
        assert!(h.content_size == Some(chunk.len() as u64) && h.window <= MAX_WINDOW);
        let (out, r) = inflate(
            &payload,
            chunk.len() as u32,
            1 + usize::from(seed),
            &cuts(seed, payload.len()),
        );
        assert_eq!((out.as_slice(), r), (chunk, Ok(())), "round trip");
        return;
    }
    let expected = u32::from(s.u16());
    let out_len = 1 + usize::from(s.u8()) * 64;
    let payload = s.rest();
    let (whole, r) = inflate(payload, expected, 1 << 16, &[payload.len()]);
    let (pieces, r2) = inflate(payload, expected, out_len, &cuts(seed, payload.len()));
    assert!(
        whole.len() <= expected as usize && pieces.len() <= expected as usize,
        "past len(i)"
    );
    assert_eq!(r.is_ok(), r2.is_ok(), "{r:?} whole, {r2:?} in pieces");
    if r.is_ok() {
        assert_eq!(whole, pieces, "inflated in pieces, other bytes");
    }
}

/// Inflates `payload` fed up to each of `ends` into a buffer of `out_len` bytes: the output and
/// the verdict (`Ok` only from `finish`).
fn inflate(
    payload: &[u8],
    expected: u32,
    out_len: usize,
    ends: &[usize],
) -> (Vec<u8>, Result<(), String>) {
    let mut z = ChunkInflater::new().unwrap();
    z.begin(expected);
    let (mut out, mut buf, mut pos) = (Vec::new(), vec![0u8; out_len], 0);
    for &end in ends {
        loop {
            let (used, written) = match z.decompress(&payload[pos..end], &mut buf) {
                Ok(x) => x,
                Err(e) => return (out, Err(format!("{e:?}"))),
            };
            assert!(used <= end - pos && written <= buf.len());
            out.extend_from_slice(&buf[..written]);
            assert_eq!(z.produced() as usize, out.len(), "produced");
            pos += used;
            if used == 0 && written == 0 {
                break;
            }
        }
    }
    let r = z.finish().map_err(|e| format!("{e:?}"));
    if r.is_ok() {
        assert_eq!(out.len(), expected as usize, "finished short of len(i)");
    }
    (out, r)
}

/// `seed | kind (None, Zstd, Zip, TarGz; +4: round trip) | cap (3 bytes) | stream`.
pub fn fastdp_v110_decoders(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let sel = s.u8();
    let kind = [
        V110Compress::None,
        V110Compress::Zstd,
        V110Compress::Zip,
        V110Compress::TarGz,
    ][usize::from(sel % 4)];
    let cap = s.uint(3);
    let input = s.rest();
    if sel & 4 != 0 && matches!(kind, V110Compress::None | V110Compress::Zstd) {
        let stream = match kind {
            V110Compress::Zstd => zstd::bulk::compress(input, 1).unwrap(),
            _ => input.to_vec(),
        };
        let (out, r) = v110(kind, u64::MAX, &stream, &cuts(seed, stream.len()));
        assert_eq!(
            (out.as_slice(), r),
            (input, Ok(input.len() as u64)),
            "round trip"
        );
        return;
    }
    let (whole, r) = v110(kind, cap, input, &[input.len()]);
    let (pieces, r2) = v110(kind, cap, input, &cuts(seed, input.len()));
    assert_eq!(r.is_ok(), r2.is_ok(), "{r:?} whole, {r2:?} in pieces");
    if r.is_ok() {
        assert_eq!(whole, pieces, "decoded in pieces, other bytes");
    }
}

fn v110(
    kind: V110Compress,
    cap: u64,
    input: &[u8],
    ends: &[usize],
) -> (Vec<u8>, Result<u64, String>) {
    let mut d = V110Decoder::new(kind, cap).unwrap();
    let (mut out, mut pos, mut meter) = (Vec::new(), 0, Meter::default());
    let mut r = Ok(());
    {
        let mut sink = |b: &[u8]| {
            assert!(
                kind == V110Compress::None || b.len() <= 64 * 1024,
                "sink piece over 64 KiB"
            );
            out.extend_from_slice(b);
            Ok(())
        };
        for &end in ends {
            meter.enter();
            r = d.feed(&input[pos..end], &mut sink);
            meter.leave();
            pos = end;
            if r.is_err() {
                break;
            }
        }
    }
    let r = r.and_then(|()| d.finish()).map_err(|e| format!("{e:?}"));
    assert!(
        d.produced() <= cap && d.produced() == out.len() as u64,
        "produced past the cap"
    );
    // Fixed buffers only: metadata (1 MiB at most), the output buffer and inflate state.
    meter.check(
        "1.1.0 decoder",
        (1 << 20) + (1 << 18) + 4 * input.len().min(1 << 16),
    );
    (out, r)
}
