//! The FastDP server service: one [`ServerConnection`] machine per connection, driven over the
//! ready stream the server core hands it, with every decision the machine leaves to its driver
//! (fastdp.md 2, 3, 4, 1.2):
//!
//! ```text
//!  handshake, header (machine) ─┬─ push header ─► decide: done record? too-large? busy? no-space?
//!                               │                 parameter-mismatch? attach (too-many-connections)
//!                               │                 ─► reply with Have ─► receive chunks (ChunkSink)
//!                               │                 ─► FIN: Ack ─► Verify: one commit per transfer,
//!                               │                    keepalive Acks ─► Complete (F18) / Error
//!                               ├─ pull request ─► find the entry (not-found, ambiguous) ─► join
//!                               │                 the pull's shared plan ─► chunks from the mapping
//!                               │                 (CRC computed as they go), Acks, FIN, Complete
//!                               └─ 1.1.0 header ─► size and space ─► chunks into a temporary
//!                                                 (hashed) ─► checksum ─► decode (capped) into a
//!                                                 second one ─► commit ─► success line (F35)
//! ```
//!
//! Push transfers live in the ingest work folder `.ferry/ingest/fastdp/` as the registry's
//! `<id>.part` and `<id>.bitmap` plus this driver's `<id>.state` and `<id>.done`
//! ([`super::state`]); 1.1.0 temporaries are unnamed (`O_TMPFILE`), so a crash leaves nothing.
//! Pull state is in memory only, kept 60 s after its last connection.
//!
//! Out of scope: listening and connection set-up (the server core), the protocol's byte rules
//! (the machines), the `.part` itself (the transfer registry).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::link::{Got, Link, Wake, Wakers};
use super::receive::{ChunkSink, LocalError, WriteGate};
use super::state::{self, StateFile};
use crate::catalog::{CatalogHandle, Entry, MappedFile};
use crate::dir::Dir;
use crate::ingest::{
    ledger, Attachment, Collision, Expect, IngestDir, IngestError, Publisher, StreamSink,
    TransferError, TransferRegistry, TransferSpec, TransferState,
};
use crate::proto::budget::{Grant, MemoryBudget};
use crate::proto::fastdp::connection::{Event, SendChunk};
use crate::proto::fastdp::crc::Crc32c;
use crate::proto::fastdp::frame::{Compress, Geometry};
use crate::proto::fastdp::http::{Refusal, RequestRules};
use crate::proto::fastdp::messages::{
    one_chunk_for, Checksum, ErrorCode, ErrorMsg, Have, Header, PullReply, PullRequest, PullTarget,
    TransferId, V110Compress, V110Header, DEFAULT_MAX_CONNECTIONS, DEFAULT_RECONNECT_BYTES,
    MAX_HAVE_RANGES,
};
use crate::proto::fastdp::plan::{AckOutcome, SendPlan};
use crate::proto::fastdp::schedule::Limits;
use crate::proto::fastdp::server::{ServerConfig, ServerConnection};
use crate::proto::fastdp::v110::{DecodeError, Decoder, V110Error};
use crate::proto::fastdp::zstd_chunk::ChunkCompressor;
use crate::server::{ConnCtx, Peer, Service};
use crate::transport::Stream;

/// How long pull state outlives its last connection (fastdp.md 3).
const PULL_LINGER: Duration = Duration::from_secs(60);
/// How often expired push state is swept (4.1: at start and hourly).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Pieces in which pull chunks and 1.1.0 temporaries are read.
const PIECE: usize = 256 * 1024;
/// zstd level of pull chunks (zstd's default).
const ZSTD_LEVEL: i32 = 3;
/// Bytes of per-chunk bookkeeping (a push's block bitmaps, a pull's plan) all open transfers
/// may hold at once: a transfer whose bookkeeping does not fit is refused `busy`. A push of
/// 64 GiB in chunks of 4096 bytes needs 6 MiB (three bitmaps of 16 Mi chunks); one in the
/// default chunks of 4 MiB, 6 KiB.
const MAX_BOOKKEEPING: u64 = 64 << 20;

/// Bookkeeping bytes of a push of `full_chunk` chunks: the part's written and durable bitmaps
/// and a sync batch's copy (ingest's part), one bit per chunk each.
fn push_bookkeeping(full_chunk: u32) -> u64 {
    3 * u64::from(full_chunk).div_ceil(8)
}

/// Bookkeeping bytes of a pull of `full_chunk` chunks: the plan's done bitmap.
fn pull_bookkeeping(full_chunk: u32) -> u64 {
    u64::from(full_chunk).div_ceil(64) * 8
}

/// FastDP server settings (fastdp.md 2.12, 4.1).
#[derive(Clone, Debug)]
pub struct FastdpConfig {
    /// Request path and whether 1.1.0 senders are accepted (default `/fastdp-endpoint`, on).
    pub rules: RequestRules,
    /// Connection deadlines (head 10 s, idle 60 s, stall 64 KiB per 30 s, keepalive 10 s).
    pub limits: Limits,
    /// Largest FullSize accepted (`too-large`). Default 64 GiB.
    pub max_file_size: u64,
    /// Space left free on the folder's file system (`no-space`). Default 64 MiB.
    pub disk_reserve: u64,
    /// Space one peer address may hold granted and not yet written over all the transfers it
    /// opened (`no-space`). Default 1 GiB, as TEJ's.
    pub max_peer_reserve: u64,
    /// `MaxConnections` per transfer (`too-many-connections`). Default 8.
    pub max_connections: u32,
    /// Transfers open at once, push and pull (`busy`). Default 64.
    pub max_transfers: usize,
    /// How long partial state and completed TransferIds are kept. Default 24 h.
    pub retention: Duration,
    /// Pull chunks of a plain connection go out with `send(2)` from the mapping after a pread
    /// pass for their CRC, instead of from the pread buffer itself. Default off: measured
    /// slower here (README, FastDP choices).
    pub pull_zero_copy: bool,
    /// Log transfers and errors on stderr.
    pub verbose: bool,
}

impl Default for FastdpConfig {
    fn default() -> Self {
        FastdpConfig {
            rules: RequestRules::default(),
            limits: Limits::default(),
            max_file_size: 64 << 30,
            disk_reserve: 64 << 20,
            max_peer_reserve: 1 << 30,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_transfers: 64,
            retention: Duration::from_secs(24 * 3600),
            pull_zero_copy: false,
            verbose: false,
        }
    }
}

