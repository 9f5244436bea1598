//! The filestorage client driver: connects (Unix socket, TCP with the tcpd preamble, or TLS then
//! the preamble), runs the [`Put`], [`QueryClient`] and [`FetchClient`] machines over the
//! stream, reads source chunks with `pread`, and writes fetched bytes through ingest so that a
//! fetched file appears only once its SHA-256 matches the record's.
//!
//! ```text
//!  put:  hash the files (large ones with a reading thread) ─► fid per batch of ≤ 1024 files
//!         (derived: rerunning resumes) ─► connect ─► Put machine: AUTHENTICATION, window
//!         of TRANSFERs (pread, base64), Oks ─► done
//!              └─ connection lost (any hop): reconnect with backoff, AUTHENTICATION again
//!                 with the same fid, only the chunks `missing` lists
//!  fetch: QUERY just below the id (finds its name, size, SHA-256) ─► pipelined FETCHes, the
//!         bytes handed to a writing thread (ingest stream: hash, write) ─► verified commit
//!         (never replaces a file); a lost connection resumes at the next byte
//! ```
//!
//! Out of scope: the wire (the machines), argument parsing and exit codes (the CLI).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::ingest::{Collision, Expect, IngestDir, IngestError, StreamSink};
use crate::proto::filestorage::client::{
    ClientError as MachineError, FetchClient, FetchConfig, FetchEvent, Put, PutConfig, PutEvent,
    QueryClient, QueryConfig, QueryEvent,
};
use crate::proto::filestorage::frame::MAX_LEN;
use crate::proto::filestorage::ids::{client_fid, FidFile, MessageIds, Uuid};
use crate::proto::filestorage::json::{
    encode_authentication, FileSpec, MessageId, QueryResult, MAX_CHUNK_SIZE,
};
use crate::proto::filestorage::store::names::{is_valid_name, is_valid_tag};
use crate::proto::filestorage::token::unverified_login;
use crate::transport::{connect_tcp, Stream, TlsClient, TransportError, TryRead};

/// Files per AUTHENTICATION (spec 1.1 `max_batch_files`): larger puts are split into batches.
pub const MAX_BATCH_FILES: usize = 1024;
/// Bytes per FETCH.
pub const FETCH_LENGTH: u64 = 65_536;

/// Where the server is.
#[derive(Clone)]
pub enum Endpoint {
    /// TCP `host:port`, then the tcpd preamble (`service`, answered `ok`).
    Tcp { addr: String, service: String },
    /// The Unix socket at this path (no preamble).
    Unix(PathBuf),
    /// TLS 1.3 to `host:port`, then the preamble inside it.
    Tls {
        addr: String,
        service: String,
        tls: TlsClient,
        server_name: String,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { addr, .. } => write!(f, "{addr}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tls { addr, .. } => write!(f, "tls:{addr}"),
        }
    }
}

/// How the client connects and how patient it is.
#[derive(Clone)]
pub struct ClientOptions {
    pub endpoint: Endpoint,
    /// Each read and write (and connect) must progress within this: 30 s.
    pub io_timeout: Duration,
    /// Consecutive failed attempts (connect or a connection lost before any progress) before
    /// giving up: 10. Backoff 100 ms, doubling to 2 s.
    pub retries: u32,
    pub verbose: bool,
}

