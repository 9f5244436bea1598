//! CJP2P machine targets: the node fed arbitrary and well-formed datagrams (with or without a
//! valid cookie) from a few addresses, with clock steps, its own requests and downloads marked;
//! the downloader fed replies, hostile `Content`, timeouts and source changes.
//!
//! Node invariants: every datagram sent parses, fits its limit (`control_max`, or `content_max`
//! with `Content`), echoes at most one offer, carries `eof` on every `Content` and only the
//! store's true bytes, and goes to no forbidden address; the replies to an unverified datagram
//! total at most twice its size (28 header bytes counted per datagram) and a dropped one gets
//! none; `Content` reaches the
//! driver only for an id being downloaded and only from a verified datagram.
//!
//! Downloader invariants: every request is a block-aligned range of at most 40,960 bytes to a
//! source, inside the file once `eof` is known; an accepted range lies inside the element that
//! carried it and inside the file; complete means every byte of `[0, eof)` was stored by the
//! driver, never before.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Script;
use crate::proto::cjp2p::download::{Accept, Download, DownloadConfig, BLOCK, EMPTY_ID};
use crate::proto::cjp2p::node::{ContentStore, Node, NodeConfig, NodeEvent, HEADER_BYTES};
use crate::proto::cjp2p::wire::{
    cookie_of, cookie_payload, parse_datagram, DatagramBuilder, Id, Message,
};

/// Addresses datagrams come from: peers, IPv6, and forbidden ones (port 0, multicast, own).
const FROM: &[&str] = &[
    "192.0.2.1:24254",
    "192.0.2.2:24254",
    "198.51.100.7:9",
    "[2001:db8::1]:24254",
    "[::ffff:192.0.2.1]:24254",
    "192.0.2.1:0",
    "224.0.0.1:24254",
    "127.0.0.1:24254",
];
/// The node's own address.
const LOCAL: &str = "127.0.0.1:24254";

fn addr(s: &mut Script<'_>) -> SocketAddr {
    FROM[usize::from(s.u8()) % FROM.len()]
        .parse()
        .expect("an address")
}

/// The store: a few files, ids their SHA-256 (built once).
struct Files(Vec<(Id, Vec<u8>)>);

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        Files(
            [0usize, 10, 4096, 9000]
                .iter()
                .map(|&len| {
                    let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                    (Sha256::digest(&data).into(), data)
                })
                .collect(),
        )
    })
}

impl ContentStore for Files {
    fn size_of(&self, id: &Id) -> Option<u64> {
        self.0
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d.len() as u64)
    }
    fn read_at(&self, id: &Id, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let (_, d) = self.0.iter().find(|(i, _)| i == id)?;
        let start = usize::try_from(offset).ok()?.min(d.len());
        let n = buf.len().min(d.len() - start);
        buf[..n].copy_from_slice(&d[start..start + n]);
        Some(n)
    }
    fn list(&self, start: usize, max: usize) -> Vec<(Id, u64)> {
        self.0
            .iter()
            .skip(start)
            .take(max)
            .map(|(i, d)| (*i, d.len() as u64))
            .collect()
    }
    fn count(&self) -> usize {
        self.0.len()
    }
}

/// An id: one of the store's, one it lacks, or any.
fn id(s: &mut Script<'_>) -> Id {
    let f = &files().0;
    match usize::from(s.u8()) % (f.len() + 2) {
        i if i < f.len() => f[i].0,
        i if i == f.len() => [0xab; 32],
        _ => {
            let mut id = [0; 32];
            id[..8].copy_from_slice(&s.u64().to_be_bytes());
            id
        }
    }
}

/// One message of a scripted datagram.
fn message(s: &mut Script<'_>) -> Message {
    match s.u8() % 12 {
        0 => Message::PleaseSendContent {
            id: id(s),
            offset: match s.u8() % 3 {
                0 => 0,
                1 => u64::from(s.u16()),
                _ => s.u64(),
            },
            length: match s.u8() % 3 {
                0 => 4096,
                1 => u64::from(s.u16()),
                _ => s.u64(),
            },
        },
        1 => Message::PleaseSendPeers,
        2 => Message::Peers((0..s.u8() % 4).map(|_| addr(s)).collect()),
        3 => Message::PleaseReturnThisMessage(format!("{{\"t\":{}}}", s.u16())),
        4 => Message::ReturnedMessage(s.text()),
        5 => Message::PleaseListContent,
        6 => Message::ContentList(
            (0..s.u8() % 4)
                .map(|_| (id(s), s.u64() % 100_000))
                .collect(),
        ),
        7 => Message::MaybeTheyHaveSome {
            id: id(s),
            peers: (0..s.u8() % 4).map(|_| addr(s)).collect(),
        },
        8 => Message::FerryHello {
            version: 1,
            max_length: u64::from(s.u16()),
        },
        9 => Message::Content {
            id: id(s),
            offset: u64::from(s.u16()),
            data: s.chunk().to_vec(),
            eof: s.bool().then(|| u64::from(s.u16())),
        },
        10 => Message::PleaseAlwaysReturnThisMessage(format!("{{\"cookie\":\"{:08x}\"}}", s.u32())),
        _ => Message::AlwaysReturned(format!("{{\"cookie\":\"{:08x}\"}}", s.u32())),
    }
}

