//! The CJP2P driver: the only CJP2P code that knows both the machines and a socket. One thread
//! owns the UDP socket, the [`Node`] and the active [`Download`]s: it receives with a timeout
//! set by the machines' next deadline, feeds datagrams in, sends what they queue, writes
//! accepted blocks into [`ingest`](crate::ingest) partial files and flushes their bitmaps (at
//! once after the first blocks, then at least every second). Whole-file verification runs on a
//! worker thread so the socket keeps being served.
//!
//! A node has a [`Role`]: a serving node (`cjp2p node`, `ferry serve`) serves its catalog; a
//! client (`cjp2p get`, `list`, `peers`) opens no catalog, serves nothing and announces nothing,
//! and publishes what it downloads into its output folder.
//!
//! ```text
//!   recv_from ──► Node::handle_datagram ──► NodeEvent::Content ──► Download::on_content
//!       ▲                 │                                          │ Store
//!       │                 ▼                                          ▼
//!   send_to ◄── Node::poll_transmit ◄── Node::request_content ◄── Download::poll_request
//!                                         Resumable::write_block ◄──┘ then mark_stored
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::role::NothingServed;
pub use super::role::{client_bind, Role};
use crate::catalog::CatalogHandle;
use crate::ingest::{Expect, IngestDir, IngestError, Resumable};
use crate::proto::cjp2p::download::{Accept, Download, DownloadConfig};
use crate::proto::cjp2p::node::{ContentStore, Node, NodeConfig, NodeEvent, NodeStats};
pub use crate::proto::cjp2p::DEFAULT_PORT;
use crate::server::{Shutdown, WakeFd};
use crate::transport;

/// Requested SO_RCVBUF and SO_SNDBUF.
pub const SOCKBUF: usize = 8 << 20;
/// Receive buffer: nothing is truncated (C6).
const RECV_BUF: usize = 65536;
/// Bitmaps are flushed at least this often (C30).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// After the first flush (at the first stored blocks), the gap to the second; it doubles up to
/// [`FLUSH_EVERY`].
const FIRST_FLUSH_GAP: Duration = Duration::from_millis(100);
/// `-v`: activity and counters are printed at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// Longest sleep of the event loop, so shutdown and new commands are seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Whole-file verification attempts before a download fails.
const MAX_TRIES: u32 = 3;

/// Serves the catalog's files under their SHA-256.
pub struct CatalogStore {
    catalog: Arc<CatalogHandle>,
}

impl CatalogStore {
    pub fn new(catalog: Arc<CatalogHandle>) -> CatalogStore {
        CatalogStore { catalog }
    }
}

impl ContentStore for CatalogStore {
    fn size_of(&self, id: &[u8; 32]) -> Option<u64> {
        self.catalog.snapshot().by_sha256(id).map(|e| e.size)
    }

    fn read_at(&self, id: &[u8; 32], offset: u64, buf: &mut [u8]) -> Option<usize> {
        let snap = self.catalog.snapshot();
        let file = snap.by_sha256(id)?.open().ok()?;
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(offset + got as u64, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        Some(got)
    }

    fn list(&self, start: usize, max: usize) -> Vec<([u8; 32], u64)> {
        let snap = self.catalog.snapshot();
        snap.entries()
            .skip(start)
            .take(max)
            .map(|e| (e.sha256, e.size))
            .collect()
    }

    fn count(&self) -> usize {
        self.catalog.snapshot().len()
    }
}

/// What a download reports while it runs and when it ends.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Progress {
    pub id: String,
    pub received: u64,
    pub eof: Option<u64>,
    pub sources: usize,
}

/// How a download ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Verified and published: the path now in the catalog or the output folder.
    Done { path: PathBuf, size: u64 },
    /// No source delivered the verified content (silent sources, three bad copies).
    Failed(String),
    /// A local error stopped the download (the partial file could not be written: a full disk,
    /// permissions); the partial data is kept for a rerun.
    LocalError(String),
}

