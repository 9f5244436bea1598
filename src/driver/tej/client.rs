//! The TEJ client driver: `send` (a deliver frame, then wait for and check the
//! acknowledgement), `get` (a request, its answer streamed into verified temporaries and committed
//! only when the manifest matches) and `list` (listing pages until `next` is null).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::ingest::{Collision, Expect, IngestDir, StreamSink};
use crate::names;
use crate::proto::tej::frame::{self, status, Decoder, Event, FrameError, Limits as FrameLimits};
use crate::proto::tej::messages::{
    check_ack, AckVerdict, GetRequest, ListRequest, Listing, Manifest, ManifestEntry,
};
use crate::proto::tej::ALPN as ALPN_TEJ;
use crate::transport::{self, Stream, TlsClient, TransportError};

/// Most catalog entries `list` accepts in all.
const MAX_LISTED: usize = 10_000_000;
/// Pieces files are read and sent in.
const CHUNK: usize = 256 * 1024;

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
            ClientError::Frame(e) => write!(f, "frame: {}: {}", e.code(), e.detail()),
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

/// A complete frame as received (files are not kept: only their names and sizes).
struct Received {
    status: u8,
    message: Vec<u8>,
}

/// A connection with its decoder.
struct Conn {
    stream: Stream,
    dec: Decoder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Reads until one whole frame arrived; files go to `on_file` (name, size) then `on_data`.
    /// Returns None at a clean end of stream between frames.
    fn next_frame(
        &mut self,
        deadline: Option<Instant>,
        sinks: &mut dyn FnMut(FileEvent<'_>) -> Result<(), ClientError>,
    ) -> Result<Option<Received>, ClientError> {
        let mut status_seen = 0u8;
        let mut message = Vec::new();
        loop {
            {
                let Conn {
                    dec,
                    buf,
                    start,
                    end,
                    ..
                } = self;
                let (used, r) = dec.decode(&buf[*start..*end]);
                *start += used;
                let ev = r.map_err(ClientError::Frame)?;
                let got_event = ev.is_some();
                match ev {
                    Some(Event::FrameStart { status, .. }) => status_seen = status,
                    Some(Event::FileStart {
                        name,
                        name_ok,
                        size,
                        ..
                    }) => sinks(FileEvent::Start {
                        name,
                        name_ok,
                        size,
                    })?,
                    Some(Event::FileData(d)) => sinks(FileEvent::Data(d))?,
                    Some(Event::FileEnd) => sinks(FileEvent::End)?,
                    Some(Event::Message(m)) => message = m.to_vec(),
                    Some(Event::FrameEnd) => {
                        return Ok(Some(Received {
                            status: status_seen,
                            message,
                        }))
                    }
                    None => {}
                }
                // After an event, decode again: FileEnd and FrameEnd need no bytes.
                if got_event || *start < *end {
                    continue;
                }
            }
            self.start = 0;
            self.end = 0;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::Io(io::ErrorKind::TimedOut.into()));
                }
                self.stream.set_read_timeout(Some(left))?;
            }
            let n = match self.stream.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if self.dec.is_between_frames() {
                    return Ok(None);
                }
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.end = n;
        }
    }
}

/// Files inside a received frame.
enum FileEvent<'a> {
    Start {
        name: &'a [u8],
        name_ok: bool,
        size: u64,
    },
    Data(&'a [u8]),
    End,
}