/// Checks one datagram the node sends (cjp2p.md C7, C9, C10, C24) and that its `Content` is
/// the store's bytes.
fn check_sent(cfg: &NodeConfig, local: SocketAddr, to: SocketAddr, d: &[u8]) {
    assert!(
        to.port() != 0 && !to.ip().is_unspecified() && !to.ip().is_multicast() && to != local,
        "a datagram to a forbidden address {to}"
    );
    let dg = parse_datagram(d).expect("a datagram the node sent parses");
    assert_eq!(dg.bad_elements, 0, "the node sent a bad element");
    let has_content = dg
        .messages
        .iter()
        .any(|m| matches!(m, Message::Content { .. }));
    let limit = match (has_content, to.is_ipv4()) {
        (true, _) => cfg.content_max,
        (false, true) => cfg.control_max,
        (false, false) => cfg.control_max_v6,
    };
    assert!(d.len() <= limit, "a datagram of {} > {limit}", d.len());
    let echoes = dg
        .messages
        .iter()
        .filter(|m| matches!(m, Message::AlwaysReturned(_)))
        .count();
    assert!(echoes <= 1, "{echoes} echoes in one datagram");
    for m in &dg.messages {
        match m {
            Message::Content {
                id,
                offset,
                data,
                eof,
            } => {
                let (_, file) = files()
                    .0
                    .iter()
                    .find(|(i, _)| i == id)
                    .expect("content of an id the store lacks");
                assert_eq!(*eof, Some(file.len() as u64), "content with a wrong eof");
                // cjp2p.md C24: `offset >= eof` gives empty data (with `eof`).
                let start = usize::try_from(*offset).unwrap_or(usize::MAX);
                let past_eof = start >= file.len() && data.is_empty();
                assert!(
                    past_eof || file.get(start..start + data.len()) == Some(data.as_slice()),
                    "content that is not the store's bytes: file of {}, offset {offset}, {} bytes {:?}",
                    file.len(),
                    data.len(),
                    &data[..data.len().min(16)]
                );
                assert!(data.len() as u64 <= crate::proto::cjp2p::node::MAX_CONTENT_LEN);
            }
            Message::PleaseAlwaysReturnThisMessage(o) => {
                assert!(cookie_of(o).is_some(), "an offer without a cookie: {o}");
            }
            _ => {}
        }
    }
}