/// A command for the running node.
enum Command {
    Download {
        id: [u8; 32],
        sources: Vec<SocketAddr>,
        name: String,
        /// Where the verified file goes when not into the catalog folder.
        dest: Option<PathBuf>,
        done: mpsc::Sender<Outcome>,
    },
    Peers(SocketAddr, Duration, mpsc::Sender<Option<Vec<SocketAddr>>>),
    List(SocketAddr, Duration, mpsc::Sender<Option<Listing>>),
    Progress(mpsc::Sender<Vec<Progress>>),
}

/// Node settings for the driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub bind: String,
    pub peers: Vec<SocketAddr>,
    pub node: NodeConfig,
    pub download: DownloadConfig,
    pub verbose: bool,
}

/// A running node; dropping it stops the thread.
pub struct NodeHandle {
    pub local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    stop: Arc<AtomicBool>,
    /// Wakes the node thread out of its poll(2): a command was sent, or it must stop.
    wake: Arc<WakeFd>,
    thread: Option<JoinHandle<()>>,
    /// Bytes the kernel granted for the socket buffers.
    pub sockbuf: usize,
}

impl NodeHandle {
    /// Binds the socket and starts the node thread. It stops when `shutdown` is triggered or
    /// the handle is dropped. A client role turns `cfg.node.serve` off.
    pub fn start(mut cfg: DriverConfig, role: Role, shutdown: Shutdown) -> io::Result<NodeHandle> {
        let (sock, granted) =
            transport::bind_udp(&cfg.bind, SOCKBUF).map_err(|e| io::Error::other(e.to_string()))?;
        if granted < SOCKBUF {
            eprintln!(
                "cjp2p: the kernel granted {granted} bytes of socket buffer (asked {SOCKBUF}); expect losses at high rates"
            );
        }
        let local_addr = sock.local_addr()?;
        let (catalog, ingest) = match &role {
            Role::Serve(cat) => {
                let work = cat.state_dir().join("ingest").join("cjp2p");
                (Some(cat.clone()), Some(IngestDir::new(cat.root(), &work)?))
            }
            Role::Client { out } => {
                cfg.node.serve = false;
                let ingest = match out {
                    Some(out) => {
                        let work = out.join(".ferry").join("ingest").join("cjp2p");
                        Some(IngestDir::new(out, &work)?)
                    }
                    None => None,
                };
                (None, ingest)
            }
        };
        cfg.node.log_activity = cfg.verbose;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let wake = Arc::new(WakeFd::new()?);
        let wake2 = wake.clone();
        let mut secret = [0u8; 32];
        getrandom(&mut secret)?;
        let thread = std::thread::Builder::new()
            .name("cjp2p".into())
            .spawn(move || {
                let mut node = Node::new(cfg.node.clone(), secret, Instant::now());
                node.set_local_addrs(vec![local_addr]);
                let store: Box<dyn ContentStore> = match &catalog {
                    Some(cat) => Box::new(CatalogStore::new(cat.clone())),
                    None => Box::new(NothingServed),
                };
                let mut lp = Loop {
                    sock,
                    dual_stack: local_addr.is_ipv6(),
                    node,
                    store,
                    catalog,
                    ingest,
                    cfg,
                    downloads: HashMap::new(),
                    verifying: Vec::new(),
                    peers_waiters: Vec::new(),
                    list_waiters: Vec::new(),
                    last_report: Instant::now(),
                    reported: NodeStats::default(),
                    wake: wake2,
                };
                shutdown.register(lp.wake.clone());
                lp.run(rx, &stop2, &shutdown);
                shutdown.unregister(&lp.wake);
            })?;
        Ok(NodeHandle {
            local_addr,
            commands: tx,
            stop,
            wake,
            thread: Some(thread),
            sockbuf: granted,
        })
    }

    /// Starts downloading `id` from `sources` (plus holders the node learns); the outcome
    /// arrives on the returned channel.
    pub fn download(
        &self,
        id: [u8; 32],
        sources: Vec<SocketAddr>,
        name: String,
    ) -> mpsc::Receiver<Outcome> {
        self.download_into(id, sources, name, None)
    }

