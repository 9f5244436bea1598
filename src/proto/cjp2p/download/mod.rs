//! The CJP2P downloader (spec sections 6.1-6.4, 6.7 and the `eof` rules of 9): which
//! `PleaseSendContent` to send to which source and when, and whether a received `Content` is kept.
//!
//! Pure state machine: no sockets, files, threads or clocks. Time comes in as [`Instant`]
//! arguments. The driver sends what [`Download::poll_request`] returns, feeds every `Content` of a
//! verified datagram for this id to [`Download::on_content`], writes the bytes an
//! [`Accept::Store`] names, then reports them with [`Download::mark_stored`], and calls
//! [`Download::handle_timeout`] at [`Download::poll_timeout`]. Out of scope: JSON, base64, cookies
//! (node side), the partial file and its bitmap on disk, the whole-file hash (driver and ingest).
//!
//! Blocks are tracked at 4096 bytes ([`BLOCK`]) in three bitmaps and a count of the live
//! requests covering each block, allocated only once an `eof` is accepted:
//!
//! ```text
//!   pending  : in flight in at least one live request
//!   accepted : an accepted reply covers it (the driver is writing or has written it)
//!   have     : the driver wrote it (mark_stored); `is_complete` = every bit set
//! ```
//!
//! Missing blocks are handed out from one shared cursor that sweeps the file once, plus a queue
//! of ranges that came back (expired, teased, cut short, source removed) which is served FIRST,
//! cut to the block size of whichever source takes them. Every block neither pending nor
//! accepted is therefore ahead of the cursor or inside a queued range, and no block is
//! requested twice outside the endgame and retransmission. A range that expired at a source
//! that has answered nothing since goes to a source that delivers, never back to the silent one
//! (unless no other source delivers).
//!
//! A request's life, one per (source, offset):
//!
//! ```text
//!   poll_request ──> Live ──reply──> gone (Store / duplicate / Teaser: range queued again)
//!                     │  deadline = sent + RTO
//!                     v
//!                  Expired (loss; range queued again at the front) ──reply < 2 s──> Store
//!                     │  2 s
//!                     v
//!                   gone
//! ```
//!
//! Per source: `cwnd` (initial 4, 1..=`max_window`), slow start to `ssthresh` (64) then +1 per
//! `cwnd` replies; on loss `ssthresh = max(cwnd/2, 2)`, `cwnd = ssthresh`, at most once per RTT,
//! undone when every expired request is answered after all (a spurious timeout). Pacing is a
//! token bucket of 4 refilled at `cwnd / srtt` per second. RTO = clamp(srtt + 4 rttvar, 20 ms,
//! 2 s) from first transmissions only (Karn), 250 ms before any sample, doubled per consecutive
//! timeout up to 1 s. Each source has a standing (fresh, active, lost, handshaking: see
//! `source`) that decides its window: a source whose requests expire, or whose replies fail the
//! cookie check, gets one request at a time until it delivers again. A source silent for 8 s is
//! suspended (one request per 2 s), for 30 s dropped; a `MaybeTheyHaveSome` hint
//! ([`Download::add_hint`]) gets one request and is dropped after 2 s of silence.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ferry::proto::cjp2p::download::{Accept, Download, DownloadConfig};
//!
//! let t0 = Instant::now();
//! let peer = "127.0.0.1:24401".parse().unwrap();
//! let mut dl = Download::new([7; 32], DownloadConfig::default(), None);
//! dl.add_source(t0, peer, None);
//! let r = dl.poll_request(t0).unwrap(); // eof unknown: one request for offset 0
//! assert_eq!((r.offset, r.length), (0, 4096));
//! assert!(dl.poll_request(t0).is_none());
//! let t1 = t0 + Duration::from_millis(10);
//! assert_eq!(dl.on_content(t1, peer, 0, 4096, Some(5000)), Accept::Store { offset: 0, len: 4096 });
//! dl.mark_stored(0, 4096);
//! let r = dl.poll_request(t1).unwrap();
//! assert_eq!((r.offset, r.length), (4096, 4096));
//! assert_eq!(dl.on_content(t1, peer, 4096, 904, Some(5000)), Accept::Store { offset: 4096, len: 904 });
//! dl.mark_stored(4096, 904);
//! assert!(dl.is_complete());
//! ```
//!
//! Request sizes: toward a ferry source up to `ferry_block` (32 KiB), but each source starts at
//! 4096 bytes and its size grows while answers arrive cleanly and halves when large answers are
//! lost more often than smaller ones were (`size`: a 32 KiB answer is 30 IP fragments on a
//! 1500-byte path, and at 1 % loss their leftovers fill the kernel's reassembly queue).
//!
//! The parts: `blocks` (the bitmaps), `roster` (the sources: named, hints on probation),
//! `source` (one source's standing, window, pacing, RTT and RTO), `size` (its request size),
//! `schedule` (who may send,
//! which range, endgame copies, expiry), `accept` (which `Content` is kept), `stats`
//! (counters); `sim` runs the downloader on a simulated lossy network.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod accept;
mod blocks;
mod roster;
mod schedule;
#[cfg(test)]
mod sim;
mod size;
mod source;
mod stats;
#[cfg(test)]
mod testkit;

