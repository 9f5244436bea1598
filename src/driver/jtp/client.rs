//! The JTP client driver: connects (through [`transport`]), writes what the connection machine
//! ([`proto::jtp::client::Connection`](crate::proto::jtp::client::Connection)) wants sent, reads
//! and feeds what arrives, and moves each packet's bytes, borrowed from the read buffer, into an
//! [`ingest`](crate::ingest) sink (through the bounded zstd inflater when compressed).
//!
//! How a transfer is split: a LIST first (names and sizes); then, by [`Mode`], GET_BY_ID chunks
//! of 255 ids over `parallel` worker connections (contiguous ranges, one thread each), one
//! BATCH, or one LIST_AND_GET. With keep-alive (`-k`) each worker keeps one connection across
//! chunks and `--repeat` passes; without it each request has its own connection. Whether
//! requests are pipelined on a connection is the machine's [`Policy`]: only a peer that
//! selected ALPN `jtp/1` over TLS is known to be safe to pipeline to; any other peer (the
//! reference server, anything over plain TCP) gets one request at a time, with the quiet
//! period after each GET_BY_ID answer that the reference server's CANCEL check needs (see the
//! machine's module doc).
//!
//! Safety rules (jtp.md 5.2): every image is verified (xxHash64 of the decompressed bytes) by
//! ingest before it becomes visible; names from the wire are reduced to safe basenames by the
//! machine; files appear only by rename from a temporary name and never replace different
//! content; nothing is allocated from a wire count or length; compressed packets inflate into
//! a bounded output.
//!
//! Against a hostile server, beyond the rules above: a packet for an id the LIST did not name
//! may make at most the largest listed size ([`Listing::cap_for`]); a zstd window is at most
//! 8 MiB; disk space is taken 64 MiB ahead of the bytes, never the whole announced size.
//!
//! Progress is counted into a [`Progress`] ([`Client::progress`]) as bytes arrive; this module
//! never draws it. Reads wait at most `READ_SLICE` (200 ms) at a time (the io timeout is counted across
//! them), so the stop flag given to [`Client::get`] ends every worker within a fraction of a
//! second, even mid-image against a silent server; a run's temporaries go with it, and those
//! that dead processes left in the output folder are removed before it starts.
//! [`Summary::cancelled`] means the run was cut short: a stop that comes after the last pass
//! completed changes nothing.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::driver::progress::Progress;
use crate::ingest::{Expect as IngestExpect, IngestDir, IngestError, Outcome, StreamSink};
use crate::proto::jtp::client::{
    self as machine, Connection, Done, Event, Job, Listing, PacketStart, Policy, PIPELINE_DEPTH,
};
use crate::proto::jtp::response::ResponseError;
use crate::proto::jtp::zstd_frame::Inflater;
use crate::proto::jtp::{ALPN as ALPN_JTP, DEFAULT_PORT};
use crate::transport::{self, ClientHint, Stream, TlsClient, TransportError};
use crate::wire::hex;

pub use crate::proto::jtp::client::{Listed, MAX_IDS_PER_GET};

