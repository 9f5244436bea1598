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
//! Blocks are tracked at 4096 bytes ([`BLOCK`]) in three bitmaps, allocated only once an `eof`
//! is accepted (at most `max_eof / 4096` bits each):
//!
//! ```text
//!   pending  : in flight in at least one live request
//!   accepted : an accepted reply covers it (the driver is writing or has written it)
//!   have     : the driver wrote it (mark_stored); `is_complete` = every bit set
//! ```
//!
//! Missing blocks are handed out from one shared cursor that sweeps the file once, plus a queue
//! of ranges that came back (expired, teased, cut short, source removed) which is served FIRST.
//! Every block neither pending nor accepted is therefore ahead of the cursor or inside a queued
//! range, and no block is requested twice outside the endgame and retransmission.
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
//! `cwnd` replies; on loss `ssthresh = max(cwnd/2, 2)`, `cwnd = ssthresh`, at most once per RTT.
//! Pacing is a token bucket of 4 refilled at `cwnd / srtt` per second. RTO = clamp(srtt +
//! 4 rttvar, 20 ms, 2 s) from first transmissions only (Karn), 250 ms before any sample, doubled
//! per consecutive timeout (up to 8 s). A source silent for 8 s is suspended (one request per
//! 2 s), for 30 s dropped.
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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
/// Cap of a backed-off RTO: doubling stops here.
const MAX_BACKOFF_RTO: Duration = Duration::from_secs(8);
/// How long an expired request still accepts its late reply.
const LATE_REPLY_GRACE: Duration = Duration::from_secs(2);
/// Silence after which a source is suspended to one request per [`SUSPENDED_INTERVAL`].
const SUSPEND_AFTER: Duration = Duration::from_secs(8);
const SUSPENDED_INTERVAL: Duration = Duration::from_secs(2);
/// Silence after which a source is dropped from the download.
const DROP_AFTER: Duration = Duration::from_secs(30);
/// Most copies of one range in flight during the endgame.
const MAX_COPIES: usize = 2;

/// Downloader settings (spec 1.4). Plain data.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// Request length toward sources not known to be ferry. Rounded down to a multiple of 4096,
    /// at least 4096. Default 4096.
    pub ref_block: u32,
    /// Request length toward ferry sources (further capped by their `max_length`). Multiple of
    /// 4096, at most 40960. Default 32768.
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

/// Counters for logs and tests.
#[derive(Clone, Debug, Default)]
pub struct DownloadStats {
    /// Requests handed out by `poll_request`.
    pub requests_sent: u64,
    /// Requests for ranges that were requested before (after a loss, teaser or short reply).
    pub retransmits: u64,
    /// Endgame copies (a range asked from a second source while still in flight).
    pub endgame_copies: u64,
    /// Expired requests.
    pub losses: u64,
    /// Replies whose blocks were all already accepted.
    pub dup_replies: u64,
    pub teasers: u64,
    /// Elements dropped (`Drop` and `DropSource`).
    pub dropped: u64,
    /// Sources removed for silence, bad data or a conflicting `eof`.
    pub sources_dropped: u64,
    /// `restart_after_mismatch` calls.
    pub restarts: u32,
    pub sources: Vec<SourceStats>,
}

/// One source's congestion state.
#[derive(Clone, Debug)]
pub struct SourceStats {
    pub addr: SocketAddr,
    pub is_ferry: bool,
    pub block_size: u32,
    pub cwnd: u32,
    pub ssthresh: u32,
    pub srtt: Option<Duration>,
    pub rto: Duration,
    pub in_flight: usize,
    pub is_suspended: bool,
}

/// A fixed-size bit set, one bit per 4096-byte block.
#[derive(Clone, Debug)]
struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn new(n: u64) -> Bits {
        Bits {
            words: vec![0; n.div_ceil(64) as usize],
        }
    }
    fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64) {
        self.words[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: u64) {
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
    }
}

/// Block state once `eof` is known.
#[derive(Debug)]
struct Blocks {
    eof: u64,
    /// Number of blocks, `ceil(eof / 4096)`.
    n: u64,
    pending: Bits,
    accepted: Bits,
    have: Bits,
    have_count: u64,
}

impl Blocks {
    fn new(eof: u64) -> Blocks {
        let n = eof.div_ceil(BLOCK);
        Blocks {
            eof,
            n,
            pending: Bits::new(n),
            accepted: Bits::new(n),
            have: Bits::new(n),
            have_count: 0,
        }
    }

    fn is_needed(&self, i: u64) -> bool {
        !self.pending.get(i) && !self.accepted.get(i)
    }

    /// First needed block at or after `from`, skipping whole words.
    fn next_needed(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.n {
            let w = (i / 64) as usize;
            let free = !(self.pending.words[w] | self.accepted.words[w]) & (!0u64 << (i % 64));
            if free != 0 {
                let c = w as u64 * 64 + u64::from(free.trailing_zeros());
                return (c < self.n).then_some(c);
            }
            i = (w as u64 + 1) * 64;
        }
        None
    }

    /// Blocks `[first, end)` touched by `len` bytes at `offset`.
    fn span(&self, offset: u64, len: u64) -> (u64, u64) {
        let first = offset / BLOCK;
        let end = offset
            .saturating_add(len)
            .min(self.eof)
            .div_ceil(BLOCK)
            .min(self.n);
        (first.min(self.n), end.max(first.min(self.n)))
    }
}

#[derive(Clone, Copy, Debug)]
struct Req {
    len: u32,
    sent: Instant,
    /// Retransmission deadline while live; forget time once expired.
    deadline: Instant,
    /// Sent again to this source for this offset: no RTT sample (Karn).
    is_retransmitted: bool,
    expired_at: Option<Instant>,
}