/// A push transfer open in this process, with its connections.
struct PushShared {
    header: Header,
    state: Arc<StateFile>,
    gate: Arc<WriteGate>,
    conns: usize,
    /// Its bookkeeping's share of [`MAX_BOOKKEEPING`], given back when it leaves the map.
    _books: Grant,
}

/// A pull in progress (or finished less than [`PULL_LINGER`] ago).
struct PullShared {
    /// Its plan's share of [`MAX_BOOKKEEPING`].
    _books: Grant,
    entry: Arc<Entry>,
    file: Arc<MappedFile>,
    geometry: Geometry,
    compress: Compress,
    plan: Mutex<SendPlan>,
    wakers: Wakers,
}

struct PullSlot {
    shared: Arc<PullShared>,
    conns: usize,
    idle_since: Option<Instant>,
}

struct Inner {
    catalog: Arc<CatalogHandle>,
    registry: Arc<TransferRegistry>,
    cfg: FastdpConfig,
    push: Mutex<HashMap<TransferId, PushShared>>,
    pull: Mutex<HashMap<TransferId, PullSlot>>,
    /// [`MAX_BOOKKEEPING`] over every open transfer.
    books: MemoryBudget,
}

/// The FastDP service: one per folder, shared by its listeners' workers.
pub struct FastdpService {
    inner: Arc<Inner>,
    /// Set on drop: ends the hourly sweep.
    stop: Arc<(Mutex<bool>, Condvar)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FastdpService {
    /// Uploads land in `catalog`'s folder; transfers live in `.ferry/ingest/fastdp/`. Partial
    /// transfers within retention are kept for resume, expired ones and orphans deleted, and a
    /// thread repeats that sweep hourly for as long as the service lives.
    pub fn new(catalog: Arc<CatalogHandle>, cfg: FastdpConfig) -> io::Result<FastdpService> {
        // Publishing goes through the catalog's root descriptor, the work folder is reached
        // from its `.ferry` descriptor (issue 15 item 3), and every transfer takes its space
        // from the process-wide ledger, leaving `disk_reserve` free (item 5).
        let mut ingest = IngestDir::for_catalog(&catalog, "fastdp")?;
        ingest.set_disk_reserve(cfg.disk_reserve);
        let _ = ingest.clean_stale();
        let registry = TransferRegistry::new(Publisher::new(ingest, catalog.clone()));
        let inner = Arc::new(Inner {
            catalog,
            registry,
            cfg,
            push: Mutex::new(HashMap::new()),
            pull: Mutex::new(HashMap::new()),
            books: MemoryBudget::new(MAX_BOOKKEEPING),
        });
        let s = inner.sweep();
        if inner.cfg.verbose && (s.kept + s.deleted + s.forgotten) > 0 {
            eprintln!(
                "fastdp: state: {} partial transfers kept, {} deleted, {} completions forgotten",
                s.kept, s.deleted, s.forgotten
            );
        }
        let weak = Arc::downgrade(&inner);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("fastdp-sweep".into())
            .spawn(move || sweep_hourly(weak, stop2))?;
        Ok(FastdpService { inner, stop })
    }

    /// The ingest work folder (transfers and their state), for messages.
    pub fn work_dir(&self) -> &Path {
        self.inner.work().path()
    }
}

/// Sweeps expired state every hour until the service is dropped (which wakes it at once).
fn sweep_hourly(weak: Weak<Inner>, stop: Arc<(Mutex<bool>, Condvar)>) {
    let (flag, cv) = &*stop;
    let mut stopped = lock(flag);
    loop {
        let (g, _) = cv
            .wait_timeout(stopped, SWEEP_EVERY)
            .unwrap_or_else(PoisonError::into_inner);
        stopped = g;
        if *stopped {
            return;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        drop(stopped);
        inner.sweep();
        drop(inner);
        stopped = lock(flag);
    }
}

impl Drop for FastdpService {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
    }
}

impl Service for FastdpService {
    fn name(&self) -> &'static str {
        "fastdp"
    }

    /// The 503 of 2.2 at the listener's connection limit.
    fn busy_reply(&self) -> Option<Vec<u8>> {
        Some(Refusal::ServiceUnavailable.response().to_vec())
    }

    fn serve(&self, stream: Stream, peer: &Peer, ctx: &ConnCtx) {
        let _ = ctx;
        // Space is charged per peer address, over all the transfers it opens.
        let owner = peer
            .ip()
            .map_or_else(|| peer.to_string(), |ip| ip.to_string());
        let mut c = Conn {
            inner: &self.inner,
            peer: peer.to_string(),
            owner,
            link: Link::new(stream),
            conn: ServerConnection::new(
                Instant::now(),
                ServerConfig {
                    rules: self.inner.cfg.rules.clone(),
                    limits: self.inner.cfg.limits,
                },
            ),
        };
        let graceful = match c.run() {
            Ok(()) => true,
            Err(e) => {
                c.log(format_args!("{e}"));
                false
            }
        };
        let _ = c.flush();
        if graceful {
            c.link.stream.close_gracefully(Duration::from_secs(1));
        }
    }
}

impl Inner {
    fn sweep(&self) -> state::Sweep {
        let in_use = |id: &TransferId| {
            lock(&self.push).contains_key(id) || self.registry.is_open(id.as_str())
        };
        let discard = |id: &TransferId| -> io::Result<()> {
            self.registry
                .discard(id.as_str())
                .map_err(|e| io::Error::other(e.to_string()))
        };
        state::sweep(self.work(), self.cfg.retention, &in_use, &discard)
    }

    /// The ingest work folder `.ferry/ingest/fastdp/`, opened once from the catalog's `.ferry`
    /// descriptor and checked private: every `.state`, `.done` and 1.1.0 temporary is reached
    /// through it, never by path.
    fn work(&self) -> &Dir {
        self.registry.publisher().ingest().work_dir()
    }

