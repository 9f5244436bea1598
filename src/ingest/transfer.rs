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
use super::prefix_hash::Piece;
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
                    copy: self.part.copy_buffer_for(&run),
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
        let piece = |run: &Range<u64>| {
            let at = geo.offset(run.start);
            let start = (at - base) as usize;
            (at, &data[start..start + geo.run_bytes(run) as usize])
        };
        for run in &runs {
            let (at, bytes) = piece(run);
            if let Err(e) = self.part.write_at(bytes, at) {
                for r in &runs {
                    self.part.release(r);
                }
                return Err(e.into());
            }
        }
        self.part.finish_with(runs.iter().map(|r| {
            let (at, bytes) = piece(r);
            (r.clone(), Some(Piece::Borrowed(at, bytes)))
        }));
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

    #[cfg(test)]
    pub(super) fn space_promised(&self) -> Option<u64> {
        self.part.space_promised()
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
    /// A copy of what was written, for the background hasher, when the block is likely to
    /// extend the hashed prefix once finished (it then needs no reading back).
    copy: Option<Vec<u8>>,
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
        if let Some(c) = self.copy.as_mut() {
            c.extend_from_slice(data);
        }
        Ok(())
    }

    /// The whole block is written: it becomes written (durable at the next sync). A block
    /// not written to its end is `InvalidInput` and stays missing.
    pub fn finish(mut self) -> Result<(), TransferError> {
        if self.pos != self.len {
            return Err(invalid("ingest: block not written to its end"));
        }
        if let Some(run) = self.run.take() {
            let piece = self.copy.take().map(|c| Piece::Owned(self.offset, c));
            self.transfer.part.finish_with([(run, piece)]);
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
mod tests;
