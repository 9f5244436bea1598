//! Who holds what (cjp2p.md 3.5, 3.6 and 8): holders learnt from `ContentList` and finished
//! downloads, `MaybeTheyHaveSome` hints for active downloads (solicited and verified only, at most
//! 8 per message, released at most 4 per second), and `Content` handed to the downloader.

use std::net::SocketAddr;
use std::time::Instant;

use super::{within, Node, NodeEvent, Window, MAX_HOLDERS_PER_ID, MAX_HOLDER_IDS};
use super::{MAX_LIST_RECORDED, MAX_MAYBE, MAX_NEW_SOURCES_PER_SEC, MAX_TEASER};
use super::{MAYBE_SOLICITED_FOR, SOLICITED_FOR, TICK};
use crate::proto::cjp2p::wire::Id;
use crate::transport::canonical_addr;

impl Node {
    /// Remember that `addr` holds `id` (from a finished download or a `ContentList`).
    pub fn add_holder(&mut self, id: [u8; 32], addr: SocketAddr) {
        let addr = canonical_addr(addr);
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

    pub(super) fn on_content(
        &mut self,
        from: SocketAddr,
        verified: bool,
        id: Id,
        offset: u64,
        data: Vec<u8>,
        eof: Option<u64>,
    ) {
        if !self.downloading.contains(&id) {
            self.stats.ignored_messages += 1;
            return;
        }
        if !verified {
            // Never data (C35); but a source that restarted and forgot ferry's cookie answers
            // like this, so the downloader asks again at once, with ferry's offer attached.
            self.stats.ignored_messages += 1;
            self.events
                .push_back(NodeEvent::Refused { from, id, offset });
            return;
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.answered = true;
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

    pub(super) fn on_maybe(
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
        // Neither addresses waiting in the queue nor those already released for this id (the
        // reference repeats the same list in every answer): the 4-per-second budget goes to new
        // ones.
        let queued: Vec<SocketAddr> = self
            .holder_queue
            .get(&id)
            .into_iter()
            .flatten()
            .chain(self.holders.get(&id).into_iter().flatten())
            .copied()
            .collect();
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
    pub(super) fn release_holders(&mut self, now: Instant) {
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

    pub(super) fn on_content_list(
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
        if let Some(p) = self.peers.get_mut(&from) {
            p.answered = true;
        }
        results.truncate(MAX_LIST_RECORDED);
        for (id, _) in &results {
            self.add_holder(*id, from);
        }
        self.events
            .push_back(NodeEvent::ContentList { from, results });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;
    use crate::proto::cjp2p::wire::*;

    #[test]
    fn holders_of_one_id_do_not_push_out_another_id() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let (one, two) = ([7u8; 32], [8u8; 32]);
        n.add_holder(one, sa("203.0.113.1:5"));
        n.add_holder(two, sa("203.0.113.2:5"));
        n.add_holder(one, sa("203.0.113.3:5"));
        let d = cookie_dg(&n, "192.0.2.1", &send_content_el(&one, 0, 4096));
        n.handle_datagram(now, sa(A), d.as_bytes(), &Store::default());
        let out = drain(&mut n);
        assert!(msgs(&out[0].1).contains(&Message::MaybeTheyHaveSome {
            id: one,
            peers: vec![sa("203.0.113.1:5"), sa("203.0.113.3:5")]
        }));
    }

    /// A `ContentList` is taken (an event, its ids' holders) only from a peer asked for one
    /// in the last 10 s, in a verified datagram; unasked, unverified or late: ignored, counted.
    #[test]
    fn content_lists_only_when_asked_and_verified() {
        let now = Instant::now();
        let mut n = node(now, 1);
        let s = Store::default();
        let id = [5u8; 32];
        let el = format!(r#"{{"ContentList":{{"results":[["{}",5]]}}}}"#, id_hex(&id));
        let lists = |n: &mut Node| -> Vec<(SocketAddr, Vec<(Id, u64)>)> {
            events(n)
                .into_iter()
                .filter_map(|e| match e {
                    NodeEvent::ContentList { from, results } => Some((from, results)),
                    _ => None,
                })
                .collect()
        };
        let ignored = |n: &Node| n.stats().ignored_messages;
        // Verified, never asked.
        n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", &el).as_bytes(), &s);
        assert_eq!((lists(&mut n), ignored(&n)), (vec![], 1));
        n.request_list(now, sa(A));
        drain(&mut n);
        // Asked, not verified.
        n.handle_datagram(now, sa(A), format!("[{el}]").as_bytes(), &s);
        drain(&mut n);
        assert_eq!((lists(&mut n), ignored(&n)), (vec![], 2));
        assert!(!n.holders.contains_key(&id));
        // Asked and verified.
        n.handle_datagram(now, sa(A), cookie_dg(&n, "192.0.2.1", &el).as_bytes(), &s);
        drain(&mut n);
        assert_eq!(
            (lists(&mut n), ignored(&n)),
            (vec![(sa(A), vec![(id, 5)])], 2)
        );
        assert!(n.holders.contains_key(&id));
        // Asked too long ago.
        let late = now + SOLICITED_FOR + Duration::from_secs(1);
        n.handle_datagram(late, sa(A), cookie_dg(&n, "192.0.2.1", &el).as_bytes(), &s);
        assert_eq!((lists(&mut n), ignored(&n)), (vec![], 3));
    }

    #[test]
    fn holder_ids_are_bounded() {
        let now = Instant::now();
        let mut n = node(now, 1);
        for k in 0..=MAX_HOLDER_IDS as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&k.to_be_bytes());
            n.add_holder(id, sa("203.0.113.1:5"));
        }
        assert_eq!(n.holders.len(), MAX_HOLDER_IDS);
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
        // Holders released to the driver, as a count, and every one of them in `chosen`.
        let chosen = std::cell::RefCell::new(Vec::<SocketAddr>::new());
        let holders = |n: &mut Node| -> usize {
            let mut chosen = chosen.borrow_mut();
            let before = chosen.len();
            for e in events(n) {
                if let NodeEvent::Holders { peers, .. } = e {
                    chosen.extend(peers);
                }
            }
            chosen.len() - before
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
        // The 8 are drawn at random from all 200, not from the first few the peer chose to
        // list (8 of 200 all within the first 16: a chance of about 2 in 10^10).
        let first_16: Vec<SocketAddr> = (1..=16)
            .map(|j| sa(&format!("203.0.{}.{}:1", j / 100, j % 100 + 1)))
            .collect();
        let chosen = chosen.borrow().clone();
        assert_eq!(chosen.len(), 8);
        assert!(chosen.iter().any(|a| !first_16.contains(a)), "{chosen:?}");
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
        // Unverified: never handed over as data (only a notice that the cookie check failed).
        n.handle_datagram(
            now,
            sa(A),
            format!("[{}]", text(&el)).as_bytes(),
            &Store::default(),
        );
        assert_eq!(
            events(&mut n),
            [NodeEvent::Refused {
                from: sa(A),
                id,
                offset: 9999
            }]
        );
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
}
