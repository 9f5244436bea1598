use super::*;
use crate::proto::jtp::request::RequestLimits;
use crate::proto::jtp::response::{
    put_entry, put_error, put_get_header, put_list_header, put_packet_header, put_packets_header,
    put_watch_event,
};
use crate::proto::jtp::server as srv;
use crate::proto::jtp::wire::{MAGIC_BATCH, MAGIC_LIST_AND_GET};

const A: u64 = 0x84fe30f5845a521f;
const B: u64 = 0x6532b96544f38db1;
const C: u64 = 0x0000_0000_0000_00cc;
const D: u64 = 0x0000_0000_0000_00dd;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn list_reply(entries: &[(u64, u8, &str, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    put_list_header(entries.len() as u32, &mut v);
    for (id, flags, name, size) in entries {
        put_entry(*id, *flags, name, *size, &mut v);
    }
    v
}

fn packet(flags: u8, id: u64, data: &[u8], out: &mut Vec<u8>) {
    put_packet_header(flags, data.len() as u32, id, out);
    out.extend_from_slice(data);
}

fn get_reply(packets: &[(u8, u64, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    put_get_header(packets.len() as u8, &mut v);
    for (f, id, d) in packets {
        packet(*f, *id, d, &mut v);
    }
    v
}

/// What a driver sees, with data gathered per packet.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Ev(Event),
    Data(Vec<u8>),
}

/// Feeds `input` in pieces of `piece` bytes (0: whole) at `now`, as a driver would.
fn feed(c: &mut Connection, input: &[u8], piece: usize, now: Instant) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let piece = if piece == 0 {
        input.len().max(1)
    } else {
        piece
    };
    let mut chunks: Vec<&[u8]> = input.chunks(piece).collect();
    chunks.push(&[]);
    for chunk in chunks {
        let mut at = 0;
        loop {
            let step = c.handle_input(&chunk[at..], now).expect("no error");
            let here = &chunk[at..];
            at += step.consumed;
            match step.event {
                None => break,
                Some(Event::Data(r)) => match seen.last_mut() {
                    Some(Seen::Data(d)) => d.extend_from_slice(&here[r]),
                    _ => seen.push(Seen::Data(here[r].to_vec())),
                },
                Some(ev) => seen.push(Seen::Ev(ev)),
            }
        }
        assert_eq!(at, chunk.len(), "every byte offered is taken");
    }
    seen
}

fn packet_start(c: &Connection, flags: u8, len: u32, id: u64) -> PacketStart {
    let listing = c.listing.clone().unwrap_or_default();
    let listed_size = listing.get(id).map(|l| l.size);
    PacketStart {
        id,
        flags,
        len,
        listed_size,
        cap: c.listing.as_ref().map_or(u32::MAX, |l| l.cap_for(id)),
        name: listing.local_name(id, flags),
        defect: None,
    }
}

#[test]
fn list_then_get_on_one_connection_with_exact_bytes() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::List);
    c.push(Job::Get(vec![A, B]));
    assert_eq!(c.poll_transmit(t), Some(&[0x01, 0x01][..]));
    assert_eq!(c.poll_transmit(t), None, "one request at a time");
    let list = list_reply(&[(A, 0, "alpha.png", 3), (B, 0, "beta.png", 2)]);
    let seen = feed(&mut c, &list, 0, t);
    let Seen::Ev(Event::Listing(l)) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(l.entries()[1].name, "beta.png");
    assert_eq!(l.ids().collect::<Vec<_>>(), [A, B], "catalog order");
    let mut get = vec![0x00, 0x01, 0x02];
    get.extend_from_slice(&A.to_be_bytes());
    get.extend_from_slice(&B.to_be_bytes());
    assert_eq!(
        c.poll_transmit(t),
        Some(&get[..]),
        "no quiet period after LIST"
    );
    let reply = get_reply(&[(0, A, b"aaa"), (0, B, b"bb")]);
    assert_eq!(
        reply[..8],
        [0x4a, 0x54, 0x50, 0x44, 0x02, 0x00, 0x03, 0x84],
        "JTPD, M = 2, then A's flags and length"
    );
    let seen = feed(&mut c, &reply, 0, t);
    assert_eq!(
        seen,
        vec![
            Seen::Ev(Event::Packets { count: 2 }),
            Seen::Ev(Event::Packet(packet_start(&c, 0, 3, A))),
            Seen::Data(b"aaa".to_vec()),
            Seen::Ev(Event::PacketEnd),
            Seen::Ev(Event::Packet(packet_start(&c, 0, 2, B))),
            Seen::Data(b"bb".to_vec()),
            Seen::Ev(Event::PacketEnd),
            Seen::Ev(Event::Done(Done::Get { missing: vec![] })),
        ]
    );
    let Seen::Ev(Event::Packet(p)) = &seen[1] else {
        panic!()
    };
    assert_eq!(p.name, "alpha.png");
    assert!(c.is_idle() && c.is_reusable());
    assert!(c.poll_timeout().is_none(), "nothing queued");
}

