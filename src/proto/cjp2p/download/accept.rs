//! Which `Content` is kept (cjp2p.md 6.7, C33-C36 and the `eof` rules of section 9): a reply
//! must answer a request sent to that source at that offset, be no longer than asked, a whole
//! number of blocks or reach `eof`, and agree on `eof`; teasers go back to the missing set, and a
//! reply that overlaps blocks already accepted stores only the new ones.

use std::net::SocketAddr;
use std::time::Instant;

use super::blocks::Blocks;
use super::source::Req;
use super::MAX_TEASER;
use super::{block_len, Accept, Comeback, Download, BLOCK, EMPTY_ID, LATE_REPLY_GRACE};
use crate::transport::canonical_addr;

impl Download {
    /// A `Content` element from a VERIFIED datagram of `from` for this id (spec 6.7 rules).
    pub fn on_content(
        &mut self,
        now: Instant,
        from: SocketAddr,
        offset: u64,
        data_len: usize,
        eof: Option<u64>,
    ) -> Accept {
        let from = canonical_addr(from);
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
            self.stats.teasers += 1;
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
            src.drop_live(&req);
            self.timers.remove(&(req.deadline, src.id, offset));
        }
        if !req.is_retransmitted {
            src.on_rtt_sample(now.saturating_duration_since(req.sent));
        }
        src.on_data(max_window);
        if !was_live {
            src.on_late_reply();
        }
        let reqs = &src.reqs;
        let older = || {
            reqs.values()
                .any(|r| r.expired_at.is_none() && r.sent < req.sent)
        };
        src.size.on_reply(req.size, !was_live, older);
        src.delivered += len;
        if len >= BLOCK && len < u64::from(req.len) && end < e {
            // It answers less than asked: that is its largest answer.
            let cap = src.size.ceiling().min(block_len(data_len as u32));
            src.size.set_ceiling(cap);
        }
        if self.blocks.is_none() {
            // This request was never counted: the blocks did not exist when it was sent.
            self.fix_eof(e, from);
        } else if was_live {
            self.release(offset, req.len);
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
                self.requeue.push_front(Comeback::new(rf, rs));
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
            self.requeue.push_front(Comeback::new(rf, rs));
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

    pub(super) fn drop_element(&mut self, why: &'static str) -> Accept {
        self.stats.dropped += 1;
        Accept::Drop(why)
    }

    pub(super) fn drop_source(&mut self, si: usize, why: &'static str) -> Accept {
        self.stats.dropped += 1;
        self.stats.sources_dropped += 1;
        self.remove_source_at(si);
        Accept::DropSource(why)
    }

    /// The source answered, but not with data (a teaser, or a reply that failed the cookie
    /// check): it is alive and the handshake is under way, so the range is asked again at once
    /// (from the front of the missing set), not after a timeout.
    pub(super) fn teaser(&mut self, si: usize, offset: u64, req: Req) -> Accept {
        let src = &mut self.sources[si];
        src.silent_since = None;
        src.on_teased();
        src.reqs.remove(&offset);
        if req.expired_at.is_some() {
            src.on_really_lost();
        }
        if req.expired_at.is_none() {
            src.drop_live(&req);
            self.timers.remove(&(req.deadline, src.id, offset));
            if self.blocks.is_some() {
                self.release(offset, req.len);
                let b = self.blocks.as_ref().expect("checked");
                let (f, s) = b.span(offset, u64::from(req.len));
                self.requeue.push_front(Comeback::new(f, s));
            }
        }
        Accept::Teaser
    }

    /// `from` answered the request at `offset` in a datagram that failed ferry's cookie check:
    /// typically a source that restarted and forgot ferry's cookie (its reply carries its new
    /// offer, which the node answers at once). The request is treated like a teaser, so it is
    /// sent again at once instead of after a backed-off timeout. True if a request matched.
    pub fn on_refused(&mut self, now: Instant, from: SocketAddr, offset: u64) -> bool {
        let from = canonical_addr(from);
        let Some(si) = self.sources.iter().position(|s| s.addr == from) else {
            return false;
        };
        let Some(req) = self.sources[si].reqs.get(&offset).copied() else {
            return false;
        };
        if req
            .expired_at
            .is_some_and(|t| now.saturating_duration_since(t) >= LATE_REPLY_GRACE)
        {
            return false;
        }
        self.stats.refused += 1;
        self.teaser(si, offset, req);
        true
    }

    pub(super) fn fix_eof(&mut self, eof: u64, from: SocketAddr) {
        let mut b = Blocks::new(eof);
        // Offset-0 requests still in flight to other sources keep their blocks pending.
        for s in &self.sources {
            for (&off, r) in &s.reqs {
                if r.expired_at.is_none() {
                    let (f, e) = b.span(off, u64::from(r.len));
                    b.cover(f, e);
                }
            }
        }
        self.blocks = Some(b);
        self.eof_source = Some(from);
        self.cursor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;

    #[test]
    fn c33_eof_above_max_eof_drops_the_source_and_allocates_nothing() {
        let (mut dl, t0, a) = one_source(None);
        dl.poll_request(t0).unwrap();
        let got = dl.on_content(t0 + MS, a, 0, 4096, Some(1 << 50));
        assert!(matches!(got, Accept::DropSource(_)));
        let st = dl.stats();
        assert_eq!((st.dropped, st.sources_dropped), (1, 1), "counted");
        assert!(dl.blocks.is_none());
        assert_eq!(dl.eof(), None);
        assert!(dl.sources().is_empty());
    }

    /// C33: an eof of exactly max_eof is taken, one byte more is not.
    #[test]
    fn c33_eof_of_exactly_max_eof_is_taken() {
        let max = DownloadConfig::default().max_eof;
        let (mut dl, t0, a) = one_source(None);
        dl.poll_request(t0).unwrap();
        let got = dl.on_content(t0 + MS, a, 0, 4096, Some(max + 1));
        assert_eq!(got, Accept::DropSource("eof above max_eof"));
        let (mut dl, t0, a) = one_source(None);
        dl.poll_request(t0).unwrap();
        let got = dl.on_content(t0 + MS, a, 0, 4096, Some(max));
        assert!(!matches!(got, Accept::DropSource(_)), "{got:?}");
        assert_eq!(dl.eof(), Some(max));
    }

    #[test]
    fn reference_crash_eof_2_pow_50_refused_without_a_bitmap() {
        // Section 9: the reference created a 32 GiB sparse bitmap for this first reply.
        let (mut dl, t0, a) = one_source(None);
        dl.poll_request(t0).unwrap();
        let got = dl.on_content(t0 + MS, a, 0, 4096, Some(1_125_899_906_842_624));
        assert_eq!(got, Accept::DropSource("eof above max_eof"));
        assert!(dl.blocks.is_none());
        assert_eq!(dl.received_bytes(), 0);
    }

    #[test]
    fn reference_crash_unaligned_offset_9999_near_eof_10000_dropped() {
        // Section 9: 4096 bytes at offset 9999 of a 10000-byte download; the reference wrote
        // past its mapping.
        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        let got = dl.on_content(t0 + MS, a, 9999, 4096, Some(10000));
        assert!(matches!(got, Accept::Drop(_)));
        assert_eq!(dl.received_bytes(), 0);
        assert!(!dl.has_block(2));
    }

    #[test]
    fn c34_unaligned_longer_past_eof_bad_length_and_conflicting_eof_are_dropped() {
        let (mut dl, t0, a) = one_source(Some(10000));
        let reqs = drain(&mut dl, t0);
        assert_eq!(
            reqs.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![0, 4096, 8192]
        );
        let t = t0 + MS;
        assert!(matches!(
            dl.on_content(t, a, 100, 4096, Some(10000)),
            Accept::Drop(_)
        ));
        assert_eq!(
            dl.on_content(t, a, 0, 8192, Some(10000)),
            Accept::Drop("content longer than requested")
        );
        assert_eq!(
            dl.on_content(t, a, 4096, 4096, Some(10000)),
            Accept::Store {
                offset: 4096,
                len: 4096
            }
        );
        assert_eq!(dl.stats().dropped, 2);
        // Conflicting eof: the source is dropped and its request goes back to the missing set.
        assert!(matches!(
            dl.on_content(t, a, 0, 4096, Some(20000)),
            Accept::DropSource(_)
        ));
        assert!(dl.sources().is_empty());
        assert_eq!(dl.eof(), Some(10000));

        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 8192, 4096, Some(10000)),
            Accept::DropSource("content past eof")
        );
        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        assert!(matches!(
            dl.on_content(t0, a, 0, 1000, Some(10000)),
            Accept::DropSource(_)
        ));
        let (mut dl, t0, a) = one_source(Some(10000));
        drain(&mut dl, t0);
        assert!(matches!(
            dl.on_content(t0, a, 0, 4096, None),
            Accept::Drop(_)
        ));
    }

