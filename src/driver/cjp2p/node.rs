//! The CJP2P driver: the only CJP2P code that knows both the machines and a socket. One thread
//! owns the UDP socket, the [`Node`] and the active [`Download`]s: it receives with a timeout
//! set by the machines' next deadline, feeds datagrams in, sends what they queue, writes
//! accepted blocks into [`ingest`](crate::ingest) partial files and flushes their bitmaps every
//! second. Whole-file verification runs on a worker thread so the socket keeps being served.
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

use crate::catalog::CatalogHandle;
use crate::ingest::{Expect, IngestDir, IngestError, Resumable};
use crate::proto::cjp2p::download::{Accept, Download, DownloadConfig};
use crate::proto::cjp2p::node::{ContentStore, Node, NodeConfig, NodeEvent};
pub use crate::proto::cjp2p::DEFAULT_PORT;
use crate::server::Shutdown;
use crate::transport;

/// Requested SO_RCVBUF and SO_SNDBUF.
pub const SOCKBUF: usize = 8 << 20;
/// Receive buffer: nothing is truncated (C6).
const RECV_BUF: usize = 65536;
/// Bitmaps are flushed at least this often (C30).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
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
    /// Verified and published: the path now in the catalog.
    Done {
        path: PathBuf,
        size: u64,
    },
    Failed(String),
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
    Peers(SocketAddr, mpsc::Sender<Vec<SocketAddr>>),
    List(SocketAddr, mpsc::Sender<Listing>),
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
    thread: Option<JoinHandle<()>>,
    /// Bytes the kernel granted for the socket buffers.
    pub sockbuf: usize,
}

