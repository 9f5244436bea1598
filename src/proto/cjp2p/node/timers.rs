//! The maintenance tick (cjp2p.md section 8): cookie rotation, RTT probes to peers (at most 4
//! datagrams per second, each peer at most every 30 s, with `PleaseSendPeers` when due), one
//! cookie offer to each candidate (at most 2 per second), expiry of silent peers.

use std::net::SocketAddr;
use std::time::Instant;

use super::{due, within, Node, FORGET_AFTER, PEERS_EVERY, PEERS_EVERY_SMALL, PROBE_EVERY};
use super::{MAX_PROBES_REMEMBERED, PROBES_TO_CANDIDATES_PER_TICK, PROBES_TO_PEERS_PER_TICK};
use super::{SLOW_PROBE_EVERY, SOLICITED_FOR, STALE_AFTER_MISSED, TICK};
use crate::proto::cjp2p::wire::{cookie_payload, DatagramBuilder, Message};

impl Node {
    /// An RTT probe (decimal seconds since start), with `PleaseSendPeers` when due.
    pub(super) fn send_probe(&mut self, now: Instant, to: SocketAddr) {
        let since = now.saturating_duration_since(self.started);
        let s = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
        let few = self.peers.len() < 16;
        // Only configured peers are asked for their peers (see `on_peers`).
        let discovery = self.cfg.discovery && self.peers.get(&to).is_some_and(|p| p.configured);
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
    use super::super::testkit::*;
    use super::super::*;

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
}
