//! JTP targets: the request decoder, the response decoder under every `Expect`, and the server
//! connection machine fed arbitrary client bytes.

use super::alloc::Meter;
use super::{check_prefix, check_split, cuts, prefixes, Log, Script, Spin};
use crate::proto::jtp::request::{Decoded, Request, RequestDecoder, RequestLimits};
use crate::proto::jtp::response::{
    put_cancel, put_entry, put_error, put_list_header, put_packet_header, put_packets_header,
    put_watch_event, Event, Expect, ResponseDecoder, ResponseLimits, MAX_HEADER_FRAME,
};
use crate::proto::jtp::server::{Connection, Event as ServerEvent, Phase, WatchInput};
use crate::proto::jtp::wire::MAGIC_GET;

/// Ids a request decoder may preallocate whatever the wire announces (request.rs).
const PREALLOC_IDS: usize = 4096;

/// `seed | max_have | request bytes`: the stream split anywhere, its truncations, and every
/// request decoded re-encoded and decoded again.
pub fn jtp_request(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let max_have = match s.u8() {
        0 => RequestLimits::default().max_have,
        n => u32::from(n) * 8,
    };
    let limits = RequestLimits { max_have };
    let input = s.rest();
    let (whole, decoded) = requests(limits, input, &[input.len()]);
    check_split("jtp request", &whole, &requests_log(limits, input, seed));
    for at in prefixes(seed, input.len()) {
        let (part, _) = requests(limits, &input[..at], &[at]);
        check_prefix("jtp request", at, &part, &whole);
    }
    for (req, len) in decoded {
        let mut enc = Vec::new();
        req.encode(&mut enc);
        assert_eq!(enc.len(), len, "{req:?} re-encoded to another length");
        let again = RequestDecoder::new(limits).decode(&enc);
        assert_eq!(again, (len, Ok(Decoded::Request(req))), "round trip");
    }
}

fn requests_log(limits: RequestLimits, input: &[u8], seed: u8) -> Log {
    requests(limits, input, &cuts(seed, input.len())).0
}

/// Decodes `input` fed up to each of `ends`; the log and each request with its length.
fn requests(limits: RequestLimits, input: &[u8], ends: &[usize]) -> (Log, Vec<(Request, usize)>) {
    let mut d = RequestDecoder::new(limits);
    let (mut log, mut out, mut meter) = (Log::default(), Vec::new(), Meter::default());
    let (mut pos, mut start) = (0, 0);
    'feed: for &end in ends {
        while pos < end {
            meter.enter();
            let (n, r) = d.decode(&input[pos..end]);
            meter.leave();
            assert!(n <= end - pos, "consumed past the input");
            pos += n;
            match r {
                Ok(Decoded::Partial) => assert_eq!(pos, end, "partial left bytes unread"),
                Ok(Decoded::Request(req)) => {
                    log.event(&req);
                    out.push((req, pos - start));
                    start = pos;
                }
                Err(e) => {
                    log.error(e);
                    break 'feed;
                }
            }
        }
    }
    if !log.has_error() {
        assert_eq!(d.is_mid_request(), start != pos, "is_mid_request");
    }
    // Ids grow with the ids received; only a count's preallocation is ahead of the input.
    meter.check(
        "jtp request decoder",
        8 * PREALLOC_IDS + 16 * input.len() + 4096,
    );
    (log, out)
}

/// `seed | limits | expectations | response bytes`. Expectations: a count (0-3), then per
/// expectation a kind (List, Get with up to 7 ids, Batch, ListAndGet, Watch, Idle).
pub fn jtp_response(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let limits = match s.u8() {
        0 => ResponseLimits::default(),
        n => ResponseLimits {
            max_list_entries: u32::from(n),
            max_packets: u32::from(n / 2),
        },
    };
    let expects: Vec<Expect> = (0..s.u8() % 4)
        .map(|_| match s.u8() % 6 {
            0 => Expect::List,
            1 => Expect::Get {
                requested: (0..s.u8() % 8).map(|_| s.u64()).collect(),
            },
            2 => Expect::Batch,
            3 => Expect::ListAndGet,
            4 => Expect::Watch,
            _ => Expect::Idle,
        })
        .collect();
    let input = s.rest();
    let run = |bytes: &[u8], ends: &[usize]| responses(limits, &expects, bytes, ends);
    let (whole, events) = run(input, &[input.len()]);
    check_split(
        "jtp response",
        &whole,
        &run(input, &cuts(seed, input.len())).0,
    );
    for at in prefixes(seed, input.len()) {
        check_prefix("jtp response", at, &run(&input[..at], &[at]).0, &whole);
    }
    // Round trip: the events re-encoded decode to the same events.
    if let Some(bytes) = encode_responses(&events) {
        let log = if whole.has_error() {
            Log {
                items: whole.items[..whole.items.len() - 1].to_vec(),
            }
        } else {
            whole
        };
        assert_eq!(run(&bytes, &[bytes.len()]).0, log, "events re-encoded");
    }
}