#[test]
fn keep_alive_bit_is_set_only_when_kept_or_followed() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, false);
    c.push(Job::List);
    c.push(Job::ListAndGet);
    assert_eq!(c.poll_transmit(t), Some(&[0x01, 0x01][..]));
    feed(&mut c, &list_reply(&[]), 0, t);
    assert_eq!(c.poll_transmit(t), Some(&[0x05, 0x00][..]));
    let mut lag = Vec::new();
    put_packets_header(MAGIC_LIST_AND_GET, 0, &mut lag);
    let seen = feed(&mut c, &lag, 0, t);
    assert_eq!(
        seen.last(),
        Some(&Seen::Ev(Event::Done(Done::ListAndGet { missing: vec![] })))
    );
    assert!(
        c.is_finished() && !c.is_reusable(),
        "bit 0 clear: the server closes"
    );
    c.push(Job::List);
    assert_eq!(
        c.poll_transmit(t),
        None,
        "nothing goes out after the last request"
    );
    assert!(c.handle_eof().is_ok());

    // A single request without keep-alive; BATCH and WATCH encodings.
    let mut c = Connection::new(Policy::Sequential, false);
    c.push(Job::Batch(vec![A]));
    let mut batch = vec![0x02, 0x00, 0x01];
    batch.extend_from_slice(&A.to_be_bytes());
    assert_eq!(c.poll_transmit(t), Some(&batch[..]));
    let mut c = Connection::new(Policy::Sequential, false);
    c.push(Job::Watch);
    assert_eq!(c.poll_transmit(t), Some(&[0x04, 0x00][..]));
}

#[test]
fn sequential_waits_out_a_quiet_period_measured_from_the_get_answer() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::Get(vec![A, B, C]));
    c.push(Job::Get(vec![D]));
    c.push(Job::Get(vec![C]));
    c.push(Job::List);
    assert!(c.poll_transmit(t).is_some());
    // Three 1-byte packets over 20 ms: a waiting server (10 ms per packet, 150 bytes/s).
    let reply = get_reply(&[(0, A, b"a"), (0, B, b"b"), (0, C, b"c")]);
    feed(&mut c, &reply, 0, t + ms(20));
    assert_eq!(c.poll_transmit(t + ms(20)), None);
    assert_eq!(c.poll_timeout(), Some(t + ms(70)));
    assert_eq!(c.poll_transmit(t + ms(69)), None);
    assert!(c.poll_transmit(t + ms(70)).is_some());
    assert_eq!(c.poll_timeout(), None, "awaiting an answer");
    // One packet: no pace to judge, the same pause.
    feed(&mut c, &get_reply(&[(0, D, b"d")]), 0, t + ms(71));
    let after = t + ms(71) + QUIET_AFTER_WAITING_SERVER;
    assert_eq!(c.poll_timeout(), Some(after));
    assert!(c.poll_transmit(after).is_some());
    // No packet: no CANCEL check ran, no pause.
    let seen = feed(&mut c, &get_reply(&[]), 0, after + ms(1));
    assert_eq!(
        seen,
        vec![
            Seen::Ev(Event::Packets { count: 0 }),
            Seen::Ev(Event::Done(Done::Get { missing: vec![C] }))
        ]
    );
    assert_eq!(c.poll_transmit(after + ms(1)), Some(&[0x01, 0x01][..]));
    // A fast server (ferry's: 255 small images in 8 ms) costs four times its pace.
    let q = quiet_period(255, 255 * 50_000, ms(8)).unwrap();
    assert!(q < Duration::from_micros(130), "{q:?}");
    // Large images sent slowly per packet but fast in bytes: not a waiting server.
    let q = quiet_period(255, 255 << 20, ms(254)).unwrap();
    assert_eq!(q, ms(4));
    // The reference: about 1 ms per small packet.
    assert_eq!(
        quiet_period(45, 45 * 60, ms(50)),
        Some(QUIET_AFTER_WAITING_SERVER)
    );
    assert_eq!(
        quiet_period(2, 1 << 30, Duration::from_secs(5)),
        Some(MAX_QUIET)
    );
    assert_eq!(quiet_period(0, 0, ms(5)), None);
    // Exactly WAITING_RATE is not below it (whole run, proto-jtp client part: `<` as `<=`);
    // 7.8125 ms is exact in binary, so the rate is exactly 10^8 bytes/s.
    let took = Duration::from_nanos(7_812_500);
    assert_eq!(
        quiet_period(2, WAITING_RATE * 7_812_500 / 1_000_000_000, took),
        Some(took * QUIET_PACE_FACTOR)
    );
}

