//! Verification (cjp2p.md 4.2-4.5): what a verified or an unverified datagram changes for its
//! sender (offer stored or not, confirmed or not, `FerryHello` taken), and the rate limits on
//! replies to unverified senders (64 per second per IP, 1 MB/s in total).

use std::net::SocketAddr;
use std::time::Instant;

use super::{Node, NodeEvent, Window, MAX_CONTENT_LEN, TICK};

impl Node {
    pub(super) fn on_verified(
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

    pub(super) fn on_unverified(&mut self, from: SocketAddr, offer: Option<&String>) {
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

    /// Whether one more reply datagram of `len` bytes may go to an unverified `to`.
    pub(super) fn unverified_allowed(&mut self, now: Instant, to: SocketAddr, len: usize) -> bool {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;
    use crate::proto::cjp2p::wire::*;

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

    /// Requests batched to a ferry peer that has not yet confirmed our offer carry the offer
    /// (and FerryHello) too; the batch is cut exactly where the next request would not fit.
    #[test]
    fn batched_requests_with_the_offer_attached_fill_each_datagram() {
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
                store: Store(vec![(id, data)]),
            },
        ];
        let b = sides[1].addr;
        sides[0].node.set_downloading(id, true);
        sides[0].node.request_content(now, b, &id, 0, 4096);
        pump(now, &mut sides);
        let a = &mut sides[0].node;
        assert_eq!(a.ferry_max_length(b), Some(40960));
        assert!(!a.is_confirmed(b), "the offer still goes along");
        for k in 0..300u64 {
            a.request_content(now, b, &id, 10_000 + k, 1);
        }
        let out = drain(a);
        let max = a.control_max(b);
        let longest = Message::PleaseSendContent {
            id,
            offset: 10_299,
            length: 1,
        }
        .encoded_len()
            + 1;
        assert!(out.len() >= 2, "{} datagrams", out.len());
        for (to, d) in &out[..out.len() - 1] {
            assert_eq!(*to, b);
            assert!(text(d).contains("PleaseAlwaysReturnThisMessage"));
            assert!(
                d.len() <= max && d.len() + longest > max,
                "{} bytes of {max}: room for one more",
                d.len()
            );
        }
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
}