/// A response event, owned.
#[derive(Debug)]
enum Resp {
    ListStart(u32),
    Entry(u64, u8, Vec<u8>, u32),
    PacketsStart([u8; 4], u32),
    PacketHeader(u8, u32, u64),
    Data(Vec<u8>),
    Cancelled,
    Watch(u64, u8, Vec<u8>, u32),
    ServerError(u8, String),
    End,
}

fn responses(
    limits: ResponseLimits,
    expects: &[Expect],
    input: &[u8],
    ends: &[usize],
) -> (Log, Vec<Resp>) {
    let mut d = ResponseDecoder::new(limits);
    for e in expects {
        d.expect(e.clone());
    }
    // Packet ids of a JTPD must follow the request's order (checked when it is the only one).
    let mut requested = match expects {
        [Expect::Get { requested }] => Some(requested.as_slice()),
        _ => None,
    };
    let (mut log, mut out, mut meter, mut spin) =
        (Log::default(), vec![], Meter::default(), Spin::default());
    let (mut pos, mut packet_left, mut entries_left, mut in_get) = (0, 0u32, 0u32, false);
    'feed: for &end in ends {
        loop {
            meter.enter();
            let (n, r) = d.decode(&input[pos..end]);
            meter.leave();
            assert!(n <= end - pos, "consumed past the input");
            let ev = match r {
                Ok(None) => {
                    assert_eq!(pos + n, end, "need more, with bytes left");
                    pos = end;
                    break;
                }
                Ok(Some(ev)) => {
                    // Only events count: "need more" ends the loop.
                    spin.step("jtp response", n);
                    ev
                }
                Err(e) => {
                    log.error(e);
                    break 'feed;
                }
            };
            if let Event::Data(b) = ev {
                assert!(
                    b.len() == n && b.as_ptr() == input[pos..].as_ptr(),
                    "data not the input's"
                );
                assert!(
                    b.len() as u64 <= u64::from(packet_left) && !b.is_empty(),
                    "data past the packet"
                );
                packet_left -= b.len() as u32;
                log.data(b);
                pos += n;
                match out.last_mut() {
                    Some(Resp::Data(d)) => d.extend_from_slice(b),
                    _ => out.push(Resp::Data(b.to_vec())),
                }
                continue;
            }
            pos += n;
            log.event(&ev);
            out.push(match ev {
                Event::ListStart { count } => {
                    assert!(
                        count <= limits.max_list_entries,
                        "list count over the limit"
                    );
                    entries_left = count;
                    Resp::ListStart(count)
                }
                Event::Entry {
                    id,
                    flags,
                    name,
                    size,
                } => {
                    assert!(entries_left > 0, "more entries than the count");
                    entries_left -= 1;
                    Resp::Entry(id, flags, name.to_vec(), size)
                }
                Event::PacketsStart { magic, count } => {
                    assert!(
                        magic == MAGIC_GET || count <= limits.max_packets,
                        "packet count"
                    );
                    in_get = magic == MAGIC_GET;
                    Resp::PacketsStart(magic, count)
                }
                Event::PacketHeader { flags, len, id } => {
                    assert_eq!(packet_left, 0, "a packet inside a packet");
                    if let (true, Some(ids)) = (in_get, requested.as_mut()) {
                        let at = ids
                            .iter()
                            .position(|&r| r == id)
                            .expect("JTPD id not requested");
                        *ids = &ids[at + 1..];
                    }
                    packet_left = len;
                    Resp::PacketHeader(flags, len, id)
                }
                Event::PacketEnd => {
                    assert_eq!(packet_left, 0, "packet ended early");
                    continue;
                }
                Event::ResponseEnd => {
                    assert_eq!(entries_left, 0, "list ended early");
                    Resp::End
                }
                Event::Cancelled => Resp::Cancelled,
                Event::Watch {
                    id,
                    flags,
                    name,
                    size,
                } => Resp::Watch(id, flags, name.to_vec(), size),
                Event::ServerError { code, message } => Resp::ServerError(code, message),
                Event::Data(_) => unreachable!("handled above"),
            });
        }
    }
    // The stash holds at most one header frame; a server error's message is handed out.
    meter.check("jtp response decoder", 2 * MAX_HEADER_FRAME + 4096);
    (log, out)
}