/// Why a client command failed.
#[derive(Debug)]
pub enum ClientError {
    /// Local trouble: unreadable file, bad name, bad token shape.
    Local(String),
    /// Could not connect, or the connection kept dropping.
    Network(String),
    /// The server answered Error (its reason code first).
    Refused(String),
    /// The server broke the protocol (or the preamble).
    Protocol(String),
    /// The id is not visible (fetch).
    NotFound(Uuid),
    /// The fetched bytes do not match the record's SHA-256.
    Verify(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Local(m) => write!(f, "{m}"),
            ClientError::Network(m) => write!(f, "network: {m}"),
            ClientError::Refused(m) => write!(f, "refused: {m}"),
            ClientError::Protocol(m) => write!(f, "protocol: {m}"),
            ClientError::NotFound(id) => write!(f, "not found: {id}"),
            ClientError::Verify(m) => write!(f, "verification failed: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<MachineError> for ClientError {
    fn from(e: MachineError) -> Self {
        match e {
            MachineError::Refused { request, reason } => {
                ClientError::Refused(format!("{request}: {reason}"))
            }
            MachineError::Protocol(what) => ClientError::Protocol(what.to_string()),
        }
    }
}

/// Opens a stream to the server, preamble done.
pub fn connect(opts: &ClientOptions) -> Result<Stream, ClientError> {
    let t = opts.io_timeout;
    let net = |e: TransportError| ClientError::Network(e.to_string());
    let mut stream = match &opts.endpoint {
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path)
                .map_err(|e| ClientError::Network(format!("connect {}: {e}", path.display())))?;
            crate::transport::size_unix_buffers(&s);
            s.set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t)))
                .map_err(|e| ClientError::Network(e.to_string()))?;
            return Ok(Stream::Unix(s));
        }
        Endpoint::Tcp { addr, .. } => {
            let s = connect_tcp(addr, t).map_err(net)?;
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
        Endpoint::Tls {
            addr,
            tls,
            server_name,
            ..
        } => {
            let s = connect_tcp(addr, t).map_err(net)?;
            let _ = s.set_nodelay(true);
            tls.connect(s, server_name, t).map_err(net)?
        }
    };
    let service = match &opts.endpoint {
        Endpoint::Tcp { service, .. } | Endpoint::Tls { service, .. } => service.as_bytes(),
        Endpoint::Unix(_) => unreachable!("returned above"),
    };
    stream
        .write_all(service)
        .and_then(|()| stream.flush())
        .map_err(|e| ClientError::Network(format!("preamble: {e}")))?;
    let mut ok = [0u8; 2];
    match read_exact(&mut stream, &mut ok) {
        // Older tcpd answered `OK`.
        Ok(()) if &ok == b"ok" || &ok == b"OK" => Ok(stream),
        Ok(()) => Err(ClientError::Protocol(format!(
            "preamble answered {ok:02x?}, not ok"
        ))),
        Err(e) => Err(ClientError::Network(format!(
            "no ok after the service name (wrong --service?): {e}"
        ))),
    }
}

fn read_exact(s: &mut Stream, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Message ids from 16 random bytes.
fn message_ids() -> MessageIds {
    let mut seed = [0u8; 16];
    if super::fill_random(&mut seed).is_err() {
        // Distinct enough without the kernel's randomness: ids need only be unique.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        seed = (t ^ u128::from(std::process::id())).to_le_bytes();
    }
    MessageIds::random(seed)
}

/// Retries `attempt` on network errors (see [`ClientOptions::retries`]); `attempt` gets whether
/// this is a reconnection and says with `Ok(false)` that it made progress before dropping.
fn with_retries<T>(
    opts: &ClientOptions,
    what: &str,
    mut attempt: impl FnMut(Stream, bool) -> Result<Step<T>, ClientError>,
) -> Result<(T, u32), ClientError> {
    let mut failures = 0u32;
    let mut reconnects = 0u32;
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = connect(opts).and_then(|s| attempt(s, reconnects > 0));
        let progressed = match r {
            Ok(Step::Done(v)) => return Ok((v, reconnects)),
            Ok(Step::Dropped { progressed, why }) => {
                if opts.verbose {
                    eprintln!("filestorage: {what}: connection lost ({why}); resuming");
                }
                progressed
            }
            Err(ClientError::Network(m)) => {
                if opts.verbose {
                    eprintln!("filestorage: {what}: {m}");
                }
                if failures >= opts.retries {
                    return Err(ClientError::Network(m));
                }
                false
            }
            Err(e) => return Err(e),
        };
        if progressed {
            failures = 0;
            backoff = Duration::from_millis(100);
        } else {
            failures += 1;
            if failures > opts.retries {
                return Err(ClientError::Network(format!(
                    "{what}: gave up after {failures} attempts without progress"
                )));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        reconnects += 1;
    }
}

/// One connection's outcome.
enum Step<T> {
    Done(T),
    /// The connection was lost; resume on a new one.
    Dropped {
        progressed: bool,
        why: String,
    },
}

// ---------------------------------------------------------------------------------- put

/// One stored file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PutResult {
    pub name: String,
    pub id: String,
    pub size: u64,
    pub sha256: String,
}

/// What `put` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PutReport {
    pub files: Vec<PutResult>,
    pub bytes: u64,
    pub seconds: f64,
    /// Seconds spent hashing the sources before the first byte was sent.
    pub hash_seconds: f64,
    pub reconnects: u32,
}