/// The pause after a GET answer counts the bytes of its packets: large images sent slowly per
/// packet but fast in bytes are not a waiting server (whole run, proto-jtp client part: the
/// byte count's `+=` as `*=` stayed 0, and every such answer cost the waiting server's 50 ms).
#[test]
fn sequential_pause_counts_the_answers_bytes() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::Get(vec![A, B, C]));
    c.push(Job::Get(vec![D]));
    assert!(c.poll_transmit(t).is_some());
    // Three 1 MiB packets over 20 ms: 10 ms per packet, but 157 MB/s.
    let big = vec![7u8; 1 << 20];
    let reply = get_reply(&[(0, A, &big), (0, B, &big), (0, C, &big)]);
    feed(&mut c, &reply, 0, t + ms(20));
    assert_eq!(
        c.poll_timeout(),
        Some(t + ms(20) + ms(10) * QUIET_PACE_FACTOR)
    );
}

#[test]
fn pipelined_keeps_up_to_depth_in_flight_and_never_pauses() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Pipelined { depth: 4 }, true);
    for id in [A, B, C, D, A, B] {
        c.push(Job::Get(vec![id]));
    }
    let mut sent = 0;
    while c.poll_transmit(t).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 4);
    feed(&mut c, &get_reply(&[(0, A, b"x")]), 0, t);
    assert!(
        c.poll_transmit(t).is_some(),
        "no quiet period for a safe peer"
    );
    assert!(c.poll_transmit(t).is_none());
}

#[test]
fn get_reports_the_ids_that_did_not_come_in_request_order() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, false);
    c.push(Job::Get(vec![A, B, C, D]));
    c.poll_transmit(t);
    let seen = feed(&mut c, &get_reply(&[(0, B, b""), (0, D, b"d")]), 0, t);
    assert_eq!(
        seen.last(),
        Some(&Seen::Ev(Event::Done(Done::Get {
            missing: vec![A, C]
        })))
    );
}

#[test]
fn list_and_get_reports_listed_ids_that_did_not_come_and_names_strangers() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Pipelined { depth: 4 }, false);
    c.push(Job::List);
    c.push(Job::ListAndGet);
    assert!(c.poll_transmit(t).is_some());
    assert!(
        c.poll_transmit(t).is_some(),
        "both go out at once to a safe peer"
    );
    let mut input = list_reply(&[(A, 0, "a.png", 1), (B, 4, "b", 1)]);
    put_packets_header(MAGIC_LIST_AND_GET, 2, &mut input);
    packet(4, B, b"b", &mut input);
    packet(1, C, b"c", &mut input);
    let seen = feed(&mut c, &input, 0, t);
    let names: Vec<&str> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Ev(Event::Packet(p)) => Some(p.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["b.gif", "output_00000000000000cc.jpg"]);
    assert_eq!(
        seen.last(),
        Some(&Seen::Ev(Event::Done(Done::ListAndGet {
            missing: vec![A]
        })))
    );
}

