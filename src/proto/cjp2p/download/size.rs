//! How large a request each source gets: its request size grows while its answers arrive
//! cleanly and shrinks when large answers go missing more often than smaller ones did.
//!
//! Why: a CJP2P answer is one UDP datagram, base64 inside JSON, so a 32 KiB answer is about
//! 44 KB on the wire, 30 IP fragments on a 1500-byte path. A datagram of k fragments is lost when
//! any one is, with probability 1-(1-p)^k: at 1 % fragment loss 26 % of 32 KiB answers are lost
//! against 4 % of 4096-byte ones. Worse, the siblings of a lost fragment wait in the receiver's
//! reassembly queue for 30 s (Linux: `ipfrag_time`), and once that queue is full (4 MiB,
//! `ipfrag_high_thresh`) the kernel drops every fragment: the download stalls for half a minute.
//! On loopback or a clean LAN, large answers cost nothing and save CPU per byte, so the size must
//! follow the path, per source. Out of scope: the path MTU itself (unknown to a pure machine, and
//! the loss that matters is the fragments', not the MTU's).
//!
//! ```text
//!               8 clean replies in a row until the first loss; after it, 64 outcomes (doubling
//!               with each shrink) losing under 2.5 %; and no request sent before the
//!               last one answered still in flight
//!   size S ───────────────────────────────────────────────> 2S (up to the ceiling)
//!     ^  │
//!     │  │ >= 2 confirmed losses, >= 5 % of the outcomes at S, more than 1.3x
//!     │  │ (+1 point) the loss seen at S/2, and (if S was itself reached by
//!     │  │ shrinking) at least 256 outcomes at S
//!     │  v
//!   S/2 (down to MIN_SIZE)  ── 256 outcomes at S/2 lose at least 9/10 as often as S did:
//!                              the loss does not depend on the size; back to S
//! ```
//!
//! A source starts at [`MIN_SIZE`] (slow start for the size, as TCP does for the window): on
//! loopback it reaches 32 KiB within a few dozen replies (a millisecond or two), on a lossy path
//! it never sends a burst of large answers that could fill the reassembly queue.
//! Only outcomes of requests sent at the current size count. An expired request is a loss only
//! once the source answers something afterwards ("confirmed"): a source that went silent loses
//! everything in flight, which says nothing about sizes.

use super::BLOCK;

/// Smallest request size: one block of the bitmaps, the reference node's size. Its answer is a
/// 4-fragment datagram on a 1500-byte path.
pub(super) const MIN_SIZE: u32 = BLOCK as u32;
/// IP fragments an answer may take on a path ([`request_limit_for_mtu`]): a 4096-byte answer
/// is 4 on a 1500-byte path.
const MAX_FRAGMENTS: u32 = 4;
/// Bytes of an answer besides its base64 data (JSON keys, id, offset), rounded up.
const ANSWER_OVERHEAD: u32 = 300;

/// Largest request (a multiple of 4096, at least [`MIN_SIZE`]) whose answer fits in
/// [`MAX_FRAGMENTS`] IP fragments on a path of `mtu`-byte packets (IPv6 and UDP headers
/// counted, base64 is 4 bytes per 3): 4096 on a 1500-byte path, 24 KiB on a 9000-byte one,
/// no limit worth having on loopback (65,536).
pub fn request_limit_for_mtu(mtu: u32) -> u32 {
    let per_fragment = mtu.saturating_sub(48);
    let encoded = (MAX_FRAGMENTS * per_fragment).saturating_sub(ANSWER_OVERHEAD);
    let data = encoded / 4 * 3;
    (data / MIN_SIZE * MIN_SIZE).max(MIN_SIZE)
}

