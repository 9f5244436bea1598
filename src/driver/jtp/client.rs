//! The JTP client driver: connects, sends requests, runs the [`ResponseDecoder`] over what
//! arrives and streams every packet through [`ingest`](crate::ingest) into the output folder.
//!
//! Safety rules (jtp.md 5.2): every image is verified (xxHash64 of the decompressed bytes)
//! before it becomes visible; names from the wire are reduced to safe basenames; files appear
//! only by rename from a temporary name and never replace different content; nothing is
//! allocated from a wire count or length (the decoder checks them against [`ResponseLimits`],
//! data streams through a fixed buffer); compressed packets inflate into a bounded output.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ingest::{Expect as IngestExpect, IngestDir, IngestError, Outcome, StreamSink};
use crate::names;
use crate::proto::jtp::request::Request;
use crate::proto::jtp::response::{Event, Expect, ResponseDecoder, ResponseError, ResponseLimits};
use crate::proto::jtp::wire::{FileType, FLAG_ZSTD};
use crate::proto::jtp::zstd_frame::Inflater;
use crate::proto::jtp::{ALPN as ALPN_JTP, DEFAULT_PORT};
use crate::transport::{self, Stream, TlsClient, TransportError};
use crate::wire::hex;

/// Most ids in one GET_BY_ID (its count is one byte).
pub const MAX_IDS_PER_GET: usize = 255;
/// Above this many local files, `--batch` compares with the LIST and GETs the rest instead.
const MAX_BATCH_HAVE: usize = 1_000_000;
/// Read buffer per connection; also bounds how much of a packet is held at once.
const READ_BUF: usize = 1024 * 1024;
/// GET requests a keep-alive worker keeps in flight.
const PIPELINE_DEPTH: usize = 4;

/// Client settings (the reference client's flags, plus ferry's).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port`, `host`, or `jtp://host[:port]`.
    pub addr: String,
    pub tls: bool,
    /// Trust anchors (PEM); without it, the Mozilla root set.
    pub cert: Option<PathBuf>,
    /// Name verified and sent as SNI; default: the host part of `addr`.
    pub server_name: Option<String>,
    pub io_timeout: Duration,
    pub nodelay: bool,
    /// One connection per worker, reused across chunks and repeats.
    pub keep_alive: bool,
    /// Worker connections for GET (1..=32).
    pub parallel: usize,
    /// Times the whole transfer runs (benchmarks).
    pub repeat: usize,
    pub verbose: bool,
    /// Show a progress line on stderr.
    pub progress: bool,
    /// fsync each file before it is renamed into place.
    pub durable: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            addr: format!("127.0.0.1:{DEFAULT_PORT}"),
            tls: true,
            cert: None,
            server_name: None,
            io_timeout: Duration::from_secs(30),
            nodelay: true,
            keep_alive: false,
            parallel: 1,
            repeat: 1,
            verbose: false,
            progress: false,
            durable: false,
        }
    }
}

/// What went wrong, by whose fault.
#[derive(Debug)]
pub enum ClientError {
    /// Could not connect or complete the TLS handshake.
    Connect(TransportError),
    /// The connection failed mid-exchange.
    Io(io::Error),
    /// The server broke the framing rules.
    Protocol(ResponseError),
    /// The server answered with JTPE.
    Server { code: u8, message: String },
    /// A local problem (output folder, bad arguments).
    Local(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(
                e @ TransportError::Handshake {
                    error: rustls::Error::InvalidMessage(_),
                    ..
                },
            ) => write!(
                f,
                "connect: {e} (the server may speak plain TCP: try --no-tls)"
            ),
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "connection closed inside a frame")
            }
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::Protocol(ResponseError::MaybeOlderServer) => write!(
                f,
                "protocol: unexpected reply; the server may speak an older JTP"
            ),
            ClientError::Protocol(e) => write!(f, "protocol: {e}"),
            ClientError::Server { code, message } => write!(f, "error {code}: {message}"),
            ClientError::Local(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// One catalog entry as listed by the server.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listed {
    #[serde(serialize_with = "ser_hex")]
    pub id: u64,
    #[serde(rename = "type")]
    pub ftype: u8,
    pub name: String,
    pub size: u32,
}

fn ser_hex<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_u64(*id))
}

