//! The part file under every resumable transfer: a sparse `<key>.part` written block by block
//! in any order, a `<key>.bitmap` saying which blocks are durably there, and the bookkeeping
//! that lets one writer ([`Resumable`](super::Resumable)) or many
//! ([`Transfer`](super::Transfer)) fill it.
//!
//! Each block moves through these states:
//!
//! ```text
//!              claim                      finish                 sync
//!   missing ----------> busy (one writer) ---------> written ------------> durable
//!     |  ^                |    ^                        |                     |
//!     |  +--- dropped ----+    +--- Replace claim ------+---------------------+
//!     |                                                 ^   (a durable bit is cleared
//!     +------------- write_exclusive (one owner) -------+    on disk first)
//!
//!   sync: fdatasync(part), then the batch's bits written into the bitmap, fdatasync(bitmap)
//! ```
//!
//! Durability order: block data is written with `pwrite` and only then marked written; a sync
//! takes the written-but-not-durable blocks as one batch, `fdatasync`s the part, writes their
//! bits into the bitmap (in place) and `fdatasync`s it, and only then reports them durable. A
//! bit on disk therefore never claims a block whose data is not on disk, and a torn bitmap
//! write can only lose claims. A block being replaced has its on-disk bit cleared and synced
//! before its first new byte is written.
//!
//! Group commit: concurrent [`Part::sync`] calls coalesce. While one sync runs, callers wait;
//! the next one covers every block written meanwhile with one `fdatasync` of the part.
//!
//! Locks: `state` (bits, claims, hasher) is held for bookkeeping only, never across a write or
//! a sync of the part. `bitmap` orders every write of bits to disk; it is taken before `state`,
//! never after. A single owner ([`Part::write_exclusive`], through `&mut`) takes no lock at all.
//!
//! After a failed `fdatasync` the part can no longer be trusted (the kernel may have dropped the
//! dirty pages and a retry would report success): every later sync and commit fails until the
//! part is reset. The on-disk bitmap still claims only blocks synced before the failure.
//!
//! The bitmap file is a 32-byte header followed by one bit per block, least significant bit
//! first (the layout is drawn in the [`ingest`](super) module doc).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use sha2::Digest;

use super::prefix_hash::{HashState, Piece, PrefixHasher};
use super::publish::publish;
use super::stream::preallocate_range;
use super::{check, is_plain_name, tag_for, Reserve, MAX_KEY_BYTES, PART_SUFFIX};
use super::{Collision, Committed, Expect, IngestDir, IngestError};

mod state;

pub(super) use state::Geometry;
use state::{has, put, Batch, Missing, State};

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
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains(['/', '.']) {
            return None;
        }
        let mut header = [0u8; HEADER_LEN];
        self.work_dir()
            .open_read(OsStr::new(&format!("{key}.bitmap")))
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

/// Whether a claim may overwrite a block that is already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// A written block keeps its first copy; the new one is not written (filestorage 4.3:
    /// a replayed chunk changes nothing).
    Keep,
    /// The latest complete copy wins (FastDP 2.5): the block counts as missing from the claim
    /// until the new copy is finished, and a durable bit is cleared on disk first.
    Replace,
}

/// What [`Part::claim`] granted.
#[derive(Debug)]
pub(super) enum Claimed {
    /// These runs are now busy and must be written, then finished or released. Empty when
    /// every block was already written and `Rewrite::Keep` kept them.
    Runs(Vec<Range<u64>>),
    /// Another writer holds one of the blocks.
    Busy,
    /// The part takes no more writes: it is being verified, or it is committed or discarded.
    Closed,
}

/// Who runs the next sync and which syncs are done (group commit).
#[derive(Debug, Default)]
struct Group {
    running: bool,
    /// Syncs started so far (each one's batch is taken after it starts).
    begun: u64,
    /// The last sync that ended.
    finished: u64,
}

/// Counters and a fault switch for tests of the durability order.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// fdatasync calls on the part begun and ended.
    pub part_syncs_begun: std::sync::atomic::AtomicU64,
    pub part_syncs_done: std::sync::atomic::AtomicU64,
    /// That many coming fdatasync calls on the part fail with EIO.
    pub fail_part_syncs: std::sync::atomic::AtomicU32,
    /// Drop without the final sync, as a killed process would.
    pub crash: std::sync::atomic::AtomicBool,
    /// The next fdatasync of the part waits for a message on this first.
    pub gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Times a sync() caller waited for a sync run by another.
    pub sync_waits: std::sync::atomic::AtomicU64,
}