/// Clean replies in a row needed to double the size while no loss has been seen yet.
const GROW_FIRST: u32 = 8;
/// Outcomes at a size needed to try the larger size once a loss has been seen; doubles with
/// every shrink, up to [`MAX_GROW_AFTER`].
const GROW_AFTER_LOSS: u32 = 64;
const MAX_GROW_AFTER: u32 = 4096;
/// Losses (confirmed) at a size before it may be judged lossy.
const MIN_LOSSES: u32 = 2;
/// Loss fraction of the outcomes at a size above which it is halved.
const SHRINK_LOSS: f64 = 0.05;
/// Outcomes at a size reached by shrinking before it is judged whether the shrink helped.
const JUDGE_AFTER: u32 = 256;

/// Lost and answered requests of one size.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tally {
    ok: u32,
    lost: u32,
}

impl Tally {
    fn total(self) -> u32 {
        self.ok + self.lost
    }
    fn loss(self) -> f64 {
        match self.total() {
            0 => 0.0,
            n => f64::from(self.lost) / f64::from(n),
        }
    }
}

/// One source's request size and the evidence behind it.
#[derive(Clone, Debug)]
pub(super) struct Sizer {
    /// Current request size: a multiple of 4096 within `MIN_SIZE..=ceiling`.
    block: u32,
    /// Largest size: the configured request length, capped by what the peer answers.
    ceiling: u32,
    /// Outcomes of requests sent at `block` since it was set.
    tally: Tally,
    /// Requests sent at `block` that expired and are not yet known to be lost.
    suspect: u32,
    /// Replies in a row at `block` with no expiry between them.
    clean: u32,
    grow_after: u32,
    /// What `block / 2` saw when the size last moved up from it.
    below: Option<Tally>,
    /// What `block * 2` saw when the size last moved down from it.
    above: Option<Tally>,
    /// Shrinks for loss, for logs and tests.
    shrinks: u32,
    /// No loss confirmed yet: the size doubles on clean replies alone (start-up, as TCP's slow
    /// start ends at the first loss).
    is_starting: bool,
    /// A request of an earlier size expired during start-up (ends it once confirmed).
    lost_before: bool,
}

impl Sizer {
    /// A source whose requests may be `ceiling` bytes (rounded to a multiple of 4096 by the
    /// caller), starting small.
    pub(super) fn new(ceiling: u32) -> Sizer {
        let ceiling = ceiling.max(MIN_SIZE);
        Sizer {
            block: MIN_SIZE,
            ceiling,
            tally: Tally::default(),
            suspect: 0,
            clean: 0,
            grow_after: GROW_FIRST,
            below: None,
            above: None,
            shrinks: 0,
            is_starting: true,
            lost_before: false,
        }
    }

    pub(super) fn block(&self) -> u32 {
        self.block
    }

    pub(super) fn shrinks(&self) -> u32 {
        self.shrinks
    }

    pub(super) fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// A new largest size (the peer turned out to be ferry, or answers less than asked).
    pub(super) fn set_ceiling(&mut self, ceiling: u32) {
        self.ceiling = ceiling.max(MIN_SIZE);
        if self.block > self.ceiling {
            self.set_block(self.ceiling);
        }
    }

    /// A request sent at size `size` was answered with data (`late`: after it had expired).
    /// `has_older_in_flight`: whether a request sent before the answered one (at any size) is
    /// still unanswered (asked only when the size is about to grow).
    pub(super) fn on_reply(
        &mut self,
        size: u32,
        late: bool,
        has_older_in_flight: impl FnOnce() -> bool,
    ) {
        if late {
            // A spurious timeout (the RTO was short, or this process was not scheduled for a
            // moment): not a loss after all. It confirms nothing either: the late replies of a
            // window that expired at once arrive before the replies to what was sent after it.
            if size == self.block {
                match self.suspect {
                    0 => self.tally.lost = self.tally.lost.saturating_sub(1),
                    _ => self.suspect -= 1,
                }
            }
        } else {
            // A fresh answer proves the source alive: what expired before it was lost.
            self.confirm();
        }
        if size != self.block {
            return;
        }
        self.tally.ok += 1;
        self.clean += 1;
        // Until the first loss (start-up) the size grows on clean replies only. After it, the
        // larger size is tried after `grow_after` outcomes, clean or not: whether that size
        // loses clearly more often than this one decides, so a loss that does not depend on the
        // size (congestion) cannot hold the size down. But a size that itself loses more than
        // half the shrink threshold is not tried larger: every lost answer leaves its other
        // fragments in the reassembly queue for 30 s, so on a lossy path the queue's budget,
        // not the delivery rate, is what bounds the size.
        // And never over a hole: an older request still in flight may be a loss whose timer
        // has not fired yet (losses are known one RTO late, answers at once; growing on answers
        // alone would walk the size up a lossy path well before its first loss is counted).
        let due = match self.is_starting {
            true => self.clean >= self.grow_after,
            false => self.tally.total() >= self.grow_after && self.tally.loss() * 2.0 < SHRINK_LOSS,
        };
        if self.block < self.ceiling && due && !has_older_in_flight() {
            self.below = Some(self.tally);
            self.above = None;
            let up = (self.block * 2).min(self.ceiling);
            self.set_block(up);
        }
    }