    /// [`download`](Self::download) into `dest` (same file system as the catalog) instead of
    /// the catalog folder: block-list blocks are kept apart until the file is assembled.
    pub fn download_into(
        &self,
        id: [u8; 32],
        sources: Vec<SocketAddr>,
        name: String,
        dest: Option<PathBuf>,
    ) -> mpsc::Receiver<Outcome> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Download {
            id,
            sources,
            name,
            dest,
            done: tx,
        });
        rx
    }

    /// Asks `peer` for its peers (after the cookie handshake). The answer arrives on the
    /// channel; `None` when `peer` answered nothing within `limit`.
    pub fn peers_of(
        &self,
        peer: SocketAddr,
        limit: Duration,
    ) -> mpsc::Receiver<Option<Vec<SocketAddr>>> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Peers(peer, limit, tx));
        rx
    }

    /// Asks `peer` for its content list; `None` when it answered nothing within `limit`.
    pub fn list_of(&self, peer: SocketAddr, limit: Duration) -> mpsc::Receiver<Option<Listing>> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::List(peer, limit, tx));
        rx
    }

    /// Queues a command and wakes the node thread for it.
    fn send(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
        self.wake.wake();
    }

    pub fn progress(&self) -> Vec<Progress> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Progress(tx));
        rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One download in progress.
struct Active {
    dl: Download,
    part: Option<Resumable>,
    /// Where the file is published; `into_catalog` when that is the catalog folder.
    ingest: IngestDir,
    into_catalog: bool,
    name: String,
    tries: u32,
    /// Bytes stored per source in this attempt: after a failed whole-file check the next
    /// attempt asks one of them alone, in turn (cjp2p.md 6.6), so an honest source can finish
    /// a file that a corrupt one spoiled.
    delivered: HashMap<SocketAddr, u64>,
    /// After a failed whole-file check: the sources still to be tried alone, one by one (every
    /// source the download knew, those that delivered first: one that delivered nothing may
    /// simply have been slow to answer, and may be the honest one).
    suspects: Vec<SocketAddr>,
    /// The source this attempt asked alone, if any: a failed check then convicts it, and it is
    /// not asked again.
    alone: Option<SocketAddr>,
    last_flush: Instant,
    /// Bitmap flushes so far, and the bytes received at the last one.
    flushes: u32,
    flushed_bytes: u64,
    done: mpsc::Sender<Outcome>,
}

/// The result of a whole-file check and publication on a worker thread.
type VerifyResult = Result<crate::ingest::Publication, (Resumable, IngestError)>;

/// A peers or list request waiting for the peer's verification and answer.
struct Waiter<T> {
    peer: SocketAddr,
    /// When it gives up and answers `None`.
    deadline: Instant,
    /// The request went out (the peer had verified ferry).
    sent: bool,
    answer: mpsc::Sender<Option<T>>,
}

/// A content list: (SHA-256, size) pairs.
pub type Listing = Vec<([u8; 32], u64)>;

struct Loop {
    sock: UdpSocket,
    /// The socket is IPv6 (dual stack): IPv4 destinations are sent as IPv4-mapped addresses.
    dual_stack: bool,
    node: Node,
    store: Box<dyn ContentStore>,
    /// The catalog served and filled (serving role only).
    catalog: Option<Arc<CatalogHandle>>,
    /// Where downloads go when no other folder is named (none for a list/peers client).
    ingest: Option<IngestDir>,
    cfg: DriverConfig,
    downloads: HashMap<[u8; 32], Active>,
    /// Whole-file checks running on worker threads.
    verifying: Vec<([u8; 32], mpsc::Receiver<VerifyResult>)>,
    peers_waiters: Vec<Waiter<Vec<SocketAddr>>>,
    list_waiters: Vec<Waiter<Listing>>,
    /// `-v`: when the activity and counters were last printed, and the counters then.
    last_report: Instant,
    reported: NodeStats,
    /// Readable when the loop has more to do than its socket says: a command, a finished
    /// whole-file check, a stop.
    wake: Arc<WakeFd>,
}

