//! The downloader on a simulated network: seeded loss, duplication, reordering and delay,
//! reference-like and ferry servers that may tease or go silent; every invariant (window, burst,
//! timers, no block stored twice) is checked at every step.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::testkit::*;
use super::*;

/// xorshift64*: reproducible pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Clone, Copy, Debug)]
enum Packet {
    ToServer {
        server: usize,
        offset: u64,
        length: u32,
    },
    ToClient {
        from: SocketAddr,
        offset: u64,
        len: usize,
        eof: u64,
    },
}

struct Server {
    addr: SocketAddr,
    ferry: Option<u32>,
    /// From this time on, requests are ignored.
    silent_from: Option<Instant>,
    /// The first `teases` requests get 32-byte teasers, like an unverified reference.
    teases: u32,
}

struct Net {
    rng: Rng,
    loss: u64,
    dup: u64,
    /// One-way delay range in ms (reordering comes from the spread).
    delay: (u64, u64),
    queue: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
}

impl Net {
    fn send(&mut self, now: Instant, p: Packet) {
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now
                + Duration::from_micros(self.rng.range(self.delay.0 * 1000, self.delay.1 * 1000));
            self.seq += 1;
            self.queue.insert((at, self.seq), p);
        }
    }
}

#[derive(Default, Debug)]
struct Outcome {
    stores: Vec<u32>,
    requests_per_block: Vec<u32>,
    suspended_seen: Vec<SocketAddr>,
    elapsed: Duration,
}

/// Runs `dl` against `servers` over `net` until complete (or 10 simulated minutes), checking
/// window, burst and timer invariants on the way.
fn simulate(dl: &mut Download, servers: &mut [Server], net: &mut Net, eof: u64) -> Outcome {
    let t0 = Instant::now();
    let mut now = t0;
    for s in servers.iter() {
        dl.add_source(now, s.addr, s.ferry);
    }
    let nblocks = eof.div_ceil(4096) as usize;
    let mut out = Outcome {
        stores: vec![0; nblocks],
        requests_per_block: vec![0; nblocks],
        ..Outcome::default()
    };
    let max_window = dl.cfg.max_window;
    let mut burst: HashMap<SocketAddr, (Instant, u32)> = HashMap::new();
    let mut steps = 0u64;
    while !dl.is_complete() {
        steps += 1;
        assert!(steps < 2_000_000, "no progress");
        assert!(now < t0 + Duration::from_secs(600), "did not finish");
        while let Some(r) = dl.poll_request(now) {
            let st = dl.stats();
            let s = st.sources.iter().find(|s| s.addr == r.to).unwrap();
            let window = if s.is_suspended { 1 } else { s.cwnd as usize };
            assert!(s.in_flight <= window, "{s:?}");
            for src in &dl.sources {
                let sum: u64 = src
                    .reqs
                    .values()
                    .filter(|r| r.expired_at.is_none())
                    .map(|r| u64::from(r.len))
                    .sum();
                assert_eq!(src.live_bytes, sum);
                assert_eq!(
                    src.live,
                    src.reqs.values().filter(|r| r.expired_at.is_none()).count()
                );
            }
            // (Offset 0 is asked of every source while eof is unknown, spec 6.1.)
            assert!(r.offset == 0 || dl.live_copies(r.offset) <= MAX_COPIES);
            let e = burst.entry(r.to).or_insert((now, 0));
            if e.0 != now {
                *e = (now, 0);
            }
            e.1 += 1;
            assert!(e.1 <= 4, "more than 4 requests back to back to {}", r.to);
            let b = (r.offset / 4096) as usize;
            for i in b..(b + (r.length as usize).div_ceil(4096)).min(nblocks) {
                out.requests_per_block[i] += 1;
            }
            let server = servers.iter().position(|s| s.addr == r.to).unwrap();
            net.send(
                now,
                Packet::ToServer {
                    server,
                    offset: r.offset,
                    length: r.length,
                },
            );
        }
        assert!(
            dl.poll_timeout().is_none_or(|t| t > now),
            "poll_timeout would spin"
        );
        for s in dl.stats().sources {
            assert!(s.cwnd <= max_window && s.cwnd >= 1);
            if s.is_suspended && !out.suspended_seen.contains(&s.addr) {
                out.suspended_seen.push(s.addr);
            }
        }
        let next_net = net.queue.keys().next().map(|k| k.0);
        let next = match (dl.poll_timeout(), next_net) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).expect("something must be pending"),
        };
        now = now.max(next);
        while let Some((&(at, seq), &p)) = net.queue.iter().next() {
            if at > now {
                break;
            }
            net.queue.remove(&(at, seq));
            match p {
                Packet::ToServer {
                    server,
                    offset,
                    length,
                } => {
                    let s = &mut servers[server];
                    if s.silent_from.is_some_and(|t| now >= t) {
                        continue;
                    }
                    let mut n = u64::from(length).min(40960).min(eof.saturating_sub(offset));
                    if s.teases > 0 {
                        s.teases -= 1;
                        n = n.min(32);
                    }
                    let from = s.addr;
                    net.send(
                        now,
                        Packet::ToClient {
                            from,
                            offset,
                            len: n as usize,
                            eof,
                        },
                    );
                }
                Packet::ToClient {
                    from,
                    offset,
                    len,
                    eof,
                } => match dl.on_content(now, from, offset, len, Some(eof)) {
                    Accept::Store { offset: o, len: l } => {
                        assert!(o >= offset && o + l as u64 <= offset + len as u64);
                        assert_eq!(o % 4096, 0);
                        let first = (o / 4096) as usize;
                        for i in first..first + l.div_ceil(4096) {
                            out.stores[i] += 1;
                        }
                        dl.mark_stored(o, l);
                    }
                    Accept::DropSource(why) => panic!("honest source dropped: {why}"),
                    Accept::Teaser | Accept::Drop(_) => {}
                },
            }
        }
        if dl.poll_timeout().is_some_and(|t| t <= now) {
            dl.handle_timeout(now);
        }
    }
    out.elapsed = now - t0;
    out
}

