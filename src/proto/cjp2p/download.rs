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
/// Most requests a source may be sent back to back (the pacing bucket's depth).
const MAX_BURST: f64 = 4.0;
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
    live: usize,
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

/// Rounds a request length down to a multiple of 4096, at least 4096.
fn block_len(len: u32) -> u32 {
    (len / BLOCK as u32).max(1) * BLOCK as u32
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
    pub fn new(id: [u8; 32], cfg: DownloadConfig, known_eof: Option<u64>) -> Download {
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
        if eof > self.cfg.max_eof || self.eof().is_some_and(|e| e != eof) {
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
        let mut due = self.timers.first().map(|t| t.0);
        let mut consider = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        let active = !self.is_complete();
        for s in &self.sources {
            if let Some(t) = s.silent_since {
                consider(t + DROP_AFTER);
            }
            let Some(last) = self.last_poll else { continue };
            if !active {
                continue;
            }
            if s.tokens < 1.0 {
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
        if s.tokens < 1.0 {
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
    /// with fewer than 2 copies, that this source can ask for with the same length.
    fn endgame_copy(&self, si: usize, now: Instant) -> Option<(u64, u32)> {
        let me = &self.sources[si];
        let initial = self.cfg.initial_rto;
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
