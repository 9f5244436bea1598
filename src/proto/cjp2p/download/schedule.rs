//! Request scheduling (cjp2p.md 6.1-6.4): whether a source may be sent a request now (window,
//! pacing, bytes in flight, suspension), which range it gets (ranges that came back first, then
//! the shared cursor, then endgame copies), and the bookkeeping of sending, expiring and releasing
//! requests.

use std::time::{Duration, Instant};

use super::blocks::Blocks;
use super::source::Req;
use super::{Comeback, Download, Standing, BLOCK, LATE_REPLY_GRACE, MAX_COPIES};
use super::{SUSPENDED_INTERVAL, TOKEN_SLACK};

impl Download {
    pub(super) fn may_send(&self, si: usize, now: Instant) -> bool {
        let s = &self.sources[si];
        if s.tokens + TOKEN_SLACK < 1.0 {
            return false;
        }
        let in_flight: u64 = self.sources.iter().map(|s| s.live_bytes).sum();
        if in_flight + u64::from(s.size.block()) > self.cfg.max_bytes_in_flight && in_flight > 0 {
            return false;
        }
        if s.is_suspended(now) && s.last_sent.is_some_and(|t| now < t + SUSPENDED_INTERVAL) {
            return false;
        }
        if self.blocks.is_none() {
            // Until eof is known, one request per source, for offset 0.
            return s.live == 0 && s.has_window(now);
        }
        s.has_window(now)
    }

    /// Whether a source other than `si` is active (delivering, not suspended): ranges that came
    /// back then go to active sources only, and a source's own lost ranges never back to it.
    fn has_other_active(&self, si: usize, now: Instant) -> bool {
        self.sources
            .iter()
            .enumerate()
            .any(|(ti, t)| ti != si && t.standing == Standing::Active && !t.is_suspended(now))
    }

    /// `(offset, length, is_retransmit, is_endgame_copy)` for source `si`.
    pub(super) fn pick_work(&mut self, si: usize, now: Instant) -> Option<(u64, u32, bool, bool)> {
        let src_block = self.sources[si].size.block();
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
        // Ranges that came back go first, cut to this source's block size, but only to a source
        // that delivers while another one could take them: a silent source must not hold them
        // again (and never gets back what it lost itself).
        let me = &self.sources[si];
        let my_id = me.id;
        let others_active = self.has_other_active(si, now);
        if me.standing == Standing::Active || !others_active {
            let mut k = 0;
            while k < self.requeue.len() {
                let c = self.requeue[k];
                if others_active && c.lost_by == Some(my_id) {
                    k += 1;
                    continue;
                }
                let Some(start) = (c.first..c.end.min(b.n)).find(|&i| b.is_needed(i)) else {
                    self.requeue.remove(k);
                    continue;
                };
                let stop = run(b, start, c.end);
                if stop < c.end {
                    self.requeue[k].first = stop;
                } else {
                    self.requeue.remove(k);
                }
                return Some((start * BLOCK, length(b, start, stop), true, false));
            }
        }
        if let Some(start) = b.next_needed(self.cursor) {
            let stop = run(b, start, b.n);
            self.cursor = stop;
            return Some((start * BLOCK, length(b, start, stop), false, false));
        }
        self.cursor = b.n;
        self.endgame_copy(si, now).map(|(o, l)| (o, l, true, true))
    }