/// A TEJ client.
pub struct Client {
    opts: ClientOptions,
    tls: Option<TlsClient>,
    host: String,
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
        Ok(Client { opts, tls, host })
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
            dec: Decoder::new(FrameLimits::default()),
            buf: vec![0u8; CHUNK],
            start: 0,
            end: 0,
        })
    }

    /// Sends one frame of `files` (names are their base names) and `message`, then waits for
    /// the acknowledgement (tej.md 3.2) when `status` is 0.
    pub fn send(
        &self,
        paths: &[PathBuf],
        message: &[u8],
        status: u8,
    ) -> Result<SendReport, ClientError> {
        let started = Instant::now();
        let mut files = Vec::new();
        for p in paths {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| ClientError::Local(format!("{}: not a file name", p.display())))?;
            if name.len() > u16::MAX as usize {
                return Err(ClientError::Local(format!("{name}: name too long")));
            }
            let f =
                File::open(p).map_err(|e| ClientError::Local(format!("{}: {e}", p.display())))?;
            let size = f.metadata()?.len();
            files.push((name.to_string(), f, size));
        }
        let mut c = self.connect()?;
        let mut out = Vec::with_capacity(CHUNK + 64);
        let mut buf = vec![0u8; CHUNK];
        frame::put_frame_header(status, files.len() as u64, &mut out);
        let mut sent = Vec::new();
        let mut bytes = 0u64;
        for (name, mut f, size) in files {
            frame::put_file_header(&name, size, &mut out);
            let mut h = Sha256::new();
            let mut left = size;
            while left > 0 {
                let want = (left.min(CHUNK as u64)) as usize;
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    // The file shrank after its length went out: the frame cannot be finished.
                    return Err(ClientError::Local(format!(
                        "{name}: file shrank while being sent"
                    )));
                }
                h.update(&buf[..n]);
                if out.is_empty() {
                    c.stream.write_all(&buf[..n])?;
                } else {
                    out.extend_from_slice(&buf[..n]);
                    c.stream.write_all(&out)?;
                    out.clear();
                }
                left -= n as u64;
            }
            bytes += size;
            sent.push(Sent {
                name,
                size,
                sha256: hex(&h.finalize()),
            });
        }
        frame::put_message(message, &mut out);
        c.stream.write_all(&out)?;
        c.stream.flush()?;
        if status != status::DELIVER {
            return Ok(SendReport {
                files: sent,
                outcome: "unconfirmed",
                reply: None,
                bytes,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let sent_ids: Vec<(u64, &str)> = sent.iter().map(|s| (s.size, s.sha256.as_str())).collect();
        let deadline = Instant::now() + self.opts.ack_timeout;
        let verbose = self.opts.verbose;
        let (outcome, reply) = loop {
            let frame = match c.next_frame(Some(deadline), &mut |_| Ok(())) {
                Ok(Some(f)) => f,
                Ok(None) => break ("unconfirmed", None),
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    break ("unconfirmed", None)
                }
                Err(e) => return Err(e),
            };
            let json: Option<serde_json::Value> = serde_json::from_slice(&frame.message).ok();
            match frame.status {
                status::PING => continue,
                status::ERROR => break ("refused", json),
                s => match check_ack(&frame.message, &sent_ids) {
                    AckVerdict::Confirmed => break ("confirmed", json),
                    AckVerdict::Rejected(why) => {
                        if verbose {
                            eprintln!("tej: acknowledgement does not confirm: {why}");
                        }
                        break ("mismatch", json);
                    }
                    AckVerdict::NotAnAck => {
                        if verbose {
                            eprintln!(
                                "tej: frame status {s} while waiting: {}",
                                String::from_utf8_lossy(
                                    &frame.message[..frame.message.len().min(200)]
                                )
                            );
                        }
                    }
                },
            }
        };
        c.stream.close_gracefully(Duration::from_millis(200));
        Ok(SendReport {
            files: sent,
            outcome,
            reply,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Asks for `items` (names or SHA-256 hex) and stores them in `out` once the manifest
    /// confirms every one; on any mismatch nothing is committed (tej.md T31).
    pub fn get(&self, out: &Path, items: &[String]) -> Result<Vec<ManifestEntry>, ClientError> {
        let mut ingest = IngestDir::new(out, out)
            .map_err(|e| ClientError::Local(format!("output {}: {e}", out.display())))?;
        ingest.set_durable(false);
        let mut c = self.connect()?;
        let req = GetRequest {
            get: items.to_vec(),
        };
        c.stream
            .write_all(&frame::frame(status::REQUEST, &[], &req.to_json()))?;
        c.stream.flush()?;
        loop {
            let mut pending: Vec<(Option<String>, u64, StreamSink, Sha256)> = Vec::new();
            let mut current: Option<(Option<String>, u64, StreamSink, Sha256)> = None;
            let frame = c.next_frame(None, &mut |ev| {
                match ev {
                    FileEvent::Start {
                        name,
                        name_ok,
                        size,
                    } => {
                        let name = if name_ok {
                            std::str::from_utf8(name)
                                .ok()
                                .and_then(|n| names::accept_exact(n.as_bytes(), 255))
                                .map(str::to_owned)
                        } else {
                            None
                        };
                        let sink = ingest
                            .begin_stream(Some(size))
                            .map_err(|e| ClientError::Local(format!("temporary file: {e}")))?;
                        current = Some((name, size, sink, Sha256::new()));
                    }
                    FileEvent::Data(d) => {
                        if let Some((_, _, sink, _)) = current.as_mut() {
                            sink.write_all(d)
                                .map_err(|e| ClientError::Local(format!("write: {e}")))?;
                        }
                    }
                    FileEvent::End => {
                        if let Some(f) = current.take() {
                            pending.push(f);
                        }
                    }
                }
                Ok(())
            })?;
            let Some(frame) = frame else {
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            };
            match frame.status {
                status::DELIVER => {
                    let manifest = Manifest::from_json(&frame.message).ok_or_else(|| {
                        ClientError::Mismatch("the answer carries no manifest".into())
                    })?;
                    if manifest.files.len() != pending.len() {
                        return Err(ClientError::Mismatch(format!(
                            "{} files received, manifest lists {}",
                            pending.len(),
                            manifest.files.len()
                        )));
                    }
                    // Check every file before committing any.
                    for ((name, size, sink, _), m) in pending.iter().zip(&manifest.files) {
                        let sha = sink.sha256().map(|s| hex(&s)).unwrap_or_default();
                        if name.as_deref() != Some(m.name.as_str())
                            || *size != m.size
                            || sha != m.sha256
                        {
                            return Err(ClientError::Mismatch(format!(
                                "{}: received bytes do not match the manifest",
                                m.name
                            )));
                        }
                    }
                    let mut stored = Vec::new();
                    for ((name, _, sink, _), m) in pending.into_iter().zip(manifest.files) {
                        let name = name.unwrap_or_default();
                        let want = crate::wire::hex::parse_sha256(&m.sha256).unwrap_or_default();
                        let c = sink
                            .commit_with(&name, Expect::Sha256(want), Collision::Numbered)
                            .map_err(|e| ClientError::Local(e.to_string()))?;
                        stored.push(ManifestEntry {
                            name: c.name,
                            size: c.size,
                            sha256: m.sha256,
                        });
                    }
                    c.stream.close_gracefully(Duration::from_millis(200));
                    return Ok(stored);
                }
                status::ERROR => {
                    return Err(ClientError::Peer(
                        String::from_utf8_lossy(&frame.message).into_owned(),
                    ))
                }
                // Pings and frames meant for an application are not the answer.
                _ => continue,
            }
        }
    }

    /// Every catalog entry, page by page.
    pub fn list(&self) -> Result<Vec<ManifestEntry>, ClientError> {
        let mut c = self.connect()?;
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let req = ListRequest {
                after: after.clone(),
                limit: None,
            };
            c.stream
                .write_all(&frame::frame(status::LIST, &[], &req.to_json()))?;
            c.stream.flush()?;
            let page = loop {
                let f = c
                    .next_frame(None, &mut |_| Ok(()))?
                    .ok_or_else(|| ClientError::Io(io::ErrorKind::UnexpectedEof.into()))?;
                match f.status {
                    status::LISTING => {
                        break Listing::from_json(&f.message)
                            .ok_or_else(|| ClientError::Mismatch("listing is not JSON".into()))?
                    }
                    status::ERROR => {
                        return Err(ClientError::Peer(
                            String::from_utf8_lossy(&f.message).into_owned(),
                        ))
                    }
                    _ => continue,
                }
            };
            all.extend(page.files);
            if all.len() > MAX_LISTED {
                return Err(ClientError::Mismatch(format!(
                    "listing goes past {MAX_LISTED} entries"
                )));
            }
            // `next` must move forward in byte order, or a broken server could page for ever.
            match page.next {
                Some(n) if after.as_ref().is_none_or(|a| n.as_bytes() > a.as_bytes()) => {
                    after = Some(n)
                }
                Some(n) => {
                    return Err(ClientError::Mismatch(format!(
                        "listing page {n:?} does not move past {after:?}"
                    )))
                }
                None => break,
            }
        }
        c.stream.close_gracefully(Duration::from_millis(200));
        Ok(all)
    }
}

use crate::wire::hex::encode as hex;
