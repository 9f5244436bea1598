//! The peer table (cjp2p.md section 8): configured and learnt peers, the offer each wants
//! echoed, verified/confirmed flags, RTT from probes, what ferry recently asked each address (the
//! "solicited" rules), which peers are advertised in `Peers`, and the `Peers` and
//! `ReturnedMessage` answers ferry accepts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{within, Asked, Node, NodeEvent, Peer};
use super::{ADVERTISE_WITHIN, MAX_ASKED, MAX_NEW_CANDIDATES, MAX_PEERS_ANSWER};
use super::{MAYBE_SOLICITED_FOR, SOLICITED_FOR, STALE_AFTER_MISSED};
use crate::proto::cjp2p::wire::cookie_of;
use crate::transport::canonical_addr;

impl Node {
    /// A peer configured by the user (`--peer`): kept for good and probed from the next
    /// maintenance tick on, which is due at once (`poll_timeout`), within the 4-per-second cap.
    pub fn add_peer(&mut self, now: Instant, addr: SocketAddr) {
        let addr = canonical_addr(addr);
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
    pub(super) fn insert_peer(&mut self, now: Instant, addr: SocketAddr, configured: bool) -> bool {
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
    pub(super) fn stored_offer(&self, addr: SocketAddr) -> Option<&String> {
        match self.peers.get(&addr) {
            Some(p) if p.offer.is_some() => p.offer.as_ref(),
            _ => self.pending_offers.get(&addr),
        }
    }

    pub(super) fn is_confirmed(&self, addr: SocketAddr) -> bool {
        self.peers.get(&addr).is_some_and(|p| p.confirmed)
    }

    pub fn is_verified(&self, addr: SocketAddr) -> bool {
        self.peers
            .get(&canonical_addr(addr))
            .is_some_and(|p| p.verified_at.is_some())
    }

    /// The `max_length` a verified `FerryHello` from this address advertised.
    pub fn ferry_max_length(&self, addr: SocketAddr) -> Option<u32> {
        self.peers
            .get(&canonical_addr(addr))
            .and_then(|p| p.ferry_max)
    }

    /// Smoothed RTT of a peer, if measured.
    pub fn srtt(&self, addr: SocketAddr) -> Option<Duration> {
        self.peers.get(&canonical_addr(addr)).and_then(|p| p.srtt)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn candidate_count(&self) -> usize {
        self.candidates.len()
    }

    pub(super) fn asked_mut(&mut self, now: Instant, addr: SocketAddr) -> &mut Asked {
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

    pub(super) fn prune_asked(&mut self, now: Instant) {
        self.asked
            .retain(|_, a| within(now, a.last, MAYBE_SOLICITED_FOR));
    }

    pub(super) fn peers_to_advertise(&self, now: Instant, to: SocketAddr) -> Vec<SocketAddr> {
        let mut list: Vec<(&SocketAddr, &Peer)> = self
            .peers
            .iter()
            .filter(|(a, p)| {
                **a != to
                    && !self.is_forbidden(**a)
                    && (!a.ip().is_loopback() || to.ip().is_loopback())
                    && within(now, p.verified_at, ADVERTISE_WITHIN)
                    && p.missed_probes < STALE_AFTER_MISSED
                    // Only nodes that answer: a client (`cjp2p get`, `list`, `peers`) only asks,
                    // and its ephemeral port is dead once it exits.
                    && p.answered
            })
            .collect();
        list.sort_by_key(|(_, p)| p.srtt.unwrap_or(Duration::MAX));
        list.into_iter()
            .take(MAX_PEERS_ANSWER)
            .map(|(a, _)| *a)
            .collect()
    }

    pub(super) fn on_peers(
        &mut self,
        now: Instant,
        from: SocketAddr,
        verified: bool,
        list: Vec<SocketAddr>,
    ) {
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
        // Only a peer the user gave may introduce others (cjp2p.md 1.3, C2): the reference
        // adds four public bootstrap peers to every list it sends, and a node that merely
        // contacted ferry must not make it talk to them.
        let configured = match self.peers.get_mut(&from) {
            Some(p) => {
                p.answered = true;
                p.configured
            }
            None => false,
        };
        if self.cfg.discovery && configured {
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

    pub(super) fn on_returned(&mut self, now: Instant, from: SocketAddr, raw: &str) {
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
            p.answered = true;
        }
        self.events.push_back(NodeEvent::Rtt { addr: from, rtt });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;
    use crate::proto::cjp2p::wire::*;

    #[test]
    fn returned_messages_we_did_not_ask_for_are_counted_as_ignored() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let s = Store::default();
        let before = n.stats().ignored_messages;
        for el in [
            r#"{"ReturnedMessage":{"pad":"no cookie"}}"#,
            r#"{"ReturnedMessage":{"cookie":"0.5"}}"#,
        ] {
            n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", el).as_bytes(), &s);
        }
        assert_eq!(n.stats().ignored_messages, before + 2);
        assert!(!events(&mut n)
            .iter()
            .any(|e| matches!(e, NodeEvent::Rtt { .. })));
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
            prove_serving(&mut n, now, sa(a));
        }
        // A verified sender that never answered anything (a client) is not advertised.
        let client = sa("198.51.100.2:40000");
        n.handle_datagram(
            now,
            client,
            cookie_dg(&n, "198.51.100.2", r#"{"PleaseListContent":{}}"#).as_bytes(),
            &s,
        );
        drain(&mut n);
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
        assert!(!p.contains(&client));
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
        // Candidates: solicited Peers replies from many configured peers.
        let t = now + Duration::from_secs(40);
        for i in 20..30u8 {
            let a = sa(&format!("198.51.100.{i}:1"));
            n.add_peer(t, a);
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
        // Solicited and verified, but from a peer the user did not give: the list is reported
        // but nobody on it is contacted (the reference puts public bootstrap peers on it).
        n.request_peers(now, sa(A));
        drain(&mut n);
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &peers_el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(n.candidate_count(), 0);
        assert!(events(&mut n)
            .iter()
            .any(|e| matches!(e, NodeEvent::Peers { peers, .. } if peers.len() == 40)));
        n.add_peer(now, sa(A));
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
        n.add_peer(now, sa(A));
        n.request_peers(now, sa(A));
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &peers_el).as_bytes(),
            &Store::default(),
        );
        assert_eq!(n.candidate_count(), 0);
    }
}
