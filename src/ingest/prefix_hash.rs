//! Hashing a resumable part while it fills: a background thread follows the part's stored
//! prefix (the leading blocks that are all written) and feeds SHA-256 and xxHash64 from the
//! file with `pread`, so that [`Resumable::commit`](super::Resumable::commit) only hashes what
//! the prefix had not reached. Downloads mostly arrive in order, so the whole-file check at the
//! end costs almost nothing on the downloader's own thread.
//!
//! The thread only ever reads bytes below the prefix it was told about, and the writer refuses
//! to rewrite those bytes while a hasher runs, so what is hashed is what gets published.
//!
//! Hand-off: a writer whose write made the prefix grow over the bytes it just wrote (the
//! common, in-order case) passes a copy of them along with the new prefix, and the thread
//! hashes that copy instead of reading the bytes back from the part. A copy is only ever of
//! bytes inside the prefix, so it equals what the part holds there. Reading back costs a cold
//! kernel copy per byte (about a third of the thread's time); the copy made here is of bytes
//! the writer just touched. At most [`HANDED_MAX`] bytes wait; beyond that, and for bytes that
//! were not handed over (out-of-order writes), the thread reads the part as before.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use twox_hash::XxHash64;

/// Bytes hashed per read; also how far the prefix must grow before the thread is woken.
pub(super) const CHUNK: u64 = 1 << 20;
/// Bytes per pread: small enough that the hashes read them back from the CPU cache the copy
/// just filled rather than from memory.
const READ_PIECE: u64 = 256 << 10;
/// Bytes of handed-over copies that may wait for the thread (per part; the server's memory
/// budget counts on it).
const HANDED_MAX: usize = 8 << 20;
/// Handed-over bytes after which the thread is woken.
const HANDED_WAKE: usize = 256 << 10;
/// Bytes of spare copy buffers kept for reuse.
const SPARE_MAX: usize = 2 << 20;
/// The thread also wakes on its own this often (a missed wake-up only costs this much).
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// Running hashes over the first `hashed` bytes of a part.
#[derive(Clone, Debug)]
pub(super) struct HashState {
    pub sha: Sha256,
    pub xxh: XxHash64,
    pub hashed: u64,
}

impl HashState {
    pub fn new() -> HashState {
        HashState {
            sha: Sha256::new(),
            xxh: XxHash64::with_seed(0),
            hashed: 0,
        }
    }