fn lossy(seed: u64) -> Net {
    Net {
        rng: Rng(seed),
        loss: 5,
        dup: 3,
        delay: (5, 40),
        queue: BTreeMap::new(),
        seq: 0,
    }
}

fn clean() -> Net {
    Net {
        rng: Rng(1),
        loss: 0,
        dup: 0,
        delay: (10, 11),
        queue: BTreeMap::new(),
        seq: 0,
    }
}

fn server(port: u16, ferry: Option<u32>) -> Server {
    Server {
        addr: addr(port),
        ferry,
        silent_from: None,
        teases: 0,
    }
}

#[test]
fn c27_c28_c29_lossy_reordering_duplicating_network_gives_complete_file() {
    // "5% loss, reordering, duplication must still give a complete file".
    for seed in [1, 0x5eed, 0xdead_beef] {
        let eof = (1 << 20) + 12345;
        let mut dl = Download::new(id(), DownloadConfig::default(), None);
        let mut servers = [server(1, None)];
        let out = simulate(&mut dl, &mut servers, &mut lossy(seed), eof);
        assert!(
            out.stores.iter().all(|&n| n == 1),
            "seed {seed}: a block stored twice"
        );
        assert_eq!(dl.received_bytes(), eof);
        let st = dl.stats();
        assert!(st.losses > 0 && st.retransmits > 0, "seed {seed}: {st:?}");
    }
}

#[test]
fn c29_several_lossy_sources_mixed_ferry_and_reference() {
    for seed in [7, 99] {
        let eof = 3 << 20;
        let mut dl = Download::new(id(), DownloadConfig::default(), None);
        let mut servers = [server(1, None), server(2, Some(40960)), server(3, None)];
        let out = simulate(&mut dl, &mut servers, &mut lossy(seed), eof);
        assert!(out.stores.iter().all(|&n| n == 1));
        assert_eq!(dl.received_bytes(), eof);
        assert_eq!(dl.sources().len(), 3);
    }
}

#[test]
fn c29_several_sources_fetch_each_block_once_outside_the_endgame() {
    let eof = 2 << 20;
    let mut dl = Download::new(id(), DownloadConfig::default(), Some(eof));
    let mut servers = [server(1, None), server(2, None), server(3, Some(40960))];
    let out = simulate(&mut dl, &mut servers, &mut clean(), eof);
    let st = dl.stats();
    assert_eq!(st.losses, 0);
    assert_eq!(st.retransmits, st.endgame_copies);
    let twice: u32 = out
        .requests_per_block
        .iter()
        .map(|&n| n.saturating_sub(1))
        .sum();
    assert!(
        u64::from(twice) <= st.endgame_copies * 8,
        "{twice} vs {st:?}"
    );
    assert!(out.requests_per_block.iter().all(|&n| (1..=2).contains(&n)));
    assert!(out.stores.iter().all(|&n| n == 1));
    // Every source did a share of the work.
    assert!(st.sources.iter().all(|s| s.srtt.is_some()));
}

