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

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::driver::progress::Progress;
use crate::ingest::{Collision, Expect, IngestDir, StreamSink};
use crate::proto::tej::client::{
    self as machine, GetEvent, Getter, Lister, SendEvent, SendOutcome, Sender, Step, Transmit,
};
use crate::proto::tej::frame::FrameError;
use crate::proto::tej::messages::ManifestEntry;
use crate::proto::tej::ALPN as ALPN_TEJ;
use crate::transport::{self, Stream, TlsClient, TransportError};
use crate::wire::hex;

/// Pieces files are read and sent in, and the read buffer.
const CHUNK: usize = 256 * 1024;
/// How long a connection lingers on close, discarding input.
const CLOSE_LINGER: Duration = Duration::from_millis(200);
/// How long `send` looks for the peer's error frame after a write failed.
const WRITE_FAILED_WAIT: Duration = Duration::from_secs(2);

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
    Local(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::TimedOut(d) => write!(f, "timed out after {} s", d.as_secs_f64()),
            ClientError::Closed => write!(f, "{}", machine::Error::Closed),
            ClientError::Frame(e) => write!(f, "{}", machine::Error::Frame(*e)),
            ClientError::Peer(m) => write!(f, "peer error: {m}"),
            ClientError::Mismatch(m) => write!(f, "mismatch: {m}"),
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

impl From<machine::Error> for ClientError {
    fn from(e: machine::Error) -> Self {
        match e {
            machine::Error::Frame(e) => ClientError::Frame(e),
            machine::Error::Peer(m) => ClientError::Peer(m),
            machine::Error::Mismatch(m) => ClientError::Mismatch(m),
            machine::Error::Closed => ClientError::Closed,
        }
    }
}

/// One file as sent.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sent {
    pub name: String,
    pub size: u64,
    pub sha256: String,
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
}

impl Conn {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(bytes)
            .map_err(|e| io_error(e, self.io_timeout))
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        self.stream
            .flush()
            .map_err(|e| io_error(e, self.io_timeout))
    }

    fn set_read_timeout(&mut self, d: Duration) -> Result<(), ClientError> {
        let d = d.max(Duration::from_millis(1));
        if d != self.read_timeout {
            self.stream.set_read_timeout(Some(d))?;
            self.read_timeout = d;
        }
        Ok(())
    }

    /// Reads and feeds `m` until it is finished, handing each event to `on_event` with the
    /// input it refers to (data ranges index that slice).
    fn run<M: Machine>(
        &mut self,
        m: &mut M,
        on_event: &mut OnEvent<'_, M>,
    ) -> Result<(), ClientError> {
        loop {
            while !m.finished() {
                let step = m.input(&self.buf[self.start..self.end])?;
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
            // Whatever the machine wants sent before the answer can come (a request, the next
            // page's request).
            let mut wrote = false;
            while let Some(b) = m.poll_bytes() {
                self.stream
                    .write_all(b)
                    .map_err(|e| io_error(e, self.io_timeout))?;
                wrote = true;
            }
            if wrote {
                self.flush()?;
            }
            let deadline = m.deadline();
            match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        m.timeout(now);
                        continue;
                    }
                    self.set_read_timeout(d - now)?;
                }
                None => self.set_read_timeout(self.io_timeout)?,
            }
            // Everything offered was taken (the machines keep split fields): read afresh.
            self.start = 0;
            self.end = 0;
            match self.stream.read(&mut self.buf) {
                Ok(0) => {
                    m.eof()?;
                    return Ok(());
                }
                Ok(n) => self.end = n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if deadline.is_some()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    m.timeout(Instant::now());
                }
                Err(e) => return Err(io_error(e, self.io_timeout)),
            }
        }
    }

    fn close(self) {
        self.stream.close_gracefully(CLOSE_LINGER);
    }
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
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, ClientError> {
        let host = match opts.addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => opts.addr.clone(),
        };
        let tls = if opts.tls {
            Some(TlsClient::new(opts.cert.as_deref(), &[ALPN_TEJ]).map_err(ClientError::Connect)?)
        } else {
            None
        };
        Ok(Client {
            opts,
            tls,
            host,
            progress: Arc::new(Progress::new()),
        })
    }

    /// The counters `send` and `get` update as file bytes move.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
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
        stream.set_read_timeout(Some(self.opts.io_timeout))?;
        stream.set_write_timeout(Some(self.opts.io_timeout))?;
        Ok(Conn {
            stream,
            buf: vec![0u8; CHUNK],
            start: 0,
            end: 0,
            io_timeout: self.opts.io_timeout,
            read_timeout: self.opts.io_timeout,
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
            let f =
                File::open(p).map_err(|e| ClientError::Local(format!("{}: {e}", p.display())))?;
            let size = f.metadata()?.len();
            files.push((name.to_string(), size));
            opened.push(f);
        }
        if status > 127 {
            return Err(ClientError::Local(format!(
                "status {status} is over 127 (the top bit is the frame marker)"
            )));
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
                        String::from_utf8_lossy(&message)
                    );
                }
            }
            Ok(())
        })?;
        let outcome = m.outcome().cloned().unwrap_or(SendOutcome::Unconfirmed);
        if let (SendOutcome::Mismatch { why, .. }, true) = (&outcome, verbose) {
            eprintln!("tej: acknowledgement does not confirm: {why}");
        }
        let files = m
            .sent()
            .map(|(name, size, sha256)| Sent {
                name: name.to_owned(),
                size,
                sha256: sha256.to_owned(),
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
        let mut ingest = IngestDir::new(out, out)
            .map_err(|e| ClientError::Local(format!("output {}: {e}", out.display())))?;
        ingest.set_durable(false);
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
            stored.push(ManifestEntry {
                name: committed.name,
                size: committed.size,
                sha256: e.sha256,
            });
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
