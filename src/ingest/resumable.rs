//! Resumable ingest with one owner: a sparse `<key>.part` written block by block in any order,
//! and a `<key>.bitmap` saying which blocks are there, so a killed transfer resumes where its
//! last flush left it (cjp2p.md 6.5-6.6).
//!
//! A [`Resumable`] is a [`Part`](super::part) with a single owner: writes go through `&mut
//! self` and take no lock, which is what a single-threaded downloader (CJP2P) wants in its hot
//! path. Several connections filling one part share a [`Transfer`](super::Transfer) instead.
//!
//! Durability order: block data is written with `pwrite`, the part is `fdatasync`ed, and only
//! then are the new bits written to the bitmap (in place) and synced. Between flushes bits only
//! go from 0 to 1, so even a torn bitmap write never claims a block whose data is not durable.
//! Starting over (a header mismatch, or [`Resumable::clear`]) replaces the bitmap atomically
//! (write `<key>.bitmap.new`, rename) *before* the old data is discarded.

use std::io;

use super::part::Part;
use super::{Collision, Committed, Expect, IngestDir, IngestError};

/// A transfer whose blocks may arrive in any order and survive a restart.
#[derive(Debug)]
pub struct Resumable {
    part: Part,
}

impl Resumable {
    pub(super) fn open(
        dir: IngestDir,
        key: &str,
        size: u64,
        block_size: u32,
    ) -> io::Result<Resumable> {
        Ok(Resumable {
            part: Part::open(dir, key, size, block_size, false)?,
        })
    }

    /// Length of the file in bytes.
    pub fn size(&self) -> u64 {
        self.part.geometry().size
    }

    /// Bytes per block (the last block may be shorter).
    pub fn block_size(&self) -> u32 {
        self.part.geometry().block_size
    }

    /// Number of blocks: `ceil(size / block_size)`, 0 for an empty file.
    pub fn blocks(&self) -> u64 {
        self.part.geometry().blocks
    }

    /// Whether block `i` has been written (false for an index out of range).
    pub fn has_block(&self, i: u64) -> bool {
        i < self.blocks() && self.part.state().is_written(i)
    }

