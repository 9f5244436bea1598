//! The TEJ client driver: runs the client machines of
//! [`proto::tej::client`](crate::proto::tej::client) over a [`Stream`].
//!
//! - `send`: writes what the [`Sender`] hands out, streaming each file from disk to the socket
//!   through one fixed buffer (hashing it on the way), then reads frames until the machine has
//!   judged the acknowledgement or its wait ran out.
//! - `get`: writes the request, streams each answered file into an ingest temporary (with a
//!   running SHA-256), and commits them only once the [`Getter`] has checked the manifest:
//!   on any mismatch nothing is committed (tej.md T31).
//! - `list`: listing pages until the [`Lister`] has seen the last.
//!
//! Progress is counted into a [`Progress`] ([`Client::progress`]) as file bytes move.
//!
//! Stopping and waiting: reads wait at most `READ_SLICE` (200 ms) at a time (the io timeout is counted
//! across them), so a set [`Client::stop_flag`] ends `get`, `send` and `list` within a fraction
//! of a second with [`ClientError::Interrupted`], whichever thread the signal reached; the
//! ingest temporaries of an interrupted `get` are removed as it returns. Before `get` writes
//! into its output folder it removes the temporaries processes that no longer run left there
//! ([`crate::ingest::IngestDir::clean_stale`]).
//!
//! What a hostile server can do to `get`: send files that were not asked for or under unsafe
//! names (refused at their header by the machine, nothing written: [`ClientError::Unrequested`],
//! [`ClientError::UnsafeName`]), announce sizes it never sends (space is taken 64 MiB ahead of
//! the bytes, see [`crate::ingest::StreamSink`]), put text in names and messages (the command
//! line escapes it). A plain-TCP client that reads a TLS record first says so
//! ([`ClientError::ServerSpeaksTls`]); handshake failures carry a hint
//! ([`crate::transport::ClientHint`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::driver::progress::Progress;
use crate::ingest::{Collision, Expect, IngestDir, StreamSink};
use crate::names;
use crate::proto::tej::client::{
    self as machine, GetEvent, Getter, Lister, SendEvent, SendOutcome, Sender, Step, Transmit,
};
use crate::proto::tej::frame::FrameError;
use crate::proto::tej::messages::ManifestEntry;
use crate::proto::tej::ALPN as ALPN_TEJ;
use crate::transport::{self, ClientHint, Stream, TlsClient, TransportError};
use crate::wire::hex;

/// Pieces files are read and sent in, and the read buffer.
const CHUNK: usize = 256 * 1024;
/// How long a connection lingers on close, discarding input.
const CLOSE_LINGER: Duration = Duration::from_millis(200);
/// How long `send` looks for the peer's error frame after a write failed.
const WRITE_FAILED_WAIT: Duration = Duration::from_secs(2);
/// Longest a read waits before the stop flag is looked at again (the io timeout is counted
/// across such waits): Ctrl-C is seen within this, whichever thread the signal reached.
const READ_SLICE: Duration = Duration::from_millis(200);

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub addr: String,
    pub tls: bool,
    pub cert: Option<PathBuf>,
    pub server_name: Option<String>,
    pub io_timeout: Duration,
    /// How long `send` waits for the acknowledgement. Default 60 s.
    pub ack_timeout: Duration,
    pub verbose: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            addr: "127.0.0.1:8000".into(),
            tls: false,
            cert: None,
            server_name: None,
            io_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(60),
            verbose: false,
        }
    }
}

