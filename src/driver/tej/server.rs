//! The TEJ server driver: runs one [`Connection`] machine per connection over its socket,
//! stores the files it says to store through [`ingest`](crate::ingest) (a
//! [`StreamSink`] per file, space taken from the process-wide
//! [ledger](crate::ingest::ledger) on behalf of the peer, committed with a [`Publisher`]),
//! answers its catalog lookups from a snapshot, and moves request answers from the mappings to
//! the socket with [`bulk`]. Every decision (status policy, stall and idle rules, names, replies)
//! is the machine's: see [`crate::proto::tej::server`].
//!
//! ```text
//!  loop: send the machine's transmits ─► finished? ─► drop any open file, send the error
//!          │                                          frame, close in order (FIN, linger)
//!          ▼
//!        read (deadline = poll_timeout) ─► EOF: handle_eof │ timeout: handle_timeout
//!          │ bytes
//!          ▼
//!        handle_input until None:  Open ─► begin_stream (ledger) ─► file_opened
//!                                  Write ─► sink.write_all (a borrowed slice of the read)
//!                                  Commit ─► publish ─► file_committed
//! ```
//!
//! Out of scope: protocol decisions (the machine), the accept loop, budgets and timeouts of the
//! listener (the server core), TLS (the listener owns it).

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, CatalogHandle, Entry, MappedFile};
use crate::config::TlsSource;
use crate::driver::bulk;
use crate::ingest::{Collision, Expect, IngestDir, IngestError, Listed, Publisher, StreamSink};
use crate::proto::budget::MemoryBudget;
use crate::proto::tej::frame::Limits as FrameLimits;
use crate::proto::tej::messages::{self, code, ManifestEntry};
use crate::proto::tej::server::{
    self as machine, Connection, Event, Lookup, Resolved, Step, StoreError, Stored, Transmit,
};
use crate::server::{ConnCtx, Peer, Service};
use crate::transport::Stream;

/// Read buffer while no file data flows (headers, messages, idle): small, so a thousand
/// connections sending messages hold little.
const SMALL_READ: usize = 16 * 1024;
/// Read buffer while a stored file's data flows: large reads, large writes.
const BULK_READ: usize = 256 * 1024;
/// How long a refusal lingers for the peer's unread bytes before the socket closes.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// TEJ server settings (tej.md 4.2).
#[derive(Clone, Debug)]
pub struct TejConfig {
    /// Listen address. Default `127.0.0.1:8000`.
    pub bind: String,
    pub tls: TlsSource,
    pub frame: FrameLimits,
    /// Space left free on the served folder's file system, counting what other uploads of the
    /// process were promised. Default 64 MiB.
    pub disk_reserve: u64,
    /// Stall rule: a frame must advance by `stall_bytes` (or end) within each `stall_window`.
    pub stall_window: Duration,
    pub stall_bytes: usize,
    /// Silence allowed between frames (pings count). Default 120 s.
    pub idle_timeout: Duration,
    /// Longest a connection may go without a frame that does something (pings never extend
    /// it). Default 600 s.
    pub max_idle_life: Duration,
    /// Most space one peer address may hold for its unfinished uploads at once (granted a step
    /// ahead of the data, not yet written). Default 1 GiB.
    pub peer_reserve: u64,
    /// Request and list messages held at once over all connections. Default 64 MiB.
    pub held_messages: u64,
    pub verbose: bool,
}

impl Default for TejConfig {
    fn default() -> Self {
        TejConfig {
            bind: "127.0.0.1:8000".into(),
            tls: TlsSource::Off,
            frame: FrameLimits::default(),
            disk_reserve: 64 << 20,
            stall_window: Duration::from_secs(30),
            stall_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(120),
            max_idle_life: machine::DEFAULT_MAX_IDLE_LIFE,
            peer_reserve: 1 << 30,
            held_messages: machine::DEFAULT_HELD_MESSAGES,
            verbose: false,
        }
    }
}

/// The TEJ service: one per listener, shared by its workers.
pub struct TejService {
    catalog: Arc<CatalogHandle>,
    ingest: IngestDir,
    publisher: Publisher,
    machine: machine::Config,
    cfg: TejConfig,
}