#[derive(Debug)]
struct Source {
    id: u64,
    addr: SocketAddr,
    is_ferry: bool,
    /// Current request length in bytes (multiple of 4096).
    block: u32,
    cwnd: u32,
    ssthresh: u32,
    /// Replies counted toward the next +1 in congestion avoidance.
    ca_acked: u32,
    srtt: Option<Duration>,
    rttvar: Duration,
    backoff: u32,
    last_decrease: Option<Instant>,
    tokens: f64,
    refilled: Instant,
    last_sent: Option<Instant>,
    /// Time of the oldest request sent since the source last answered.
    silent_since: Option<Instant>,
    reqs: HashMap<u64, Req>,
    /// Live requests and the bytes they ask for.
    live: usize,
    live_bytes: u64,
}

impl Source {
    fn rtt_estimate(&self, initial: Duration) -> Duration {
        self.srtt.unwrap_or(initial)
    }

    fn base_rto(&self, initial: Duration) -> Duration {
        match self.srtt {
            None => initial,
            Some(s) => (s + 4 * self.rttvar).clamp(MIN_RTO, MAX_RTO),
        }
    }

    fn rto(&self, initial: Duration) -> Duration {
        let base = self.base_rto(initial);
        let backed = base.saturating_mul(1 << self.backoff.min(10));
        backed.min(MAX_BACKOFF_RTO.max(base))
    }

    fn is_suspended(&self, now: Instant) -> bool {
        self.silent_since
            .is_some_and(|t| now.saturating_duration_since(t) >= SUSPEND_AFTER)
    }

    fn rate(&self, initial: Duration) -> f64 {
        let rtt = self.rtt_estimate(initial).as_secs_f64().max(1e-6);
        f64::from(self.cwnd) / rtt
    }

    fn refill(&mut self, now: Instant, initial: Duration) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate(initial)).min(MAX_BURST);
        self.refilled = now;
    }

    /// RFC 6298 smoothing.
    fn on_rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
    }

    fn on_progress(&mut self, max_window: u32) {
        self.backoff = 0;
        if self.cwnd < self.ssthresh {
            self.cwnd += 1;
        } else {
            self.ca_acked += 1;
            if self.ca_acked >= self.cwnd {
                self.ca_acked = 0;
                self.cwnd += 1;
            }
        }
        self.cwnd = self.cwnd.min(max_window.max(1));
    }

    /// A loss: halve at most once per RTT; the backoff doubles on the same schedule so that a
    /// whole window expiring at once counts as one timeout, not as many.
    fn on_loss(&mut self, now: Instant, initial: Duration, max_window: u32) {
        let rtt = self.rtt_estimate(initial);
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < rtt)
        {
            return;
        }
        self.last_decrease = Some(now);
        self.ssthresh = (self.cwnd / 2).max(2);
        self.cwnd = self.ssthresh.min(max_window).max(1);
        self.ca_acked = 0;
        self.backoff = (self.backoff + 1).min(10);
    }
}