/// Above this many local files, `--batch` compares with the LIST and GETs the rest instead.
const MAX_BATCH_HAVE: usize = 1_000_000;
/// Read buffer per connection; also bounds how much of a packet is held at once.
const READ_BUF: usize = 1024 * 1024;
/// How long `--watch` waits between looks at its stop flag.
const WATCH_POLL: Duration = Duration::from_millis(200);
/// How long `--watch` waits for `JTPC` after its CANCEL.
const WATCH_CANCEL_WAIT: Duration = Duration::from_secs(1);
/// How long a connection lingers on close, discarding input (jtp.md 3.1).
const CLOSE_LINGER: Duration = Duration::from_millis(200);
/// Longest a read waits before the stop flag is looked at again (the io timeout is counted
/// across such waits): Ctrl-C stops every worker within this, whichever thread the signal
/// reached, even when a server stalls mid-image.
const READ_SLICE: Duration = Duration::from_millis(200);

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
    /// No read or write progress for this long.
    TimedOut(Duration),
    /// The server closed while an answer was due.
    Closed { inside_frame: bool },
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
            ClientError::Connect(e) => {
                write!(f, "connect: {e}")?;
                match e.client_hint() {
                    Some(ClientHint::PeerIsPlain) => {
                        f.write_str(" (the server may speak plain TCP: try --no-tls)")
                    }
                    Some(ClientHint::UnknownIssuer) => f.write_str(
                        " (the server's certificate is not signed by an authority you trust: \
                         pass --cert PEM with it; a ferry server that generated its own \
                         certificate keeps it in DIR/.ferry/tls/cert.pem)",
                    ),
                    Some(ClientHint::WrongName) => f.write_str(
                        " (the certificate does not name that host: pass --server-name with a \
                         name it does)",
                    ),
                    None => Ok(()),
                }
            }
            ClientError::Protocol(ResponseError::UnknownMagic(m))
                if transport::is_tls_record(m) =>
            {
                f.write_str(
                    "the server speaks TLS: drop --no-tls (and pass --cert if it is self-signed)",
                )
            }
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::TimedOut(d) => write!(f, "timed out after {} s", d.as_secs_f64()),
            ClientError::Closed { .. } | ClientError::Protocol(_) | ClientError::Server { .. } => {
                write!(f, "{}", self.machine_error().expect("a machine error"))
            }
            ClientError::Local(m) => write!(f, "{m}"),
        }
    }
}