use blocks::Blocks;
use source::Source;
pub use source::Standing;
pub use stats::{DownloadStats, SourceStats};

/// Granularity of the block bitmaps and of request alignment, in bytes.
pub const BLOCK: u64 = 4096;

/// SHA-256 of the empty file: the only id for which `eof = 0` is accepted.
pub const EMPTY_ID: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Replies of at most this many bytes that do not reach `eof` are teasers (spec 4.5).
pub const MAX_TEASER: usize = 32;
/// Largest reply a CJP2P server sends (the reference's cap, spec 5), so the largest request.
const MAX_REQUEST: u32 = 40960;
/// Most requests a source may be sent back to back (the pacing bucket's depth).
const MAX_BURST: f64 = 4.0;
/// Slack for float rounding in the pacing bucket, so a slot reported by `poll_timeout` is
/// always usable at that instant.
const TOKEN_SLACK: f64 = 1e-6;
/// Slow-start threshold before the first loss.
const INITIAL_SSTHRESH: u32 = 64;
/// Initial congestion window, in requests.
const INITIAL_CWND: u32 = 4;
/// RTO bounds (spec 6.3).
const MIN_RTO: Duration = Duration::from_millis(20);
const MAX_RTO: Duration = Duration::from_secs(2);
/// Cap of a backed-off RTO: doubling stops here (unless the RTO itself is longer), so a source
/// that starts late or restarts is asked again within a second (issue: 8 s left a late source
/// idle for seconds). A source in back-off has one request in flight, so this costs nothing.
const MAX_BACKOFF_RTO: Duration = Duration::from_secs(1);
/// How long an expired request still accepts its late reply.
const LATE_REPLY_GRACE: Duration = Duration::from_secs(2);
/// Silence after which a source is suspended to one request per [`SUSPENDED_INTERVAL`].
const SUSPEND_AFTER: Duration = Duration::from_secs(8);
const SUSPENDED_INTERVAL: Duration = Duration::from_secs(2);
/// Silence after which a source is dropped from the download.
const DROP_AFTER: Duration = Duration::from_secs(30);
/// A `MaybeTheyHaveSome` hint that has not answered this long is dropped (cjp2p.md 8).
const HINT_SILENCE: Duration = Duration::from_secs(2);
/// A hint dropped for silence is not taken again from later hints for this long.
const FORGET_DEAD_HINT_AFTER: Duration = Duration::from_secs(60);
/// Most dead hints remembered.
const MAX_DEAD_HINTS: usize = 256;
/// Most copies of one range in flight during the endgame.
const MAX_COPIES: usize = 2;
/// Addresses whose path limit is remembered.
const MAX_PATH_LIMITS: usize = 1024;

