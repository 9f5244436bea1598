//! Resumable ingest: a sparse `<key>.part` written block by block in any order, and a
//! `<key>.bitmap` saying which blocks are there, so a killed transfer resumes where its last
//! flush left it (cjp2p.md 6.5-6.6).
//!
//! Durability order: block data is written with `pwrite`, the part is `fdatasync`ed, and only
//! then are the new bits written to the bitmap (in place) and synced. Between flushes bits only
//! go from 0 to 1, so even a torn bitmap write never claims a block whose data is not durable.
//! Starting over (a header mismatch, or [`Resumable::clear`]) replaces the bitmap atomically
//! (write `<key>.bitmap.new`, rename) *before* the old data is discarded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use sha2::Digest;

use super::prefix_hash::{HashState, PrefixHasher};
use super::publish::{publish, sync_dir};
use super::{check, is_plain_name, tag_for, MAX_KEY_BYTES, PART_SUFFIX};
use super::{Collision, Committed, Expect, IngestDir, IngestError};

/// First bytes of a bitmap file.
const MAGIC: &[u8; 8] = b"FERRYBM\0";
/// Bitmap format version; any other value restarts the transfer.
const VERSION: u32 = 1;
/// Bytes before the bits.
const HEADER_LEN: usize = 32;
/// Largest bitmap held in memory (bits part): 1 GiB of blocks... at 4 KiB blocks is 32 TiB.
const MAX_BITMAP_BYTES: u64 = 1 << 30;

impl IngestDir {
    /// The size and block size recorded by an earlier resumable transfer of `key`, if its
    /// bitmap is there and well-formed: a downloader that learns the size only from the network
    /// can reopen the transfer before the first reply ([`IngestDir::begin_resumable`] checks
    /// the rest).
    pub fn peek_resumable(&self, key: &str) -> Option<(u64, u32)> {
        use std::io::Read;
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains(['/', '.']) {
            return None;
        }
        let mut header = [0u8; HEADER_LEN];
        File::open(self.work().join(format!("{key}.bitmap")))
            .ok()?
            .read_exact(&mut header)
            .ok()?;
        if &header[..8] != MAGIC || header[8..12] != VERSION.to_le_bytes() {
            return None;
        }
        let block = u32::from_le_bytes(header[12..16].try_into().ok()?);
        let size = u64::from_le_bytes(header[16..24].try_into().ok()?);
        (block > 0).then_some((size, block))
    }
}

/// A transfer whose blocks may arrive in any order and survive a restart.
#[derive(Debug)]
pub struct Resumable {
    dir: IngestDir,
    part_path: PathBuf,
    bitmap_path: PathBuf,
    /// Holds the `flock`; None once committed.
    part: Option<File>,
    size: u64,
    block_size: u32,
    blocks: u64,
    bits: Vec<u8>,
    received: u64,
    /// Byte range of `bits` changed since the last flush.
    dirty: Option<(usize, usize)>,
    /// Leading blocks that are all written (the stored prefix).
    prefix_blocks: u64,
    /// Hashes the stored prefix while the part fills ([`Resumable::hash_in_background`]).
    hasher: Option<PrefixHasher>,
}