    /// Feeds the bytes that follow the hashed ones.
    fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        std::hash::Hasher::write(&mut self.xxh, data);
        self.hashed += data.len() as u64;
    }

    /// Feeds a copy of the part's bytes at `offset` (inside the prefix): the bytes between
    /// what is hashed and `offset` are read from `file` first; bytes already hashed are skipped.
    fn hash_copy(
        &mut self,
        file: &File,
        offset: u64,
        data: &[u8],
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if end <= self.hashed {
            return Ok(());
        }
        self.hash_to(file, offset, buf)?;
        let skip = (self.hashed - offset) as usize;
        self.update(&data[skip..]);
        Ok(())
    }

    /// Reads `[hashed, upto)` of `file` in [`READ_PIECE`] pieces into the hashes.
    pub fn hash_to(&mut self, file: &File, upto: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        while self.hashed < upto {
            let n = (upto - self.hashed).min(READ_PIECE) as usize;
            buf.resize(n, 0);
            file.read_exact_at(&mut buf[..n], self.hashed)?;
            self.update(&buf[..n]);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Shared {
    /// Bytes at the start of the part that are written (the stored prefix).
    prefix: AtomicU64,
    stop: AtomicBool,
    /// Set with `stop` by [`PrefixHasher::finish`]: hash the waiting copies before returning.
    drain: AtomicBool,
    handed: Mutex<Handed>,
    /// Bytes the thread read back from the part (the rest came as copies).
    read_back: AtomicU64,
    /// Rounds of the thread's loop (a thread with nothing to do must sleep, not spin).
    #[cfg(test)]
    rounds: AtomicU64,
}

/// Copies of prefix bytes waiting for the thread, oldest first, and spare buffers.
#[derive(Debug, Default)]
struct Handed {
    queue: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

impl Shared {
    fn handed(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.handed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pop(&self) -> Option<(u64, Vec<u8>)> {
        let mut h = self.handed();
        let piece = h.queue.pop_front()?;
        h.bytes -= piece.1.len();
        Some(piece)
    }

    /// Of `advanced` bytes hashed for a copy of `len` bytes, those beyond `len` were read.
    fn count_read_back(&self, advanced: u64, len: usize) {
        let read = advanced.saturating_sub(len as u64);
        self.read_back.fetch_add(read, Ordering::Relaxed);
    }

    fn recycle(&self, mut buf: Vec<u8>) {
        let mut h = self.handed();
        let kept: usize = h.spare.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= SPARE_MAX {
            buf.clear();
            h.spare.push(buf);
        }
    }
}

/// Bytes a writer just wrote at an offset of the part, handed to [`PrefixHasher::advance`].
#[derive(Debug)]
pub(super) enum Piece<'a> {
    /// Copied if the hasher takes them.
    Borrowed(u64, &'a [u8]),
    /// A copy the writer made already.
    Owned(u64, Vec<u8>),
}

impl Piece<'_> {
    fn range(&self) -> (u64, usize) {
        match self {
            Piece::Borrowed(at, d) => (*at, d.len()),
            Piece::Owned(at, d) => (*at, d.len()),
        }
    }
}

/// The background hasher of one part.
#[derive(Debug)]
pub(super) struct PrefixHasher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<HashState>>>,
    /// Prefix last published to the thread, and when it last was woken for it.
    told: u64,
    woken: u64,
    /// Bytes handed over since the thread was last woken.
    handed_unwoken: usize,
    /// Copies of blocks written past the prefix, by offset, handed over once the prefix
    /// covers them (out of order: several connections, several sources). They count against
    /// [`HANDED_MAX`] with the queue; a rewrite of their bytes drops them first
    /// ([`forget`](Self::forget)).
    early: BTreeMap<u64, Vec<u8>>,
    early_bytes: usize,
    size: u64,
    #[cfg(test)]
    started_at: u64,
}

impl PrefixHasher {
    /// Starts hashing `file` (a handle of its own) up to `prefix` bytes now written, going on
    /// from `from` (the hash of its first bytes, at most `prefix` of them) if given.
    pub fn start(
        file: File,
        size: u64,
        prefix: u64,
        from: Option<HashState>,
    ) -> io::Result<PrefixHasher> {
        let from = from
            .filter(|st| st.hashed <= prefix)
            .unwrap_or_else(HashState::new);
        #[cfg(test)]
        let started_at = from.hashed;
        let shared = Arc::new(Shared {
            prefix: AtomicU64::new(prefix),
            stop: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            handed: Mutex::new(Handed::default()),
            read_back: AtomicU64::new(0),
            #[cfg(test)]
            rounds: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ingest-hash".into())
            .spawn(move || run(&file, size, &s, from))?;
        Ok(PrefixHasher {
            shared,
            thread: Some(thread),
            told: prefix,
            woken: prefix,
            handed_unwoken: 0,
            early: BTreeMap::new(),
            early_bytes: 0,
            size,
            #[cfg(test)]
            started_at,
        })
    }

    /// Bytes of the prefix the thread may hash (it may not have reached them yet). Nothing
    /// below this may be written again.
    pub fn frozen(&self) -> u64 {
        self.told
    }

    /// The stored prefix grew to `prefix` bytes. `piece`: bytes just written; a copy of them
    /// goes to the thread once they lie inside the prefix, if the copies waiting leave room.
    pub fn advance(&mut self, prefix: u64, piece: Option<Piece<'_>>) {
        if let Some(piece) = piece {
            self.keep(piece);
        }
        if prefix <= self.told {
            return;
        }
        // Copies now inside the prefix, in order, queued before the prefix is published: a
        // thread that sees the new prefix also finds them.
        let mut queued = 0;
        {
            let mut h = self.shared.handed();
            while let Some(entry) = self.early.first_entry() {
                let (at, len) = (*entry.key(), entry.get().len());
                if at + len as u64 > prefix {
                    break;
                }
                let copy = entry.remove();
                self.early_bytes -= len;
                h.bytes += len;
                h.queue.push_back((at, copy));
                queued += len;
            }
        }
        self.handed_unwoken += queued;
        self.told = prefix;
        self.shared.prefix.store(prefix, Ordering::Release);
        if prefix - self.woken >= CHUNK || prefix == self.size || self.handed_unwoken >= HANDED_WAKE
        {
            self.woken = prefix;
            self.handed_unwoken = 0;
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    /// Keeps a copy of bytes just written at or past the prefix, until the prefix covers them
    /// (within the budget; otherwise the thread reads them back).
    pub fn keep(&mut self, piece: Piece<'_>) {
        let (at, len) = piece.range();
        if at >= self.told {
            // Whatever was kept for these bytes is stale now, whether this copy is kept or not.
            self.forget(at..at + len as u64);
        }
        let waiting = self.shared.handed().bytes;
        if len == 0 || at < self.told || waiting + self.early_bytes + len > HANDED_MAX {
            if let Piece::Owned(_, v) = piece {
                self.shared.recycle(v);
            }
            return;
        }
        let copy = match piece {
            Piece::Owned(_, v) => v,
            Piece::Borrowed(_, d) => {
                let mut v = self.buffer(d.len());
                v.extend_from_slice(d);
                v
            }
        };
        self.early_bytes += len;
        self.early.insert(at, copy);
    }

    /// Drops the kept copies that overlap bytes `range` of the part: they are about to be
    /// rewritten.
    pub fn forget(&mut self, range: Range<u64>) {
        if self.early.is_empty() {
            return;
        }
        let stale: Vec<u64> = self
            .early
            .range(..range.end)
            .filter(|(at, v)| **at + v.len() as u64 > range.start)
            .map(|(at, _)| *at)
            .collect();
        for at in stale {
            if let Some(v) = self.early.remove(&at) {
                self.early_bytes -= v.len();
                self.shared.recycle(v);
            }
        }
    }

    /// An empty buffer of at least `len` bytes' capacity for a copy to hand over later (a
    /// spare one when there is one).
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let mut h = self.shared.handed();
        match h.spare.iter().position(|b| b.capacity() >= len) {
            Some(k) => h.spare.swap_remove(k),
            None => Vec::with_capacity(len),
        }
    }

    /// Stops the thread once it has hashed the copies handed to it (a chunk it is reading is
    /// finished first) and returns what it hashed (None if it failed: start over).
    pub fn finish(mut self) -> Option<HashState> {
        self.shared.drain.store(true, Ordering::Release);
        self.stop_thread()
    }

    /// Bytes hashed already when the thread started (a hash kept from an earlier opening).
    #[cfg(test)]
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// Bytes the thread has read back from the part so far.
    #[cfg(test)]
    pub fn read_back(&self) -> u64 {
        self.shared.read_back.load(Ordering::Acquire)
    }

    fn stop_thread(&mut self) -> Option<HashState> {
        let t = self.thread.take()?;
        self.shared.stop.store(true, Ordering::Release);
        t.thread().unpark();
        t.join().ok()?.ok()
    }
}

impl Drop for PrefixHasher {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

fn run(file: &File, size: u64, s: &Shared, from: HashState) -> io::Result<HashState> {
    let mut st = from;
    let mut buf = Vec::new();
    loop {
        #[cfg(test)]
        s.rounds.fetch_add(1, Ordering::Relaxed);
        let prefix = s.prefix.load(Ordering::Acquire).min(size);
        // Whole chunks while the prefix grows; the tail once it is complete.
        let upto = if prefix == size || prefix <= st.hashed {
            prefix
        } else {
            prefix - (prefix - st.hashed) % CHUNK
        };
        // A stop is seen between chunks: whoever stops the thread hashes the rest itself, or
        // is about to rewrite bytes the thread would read in vain.
        if s.stop.load(Ordering::Acquire) {
            if s.drain.load(Ordering::Acquire) {
                while let Some((at, data)) = s.pop() {
                    let before = st.hashed;
                    st.hash_copy(file, at, &data, &mut buf)?;
                    s.count_read_back(st.hashed - before, data.len());
                }
            }
            return Ok(st);
        }
        // Copies first: they cover the prefix up to at least what was loaded above, unless
        // some were not handed over, which the reads below then fill in.
        if let Some((at, data)) = s.pop() {
            let before = st.hashed;
            st.hash_copy(file, at, &data, &mut buf)?;
            s.count_read_back(st.hashed - before, data.len());
            s.recycle(data);
            continue;
        }
        if upto > st.hashed {
            let before = st.hashed;
            st.hash_to(file, upto.min(st.hashed + CHUNK), &mut buf)?;
            s.read_back.fetch_add(st.hashed - before, Ordering::Relaxed);
            continue;
        }
        std::thread::park_timeout(IDLE_WAKE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 4093) as u8).collect()
    }

    fn temp_file(tag: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("ferry-prefix-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("part");
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        (dir, File::open(&path).unwrap())
    }

    fn digest(st: &HashState) -> ([u8; 32], u64) {
        (
            st.sha.clone().finalize().into(),
            std::hash::Hasher::finish(&st.xxh),
        )
    }

    fn expected(bytes: &[u8]) -> ([u8; 32], u64) {
        let mut st = HashState::new();
        st.update(bytes);
        digest(&st)
    }

    /// Stops `h` and hashes the rest of the part in `dir` as a commit does after stopping the
    /// thread; the digest must be that of `bytes`. Removes `dir`.
    fn finish_as_a_commit_does(h: PrefixHasher, dir: &std::path::Path, bytes: &[u8]) {
        let mut st = h.finish().unwrap();
        let file = File::open(dir.join("part")).unwrap();
        st.hash_to(&file, bytes.len() as u64, &mut Vec::new())
            .unwrap();
        assert_eq!(digest(&st), expected(bytes));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// In-order pieces handed over with the prefix are hashed from the copies: nothing is read
    /// back from the part, and the digest is that of the bytes.
    #[test]
    fn in_order_pieces_are_hashed_without_reading_back() {
        let bytes = data(3 * CHUNK as usize + 12_345);
        let (dir, file) = temp_file("inorder", &bytes);
        let mut h = PrefixHasher::start(file, bytes.len() as u64, 0, None).unwrap();
        for (k, piece) in bytes.chunks(32 << 10).enumerate() {
            let at = (k * (32 << 10)) as u64;
            h.advance(at + piece.len() as u64, Some(Piece::Borrowed(at, piece)));
        }
        let read_back = h.read_back();
        let st = h.finish().unwrap();
        assert_eq!(st.hashed, bytes.len() as u64);
        assert_eq!(digest(&st), expected(&bytes));
        assert_eq!(read_back, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Gaps between pieces (bytes written out of order, a piece not handed over, an owned copy,
    /// a piece overlapping what is hashed, one outside the prefix) are read from the part;
    /// the digest is still exactly that of the part.
    #[test]
    fn gaps_between_pieces_are_read_back_and_the_digest_is_exact() {
        let bytes = data(2 * CHUNK as usize + 777);
        let size = bytes.len() as u64;
        let (dir, file) = temp_file("gaps", &bytes);
        let mut h = PrefixHasher::start(file, size, 4096, None).unwrap();
        // [0, 4096) was the prefix at start: read back. Then a prefix jump with no piece.
        h.advance(100_000, None);
        // A piece overlapping the hashed region and one that ends past the new prefix (not
        // taken: a copy is only ever of prefix bytes).
        h.advance(
            150_000,
            Some(Piece::Owned(90_000, bytes[90_000..150_000].to_vec())),
        );
        h.advance(
            160_000,
            Some(Piece::Borrowed(155_000, &bytes[155_000..170_000])),
        );
        h.advance(
            size,
            Some(Piece::Borrowed(size - 777, &bytes[size as usize - 777..])),
        );
        let st = h.finish().unwrap();
        assert_eq!(st.hashed, size);
        assert_eq!(digest(&st), expected(&bytes));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What the thread reads back to reach a copy (the bytes between what it hashed and the
    /// copy's offset) counts as read back, like its whole-chunk reads: a copy of the last
    /// 100 bytes, with nothing hashed yet, leaves every other byte read back (mutation run:
    /// `count_read_back` doing nothing left the gap before a copy uncounted).
    #[test]
    fn bytes_read_to_reach_a_copy_count_as_read_back() {
        let bytes = data(2 * CHUNK as usize + 500);
        let size = bytes.len() as u64;
        let (dir, file) = temp_file("reach", &bytes);
        let mut h = PrefixHasher::start(file, size, 0, None).unwrap();
        h.advance(
            size,
            Some(Piece::Borrowed(size - 100, &bytes[size as usize - 100..])),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while h.read_back() != size - 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "read back {} of {}",
                h.read_back(),
                size - 100
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        finish_as_a_commit_does(h, &dir, &bytes);
    }

    /// More waiting copies than [`HANDED_MAX`] allows are not queued: the thread (or, as in
    /// a commit, whoever finishes it) reads those bytes back instead, and the digest is exact.
    #[test]
    fn copies_past_the_cap_fall_back_to_reading() {
        let n = HANDED_MAX + 3 * (1 << 20) + 5;
        let bytes = data(n);
        let (dir, file) = temp_file("cap", &bytes);
        let mut h = PrefixHasher::start(file, n as u64, 0, None).unwrap();
        // One large piece at a time, faster than the thread can keep up with at first.
        for (k, piece) in bytes.chunks(4 << 20).enumerate() {
            let at = (k * (4 << 20)) as u64;
            h.advance(at + piece.len() as u64, Some(Piece::Borrowed(at, piece)));
        }
        finish_as_a_commit_does(h, &dir, &bytes);
    }

    /// Blocks finished out of order (several connections) are kept until the prefix covers
    /// them and then hashed from the copies: nothing is read back.
    #[test]
    fn out_of_order_pieces_are_kept_until_the_prefix_covers_them() {
        let block = 1 << 20;
        let bytes = data(6 * block + 99);
        let size = bytes.len() as u64;
        let (dir, file) = temp_file("early", &bytes);
        let mut h = PrefixHasher::start(file, size, 0, None).unwrap();
        let piece = |k: usize| {
            let end = ((k + 1) * block).min(bytes.len());
            Piece::Borrowed((k * block) as u64, &bytes[k * block..end])
        };
        // Blocks 1 and 2 finish before 0; 4 and 6 before 3 and 5.
        h.keep(piece(1));
        h.keep(piece(2));
        assert_eq!(h.early_bytes, 2 * block);
        h.advance(3 * block as u64, Some(piece(0)));
        // Copies handed to the thread leave the budget of kept ones (mutation sample H:
        // `-=` as `/=` kept them counted, and later copies were refused and read back).
        assert_eq!((h.early.len(), h.early_bytes), (0, 0));
        h.keep(piece(4));
        h.keep(piece(6));
        h.advance(5 * block as u64, Some(piece(3)));
        assert_eq!(
            (h.early.len(), h.early_bytes),
            (1, 99),
            "the tail block, kept"
        );
        h.advance(size, Some(piece(5)));
        let read_back = h.read_back();
        let st = h.finish().unwrap();
        assert_eq!(digest(&st), expected(&bytes));
        assert_eq!(read_back, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A hasher dropped unfinished (a transfer closed or cut) stops its thread (mutation shard
    /// 15/40: an empty `drop` left the thread parked in its loop for good, one per transfer).
    #[test]
    fn a_dropped_hasher_stops_its_thread() {
        let bytes = data(3 * 4096);
        let (dir, file) = temp_file("dropped", &bytes);
        let h = PrefixHasher::start(file, bytes.len() as u64, 0, None).unwrap();
        let shared = Arc::downgrade(&h.shared);
        drop(h);
        assert!(
            shared.upgrade().is_none(),
            "the thread still holds the hasher's state"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A spare buffer is reused only when it can hold the copy without growing (mutation sample
    /// H: `>=` as `<` handed out a spare too small, which the copy then reallocated).
    #[test]
    fn spare_buffers_are_reused_only_when_large_enough() {
        let bytes = data(4096);
        let (dir, file) = temp_file("spares", &bytes);
        let h = PrefixHasher::start(file, bytes.len() as u64, 0, None).unwrap();
        h.shared.recycle(Vec::with_capacity(10));
        h.shared.recycle(Vec::with_capacity(5000));
        let b = h.buffer(1000);
        assert!(b.is_empty() && b.capacity() >= 1000, "{}", b.capacity());
        assert_eq!(h.shared.handed().spare.len(), 1, "one spare taken");
        assert!(h.buffer(20_000).capacity() >= 20_000);
        drop(h);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A copy taken from the queue leaves the budget of waiting ones by its length (whole run,
    /// ingest prefix_hash part: `pop`'s `-=` as `+=` or `/=` miscounted it, so the budget
    /// refused copies it had room for, or took more than [`HANDED_MAX`]).
    #[test]
    fn a_popped_copy_leaves_the_budget_of_waiting_ones() {
        let shared = Shared {
            prefix: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            handed: Mutex::new(Handed::default()),
            read_back: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
        };
        {
            let mut h = shared.handed();
            h.queue.push_back((0, vec![1; 1000]));
            h.queue.push_back((1000, vec![2; 3000]));
            h.bytes = 4000;
        }
        assert_eq!(shared.pop().map(|(at, v)| (at, v.len())), Some((0, 1000)));
        assert_eq!(shared.handed().bytes, 3000);
        assert_eq!(
            shared.pop().map(|(at, v)| (at, v.len())),
            Some((1000, 3000))
        );
        assert_eq!(shared.handed().bytes, 0);
        assert!(shared.pop().is_none());
    }

    /// Bytes behind the published prefix are not kept: the thread hashes them from what it
    /// was handed or reads them back (whole run, ingest prefix_hash part: the budget check's
    /// `||` as `&&` kept such a copy within the budget, held until the next advance).
    #[test]
    fn pieces_behind_the_prefix_are_not_kept() {
        let bytes = data(3 * 4096);
        let size = bytes.len() as u64;
        let (dir, file) = temp_file("behind", &bytes);
        let mut h = PrefixHasher::start(file, size, 0, None).unwrap();
        h.advance(8192, None);
        h.keep(Piece::Borrowed(4096, &bytes[4096..8192]));
        h.keep(Piece::Owned(0, bytes[..4096].to_vec()));
        assert_eq!((h.early.len(), h.early_bytes), (0, 0));
        h.advance(size, Some(Piece::Borrowed(8192, &bytes[8192..])));
        finish_as_a_commit_does(h, &dir, &bytes);
    }

    /// Writes `bytes[range]` into the part in `dir` (bytes past the prefix are written after
    /// the hasher started, as a transfer writes them).
    fn write_part(dir: &std::path::Path, bytes: &[u8], range: Range<usize>) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("part"))
            .unwrap();
        f.write_all_at(&bytes[range.clone()], range.start as u64)
            .unwrap();
    }

    /// Waits until the hasher has read `want` bytes back, then checks it read no more, and
    /// that with nothing to do its thread sleeps (whole run, ingest prefix_hash part: `upto >
    /// hashed` as `>=` spun a core while a transfer waited for its next bytes).
    fn read_back_settles_at(h: &PrefixHasher, want: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while h.read_back() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "read back {}",
                h.read_back()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(IDLE_WAKE);
        let rounds = h.shared.rounds.load(Ordering::Relaxed);
        std::thread::sleep(3 * IDLE_WAKE);
        assert_eq!(h.read_back(), want);
        // Idle wake-ups every IDLE_WAKE, and a late one on a loaded machine, at most.
        let idle = h.shared.rounds.load(Ordering::Relaxed) - rounds;
        assert!(idle <= 10, "{idle} rounds of an idle thread");
    }

    /// While the prefix grows the thread reads whole chunks of it, never past it; once the
    /// part is complete it reads the tail too; what it reads back is counted exactly (whole
    /// run, ingest prefix_hash part: `run`'s bound on what to read, the chunk step and the
    /// count were all free to change, since every test's part held its final bytes from the
    /// start and a read past the prefix went unseen).
    #[test]
    fn the_thread_reads_whole_chunks_of_a_growing_prefix_then_the_tail() {
        let c = CHUNK as usize;
        let bytes = data(3 * c + c / 4);
        let size = bytes.len() as u64;
        // The part starts as zeros, and is filled as the prefix grows.
        let (dir, file) = temp_file("grows", &vec![0; bytes.len()]);
        let mut h = PrefixHasher::start(file, size, 0, None).unwrap();
        write_part(&dir, &bytes, 0..c + c / 2);
        h.advance((c + c / 2) as u64, None);
        // One whole chunk, not the half after it.
        read_back_settles_at(&h, CHUNK);
        // A copy past what was read: the gap before it is read back, the copy is not.
        write_part(&dir, &bytes, c + c / 2..2 * c + c / 2);
        let piece = &bytes[c + c / 2..2 * c + c / 2];
        h.advance(
            (2 * c + c / 2) as u64,
            Some(Piece::Borrowed((c + c / 2) as u64, piece)),
        );
        read_back_settles_at(&h, CHUNK + CHUNK / 2);
        // Complete: the tail, shorter than a chunk, is read too.
        write_part(&dir, &bytes, 2 * c + c / 2..bytes.len());
        h.advance(size, None);
        read_back_settles_at(&h, size - CHUNK);
        finish_as_a_commit_does(h, &dir, &bytes);
    }

    /// Copies still waiting when the hasher is finished are hashed by the thread before it
    /// returns, and the gap before them is counted as read back (whole run, ingest
    /// prefix_hash part: the drain's count with `+` for `-` went unnoticed).
    #[test]
    fn copies_waiting_at_finish_are_drained_and_counted() {
        let c = CHUNK as usize;
        let bytes = data(2 * c + c / 2);
        let size = bytes.len() as u64;
        let (dir, file) = temp_file("drain", &bytes);
        let mut h = PrefixHasher::start(file, size, 0, None).unwrap();
        h.advance(CHUNK, None);
        read_back_settles_at(&h, CHUNK);
        // Queued behind the parked thread's back, then finished at once: the drain takes it.
        {
            let mut handed = h.shared.handed();
            handed
                .queue
                .push_back(((c + c / 2) as u64, bytes[c + c / 2..].to_vec()));
            handed.bytes += c;
        }
        h.shared.prefix.store(size, Ordering::Release);
        let shared = Arc::clone(&h.shared);
        let st = h.finish().unwrap();
        assert_eq!(st.hashed, size);
        assert_eq!(digest(&st), expected(&bytes));
        assert_eq!(shared.read_back.load(Ordering::Acquire), CHUNK + CHUNK / 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Spare buffers are kept up to [`SPARE_MAX`] bytes of capacity in all (whole run, ingest
    /// prefix_hash part: `kept + capacity` as `kept * capacity` kept one 1 MiB spare, not two).
    #[test]
    fn spare_buffers_are_kept_up_to_their_budget() {
        let bytes = data(4096);
        let (dir, file) = temp_file("spare-cap", &bytes);
        let h = PrefixHasher::start(file, bytes.len() as u64, 0, None).unwrap();
        let half = SPARE_MAX / 2;
        for _ in 0..3 {
            h.shared.recycle(Vec::with_capacity(half));
        }
        let kept: Vec<usize> = h.shared.handed().spare.iter().map(Vec::capacity).collect();
        assert_eq!(
            kept,
            vec![half, half],
            "two halves fill the budget; the third is dropped"
        );
        drop(h);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A kept copy of bytes that are then rewritten is forgotten: the digest is of the bytes
    /// the part holds, read back, never of the old copy.
    #[test]
    fn forgotten_copies_are_never_hashed() {
        let mut bytes = data(3 * 4096);
        let size = bytes.len() as u64;
        let (dir, file) = temp_file("forget", &bytes);
        let mut h = PrefixHasher::start(file, size, 0, None).unwrap();
        let old = bytes[4096..8192].to_vec();
        h.keep(Piece::Owned(4096, old));
        // Block 1 is rewritten with other bytes, and this writer keeps no copy of them.
        h.forget(5000..5001);
        // Its bytes are back in the budget of copies, or rewrites would use it up.
        assert_eq!((h.early.len(), h.early_bytes), (0, 0));
        for b in &mut bytes[4096..8192] {
            *b ^= 0xff;
        }
        std::fs::write(dir.join("part"), &bytes).unwrap();
        h.advance(size, Some(Piece::Borrowed(0, &bytes[..4096])));
        finish_as_a_commit_does(h, &dir, &bytes);
    }

    /// Bytes rewritten past the prefix by their one owner whose new copy does not fit in the
    /// budget: the old copy must not survive to be hashed (the owner calls no `forget`).
    #[test]
    fn a_rewrite_whose_copy_is_refused_still_drops_the_old_copy() {
        let block = 1 << 20;
        let mut bytes = data(HANDED_MAX + 3 * block);
        let size = bytes.len() as u64;
        let (dir, file) = temp_file("stale", &bytes);
        let mut h = PrefixHasher::start(file, size, 0, None).unwrap();
        // Block 1 kept with its first bytes, then the budget filled with blocks 2.. .
        h.keep(Piece::Owned(block as u64, bytes[block..2 * block].to_vec()));
        let mut k = 2;
        while h.early_bytes + block <= HANDED_MAX {
            h.keep(Piece::Borrowed(
                (k * block) as u64,
                &bytes[k * block..(k + 1) * block],
            ));
            k += 1;
        }
        // Block 1 rewritten: its new copy does not fit.
        for b in &mut bytes[block..2 * block] {
            *b = b.wrapping_add(1);
        }
        std::fs::write(dir.join("part"), &bytes).unwrap();
        h.keep(Piece::Borrowed(block as u64, &bytes[block..2 * block]));
        h.advance(size, Some(Piece::Borrowed(0, &bytes[..block])));
        finish_as_a_commit_does(h, &dir, &bytes);
    }
}