impl ClientError {
    fn machine_error(&self) -> Option<machine::Error> {
        Some(match self {
            ClientError::Closed { inside_frame } => machine::Error::Closed {
                inside_frame: *inside_frame,
            },
            ClientError::Protocol(e) => machine::Error::Protocol(*e),
            ClientError::Server { code, message } => machine::Error::Server {
                code: *code,
                message: message.clone(),
            },
            _ => return None,
        })
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<machine::Error> for ClientError {
    fn from(e: machine::Error) -> Self {
        match e {
            machine::Error::Protocol(e) => ClientError::Protocol(e),
            machine::Error::Server { code, message } => ClientError::Server { code, message },
            machine::Error::Closed { inside_frame } => ClientError::Closed { inside_frame },
        }
    }
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

fn ser_hex<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_u64(*id))
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
    /// The listed name of each missing id the LIST named (as sent: escape before showing).
    #[serde(skip)]
    pub missing_names: std::collections::HashMap<u64, String>,
    /// Packets received whose file could not be written locally.
    pub failed: Vec<String>,
    /// Payload bytes received (on the wire).
    pub wire_bytes: u64,
    /// Bytes written or verified on disk.
    pub bytes: u64,
    pub images: u64,
    pub seconds: f64,
    /// The transfer was cut short (Ctrl-C): a pass or a repeat was left undone.
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

    fn merge(&mut self, s: Summary) {
        self.saved.extend(s.saved);
        self.corrupt.extend(s.corrupt);
        self.missing.extend(s.missing);
        self.missing_names.extend(s.missing_names);
        self.failed.extend(s.failed);
        self.wire_bytes += s.wire_bytes;
        self.bytes += s.bytes;
        self.images += s.images;
        self.cancelled |= s.cancelled;
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

/// Why [`Conn::run`] returned early.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    /// Every queued request was answered.
    Idle,
    /// The stop flag was set; answers may still be in flight.
    Interrupted,
}

/// What [`Conn::run`] hands each event to, with the input the event's ranges index.
type OnEvent<'a> = dyn FnMut(Event, &[u8]) -> Result<(), ClientError> + 'a;

/// One connection: its socket, its machine and its read buffer.
struct Conn {
    stream: Stream,
    machine: Connection,
    buf: Vec<u8>,
    io_timeout: Duration,
}

impl Conn {
    /// Writes whatever the machine wants sent now; true when something went out.
    fn transmit(&mut self) -> Result<bool, ClientError> {
        let Conn {
            stream, machine, ..
        } = self;
        let mut wrote = false;
        while let Some(bytes) = machine.poll_transmit(Instant::now()) {
            if let Err(e) = stream.write_all(bytes) {
                return Err(self.after_write_error(e));
            }
            wrote = true;
        }
        if wrote {
            if let Err(e) = self.stream.flush() {
                return Err(self.after_write_error(e));
            }
        }
        Ok(wrote)
    }

    /// A write failed: the server may have said why before closing (a `JTPE`, as the rate
    /// limiter sends right after accept). Reads what already arrived and reports that instead.
    fn after_write_error(&mut self, e: io::Error) -> ClientError {
        let mut scratch = vec![0u8; 64 * 1024];
        if let Ok(transport::TryRead::Data(n)) = self.stream.try_read(&mut scratch) {
            let mut fed = 0;
            while fed < n {
                match self.machine.handle_input(&scratch[fed..n], Instant::now()) {
                    Err(e @ machine::Error::Server { .. }) => return e.into(),
                    Err(_) => break,
                    Ok(step) if step.event.is_none() => break,
                    Ok(step) => fed += step.consumed,
                }
            }
        }
        io_error(e, self.io_timeout)
    }

    /// Runs until every queued request is answered (or `stop` is set), handing each event to
    /// `on_event` with the input it refers to ([`Event::Data`] ranges index that slice).
    fn run(
        &mut self,
        stop: &AtomicBool,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Stopped, ClientError> {
        let (mut start, mut end) = (0usize, 0usize);
        let mut last_progress = Instant::now();
        loop {
            if self.transmit()? {
                last_progress = Instant::now();
            }
            // Decode everything buffered; events that need no input come out here too.
            loop {
                let step = self
                    .machine
                    .handle_input(&self.buf[start..end], Instant::now())?;
                let input = &self.buf[start..end];
                start += step.consumed;
                match step.event {
                    Some(ev) => {
                        let more = matches!(ev, Event::Done(_) | Event::Listing(_));
                        on_event(ev, input)?;
                        if more {
                            // An answer ended: the next request may go out before reading on.
                            self.transmit()?;
                        }
                    }
                    None => break,
                }
            }
            if self.machine.is_idle() {
                return Ok(Stopped::Idle);
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(Stopped::Interrupted);
            }
            if !self.machine.is_awaiting() {
                // A request is held back by the quiet period after a GET_BY_ID answer.
                let Some(t) = self.machine.poll_timeout() else {
                    // Work queued on a connection that can carry no more (a driver bug).
                    return Err(ClientError::Local(
                        "jtp: request queued on a finished connection".into(),
                    ));
                };
                std::thread::sleep(t.saturating_duration_since(Instant::now()));
                continue;
            }
            // Everything offered was taken (the machine keeps split frames): read afresh.
            start = 0;
            end = 0;
            let n = match self.stream.read(&mut self.buf) {
                Ok(n) => n,
                // A read waits at most READ_SLICE, and a signal (Ctrl-C) interrupts a read with
                // a timeout, which the kernel does not restart: look at the stop flag, and at
                // how long the server has been silent.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) =>
                {
                    if last_progress.elapsed() >= self.io_timeout {
                        return Err(ClientError::TimedOut(self.io_timeout));
                    }
                    continue;
                }
                Err(e) => return Err(io_error(e, self.io_timeout)),
            };
            last_progress = Instant::now();
            if n == 0 {
                self.machine.handle_eof()?;
                return Ok(Stopped::Idle);
            }
            end = n;
        }
    }

    fn close(self) {
        self.stream.close_gracefully(CLOSE_LINGER);
    }
}

/// A read or write timeout reads as "timed out after N s", not as EAGAIN.
fn io_error(e: io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::TimedOut(timeout),
        io::ErrorKind::UnexpectedEof => ClientError::Closed { inside_frame: true },
        _ => ClientError::Io(e),
    }
}

/// A JTP client.
pub struct Client {
    opts: ClientOptions,
    addr: String,
    server_name: String,
    tls: Option<TlsClient>,
    progress: Arc<Progress>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, ClientError> {
        let (addr, host) = normalize_addr(&opts.addr);
        let server_name = opts.server_name.clone().unwrap_or(host);
        // An unreadable or unusable --cert file is a local error, not a network one.
        let tls = if opts.tls {
            Some(
                TlsClient::new(opts.cert.as_deref(), &[ALPN_JTP])
                    .map_err(|e| ClientError::Local(format!("--cert: {e}")))?,
            )
        } else {
            None
        };
        Ok(Client {
            opts,
            addr,
            server_name,
            tls,
            progress: Arc::new(Progress::new()),
        })
    }

    /// The counters [`get`](Self::get) updates as images arrive (bytes count as they are
    /// written, so one large image shows progress too).
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
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
        stream.set_read_timeout(Some(READ_SLICE.min(self.opts.io_timeout)))?;
        stream.set_write_timeout(Some(self.opts.io_timeout))?;
        // Only a server that selected `jtp/1` is known to leave pipelined input alone (the
        // reference configures no ALPN and eats bytes that arrive during GET_BY_ID answers).
        let policy = if stream.alpn().as_deref() == Some(ALPN_JTP) {
            Policy::Pipelined {
                depth: PIPELINE_DEPTH,
            }
        } else {
            Policy::Sequential
        };
        Ok(Conn {
            stream,
            machine: Connection::new(policy, self.opts.keep_alive),
            buf: vec![0u8; READ_BUF],
            io_timeout: self.opts.io_timeout,
        })
    }

    /// A connection from the keep-alive pool, or a new one.
    fn take_conn(&self, pool: &mut Vec<Conn>) -> Result<Conn, ClientError> {
        match pool.pop() {
            Some(c) => Ok(c),
            None => self.connect(),
        }
    }

    /// Keeps `c` for the next request when keep-alive is on and the machine allows it.
    fn give_back(&self, pool: &mut Vec<Conn>, c: Conn) {
        if self.opts.keep_alive && c.machine.is_reusable() {
            pool.push(c);
        } else {
            c.close();
        }
    }

    /// A LIST on `c` (`None` when interrupted).
    fn list_on(
        &self,
        c: &mut Conn,
        stop: &AtomicBool,
    ) -> Result<Option<Arc<Listing>>, ClientError> {
        c.machine.push(Job::List);
        let mut listing = None;
        let r = c.run(stop, &mut |ev, _| {
            if let Event::Listing(l) = ev {
                listing = Some(l);
            }
            Ok(())
        })?;
        if r == Stopped::Interrupted {
            return Ok(None);
        }
        listing.map(Some).ok_or(ClientError::Closed {
            inside_frame: false,
        })
    }

    /// `ferry jtp list`: one LIST.
    pub fn list(&self) -> Result<Vec<Listed>, ClientError> {
        let mut c = self.connect()?;
        let l = self.list_on(&mut c, &AtomicBool::new(false))?;
        c.close();
        Ok(l.map_or_else(Vec::new, |l| {
            Arc::try_unwrap(l).map_or_else(|l| l.entries().to_vec(), Listing::into_entries)
        }))
    }

    /// Downloads into `out`: the given ids, or the whole catalog.
    pub fn get(
        &self,
        out: &Path,
        ids: Option<Vec<u64>>,
        mode: Mode,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        crate::dir::create_dir_all(out)
            .map_err(|e| ClientError::Local(format!("output {}: {e}", out.display())))?;
        let mut ingest = IngestDir::new(out, out)
            .map_err(|e| ClientError::Local(format!("output {}: {e}", out.display())))?;
        ingest.set_durable(self.opts.durable);
        // Temporaries of earlier runs that were killed (or stopped by a second Ctrl-C).
        crate::driver::clean_stale_temporaries(&ingest);
        let started = Instant::now();
        let mut summary = Summary::default();
        let mut pool: Vec<Conn> = Vec::new();
        let mut result = Ok(());
        let passes = self.opts.repeat.max(1);
        for pass in 0..passes {
            let want = match &ids {
                Some(ids) => Want::Ids(ids.clone()),
                None => Want::All,
            };
            let r = match mode {
                Mode::Get => self.run_get(&ingest, want, &mut pool, stop),
                Mode::Batch => self.run_batch(&ingest, &mut pool, stop),
                Mode::ListAndGet => self.run_list_and_get(&ingest, &mut pool, stop),
            };
            match r {
                Ok(s) => summary.merge(s),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            // A pass that ended whole was not cut short by a Ctrl-C that came late in it;
            // the passes still to come are.
            if stop.load(Ordering::SeqCst) {
                summary.cancelled |= pass + 1 < passes;
                break;
            }
        }
        for c in pool {
            c.close();
        }
        summary.seconds = started.elapsed().as_secs_f64();
        result.map(|_| summary)
    }

    fn receiver<'a>(&'a self, ingest: &'a IngestDir) -> Receiver<'a> {
        Receiver {
            ingest,
            progress: &self.progress,
            verbose: self.opts.verbose,
            summary: Summary::default(),
            current: None,
            listing: None,
        }
    }

    fn run_get(
        &self,
        ingest: &IngestDir,
        want: Want,
        pool: &mut Vec<Conn>,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let mut c = self.take_conn(pool)?;
        let listing = self.list_on(&mut c, stop)?;
        self.give_back(pool, c);
        let Some(listing) = listing else {
            return Ok(Summary {
                cancelled: true,
                ..Summary::default()
            });
        };
        let wanted: Vec<u64> = match want {
            Want::Ids(ids) => ids,
            Want::All => listing.ids().collect(),
            Want::AllBut(have) => listing.ids().filter(|id| !have.contains(id)).collect(),
        };
        self.progress.add_total_items(wanted.len() as u64);
        self.progress.add_total_bytes(
            wanted
                .iter()
                .filter_map(|id| listing.get(*id))
                .map(|l| u64::from(l.size))
                .sum(),
        );
        let ranges = machine::split_ranges(&wanted, self.opts.parallel.clamp(1, 32));
        let mut conns: Vec<Option<Conn>> = ranges.iter().map(|_| pool.pop()).collect();
        let results: Mutex<Vec<Result<Summary, ClientError>>> = Mutex::new(Vec::new());
        let returned: Mutex<Vec<Conn>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (range, conn) in ranges.iter().zip(conns.iter_mut()) {
                let (listing, results, returned) = (&listing, &results, &returned);
                s.spawn(move || {
                    let mut conn = conn.take();
                    let r = self.get_range(ingest, range, listing, &mut conn, stop);
                    if let Some(c) = conn {
                        returned.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                });
            }
        });
        pool.extend(returned.into_inner().unwrap_or_else(|p| p.into_inner()));
        let mut total = Summary::default();
        for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            total.merge(r?);
        }
        Ok(total)
    }