impl Resumable {
    pub(super) fn open(
        dir: IngestDir,
        key: &str,
        size: u64,
        block_size: u32,
    ) -> io::Result<Resumable> {
        if key.is_empty()
            || key.len() > MAX_KEY_BYTES
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "ingest: resumable key must be 1-128 of [A-Za-z0-9_-]",
            ));
        }
        if block_size == 0 {
            return Err(invalid("ingest: block size must not be 0"));
        }
        let blocks = size.div_ceil(u64::from(block_size));
        let nbytes = blocks.div_ceil(8);
        if nbytes > MAX_BITMAP_BYTES {
            return Err(invalid("ingest: too many blocks for one transfer"));
        }
        let part_path = dir.work().join(format!("{key}{PART_SUFFIX}"));
        let bitmap_path = dir.work().join(format!("{key}.bitmap"));
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(&part_path)?;
        lock(&part)?;
        let mut r = Resumable {
            dir,
            part_path,
            bitmap_path,
            part: Some(part),
            size,
            block_size,
            blocks,
            bits: vec![0; nbytes as usize],
            received: 0,
            dirty: None,
            prefix_blocks: 0,
            hasher: None,
        };
        let _ = fs::remove_file(r.new_bitmap_path());
        match r.load()? {
            Some(bits) => {
                r.bits = bits;
                r.received = r.bits.iter().map(|b| u64::from(b.count_ones())).sum();
                r.advance_prefix();
            }
            None => r.reset()?,
        }
        Ok(r)
    }

    /// Length of the file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes per block (the last block may be shorter).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of blocks: `ceil(size / block_size)`, 0 for an empty file.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether block `i` has been written (false for an index out of range).
    pub fn has_block(&self, i: u64) -> bool {
        i < self.blocks && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Indices of the blocks not written yet, in increasing order.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits
            .iter()
            .enumerate()
            .filter(|(_, &b)| b != 0xff)
            .flat_map(move |(byte, &b)| {
                (0..8u64)
                    .filter(move |bit| b & (1 << bit) == 0)
                    .map(move |bit| byte as u64 * 8 + bit)
            })
            .take_while(move |&i| i < self.blocks)
    }

    /// Number of blocks written.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Every block is written (always true for an empty file).
    pub fn is_complete(&self) -> bool {
        self.received == self.blocks
    }

    /// pwrite data at block i (exact length: block_size, or the tail for the last block) then set
    /// the bit in memory. Wrong length/index -> error, nothing written.
    pub fn write_block(&mut self, i: u64, data: &[u8]) -> io::Result<()> {
        self.write_blocks(i, data)
    }

    /// Writes consecutive blocks starting at block `first` with one `pwrite`: `data` holds whole
    /// blocks, the last of which may be the file's short tail. Wrong length or range: error,
    /// nothing written.
    pub fn write_blocks(&mut self, first: u64, data: &[u8]) -> io::Result<()> {
        let bs = u64::from(self.block_size);
        let n = (data.len() as u64).div_ceil(bs).max(1);
        if first >= self.blocks || n > self.blocks - first {
            return Err(invalid("ingest: block index out of range"));
        }
        let offset = first * bs;
        let want = (self.size - offset).min(n * bs);
        if data.len() as u64 != want {
            return Err(invalid("ingest: block has the wrong length"));
        }
        if let Some(h) = &self.hasher {
            if offset < h.frozen() {
                return Err(invalid(
                    "ingest: block already stored and being hashed; it cannot be written again",
                ));
            }
        }
        let part = self.part.as_ref().ok_or_else(finished)?;
        part.write_all_at(data, offset)?;
        for i in first..first + n {
            let (byte, mask) = ((i / 8) as usize, 1u8 << (i % 8));
            if self.bits[byte] & mask == 0 {
                self.bits[byte] |= mask;
                self.received += 1;
                self.dirty = Some(match self.dirty {
                    None => (byte, byte + 1),
                    Some((lo, hi)) => (lo.min(byte), hi.max(byte + 1)),
                });
            }
        }
        if first <= self.prefix_blocks {
            self.advance_prefix();
        }
        Ok(())
    }

    /// Hash the part's stored prefix on a background thread while blocks arrive, so that
    /// [`commit`](Self::commit) only reads what the prefix has not reached. Once on, blocks of
    /// that prefix can no longer be rewritten (`write_blocks` refuses them). Idempotent; also
    /// kept across [`clear`](Self::clear).
    pub fn hash_in_background(&mut self) -> io::Result<()> {
        if self.hasher.is_some() {
            return Ok(());
        }
        let file = self.part.as_ref().ok_or_else(finished)?.try_clone()?;
        self.hasher = Some(PrefixHasher::start(file, self.size, self.prefix_bytes())?);
        Ok(())
    }

    fn prefix_bytes(&self) -> u64 {
        (self.prefix_blocks * u64::from(self.block_size)).min(self.size)
    }

    /// Moves the stored prefix over every set bit after it and tells the hasher.
    fn advance_prefix(&mut self) {
        let mut i = self.prefix_blocks;
        while i < self.blocks {
            let byte = (i / 8) as usize;
            if i % 8 == 0 && self.bits[byte] == 0xff && i + 8 <= self.blocks {
                i += 8;
                continue;
            }
            if self.bits[byte] & (1u8 << (i % 8)) == 0 {
                break;
            }
            i += 1;
        }
        self.prefix_blocks = i;
        let bytes = self.prefix_bytes();
        if let Some(h) = self.hasher.as_mut() {
            h.advance(bytes);
        }
    }

    /// Persist the bitmap (write temp + rename, or pwrite in place + fdatasync of the part first:
    /// data must be durable before its bits are). Callers do this at least once a second.
    ///
    /// This implementation syncs the part, then pwrites the changed bytes of the bitmap in place
    /// and syncs it. Nothing to do if no bit changed since the last flush.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some((lo, hi)) = self.dirty else {
            return Ok(());
        };
        self.part.as_ref().ok_or_else(finished)?.sync_data()?;
        let bitmap = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.bitmap_path)?;
        bitmap.write_all_at(&self.bits[lo..hi], (HEADER_LEN + lo) as u64)?;
        bitmap.sync_data()?;
        self.dirty = None;
        Ok(())
    }

    /// Verification failed: start over (every bit cleared, the part emptied, durably).
    pub fn clear(&mut self) -> io::Result<()> {
        self.reset()
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
        mut self,
        name: &str,
        expect: Expect,
        policy: Collision,
    ) -> Result<Committed, (Resumable, IngestError)> {
        if !is_plain_name(name) {
            return Err((self, IngestError::BadName));
        }
        if !self.is_complete() {
            let missing = self.blocks - self.received;
            return Err((self, IngestError::Incomplete { missing }));
        }
        let (sha256, xxh64) = match self.hash() {
            Ok(h) => h,
            Err(e) => return Err((self, e.into())),
        };
        if let Some(e) = check(expect, Some(&sha256), xxh64) {
            return Err((self, e));
        }
        let synced = match self.part.as_ref() {
            Some(p) => p.sync_all(),
            None => Err(finished()),
        };
        if let Err(e) = synced {
            return Err((self, e.into()));
        }
        let tag = tag_for(expect, Some(&sha256), xxh64);
        let published = match publish(
            self.dir.dest(),
            &self.part_path,
            name,
            self.size,
            Some(&sha256),
            &tag,
            policy,
        ) {
            Ok(p) => p,
            Err(e) => return Err((self, e)),
        };
        let _ = sync_dir(self.dir.dest());
        // The part is gone (published or dropped as a duplicate); the bitmap is now meaningless.
        // A bitmap that survives a crash here restarts from zero: its part is missing.
        self.part = None;
        self.dirty = None;
        let _ = fs::remove_file(&self.bitmap_path);
        Ok(Committed {
            path: published.path,
            name: published.name,
            sha256: Some(sha256),
            xxh64,
            size: self.size,
            outcome: published.outcome,
        })
    }

    /// SHA-256 and xxHash64 of the whole part: what the background hasher did (if it ran and
    /// did not fail), then the rest read here.
    fn hash(&mut self) -> io::Result<([u8; 32], u64)> {
        let mut st = self
            .hasher
            .take()
            .and_then(PrefixHasher::finish)
            .unwrap_or_else(HashState::new);
        let part = self.part.as_ref().ok_or_else(finished)?;
        st.hash_to(part, self.size, &mut Vec::new())?;
        Ok((st.sha.finalize().into(), std::hash::Hasher::finish(&st.xxh)))
    }

    /// Reads the bitmap if it exists and matches this transfer and the part has the right size.
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        let part_len = self.part.as_ref().ok_or_else(finished)?.metadata()?.len();
        if part_len != self.size {
            return Ok(None);
        }
        let want_len = (HEADER_LEN + self.bits.len()) as u64;
        let data = match fs::metadata(&self.bitmap_path) {
            Ok(m) if m.is_file() && m.len() == want_len => fs::read(&self.bitmap_path)?,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if data.len() as u64 != want_len || data[..HEADER_LEN] != self.header() {
            return Ok(None);
        }
        let mut bits = data[HEADER_LEN..].to_vec();
        // Bits past the last block are not ours to trust.
        let tail = (self.blocks % 8) as u32;
        if tail != 0 {
            if let Some(last) = bits.last_mut() {
                *last &= (1u8 << tail) - 1;
            }
        }
        Ok(Some(bits))
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.size.to_le_bytes());
        h[24..32].copy_from_slice(&self.blocks.to_le_bytes());
        h
    }

    fn new_bitmap_path(&self) -> PathBuf {
        let mut p = self.bitmap_path.clone().into_os_string();
        p.push(".new");
        p.into()
    }

    /// Empty bitmap first (atomically), then empty the part: a crash in between leaves a bitmap
    /// that claims nothing, never one that claims discarded data.
    fn reset(&mut self) -> io::Result<()> {
        // The hasher read data that is about to be discarded: start it again from zero.
        let rehash = self.hasher.take().is_some();
        self.bits.iter_mut().for_each(|b| *b = 0);
        self.received = 0;
        self.dirty = None;
        self.prefix_blocks = 0;
        let tmp = self.new_bitmap_path();
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(&self.header())?;
            f.write_all(&self.bits)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.bitmap_path)?;
            sync_dir(self.dir.work())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        let part = self.part.as_ref().ok_or_else(finished)?;
        part.set_len(0)?;
        part.set_len(self.size)?;
        part.sync_all()?;
        if rehash {
            self.hash_in_background()?;
        }
        Ok(())
    }
}