/// A listing counts its entries and finds them by id, the first of a repeated id (whole run,
/// proto-jtp client part: `is_empty` as `true` or `false`, `into_entries` as empty stayed
/// green).
#[test]
fn a_listing_counts_and_finds_its_entries() {
    let empty = Listing::new(vec![]);
    assert!(empty.is_empty() && empty.get(A).is_none());
    let named = |id, name: &str| Listed {
        id,
        ftype: 0,
        name: name.into(),
        size: 1,
    };
    let l = Listing::new(vec![named(A, "a"), named(B, "b"), named(A, "again")]);
    assert!(!l.is_empty());
    assert_eq!(l.len(), 3);
    assert_eq!(l.get(A).map(|e| e.name.as_str()), Some("a"));
    assert_eq!(l.get(B).map(|e| e.name.as_str()), Some("b"));
    let names: Vec<String> = l.into_entries().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["a", "b", "again"]);
}

#[test]
fn raw_length_other_than_the_listed_size_is_a_defect_and_the_stream_stays_in_step() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    c.set_listing(Arc::new(Listing::new(vec![
        Listed {
            id: A,
            ftype: 0,
            name: "a.png".into(),
            size: 2,
        },
        Listed {
            id: B,
            ftype: 3,
            name: "b.bmp".into(),
            size: 1000,
        },
    ])));
    // Whole run, proto-jtp client part: `is_awaiting` as `true`, `false` or without its `!`,
    // and `is_compressed` as `true` (or its `&` as `|` or `^`) stayed green.
    assert!(!c.is_awaiting());
    c.push(Job::Get(vec![A, B]));
    c.poll_transmit(t);
    assert!(c.is_awaiting());
    let seen = feed(
        &mut c,
        &get_reply(&[(0, A, b"aaa"), (3 | FLAG_ZSTD, B, b"zz")]),
        0,
        t,
    );
    let Seen::Ev(Event::Packet(a)) = &seen[1] else {
        panic!("{seen:?}")
    };
    assert_eq!(
        a.defect,
        Some(Defect::LengthNotListedSize { len: 3, listed: 2 })
    );
    assert_eq!(
        a.defect.unwrap().to_string(),
        "length 3 differs from the listed size 2"
    );
    assert!(!a.is_compressed());
    assert!(!c.is_awaiting(), "the reply is whole");
    let Seen::Ev(Event::Packet(b)) = &seen[4] else {
        panic!("{seen:?}")
    };
    assert_eq!(b.defect, None, "a compressed Length may differ");
    assert!(b.is_compressed());
    assert_eq!((b.max_size(), b.expected_size()), (1000, Some(1000)));
    assert_eq!(seen[5], Seen::Data(b"zz".to_vec()));
}