impl TejService {
    /// Stored files land in the catalog's folder; temporaries live in `.ferry/ingest/tej` and
    /// leftovers of a previous run are deleted (TEJ has no resume).
    pub fn new(catalog: Arc<CatalogHandle>, cfg: TejConfig) -> io::Result<TejService> {
        let mut ingest = IngestDir::for_catalog(&catalog, "tej")?;
        ingest.set_disk_reserve(cfg.disk_reserve);
        crate::driver::map_large_buffers();
        for name in ingest.work_dir().names()? {
            let _ = ingest.work_dir().remove_file(&name);
        }
        let machine = machine::Config {
            limits: cfg.frame,
            idle_timeout: cfg.idle_timeout,
            stall_window: cfg.stall_window,
            stall_bytes: cfg.stall_bytes as u64,
            max_idle_life: cfg.max_idle_life,
            held_messages: MemoryBudget::new(cfg.held_messages),
        };
        Ok(TejService {
            publisher: Publisher::new(ingest.clone(), Arc::clone(&catalog)),
            catalog,
            ingest,
            machine,
            cfg,
        })
    }

    fn log(&self, peer: &str, msg: std::fmt::Arguments) {
        if self.cfg.verbose {
            eprintln!("tej: {peer}: {msg}");
        }
    }
}

impl Service for TejService {
    fn name(&self) -> &'static str {
        "tej"
    }

    /// Plain listeners: a `busy` error frame at once. TLS: the core closes before the handshake.
    fn busy_reply(&self) -> Option<Vec<u8>> {
        Some(messages::error_frame(
            code::BUSY,
            "server at its connection limit",
        ))
    }

    fn serve(&self, stream: Stream, peer: &Peer, ctx: &ConnCtx) {
        // Space is accounted per peer address, over all its connections.
        let owner = peer
            .ip()
            .map_or_else(|| peer.to_string(), |ip| ip.to_string());
        let mut d = ConnDriver {
            svc: self,
            ctx,
            stream,
            peer: peer.to_string(),
            ingest: self.ingest.for_owner(&owner, self.cfg.peer_reserve),
            sink: None,
            out: Vec::new(),
        };
        let mut conn = Connection::new(self.machine.clone(), Instant::now());
        let end = d.run(&mut conn);
        // Whatever half-received file there was goes with its sink.
        d.sink = None;
        match end {
            Ok(()) => d.stream.close_gracefully(CLOSE_LINGER),
            Err(why) => self.log(&d.peer, format_args!("{why}")),
        }
    }
}

/// One connection's socket and storage.
struct ConnDriver<'a> {
    svc: &'a TejService,
    ctx: &'a ConnCtx,
    stream: Stream,
    peer: String,
    /// The service's folder, taking space on behalf of this peer.
    ingest: IngestDir,
    /// The file being stored and the name the machine gave it.
    sink: Option<(StreamSink, String, u64)>,
    out: Vec<u8>,
}

