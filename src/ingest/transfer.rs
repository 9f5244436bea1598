//! Shared transfers: several connections fill one resumable part at once (FastDP F16,
//! filestorage S24), each acknowledging only blocks that are durable, and the first to find the
//! part complete verifies and publishes it once for all.
//!
//! A [`TransferRegistry`] (one per protocol and folder, shared as an `Arc`) maps a transfer id
//! to an open [`Transfer`]. [`TransferRegistry::attach`] opens the transfer (resuming from its
//! bitmap) or joins the one already open, checks the parameters, enforces the caller's cap on
//! connections and hands back an [`Attachment`]; the last attachment to go syncs and closes it.
//!
//! ```text
//!   attach(id, spec) ──► open (new or resumed from the bitmap) / join (same spec, under the cap)
//!        │
//!        ▼  any attachment, any thread
//!   claim / write_blocks ──► written ──► sync() ──► durable ──► acknowledge
//!        │                                 (one fdatasync for all waiting writers)
//!        ▼  all blocks written
//!   commit ──► Verifying ──► Completed(publication)   every attachment sees the same outcome
//!                  │
//!                  └──────► Failed(error)   a hash mismatch deletes the part and its bitmap
//!
//!   last detach: sync, close; a crash keeps exactly the durable blocks for the next attach
//! ```
//!
//! Out of scope: protocol state (FastDP's `.state`, filestorage's journal and records), which
//! blocks to ask for, retention of finished ids, and disk reservations across transfers (a
//! transfer with [`TransferSpec::preallocate`] takes its space in
//! [`IngestDir::reserve_space`](super::IngestDir::reserve_space), where accounting belongs,
//! step by step as its part fills).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::part::{Claimed, Part};
use super::publisher::{Publication, Publisher};
use super::{Collision, Expect, IngestError, Rewrite};

/// What a transfer is: every connection joining it must say the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSpec {
    /// File size in bytes.
    pub size: u64,
    /// Bytes per block (FastDP's `OneChunk`, filestorage's `chunk-size`); the last may be short.
    pub block_size: u32,
    /// What the whole file must hash to before it is published.
    pub expect: Expect,
    /// Take disk space through the ledger (FastDP 4.1): the transfer is admitted for its whole
    /// size, so a full disk is refused before any byte arrives, then takes (and preallocates)
    /// its space a step ahead of the blocks written, never the whole size at once (issue 15
    /// item 5). Otherwise the part is sparse and unaccounted.
    pub preallocate: bool,
}

/// Where a transfer is in its life. Every attachment sees the same.
#[derive(Debug, Clone)]
pub enum TransferState {
    /// Blocks are being received.
    Open,
    /// Every block is written; one attachment is hashing and publishing it.
    Verifying,
    /// Verified and published.
    Completed(Arc<Publication>),
    /// Verification or publication failed. After a hash mismatch the part is gone: the same id
    /// attached again starts from nothing. After other failures it stays on disk and the same
    /// id attached again (once every attachment is gone) resumes and may commit again.
    Failed(Arc<IngestError>),
}

/// Errors of shared transfers.
#[derive(Debug)]
pub enum TransferError {
    /// The id is open, or was left on disk, with another size, block size or expectation.
    ParameterMismatch { id: String },
    /// The transfer already has as many connections as the caller allows.
    TooManyConnections { max: usize },
    /// Another process holds this transfer's part.
    Locked { id: String },
    /// A commit was asked for while blocks are still missing.
    Incomplete { missing: u64 },
    /// The transfer failed (see [`TransferState::Failed`]).
    Failed(Arc<IngestError>),
    /// The transfer is still attached: it cannot be discarded.
    InUse { id: String },
    /// A file-system operation failed, or a write did not fit the blocks.
    Ingest(IngestError),
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::ParameterMismatch { id } => {
                write!(f, "transfer: {id} is open with other parameters")
            }
            TransferError::TooManyConnections { max } => {
                write!(f, "transfer: already {max} connections")
            }
            TransferError::Locked { id } => {
                write!(f, "transfer: {id} is held by another process")
            }
            TransferError::Incomplete { missing } => {
                write!(f, "transfer: {missing} blocks still missing")
            }
            TransferError::Failed(e) => write!(f, "transfer: failed: {e}"),
            TransferError::InUse { id } => write!(f, "transfer: {id} is in use"),
            TransferError::Ingest(e) => write!(f, "transfer: {e}"),
        }
    }
}

impl std::error::Error for TransferError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransferError::Failed(e) => Some(&**e),
            TransferError::Ingest(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> Self {
        TransferError::Ingest(e.into())
    }
}

impl From<IngestError> for TransferError {
    fn from(e: IngestError) -> Self {
        TransferError::Ingest(e)
    }
}

/// Outcome of [`Transfer::write_blocks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// This many blocks were written (0 when `Rewrite::Keep` found them all held).
    Stored { blocks: u64 },
    /// Another connection is writing one of these blocks, or the transfer is being verified:
    /// nothing was written (FastDP 2.5: such a copy is read and discarded).
    Busy,
}

/// Outcome of [`Transfer::claim`].
#[derive(Debug)]
pub enum Claim<'t> {
    /// Write the block through this, then [`BlockWriter::finish`] it.
    Write(BlockWriter<'t>),
    /// The block is held and `Rewrite::Keep` keeps it, or the transfer is complete.
    Held,
    /// Another connection is writing this block, or the transfer is being verified: read the
    /// copy and discard it.
    Busy,
}

/// Maps transfer ids to open transfers of one folder. Share it as an `Arc`.
#[derive(Debug)]
pub struct TransferRegistry {
    publisher: Publisher,
    slots: Mutex<HashMap<String, Slot>>,
    /// A slot left `Opening` or `Closing`.
    settled: Condvar,
}