/// The bytes of `events` through the encoders; `None` when a name is not UTF-8 (the encoders
/// take `&str`) or a JTPD announces more than its one-byte count.
fn encode_responses(events: &[Resp]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for e in events {
        match e {
            Resp::ListStart(n) => put_list_header(*n, &mut out),
            Resp::Entry(id, flags, name, size) => put_entry(
                *id,
                *flags,
                std::str::from_utf8(name).ok()?,
                *size,
                &mut out,
            ),
            Resp::PacketsStart(magic, n) => put_packets_header(*magic, *n, &mut out),
            Resp::PacketHeader(flags, len, id) => put_packet_header(*flags, *len, *id, &mut out),
            Resp::Data(d) => out.extend_from_slice(d),
            Resp::Cancelled => put_cancel(&mut out),
            Resp::Watch(id, flags, name, size) => put_watch_event(
                *id,
                *flags,
                std::str::from_utf8(name).ok()?,
                *size,
                &mut out,
            ),
            Resp::ServerError(code, msg) => put_error(*code, msg, &mut out),
            Resp::End => {}
        }
    }
    Some(out)
}

/// A script for the server connection: `max_input | watch | ops`, each op one byte:
/// `0` feed a chunk (at most `input_room`), `1` the response is done (keep-alive from the
/// request), `2` poll for a CANCEL, `3` poll WATCH input, `4` EOF, `5` close; events are drained
/// after every op.
pub fn jtp_server_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let max_input = usize::from(s.u8()).max(1) * 16;
    let watch_enabled = s.bool();
    let mut c = Connection::new(RequestLimits { max_have: 64 }, max_input, watch_enabled);
    let mut keep_alive = None;
    while !s.is_empty() {
        match s.u8() % 6 {
            0 => {
                let room = c.input_room();
                assert!(room <= max_input, "input room over the buffer bound");
                let chunk = s.chunk();
                c.handle_input(&chunk[..chunk.len().min(room)]);
            }
            1 => {
                if let Some(k) = keep_alive.take() {
                    let responding = c.phase() == Phase::Responding;
                    c.response_done(k);
                    if responding {
                        assert_eq!(c.is_finished(), !k, "keep-alive decides what follows");
                    }
                }
            }
            2 => {
                let responding = c.phase() == Phase::Responding;
                if c.poll_cancel() {
                    assert!(responding, "a CANCEL taken outside a response");
                }
            }
            3 => {
                let watching = c.phase() == Phase::Watching;
                match c.poll_watch_input() {
                    WatchInput::None => {}
                    WatchInput::Cancel => assert!(watching && c.phase() != Phase::Closed),
                    WatchInput::Violation => assert!(watching && c.is_finished()),
                }
            }
            4 => c.handle_eof(),
            _ => c.close(),
        }
        let (before, mut events) = (c.requests(), 0);
        while let Some(ev) = c.poll_event() {
            assert!(keep_alive.is_none(), "a request while another is answered");
            events += 1;
            match ev {
                ServerEvent::Request(r) => keep_alive = Some(r.keep_alive()),
                ServerEvent::Cancelled => assert!(c.requests() > 1, "CANCEL first was accepted"),
                ServerEvent::StartWatch => {
                    assert!(watch_enabled && c.phase() == Phase::Watching, "WATCH")
                }
                ServerEvent::Fail { code, message } => {
                    assert!(matches!(code, 2 | 4) && !message.is_empty());
                    assert!(
                        c.is_finished() && c.poll_event().is_none(),
                        "nothing after a failure"
                    );
                }
            }
        }
        assert!(
            c.requests() - before <= events,
            "a request decoded and not reported"
        );
        if c.is_finished() {
            assert_eq!(c.phase(), Phase::Closed);
            assert!(c.poll_event().is_none() && !c.poll_cancel());
        }
    }
}