    /// Endgame, for an active source: a copy of part of the oldest range in flight at another
    /// source (for longer than that source's srtt when it is active; at once when it is not),
    /// made of blocks not yet accepted that no other copy covers, cut to this source's block
    /// size. (A block that arrived is never copied again: the other copy is still in flight,
    /// and copying it back and forth would carry the same bytes until the download ends.)
    pub(super) fn endgame_copy(&self, si: usize, now: Instant) -> Option<(u64, u32)> {
        let me = &self.sources[si];
        if me.standing != Standing::Active {
            return None;
        }
        let initial = self.cfg.initial_rto;
        let b = self.blocks.as_ref()?;
        let per = u64::from(me.size.block()) / BLOCK;
        let copyable = |i: u64| !b.accepted.get(i) && usize::from(b.copies(i)) < MAX_COPIES;
        let mut best: Option<(Instant, u64, u64)> = None;
        for (ti, t) in self.sources.iter().enumerate() {
            if ti == si {
                continue;
            }
            let wait = match t.standing {
                Standing::Active => t.rtt_estimate(initial),
                _ => Duration::ZERO,
            };
            for (&off, r) in &t.reqs {
                if r.expired_at.is_some() || now.saturating_duration_since(r.sent) <= wait {
                    continue;
                }
                if best.is_some_and(|(sent, _, _)| sent <= r.sent) {
                    continue;
                }
                let (f, e) = b.span(off, u64::from(r.len));
                let Some(start) = (f..e).find(|&i| copyable(i)) else {
                    continue;
                };
                let cap = if me.is_ferry {
                    (start / per + 1) * per
                } else {
                    start + per
                };
                let mut stop = start;
                while stop < e.min(cap) && copyable(stop) {
                    stop += 1;
                }
                best = Some((r.sent, start, stop));
            }
        }
        let (_, start, stop) = best?;
        let off = start * BLOCK;
        let len = ((stop - start) * BLOCK).min(b.eof - off);
        // Toward a reference source a request stays a whole number of 4096-byte blocks.
        let len = if me.is_ferry {
            len
        } else {
            (stop - start) * BLOCK
        };
        Some((off, len as u32))
    }

    pub(super) fn send(&mut self, si: usize, now: Instant, offset: u64, len: u32) {
        let initial = self.cfg.initial_rto;
        let s = &mut self.sources[si];
        let rto = s.rto(initial);
        let mut replaced = None;
        let again = match s.reqs.get(&offset) {
            Some(&old) => {
                self.timers.remove(&(old.deadline, s.id, offset));
                if old.expired_at.is_none() {
                    s.drop_live(&old);
                    replaced = Some(old.len);
                } else {
                    s.on_really_lost();
                }
                true
            }
            None => false,
        };
        let deadline = now + rto;
        let req = Req {
            len,
            sent: now,
            deadline,
            is_retransmitted: again,
            expired_at: None,
            in_handshake: s.standing == Standing::Handshaking,
            size: s.size.block(),
        };
        s.reqs.insert(offset, req);
        s.add_live(&req);
        s.tokens -= 1.0;
        s.last_sent = Some(now);
        s.silent_since.get_or_insert(now);
        self.timers.insert((deadline, s.id, offset));
        if let Some(old) = replaced {
            self.release(offset, old);
        }
        if let Some(b) = self.blocks.as_mut() {
            let (f, e) = b.span(offset, u64::from(len));
            b.cover(f, e);
        }
    }

    pub(super) fn expire(&mut self, si: usize, offset: u64, req: Req, now: Instant) {
        let (initial, max_window) = (self.cfg.initial_rto, self.cfg.max_window);
        let s = &mut self.sources[si];
        s.drop_live(&req);
        let sid = s.id;
        self.release(offset, req.len);
        if let Some(b) = self.blocks.as_ref() {
            let (f, e) = b.span(offset, u64::from(req.len));
            if (f..e).all(|i| b.accepted.get(i)) {
                // An endgame copy whose range arrived from elsewhere: nothing was lost.
                self.sources[si].reqs.remove(&offset);
                return;
            }
        }
        let s = &mut self.sources[si];
        s.size.on_expired(req.size);
        let forget = now + LATE_REPLY_GRACE;
        s.reqs.insert(
            offset,
            Req {
                deadline: forget,
                expired_at: Some(now),
                ..req
            },
        );
        self.timers.insert((forget, sid, offset));
        s.on_expired(now, initial, max_window);
        self.stats.losses += 1;
        if let Some(b) = self.blocks.as_ref() {
            let (f, e) = b.span(offset, u64::from(req.len));
            if (f..e).any(|i| b.is_needed(i)) {
                self.requeue.push_front(Comeback {
                    first: f,
                    end: e,
                    lost_by: Some(sid),
                });
            }
        }
    }