#[derive(Debug)]
enum Slot {
    /// Its part is being opened (file I/O, done outside the registry lock).
    Opening,
    Open(Arc<Transfer>),
    /// Its last attachment left; its part is being synced and closed.
    Closing,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TransferRegistry {
    /// Transfers live in `publisher`'s working folder as `<id>.part` and `<id>.bitmap` and are
    /// published through it.
    pub fn new(publisher: Publisher) -> Arc<TransferRegistry> {
        Arc::new(TransferRegistry {
            publisher,
            slots: Mutex::new(HashMap::new()),
            settled: Condvar::new(),
        })
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Opens transfer `id` (1 to 128 of `[A-Za-z0-9_-]`, e.g. a UUID) or joins it if it is
    /// open, for one more connection. A transfer open with another `spec`, or left on disk with
    /// another size or block size, is [`TransferError::ParameterMismatch`]; one with
    /// `max_connections` attached already is [`TransferError::TooManyConnections`] (FastDP's
    /// `MaxConnections`); both are decided atomically with the join.
    pub fn attach(
        self: &Arc<Self>,
        id: &str,
        spec: TransferSpec,
        max_connections: usize,
    ) -> Result<Attachment, TransferError> {
        self.attach_as(id, spec, max_connections, None)
    }

    /// [`attach`](Self::attach) on behalf of `owner` (a peer's address, and the most space it
    /// may hold granted and not yet written over all its transfers: [`IngestDir::for_owner`]).
    /// The owner counts only when this call opens the transfer: its space is charged to
    /// whoever opened it.
    ///
    /// [`IngestDir::for_owner`]: super::IngestDir::for_owner
    pub fn attach_as(
        self: &Arc<Self>,
        id: &str,
        spec: TransferSpec,
        max_connections: usize,
        owner: Option<(&str, u64)>,
    ) -> Result<Attachment, TransferError> {
        let mut slots = lock(&self.slots);
        loop {
            match slots.get(id) {
                Some(Slot::Opening) | Some(Slot::Closing) => {
                    slots = self
                        .settled
                        .wait(slots)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(Slot::Open(t)) => {
                    if t.spec != spec {
                        return Err(TransferError::ParameterMismatch { id: id.to_owned() });
                    }
                    let n = t.attached.load(Ordering::Acquire);
                    if n >= max_connections {
                        return Err(TransferError::TooManyConnections {
                            max: max_connections,
                        });
                    }
                    t.attached.store(n + 1, Ordering::Release);
                    return Ok(Attachment {
                        registry: Arc::clone(self),
                        transfer: Some(Arc::clone(t)),
                    });
                }
                None => break,
            }
        }
        if max_connections == 0 {
            return Err(TransferError::TooManyConnections { max: 0 });
        }
        slots.insert(id.to_owned(), Slot::Opening);
        drop(slots);
        let opened = Transfer::open(self.publisher.clone(), id, spec, owner);
        let mut slots = lock(&self.slots);
        self.settled.notify_all();
        match opened {
            Ok(t) => {
                let t = Arc::new(t);
                slots.insert(id.to_owned(), Slot::Open(Arc::clone(&t)));
                Ok(Attachment {
                    registry: Arc::clone(self),
                    transfer: Some(t),
                })
            }
            Err(e) => {
                slots.remove(id);
                Err(e)
            }
        }
    }

    /// Whether `id` is open in this process.
    pub fn is_open(&self, id: &str) -> bool {
        lock(&self.slots).contains_key(id)
    }

    /// Deletes what transfer `id` left on disk (a sender starting over, a retention sweep).
    /// Refused while it is attached.
    pub fn discard(&self, id: &str) -> Result<(), TransferError> {
        let slots = lock(&self.slots);
        if slots.contains_key(id) {
            return Err(TransferError::InUse { id: id.to_owned() });
        }
        // The registry lock is held: no attach of this id can open it meanwhile.
        Part::remove(self.publisher.ingest(), id).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => TransferError::Locked { id: id.to_owned() },
            _ => e.into(),
        })
    }

    fn detach(&self, t: Arc<Transfer>) {
        let mut slots = lock(&self.slots);
        if t.attached.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(Slot::Open(open)) = slots.get(&t.id) else {
            return;
        };
        if !Arc::ptr_eq(open, &t) {
            return;
        }
        let Some(Slot::Open(open)) = slots.insert(t.id.clone(), Slot::Closing) else {
            return;
        };
        drop(slots);
        let id = t.id.clone();
        // The last references: the part syncs and closes outside the registry lock.
        drop(open);
        drop(t);
        let mut slots = lock(&self.slots);
        slots.remove(&id);
        self.settled.notify_all();
    }
}

/// One connection's hold on a transfer. Dereferences to the [`Transfer`]; dropping it detaches,
/// and the last one to go syncs and closes the part.
#[derive(Debug)]
pub struct Attachment {
    registry: Arc<TransferRegistry>,
    /// Always `Some` until dropped.
    transfer: Option<Arc<Transfer>>,
}

impl std::ops::Deref for Attachment {
    type Target = Transfer;