/// Issue 15 item 10: an id the LIST did not name could put up to 4 GiB on disk before its
/// id check failed. Its output is now capped at the largest listed size (at least
/// [`MIN_UNLISTED_CAP`]).
#[test]
fn an_unlisted_id_is_capped_at_the_largest_listed_size() {
    let t = Instant::now();
    let listed = |size| Listed {
        id: A,
        ftype: 0,
        name: "a.png".into(),
        size,
    };
    let big = MIN_UNLISTED_CAP + 1000;
    for (largest, cap) in [(4, MIN_UNLISTED_CAP), (big, big)] {
        let mut c = Connection::new(Policy::Sequential, true);
        c.set_listing(Arc::new(Listing::new(vec![listed(largest)])));
        c.push(Job::Get(vec![C, D]));
        c.poll_transmit(t);
        // Headers only: the events come before the data.
        let mut reply = Vec::new();
        put_get_header(2, &mut reply);
        put_packet_header(0, cap + 1, C, &mut reply);
        let seen = feed(&mut c, &reply, 0, t);
        let Seen::Ev(Event::Packet(p)) = &seen[1] else {
            panic!("{seen:?}")
        };
        assert_eq!((p.listed_size, p.cap), (None, cap));
        assert_eq!(
            p.defect,
            Some(Defect::LargerThanListed {
                len: cap + 1,
                largest: cap
            })
        );
        assert_eq!(
            p.defect.unwrap().to_string(),
            format!(
                "length {} of an unlisted id is larger than any listed image ({cap})",
                cap + 1
            )
        );
        // A compressed one inflates into at most that many bytes; within the cap a raw one
        // is fine.
        let mut c = Connection::new(Policy::Sequential, true);
        c.set_listing(Arc::new(Listing::new(vec![listed(largest)])));
        c.push(Job::Get(vec![C, D]));
        c.poll_transmit(t);
        let mut reply = Vec::new();
        put_get_header(2, &mut reply);
        put_packet_header(3 | FLAG_ZSTD, 9, C, &mut reply);
        reply.extend_from_slice(b"zzzzzzzzz");
        put_packet_header(0, cap, D, &mut reply);
        let seen = feed(&mut c, &reply, 0, t);
        let Seen::Ev(Event::Packet(z)) = &seen[1] else {
            panic!("{seen:?}")
        };
        assert_eq!(
            (z.defect, z.max_size(), z.expected_size()),
            (None, u64::from(cap), None)
        );
        let Seen::Ev(Event::Packet(r)) = &seen[4] else {
            panic!("{seen:?}")
        };
        assert_eq!(r.defect, None);
    }
    // Without any LIST nothing caps it (a driver always lists first).
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::Get(vec![C]));
    c.poll_transmit(t);
    let seen = feed(&mut c, &get_reply(&[(0, C, b"ccccc")]), 0, t);
    assert!(matches!(&seen[1], Seen::Ev(Event::Packet(p)) if p.cap == u32::MAX));
}

#[test]
fn jtpe_is_the_servers_error_and_ends_the_connection() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::List);
    c.poll_transmit(t);
    assert!(!c.is_finished(), "waiting for the answer");
    let mut e = Vec::new();
    put_error(5, "too many requests", &mut e);
    assert_eq!(
        c.handle_input(&e, t),
        Err(Error::Server {
            code: 5,
            message: "too many requests".into()
        })
    );
    assert!(c.is_finished());
    assert_eq!(
        Error::Server {
            code: 5,
            message: "x".into()
        }
        .to_string(),
        "error 5: x"
    );
}

#[test]
fn eof_is_clean_only_between_answers() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    assert_eq!(c.handle_eof(), Ok(()));
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::List);
    c.poll_transmit(t);
    // A read that brought nothing is not the start of an answer (mutation sample G: `&&` as
    // `||` took any call with a request in flight for one).
    assert_eq!(c.handle_input(&[], t).unwrap().consumed, 0);
    assert_eq!(
        c.handle_eof(),
        Err(Error::Closed {
            inside_frame: false
        })
    );
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::Get(vec![A]));
    c.poll_transmit(t);
    let reply = get_reply(&[(0, A, b"aaaa")]);
    feed(&mut c, &reply[..reply.len() - 1], 0, t);
    let e = c.handle_eof().unwrap_err();
    assert_eq!(e, Error::Closed { inside_frame: true });
    assert_eq!(e.to_string(), "connection closed inside a frame");
    // Nothing asked, but the server closed inside a frame it began (the start of a JTPC):
    // not clean either (whole run, proto-jtp client part: `&&` as `||` took it for clean).
    let mut c = Connection::new(Policy::Sequential, true);
    assert_eq!(c.handle_input(b"JT", t).unwrap().consumed, 2);
    assert!(c.handle_eof().is_err());
}

/// Feeds `input` until the machine fails; panics if it does not.
fn first_error(c: &mut Connection, input: &[u8], t: Instant) -> Error {
    let mut at = 0;
    loop {
        match c.handle_input(&input[at..], t) {
            Err(e) => return e,
            Ok(Step { event: None, .. }) => panic!("no error in {input:02x?}"),
            Ok(step) => at += step.consumed,
        }
    }
}

