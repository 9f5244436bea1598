//! The CJP2P node state machine (cjp2p.md sections 3, 4, 5 and 8): peer table, verification of
//! every datagram, the unverified reply budget, serving content from a [`ContentStore`],
//! discovery, RTT probes and the maintenance tick. Pure: datagrams and `Instant`s come in,
//! datagrams ([`Node::poll_transmit`]) and [`NodeEvent`]s come out. Downloading (windows,
//! retransmission, which `Content` to keep) is `download`'s job; the node only hands over
//! `Content` from verified datagrams for ids marked with [`Node::set_downloading`].
//!
//! Per address, the handshake of section 4.5:
//!
//! ```text
//!             verified datagram              verified datagram with no offer,
//!  unknown ─────────────────────> verified ─────────────────────────────────> confirmed
//!  (offer attached)              (offer attached)   or with the offer we hold  (no offer)
//!                                    ^                                            │
//!                                    └──── new offer, unverified datagram, teaser ┘
//! ```
//!
//! "Confirmed" also accepts a verified datagram repeating the offer ferry already holds: two
//! ferry nodes both attach offers until confirmed, and without this they would never stop.
//!
//! Every reply to a datagram carries the echo of the sender's offer (first element) and, until
//! the address is confirmed, ferry's offer and `FerryHello` (last). Replies are split over as
//! many datagrams as the limits need; for an unverified sender their total, with 28 bytes of
//! headers each, stays within twice the request's, filled in the order offer, echo, answers,
//! `FerryHello`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::cookie::CookieJar;
use super::wire::{
    content_fit, cookie_of, cookie_payload, normalize, parse_datagram, DatagramBuilder, Id,
    ListParts, Message, MAX_OFFER,
};

/// Largest `Content` ferry serves (the reference's cap), also advertised in `FerryHello`.
pub const MAX_CONTENT_LEN: u64 = 40960;
/// Largest `Content` an unverified requester gets (a teaser).
pub const MAX_TEASER: u64 = 32;
/// Most `PleaseSendContent` served per incoming datagram.
pub const MAX_CONTENT_REQUESTS: usize = 16;
/// IPv4 + UDP header bytes counted per datagram in the unverified budget.
pub const HEADER_BYTES: usize = 28;
/// Most peers in one `Peers` answer.
pub const MAX_PEERS_ANSWER: usize = 32;
/// Most new candidates taken from one `Peers` message.
pub const MAX_NEW_CANDIDATES: usize = 16;
/// Most addresses taken from one `MaybeTheyHaveSome`, and sent in one.
pub const MAX_MAYBE: usize = 8;
/// Most ids recorded from one `ContentList`.
pub const MAX_LIST_RECORDED: usize = 72;
/// Most holders remembered per id, and most ids with holders.
pub const MAX_HOLDERS_PER_ID: usize = 32;
pub const MAX_HOLDER_IDS: usize = 4096;
/// New sources released per second per download (section 8).
pub const MAX_NEW_SOURCES_PER_SEC: usize = 4;
/// Size of block-list blocks, hidden from `ContentList` (section 7.1).
pub const BLOCK_LIST_BLOCK: u64 = 262_144;
/// Bound on addresses with recent requests remembered (solicited-reply checks).
const MAX_ASKED: usize = 4096;

const TICK: Duration = Duration::from_secs(1);
const PROBE_EVERY: Duration = Duration::from_secs(30);
const SLOW_PROBE_EVERY: Duration = Duration::from_secs(300);
const PEERS_EVERY: Duration = Duration::from_secs(300);
const PEERS_EVERY_SMALL: Duration = Duration::from_secs(30);
const SOLICITED_FOR: Duration = Duration::from_secs(10);
const MAYBE_SOLICITED_FOR: Duration = Duration::from_secs(30);
const ADVERTISE_WITHIN: Duration = Duration::from_secs(600);
const FORGET_AFTER: Duration = Duration::from_secs(600);
const STALE_AFTER_MISSED: u32 = 3;
const PROBES_TO_PEERS_PER_TICK: usize = 4;
const PROBES_TO_CANDIDATES_PER_TICK: usize = 2;

/// Read access to the catalog; there is deliberately no write path (C43).
pub trait ContentStore {
    /// Total length of the content with this id, if ferry serves it.
    fn size_of(&self, id: &[u8; 32]) -> Option<u64>;
    /// Fill `buf` from `offset`; the number of bytes read, `None` if unavailable.
    fn read_at(&self, id: &[u8; 32], offset: u64, buf: &mut [u8]) -> Option<usize>;
    /// Catalog entries for ContentList, starting at `start` (wrapping is the node's job).
    fn list(&self, start: usize, max: usize) -> Vec<([u8; 32], u64)>;
    fn count(&self) -> usize;
}

/// Node settings (cjp2p.md 1.4).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Largest datagram without `Content` toward IPv4 (default 1472).
    pub control_max: usize,
    /// Same toward IPv6 (default 1452).
    pub control_max_v6: usize,
    /// Largest datagram with `Content` (default 60000, allowed 6144..=60000).
    pub content_max: usize,
    /// Size of the peer table and of the candidate queue (default 256).
    pub max_peers: usize,
    /// Learn and contact addresses advertised by peers (default true).
    pub discovery: bool,
    /// Cookie secret rotation period, zero for never (default 6 h).
    pub cookie_rotate: Duration,
    /// Request length toward ferry peers (default 32768; informational for the driver).
    pub ferry_block: u32,
    /// Replies per second to unverified datagrams from one IP (default 64).
    pub unverified_replies_per_ip: u32,
    /// Bytes per second of replies to unverified datagrams in total (default 1 MB).
    pub unverified_bytes_per_sec: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            control_max: 1472,
            control_max_v6: 1452,
            content_max: 60000,
            max_peers: 256,
            discovery: true,
            cookie_rotate: Duration::from_secs(6 * 3600),
            ferry_block: 32768,
            unverified_replies_per_ip: 64,
            unverified_bytes_per_sec: 1_000_000,
        }
    }
}

/// What the node tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A `Content` element of a verified datagram for an id being downloaded. Whether it is
    /// kept is `download`'s decision.
    Content {
        from: SocketAddr,
        id: [u8; 32],
        offset: u64,
        data: Vec<u8>,
        eof: Option<u64>,
    },
    /// New possible sources for a download (accepted `MaybeTheyHaveSome`, paced).
    Holders {
        id: [u8; 32],
        peers: Vec<SocketAddr>,
    },
    /// A solicited, verified `ContentList` (at most 72 entries).
    ContentList {
        from: SocketAddr,
        results: Vec<([u8; 32], u64)>,
    },
    /// A solicited, verified `Peers` (valid, contactable entries).
    Peers {
        from: SocketAddr,
        peers: Vec<SocketAddr>,
    },
    /// A verified `FerryHello`: request up to `max_length` bytes from this peer.
    FerryPeer { addr: SocketAddr, max_length: u32 },
    /// An RTT sample from a probe.
    Rtt { addr: SocketAddr, rtt: Duration },
}

/// Counters for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub datagrams_in: u64,
    /// Not UTF-8 / JSON / an array, too deep, or from a forbidden or own address.
    pub dropped_datagrams: u64,
    pub bad_elements: u64,
    /// Elements past the 64th.
    pub ignored_elements: u64,
    pub verified_datagrams: u64,
    pub unverified_datagrams: u64,
    /// Replies to unverified senders not sent because of the per-IP or total rate limit.
    pub rate_limited: u64,
    /// Responses (`Peers`, `ContentList`, `ReturnedMessage`, `MaybeTheyHaveSome`, `Content`)
    /// ignored because unsolicited or unverified.
    pub ignored_messages: u64,
    /// `PleaseSendContent` past the 16th of a datagram.
    pub ignored_content_requests: u64,
    /// Answers left out because they did not fit.
    pub answers_dropped: u64,
    pub content_served: u64,
    pub teasers_served: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
}

#[derive(Debug)]
struct Peer {
    /// The offer this peer wants echoed, raw.
    offer: Option<String>,
    /// Last verified datagram from it.
    verified_at: Option<Instant>,
    confirmed: bool,
    srtt: Option<Duration>,
    last_heard: Instant,
    missed_probes: u32,
    probe_outstanding: bool,
    ferry_max: Option<u32>,
    configured: bool,
    last_probe: Option<Instant>,
    last_peers_request: Option<Instant>,
}

impl Peer {
    fn new(now: Instant, configured: bool) -> Peer {
        Peer {
            offer: None,
            verified_at: None,
            confirmed: false,
            srtt: None,
            last_heard: now,
            missed_probes: 0,
            probe_outstanding: false,
            ferry_max: None,
            configured,
            last_probe: None,
            last_peers_request: None,
        }
    }
}

/// What ferry recently asked an address (for the "solicited" rules).
#[derive(Debug, Default)]
struct Asked {
    peers: Option<Instant>,
    list: Option<Instant>,
    /// RTT probe strings sent, with the time.
    probes: Vec<(String, Instant)>,
    /// Ids requested, with the time of the last request.
    content: Vec<(Id, Instant)>,
    last: Option<Instant>,
}

const MAX_PROBES_REMEMBERED: usize = 8;
const MAX_IDS_REMEMBERED: usize = 16;

/// One answer to a request, filled into reply datagrams in order.
enum Answer {
    Encoded(Vec<u8>),
    List(ListParts),
    Content {
        id: Id,
        offset: u64,
        want: usize,
        eof: u64,
    },
}

/// Rate window for unverified replies.
#[derive(Debug)]
struct Window {
    start: Instant,
    count: u64,
}

/// The CJP2P node.
pub struct Node {
    cfg: NodeConfig,
    jar: CookieJar,
    started: Instant,
    local: Vec<SocketAddr>,
    peers: HashMap<SocketAddr, Peer>,
    candidates: VecDeque<SocketAddr>,
    /// Candidates probed, not to be retried for 10 minutes.
    probed_candidates: HashMap<SocketAddr, Instant>,
    /// Offers from unverified datagrams of addresses not in the peer table.
    pending_offers: HashMap<SocketAddr, String>,
    asked: HashMap<SocketAddr, Asked>,
    downloading: HashSet<Id>,
    holders: HashMap<Id, Vec<SocketAddr>>,
    /// `MaybeTheyHaveSome` addresses waiting to be released as `Holders` (4 per second).
    holder_queue: HashMap<Id, VecDeque<SocketAddr>>,
    holder_released: HashMap<Id, Window>,
    /// Requests toward ferry peers, batched until the next `poll_transmit`.
    batches: Vec<(SocketAddr, Vec<Message>)>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<NodeEvent>,
    unverified_per_ip: HashMap<IpAddr, Window>,
    unverified_bytes: Window,
    list_cursor: usize,
    next_tick: Instant,
    rng: u64,
    stats: NodeStats,
}

fn within(now: Instant, t: Option<Instant>, d: Duration) -> bool {
    t.is_some_and(|t| now.saturating_duration_since(t) <= d)
}

fn due(now: Instant, t: Option<Instant>, every: Duration) -> bool {
    t.is_none_or(|t| now.saturating_duration_since(t) >= every)
}