    fn deref(&self) -> &Transfer {
        self.transfer.as_deref().expect("attached until dropped")
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(t) = self.transfer.take() {
            self.registry.detach(t);
        }
    }
}

/// One shared transfer: a part several connections write at once. Reached through an
/// [`Attachment`]; every method takes `&self`.
#[derive(Debug)]
pub struct Transfer {
    id: String,
    spec: TransferSpec,
    part: Part,
    publisher: Publisher,
    /// Attachments; changed under the registry lock.
    attached: AtomicUsize,
    phase: Mutex<TransferState>,
    phase_changed: Condvar,
}

impl Transfer {
    fn open(
        publisher: Publisher,
        id: &str,
        spec: TransferSpec,
        owner: Option<(&str, u64)>,
    ) -> Result<Transfer, TransferError> {
        let mismatch = || TransferError::ParameterMismatch { id: id.to_owned() };
        if let Some(on_disk) = publisher.ingest().peek_resumable(id) {
            if on_disk != (spec.size, spec.block_size) {
                return Err(mismatch());
            }
        }
        let owner_ingest = match owner {
            Some((who, max)) => publisher.ingest().for_owner(who, max),
            None => publisher.ingest().clone(),
        };
        let part = Part::open(
            owner_ingest,
            id,
            spec.size,
            spec.block_size,
            spec.preallocate,
        )
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => TransferError::Locked { id: id.to_owned() },
            _ => e.into(),
        })?;
        Ok(Transfer {
            id: id.to_owned(),
            spec,
            part,
            publisher,
            attached: AtomicUsize::new(1),
            phase: Mutex::new(TransferState::Open),
            phase_changed: Condvar::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> TransferSpec {
        self.spec
    }

    /// Number of blocks: `ceil(size / block_size)`.
    pub fn blocks(&self) -> u64 {
        self.part.geometry().blocks
    }

    /// Bytes block `i` holds (`block_size`, less for the file's tail; 0 past the end).
    pub fn block_len(&self, i: u64) -> u64 {
        let geo = self.part.geometry();
        if i >= geo.blocks {
            return 0;
        }
        geo.run_bytes(&(i..i + 1))
    }

    /// Connections attached now.
    pub fn connections(&self) -> usize {
        self.attached.load(Ordering::Acquire)
    }

    /// Claims block `i` to write it in pieces (a chunk decompressed on the fly). While the
    /// writer lives no other connection writes the block; dropped unfinished, it leaves the
    /// block missing, never half old and half new.
    pub fn claim(&self, i: u64, rewrite: Rewrite) -> Result<Claim<'_>, TransferError> {
        if i >= self.blocks() {
            return Err(invalid("ingest: block index out of range"));
        }
        match self.part.claim(i..i + 1, rewrite)? {
            Claimed::Runs(runs) => Ok(match runs.into_iter().next() {
                Some(run) => Claim::Write(BlockWriter {
                    transfer: self,
                    offset: self.part.geometry().offset(i),
                    len: self.block_len(i),
                    pos: 0,
                    run: Some(run),
                }),
                None => Claim::Held,
            }),
            Claimed::Busy => Ok(Claim::Busy),
            Claimed::Closed => Ok(self.closed()),
        }
    }

    /// Writes whole blocks from block `first` (the last may be the file's tail), positionally,
    /// from any thread: the run is claimed with one lock, written with one `pwrite` per run of
    /// blocks to write, and finished with one more lock. `Keep` skips blocks already held.
    pub fn write_blocks(
        &self,
        first: u64,
        data: &[u8],
        rewrite: Rewrite,
    ) -> Result<Wrote, TransferError> {
        let geo = self.part.geometry();
        let n = geo.run_len(first, data.len())?;
        let runs = match self.part.claim(first..first + n, rewrite)? {
            Claimed::Runs(runs) => runs,
            Claimed::Busy => return Ok(Wrote::Busy),
            Claimed::Closed => {
                return match self.closed() {
                    Claim::Held => Ok(Wrote::Stored { blocks: 0 }),
                    _ => Ok(Wrote::Busy),
                }
            }
        };
        let base = geo.offset(first);
        for run in &runs {
            let at = geo.offset(run.start);
            let start = (at - base) as usize;
            let piece = &data[start..start + geo.run_bytes(run) as usize];
            if let Err(e) = self.part.write_at(piece, at) {
                for r in &runs {
                    self.part.release(r);
                }
                return Err(e.into());
            }
        }
        self.part.finish(&runs);
        let blocks = runs.iter().map(|r| r.end - r.start).sum();
        Ok(Wrote::Stored { blocks })
    }

    /// What a claim gets once the transfer no longer takes writes.
    fn closed(&self) -> Claim<'static> {
        match self.state() {
            TransferState::Completed(_) => Claim::Held,
            _ => Claim::Busy,
        }
    }

    /// Makes every block written before this call durable (unless another connection began
    /// replacing it since): `fdatasync` of the part, then the bitmap written and synced. Calls
    /// from many connections at once share one `fdatasync` (group commit). After an error no
    /// block is reported durable any more.
    pub fn sync(&self) -> Result<(), TransferError> {
        Ok(self.part.sync()?)
    }

    /// Whether block `i` is written (maybe not durable yet).
    pub fn is_written(&self, i: u64) -> bool {
        self.part.state().is_written(i)
    }

    /// Whether block `i` is durable: its bytes and its bit are synced.
    pub fn is_durable(&self, i: u64) -> bool {
        self.part.state().is_durable(i)
    }

    /// Moves the durable blocks of `pending` (a connection's blocks not acknowledged yet) into
    /// the returned list, in one look: what may be acknowledged now.
    pub fn take_durable(&self, pending: &mut Vec<u64>) -> Vec<u64> {
        let st = self.part.state();
        let mut durable = Vec::new();
        pending.retain(|&i| {
            let d = st.is_durable(i);
            if d {
                durable.push(i);
            }
            !d
        });
        durable
    }

    /// Number of blocks written.
    pub fn received(&self) -> u64 {
        self.part.state().received()
    }

    /// Every block is written.
    pub fn is_complete(&self) -> bool {
        self.received() == self.blocks()
    }