/// Downloader settings (spec 1.4). Plain data.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// Request length toward sources not known to be ferry. Rounded down to a multiple of 4096,
    /// at least 4096. Default 4096.
    pub ref_block: u32,
    /// Largest request toward ferry sources (further capped by their `max_length`); each
    /// source's size starts at 4096 and adapts up to it (see the module doc). Multiple of 4096,
    /// at most 40960. Default 32768.
    pub ferry_block: u32,
    /// Most requests in flight per source. Default 256.
    pub max_window: u32,
    /// Largest content length accepted; bounds the bitmaps. Default 64 GiB.
    pub max_eof: u64,
    /// RTO before any RTT sample of a source. Default 250 ms.
    pub initial_rto: Duration,
    /// Most sources per download. Default 32.
    pub max_sources: usize,
    /// Most bytes requested and not yet answered over all sources, to stay within the socket's
    /// receive buffer (spec 6.2; set it to the SO_RCVBUF granted). Default 8 MiB.
    pub max_bytes_in_flight: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            ref_block: 4096,
            ferry_block: 32768,
            max_window: 256,
            max_eof: 64 << 30,
            initial_rto: Duration::from_millis(250),
            max_sources: 32,
            max_bytes_in_flight: 8 << 20,
        }
    }
}

/// What to do with one `Content` element (see [`Download::on_content`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Write `len` bytes of the element's data at file offset `offset`, that is
    /// `data[offset - content_offset..][..len]`, then call [`Download::mark_stored`]. Usually the
    /// whole element; a sub-range only when part of it was already accepted from another copy.
    Store { offset: u64, len: usize },
    /// A teaser (at most 32 bytes, not reaching `eof`): discard it; the range is requested again
    /// (and the node should offer its cookie again, spec 4.5).
    Teaser,
    /// Drop the element; nothing else changes.
    Drop(&'static str),
    /// Drop the element; the source has been removed from this download.
    DropSource(&'static str),
}

/// One `PleaseSendContent` to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub to: SocketAddr,
    pub offset: u64,
    pub length: u32,
}

/// Blocks `[first, end)` that came back to the missing set (expired, teased, cut short, source
/// removed), served before the cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Comeback {
    first: u64,
    end: u64,
    /// The source whose request expired: it does not get the range back while an active source
    /// can take it.
    lost_by: Option<u64>,
}

impl Comeback {
    fn new(first: u64, end: u64) -> Comeback {
        Comeback {
            first,
            end,
            lost_by: None,
        }
    }
}

/// Rounds a request length down to a multiple of 4096, within 4096..=40960.
fn block_len(len: u32) -> u32 {
    (len.min(MAX_REQUEST) / BLOCK as u32).max(1) * BLOCK as u32
}

/// One content download: sources, their windows and timers, and the block bitmaps.
#[derive(Debug)]
pub struct Download {
    id: [u8; 32],
    cfg: DownloadConfig,
    /// `eof` given in advance (block lists); survives `restart_after_mismatch`.
    preset_eof: Option<u64>,
    /// The source whose reply fixed `eof`.
    eof_source: Option<SocketAddr>,
    blocks: Option<Blocks>,
    cursor: u64,
    /// Ranges to serve before the cursor, front first.
    requeue: VecDeque<Comeback>,
    sources: Vec<Source>,
    next_source_id: u64,
    /// Round-robin position over `sources`.
    rr: usize,
    /// Every live request's deadline and every expired request's forget time:
    /// `(when, source id, offset)`.
    timers: BTreeSet<(Instant, u64, u64)>,
    /// `now` of the last `poll_request`, so `poll_timeout` never reports a slot already tried.
    last_poll: Option<Instant>,
    /// Hints dropped for silence, and when: later hints naming them are ignored for a while.
    dead_hints: HashMap<SocketAddr, Instant>,
    /// Largest request toward an address whose path fragments large answers
    /// ([`set_path_limit`](Self::set_path_limit)); at most [`MAX_PATH_LIMITS`] entries.
    path_limits: HashMap<SocketAddr, u32>,
    stats: DownloadStats,
}

impl Download {
    /// A download of `id`; `known_eof` when the length is known in advance (ignored above
    /// `max_eof`).
    pub fn new(id: [u8; 32], mut cfg: DownloadConfig, known_eof: Option<u64>) -> Download {
        cfg.max_window = cfg.max_window.max(1);
        let preset_eof = known_eof.filter(|&e| e <= cfg.max_eof && (e > 0 || id == EMPTY_ID));
        Download {
            id,
            blocks: preset_eof.map(Blocks::new),
            preset_eof,
            cfg,
            eof_source: None,
            cursor: 0,
            requeue: VecDeque::new(),
            sources: Vec::new(),
            next_source_id: 0,
            rr: 0,
            timers: BTreeSet::new(),
            last_poll: None,
            dead_hints: HashMap::new(),
            path_limits: HashMap::new(),
            stats: DownloadStats::default(),
        }
    }