    /// A request of `len` bytes at `offset` is no longer live: its blocks are pending only
    /// while another live request still covers them.
    pub(super) fn release(&mut self, offset: u64, len: u32) {
        if let Some(b) = self.blocks.as_mut() {
            let (f, e) = b.span(offset, u64::from(len));
            b.uncover(f, e);
        }
    }

    pub(super) fn remove_source_at(&mut self, si: usize) {
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
            self.release(off, len);
            if let Some(b) = self.blocks.as_ref() {
                let (f, e) = b.span(off, u64::from(len));
                if (f..e).any(|i| b.is_needed(i)) {
                    self.requeue.push_front(Comeback::new(f, e));
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
    use super::super::testkit::*;
    use super::super::*;

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
        // r2 is answered: the source delivers, so r1's range goes back to it at the FRONT: it is
        // the next request, a retransmission.
        answer_all(&mut dl, t0 + 250 * MS, &[r2], 1 << 20);
        let again = dl.poll_request(t0 + 250 * MS).unwrap();
        assert_eq!(
            (again.offset, again.length, again.to),
            (r1.offset, r1.length, a)
        );
        assert_ne!(r2.offset, r1.offset);
        assert_eq!(dl.stats().retransmits, 1);
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

    /// Two sources: a ferry one (32 KiB requests) and a reference one (4096), both delivering.
    fn ferry_and_reference(eof: u64) -> (Download, Instant) {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(eof));
        dl.add_source(t0, addr(1), Some(40960));
        dl.grown(addr(1));
        dl.add_source(t0, addr(2), None);
        let first = drain(&mut dl, t0);
        answer_all(&mut dl, t0 + MS, &first, eof);
        (dl, t0 + MS)
    }

    /// Issue 13 item 1: the ranges of a source that went silent come back cut to whoever takes
    /// them (4096 bytes for a reference source), and never go back to the silent source while an
    /// active one can take them; the silent source keeps one probe at most.
    #[test]
    fn lost_ranges_are_cut_for_the_taker_and_not_given_back_to_the_silent_source() {
        let eof = 4 << 20;
        let (mut dl, t1) = ferry_and_reference(eof);
        let sent = drain(&mut dl, t1);
        let lost: Vec<Request> = sent.iter().filter(|r| r.to == addr(1)).copied().collect();
        assert!(lost.iter().all(|r| r.length > 4096), "{lost:?}");
        // The reference answers everything, the ferry source nothing: its requests expire.
        let to_ref: Vec<Request> = sent.iter().filter(|r| r.to == addr(2)).copied().collect();
        answer_all(&mut dl, t1 + MS, &to_ref, eof);
        let t2 = dl.poll_timeout().unwrap().max(t1 + 300 * MS);
        dl.handle_timeout(t2);
        let st = dl.stats();
        assert_eq!(st.sources[0].standing, Standing::Lost);
        assert_eq!(st.losses, lost.len() as u64);
        let next = drain(&mut dl, t2);
        // Lost ranges go to the reference source, 4096 bytes at a time.
        let retaken: Vec<(SocketAddr, u64, u32)> = next
            .iter()
            .filter(|r| {
                lost.iter()
                    .any(|l| r.offset >= l.offset && r.offset < l.offset + u64::from(l.length))
            })
            .map(|r| (r.to, r.offset, r.length))
            .collect();
        assert!(!retaken.is_empty(), "{next:?}");
        for (to, off, len) in &retaken {
            assert_eq!((*to, *len), (addr(2), 4096), "offset {off}");
        }
        // Nothing the silent source lost is asked of it again; it gets one probe at most.
        let to_silent: Vec<&Request> = next.iter().filter(|r| r.to == addr(1)).collect();
        assert!(to_silent.len() <= 1, "{to_silent:?}");
        for r in to_silent {
            assert!(
                lost.iter()
                    .all(|l| r.offset + u64::from(r.length) <= l.offset
                        || r.offset >= l.offset + u64::from(l.length)),
                "{r:?} overlaps what it lost"
            );
        }
    }

    /// Alone, a source gets back the ranges it lost (single-source loss recovery).
    #[test]
    fn a_lone_source_gets_its_lost_ranges_back() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let first = drain(&mut dl, t0);
        dl.handle_timeout(t0 + 250 * MS);
        let again = drain(&mut dl, t0 + 250 * MS);
        assert_eq!(again.len(), 1, "one probe while Lost: {again:?}");
        assert_eq!(again[0].to, a);
        assert!(
            first.iter().any(|r| r.offset == again[0].offset),
            "{again:?}"
        );
    }

    /// Endgame: a range an active source holds is copied only once that source's RTT estimate
    /// has passed since it was asked (spec 6.3: "in flight longer than srtt").
    #[test]
    fn endgame_waits_for_an_active_holders_rtt() {
        let eof = 16 * 4096;
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(eof));
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        let first = drain(&mut dl, t0);
        let t1 = t0 + MS;
        answer_all(&mut dl, t1, &first, eof);
        // Both answered (active, srtt 1 ms); the rest of the file is asked at t1.
        let rest = drain(&mut dl, t1);
        assert!(rest.iter().any(|r| r.to == addr(1)), "{rest:?}");
        let to_2: Vec<Request> = rest.iter().filter(|r| r.to == addr(2)).copied().collect();
        answer_all(&mut dl, t1, &to_2, eof);
        // 1 ms later addr(2)'s pacing has refilled, and addr(1)'s srtt (1 ms) has not passed.
        let soon = drain(&mut dl, t1 + MS);
        assert_eq!(
            dl.stats().endgame_copies,
            0,
            "copied before its RTT: {soon:?}"
        );
        let later = drain(&mut dl, t1 + 100 * MS);
        assert!(dl.stats().endgame_copies > 0, "{later:?}");
        assert!(later.iter().all(|r| r.to == addr(2)), "{later:?}");
    }