    /// Indices of the blocks not written yet, in increasing order.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        self.part.missing()
    }

    /// Number of blocks written.
    pub fn received(&self) -> u64 {
        self.part.state().received()
    }

    /// Every block is written (always true for an empty file).
    pub fn is_complete(&self) -> bool {
        self.received() == self.blocks()
    }

    /// pwrite data at block i (exact length: block_size, or the tail for the last block) then set
    /// the bit in memory. Wrong length/index -> error, nothing written.
    pub fn write_block(&mut self, i: u64, data: &[u8]) -> io::Result<()> {
        self.write_blocks(i, data)
    }

    /// Writes consecutive blocks starting at block `first` with one `pwrite`: `data` holds whole
    /// blocks, the last of which may be the file's short tail. Wrong length or range: error,
    /// nothing written. Takes no lock.
    pub fn write_blocks(&mut self, first: u64, data: &[u8]) -> io::Result<()> {
        self.part.write_exclusive(first, data)
    }

    /// Hash the part's stored prefix on a background thread while blocks arrive, so that
    /// [`commit`](Self::commit) only reads what the prefix has not reached. Once on, blocks of
    /// that prefix can no longer be rewritten (`write_blocks` refuses them). Idempotent; also
    /// kept across [`clear`](Self::clear).
    pub fn hash_in_background(&mut self) -> io::Result<()> {
        self.part.hash_in_background()
    }

    /// Persist the bitmap: `fdatasync` of the part first (data must be durable before its bits
    /// are), then the changed bytes of the bitmap written in place and synced. Callers do this
    /// at least once a second. Nothing to do if no bit changed since the last flush.
    ///
    /// After a failed flush the part is no longer trusted: later flushes and the commit fail
    /// until [`clear`](Self::clear).
    pub fn flush(&mut self) -> io::Result<()> {
        self.part.sync()
    }

    /// Verification failed: start over (every bit cleared, the part emptied, durably).
    pub fn clear(&mut self) -> io::Result<()> {
        self.part.reset()
    }

    /// Hash the whole part (SHA-256 + xxh64 via pread in 1 MiB chunks), verify, fsync, publish under
    /// `name`, delete the bitmap. On mismatch: Err(Mismatch), the part stays for clear()+retry.
    ///
    /// Other errors (`BadName`, `Incomplete`, I/O) also hand the transfer back unchanged.
    // The transfer comes back by value so a caller can clear() and retry without reopening;
    // boxing it would only move the same bytes to the heap on a rare path.
    #[allow(clippy::result_large_err)]
    pub fn commit(self, name: &str, expect: Expect) -> Result<Committed, (Resumable, IngestError)> {
        self.commit_with(name, expect, Collision::Tagged)
    }

    /// [`commit`](Self::commit) with an explicit policy for names taken by different content.
    #[allow(clippy::result_large_err)] // as for commit
    pub fn commit_with(
        self,
        name: &str,
        expect: Expect,
        policy: Collision,
    ) -> Result<Committed, (Resumable, IngestError)> {
        match self.part.commit(name, expect, policy) {
            Ok(c) => Ok(c),
            Err(e) => Err((self, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_dir::{list, TempDir};
    use super::super::Outcome;
    use super::*;
    use sha2::{Digest, Sha256};
    use std::fs;
    use twox_hash::XxHash64;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    fn setup(what: &str) -> (TempDir, IngestDir) {
        let t = TempDir::new(what);
        let dir = IngestDir::new(&t.0, &t.0.join(".ferry/ingest")).unwrap();
        (t, dir)
    }

    #[test]
    fn peek_reports_an_earlier_transfer() {
        let t = TempDir::new("peek");
        let dir = IngestDir::new(&t.0.join("dest"), &t.0.join("work")).unwrap();
        assert_eq!(dir.peek_resumable("abc"), None);
        let r = dir.begin_resumable("abc", 10_000, 4096).unwrap();
        drop(r);
        assert_eq!(dir.peek_resumable("abc"), Some((10_000, 4096)));
        assert_eq!(dir.peek_resumable("../abc"), None);
        // The longest key is peeked; a key begin_resumable would refuse is refused here even
        // with a good bitmap under its name (mutation run: the key checks' operators).
        let work = t.0.join("work");
        let good = fs::read(work.join("abc.bitmap")).unwrap();
        let longest = "k".repeat(crate::ingest::MAX_KEY_BYTES);
        drop(dir.begin_resumable(&longest, 20_000, 4096).unwrap());
        assert_eq!(dir.peek_resumable(&longest), Some((20_000, 4096)));
        for key in [
            "k".repeat(crate::ingest::MAX_KEY_BYTES + 1),
            "a.b".into(),
            String::new(),
        ] {
            fs::write(work.join(format!("{key}.bitmap")), &good).unwrap();
            assert_eq!(dir.peek_resumable(&key), None, "{key}");
        }
        // A bitmap of another version, or of 0-byte blocks, is no earlier transfer.
        for (at, value) in [(8, 2u8), (12, 0)] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&u32::from(value).to_le_bytes());
            fs::write(work.join("abc.bitmap"), &bad).unwrap();
            assert_eq!(dir.peek_resumable("abc"), None, "byte {at}");
        }
    }

    /// Removing a transfer whose part name is taken by something that cannot be opened as
    /// ours (a symbolic link) is an error, and its bitmap stays (mutation run: the `NotFound`
    /// guard forced true ignored every error and went on to delete the bitmap).
    #[test]
    fn removing_a_transfer_whose_part_is_a_link_is_an_error() {
        let (t, dir) = setup("remove-link");
        let work = t.0.join(".ferry/ingest");
        std::os::unix::fs::symlink("/etc/hostname", work.join("k.part")).unwrap();
        fs::write(work.join("k.bitmap"), b"bits").unwrap();
        assert!(Part::remove(&dir, "k").is_err());
        assert!(work.join("k.bitmap").exists());
        fs::remove_file(work.join("k.part")).unwrap();
        Part::remove(&dir, "k").unwrap();
        assert!(!work.join("k.bitmap").exists());
        Part::remove(&dir, "k").unwrap();
    }

    /// Writes blocks `order` of `data` (4096-byte blocks) with one `write_blocks` each.
    fn write_in(r: &mut Resumable, data: &[u8], order: impl IntoIterator<Item = u64>) {
        for i in order {
            let s = (i * 4096) as usize;
            r.write_blocks(i, &data[s..(s + 4096).min(data.len())])
                .unwrap();
        }
    }

    #[test]
    fn background_hash_in_order_and_out_of_order_gives_the_right_digest() {
        let (t, dir) = setup("res-bghash");
        // Over three hashing chunks, with a short tail block.
        let data = content(3 * (1 << 20) + 5000);
        let blocks = (data.len() as u64).div_ceil(4096);
        for (n, order) in [
            (0..blocks).collect::<Vec<_>>(),
            (0..blocks).rev().collect(),
            (0..blocks)
                .filter(|i| i % 2 == 1)
                .chain((0..blocks).filter(|i| i % 2 == 0))
                .collect(),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = dir
                .begin_resumable(&format!("bg{n}"), data.len() as u64, 4096)
                .unwrap();
            r.hash_in_background().unwrap();
            r.hash_in_background().unwrap(); // idempotent
            write_in(&mut r, &data, order);
            let c = r
                .commit(&format!("f{n}.bin"), Expect::Sha256(sha(&data)))
                .unwrap();
            assert_eq!(c.sha256, Some(sha(&data)));
            assert_eq!(std::fs::read(t.0.join(format!("f{n}.bin"))).unwrap(), data);
        }
    }

    #[test]
    fn background_hash_refuses_rewrites_of_the_hashed_prefix_and_restarts_after_clear() {
        let (_t, dir) = setup("res-bgfrozen");
        let data = content(40_000);
        let mut r = dir
            .begin_resumable("frozen", data.len() as u64, 4096)
            .unwrap();
        r.hash_in_background().unwrap();
        write_in(&mut r, &data, [0, 1, 2]);
        let e = r.write_blocks(1, &data[4096..8192]).unwrap_err();
        assert!(e.to_string().contains("being hashed"), "{e}");
        r.write_blocks(5, &data[5 * 4096..6 * 4096]).unwrap(); // past the prefix: fine
        r.write_blocks(5, &data[5 * 4096..6 * 4096]).unwrap();
        // Other bytes after a clear: the digest is of the new bytes, not of the old prefix.
        let other: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
        r.clear().unwrap();
        write_in(&mut r, &other, 0..10);
        // The owner still asked for background hashing: it starts again from zero at the
        // next run, rather than leaving the whole file to the commit (the struct-field
        // mutant of `Part::reset` that dropped `wants_hasher`).
        assert_eq!(r.part.hasher_started_at(), Some(0));
        let c = r.commit("other.bin", Expect::Sha256(sha(&other))).unwrap();
        assert_eq!(c.sha256, Some(sha(&other)));
    }

    /// A part closed unfinished leaves its background hash with its IngestDir: reopened in the
    /// same process (FastDP recycles a connection every 500 MB) the hasher goes on from there,
    /// and the digest is right; a part changed on disk meanwhile, or reset, starts from zero.
    #[test]
    fn background_hash_survives_a_close_and_reopen_in_the_process() {
        let (_t, dir) = setup("res-bgkeep");
        let data = content(3 * (1 << 20) + 100);
        let blocks = (data.len() as u64).div_ceil(4096);
        let half = blocks / 2;
        let mut r = dir
            .begin_resumable("keep", data.len() as u64, 4096)
            .unwrap();
        r.hash_in_background().unwrap();
        write_in(&mut r, &data, 0..half);
        drop(r);
        let mut r = dir
            .begin_resumable("keep", data.len() as u64, 4096)
            .unwrap();
        r.hash_in_background().unwrap();
        assert_eq!(
            r.part.hasher_started_at(),
            Some(half * 4096),
            "went on where it stopped"
        );
        write_in(&mut r, &data, half..blocks);
        let c = r.commit("keep.bin", Expect::Sha256(sha(&data))).unwrap();
        assert_eq!(c.sha256, Some(sha(&data)));
        // Changed on disk while closed: the kept hash is not used, the digest is still exact.
        let mut r = dir
            .begin_resumable("touched", data.len() as u64, 4096)
            .unwrap();
        r.hash_in_background().unwrap();
        write_in(&mut r, &data, 0..half);
        drop(r);
        let part = _t.0.join(".ferry/ingest").join("touched.part");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
            // The same bytes written again: the content is equal, the stamp is not.
            std::thread::sleep(std::time::Duration::from_millis(20));
            f.write_all_at(&data[..4096], 0).unwrap();
        }
        let mut r = dir
            .begin_resumable("touched", data.len() as u64, 4096)
            .unwrap();
        r.hash_in_background().unwrap();
        assert_eq!(
            r.part.hasher_started_at(),
            Some(0),
            "stamp changed: from zero"
        );
        write_in(&mut r, &data, half..blocks);
        let c = r.commit("touched.bin", Expect::Sha256(sha(&data))).unwrap();
        assert_eq!(c.sha256, Some(sha(&data)));
    }

    #[test]
    fn background_hash_after_resume_covers_blocks_written_before() {
        let (_t, dir) = setup("res-bgresume");
        let data = content(2 * (1 << 20) + 100);
        let blocks = (data.len() as u64).div_ceil(4096);
        let mut r = dir
            .begin_resumable("again", data.len() as u64, 4096)
            .unwrap();
        write_in(&mut r, &data, 0..blocks / 2);
        drop(r);
        let mut r = dir
            .begin_resumable("again", data.len() as u64, 4096)
            .unwrap();
        r.hash_in_background().unwrap();
        write_in(&mut r, &data, blocks / 2..blocks);
        let c = r.commit("again.bin", Expect::Sha256(sha(&data))).unwrap();
        assert_eq!(c.sha256, Some(sha(&data)));
        // A wrong expectation is still caught with the hash made in the background.
        let mut r = dir
            .begin_resumable("wrong", data.len() as u64, 4096)
            .unwrap();
        r.hash_in_background().unwrap();
        write_in(&mut r, &data, 0..blocks);
        let (_r, e) = r.commit("wrong.bin", Expect::Sha256([0; 32])).unwrap_err();
        assert!(matches!(e, IngestError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn resume_after_drop() {
        let (t, dir) = setup("res-resume");
        let data = content(10 * 100 + 37); // 11 blocks of 100, the last one 37 bytes
        let mut r = dir
            .begin_resumable("abc123", data.len() as u64, 100)
            .unwrap();
        assert_eq!(r.blocks(), 11);
        // Whole run, ingest publisher/resumable part: `size` as 0 or 1 stayed green.
        assert_eq!(r.size(), data.len() as u64);
        // Mutation shard 16/40: `is_complete` as `true` stayed green.
        assert!(!r.is_complete());
        assert_eq!(r.block_size(), 100);
        assert_eq!(r.missing().count(), 11);
        for i in [0u64, 3, 4, 10] {
            let s = (i * 100) as usize;
            r.write_block(i, &data[s..(s + 100).min(data.len())])
                .unwrap();
        }
        r.flush().unwrap();
        r.write_block(7, &data[700..800]).unwrap(); // persisted by Drop
        assert_eq!(r.received(), 5);
        drop(r);

        let mut r = dir
            .begin_resumable("abc123", data.len() as u64, 100)
            .unwrap();
        assert_eq!(r.received(), 5);
        assert_eq!(r.missing().collect::<Vec<_>>(), [1, 2, 5, 6, 8, 9]);
        assert!(r.has_block(10) && !r.has_block(11) && !r.has_block(u64::MAX));
        // A missing block inside the file is not held (mutation shard 14/40: `&&` as `||`
        // answered yes for every index below the block count).
        assert!(r.has_block(0) && !r.has_block(1) && !r.has_block(9));
        for i in r.missing().collect::<Vec<_>>() {
            let s = (i * 100) as usize;
            r.write_block(i, &data[s..s + 100]).unwrap();
        }
        assert!(r.is_complete());
        let c = r.commit("file.bin", Expect::Sha256(sha(&data))).unwrap();
        assert_eq!(c.outcome, Outcome::Created);
        assert_eq!(c.size, data.len() as u64);
        assert_eq!(c.xxh64, XxHash64::oneshot(0, &data));
        assert_eq!(fs::read(t.0.join("file.bin")).unwrap(), data);
        assert_eq!(list(dir.work()), Vec::<String>::new());
    }

    #[test]
    fn header_mismatch_restarts() {
        let (_t, dir) = setup("res-header");
        let mut r = dir.begin_resumable("k", 1000, 100).unwrap();
        r.write_block(0, &[1; 100]).unwrap();
        drop(r);
        // Other size: restart.
        let r = dir.begin_resumable("k", 1100, 100).unwrap();
        assert_eq!(r.received(), 0);
        drop(r);
        let mut r = dir.begin_resumable("k", 1100, 100).unwrap();
        r.write_block(1, &[1; 100]).unwrap();
        drop(r);
        // Other block size: restart.
        let r = dir.begin_resumable("k", 1100, 50).unwrap();
        assert_eq!(r.received(), 0);
        assert_eq!(r.blocks(), 22);
        drop(r);
        // Corrupt magic: restart.
        let mut r = dir.begin_resumable("k", 1100, 50).unwrap();
        r.write_block(1, &[1; 50]).unwrap();
        drop(r);
        let bm = dir.work().join("k.bitmap");
        let mut bytes = fs::read(&bm).unwrap();
        assert_eq!(&bytes[..8], b"FERRYBM\0");
        assert_eq!(bytes.len(), 32 + 3);
        assert_eq!(bytes[32], 0b10);
        bytes[0] = b'X';
        fs::write(&bm, &bytes).unwrap();
        let r = dir.begin_resumable("k", 1100, 50).unwrap();
        assert_eq!(r.received(), 0);
        drop(r);
        // Truncated bitmap and a part of the wrong size: restart.
        let mut r = dir.begin_resumable("k", 1100, 50).unwrap();
        r.write_block(2, &[1; 50]).unwrap();
        drop(r);
        fs::write(&bm, &fs::read(&bm).unwrap()[..33]).unwrap();
        assert_eq!(dir.begin_resumable("k", 1100, 50).unwrap().received(), 0);
        let mut r = dir.begin_resumable("k", 1100, 50).unwrap();
        r.write_block(2, &[1; 50]).unwrap();
        drop(r);
        fs::OpenOptions::new()
            .write(true)
            .open(dir.work().join("k.part"))
            .unwrap()
            .set_len(5)
            .unwrap();
        assert_eq!(dir.begin_resumable("k", 1100, 50).unwrap().received(), 0);
    }

    #[test]
    fn wrong_blocks_rejected() {
        let (_t, dir) = setup("res-wrong");
        let mut r = dir.begin_resumable("k", 250, 100).unwrap();
        for (i, len) in [
            (0u64, 99usize),
            (0, 101),
            (1, 50),
            (2, 100),
            (2, 49),
            (2, 51),
            (3, 50),
        ] {
            let e = r.write_block(i, &vec![9; len]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{i} {len}");
        }
        assert_eq!(r.received(), 0);
        let part = fs::read(dir.work().join("k.part")).unwrap();
        assert_eq!(part, vec![0; 250]);
        // The short last block.
        r.write_block(2, &[5; 50]).unwrap();
        assert_eq!(r.missing().collect::<Vec<_>>(), [0, 1]);
    }

    /// `missing` steps over a fully written byte of the bitmap (8 blocks) at once, at the
    /// start, in the middle and at the end, and still names every block around them.
    #[test]
    fn missing_steps_over_whole_written_bytes_of_the_bitmap() {
        let (_t, dir) = setup("res-missing-bytes");
        let data = content(27 * 10);
        let mut r = dir.begin_resumable("m", data.len() as u64, 10).unwrap();
        // Blocks 0..8 and 16..24 (two whole bytes), 9, and 26 (the last byte's only other).
        r.write_blocks(0, &data[..80]).unwrap();
        r.write_blocks(16, &data[160..240]).unwrap();
        r.write_block(9, &data[90..100]).unwrap();
        r.write_block(26, &data[260..]).unwrap();
        assert_eq!(
            r.missing().collect::<Vec<_>>(),
            [8, 10, 11, 12, 13, 14, 15, 24, 25]
        );
        r.write_blocks(8, &data[80..160]).unwrap();
        r.write_blocks(24, &data[240..260]).unwrap();
        assert_eq!(r.missing().count(), 0);
        assert!(r.is_complete());
    }

    #[test]
    fn mismatch_then_clear_then_success() {
        let (t, dir) = setup("res-clear");
        let good = content(300);
        let mut r = dir.begin_resumable("k", 300, 128).unwrap();
        r.write_block(0, &good[..128]).unwrap();
        // Not complete yet.
        let (mut r, e) = r.commit("x", Expect::Sha256(sha(&good))).unwrap_err();
        assert!(matches!(e, IngestError::Incomplete { missing: 2 }), "{e}");
        r.write_block(1, &[0xee; 128]).unwrap(); // a bad source
        r.write_block(2, &good[256..]).unwrap();
        let (mut r, e) = r.commit("x", Expect::Sha256(sha(&good))).unwrap_err();
        assert!(matches!(e, IngestError::Mismatch { .. }), "{e}");
        assert_eq!(list(&t.0), [".ferry"]);
        assert!(dir.work().join("k.part").exists());
        r.clear().unwrap();
        assert_eq!(r.received(), 0);
        assert_eq!(r.missing().count(), 3);
        drop(r);
        // Cleared state is what a restart sees.
        let mut r = dir.begin_resumable("k", 300, 128).unwrap();
        assert_eq!(r.received(), 0);
        for i in 0..3u64 {
            let s = i as usize * 128;
            r.write_block(i, &good[s..(s + 128).min(300)]).unwrap();
        }
        let c = r
            .commit("x", Expect::Xxh64(XxHash64::oneshot(0, &good)))
            .unwrap();
        assert_eq!(c.name, "x");
        assert_eq!(fs::read(t.0.join("x")).unwrap(), good);
    }

    #[test]
    fn zero_size() {
        let (t, dir) = setup("res-empty");
        let r = dir.begin_resumable("e3b0c442", 0, 4096).unwrap();
        assert_eq!(r.blocks(), 0);
        assert!(r.is_complete());
        assert_eq!(r.missing().count(), 0);
        let c = r.commit("empty.txt", Expect::Sha256(sha(b""))).unwrap();
        assert_eq!(c.size, 0);
        assert_eq!(fs::read(t.0.join("empty.txt")).unwrap(), b"");
    }

    #[test]
    fn exact_multiple_and_single_block() {
        let (t, dir) = setup("res-exact");
        let data = content(4096 * 3);
        let mut r = dir.begin_resumable("k", data.len() as u64, 4096).unwrap();
        assert_eq!(r.blocks(), 3);
        for i in (0..3u64).rev() {
            let s = i as usize * 4096;
            r.write_block(i, &data[s..s + 4096]).unwrap();
        }
        r.commit("a", Expect::Nothing).unwrap();
        let mut r = dir.begin_resumable("k2", 5, 4096).unwrap();
        assert_eq!(r.blocks(), 1);
        r.write_block(0, b"hello").unwrap();
        let c = r.commit("b", Expect::Nothing).unwrap();
        assert_eq!(c.sha256, Some(sha(b"hello")));
        assert_eq!(fs::read(t.0.join("a")).unwrap(), data);
    }

    /// A link planted on the bitmap's name is refused, not taken for a missing bitmap (which
    /// would start over) nor followed.
    #[test]
    fn a_link_planted_on_the_bitmap_is_an_error() {
        let (t, dir) = setup("res-link");
        let mut r = dir.begin_resumable("k", 5, 4096).unwrap();
        r.write_block(0, b"hello").unwrap();
        r.flush().unwrap();
        drop(r);
        let work = dir.work();
        let bitmap = list(work)
            .into_iter()
            .find(|n| n.ends_with(".bitmap"))
            .expect("a bitmap after a flush");
        fs::remove_file(work.join(&bitmap)).unwrap();
        let outside = t.0.join("outside");
        fs::write(&outside, b"not a bitmap").unwrap();
        std::os::unix::fs::symlink(&outside, work.join(&bitmap)).unwrap();
        assert!(dir.begin_resumable("k", 5, 4096).is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"not a bitmap");
    }

    #[test]
    fn commit_respects_no_clobber() {
        let (t, dir) = setup("res-clobber");
        fs::write(t.0.join("a"), b"hello").unwrap();
        let mut r = dir.begin_resumable("k", 5, 4096).unwrap();
        r.write_block(0, b"hello").unwrap();
        let c = r.commit("a", Expect::Nothing).unwrap();
        assert_eq!(c.outcome, Outcome::AlreadyPresent);
        assert_eq!(c.inode, None, "the file there is not ours");
        let mut r = dir.begin_resumable("k", 5, 4096).unwrap();
        r.write_block(0, b"world").unwrap();
        let c = r.commit("a", Expect::Nothing).unwrap();
        assert_eq!(c.outcome, Outcome::Renamed);
        let m = fs::metadata(&c.path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(c.inode, Some((m.dev(), m.ino())), "our own inode");
        assert_eq!(fs::read(t.0.join("a")).unwrap(), b"hello");
        assert_eq!(fs::read(&c.path).unwrap(), b"world");
        assert_eq!(list(dir.work()), Vec::<String>::new());
    }

    #[test]
    fn second_open_of_same_key_is_refused() {
        let (_t, dir) = setup("res-lock");
        let r = dir.begin_resumable("k", 10, 4).unwrap();
        let e = dir.begin_resumable("k", 10, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // Said as what it is, not as the raw errno.
        assert_eq!(e.to_string(), "ingest: transfer already in progress");
        drop(r);
        dir.begin_resumable("k", 10, 4).unwrap();
    }

    #[test]
    fn bad_keys_and_block_size() {
        let (_t, dir) = setup("res-key");
        for key in ["", "../x", "a/b", ".hidden", "a.b", &"k".repeat(129)] {
            let e = dir.begin_resumable(key, 10, 4).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{key}");
        }
        let e = dir.begin_resumable("k", 10, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = dir.begin_resumable("k", u64::MAX, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn flush_writes_bits_lsb_first() {
        let (_t, dir) = setup("res-bits");
        let mut r = dir.begin_resumable("k", 10 * 4, 4).unwrap();
        r.write_block(0, &[1; 4]).unwrap();
        r.write_block(9, &[1; 4]).unwrap();
        r.flush().unwrap();
        let bytes = fs::read(dir.work().join("k.bitmap")).unwrap();
        assert_eq!(
            bytes,
            [
                b'F',
                b'E',
                b'R',
                b'R',
                b'Y',
                b'B',
                b'M',
                0, // magic
                1,
                0,
                0,
                0, // version
                4,
                0,
                0,
                0, // block size
                40,
                0,
                0,
                0,
                0,
                0,
                0,
                0, // size
                10,
                0,
                0,
                0,
                0,
                0,
                0,
                0, // blocks
                0b0000_0001,
                0b0000_0010,
            ]
        );
    }
}