/// `config | ops`: 0 raw datagram, 1 scripted datagram (with the right cookie or not), 2 a
/// clock step and timeout, 3 own requests, 4 download on/off, 5 add a peer.
pub fn cjp2p_node_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let flags = s.u8();
    let cfg = NodeConfig {
        serve: flags & 1 == 0,
        discovery: flags & 2 == 0,
        log_activity: flags & 4 != 0,
        unverified_replies_per_ip: if flags & 8 != 0 { 2 } else { 64 },
        max_peers: if flags & 16 != 0 { 2 } else { 256 },
        content_max: if flags & 32 != 0 { 6144 } else { 60000 },
        ..NodeConfig::default()
    };
    let local: SocketAddr = LOCAL.parse().expect("local");
    let mut now = Instant::now();
    let mut n = Node::new(cfg.clone(), [flags; 32], now);
    n.set_local_addrs(vec![local]);
    let mut downloading: HashSet<Id> = HashSet::new();
    while !s.is_empty() {
        // Whatever was due goes first, so what a datagram causes is measured alone.
        drain(&mut n, &cfg, local);
        match s.u8() % 6 {
            op @ (0 | 1) => {
                let from = addr(&mut s);
                let bytes = if op == 0 {
                    let len = usize::from(s.u16() % 1600);
                    s.bytes(len).to_vec()
                } else {
                    let mut b = DatagramBuilder::new(60000);
                    if s.bool() {
                        let c = n.cookie_for(crate::transport::canonical_addr(from).ip());
                        b.try_push(&Message::AlwaysReturned(cookie_payload(&c)));
                    }
                    for _ in 0..s.u8() % 6 {
                        b.try_push(&message(&mut s));
                    }
                    b.finish()
                };
                let before = n.stats();
                n.handle_datagram(now, from, &bytes, files());
                let after = n.stats();
                let unverified = after.unverified_datagrams > before.unverified_datagrams;
                let verified = after.verified_datagrams > before.verified_datagrams;
                let to = crate::transport::canonical_addr(from);
                let mut reply = 0;
                while let Some((dest, d)) = n.poll_transmit() {
                    check_sent(&cfg, local, dest, &d);
                    if dest == to {
                        reply += d.len() + HEADER_BYTES;
                    }
                }
                if !unverified && !verified {
                    assert_eq!(reply, 0, "a reply to a datagram that was dropped");
                }
                if unverified {
                    assert!(
                        reply <= 2 * (bytes.len() + HEADER_BYTES),
                        "{reply} bytes of replies to an unverified datagram of {}",
                        bytes.len()
                    );
                }
                while let Some(ev) = n.poll_event() {
                    match ev {
                        NodeEvent::Content { id, from: f, .. } => {
                            assert!(verified, "content handed over from an unverified datagram");
                            assert_eq!(f, to, "content from another address");
                            assert!(downloading.contains(&id), "content for an id not wanted");
                        }
                        NodeEvent::Holders { id, peers } => {
                            assert!(downloading.contains(&id), "holders for an id not wanted");
                            assert!(peers.iter().all(|p| p.port() != 0 && *p != local));
                        }
                        NodeEvent::Peers { peers, .. } => {
                            assert!(verified, "peers from an unverified datagram");
                            assert!(peers.iter().all(|p| p.port() != 0 && *p != local));
                        }
                        NodeEvent::ContentList { results, .. } => {
                            assert!(verified, "a list from an unverified datagram");
                            assert!(results.len() <= crate::proto::cjp2p::node::MAX_LIST_RECORDED);
                        }
                        _ => {}
                    }
                }
                continue;
            }
            2 => {
                now += match s.u8() % 3 {
                    0 => Duration::from_millis(u64::from(s.u8())),
                    1 => Duration::from_secs(u64::from(s.u8() % 64)),
                    _ => Duration::from_secs(u64::from(s.u16())),
                };
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            }
            3 => {
                let to = addr(&mut s);
                match s.u8() % 3 {
                    0 => {
                        let i = id(&mut s);
                        n.request_content(now, to, &i, u64::from(s.u16()), u32::from(s.u16()));
                    }
                    1 => n.request_peers(now, to),
                    _ => n.request_list(now, to),
                }
            }
            4 => {
                let i = id(&mut s);
                let on = s.bool();
                n.set_downloading(i, on);
                if on {
                    downloading.insert(i);
                } else {
                    downloading.remove(&i);
                }
            }
            _ => {
                let a = addr(&mut s);
                n.add_peer(now, a);
            }
        }
        while let Some(ev) = n.poll_event() {
            if let NodeEvent::Content { id, .. } = ev {
                assert!(downloading.contains(&id), "content for an id not wanted");
            }
        }
    }
    drain(&mut n, &cfg, local);
}

fn drain(n: &mut Node, cfg: &NodeConfig, local: SocketAddr) {
    while let Some((to, d)) = n.poll_transmit() {
        check_sent(cfg, local, to, &d);
    }
}