/// One part file and its bitmap. See the module doc.
pub(super) struct Part {
    dir: IngestDir,
    /// `<key>.part` and `<key>.bitmap` in the working folder (reached through its descriptor).
    part_name: OsString,
    bitmap_name: OsString,
    /// The part, read-write; holds the `flock` for as long as this value lives.
    file: File,
    geo: Geometry,
    state: Mutex<State>,
    /// The bitmap file, opened at the first sync; its lock orders every write of bits.
    bitmap: Mutex<Option<File>>,
    group: Mutex<Group>,
    group_done: Condvar,
    /// Disk space of a part opened with `stepped` ([`Part::open`]): admitted for the whole
    /// size, taken a step ahead of the blocks written.
    space: Option<super::ledger::Stepped>,
    #[cfg(test)]
    pub probe: Probe,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part")
            .field("path", &self.dir.work().join(&self.part_name))
            .field("geometry", &self.geo)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything can panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Part {
    /// Creates or reopens `<work>/<key>.part` (locked with `flock`) and its bitmap, never
    /// through a link (a regular file of ours with one link, or an error that says what is
    /// there: [`Dir::open_state_file`](crate::dir::Dir::open_state_file)). A bitmap
    /// that does not match restarts from zero; so does a new transfer, whose part is sized
    /// sparse. With `stepped` the part takes its disk space through the ledger
    /// ([`IngestDir::reserve_space`]): admitted for what is still missing, then taken (and
    /// preallocated) a step ahead of the blocks written ([`ledger::Stepped`](super::ledger));
    /// a new part that is refused leaves no file behind.
    pub fn open(
        dir: IngestDir,
        key: &str,
        size: u64,
        block_size: u32,
        stepped: bool,
    ) -> io::Result<Part> {
        check_key(key)?;
        let geo = Geometry::new(size, block_size)?;
        let part_name = OsString::from(format!("{key}{PART_SUFFIX}"));
        let bitmap_name = OsString::from(format!("{key}.bitmap"));
        // 0666 less the umask: the part becomes the final file.
        let file = dir.work_dir().open_state_file(&part_name, 0o666, true)?;
        flock(&file)?;
        let mut part = Part {
            dir,
            part_name,
            bitmap_name,
            file,
            geo,
            state: Mutex::new(State::new(geo)),
            bitmap: Mutex::new(None),
            group: Mutex::new(Group::default()),
            group_done: Condvar::new(),
            space: None,
            #[cfg(test)]
            probe: Probe::default(),
        };
        let _ = part.dir.work_dir().remove_file(&part.new_bitmap_name());
        match part.load()? {
            Some(bits) => {
                let st = part.state_mut();
                st.received = bits.iter().map(|b| u64::from(b.count_ones())).sum();
                st.durable.clone_from(&bits);
                st.written = bits;
                st.advance_prefix(geo, None);
                if stepped {
                    part.take_space()?;
                }
            }
            None => {
                // A new transfer that cannot get its space leaves nothing behind.
                let made = part
                    .reset()
                    .and_then(|()| if stepped { part.take_space() } else { Ok(()) });
                if let Err(e) = made {
                    part.discard();
                    return Err(e);
                }
            }
        }
        Ok(part)
    }

    /// Admitted by the ledger for what is still missing (a full disk is refused before any
    /// byte, FastDP 4.1), then the first step taken: granted, and preallocated from the first
    /// missing block where fallocate(2) works (tmpfs: only counted). Issue 15 item 5: the
    /// whole declared size is never taken at once.
    fn take_space(&mut self) -> io::Result<()> {
        let geo = self.geo;
        let (held, first_missing) = {
            let st = self.state_mut();
            (st.received, st.prefix_blocks)
        };
        let base = held.saturating_mul(u64::from(geo.block_size)).min(geo.size);
        let res = self.dir.reserve_space(geo.size - base)?;
        let alloc_base = allocated_bytes(&self.file)?;
        self.space = Some(super::ledger::Stepped::new(res, base, alloc_base));
        if base < geo.size {
            self.charge(base + 1, 1, geo.offset(first_missing))?;
        }
        Ok(())
    }

    /// Charges a demand of `demand` bytes (blocks written or claimed, this claim's `bytes`
    /// included) to the part's space: one atomic compare, unless a step is due; the step is
    /// preallocated from `offset` (where this claim writes).
    fn charge(&self, demand: u64, bytes: u64, offset: u64) -> io::Result<()> {
        let Some(space) = &self.space else {
            return Ok(());
        };
        let preallocate = self.dir.reserve_kind() == Reserve::Preallocate;
        space.charge(
            demand,
            bytes,
            || self.dir.free_for_ledger(),
            |len| {
                let len = len.min(self.geo.size.saturating_sub(offset));
                if preallocate && len > 0 {
                    preallocate_range(&self.file, offset, len)?;
                }
                allocated_bytes(&self.file)
            },
        )
    }

    /// Demand of the blocks written or claimed now, in bytes ([`ledger::Stepped`]).
    fn demand(&self, st: &State) -> u64 {
        let busy: u64 = st.busy.iter().map(|r| r.end - r.start).sum();
        (st.received + busy)
            .saturating_mul(u64::from(self.geo.block_size))
            .min(self.geo.size)
    }

    /// Charges a fresh claim of `runs` (see [`charge`](Self::charge)); on refusal the runs
    /// are released and stay missing.
    fn charge_claim(&self, demand: u64, runs: &[Range<u64>]) -> io::Result<()> {
        let Some(first) = runs.first() else {
            return Ok(());
        };
        let bytes = runs.iter().map(|r| self.geo.run_bytes(r)).sum();
        let r = self.charge(demand, bytes, self.geo.offset(first.start));
        if r.is_err() {
            let mut st = self.state();
            for run in runs {
                st.release(run);
            }
        }
        r
    }

    /// Bytes the part's space holds promised in the ledger (`None`: not stepped).
    #[cfg(test)]
    pub(super) fn space_promised(&self) -> Option<u64> {
        self.space
            .as_ref()
            .map(super::ledger::Stepped::promised_bytes)
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The bookkeeping, locked.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The bookkeeping of a part with one owner: no lock taken.
    fn state_mut(&mut self) -> &mut State {
        self.state.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn missing(&self) -> Missing<'_> {
        Missing {
            st: self.state(),
            next: 0,
            blocks: self.geo.blocks,
        }
    }

    /// Up to `limit` half-open runs of written blocks (`durable`: of durable ones).
    pub fn held_ranges(&self, durable: bool, limit: usize) -> Vec<Range<u64>> {
        let st = self.state();
        if durable {
            st.runs(self.geo, limit, |w, d| w & d)
        } else {
            st.runs(self.geo, limit, |w, _| w)
        }
    }

    /// Up to `limit` half-open runs of blocks not written.
    pub fn missing_ranges(&self, limit: usize) -> Vec<Range<u64>> {
        self.state().runs(self.geo, limit, |w, _| !w)
    }

    /// One owner writes consecutive blocks from `first` with one `pwrite`; no claim, no lock.
    /// Blocks of the prefix being hashed are refused.
    pub fn write_exclusive(&mut self, first: u64, data: &[u8]) -> io::Result<()> {
        let geo = self.geo;
        let n = geo.run_len(first, data.len())?;
        let offset = geo.offset(first);
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if st.finished {
            return Err(finished());
        }
        if offset < st.frozen() {
            return Err(invalid(
                "ingest: block already stored and being hashed; it cannot be written again",
            ));
        }
        self.file.write_all_at(data, offset)?;
        st.mark_written(geo, first..first + n, Some(Piece::Borrowed(offset, data)));
        Ok(())
    }

    /// Where the running background hasher started (bytes already hashed), if one runs.
    #[cfg(test)]
    pub(super) fn hasher_started_at(&self) -> Option<u64> {
        self.state().hasher.as_ref().map(PrefixHasher::started_at)
    }

    /// Claims blocks `run` for a shared writer. `Keep`: only the blocks not written are
    /// claimed (as runs). `Replace`: the whole run, its written blocks becoming missing (their
    /// durable bits cleared on disk before this returns); if the background hasher may have
    /// read them it is stopped first, and starts again at the next finished run.
    pub fn claim(&self, run: Range<u64>, rewrite: Rewrite) -> io::Result<Claimed> {
        let mut st = self.state();
        if let Some(e) = st.failure() {
            return Err(e);
        }
        if st.finished || !st.accepting {
            return Ok(Claimed::Closed);
        }
        if st
            .busy
            .iter()
            .any(|r| r.start < run.end && run.start < r.end)
        {
            return Ok(Claimed::Busy);
        }
        if rewrite == Rewrite::Keep {
            let mut runs: Vec<Range<u64>> = Vec::new();
            for i in run {
                if st.is_written(i) {
                    continue;
                }
                match runs.last_mut() {
                    Some(r) if r.end == i => r.end += 1,
                    _ => runs.push(i..i + 1),
                }
            }
            st.busy.extend(runs.iter().cloned());
            let demand = self.demand(&st);
            drop(st);
            self.charge_claim(demand, &runs)?;
            return Ok(Claimed::Runs(runs));
        }
        let mut on_disk = false;
        for i in run.clone() {
            let sealed = st.batch.as_ref().is_some_and(|b| b.sealed && b.holds(i));
            on_disk |= has(&st.durable, i) || sealed;
            if put(&mut st.written, i, false) {
                st.received -= 1;
            }
            if let Some(b) = st.batch.as_mut() {
                b.forget(i);
            }
        }
        st.prefix_blocks = st.prefix_blocks.min(run.start);
        st.busy.push(run.clone());
        let bytes =
            self.geo.offset(run.start)..self.geo.offset(run.start) + self.geo.run_bytes(&run);
        if let Some(h) = st.hasher.as_mut() {
            h.forget(bytes);
        }
        let demand = self.demand(&st);
        // The hasher may be reading these bytes: stop it before any is rewritten.
        let stale = if self.geo.offset(run.start) < st.frozen() {
            st.hasher.take()
        } else {
            None
        };
        drop(st);
        // Joined here, outside the lock; the next finished block starts hashing again.
        drop(stale);
        if on_disk {
            if let Err(e) = self.clear_on_disk(&run) {
                self.release(&run);
                return Err(e);
            }
        }
        let runs = vec![run];
        self.charge_claim(demand, &runs)?;
        Ok(Claimed::Runs(runs))
    }

    /// Clears the durable bits of `run` on disk (and syncs the bitmap). Waits for a sync that
    /// is writing bits, which may include these.
    fn clear_on_disk(&self, run: &Range<u64>) -> io::Result<()> {
        let mut bitmap = lock(&self.bitmap);
        let (lo, bytes) = {
            let mut st = self.state();
            let mut changed = false;
            for i in run.clone() {
                changed |= put(&mut st.durable, i, false);
            }
            if !changed {
                return Ok(());
            }
            let (lo, hi) = ((run.start / 8) as usize, (run.end - 1) as usize / 8 + 1);
            (lo, st.durable[lo..hi].to_vec())
        };
        let r = self.write_bits(&mut bitmap, lo, &bytes);
        if let Err(e) = &r {
            self.state().fail(e);
        }
        r
    }

    /// Writes `data` at byte `offset` of the part (positional: no shared file position).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Claimed runs were written whole: their blocks become written. Hashing stopped by a
    /// replacement starts again from the new prefix. Each run comes with the bytes written
    /// into it if the caller still has them (see [`Piece`]: the hasher may take a copy of them
    /// instead of reading them back).
    pub(super) fn finish_with<'a>(
        &self,
        runs: impl IntoIterator<Item = (Range<u64>, Option<Piece<'a>>)>,
    ) {
        let mut st = self.state();
        for (r, piece) in runs {
            st.release(&r);
            let piece = piece.filter(|_| st.hasher.is_some());
            st.mark_written(self.geo, r, piece);
        }
        if st.wants_hasher && st.hasher.is_none() {
            // Without a hasher the commit hashes everything itself: nothing is lost.
            let _ = self.start_hasher_locked(&mut st);
        }
    }

    /// A buffer to copy claimed `run` into as it is written, when a background hasher runs
    /// and the run starts at most a few blocks past the stored prefix: its bytes are then
    /// likely to join the prefix when finished, and the copy spares the hasher reading them
    /// back (runs of at most 1 MiB, so the copies stay within the hasher's budget).
    pub(super) fn copy_buffer_for(&self, run: &Range<u64>) -> Option<Vec<u8>> {
        const AHEAD: u64 = 8;
        let len = self.geo.run_bytes(run);
        if len > 1 << 20 {
            return None;
        }
        let st = self.state();
        let h = st
            .hasher
            .as_ref()
            .filter(|_| run.start <= st.prefix_blocks + AHEAD)?;
        Some(h.buffer(len as usize))
    }

    /// A claimed run was not written whole: its blocks stay missing.
    pub fn release(&self, run: &Range<u64>) {
        self.state().release(run);
    }

    /// Stops accepting shared writers if every block is written; else how many are missing.
    pub fn close_if_complete(&self) -> Result<(), u64> {
        let mut st = self.state();
        if st.received == self.geo.blocks {
            st.accepting = false;
            Ok(())
        } else {
            Err(self.geo.blocks - st.received)
        }
    }

    /// Hashes the stored prefix on a background thread from now on (idempotent).
    pub fn hash_in_background(&self) -> io::Result<()> {
        {
            let mut st = self.state();
            if st.finished {
                return Err(finished());
            }
            st.wants_hasher = true;
        }
        self.start_hasher()
    }

    /// Starts the hasher if it is wanted and not running, from the current prefix.
    fn start_hasher(&self) -> io::Result<()> {
        self.start_hasher_locked(&mut self.state())
    }

    fn start_hasher_locked(&self, st: &mut State) -> io::Result<()> {
        if st.hasher.is_some() || !st.wants_hasher || st.finished || !st.accepting {
            return Ok(());
        }
        let file = self.file.try_clone()?;
        let prefix = self.geo.prefix_bytes(st.prefix_blocks);
        let from = self.dir.take_stashed_hash(&self.part_name, &self.file);
        st.hasher = Some(PrefixHasher::start(file, self.geo.size, prefix, from)?);
        Ok(())
    }

    /// Makes every block written before this call durable (unless replaced since), with one
    /// `fdatasync` of the part shared by every caller waiting at the same time.
    pub fn sync(&self) -> io::Result<()> {
        let mut g = lock(&self.group);
        // A sync already running may have taken its batch before our blocks were written.
        let need = g.begun + 1;
        loop {
            if g.finished >= need {
                return self.state().failure().map_or(Ok(()), Err);
            }
            if !g.running {
                g.running = true;
                g.begun += 1;
                let mine = g.begun;
                drop(g);
                let r = self.sync_once();
                g = lock(&self.group);
                g.running = false;
                g.finished = mine;
                self.group_done.notify_all();
                if mine >= need {
                    return r;
                }
                continue;
            }
            #[cfg(test)]
            self.probe
                .sync_waits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            g = self
                .group_done
                .wait(g)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// One sync: batch, fdatasync the part, write and sync the bits, report them durable.
    fn sync_once(&self) -> io::Result<()> {
        {
            let mut st = self.state();
            if let Some(e) = st.failure() {
                return Err(e);
            }
            if st.finished {
                return Ok(());
            }
            let Some((lo, hi)) = st.dirty.take() else {
                return Ok(());
            };
            let bits = (lo..hi).map(|k| st.written[k] & !st.durable[k]).collect();
            st.batch = Some(Batch {
                lo,
                bits,
                sealed: false,
            });
        }
        if let Err(e) = self.sync_part_data() {
            let mut st = self.state();
            st.fail(&e);
            st.batch = None;
            return Err(e);
        }
        let mut bitmap = lock(&self.bitmap);
        let (lo, bytes) = {
            let mut st = self.state();
            let st = &mut *st;
            let Some(b) = st.batch.as_mut() else {
                return Ok(());
            };
            b.sealed = true;
            let bytes: Vec<u8> = b
                .bits
                .iter()
                .zip(&st.durable[b.lo..])
                .map(|(n, d)| n | d)
                .collect();
            (b.lo, bytes)
        };
        let written = self.write_bits(&mut bitmap, lo, &bytes);
        let mut st = self.state();
        let batch = st.batch.take();
        if let Err(e) = written {
            st.fail(&e);
            return Err(e);
        }
        if let Some(b) = batch {
            for (k, n) in b.bits.iter().enumerate() {
                st.durable[b.lo + k] |= n;
            }
        }
        Ok(())
    }

    fn sync_part_data(&self) -> io::Result<()> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            self.probe.part_syncs_begun.fetch_add(1, SeqCst);
            let gate = lock(&self.probe.gate).take();
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            let fail = self
                .probe
                .fail_part_syncs
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
            if fail.is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        self.file.sync_data()?;
        #[cfg(test)]
        self.probe
            .part_syncs_done
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Writes bitmap bytes from `lo` in place and syncs them; the caller holds the bitmap lock.
    fn write_bits(&self, bitmap: &mut Option<File>, lo: usize, bytes: &[u8]) -> io::Result<()> {
        if bitmap.is_none() {
            *bitmap = Some(
                self.dir
                    .work_dir()
                    .open_state_file(&self.bitmap_name, 0o600, false)?,
            );
        }
        let f = bitmap.as_ref().ok_or_else(finished)?;
        f.write_all_at(bytes, (HEADER_LEN + lo) as u64)?;
        f.sync_data()
    }

    /// Hashes the whole part, verifies it, fsyncs it and publishes it under `name` in the
    /// folder of its [`IngestDir`]; then the bitmap goes. Every block must be written and no
    /// writer may be at work (one owner, or [`close_if_complete`](Self::close_if_complete)).
    /// On any error the part stays as it was.
    pub fn commit(
        &self,
        name: &str,
        expect: Expect,
        policy: Collision,
    ) -> Result<Committed, IngestError> {
        if !is_plain_name(name) {
            return Err(IngestError::BadName);
        }
        {
            let st = self.state();
            if st.finished {
                return Err(finished().into());
            }
            if let Some(e) = st.failure() {
                return Err(e.into());
            }
            if st.received != self.geo.blocks {
                let missing = self.geo.blocks - st.received;
                return Err(IngestError::Incomplete { missing });
            }
        }
        // Waits for a sync another connection may be running, and leaves none to run: no
        // bitmap write can follow the publication below.
        self.sync()?;
        let (sha256, xxh64) = self.hash()?;
        if let Some(e) = check(expect, Some(&sha256), xxh64) {
            return Err(e);
        }
        self.file.sync_all()?;
        let inode = super::inode_of(&self.file)?;
        let tag = tag_for(expect, Some(&sha256), xxh64);
        let published = publish(
            self.dir.dest_dir(),
            self.dir.work_dir(),
            &self.part_name,
            name,
            self.geo.size,
            Some(&sha256),
            &tag,
            policy,
        )?;
        let _ = self.dir.dest_dir().sync();
        // The part is gone (published or dropped as a duplicate); the bitmap is now meaningless.
        // A bitmap that survives a crash here restarts from zero: its part is missing.
        {
            let mut st = self.state();
            st.finished = true;
            st.dirty = None;
        }
        let _ = self.dir.work_dir().remove_file(&self.bitmap_name);
        Ok(Committed {
            path: published.path,
            name: published.name,
            sha256: Some(sha256),
            xxh64,
            size: self.geo.size,
            outcome: published.outcome,
            inode: (published.outcome != super::Outcome::AlreadyPresent).then_some(inode),
        })
    }

    /// SHA-256 and xxHash64 of the whole part: what the background hasher did (if it ran and
    /// did not fail), then the rest read here.
    fn hash(&self) -> io::Result<([u8; 32], u64)> {
        let hasher = self.state().hasher.take();
        let mut st = hasher
            .and_then(PrefixHasher::finish)
            .unwrap_or_else(HashState::new);
        st.hash_to(&self.file, self.geo.size, &mut Vec::new())?;
        Ok((st.sha.finalize().into(), std::hash::Hasher::finish(&st.xxh)))
    }

    /// Deletes the part and its bitmap; nothing more is written or persisted.
    pub fn discard(&self) {
        let hasher = {
            let mut st = self.state();
            st.finished = true;
            st.accepting = false;
            st.dirty = None;
            st.hasher.take()
        };
        drop(hasher);
        self.dir.forget_stashed_hash(&self.part_name);
        let _ = self.dir.work_dir().remove_file(&self.bitmap_name);
        let _ = self.dir.work_dir().remove_file(&self.part_name);
    }

    /// Deletes the part and bitmap of `key` that no one holds (the part is locked first, so a
    /// transfer open in another process is refused with `WouldBlock`). Nothing there is fine.
    pub fn remove(dir: &IngestDir, key: &str) -> io::Result<()> {
        check_key(key)?;
        let part_name = OsString::from(format!("{key}{PART_SUFFIX}"));
        let bitmap_name = OsString::from(format!("{key}.bitmap"));
        dir.forget_stashed_hash(&part_name);
        let work = dir.work_dir();
        match work.open_read(&part_name) {
            Ok(f) => {
                flock(&f)?;
                work.remove_file(&part_name)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match work.remove_file(&bitmap_name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads the bitmap if it exists and matches this transfer and the part has the right size.
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        if self.file.metadata()?.len() != self.geo.size {
            return Ok(None);
        }
        let want_len = (HEADER_LEN + self.geo.bitmap_bytes()) as u64;
        let mut f = match self
            .dir
            .work_dir()
            .open_state_file(&self.bitmap_name, 0o600, false)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() != want_len {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(want_len as usize);
        // `take` bounds the read should the file grow after its length was looked at.
        (&mut f).take(want_len + 1).read_to_end(&mut data)?;
        if data.len() as u64 != want_len || data[..HEADER_LEN] != self.header() {
            return Ok(None);
        }
        let mut bits = data[HEADER_LEN..].to_vec();
        // Bits past the last block are not ours to trust.
        let tail = (self.geo.blocks % 8) as u32;
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
        h[12..16].copy_from_slice(&self.geo.block_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.geo.size.to_le_bytes());
        h[24..32].copy_from_slice(&self.geo.blocks.to_le_bytes());
        h
    }

    fn new_bitmap_name(&self) -> OsString {
        let mut p = self.bitmap_name.clone();
        p.push(".new");
        p
    }

    /// Start over with one owner: empty bitmap first (atomically), then empty the part. A crash
    /// in between leaves a bitmap that claims nothing, never one that claims discarded data.
    /// A failed sync is forgotten: the part's old bytes are gone.
    pub fn reset(&mut self) -> io::Result<()> {
        let geo = self.geo;
        self.dir.forget_stashed_hash(&self.part_name);
        let st = self.state_mut();
        debug_assert!(st.busy.is_empty(), "reset with writers at work");
        // The hasher read data that is about to be discarded: start it again from zero.
        let stale = st.hasher.take();
        drop(stale);
        *st = State {
            wants_hasher: st.wants_hasher,
            ..State::new(geo)
        };
        *self
            .bitmap
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let tmp = self.new_bitmap_name();
        let work = self.dir.work_dir();
        let result = (|| {
            // A leftover of a crash (or anything else under the name) goes first: the new
            // bitmap is created O_EXCL and never written through a link.
            match work.remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = work.create_new(&tmp, 0o600)?;
            f.write_all(&self.header())?;
            f.write_all(&vec![0u8; geo.bitmap_bytes()])?;
            f.sync_all()?;
            work.rename(&tmp, work, &self.bitmap_name)?;
            work.sync()
        })();
        if result.is_err() {
            let _ = work.remove_file(&tmp);
        }
        result?;
        self.file.set_len(0)?;
        self.file.set_len(geo.size)?;
        self.file.sync_all()?;
        self.start_hasher()
    }
}

impl Drop for Part {
    /// Best effort: keep the progress made since the last sync.
    fn drop(&mut self) {
        #[cfg(test)]
        if self.probe.crash.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if !self.state_mut().finished {
            let synced = self.sync();
            // Kept for a reopen in this process (after the sync: the stamp is the final one).
            let hasher = self.state_mut().hasher.take();
            if let Some(st) = hasher.and_then(PrefixHasher::finish) {
                if synced.is_ok() {
                    self.dir.stash_hash(&self.part_name, &self.file, st);
                }
            }
        }
    }
}

/// Takes an exclusive `flock` on the part so two transfers never share it. Non-blocking, so
/// never interrupted by a signal (EINTR comes only while waiting for a lock): no retry loop.
fn flock(file: &File) -> io::Result<()> {
    // SAFETY: flock only acts on the descriptor, which `file` keeps open for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "ingest: transfer already in progress",
        ));
    }
    Err(e)
}

/// Bytes `file` has allocated on disk (`st_blocks`), what statvfs counts as used.
fn allocated_bytes(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks().saturating_mul(512))
}

fn check_key(key: &str) -> io::Result<()> {
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
    Ok(())
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

pub(super) fn finished() -> io::Error {
    io::Error::other("ingest: transfer already committed")
}