#[test]
fn framing_errors_are_protocol_errors() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::Get(vec![A]));
    c.poll_transmit(t);
    // A packet flags byte where JTPD was expected: an older server.
    let mut older = Vec::new();
    packet(0, A, b"a", &mut older);
    assert_eq!(
        first_error(&mut c, &older, t),
        Error::Protocol(ResponseError::MaybeOlderServer)
    );
    assert!(c.is_finished());
    // An id that was not asked for.
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::Get(vec![A]));
    c.poll_transmit(t);
    assert_eq!(
        first_error(&mut c, &get_reply(&[(0, B, b"b")]), t),
        Error::Protocol(ResponseError::NotASubsequence(B))
    );
    assert!(c.is_finished());
}

#[test]
fn watch_events_then_cancel_sends_03_00_and_jtpc_reopens() {
    let t = Instant::now();
    let mut c = Connection::new(Policy::Sequential, true);
    c.push(Job::Watch);
    assert_eq!(c.poll_transmit(t), Some(&[0x04, 0x00][..]));
    let mut ev = Vec::new();
    put_watch_event(0xef46db3751d8e999, 4, "caf\u{e9}.gif", 0, &mut ev);
    assert_eq!(
        ev,
        b"JTPW\xef\x46\xdb\x37\x51\xd8\xe9\x99\x04\x00\x09caf\xc3\xa9.gif\x00"
    );
    let seen = feed(&mut c, &ev, 1, t);
    assert_eq!(
        seen,
        vec![Seen::Ev(Event::Watch(Listed {
            id: 0xef46db3751d8e999,
            ftype: 4,
            name: "caf\u{e9}.gif".into(),
            size: 0
        }))]
    );
    assert_eq!(c.poll_transmit(t), None);
    c.cancel();
    assert_eq!(c.poll_transmit(t), Some(&[0x03, 0x00][..]));
    assert_eq!(c.poll_transmit(t), None, "one CANCEL");
    assert_eq!(
        feed(&mut c, b"JTPC", 0, t),
        vec![Seen::Ev(Event::Cancelled)]
    );
    assert!(c.is_reusable());
}

/// LIST, GET with packets (one of them empty) and a BATCH on one connection: the same
/// events whole, one byte at a time and split at every offset (STYLE 19).
#[test]
fn split_anywhere_gives_the_same_events() {
    let mut input = list_reply(&[(A, 0, "a.png", 5), (B, 0, "b.png", 0)]);
    let get = get_reply(&[(0, A, b"hello"), (0, B, b"")]);
    input.extend_from_slice(&get);
    put_packets_header(MAGIC_BATCH, 1, &mut input);
    packet(0, A, b"hello", &mut input);
    let run = |pieces: &[&[u8]]| -> Vec<Seen> {
        let t = Instant::now();
        let mut c = Connection::new(Policy::Pipelined { depth: 4 }, true);
        c.push(Job::List);
        c.push(Job::Get(vec![A, B]));
        c.push(Job::Batch(vec![]));
        while c.poll_transmit(t).is_some() {}
        let mut seen = Vec::new();
        for p in pieces {
            for s in feed(&mut c, p, 0, t) {
                match (seen.last_mut(), s) {
                    (Some(Seen::Data(d)), Seen::Data(more)) => d.extend(more),
                    (_, s) => seen.push(s),
                }
            }
        }
        assert!(c.is_reusable());
        seen
    };
    let whole = run(&[&input]);
    assert_eq!(whole.len(), 13, "{whole:?}");
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(&bytes), whole, "one byte at a time");
    for at in 0..=input.len() {
        let (a, b) = input.split_at(at);
        assert_eq!(run(&[a, b]), whole, "split at {at}");
    }
}