impl Drop for Resumable {
    /// Best effort: keep the progress made since the last flush.
    fn drop(&mut self) {
        if self.part.is_some() {
            let _ = self.flush();
        }
    }
}

/// Takes an exclusive `flock` on the part so two transfers never share it.
fn lock(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock only acts on the descriptor, which `file` keeps open for the call.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "ingest: transfer already in progress",
                ))
            }
            _ => return Err(e),
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn finished() -> io::Error {
    io::Error::other("ingest: transfer already committed")
}

#[cfg(test)]
mod tests {
    use super::super::test_dir::{list, TempDir};
    use super::super::Outcome;
    use super::*;
    use sha2::Sha256;
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
        let c = r.commit("other.bin", Expect::Sha256(sha(&other))).unwrap();
        assert_eq!(c.sha256, Some(sha(&other)));
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

    #[test]
    fn commit_respects_no_clobber() {
        let (t, dir) = setup("res-clobber");
        fs::write(t.0.join("a"), b"hello").unwrap();
        let mut r = dir.begin_resumable("k", 5, 4096).unwrap();
        r.write_block(0, b"hello").unwrap();
        let c = r.commit("a", Expect::Nothing).unwrap();
        assert_eq!(c.outcome, Outcome::AlreadyPresent);
        let mut r = dir.begin_resumable("k", 5, 4096).unwrap();
        r.write_block(0, b"world").unwrap();
        let c = r.commit("a", Expect::Nothing).unwrap();
        assert_eq!(c.outcome, Outcome::Renamed);
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