    /// One worker: GET_BY_ID of `ids` in chunks of 255. With keep-alive, on one connection
    /// (`conn`, or a new one), handed back in `conn` when it may carry more; else one
    /// connection per chunk.
    fn get_range(
        &self,
        ingest: &IngestDir,
        ids: &[u64],
        listing: &Arc<Listing>,
        conn: &mut Option<Conn>,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let mut rx = self.receiver(ingest);
        rx.listing = Some(listing.clone());
        if self.opts.keep_alive {
            let mut c = match conn.take() {
                Some(c) => c,
                None => self.connect()?,
            };
            c.machine.set_listing(listing.clone());
            for chunk in ids.chunks(MAX_IDS_PER_GET) {
                c.machine.push(Job::Get(chunk.to_vec()));
            }
            if c.run(stop, &mut |ev, input| rx.on_event(ev, input))? == Stopped::Interrupted {
                // Answers may still be in flight: this connection cannot be reused.
                rx.summary.cancelled = true;
                c.close();
                return Ok(rx.summary);
            }
            if c.machine.is_reusable() {
                *conn = Some(c);
            } else {
                c.close();
            }
            return Ok(rx.summary);
        }
        for chunk in ids.chunks(MAX_IDS_PER_GET) {
            if stop.load(Ordering::SeqCst) {
                rx.summary.cancelled = true;
                break;
            }
            let mut c = self.connect()?;
            c.machine.set_listing(listing.clone());
            c.machine.push(Job::Get(chunk.to_vec()));
            let r = c.run(stop, &mut |ev, input| rx.on_event(ev, input))?;
            c.close();
            if r == Stopped::Interrupted {
                rx.summary.cancelled = true;
                break;
            }
        }
        Ok(rx.summary)
    }