/// What went wrong, by whose fault.
#[derive(Debug)]
pub enum ClientError {
    Connect(TransportError),
    Io(io::Error),
    /// No read or write progress for this long.
    TimedOut(Duration),
    /// The peer closed before its answer was complete.
    Closed,
    /// The peer broke the frame format.
    Frame(FrameError),
    /// The peer answered with an error frame (status 3); its JSON message.
    Peer(String),
    /// The answer did not match what was asked or sent.
    Mismatch(String),
    /// The answer carried a file under a name ferry never stores (as sent, lossily).
    UnsafeName(String),
    /// The answer carried a file that was not asked for (its name as sent, lossily).
    Unrequested(String),
    /// A plain-TCP client read a TLS record: the server speaks TLS.
    ServerSpeaksTls,
    /// A local problem (a file to send, the output folder, a certificate file, a flag).
    Local(String),
    /// The stop flag was set ([`Client::stop_flag`], Ctrl-C); temporaries are gone.
    Interrupted,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => {
                write!(f, "connect: {e}")?;
                match e.client_hint() {
                    Some(ClientHint::PeerIsPlain) => {
                        f.write_str(" (the server speaks plain TCP: drop --tls)")
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
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::TimedOut(d) => write!(f, "timed out after {} s", d.as_secs_f64()),
            ClientError::Closed => write!(f, "{}", machine::Error::Closed),
            ClientError::Frame(e) => write!(f, "{}", machine::Error::Frame(*e)),
            ClientError::Peer(m) => write!(f, "peer error: {m}"),
            ClientError::Mismatch(m) => write!(f, "mismatch: {m}"),
            ClientError::UnsafeName(n) => {
                write!(f, "{}", machine::Error::UnsafeName(n.clone()))
            }
            ClientError::Unrequested(n) => {
                write!(f, "{}", machine::Error::Unrequested(n.clone()))
            }
            ClientError::ServerSpeaksTls => {
                f.write_str("the server speaks TLS: add --tls (and --cert if it is self-signed)")
            }
            ClientError::Local(m) => write!(f, "{m}"),
            ClientError::Interrupted => f.write_str("interrupted"),
        }
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
            machine::Error::Frame(e) => ClientError::Frame(e),
            machine::Error::Peer(m) => ClientError::Peer(m),
            machine::Error::Mismatch(m) => ClientError::Mismatch(m),
            machine::Error::Closed => ClientError::Closed,
            machine::Error::UnsafeName(n) => ClientError::UnsafeName(n),
            machine::Error::Unrequested(n) => ClientError::Unrequested(n),
        }
    }
}

/// One file as sent.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sent {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Where the server says it stored the file (the acknowledgement's `stored_as`): the
    /// catalog path now serving it, which differs from `name` when that was taken. Not in the
    /// JSON report, whose `reply` carries the whole acknowledgement.
    #[serde(skip)]
    pub stored_as: Option<String>,
}

/// How a send ended.
#[derive(Debug, serde::Serialize)]
pub struct SendReport {
    pub files: Vec<Sent>,
    /// `confirmed`, `mismatch`, `refused` (error frame) or `unconfirmed` (no reply in time).
    pub outcome: &'static str,
    /// The acknowledgement (or error) message as received, when it was JSON.
    pub reply: Option<serde_json::Value>,
    pub bytes: u64,
    pub seconds: f64,
}

/// The calls the driver loop makes on any of the three machines.
trait Machine {
    type Event;
    /// Bytes to write before reading on (a request).
    fn poll_bytes(&mut self) -> Option<&[u8]>;
    fn input(&mut self, input: &[u8]) -> Result<Step<Self::Event>, machine::Error>;
    fn eof(&mut self) -> Result<(), machine::Error>;
    fn finished(&self) -> bool;
    /// A deadline of the machine's own (the acknowledgement wait), if any.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn timeout(&mut self, _now: Instant) {}
}

