//! The in-memory bookkeeping of a part ([`super::Part`]): its geometry, the written and
//! durable bitmaps, the batch a sync is making durable and the claimed runs. No file I/O:
//! `Part` holds a [`State`] behind its mutex and does the reading and writing.

use std::io;
use std::ops::Range;
use std::sync::MutexGuard;

use super::super::prefix_hash::{Piece, PrefixHasher};
use super::{invalid, MAX_BITMAP_BYTES};

/// Size, block size and block count of one part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::ingest) struct Geometry {
    pub size: u64,
    pub block_size: u32,
    pub blocks: u64,
}

impl Geometry {
    pub(in crate::ingest) fn new(size: u64, block_size: u32) -> io::Result<Geometry> {
        if block_size == 0 {
            return Err(invalid("ingest: block size must not be 0"));
        }
        let blocks = size.div_ceil(u64::from(block_size));
        if blocks.div_ceil(8) > MAX_BITMAP_BYTES {
            return Err(invalid("ingest: too many blocks for one transfer"));
        }
        Ok(Geometry {
            size,
            block_size,
            blocks,
        })
    }

    pub(in crate::ingest) fn bitmap_bytes(&self) -> usize {
        self.blocks.div_ceil(8) as usize
    }

    /// Byte offset of block `i` (below `size` for every block that exists).
    pub fn offset(&self, i: u64) -> u64 {
        i.saturating_mul(u64::from(self.block_size))
    }

    /// Bytes in the blocks of `run` (the last block of the file may be short).
    pub fn run_bytes(&self, run: &Range<u64>) -> u64 {
        self.size.min(self.offset(run.end)) - self.offset(run.start)
    }

    /// `len` bytes starting at block `first` must be whole blocks (the last one may be the
    /// file's short tail): how many blocks that is. Wrong length or range: `InvalidInput`.
    pub fn run_len(&self, first: u64, len: usize) -> io::Result<u64> {
        let n = (len as u64).div_ceil(u64::from(self.block_size)).max(1);
        if first >= self.blocks || n > self.blocks - first {
            return Err(invalid("ingest: block index out of range"));
        }
        if len as u64 != self.run_bytes(&(first..first + n)) {
            return Err(invalid("ingest: block has the wrong length"));
        }
        Ok(n)
    }

    pub(in crate::ingest) fn prefix_bytes(&self, blocks: u64) -> u64 {
        self.offset(blocks).min(self.size)
    }
}