/// What `put` sends.
#[derive(Clone, Debug)]
pub struct PutOptions {
    pub token: String,
    pub tags: Vec<String>,
    /// 1000..65,536; ferry's default is 65,536.
    pub chunk_size: u32,
    /// TRANSFERs in flight: 1..64, default 32.
    pub window: u32,
    /// Use this `fid` instead of the derived one (one batch only).
    pub fid: Option<Uuid>,
}

struct Source {
    file: File,
    spec: FileSpec,
}

/// Stores `paths` in batches of at most 1024 files whose AUTHENTICATION fits one frame;
/// returns once every file is acknowledged complete.
pub fn put(
    opts: &ClientOptions,
    put: &PutOptions,
    paths: &[PathBuf],
) -> Result<PutReport, ClientError> {
    if paths.is_empty() {
        return Err(ClientError::Local("name at least one file".into()));
    }
    if let Some(i) = put.tags.iter().position(|t| !is_valid_tag(t)) {
        return Err(ClientError::Local(format!(
            "tag {:?}: 1..64 bytes of [A-Za-z0-9._-], no leading dot",
            put.tags[i]
        )));
    }
    if !(1000..=MAX_CHUNK_SIZE).contains(&put.chunk_size) {
        return Err(ClientError::Local(
            "--chunk-size must be 1000..65536".into(),
        ));
    }

    let login = unverified_login(&put.token)
        .ok_or_else(|| ClientError::Local("the token has no readable login claim".into()))?;
    let t0 = Instant::now();
    let mut sources = Vec::with_capacity(paths.len());
    for p in paths {
        sources.push(open_source(p)?);
    }
    let hash_seconds = t0.elapsed().as_secs_f64();
    let tags: Vec<&str> = put.tags.iter().map(String::as_str).collect();
    let ranges = batches(&sources, &put.token, &put.tags, put.chunk_size)?;
    if put.fid.is_some() && ranges.len() > 1 {
        return Err(ClientError::Local(
            "--fid names one batch, and these files need several (1024 files or one frame of \
             AUTHENTICATION at most)"
                .into(),
        ));
    }
    let mut report = PutReport {
        files: Vec::new(),
        bytes: 0,
        seconds: 0.0,
        hash_seconds,
        reconnects: 0,
    };
    for range in ranges {
        let batch = &sources[range];
        let fid = put.fid.unwrap_or_else(|| {
            let files: Vec<FidFile<'_>> = batch
                .iter()
                .map(|s| FidFile {
                    name: &s.spec.name,
                    size: s.spec.size,
                    sha256: s.spec.sha256.as_ref(),
                })
                .collect();
            client_fid(&login, &files, &tags, put.chunk_size)
        });
        let config = PutConfig {
            token: put.token.clone(),
            files: batch.iter().map(|s| s.spec.clone()).collect(),
            tags: put.tags.clone(),
            fid,
            chunk_size: Some(put.chunk_size),
            window: put.window.clamp(1, 64),
        };
        if opts.verbose {
            eprintln!("filestorage: put: batch {fid}: {} files", batch.len());
        }
        let (ids, reconnects) = put_batch(opts, config, batch)?;
        report.reconnects += reconnects;
        for (s, id) in batch.iter().zip(ids) {
            report.bytes += s.spec.size;
            report.files.push(PutResult {
                name: s.spec.name.clone(),
                id: id.to_string(),
                size: s.spec.size,
                sha256: crate::wire::hex::encode(&s.spec.sha256.unwrap_or_default()),
            });
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Splits the files into batches of at most [`MAX_BATCH_FILES`] whose AUTHENTICATION fits in
/// one frame (99,992 bytes: long names and the declared SHA-256s reach it before 1024 files).
fn batches(
    sources: &[Source],
    token: &str,
    tags: &[String],
    chunk_size: u32,
) -> Result<Vec<std::ops::Range<usize>>, ClientError> {
    let max_json = MAX_LEN as usize - 1;
    let encoded = |files: &[FileSpec]| {
        let mut out = Vec::new();
        let mid = MessageId::from_uuid(Uuid::NIL);
        encode_authentication(
            &mut out,
            &mid,
            token,
            files,
            &Uuid::NIL,
            tags,
            Some(chunk_size),
        );
        out.len()
    };
    let base = encoded(&[]);
    let mut out = Vec::new();
    let (mut start, mut len) = (0, base);
    for (i, s) in sources.iter().enumerate() {
        // The entry, and its comma when it is not the first of its batch.
        let entry = encoded(std::slice::from_ref(&s.spec)) - base;
        let fits = |start: usize, len: usize| {
            i - start < MAX_BATCH_FILES && len + entry + usize::from(i > start) <= max_json
        };
        if !fits(start, len) {
            if i == start {
                return Err(ClientError::Local(format!(
                    "{}: its AUTHENTICATION cannot fit in one frame (token too long?)",
                    s.spec.name
                )));
            }
            out.push(start..i);
            (start, len) = (i, base);
            if !fits(start, len) {
                return Err(ClientError::Local(format!(
                    "{}: its AUTHENTICATION cannot fit in one frame (token too long?)",
                    s.spec.name
                )));
            }
        }
        len += entry + usize::from(i > start);
    }
    out.push(start..sources.len());
    Ok(out)
}

/// Opens a source file, checks its name, and hashes it (the `fid` and the declared `sha256`).
fn open_source(path: &Path) -> Result<Source, ClientError> {
    let local = |m: String| ClientError::Local(format!("{}: {m}", path.display()));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| local("not a file name".into()))?
        .to_string();
    if !is_valid_name(&name) {
        return Err(local(
            "name refused by filestorage (no leading dot, no control characters, 255 bytes at most)"
                .into(),
        ));
    }
    let (file, meta) = crate::dir::open_file_to_send(path).map_err(|e| local(e.to_string()))?;
    let (sha256, size) = if meta.len() >= HASH_THREAD_MIN {
        hash_with_reader(&file)
    } else {
        hash_inline(&file, meta.len())
    }
    .map_err(|e| local(e.to_string()))?;
    if size != meta.len() {
        return Err(local("changed while it was read".into()));
    }
    Ok(Source {
        file,
        spec: FileSpec {
            name,
            size,
            sha256: Some(sha256),
        },
    })
}

/// Files at least this large are hashed with a reading thread ([`hash_with_reader`]).
const HASH_THREAD_MIN: u64 = 16 << 20;
/// Read size when hashing a source.
const HASH_READ: usize = 1 << 20;

/// SHA-256 and length of what `file` holds, read and hashed on this thread (small files: a
/// thread would cost more than it saves).
fn hash_inline(mut file: &File, len: u64) -> io::Result<([u8; 32], u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; (HASH_READ as u64).min(len).max(1) as usize];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((h.finalize().into(), size))
}

/// [`hash_inline`] with the reads on a second thread, so the copy out of the page cache
/// overlaps with SHA-256 instead of adding to it: this pass comes before the first byte is sent
/// (the `fid` and the declared `sha256` need it), while the server has nothing to do, so the
/// second core is free. Three buffers of [`HASH_READ`] circulate.
fn hash_with_reader(file: &File) -> io::Result<([u8; 32], u64)> {
    let (full_tx, full_rx) = crossbeam_channel::bounded::<(Vec<u8>, usize)>(3);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(3);
    for _ in 0..3 {
        let _ = empty_tx.send(vec![0u8; HASH_READ]);
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> io::Result<()> {
            let mut file = file;
            // Ends when the hashing side hangs up (it stopped) or at end of file.
            while let Ok(mut buf) = empty_rx.recv() {
                let n = loop {
                    match file.read(&mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                };
                if full_tx.send((buf, n)).is_err() || n == 0 {
                    break;
                }
            }
            Ok(())
        });
        let mut h = Sha256::new();
        let mut size = 0u64;
        for (buf, n) in &full_rx {
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
            let _ = empty_tx.send(buf);
        }
        drop(full_rx);
        drop(empty_tx);
        match reader.join() {
            Ok(r) => r.map(|()| (h.finalize().into(), size)),
            Err(_) => Err(io::Error::other("the reading thread panicked")),
        }
    })
}