/// One file saved (or found already present).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Saved {
    #[serde(serialize_with = "ser_hex")]
    pub id: u64,
    pub name: String,
    pub size: u64,
    /// `created`, `already-present` or `renamed` (the name held different content).
    pub outcome: &'static str,
}

/// The result of a transfer.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub saved: Vec<Saved>,
    /// Ids whose bytes failed verification or framing checks: not written.
    #[serde(serialize_with = "ser_hex_vec")]
    pub corrupt: Vec<u64>,
    /// Ids asked for that the server did not send.
    #[serde(serialize_with = "ser_hex_vec")]
    pub missing: Vec<u64>,
    /// Packets received whose file could not be written locally.
    pub failed: Vec<String>,
    /// Payload bytes received (on the wire).
    pub wire_bytes: u64,
    /// Bytes written or verified on disk.
    pub bytes: u64,
    pub images: u64,
    pub seconds: f64,
    /// The transfer was cancelled (Ctrl-C).
    pub cancelled: bool,
}

fn ser_hex_vec<S: serde::Serializer>(ids: &[u64], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(ids.len()))?;
    for id in ids {
        seq.serialize_element(&hex::encode_u64(*id))?;
    }
    seq.end()
}

impl Summary {
    /// Something requested did not arrive intact.
    pub fn is_partial(&self) -> bool {
        !self.corrupt.is_empty() || !self.missing.is_empty() || !self.failed.is_empty()
    }
    pub fn created(&self) -> usize {
        self.saved
            .iter()
            .filter(|s| s.outcome != "already-present")
            .count()
    }
}

/// How to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// LIST, then GET_BY_ID in chunks of 255.
    Get,
    /// Delta sync: BATCH with the ids already in the output folder.
    Batch,
    /// LIST, then LIST_AND_GET on one connection.
    ListAndGet,
}

/// Strips `jtp://`, adds the default port; returns (`host:port`, host).
pub fn normalize_addr(addr: &str) -> (String, String) {
    let a = addr.strip_prefix("jtp://").unwrap_or(addr);
    let a = a.trim_end_matches('/');
    // [v6]:port, [v6], host:port, host, bare v6
    if let Some(rest) = a.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').unwrap_or("");
            let port = if port.is_empty() {
                DEFAULT_PORT.to_string()
            } else {
                port.to_string()
            };
            return (format!("[{host}]:{port}"), host.to_string());
        }
    }
    if a.matches(':').count() > 1 {
        return (format!("[{a}]:{DEFAULT_PORT}"), a.to_string());
    }
    match a.rsplit_once(':') {
        Some((h, p)) => (format!("{h}:{p}"), h.to_string()),
        None => (format!("{a}:{DEFAULT_PORT}"), a.to_string()),
    }
}

/// One connection with its decoder and read buffer.
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    dec: ResponseDecoder,
    req: Vec<u8>,
}