/// C29: in the endgame a range that has arrived is never copied again, although another
/// source still has it in flight (a copy going back and forth between two sources would
/// carry the same bytes until the end of the download).
#[test]
fn c29_endgame_never_copies_a_range_that_already_arrived() {
    let eof = 8 * BLOCK;
    let t0 = Instant::now();
    let (a, b) = (addr(1), addr(2));
    let mut dl = Download::new(id(), DownloadConfig::default(), Some(eof));
    dl.add_source(t0, a, None);
    dl.add_source(t0, b, None);
    let first = drain(&mut dl, t0);
    assert_eq!(first.len(), 8, "{first:?}");
    let (to_a, to_b): (Vec<Request>, Vec<Request>) = first.iter().partition(|r| r.to == a);
    // b answers one (an RTT sample of 1 ms), a answers all of its own at 5 ms.
    answer_all(&mut dl, t0 + MS, &to_b[..1], eof);
    answer_all(&mut dl, t0 + 5 * MS, &to_a, eof);
    // a now copies b's ranges still in flight, older than b's srtt.
    let copies = drain(&mut dl, t0 + 5 * MS);
    assert!(
        !copies.is_empty() && copies.iter().all(|r| r.to == a),
        "{copies:?}"
    );
    // All copies but the last arrive first; b's originals are still in flight.
    assert!(copies.len() >= 2, "{copies:?}");
    let (arrived, _) = copies.split_at(copies.len() - 1);
    answer_all(&mut dl, t0 + 6 * MS, arrived, eof);
    for t in [8, 20, 100] {
        let again = drain(&mut dl, t0 + t * MS);
        assert!(
            again
                .iter()
                .all(|r| !arrived.iter().any(|c| c.offset == r.offset)),
            "copied again at {t} ms: {again:?}"
        );
    }
    assert!(!dl.is_complete());
    assert_eq!(dl.stats().endgame_copies, copies.len() as u64);
}

#[test]
fn c29_a_source_going_silent_is_suspended_dropped_and_its_ranges_reassigned() {
    let eof = 8 << 20;
    let cfg = DownloadConfig {
        max_window: 8,
        ..DownloadConfig::default()
    };
    let mut dl = Download::new(id(), cfg, None);
    let mut servers = [server(1, None), server(2, None), server(3, None)];
    // Slow enough links that the transfer outlasts 30 s of silence.
    let mut net = Net {
        delay: (100, 140),
        ..lossy(3)
    };
    servers[1].silent_from = Some(Instant::now() + Duration::from_secs(1));
    let out = simulate(&mut dl, &mut servers, &mut net, eof);
    assert!(out.elapsed > Duration::from_secs(31), "{:?}", out.elapsed);
    assert!(out.stores.iter().all(|&n| n == 1));
    assert_eq!(dl.received_bytes(), eof);
    assert_eq!(out.suspended_seen, vec![addr(2)]);
    assert_eq!(dl.sources(), vec![addr(1), addr(3)]);
    assert_eq!(dl.stats().sources_dropped, 1);
}

#[test]
fn teasing_reference_then_full_replies_completes() {
    let eof = 300_000;
    let mut dl = Download::new(id(), DownloadConfig::default(), None);
    let mut servers = [Server {
        teases: 3,
        ..server(1, None)
    }];
    let out = simulate(&mut dl, &mut servers, &mut clean(), eof);
    assert!(out.stores.iter().all(|&n| n == 1));
    let st = dl.stats();
    assert_eq!((st.teasers, st.losses), (3, 0));
}

#[test]
fn c29_many_seeds_mixed_sources_teasers_loss_and_a_silent_source() {
    for seed in 1..100u64 {
        let eof = 200_000 + seed * 4099;
        let mut dl = Download::new(id(), DownloadConfig::default(), None);
        let mut servers = [
            server(1, None),
            server(2, Some(40960)),
            server(3, Some(16384)),
        ];
        servers[2].teases = (seed % 4) as u32;
        if seed % 3 == 0 {
            servers[0].silent_from = Some(Instant::now() + Duration::from_millis(seed * 3));
        }
        let mut net = Net {
            loss: 5 + seed % 10,
            dup: 5,
            ..lossy(seed)
        };
        let out = simulate(&mut dl, &mut servers, &mut net, eof);
        assert!(out.stores.iter().all(|&n| n == 1), "seed {seed}");
    }
}