    /// Resume: blocks of 4096 bytes already on disk (bit i = bytes i*4096..). Sets `eof`; ignored
    /// when `eof` exceeds `max_eof` or contradicts an `eof` already known.
    pub fn resume(&mut self, eof: u64, have: &dyn Fn(u64) -> bool) {
        let bad = eof > self.cfg.max_eof || (eof == 0 && self.id != EMPTY_ID);
        if bad || self.eof().is_some_and(|e| e != eof) {
            return;
        }
        if self.blocks.is_none() {
            self.blocks = Some(Blocks::new(eof));
        }
        let b = self.blocks.as_mut().expect("allocated above");
        for i in 0..b.n {
            if have(i) && !b.have.get(i) {
                b.have.set(i);
                b.accepted.set(i);
                b.have_count += 1;
            }
        }
        self.cursor = 0;
    }

    /// Next request to send, respecting cwnd, pacing (<= 4 back to back, cwnd/srtt per second)
    /// and alignment; None when nothing may be sent now. Call until None.
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        self.last_poll = Some(now);
        if self.is_complete() || self.sources.is_empty() {
            return None;
        }
        let n = self.sources.len();
        for k in 0..n {
            let si = (self.rr + k) % n;
            let initial = self.cfg.initial_rto;
            self.sources[si].refill(now, initial);
            if !self.may_send(si, now) {
                continue;
            }
            if let Some((offset, length, is_retransmit, is_copy)) = self.pick_work(si, now) {
                self.rr = (si + 1) % n;
                self.send(si, now, offset, length);
                self.stats.requests_sent += 1;
                if is_retransmit {
                    self.stats.retransmits += 1;
                }
                if is_copy {
                    self.stats.endgame_copies += 1;
                }
                return Some(Request {
                    to: self.sources[si].addr,
                    offset,
                    length,
                });
            }
        }
        None
    }

    /// Earliest time something is due (retransmission timer, pacing slot, source suspension).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_complete() {
            // Leftover timers only tidy up requests nobody needs any more.
            return None;
        }
        let mut due = self.timers.first().map(|t| t.0);
        let mut consider = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        for s in &self.sources {
            if let Some(t) = s.silent_since {
                consider(t + DROP_AFTER);
                if s.is_untried_hint() {
                    consider(t + HINT_SILENCE);
                }
            }
            let Some(last) = self.last_poll else { continue };
            if s.tokens + TOKEN_SLACK < 1.0 {
                let wait = (1.0 - s.tokens) / s.rate(self.cfg.initial_rto);
                let slot = s.refilled + Duration::from_secs_f64(wait.min(3600.0));
                if slot > last {
                    consider(slot);
                }
            }
            if s.is_suspended(last) {
                if let Some(sent) = s.last_sent {
                    let slot = sent + SUSPENDED_INTERVAL;
                    if slot > last {
                        consider(slot);
                    }
                }
            }
        }
        due
    }

    /// Expires requests whose deadline passed, forgets old expired ones and drops sources
    /// silent for 30 s (hints that never answered: 2 s).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, sid, offset)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(si) = self.sources.iter().position(|s| s.id == sid) else {
                continue;
            };
            let Some(req) = self.sources[si].reqs.get(&offset).copied() else {
                continue;
            };
            if req.deadline != t {
                continue;
            }
            if req.expired_at.is_some() {
                self.sources[si].reqs.remove(&offset);
                self.sources[si].on_really_lost();
            } else {
                self.expire(si, offset, req, now);
            }
        }
        let mut i = 0;
        while i < self.sources.len() {
            let s = &self.sources[i];
            let limit = if s.is_untried_hint() {
                HINT_SILENCE
            } else {
                DROP_AFTER
            };
            let silent = s
                .silent_since
                .is_some_and(|t| now.saturating_duration_since(t) >= limit);
            if silent {
                if s.is_hint {
                    if self.dead_hints.len() >= MAX_DEAD_HINTS {
                        let oldest = self.dead_hints.iter().min_by_key(|(_, t)| **t);
                        if let Some(k) = oldest.map(|(k, _)| *k) {
                            self.dead_hints.remove(&k);
                        }
                    }
                    self.dead_hints.insert(s.addr, now);
                }
                self.remove_source_at(i);
                self.stats.sources_dropped += 1;
            } else {
                i += 1;
            }
        }
    }

    pub fn eof(&self) -> Option<u64> {
        self.blocks.as_ref().map(|b| b.eof)
    }

    pub fn is_complete(&self) -> bool {
        self.blocks.as_ref().is_some_and(|b| b.have_count == b.n)
    }

    /// Whether 4096-byte block `i` has been written.
    pub fn has_block(&self, i: u64) -> bool {
        self.blocks
            .as_ref()
            .is_some_and(|b| i < b.n && b.have.get(i))
    }

    pub fn received_bytes(&self) -> u64 {
        let Some(b) = self.blocks.as_ref() else {
            return 0;
        };
        let mut bytes = b.have_count * BLOCK;
        if b.n > 0 && b.have.get(b.n - 1) {
            bytes -= b.n * BLOCK - b.eof;
        }
        bytes
    }

    /// Whole-file hash failed: forget all blocks and the eof learnt from `eof_source`, drop that
    /// source; up to the caller to give up after 3 tries.
    pub fn restart_after_mismatch(&mut self) {
        if let Some(bad) = self.eof_source.take() {
            if let Some(si) = self.sources.iter().position(|s| s.addr == bad) {
                self.sources.remove(si);
                self.stats.sources_dropped += 1;
            }
        }
        for s in &mut self.sources {
            s.reqs.clear();
            s.live = 0;
            s.live_bytes = 0;
            s.handshake_live = 0;
            s.silent_since = None;
        }
        self.rr = 0;
        self.timers.clear();
        self.requeue.clear();
        self.cursor = 0;
        self.blocks = self.preset_eof.map(Blocks::new);
        self.stats.restarts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    #[test]
    fn c26_ref_source_gets_4096_aligned_4096_byte_requests() {
        let (mut dl, t0, a) = one_source(Some(100_000));
        let mut now = t0;
        let mut seen = Vec::new();
        let mut rounds = 0;
        while !dl.is_complete() {
            rounds += 1;
            assert!(rounds < 10_000, "no progress");
            let reqs = drain(&mut dl, now);
            for r in &reqs {
                assert_eq!(r.offset % 4096, 0);
                assert_eq!(
                    r.length, 4096,
                    "ref sources get ref_block even for the last block"
                );
                assert_eq!(r.to, a);
                seen.push(r.offset);
            }
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, 100_000);
        }
        seen.sort();
        assert_eq!(seen, (0..25).map(|i| i * 4096).collect::<Vec<_>>());
        assert_eq!(dl.received_bytes(), 100_000);
        assert_eq!(
            dl.stats().sources[0].delivered,
            100_000,
            "counted per source"
        );
        assert_eq!(
            dl.stats().requests_sent,
            25,
            "one request per block, none again"
        );
    }

    #[test]
    fn ferry_source_gets_aligned_ferry_blocks_cut_at_eof() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(100_000));
        dl.add_source(t0, addr(1), Some(40960));
        dl.grown(addr(1));
        let reqs = drain(&mut dl, t0);
        let got: Vec<_> = reqs.iter().map(|r| (r.offset, r.length)).collect();
        assert_eq!(
            got,
            vec![(0, 32768), (32768, 32768), (65536, 32768), (98304, 1696)]
        );
    }

    #[test]
    fn ferry_block_capped_at_the_peers_max_length() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), Some(10000));
        dl.grown(addr(1));
        let r = dl.poll_request(t0).unwrap();
        assert_eq!((r.offset, r.length), (0, 8192));
        let r = dl.poll_request(t0).unwrap();
        assert_eq!((r.offset, r.length), (8192, 8192));
    }

    #[test]
    fn until_eof_is_known_one_offset_0_request_per_source() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), None);
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), Some(40960));
        dl.grown(addr(2));
        let got: Vec<_> = drain(&mut dl, t0)
            .iter()
            .map(|r| (r.to, r.offset, r.length))
            .collect();
        assert_eq!(got, vec![(addr(1), 0, 4096), (addr(2), 0, 32768)]);
        assert!(dl.poll_request(t0 + 100 * MS).is_none());
        // The reply of the ferry source fixes eof; its 8 blocks are not asked again of addr(1).
        let t1 = t0 + 20 * MS;
        assert_eq!(
            dl.on_content(t1, addr(2), 0, 32768, Some(1 << 20)),
            Accept::Store {
                offset: 0,
                len: 32768
            }
        );
        assert_eq!(dl.eof(), Some(1 << 20));
        let next = drain(&mut dl, t1);
        assert!(next.iter().all(|r| r.offset >= 32768), "{next:?}");
        // addr(1)'s late answer for block 0 is a duplicate, not a second store.
        assert!(matches!(
            dl.on_content(t1, addr(1), 0, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
        assert_eq!(dl.stats().dup_replies, 1);
    }

    /// With the default RTO a request expires well within the 2 s: the suspended source sends
    /// as soon as its 2 s are up. With an RTO over 2 s its request is still in flight then, the
    /// slot passes unused and poll_timeout must not report it again (a spin).
    #[test]
    fn silent_source_is_suspended_after_8s_and_dropped_after_30s() {
        for (rto, at_the_slot) in [(250 * MS, true), (Duration::from_secs(3), false)] {
            let t0 = Instant::now();
            let cfg = DownloadConfig {
                initial_rto: rto,
                ..DownloadConfig::default()
            };
            let mut dl = Download::new(id(), cfg, Some(1 << 20));
            let a = addr(1);
            dl.add_source(t0, a, None);
            let mut now = t0;
            let mut sends = Vec::new();
            while now < t0 + Duration::from_secs(40) {
                while let Some(r) = dl.poll_request(now) {
                    sends.push((now, r));
                }
                if let Some(s) = dl.stats().sources.first().filter(|s| s.is_suspended) {
                    assert!(s.in_flight <= 1, "suspended: one request at a time");
                }
                let Some(due) = dl.poll_timeout() else { break };
                assert!(due > now, "poll_timeout must not spin (rto {rto:?})");
                now = due;
                dl.handle_timeout(now);
            }
            assert!(dl.sources().is_empty(), "dropped");
            assert_eq!(dl.stats().sources_dropped, 1);
            let last = sends.last().unwrap().0;
            assert!(last < t0 + Duration::from_secs(30));
            // After 8 s of silence: at most one request per 2 s ...
            let late: Vec<_> = sends.iter().filter(|(t, _)| *t >= t0 + 8500 * MS).collect();
            assert!(!late.is_empty());
            for w in late.windows(2) {
                let gap = w[1].0 - w[0].0;
                assert!(gap >= SUSPENDED_INTERVAL, "{gap:?}");
                // ... and that one as soon as its 2 s are up: poll_timeout reports the slot.
                if at_the_slot {
                    assert!(gap < SUSPENDED_INTERVAL + 10 * MS, "{gap:?}");
                }
            }
            if at_the_slot {
                assert!(late.len() >= 9, "{} requests after 8.5 s", late.len());
            }
            assert!(sends.iter().all(|(_, r)| r.to == a));
        }
    }

    /// C31: a resume's eof is taken up to max_eof, never above it, and 0 only for the empty
    /// file's id.
    #[test]
    fn c31_resume_takes_an_eof_up_to_max_eof_and_0_only_for_the_empty_file() {
        let cfg = DownloadConfig {
            max_eof: 1 << 20,
            ..DownloadConfig::default()
        };
        let none = |_| false;
        let mut dl = Download::new(id(), cfg.clone(), None);
        dl.resume((1 << 20) + 1, &none);
        assert_eq!(dl.eof(), None, "above max_eof");
        dl.resume(0, &none);
        assert_eq!(dl.eof(), None, "0 for a file that is not empty");
        dl.resume(1 << 20, &none);
        assert_eq!(dl.eof(), Some(1 << 20));
        // Another eof contradicts the known one: ignored; the same one adds its blocks.
        dl.resume(8192, &|_| true);
        assert_eq!((dl.eof(), dl.received_bytes()), (Some(1 << 20), 0));
        dl.resume(1 << 20, &|i| i == 0);
        assert_eq!(dl.received_bytes(), 4096);
        let mut dl = Download::new(EMPTY_ID, cfg, None);
        dl.resume(0, &none);
        assert_eq!(dl.eof(), Some(0));
    }

    #[test]
    fn c31_resume_with_half_the_blocks_requests_only_the_others() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), None);
        let eof = 64 * 4096 + 100;
        dl.resume(eof, &|i| i % 2 == 0);
        assert_eq!(dl.received_bytes(), 33 * 4096 - 4096 + 100);
        // Blocks 0..=64: the even ones held; none past the last.
        assert!(dl.has_block(0) && !dl.has_block(1) && dl.has_block(64));
        assert!(!dl.has_block(65) && !dl.has_block(66) && !dl.has_block(u64::MAX));
        // 64 whole blocks fill the bitmap's one word: block 64 is past it, and not held.
        let mut whole = Download::new(id(), DownloadConfig::default(), None);
        whole.resume(64 * 4096, &|_| true);
        assert!(whole.is_complete() && whole.has_block(63) && !whole.has_block(64));
        dl.add_source(t0, addr(1), None);
        let mut now = t0;
        let mut asked = Vec::new();
        let mut rounds = 0;
        while !dl.is_complete() {
            rounds += 1;
            assert!(rounds < 10_000, "no progress");
            let reqs = drain(&mut dl, now);
            asked.extend(reqs.iter().map(|r| r.offset / 4096));
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, eof);
        }
        asked.sort();
        assert_eq!(asked, (0..32).map(|i| 2 * i + 1).collect::<Vec<_>>());
        assert_eq!(dl.received_bytes(), eof);
    }

    #[test]
    fn restart_after_mismatch_forgets_blocks_eof_and_the_eof_source() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), None);
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        let eof = 3 * 4096;
        let mut now = t0;
        let mut rounds = 0;
        while !dl.is_complete() {
            rounds += 1;
            assert!(rounds < 10_000, "no progress");
            let reqs = drain(&mut dl, now);
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, eof);
        }
        assert_eq!(dl.poll_timeout(), None, "complete: nothing due");
        let setter = dl.eof_source.unwrap();
        dl.restart_after_mismatch();
        assert_eq!(dl.eof(), None);
        assert_eq!(dl.received_bytes(), 0);
        assert!(!dl.has_block(0));
        assert!(!dl.sources().contains(&setter));
        assert_eq!(dl.sources().len(), 1);
        assert_eq!(dl.poll_timeout(), None, "no stale timers");
        let r = dl.poll_request(now).unwrap();
        assert_eq!((r.offset, r.length), (0, 4096));
        assert_eq!(dl.stats().restarts, 1);
        assert_eq!(dl.stats().sources_dropped, 1, "the eof's source");
        // A preset eof (block list) survives a restart.
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(eof));
        dl.restart_after_mismatch();
        assert_eq!(dl.eof(), Some(eof));
    }

    /// Issue 13 item 4: a reply that failed the cookie check sends the range out again at once.
    #[test]
    fn a_refused_reply_sends_the_range_again_at_once() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let sent = drain(&mut dl, t0);
        assert_eq!(sent.len(), 4);
        let t1 = t0 + 5 * MS;
        assert!(dl.on_refused(t1, a, sent[2].offset));
        assert!(
            !dl.on_refused(t1, a, sent[2].offset),
            "only once per request"
        );
        assert!(!dl.on_refused(t1, addr(9), sent[0].offset), "not a source");
        // Sent at the next pacing slot, long before any request would time out.
        let slot = dl.poll_timeout().unwrap();
        assert!(slot < t0 + 100 * MS, "{:?}", slot - t0);
        let again = drain(&mut dl, slot);
        assert_eq!(again.len(), 1, "one handshake request: {again:?}");
        assert_eq!(again[0].offset, sent[2].offset);
        let st = dl.stats();
        assert_eq!((st.refused, st.losses), (1, 0));
        assert_eq!(st.sources[0].standing, Standing::Handshaking);
    }
}