impl NodeHandle {
    /// Binds the socket and starts the node thread. It stops when `shutdown` is triggered or
    /// the handle is dropped.
    pub fn start(
        cfg: DriverConfig,
        catalog: Arc<CatalogHandle>,
        shutdown: Shutdown,
    ) -> io::Result<NodeHandle> {
        let (sock, granted) =
            transport::bind_udp(&cfg.bind, SOCKBUF).map_err(|e| io::Error::other(e.to_string()))?;
        if granted < SOCKBUF {
            eprintln!(
                "cjp2p: the kernel granted {granted} bytes of socket buffer (asked {SOCKBUF}); expect losses at high rates"
            );
        }
        let local_addr = sock.local_addr()?;
        let work = catalog.state_dir().join("ingest").join("cjp2p");
        let ingest = IngestDir::new(catalog.root(), &work)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let mut secret = [0u8; 32];
        getrandom(&mut secret)?;
        let thread = std::thread::Builder::new()
            .name("cjp2p".into())
            .spawn(move || {
                let mut node = Node::new(cfg.node.clone(), secret, Instant::now());
                node.set_local_addrs(vec![local_addr]);
                let mut lp = Loop {
                    sock,
                    dual_stack: local_addr.is_ipv6(),
                    node,
                    store: CatalogStore::new(catalog.clone()),
                    catalog,
                    ingest,
                    cfg,
                    downloads: HashMap::new(),
                    verifying: Vec::new(),
                    peers_waiters: Vec::new(),
                    list_waiters: Vec::new(),
                };
                lp.run(rx, &stop2, &shutdown);
            })?;
        Ok(NodeHandle {
            local_addr,
            commands: tx,
            stop,
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
        let _ = self.commands.send(Command::Download {
            id,
            sources,
            name,
            dest,
            done: tx,
        });
        rx
    }

    /// Asks `peer` for its peers (after the cookie handshake); answers on the channel.
    pub fn peers_of(&self, peer: SocketAddr) -> mpsc::Receiver<Vec<SocketAddr>> {
        let (tx, rx) = mpsc::channel();
        let _ = self.commands.send(Command::Peers(peer, tx));
        rx
    }

    /// Asks `peer` for its content list.
    pub fn list_of(&self, peer: SocketAddr) -> mpsc::Receiver<Listing> {
        let (tx, rx) = mpsc::channel();
        let _ = self.commands.send(Command::List(peer, tx));
        rx
    }

    pub fn progress(&self) -> Vec<Progress> {
        let (tx, rx) = mpsc::channel();
        let _ = self.commands.send(Command::Progress(tx));
        rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
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
    /// The sources that delivered the first failed attempt, tried alone one by one.
    suspects: Vec<SocketAddr>,
    last_flush: Instant,
    done: mpsc::Sender<Outcome>,
}

/// The result of a whole-file check and publication on a worker thread.
type VerifyResult = Result<crate::ingest::Publication, (Resumable, IngestError)>;

/// A peers or list request waiting for the peer's verification and answer: (peer, asked at,
/// request sent, where the answer goes).
type Waiter<T> = (SocketAddr, Instant, bool, mpsc::Sender<T>);

/// A content list: (SHA-256, size) pairs.
pub type Listing = Vec<([u8; 32], u64)>;

struct Loop {
    sock: UdpSocket,
    /// The socket is IPv6 (dual stack): IPv4 destinations are sent as IPv4-mapped addresses.
    dual_stack: bool,
    node: Node,
    store: CatalogStore,
    catalog: Arc<CatalogHandle>,
    ingest: IngestDir,
    cfg: DriverConfig,
    downloads: HashMap<[u8; 32], Active>,
    /// Whole-file checks running on worker threads.
    verifying: Vec<([u8; 32], mpsc::Receiver<VerifyResult>)>,
    peers_waiters: Vec<Waiter<Vec<SocketAddr>>>,
    list_waiters: Vec<Waiter<Listing>>,
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
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
            }
            let now = Instant::now();
            self.node.handle_timeout(now);
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
            transport::wait_readable(
                std::os::fd::AsRawFd::as_raw_fd(&self.sock),
                wait.max(Duration::from_millis(1)),
            );
            // Drain everything that has arrived before doing the bookkeeping again.
            while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let from = normalize(from);
                let now = Instant::now();
                self.node.handle_datagram(now, from, &buf[..n], &self.store);
                self.drain_events(now);
                // Every reply may free window and pacing tokens: ask again at once, so the
                // sources never wait for this loop to finish draining the socket.
                self.pump_requests(now);
                self.send_all();
            }
            self.flush_bitmaps(false);
        }
        self.flush_bitmaps(true);
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
                let into_catalog = dest.is_none();
                let ingest = match dest {
                    None => self.ingest.clone(),
                    Some(d) => match IngestDir::new(&d, self.ingest.work()) {
                        Ok(i) => i,
                        Err(e) => {
                            let _ = done.send(Outcome::Failed(format!("{}: {e}", d.display())));
                            return;
                        }
                    },
                };
                if self.downloads.contains_key(&id) {
                    let _ = done.send(Outcome::Failed("already being downloaded".into()));
                    return;
                }
                if let Some(e) = self
                    .catalog
                    .snapshot()
                    .by_sha256(&id)
                    .filter(|_| into_catalog)
                {
                    let _ = done.send(Outcome::Done {
                        path: e.path.clone(),
                        size: e.size,
                    });
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
                            let _ = done.send(Outcome::Failed(format!("partial file: {e}")));
                            return;
                        }
                    }
                }
                for s in sources {
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
                        last_flush: now,
                        done,
                    },
                );
            }
            Command::Peers(p, tx) => {
                self.node.add_peer(now, p);
                self.peers_waiters.push((p, now, false, tx));
            }
            Command::List(p, tx) => {
                self.node.add_peer(now, p);
                self.list_waiters.push((p, now, false, tx));
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
    /// the unverified budget); they give up after 5 s.
    fn check_waiters(&mut self, now: Instant) {
        for w in self.peers_waiters.iter_mut() {
            if !w.2 && self.node.is_verified(w.0) {
                self.node.request_peers(now, w.0);
                w.2 = true;
            }
        }
        for w in self.list_waiters.iter_mut() {
            if !w.2 && self.node.is_verified(w.0) {
                self.node.request_list(now, w.0);
                w.2 = true;
            }
        }
        let limit = Duration::from_secs(5);
        self.peers_waiters.retain(|w| {
            let expired = now.duration_since(w.1) > limit;
            if expired {
                let _ = w.3.send(Vec::new());
            }
            !expired
        });
        self.list_waiters.retain(|w| {
            let expired = now.duration_since(w.1) > limit;
            if expired {
                let _ = w.3.send(Vec::new());
            }
            !expired
        });
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
                    if let Some(a) = self.downloads.get_mut(&id) {
                        for p in peers {
                            a.dl.add_source(now, p, self.node.ferry_max_length(p));
                        }
                    }
                }
                NodeEvent::ContentList { from, results } => {
                    for (id, _) in &results {
                        self.node.add_holder(*id, from);
                    }
                    for w in self.list_waiters.iter().filter(|w| w.0 == from) {
                        let _ = w.3.send(results.clone());
                    }
                    self.list_waiters.retain(|w| w.0 != from);
                }
                NodeEvent::Peers { from, peers } => {
                    for w in self.peers_waiters.iter().filter(|w| w.0 == from) {
                        let _ = w.3.send(peers.clone());
                    }
                    self.peers_waiters.retain(|w| w.0 != from);
                }
                NodeEvent::FerryPeer { addr, max_length } => {
                    for a in self.downloads.values_mut() {
                        if a.dl.sources().contains(&addr) {
                            a.dl.remove_source(addr);
                            a.dl.add_source(now, addr, Some(max_length));
                        }
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
                            let _ = a.done.send(Outcome::Failed(format!("partial file: {e}")));
                            self.downloads.remove(&id);
                            self.node.set_downloading(id, false);
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
                if part.write_blocks(store_at / 4096, data).is_ok() {
                    a.dl.mark_stored(store_at, data.len());
                    *a.delivered.entry(from).or_default() += data.len() as u64;
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
        let publisher = if a.into_catalog {
            Publisher::new(a.ingest.clone(), Arc::clone(&self.catalog))
        } else {
            Publisher::without_catalog(a.ingest.clone())
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(publisher.publish_resumable(
                part,
                &name,
                Expect::Sha256(id),
                Collision::Tagged,
            ));
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
                    if a.suspects.is_empty() {
                        a.suspects = a.delivered.keys().copied().collect();
                        a.suspects.sort();
                    }
                    if !a.suspects.is_empty() {
                        let pick = a.suspects[(a.tries as usize - 1) % a.suspects.len()];
                        for s in a.dl.sources() {
                            a.dl.remove_source(s);
                        }
                        a.dl.add_source(Instant::now(), pick, self.node.ferry_max_length(pick));
                        eprintln!("cjp2p: {}: trying {pick} alone", hex(&id));
                    }
                    a.delivered.clear();
                    self.downloads.insert(id, a);
                }
            }
        }
    }

    fn flush_bitmaps(&mut self, all: bool) {
        let now = Instant::now();
        for a in self.downloads.values_mut() {
            if all || now.duration_since(a.last_flush) >= FLUSH_EVERY {
                if let Some(p) = a.part.as_mut() {
                    let _ = p.flush();
                }
                a.last_flush = now;
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

/// IPv4-mapped IPv6 sources become IPv4 (cjp2p.md 2).
fn normalize(a: SocketAddr) -> SocketAddr {
    if let SocketAddr::V6(v6) = a {
        if let Some(v4) = v6.ip().to_ipv4_mapped() {
            return SocketAddr::new(v4.into(), v6.port());
        }
    }
    a
}

/// On a dual-stack socket, IPv4 destinations go out as IPv4-mapped IPv6.
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