impl Machine for Sender {
    type Event = SendEvent;
    fn poll_bytes(&mut self) -> Option<&[u8]> {
        // The frame itself goes out before the loop runs (its files are streamed).
        None
    }
    fn input(&mut self, input: &[u8]) -> Result<Step<SendEvent>, machine::Error> {
        self.handle_input(input)
    }
    fn eof(&mut self) -> Result<(), machine::Error> {
        self.handle_eof()
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
    fn deadline(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
}

impl Machine for Getter {
    type Event = GetEvent;
    fn poll_bytes(&mut self) -> Option<&[u8]> {
        match self.poll_transmit() {
            Some(Transmit::Bytes(b)) => Some(b),
            _ => None,
        }
    }
    fn input(&mut self, input: &[u8]) -> Result<Step<GetEvent>, machine::Error> {
        self.handle_input(input)
    }
    fn eof(&mut self) -> Result<(), machine::Error> {
        self.handle_eof()
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
}

impl Machine for Lister {
    type Event = ();
    fn poll_bytes(&mut self) -> Option<&[u8]> {
        match self.poll_transmit() {
            Some(Transmit::Bytes(b)) => Some(b),
            _ => None,
        }
    }
    fn input(&mut self, input: &[u8]) -> Result<Step<()>, machine::Error> {
        self.handle_input(input)
    }
    fn eof(&mut self) -> Result<(), machine::Error> {
        self.handle_eof()
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
}

/// What [`Conn::run`] hands each event to: the machine (to report back), the event, and the
/// input its ranges index.
type OnEvent<'a, M> =
    dyn FnMut(&mut M, <M as Machine>::Event, &[u8]) -> Result<(), ClientError> + 'a;

/// A connection and its read buffer (`buf[start..end]` not yet taken by a machine).
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    io_timeout: Duration,
    /// The read timeout in force.
    read_timeout: Duration,
    /// Set by Ctrl-C: reads end within [`READ_SLICE`], writes at their next piece.
    stop: Arc<AtomicBool>,
    /// Bytes read so far (the first ones tell a TLS server from a TEJ one).
    received: u64,
}

impl Conn {
    fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Writes all of `bytes`; a signal that interrupts a blocked write is a chance to stop.
    fn write(&mut self, mut bytes: &[u8]) -> Result<(), ClientError> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(ClientError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if self.is_stopped() {
                        return Err(ClientError::Interrupted);
                    }
                }
                Err(e) => return Err(io_error(e, self.io_timeout)),
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        self.stream
            .flush()
            .map_err(|e| io_error(e, self.io_timeout))
    }

    fn set_read_timeout(&mut self, d: Duration) -> Result<(), ClientError> {
        let d = d.clamp(Duration::from_millis(1), READ_SLICE);
        if d != self.read_timeout {
            self.stream.set_read_timeout(Some(d))?;
            self.read_timeout = d;
        }
        Ok(())
    }

    /// A machine error, or what it means when the first bytes were a TLS record.
    fn judge(&self, e: machine::Error) -> ClientError {
        let first = &self.buf[..self.end.min(3)];
        match e {
            machine::Error::Frame(FrameError::BadFrame(_))
                if self.received == self.end as u64 && transport::is_tls_record(first) =>
            {
                ClientError::ServerSpeaksTls
            }
            e => e.into(),
        }
    }

    /// Reads and feeds `m` until it is finished, handing each event to `on_event` with the
    /// input it refers to (data ranges index that slice). Reads wait at most [`READ_SLICE`] at
    /// a time; `io_timeout` without a byte (outside the machine's own deadline) is a timeout.
    fn run<M: Machine>(
        &mut self,
        m: &mut M,
        on_event: &mut OnEvent<'_, M>,
    ) -> Result<(), ClientError> {
        let mut last_progress = Instant::now();
        loop {
            while !m.finished() {
                let step = match m.input(&self.buf[self.start..self.end]) {
                    Ok(step) => step,
                    Err(e) => return Err(self.judge(e)),
                };
                let input = &self.buf[self.start..self.end];
                self.start += step.consumed;
                match step.event {
                    Some(ev) => on_event(m, ev, input)?,
                    None => break,
                }
            }
            if m.finished() {
                return Ok(());
            }
            if self.is_stopped() {
                return Err(ClientError::Interrupted);
            }
            // Whatever the machine wants sent before the answer can come (a request, the next
            // page's request).
            let mut wrote = false;
            while let Some(b) = m.poll_bytes() {
                self.write(b)?;
                wrote = true;
            }
            if wrote {
                self.flush()?;
                last_progress = Instant::now();
            }
            let now = Instant::now();
            let deadline = m.deadline();
            match deadline {
                Some(d) => {
                    if now >= d {
                        m.timeout(now);
                        continue;
                    }
                    self.set_read_timeout(d - now)?;
                }
                None => {
                    let left = self.io_timeout.saturating_sub(now - last_progress);
                    if left.is_zero() {
                        return Err(ClientError::TimedOut(self.io_timeout));
                    }
                    self.set_read_timeout(left)?;
                }
            }
            // Everything offered was taken (the machines keep split fields): read afresh.
            self.start = 0;
            self.end = 0;
            match self.stream.read(&mut self.buf) {
                Ok(0) => {
                    m.eof().map_err(|e| self.judge(e))?;
                    return Ok(());
                }
                Ok(n) => {
                    self.end = n;
                    self.received += n as u64;
                    last_progress = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) =>
                {
                    // The machine's deadline, the stop flag and the io timeout are all looked
                    // at on the next turn.
                    if let Some(d) = deadline {
                        let now = Instant::now();
                        if now >= d {
                            m.timeout(now);
                        }
                    }
                }
                Err(e) => return Err(io_error(e, self.io_timeout)),
            }
        }
    }

    fn close(self) {
        self.stream.close_gracefully(CLOSE_LINGER);
    }
}

/// Custom statuses a sender may use (tej.md 3): 0 (deliver, acknowledged) and 7..=127
/// (application); 1 to 6 are the protocol's own frames, which a server never stores.
pub fn check_status(status: u8) -> Result<(), ClientError> {
    match status {
        0 | 7..=127 => Ok(()),
        1..=6 => Err(ClientError::Local(format!(
            "status {status} is TEJ's own (1 acknowledgement, 2 ping, 3 error, 4 request, 5 list, \
             6 listing): nothing would be stored; use 0 (deliver) or 7..127 (application)"
        ))),
        _ => Err(ClientError::Local(format!(
            "status {status} is over 127 (the top bit is the frame marker)"
        ))),
    }
}

/// The acknowledgement's `stored_as` per file, in frame order (`None` where absent).
fn stored_as(reply: &[u8]) -> Vec<Option<String>> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(reply) else {
        return Vec::new();
    };
    v.get("files")
        .and_then(|f| f.as_array())
        .map(|files| {
            files
                .iter()
                .map(|f| {
                    f.get("stored_as")
                        .and_then(|s| s.as_str())
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The peer closed or reset the connection (as it does after an error frame).
fn is_reset(e: &ClientError) -> bool {
    matches!(e, ClientError::Io(e) if matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    ))
}

/// A read or write timeout reads as "timed out after N s", not as EAGAIN.
fn io_error(e: io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::TimedOut(timeout),
        _ => ClientError::Io(e),
    }
}

/// A TEJ client.
pub struct Client {
    opts: ClientOptions,
    tls: Option<TlsClient>,
    host: String,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
}

impl Client {
    /// A client for `opts`. An unreadable or unusable `--cert` file is a local error.
    pub fn new(opts: ClientOptions) -> Result<Client, ClientError> {
        let host = match opts.addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => opts.addr.clone(),
        };
        let tls = if opts.tls {
            Some(
                TlsClient::new(opts.cert.as_deref(), &[ALPN_TEJ])
                    .map_err(|e| ClientError::Local(format!("--cert: {e}")))?,
            )
        } else {
            None
        };
        Ok(Client {
            opts,
            tls,
            host,
            progress: Arc::new(Progress::new()),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The counters `send` and `get` update as file bytes move.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Set it (from a Ctrl-C handler) to stop: a running call ends within a fraction of a
    /// second with [`ClientError::Interrupted`], its temporaries removed.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn connect(&self) -> Result<Conn, ClientError> {
        let tcp = transport::connect_tcp(&self.opts.addr, self.opts.io_timeout)
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            Some(t) => {
                let name = self.opts.server_name.as_deref().unwrap_or(&self.host);
                t.connect(tcp, name, self.opts.io_timeout)
                    .map_err(ClientError::Connect)?
            }
            None => Stream::Tcp(tcp),
        };
        let slice = READ_SLICE.min(self.opts.io_timeout);
        stream.set_read_timeout(Some(slice))?;
        stream.set_write_timeout(Some(self.opts.io_timeout))?;
        Ok(Conn {
            stream,
            buf: vec![0u8; CHUNK],
            start: 0,
            end: 0,
            io_timeout: self.opts.io_timeout,
            read_timeout: slice,
            stop: self.stop.clone(),
            received: 0,
        })
    }

    /// Sends one frame of `paths` (under their base names) and `message` with custom `status`,
    /// then waits for the acknowledgement (tej.md 3.2) when `status` is 0.
    pub fn send(
        &self,
        paths: &[PathBuf],
        message: &[u8],
        status: u8,
    ) -> Result<SendReport, ClientError> {
        check_status(status)?;
        let started = Instant::now();
        let mut files = Vec::new();
        let mut opened = Vec::new();
        for p in paths {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| ClientError::Local(format!("{}: not a file name", p.display())))?;
            if name.len() > usize::from(u16::MAX) {
                return Err(ClientError::Local(format!("{name}: name too long")));
            }
            let (f, meta) = crate::dir::open_file_to_send(p).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::InvalidInput {
                    " (tej send sends files, not folders)"
                } else {
                    ""
                };
                ClientError::Local(format!("{}: {e}{hint}", p.display()))
            })?;
            files.push((name.to_string(), meta.len()));
            opened.push(f);
        }
        self.progress.add_total_items(files.len() as u64);
        self.progress
            .add_total_bytes(files.iter().map(|(_, s)| *s).sum());
        let mut c = self.connect()?;
        let mut m = Sender::new(status, files, message, self.opts.ack_timeout);
        let mut bytes = 0u64;
        if let Err(e) = self.write_frame(&mut c, &mut m, &mut opened, &mut bytes) {
            if !is_reset(&e) {
                return Err(e);
            }
            // The peer closed while the frame was going out: its error frame says why.
            m.handle_write_failed(Instant::now(), WRITE_FAILED_WAIT);
            let _ = c.run(&mut m, &mut |_, _, _| Ok(()));
            if !matches!(m.outcome(), Some(SendOutcome::Refused { .. })) {
                return Err(e);
            }
        } else {
            m.handle_written(Instant::now());
        }
        let verbose = self.opts.verbose;
        c.run(&mut m, &mut |_, ev, _| {
            if let SendEvent::Ignored { status, message } = ev {
                if verbose {
                    eprintln!(
                        "tej: frame status {status} while waiting: {}",
                        names::printable(&String::from_utf8_lossy(&message))
                    );
                }
            }
            Ok(())
        })?;
        let outcome = m.outcome().cloned().unwrap_or(SendOutcome::Unconfirmed);
        if let (SendOutcome::Mismatch { why, .. }, true) = (&outcome, verbose) {
            eprintln!(
                "tej: acknowledgement does not confirm: {}",
                names::printable(why)
            );
        }
        let stored = outcome.reply().map(stored_as).unwrap_or_default();
        let files = m
            .sent()
            .enumerate()
            .map(|(i, (name, size, sha256))| Sent {
                name: name.to_owned(),
                size,
                sha256: sha256.to_owned(),
                stored_as: stored.get(i).cloned().flatten(),
            })
            .collect();
        c.close();
        Ok(SendReport {
            files,
            outcome: outcome.word(),
            reply: outcome.reply().and_then(|r| serde_json::from_slice(r).ok()),
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Writes the whole frame the sender hands out; files stream from `opened`.
    fn write_frame(
        &self,
        c: &mut Conn,
        m: &mut Sender,
        opened: &mut [File],
        bytes: &mut u64,
    ) -> Result<(), ClientError> {
        // Headers are gathered and go out with the first piece of the file that follows them.
        let mut out: Vec<u8> = Vec::with_capacity(CHUNK + 64);
        let mut buf = vec![0u8; CHUNK];
        while let Some(t) = m.poll_transmit() {
            match t {
                Transmit::Bytes(b) => out.extend_from_slice(b),
                Transmit::File { index, len } => {
                    let sha = self.stream_file(c, &mut opened[index], len, &mut out, &mut buf)?;
                    *bytes += len;
                    m.file_sent(index, &sha);
                    self.progress.add_items(1);
                }
            }
        }
        c.write(&out)?;
        c.flush()
    }

    /// Streams `len` bytes of `f` to the socket through `buf`, `out` (pending headers) first;
    /// returns the lowercase hex SHA-256 of the bytes sent.
    fn stream_file(
        &self,
        c: &mut Conn,
        f: &mut File,
        len: u64,
        out: &mut Vec<u8>,
        buf: &mut [u8],
    ) -> Result<String, ClientError> {
        let mut h = Sha256::new();
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match f.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Local(format!("reading: {e}"))),
            };
            if n == 0 {
                // The file shrank after its length went out: the frame cannot be finished.
                return Err(ClientError::Local(
                    "a file shrank while being sent".to_string(),
                ));
            }
            h.update(&buf[..n]);
            if out.is_empty() {
                c.write(&buf[..n])?;
            } else {
                out.extend_from_slice(&buf[..n]);
                c.write(out)?;
                out.clear();
            }
            self.progress.add_bytes(n as u64);
            left -= n as u64;
        }
        Ok(hex::encode(&h.finalize()))
    }

    /// Asks for `items` (names or SHA-256 hex) and stores them in `out` once the manifest
    /// confirms every one; on any mismatch nothing is committed (tej.md T31).
    pub fn get(&self, out: &Path, items: &[String]) -> Result<Vec<ManifestEntry>, ClientError> {
        Ok(self
            .get_hashed(out, items)?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// [`get`](Self::get), with each stored file's xxHash64 (seed 0), computed while it was
    /// received: a catalog can index the file without reading it back (`ferry sync`).
    pub fn get_hashed(
        &self,
        out: &Path,
        items: &[String],
    ) -> Result<Vec<(ManifestEntry, u64)>, ClientError> {
        let mut ingest = IngestDir::new(out, out)
            .map_err(|e| ClientError::Local(format!("output {}: {e}", out.display())))?;
        ingest.set_durable(false);
        // Temporaries of earlier runs that were killed (or stopped by a second Ctrl-C): only
        // those of processes that no longer run.
        crate::driver::clean_stale_temporaries(&ingest);
        self.progress.add_total_items(items.len() as u64);
        let mut c = self.connect()?;
        let mut m = Getter::new(items);
        let mut current: Option<StreamSink> = None;
        let mut received: Vec<StreamSink> = Vec::new();
        let mut verified: Option<Vec<ManifestEntry>> = None;
        let progress = &self.progress;
        c.run(&mut m, &mut |m, ev, input| {
            match ev {
                GetEvent::FileStart { size, .. } => {
                    progress.add_total_bytes(size);
                    current = Some(
                        ingest
                            .begin_stream(Some(size))
                            .map_err(|e| ClientError::Local(format!("temporary file: {e}")))?,
                    );
                }
                GetEvent::FileData(r) => {
                    if let Some(sink) = current.as_mut() {
                        let d = &input[r];
                        sink.write_all(d)
                            .map_err(|e| ClientError::Local(format!("write: {e}")))?;
                        progress.add_bytes(d.len() as u64);
                    }
                }
                GetEvent::FileEnd => {
                    if let Some(sink) = current.take() {
                        m.file_received(sink.sha256().unwrap_or_default());
                        received.push(sink);
                        progress.add_items(1);
                    }
                }
                GetEvent::Verified(entries) => verified = Some(entries),
            }
            Ok(())
        })?;
        let entries = verified.ok_or(ClientError::Closed)?;
        let mut stored = Vec::new();
        for (sink, e) in received.into_iter().zip(entries) {
            let want = hex::parse_sha256(&e.sha256).unwrap_or_default();
            let committed = sink
                .commit_with(&e.name, Expect::Sha256(want), Collision::Numbered)
                .map_err(|e| ClientError::Local(e.to_string()))?;
            stored.push((
                ManifestEntry {
                    name: committed.name,
                    size: committed.size,
                    sha256: e.sha256,
                },
                committed.xxh64,
            ));
        }
        c.close();
        Ok(stored)
    }

    /// Every catalog entry, page by page.
    pub fn list(&self) -> Result<Vec<ManifestEntry>, ClientError> {
        let mut c = self.connect()?;
        let mut m = Lister::new();
        c.run(&mut m, &mut |_, _, _| Ok(()))?;
        c.close();
        Ok(m.into_entries())
    }
}