    /// Bytes a new transfer may take: free space less what other transfers of the process
    /// (every protocol) were promised and not yet given ([`ledger`]), less `disk_reserve`.
    fn free_space(&self) -> u64 {
        let ingest = self.registry.publisher().ingest();
        let promised = ingest
            .work_dir()
            .stat()
            .map_or(0, |st| ledger::promised(st.dev()));
        ingest
            .available_bytes()
            .unwrap_or(u64::MAX)
            .saturating_sub(promised)
            .saturating_sub(self.cfg.disk_reserve)
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorMsg {
    ErrorMsg::new(code, msg)
}

/// Where a push connection stands after its header was accepted.
enum PushMode<'i> {
    /// Chunks go into the shared transfer; the guard counts this connection.
    Open(Attachment, Arc<StateFile>, PushGuard<'i>),
    /// The TransferId completed earlier (within retention) under this name.
    Done(String, Option<PushGuard<'i>>),
}

/// Holds a push transfer's connection count; the last to go forgets it.
struct PushGuard<'a> {
    inner: &'a Inner,
    id: TransferId,
}

impl Drop for PushGuard<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.inner.push);
        if let Some(s) = map.get_mut(&self.id) {
            s.conns -= 1;
            if s.conns == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// Holds a pull's connection count.
struct PullGuard<'a> {
    inner: &'a Inner,
    id: TransferId,
}

impl Drop for PullGuard<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.inner.pull);
        if let Some(s) = map.get_mut(&self.id) {
            s.conns -= 1;
            if s.conns == 0 {
                s.idle_since = Some(Instant::now());
            }
        }
    }
}

/// Why a connection ended badly (logged; the peer was told what the protocol lets it say).
type ConnError = String;

struct Conn<'a> {
    inner: &'a Arc<Inner>,
    peer: String,
    /// Whom the space of the transfers this connection opens is charged to (its address).
    owner: String,
    link: Link,
    conn: ServerConnection,
}