impl Loop {
    fn run(&mut self, rx: mpsc::Receiver<Command>, stop: &AtomicBool, shutdown: &Shutdown) {
        let now = Instant::now();
        for p in self.cfg.peers.clone() {
            self.node.add_peer(now, p);
        }
        let mut buf = vec![0u8; RECV_BUF];
        // Non-blocking: the loop waits with poll(2) and then drains the socket.
        if let Err(e) = self.sock.set_nonblocking(true) {
            eprintln!("cjp2p: {e}");
            return;
        }
        while !stop.load(Ordering::SeqCst) && !shutdown.is_triggered() {
            // Cleared before the work it announces is looked at: a wake after this is seen
            // by the next wait.
            self.wake.clear();
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
            }
            let now = Instant::now();
            self.node.handle_timeout(now);
            // The tick releases queued hints (Holders) too.
            self.drain_events(now);
            for a in self.downloads.values_mut() {
                a.dl.handle_timeout(now);
            }
            self.pump_requests(now);
            self.send_all();
            self.check_waiters(now);
            self.finish_verifications();
            // Sleep until the next deadline or a datagram.
            let mut wait = MAX_WAIT;
            if let Some(t) = self.node.poll_timeout() {
                wait = wait.min(t.saturating_duration_since(now));
            }
            for a in self.downloads.values() {
                if let Some(t) = a.dl.poll_timeout() {
                    wait = wait.min(t.saturating_duration_since(now));
                }
            }
            transport::wait_readable_or_woken(
                std::os::fd::AsRawFd::as_raw_fd(&self.sock),
                self.wake.raw_fd(),
                wait.max(Duration::from_millis(1)),
            );
            // Drain everything that has arrived before doing the bookkeeping again.
            while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let from = transport::canonical_addr(from);
                let now = Instant::now();
                self.node
                    .handle_datagram(now, from, &buf[..n], self.store.as_ref());
                self.drain_events(now);
                // Every reply may free window and pacing tokens: ask again at once, so the
                // sources never wait for this loop to finish draining the socket.
                self.pump_requests(now);
                self.send_all();
            }
            self.flush_bitmaps(false);
            if self.cfg.verbose && now.duration_since(self.last_report) >= REPORT_EVERY {
                self.report(now);
            }
        }
        self.flush_bitmaps(true);
        if self.cfg.verbose {
            self.report(Instant::now());
        }
    }

    /// `-v`: what was served and refused to whom since the last report, and the node's
    /// counters when they changed, so that a node serving nothing can be seen to.
    fn report(&mut self, now: Instant) {
        self.last_report = now;
        for a in self.node.take_activity() {
            let who = a
                .peer
                .map_or_else(|| "others".to_string(), |p| p.to_string());
            let what = a.id.map_or_else(|| "lists".to_string(), |id| hex(&id));
            let mut parts = Vec::new();
            if a.served > 0 {
                parts.push(format!("served {} ({} bytes)", a.served, a.bytes));
            }
            if a.teasers > 0 {
                parts.push(format!("{} teasers (unverified)", a.teasers));
            }
            if a.lists > 0 {
                parts.push(format!("{} content lists", a.lists));
            }
            if a.refused > 0 {
                parts.push(format!(
                    "refused {}: {}",
                    a.refused,
                    a.why.unwrap_or("refused")
                ));
            }
            eprintln!("cjp2p: {who} {what}: {}", parts.join(", "));
        }
        let st = self.node.stats();
        if st != self.reported {
            eprintln!(
                "cjp2p: counters: {} datagrams in ({} verified, {} unverified, {} dropped), {} out; \
                 served {} blocks, {} teasers; refused {} (unknown id {}, repeats {}, client {}); \
                 rate-limited {}; answers left out {}; {} peers, {} candidates",
                st.datagrams_in,
                st.verified_datagrams,
                st.unverified_datagrams,
                st.dropped_datagrams,
                st.datagrams_out,
                st.content_served,
                st.teasers_served,
                st.unknown_ids + st.repeats_ignored + st.refused_requests,
                st.unknown_ids,
                st.repeats_ignored,
                st.refused_requests,
                st.rate_limited,
                st.answers_dropped,
                self.node.peer_count(),
                self.node.candidate_count(),
            );
            self.reported = st;
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Download {
                id,
                sources,
                name,
                dest,
                done,
            } => {
                let Some(base) = self.ingest.clone() else {
                    let _ = done.send(Outcome::LocalError("no output folder".into()));
                    return;
                };
                let into_catalog = dest.is_none() && self.catalog.is_some();
                let ingest = match dest {
                    None => base,
                    Some(d) => match IngestDir::new(&d, base.work()) {
                        Ok(i) => i,
                        Err(e) => {
                            let _ = done.send(Outcome::LocalError(format!("{}: {e}", d.display())));
                            return;
                        }
                    },
                };
                if self.downloads.contains_key(&id) {
                    let _ = done.send(Outcome::Failed("already being downloaded".into()));
                    return;
                }
                let present = self
                    .catalog
                    .as_ref()
                    .filter(|_| into_catalog)
                    .and_then(|c| {
                        c.snapshot()
                            .by_sha256(&id)
                            .map(|e| (e.path.clone(), e.size))
                    });
                if let Some((path, size)) = present {
                    let _ = done.send(Outcome::Done { path, size });
                    return;
                }
                let key = hex(&id);
                let known = ingest.peek_resumable(&key).filter(|(_, b)| *b == 4096);
                let mut dl = Download::new(id, self.cfg.download.clone(), known.map(|(s, _)| s));
                let mut part = None;
                if let Some((size, _)) = known {
                    match open_part(&ingest, &key, size) {
                        Ok(p) => {
                            dl.resume(size, &|i| p.has_block(i));
                            if self.cfg.verbose {
                                eprintln!(
                                    "cjp2p: resuming {key}: {} of {} blocks on disk",
                                    p.received(),
                                    p.blocks()
                                );
                            }
                            part = Some(p);
                        }
                        Err(e) => {
                            let _ = done.send(Outcome::LocalError(format!("partial file: {e}")));
                            return;
                        }
                    }
                }
                for s in sources {
                    limit_to_path(&mut dl, s);
                    dl.add_source(now, s, self.node.ferry_max_length(s));
                }
                self.node.set_downloading(id, true);
                self.downloads.insert(
                    id,
                    Active {
                        dl,
                        part,
                        ingest,
                        into_catalog,
                        name,
                        tries: 0,
                        delivered: HashMap::new(),
                        suspects: Vec::new(),
                        alone: None,
                        last_flush: now,
                        flushes: 0,
                        flushed_bytes: 0,
                        done,
                    },
                );
            }
            Command::Peers(peer, limit, answer) => {
                self.node.add_peer(now, peer);
                self.peers_waiters.push(Waiter {
                    peer,
                    deadline: now + limit,
                    sent: false,
                    answer,
                });
            }
            Command::List(peer, limit, answer) => {
                self.node.add_peer(now, peer);
                self.list_waiters.push(Waiter {
                    peer,
                    deadline: now + limit,
                    sent: false,
                    answer,
                });
            }
            Command::Progress(tx) => {
                let v = self
                    .downloads
                    .iter()
                    .map(|(id, a)| Progress {
                        id: hex(id),
                        received: a.dl.received_bytes(),
                        eof: a.dl.eof(),
                        sources: a.dl.sources().len(),
                    })
                    .collect();
                let _ = tx.send(v);
            }
        }
    }

    /// Peers and list requests go out once the peer verified us (so the reply is not cut to
    /// the unverified budget); at their deadline they answer `None` (no answer).
    fn check_waiters(&mut self, now: Instant) {
        for w in self.peers_waiters.iter_mut() {
            if !w.sent && self.node.is_verified(w.peer) {
                self.node.request_peers(now, w.peer);
                w.sent = true;
            }
        }
        for w in self.list_waiters.iter_mut() {
            if !w.sent && self.node.is_verified(w.peer) {
                self.node.request_list(now, w.peer);
                w.sent = true;
            }
        }
        fn expire<T>(waiters: &mut Vec<Waiter<T>>, now: Instant) {
            waiters.retain(|w| {
                let expired = now >= w.deadline;
                if expired {
                    let _ = w.answer.send(None);
                }
                !expired
            });
        }
        expire(&mut self.peers_waiters, now);
        expire(&mut self.list_waiters, now);
        self.send_all();
    }

    fn pump_requests(&mut self, now: Instant) {
        let node = &mut self.node;
        for (id, a) in self.downloads.iter_mut() {
            if a.dl.is_complete() {
                continue;
            }
            while let Some(r) = a.dl.poll_request(now) {
                node.request_content(now, r.to, id, r.offset, r.length);
            }
        }
    }

    fn send_all(&mut self) {
        while let Some((to, bytes)) = self.node.poll_transmit() {
            let _ = self.sock.send_to(&bytes, denormalize(to, self.dual_stack));
        }
    }

    fn drain_events(&mut self, now: Instant) {
        while let Some(ev) = self.node.poll_event() {
            match ev {
                NodeEvent::Content {
                    from,
                    id,
                    offset,
                    data,
                    eof,
                } => self.content(now, from, id, offset, &data, eof),
                NodeEvent::Holders { id, peers } => {
                    // On probation: one request each, dropped after 2 s of silence.
                    if let Some(a) = self.downloads.get_mut(&id) {
                        for p in peers {
                            limit_to_path(&mut a.dl, p);
                            a.dl.add_hint(now, p, self.node.ferry_max_length(p));
                        }
                    }
                }
                NodeEvent::ContentList { from, results } => {
                    for (id, _) in &results {
                        self.node.add_holder(*id, from);
                    }
                    for w in self.list_waiters.iter().filter(|w| w.peer == from) {
                        let _ = w.answer.send(Some(results.clone()));
                    }
                    self.list_waiters.retain(|w| w.peer != from);
                }
                NodeEvent::Peers { from, peers } => {
                    for w in self.peers_waiters.iter().filter(|w| w.peer == from) {
                        let _ = w.answer.send(Some(peers.clone()));
                    }
                    self.peers_waiters.retain(|w| w.peer != from);
                }
                NodeEvent::FerryPeer { addr, max_length } => {
                    for a in self.downloads.values_mut() {
                        a.dl.set_ferry(addr, Some(max_length));
                    }
                }
                NodeEvent::Refused { from, id, offset } => {
                    // A source that forgot ferry's cookie: ask again at once (pump_requests
                    // runs right after), with ferry's offer attached.
                    if let Some(a) = self.downloads.get_mut(&id) {
                        a.dl.on_refused(now, from, offset);
                    }
                }
                NodeEvent::Rtt { .. } => {}
            }
        }
    }

    fn content(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: [u8; 32],
        offset: u64,
        data: &[u8],
        eof: Option<u64>,
    ) {
        let Some(a) = self.downloads.get_mut(&id) else {
            return;
        };
        match a.dl.on_content(now, from, offset, data.len(), eof) {
            Accept::Store {
                offset: store_at,
                len,
            } => {
                let total = a.dl.eof().unwrap_or(0);
                if a.part.is_none() {
                    match open_part(&a.ingest, &hex(&id), total) {
                        Ok(p) => a.part = Some(p),
                        Err(e) => {
                            self.fail_local(id, format!("partial file: {e}"));
                            return;
                        }
                    }
                }
                let part = a.part.as_mut().expect("just created");
                // The accepted range may be a part of the reply (blocks another copy already
                // delivered are left out).
                let skip = (store_at - offset) as usize;
                let Some(data) = data.get(skip..skip + len) else {
                    return;
                };
                // Downloads hand out ranges of blocks not yet stored, so one write covers them.
                match part.write_blocks(store_at / 4096, data) {
                    Ok(()) => {
                        a.dl.mark_stored(store_at, data.len());
                        *a.delivered.entry(from).or_default() += data.len() as u64;
                    }
                    // A block the machine should never have handed out twice: skip it (it is
                    // asked again), but say so.
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        eprintln!("cjp2p: {}: block at {store_at} not stored: {e}", hex(&id));
                    }
                    // A full disk, a read-only folder: nothing more can be stored.
                    Err(e) => {
                        let at = a.ingest.work().join(format!("{}.part", hex(&id)));
                        self.fail_local(id, format!("writing {}: {e}", at.display()));
                        return;
                    }
                }
                if a.dl.is_complete() {
                    self.verify(id);
                }
            }
            Accept::DropSource(why) => {
                if self.cfg.verbose {
                    eprintln!("cjp2p: dropping source {from} for {}: {why}", hex(&id));
                }
                a.dl.remove_source(from);
            }
            Accept::Teaser | Accept::Drop(_) => {}
        }
    }

    /// A local error ends the download: the outcome says why, the partial data stays for a
    /// rerun (its bitmap flushed as far as it goes).
    fn fail_local(&mut self, id: [u8; 32], why: String) {
        if let Some(mut a) = self.downloads.remove(&id) {
            if let Some(p) = a.part.as_mut() {
                let _ = p.flush();
            }
            let _ = a.done.send(Outcome::LocalError(why));
        }
        self.node.set_downloading(id, false);
    }

    /// Every block is on disk: hash it on a worker thread.
    fn verify(&mut self, id: [u8; 32]) {
        let Some(a) = self.downloads.get_mut(&id) else {
            return;
        };
        let Some(mut part) = a.part.take() else {
            return;
        };
        if self.cfg.verbose {
            let st = a.dl.stats();
            eprintln!(
                "cjp2p: {} all blocks stored: {} requests, {} retransmits, {} losses, {} duplicate replies, {} endgame copies",
                hex(&id),
                st.requests_sent,
                st.retransmits,
                st.losses,
                st.dup_replies,
                st.endgame_copies
            );
            for s in &st.sources {
                eprintln!(
                    "cjp2p:   source {}: block {} cwnd {} ssthresh {} srtt {:?} rto {:?}",
                    s.addr, s.block_size, s.cwnd, s.ssthresh, s.srtt, s.rto
                );
            }
        }
        let _ = part.flush();
        let name = a.name.clone();
        use crate::ingest::{Collision, Publisher};
        let publisher = match self.catalog.as_ref().filter(|_| a.into_catalog) {
            Some(cat) => Publisher::new(a.ingest.clone(), Arc::clone(cat)),
            None => Publisher::without_catalog(a.ingest.clone()),
        };
        let (tx, rx) = mpsc::channel();
        let wake = self.wake.clone();
        std::thread::spawn(move || {
            let _ = tx.send(publisher.publish_resumable(
                part,
                &name,
                Expect::Sha256(id),
                Collision::Tagged,
            ));
            wake.wake();
        });
        self.verifying.push((id, rx));
    }

    fn finish_verifications(&mut self) {
        let mut finished = Vec::new();
        self.verifying.retain(|(id, rx)| match rx.try_recv() {
            Ok(r) => {
                finished.push((*id, r));
                false
            }
            Err(mpsc::TryRecvError::Empty) => true,
            Err(mpsc::TryRecvError::Disconnected) => false,
        });
        for (id, r) in finished {
            let Some(mut a) = self.downloads.remove(&id) else {
                continue;
            };
            match r {
                Ok(p) => {
                    self.node.set_downloading(id, false);
                    if let crate::ingest::Listed::Refused(e) = &p.listed {
                        eprintln!("cjp2p: {e}");
                    }
                    let c = p.committed;
                    let _ = a.done.send(Outcome::Done {
                        path: c.path,
                        size: c.size,
                    });
                }
                Err((mut part, e)) => {
                    a.tries += 1;
                    if a.tries >= MAX_TRIES {
                        self.node.set_downloading(id, false);
                        let _ = a.done.send(Outcome::Failed(format!(
                            "verification failed {} times: {e}",
                            a.tries
                        )));
                        continue;
                    }
                    eprintln!("cjp2p: {}: {e}; fetching again", hex(&id));
                    let _ = part.clear();
                    a.part = Some(part);
                    a.dl.restart_after_mismatch();
                    if a.tries == 1 {
                        let mut delivered: Vec<SocketAddr> = a.delivered.keys().copied().collect();
                        delivered.sort();
                        let mut silent: Vec<SocketAddr> =
                            a.dl.sources()
                                .into_iter()
                                .filter(|s| !a.delivered.contains_key(s))
                                .collect();
                        silent.sort();
                        a.suspects = delivered.into_iter().chain(silent).collect();
                    }
                    if let Some(bad) = a.alone.take() {
                        a.suspects.retain(|s| *s != bad);
                    }
                    if !a.suspects.is_empty() {
                        let pick = a.suspects[0];
                        a.suspects.rotate_left(1);
                        a.alone = Some(pick);
                        for s in a.dl.sources() {
                            a.dl.remove_source(s);
                        }
                        limit_to_path(&mut a.dl, pick);
                        a.dl.add_source(Instant::now(), pick, self.node.ferry_max_length(pick));
                        eprintln!("cjp2p: {}: trying {pick} alone", hex(&id));
                    }
                    a.delivered.clear();
                    self.downloads.insert(id, a);
                }
            }
        }
    }

    /// Persists the bitmaps (C30): at once after the first blocks arrive, then after 0.1, 0.2,
    /// 0.4 and 0.8 s, then every second, so a kill early in a fast transfer keeps what arrived.
    fn flush_bitmaps(&mut self, all: bool) {
        let now = Instant::now();
        let mut failed = Vec::new();
        for (id, a) in self.downloads.iter_mut() {
            let received = a.dl.received_bytes();
            let wait = match a.flushes {
                0 => Duration::ZERO,
                n => (FIRST_FLUSH_GAP * (1 << (n - 1).min(4))).min(FLUSH_EVERY),
            };
            let due = received > a.flushed_bytes && now.duration_since(a.last_flush) >= wait;
            if !(all || due) {
                continue;
            }
            if let Some(p) = a.part.as_mut() {
                if let Err(e) = p.flush() {
                    failed.push((*id, format!("saving the bitmap of {}: {e}", hex(id))));
                    continue;
                }
                a.flushes += 1;
                a.flushed_bytes = received;
            }
            a.last_flush = now;
        }
        if !all {
            for (id, why) in failed {
                self.fail_local(id, why);
            }
        }
    }
}

