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
//!
//! Who gets contacted (cjp2p.md 1.3, C2): the peers the user configured, the addresses those
//! advertise (with `discovery` on; ferry asks no other peer for its peers and ignores the lists
//! of any other), the peers that contacted ferry (RTT probes with `discovery` on, to learn
//! whether they answer) and the senders it answers. A node advertises only peers that answered
//! something it asked, so a client that only asks (`cjp2p get`) is never advertised. With
//! `serve` off (the client role) the node answers no request at all and announces no
//! `FerryHello`. Identical content requests from one address are answered a few times a second
//! at most (`activity`), and what is served and refused can be kept for `-v` logs.
//!
//! The parts: `peers` (the peer table and what ferry asked whom), `verify` (what a verified
//! or unverified datagram changes, and the unverified rate limits), `outgoing` (ferry's own
//! requests with echo, offer and `FerryHello`), `serve` (content and list answers and the reply
//! builder), `discovery` (holders and `MaybeTheyHaveSome`), `timers` (the maintenance tick),
//! `activity` (the repeat limiter and the served/refused ledger).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::cookie::CookieJar;
use super::wire::{cookie_of, parse_datagram, Id, ListParts, Message, MAX_OFFER};
use crate::transport::canonical_addr;
pub use activity::Activity;
use activity::{Ledger, Repeats};

mod activity;
mod discovery;
mod outgoing;
mod peers;
mod serve;
#[cfg(test)]
mod testkit;
mod timers;
mod verify;

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
    /// Learn and contact the addresses that configured peers advertise, and probe peers that
    /// contacted ferry (default true). Addresses advertised by any other peer are never
    /// followed, and only configured peers are asked for their peers (see `peers`).
    pub discovery: bool,
    /// Answer requests from others (content, lists, peers, RTT probes) and announce
    /// `FerryHello` (default true). A client (`cjp2p get`, `list`, `peers`) sets it false: it
    /// serves nothing, answers nothing but the cookie handshake of peers it contacted, and so is
    /// never taken for a node and advertised.
    pub serve: bool,
    /// Identical `PleaseSendContent` (same id, offset and length; any offset at or past `eof`
    /// counts as one) answered per second to one address (default 4); the rest are ignored. The
    /// reference asks for a 0-byte file again at once after every answer, without end, sweeping
    /// the 64 offsets of its window.
    pub max_repeats_per_sec: u32,
    /// Keep a ledger of what was served and refused to whom, for `take_activity` (default
    /// false: it costs a map update per request).
    pub log_activity: bool,
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
            serve: true,
            max_repeats_per_sec: 4,
            log_activity: false,
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
    /// A `Content` for an id being downloaded arrived in a datagram that failed the cookie
    /// check: typically a source that restarted and forgot ferry's cookie. Ferry has offered
    /// its cookie again; the downloader should ask again at once (`Download::on_refused`).
    Refused {
        from: SocketAddr,
        id: [u8; 32],
        offset: u64,
    },
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
    /// `PleaseSendContent` for ids ferry neither serves nor knows holders of.
    pub unknown_ids: u64,
    /// Identical `PleaseSendContent` over `max_repeats_per_sec`, not answered.
    pub repeats_ignored: u64,
    /// Requests not answered because this node serves nothing (`serve` off).
    pub refused_requests: u64,
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
    /// It answered something ferry asked (a probe, a list, content): a node that serves, so it
    /// may be advertised. A client that only asks never is.
    answered: bool,
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
            answered: false,
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
    /// Requests toward ferry peers, batched until the next `poll_transmit`, with the bytes
    /// they take.
    batches: Vec<(SocketAddr, Vec<Message>, usize)>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<NodeEvent>,
    unverified_per_ip: HashMap<IpAddr, Window>,
    unverified_bytes: Window,
    list_cursor: usize,
    next_tick: Instant,
    rng: u64,
    repeats: Repeats,
    ledger: Ledger,
    /// The bytes of the `Content` being built (reused: at most `content_max`).
    read_buf: Vec<u8>,
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
            repeats: Repeats::default(),
            ledger: Ledger::default(),
            read_buf: Vec::new(),
            stats: NodeStats::default(),
        }
    }

    /// Ferry's own addresses: never contacted, datagrams from them dropped.
    pub fn set_local_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.local = addrs.into_iter().map(canonical_addr).collect();
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

    pub fn stats(&self) -> NodeStats {
        self.stats.clone()
    }

    /// What was served and refused to whom since the last call (empty unless `log_activity`).
    pub fn take_activity(&mut self) -> Vec<Activity> {
        self.ledger.take()
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
        let from = canonical_addr(from);
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
        let serve = self.cfg.serve;
        for m in dg.messages {
            if !serve && m.is_request() {
                // A client answers no request; the cookie handshake below still goes on.
                self.stats.refused_requests += 1;
                let id = match &m {
                    Message::PleaseSendContent { id, .. } => Some(*id),
                    _ => None,
                };
                self.ledger
                    .refused(&self.cfg, from, id, "this node serves nothing");
                continue;
            }
            match m {
                Message::PleaseAlwaysReturnThisMessage(_) => {
                    // A client completes the handshake only with addresses it contacted.
                    handled |= !verified && (serve || self.asked.contains_key(&from));
                }
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
                        self.ledger.refused(
                            &self.cfg,
                            from,
                            Some(id),
                            "over 16 requests in one datagram",
                        );
                        continue;
                    }
                    // Requests at or past eof all get the same empty answer: one key for them
                    // (the reference sweeps 64 such offsets of an empty file, without end).
                    let key = match store.size_of(&id) {
                        Some(eof) if offset >= eof => (id, u64::MAX, 0),
                        _ => (id, offset, length),
                    };
                    let limit = self.cfg.max_repeats_per_sec;
                    if !self.repeats.allow(now, from, key, limit) {
                        self.stats.repeats_ignored += 1;
                        self.ledger.refused(
                            &self.cfg,
                            from,
                            Some(id),
                            "the same request again, over the repeat limit",
                        );
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
                        self.ledger.listed(&self.cfg, from);
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
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::proto::cjp2p::wire::{encode_content, id_hex};

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

    /// The generator behind the random picks (holders, `MaybeTheyHaveSome`) is Marsaglia's
    /// xorshift64 with shifts 13, 7, 17: from state 1 its published sequence. One operator
    /// wrong still looks random, but `|` for `^` is no longer a permutation of the states and
    /// can fall into short cycles.
    #[test]
    fn picks_come_from_xorshift64_13_7_17() {
        let mut n = node(Instant::now(), 1);
        n.rng = 1;
        assert_eq!(
            [n.next_random(), n.next_random(), n.next_random()],
            [1_082_269_761, 0x1000_4106_0c01_1441, 0x9b1e_842f_6e86_2629]
        );
    }
}