/// Runs one batch to completion across as many connections as it takes. Returns the store id
/// of each file.
fn put_batch(
    opts: &ClientOptions,
    config: PutConfig,
    sources: &[Source],
) -> Result<(Vec<Uuid>, u32), ClientError> {
    let mut m = Put::new(config, message_ids());
    let mut chunk = Vec::new();
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let (_, reconnects) = with_retries(opts, "put", |stream, again| {
        if again {
            m.handle_disconnect();
        }
        drive_put(&mut m, stream, sources, &mut chunk, &mut rbuf, &mut out)
    })?;
    Ok((
        m.completed()
            .iter()
            .map(|c| c.unwrap_or_default())
            .collect(),
        reconnects,
    ))
}

fn drive_put(
    m: &mut Put,
    mut stream: Stream,
    sources: &[Source],
    chunk: &mut Vec<u8>,
    rbuf: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<Step<()>, ClientError> {
    let mut progressed = false;
    let dropped = |progressed, why: String| Ok(Step::Dropped { progressed, why });
    loop {
        while let Some(ev) = m.poll_event() {
            match ev {
                PutEvent::ReadChunk(c) => {
                    let src = &sources[c.file as usize];
                    chunk.resize(c.len as usize, 0);
                    src.file
                        .read_exact_at(chunk, c.offset)
                        .map_err(|e| ClientError::Local(format!("{}: {e}", src.spec.name)))?;
                    m.send_chunk(c, chunk);
                    // Each TRANSFER goes out at once, and the Oks already back are taken in
                    // before the next one: the window refills as it drains instead of in
                    // rounds of `window` (which left each side idle while the other worked).
                    m.poll_transmit(out);
                    if let Err(e) = stream.write_all(out) {
                        out.clear();
                        return dropped(progressed, e.to_string());
                    }
                    out.clear();
                    // With the window full the next step is a blocking read anyway (in
                    // lockstep, a try that finds nothing was one system call in four).
                    while m.has_window_room() {
                        match stream.try_read(rbuf) {
                            Ok(TryRead::Data(n)) => {
                                progressed = true;
                                m.handle_input(&rbuf[..n]);
                            }
                            Ok(TryRead::Empty) => break,
                            Ok(TryRead::Eof) => {
                                return dropped(progressed, "closed by the server".into())
                            }
                            Err(e) => return dropped(progressed, e.to_string()),
                        }
                    }
                }
                PutEvent::FileComplete { .. } => progressed = true,
                PutEvent::Done => return Ok(Step::Done(())),
                PutEvent::Failed(e) => return Err(e.into()),
            }
        }
        m.poll_transmit(out);
        if !out.is_empty() {
            if let Err(e) = stream.write_all(out) {
                out.clear();
                return dropped(progressed, e.to_string());
            }
            out.clear();
        }
        match stream.read(rbuf) {
            Ok(0) => return dropped(progressed, "closed by the server".into()),
            Ok(n) => {
                progressed = true;
                m.handle_input(&rbuf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return dropped(progressed, e.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------- query

/// Every result of a QUERY (following `more`).
pub fn query(
    opts: &ClientOptions,
    token: &str,
    tags: &[String],
    name: Option<&str>,
    after: Option<Uuid>,
    limit: Option<usize>,
) -> Result<Vec<QueryResult>, ClientError> {
    let (v, _) = with_retries(opts, "query", |stream, _| {
        drive_query(stream, token, tags, name, after, limit)
    })?;
    Ok(v)
}

fn drive_query(
    mut stream: Stream,
    token: &str,
    tags: &[String],
    name: Option<&str>,
    after: Option<Uuid>,
    limit: Option<usize>,
) -> Result<Step<Vec<QueryResult>>, ClientError> {
    let config = QueryConfig {
        token: token.to_string(),
        tags: tags.to_vec(),
        name: name.map(str::to_owned),
    };
    let mut q = match after {
        Some(a) => QueryClient::new_after(config, message_ids(), a),
        None => QueryClient::new(config, message_ids()),
    };
    let mut results = Vec::new();
    let mut out = Vec::new();
    let mut rbuf = vec![0u8; 64 * 1024];
    loop {
        while let Some(ev) = q.poll_event() {
            match ev {
                QueryEvent::Results(r) => {
                    results.extend(r);
                    if limit.is_some_and(|l| results.len() >= l) {
                        results.truncate(limit.unwrap_or(usize::MAX));
                        return Ok(Step::Done(results));
                    }
                }
                QueryEvent::Done => return Ok(Step::Done(results)),
                QueryEvent::Failed(e) => return Err(e.into()),
            }
        }
        q.poll_transmit(&mut out);
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out) {
                return Ok(Step::Dropped {
                    progressed: false,
                    why: e.to_string(),
                });
            }
            out.clear();
        }
        match stream.read(&mut rbuf) {
            Ok(0) => {
                return Ok(Step::Dropped {
                    progressed: false,
                    why: "closed by the server".into(),
                })
            }
            Ok(n) => q.handle_input(&rbuf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Ok(Step::Dropped {
                    progressed: false,
                    why: e.to_string(),
                })
            }
        }
    }
}

/// The QUERY result for `id`, if `token`'s uid may see it: a QUERY without tags listing from
/// just below the id (ids sort as 128-bit numbers).
pub fn lookup(opts: &ClientOptions, token: &str, id: Uuid) -> Result<QueryResult, ClientError> {
    let below = u128::from_be_bytes(id.0)
        .checked_sub(1)
        .map(|v| Uuid(v.to_be_bytes()));
    let r = query(opts, token, &[], None, below, Some(1))?;
    r.into_iter()
        .next()
        .filter(|r| r.id == id)
        .ok_or(ClientError::NotFound(id))
}

// ---------------------------------------------------------------------------------- fetch

/// A fetched file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fetched {
    pub id: String,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub seconds: f64,
    pub reconnects: u32,
}

/// Fetches `id` into `out` (created if missing): verified against the record's SHA-256 before
/// it gets its name; an existing file is never replaced (a name holding other bytes gives
/// `<stem>.<8 hex>.<ext>`).
pub fn fetch(
    opts: &ClientOptions,
    token: &str,
    id: Uuid,
    out: &Path,
) -> Result<Fetched, ClientError> {
    let t0 = Instant::now();
    let entry = lookup(opts, token, id)?;
    if !is_valid_name(&entry.name) {
        return Err(ClientError::Protocol(format!(
            "the server named the file {:?}",
            entry.name
        )));
    }
    let ingest = IngestDir::new(out, out)
        .map_err(|e| ClientError::Local(format!("{}: {e}", out.display())))?;
    // An interrupted fetch exits at once: its temporary goes here, at the next one.
    crate::driver::clean_stale_temporaries(&ingest);
    let sink = ingest
        .begin_stream(Some(entry.size))
        .map_err(|e| ClientError::Local(format!("{}: {e}", out.display())))?;
    let mut writer =
        SinkThread::spawn(sink).map_err(|e| ClientError::Local(format!("write: {e}")))?;
    let mut written = 0u64;
    let (_, reconnects) = with_retries(opts, "fetch", |stream, _| {
        drive_fetch(stream, token, &entry, &mut written, &mut writer)
    })?;
    let sink = writer
        .finish()
        .map_err(|e| ClientError::Local(format!("write: {e}")))?;
    let committed = sink
        .commit_with(&entry.name, Expect::Sha256(entry.sha256), Collision::Tagged)
        .map_err(|e| match e {
            IngestError::Mismatch { .. } => ClientError::Verify(e.to_string()),
            other => ClientError::Local(other.to_string()),
        })?;
    Ok(Fetched {
        id: id.to_string(),
        name: committed.name,
        path: committed.path,
        size: committed.size,
        sha256: crate::wire::hex::encode(&entry.sha256),
        seconds: t0.elapsed().as_secs_f64(),
        reconnects,
    })
}

fn drive_fetch(
    mut stream: Stream,
    token: &str,
    entry: &QueryResult,
    written: &mut u64,
    sink: &mut SinkThread,
) -> Result<Step<()>, ClientError> {
    let mut f = FetchClient::new(
        FetchConfig {
            token: token.to_string(),
            id: entry.id,
            size: Some(entry.size),
            start: *written,
            length: FETCH_LENGTH,
            window: 32,
        },
        message_ids(),
    );
    let mut out = Vec::new();
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut progressed = false;
    loop {
        while let Some(ev) = f.poll_event() {
            match ev {
                FetchEvent::Data { offset, bytes } => {
                    if offset != *written {
                        return Err(ClientError::Protocol("fetch data out of order".into()));
                    }
                    sink.write(bytes)
                        .map_err(|e| ClientError::Local(format!("write: {e}")))?;
                    *written += bytes.len() as u64;
                    progressed = true;
                }
                FetchEvent::Done => return Ok(Step::Done(())),
                FetchEvent::Failed(MachineError::Refused { reason, .. })
                    if reason.starts_with("not-found") =>
                {
                    return Err(ClientError::NotFound(entry.id))
                }
                FetchEvent::Failed(e) => return Err(e.into()),
            }
        }
        f.poll_transmit(&mut out);
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out) {
                return Ok(Step::Dropped {
                    progressed,
                    why: e.to_string(),
                });
            }
            out.clear();
        }
        match stream.read(&mut rbuf) {
            Ok(0) => {
                return Ok(Step::Dropped {
                    progressed,
                    why: "closed by the server".into(),
                })
            }
            Ok(n) => f.handle_input(&rbuf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Ok(Step::Dropped {
                    progressed,
                    why: e.to_string(),
                })
            }
        }
    }
}

/// Fetched bytes queued at most between the receiving thread and the writing one.
const SINK_QUEUE: usize = 8;

/// Writes fetched bytes into the ingest sink (which hashes them: SHA-256 and xxHash64) on a
/// second thread, so that receiving, parsing and base64-decoding on the calling thread overlap
/// with hashing and writing the file. On one thread the fetch client used 2.6-2.9 CPU-s per GiB
/// (SHA-256 a third of it) while the server used 0.8: the client alone was the limit.
/// At most [`SINK_QUEUE`] + 2 chunk buffers exist at once (queued, being written, spare).
struct SinkThread {
    tx: Option<crossbeam_channel::Sender<Vec<u8>>>,
    spare: crossbeam_channel::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<io::Result<StreamSink>>>,
}

impl SinkThread {
    fn spawn(mut sink: StreamSink) -> io::Result<SinkThread> {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(SINK_QUEUE);
        let (back, spare) = crossbeam_channel::bounded::<Vec<u8>>(2);
        let thread = std::thread::Builder::new()
            .name("filestorage-fetch-write".into())
            .spawn(move || {
                for buf in rx {
                    // An error drops `rx`: the next `write` sees it and joins for the error.
                    sink.write_all(&buf)?;
                    let _ = back.try_send(buf);
                }
                Ok(sink)
            })?;
        Ok(SinkThread {
            tx: Some(tx),
            spare,
            thread: Some(thread),
        })
    }

    /// Queues a copy of `bytes` (waits while the queue is full).
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        let sent = self.tx.as_ref().map(|tx| tx.send(buf).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other("the writing thread stopped")),
        }
    }

    /// Waits until every queued byte is written and hands the sink back.
    fn finish(mut self) -> io::Result<StreamSink> {
        self.join()
    }

    fn join(&mut self) -> io::Result<StreamSink> {
        self.tx = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the writing thread panicked")),
            None => Err(io::Error::other("the writing thread already stopped")),
        }
    }
}

impl Drop for SinkThread {
    /// The sink (and its temporary) is dropped on the writing thread before this returns.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}