    /// Up to `limit` half-open ranges of durable blocks, in order (FastDP's `Have`).
    pub fn durable_ranges(&self, limit: usize) -> Vec<Range<u64>> {
        self.part.held_ranges(true, limit)
    }

    /// Up to `limit` half-open ranges of blocks not written, in order (filestorage's
    /// `missing`, or what to hand out to connections).
    pub fn missing_ranges(&self, limit: usize) -> Vec<Range<u64>> {
        self.part.missing_ranges(limit)
    }

    /// Hashes the stored prefix on a background thread while blocks arrive, so the commit
    /// reads only what the prefix has not reached. A `Replace` of a block in that prefix
    /// restarts the hashing from there. Idempotent.
    pub fn hash_in_background(&self) -> Result<(), TransferError> {
        Ok(self.part.hash_in_background()?)
    }

    /// The transfer's state now.
    pub fn state(&self) -> TransferState {
        lock(&self.phase).clone()
    }

    /// The state once it is not `Verifying`, or after `timeout` (a connection waiting for
    /// another's verification sends keepalives meanwhile).
    pub fn wait_outcome(&self, timeout: Duration) -> TransferState {
        let deadline = Instant::now() + timeout;
        let mut phase = lock(&self.phase);
        while matches!(*phase, TransferState::Verifying) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            phase = self
                .phase_changed
                .wait_timeout(phase, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        phase.clone()
    }

    /// Verifies the complete transfer against its spec's expectation, publishes it under
    /// `name` with `policy` and registers it with the catalog, exactly once: a second caller
    /// (another connection that saw the last block) waits for the first and gets the same
    /// outcome. Blocks still missing: [`TransferError::Incomplete`], nothing changes.
    pub fn commit(&self, name: &str, policy: Collision) -> Result<Arc<Publication>, TransferError> {
        let mut phase = lock(&self.phase);
        loop {
            match &*phase {
                TransferState::Completed(p) => return Ok(Arc::clone(p)),
                TransferState::Failed(e) => return Err(TransferError::Failed(Arc::clone(e))),
                TransferState::Verifying => {
                    phase = self
                        .phase_changed
                        .wait(phase)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                TransferState::Open => break,
            }
        }
        if !super::is_plain_name(name) {
            return Err(IngestError::BadName.into());
        }
        if let Err(missing) = self.part.close_if_complete() {
            return Err(TransferError::Incomplete { missing });
        }
        *phase = TransferState::Verifying;
        drop(phase);
        let outcome = match self.part.commit(name, self.spec.expect, policy) {
            Ok(c) => TransferState::Completed(Arc::new(self.publisher.list(c))),
            Err(e) => {
                if matches!(e, IngestError::Mismatch { .. }) {
                    self.part.discard();
                }
                TransferState::Failed(Arc::new(e))
            }
        };
        let mut phase = lock(&self.phase);
        *phase = outcome.clone();
        self.phase_changed.notify_all();
        match outcome {
            TransferState::Completed(p) => Ok(p),
            TransferState::Failed(e) => Err(TransferError::Failed(e)),
            _ => unreachable!("set just above"),
        }
    }

    #[cfg(test)]
    pub(super) fn probe(&self) -> &super::part::Probe {
        &self.part.probe
    }
}

/// Writes one claimed block in pieces, front to back, at its offset in the part.
#[derive(Debug)]
pub struct BlockWriter<'t> {
    transfer: &'t Transfer,
    /// Byte offset of the block in the part.
    offset: u64,
    /// Bytes the block holds.
    len: u64,
    /// Bytes written so far.
    pos: u64,
    /// The claimed run; None once finished.
    run: Option<Range<u64>>,
}

impl BlockWriter<'_> {
    /// Bytes the block holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a block of zero bytes (never: blocks of an empty file do not exist).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.pos
    }

    /// Writes the next piece of the block with one `pwrite`. More than the block holds is
    /// `InvalidInput` and writes nothing.
    pub fn write(&mut self, data: &[u8]) -> Result<(), TransferError> {
        if data.len() as u64 > self.len - self.pos {
            return Err(invalid("ingest: more bytes than the block holds"));
        }
        self.transfer.part.write_at(data, self.offset + self.pos)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    /// The whole block is written: it becomes written (durable at the next sync). A block
    /// not written to its end is `InvalidInput` and stays missing.
    pub fn finish(mut self) -> Result<(), TransferError> {
        if self.pos != self.len {
            return Err(invalid("ingest: block not written to its end"));
        }
        if let Some(run) = self.run.take() {
            self.transfer.part.finish(&[run]);
        }
        Ok(())
    }
}

impl Drop for BlockWriter<'_> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            self.transfer.part.release(&run);
        }
    }
}

fn invalid(msg: &'static str) -> TransferError {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg).into()
}

#[cfg(test)]
mod tests {
    use super::super::test_dir::{list, TempDir};
    use super::super::{IngestDir, Listed, Outcome};
    use super::*;
    use crate::catalog::{CatalogHandle, CatalogOptions};
    use sha2::{Digest, Sha256};
    use std::sync::atomic::Ordering::SeqCst;

    const BS: u32 = 4096;

