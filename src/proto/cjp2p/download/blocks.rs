//! The block bitmaps of a download (cjp2p.md 6.5): one bit per 4096-byte block in three sets,
//! allocated only once an `eof` is accepted (at most `max_eof / 4096` bits each).

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
            accepted: Bits::new(n),
            have: Bits::new(n),
            have_count: 0,
        }
    }

    pub(super) fn is_needed(&self, i: u64) -> bool {
        !self.pending.get(i) && !self.accepted.get(i)
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