    /// A request sent at size `size` expired.
    pub(super) fn on_expired(&mut self, size: u32) {
        if size == self.block {
            self.suspect += 1;
            self.clean = 0;
        } else if self.is_starting {
            // A smaller request of the start-up, lost: start-up ends here too (the size walked
            // up faster than losses are known).
            self.lost_before = true;
            self.clean = 0;
        }
    }

    /// The source answered: the requests at the current size that expired before were lost.
    fn confirm(&mut self) {
        if std::mem::take(&mut self.lost_before) && self.is_starting {
            self.is_starting = false;
            self.grow_after = GROW_AFTER_LOSS;
        }
        if self.suspect == 0 {
            return;
        }
        self.tally.lost += std::mem::take(&mut self.suspect);
        if self.is_starting {
            self.is_starting = false;
            self.grow_after = GROW_AFTER_LOSS;
        }
        let t = self.tally;
        if let Some(a) = self.above {
            if t.total() < JUDGE_AFTER {
                // Reached by shrinking: judged once it has enough outcomes, not before.
                return;
            }
            // Halving the size nearly halves the loss of fragments; 9/10 leaves room for noise.
            if t.lost >= MIN_LOSSES && t.loss() * 10.0 >= a.loss() * 9.0 {
                // Half the size lost about as often: the loss does not depend on the size
                // (congestion, not fragments). Back up, and from there shrink only for loss
                // clearly beyond what this size saw.
                self.below = Some(t);
                self.above = None;
                let up = (self.block * 2).min(self.ceiling);
                self.set_block(up);
                return;
            }
        }
        let beyond_below = self.below.is_none_or(|b| t.loss() > 1.3 * b.loss() + 0.01);
        if self.block > MIN_SIZE && t.lost >= MIN_LOSSES && t.loss() >= SHRINK_LOSS && beyond_below
        {
            self.above = Some(t);
            self.below = None;
            self.grow_after = match self.shrinks {
                0 => GROW_AFTER_LOSS,
                _ => (self.grow_after * 2).clamp(GROW_AFTER_LOSS, MAX_GROW_AFTER),
            };
            self.shrinks += 1;
            let down = (self.block / 2 / MIN_SIZE).max(1) * MIN_SIZE;
            self.set_block(down);
        }
    }

    /// Test shortcut: the size a source reaches on a clean path.
    #[cfg(test)]
    pub(super) fn grow_to_ceiling(&mut self) {
        self.set_block(self.ceiling);
    }