/// Opens (or reopens) the partial file of a download, 4096-byte blocks (cjp2p.md 6.5).
fn open_part(ingest: &IngestDir, key: &str, size: u64) -> io::Result<Resumable> {
    let mut p = ingest.begin_resumable(key, size, 4096)?;
    // Blocks mostly arrive in order: hash them as they come, on another core, instead of
    // reading the whole file once the last block is in.
    if let Err(e) = p.hash_in_background() {
        eprintln!("cjp2p: {key}: hashing at the end instead: {e}");
    }
    Ok(p)
}

/// Tells a download the MTU of the path to a source, so that its answers stay a few IP
/// fragments long (a 1500-byte path: 4096-byte requests; loopback: no limit).
fn limit_to_path(dl: &mut Download, addr: SocketAddr) {
    if let Some(mtu) = transport::path_mtu(addr) {
        dl.set_path_mtu(addr, mtu);
    }
}

/// On a dual-stack socket, IPv4 destinations go out as IPv4-mapped IPv6: the inverse of
/// [`transport::canonical_addr`], which every received source address goes through.
fn denormalize(a: SocketAddr, dual_stack: bool) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) if dual_stack => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => a,
    }
}

/// 32 random bytes from the operating system.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

pub use crate::proto::cjp2p::wire::parse_id;
pub use crate::wire::hex::encode as hex;
