//! Request scheduling (cjp2p.md 6.1-6.4): whether a source may be sent a request now (window,
//! pacing, bytes in flight, suspension), which range it gets (ranges that came back first, then
//! the shared cursor, then endgame copies), and the bookkeeping of sending, expiring and releasing
//! requests.

use std::time::Instant;

use super::blocks::Blocks;
use super::source::Req;
use super::{Download, BLOCK, LATE_REPLY_GRACE, MAX_COPIES, SUSPENDED_INTERVAL, TOKEN_SLACK};

impl Download {
    pub(super) fn may_send(&self, si: usize, now: Instant) -> bool {
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
    pub(super) fn pick_work(&mut self, si: usize, now: Instant) -> Option<(u64, u32, bool, bool)> {
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
    pub(super) fn endgame_copy(&self, si: usize, now: Instant) -> Option<(u64, u32)> {
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

    pub(super) fn live_copies(&self, offset: u64) -> usize {
        self.sources
            .iter()
            .filter(|s| s.reqs.get(&offset).is_some_and(|r| r.expired_at.is_none()))
            .count()
    }

    pub(super) fn send(&mut self, si: usize, now: Instant, offset: u64, len: u32) {
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

    pub(super) fn expire(&mut self, si: usize, offset: u64, req: Req, now: Instant) {
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
    pub(super) fn release(&mut self, si: usize, offset: u64, len: u32) {
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
}