impl Node {
    pub fn new(cfg: NodeConfig, secret: [u8; 32], now: Instant) -> Node {
        let rng = secret.iter().fold(0x9e37_79b9_7f4a_7c15u64, |a, &b| {
            (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        Node {
            jar: CookieJar::new(secret, now, cfg.cookie_rotate),
            cfg,
            started: now,
            local: Vec::new(),
            peers: HashMap::new(),
            candidates: VecDeque::new(),
            probed_candidates: HashMap::new(),
            pending_offers: HashMap::new(),
            asked: HashMap::new(),
            downloading: HashSet::new(),
            holders: HashMap::new(),
            holder_queue: HashMap::new(),
            holder_released: HashMap::new(),
            batches: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            unverified_per_ip: HashMap::new(),
            unverified_bytes: Window {
                start: now,
                count: 0,
            },
            list_cursor: 0,
            next_tick: now,
            rng,
            stats: NodeStats::default(),
        }
    }

    /// Ferry's own addresses: never contacted, datagrams from them dropped.
    pub fn set_local_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.local = addrs.into_iter().map(normalize).collect();
    }

    /// Ferry's cookie for an IP (for tests and logs).
    pub fn cookie_for(&self, ip: IpAddr) -> String {
        self.jar.cookie(ip)
    }

    fn is_forbidden(&self, a: SocketAddr) -> bool {
        let ip = a.ip();
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        a.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || broadcast
            || self.local.contains(&a)
    }

    fn control_max(&self, to: SocketAddr) -> usize {
        match to {
            SocketAddr::V4(_) => self.cfg.control_max,
            SocketAddr::V6(_) => self.cfg.control_max_v6,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A peer configured by the user (`--peer`): kept for good and probed from the next
    /// maintenance tick on, which is due at once (`poll_timeout`), within the 4-per-second cap.
    pub fn add_peer(&mut self, now: Instant, addr: SocketAddr) {
        let addr = normalize(addr);
        if self.is_forbidden(addr) {
            return;
        }
        if let Some(p) = self.peers.get_mut(&addr) {
            p.configured = true;
            p.last_probe = None;
        } else if !self.insert_peer(now, addr, true) {
            return;
        }
        self.next_tick = self.next_tick.min(now);
    }

    /// Insert a peer, evicting the learnt peer silent longest when the table is full.
    fn insert_peer(&mut self, now: Instant, addr: SocketAddr, configured: bool) -> bool {
        if self.peers.len() >= self.cfg.max_peers {
            let victim = self
                .peers
                .iter()
                .filter(|(_, p)| !p.configured)
                .min_by_key(|(_, p)| p.last_heard)
                .map(|(a, _)| *a);
            match victim {
                Some(v) => {
                    self.peers.remove(&v);
                }
                None => return false,
            }
        }
        let mut p = Peer::new(now, configured);
        p.offer = self.pending_offers.remove(&addr);
        self.peers.insert(addr, p);
        true
    }

    /// The offer ferry holds for an address (the cookie it wants echoed).
    fn stored_offer(&self, addr: SocketAddr) -> Option<&String> {
        match self.peers.get(&addr) {
            Some(p) if p.offer.is_some() => p.offer.as_ref(),
            _ => self.pending_offers.get(&addr),
        }
    }

    fn is_confirmed(&self, addr: SocketAddr) -> bool {
        self.peers.get(&addr).is_some_and(|p| p.confirmed)
    }

    pub fn is_verified(&self, addr: SocketAddr) -> bool {
        self.peers
            .get(&normalize(addr))
            .is_some_and(|p| p.verified_at.is_some())
    }

    /// The `max_length` a verified `FerryHello` from this address advertised.
    pub fn ferry_max_length(&self, addr: SocketAddr) -> Option<u32> {
        self.peers.get(&normalize(addr)).and_then(|p| p.ferry_max)
    }

    /// Smoothed RTT of a peer, if measured.
    pub fn srtt(&self, addr: SocketAddr) -> Option<Duration> {
        self.peers.get(&normalize(addr)).and_then(|p| p.srtt)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn candidate_count(&self) -> usize {
        self.candidates.len()
    }

    pub fn stats(&self) -> NodeStats {
        self.stats.clone()
    }

    /// Mark `id` as being downloaded (or no longer): `Content` and `MaybeTheyHaveSome` for it
    /// are accepted only while it is.
    pub fn set_downloading(&mut self, id: [u8; 32], on: bool) {
        if on {
            self.downloading.insert(id);
        } else {
            self.downloading.remove(&id);
            self.holder_queue.remove(&id);
            self.holder_released.remove(&id);
        }
    }

    /// Remember that `addr` holds `id` (from a finished download or a `ContentList`).
    pub fn add_holder(&mut self, id: [u8; 32], addr: SocketAddr) {
        let addr = normalize(addr);
        if self.is_forbidden(addr) {
            return;
        }
        if !self.holders.contains_key(&id) && self.holders.len() >= MAX_HOLDER_IDS {
            // Bounded memory: forget an arbitrary id.
            if let Some(k) = self.holders.keys().next().copied() {
                self.holders.remove(&k);
            }
        }
        let list = self.holders.entry(id).or_default();
        if !list.contains(&addr) {
            if list.len() >= MAX_HOLDERS_PER_ID {
                list.remove(0);
            }
            list.push(addr);
        }
    }

    fn asked_mut(&mut self, now: Instant, addr: SocketAddr) -> &mut Asked {
        if !self.asked.contains_key(&addr) && self.asked.len() >= MAX_ASKED {
            self.prune_asked(now);
            if self.asked.len() >= MAX_ASKED {
                if let Some(k) = self
                    .asked
                    .iter()
                    .min_by_key(|(_, a)| a.last)
                    .map(|(k, _)| *k)
                {
                    self.asked.remove(&k);
                }
            }
        }
        let a = self.asked.entry(addr).or_default();
        a.last = Some(now);
        a
    }

    fn prune_asked(&mut self, now: Instant) {
        self.asked
            .retain(|_, a| within(now, a.last, MAYBE_SOLICITED_FOR));
    }

    // ---- outgoing requests -------------------------------------------------------------

    /// Queue `PleaseSendContent` to `to` for `id`: one per datagram toward peers not known to be
    /// ferry, batched up to `control_max` toward ferry peers (flushed by `poll_transmit`).
    pub fn request_content(
        &mut self,
        now: Instant,
        to: SocketAddr,
        id: &[u8; 32],
        offset: u64,
        length: u32,
    ) {
        let to = normalize(to);
        if self.is_forbidden(to) {
            return;
        }
        let a = self.asked_mut(now, to);
        match a.content.iter_mut().find(|(i, _)| i == id) {
            Some(e) => e.1 = now,
            None => {
                if a.content.len() >= MAX_IDS_REMEMBERED {
                    a.content.remove(0);
                }
                a.content.push((*id, now));
            }
        }
        let msg = Message::PleaseSendContent {
            id: *id,
            offset,
            length: u64::from(length),
        };
        if self.ferry_max_length(to).is_none() {
            self.send_own(to, &[msg]);
            return;
        }
        let limit = self.control_max(to);
        let (overhead, _) = self.own_overhead(to);
        let pos = self.batches.iter().position(|(a, _)| *a == to);
        if let Some(i) = pos {
            let used: usize = self.batches[i].1.iter().map(|m| m.encoded_len() + 1).sum();
            if overhead + used + msg.encoded_len() + 1 > limit {
                let (addr, msgs) = self.batches.remove(i);
                self.send_own(addr, &msgs);
                self.batches.push((to, vec![msg]));
            } else {
                self.batches[i].1.push(msg);
            }
        } else {
            self.batches.push((to, vec![msg]));
        }
    }

    /// Send `PleaseSendPeers` to `to`; its `Peers` answer is accepted for 10 s.
    pub fn request_peers(&mut self, now: Instant, to: SocketAddr) {
        let to = normalize(to);
        if self.is_forbidden(to) {
            return;
        }
        self.asked_mut(now, to).peers = Some(now);
        self.send_own(to, &[Message::PleaseSendPeers]);
    }

    /// Send `PleaseListContent` to `to`; its `ContentList` answer is accepted for 10 s.
    pub fn request_list(&mut self, now: Instant, to: SocketAddr) {
        let to = normalize(to);
        if self.is_forbidden(to) {
            return;
        }
        self.asked_mut(now, to).list = Some(now);
        self.send_own(to, &[Message::PleaseListContent]);
    }

    /// An RTT probe (decimal seconds since start), with `PleaseSendPeers` when due.
    fn send_probe(&mut self, now: Instant, to: SocketAddr) {
        let since = now.saturating_duration_since(self.started);
        let s = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
        let few = self.peers.len() < 16;
        let discovery = self.cfg.discovery;
        let mut with_peers = false;
        if let Some(p) = self.peers.get_mut(&to) {
            if p.probe_outstanding {
                p.missed_probes += 1;
            }
            p.probe_outstanding = true;
            p.last_probe = Some(now);
            let every = if few { PEERS_EVERY_SMALL } else { PEERS_EVERY };
            if discovery && due(now, p.last_peers_request, every) {
                p.last_peers_request = Some(now);
                with_peers = true;
            }
        }
        let a = self.asked_mut(now, to);
        a.probes
            .retain(|(_, t)| within(now, Some(*t), SOLICITED_FOR));
        if a.probes.len() >= MAX_PROBES_REMEMBERED {
            a.probes.remove(0);
        }
        a.probes.push((s.clone(), now));
        if with_peers {
            a.peers = Some(now);
        }
        let mut msgs = vec![Message::PleaseReturnThisMessage(cookie_payload(&s))];
        if with_peers {
            msgs.push(Message::PleaseSendPeers);
        }
        self.send_own(to, &msgs);
    }

    fn offer_message(&self, to: SocketAddr) -> Message {
        Message::PleaseAlwaysReturnThisMessage(cookie_payload(&self.jar.cookie(to.ip())))
    }

    fn hello_message() -> Message {
        Message::FerryHello {
            version: 1,
            max_length: MAX_CONTENT_LEN,
        }
    }

    /// Bytes the header elements of an own datagram to `to` take, and whether it has the offer.
    fn own_overhead(&self, to: SocketAddr) -> (usize, bool) {
        let mut n = 2;
        if let Some(o) = self.stored_offer(to) {
            n += Message::AlwaysReturned(o.clone()).encoded_len() + 1;
        }
        let attach = !self.is_confirmed(to);
        if attach {
            n += self.offer_message(to).encoded_len() + 1;
            n += Self::hello_message().encoded_len() + 1;
        }
        (n, attach)
    }

    /// One datagram of ferry's own: echo, offer (until confirmed), `msgs`, `FerryHello`.
    fn send_own(&mut self, to: SocketAddr, msgs: &[Message]) {
        let mut b = DatagramBuilder::new(self.control_max(to));
        if let Some(o) = self.stored_offer(to) {
            b.try_push(&Message::AlwaysReturned(o.clone()));
        }
        let attach = !self.is_confirmed(to);
        if attach {
            b.try_push(&self.offer_message(to));
        }
        for m in msgs {
            if !b.try_push(m) {
                self.stats.answers_dropped += 1;
            }
        }
        if attach {
            b.try_push(&Self::hello_message());
        }
        self.emit(to, b.finish());
    }

    fn emit(&mut self, to: SocketAddr, d: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += d.len() as u64;
        self.out.push_back((to, d));
    }

    fn flush_batches(&mut self) {
        for (to, msgs) in std::mem::take(&mut self.batches) {
            self.send_own(to, &msgs);
        }
    }

    /// The next datagram to send (batched requests are flushed first).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        if !self.batches.is_empty() {
            self.flush_batches();
        }
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    // ---- incoming datagrams ------------------------------------------------------------

    /// Handle one received datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        store: &dyn ContentStore,
    ) {
        self.stats.datagrams_in += 1;
        let from = normalize(from);
        if self.is_forbidden(from) {
            self.stats.dropped_datagrams += 1;
            return;
        }
        let dg = match parse_datagram(data) {
            Ok(dg) => dg,
            Err(_) => {
                self.stats.dropped_datagrams += 1;
                return;
            }
        };
        self.stats.bad_elements += dg.bad_elements as u64;
        self.stats.ignored_elements += dg.ignored_elements as u64;

        // Section 4.2: the first AlwaysReturned decides for the whole datagram.
        let verified = dg
            .messages
            .iter()
            .find_map(|m| match m {
                Message::AlwaysReturned(r) => Some(r),
                _ => None,
            })
            .and_then(|r| cookie_of(r))
            .is_some_and(|c| self.jar.is_valid(from.ip(), &c));
        let offer = dg.messages.iter().find_map(|m| match m {
            Message::PleaseAlwaysReturnThisMessage(r) if r.len() <= MAX_OFFER => Some(r.clone()),
            _ => None,
        });
        let hello = dg.messages.iter().find_map(|m| match m {
            Message::FerryHello { max_length, .. } => Some(*max_length),
            _ => None,
        });
        if verified {
            self.stats.verified_datagrams += 1;
            self.on_verified(now, from, offer.clone(), hello);
        } else {
            self.stats.unverified_datagrams += 1;
            self.on_unverified(from, offer.as_ref());
        }

        let mut answers = Vec::new();
        let mut handled = false;
        let mut content_requests = 0;
        let (mut peers_answered, mut list_answered) = (false, false);
        for m in dg.messages {
            match m {
                Message::PleaseAlwaysReturnThisMessage(_) => handled |= !verified,
                Message::AlwaysReturned(_) | Message::FerryHello { .. } | Message::Unknown => {}
                Message::PleaseSendPeers => {
                    handled = true;
                    if !peers_answered {
                        peers_answered = true;
                        let list = self.peers_to_advertise(now, from);
                        answers.push(Answer::List(ListParts::peers(&list)));
                    }
                }
                Message::Peers(list) => self.on_peers(now, from, verified, list),
                Message::PleaseReturnThisMessage(raw) => {
                    handled = true;
                    let mut e = Vec::new();
                    Message::ReturnedMessage(raw).encode(&mut e);
                    answers.push(Answer::Encoded(e));
                }
                Message::ReturnedMessage(raw) => self.on_returned(now, from, &raw),
                Message::PleaseSendContent { id, offset, length } => {
                    handled = true;
                    content_requests += 1;
                    if content_requests > MAX_CONTENT_REQUESTS {
                        self.stats.ignored_content_requests += 1;
                        continue;
                    }
                    if let Some(a) = self.content_answer(from, verified, id, offset, length, store)
                    {
                        answers.push(a);
                    }
                }
                Message::Content {
                    id,
                    offset,
                    data,
                    eof,
                } => self.on_content(from, verified, id, offset, data, eof),
                Message::MaybeTheyHaveSome { id, peers } => {
                    self.on_maybe(now, from, verified, id, peers)
                }
                Message::PleaseListContent => {
                    handled = true;
                    if !list_answered {
                        list_answered = true;
                        answers.push(Answer::List(self.list_answer(store)));
                    }
                }
                Message::ContentList(results) => self.on_content_list(now, from, verified, results),
            }
        }
        self.release_holders(now);
        if handled {
            let echo = offer.or_else(|| self.stored_offer(from).cloned());
            self.reply(now, from, verified, data.len(), echo, answers, store);
        }
    }

    fn on_verified(
        &mut self,
        now: Instant,
        from: SocketAddr,
        offer: Option<String>,
        hello: Option<u64>,
    ) {
        if !self.peers.contains_key(&from) && !self.insert_peer(now, from, false) {
            return;
        }
        self.probed_candidates.remove(&from);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.verified_at = Some(now);
        p.last_heard = now;
        match offer {
            Some(o) if p.offer.as_ref() != Some(&o) => {
                p.offer = Some(o);
                p.confirmed = false;
            }
            _ => p.confirmed = true,
        }
        // A ferry peer is asked for whole 4096-byte blocks; a smaller limit is not usable.
        if let Some(max) = hello.filter(|m| *m >= 4096) {
            let max = max.min(MAX_CONTENT_LEN) as u32;
            if p.ferry_max != Some(max) {
                p.ferry_max = Some(max);
                self.events.push_back(NodeEvent::FerryPeer {
                    addr: from,
                    max_length: max,
                });
            }
        }
    }

    fn on_unverified(&mut self, from: SocketAddr, offer: Option<&String>) {
        let held = self.stored_offer(from).is_some();
        if let Some(p) = self.peers.get_mut(&from) {
            // Its datagrams stopped verifying (or someone spoofs it): offer ours again.
            p.confirmed = false;
            if let (false, Some(o)) = (held, offer) {
                p.offer = Some(o.clone());
            }
            return;
        }
        if let (false, Some(o)) = (held, offer) {
            if self.pending_offers.len() >= self.cfg.max_peers {
                if let Some(k) = self.pending_offers.keys().next().copied() {
                    self.pending_offers.remove(&k);
                }
            }
            self.pending_offers.insert(from, o.clone());
        }
    }

    fn peers_to_advertise(&self, now: Instant, to: SocketAddr) -> Vec<SocketAddr> {
        let mut list: Vec<(&SocketAddr, &Peer)> = self
            .peers
            .iter()
            .filter(|(a, p)| {
                **a != to
                    && !self.is_forbidden(**a)
                    && (!a.ip().is_loopback() || to.ip().is_loopback())
                    && within(now, p.verified_at, ADVERTISE_WITHIN)
                    && p.missed_probes < STALE_AFTER_MISSED
            })
            .collect();
        list.sort_by_key(|(_, p)| p.srtt.unwrap_or(Duration::MAX));
        list.into_iter()
            .take(MAX_PEERS_ANSWER)
            .map(|(a, _)| *a)
            .collect()
    }

    fn on_peers(&mut self, now: Instant, from: SocketAddr, verified: bool, list: Vec<SocketAddr>) {
        let solicited = self
            .asked
            .get(&from)
            .is_some_and(|a| within(now, a.peers, SOLICITED_FOR));
        if !verified || !solicited {
            self.stats.ignored_messages += 1;
            return;
        }
        let list: Vec<SocketAddr> = list
            .into_iter()
            .filter(|a| !self.is_forbidden(*a) && *a != from)
            .collect();
        if self.cfg.discovery {
            let mut added = 0;
            for a in &list {
                if added >= MAX_NEW_CANDIDATES {
                    break;
                }
                if self.peers.contains_key(a)
                    || self.candidates.contains(a)
                    || self.probed_candidates.contains_key(a)
                {
                    continue;
                }
                if self.candidates.len() >= self.cfg.max_peers {
                    self.candidates.pop_front();
                }
                self.candidates.push_back(*a);
                added += 1;
            }
        }
        self.events
            .push_back(NodeEvent::Peers { from, peers: list });
    }

    fn on_returned(&mut self, now: Instant, from: SocketAddr, raw: &str) {
        let Some(c) = cookie_of(raw) else {
            self.stats.ignored_messages += 1;
            return;
        };
        let sent = self.asked.get_mut(&from).and_then(|a| {
            let i = a
                .probes
                .iter()
                .position(|(s, t)| *s == c && within(now, Some(*t), SOLICITED_FOR))?;
            Some(a.probes.remove(i).1)
        });
        let Some(sent) = sent else {
            self.stats.ignored_messages += 1;
            return;
        };
        let rtt = now.saturating_duration_since(sent);
        if let Some(p) = self.peers.get_mut(&from) {
            p.srtt = Some(match p.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            });
            p.probe_outstanding = false;
            p.missed_probes = 0;
            p.last_heard = now;
        }
        self.events.push_back(NodeEvent::Rtt { addr: from, rtt });
    }

    fn content_answer(
        &mut self,
        from: SocketAddr,
        verified: bool,
        id: Id,
        offset: u64,
        length: u64,
        store: &dyn ContentStore,
    ) -> Option<Answer> {
        match store.size_of(&id) {
            Some(eof) => {
                let cap = if verified {
                    MAX_CONTENT_LEN
                } else {
                    MAX_TEASER
                };
                let want = if offset >= eof {
                    0
                } else {
                    length.min(cap).min(eof - offset)
                };
                Some(Answer::Content {
                    id,
                    offset,
                    want: want as usize,
                    eof,
                })
            }
            None => {
                let holders: Vec<SocketAddr> = self
                    .holders
                    .get(&id)?
                    .iter()
                    .filter(|a| **a != from && !self.is_forbidden(**a))
                    .take(MAX_MAYBE)
                    .copied()
                    .collect();
                (verified && !holders.is_empty())
                    .then(|| Answer::List(ListParts::maybe(&id, &holders)))
            }
        }
    }

    fn on_content(
        &mut self,
        from: SocketAddr,
        verified: bool,
        id: Id,
        offset: u64,
        data: Vec<u8>,
        eof: Option<u64>,
    ) {
        if !verified || !self.downloading.contains(&id) {
            self.stats.ignored_messages += 1;
            return;
        }
        let len = data.len() as u64;
        let teaser = len <= MAX_TEASER && eof.is_none_or(|e| offset.saturating_add(len) < e);
        if teaser {
            // It treats us as unverified: offer our cookie again (4.5 step 5).
            if let Some(p) = self.peers.get_mut(&from) {
                p.confirmed = false;
            }
        }
        self.events.push_back(NodeEvent::Content {
            from,
            id,
            offset,
            data,
            eof,
        });
    }

    fn on_maybe(
        &mut self,
        now: Instant,
        from: SocketAddr,
        verified: bool,
        id: Id,
        peers: Vec<SocketAddr>,
    ) {
        let solicited = self.asked.get(&from).is_some_and(|a| {
            a.content
                .iter()
                .any(|(i, t)| *i == id && within(now, Some(*t), MAYBE_SOLICITED_FOR))
        });
        if !verified || !solicited || !self.downloading.contains(&id) {
            self.stats.ignored_messages += 1;
            return;
        }
        let queued: Vec<SocketAddr> = self
            .holder_queue
            .get(&id)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default();
        let mut fresh: Vec<SocketAddr> = peers
            .into_iter()
            .filter(|a| *a != from && !self.is_forbidden(*a) && !queued.contains(a))
            .collect();
        fresh.dedup();
        // At most 8, chosen at random (a partial Fisher-Yates shuffle).
        let take = fresh.len().min(MAX_MAYBE);
        for i in 0..take {
            let j = i + (self.next_random() % (fresh.len() - i) as u64) as usize;
            fresh.swap(i, j);
        }
        fresh.truncate(take);
        let q = self.holder_queue.entry(id).or_default();
        for a in fresh {
            if q.len() < MAX_HOLDERS_PER_ID {
                q.push_back(a);
            }
        }
    }

    /// Release queued `MaybeTheyHaveSome` addresses, at most 4 per second per download.
    fn release_holders(&mut self, now: Instant) {
        let ids: Vec<Id> = self.holder_queue.keys().copied().collect();
        for id in ids {
            let w = self.holder_released.entry(id).or_insert(Window {
                start: now,
                count: 0,
            });
            if now.saturating_duration_since(w.start) >= TICK {
                *w = Window {
                    start: now,
                    count: 0,
                };
            }
            let n = (MAX_NEW_SOURCES_PER_SEC as u64).saturating_sub(w.count) as usize;
            let Some(q) = self.holder_queue.get_mut(&id) else {
                continue;
            };
            let batch: Vec<SocketAddr> = q.drain(..n.min(q.len())).collect();
            if q.is_empty() {
                self.holder_queue.remove(&id);
            }
            if batch.is_empty() {
                continue;
            }
            w.count += batch.len() as u64;
            for a in &batch {
                self.add_holder(id, *a);
            }
            self.events
                .push_back(NodeEvent::Holders { id, peers: batch });
        }
    }

    fn list_answer(&mut self, store: &dyn ContentStore) -> ListParts {
        // About 17 entries fit in control_max; fetch a few more to make up for hidden ones.
        const FETCH: usize = 24;
        let count = store.count();
        let mut entries = Vec::new();
        if count > 0 {
            let start = self.list_cursor % count;
            entries = store.list(start, FETCH.min(count));
            if entries.len() < FETCH.min(count) && start > 0 {
                let more = store.list(0, (FETCH.min(count) - entries.len()).min(start));
                entries.extend(more);
            }
            self.list_cursor = (start + entries.len().max(1)) % count;
        }
        entries.retain(|(_, size)| *size != BLOCK_LIST_BLOCK);
        ListParts::content_list(&entries)
    }

    fn on_content_list(
        &mut self,
        now: Instant,
        from: SocketAddr,
        verified: bool,
        mut results: Vec<(Id, u64)>,
    ) {
        let solicited = self
            .asked
            .get(&from)
            .is_some_and(|a| within(now, a.list, SOLICITED_FOR));
        if !verified || !solicited {
            self.stats.ignored_messages += 1;
            return;
        }
        results.truncate(MAX_LIST_RECORDED);
        for (id, _) in &results {
            self.add_holder(*id, from);
        }
        self.events
            .push_back(NodeEvent::ContentList { from, results });
    }

    /// Whether one more reply datagram of `len` bytes may go to an unverified `to`.
    fn unverified_allowed(&mut self, now: Instant, to: SocketAddr, len: usize) -> bool {
        if now.saturating_duration_since(self.unverified_bytes.start) >= TICK {
            self.unverified_bytes = Window {
                start: now,
                count: 0,
            };
            if self.unverified_per_ip.len() > 65_536 {
                self.unverified_per_ip.clear();
            }
        }
        if self.unverified_bytes.count + len as u64 > self.cfg.unverified_bytes_per_sec {
            return false;
        }
        let w = self.unverified_per_ip.entry(to.ip()).or_insert(Window {
            start: now,
            count: 0,
        });
        if now.saturating_duration_since(w.start) >= TICK {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        if w.count >= u64::from(self.cfg.unverified_replies_per_ip) {
            return false;
        }
        w.count += 1;
        self.unverified_bytes.count += len as u64;
        true
    }

    /// Send the answers to one datagram, split over as few datagrams as the limits allow, each
    /// with the echo (and the offer until confirmed). Unverified: within the 2x budget.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        now: Instant,
        to: SocketAddr,
        verified: bool,
        request_len: usize,
        echo: Option<String>,
        answers: Vec<Answer>,
        store: &dyn ContentStore,
    ) {
        let ctrl = self.control_max(to);
        let content_max = self.cfg.content_max.max(ctrl);
        let attach = !self.is_confirmed(to);
        let mut budget = (!verified).then_some(2 * (request_len + HEADER_BYTES));
        let echo_el = echo.map(|o| {
            let mut v = Vec::new();
            Message::AlwaysReturned(o).encode(&mut v);
            v
        });
        let mut offer_el = Vec::new();
        self.offer_message(to).encode(&mut offer_el);
        let mut hello_el = Vec::new();
        Self::hello_message().encode(&mut hello_el);
        // Verified replies keep room for FerryHello; unverified ones add it only if it fits.
        let reserve = if attach && verified {
            hello_el.len() + 1
        } else {
            0
        };
        let mut queue: VecDeque<Answer> = answers.into();
        let mut first = true;
        loop {
            let cap = |limit: usize| match budget {
                Some(b) => limit.min(b.saturating_sub(HEADER_BYTES)),
                None => limit,
            };
            // Fill order: offer, then echo (emitted echo first).
            let mut used = 2;
            let with_offer = attach && used + offer_el.len() <= cap(ctrl);
            if with_offer {
                used += offer_el.len() + 1;
            }
            let with_echo = echo_el
                .as_ref()
                .is_some_and(|e| used + e.len() <= cap(ctrl));
            let mut b = DatagramBuilder::new(cap(ctrl));
            if let (true, Some(e)) = (with_echo, &echo_el) {
                b.try_push_encoded(e);
            }
            if with_offer {
                b.try_push_encoded(&offer_el);
            }
            let header = b.elements();
            let mut has_content = false;
            while let Some(a) = queue.front() {
                let has_answers = b.elements() > header;
                let pushed = match a {
                    Answer::Encoded(e) => {
                        let lim = b.limit();
                        b.set_limit(lim.saturating_sub(reserve));
                        let ok = b.try_push_encoded(e);
                        b.set_limit(lim);
                        ok
                    }
                    Answer::List(l) => {
                        let lim = b.limit();
                        b.set_limit(lim.saturating_sub(reserve));
                        let ok = b.push_list(l).is_some();
                        b.set_limit(lim);
                        ok
                    }
                    &Answer::Content {
                        id,
                        offset,
                        want,
                        eof,
                    } => {
                        let lim = b.limit();
                        b.set_limit(cap(content_max));
                        let room = b.room().saturating_sub(reserve);
                        let fit = content_fit(&id, offset, Some(eof), room);
                        let n = match fit {
                            Some(f) if f >= want => Some(want),
                            _ if has_answers => None,
                            // Alone and too big: cut (to whole 4096-byte blocks when
                            // verified, since the reference keeps only those).
                            Some(f) if verified && f >= 4096 => Some(f / 4096 * 4096),
                            Some(f) if !verified => Some(f),
                            _ => None,
                        };
                        let ok = match n {
                            Some(n) => {
                                let mut data = vec![0u8; n];
                                let read = if n == 0 {
                                    Some(0)
                                } else {
                                    store.read_at(&id, offset, &mut data)
                                };
                                if read == Some(n) {
                                    let mut lim2 = b.limit();
                                    lim2 = lim2.saturating_sub(reserve);
                                    b.set_limit(lim2);
                                    let ok = b.push_content(&id, offset, &data, Some(eof));
                                    b.set_limit(lim2 + reserve);
                                    if ok {
                                        if verified {
                                            self.stats.content_served += 1;
                                        } else {
                                            self.stats.teasers_served += 1;
                                        }
                                    }
                                    ok
                                } else {
                                    // The file went away or shrank: no answer.
                                    self.stats.answers_dropped += 1;
                                    queue.pop_front();
                                    b.set_limit(lim);
                                    continue;
                                }
                            }
                            None => false,
                        };
                        if ok {
                            has_content = true;
                        } else if !has_content {
                            b.set_limit(lim);
                        }
                        ok
                    }
                };
                if pushed {
                    queue.pop_front();
                } else if has_answers {
                    break;
                } else {
                    self.stats.answers_dropped += 1;
                    queue.pop_front();
                }
            }
            let has_answers = b.elements() > header;
            // A datagram without answers goes out only once, to carry the offer.
            let offer_only = first && with_offer;
            if !has_answers && !offer_only {
                break;
            }
            if attach && with_offer {
                let lim = if has_content {
                    cap(content_max)
                } else {
                    cap(ctrl)
                };
                b.set_limit(lim);
                b.try_push_encoded(&hello_el);
            }
            let d = b.finish();
            if !verified && !self.unverified_allowed(now, to, d.len()) {
                self.stats.rate_limited += 1;
                break;
            }
            if let Some(bud) = budget.as_mut() {
                *bud = bud.saturating_sub(d.len() + HEADER_BYTES);
            }
            self.emit(to, d);
            first = false;
            if queue.is_empty() {
                break;
            }
        }
        for _ in queue {
            self.stats.answers_dropped += 1;
        }
    }

    // ---- timers ------------------------------------------------------------------------

    /// When `handle_timeout` wants to run next (the 1 s maintenance tick).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let release = self
            .holder_queue
            .keys()
            .filter_map(|id| self.holder_released.get(id).map(|w| w.start + TICK))
            .min();
        Some(release.map_or(self.next_tick, |r| r.min(self.next_tick)))
    }

    /// Maintenance tick (section 8): cookie rotation, probes (at most 4 datagrams to peers and
    /// 2 to candidates per second), expiry of silent peers, release of queued holders.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.release_holders(now);
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.jar.handle_timeout(now);
        self.prune_asked(now);
        self.probed_candidates
            .retain(|_, t| now.saturating_duration_since(*t) < FORGET_AFTER);
        self.peers.retain(|_, p| {
            p.configured || now.saturating_duration_since(p.last_heard) < FORGET_AFTER
        });

        let discovery = self.cfg.discovery;
        let mut due_peers: Vec<(SocketAddr, Option<Instant>)> = self
            .peers
            .iter()
            .filter(|(_, p)| discovery || p.configured)
            .filter(|(_, p)| {
                let every = if p.configured && p.missed_probes >= STALE_AFTER_MISSED {
                    SLOW_PROBE_EVERY
                } else {
                    PROBE_EVERY
                };
                due(now, p.last_probe, every)
            })
            .map(|(a, p)| (*a, p.last_probe))
            .collect();
        due_peers.sort_by_key(|(_, t)| *t);
        for (a, _) in due_peers.into_iter().take(PROBES_TO_PEERS_PER_TICK) {
            if !self.is_forbidden(a) {
                self.send_probe(now, a);
            }
        }

        if discovery {
            let mut sent = 0;
            while sent < PROBES_TO_CANDIDATES_PER_TICK {
                let Some(a) = self.candidates.pop_front() else {
                    break;
                };
                if self.is_forbidden(a) || self.peers.contains_key(&a) {
                    continue;
                }
                if self.probed_candidates.len() >= self.cfg.max_peers {
                    if let Some(k) = self
                        .probed_candidates
                        .iter()
                        .min_by_key(|(_, t)| **t)
                        .map(|(k, _)| *k)
                    {
                        self.probed_candidates.remove(&k);
                    }
                }
                self.probed_candidates.insert(a, now);
                let mut b = DatagramBuilder::new(self.control_max(a));
                b.try_push(&self.offer_message(a));
                self.emit(a, b.finish());
                sent += 1;
            }
        }
        self.release_holders(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cjp2p::wire::{encode_content, id_hex, parse_datagram};
    use sha2::{Digest, Sha256};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn file(len: usize, seed: u8) -> (Id, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        (Sha256::digest(&data).into(), data)
    }

    /// An in-memory catalog.
    #[derive(Default)]
    struct Store(Vec<(Id, Vec<u8>)>);

    impl ContentStore for Store {
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

    fn msgs(d: &[u8]) -> Vec<Message> {
        parse_datagram(d).unwrap().messages
    }

    fn text(d: &[u8]) -> &str {
        std::str::from_utf8(d).unwrap()
    }

    /// Invariants of every datagram ferry sends (C7, C9, C10).
    fn check(d: &[u8], cfg: &NodeConfig, to: SocketAddr) {
        let m = msgs(d);
        let has_content = m.iter().any(|m| matches!(m, Message::Content { .. }));
        let ctrl = if to.is_ipv4() {
            cfg.control_max
        } else {
            cfg.control_max_v6
        };
        let limit = if has_content { cfg.content_max } else { ctrl };
        assert!(d.len() <= limit, "{} > {limit}", d.len());
        let echoes = m
            .iter()
            .filter(|m| matches!(m, Message::AlwaysReturned(_)))
            .count();
        assert!(echoes <= 1, "{}", text(d));
        for m in &m {
            if let Message::PleaseAlwaysReturnThisMessage(o) = m {
                let c = cookie_of(o).unwrap();
                assert_eq!(o, &format!("{{\"cookie\":\"{c}\"}}"));
                assert!(
                    c.len() == 8
                        && c.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                );
            }
            if let Message::Content { eof, .. } = m {
                assert!(eof.is_some(), "C24: every Content has eof");
            }
        }
    }

    fn node(now: Instant, seed: u8) -> Node {
        Node::new(NodeConfig::default(), [seed; 32], now)
    }

    fn drain(n: &mut Node) -> Vec<(SocketAddr, Vec<u8>)> {
        let cfg = n.cfg.clone();
        let mut v = Vec::new();
        while let Some((to, d)) = n.poll_transmit() {
            check(&d, &cfg, to);
            v.push((to, d));
        }
        v
    }

    fn events(n: &mut Node) -> Vec<NodeEvent> {
        std::iter::from_fn(|| n.poll_event()).collect()
    }

    struct Side {
        addr: SocketAddr,
        node: Node,
        store: Store,
    }

    /// Deliver datagrams between sides until quiet; returns (from, to, bytes) in order.
    fn pump(now: Instant, sides: &mut [Side]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut log = Vec::new();
        for _round in 0..50 {
            let mut any = false;
            for i in 0..sides.len() {
                let from = sides[i].addr;
                for (to, d) in drain(&mut sides[i].node) {
                    any = true;
                    if let Some(j) = sides.iter().position(|s| s.addr == to) {
                        let s = &mut sides[j];
                        s.node.handle_datagram(now, from, &d, &s.store);
                    }
                    log.push((from, to, d));
                }
            }
            if !any {
                return log;
            }
        }
        panic!("datagrams never stopped");
    }

    fn cookie_dg(n: &Node, ip: &str, rest: &str) -> String {
        let c = n.cookie_for(ip.parse().unwrap());
        if rest.is_empty() {
            format!("[{{\"AlwaysReturned\":{{\"cookie\":\"{c}\"}}}}]")
        } else {
            format!("[{rest},{{\"AlwaysReturned\":{{\"cookie\":\"{c}\"}}}}]")
        }
    }

    fn send_content_el(id: &Id, offset: u64, length: u64) -> String {
        format!(
            r#"{{"PleaseSendContent":{{"id":"{}","length":{length},"offset":{offset}}}}}"#,
            id_hex(id)
        )
    }

    fn contents(d: &[u8]) -> Vec<(u64, Vec<u8>, Option<u64>)> {
        msgs(d)
            .into_iter()
            .filter_map(|m| match m {
                Message::Content {
                    offset, data, eof, ..
                } => Some((offset, data, eof)),
                _ => None,
            })
            .collect()
    }

    const A: &str = "192.0.2.1:24254";

    #[test]
    fn c3_bad_elements_skipped_rest_answered() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let d = r#"[1,{"PleaseReturnThisMessage":{"cookie":"0.5"},"x":{}},{"PleaseReturnThisMessage":{"cookie":"0.5"}}]"#;
        n.handle_datagram(now, sa(A), d.as_bytes(), &Store::default());
        let out = drain(&mut n);
        assert_eq!(out.len(), 1);
        assert!(text(&out[0].1).contains(r#"{"ReturnedMessage":{"cookie":"0.5"}}"#));
        assert_eq!(n.stats().bad_elements, 2);
    }

    #[test]
    fn c4_c17_c5_no_reply_to_nothing_handled() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let s = Store::default();
        for d in [
            &b"[\xff]"[..],
            b"{}",
            b"not json",
            b"[]",
            b"[1,2]",
            b"[{}]",
            br#"[{"SignedMessage":{}},{"Forwarded":{"x":1}}]"#,
            br#"[{"Peers":{"peers":["1.2.3.4:5"]}}]"#,
        ] {
            n.handle_datagram(now, sa(A), d, &s);
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        n.handle_datagram(now, sa(A), deep.as_bytes(), &s);
        // Verified but only the echo: nothing to answer.
        let v = cookie_dg(&n, "192.0.2.1", "");
        n.handle_datagram(now, sa(A), v.as_bytes(), &s);
        assert!(drain(&mut n).is_empty());
        assert_eq!(n.stats().dropped_datagrams, 4);
    }

    /// C2: a node given no peers sends nothing, however long it runs (no built-in peers, no
    /// gateways, no multicast); given one peer, every datagram over ten simulated minutes goes
    /// to that peer; a sender it answers gets the answer and nobody else does.
    #[test]
    fn c2_sends_only_to_given_peers_and_senders_it_answers() {
        let t0 = Instant::now();
        let mut alone = node(t0, 1);
        let mut given = node(t0, 2);
        let peer = sa("192.0.2.7:24254");
        given.add_peer(t0, peer);
        let mut probes = 0;
        for s in 0..600 {
            let now = t0 + Duration::from_secs(s);
            alone.handle_timeout(now);
            given.handle_timeout(now);
            assert!(
                drain(&mut alone).is_empty(),
                "a node without peers sent at {s} s"
            );
            for (to, _) in drain(&mut given) {
                assert_eq!(to, peer, "at {s} s");
                probes += 1;
            }
        }
        assert!(probes > 0, "the configured peer was never contacted");
        let d = br#"[{"PleaseReturnThisMessage":{"cookie":"1"}}]"#;
        alone.handle_datagram(t0, sa(A), d, &Store::default());
        let out = drain(&mut alone);
        assert!(
            !out.is_empty() && out.iter().all(|(to, _)| *to == sa(A)),
            "{out:?}"
        );
    }

    #[test]
    fn port_zero_own_and_forbidden_sources_dropped() {
        let now = Instant::now();
        let mut n = node(now, 1);
        n.set_local_addrs(vec![sa("10.0.0.1:24254")]);
        let d = br#"[{"PleaseReturnThisMessage":{"cookie":"1"}}]"#;
        for from in [
            "10.0.0.1:24254",
            "192.0.2.1:0",
            "0.0.0.0:5",
            "224.0.0.1:5",
            "255.255.255.255:5",
            "[::ffff:10.0.0.1]:24254",
        ] {
            n.handle_datagram(now, sa(from), d, &Store::default());
        }
        assert!(drain(&mut n).is_empty());
        assert_eq!(n.stats().dropped_datagrams, 6);
        // And never contacted.
        n.add_peer(now, sa("10.0.0.1:24254"));
        n.add_peer(now, sa("0.0.0.0:1"));
        n.request_content(now, sa("239.1.1.1:5"), &[0; 32], 0, 4096);
        assert!(drain(&mut n).is_empty());
    }

    #[test]
    fn c7_c8_split_replies_each_with_echo() {
        let now = Instant::now();
        let (id, data) = file(200_000, 3);
        let store = Store(vec![(id, data.clone())]);
        let mut n = node(now, 1);
        // Verified, with an offer to echo; two 40 KiB requests cannot share one datagram.
        let offer = r#"{"PleaseAlwaysReturnThisMessage":{"cookie":"abcdef01"}}"#;
        let d = cookie_dg(
            &n,
            "192.0.2.1",
            &format!(
                "{offer},{},{}",
                send_content_el(&id, 0, 40960),
                send_content_el(&id, 40960, 40960)
            ),
        );
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        let out = drain(&mut n);
        assert_eq!(out.len(), 2);
        for (i, (_, d)) in out.iter().enumerate() {
            assert!(text(d).contains(r#"{"AlwaysReturned":{"cookie":"abcdef01"}}"#));
            let c = contents(d);
            assert_eq!(c.len(), 1);
            let off = i * 40960;
            assert_eq!(c[0].0, off as u64);
            assert_eq!(c[0].1, data[off..off + 40960]);
        }
        // A small content_max cuts a Content to whole 4096-byte blocks.
        let cfg = NodeConfig {
            content_max: 6144,
            ..NodeConfig::default()
        };
        let mut n = Node::new(cfg, [1; 32], now);
        let d = cookie_dg(&n, "192.0.2.1", &send_content_el(&id, 0, 40960));
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        let out = drain(&mut n);
        assert_eq!(out.len(), 1);
        assert_eq!(contents(&out[0].1)[0].1.len(), 4096);
        // Several list answers beyond control_max are split too.
        let mut n = node(now, 1);
        let many: Vec<(Id, Vec<u8>)> = (0..40).map(|i| file(10 + i, i as u8)).collect();
        let store = Store(many);
        let req = r#"{"PleaseListContent":{}},{"PleaseReturnThisMessage":{"cookie":"x"}}"#;
        let big_echo = format!(
            r#"{{"PleaseReturnThisMessage":{{"pad":"{}"}}}}"#,
            "p".repeat(1000)
        );
        let d = cookie_dg(&n, "192.0.2.1", &format!("{req},{big_echo}"));
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        let out = drain(&mut n);
        assert_eq!(
            out.len(),
            2,
            "{:?}",
            out.iter().map(|o| o.1.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn c9_c10_offer_shape_and_echo_unchanged() {
        let now = Instant::now();
        let mut n = node(now, 1);
        // A README-era offer of another shape is echoed byte for byte.
        let offer = r#"["any", {"valid" : "JSON"}]"#;
        let d = format!(
            r#"[{{"PleaseAlwaysReturnThisMessage":{offer}}},{{"PleaseReturnThisMessage":{{"cookie":"1"}}}}]"#
        );
        n.handle_datagram(now, sa(A), d.as_bytes(), &Store::default());
        let out = drain(&mut n);
        let t = text(&out[0].1);
        assert!(t.starts_with(&format!(r#"[{{"AlwaysReturned":{offer}}},{{"PleaseAlwaysReturnThisMessage":{{"cookie":"{}"}}}}"#, n.cookie_for(sa(A).ip()))), "{t}");
        // Stored (no cookie held yet) and echoed in ferry's own datagrams too.
        n.request_peers(now, sa(A));
        let out = drain(&mut n);
        assert!(text(&out[0].1).starts_with(&format!(r#"[{{"AlwaysReturned":{offer}}}"#)));
        // Offers over 256 bytes are ignored.
        let mut n = node(now, 1);
        let big = format!(r#"{{"cookie":"{}"}}"#, "a".repeat(300));
        let d = format!(
            r#"[{{"PleaseAlwaysReturnThisMessage":{big}}},{{"PleaseReturnThisMessage":{{"cookie":"1"}}}}]"#
        );
        n.handle_datagram(now, sa(A), d.as_bytes(), &Store::default());
        assert!(!text(&drain(&mut n)[0].1).contains("AlwaysReturned"));
    }

    #[test]
    fn c12_verification_first_and_first_echo_only() {
        let now = Instant::now();
        let (id, data) = file(10000, 1);
        let store = Store(vec![(id, data.clone())]);
        let mut n = node(now, 1);
        let c = n.cookie_for(sa(A).ip());
        // The echo comes after the request: still verified.
        let d = format!(
            r#"[{},{{"AlwaysReturned":{{"cookie":"{c}"}}}}]"#,
            send_content_el(&id, 0, 4096)
        );
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        assert_eq!(contents(&drain(&mut n)[0].1)[0].1.len(), 4096);
        // A bad first echo is not rescued by a good second one; a numeric cookie fails too.
        for first in [
            r#"{"AlwaysReturned":{"cookie":"00000000"}}"#,
            &format!(r#"{{"AlwaysReturned":{{"key":"{c}"}}}}"#),
        ] {
            let d = format!(
                r#"[{first},{},{{"AlwaysReturned":{{"cookie":"{c}"}}}}]"#,
                send_content_el(&id, 0, 4096)
            );
            n.handle_datagram(now, sa(A), d.as_bytes(), &store);
            assert_eq!(contents(&drain(&mut n)[0].1)[0].1.len(), 32);
        }
        // Another IP's cookie does not verify.
        let d = cookie_dg(&n, "192.0.2.9", &send_content_el(&id, 0, 4096));
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        assert_eq!(contents(&drain(&mut n)[0].1)[0].1.len(), 32);
    }

    #[test]
    fn c13_unverified_offer_stored_only_without_cookie() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let s = Store::default();
        let probe = r#"{"PleaseReturnThisMessage":{"cookie":"1"}}"#;
        let off = |c: &str| format!(r#"{{"PleaseAlwaysReturnThisMessage":{{"cookie":"{c}"}}}}"#);
        n.handle_datagram(
            now,
            sa(A),
            format!("[{},{probe}]", off("first")).as_bytes(),
            &s,
        );
        drain(&mut n);
        // A second unverified offer is echoed in the reply but not stored.
        n.handle_datagram(
            now,
            sa(A),
            format!("[{},{probe}]", off("spoof")).as_bytes(),
            &s,
        );
        assert!(text(&drain(&mut n)[0].1).contains(r#""cookie":"spoof""#));
        n.request_list(now, sa(A));
        assert!(text(&drain(&mut n)[0].1).contains(r#"{"AlwaysReturned":{"cookie":"first"}}"#));
        // A verified offer replaces it.
        let d = cookie_dg(&n, "192.0.2.1", &off("second"));
        n.handle_datagram(now, sa(A), d.as_bytes(), &s);
        n.request_list(now, sa(A));
        assert!(text(&drain(&mut n)[0].1).contains(r#"{"AlwaysReturned":{"cookie":"second"}}"#));
    }

    /// A node with many peers and files, so every list answer could be large.
    fn rich_node(now: Instant) -> (Node, Store) {
        let mut n = node(now, 1);
        for i in 1..=60u8 {
            let a = sa(&format!("198.51.100.{i}:24254"));
            let d = cookie_dg(&n, &format!("198.51.100.{i}"), r#"{"PleaseSendPeers":{}}"#);
            n.handle_datagram(now, a, d.as_bytes(), &Store::default());
        }
        drain(&mut n);
        let store = Store((0..100).map(|i| file(100 + i, i as u8)).collect());
        (n, store)
    }

    #[test]
    fn c14_unverified_budget_for_every_request_type() {
        let now = Instant::now();
        let (id, _) = file(100, 0);
        let holder_id = [9u8; 32];
        let offer = r#"{"PleaseAlwaysReturnThisMessage":{"cookie":"0123abcd"}}"#;
        let long_offer = format!(
            r#"{{"PleaseAlwaysReturnThisMessage":{{"cookie":"{}"}}}}"#,
            "z".repeat(230)
        );
        let reqs = [
            r#"[{"PleaseListContent":{}}]"#.to_string(),
            r#"[{"PleaseSendPeers":{}}]"#.to_string(),
            format!("[{}]", send_content_el(&id, 0, 4096)),
            format!("[{}]", send_content_el(&id, 90, 4096)),
            format!("[{}]", send_content_el(&holder_id, 0, 4096)),
            r#"[{"PleaseReturnThisMessage":{"cookie":"0.973888069"}}]"#.to_string(),
            format!("[{offer}]"),
            format!(r#"[{offer},{{"PleaseSendPeers":{{}}}},{{"PleaseListContent":{{}}}}]"#),
            format!("[{long_offer},{}]", send_content_el(&id, 0, 4096)),
            format!("[{}]", vec![send_content_el(&id, 0, 4096); 20].join(",")),
            format!(
                r#"[{{"PleaseReturnThisMessage":{{"pad":"{}"}}}}]"#,
                "q".repeat(3000)
            ),
            format!(
                "[{offer},{}]",
                vec![r#"{"PleaseReturnThisMessage":{"cookie":"0.1"}}"#; 30].join(",")
            ),
        ];
        for r in &reqs {
            let (mut n, mut store) = rich_node(now);
            store.0[0] = file(100, 0);
            n.add_holder(holder_id, sa("203.0.113.5:1"));
            n.handle_datagram(now, sa(A), r.as_bytes(), &store);
            let out = drain(&mut n);
            let sum: usize = out.iter().map(|(_, d)| d.len() + HEADER_BYTES).sum();
            assert!(
                sum <= 2 * (r.len() + HEADER_BYTES),
                "{r}: {sum} > 2 x {}",
                r.len() + 28
            );
            assert!(!out.is_empty(), "{r}: the offer at least");
            assert!(text(&out[0].1).contains("PleaseAlwaysReturnThisMessage"));
        }
    }

    #[test]
    fn c15_unverified_content_is_a_teaser() {
        let now = Instant::now();
        let (id, data) = file(10000, 2);
        let store = Store(vec![(id, data.clone())]);
        let mut n = node(now, 1);
        let d = format!("[{}]", send_content_el(&id, 100, 40960));
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        let out = drain(&mut n);
        let c = contents(&out[0].1);
        assert_eq!(c, vec![(100, data[100..132].to_vec(), Some(10000))]);
        assert!(d.len() + 28 >= (out[0].1.len() + 28) / 2);
    }

    #[test]
    fn c16_offer_until_confirmed_and_again_after_teaser_or_new_offer() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let id = [5u8; 32];
        n.set_downloading(id, true);
        let has_offer = |n: &mut Node| {
            n.request_content(now, sa(A), &id, 0, 4096);
            let out = drain(n);
            text(&out[0].1).contains("PleaseAlwaysReturnThisMessage")
                && text(&out[0].1).ends_with(r#"{"FerryHello":{"version":1,"max_length":40960}}]"#)
        };
        assert!(has_offer(&mut n));
        let s = Store::default();
        let their = r#"{"PleaseAlwaysReturnThisMessage":{"cookie":"11111111"}}"#;
        // Verified, with an offer: not confirmed yet.
        n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", their).as_bytes(), &s);
        assert!(has_offer(&mut n));
        // Verified without an offer: confirmed.
        n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", "").as_bytes(), &s);
        assert!(!has_offer(&mut n));
        // A teaser: offer again.
        let mut el = Vec::new();
        encode_content(&id, 0, &[1; 32], Some(100_000), &mut el);
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", text(&el)).as_bytes(),
            &s,
        );
        assert!(matches!(events(&mut n)[..], [NodeEvent::Content { .. }]));
        assert!(has_offer(&mut n));
        n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", "").as_bytes(), &s);
        assert!(!has_offer(&mut n));
        // A new offer: again.
        let new = r#"{"PleaseAlwaysReturnThisMessage":{"cookie":"22222222"}}"#;
        n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", new).as_bytes(), &s);
        assert!(has_offer(&mut n));
        // Repeating the offer we hold confirms (two ferry nodes).
        n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", new).as_bytes(), &s);
        assert!(!has_offer(&mut n));
        // An unverified datagram from it: again.
        n.handle_datagram(now, sa(A), br#"[{"PleaseSendPeers":{}}]"#, &s);
        drain(&mut n);
        assert!(has_offer(&mut n));
    }

    #[test]
    fn c18_peers_answer_strict_and_filtered() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let s = Store::default();
        for a in [
            "198.51.100.1:1",
            "[2001:db8::1]:24254",
            "127.0.0.1:7",
            "[::1]:8",
        ] {
            let ip = sa(a).ip().to_string();
            n.handle_datagram(now, sa(a), cookie_dg(&n, &ip, "").as_bytes(), &s);
        }
        let ask = |n: &mut Node, from: &str| {
            let ip = sa(from).ip().to_string();
            let d = cookie_dg(n, &ip, r#"{"PleaseSendPeers":{}}"#);
            n.handle_datagram(now, sa(from), d.as_bytes(), &s);
            let out = drain(n);
            let t = text(&out[0].1).to_string();
            match msgs(&out[0].1)
                .into_iter()
                .find(|m| matches!(m, Message::Peers(_)))
            {
                Some(Message::Peers(p)) => (p, t),
                _ => panic!("no Peers"),
            }
        };
        let (p, t) = ask(&mut n, "198.51.100.1:1");
        assert_eq!(p.len(), 1, "not the requester, no loopback: {t}");
        assert!(t.contains(r#""[2001:db8::1]:24254""#));
        let (p, _) = ask(&mut n, "127.0.0.1:9");
        assert_eq!(p.len(), 4, "loopback to loopback");
    }

    #[test]
    fn c19_c20_c42_probes_and_returned_messages() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let s = Store::default();
        // Echo of a probe, exactly.
        n.handle_datagram(
            now,
            sa(A),
            br#"[{"PleaseReturnThisMessage":{"cookie":"0.973888069"}}]"#,
            &s,
        );
        assert!(
            text(&drain(&mut n)[0].1).contains(r#"{"ReturnedMessage":{"cookie":"0.973888069"}}"#)
        );
        // Own probe: decimal seconds since start.
        let later = now + Duration::from_millis(12_345);
        n.add_peer(later, sa(A));
        assert!(drain(&mut n).is_empty());
        assert_eq!(n.poll_timeout(), Some(now));
        n.handle_timeout(later);
        let out = drain(&mut n);
        let probe = msgs(&out[0].1)
            .into_iter()
            .find_map(|m| match m {
                Message::PleaseReturnThisMessage(r) => Some(cookie_of(&r).unwrap().into_owned()),
                _ => None,
            })
            .unwrap();
        assert_eq!(probe, "12.345000000");
        let ret = |c: &str| format!(r#"{{"ReturnedMessage":{{"cookie":"{c}"}}}}"#);
        // C42: verified garbage is ignored without a panic.
        for bad in ["not-a-number", "-1", "NaN", "1e300", "12.345000001"] {
            n.handle_datagram(
                later,
                sa(A),
                cookie_dg(&n, "192.0.2.1", &ret(bad)).as_bytes(),
                &s,
            );
        }
        // From another address, or too late: ignored.
        n.handle_datagram(
            later,
            sa("192.0.2.1:1"),
            cookie_dg(&n, "192.0.2.1", &ret(&probe)).as_bytes(),
            &s,
        );
        n.handle_datagram(
            later + Duration::from_secs(11),
            sa(A),
            cookie_dg(&n, "192.0.2.1", &ret(&probe)).as_bytes(),
            &s,
        );
        assert!(!events(&mut n)
            .iter()
            .any(|e| matches!(e, NodeEvent::Rtt { .. })));
        // A fresh probe answered in time gives an RTT.
        let t2 = later + Duration::from_secs(31);
        n.handle_timeout(t2);
        let out = drain(&mut n);
        let probe = msgs(&out[0].1)
            .into_iter()
            .find_map(|m| match m {
                Message::PleaseReturnThisMessage(r) => Some(cookie_of(&r).unwrap().into_owned()),
                _ => None,
            })
            .unwrap();
        n.handle_datagram(
            t2 + Duration::from_millis(7),
            sa(A),
            cookie_dg(&n, "192.0.2.1", &ret(&probe)).as_bytes(),
            &s,
        );
        assert!(events(&mut n).contains(&NodeEvent::Rtt {
            addr: sa(A),
            rtt: Duration::from_millis(7)
        }));
        assert_eq!(n.srtt(sa(A)), Some(Duration::from_millis(7)));
        // Replayed: ignored.
        n.handle_datagram(
            t2 + Duration::from_millis(8),
            sa(A),
            cookie_dg(&n, "192.0.2.1", &ret(&probe)).as_bytes(),
            &s,
        );
        assert!(events(&mut n).is_empty());
    }

    #[test]
    fn c21_c23_c24_serving() {
        let now = Instant::now();
        let (id, data) = file(100_000, 9);
        let (eid, _) = file(0, 0);
        assert_eq!(
            id_hex(&eid),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let store = Store(vec![(id, data.clone()), (eid, vec![])]);
        let mut n = node(now, 1);
        let cases: [(Id, u64, u64, usize); 7] = [
            (id, 0, 4096, 4096),
            (id, 1, 4096, 4096),
            (id, 99_999, 4096, 1),
            (id, 5, 1 << 40, 40960),
            (id, 100_000, 4096, 0),
            (id, u64::MAX, 4096, 0),
            (eid, 0, 4096, 0),
        ];
        for (i, off, len, expect) in cases {
            let d = cookie_dg(&n, "192.0.2.1", &send_content_el(&i, off, len));
            n.handle_datagram(now, sa(A), d.as_bytes(), &store);
            let out = drain(&mut n);
            let c = contents(&out[0].1);
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].0, off);
            assert_eq!(c[0].1.len(), expect);
            let eof = store.size_of(&i).unwrap();
            assert_eq!(c[0].2, Some(eof));
            if expect > 0 {
                assert_eq!(c[0].1, data[off as usize..off as usize + expect]);
            } else {
                assert!(text(&out[0].1).contains(r#""base64":"""#));
            }
        }
        // 16 content requests per datagram at most.
        let d = cookie_dg(
            &n,
            "192.0.2.1",
            &vec![send_content_el(&id, 0, 16); 20].join(","),
        );
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        let served: usize = drain(&mut n).iter().map(|(_, d)| contents(d).len()).sum();
        assert_eq!(served, 16);
    }

    #[test]
    fn c22_bad_ids_unknown_and_maybe_they_have_some() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let s = Store::default();
        let d = cookie_dg(
            &n,
            "192.0.2.1",
            r#"{"PleaseSendContent":{"id":"../../etc/passwd","length":1,"offset":0}}"#,
        );
        n.handle_datagram(now, sa(A), d.as_bytes(), &s);
        // Bad id: the element is skipped; with nothing else handled there is no reply.
        assert!(drain(&mut n).is_empty());
        let id = [7u8; 32];
        n.add_holder(id, sa("203.0.113.1:5"));
        n.add_holder(id, sa(A));
        let d = cookie_dg(&n, "192.0.2.1", &send_content_el(&id, 0, 4096));
        n.handle_datagram(now, sa(A), d.as_bytes(), &s);
        let out = drain(&mut n);
        let m = msgs(&out[0].1);
        assert!(m.contains(&Message::MaybeTheyHaveSome {
            id,
            peers: vec![sa("203.0.113.1:5")]
        }));
    }

    #[test]
    fn c25_content_list_rotates_fits_and_hides_blocks() {
        let now = Instant::now();
        let mut files: Vec<(Id, Vec<u8>)> = (0..40).map(|i| file(1000 + i, i as u8)).collect();
        files[0] = file(262_144, 1);
        let store = Store(files);
        let mut n = node(now, 1);
        let mut seen = HashSet::new();
        for _ in 0..4 {
            let d = cookie_dg(&n, "192.0.2.1", r#"{"PleaseListContent":{}}"#);
            n.handle_datagram(now, sa(A), d.as_bytes(), &store);
            let out = drain(&mut n);
            assert_eq!(out.len(), 1);
            let Some(Message::ContentList(r)) = msgs(&out[0].1)
                .into_iter()
                .find(|m| matches!(m, Message::ContentList(_)))
            else {
                panic!()
            };
            assert!(r.len() >= 10);
            for (id, size) in r {
                assert_ne!(size, 262_144);
                assert_eq!(store.size_of(&id), Some(size));
                seen.insert(id);
            }
        }
        assert_eq!(seen.len(), 39, "repeated requests cover the catalog");
    }

    #[test]
    fn c38_peer_table_and_candidates_bounded() {
        let now = Instant::now();
        let cfg = NodeConfig {
            max_peers: 8,
            ..NodeConfig::default()
        };
        let mut n = Node::new(cfg, [1; 32], now);
        n.add_peer(now, sa("10.9.9.9:1"));
        for i in 0..30u8 {
            let a = sa(&format!("198.51.100.{i}:1"));
            let d = cookie_dg(&n, &a.ip().to_string(), "");
            n.handle_datagram(
                now + Duration::from_secs(u64::from(i)),
                a,
                d.as_bytes(),
                &Store::default(),
            );
        }
        assert_eq!(n.peer_count(), 8);
        assert!(
            n.peers.contains_key(&sa("10.9.9.9:1")),
            "configured never evicted"
        );
        // Candidates: solicited Peers replies from many peers.
        let t = now + Duration::from_secs(40);
        for i in 20..30u8 {
            let a = sa(&format!("198.51.100.{i}:1"));
            n.request_peers(t, a);
            let list: Vec<String> = (0..16).map(|j| format!(r#""203.0.{i}.{j}:1""#)).collect();
            let d = cookie_dg(
                &n,
                &a.ip().to_string(),
                &format!(r#"{{"Peers":{{"peers":[{}]}}}}"#, list.join(",")),
            );
            n.handle_datagram(t, a, d.as_bytes(), &Store::default());
        }
        assert_eq!(n.candidate_count(), 8);
    }

    #[test]
    fn c39_probe_pacing() {
        let now = Instant::now();
        let mut n = node(now, 1);
        for i in 0..20u8 {
            n.add_peer(now, sa(&format!("198.51.100.{i}:1")));
        }
        drain(&mut n);
        n.candidates
            .extend((0..10u8).map(|i| sa(&format!("203.0.113.{i}:1"))));
        let mut per_addr: HashMap<SocketAddr, Vec<Instant>> = HashMap::new();
        for s in 0..120u64 {
            let t = now + Duration::from_secs(s);
            n.handle_timeout(t);
            let out = drain(&mut n);
            assert!(out.len() <= 6, "second {s}: {}", out.len());
            for (to, d) in out {
                if to.ip().to_string().starts_with("203.") {
                    assert_eq!(d.len(), 57);
                }
                per_addr.entry(to).or_default().push(t);
            }
        }
        for (a, times) in per_addr {
            for w in times.windows(2) {
                assert!(w[1] - w[0] >= Duration::from_secs(30), "{a}");
            }
        }
    }

    #[test]
    fn c40_peers_only_solicited_verified_16_new() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let list: Vec<String> = (1..=40).map(|j| format!(r#""203.0.113.{j}:1""#)).collect();
        let peers_el = format!(
            r#"{{"Peers":{{"peers":[{},"0.0.0.0:1","1.2.3.4:0","224.0.0.1:1"]}}}}"#,
            list.join(",")
        );
        // Unsolicited, verified: ignored.
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &peers_el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(n.candidate_count(), 0);
        n.request_peers(now, sa(A));
        drain(&mut n);
        // Solicited, unverified: ignored.
        n.handle_datagram(
            now,
            sa(A),
            format!("[{peers_el}]").as_bytes(),
            &Store::default(),
        );
        assert_eq!(n.candidate_count(), 0);
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &peers_el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(n.candidate_count(), 16);
        let ev = events(&mut n);
        let Some(NodeEvent::Peers { peers, .. }) =
            ev.iter().find(|e| matches!(e, NodeEvent::Peers { .. }))
        else {
            panic!()
        };
        assert_eq!(peers.len(), 40, "forbidden entries filtered");
        // Too late (over 10 s): ignored.
        let before = n.candidate_count();
        n.handle_datagram(
            now + Duration::from_secs(11),
            sa(A),
            cookie_dg(&n, "192.0.2.1", &peers_el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(n.candidate_count(), before);
        // Discovery off: nothing queued.
        let mut n = Node::new(
            NodeConfig {
                discovery: false,
                ..NodeConfig::default()
            },
            [1; 32],
            now,
        );
        n.request_peers(now, sa(A));
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &peers_el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(n.candidate_count(), 0);
    }

    #[test]
    fn c41_maybe_they_have_some_caps() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let id = [3u8; 32];
        let list: Vec<String> = (1..=200)
            .map(|j| format!(r#""203.0.{}.{}:1""#, j / 100, j % 100 + 1))
            .collect();
        let el = format!(
            r#"{{"MaybeTheyHaveSome":{{"id":"{}","peers":[{}]}}}}"#,
            id_hex(&id),
            list.join(",")
        );
        let holders = |n: &mut Node| -> usize {
            events(n)
                .into_iter()
                .map(|e| match e {
                    NodeEvent::Holders { peers, .. } => peers.len(),
                    _ => 0,
                })
                .sum()
        };
        // Not downloading / not asked: ignored.
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &el).as_bytes(),
            &Store::default(),
        );
        n.set_downloading(id, true);
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(holders(&mut n), 0);
        n.request_content(now, sa(A), &id, 0, 4096);
        drain(&mut n);
        // Unverified: ignored.
        n.handle_datagram(now, sa(A), format!("[{el}]").as_bytes(), &Store::default());
        assert_eq!(holders(&mut n), 0);
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(holders(&mut n), 4, "4 new sources per second");
        n.handle_timeout(now + Duration::from_millis(500));
        assert_eq!(holders(&mut n), 0);
        n.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(holders(&mut n), 4, "8 per message in all");
        n.handle_timeout(now + Duration::from_secs(2));
        assert_eq!(holders(&mut n), 0);
        // Asked over 30 s ago: ignored.
        n.handle_datagram(
            now + Duration::from_secs(31),
            sa(A),
            cookie_dg(&n, "192.0.2.1", &el).as_bytes(),
            &Store::default(),
        );
        n.handle_timeout(now + Duration::from_secs(40));
        assert_eq!(holders(&mut n), 0);
    }

    #[test]
    fn c42_reference_crash_inputs_content_side() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let id = [4u8; 32];
        n.set_downloading(id, true);
        let mut el = Vec::new();
        encode_content(&id, 9999, &[0; 4096], Some(10_000), &mut el);
        // Unverified: dropped by the node itself.
        n.handle_datagram(
            now,
            sa(A),
            format!("[{}]", text(&el)).as_bytes(),
            &Store::default(),
        );
        assert!(events(&mut n).is_empty());
        // Verified: handed to the downloader, which refuses it (download.rs); no panic here.
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", text(&el)).as_bytes(),
            &Store::default(),
        );
        let mut huge = Vec::new();
        encode_content(&id, 0, &[0; 4096], Some(1 << 50), &mut huge);
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", text(&huge)).as_bytes(),
            &Store::default(),
        );
        let ev = events(&mut n);
        assert_eq!(ev.len(), 2);
        assert!(matches!(&ev[1], NodeEvent::Content { eof: Some(e), .. } if *e == 1 << 50));
        // Content for an id not being downloaded: ignored.
        n.set_downloading(id, false);
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", text(&el)).as_bytes(),
            &Store::default(),
        );
        assert!(events(&mut n).is_empty());
        assert!(drain(&mut n).is_empty(), "no replies to Content");
    }

    #[test]
    fn c43_store_has_no_write_path() {
        // ContentStore offers size_of, read_at, list and count only: a remote request cannot
        // make the node write anything. Nothing to assert beyond compiling this.
        fn _only_reads(s: &dyn ContentStore) -> (Option<u64>, usize) {
            (s.size_of(&[0; 32]), s.count())
        }
    }

    #[test]
    fn unverified_rate_limit_per_ip() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let d = br#"[{"PleaseReturnThisMessage":{"cookie":"1"}}]"#;
        for _ in 0..100 {
            n.handle_datagram(now, sa(A), d, &Store::default());
        }
        assert_eq!(drain(&mut n).len(), 64);
        n.handle_datagram(now + Duration::from_secs(1), sa(A), d, &Store::default());
        assert_eq!(drain(&mut n).len(), 1);
        // 1 MB/s in total over many IPs.
        let cfg = NodeConfig {
            unverified_bytes_per_sec: 1000,
            ..NodeConfig::default()
        };
        let mut n = Node::new(cfg, [1; 32], now);
        for i in 0..50u8 {
            n.handle_datagram(now, sa(&format!("198.51.100.{i}:1")), d, &Store::default());
        }
        let total: usize = drain(&mut n).iter().map(|(_, d)| d.len()).sum();
        assert!(total <= 1000);
        assert!(n.stats().rate_limited > 0);
    }

    #[test]
    fn handshake_two_ferry_nodes_verify_within_one_round_trip() {
        let now = Instant::now();
        let (id, data) = file(100_000, 5);
        let mut sides = [
            Side {
                addr: sa("10.0.0.1:24254"),
                node: node(now, 1),
                store: Store::default(),
            },
            Side {
                addr: sa("10.0.0.2:24254"),
                node: node(now, 2),
                store: Store(vec![(id, data.clone())]),
            },
        ];
        let b = sides[1].addr;
        sides[0].node.set_downloading(id, true);
        sides[0].node.request_content(now, b, &id, 0, 4096);
        let log = pump(now, &mut sides);
        // One round trip: request, then a teaser that verifies b for a (and a for b).
        assert_eq!(log.len(), 2);
        assert!(sides[0].node.is_verified(b));
        // b has seen only a's offer so far; a's next datagram echoes b's cookie.
        assert!(!sides[1].node.is_verified(sides[0].addr));
        assert_eq!(sides[0].node.ferry_max_length(b), Some(40960));
        let ev = events(&mut sides[0].node);
        assert!(ev.contains(&NodeEvent::FerryPeer {
            addr: b,
            max_length: 40960
        }));
        assert!(matches!(ev.last(), Some(NodeEvent::Content { data, .. }) if data.len() == 32));
        // Next request carries b's cookie: full data, and b now verifies a.
        sides[0].node.request_content(now, b, &id, 0, 32768);
        let log = pump(now, &mut sides);
        assert_eq!(log.len(), 1 + 1);
        assert!(sides[1].node.is_verified(sides[0].addr));
        let ev = events(&mut sides[0].node);
        assert!(matches!(&ev[..], [NodeEvent::Content { data: d, .. }] if d[..] == data[..32768]));
        // Both confirm and stop attaching offers.
        sides[0].node.request_content(now, b, &id, 32768, 32768);
        sides[0].node.request_content(now, b, &id, 65536, 32768);
        let log = pump(now, &mut sides);
        assert_eq!(log.len(), 3, "two batched requests, two replies");
        sides[0].node.request_content(now, b, &id, 0, 4096);
        let log = pump(now, &mut sides);
        for (_, _, d) in &log {
            assert!(
                !text(d).contains("PleaseAlwaysReturnThisMessage"),
                "{}",
                text(d)
            );
        }
    }

    /// A peer that behaves like the reference node: string cookies keyed by IP, 32-byte teasers
    /// to unverified requesters, offers stored only from verified datagrams, 4096-byte blocks.
    struct RefPeer {
        addr: SocketAddr,
        secret: u64,
        their_offer: Option<String>,
        data: Vec<u8>,
        id: Id,
    }

    impl RefPeer {
        fn cookie(&self, ip: IpAddr) -> String {
            let h = Sha256::digest(format!("{}{ip}", self.secret));
            format!("{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
        }

        fn handle(&mut self, from: SocketAddr, d: &[u8]) -> Option<Vec<u8>> {
            let m = msgs(d);
            let verified = m.iter().find_map(|m| match m {
                Message::AlwaysReturned(r) => {
                    Some(cookie_of(r).map(|c| c == self.cookie(from.ip())))
                }
                _ => None,
            }) == Some(Some(true));
            let offer = m.iter().find_map(|m| match m {
                Message::PleaseAlwaysReturnThisMessage(r) if cookie_of(r).is_some() => {
                    Some(r.clone())
                }
                _ => None,
            });
            if verified {
                if let Some(o) = &offer {
                    self.their_offer = Some(o.clone());
                }
            }
            let mut out = DatagramBuilder::new(65507);
            for m in &m {
                if let Message::PleaseSendContent { id, offset, length } = m {
                    assert_eq!(*id, self.id);
                    let eof = self.data.len() as u64;
                    let n = if verified { (*length).min(40960) } else { 32 }
                        .min(eof.saturating_sub(*offset));
                    let off = *offset as usize;
                    out.push_content(id, *offset, &self.data[off..off + n as usize], Some(eof));
                }
            }
            if !verified {
                out.try_push(&Message::PleaseAlwaysReturnThisMessage(cookie_payload(
                    &self.cookie(from.ip()),
                )));
                if let Some(o) = offer {
                    out.try_push(&Message::AlwaysReturned(o));
                }
            } else if let Some(o) = &self.their_offer {
                out.try_push(&Message::AlwaysReturned(o.clone()));
            }
            Some(out.finish())
        }

        /// A request of the reference's downloader: one per datagram, its offer only while it
        /// holds no cookie.
        fn request(&self, offset: u64) -> Vec<u8> {
            let mut b = DatagramBuilder::new(1472);
            b.try_push(&Message::PleaseSendContent {
                id: self.id,
                offset,
                length: 4096,
            });
            match &self.their_offer {
                Some(o) => b.try_push(&Message::AlwaysReturned(o.clone())),
                None => b.try_push(&Message::PleaseAlwaysReturnThisMessage(cookie_payload(
                    "feedf00d",
                ))),
            };
            b.finish()
        }
    }

    #[test]
    fn c44_reference_like_peer_as_seeder_and_leecher() {
        let now = Instant::now();
        let (id, data) = file(65537, 7);
        let ra = sa("127.0.0.1:24401");
        let fa = sa("127.0.0.1:24402");
        // Reference seeds, ferry leeches.
        let mut r = RefPeer {
            addr: ra,
            secret: 42,
            their_offer: None,
            data: data.clone(),
            id,
        };
        let mut f = node(now, 1);
        f.set_downloading(id, true);
        let mut got = Vec::new();
        for offset in [0u64, 0, 4096] {
            f.request_content(now, r.addr, &id, offset, 4096);
            for (to, d) in drain(&mut f) {
                assert_eq!(to, ra);
                assert_eq!(
                    msgs(&d)
                        .iter()
                        .filter(|m| matches!(m, Message::PleaseSendContent { .. }))
                        .count(),
                    1
                );
                let reply = r.handle(fa, &d).unwrap();
                f.handle_datagram(now, ra, &reply, &Store::default());
                assert!(
                    drain(&mut f).is_empty(),
                    "no reply to a Content-only datagram"
                );
            }
            for e in events(&mut f) {
                if let NodeEvent::Content { data, offset, .. } = e {
                    got.push((offset, data.len()));
                }
            }
        }
        assert_eq!(
            got,
            vec![(0, 32), (0, 4096), (4096, 4096)],
            "teaser first, then blocks; {}",
            text(&f.poll_transmit().map(|x| x.1).unwrap_or_default())
        );
        // Reference leeches, ferry seeds: a teaser, then it stores ferry's cookie.
        let mut r = RefPeer {
            addr: ra,
            secret: 43,
            their_offer: None,
            data: vec![],
            id,
        };
        let store = Store(vec![(id, data.clone())]);
        let mut f = node(now, 2);
        let mut sizes = Vec::new();
        for offset in [0u64, 0, 65536] {
            let req = r.request(offset);
            f.handle_datagram(now, r.addr, &req, &store);
            for (_, d) in drain(&mut f) {
                for (o, bytes, eof) in contents(&d) {
                    assert_eq!(eof, Some(65537));
                    assert_eq!(bytes, data[o as usize..o as usize + bytes.len()]);
                    sizes.push(bytes.len());
                }
                // The reference verifies the echo of its offer and stores ferry's cookie.
                let m = msgs(&d);
                if m.contains(&Message::AlwaysReturned(cookie_payload("feedf00d"))) {
                    r.their_offer = m.iter().find_map(|m| match m {
                        Message::PleaseAlwaysReturnThisMessage(o) => Some(o.clone()),
                        _ => None,
                    });
                }
            }
        }
        assert_eq!(sizes, vec![32, 4096, 1]);
    }

    #[test]
    fn stale_cookie_after_rotation_reverified_in_one_round_trip() {
        let now = Instant::now();
        let (id, data) = file(10_000, 1);
        let store = Store(vec![(id, data)]);
        let cfg = NodeConfig {
            cookie_rotate: Duration::from_secs(10),
            ..NodeConfig::default()
        };
        let mut n = Node::new(cfg, [1; 32], now);
        let old = cookie_dg(&n, "192.0.2.1", &send_content_el(&id, 0, 4096));
        n.handle_timeout(now + Duration::from_secs(10));
        n.handle_datagram(now, sa(A), old.as_bytes(), &store);
        assert_eq!(
            contents(&drain(&mut n)[0].1)[0].1.len(),
            4096,
            "previous secret valid"
        );
        n.handle_timeout(now + Duration::from_secs(20));
        drain(&mut n); // the tick's probe of the new peer
        n.handle_datagram(now, sa(A), old.as_bytes(), &store);
        let out = drain(&mut n);
        assert_eq!(contents(&out[0].1)[0].1.len(), 32, "stale: a teaser");
        let fresh = n.cookie_for(sa(A).ip());
        assert!(text(&out[0].1).contains(&fresh), "with the new offer");
        let d = cookie_dg(&n, "192.0.2.1", &send_content_el(&id, 0, 4096));
        n.handle_datagram(now, sa(A), d.as_bytes(), &store);
        assert_eq!(contents(&drain(&mut n)[0].1)[0].1.len(), 4096);
    }

    #[test]
    fn ipv4_mapped_sources_and_ipv6_control_max() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let d = br#"[{"PleaseReturnThisMessage":{"cookie":"1"}}]"#;
        n.handle_datagram(now, sa("[::ffff:192.0.2.1]:24254"), d, &Store::default());
        let out = drain(&mut n);
        assert_eq!(out[0].0, sa(A), "stored and answered as IPv4");
        // A verified IPv6 requester: every datagram within 1452 bytes.
        let (mut n, store) = rich_node(now);
        let v6 = sa("[2001:db8::5]:1");
        let pad = format!(
            r#"{{"PleaseReturnThisMessage":{{"pad":"{}"}}}}"#,
            "p".repeat(1380)
        );
        let req = format!(r#"{{"PleaseSendPeers":{{}}}},{{"PleaseListContent":{{}}}},{pad}"#);
        let d = cookie_dg(&n, "2001:db8::5", &req);
        n.handle_datagram(now, v6, d.as_bytes(), &store);
        let out = drain(&mut n);
        assert!(out.len() >= 2);
        assert!(out.iter().all(|(_, d)| d.len() <= 1452));
    }

    #[test]
    fn no_panic_on_truncations_and_random_datagrams() {
        let now = Instant::now();
        let (id, data) = file(50_000, 1);
        let store = Store(vec![(id, data)]);
        let mut n = node(now, 1);
        n.set_downloading(id, true);
        n.add_holder(id, sa("203.0.113.1:1"));
        let c = n.cookie_for(sa(A).ip());
        let mut el = Vec::new();
        encode_content(&id, 0, &[1; 100], Some(50_000), &mut el);
        let fixtures = [
            cookie_dg(&n, "192.0.2.1", &send_content_el(&id, 0, 40960)),
            format!(
                r#"[{{"PleaseAlwaysReturnThisMessage":{{"cookie":"x"}}}},{{"PleaseSendPeers":{{}}}},{{"PleaseListContent":{{}}}},{{"AlwaysReturned":{{"cookie":"{c}"}}}}]"#
            ),
            cookie_dg(&n, "192.0.2.1", text(&el)),
            cookie_dg(
                &n,
                "192.0.2.1",
                &format!(
                    r#"{{"MaybeTheyHaveSome":{{"id":"{}","peers":["1.2.3.4:5"]}}}},{{"Peers":{{"peers":["[::1]:5"]}}}},{{"ContentList":{{"results":[["{}",5]]}}}},{{"ReturnedMessage":{{"cookie":"1e300"}}}}"#,
                    id_hex(&id),
                    id_hex(&id)
                ),
            ),
        ];
        for f in &fixtures {
            for i in 0..=f.len() {
                n.handle_datagram(now, sa(A), &f.as_bytes()[..i], &store);
                drain(&mut n);
                events(&mut n);
            }
        }
        let words: Vec<String> = vec![
            "[".into(),
            "]".into(),
            "{".into(),
            "}".into(),
            ",".into(),
            ":".into(),
            "\"".into(),
            r#""PleaseSendContent""#.into(),
            r#""Content""#.into(),
            r#""id""#.into(),
            format!("\"{}\"", id_hex(&id)),
            r#""offset""#.into(),
            r#""length""#.into(),
            "0".into(),
            "4096".into(),
            "-1".into(),
            "1e300".into(),
            r#""base64""#.into(),
            r#""AAAA""#.into(),
            r#""eof""#.into(),
            r#""AlwaysReturned""#.into(),
            format!(r#"{{"cookie":"{c}"}}"#),
            r#""PleaseAlwaysReturnThisMessage""#.into(),
            r#""Peers""#.into(),
            r#""peers""#.into(),
            r#""1.2.3.4:5""#.into(),
            r#""PleaseSendPeers""#.into(),
            r#""ReturnedMessage""#.into(),
            r#""PleaseReturnThisMessage""#.into(),
            r#""cookie""#.into(),
            r#""MaybeTheyHaveSome""#.into(),
            r#""ContentList""#.into(),
            r#""results""#.into(),
            r#""PleaseListContent""#.into(),
            "{}".into(),
            "null".into(),
            "\u{ff}".into(),
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..10_000u64 {
            let mut d = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = x % 40;
            let mut y = x;
            for _ in 0..len {
                y = y
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                d.push_str(&words[(y >> 33) as usize % words.len()]);
            }
            let t = now + Duration::from_millis(i);
            n.handle_datagram(t, sa(A), d.as_bytes(), &store);
            if i % 97 == 0 {
                n.handle_timeout(t);
            }
            drain(&mut n);
            events(&mut n);
        }
    }
}