    fn run_batch(
        &self,
        ingest: &IngestDir,
        pool: &mut Vec<Conn>,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let have = local_ids(ingest.dest())
            .map_err(|e| ClientError::Local(format!("reading {}: {e}", ingest.dest().display())))?;
        if have.len() > MAX_BATCH_HAVE {
            return self.run_get(ingest, Want::AllBut(have), pool, stop);
        }
        // LIST and BATCH share the connection; the LIST keeps it alive for the BATCH.
        let mut c = self.take_conn(pool)?;
        c.machine.push(Job::List);
        c.machine.push(Job::Batch(have.into_iter().collect()));
        self.run_packets(ingest, c, false, pool, stop)
    }

    fn run_list_and_get(
        &self,
        ingest: &IngestDir,
        pool: &mut Vec<Conn>,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let mut c = self.take_conn(pool)?;
        c.machine.push(Job::List);
        c.machine.push(Job::ListAndGet);
        self.run_packets(ingest, c, true, pool, stop)
    }

    /// Runs a queued LIST and packet response on `c`, saving every packet. The progress total
    /// is the answer's packet count, and with `whole_catalog` (LIST_AND_GET) the listed bytes.
    fn run_packets(
        &self,
        ingest: &IngestDir,
        mut c: Conn,
        whole_catalog: bool,
        pool: &mut Vec<Conn>,
        stop: &AtomicBool,
    ) -> Result<Summary, ClientError> {
        let mut rx = self.receiver(ingest);
        let progress = &self.progress;
        let mut listed_bytes = 0;
        let r = c.run(stop, &mut |ev, input| {
            match &ev {
                Event::Listing(l) if whole_catalog => {
                    listed_bytes = l.entries().iter().map(|e| u64::from(e.size)).sum();
                }
                Event::Packets { count } => {
                    progress.add_total_items(u64::from(*count));
                    progress.add_total_bytes(listed_bytes);
                }
                _ => {}
            }
            rx.on_event(ev, input)
        })?;
        if r == Stopped::Interrupted {
            rx.summary.cancelled = true;
            c.close();
        } else {
            self.give_back(pool, c);
        }
        Ok(rx.summary)
    }

