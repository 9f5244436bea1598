//! Hashing a resumable part while it fills: a background thread follows the part's stored
//! prefix (the leading blocks that are all written) and feeds SHA-256 and xxHash64 from the
//! file with `pread`, so that [`Resumable::commit`](super::Resumable::commit) only hashes what
//! the prefix had not reached. Downloads mostly arrive in order, so the whole-file check at the
//! end costs almost nothing on the downloader's own thread.
//!
//! The thread only ever reads bytes below the prefix it was told about, and the writer refuses
//! to rewrite those bytes while a hasher runs, so what is hashed is what gets published.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use twox_hash::XxHash64;

/// Bytes hashed per read; also how far the prefix must grow before the thread is woken.
pub(super) const CHUNK: u64 = 1 << 20;
/// Bytes per pread: small enough that the hashes read them back from the CPU cache the copy
/// just filled rather than from memory.
const READ_PIECE: u64 = 256 << 10;
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

    /// Reads `[hashed, upto)` of `file` in [`READ_PIECE`] pieces into the hashes.
    pub fn hash_to(&mut self, file: &File, upto: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        while self.hashed < upto {
            let n = (upto - self.hashed).min(READ_PIECE) as usize;
            buf.resize(n, 0);
            file.read_exact_at(&mut buf[..n], self.hashed)?;
            self.sha.update(&buf[..n]);
            std::hash::Hasher::write(&mut self.xxh, &buf[..n]);
            self.hashed += n as u64;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Shared {
    /// Bytes at the start of the part that are written (the stored prefix).
    prefix: AtomicU64,
    stop: AtomicBool,
}

/// The background hasher of one part.
#[derive(Debug)]
pub(super) struct PrefixHasher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<HashState>>>,
    /// Prefix last published to the thread, and when it last was woken for it.
    told: u64,
    woken: u64,
    size: u64,
}

impl PrefixHasher {
    /// Starts hashing `file` (a handle of its own) up to `prefix` bytes now written.
    pub fn start(file: File, size: u64, prefix: u64) -> io::Result<PrefixHasher> {
        let shared = Arc::new(Shared {
            prefix: AtomicU64::new(prefix),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ingest-hash".into())
            .spawn(move || run(&file, size, &s))?;
        Ok(PrefixHasher {
            shared,
            thread: Some(thread),
            told: prefix,
            woken: prefix,
            size,
        })
    }

    /// Bytes of the prefix the thread may hash (it may not have reached them yet). Nothing
    /// below this may be written again.
    pub fn frozen(&self) -> u64 {
        self.told
    }

    /// The stored prefix grew to `prefix` bytes.
    pub fn advance(&mut self, prefix: u64) {
        if prefix <= self.told {
            return;
        }
        self.told = prefix;
        self.shared.prefix.store(prefix, Ordering::Release);
        if prefix - self.woken >= CHUNK || prefix == self.size {
            self.woken = prefix;
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }

    /// Stops the thread (within one chunk) and returns what it hashed (None if it failed: start
    /// over).
    pub fn finish(mut self) -> Option<HashState> {
        self.stop_thread()
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

fn run(file: &File, size: u64, s: &Shared) -> io::Result<HashState> {
    let mut st = HashState::new();
    let mut buf = Vec::new();
    loop {
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
            return Ok(st);
        }
        if upto > st.hashed {
            st.hash_to(file, upto.min(st.hashed + CHUNK), &mut buf)?;
            continue;
        }
        std::thread::park_timeout(IDLE_WAKE);
    }
}