/// `setup | ops`: 0 add a source, 1 poll requests, 2 answer an outstanding request (whole,
/// short, teaser, too long, with a true or false eof), 3 hostile content, 4 clock step and
/// timeout, 5 store what was accepted, 6 refused, 7 remove a source, a hint, a restart.
pub fn cjp2p_download_machine(data: &[u8]) {
    let mut s = Script::new(data);
    let eof = match s.u8() % 4 {
        0 => 0,
        1 => u64::from(s.u16()),
        2 => u64::from(s.u8()) * BLOCK,
        _ => u64::from(s.u32() % 300_000),
    };
    let id = if eof == 0 { EMPTY_ID } else { [1; 32] };
    let cfg = DownloadConfig {
        max_window: u32::from(s.u8() % 8) + 1,
        max_eof: if s.bool() { 64 << 30 } else { 200_000 },
        max_sources: usize::from(s.u8() % 4) + 1,
        max_bytes_in_flight: u64::from(s.u8()) * BLOCK + BLOCK,
        ..DownloadConfig::default()
    };
    let known = s.bool().then_some(eof);
    let mut dl = Download::new(id, cfg.clone(), known);
    // Blocks the driver stored whole (as `mark_stored` counts them), and the accepted ranges
    // it has yet to write.
    let mut stored: HashSet<u64> = HashSet::new();
    if s.u8() == 1 {
        let have = |i: u64| i % 3 == 0;
        dl.resume(eof, &have);
        if dl.eof() == Some(eof) {
            stored.extend((0..eof.div_ceil(BLOCK)).filter(|&i| have(i)));
        }
    }
    let mut pending: Vec<(u64, usize)> = Vec::new();
    let mut outstanding: Vec<(SocketAddr, u64, u32)> = Vec::new();
    let mut now = Instant::now();
    while !s.is_empty() {
        match s.u8() % 8 {
            0 => {
                let a = addr(&mut s);
                let ferry = s.bool().then(|| u32::from(s.u16()));
                dl.add_source(now, a, ferry);
            }
            1 => {
                for _ in 0..64 {
                    let Some(r) = dl.poll_request(now) else { break };
                    assert!(
                        r.length > 0 && r.length <= 40960,
                        "a request of {}",
                        r.length
                    );
                    assert_eq!(r.offset % BLOCK, 0, "an unaligned request");
                    if let Some(e) = dl.eof() {
                        assert!(
                            r.offset < e.max(1),
                            "a request at {} past eof {e}",
                            r.offset
                        );
                    }
                    outstanding.push((r.to, r.offset, r.length));
                }
            }
            2 if !outstanding.is_empty() => {
                let (to, offset, length) =
                    outstanding.swap_remove(usize::from(s.u8()) % outstanding.len());
                let full = (eof.saturating_sub(offset)).min(u64::from(length)) as usize;
                let len = match s.u8() % 5 {
                    0 | 1 => full,
                    2 => full.min(usize::from(s.u8() % 33)),
                    3 => full.min(BLOCK as usize),
                    _ => full + usize::from(s.u8()),
                };
                let e = match s.u8() % 6 {
                    0 => None,
                    1 => Some(eof + u64::from(s.u8())),
                    _ => Some(eof),
                };
                let r = dl.on_content(now, to, offset, len, e);
                check_accept(r, offset, len, &dl, &mut pending);
            }
            3 => {
                let from = addr(&mut s);
                let offset = match s.u8() % 2 {
                    0 => u64::from(s.u16()) * 16,
                    _ => s.u64(),
                };
                let len = usize::from(s.u16() % 50_000);
                let e = s.bool().then(|| s.u64() % (1 << 40));
                let r = dl.on_content(now, from, offset, len, e);
                check_accept(r, offset, len, &dl, &mut pending);
            }
            4 => {
                now += Duration::from_millis(u64::from(s.u16() % 10_000));
                dl.handle_timeout(now);
            }
            5 => {
                for (offset, len) in pending.drain(..) {
                    dl.mark_stored(offset, len);
                    let e = dl.eof().expect("a store before eof");
                    let end = (offset + len as u64).min(e);
                    let mut i = offset.div_ceil(BLOCK);
                    while i * BLOCK < e && ((i + 1) * BLOCK).min(e) <= end {
                        stored.insert(i);
                        i += 1;
                    }
                }
            }
            6 => {
                let from = addr(&mut s);
                let offset = u64::from(s.u16()) * 16;
                dl.on_refused(now, from, offset);
            }
            _ => match s.u8() % 4 {
                0 => {
                    let a = addr(&mut s);
                    dl.remove_source(a);
                }
                1 => {
                    let a = addr(&mut s);
                    dl.add_hint(now, a, None);
                }
                2 => {
                    let a = addr(&mut s);
                    dl.set_initial_rtt(a, Duration::from_millis(u64::from(s.u8())));
                }
                _ => {
                    dl.restart_after_mismatch();
                    pending.clear();
                    stored.clear();
                }
            },
        }
        if let Some(e) = dl.eof() {
            assert!(dl.received_bytes() <= e, "received past eof");
        }
        if dl.is_complete() {
            let e = dl.eof().expect("complete without an eof");
            assert!(
                (0..e.div_ceil(BLOCK)).all(|i| stored.contains(&i)),
                "complete with bytes the driver never stored"
            );
        }
    }
}

/// An accepted range lies inside the element and the file.
fn check_accept(
    r: Accept,
    offset: u64,
    len: usize,
    dl: &Download,
    pending: &mut Vec<(u64, usize)>,
) {
    if let Accept::Store { offset: o, len: l } = r {
        let e = dl.eof().expect("a store before eof is known");
        if e == 0 {
            assert_eq!((o, l), (0, 0), "a store into the empty file");
            return;
        }
        assert!(o >= offset, "store starts before the element");
        assert!(
            o + l as u64 <= offset + len as u64,
            "store ends past the element"
        );
        assert!(o + l as u64 <= e, "store past eof");
        assert!(l > 0, "an empty store");
        pending.push((o, l));
    }
}