pub(in crate::ingest) fn has(bits: &[u8], i: u64) -> bool {
    bits[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// Sets or clears bit `i`; true if it changed.
pub(in crate::ingest) fn put(bits: &mut [u8], i: u64, on: bool) -> bool {
    let (byte, mask) = ((i / 8) as usize, 1u8 << (i % 8));
    let was = bits[byte] & mask != 0;
    if on {
        bits[byte] |= mask;
    } else {
        bits[byte] &= !mask;
    }
    was != on
}

/// The blocks a running sync is making durable.
#[derive(Debug)]
pub(in crate::ingest) struct Batch {
    /// First bitmap byte the batch covers.
    pub(in crate::ingest) lo: usize,
    /// Its blocks, as bits of bytes `lo..lo + bits.len()`.
    pub(in crate::ingest) bits: Vec<u8>,
    /// Its bits are being written to disk: a block can no longer leave it.
    pub(in crate::ingest) sealed: bool,
}

impl Batch {
    pub(in crate::ingest) fn holds(&self, i: u64) -> bool {
        let byte = (i / 8) as usize;
        byte >= self.lo
            && byte < self.lo + self.bits.len()
            && self.bits[byte - self.lo] & (1 << (i % 8)) != 0
    }

    pub(in crate::ingest) fn forget(&mut self, i: u64) {
        let byte = (i / 8) as usize;
        if !self.sealed && byte >= self.lo && byte < self.lo + self.bits.len() {
            self.bits[byte - self.lo] &= !(1 << (i % 8));
        }
    }
}

/// The bookkeeping of one part, behind [`Part::state`].
#[derive(Debug)]
pub(in crate::ingest) struct State {
    /// Blocks whose bytes are all in the part, synced or not.
    pub(in crate::ingest) written: Vec<u8>,
    /// Blocks whose bytes and bit are synced: exactly the bits on disk whenever no sync holds
    /// the bitmap lock. A block may be durable and not written for a moment (a replacement
    /// clearing it); it is reported durable only when it is both.
    pub(in crate::ingest) durable: Vec<u8>,
    /// Number of written blocks.
    pub(in crate::ingest) received: u64,
    /// Bytes of `written` that may hold bits `durable` lacks.
    pub(in crate::ingest) dirty: Option<(usize, usize)>,
    pub(in crate::ingest) batch: Option<Batch>,
    /// Runs of blocks claimed by shared writers (at most one or two per writer).
    pub(in crate::ingest) busy: Vec<Range<u64>>,
    /// False while the part is verified: shared writers are refused.
    pub(in crate::ingest) accepting: bool,
    /// Leading blocks that are all written (the stored prefix).
    pub(in crate::ingest) prefix_blocks: u64,
    /// Hashes the stored prefix while the part fills.
    pub(in crate::ingest) hasher: Option<PrefixHasher>,
    /// Background hashing was asked for: restart it after a reset or a replacement.
    pub(in crate::ingest) wants_hasher: bool,
    /// A sync failed: nothing may be reported durable any more.
    pub(in crate::ingest) failed: Option<(io::ErrorKind, String)>,
    /// Committed or discarded: nothing left to persist.
    pub(in crate::ingest) finished: bool,
}

impl State {
    pub(in crate::ingest) fn new(geo: Geometry) -> State {
        State {
            written: vec![0; geo.bitmap_bytes()],
            durable: vec![0; geo.bitmap_bytes()],
            received: 0,
            dirty: None,
            batch: None,
            busy: Vec::new(),
            accepting: true,
            prefix_blocks: 0,
            hasher: None,
            wants_hasher: false,
            failed: None,
            finished: false,
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn is_written(&self, i: u64) -> bool {
        (i / 8) < self.written.len() as u64 && has(&self.written, i)
    }

    pub fn is_durable(&self, i: u64) -> bool {
        self.is_written(i) && has(&self.durable, i)
    }

    pub(in crate::ingest) fn failure(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    pub(in crate::ingest) fn fail(&mut self, e: &io::Error) {
        if self.failed.is_none() {
            self.failed = Some((e.kind(), format!("ingest: part no longer trusted: {e}")));
        }
    }

    /// Marks the blocks of `run` written (their bytes are in the part). `piece`: the bytes
    /// just written, for the hasher (see [`Piece`]).
    pub(in crate::ingest) fn mark_written(
        &mut self,
        geo: Geometry,
        run: Range<u64>,
        piece: Option<Piece<'_>>,
    ) {
        let start = run.start;
        for i in run {
            if put(&mut self.written, i, true) {
                self.received += 1;
                let byte = (i / 8) as usize;
                self.dirty = Some(match self.dirty {
                    None => (byte, byte + 1),
                    Some((lo, hi)) => (lo.min(byte), hi.max(byte + 1)),
                });
            }
        }
        if start <= self.prefix_blocks {
            self.advance_prefix(geo, piece);
        } else if let (Some(h), Some(piece)) = (self.hasher.as_mut(), piece) {
            h.keep(piece);
        }
    }

    /// Moves the stored prefix over every written block after it and tells the hasher.
    pub(in crate::ingest) fn advance_prefix(&mut self, geo: Geometry, piece: Option<Piece<'_>>) {
        let mut i = self.prefix_blocks;
        while i < geo.blocks {
            let byte = (i / 8) as usize;
            if i % 8 == 0 && self.written[byte] == 0xff && i + 8 <= geo.blocks {
                i += 8;
                continue;
            }
            if !has(&self.written, i) {
                break;
            }
            i += 1;
        }
        self.prefix_blocks = i;
        let bytes = geo.prefix_bytes(i);
        if let Some(h) = self.hasher.as_mut() {
            h.advance(bytes, piece);
        }
    }

    /// Bytes of the part the background hasher may be reading: nothing below may be written.
    pub(in crate::ingest) fn frozen(&self) -> u64 {
        self.hasher.as_ref().map_or(0, PrefixHasher::frozen)
    }

    pub(in crate::ingest) fn release(&mut self, run: &Range<u64>) {
        if let Some(k) = self.busy.iter().position(|r| r == run) {
            self.busy.swap_remove(k);
        }
    }

    /// Up to `limit` maximal runs of blocks for which `pick(written byte, durable byte)` has
    /// the bit set, in increasing order.
    pub(in crate::ingest) fn runs(
        &self,
        geo: Geometry,
        limit: usize,
        pick: impl Fn(u8, u8) -> u8,
    ) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        if limit == 0 {
            return out;
        }
        let mut open: Option<u64> = None;
        for (k, (&w, &d)) in self.written.iter().zip(&self.durable).enumerate() {
            let b = pick(w, d);
            let base = k as u64 * 8;
            // Whole bytes continue or leave a run without a look at each bit.
            if (b == 0xff && open.is_some()) || (b == 0 && open.is_none()) {
                continue;
            }
            for bit in 0..8u64 {
                let i = base + bit;
                if i >= geo.blocks {
                    break;
                }
                match (b & (1 << bit) != 0, open) {
                    (true, None) => open = Some(i),
                    (false, Some(s)) => {
                        out.push(s..i);
                        open = None;
                        if out.len() == limit {
                            return out;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(s) = open {
            if out.len() < limit {
                out.push(s..geo.blocks);
            }
        }
        out
    }
}

/// Blocks not written yet, in increasing order, read under the part's lock.
pub(in crate::ingest) struct Missing<'a> {
    pub(in crate::ingest) st: MutexGuard<'a, State>,
    pub(in crate::ingest) next: u64,
    pub(in crate::ingest) blocks: u64,
}

impl Iterator for Missing<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.next < self.blocks {
            let i = self.next;
            let byte = self.st.written[(i / 8) as usize];
            if i % 8 == 0 && byte == 0xff {
                self.next += 8;
                continue;
            }
            self.next += 1;
            if byte & (1 << (i % 8)) == 0 {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run reaching past the file's last block is refused as out of range, whatever its
    /// length (mutation sample H: `blocks - first` as `+` let it through to the length check,
    /// which refused it for another reason, "wrong length").
    #[test]
    fn runs_past_the_last_block_are_out_of_range() {
        let geo = Geometry::new(4 * 4096 - 100, 4096).unwrap();
        assert_eq!(geo.run_len(0, 4 * 4096 - 100).unwrap(), 4);
        assert_eq!(geo.run_len(3, 4096 - 100).unwrap(), 1);
        for (first, len) in [(3, 2 * 4096), (2, 3 * 4096), (4, 1), (u64::MAX, 1)] {
            let e = geo.run_len(first, len).unwrap_err();
            assert!(e.to_string().contains("out of range"), "{first} {len}: {e}");
        }
        let e = geo.run_len(3, 4096).unwrap_err();
        assert!(e.to_string().contains("wrong length"), "{e}");
    }

    /// The stored prefix moves over every written block from the start, whichever order they
    /// came in, and no further (mutation run: `start <= prefix` as `>` moved it only for runs
    /// past it, so it stayed at 0).
    #[test]
    fn the_prefix_moves_over_the_written_blocks_from_the_start() {
        let geo = Geometry::new(20 * 4096, 4096).unwrap();
        let mut st = State::new(geo);
        st.mark_written(geo, 0..2, None);
        assert_eq!(st.prefix_blocks, 2);
        st.mark_written(geo, 5..17, None);
        assert_eq!(st.prefix_blocks, 2);
        st.mark_written(geo, 2..5, None);
        assert_eq!(st.prefix_blocks, 17);
        st.mark_written(geo, 17..20, None);
        assert_eq!(st.prefix_blocks, 20);
    }

    /// A batch answers for the blocks of its own bytes only: a block in the byte just past
    /// them is not held, and asking is no index panic (mutation sample H: `<` as `<=`).
    #[test]
    fn a_batch_holds_only_the_blocks_of_its_bytes() {
        let b = Batch {
            lo: 1,
            bits: vec![0b0000_0101],
            sealed: true,
        };
        let held: Vec<u64> = (0..24).filter(|&i| b.holds(i)).collect();
        assert_eq!(held, [8, 10]);
    }
}
