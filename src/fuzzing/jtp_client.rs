//! JTP client target: the client `Connection` with queued jobs, fed arbitrary server bytes and
//! well-formed answers to what it asked, with clock steps, cancels and EOF.
//!
//! Invariants: every transmit is one whole request (or `03 00`); a sequential connection has at
//! most one request in flight and a pipelined one at most its depth; nothing follows a request
//! whose keep-alive bit is clear; data ranges lie within the input of the call and add up to
//! the packet's length; a packet not marked defective is within its cap and of its listed size;
//! a local name is a safe basename; every answer ends as what was asked (`Done::Get` names
//! exactly the ids that did not come); after an error every call fails.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Script;
use crate::proto::jtp::client::{Connection, Done, Event, Job, Listed, Listing, Policy};
use crate::proto::jtp::request::{Decoded, Request, RequestDecoder, RequestLimits};
use crate::proto::jtp::response::{
    put_cancel, put_entry, put_error, put_get_header, put_list_header, put_packet_header,
    put_packets_header, put_watch_event,
};
use crate::proto::jtp::wire::{MAGIC_BATCH, MAGIC_LIST_AND_GET};

const NAMES: &[&str] = &["a.png", "b", "../c.jpg", ".d", "", "e/f.gif", "g\u{0}h"];

/// Ids are drawn from a few, so that answers and listings meet.
fn id(s: &mut Script<'_>) -> u64 {
    match s.u8() % 8 {
        7 => s.u64(),
        n => u64::from(n) + 1,
    }
}

/// A well-formed answer to `req` (a fair share of them slightly off), from the script.
fn answer(s: &mut Script<'_>, req: Option<&Request>, out: &mut Vec<u8>) {
    match req {
        Some(Request::List { .. }) => {
            let n = u32::from(s.u8() % 5);
            put_list_header(n, out);
            for _ in 0..n {
                let i = id(s);
                put_entry(
                    i,
                    s.u8() & 0x07,
                    NAMES[usize::from(s.u8()) % NAMES.len()],
                    u32::from(s.u8()),
                    out,
                );
            }
        }
        Some(Request::GetById { ids, .. }) => {
            let sent: Vec<u64> = ids.iter().copied().filter(|_| s.bool()).collect();
            put_get_header(sent.len() as u8, out);
            for i in sent {
                packet(s, i, out);
            }
        }
        Some(Request::Batch { .. }) | Some(Request::ListAndGet { .. }) => {
            let magic = if matches!(req, Some(Request::Batch { .. })) {
                MAGIC_BATCH
            } else {
                MAGIC_LIST_AND_GET
            };
            let n = u32::from(s.u8() % 4);
            put_packets_header(magic, n, out);
            for _ in 0..n {
                let i = id(s);
                packet(s, i, out);
            }
        }
        Some(Request::Watch) => match s.u8() % 3 {
            0 => put_cancel(out),
            _ => {
                let i = id(s);
                put_watch_event(
                    i,
                    0,
                    NAMES[usize::from(s.u8()) % NAMES.len()],
                    u32::from(s.u8()),
                    out,
                );
            }
        },
        _ => match s.u8() % 2 {
            0 => put_cancel(out),
            _ => put_error(s.u8(), "busy", out),
        },
    }
}

fn packet(s: &mut Script<'_>, id: u64, out: &mut Vec<u8>) {
    let flags = s.u8() & 0x0f;
    let len = u32::from(s.u8());
    put_packet_header(flags, len, id, out);
    out.extend(std::iter::repeat_n(b'p', len as usize));
}

/// `policy | keep-alive | ops`: 0 push a job, 1 poll transmits, 2 raw server bytes, 3 a
/// well-formed answer to the oldest request, 4 a clock step, 5 cancel, 6 EOF, 7 a listing from
/// elsewhere.
pub fn jtp_client_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let policy = match s.u8() % 3 {
        0 => Policy::Sequential,
        n => Policy::Pipelined {
            depth: usize::from(n) * 2,
        },
    };
    let keep_alive = s.bool();
    let mut c = Connection::new(policy, keep_alive);
    let mut now = Instant::now();
    // Requests sent whose answers are not complete, with the packet ids received for each.
    let mut sent: VecDeque<(Request, Vec<u64>)> = VecDeque::new();
    let mut last_sent = false;
    let mut listing: Option<Arc<Listing>> = None;
    let mut packet: Option<(u32, u32)> = None;
    while !s.is_empty() {
        match s.u8() % 8 {
            0 => c.push(match s.u8() % 5 {
                0 => Job::List,
                1 => Job::Get((0..s.u8() % 6).map(|_| id(&mut s)).collect()),
                2 => Job::Batch((0..s.u8() % 3).map(|_| id(&mut s)).collect()),
                3 => Job::ListAndGet,
                _ => Job::Watch,
            }),
            1 => {
                while let Some(bytes) = c.poll_transmit(now) {
                    let (n, r) = RequestDecoder::new(RequestLimits::default()).decode(bytes);
                    let Ok(Decoded::Request(req)) = r else {
                        panic!("a transmit that is not a request: {bytes:?}");
                    };
                    assert_eq!(n, bytes.len(), "a transmit of more than one request");
                    if req == Request::Cancel {
                        assert!(
                            matches!(sent.back(), Some((Request::Watch, _))),
                            "CANCEL outside a WATCH"
                        );
                        continue;
                    }
                    assert!(!last_sent, "a request after one without keep-alive");
                    last_sent = !req.keep_alive() && req != Request::Watch;
                    sent.push_back((req, Vec::new()));
                    let max = match policy {
                        Policy::Sequential => 1,
                        Policy::Pipelined { depth } => depth,
                    };
                    assert!(sent.len() <= max, "{} requests in flight", sent.len());
                }
            }
            op @ (2 | 3) => {
                let mut bytes = Vec::new();
                if op == 2 {
                    bytes.extend_from_slice(s.chunk());
                } else {
                    answer(&mut s, sent.front().map(|(r, _)| r), &mut bytes);
                }
                if !feed(&mut c, now, &bytes, &mut sent, &mut listing, &mut packet) {
                    assert!(c.is_finished(), "failed and not finished");
                    assert!(
                        c.handle_input(b"\x00", now).is_err(),
                        "a call after an error"
                    );
                    return;
                }
            }
            4 => now += Duration::from_micros(u64::from(s.u16()) * 16),
            5 => c.cancel(),
            6 => {
                if c.handle_eof().is_err() {
                    return;
                }
                assert!(sent.is_empty(), "a clean EOF with answers due");
            }
            _ => {
                let entries: Vec<Listed> = (0..s.u8() % 4)
                    .map(|_| Listed {
                        id: id(&mut s),
                        ftype: 0,
                        name: NAMES[usize::from(s.u8()) % NAMES.len()].into(),
                        size: u32::from(s.u8()),
                    })
                    .collect();
                let l = Arc::new(Listing::new(entries));
                listing = Some(l.clone());
                c.set_listing(l);
            }
        }
        if let Some(t) = c.poll_timeout() {
            assert!(
                t <= now + Duration::from_millis(60),
                "a quiet period over MAX_QUIET"
            );
        }
        if c.is_finished() {
            assert!(c.poll_transmit(now).is_none(), "a transmit after the end");
        }
    }
}