    #[test]
    fn c35_content_for_an_offset_never_requested_or_from_another_source_is_dropped() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        let r = dl.poll_request(t0).unwrap();
        assert_eq!(r.to, addr(1));
        let other = if r.to == addr(1) { addr(2) } else { addr(1) };
        assert!(matches!(
            dl.on_content(t0, other, r.offset, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
        assert!(matches!(
            dl.on_content(t0, addr(9), r.offset, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
        assert!(matches!(
            dl.on_content(t0, r.to, 512 << 10, 4096, Some(1 << 20)),
            Accept::Drop(_)
        ));
        assert_eq!(dl.received_bytes(), 0);
        assert_eq!(dl.sources().len(), 2);
    }

    #[test]
    fn c36_teasers_are_neither_data_nor_loss_and_are_requested_again() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let reqs = drain(&mut dl, t0);
        let cwnd = dl.stats().sources[0].cwnd;
        let t1 = t0 + 10 * MS;
        assert_eq!(
            dl.on_content(t1, a, reqs[0].offset, 32, Some(1 << 20)),
            Accept::Teaser
        );
        assert_eq!(
            dl.on_content(t1, a, reqs[1].offset, 0, Some(1 << 20)),
            Accept::Teaser
        );
        let st = dl.stats();
        assert_eq!((st.losses, st.teasers, st.sources[0].cwnd), (0, 2, cwnd));
        assert_eq!(dl.received_bytes(), 0);
        // Both teased ranges are asked again before anything new, one at a time while the
        // cookie handshake is under way, then at the full window once data comes.
        let t2 = t1 + 200 * MS;
        let again: Vec<_> = drain(&mut dl, t2).iter().map(|r| r.offset).collect();
        assert_eq!(again, [reqs[1].offset]);
        assert_eq!(dl.stats().sources[0].standing, Standing::Handshaking);
        assert!(matches!(
            dl.on_content(t2, a, reqs[1].offset, 4096, Some(1 << 20)),
            Accept::Store { .. }
        ));
        let again: Vec<_> = drain(&mut dl, t2).iter().map(|r| r.offset).collect();
        assert_eq!(again[0], reqs[0].offset);
        assert!(again.len() > 1, "{again:?}");
    }

    #[test]
    fn c36_a_32_byte_reply_reaching_eof_is_data() {
        let (mut dl, t0, a) = one_source(Some(4096 + 32));
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 4096, 32, Some(4128)),
            Accept::Store {
                offset: 4096,
                len: 32
            }
        );
        let (mut dl, t0, a) = one_source(None);
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 0, 5, Some(5)),
            Accept::Store { offset: 0, len: 5 }
        );
        dl.mark_stored(0, 5);
        assert!(dl.is_complete());
        assert_eq!(dl.received_bytes(), 5);
    }