impl Conn {
    fn send(&mut self, req: &Request, expect: Expect) -> Result<(), ClientError> {
        self.req.clear();
        req.encode(&mut self.req);
        self.dec.expect(expect);
        self.stream.write_all(&self.req)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Feeds decoded events to `f` until it returns true (done). EOF at a frame boundary ends
    /// quietly (`Ok(false)`); EOF inside a frame is an error.
    fn pump(
        &mut self,
        f: &mut dyn FnMut(Event<'_>) -> Result<bool, ClientError>,
    ) -> Result<bool, ClientError> {
        loop {
            // Decode even with nothing buffered: PacketEnd and ResponseEnd need no bytes.
            {
                let Conn {
                    buf,
                    start,
                    end,
                    dec,
                    ..
                } = self;
                let (used, r) = dec.decode(&buf[*start..*end]);
                *start += used;
                match r {
                    Err(e) => return Err(ClientError::Protocol(e)),
                    Ok(Some(Event::ServerError { code, message })) => {
                        return Err(ClientError::Server { code, message })
                    }
                    Ok(Some(ev)) => {
                        if f(ev)? {
                            return Ok(true);
                        }
                        continue;
                    }
                    Ok(None) if *start < *end => continue,
                    Ok(None) => {}
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                return Err(ClientError::Local(
                    "protocol: a frame header does not fit the read buffer".into(),
                ));
            }
            let n = match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                // A peer without close_notify (the reference) ends with a bare FIN.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                // A signal (Ctrl-C) interrupted a read that has a timeout, which the kernel does
                // not restart; callers look at their stop flag between requests.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if self.dec.is_idle() && self.start == self.end {
                    return Ok(false);
                }
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.end += n;
        }
    }
}

/// Counters shared by workers for the progress line.
#[derive(Default)]
struct Progress {
    images: AtomicU64,
    bytes: AtomicU64,
}

/// A JTP client.
pub struct Client {
    opts: ClientOptions,
    addr: String,
    server_name: String,
    tls: Option<TlsClient>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, ClientError> {
        let (addr, host) = normalize_addr(&opts.addr);
        let server_name = opts.server_name.clone().unwrap_or(host);
        let tls = if opts.tls {
            Some(TlsClient::new(opts.cert.as_deref(), &[ALPN_JTP]).map_err(ClientError::Connect)?)
        } else {
            None
        };
        Ok(Client {
            opts,
            addr,
            server_name,
            tls,
        })
    }

    fn connect(&self) -> Result<Conn, ClientError> {
        let tcp = transport::connect_tcp(&self.addr, self.opts.io_timeout)
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(self.opts.nodelay);
        let stream = match &self.tls {
            Some(t) => t
                .connect(tcp, &self.server_name, self.opts.io_timeout)
                .map_err(ClientError::Connect)?,
            None => Stream::Tcp(tcp),
        };
        stream.set_read_timeout(Some(self.opts.io_timeout))?;
        stream.set_write_timeout(Some(self.opts.io_timeout))?;
        Ok(Conn {
            stream,
            buf: vec![0u8; READ_BUF],
            start: 0,
            end: 0,
            dec: ResponseDecoder::new(ResponseLimits::default()),
            req: Vec::new(),
        })
    }

    /// LIST on `conn` (or a fresh connection).
    fn list_on(&self, conn: &mut Conn, keep_alive: bool) -> Result<Vec<Listed>, ClientError> {
        conn.send(&Request::List { keep_alive }, Expect::List)?;
        let mut out = Vec::new();
        let done = conn.pump(&mut |ev| match ev {
            Event::ListStart { count } => {
                out.reserve((count as usize).min(4096));
                Ok(false)
            }
            Event::Entry {
                id,
                flags,
                name,
                size,
            } => {
                out.push(Listed {
                    id,
                    ftype: flags & 0x07,
                    name: String::from_utf8_lossy(name).into_owned(),
                    size,
                });
                Ok(false)
            }
            Event::ResponseEnd => Ok(true),
            _ => Ok(false),
        })?;
        if !done {
            return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(out)
    }

    /// `ferry jtp list`: one LIST.
    pub fn list(&self) -> Result<Vec<Listed>, ClientError> {
        let mut c = self.connect()?;
        let l = self.list_on(&mut c, false)?;
        c.stream.close_gracefully(Duration::from_millis(200));
        Ok(l)
    }

    /// Downloads into `out`: the given ids, or the whole catalog.
    pub fn get(
        &self,
        out: &Path,
        ids: Option<Vec<u64>>,
        mode: Mode,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        std::fs::create_dir_all(out)
            .map_err(|e| ClientError::Local(format!("output {}: {e}", out.display())))?;
        let mut ingest = IngestDir::new(out, out)
            .map_err(|e| ClientError::Local(format!("output {}: {e}", out.display())))?;
        ingest.set_durable(self.opts.durable);
        let started = Instant::now();
        let progress = Arc::new(Progress::default());
        let reporter = self.opts.progress.then(|| spawn_progress(progress.clone()));
        let mut summary = Summary::default();
        let mut pool: Vec<Conn> = Vec::new();
        let mut result = Ok(());
        for _ in 0..self.opts.repeat.max(1) {
            let r = match mode {
                Mode::Get => self.run_get(&ingest, ids.clone(), &mut pool, &progress, stop),
                Mode::Batch => self.run_batch(&ingest, &mut pool, &progress, stop),
                Mode::ListAndGet => self.run_list_and_get(&ingest, &mut pool, &progress, stop),
            };
            match r {
                Ok(s) => merge(&mut summary, s),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            if stop.load(Ordering::SeqCst) {
                summary.cancelled = true;
                break;
            }
        }
        for c in pool {
            c.stream.close_gracefully(Duration::from_millis(200));
        }
        if let Some((flag, h)) = reporter {
            flag.store(true, Ordering::SeqCst);
            let _ = h.join();
        }
        summary.seconds = started.elapsed().as_secs_f64();
        result.map(|_| summary)
    }

    /// A connection from the keep-alive pool, or a new one.
    fn take_conn(&self, pool: &mut Vec<Conn>) -> Result<Conn, ClientError> {
        match pool.pop() {
            Some(c) => Ok(c),
            None => self.connect(),
        }
    }

    fn give_back(&self, pool: &mut Vec<Conn>, c: Conn) {
        if self.opts.keep_alive {
            pool.push(c);
        } else {
            c.stream.close_gracefully(Duration::from_millis(200));
        }
    }

    fn run_get(
        &self,
        ingest: &IngestDir,
        ids: Option<Vec<u64>>,
        pool: &mut Vec<Conn>,
        progress: &Arc<Progress>,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let ka = self.opts.keep_alive;
        let mut c = self.take_conn(pool)?;
        let listing = self.list_on(&mut c, ka)?;
        self.give_back(pool, c);
        let wanted: Vec<u64> = match ids {
            Some(ids) => ids,
            None => listing.iter().map(|l| l.id).collect(),
        };
        let names = Arc::new(Names::new(&listing));
        let workers = self.opts.parallel.clamp(1, 32).min(wanted.len().max(1));
        let per = wanted.len().div_ceil(workers).max(1);
        let ranges: Vec<Vec<u64>> = wanted.chunks(per).map(|c| c.to_vec()).collect();
        let results: Mutex<Vec<Result<Summary, ClientError>>> = Mutex::new(Vec::new());
        let mut conns: Vec<Option<Conn>> = ranges.iter().map(|_| pool.pop()).collect();
        let returned: Mutex<Vec<Conn>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (range, conn) in ranges.iter().zip(conns.iter_mut()) {
                let names = names.clone();
                let results = &results;
                let returned = &returned;
                let progress = progress.clone();
                s.spawn(move || {
                    let mut conn = conn.take();
                    let r = self.get_range(ingest, range, &names, &mut conn, &progress, stop);
                    if let Some(c) = conn {
                        returned.lock().unwrap().push(c);
                    }
                    results.lock().unwrap().push(r);
                });
            }
        });
        pool.extend(returned.into_inner().unwrap());
        let mut total = Summary::default();
        for r in results.into_inner().unwrap() {
            merge(&mut total, r?);
        }
        Ok(total)
    }

    /// One worker: GET_BY_ID of `ids` in chunks of 255.
    fn get_range(
        &self,
        ingest: &IngestDir,
        ids: &[u64],
        names: &Names,
        conn: &mut Option<Conn>,
        progress: &Progress,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let ka = self.opts.keep_alive;
        let mut summary = Summary::default();
        if ka {
            // One connection, up to PIPELINE_DEPTH requests in flight: the server prepares the
            // next response while this side is still writing files from the last one.
            let chunks: Vec<&[u64]> = ids.chunks(MAX_IDS_PER_GET).collect();
            let mut c = match conn.take() {
                Some(c) => c,
                None => self.connect()?,
            };
            let (mut sent, mut done) = (0, 0);
            while done < chunks.len() {
                while sent < chunks.len()
                    && sent - done < PIPELINE_DEPTH
                    && !stop.load(Ordering::SeqCst)
                {
                    c.send(
                        &Request::GetById {
                            keep_alive: true,
                            ids: chunks[sent].to_vec(),
                        },
                        Expect::Get {
                            requested: chunks[sent].to_vec(),
                        },
                    )?;
                    sent += 1;
                }
                if stop.load(Ordering::SeqCst) {
                    // Requests may still be in flight: this connection cannot be reused.
                    summary.cancelled = true;
                    return Ok(summary);
                }
                let got = self.receive_packets(&mut c, ingest, names, &mut summary, progress)?;
                note_missing(&mut summary, chunks[done], got);
                done += 1;
            }
            *conn = Some(c);
            return Ok(summary);
        }
        for chunk in ids.chunks(MAX_IDS_PER_GET) {
            if stop.load(Ordering::SeqCst) {
                summary.cancelled = true;
                break;
            }
            let mut c = self.connect()?;
            c.send(
                &Request::GetById {
                    keep_alive: false,
                    ids: chunk.to_vec(),
                },
                Expect::Get {
                    requested: chunk.to_vec(),
                },
            )?;
            let got = self.receive_packets(&mut c, ingest, names, &mut summary, progress)?;
            note_missing(&mut summary, chunk, got);
            c.stream.close_gracefully(Duration::from_millis(200));
        }
        Ok(summary)
    }

    fn run_batch(
        &self,
        ingest: &IngestDir,
        pool: &mut Vec<Conn>,
        progress: &Arc<Progress>,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let have = local_ids(ingest.dest())
            .map_err(|e| ClientError::Local(format!("reading {}: {e}", ingest.dest().display())))?;
        let ka = self.opts.keep_alive;
        let mut c = self.take_conn(pool)?;
        // LIST and BATCH share the connection: LIST keeps it alive.
        let listing = self.list_on(&mut c, true)?;
        let names = Names::new(&listing);
        if have.len() > MAX_BATCH_HAVE {
            let missing: Vec<u64> = listing
                .iter()
                .map(|l| l.id)
                .filter(|id| !have.contains_key(id))
                .collect();
            self.give_back(pool, c);
            return self.run_get(ingest, Some(missing), pool, progress, stop);
        }
        c.send(
            &Request::Batch {
                keep_alive: ka,
                have: have.keys().copied().collect(),
            },
            Expect::Batch,
        )?;
        let mut summary = Summary::default();
        self.receive_packets(&mut c, ingest, &names, &mut summary, progress)?;
        self.give_back(pool, c);
        Ok(summary)
    }

    fn run_list_and_get(
        &self,
        ingest: &IngestDir,
        pool: &mut Vec<Conn>,
        progress: &Arc<Progress>,
        _stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let ka = self.opts.keep_alive;
        let mut c = self.take_conn(pool)?;
        let listing = self.list_on(&mut c, true)?;
        let names = Names::new(&listing);
        c.send(&Request::ListAndGet { keep_alive: ka }, Expect::ListAndGet)?;
        let mut summary = Summary::default();
        let got = self.receive_packets(&mut c, ingest, &names, &mut summary, progress)?;
        let got: std::collections::HashSet<u64> = got.into_iter().collect();
        summary
            .missing
            .extend(listing.iter().map(|l| l.id).filter(|id| !got.contains(id)));
        self.give_back(pool, c);
        Ok(summary)
    }

    /// Reads one packet response to its end, saving each packet. Returns the ids received.
    fn receive_packets(
        &self,
        c: &mut Conn,
        ingest: &IngestDir,
        names: &Names,
        summary: &mut Summary,
        progress: &Progress,
    ) -> Result<Vec<u64>, ClientError> {
        let mut got = Vec::new();
        let mut cur: Option<Incoming> = None;
        let verbose = self.opts.verbose;
        let done = c.pump(&mut |ev| {
            match ev {
                Event::PacketHeader { flags, len, id } => {
                    summary.wire_bytes += len as u64;
                    cur = Some(Incoming::start(ingest, names, flags, len, id)?);
                }
                Event::Data(d) => {
                    if let Some(p) = cur.as_mut() {
                        p.data(d);
                    }
                }
                Event::PacketEnd => {
                    if let Some(p) = cur.take() {
                        got.push(p.id);
                        let (id, bytes) = (p.id, p.expected_size());
                        match p.finish() {
                            Ok(saved) => {
                                if verbose {
                                    eprintln!(
                                        "jtp: {} {} ({} bytes, {})",
                                        hex::encode_u64(saved.id),
                                        saved.name,
                                        saved.size,
                                        saved.outcome
                                    );
                                }
                                summary.bytes += saved.size;
                                summary.images += 1;
                                progress.images.fetch_add(1, Ordering::Relaxed);
                                progress.bytes.fetch_add(saved.size, Ordering::Relaxed);
                                summary.saved.push(saved);
                            }
                            Err(Failure::Corrupt(why)) => {
                                eprintln!(
                                    "jtp: {}: corrupt ({why}); not written",
                                    hex::encode_u64(id)
                                );
                                summary.corrupt.push(id);
                            }
                            Err(Failure::Local(why)) => {
                                eprintln!("jtp: {}: cannot save: {why}", hex::encode_u64(id));
                                summary
                                    .failed
                                    .push(format!("{}: {why}", hex::encode_u64(id)));
                                let _ = bytes;
                            }
                        }
                    }
                }
                Event::ResponseEnd | Event::Cancelled => return Ok(true),
                _ => {}
            }
            Ok(false)
        })?;
        if !done {
            return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(got)
    }

    /// `--watch`: prints each event through `on_event` until `stop` is set, then CANCELs.
    pub fn watch(
        &self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(&Listed),
    ) -> Result<(), ClientError> {
        let mut c = self.connect()?;
        c.send(&Request::Watch, Expect::Watch)?;
        c.stream
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut cancelling = false;
        loop {
            if stop.load(Ordering::SeqCst) && !cancelling {
                cancelling = true;
                c.stream.set_write_timeout(Some(Duration::from_secs(2)))?;
                c.stream.write_all(&[3, 0])?;
                c.stream.flush()?;
            }
            let r = c.pump(&mut |ev| match ev {
                Event::Watch {
                    id,
                    flags,
                    name,
                    size,
                } => {
                    on_event(&Listed {
                        id,
                        ftype: flags & 7,
                        name: String::from_utf8_lossy(name).into_owned(),
                        size,
                    });
                    Ok(false)
                }
                Event::Cancelled => Ok(true),
                _ => Ok(false),
            });
            match r {
                Ok(true) => return Ok(()),
                Ok(false) => return Ok(()),
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if cancelling {
                        // Waited briefly for JTPC; good enough.
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Records the ids of `asked` that did not arrive.
fn note_missing(summary: &mut Summary, asked: &[u64], got: Vec<u64>) {
    let got: std::collections::HashSet<u64> = got.into_iter().collect();
    summary
        .missing
        .extend(asked.iter().filter(|id| !got.contains(id)));
}

fn merge(total: &mut Summary, s: Summary) {
    total.saved.extend(s.saved);
    total.corrupt.extend(s.corrupt);
    total.missing.extend(s.missing);
    total.failed.extend(s.failed);
    total.wire_bytes += s.wire_bytes;
    total.bytes += s.bytes;
    total.images += s.images;
    total.cancelled |= s.cancelled;
}

/// Names and sizes from the LIST, by id.
struct Names {
    by_id: HashMap<u64, (String, u32)>,
}

impl Names {
    fn new(listing: &[Listed]) -> Names {
        Names {
            by_id: listing
                .iter()
                .map(|l| (l.id, (l.name.clone(), l.size)))
                .collect(),
        }
    }

    /// The safe local name for `id` (jtp.md 5.2 rule 2).
    fn local_name(&self, id: u64, flags: u8) -> String {
        let ext = FileType::from_bits(flags).ext();
        let fallback = || format!("output_{}.{ext}", hex::encode_u64(id));
        match self.by_id.get(&id) {
            Some((name, _)) => match names::sanitize_basename(name, 255) {
                Some(n) if n.contains('.') => n,
                Some(n) => format!("{n}.{ext}"),
                None => fallback(),
            },
            None => fallback(),
        }
    }

    fn size(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).map(|(_, s)| *s)
    }
}

enum Failure {
    Corrupt(String),
    Local(String),
}

/// A packet being received.
struct Incoming {
    id: u64,
    name: String,
    sink: Option<StreamSink>,
    inflater: Option<Inflater>,
    listed_size: Option<u32>,
    corrupt: Option<String>,
    local_error: Option<String>,
}

impl Incoming {
    fn start(
        ingest: &IngestDir,
        names: &Names,
        flags: u8,
        len: u32,
        id: u64,
    ) -> Result<Incoming, ClientError> {
        let listed_size = names.size(id);
        let name = names.local_name(id, flags);
        let compressed = flags & FLAG_ZSTD != 0;
        let mut corrupt = None;
        if !compressed {
            if let Some(s) = listed_size {
                if s != len {
                    corrupt = Some(format!("length {len} differs from the listed size {s}"));
                }
            }
        }
        let inflater = if compressed {
            let cap = listed_size.unwrap_or(u32::MAX) as u64;
            Some(Inflater::new(cap).map_err(|e| ClientError::Local(format!("zstd: {e}")))?)
        } else {
            None
        };
        let hint = if compressed {
            listed_size.map(u64::from)
        } else {
            Some(len as u64)
        };
        let (sink, local_error) = if corrupt.is_none() {
            match ingest.begin_stream_xxh64(hint) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        Ok(Incoming {
            id,
            name,
            sink,
            inflater,
            listed_size,
            corrupt,
            local_error,
        })
    }

    fn expected_size(&self) -> Option<u32> {
        self.listed_size
    }

    fn data(&mut self, d: &[u8]) {
        if self.corrupt.is_some() || self.local_error.is_some() {
            return;
        }
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        let r = match self.inflater.as_mut() {
            Some(inf) => inf
                .feed(d, &mut |out| sink.write_all(out))
                .map_err(|e| Failure::Corrupt(e.to_string())),
            None => sink.write_all(d).map_err(|e| Failure::Local(e.to_string())),
        };
        match r {
            Ok(()) => {}
            Err(Failure::Corrupt(w)) => self.corrupt = Some(w),
            Err(Failure::Local(w)) => self.local_error = Some(w),
        }
    }

    fn finish(mut self) -> Result<Saved, Failure> {
        if let Some(w) = self.corrupt.take() {
            return Err(Failure::Corrupt(w));
        }
        if let Some(w) = self.local_error.take() {
            return Err(Failure::Local(w));
        }
        if let Some(inf) = self.inflater.take() {
            inf.finish().map_err(|e| Failure::Corrupt(e.to_string()))?;
        }
        let sink = self
            .sink
            .take()
            .ok_or_else(|| Failure::Local("no sink".into()))?;
        match sink.commit(&self.name, IngestExpect::Xxh64(self.id)) {
            Ok(c) => Ok(Saved {
                id: self.id,
                name: c.name,
                size: c.size,
                outcome: match c.outcome {
                    Outcome::Created => "created",
                    Outcome::AlreadyPresent => "already-present",
                    Outcome::Renamed => "renamed",
                },
            }),
            Err(IngestError::Mismatch { actual, .. }) => {
                Err(Failure::Corrupt(format!("xxHash64 is {actual}")))
            }
            Err(e) => Err(Failure::Local(e.to_string())),
        }
    }
}

/// xxHash64 of every regular, non-dot file directly in `dir` (streamed, never loaded whole).
fn local_ids(dir: &Path) -> io::Result<HashMap<u64, PathBuf>> {
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().as_encoded_bytes().first() == Some(&b'.') || !e.file_type()?.is_file() {
            continue;
        }
        let mut f = std::fs::File::open(e.path())?;
        let mut h = twox_hash::XxHash64::with_seed(0);
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            std::hash::Hasher::write(&mut h, &buf[..n]);
        }
        out.insert(std::hash::Hasher::finish(&h), e.path());
    }
    Ok(out)
}

/// A progress line on stderr, ten times a second, until the returned flag is set.
fn spawn_progress(p: Arc<Progress>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let h = std::thread::spawn(move || {
        let start = Instant::now();
        while !d.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            let bytes = p.bytes.load(Ordering::Relaxed);
            eprint!(
                "\r\x1b[K{} images  {:.1} MB  {:.1} MB/s",
                p.images.load(Ordering::Relaxed),
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / secs
            );
        }
        eprint!("\r\x1b[K");
    });
    (done, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_forms() {
        assert_eq!(
            normalize_addr("jtp://example.org"),
            ("example.org:8443".into(), "example.org".into())
        );
        assert_eq!(
            normalize_addr("127.0.0.1:9"),
            ("127.0.0.1:9".into(), "127.0.0.1".into())
        );
        assert_eq!(normalize_addr("[::1]:7"), ("[::1]:7".into(), "::1".into()));
        assert_eq!(normalize_addr("::1"), ("[::1]:8443".into(), "::1".into()));
    }

    #[test]
    fn j40_hostile_names_reduce_or_fall_back() {
        let listing: Vec<Listed> = [
            "../x.png", "a/b.png", "..", ".", "", "a\0b.png", ".ferry", "noext",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| Listed {
            id: i as u64,
            ftype: 0,
            name: n.to_string(),
            size: 1,
        })
        .collect();
        let names = Names::new(&listing);
        let got: Vec<String> = (0..8).map(|i| names.local_name(i, 0)).collect();
        assert_eq!(got[0], "x.png");
        assert_eq!(got[1], "b.png");
        for (i, g) in got.iter().enumerate().take(7).skip(2) {
            assert_eq!(g, &format!("output_{}.png", hex::encode_u64(i as u64)));
        }
        assert_eq!(got[7], "noext.png");
        assert_eq!(
            names.local_name(99, 3),
            format!("output_{}.bmp", hex::encode_u64(99))
        );
    }
}