    fn content(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 4099) as u8 ^ salt).collect()
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn spec_for(data: &[u8]) -> TransferSpec {
        TransferSpec {
            size: data.len() as u64,
            block_size: BS,
            expect: Expect::Sha256(sha(data)),
            preallocate: false,
        }
    }

    /// A registry publishing into a catalog folder.
    fn setup(what: &str) -> (TempDir, Arc<TransferRegistry>) {
        let t = TempDir::new(what);
        let catalog = CatalogHandle::open(&t.0, CatalogOptions::default()).unwrap();
        let work = catalog.state_dir().join("ingest").join("shared");
        let ingest = IngestDir::new(catalog.root(), &work).unwrap();
        (t, TransferRegistry::new(Publisher::new(ingest, catalog)))
    }

    fn block(data: &[u8], i: u64) -> &[u8] {
        let s = i as usize * BS as usize;
        &data[s..(s + BS as usize).min(data.len())]
    }

    /// Every block of `data` written from `threads` threads, each over its own order and
    /// mixing single blocks, runs and pieces, then committed by all of them at once.
    fn fill_from_threads(threads: u64, overlap: bool) {
        let (t, reg) = setup(&format!("shared-fill-{threads}-{overlap}"));
        // A short tail block, and enough blocks for every thread to meet the others.
        let data = Arc::new(content(97 * BS as usize + 1234, threads as u8));
        let blocks = (data.len() as u64).div_ceil(u64::from(BS));
        let spec = spec_for(&data);
        let handles: Vec<_> = (0..threads)
            .map(|n| {
                let (reg, data) = (Arc::clone(&reg), Arc::clone(&data));
                std::thread::spawn(move || {
                    let a = reg.attach("fill", spec, 8).unwrap();
                    // Interleaved: thread n takes blocks n, n+threads, ...; overlapping: every
                    // thread writes every block, starting at a different place.
                    let mine: Vec<u64> = if overlap {
                        (0..blocks).map(|k| (k + n * 13) % blocks).collect()
                    } else {
                        (n..blocks).step_by(threads as usize).collect()
                    };
                    let rewrite = if n % 2 == 0 {
                        Rewrite::Keep
                    } else {
                        Rewrite::Replace
                    };
                    for (k, &i) in mine.iter().enumerate() {
                        match k % 3 {
                            // A run of two blocks when the next one is ours too.
                            0 if mine.get(k + 1) == Some(&(i + 1)) => {
                                let end = ((i + 2) * u64::from(BS)).min(data.len() as u64);
                                let run = &data[(i * u64::from(BS)) as usize..end as usize];
                                let _ = a.write_blocks(i, run, rewrite).unwrap();
                            }
                            1 => match a.claim(i, rewrite).unwrap() {
                                Claim::Write(mut w) => {
                                    let b = block(&data, i);
                                    let cut = b.len() / 3;
                                    w.write(&b[..cut]).unwrap();
                                    w.write(&b[cut..]).unwrap();
                                    w.finish().unwrap();
                                }
                                Claim::Held | Claim::Busy => {}
                            },
                            _ => {
                                let _ = a.write_blocks(i, block(&data, i), rewrite).unwrap();
                            }
                        }
                        if k % 16 == 15 {
                            a.sync().unwrap();
                        }
                    }
                    a.sync().unwrap();
                    // A block skipped as busy may still be missing: another thread is on it.
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !a.is_complete() {
                        assert!(Instant::now() < deadline, "{:?}", a.missing_ranges(8));
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let p = a.commit("shared.bin", Collision::Numbered).unwrap();
                    assert!(matches!(a.state(), TransferState::Completed(_)));
                    p
                })
            })
            .collect();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // One publication for all, served under the hash it was verified with.
        for p in &outcomes {
            assert!(Arc::ptr_eq(p, &outcomes[0]));
        }
        let c = &outcomes[0].committed;
        assert_eq!(c.outcome, Outcome::Created);
        assert_eq!(c.sha256, Some(sha(&data)));
        assert_eq!(std::fs::read(t.0.join("shared.bin")).unwrap(), *data);
        assert_eq!(outcomes[0].entry().unwrap().sha256, sha(&data));
        assert!(!reg.is_open("fill"));
        let work = reg.publisher().ingest().work().to_path_buf();
        assert_eq!(list(&work), Vec::<String>::new());
    }

    #[test]
    fn two_threads_fill_one_transfer_in_interleaved_blocks() {
        fill_from_threads(2, false);
    }

    #[test]
    fn two_threads_fill_one_transfer_in_overlapping_blocks() {
        fill_from_threads(2, true);
    }

    #[test]
    fn eight_threads_fill_one_transfer_in_interleaved_blocks() {
        fill_from_threads(8, false);
    }

    #[test]
    fn eight_threads_fill_one_transfer_in_overlapping_blocks() {
        fill_from_threads(8, true);
    }

    #[test]
    fn a_crash_keeps_exactly_the_synced_blocks() {
        let (_t, reg) = setup("shared-crash");
        let data = content(20 * BS as usize + 5, 1);
        let spec = spec_for(&data);
        let a = reg.attach("crash", spec, 8).unwrap();
        let b = reg.attach("crash", spec, 8).unwrap();
        for i in [0, 1, 2, 7, 20] {
            a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
        }
        b.sync().unwrap();
        for i in [3, 8, 9] {
            b.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
        }
        assert!(a.is_durable(7) && !a.is_durable(8) && a.is_written(8));
        assert_eq!(a.durable_ranges(10), [0..3, 7..8, 20..21]);
        // Killed: no final sync.
        a.probe().crash.store(true, SeqCst);
        drop(a);
        drop(b);
        assert!(!reg.is_open("crash"));
        let a = reg.attach("crash", spec, 8).unwrap();
        assert_eq!(a.durable_ranges(10), [0..3, 7..8, 20..21]);
        assert_eq!(a.missing_ranges(10), [3..7, 8..20]);
        assert_eq!(a.received(), 5);
        // A clean close keeps written blocks too.
        a.write_blocks(3, block(&data, 3), Rewrite::Keep).unwrap();
        drop(a);
        let a = reg.attach("crash", spec, 8).unwrap();
        assert!(a.is_durable(3));
        for r in a.missing_ranges(100) {
            for i in r {
                a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
            }
        }
        let p = a.commit("crash.bin", Collision::Tagged).unwrap();
        assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
    }

    #[test]
    fn durability_is_never_reported_before_its_fdatasync() {
        let (_t, reg) = setup("shared-order");
        let data = Arc::new(content(64 * BS as usize, 2));
        let spec = spec_for(&data);
        let hold = reg.attach("order", spec, 8).unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|n| {
                let (reg, data) = (Arc::clone(&reg), Arc::clone(&data));
                std::thread::spawn(move || {
                    let a = reg.attach("order", spec, 8).unwrap();
                    let mut pending: Vec<(u64, u64)> = Vec::new();
                    for i in (n..64).step_by(4) {
                        a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
                        // Syncs begun before this point may not cover the block.
                        pending.push((i, a.probe().part_syncs_begun.load(SeqCst)));
                        if i % 3 == 0 {
                            a.sync().unwrap();
                        }
                        let mut ids: Vec<u64> = pending.iter().map(|p| p.0).collect();
                        let acked = a.take_durable(&mut ids);
                        let done = a.probe().part_syncs_done.load(SeqCst);
                        for i in &acked {
                            let begun = pending.iter().find(|p| p.0 == *i).unwrap().1;
                            assert!(done > begun, "block {i} reported durable before a sync");
                        }
                        pending.retain(|p| !acked.contains(&p.0));
                    }
                    a.sync().unwrap();
                    let mut ids: Vec<u64> = pending.iter().map(|p| p.0).collect();
                    assert_eq!(a.take_durable(&mut ids).len(), pending.len());
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(hold.durable_ranges(4), vec![0..64]);
    }

    #[test]
    fn a_failed_fdatasync_reports_nothing_durable_and_poisons_the_transfer() {
        let (_t, reg) = setup("shared-eio");
        let data = content(8 * BS as usize, 3);
        let spec = spec_for(&data);
        let a = reg.attach("eio", spec, 8).unwrap();
        a.write_blocks(0, block(&data, 0), Rewrite::Keep).unwrap();
        a.sync().unwrap();
        a.write_blocks(1, block(&data, 1), Rewrite::Keep).unwrap();
        a.probe().fail_part_syncs.store(1, SeqCst);
        let e = a.sync().unwrap_err();
        assert!(e.to_string().contains("Input/output error"), "{e}");
        assert!(a.is_durable(0) && !a.is_durable(1));
        // The kernel may have dropped the pages: no later sync may claim them.
        let e = a.sync().unwrap_err();
        assert!(e.to_string().contains("no longer trusted"), "{e}");
        a.probe().crash.store(true, SeqCst);
        drop(a);
        let a = reg.attach("eio", spec, 8).unwrap();
        assert_eq!(a.durable_ranges(8), vec![0..1]);
    }

    #[test]
    fn concurrent_syncs_share_one_fdatasync() {
        let (_t, reg) = setup("shared-group");
        let data = Arc::new(content(8 * BS as usize, 4));
        let spec = spec_for(&data);
        let first = reg.attach("group", spec, 8).unwrap();
        let (open_gate, gate) = std::sync::mpsc::channel();
        *first.probe().gate.lock().unwrap() = Some(gate);
        first
            .write_blocks(0, block(&data, 0), Rewrite::Keep)
            .unwrap();
        std::thread::scope(|s| {
            // Held inside its fdatasync until the others wait behind it.
            let leader = s.spawn(|| first.sync().unwrap());
            while first.probe().part_syncs_begun.load(SeqCst) == 0 {
                std::thread::yield_now();
            }
            let others: Vec<_> = (1..8u64)
                .map(|i| {
                    let (reg, data) = (Arc::clone(&reg), Arc::clone(&data));
                    s.spawn(move || {
                        let a = reg.attach("group", spec, 8).unwrap();
                        a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
                        a.sync().unwrap();
                        assert!(a.is_durable(i));
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            while first.probe().sync_waits.load(SeqCst) < 7 {
                assert!(Instant::now() < deadline, "writers never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
            open_gate.send(()).unwrap();
            leader.join().unwrap();
            for o in others {
                o.join().unwrap();
            }
        });
        // The leader's own sync, then one for the seven that waited behind it.
        assert_eq!(first.probe().part_syncs_done.load(SeqCst), 2);
        assert_eq!(first.durable_ranges(8), vec![0..8]);
    }

    /// A replacement claimed while a sync is between its batch and its fdatasync takes its
    /// block out of that batch: the old copy was synced, the new one is not written yet.
    #[test]
    fn a_block_replaced_while_a_sync_runs_is_left_out_of_that_sync() {
        let (_t, reg) = setup("shared-replace-mid-sync");
        let data = content(3 * BS as usize, 9);
        let spec = spec_for(&data);
        let a = reg.attach("midsync", spec, 8).unwrap();
        a.write_blocks(0, &data, Rewrite::Keep).unwrap();
        let (open_gate, gate) = std::sync::mpsc::channel();
        *a.probe().gate.lock().unwrap() = Some(gate);
        std::thread::scope(|s| {
            let sync = s.spawn(|| a.sync().unwrap());
            while a.probe().part_syncs_begun.load(SeqCst) == 0 {
                std::thread::yield_now();
            }
            let Claim::Write(mut w) = a.claim(1, Rewrite::Replace).unwrap() else {
                panic!("replace claims a written block");
            };
            w.write(&block(&data, 1)[..10]).unwrap();
            drop(w);
            open_gate.send(()).unwrap();
            sync.join().unwrap();
        });
        assert!(!a.is_durable(1) && !a.is_written(1));
        assert_eq!(a.durable_ranges(4), [0..1, 2..3]);
        // What the bitmap on disk says: killed now, the torn block 1 is not claimed.
        a.probe().crash.store(true, SeqCst);
        drop(a);
        let a = reg.attach("midsync", spec, 8).unwrap();
        assert_eq!(a.durable_ranges(4), [0..1, 2..3]);
    }

    #[test]
    fn joining_checks_parameters_and_the_connection_cap() {
        let (_t, reg) = setup("shared-join");
        let data = content(10_000, 5);
        let spec = spec_for(&data);
        let held: Vec<_> = (0..8)
            .map(|_| reg.attach("join", spec, 8).unwrap())
            .collect();
        assert_eq!(held[0].connections(), 8);
        let e = reg.attach("join", spec, 8).unwrap_err();
        assert!(
            matches!(e, TransferError::TooManyConnections { max: 8 }),
            "{e}"
        );
        for other in [
            TransferSpec {
                size: 10_001,
                ..spec
            },
            TransferSpec {
                block_size: 8192,
                ..spec
            },
            TransferSpec {
                expect: Expect::Sha256([0; 32]),
                ..spec
            },
        ] {
            let e = reg.attach("join", other, 8).unwrap_err();
            assert!(matches!(e, TransferError::ParameterMismatch { .. }), "{e}");
        }
        assert!(matches!(
            reg.discard("join"),
            Err(TransferError::InUse { .. })
        ));
        drop(held);
        // Left on disk with another size: still a mismatch, until discarded.
        let e = reg
            .attach("join", TransferSpec { size: 5, ..spec }, 8)
            .unwrap_err();
        assert!(matches!(e, TransferError::ParameterMismatch { .. }), "{e}");
        reg.discard("join").unwrap();
        let a = reg
            .attach("join", TransferSpec { size: 5, ..spec }, 8)
            .unwrap();
        assert_eq!(a.blocks(), 1);
        assert_eq!(a.block_len(0), 5);
        // Another process's lock on a part is reported as such.
        drop(a);
        let other = reg
            .publisher()
            .ingest()
            .begin_resumable("join", 5, BS)
            .unwrap();
        let e = reg
            .attach("join", TransferSpec { size: 5, ..spec }, 8)
            .unwrap_err();
        assert!(matches!(e, TransferError::Locked { .. }), "{e}");
        drop(other);
        for id in ["", "../x", "a.b"] {
            let e = reg.attach(id, spec, 8).unwrap_err();
            assert!(matches!(e, TransferError::Ingest(_)), "{e}");
            assert!(!reg.is_open(id));
        }
    }

    #[test]
    fn claims_exclude_each_other_and_an_unfinished_block_stays_missing() {
        let (_t, reg) = setup("shared-claim");
        let data = content(4 * BS as usize, 6);
        let spec = spec_for(&data);
        let a = reg.attach("claim", spec, 8).unwrap();
        let b = reg.attach("claim", spec, 8).unwrap();
        let Claim::Write(mut w) = a.claim(1, Rewrite::Replace).unwrap() else {
            panic!("block 1 is free");
        };
        assert!(matches!(b.claim(1, Rewrite::Replace).unwrap(), Claim::Busy));
        let run = &data[..3 * BS as usize];
        assert_eq!(b.write_blocks(0, run, Rewrite::Keep).unwrap(), Wrote::Busy);
        assert!(w.write(&vec![0; BS as usize + 1]).is_err());
        w.write(&block(&data, 1)[..100]).unwrap();
        assert!(w.finish().is_err()); // not written to its end: stays missing
        assert!(!a.is_written(1));
        let Claim::Write(mut w) = b.claim(1, Rewrite::Keep).unwrap() else {
            panic!("block 1 is free again");
        };
        w.write(&block(&data, 1)[..100]).unwrap();
        drop(w); // a connection cut mid-chunk
        assert!(!a.is_written(1));
        assert_eq!(
            b.write_blocks(0, run, Rewrite::Keep).unwrap(),
            Wrote::Stored { blocks: 3 }
        );
        // Keep: a held block keeps its first copy.
        assert!(matches!(b.claim(1, Rewrite::Keep).unwrap(), Claim::Held));
        assert_eq!(
            a.write_blocks(0, &vec![9; BS as usize], Rewrite::Keep)
                .unwrap(),
            Wrote::Stored { blocks: 0 }
        );
        assert!(a.claim(4, Rewrite::Keep).is_err());
        assert!(a.write_blocks(3, &[1; 10], Rewrite::Keep).is_err());
        a.write_blocks(3, block(&data, 3), Rewrite::Keep).unwrap();
        let p = a.commit("claim.bin", Collision::Tagged).unwrap();
        assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
        // Completed: late copies are held, never written.
        assert!(matches!(b.claim(0, Rewrite::Replace).unwrap(), Claim::Held));
    }

    #[test]
    fn a_replacement_clears_the_durable_bit_before_its_first_byte() {
        let (_t, reg) = setup("shared-replace");
        let data = content(3 * BS as usize, 7);
        let spec = spec_for(&data);
        let a = reg.attach("replace", spec, 8).unwrap();
        a.write_blocks(0, &vec![0xee; 3 * BS as usize], Rewrite::Keep)
            .unwrap();
        a.sync().unwrap();
        assert_eq!(a.durable_ranges(4), vec![0..3]);
        let Claim::Write(mut w) = a.claim(1, Rewrite::Replace).unwrap() else {
            panic!("replace claims a held block");
        };
        assert!(!a.is_durable(1) && !a.is_written(1));
        w.write(&block(&data, 1)[..10]).unwrap();
        // Killed mid-rewrite: the torn block is not claimed on disk.
        a.probe().crash.store(true, SeqCst);
        drop(w);
        drop(a);
        let a = reg.attach("replace", spec, 8).unwrap();
        assert_eq!(a.durable_ranges(4), [0..1, 2..3]);
        for i in 0..3 {
            a.write_blocks(i, block(&data, i), Rewrite::Replace)
                .unwrap();
        }
        let p = a.commit("replace.bin", Collision::Tagged).unwrap();
        assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
    }

    #[test]
    fn background_hash_restarts_when_a_hashed_block_is_replaced() {
        let (_t, reg) = setup("shared-bghash");
        // Three hashing chunks and a tail.
        let data = content(3 * (1 << 20) + 777, 8);
        let blocks = (data.len() as u64).div_ceil(u64::from(BS));
        let a = reg.attach("bg", spec_for(&data), 8).unwrap();
        a.hash_in_background().unwrap();
        a.hash_in_background().unwrap();
        let bad = [0, 5, 300, blocks - 1];
        for i in 0..blocks {
            let b = block(&data, i);
            let copy = if bad.contains(&i) {
                vec![0x11; b.len()]
            } else {
                b.to_vec()
            };
            a.write_blocks(i, &copy, Rewrite::Keep).unwrap();
        }
        // The wrong copies are replaced, in the hashed prefix and past it, out of order.
        for i in [300, 0, blocks - 1, 5] {
            assert_eq!(
                a.write_blocks(i, block(&data, i), Rewrite::Replace)
                    .unwrap(),
                Wrote::Stored { blocks: 1 }
            );
        }
        let p = a.commit("bg.bin", Collision::Tagged).unwrap();
        assert_eq!(p.committed.sha256, Some(sha(&data)));
    }

    #[test]
    fn a_mismatch_fails_every_attachment_and_deletes_the_part() {
        let (t, reg) = setup("shared-mismatch");
        let data = content(2 * BS as usize, 9);
        let spec = TransferSpec {
            expect: Expect::Sha256([0x42; 32]),
            ..spec_for(&data)
        };
        let a = reg.attach("bad", spec, 8).unwrap();
        let b = reg.attach("bad", spec, 8).unwrap();
        let e = a.commit("bad.bin", Collision::Tagged).unwrap_err();
        assert!(matches!(e, TransferError::Incomplete { missing: 2 }), "{e}");
        assert!(matches!(a.state(), TransferState::Open));
        a.write_blocks(0, &data, Rewrite::Keep).unwrap();
        let e = a.commit("bad.bin", Collision::Tagged).unwrap_err();
        let TransferError::Failed(why) = e else {
            panic!("{e}");
        };
        assert!(matches!(*why, IngestError::Mismatch { .. }), "{why}");
        assert!(matches!(
            b.wait_outcome(Duration::from_secs(5)),
            TransferState::Failed(_)
        ));
        assert!(matches!(
            b.commit("bad.bin", Collision::Tagged),
            Err(TransferError::Failed(_))
        ));
        assert!(matches!(b.claim(0, Rewrite::Replace).unwrap(), Claim::Busy));
        assert_eq!(list(&t.0), [".ferry"]);
        drop((a, b));
        // Attached again: from nothing.
        let a = reg.attach("bad", spec, 8).unwrap();
        assert_eq!(a.received(), 0);
    }

    #[test]
    fn an_empty_transfer_completes_at_once() {
        let (t, reg) = setup("shared-empty");
        let spec = spec_for(b"");
        let a = reg.attach("empty", spec, 1).unwrap();
        assert_eq!(a.blocks(), 0);
        assert!(a.is_complete());
        assert_eq!(a.durable_ranges(1), Vec::<Range<u64>>::new());
        let p = a.commit("empty.txt", Collision::Numbered).unwrap();
        assert!(matches!(p.listed, Listed::Entry(_)));
        assert_eq!(std::fs::read(t.0.join("empty.txt")).unwrap(), b"");
    }

    #[test]
    fn a_new_transfer_is_preallocated_or_refused_before_any_byte() {
        use std::os::unix::fs::MetadataExt;
        let (_t, reg) = setup("shared-prealloc");
        let spec = TransferSpec {
            size: 8 << 20,
            block_size: 1 << 20,
            expect: Expect::Nothing,
            preallocate: true,
        };
        let a = reg.attach("big", spec, 1).unwrap();
        let part = reg.publisher().ingest().work().join("big.part");
        let m = std::fs::metadata(&part).unwrap();
        assert_eq!(m.len(), 8 << 20);
        assert!(m.blocks() * 512 >= 8 << 20, "{} blocks", m.blocks());
        drop(a);
        // A petabyte fits no disk here: refused, nothing left behind.
        let huge = TransferSpec {
            size: 1 << 50,
            block_size: 1 << 31,
            ..spec
        };
        let e = reg.attach("huge", huge, 1).unwrap_err();
        assert!(
            matches!(e, TransferError::Ingest(IngestError::NoSpace))
                || e.to_string().contains("too large"),
            "{e}"
        );
        let work = reg.publisher().ingest().work().to_path_buf();
        assert_eq!(list(&work), ["big.bitmap", "big.part"]);
    }

    #[test]
    fn error_display_is_lowercase_and_prefixed() {
        let errs = [
            TransferError::ParameterMismatch { id: "x".into() },
            TransferError::TooManyConnections { max: 8 },
            TransferError::Locked { id: "x".into() },
            TransferError::Incomplete { missing: 1 },
            TransferError::Failed(Arc::new(IngestError::NoSpace)),
            TransferError::InUse { id: "x".into() },
            TransferError::Ingest(IngestError::BadName),
        ];
        for e in errs {
            let s = e.to_string();
            assert!(s.starts_with("transfer: "), "{s}");
        }
    }
}