    fn set_block(&mut self, block: u32) {
        self.block = block;
        self.tally = Tally::default();
        self.suspect = 0;
        self.clean = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(s: &mut Sizer, n: u32) {
        for _ in 0..n {
            let b = s.block();
            s.on_reply(b, false, || false);
        }
    }

    /// A sizer at 32 KiB that saw 10 % loss there (2 of 20) and shrank to 16 KiB.
    fn shrunk_from_32k() -> Sizer {
        let mut s = Sizer::new(32768);
        s.set_block(32768);
        for _ in 0..2 {
            replies(&mut s, 9);
            s.on_expired(32768);
        }
        replies(&mut s, 1);
        assert_eq!(s.block(), 16384, "10 % loss at 32 KiB");
        s
    }

    #[test]
    fn starts_at_4096_and_doubles_after_8_clean_replies_with_no_hole_behind_them() {
        let mut s = Sizer::new(32768);
        assert_eq!(s.block(), 4096);
        for _ in 0..20 {
            s.on_reply(4096, false, || true);
        }
        assert_eq!(s.block(), 4096, "an older request is still in flight");
        replies(&mut s, 1);
        assert_eq!(s.block(), 8192);
        replies(&mut s, 7);
        assert_eq!(s.block(), 8192);
        replies(&mut s, 1);
        assert_eq!(s.block(), 16384);
        replies(&mut s, 8);
        replies(&mut s, 100);
        assert_eq!(s.block(), 32768, "never above the ceiling");
        assert_eq!(s.shrinks(), 0);
    }

    #[test]
    fn a_ceiling_of_40960_halves_to_whole_blocks() {
        let mut s = Sizer::new(40960);
        s.set_block(40960);
        for _ in 0..3 {
            s.on_expired(40960);
        }
        replies(&mut s, 1);
        assert_eq!(s.block(), 20480);
    }

    #[test]
    fn losses_at_a_large_size_halve_it_and_only_once_confirmed() {
        let mut s = Sizer::new(32768);
        s.set_block(32768);
        replies(&mut s, 10);
        s.on_expired(32768);
        s.on_expired(32768);
        s.on_expired(32768);
        assert_eq!(s.block(), 32768, "a silent source proves nothing");
        replies(&mut s, 1);
        assert_eq!(s.block(), 16384);
        assert_eq!(s.shrinks(), 1);
        // Requests of the old size expiring later do not count at the new one.
        s.on_expired(32768);
        replies(&mut s, 1);
        assert_eq!(s.tally, Tally { ok: 1, lost: 0 });
    }

    #[test]
    fn one_loss_in_many_keeps_the_size() {
        let mut s = Sizer::new(32768);
        s.set_block(32768);
        for _ in 0..4 {
            replies(&mut s, 100);
            s.on_expired(32768);
        }
        replies(&mut s, 1);
        assert_eq!(s.block(), 32768, "4 losses in 401: 1 %");
    }

    #[test]
    fn a_late_reply_is_not_a_loss() {
        let mut s = Sizer::new(32768);
        s.set_block(32768);
        s.on_expired(32768);
        s.on_expired(32768);
        s.on_reply(32768, true, || false);
        s.on_reply(32768, true, || false);
        assert_eq!(s.block(), 32768);
        assert_eq!(s.tally, Tally { ok: 2, lost: 0 });
        // A fresh answer then confirms nothing lost: both suspects were answered.
        s.on_reply(32768, false, || false);
        assert_eq!(s.tally, Tally { ok: 3, lost: 0 });
        // A late answer at another size clears no suspect at this one.
        s.on_expired(32768);
        s.on_reply(16384, true, || false);
        s.on_reply(32768, false, || false);
        assert_eq!(s.tally, Tally { ok: 4, lost: 1 });
        // The same ceiling again changes nothing (the tally stands).
        s.set_ceiling(32768);
        assert_eq!((s.block(), s.tally), (32768, Tally { ok: 4, lost: 1 }));
    }

    #[test]
    fn a_shrink_that_does_not_help_is_undone() {
        // 10 % loss at 32 KiB...
        let mut s = shrunk_from_32k();
        // ... and 10 % at 16 KiB: size-independent loss, back to 32 KiB.
        for _ in 0..26 {
            replies(&mut s, 9);
            s.on_expired(16384);
        }
        replies(&mut s, 1);
        assert_eq!(s.block(), 32768);
        // From there only loss clearly beyond 16 KiB's shrinks it again: 10 % does not.
        for _ in 0..4 {
            replies(&mut s, 9);
            s.on_expired(32768);
        }
        replies(&mut s, 1);
        assert_eq!(s.block(), 32768);
        // Nor does 13 %: the bar is 1.3 x 16 KiB's 10 % plus 1 %, 14 %.
        replies(&mut s, 70);
        for _ in 0..12 {
            s.on_expired(32768);
        }
        replies(&mut s, 1);
        let loss = f64::from(s.tally.lost) / f64::from(s.tally.total() - 1);
        assert!((0.125..0.135).contains(&loss), "{loss}");
        assert_eq!(s.block(), 32768);
        // 30 % does.
        for _ in 0..20 {
            s.on_expired(32768);
        }
        replies(&mut s, 1);
        assert_eq!(s.block(), 16384);
    }

    /// A size reached by shrinking is judged once it has 256 outcomes: at the 256th, not one
    /// later.
    #[test]
    fn a_shrunk_size_is_judged_at_exactly_256_outcomes() {
        let mut s = shrunk_from_32k();
        // 10 % at 16 KiB too, in rounds of 9 answers and a loss; the loss of each round is
        // confirmed by the next round's first answer.
        for _ in 0..25 {
            replies(&mut s, 9);
            s.on_expired(16384);
        }
        replies(&mut s, 5);
        s.on_expired(16384);
        assert_eq!(s.tally.total() + s.suspect, 256);
        assert_eq!(s.block(), 16384, "not judged before its 256th outcome");
        replies(&mut s, 1);
        assert_eq!(
            s.block(),
            32768,
            "judged at it: the loss did not depend on the size"
        );
    }

    #[test]
    fn after_a_shrink_growth_needs_64_clean_replies_then_more_after_each_failed_try() {
        let mut s = Sizer::new(8192);
        s.set_block(8192);
        s.on_expired(8192);
        s.on_expired(8192);
        replies(&mut s, 1);
        assert_eq!(s.block(), 4096);
        replies(&mut s, 63);
        assert_eq!(s.block(), 4096);
        replies(&mut s, 1);
        assert_eq!(s.block(), 8192);
        // The try fails: 128 clean replies needed next time.
        s.on_expired(8192);
        s.on_expired(8192);
        replies(&mut s, 1);
        assert_eq!(s.block(), 4096);
        replies(&mut s, 127);
        assert_eq!(s.block(), 4096);
        replies(&mut s, 1);
        assert_eq!(s.block(), 8192);
    }

    #[test]
    fn a_loss_at_a_smaller_size_ends_the_start_up_too() {
        let mut s = Sizer::new(32768);
        replies(&mut s, 8);
        assert_eq!(s.block(), 8192);
        // A 4096-byte request of the start-up expired; the next answer confirms it.
        s.on_expired(4096);
        replies(&mut s, 1);
        replies(&mut s, 62);
        assert_eq!(s.block(), 8192, "64 outcomes now, not 8 clean replies");
        replies(&mut s, 1);
        assert_eq!(s.block(), 16384);
    }

    #[test]
    fn a_size_losing_2_5_percent_or_more_is_not_tried_larger() {
        let mut s = Sizer::new(8192);
        // 1 loss in 40 (2.5 %) at 4096, for ever: never 8192.
        for _ in 0..20 {
            s.on_expired(4096);
            replies(&mut s, 39);
        }
        assert_eq!(s.block(), 4096);
        assert_eq!(s.tally, Tally { ok: 780, lost: 20 });
    }

    #[test]
    fn never_below_4096() {
        let mut s = Sizer::new(32768);
        for _ in 0..10 {
            let b = s.block();
            s.on_expired(b);
            s.on_expired(b);
            s.on_reply(b, false, || false);
        }
        assert_eq!(s.block(), 4096);
        // At 4096 heavy loss is not a shrink (nothing to halve): counted as none.
        assert_eq!(s.shrinks(), 0);
        assert_eq!(s.tally.lost, 20, "the tally is kept, not restarted");
    }
}