    #[test]
    fn eof_0_only_for_the_empty_file_id() {
        let (mut dl, t0, a) = one_source(None);
        drain(&mut dl, t0);
        assert!(matches!(
            dl.on_content(t0, a, 0, 0, Some(0)),
            Accept::DropSource(_)
        ));
        let t0 = Instant::now();
        let mut dl = Download::new(EMPTY_ID, DownloadConfig::default(), None);
        dl.add_source(t0, a, None);
        drain(&mut dl, t0);
        assert_eq!(
            dl.on_content(t0, a, 0, 0, Some(0)),
            Accept::Store { offset: 0, len: 0 }
        );
        assert!(dl.is_complete());
        assert_eq!(dl.received_bytes(), 0, "no blocks, no last block to trim");
        assert_eq!(dl.poll_request(t0), None);
    }

    #[test]
    fn short_multiple_of_4096_reply_kept_rest_requeued_and_block_size_lowered() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), Some(40960));
        dl.grown(addr(1));
        let r = dl.poll_request(t0).unwrap();
        assert_eq!((r.offset, r.length), (0, 32768));
        let got = dl.on_content(t0 + MS, addr(1), 0, 8192, Some(1 << 20));
        assert_eq!(
            got,
            Accept::Store {
                offset: 0,
                len: 8192
            }
        );
        assert_eq!(dl.stats().sources[0].block_size, 8192);
        let next: Vec<_> = drain(&mut dl, t0 + MS)
            .iter()
            .map(|r| (r.offset, r.length))
            .collect();
        assert_eq!(&next[..3], &[(8192, 8192), (16384, 8192), (24576, 8192)]);
    }

    #[test]
    fn late_reply_overlapping_an_accepted_block_stores_only_the_new_blocks() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), Some(40960));
        dl.grown(addr(1));
        dl.add_source(t0, addr(2), None);
        let r = dl.poll_request(t0).unwrap();
        assert_eq!((r.to, r.offset, r.length), (addr(1), 0, 32768));
        // addr(1)'s request expires; its range 0..8 goes to addr(2), 4096 at a time.
        let t1 = t0 + 250 * MS;
        dl.handle_timeout(t1);
        let r2 = dl.poll_request(t1).unwrap();
        assert_eq!((r2.to, r2.offset, r2.length), (addr(2), 0, 4096));
        let t2 = t1 + MS;
        assert_eq!(
            dl.on_content(t2, addr(2), 0, 4096, Some(1 << 20)),
            Accept::Store {
                offset: 0,
                len: 4096
            }
        );
        // The late 32 KiB reply of addr(1) stores only blocks 1..8, not block 0 again.
        assert_eq!(
            dl.on_content(t2, addr(1), 0, 32768, Some(1 << 20)),
            Accept::Store {
                offset: 4096,
                len: 28672
            }
        );
    }
}
