//! The block bitmaps of a download (cjp2p.md 6.5): one bit per 4096-byte block in three sets,
//! and a count per block of the live requests covering it, allocated only once an `eof` is
//! accepted (at most `max_eof / 4096` blocks: 2 MiB of bits and 16 MiB of counts for 64 GiB).
//!
//! ```text
//!   pending  : at least one live request covers it (`copies > 0`)
//!   accepted : an accepted reply covers it (the driver is writing or has written it)
//!   have     : the driver wrote it (mark_stored)
//!   copies   : live requests covering it: 1 normally, 2 for an endgame copy
//! ```

use super::BLOCK;

/// A fixed-size bit set, one bit per 4096-byte block.
#[derive(Clone, Debug)]
pub(super) struct Bits {
    pub(super) words: Vec<u64>,
}

impl Bits {
    pub(super) fn new(n: u64) -> Bits {
        Bits {
            words: vec![0; n.div_ceil(64) as usize],
        }
    }
    pub(super) fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    pub(super) fn set(&mut self, i: u64) {
        self.words[(i / 64) as usize] |= 1 << (i % 64);
    }
    pub(super) fn clear(&mut self, i: u64) {
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
    }
}

/// Block state once `eof` is known.
#[derive(Debug)]
pub(super) struct Blocks {
    pub(super) eof: u64,
    /// Number of blocks, `ceil(eof / 4096)`.
    pub(super) n: u64,
    pub(super) pending: Bits,
    /// Live requests covering each block; `pending` is set exactly where this is non-zero.
    copies: Vec<u8>,
    pub(super) accepted: Bits,
    pub(super) have: Bits,
    pub(super) have_count: u64,
}

impl Blocks {
    pub(super) fn new(eof: u64) -> Blocks {
        let n = eof.div_ceil(BLOCK);
        Blocks {
            eof,
            n,
            pending: Bits::new(n),
            copies: vec![0; n as usize],
            accepted: Bits::new(n),
            have: Bits::new(n),
            have_count: 0,
        }
    }

    pub(super) fn is_needed(&self, i: u64) -> bool {
        !self.pending.get(i) && !self.accepted.get(i)
    }

    /// A live request now covers blocks `[first, end)`.
    pub(super) fn cover(&mut self, first: u64, end: u64) {
        for i in first..end {
            let c = &mut self.copies[i as usize];
            *c = c.saturating_add(1);
            self.pending.set(i);
        }
    }

    /// A request covering blocks `[first, end)` is no longer live (answered, expired, teased or
    /// its source removed): blocks no other live request covers are pending no more.
    pub(super) fn uncover(&mut self, first: u64, end: u64) {
        for i in first..end {
            let c = &mut self.copies[i as usize];
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.pending.clear(i);
            }
        }
    }

    /// Live requests covering block `i`.
    pub(super) fn copies(&self, i: u64) -> u8 {
        self.copies[i as usize]
    }

    /// First needed block at or after `from`, skipping whole words.
    pub(super) fn next_needed(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.n {
            let w = (i / 64) as usize;
            let free = !(self.pending.words[w] | self.accepted.words[w]) & (!0u64 << (i % 64));
            if free != 0 {
                let c = w as u64 * 64 + u64::from(free.trailing_zeros());
                return (c < self.n).then_some(c);
            }
            i = (w as u64 + 1) * 64;
        }
        None
    }

    /// Blocks `[first, end)` touched by `len` bytes at `offset`.
    pub(super) fn span(&self, offset: u64, len: u64) -> (u64, u64) {
        let first = offset / BLOCK;
        let end = offset
            .saturating_add(len)
            .min(self.eof)
            .div_ceil(BLOCK)
            .min(self.n);
        (first.min(self.n), end.max(first.min(self.n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_count_live_requests_and_drive_the_pending_bits() {
        let mut b = Blocks::new(10 * BLOCK + 1);
        assert_eq!(b.n, 11);
        assert_eq!(b.span(0, 32768), (0, 8));
        assert_eq!(b.span(8 * BLOCK, 32768), (8, 11), "cut at eof");
        b.cover(0, 8);
        b.cover(2, 4);
        assert_eq!((b.copies(2), b.copies(4)), (2, 1));
        assert_eq!(b.next_needed(0), Some(8));
        b.uncover(0, 8);
        assert!(!b.is_needed(1) || b.copies(1) == 0);
        assert_eq!(b.next_needed(0), Some(0));
        assert!(!b.is_needed(2) && !b.is_needed(3), "still covered once");
        b.uncover(2, 4);
        assert_eq!(b.next_needed(1), Some(1));
        b.accepted.set(5);
        assert!(!b.is_needed(5));
        // Uncovering what is not covered never wraps.
        b.uncover(9, 11);
        assert_eq!(b.copies(9), 0);
        assert!(b.is_needed(9));
    }

    #[test]
    fn next_needed_skips_whole_words() {
        let mut b = Blocks::new(300 * BLOCK);
        b.cover(0, 200);
        assert_eq!(b.next_needed(0), Some(200));
        for i in 200..300 {
            b.accepted.set(i);
        }
        assert_eq!(b.next_needed(0), None);
        assert_eq!(b.next_needed(299), None);
    }
}
