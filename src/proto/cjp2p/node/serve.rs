//! Serving (cjp2p.md sections 5 and 4.3): answers to `PleaseSendContent` (data, teasers or
//! `MaybeTheyHaveSome`) and `PleaseListContent`, and the reply builder that fills them into as
//! few datagrams as the limits allow: each with the echo, the offer until confirmed, and within
//! twice the request's size for an unverified sender.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Answer, ContentStore, Node, BLOCK_LIST_BLOCK, HEADER_BYTES, MAX_CONTENT_LEN};
use super::{MAX_MAYBE, MAX_TEASER};
use crate::proto::cjp2p::wire::{content_fit, DatagramBuilder, Id, ListParts, Message};

impl Node {
    pub(super) fn content_answer(
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
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter(|a| **a != from && !self.is_forbidden(**a))
                    .take(MAX_MAYBE)
                    .copied()
                    .collect();
                if verified && !holders.is_empty() {
                    return Some(Answer::List(ListParts::maybe(&id, &holders)));
                }
                self.stats.unknown_ids += 1;
                self.ledger
                    .refused(&self.cfg, from, Some(id), "not served here (unknown id)");
                None
            }
        }
    }

    pub(super) fn list_answer(&mut self, store: &dyn ContentStore) -> ListParts {
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

    /// Send the answers to one datagram, split over as few datagrams as the limits allow, each
    /// with the echo (and the offer until confirmed). Unverified: within the 2x budget.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply(
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
        // A client announces nothing.
        let hello = attach && self.cfg.serve;
        let reserve = if hello && verified {
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
                                // One buffer for every answer: no allocation and no zeroing
                                // of 32 KiB per block served.
                                if self.read_buf.len() < n {
                                    self.read_buf.resize(n, 0);
                                }
                                let data = &mut self.read_buf[..n];
                                let read = if n == 0 {
                                    Some(0)
                                } else {
                                    store.read_at(&id, offset, data)
                                };
                                if read == Some(n) {
                                    let mut lim2 = b.limit();
                                    lim2 = lim2.saturating_sub(reserve);
                                    b.set_limit(lim2);
                                    let ok = b.push_content(&id, offset, data, Some(eof));
                                    b.set_limit(lim2 + reserve);
                                    if ok {
                                        if verified {
                                            self.stats.content_served += 1;
                                        } else {
                                            self.stats.teasers_served += 1;
                                        }
                                        self.ledger.served(&self.cfg, to, id, n, !verified);
                                    }
                                    ok
                                } else {
                                    // The file went away, shrank or changed on disk (the
                                    // catalog no longer vouches for its bytes): no answer.
                                    self.stats.answers_dropped += 1;
                                    self.ledger.refused(
                                        &self.cfg,
                                        to,
                                        Some(id),
                                        "the file cannot be read as cataloged (changed or gone)",
                                    );
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
            if hello && with_offer {
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
}

#[cfg(test)]
mod tests {
    use super::super::super::testpeer::RefPeer;
    use super::super::testkit::*;
    use super::super::*;
    use crate::proto::cjp2p::wire::*;

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
            &(0..20)
                .map(|i| send_content_el(&id, i * 16, 16))
                .collect::<Vec<_>>()
                .join(","),
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
    fn c43_store_has_no_write_path() {
        // ContentStore offers size_of, read_at, list and count only: a remote request cannot
        // make the node write anything. Nothing to assert beyond compiling this.
        fn _only_reads(s: &dyn ContentStore) -> (Option<u64>, usize) {
            (s.size_of(&[0; 32]), s.count())
        }
    }

    #[test]
    fn c44_reference_like_peer_as_seeder_and_leecher() {
        let now = Instant::now();
        let (id, data) = file(65537, 7);
        let ra = sa("127.0.0.1:24401");
        let fa = sa("127.0.0.1:24402");
        // Reference seeds, ferry leeches.
        let mut r = RefPeer::new(ra, 42);
        r.share(id, data.clone());
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
                for (to, reply) in r.handle(fa, &d) {
                    assert_eq!(to, fa);
                    f.handle_datagram(now, ra, &reply, &Store::default());
                }
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
        // Reference leeches, ferry seeds: a teaser, then it stores ferry's cookie (from ferry's
        // reply, verified by the echo of its own offer).
        let mut r = RefPeer::new(ra, 43);
        let store = Store(vec![(id, data.clone())]);
        let mut f = node(now, 2);
        let mut sizes = Vec::new();
        for offset in [0u64, 0, 65536] {
            let req = r.request(fa, id, offset);
            f.handle_datagram(now, r.addr, &req, &store);
            for (_, d) in drain(&mut f) {
                for (o, bytes, eof) in contents(&d) {
                    assert_eq!(eof, Some(65537));
                    assert_eq!(bytes, data[o as usize..o as usize + bytes.len()]);
                    sizes.push(bytes.len());
                }
                r.handle(fa, &d);
            }
            assert!(r.knows_offer_of(fa), "the reference never verified ferry");
        }
        assert_eq!(sizes, vec![32, 4096, 1]);
    }

    /// Issue 13 item 6: with `log_activity`, the node keeps what it served and refused to whom
    /// (for `ferry cjp2p node -v`).
    #[test]
    fn activity_ledger_names_what_was_served_and_refused() {
        let now = Instant::now();
        let (id, data) = file(10_000, 3);
        let store = Store(vec![(id, data)]);
        let cfg = NodeConfig {
            log_activity: true,
            ..NodeConfig::default()
        };
        let mut n = Node::new(cfg, [1; 32], now);
        let unknown = [7u8; 32];
        let body = format!(
            "{},{},{}",
            send_content_el(&id, 0, 4096),
            send_content_el(&id, 4096, 4096),
            send_content_el(&unknown, 0, 4096)
        );
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", &body).as_bytes(),
            &store,
        );
        n.handle_datagram(
            now,
            sa(A),
            cookie_dg(&n, "192.0.2.1", r#"{"PleaseListContent":{}}"#).as_bytes(),
            &store,
        );
        let other = sa("192.0.2.9:5");
        n.handle_datagram(
            now,
            other,
            format!("[{}]", send_content_el(&id, 0, 4096)).as_bytes(),
            &store,
        );
        drain(&mut n);
        let lines = n.take_activity();
        let find = |peer: SocketAddr, id: Option<Id>| {
            lines
                .iter()
                .find(|l| l.peer == Some(peer) && l.id == id)
                .cloned()
                .unwrap_or_else(|| panic!("no line for {peer} {id:?}: {lines:?}"))
        };
        let served = find(sa(A), Some(id));
        assert_eq!((served.served, served.bytes, served.refused), (2, 8192, 0));
        let refused = find(sa(A), Some(unknown));
        assert_eq!(refused.refused, 1);
        assert_eq!(refused.why, Some("not served here (unknown id)"));
        assert_eq!(find(sa(A), None).lists, 1);
        assert_eq!(find(other, Some(id)).teasers, 1);
        assert!(n.take_activity().is_empty());
        assert_eq!(n.stats().unknown_ids, 1);
    }
}