/// IPv4-mapped IPv6 addresses are kept as IPv4 (spec 2).
fn normalise(addr: SocketAddr) -> SocketAddr {
    if let SocketAddr::V6(v6) = addr {
        if let Some(v4) = v6.ip().to_ipv4_mapped() {
            return SocketAddr::new(v4.into(), addr.port());
        }
    }
    addr
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
    /// Block ranges `[first, end)` to serve before the cursor.
    requeue: VecDeque<(u64, u64)>,
    sources: Vec<Source>,
    next_source_id: u64,
    /// Round-robin position over `sources`.
    rr: usize,
    /// Every live request's deadline and every expired request's forget time:
    /// `(when, source id, offset)`.
    timers: BTreeSet<(Instant, u64, u64)>,
    /// `now` of the last `poll_request`, so `poll_timeout` never reports a slot already tried.
    last_poll: Option<Instant>,
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

    /// Adds a source (or updates whether it is ferry). Ignored beyond `max_sources`.
    /// `ferry_max_length`: the peer's announced largest reply, if it is ferry.
    pub fn add_source(&mut self, now: Instant, addr: SocketAddr, ferry_max_length: Option<u32>) {
        let addr = normalise(addr);
        let block = match ferry_max_length {
            Some(m) => block_len(self.cfg.ferry_block.min(m)),
            None => block_len(self.cfg.ref_block),
        };
        if let Some(s) = self.sources.iter_mut().find(|s| s.addr == addr) {
            s.is_ferry = ferry_max_length.is_some();
            s.block = block;
            return;
        }
        if self.sources.len() >= self.cfg.max_sources {
            return;
        }
        self.next_source_id += 1;
        self.sources.push(Source {
            id: self.next_source_id,
            addr,
            is_ferry: ferry_max_length.is_some(),
            block,
            cwnd: INITIAL_CWND.min(self.cfg.max_window.max(1)),
            ssthresh: INITIAL_SSTHRESH,
            ca_acked: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            backoff: 0,
            last_decrease: None,
            tokens: MAX_BURST,
            refilled: now,
            last_sent: None,
            silent_since: None,
            reqs: HashMap::new(),
            live: 0,
            live_bytes: 0,
        });
    }

    /// Seeds a source's RTT from the peer table (spec 6.3) when it has no sample of its own.
    pub fn set_initial_rtt(&mut self, addr: SocketAddr, rtt: Duration) {
        let addr = normalise(addr);
        if let Some(s) = self.sources.iter_mut().find(|s| s.addr == addr) {
            if s.srtt.is_none() {
                s.on_rtt_sample(rtt);
            }
        }
    }

    /// Removes a source; its ranges in flight go back to the front of the missing set.
    pub fn remove_source(&mut self, addr: SocketAddr) {
        let addr = normalise(addr);
        if let Some(si) = self.sources.iter().position(|s| s.addr == addr) {
            self.remove_source_at(si);
        }
    }

    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources.iter().map(|s| s.addr).collect()
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
    /// silent for 30 s.
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
            } else {
                self.expire(si, offset, req, now);
            }
        }
        let mut i = 0;
        while i < self.sources.len() {
            let silent = self.sources[i]
                .silent_since
                .is_some_and(|t| now.saturating_duration_since(t) >= DROP_AFTER);
            if silent {
                self.remove_source_at(i);
                self.stats.sources_dropped += 1;
            } else {
                i += 1;
            }
        }
    }

    /// A `Content` element from a VERIFIED datagram of `from` for this id (spec 6.7 rules).
    pub fn on_content(
        &mut self,
        now: Instant,
        from: SocketAddr,
        offset: u64,
        data_len: usize,
        eof: Option<u64>,
    ) -> Accept {
        let from = normalise(from);
        let Some(si) = self.sources.iter().position(|s| s.addr == from) else {
            return self.drop_element("content from an address that is not a source");
        };
        let Some(req) = self.sources[si].reqs.get(&offset).copied() else {
            return self.drop_element("content for an offset not requested from this source");
        };
        if req
            .expired_at
            .is_some_and(|t| now.saturating_duration_since(t) >= LATE_REPLY_GRACE)
        {
            return self.drop_element("content for a request expired over 2 s ago");
        }
        let Some(e) = eof else {
            return self.drop_element("content without eof");
        };
        if e > self.cfg.max_eof {
            return self.drop_source(si, "eof above max_eof");
        }
        if e == 0 && self.id != EMPTY_ID {
            return self.drop_source(si, "eof 0 for an id that is not the empty file");
        }
        if self.eof().is_some_and(|known| known != e) {
            return self.drop_source(si, "conflicting eof");
        }
        let len = data_len as u64;
        let end = offset.saturating_add(len);
        if data_len <= MAX_TEASER && end < e {
            return self.teaser(si, offset, req);
        }
        if len > u64::from(req.len) {
            return self.drop_element("content longer than requested");
        }
        if end > e {
            return self.drop_source(si, "content past eof");
        }
        if len % BLOCK != 0 && end != e {
            return self.drop_source(
                si,
                "content length neither a multiple of 4096 nor up to eof",
            );
        }

        // Accepted: the source answered this request.
        let max_window = self.cfg.max_window;
        let src = &mut self.sources[si];
        src.silent_since = None;
        src.reqs.remove(&offset);
        let was_live = req.expired_at.is_none();
        if was_live {
            src.live -= 1;
            src.live_bytes -= u64::from(req.len);
            self.timers.remove(&(req.deadline, src.id, offset));
        }
        if !req.is_retransmitted {
            src.on_rtt_sample(now.saturating_duration_since(req.sent));
        }
        src.on_progress(max_window);
        if len >= BLOCK && len < u64::from(req.len) && end < e {
            src.block = src.block.min(block_len(data_len as u32));
        }
        if self.blocks.is_none() {
            self.fix_eof(e, from);
        }
        if was_live {
            self.release(si, offset, req.len);
        }
        let b = self.blocks.as_mut().expect("eof fixed above");
        if b.n == 0 {
            // The empty file: nothing to write, and now complete.
            return Accept::Store { offset: 0, len: 0 };
        }
        let (first, stop) = b.span(offset, len);
        let Some(run_start) = (first..stop).find(|&i| !b.accepted.get(i)) else {
            let (rf, rs) = b.span(offset, u64::from(req.len));
            if (rf..rs).any(|i| b.is_needed(i)) {
                self.requeue.push_front((rf, rs));
            }
            self.stats.dup_replies += 1;
            return Accept::Drop("duplicate: every block already accepted");
        };
        let mut run_end = run_start;
        while run_end < stop && !b.accepted.get(run_end) {
            b.accepted.set(run_end);
            run_end += 1;
        }
        // Whatever the request covered and this reply did not deliver goes back to the front.
        let (rf, rs) = b.span(offset, u64::from(req.len));
        if (rf..rs).any(|i| b.is_needed(i)) {
            self.requeue.push_front((rf, rs));
        }
        let store_offset = (run_start * BLOCK).max(offset);
        let store_end = (run_end * BLOCK).min(end);
        Accept::Store {
            offset: store_offset,
            len: (store_end - store_offset) as usize,
        }
    }

    /// The driver wrote the stored bytes (blocks may be marked only after the data is written).
    pub fn mark_stored(&mut self, offset: u64, len: usize) {
        let Some(b) = self.blocks.as_mut() else {
            return;
        };
        let end = offset.saturating_add(len as u64).min(b.eof);
        let mut i = offset.div_ceil(BLOCK);
        while i < b.n {
            let block_end = ((i + 1) * BLOCK).min(b.eof);
            if block_end > end {
                break;
            }
            if !b.have.get(i) {
                b.have.set(i);
                b.accepted.set(i);
                b.have_count += 1;
            }
            i += 1;
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
            s.silent_since = None;
        }
        self.rr = 0;
        self.timers.clear();
        self.requeue.clear();
        self.cursor = 0;
        self.blocks = self.preset_eof.map(Blocks::new);
        self.stats.restarts += 1;
    }

    /// Requests sent, retransmits, losses, duplicate replies, per-source cwnd/srtt.
    pub fn stats(&self) -> DownloadStats {
        let mut st = self.stats.clone();
        let initial = self.cfg.initial_rto;
        let now = self.last_poll;
        st.sources = self
            .sources
            .iter()
            .map(|s| SourceStats {
                addr: s.addr,
                is_ferry: s.is_ferry,
                block_size: s.block,
                cwnd: s.cwnd,
                ssthresh: s.ssthresh,
                srtt: s.srtt,
                rto: s.rto(initial),
                in_flight: s.live,
                is_suspended: now.is_some_and(|t| s.is_suspended(t)),
            })
            .collect();
        st
    }

    fn drop_element(&mut self, why: &'static str) -> Accept {
        self.stats.dropped += 1;
        Accept::Drop(why)
    }

    fn drop_source(&mut self, si: usize, why: &'static str) -> Accept {
        self.stats.dropped += 1;
        self.stats.sources_dropped += 1;
        self.remove_source_at(si);
        Accept::DropSource(why)
    }

    fn teaser(&mut self, si: usize, offset: u64, req: Req) -> Accept {
        self.stats.teasers += 1;
        let src = &mut self.sources[si];
        src.silent_since = None;
        src.reqs.remove(&offset);
        if req.expired_at.is_none() {
            src.live -= 1;
            src.live_bytes -= u64::from(req.len);
            self.timers.remove(&(req.deadline, src.id, offset));
            if self.blocks.is_some() {
                self.release(si, offset, req.len);
                let b = self.blocks.as_ref().expect("checked");
                let (f, s) = b.span(offset, u64::from(req.len));
                self.requeue.push_front((f, s));
            }
        }
        Accept::Teaser
    }

    fn fix_eof(&mut self, eof: u64, from: SocketAddr) {
        let mut b = Blocks::new(eof);
        // Offset-0 requests still in flight to other sources keep their blocks pending.
        for s in &self.sources {
            for (&off, r) in &s.reqs {
                if r.expired_at.is_none() {
                    let (f, e) = b.span(off, u64::from(r.len));
                    (f..e).for_each(|i| b.pending.set(i));
                }
            }
        }
        self.blocks = Some(b);
        self.eof_source = Some(from);
        self.cursor = 0;
    }

    fn may_send(&self, si: usize, now: Instant) -> bool {
        let s = &self.sources[si];
        if s.tokens + TOKEN_SLACK < 1.0 {
            return false;
        }
        let in_flight: u64 = self.sources.iter().map(|s| s.live_bytes).sum();
        if in_flight + u64::from(s.block) > self.cfg.max_bytes_in_flight && in_flight > 0 {
            return false;
        }
        let suspended = s.is_suspended(now);
        if suspended && s.last_sent.is_some_and(|t| now < t + SUSPENDED_INTERVAL) {
            return false;
        }
        if self.blocks.is_none() {
            // Until eof is known, one request per source, for offset 0.
            return s.live == 0;
        }
        let window = if suspended { 1 } else { s.cwnd };
        s.live < window as usize
    }

    /// `(offset, length, is_retransmit, is_endgame_copy)` for source `si`.
    fn pick_work(&mut self, si: usize, now: Instant) -> Option<(u64, u32, bool, bool)> {
        let src_block = self.sources[si].block;
        let is_ferry = self.sources[si].is_ferry;
        let Some(b) = self.blocks.as_ref() else {
            let again = self.sources[si].reqs.contains_key(&0);
            return Some((0, src_block, again, false));
        };
        let per = u64::from(src_block) / BLOCK;
        // A run of needed blocks from `start`, at most one source block, aligned to the block
        // size toward ferry (ref sources only need 4096 alignment).
        let run = |b: &Blocks, start: u64, limit: u64| -> u64 {
            let cap = if is_ferry {
                (start / per + 1) * per
            } else {
                start + per
            };
            let stop = cap.min(limit).min(b.n);
            let mut j = start;
            while j < stop && b.is_needed(j) {
                j += 1;
            }
            j
        };
        let length = |b: &Blocks, start: u64, stop: u64| -> u32 {
            let off = start * BLOCK;
            let mut len = (stop - start) * BLOCK;
            if is_ferry {
                len = len.min(b.eof - off);
            }
            len as u32
        };
        while let Some((first, end)) = self.requeue.pop_front() {
            let Some(start) = (first..end.min(b.n)).find(|&i| b.is_needed(i)) else {
                continue;
            };
            let stop = run(b, start, end);
            if stop < end {
                self.requeue.push_front((stop, end));
            }
            return Some((start * BLOCK, length(b, start, stop), true, false));
        }
        if let Some(start) = b.next_needed(self.cursor) {
            let stop = run(b, start, b.n);
            self.cursor = stop;
            return Some((start * BLOCK, length(b, start, stop), false, false));
        }
        self.cursor = b.n;
        self.endgame_copy(si, now).map(|(o, l)| (o, l, true, true))
    }

    /// Endgame: the oldest range in flight at another source for longer than that source's srtt,
    /// with fewer than 2 copies and a block still not accepted, that this source can ask for
    /// with the same length. (A range whose blocks all arrived must not be copied again: the
    /// other copy is still in flight, and copying it back and forth would carry the same bytes
    /// until the download ends.)
    fn endgame_copy(&self, si: usize, now: Instant) -> Option<(u64, u32)> {
        let me = &self.sources[si];
        let initial = self.cfg.initial_rto;
        let b = self.blocks.as_ref()?;
        let mut best: Option<(Instant, u64, u32)> = None;
        for (ti, t) in self.sources.iter().enumerate() {
            if ti == si {
                continue;
            }
            let rtt = t.rtt_estimate(initial);
            for (&off, r) in &t.reqs {
                if r.expired_at.is_some() || now.saturating_duration_since(r.sent) <= rtt {
                    continue;
                }
                if r.len > me.block || me.reqs.get(&off).is_some_and(|m| m.expired_at.is_none()) {
                    continue;
                }
                if best.is_some_and(|(sent, _, _)| sent <= r.sent) {
                    continue;
                }
                if self.live_copies(off) >= MAX_COPIES {
                    continue;
                }
                let (f, e) = b.span(off, u64::from(r.len));
                if (f..e).all(|i| b.accepted.get(i)) {
                    continue;
                }
                best = Some((r.sent, off, r.len));
            }
        }
        best.map(|(_, off, len)| (off, len))
    }

    fn live_copies(&self, offset: u64) -> usize {
        self.sources
            .iter()
            .filter(|s| s.reqs.get(&offset).is_some_and(|r| r.expired_at.is_none()))
            .count()
    }

    fn send(&mut self, si: usize, now: Instant, offset: u64, len: u32) {
        let initial = self.cfg.initial_rto;
        let s = &mut self.sources[si];
        let rto = s.rto(initial);
        let again = match s.reqs.get(&offset) {
            Some(old) => {
                self.timers.remove(&(old.deadline, s.id, offset));
                if old.expired_at.is_none() {
                    s.live -= 1;
                    s.live_bytes -= u64::from(old.len);
                }
                true
            }
            None => false,
        };
        let deadline = now + rto;
        s.reqs.insert(
            offset,
            Req {
                len,
                sent: now,
                deadline,
                is_retransmitted: again,
                expired_at: None,
            },
        );
        s.live += 1;
        s.live_bytes += u64::from(len);
        s.tokens -= 1.0;
        s.last_sent = Some(now);
        s.silent_since.get_or_insert(now);
        self.timers.insert((deadline, s.id, offset));
        if let Some(b) = self.blocks.as_mut() {
            let (f, e) = b.span(offset, u64::from(len));
            (f..e).for_each(|i| b.pending.set(i));
        }
    }

    fn expire(&mut self, si: usize, offset: u64, req: Req, now: Instant) {
        let (initial, max_window) = (self.cfg.initial_rto, self.cfg.max_window);
        let s = &mut self.sources[si];
        s.live -= 1;
        s.live_bytes -= u64::from(req.len);
        if let Some(b) = self.blocks.as_ref() {
            let (f, e) = b.span(offset, u64::from(req.len));
            if (f..e).all(|i| b.accepted.get(i)) {
                // An endgame copy whose range arrived from elsewhere: nothing was lost.
                s.reqs.remove(&offset);
                return;
            }
        }
        let forget = now + LATE_REPLY_GRACE;
        s.reqs.insert(
            offset,
            Req {
                deadline: forget,
                expired_at: Some(now),
                ..req
            },
        );
        self.timers.insert((forget, s.id, offset));
        s.on_loss(now, initial, max_window);
        self.stats.losses += 1;
        if self.blocks.is_some() {
            self.release(si, offset, req.len);
            let b = self.blocks.as_ref().expect("checked");
            let (f, e) = b.span(offset, u64::from(req.len));
            if (f..e).any(|i| b.is_needed(i)) {
                self.requeue.push_front((f, e));
            }
        }
    }

    /// Clears the pending bits of a request that is no longer live, unless another source
    /// still has a live copy of the same range.
    fn release(&mut self, si: usize, offset: u64, len: u32) {
        let other_copy = self.sources.iter().enumerate().any(|(ti, t)| {
            ti != si
                && t.reqs
                    .get(&offset)
                    .is_some_and(|r| r.expired_at.is_none() && r.len >= len)
        });
        if other_copy {
            return;
        }
        if let Some(b) = self.blocks.as_mut() {
            let (f, e) = b.span(offset, u64::from(len));
            (f..e).for_each(|i| b.pending.clear(i));
        }
    }

    fn remove_source_at(&mut self, si: usize) {
        let s = self.sources.remove(si);
        let mut ranges = Vec::new();
        for (&off, r) in &s.reqs {
            self.timers.remove(&(r.deadline, s.id, off));
            if r.expired_at.is_none() {
                ranges.push((off, r.len));
            }
        }
        // Pushed to the front highest first, so the lowest offset is asked first.
        ranges.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (off, len) in ranges {
            // `si` no longer names anything; usize::MAX matches no source.
            self.release(usize::MAX, off, len);
            if let Some(b) = self.blocks.as_ref() {
                let (f, e) = b.span(off, u64::from(len));
                if (f..e).any(|i| b.is_needed(i)) {
                    self.requeue.push_front((f, e));
                }
            }
        }
        if !self.sources.is_empty() {
            self.rr %= self.sources.len();
        } else {
            self.rr = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const MS: Duration = Duration::from_millis(1);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn id() -> [u8; 32] {
        [0x42; 32]
    }

    fn one_source(eof: Option<u64>) -> (Download, Instant, SocketAddr) {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), eof);
        dl.add_source(t0, addr(1), None);
        (dl, t0, addr(1))
    }

    fn drain(dl: &mut Download, now: Instant) -> Vec<Request> {
        std::iter::from_fn(|| dl.poll_request(now)).collect()
    }

    /// Answers every request in `reqs` fully, as a reference seeder with file length `eof` would.
    fn answer_all(dl: &mut Download, now: Instant, reqs: &[Request], eof: u64) {
        for r in reqs {
            let n = u64::from(r.length)
                .min(40960)
                .min(eof.saturating_sub(r.offset)) as usize;
            if let Accept::Store { offset, len } = dl.on_content(now, r.to, r.offset, n, Some(eof))
            {
                dl.mark_stored(offset, len);
            }
        }
    }

    // ---- request sizes (6.1, C26) ----

    #[test]
    fn c26_ref_source_gets_4096_aligned_4096_byte_requests() {
        let (mut dl, t0, a) = one_source(Some(100_000));
        let mut now = t0;
        let mut seen = Vec::new();
        while !dl.is_complete() {
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
    }

    #[test]
    fn ferry_source_gets_aligned_ferry_blocks_cut_at_eof() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(100_000));
        dl.add_source(t0, addr(1), Some(40960));
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

    // ---- window and pacing (6.2, C27) ----

    #[test]
    fn c27_cwnd_grows_on_success_and_never_exceeds_max_window() {
        let t0 = Instant::now();
        let cfg = DownloadConfig {
            max_window: 16,
            ..DownloadConfig::default()
        };
        let mut dl = Download::new(id(), cfg, Some(4 << 20));
        dl.add_source(t0, addr(1), None);
        let mut now = t0;
        let mut max_cwnd = 0;
        let mut grew = false;
        while !dl.is_complete() {
            let before = dl.stats().sources[0].cwnd;
            let reqs = drain(&mut dl, now);
            assert!(reqs.len() <= 16);
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, 4 << 20);
            let after = dl.stats().sources[0].cwnd;
            grew |= after > before;
            max_cwnd = max_cwnd.max(after);
            assert!(after <= 16);
        }
        assert!(grew);
        assert_eq!(max_cwnd, 16);
    }

    #[test]
    fn c27_pacing_releases_at_most_4_back_to_back() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(64 << 20));
        dl.add_source(t0, addr(1), None);
        let mut now = t0;
        // Grow the window with prompt replies.
        for _ in 0..40 {
            let reqs = drain(&mut dl, now);
            assert!(reqs.len() <= 4, "burst of {}", reqs.len());
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, 64 << 20);
        }
        let st = dl.stats();
        assert!(st.sources[0].cwnd > 40, "cwnd {}", st.sources[0].cwnd);
        // A long stall refills the bucket to 4 only.
        now += Duration::from_millis(100);
        assert_eq!(drain(&mut dl, now).len(), 4);
        // The next slot is srtt / cwnd away and is what poll_timeout reports.
        let slot = dl.poll_timeout().unwrap();
        assert!(slot > now && slot < now + 2 * MS, "{:?}", slot - now);
        assert!(dl.poll_request(now).is_none());
        assert!(dl.poll_request(slot).is_some());
    }

    #[test]
    fn c27_loss_halves_cwnd_at_most_once_per_rtt() {
        let (mut dl, t0, _) = one_source(Some(64 << 20));
        let mut now = t0;
        for _ in 0..6 {
            let reqs = drain(&mut dl, now);
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, 64 << 20);
        }
        let cwnd = dl.stats().sources[0].cwnd;
        assert!(cwnd >= 20, "cwnd {cwnd}");
        // Send a window and lose all of it: the timers fire together; one decrease.
        let mut sent = 0;
        for _ in 0..20 {
            sent += drain(&mut dl, now).len();
            now += MS;
        }
        assert!(sent >= 8);
        let due = dl.poll_timeout().unwrap();
        now = now.max(due) + 20 * MS;
        dl.handle_timeout(now);
        let st = dl.stats();
        assert!(st.losses >= 8, "losses {}", st.losses);
        assert_eq!(st.sources[0].cwnd, (cwnd / 2).max(2));
        assert_eq!(st.sources[0].ssthresh, (cwnd / 2).max(2));
    }

    #[test]
    fn bytes_in_flight_stay_within_max_bytes_in_flight() {
        let t0 = Instant::now();
        let cfg = DownloadConfig {
            max_bytes_in_flight: 3 * 4096,
            ..DownloadConfig::default()
        };
        let mut dl = Download::new(id(), cfg, Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        assert_eq!(drain(&mut dl, t0).len(), 3);
        let t1 = t0 + 250 * MS;
        dl.handle_timeout(t1);
        assert_eq!(
            drain(&mut dl, t1).len(),
            3,
            "expired requests no longer count"
        );
    }

    // ---- retransmission (6.3, C28) ----

    #[test]
    fn c28_every_request_has_its_own_timer_and_no_sweep() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let r1 = dl.poll_request(t0).unwrap();
        let t1 = t0 + 7 * MS;
        let r2 = dl.poll_request(t1).unwrap();
        // Exactly the first request's deadline, initial RTO 250 ms; nothing periodic before it.
        assert_eq!(dl.poll_timeout(), Some(t0 + 250 * MS));
        dl.handle_timeout(t0 + 249 * MS);
        assert_eq!(dl.stats().losses, 0);
        dl.handle_timeout(t0 + 250 * MS);
        assert_eq!(dl.stats().losses, 1);
        // The next timer is r2's.
        assert_eq!(dl.poll_timeout(), Some(t1 + 250 * MS));
        // r1's range goes back to the FRONT: it is the next request, a retransmission.
        let again = dl.poll_request(t0 + 250 * MS).unwrap();
        assert_eq!(
            (again.offset, again.length, again.to),
            (r1.offset, r1.length, a)
        );
        assert_ne!(r2.offset, r1.offset);
        assert_eq!(dl.stats().retransmits, 1);
    }

    #[test]
    fn c28_rto_doubles_on_consecutive_timeouts_and_karn_skips_retransmitted_samples() {
        let (mut dl, t0, a) = one_source(None);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..4 {
            let r = dl.poll_request(now).unwrap();
            assert_eq!(r.offset, 0);
            let due = dl.poll_timeout().unwrap();
            gaps.push(due - now);
            now = due;
            dl.handle_timeout(now);
        }
        assert_eq!(gaps, vec![250 * MS, 500 * MS, 1000 * MS, 2000 * MS]);
        // A reply to the retransmitted request gives no RTT sample (Karn), but resets backoff.
        dl.poll_request(now).unwrap();
        now += 30 * MS;
        assert!(matches!(
            dl.on_content(now, a, 0, 4096, Some(1 << 20)),
            Accept::Store { .. }
        ));
        let st = dl.stats();
        assert_eq!(st.sources[0].srtt, None);
        assert_eq!(st.sources[0].rto, 250 * MS);
    }

    #[test]
    fn rto_follows_srtt_within_20ms_and_2s() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let r = dl.poll_request(t0).unwrap();
        dl.on_content(t0 + MS, a, r.offset, 4096, Some(1 << 20));
        let st = dl.stats();
        assert_eq!(st.sources[0].srtt, Some(MS));
        assert_eq!(st.sources[0].rto, 20 * MS, "3 ms clamped up to 20 ms");
        let r = dl.poll_request(t0 + MS).unwrap();
        dl.on_content(
            t0 + Duration::from_secs(20),
            a,
            r.offset,
            4096,
            Some(1 << 20),
        );
        assert_eq!(dl.stats().sources[0].rto, 2000 * MS);
    }

    #[test]
    fn late_reply_accepted_within_2s_of_expiry_then_dropped() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let r1 = dl.poll_request(t0).unwrap();
        let r2 = dl.poll_request(t0).unwrap();
        let t1 = t0 + 250 * MS;
        dl.handle_timeout(t1);
        assert_eq!(dl.stats().losses, 2);
        let late = t1 + 1999 * MS;
        assert_eq!(
            dl.on_content(late, a, r1.offset, 4096, Some(1 << 20)),
            Accept::Store {
                offset: r1.offset,
                len: 4096
            }
        );
        dl.handle_timeout(t1 + 2000 * MS);
        assert!(matches!(
            dl.on_content(t1 + 2000 * MS, a, r2.offset, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
    }

    // ---- sources (6.3, 6.4) ----

    #[test]
    fn silent_source_is_suspended_after_8s_and_dropped_after_30s() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let mut now = t0;
        let mut sends = Vec::new();
        while now < t0 + Duration::from_secs(40) {
            while let Some(r) = dl.poll_request(now) {
                sends.push((now, r));
            }
            let Some(due) = dl.poll_timeout() else { break };
            assert!(due > now, "poll_timeout must not spin");
            now = due;
            dl.handle_timeout(now);
        }
        assert!(dl.sources().is_empty(), "dropped");
        assert_eq!(dl.stats().sources_dropped, 1);
        let last = sends.last().unwrap().0;
        assert!(last < t0 + Duration::from_secs(30));
        // After 8 s of silence: at most one request per 2 s.
        let late: Vec<_> = sends.iter().filter(|(t, _)| *t >= t0 + 8500 * MS).collect();
        assert!(!late.is_empty());
        for w in late.windows(2) {
            assert!(
                w[1].0 - w[0].0 >= SUSPENDED_INTERVAL,
                "{:?}",
                w[1].0 - w[0].0
            );
        }
        assert!(sends.iter().all(|(_, r)| r.to == a));
    }

    #[test]
    fn removed_source_ranges_go_to_another_source() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        let first = drain(&mut dl, t0);
        assert_eq!(first.len(), 4);
        dl.add_source(t0, addr(2), None);
        dl.remove_source(addr(1));
        let second = drain(&mut dl, t0);
        let offs: Vec<_> = second.iter().map(|r| (r.to, r.offset)).collect();
        let want: Vec<_> = first.iter().map(|r| (addr(2), r.offset)).collect();
        assert_eq!(offs, want);
    }

    #[test]
    fn sources_are_capped_and_ipv4_mapped_addresses_normalised() {
        let t0 = Instant::now();
        let cfg = DownloadConfig {
            max_sources: 2,
            ..DownloadConfig::default()
        };
        let mut dl = Download::new(id(), cfg, None);
        dl.add_source(t0, "[::ffff:127.0.0.1]:1".parse().unwrap(), None);
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        dl.add_source(t0, addr(3), None);
        assert_eq!(dl.sources(), vec![addr(1), addr(2)]);
    }

    // ---- acceptance (6.7, C33-C36, section 9) ----

    #[test]
    fn c33_eof_above_max_eof_drops_the_source_and_allocates_nothing() {
        let (mut dl, t0, a) = one_source(None);
        dl.poll_request(t0).unwrap();
        let got = dl.on_content(t0 + MS, a, 0, 4096, Some(1 << 50));
        assert!(matches!(got, Accept::DropSource(_)));
        assert!(dl.blocks.is_none());
        assert_eq!(dl.eof(), None);
        assert!(dl.sources().is_empty());
    }

    #[test]
    fn reference_crash_eof_2_pow_50_refused_without_a_bitmap() {
        // Section 9: the reference created a 32 GiB sparse bitmap for this first reply.
        let (mut dl, t0, a) = one_source(None);
        dl.poll_request(t0).unwrap();
        let got = dl.on_content(t0 + MS, a, 0, 4096, Some(1_125_899_906_842_624));
        assert_eq!(got, Accept::DropSource("eof above max_eof"));
        assert!(dl.blocks.is_none());
        assert_eq!(dl.received_bytes(), 0);
    }

    #[test]
    fn reference_crash_unaligned_offset_9999_near_eof_10000_dropped() {
        // Section 9: 4096 bytes at offset 9999 of a 10000-byte download; the reference wrote
        // past its mapping.
        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        let got = dl.on_content(t0 + MS, a, 9999, 4096, Some(10000));
        assert!(matches!(got, Accept::Drop(_)));
        assert_eq!(dl.received_bytes(), 0);
        assert!(!dl.has_block(2));
    }

    #[test]
    fn c34_unaligned_longer_past_eof_bad_length_and_conflicting_eof_are_dropped() {
        let (mut dl, t0, a) = one_source(Some(10000));
        let reqs = drain(&mut dl, t0);
        assert_eq!(
            reqs.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![0, 4096, 8192]
        );
        let t = t0 + MS;
        assert!(matches!(
            dl.on_content(t, a, 100, 4096, Some(10000)),
            Accept::Drop(_)
        ));
        assert_eq!(
            dl.on_content(t, a, 0, 8192, Some(10000)),
            Accept::Drop("content longer than requested")
        );
        assert_eq!(
            dl.on_content(t, a, 4096, 4096, Some(10000)),
            Accept::Store {
                offset: 4096,
                len: 4096
            }
        );
        assert_eq!(dl.stats().dropped, 2);
        // Conflicting eof: the source is dropped and its request goes back to the missing set.
        assert!(matches!(
            dl.on_content(t, a, 0, 4096, Some(20000)),
            Accept::DropSource(_)
        ));
        assert!(dl.sources().is_empty());
        assert_eq!(dl.eof(), Some(10000));

        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 8192, 4096, Some(10000)),
            Accept::DropSource("content past eof")
        );
        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        assert!(matches!(
            dl.on_content(t0, a, 0, 1000, Some(10000)),
            Accept::DropSource(_)
        ));
        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        assert!(matches!(
            dl.on_content(t0, a, 0, 4096, None),
            Accept::Drop(_)
        ));
    }

    #[test]
    fn c35_content_for_an_offset_never_requested_or_from_another_source_is_dropped() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        let r = dl.poll_request(t0).unwrap();
        assert_eq!(r.to, addr(1));
        let other = if r.to == addr(1) { addr(2) } else { addr(1) };
        assert!(matches!(
            dl.on_content(t0, other, r.offset, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
        assert!(matches!(
            dl.on_content(t0, addr(9), r.offset, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
        assert!(matches!(
            dl.on_content(t0, r.to, 512 << 10, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
        assert_eq!(dl.received_bytes(), 0);
        assert_eq!(dl.sources().len(), 2);
    }

    #[test]
    fn c36_teasers_are_neither_data_nor_loss_and_are_requested_again() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let reqs = drain(&mut dl, t0);
        let cwnd = dl.stats().sources[0].cwnd;
        let t1 = t0 + 10 * MS;
        assert_eq!(
            dl.on_content(t1, a, reqs[0].offset, 32, Some(1 << 20)),
            Accept::Teaser
        );
        assert_eq!(
            dl.on_content(t1, a, reqs[1].offset, 0, Some(1 << 20)),
            Accept::Teaser
        );
        let st = dl.stats();
        assert_eq!((st.losses, st.teasers, st.sources[0].cwnd), (0, 2, cwnd));
        assert_eq!(dl.received_bytes(), 0);
        // Both teased ranges are asked again before anything new.
        let again: Vec<_> = drain(&mut dl, t1 + 200 * MS)
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(&again[..2], &[reqs[1].offset, reqs[0].offset]);
    }

    #[test]
    fn c36_a_32_byte_reply_reaching_eof_is_data() {
        let (mut dl, t0, a) = one_source(Some(4096 + 32));
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 4096, 32, Some(4128)),
            Accept::Store {
                offset: 4096,
                len: 32
            }
        );
        let (mut dl, t0, a) = one_source(None);
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 0, 5, Some(5)),
            Accept::Store { offset: 0, len: 5 }
        );
        dl.mark_stored(0, 5);
        assert!(dl.is_complete());
        assert_eq!(dl.received_bytes(), 5);
    }

    #[test]
    fn eof_0_only_for_the_empty_file_id() {
        let (mut dl, t0, a) = one_source(None);
        drain(&mut dl, t0);
        assert!(matches!(
            dl.on_content(t0, a, 0, 0, Some(0)),
            Accept::DropSource(_)
        ));
        let t0 = Instant::now();
        let mut dl = Download::new(EMPTY_ID, DownloadConfig::default(), None);
        dl.add_source(t0, a, None);
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 0, 0, Some(0)),
            Accept::Store { offset: 0, len: 0 }
        );
        assert!(dl.is_complete());
        assert_eq!(dl.poll_request(t0), None);
    }

    #[test]
    fn short_multiple_of_4096_reply_kept_rest_requeued_and_block_size_lowered() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), Some(40960));
        let r = dl.poll_request(t0).unwrap();
        assert_eq!((r.offset, r.length), (0, 32768));
        let got = dl.on_content(t0 + MS, addr(1), 0, 8192, Some(1 << 20));
        assert_eq!(
            got,
            Accept::Store {
                offset: 0,
                len: 8192
            }
        );
        assert_eq!(dl.stats().sources[0].block_size, 8192);
        let next: Vec<_> = drain(&mut dl, t0 + MS)
            .iter()
            .map(|r| (r.offset, r.length))
            .collect();
        assert_eq!(&next[..3], &[(8192, 8192), (16384, 8192), (24576, 8192)]);
    }

    #[test]
    fn late_reply_overlapping_an_accepted_block_stores_only_the_new_blocks() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), Some(40960));
        dl.add_source(t0, addr(2), None);
        let r = dl.poll_request(t0).unwrap();
        assert_eq!((r.to, r.offset, r.length), (addr(1), 0, 32768));
        // addr(1)'s request expires; its range 0..8 goes to addr(2), 4096 at a time.
        let t1 = t0 + 250 * MS;
        dl.handle_timeout(t1);
        let r2 = dl.poll_request(t1).unwrap();
        assert_eq!((r2.to, r2.offset, r2.length), (addr(2), 0, 4096));
        let t2 = t1 + MS;
        assert_eq!(
            dl.on_content(t2, addr(2), 0, 4096, Some(1 << 20)),
            Accept::Store {
                offset: 0,
                len: 4096
            }
        );
        // The late 32 KiB reply of addr(1) stores only blocks 1..8, not block 0 again.
        assert_eq!(
            dl.on_content(t2, addr(1), 0, 32768, Some(1 << 20)),
            Accept::Store {
                offset: 4096,
                len: 28672
            }
        );
    }

    // ---- resume and restart ----

    #[test]
    fn c31_resume_with_half_the_blocks_requests_only_the_others() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), None);
        let eof = 64 * 4096 + 100;
        dl.resume(eof, &|i| i % 2 == 0);
        assert_eq!(dl.received_bytes(), 33 * 4096 - 4096 + 100);
        dl.add_source(t0, addr(1), None);
        let mut now = t0;
        let mut asked = Vec::new();
        while !dl.is_complete() {
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
        while !dl.is_complete() {
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
        // A preset eof (block list) survives a restart.
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(eof));
        dl.restart_after_mismatch();
        assert_eq!(dl.eof(), Some(eof));
    }

    // ---- a simulated lossy network ----

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
                    + Duration::from_micros(
                        self.rng.range(self.delay.0 * 1000, self.delay.1 * 1000),
                    );
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
}