/// Truncations of a real transcript and seeded random bytes, in every expectation.
#[test]
fn never_panics_on_any_input() {
    let mut transcript = list_reply(&[(A, 0, "a.png", 5)]);
    transcript.extend(get_reply(&[(0, A, b"hello")]));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut inputs: Vec<Vec<u8>> = (0..=transcript.len())
        .map(|n| transcript[..n].to_vec())
        .collect();
    for _ in 0..300 {
        let len = (rnd() % 64) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if rnd() % 2 == 0 {
            v.splice(0..0, *b"JTP");
        }
        inputs.push(v);
    }
    let jobs = [
        Job::List,
        Job::Get(vec![A, B]),
        Job::Batch(vec![]),
        Job::ListAndGet,
        Job::Watch,
    ];
    for input in &inputs {
        for job in &jobs {
            let t = Instant::now();
            let mut c = Connection::new(Policy::Sequential, true);
            c.push(job.clone());
            c.poll_transmit(t);
            let mut at = 0;
            while at <= input.len() {
                match c.handle_input(&input[at..], t) {
                    Ok(Step { consumed, event }) => {
                        at += consumed;
                        if event.is_none() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = c.handle_eof();
        }
    }
}

/// The server side of the in-memory pair: ferry's server machine, or a server with the
/// reference's habit of reading (and dropping) one byte after every GET_BY_ID packet.
struct Server {
    conn: srv::Connection,
    images: Vec<(u64, &'static str, &'static [u8])>,
    reference_habit: bool,
    /// Client bytes not yet read by the server.
    pending: VecDeque<u8>,
    dropped: usize,
    requests: Vec<Request>,
}

impl Server {
    fn new(reference_habit: bool) -> Server {
        Server {
            conn: srv::Connection::new(
                RequestLimits {
                    max_have: 1_000_000,
                },
                64 * 1024,
                false,
            ),
            images: vec![
                (A, "a.png", b"alpha"),
                (B, "b.png", b"beta"),
                (C, "c.png", b""),
                (D, "d.png", b"delta!"),
            ],
            reference_habit,
            pending: VecDeque::new(),
            dropped: 0,
            requests: Vec::new(),
        }
    }

    /// Serves every complete request received so far; returns the bytes sent back.
    fn serve(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            // Read one request's bytes, no more: what follows stays unread, as in a socket.
            let ev = loop {
                if let Some(ev) = self.conn.poll_event() {
                    break ev;
                }
                match self.pending.pop_front() {
                    Some(b) => self.conn.handle_input(&[b]),
                    None => return out,
                }
            };
            let srv::Event::Request(req) = ev else {
                panic!("unexpected {ev:?}");
            };
            self.requests.push(req.clone());
            let keep_alive = req.keep_alive();
            match req {
                Request::List { .. } => {
                    put_list_header(self.images.len() as u32, &mut out);
                    for (id, name, data) in &self.images {
                        put_entry(*id, 0, name, data.len() as u32, &mut out);
                    }
                }
                Request::GetById { ids, .. } => {
                    let found: Vec<_> = ids
                        .iter()
                        .filter_map(|id| self.images.iter().find(|i| i.0 == *id))
                        .copied()
                        .collect();
                    put_get_header(found.len() as u8, &mut out);
                    for (id, _, data) in found {
                        packet(0, id, data, &mut out);
                        // What arrived while the answer was being sent.
                        if self.reference_habit && self.pending.pop_front().is_some() {
                            self.dropped += 1;
                        }
                    }
                }
                Request::ListAndGet { .. } => {
                    put_packets_header(MAGIC_LIST_AND_GET, self.images.len() as u32, &mut out);
                    for (id, _, data) in &self.images {
                        packet(0, *id, data, &mut out);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            self.conn.response_done(keep_alive);
            if self.conn.is_finished() {
                return out;
            }
        }
    }
}

/// Runs `jobs` through a client and a server until the client is idle; the server answers
/// whatever the client has sent each round, so pipelined requests are in flight together.
fn pair(policy: Policy, reference_habit: bool, jobs: Vec<Job>) -> (Vec<Seen>, Server) {
    let mut t = Instant::now();
    let mut client = Connection::new(policy, true);
    let mut server = Server::new(reference_habit);
    for j in jobs {
        client.push(j);
    }
    let mut seen = Vec::new();
    for _ in 0..100 {
        while let Some(b) = client.poll_transmit(t) {
            server.pending.extend(b.iter().copied());
        }
        let answer = server.serve();
        seen.extend(feed(&mut client, &answer, 7, t));
        if client.is_idle() {
            return (seen, server);
        }
        // Time passes (quiet periods end).
        t += ms(10);
    }
    panic!(
        "the pair did not finish; the server got {:?}",
        server.requests
    );
}

#[test]
fn pair_with_ferrys_server_pipelined_and_sequential() {
    let jobs = vec![
        Job::List,
        Job::Get(vec![A, B]),
        Job::Get(vec![C, D, 0x1234]),
        Job::ListAndGet,
    ];
    let (pipelined, s1) = pair(Policy::Pipelined { depth: 4 }, false, jobs.clone());
    let (sequential, s2) = pair(Policy::Sequential, false, jobs);
    assert_eq!(pipelined, sequential);
    assert_eq!(s1.requests, s2.requests);
    assert_eq!(s1.requests.len(), 4);
    let done: Vec<&Seen> = pipelined
        .iter()
        .filter(|s| matches!(s, Seen::Ev(Event::Done(_))))
        .collect();
    assert_eq!(
        done,
        [
            &Seen::Ev(Event::Done(Done::Get { missing: vec![] })),
            &Seen::Ev(Event::Done(Done::Get {
                missing: vec![0x1234]
            })),
            &Seen::Ev(Event::Done(Done::ListAndGet { missing: vec![] })),
        ]
    );
    assert!(pipelined.contains(&Seen::Data(b"delta!".to_vec())));
}

/// The reference's habit costs nothing to a sequential client, and would eat the first bytes
/// of requests pipelined behind a GET_BY_ID (which is why only known-safe peers get them).
#[test]
fn pair_with_the_reference_habit_sequential_loses_nothing() {
    let jobs = vec![
        Job::List,
        Job::Get(vec![A, B, D]),
        Job::Get(vec![C]),
        Job::List,
    ];
    let (_, s) = pair(Policy::Sequential, true, jobs.clone());
    assert_eq!(s.dropped, 0);
    assert_eq!(s.requests.len(), 4);

    let mut client = Connection::new(Policy::Pipelined { depth: 4 }, true);
    let mut server = Server::new(true);
    for j in jobs.into_iter().skip(1) {
        client.push(j);
    }
    let t = Instant::now();
    while let Some(b) = client.poll_transmit(t) {
        server.pending.extend(b.iter().copied());
    }
    server.serve();
    assert!(server.dropped > 0, "pipelined bytes were eaten");
}

#[test]
fn ranges_are_contiguous_and_cover_every_id() {
    let ids: Vec<u64> = (0..300).collect();
    let r = split_ranges(&ids, 4);
    assert_eq!(
        r.iter().map(|r| r.len()).collect::<Vec<_>>(),
        [75, 75, 75, 75]
    );
    assert_eq!(r.concat(), ids);
    assert_eq!(split_ranges(&ids[..3], 32).len(), 3);
    assert!(split_ranges(&[], 4).is_empty());
}

#[test]
fn j40_hostile_names_reduce_or_fall_back() {
    let listing = Listing::new(
        [
            "../x.png", "a/b.png", "..", ".", "", "a\0b.png", ".ferry", "noext",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| Listed {
            id: i as u64,
            ftype: 0,
            name: n.to_string(),
            size: 1,
        })
        .collect(),
    );
    let got: Vec<String> = (0..8).map(|i| listing.local_name(i, 0)).collect();
    assert_eq!(got[0], "x.png");
    assert_eq!(got[1], "b.png");
    for (i, g) in got.iter().enumerate().take(7).skip(2) {
        assert_eq!(g, &format!("output_{}.png", hex::encode_u64(i as u64)));
    }
    assert_eq!(got[7], "noext.png");
    assert_eq!(
        listing.local_name(99, 3),
        format!("output_{}.bmp", hex::encode_u64(99))
    );
}