impl Conn<'_> {
    fn log(&self, msg: std::fmt::Arguments) {
        if self.inner.cfg.verbose {
            eprintln!("fastdp: {}: {msg}", self.peer);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while let Some(out) = self.conn.poll_transmit() {
            self.link.write_all(&out)?;
        }
        self.link.stream.flush()
    }

    /// Waits for input until the machine's next deadline; fires it or feeds the end of stream.
    fn wait_input(&mut self, wake: Option<&Wake>) -> Result<(), ConnError> {
        let deadline = self.conn.poll_timeout();
        match self.link.read(deadline, wake).map_err(|e| e.to_string())? {
            Got::Data => {}
            Got::Eof => self.conn.handle_eof(Instant::now()),
            Got::Nothing => self.conn.handle_timeout(Instant::now()),
        }
        Ok(())
    }

    /// Handshake and header; then the phase the header chose.
    fn run(&mut self) -> Result<(), ConnError> {
        loop {
            loop {
                let now = Instant::now();
                let n = self.conn.handle_input(now, self.link.pending()).consumed;
                self.link.start += n;
                let mut events = false;
                while let Some(ev) = self.conn.poll_event() {
                    events = true;
                    match ev {
                        Event::PushHeader(h) => return self.push(h),
                        Event::PullRequest(p) => return self.pull(p),
                        Event::V110Header(h) => return self.v110(h),
                        Event::Refused(r) => self.log(format_args!("{r}")),
                        Event::Failed(e) => self.log(format_args!("{e}")),
                        Event::V110Failed(e) => self.log(format_args!("{e}")),
                        _ => {}
                    }
                }
                if n == 0 && !events {
                    break;
                }
            }
            self.flush().map_err(|e| e.to_string())?;
            if self.conn.is_finished() {
                return Ok(());
            }
            self.wait_input(None)?;
        }
    }

    // ---------------------------------------------------------------------------------------
    // Push
    // ---------------------------------------------------------------------------------------

    /// Decides on a push header (2.4, 4.1), then receives.
    fn push(&mut self, h: Header) -> Result<(), ConnError> {
        let inner = Arc::clone(self.inner);
        let mode = match self.admit_push(&inner, &h) {
            Ok(x) => x,
            Err(e) => {
                self.log(format_args!("push {}: refused: {e}", h.transfer_id));
                self.conn.refuse(e);
                return self.finish();
            }
        };
        let now = Instant::now();
        match mode {
            PushMode::Done(name, _guard) => {
                self.conn
                    .accept_push(now, Have::all(h.full_chunk), inner.cfg.max_connections);
                self.receive_done(&h, &name)
            }
            PushMode::Open(att, st, _guard) => {
                let have = have_of(&att);
                self.log(format_args!(
                    "push {} {:?}: {} bytes, {} of {} chunks held",
                    h.transfer_id,
                    h.file_name,
                    h.full_size,
                    have.count(),
                    h.full_chunk
                ));
                self.conn.accept_push(now, have, inner.cfg.max_connections);
                let _ = att.hash_in_background();
                self.link.enlarge();
                let r = self.receive_push(&inner, &h, &att, &st);
                // The attachment goes before the guard: the last connection out closes the
                // part before the transfer leaves the map.
                drop(att);
                r
            }
        }
    }

    fn admit_push<'i>(&self, inner: &'i Inner, h: &Header) -> Result<PushMode<'i>, ErrorMsg> {
        let id = h.transfer_id;
        let mismatch = || {
            err(
                ErrorCode::ParameterMismatch,
                "TransferId known with other parameters",
            )
        };
        let mut map = lock(&inner.push);
        // A completion record answers first: the transfer may still be in the map while its
        // last connections finish, and its part is gone.
        if let Some(done) = state::read_done(inner.work(), &id) {
            if !done.header.same_parameters(h) {
                return Err(mismatch());
            }
            return Ok(PushMode::Done(done.file_name, None));
        }
        if h.full_size > inner.cfg.max_file_size {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "FullSize {} over the limit of {} bytes",
                    h.full_size, inner.cfg.max_file_size
                ),
            ));
        }
        let spec = TransferSpec {
            size: h.full_size,
            block_size: h.one_chunk,
            expect: Expect::Sha256(h.checksum.0),
            // fallocate(2) refuses a length of 0.
            preallocate: h.full_size > 0,
        };
        let max = inner.cfg.max_connections as usize;
        // Whoever opens (or resumes) the transfer holds its space, a step at a time, up to
        // `max_peer_reserve` over all its transfers (issue 15 item 5).
        let owner = Some((self.owner.as_str(), inner.cfg.max_peer_reserve));
        if let Some(s) = map.get(&id) {
            if !s.header.same_parameters(h) {
                return Err(mismatch());
            }
            let att = inner
                .registry
                .attach(id.as_str(), spec, max)
                .map_err(|e| transfer_error(e, max))?;
            s_conns_add(&mut map, &id);
            let st = Arc::clone(&map.get(&id).ok_or_else(|| internal("transfer gone"))?.state);
            let guard = PushGuard { inner, id };
            if let TransferState::Completed(p) = att.state() {
                return Ok(PushMode::Done(p.committed.name.clone(), Some(guard)));
            }
            return Ok(PushMode::Open(att, st, guard));
        }
        let pulls = lock(&inner.pull).values().filter(|s| s.conns > 0).count();
        if map.len() + pulls >= inner.cfg.max_transfers {
            return Err(err(
                ErrorCode::Busy,
                format!("{} transfers at once already", inner.cfg.max_transfers),
            ));
        }
        let books = inner
            .books
            .try_grant(push_bookkeeping(h.full_chunk))
            .ok_or_else(|| {
                err(
                    ErrorCode::Busy,
                    "the chunk bookkeeping of the transfers open now is at its limit",
                )
            })?;
        let stored = StateFile::open(inner.work(), &id).map_err(internal)?;
        let (att, st) = match stored {
            Some((st, stored)) => {
                if !stored.same_parameters(h) {
                    return Err(mismatch());
                }
                let att = inner
                    .registry
                    .attach_as(id.as_str(), spec, max, owner)
                    .map_err(|e| transfer_error(e, max))?;
                (att, st)
            }
            None => {
                let free = inner.free_space();
                if h.full_size > free {
                    return Err(err(
                        ErrorCode::NoSpace,
                        format!("FullSize {} over the {} bytes free", h.full_size, free),
                    ));
                }
                let held = ledger::held_by(&self.owner);
                let first_step = h.full_size.min(ledger::STEP);
                if held.saturating_add(first_step) > inner.cfg.max_peer_reserve {
                    return Err(err(
                        ErrorCode::NoSpace,
                        format!(
                            "this address already holds {held} bytes of space not yet written, \
                             at most {} over its transfers",
                            inner.cfg.max_peer_reserve
                        ),
                    ));
                }
                // A leftover part without its state is not this transfer's.
                let _ = inner.registry.discard(id.as_str());
                let att = inner
                    .registry
                    .attach_as(id.as_str(), spec, max, owner)
                    .map_err(|e| transfer_error(e, max))?;
                match StateFile::create(inner.work(), h) {
                    Ok(st) => (att, st),
                    Err(e) => {
                        drop(att);
                        let _ = inner.registry.discard(id.as_str());
                        return Err(LocalError(e.into()).to_error());
                    }
                }
            }
        };
        let st = Arc::new(st);
        map.insert(
            id,
            PushShared {
                header: h.clone(),
                state: Arc::clone(&st),
                gate: Arc::default(),
                conns: 1,
                _books: books,
            },
        );
        let guard = PushGuard { inner, id };
        if let TransferState::Completed(p) = att.state() {
            return Ok(PushMode::Done(p.committed.name.clone(), Some(guard)));
        }
        Ok(PushMode::Open(att, st, guard))
    }

    /// A TransferId that completed earlier: every chunk is held; its FIN gets `Complete`.
    fn receive_done(&mut self, h: &Header, name: &str) -> Result<(), ConnError> {
        loop {
            loop {
                let now = Instant::now();
                let n = self.conn.handle_input(now, self.link.pending()).consumed;
                self.link.start += n;
                while let Some(ev) = self.conn.poll_event() {
                    match ev {
                        Event::AckDue(_) => self.conn.ack(&[]),
                        Event::FinReceived(_) => self.conn.answer_fin(now, &[], true),
                        Event::Verify => self.conn.complete(name, h.checksum),
                        Event::Failed(e) | Event::PeerError(e) => {
                            self.log(format_args!("push {}: {e}", h.transfer_id))
                        }
                        _ => {}
                    }
                }
                if n == 0 {
                    break;
                }
            }
            self.flush().map_err(|e| e.to_string())?;
            if self.conn.is_finished() {
                return self.finish();
            }
            self.wait_input(None)?;
        }
    }

    /// Receives chunks into the shared transfer until FIN, then verifies and commits.
    fn receive_push(
        &mut self,
        inner: &Inner,
        h: &Header,
        att: &Attachment,
        st: &StateFile,
    ) -> Result<(), ConnError> {
        let gate = lock(&inner.push)
            .get(&h.transfer_id)
            .map(|s| Arc::clone(&s.gate))
            .unwrap_or_default();
        let mut sink = ChunkSink::new(att, st, &gate, h.geometry(), h.compress);
        let started = Instant::now();
        loop {
            fire_due(&mut self.conn);
            loop {
                let now = Instant::now();
                let r = self.conn.handle_input(now, self.link.pending());
                let consumed = r.consumed;
                let mut bad = None;
                if let Some(p) = r.payload {
                    match sink.payload(p) {
                        Ok(None) => {}
                        Ok(Some(why)) => bad = Some((p.chunk, why)),
                        Err(e) => {
                            self.link.start += consumed;
                            return self.local_failure(e);
                        }
                    }
                }
                self.link.start += consumed;
                if let Some((chunk, why)) = bad {
                    self.conn.chunk_failed(chunk, &why);
                }
                let mut events = false;
                while let Some(ev) = self.conn.poll_event() {
                    events = true;
                    if let Err(e) = self.push_event(inner, h, &mut sink, ev, started) {
                        return self.local_failure(e);
                    }
                }
                if consumed == 0 && !events {
                    break;
                }
            }
            self.flush().map_err(|e| e.to_string())?;
            if self.conn.is_finished() {
                return self.finish();
            }
            self.wait_input(None)?;
            // Timeouts queue events (a due Ack, a timeout Error).
            while let Some(ev) = self.conn.poll_event() {
                if let Err(e) = self.push_event(inner, h, &mut sink, ev, started) {
                    return self.local_failure(e);
                }
            }
        }
    }

    fn push_event(
        &mut self,
        inner: &Inner,
        h: &Header,
        sink: &mut ChunkSink<'_>,
        ev: Event,
        started: Instant,
    ) -> Result<(), LocalError> {
        let now = Instant::now();
        match ev {
            Event::ChunkStart { chunk, .. } => sink.start(chunk)?,
            Event::ChunkEnd { chunk } => sink.end(now, &mut self.conn, chunk)?,
            Event::ChunkAborted { .. } => sink.abort(),
            Event::AckDue(chunks) => {
                let d = sink.durable(&chunks)?;
                self.conn.ack(&d);
            }
            Event::FinReceived(chunks) => {
                let d = sink.durable(&chunks)?;
                let all = sink.transfer().is_complete();
                self.conn.answer_fin(now, &d, all);
            }
            Event::Verify => self.verify(inner, h, sink.transfer(), started)?,
            Event::Failed(e) | Event::PeerError(e) => {
                self.log(format_args!("push {}: {e}", h.transfer_id))
            }
            Event::PeerClosed { clean: false } => self.log(format_args!(
                "push {}: connection closed mid-frame",
                h.transfer_id
            )),
            _ => {}
        }
        Ok(())
    }

    /// Verifies and commits the transfer once for all its connections (4.2), sending empty
    /// Acks every 10 s meanwhile (F30); then `Complete` (F18) or the Error.
    fn verify(
        &mut self,
        inner: &Inner,
        h: &Header,
        t: &crate::ingest::Transfer,
        started: Instant,
    ) -> Result<(), LocalError> {
        let outcome = super::receive::commit_once(t, &h.file_name, &mut || {
            self.conn.handle_timeout(Instant::now());
            // A peer gone meanwhile changes nothing: the commit completes.
            let _ = self.flush();
        });
        match outcome {
            Ok(p) => {
                let name = p.committed.name.clone();
                let done = state::Done {
                    header: h.clone(),
                    file_name: name.clone(),
                };
                if let Err(e) = state::write_done(inner.work(), &done) {
                    self.log(format_args!(
                        "push {}: completion record: {e}",
                        h.transfer_id
                    ));
                }
                state::remove_state(inner.work(), &h.transfer_id);
                let secs = started.elapsed().as_secs_f64();
                self.log(format_args!(
                    "push {}: stored {name:?} ({} bytes, {:?}) in {secs:.2} s",
                    h.transfer_id, h.full_size, p.committed.outcome
                ));
                self.conn.complete(&name, h.checksum);
                Ok(())
            }
            Err(TransferError::Failed(e)) if matches!(*e, IngestError::Mismatch { .. }) => {
                state::remove_state(inner.work(), &h.transfer_id);
                self.log(format_args!("push {}: {e}", h.transfer_id));
                self.conn.fail(err(
                    ErrorCode::ChecksumMismatch,
                    "SHA-256 of the file differs",
                ));
                Ok(())
            }
            Err(e) => Err(LocalError(e)),
        }
    }

    /// A local failure: the peer gets `internal` (or `no-space`), then the connection ends.
    fn local_failure(&mut self, e: LocalError) -> Result<(), ConnError> {
        self.log(format_args!("{e}"));
        self.conn.fail(e.to_error());
        self.finish()
    }

    /// Sends what is queued; the caller closes.
    fn finish(&mut self) -> Result<(), ConnError> {
        self.flush().map_err(|e| e.to_string())
    }

    // ---------------------------------------------------------------------------------------
    // Pull
    // ---------------------------------------------------------------------------------------

    fn pull(&mut self, p: PullRequest) -> Result<(), ConnError> {
        let inner = Arc::clone(self.inner);
        let (shared, reply, guard) = match self.admit_pull(&inner, &p) {
            Ok(x) => x,
            Err(e) => {
                self.log(format_args!("pull {}: refused: {e}", p.transfer_id));
                self.conn.refuse(e);
                return self.finish();
            }
        };
        let _guard = guard;
        self.log(format_args!(
            "pull {} {:?}: {} bytes, client holds {} of {} chunks",
            p.transfer_id,
            reply.file_name,
            reply.full_size,
            reply.have.count(),
            reply.full_chunk
        ));
        self.conn.accept_pull(Instant::now(), &reply);
        let wake = Arc::new(Wake::new().map_err(|e| e.to_string())?);
        shared.wakers.add(Arc::clone(&wake));
        let r = self.send_pull(&shared, &wake);
        lock(&shared.plan).release(self.conn.in_flight());
        shared.wakers.remove(&wake);
        shared.wakers.notify_others(&wake);
        r
    }

    fn admit_pull<'i>(
        &self,
        inner: &'i Inner,
        p: &PullRequest,
    ) -> Result<(Arc<PullShared>, PullReply, PullGuard<'i>), ErrorMsg> {
        let snap = inner.catalog.snapshot();
        let entry = match &p.target {
            PullTarget::Sha256(h) => snap.by_sha256(h).cloned(),
            PullTarget::Name(n) => match snap.by_file_name(n) {
                Some(e) => Some(e.clone()),
                None => {
                    let mut same = snap
                        .entries()
                        .filter(|e| e.name == *n || e.file_name() == n.as_str());
                    let first = same.next().cloned();
                    if first.is_some() && same.next().is_some() {
                        return Err(err(ErrorCode::Ambiguous, "several files have that name"));
                    }
                    first
                }
            },
        }
        .ok_or_else(|| err(ErrorCode::NotFound, "no such file"))?;
        let checksum = Checksum(entry.sha256);
        if p.checksum.is_some_and(|c| c != checksum) {
            return Err(err(ErrorCode::ParameterMismatch, "the file changed"));
        }
        // The push count first: the push lock is never taken while the pull lock is held.
        let pushes = lock(&inner.push).len();
        let mut map = lock(&inner.pull);
        map.retain(|_, s| s.conns > 0 || s.idle_since.is_some_and(|t| t.elapsed() < PULL_LINGER));
        let shared = match map.get_mut(&p.transfer_id) {
            Some(slot) => {
                if slot.shared.entry.sha256 != entry.sha256
                    || p.one_chunk
                        .is_some_and(|n| n != slot.shared.geometry.one_chunk())
                {
                    return Err(err(ErrorCode::ParameterMismatch, "the file changed"));
                }
                if slot.conns >= inner.cfg.max_connections as usize {
                    return Err(err(
                        ErrorCode::TooManyConnections,
                        format!(
                            "transfer already has {} connections, at most {}",
                            slot.conns, inner.cfg.max_connections
                        ),
                    ));
                }
                slot.conns += 1;
                slot.idle_since = None;
                lock(&slot.shared.plan).mark_held(&p.have);
                Arc::clone(&slot.shared)
            }
            None => {
                let open = map.values().filter(|s| s.conns > 0).count() + pushes;
                if open >= inner.cfg.max_transfers {
                    return Err(err(
                        ErrorCode::Busy,
                        format!("{} transfers at once already", inner.cfg.max_transfers),
                    ));
                }
                let file = entry
                    .open()
                    .map_err(|e| err(ErrorCode::NotFound, format!("file unavailable: {e}")))?;
                let one_chunk = p.one_chunk.unwrap_or_else(|| one_chunk_for(entry.size));
                let geometry = Geometry::new(one_chunk, entry.size)
                    .ok_or_else(|| err(ErrorCode::BadHeader, "OneChunk does not fit the file"))?;
                if p.have.end() > geometry.full_chunk() {
                    return Err(err(
                        ErrorCode::ParameterMismatch,
                        "Have past the file's end",
                    ));
                }
                let books = inner
                    .books
                    .try_grant(pull_bookkeeping(geometry.full_chunk()))
                    .ok_or_else(|| {
                        err(
                            ErrorCode::Busy,
                            "the chunk bookkeeping of the transfers open now is at its limit",
                        )
                    })?;
                let shared = Arc::new(PullShared {
                    _books: books,
                    entry: entry.clone(),
                    file,
                    geometry,
                    compress: if p.accept_zstd {
                        Compress::Zstd
                    } else {
                        Compress::None
                    },
                    plan: Mutex::new(SendPlan::new(geometry.full_chunk(), &p.have)),
                    wakers: Wakers::default(),
                });
                map.insert(
                    p.transfer_id,
                    PullSlot {
                        shared: Arc::clone(&shared),
                        conns: 1,
                        idle_since: None,
                    },
                );
                shared
            }
        };
        let g = shared.geometry;
        let reply = PullReply {
            one_chunk: g.one_chunk(),
            full_chunk: g.full_chunk(),
            full_size: g.full_size(),
            compress: shared.compress,
            file_name: shared.entry.file_name().to_owned(),
            transfer_id: p.transfer_id,
            checksum,
            have: p.have.clone(),
            max_connections: inner.cfg.max_connections,
            reconnect_bytes: DEFAULT_RECONNECT_BYTES,
        };
        Ok((
            shared,
            reply,
            PullGuard {
                inner,
                id: p.transfer_id,
            },
        ))
    }

    /// Sends the pull's missing chunks from the mapping over this connection, taking them from
    /// the shared plan, and applies the client's Acks (re-sending what it acknowledged with
    /// another CRC, on any connection).
    fn send_pull(&mut self, shared: &PullShared, wake: &Arc<Wake>) -> Result<(), ConnError> {
        let mut buf = Vec::new();
        let mut zout = Vec::new();
        let mut zc: Option<ChunkCompressor> = None;
        loop {
            fire_due(&mut self.conn);
            self.pull_input(shared, wake)?;
            self.flush().map_err(|e| e.to_string())?;
            if self.conn.is_finished() {
                return Ok(());
            }
            let next = {
                let mut plan = lock(&shared.plan);
                self.conn.poll_send(Instant::now(), &mut plan)
            };
            match next {
                Some(sc) => {
                    let r = self.send_chunk(shared, sc, &mut buf, &mut zout, &mut zc);
                    match r {
                        Ok(()) => {}
                        Err(SendFailure::Changed) => {
                            self.conn
                                .fail(err(ErrorCode::ParameterMismatch, "the file changed"));
                        }
                        Err(SendFailure::Io(e)) => return Err(e.to_string()),
                    }
                    match self.link.try_read().map_err(|e| e.to_string())? {
                        Got::Eof => self.conn.handle_eof(Instant::now()),
                        Got::Data | Got::Nothing => {}
                    }
                }
                None => {
                    self.flush().map_err(|e| e.to_string())?;
                    if self.conn.is_finished() {
                        return Ok(());
                    }
                    let deadline = self.conn.poll_timeout();
                    match self
                        .link
                        .read(deadline, Some(wake))
                        .map_err(|e| e.to_string())?
                    {
                        Got::Data => {}
                        Got::Eof => self.conn.handle_eof(Instant::now()),
                        Got::Nothing => self.conn.handle_timeout(Instant::now()),
                    }
                }
            }
        }
    }

    /// Feeds the client's messages and applies them to the plan.
    fn pull_input(&mut self, shared: &PullShared, wake: &Arc<Wake>) -> Result<(), ConnError> {
        loop {
            let n = self
                .conn
                .handle_input(Instant::now(), self.link.pending())
                .consumed;
            self.link.start += n;
            let mut progress = n > 0;
            while let Some(ev) = self.conn.poll_event() {
                progress = true;
                match ev {
                    Event::Acked(entries) => {
                        let mut plan = lock(&shared.plan);
                        let mut wake_others = false;
                        for (c, crc) in entries {
                            if let AckOutcome::Mismatch { sent, acked } = plan.ack(c, crc) {
                                self.log(format_args!(
                                    "pull: chunk {c} acknowledged with CRC {acked:08x}, sent {sent:08x}: sending it again"
                                ));
                                wake_others = true;
                            }
                        }
                        if plan.is_complete() {
                            wake_others = true;
                        }
                        drop(plan);
                        if wake_others {
                            shared.wakers.notify_others(wake);
                        }
                    }
                    Event::Complete { file_name, .. } => self.log(format_args!(
                        "pull: {:?} delivered as {file_name:?}",
                        shared.entry.file_name()
                    )),
                    Event::Failed(e) | Event::PeerError(e) => self.log(format_args!("pull: {e}")),
                    _ => {}
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// Writes one chunk: the frame header and the payload, from the mapping, its CRC-32C
    /// computed on the way and recorded in the plan.
    fn send_chunk(
        &mut self,
        shared: &PullShared,
        sc: SendChunk,
        buf: &mut Vec<u8>,
        zout: &mut Vec<u8>,
        zc: &mut Option<ChunkCompressor>,
    ) -> Result<(), SendFailure> {
        let file = &shared.file;
        let len = sc.len as usize;
        let read = |buf: &mut [u8], at: u64| -> Result<(), SendFailure> {
            file.read_exact_at(at, buf).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => SendFailure::Changed,
                _ => SendFailure::Io(e),
            })
        };
        match shared.compress {
            Compress::Zstd => {
                buf.resize(len, 0);
                read(buf, sc.offset)?;
                if !file.is_unchanged() {
                    return Err(SendFailure::Changed);
                }
                let crc = crate::proto::fastdp::crc::crc32c(buf);
                if zc.is_none() {
                    *zc = Some(
                        ChunkCompressor::new(ZSTD_LEVEL)
                            .map_err(|e| SendFailure::Io(io::Error::other(e.to_string())))?,
                    );
                }
                if let Some(z) = zc.as_mut() {
                    z.compress(buf, zout)
                        .map_err(|e| SendFailure::Io(io::Error::other(e.to_string())))?;
                }
                let head = self.conn.begin_chunk(sc.chunk, zout.len() as u32);
                lock(&shared.plan).sent(sc.chunk, crc);
                self.link.write_all(&head).map_err(SendFailure::Io)?;
                self.link.write_all(zout).map_err(SendFailure::Io)?;
            }
            Compress::None
                if self.inner.cfg.pull_zero_copy && self.link.stream.plain_fd().is_some() =>
            {
                // Two passes: the CRC from a pread of the chunk, then the bytes from the
                // mapping with send(2) (bulk checks the file's stamp before the tail).
                buf.resize(PIECE.min(len.max(1)), 0);
                let mut crc = Crc32c::new();
                let mut off = 0usize;
                while off < len {
                    let n = (len - off).min(buf.len());
                    read(&mut buf[..n], sc.offset + off as u64)?;
                    crc.update(&buf[..n]);
                    off += n;
                }
                let head = self.conn.begin_chunk(sc.chunk, sc.len);
                lock(&shared.plan).sent(sc.chunk, crc.value());
                let mut out = head.to_vec();
                crate::driver::bulk::send_range(
                    &mut self.link.stream,
                    &mut out,
                    file,
                    sc.offset,
                    u64::from(sc.len),
                )
                .map_err(|e| match e {
                    crate::driver::bulk::SendError::FileChanged => SendFailure::Changed,
                    crate::driver::bulk::SendError::Io(e) => SendFailure::Io(e),
                })?;
                self.link.write_all(&out).map_err(SendFailure::Io)?;
            }
            Compress::None => {
                // One pass: each piece is read from the mapping with pread, summed, written.
                buf.resize(PIECE.min(len.max(1)), 0);
                let head = self.conn.begin_chunk(sc.chunk, sc.len);
                self.link.write_all(&head).map_err(SendFailure::Io)?;
                let mut crc = Crc32c::new();
                let mut off = 0usize;
                while off < len {
                    let n = (len - off).min(buf.len());
                    read(&mut buf[..n], sc.offset + off as u64)?;
                    crc.update(&buf[..n]);
                    if off + n == len && !file.is_unchanged() {
                        return Err(SendFailure::Changed);
                    }
                    self.link.write_all(&buf[..n]).map_err(SendFailure::Io)?;
                    off += n;
                }
                lock(&shared.plan).sent(sc.chunk, crc.value());
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // 1.1.0
    // ---------------------------------------------------------------------------------------

    fn v110(&mut self, h: V110Header) -> Result<(), ConnError> {
        let inner = Arc::clone(self.inner);
        if h.full_size > inner.cfg.max_file_size {
            self.conn.refuse_v110(V110Error::FileTooLarge);
            return self.finish();
        }
        if h.full_size > inner.free_space() {
            self.conn.refuse_v110(V110Error::NotEnoughDiskSpace);
            return self.finish();
        }
        let publisher = inner.registry.publisher().clone();
        let ingest = publisher
            .ingest()
            .for_owner(&self.owner, inner.cfg.max_peer_reserve);
        // `None` goes straight into the stream that is committed; the compressed forms go
        // into an unnamed temporary first (hashed), then decoded into the stream.
        let mut target = match h.compress {
            V110Compress::None => match ingest.begin_stream(Some(h.full_size)) {
                Ok(s) => V110Target::Stream(Box::new(s)),
                Err(e) => {
                    self.log(format_args!("1.1.0: {e}"));
                    self.conn
                        .refuse_v110(space_or(&e, V110Error::NotEnoughDiskSpace));
                    return self.finish();
                }
            },
            _ => match unnamed_temp(ingest.work_dir()) {
                Ok(f) => V110Target::Compressed {
                    file: f,
                    sha: Sha256::new(),
                    len: 0,
                },
                Err(e) => {
                    self.log(format_args!("1.1.0: {e}"));
                    self.conn.refuse_v110(V110Error::NotEnoughDiskSpace);
                    return self.finish();
                }
            },
        };
        self.log(format_args!(
            "1.1.0 {:?}: {} bytes {}",
            h.file_name,
            h.full_size,
            h.compress.as_str()
        ));
        self.conn.accept_v110(Instant::now());
        let started = Instant::now();
        loop {
            loop {
                let r = self.conn.handle_input(Instant::now(), self.link.pending());
                let consumed = r.consumed;
                if let Some(p) = r.payload {
                    if let Err(e) = target.write(p.bytes) {
                        self.link.start += consumed;
                        self.log(format_args!("1.1.0: writing: {e}"));
                        self.conn
                            .refuse_v110(space_or(&e, V110Error::IncompleteChunkData));
                        return self.finish();
                    }
                }
                self.link.start += consumed;
                let mut events = false;
                while let Some(ev) = self.conn.poll_event() {
                    events = true;
                    match ev {
                        Event::V110Received => {
                            let t = std::mem::replace(&mut target, V110Target::Gone);
                            let r = self.v110_commit(&inner, &publisher, &h, t, started);
                            self.conn.v110_done(r);
                        }
                        Event::V110Failed(e) => self.log(format_args!("1.1.0: {e}")),
                        _ => {}
                    }
                }
                if consumed == 0 && !events {
                    break;
                }
            }
            // cli.py may be gone already: the reply is attempted, its loss changes nothing.
            if self.flush().is_err() {
                return Ok(());
            }
            if self.conn.is_finished() {
                return Ok(());
            }
            self.wait_input(None)?;
            while let Some(ev) = self.conn.poll_event() {
                match ev {
                    Event::V110Received => {
                        let t = std::mem::replace(&mut target, V110Target::Gone);
                        let r = self.v110_commit(&inner, &publisher, &h, t, started);
                        self.conn.v110_done(r);
                    }
                    Event::V110Failed(e) => self.log(format_args!("1.1.0: {e}")),
                    _ => {}
                }
            }
        }
    }

    /// Checks the checksum of the compressed stream, decodes it (capped) and commits the file
    /// before the success line goes out (F34, F35). Any failure leaves nothing behind.
    fn v110_commit(
        &self,
        inner: &Inner,
        publisher: &Publisher,
        h: &V110Header,
        target: V110Target,
        started: Instant,
    ) -> Result<(), V110Error> {
        let sink = match target {
            V110Target::Gone => return Err(V110Error::IncompleteChunkData),
            V110Target::Stream(s) => {
                if s.sha256() != Some(h.checksum) {
                    return Err(V110Error::ChecksumMismatch);
                }
                *s
            }
            V110Target::Compressed { file, sha, len } => {
                let got: [u8; 32] = sha.finalize().into();
                if got != h.checksum {
                    return Err(V110Error::ChecksumMismatch);
                }
                let cap = inner.cfg.max_file_size.min(inner.free_space());
                let mut sink = publisher
                    .ingest()
                    .begin_stream(None)
                    .map_err(|e| space_or(&e, V110Error::NotEnoughDiskSpace))?;
                let mut dec = Decoder::new(h.compress, cap).map_err(|e| e.reply())?;
                let mut buf = vec![0u8; PIECE];
                let mut at = 0u64;
                let mut sink_err: Option<io::Error> = None;
                while at < len {
                    let n = ((len - at) as usize).min(PIECE);
                    file.read_exact_at(&mut buf[..n], at)
                        .map_err(|_| V110Error::DecompressionFailed)?;
                    let fed = dec.feed(&buf[..n], &mut |d: &[u8]| {
                        sink.write_all(d).inspect_err(|e| {
                            sink_err = Some(io::Error::new(e.kind(), e.to_string()))
                        })
                    });
                    if let Err(e) = fed {
                        self.log(format_args!("1.1.0 {:?}: {e}", h.file_name));
                        return Err(match (&e, &sink_err) {
                            (DecodeError::Sink(_), Some(se)) => {
                                space_or(se, V110Error::DecompressionFailed)
                            }
                            _ => e.reply(),
                        });
                    }
                    at += n as u64;
                }
                dec.finish().map_err(|e| {
                    self.log(format_args!("1.1.0 {:?}: {e}", h.file_name));
                    e.reply()
                })?;
                sink
            }
        };
        match publisher.publish_stream(sink, &h.file_name, Expect::Nothing, Collision::Numbered) {
            Ok(p) => {
                self.log(format_args!(
                    "1.1.0: stored {:?} ({} bytes) in {:.2} s",
                    p.committed.name,
                    p.committed.size,
                    started.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Err(IngestError::NoSpace) => Err(V110Error::NotEnoughDiskSpace),
            Err(e) => {
                self.log(format_args!("1.1.0: commit: {e}"));
                Err(V110Error::DecompressionFailed)
            }
        }
    }
}

/// Why a pull chunk could not be sent.
enum SendFailure {
    /// The catalog file changed after the transfer began (`parameter-mismatch`).
    Changed,
    Io(io::Error),
}

/// Where a 1.1.0 transfer's bytes go.
enum V110Target {
    /// `None`: the stream that is committed (boxed: a sink is large next to the other forms).
    Stream(Box<StreamSink>),
    /// A compressed form: an unnamed temporary and the running SHA-256 of what it holds.
    Compressed { file: File, sha: Sha256, len: u64 },
    /// Taken for the commit.
    Gone,
}

impl V110Target {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            V110Target::Stream(s) => s.write_all(data),
            V110Target::Compressed { file, sha, len } => {
                file.write_all_at(data, *len)?;
                sha.update(data);
                *len += data.len() as u64;
                Ok(())
            }
            V110Target::Gone => Err(io::Error::other("transfer already finished")),
        }
    }
}

/// `ENOSPC` and friends are reported as the given disk-space line; others as `other`.
fn space_or(e: &io::Error, other: V110Error) -> V110Error {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        V110Error::NotEnoughDiskSpace
    } else {
        other
    }
}

/// A temporary file without a name in the folder `dir` (`O_TMPFILE` relative to its
/// descriptor, never by path): it vanishes with its descriptor, so a failure or a crash leaves
/// nothing to clean. Where the file system lacks `O_TMPFILE`, a named file is created
/// `O_EXCL | O_NOFOLLOW` and unlinked at once.
fn unnamed_temp(dir: &Dir) -> io::Result<File> {
    // SAFETY: openat(2) on a folder descriptor we hold, a NUL-terminated name and constant
    // flags; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd >= 0 {
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        return Ok(unsafe { File::from_raw_fd(fd) });
    }
    let name = std::ffi::OsString::from(format!(
        "v110-{}-{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let f = dir.create_new(&name, 0o600)?;
    dir.remove_file(&name)?;
    Ok(f)
}

/// Fires a deadline that passed while input kept arriving (an Ack due 250 ms after a chunk
/// is stored must not wait for a pause in the stream).
fn fire_due(conn: &mut ServerConnection) {
    let now = Instant::now();
    if conn.poll_timeout().is_some_and(|d| now >= d) {
        conn.handle_timeout(now);
    }
}

fn s_conns_add(map: &mut HashMap<TransferId, PushShared>, id: &TransferId) {
    if let Some(s) = map.get_mut(id) {
        s.conns += 1;
    }
}

fn have_of(t: &crate::ingest::Transfer) -> Have {
    Have::normalised(
        t.durable_ranges(MAX_HAVE_RANGES)
            .into_iter()
            .map(|r| (r.start as u32, r.end as u32))
            .collect(),
    )
}

fn internal(e: impl std::fmt::Display) -> ErrorMsg {
    err(ErrorCode::Internal, e.to_string())
}

/// The registry's refusals in FastDP's words.
fn transfer_error(e: TransferError, max: usize) -> ErrorMsg {
    match e {
        TransferError::ParameterMismatch { .. } => err(
            ErrorCode::ParameterMismatch,
            "TransferId known with other parameters",
        ),
        TransferError::TooManyConnections { .. } => err(
            ErrorCode::TooManyConnections,
            format!("transfer already has {max} connections, at most {max}"),
        ),
        TransferError::Ingest(IngestError::NoSpace) => {
            err(ErrorCode::NoSpace, "no space left for the file")
        }
        other => internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_bookkeeping_of_open_transfers_is_bounded_server_wide() {
        // 64 GiB in chunks of 4096 bytes: 16 Mi chunks, three bitmaps of 2 MiB.
        let worst = push_bookkeeping(((64u64 << 30) / 4096) as u32);
        assert_eq!(worst, 6 << 20);
        // The default chunk of a 64 GiB file (4 MiB): 6 KiB.
        assert_eq!(push_bookkeeping(16_384), 6 << 10);
        assert_eq!(pull_bookkeeping(16 << 20), 2 << 20);
        // 64 transfers of the worst shape would hold 384 MiB; the budget takes ten.
        let books = MemoryBudget::new(MAX_BOOKKEEPING);
        let held: Vec<Grant> = std::iter::from_fn(|| books.try_grant(worst)).collect();
        assert_eq!(held.len(), 10);
        assert_eq!(books.in_use(), 60 << 20);
        drop(held);
        assert_eq!(books.in_use(), 0);
    }
}