impl ConnDriver<'_> {
    /// Runs the machine to its end. `Ok` when the connection may close in order (its last
    /// bytes sent), `Err` when it must be cut (the peer is gone, or a frame cannot be finished).
    fn run(&mut self, conn: &mut Connection<Arc<MappedFile>>) -> Result<(), String> {
        let mut rbuf = vec![0u8; SMALL_READ];
        loop {
            self.log_events(conn);
            if conn.is_finished() {
                // The temporary goes before the error frame, so a peer that reads the error
                // finds nothing left behind.
                self.sink = None;
                return self.send(conn);
            }
            self.send(conn)?;
            let between = conn.is_between_frames();
            self.ctx.set_idle(between);
            if between && self.ctx.is_shutting_down() {
                return Ok(());
            }
            let now = Instant::now();
            let wait = conn
                .poll_timeout()
                .map_or(Duration::MAX, |t| t.saturating_duration_since(now));
            if wait.is_zero() {
                conn.handle_timeout(now);
                continue;
            }
            // Large reads only while file data flows; an idle or chatty connection keeps a
            // small buffer.
            let want = if conn.is_storing() {
                BULK_READ
            } else {
                SMALL_READ
            };
            if rbuf.len() != want && (want == BULK_READ || between) {
                rbuf = vec![0u8; want];
            }
            self.stream
                .set_read_timeout(Some(wait.min(Duration::from_secs(u32::MAX.into()))))
                .map_err(|e| e.to_string())?;
            let r = self.stream.read(&mut rbuf);
            self.ctx.set_idle(false);
            match r {
                Ok(0) => conn.handle_eof(),
                Ok(n) => self.feed(conn, &rbuf[..n]),
                Err(e) if is_timeout(&e) => conn.handle_timeout(Instant::now()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Feeds one read to the machine and does every storage step it asks for.
    fn feed(&mut self, conn: &mut Connection<Arc<MappedFile>>, data: &[u8]) {
        let now = Instant::now();
        let mut lookup = CatalogLookup {
            handle: &self.svc.catalog,
            snap: None,
        };
        let mut pos = 0;
        loop {
            let (used, step) = conn.handle_input(now, &data[pos..], &mut lookup);
            pos += used;
            match step {
                None => return,
                Some(Step::Open { name, size }) => {
                    let r = match self.ingest.begin_stream(Some(size)) {
                        Ok(s) => {
                            self.sink = Some((s, name.to_owned(), size));
                            Ok(())
                        }
                        Err(e) => Err(self.store_error(&e, size)),
                    };
                    conn.file_opened(r);
                }
                Some(Step::Write(bytes)) => {
                    let Some((sink, _, size)) = self.sink.as_mut() else {
                        conn.file_failed(StoreError::Internal("no file open".into()));
                        continue;
                    };
                    if let Err(e) = sink.write_all(bytes) {
                        let size = *size;
                        conn.file_failed(self.store_error(&e, size));
                    }
                }
                Some(Step::Commit) => {
                    let r = self.commit();
                    conn.file_committed(r);
                }
            }
        }
    }

    /// Verifies nothing (TEJ carries no hash), fsyncs, publishes without replacing and
    /// registers the file that just ended.
    fn commit(&mut self) -> Result<Stored, StoreError> {
        let (sink, name, size) = self
            .sink
            .take()
            .ok_or_else(|| StoreError::Internal("no file open".into()))?;
        let published = self
            .svc
            .publisher
            .publish_stream(sink, &name, Expect::Nothing, Collision::Numbered)
            .map_err(|e| match e {
                IngestError::NoSpace => {
                    StoreError::NoSpace(format!("no space left to finish a file of {size} bytes"))
                }
                e => StoreError::Internal(e.to_string()),
            })?;
        if let Listed::Refused(e) = &published.listed {
            // Stored, but not a catalog file: say so in the log.
            self.svc.log(&self.peer, format_args!("{e}"));
        }
        let c = published.committed;
        self.svc.log(
            &self.peer,
            format_args!("stored {} ({} bytes)", c.name, c.size),
        );
        Ok(Stored {
            stored_as: c.name,
            sha256: c.sha256.map(|s| hex(&s)).unwrap_or_default(),
        })
    }

    /// An ingest error as the machine's refusal: no space (with the numbers), or internal.
    fn store_error(&self, e: &io::Error, size: u64) -> StoreError {
        let reserve = self.ingest.disk_reserve();
        match e.raw_os_error() {
            Some(libc::EDQUOT) => StoreError::NoSpace(format!(
                "file of {size} bytes: this peer already holds {} bytes of space for unfinished uploads (at most {})",
                crate::ingest::ledger::held_by(&self.owner()),
                self.svc.cfg.peer_reserve
            )),
            Some(libc::ENOSPC) => {
                let free = self.ingest.available_bytes().unwrap_or(0);
                StoreError::NoSpace(format!(
                    "file of {size} bytes does not fit: {free} bytes free, {reserve} kept in reserve, the rest promised to other uploads"
                ))
            }
            _ if e.kind() == io::ErrorKind::StorageFull => {
                StoreError::NoSpace(format!("file of {size} bytes: {e}"))
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }

    fn owner(&self) -> String {
        self.stream
            .peer()
            .ip()
            .map_or_else(|| self.peer.clone(), |ip| ip.to_string())
    }

    /// Sends everything the machine queued: reply bytes batched in `out`, catalog files from
    /// their mappings.
    fn send(&mut self, conn: &mut Connection<Arc<MappedFile>>) -> Result<(), String> {
        let mut sent = false;
        while let Some(t) = conn.poll_transmit() {
            sent = true;
            match t {
                Transmit::Bytes(b) => {
                    self.out.extend_from_slice(&b);
                    if self.out.len() >= bulk::OUT_FLUSH {
                        bulk::flush(&mut self.stream, &mut self.out)
                            .map_err(|e| format!("write: {e}"))?;
                    }
                }
                Transmit::File { file, offset, len } => {
                    // A file that changed after its length went out cannot finish its frame:
                    // the connection is cut (the requester commits nothing).
                    bulk::send_range(&mut self.stream, &mut self.out, &file, offset, len)
                        .map_err(|e| format!("sending a catalog file: {e}"))?;
                }
            }
        }
        if sent {
            bulk::flush(&mut self.stream, &mut self.out).map_err(|e| format!("write: {e}"))?;
        }
        Ok(())
    }

    fn log_events(&self, conn: &mut Connection<Arc<MappedFile>>) {
        while let Some(ev) = conn.poll_event() {
            if !self.svc.cfg.verbose {
                continue;
            }
            match ev {
                Event::Frame {
                    status,
                    version,
                    files,
                } => self.svc.log(
                    &self.peer,
                    format_args!("frame status {status} version {version}, {files} files"),
                ),
                Event::Message { len, head } => self.svc.log(
                    &self.peer,
                    format_args!("message ({len} bytes): {}", String::from_utf8_lossy(&head)),
                ),
                Event::Discarded { name, size } => self.svc.log(
                    &self.peer,
                    format_args!(
                        "discarded {:?} ({size} bytes)",
                        String::from_utf8_lossy(&name)
                    ),
                ),
                Event::Application { status, stored } => self.svc.log(
                    &self.peer,
                    format_args!(
                        "application status {status}: {stored} files stored, not acknowledged"
                    ),
                ),
                Event::Closed {
                    code: Some(code),
                    detail,
                } => self.svc.log(&self.peer, format_args!("{code}: {detail}")),
                Event::Closed { code: None, .. } => {}
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The machine's view of the catalog: one snapshot, taken at the first lookup of a read.
struct CatalogLookup<'a> {
    handle: &'a CatalogHandle,
    snap: Option<Arc<Catalog>>,
}

impl CatalogLookup<'_> {
    fn snapshot(&mut self) -> Arc<Catalog> {
        Arc::clone(self.snap.get_or_insert_with(|| self.handle.snapshot()))
    }
}

impl Lookup for CatalogLookup<'_> {
    type File = Arc<MappedFile>;

    fn resolve(&mut self, item: &str) -> Resolved<Arc<MappedFile>> {
        let snap = self.snapshot();
        let entry = match resolve(&snap, item) {
            Found::One(e) => e,
            Found::None => return Resolved::Missing,
            Found::Several => return Resolved::Ambiguous,
        };
        // A file that can no longer be opened as catalogued is missing (it is being replaced).
        match entry.open() {
            Ok(file) => Resolved::Found {
                name: entry.file_name().to_string(),
                size: file.len(),
                sha256: entry.sha256_hex(),
                file,
            },
            Err(_) => Resolved::Missing,
        }
    }

    fn page(&mut self, after: &str, limit: usize) -> Vec<ManifestEntry> {
        // Paths are the exact on-disk names, so paging by `after` visits each file once even
        // when two names have one NFC form; the order is kept with the snapshot (no sort).
        self.snapshot()
            .files_after(after)
            .take(limit)
            .map(|e| ManifestEntry {
                name: e.file_name().to_string(),
                size: e.size,
                sha256: e.sha256_hex(),
            })
            .collect()
    }
}

enum Found<'c> {
    One(&'c Arc<Entry>),
    None,
    Several,
}

/// A request item (tej.md 3.4), by index only: O(log n) per item, O(log² n) for a base name
/// that several spellings share.
fn resolve<'c>(snap: &'c Catalog, item: &str) -> Found<'c> {
    if let Some(id) = crate::wire::hex::parse_sha256(item) {
        if let Some(e) = snap.by_sha256(&id) {
            return Found::One(e);
        }
    }
    // The exact path first, then the NFC spelling of a base name.
    if let Some(e) = snap.by_file_name(item) {
        return Found::One(e);
    }
    use unicode_normalization::UnicodeNormalization;
    let nfc: String = item.nfc().collect();
    match snap.by_name(&nfc) {
        None => Found::None,
        Some(_) if has_two_named(snap, &nfc) => Found::Several,
        Some(e) => Found::One(e),
    }
}

/// Whether two entries share the NFC name `nfc` (entries are in NFC name order; `nth` is
/// O(log n), so the search is O(log² n)).
fn has_two_named(snap: &Catalog, nfc: &str) -> bool {
    let key = nfc.as_bytes();
    let (mut lo, mut hi) = (0, snap.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match snap.entries().nth(mid) {
            Some(e) if e.name.as_bytes() < key => lo = mid + 1,
            _ => hi = mid,
        }
    }
    snap.entries()
        .skip(lo)
        .take(2)
        .filter(|e| e.name.as_bytes() == key)
        .count()
        == 2
}

use crate::wire::hex::encode as hex;