/// Feeds `input` until every byte is taken; false on an error.
fn feed(
    c: &mut Connection,
    now: Instant,
    input: &[u8],
    sent: &mut VecDeque<(Request, Vec<u64>)>,
    listing: &mut Option<Arc<Listing>>,
    packet: &mut Option<(u32, u32)>,
) -> bool {
    let mut pos = 0;
    let mut idle = 0;
    while pos < input.len() {
        let step = match c.handle_input(&input[pos..], now) {
            Ok(step) => step,
            Err(_) => return false,
        };
        assert!(
            step.consumed <= input.len() - pos,
            "consumed past the input"
        );
        match step.event {
            None => assert_eq!(
                pos + step.consumed,
                input.len(),
                "need more with bytes left"
            ),
            Some(Event::Packet(p)) => {
                assert!(packet.is_none(), "a packet inside a packet");
                *packet = Some((p.len, 0));
                if let Some((_, got)) = sent.front_mut() {
                    got.push(p.id);
                }
                assert!(
                    !p.name.is_empty() && !p.name.contains('/') && !p.name.starts_with('.'),
                    "unsafe local name {:?}",
                    p.name
                );
                if !p.is_compressed() && p.defect.is_none() {
                    assert!(p.len <= p.cap, "a raw packet over its cap");
                    if let Some(l) = p.listed_size {
                        assert_eq!(l, p.len, "a raw packet of another size than listed");
                    }
                }
                if let Some(l) = listing.as_deref() {
                    assert_eq!(p.cap, l.cap_for(p.id), "cap not the listing's");
                }
            }
            Some(Event::Data(r)) => {
                assert!(
                    r.start < r.end && r.end <= step.consumed,
                    "data range {r:?} outside the {} bytes taken",
                    step.consumed
                );
                let (len, got) = packet.as_mut().expect("data outside a packet");
                *got += r.len() as u32;
                assert!(*got <= *len, "more data than the packet's length");
            }
            Some(Event::PacketEnd) => {
                let (len, got) = packet.take().expect("a packet end outside a packet");
                assert_eq!(len, got, "a packet ended short");
            }
            Some(Event::Listing(l)) => {
                let (req, _) = sent.pop_front().expect("a listing nobody asked for");
                assert!(
                    matches!(req, Request::List { .. }),
                    "a listing answering {req:?}"
                );
                *listing = Some(l);
            }
            Some(Event::Done(done)) => {
                assert!(packet.is_none(), "done inside a packet");
                let (req, got) = sent.pop_front().expect("an answer nobody asked for");
                match (done, req) {
                    (Done::Get { missing }, Request::GetById { ids, .. }) => {
                        assert_eq!(missing.len() + got.len(), ids.len(), "ids lost");
                        let mut rest = ids.iter();
                        for m in &missing {
                            assert!(
                                rest.any(|i| i == m),
                                "missing {m} not asked, or out of order"
                            );
                        }
                    }
                    (Done::Batch, Request::Batch { .. }) => {}
                    (Done::ListAndGet { missing }, Request::ListAndGet { .. }) => {
                        let l = listing.as_deref();
                        assert!(
                            missing
                                .iter()
                                .all(|m| l.is_some_and(|l| l.get(*m).is_some())),
                            "missing ids not in the listing"
                        );
                    }
                    (done, req) => panic!("{done:?} answering {req:?}"),
                }
            }
            Some(Event::Cancelled) => {
                *packet = None;
                if !matches!(sent.front(), Some((Request::List { .. }, _)) | None) {
                    sent.pop_front();
                }
            }
            Some(Event::Packets { .. }) | Some(Event::Watch(_)) => {}
        }
        pos += step.consumed;
        idle = if step.consumed == 0 { idle + 1 } else { 0 };
        assert!(idle < 1024, "the client spins without taking input");
    }
    true
}