    /// Endgame: an active reference source copies, 4096 bytes at a time, the blocks of a range
    /// a silent ferry source holds, at once (it does not wait for that source's srtt), and no
    /// block gets more than two copies.
    #[test]
    fn endgame_copies_cut_the_silent_holders_range_to_the_copiers_block() {
        let eof = 64 * 4096;
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(eof));
        dl.add_source(t0, addr(2), None);
        // The reference fetches and delivers all but the last 32 KiB.
        let mut now = t0;
        while dl.received_bytes() < eof - 32768 {
            let reqs: Vec<Request> = drain(&mut dl, now)
                .into_iter()
                .filter(|r| r.offset < eof - 32768)
                .collect();
            now += MS;
            answer_all(&mut dl, now, &reqs, eof);
            if reqs.is_empty() {
                break;
            }
        }
        // The rest goes to the reference and to a ferry source that joined and never answers;
        // the reference delivers its part.
        dl.add_source(now, addr(1), Some(40960));
        dl.grown(addr(1));
        let held = drain(&mut dl, now);
        let silent: Vec<&Request> = held.iter().filter(|r| r.to == addr(1)).collect();
        assert!(silent.iter().any(|r| r.length > 4096), "{held:?}");
        let to_ref: Vec<Request> = held.iter().filter(|r| r.to == addr(2)).copied().collect();
        answer_all(&mut dl, now + MS, &to_ref, eof);
        let copies = drain(&mut dl, now + MS);
        assert!(!copies.is_empty(), "no endgame copy");
        for r in &copies {
            assert_eq!((r.to, r.length), (addr(2), 4096), "{r:?}");
            assert!(
                silent
                    .iter()
                    .any(|s| r.offset >= s.offset && r.offset < s.offset + u64::from(s.length)),
                "{r:?} is not a copy of the silent source's ranges"
            );
        }
        assert!(dl.stats().endgame_copies >= 1);
        let b = dl.blocks.as_ref().unwrap();
        assert!((0..b.n).all(|i| usize::from(b.copies(i)) <= MAX_COPIES));
    }
}