    /// `--watch`: hands each event to `on_event` until `stop` is set, then CANCELs.
    pub fn watch(
        &self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(&Listed),
    ) -> Result<(), ClientError> {
        let mut c = self.connect()?;
        c.machine.push(Job::Watch);
        c.transmit()?;
        // Silence is normal while subscribed: wake up now and then to look at `stop`.
        c.stream.set_read_timeout(Some(WATCH_POLL))?;
        let mut cancel_deadline: Option<Instant> = None;
        let mut start = 0;
        let mut end = 0;
        loop {
            if cancel_deadline.is_none() && stop.load(Ordering::SeqCst) {
                cancel_deadline = Some(Instant::now() + WATCH_CANCEL_WAIT);
                c.stream.set_write_timeout(Some(Duration::from_secs(2)))?;
                c.machine.cancel();
                c.transmit()?;
            }
            loop {
                let step = c.machine.handle_input(&c.buf[start..end], Instant::now())?;
                start += step.consumed;
                match step.event {
                    Some(Event::Watch(l)) => on_event(&l),
                    Some(Event::Cancelled) => {
                        c.close();
                        return Ok(());
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            if cancel_deadline.is_some_and(|d| Instant::now() >= d) {
                // Waited briefly for JTPC; good enough.
                return Ok(());
            }
            start = 0;
            end = 0;
            match c.stream.read(&mut c.buf) {
                // The server ended the subscription.
                Ok(0) => return Ok(()),
                Ok(n) => end = n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }
}

/// Which images a GET pass fetches.
enum Want {
    All,
    Ids(Vec<u64>),
    /// Every listed image but these (`--batch` above [`MAX_BATCH_HAVE`] local files).
    AllBut(HashSet<u64>),
}

/// Saves the packets of one connection's answers and keeps their account.
struct Receiver<'a> {
    ingest: &'a IngestDir,
    progress: &'a Progress,
    verbose: bool,
    summary: Summary,
    current: Option<Incoming>,
    /// The LIST of this pass (for the names of missing ids).
    listing: Option<Arc<Listing>>,
}

impl Receiver<'_> {
    fn on_event(&mut self, ev: Event, input: &[u8]) -> Result<(), ClientError> {
        match ev {
            Event::Packet(p) => {
                self.summary.wire_bytes += u64::from(p.len);
                self.current = Some(Incoming::start(self.ingest, p)?);
            }
            Event::Data(range) => {
                if let Some(p) = self.current.as_mut() {
                    p.data(&input[range], self.progress);
                }
            }
            Event::PacketEnd => {
                if let Some(p) = self.current.take() {
                    self.finish(p);
                }
            }
            Event::Done(Done::Get { missing } | Done::ListAndGet { missing }) => {
                if let Some(l) = &self.listing {
                    for id in &missing {
                        if let Some(e) = l.get(*id) {
                            self.summary.missing_names.insert(*id, e.name.clone());
                        }
                    }
                }
                self.summary.missing.extend(missing);
            }
            Event::Listing(l) => self.listing = Some(l),
            Event::Packets { .. }
            | Event::Done(Done::Batch)
            | Event::Cancelled
            | Event::Watch(_) => {}
        }
        Ok(())
    }

    fn finish(&mut self, p: Incoming) {
        let id = p.id;
        match p.finish() {
            Ok(saved) => {
                if self.verbose {
                    eprintln!(
                        "jtp: {} {} ({} bytes, {})",
                        hex::encode_u64(saved.id),
                        crate::names::printable(&saved.name),
                        saved.size,
                        saved.outcome
                    );
                }
                self.summary.bytes += saved.size;
                self.summary.images += 1;
                self.progress.add_items(1);
                self.summary.saved.push(saved);
            }
            Err(Failure::Corrupt(why)) => {
                eprintln!("jtp: {}: corrupt ({why}); not written", hex::encode_u64(id));
                self.summary.corrupt.push(id);
            }
            Err(Failure::Local(why)) => {
                eprintln!("jtp: {}: cannot save: {why}", hex::encode_u64(id));
                self.summary
                    .failed
                    .push(format!("{}: {why}", hex::encode_u64(id)));
            }
        }
    }
}

enum Failure {
    Corrupt(String),
    Local(String),
}

/// A packet being received: its sink, and its inflater when compressed.
struct Incoming {
    id: u64,
    name: String,
    sink: Option<StreamSink>,
    inflater: Option<Inflater>,
    corrupt: Option<String>,
    local_error: Option<String>,
}

impl Incoming {
    fn start(ingest: &IngestDir, p: PacketStart) -> Result<Incoming, ClientError> {
        let corrupt = p.defect.map(|d| d.to_string());
        let inflater = if p.is_compressed() {
            Some(
                Inflater::new(p.max_size())
                    .map_err(|e| ClientError::Local(format!("zstd: {e}")))?,
            )
        } else {
            None
        };
        let (sink, local_error) = if corrupt.is_none() {
            match ingest.begin_stream_xxh64(p.expected_size()) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        Ok(Incoming {
            id: p.id,
            name: p.name,
            sink,
            inflater,
            corrupt,
            local_error,
        })
    }

    fn data(&mut self, d: &[u8], progress: &Progress) {
        if self.corrupt.is_some() || self.local_error.is_some() {
            return;
        }
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        let r = match self.inflater.as_mut() {
            Some(inf) => inf
                .feed(d, &mut |out| {
                    progress.add_bytes(out.len() as u64);
                    sink.write_all(out)
                })
                .map_err(|e| Failure::Corrupt(e.to_string())),
            None => {
                progress.add_bytes(d.len() as u64);
                sink.write_all(d).map_err(|e| Failure::Local(e.to_string()))
            }
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
fn local_ids(dir: &Path) -> io::Result<HashSet<u64>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = HashSet::new();
    let mut buf = vec![0u8; 1 << 20];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().as_encoded_bytes().first() == Some(&b'.') || !e.file_type()?.is_file() {
            continue;
        }
        // Never through a link or into a FIFO swapped in since the listing (the ids go to the
        // server, and a FIFO would block): O_NOFOLLOW | O_NONBLOCK, the type checked on the fd.
        let mut f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(e.path())
        {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
            _ => continue,
        };
        let mut h = twox_hash::XxHash64::with_seed(0);
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            std::hash::Hasher::write(&mut h, &buf[..n]);
        }
        out.insert(std::hash::Hasher::finish(&h));
    }
    Ok(out)
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
    fn timeouts_read_as_timed_out_not_eagain() {
        let e = io_error(
            io::Error::from(io::ErrorKind::WouldBlock),
            Duration::from_secs(30),
        );
        assert_eq!(e.to_string(), "timed out after 30 s");
        let e = io_error(
            io::Error::from(io::ErrorKind::TimedOut),
            Duration::from_millis(1500),
        );
        assert_eq!(e.to_string(), "timed out after 1.5 s");
    }
}
